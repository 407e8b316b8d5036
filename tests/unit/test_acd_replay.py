"""The journal round-trips every engine event, and `kefu acd replay` compares policies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from acd import journal, replay
from acd.events import (
    AcdEvent,
    AgentLoggedIn,
    AgentSetAway,
    CallLeft,
    Enqueue,
    OfferAnswered,
    Reconcile,
)
from acd.strategies import STRATEGIES
from config.loader import demo_path
from config.schema import Queue
from tests.support.configs import demo_data


@pytest.mark.parametrize(
    "event",
    [
        Enqueue(call_id="c", queue="sales", caller="5", priority=2, skills={"ko": 3},
                preferred_agent="alice", language="ko"),
        AgentSetAway(agent_id="alice", reason="lunch"),
        Reconcile(live_calls=frozenset({"a", "b"}), registered_agents=frozenset()),
    ],
    ids=lambda e: type(e).__name__,
)  # fmt: skip
def test_journal_round_trip(event: AcdEvent) -> None:
    assert journal.load(journal.dump(event, 12.5)) == (event, 12.5)


def test_journal_errors_say_what_is_wrong() -> None:
    with pytest.raises(journal.JournalError, match="unknown event type 'Nope'"):
        journal.load('{"type": "Nope", "at": 1}')
    with pytest.raises(journal.JournalError, match="'at' must be a number"):
        journal.load('{"type": "CallLeft", "call_id": "c"}')


def test_config_strategy_names_match_the_registry() -> None:
    field = Queue.model_fields["strategy"].annotation
    assert set(field.__args__) == set(STRATEGIES)


def recorded_day() -> tuple[list[str], float]:
    """Ten support calls 30 s apart, bob alone answering each in turn for 60 s; the last
    caller hangs up after 5 s. Returns the journal lines and the recorded ASA."""
    lines = [journal.dump(AgentLoggedIn(agent_id=a), 0.0) for a in ("alice", "bob")]
    free_at, waits = 0.0, []
    for i in range(10):
        arrive = 30.0 * i
        lines.append(journal.dump(Enqueue(call_id=f"c{i}", queue="support", caller="1"), arrive))
        if i == 9:
            lines.append(journal.dump(CallLeft(call_id=f"c{i}"), arrive + 5))
            continue
        answer = max(arrive, free_at)
        free_at = answer + 60.0
        waits.append(answer - arrive)
        lines.append(journal.dump(OfferAnswered(call_id=f"c{i}"), answer))
        lines.append(journal.dump(CallLeft(call_id=f"c{i}"), free_at))
    lines.sort(key=lambda line: json.loads(line)["at"])  # the core writes in time order
    return lines, sum(waits) / len(waits)


def policy(tmp_path: Path, alice_skills: dict[str, int]) -> Path:
    data: dict[str, Any] = demo_data()
    data["agents"]["alice"]["skills"] = alice_skills
    data["queues"]["support"]["wrapup_s"] = 0
    path = tmp_path / f"policy-{len(alice_skills)}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert replay.main([*argv, "--json"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_replay_compares_a_candidate_with_the_recorded_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Letting alice take support calls too halves waits and saves the last caller."""
    lines, asa = recorded_day()
    events = tmp_path / "day.jsonl"
    events.write_text("\n".join(lines) + "\n")
    same = run(capsys, str(events), "--policy", str(policy(tmp_path, {"sales": 3})))
    assert same["recorded"]["asa_s"] == round(asa, 2) > 0
    assert same["recorded"]["abandon_pct"] == 10.0
    assert same["recorded"] == {**same["recorded"], "arrivals": 10, "answered": 9}
    # the recorded policy replayed: the same answers at the same times
    assert same["candidate"] == same["recorded"]
    wider = run(capsys, str(events), "--policy",
                str(policy(tmp_path, {"sales": 3, "support": 2})))  # fmt: skip
    assert wider["candidate"]["asa_s"] < same["recorded"]["asa_s"]
    assert wider["candidate"]["answered"] == 10
    assert wider["candidate"]["abandon_pct"] == 0.0
    assert wider["candidate"]["service_level_pct"] > same["recorded"]["service_level_pct"]
    assert replay.main([str(events), "--policy", str(policy(tmp_path, {"sales": 3}))]) == 0
    table = capsys.readouterr().out
    assert "ASA (s)" in table and "recorded" in table and "candidate" in table


def test_replay_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "bad.jsonl"
    events.write_text('{"type": "Enqueue"}\n')
    assert replay.main([str(events), "--policy", str(demo_path())]) == 2
    assert f"{events}:1:" in capsys.readouterr().err
