"""Flow validation: every kind of bad flow names its path and problem; the demo is clean."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from ivr.engine import FlowEngine
from ivr.schema import Flow, FlowFile
from ivr.validate import check_file, render_path, validate_flows

DEMO = Path(__file__).resolve().parents[2] / "config" / "flows" / "demo.yaml"
QUEUES = {"sales", "support"}
SKILLS = {"sales", "support"}


def problems(nodes: dict[str, Any], **extra: Any) -> list[str]:
    """Validate one flow `main` and render its problems like the loader does."""
    data: dict[str, Any] = {
        "start": next(iter(nodes)),
        "languages": ["en"],
        "default_language": "en",
        "nodes": nodes,
        **extra,
    }
    flow = Flow.model_validate(data)
    found = validate_flows(
        {"main": flow},
        queues=QUEUES,
        skills=SKILLS,
        agents={"alice", "bob"},
        file_exists=lambda p: p.name != "missing.wav",
    )
    return [f"{render_path(('ivr', *path))}: {message}" for path, message in found]


BYE = {"bye": {"kind": "hangup"}}


def test_the_demo_flow_is_valid() -> None:
    flows, lines = check_file(DEMO, queues=QUEUES, skills=SKILLS)
    assert lines == []
    assert set(flows) == {"main"}
    main = flows["main"]
    assert main.languages == ["en", "zh"]
    kinds = {node.kind for node in main.nodes.values()}
    assert kinds >= {
        "menu",
        "collect",
        "condition",
        "lookup",
        "set",
        "queue",
        "voicemail",
        "hangup",
        "goto",
        "survey",
        "play",
    }


def test_the_demo_flow_fails_against_other_queues() -> None:
    _, lines = check_file(DEMO, queues={"sales"}, skills={"sales"})
    assert (
        f"{DEMO}: ivr.main.nodes.support_queue.queue: unknown queue 'support' (queues: sales)"
        in lines
    )
    assert (
        f"{DEMO}: ivr.main.nodes.vip_queue.skills.support: unknown skill 'support' (skills: sales)"
        in lines
    )


def test_unknown_target_node() -> None:
    nodes = {
        "main_menu": {"kind": "menu", "prompt": "Hi", "options": {"1": "salse"}, "fallback": "bye"},
        **BYE,
    }
    assert problems(nodes) == ["ivr.main.nodes.main_menu.options.\"1\": unknown node 'salse'"]


def test_unknown_targets_in_nested_links() -> None:
    nodes = {
        "c": {
            "kind": "condition",
            "branches": [{"when": {"vip": True}, "next": "nowhere"}],
            "otherwise": "q",
        },
        "q": {"kind": "queue", "queue": "sales", "callback": {"after_s": 60, "next": "gone"}},
    }
    assert problems(nodes) == [
        "ivr.main.nodes.c.branches[0].next: unknown node 'nowhere'",
        "ivr.main.nodes.q.callback.next: unknown node 'gone'",
    ]


def test_unknown_start_node() -> None:
    assert problems(BYE, start="hello") == [
        "ivr.main.start: unknown node 'hello'",
    ]  # no flood of "unreachable" lines while the start itself is wrong


def test_unreachable_node() -> None:
    nodes = {**BYE, "orphan": {"kind": "hangup"}}
    assert problems(nodes) == ["ivr.main.nodes.orphan: unreachable from the start node 'bye'"]


def test_unknown_queue_skill_and_agent() -> None:
    nodes = {
        "prep": {"kind": "set", "skills": {"cantonese": 2}, "next": "q"},
        "q": {
            "kind": "queue",
            "queue": "sals",
            "skills": {"sale": 1},
            "overflow": "t",
            "max_wait_s": 60,
        },
        "t": {"kind": "transfer", "agent": "carol"},
    }
    assert problems(nodes) == [
        "ivr.main.nodes.prep.skills.cantonese: unknown skill 'cantonese' (skills: sales, support)",
        "ivr.main.nodes.q.queue: unknown queue 'sals' (queues: sales, support)",
        "ivr.main.nodes.q.skills.sale: unknown skill 'sale' (skills: sales, support)",
        "ivr.main.nodes.t.agent: unknown agent 'carol' (agents: alice, bob)",
    ]


def test_loop_without_caller_input() -> None:
    nodes = {
        "hello": {"kind": "play", "prompts": "Hi", "next": "check"},
        "check": {
            "kind": "condition",
            "branches": [{"when": {"vip": True}, "next": "bye"}],
            "otherwise": "again",
        },
        "again": {"kind": "goto", "next": "hello"},
        **BYE,
    }
    assert problems(nodes) == [
        "ivr.main.nodes.hello: loop without caller input: hello -> check -> again -> hello"
    ]


def test_loop_through_a_menu_fallback_counts_as_silent() -> None:
    """A menu that times out into its own fallback loop would hold the line forever."""
    nodes = {
        "menu": {"kind": "menu", "prompt": "Hi", "options": {"1": "bye"}, "fallback": "sorry"},
        "sorry": {"kind": "play", "prompts": "Sorry", "next": "menu"},
        **BYE,
    }
    assert problems(nodes) == [
        "ivr.main.nodes.menu: loop without caller input: menu -> sorry -> menu"
    ]


def test_loops_that_wait_for_the_caller_are_fine() -> None:
    nodes = {
        "menu": {"kind": "menu", "prompt": "Hi", "options": {"1": "info", "2": "bye"}},
        "info": {"kind": "play", "prompts": "Info", "next": "menu"},
        "hold": {"kind": "play", "prompts": "Hold", "barge_in": True, "next": "menu"},
        **BYE,
    }
    assert problems(nodes) == ["ivr.main.nodes.hold: unreachable from the start node 'menu'"]


def test_prompts_that_cannot_be_rendered() -> None:
    nodes = {
        "hello": {
            "kind": "play",
            "prompts": [
                {"en": {"file": "missing.wav"}},
                {"en": "Hi", "fr": "Salut"},
                {"zh": "你好"},
            ],
            "next": "bye",
        },
        **BYE,
    }
    assert problems(nodes) == [
        "ivr.main.nodes.hello.prompts[0].en.file: no such WAV file: missing.wav",
        "ivr.main.nodes.hello.prompts[1].fr: language 'fr' is not one of the flow's languages (en)",
        "ivr.main.nodes.hello.prompts[2].zh: language 'zh' is not one of the flow's languages (en)",
        "ivr.main.nodes.hello.prompts[2]: no prompt for language 'en'",
    ]


def test_prompt_missing_for_one_of_the_flows_languages() -> None:
    nodes = {
        "menu": {
            "kind": "menu",
            "prompt": {"en": "Press 1"},
            "options": {"1": "bye"},
            "invalid_prompt": {"zh": "无效"},
        },
        **BYE,
    }
    assert problems(nodes, languages=["en", "zh"]) == [
        "ivr.main.nodes.menu.prompt[0]: no prompt for language 'zh'",
        "ivr.main.nodes.menu.invalid_prompt: no prompt for language 'en'",
    ]


def test_unknown_calendar_and_languages() -> None:
    nodes = {
        "hours": {
            "kind": "condition",
            "branches": [{"when": {"open": "ofice", "language": ["fr"]}, "next": "zh"}],
            "otherwise": "zh",
        },
        "zh": {"kind": "set", "language": "zh", "next": "bye"},
        **BYE,
    }
    assert problems(nodes, default_language="de") == [
        "ivr.main.default_language: 'de' is not one of the flow's languages (en)",
        "ivr.main.nodes.hours.branches[0].when.open: unknown calendar 'ofice' (calendars: none)",
        "ivr.main.nodes.hours.branches[0].when.language: language 'fr' is not one of the "
        "flow's languages (en)",
        "ivr.main.nodes.zh.language: language 'zh' is not one of the flow's languages (en)",
    ]


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"kind": "menu", "prompt": "Hi"}, "a menu needs 'options'"),
        (
            {
                "kind": "collect",
                "prompt": "Hi",
                "into": "x",
                "min_length": 5,
                "max_length": 4,
                "next": "bye",
            },
            "min_length is larger than max_length",
        ),
        (
            {"kind": "collect", "prompt": "Hi", "into": "x", "pattern": "([", "next": "bye"},
            "not a regular expression",
        ),
        ({"kind": "transfer"}, "exactly one of 'number' or 'agent'"),
        ({"kind": "queue", "queue": "sales", "max_wait_s": 30}, "'max_wait_s' and 'overflow'"),
        ({"kind": "lookup", "by": "variable", "next": "bye"}, "'variable' exactly when"),
        (
            {"kind": "play", "prompts": {"text": "a", "file": "b.wav"}, "next": "bye"},
            "exactly one of 'text' or 'file'",
        ),
        (
            {"kind": "condition", "branches": [{"when": {}, "next": "bye"}], "otherwise": "bye"},
            "at least one condition",
        ),
        (
            {"kind": "survey", "questions": [{"name": "a", "prompt": "x", "min": 5, "max": 1}]},
            "min is larger than max",
        ),
    ],
)
def test_single_node_errors_are_caught_by_the_schema(node: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Flow.model_validate(
            {
                "start": "n",
                "languages": ["en"],
                "default_language": "en",
                "nodes": {"n": node, **BYE},
            }
        )


@pytest.mark.parametrize(
    ("calendar", "message"),
    [
        ({"time_zone": "Mars/Olympus", "hours": {"mon": ["09:00-17:00"]}}, "unknown time zone"),
        ({"time_zone": "UTC", "hours": {"monday": ["09:00-17:00"]}}, "not a weekday"),
        ({"time_zone": "UTC", "hours": {"mon": ["9-5"]}}, "not a time range"),
        (
            {"time_zone": "UTC", "hours": {"mon": ["09:00-17:00"]}, "holidays": ["2026-13-01"]},
            "not a date",
        ),
        (
            {
                "time_zone": "UTC",
                "hours": {"mon": ["09:00-17:00"]},
                "holidays": ["2026-05-05..2026-05-01"],
            },
            "ends before it starts",
        ),
    ],
)
def test_calendar_errors(calendar: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Flow.model_validate(
            {
                "start": "bye",
                "languages": ["en"],
                "default_language": "en",
                "calendars": {"office": calendar},
                "nodes": BYE,
            }
        )


def test_check_file_reports_schema_errors_with_the_path(tmp_path: Path) -> None:
    bad = tmp_path / "flows.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "ivr": {
                    "main": {
                        "start": "m",
                        "languages": ["en"],
                        "default_language": "en",
                        "nodes": {
                            "m": {
                                "kind": "menu",
                                "prompt": "Hi",
                                "options": {"1": "m"},
                                "timeout_s": -1,
                                "colour": "red",
                            }
                        },
                    }
                }
            }
        )
    )
    _, lines = check_file(bad, queues=QUEUES, skills=SKILLS)
    assert lines == [
        f"{bad}: ivr.main.nodes.m.timeout_s: Input should be greater than 0",
        f"{bad}: ivr.main.nodes.m.colour: unknown key (check the spelling)",
    ]


def test_check_file_resolves_prompt_files_next_to_the_flow_file(tmp_path: Path) -> None:
    (tmp_path / "hello.wav").write_bytes(b"RIFF")
    flows = {
        "ivr": {
            "main": {
                "start": "hi",
                "languages": ["en"],
                "default_language": "en",
                "nodes": {
                    "hi": {
                        "kind": "play",
                        "prompts": [{"file": "hello.wav"}, {"file": "nope.wav"}],
                        "next": "bye",
                    },
                    **BYE,
                },
            }
        }
    }
    path = tmp_path / "flows.yaml"
    path.write_text(yaml.safe_dump(flows))
    _, lines = check_file(path, queues=QUEUES, skills=SKILLS)
    assert lines == [f"{path}: ivr.main.nodes.hi.prompts[1].file: no such WAV file: nope.wav"]


def test_demo_catalog_has_both_languages_and_voices() -> None:
    flows = FlowFile.model_validate(yaml.safe_load(DEMO.read_text(encoding="utf-8"))).ivr
    catalog = FlowEngine(flows).prompt_catalog()
    zh = catalog["ivr.main.v1.main_menu.prompt.0.zh"]
    assert zh.voice == "cmn" and zh.text is not None and "销售" in zh.text
    assert catalog["ivr.main.v1.main_menu.prompt.0.en"].voice == "en-us"
