"""Queue and agent settings for the ACD: validated at load, mapped onto engine specs."""

from __future__ import annotations

from typing import Any

import pytest

from acd.build import specs_from_settings
from acd.engine import AcdEngine, OverflowTarget, Step
from config.loader import ConfigError, load, parse
from tests.support.configs import demo_data


def demo() -> dict[str, Any]:
    return demo_data()


def errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(data, "demo.yaml")
    return info.value.lines


def test_demo_queues_become_engine_specs() -> None:
    queues, agents = specs_from_settings(load())
    sales = next(q for q in queues if q.name == "sales")
    assert dict(sales.required) == {"sales": 1}
    assert sales.strategy == "longest_idle" and sales.ring_timeout_s == 15
    alice = next(a for a in agents if a.agent_id == "alice")
    assert dict(alice.levels) == {"sales": 3} and alice.no_answer_limit == 2
    AcdEngine(queues, agents)


def test_full_queue_shape_maps_onto_the_engine() -> None:
    data = demo()
    data["agents"]["bob"]["languages"] = ["ko", "en"]
    data["queues"]["sales"] = {
        "skills": {"sales": 2},
        "strategy": "most_skilled",
        "steps": [{"after_s": 0, "min_proficiency": 4}, {"after_s": 30, "min_proficiency": 2}],
        "service_level": {"threshold_s": 30, "target_pct": 90},
        "max_wait_s": 120,
        "overflow": {"kind": "queue", "target": "support"},
        "priority": 3,
        "preferred_agent_s": 15,
    }
    queues, agents = specs_from_settings(parse(data, "demo.yaml"))
    sales = next(q for q in queues if q.name == "sales")
    assert sales.steps == (Step(after_s=0, min_proficiency=4), Step(after_s=30, min_proficiency=2))
    assert sales.overflow == OverflowTarget(kind="queue", target="support")
    assert (sales.service_level.threshold_s, sales.service_level.target) == (30, 0.9)
    assert (sales.priority, sales.preferred_agent_s, sales.max_wait_s) == (3, 15, 120)
    assert next(a for a in agents if a.agent_id == "bob").languages == {"ko", "en"}


def test_queue_rules_are_checked_with_file_and_path() -> None:
    data = demo()
    data["queues"]["sales"]["steps"] = [
        {"after_s": 10, "min_proficiency": 2},
        {"after_s": 5, "min_proficiency": 3},
    ]
    data["queues"]["support"]["leave_when_empty"] = True
    lines = errors(data)
    assert "demo.yaml: queues.sales.steps[1].after_s: must be later than step 0 (10 s)" in lines
    assert (
        "demo.yaml: queues.sales.steps[1].min_proficiency: steps must widen: at most 2 (step 0)"
        in lines
    )
    assert (
        "demo.yaml: queues.support.overflow: required key is missing "
        "(the target of leave_when_empty)" in lines
    )


def test_overflow_targets_must_exist() -> None:
    data = demo()
    data["queues"]["sales"]["max_wait_s"] = 60
    data["queues"]["sales"]["overflow"] = {"kind": "queue", "target": "suport"}
    data["queues"]["support"]["max_length"] = 5
    data["queues"]["support"]["overflow"] = {"kind": "ivr", "target": "night"}
    lines = errors(data)
    assert (
        "demo.yaml: queues.sales.overflow.target: unknown queue 'suport' "
        "(queues: sales, support)" in lines
    )
    assert (
        "demo.yaml: queues.support.overflow.target: unknown IVR flow 'night' (ivr: main)" in lines
    )


def test_queue_needs_a_skill_and_a_known_strategy() -> None:
    data = demo()
    del data["queues"]["sales"]["skill"]
    data["queues"]["support"]["strategy"] = "fastest"
    lines = errors(data)
    assert "demo.yaml: queues.sales.skills: give 'skill' or 'skills' (required skills)" in lines
    assert any(
        line.startswith("demo.yaml: queues.support.strategy: Input should be") for line in lines
    )


def test_agent_skills_may_be_used_by_a_queue_through_skills() -> None:
    data = demo()
    data["agents"]["alice"]["skills"] = {"sales": 3, "billing": 2}
    assert any(
        "agents.alice.skills.billing: no queue uses skill 'billing'" in x for x in errors(data)
    )
    data["queues"]["support"]["skills"] = {"billing": 1}
    parse(data, "demo.yaml")
