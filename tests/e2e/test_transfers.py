"""End to end through `kefu serve`: an agent on a SIPp caller holds, consults and hands
the caller to a colleague, or sends them blind to another queue, through the web API —
on real workers, Kamailio and SIPp phones. The caller's dialog is never touched (no
re-INVITE): the worker moves its audio, and one recording covers the whole call."""

from __future__ import annotations

import json
import urllib.error
import wave
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pbx.procs import ManagedProcess, free_port, wait_until
from tests.support.center import Center, center_config, pick_ports, start_center
from tests.support.configs import menu_flow
from tests.support.sipp import start_sipp

pytestmark = pytest.mark.e2e

AGENTS = {
    "alice": ("4001", "alice-test-secret", {"sales": 3}),
    "bob": ("4002", "bob-test-secret", {"support": 3}),
}


@pytest.fixture(scope="module")
def center(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Center]:
    tmp = tmp_path_factory.mktemp("transfer-center")
    ports = pick_ports(4)
    config = center_config(ports, workers=2)
    config["agents"] = {
        name: {"sip_user": user, "password": pw, "skills": skills, "auto_available": True}
        for name, (user, pw, skills) in AGENTS.items()
    }
    config["queues"] = {
        "sales": {"skills": {"sales": 1}, "ring_timeout_s": 10, "wrapup_s": 1},
        "support": {"skills": {"support": 1}, "ring_timeout_s": 10, "wrapup_s": 1},
    }
    config["ivr"] = {"main": menu_flow({"1": "sales", "2": "support"})}
    running = start_center(tmp, config, ports)
    try:
        yield running
    finally:
        assert running.proc.stop(timeout=30) == 0, running.proc.log_tail(30)


def phone(center: Center, agent: str, n: int, log_dir: Path) -> ManagedProcess:
    """The agent's SIPp desk phone: registered, then answers one call and holds it."""
    user, password, _ = AGENTS[agent]
    return center.desk_phone(f"{agent}-phone", user, password, n, log_dir)


def caller(center: Center, n: int, log_dir: Path, hold_ms: int) -> ManagedProcess:
    return start_sipp(
        "caller", log_dir, "caller.xml", center.edge, local_port=center.sipp_port(n),
        media_port=free_port(span=4), service="1000", timeout_s=120,
        keys={"caller": "5550777", "digit": "1", "dtmf_ms": "1000", "hold_ms": str(hold_ms)},
    )  # fmt: skip


def live(center: Center, where: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def check() -> bool:
        found[:] = [c for c in center.get("/api/calls") if c["caller"] == "5550777" and where(c)]
        return bool(found)

    wait_until(check, 30, what, interval=0.2)
    return found[0]


def _at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def recording(row: dict[str, Any]) -> float:
    with wave.open(row["recording_path"]) as wav:
        return wav.getnframes() / wav.getframerate()


def test_attended_transfer_hands_the_caller_to_a_colleague(center: Center, artifacts: Path) -> None:
    procs = [phone(center, "alice", 1, artifacts), phone(center, "bob", 2, artifacts)]
    try:
        center.wait_agents(["alice", "bob"])
        procs.append(caller(center, 3, artifacts, hold_ms=22_000))
        call = live(center, lambda c: c["connected"] and c["agent"] == "alice", "alice talking")
        alice = center.login("alice", AGENTS["alice"][1])
        bob = center.login("bob", AGENTS["bob"][1])
        path = f"/api/calls/{call['call_id']}"

        with pytest.raises(urllib.error.HTTPError) as refused:
            center.request("POST", f"{path}/hold", token=bob)
        assert refused.value.code == 403  # not bob's call
        held = center.request("POST", f"{path}/hold", token=alice)
        assert held["held"] is True
        consult = center.request("POST", f"{path}/transfer", {"to_agent": "bob",
                                 "mode": "attended"}, token=alice)  # fmt: skip
        assert consult["consult"]["agent"] == "bob"
        live(center, lambda c: (c["consult"] or {}).get("answered"), "bob answered")
        with pytest.raises(urllib.error.HTTPError) as busy:
            center.request("POST", f"{path}/transfer", {"to_queue": "support"}, token=alice)
        assert busy.value.code == 409
        done = center.request("POST", f"{path}/transfer/complete", token=alice)
        assert done["agent"] == "bob" and done["held"] is False
        live(center, lambda c: c["agent"] == "bob" and not c["held"], "bob has the caller")
        assert center.agent_state("alice") in ("wrap_up", "available")

        (row,) = center.wait_calls(1, timeout=40, where=lambda r: r["caller"] == "5550777",
                                   recorded=True)  # fmt: skip
    finally:
        for proc in procs:
            proc.stop()
    assert row["agent"] == "bob" and row["hangup_side"] == "caller"
    (handoff,) = json.loads(row["handoffs"])
    assert (handoff["from"], handoff["to_agent"], handoff["mode"]) == ("alice", "bob",
                                                                       "attended")  # fmt: skip
    assert row["agent_rtp_rx"] > 50, row  # bob's phone was heard
    assert row["caller_rtp_rx"] > 200 and row["caller_rtp_tx"] > 200, row
    # one recording, from alice's answer to the caller's hang-up, across the hold
    talk = (_at(row["ended_at"]) - _at(row["answered_at"])).total_seconds()
    assert abs(recording(row) - talk) < 1.5, (recording(row), talk)
    audit = (center.data_dir / "audit.jsonl").read_text()
    for event in ("call.hold", "call.consult", "call.complete", "call.denied"):
        assert f'"{event}"' in audit, event


def test_blind_transfer_to_another_queue(center: Center, artifacts: Path) -> None:
    procs = [phone(center, "alice", 4, artifacts), phone(center, "bob", 5, artifacts)]
    try:
        center.wait_agents(["alice", "bob"], timeout=30)
        procs.append(caller(center, 6, artifacts, hold_ms=14_000))
        call = live(center, lambda c: c["connected"] and c["agent"] == "alice", "alice talking")
        alice = center.login("alice", AGENTS["alice"][1])
        moved = center.request("POST", f"/api/calls/{call['call_id']}/transfer",
                               {"to_queue": "support"}, token=alice)  # fmt: skip
        assert moved["queue"] == "support"
        live(center, lambda c: c["connected"] and c["agent"] == "bob", "bob took it")
        (row,) = center.wait_calls(1, timeout=40, where=lambda r: r["caller"] == "5550777"
                                   and r["queue"] == "support")  # fmt: skip
    finally:
        for proc in procs:
            proc.stop()
    assert row["agent"] == "bob"
    (handoff,) = json.loads(row["handoffs"])
    assert (handoff["from"], handoff["to_queue"], handoff["mode"]) == ("alice", "support",
                                                                       "blind")  # fmt: skip
    assert row["agent_rtp_rx"] > 50, row
