"""End to end through `kefu serve`: SIPp callers with different priorities and skill
needs reach the agents the queue rules say they must (issue #3's routing rules on the
real media path), and every offer's decision trace is kept with the call."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pbx.procs import ManagedProcess, free_port
from tests.support.center import Center, center_config, pick_ports, start_center
from tests.support.configs import menu_flow
from tests.support.sipp import start_sipp

pytestmark = pytest.mark.e2e

AGENTS = {
    "senior": ("3001", "senior-secret", {"sales": 5}),
    "novice": ("3002", "novice-secret", {"tech": 2}),
    "expert": ("3003", "expert-secret", {"tech": 5}),
}


@pytest.fixture(scope="module")
def center(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Center]:
    tmp = tmp_path_factory.mktemp("acd-center")
    ports = pick_ports(4)
    config = center_config(ports, workers=4)
    config["agents"] = {
        name: {"sip_user": user, "password": pw, "skills": skills, "auto_available": True}
        for name, (user, pw, skills) in AGENTS.items()
    }
    config["queues"] = {
        "sales": {"skills": {"sales": 1}, "ring_timeout_s": 10, "wrapup_s": 1},
        # experts only for the first 6 s of waiting, then anyone with the skill
        "tech": {
            "skills": {"tech": 1},
            "steps": [{"after_s": 0, "min_proficiency": 4}, {"after_s": 6, "min_proficiency": 1}],
            "ring_timeout_s": 10,
            "wrapup_s": 1,
        },
    }
    config["ivr"] = {"main": menu_flow({"1": "sales", "2": "tech"})}
    config["demo_customers"] = True  # 5551234 is a VIP with a high-priority open ticket
    running = start_center(tmp, config, ports)
    try:
        yield running
    finally:
        assert running.proc.stop(timeout=30) == 0, running.proc.log_tail(30)


def register_and_answer(
    center: Center, agent: str, n: int, log_dir: Path, calls: int
) -> ManagedProcess:
    user, password, _ = AGENTS[agent]
    return center.desk_phone(f"{agent}-phone", user, password, n, log_dir, calls=calls)


def caller(
    center: Center, number: str, digit: str, n: int, log_dir: Path, hold_ms: int
) -> ManagedProcess:
    return start_sipp(
        f"caller-{number}", log_dir, "caller.xml", center.edge, local_port=center.sipp_port(n),
        media_port=free_port(span=4), service="1000", timeout_s=120,
        keys={"caller": number, "digit": digit, "dtmf_ms": "1000", "hold_ms": str(hold_ms)},
    )  # fmt: skip


def row_of(rows: list[dict[str, Any]], number: str) -> dict[str, Any]:
    (row,) = [r for r in rows if r["caller"] == number]
    return row


def test_vip_caller_is_served_before_an_earlier_ordinary_caller(
    center: Center, artifacts: Path
) -> None:
    """Two callers wait for sales; the VIP (from the CRM) arrives second and goes first."""
    ordinary = caller(center, "5550001", "1", 10, artifacts, hold_ms=30_000)
    procs = [ordinary]
    try:
        center.wait_until_queued("5550001")
        vip = caller(center, "5551234", "1", 11, artifacts, hold_ms=9_000)
        procs.append(vip)
        center.wait_until_queued("5551234")
        procs.append(register_and_answer(center, "senior", 12, artifacts, calls=2))
        rows = center.wait_calls(
            2, timeout=60, where=lambda r: r["caller"] in ("5550001", "5551234")
        )
    finally:
        for proc in procs:
            proc.stop()
    first, second = row_of(rows, "5551234"), row_of(rows, "5550001")
    assert second["arrived_at"] < first["arrived_at"]  # the ordinary caller came first
    assert first["answered_at"] < second["answered_at"]  # ...but the VIP was served first
    assert first["agent"] == second["agent"] == "senior"
    (trace,) = json.loads(first["routing_trace"])
    assert trace["priority"] == 25  # vip 20 + high-priority open ticket 5
    assert trace["winner"] == "senior"


def test_skill_step_widens_from_experts_to_anyone_after_six_seconds(
    center: Center, artifacts: Path
) -> None:
    """Only a novice is free: the tech call waits out the expert-only step, then goes to her."""
    novice = register_and_answer(center, "novice", 20, artifacts, calls=1)
    call = caller(center, "5550002", "2", 21, artifacts, hold_ms=14_000)
    try:
        center.wait_agents(["novice"])
        (row,) = center.wait_calls(1, timeout=60, where=lambda r: r["caller"] == "5550002")
    finally:
        call.stop()
        novice.stop()
    assert row["agent"] == "novice" and row["queue"] == "tech"
    offered, queued = (datetime.fromisoformat(row[k]) for k in ("offered_at", "queued_at"))
    waited = (offered - queued).total_seconds()
    assert waited >= 5.5, f"offered after {waited:.1f}s, before the step widened"
    (trace,) = json.loads(row["routing_trace"])
    assert trace["step"] == 1 and trace["floor"] == 1
