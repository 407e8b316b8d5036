"""End to end through `kefu serve`: SIPp callers on the trunk, SIPp agent phones that
register with digest auth, real Kamailio, real pjsua2 workers, real mosquitto.

What a person would check: the agent's phone rang and was answered, audio flowed both
ways, the recording exists and is as long as the conversation, the SQL row is right,
the edge refuses strangers and survives garbage, and capacity spreads over workers.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pbx.procs import ManagedProcess, free_port, wait_until
from recording.storage import analyse
from tests.support.center import Center, center_config, pick_ports, start_center
from tests.support.sipp import run_sipp, start_sipp

pytestmark = pytest.mark.e2e

WORKERS = 8
POOL = 12


@pytest.fixture(scope="module")
def center(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Center]:
    tmp = tmp_path_factory.mktemp("center")
    ports = pick_ports(WORKERS)
    running = start_center(tmp, center_config(ports, workers=WORKERS, pool_agents=POOL), ports)
    try:
        yield running
    finally:
        code = running.proc.stop(timeout=30)
        assert code == 0, f"kefu serve exited with {code}:\n{running.proc.log_tail(30)}"


def start_agent(
    center: Center, name: str, users: list[tuple[str, str]], n: int, log_dir: Path
) -> ManagedProcess:
    """Register each user with digest auth from one port, then answer their calls there."""
    port = center.sipp_port(n)
    for user, password in users:
        done = run_sipp(
            "register.xml", center.edge, local_port=port, service=user, auth=(user, password),
            timeout_s=10, timeout=30,
        )  # fmt: skip
        assert done.ok, done.output[-2000:]
    return start_sipp(
        name,
        log_dir,
        "agent.xml",
        center.edge,
        local_port=port,
        media_port=free_port(span=4),
        calls=len(users),
        concurrency=len(users),
        timeout_s=90,
        workdir=log_dir,
    )


def call(center: Center, digit: str, n: int, log_dir: Path, *, hold_ms: int, calls: int = 1) -> Any:
    return run_sipp(
        "caller.xml",
        center.edge,
        local_port=center.sipp_port(n),
        media_port=free_port(span=4),
        service="1000",
        calls=calls,
        concurrency=calls,
        rate=calls,
        keys={
            "caller": f"55501{n:02d}",
            "digit": digit,
            "dtmf_ms": "1500",  # inside the prompt: barge-in
            "hold_ms": str(hold_ms),
        },
        timeout_s=90,
        workdir=log_dir,
        timeout=150,
    )


def ts(value: str | None) -> datetime:
    assert value is not None
    return datetime.fromisoformat(value)


def test_caller_reaches_alice_bridged_recorded_and_logged(center: Center, artifacts: Path) -> None:
    """DID 1000, press 1: alice's phone rings, she answers, both talk, the call is recorded."""
    alice = start_agent(center, "alice-phone", [("1001", "alice-demo-secret")], 0, artifacts)
    try:
        center.wait_agents(["alice"])
        result = call(center, "1", 1, artifacts, hold_ms=9000)
        assert result.ok, result.output[-3000:]
        (row,) = center.wait_calls(1, where=lambda c: c["agent"] == "alice", recorded=True)
        assert alice.proc is not None and alice.proc.wait(30) == 0, alice.log_tail()
    finally:
        alice.stop()

    assert row["did"] == "1000"
    assert row["queue"] == "sales"
    assert row["ivr_digits"] == "1"
    assert row["hangup_side"] == "caller"
    arrived, queued = ts(row["arrived_at"]), ts(row["queued_at"])
    offered, answered, ended = ts(row["offered_at"]), ts(row["answered_at"]), ts(row["ended_at"])
    assert arrived <= queued <= offered <= answered <= ended
    talk_s = (ended - answered).total_seconds()
    assert talk_s > 2.0

    # audio both ways: the worker received and sent RTP on both legs
    assert row["caller_rtp_rx"] > 100 and row["caller_rtp_tx"] > 100
    assert row["agent_rtp_rx"] > 50 and row["agent_rtp_tx"] > 50

    path = Path(row["recording_path"])
    assert re.search(r"recordings/\d{4}/\d{2}/\d{2}/" + row["call_id"] + r"\.wav$", str(path))
    assert path.is_file()
    facts = analyse(path)
    assert facts.channels == 1 and facts.rate == 8000
    assert abs(facts.duration_s - talk_s) < 1.5, (facts, talk_s)
    assert facts.rms > 200, f"recording is silent: {facts}"


def test_edge_survives_garbage_and_the_next_call_works(center: Center, artifacts: Path) -> None:
    """1 000 random datagrams and truncated SIP to the edge: nothing dies, bob still gets a call."""
    before = center.get("/api/health")
    assert before["status"] == "ok"
    valid = (
        b"INVITE sip:1000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK1\r\n"
        b"From: <sip:1@x>;tag=1\r\nTo: <sip:1000@x>\r\nCall-ID: fuzz\r\nCSeq: 1 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    rng = random.Random(20261124)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(1000):
            if i % 2:
                payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 1400)))
            else:
                payload = valid[: rng.randint(1, len(valid) - 1)]
            sock.sendto(payload, ("127.0.0.1", center.ports["sip"]))
    assert center.proc.alive()
    after = center.get("/api/health")
    assert after["status"] == "ok", after
    assert "exited" not in center.proc.log_path.read_text()

    bob = start_agent(center, "bob-phone", [("1002", "bob-demo-secret")], 2, artifacts)
    try:
        center.wait_agents(["bob"])
        result = call(center, "2", 3, artifacts, hold_ms=4000)
        assert result.ok, result.output[-3000:]
        rows = center.wait_calls(1, where=lambda c: c["agent"] == "bob")
        assert len(rows) == 1 and rows[0]["answered_at"] and rows[0]["queue"] == "support"
    finally:
        bob.stop()


def test_invite_from_outside_the_trunk_allow_list_gets_403(center: Center, artifacts: Path) -> None:
    result = run_sipp(
        "invite_only.xml",
        center.edge,
        local_ip="127.0.0.2",
        local_port=free_port("127.0.0.2"),
        service="1000",
        keys={"expect": "403"},
        timeout_s=20,
        workdir=artifacts,
        timeout=40,
    )
    assert result.ok, result.output[-2000:]


def test_twelve_concurrent_bridged_calls_spread_over_workers(
    center: Center, artifacts: Path
) -> None:
    """12 callers press 3 at once; 12 pool agents answer; every call is bridged."""
    users = [(f"20{i:02d}", f"pool-secret-{i:02d}") for i in range(1, POOL + 1)]
    phones = start_agent(center, "pool-phones", users, 4, artifacts)
    try:
        center.wait_agents([f"p{i:02d}" for i in range(1, POOL + 1)], timeout=30)
        result = call(center, "3", 30, artifacts, hold_ms=8000, calls=POOL)
        assert result.ok, result.output[-3000:]
        rows = center.wait_calls(POOL, timeout=60, where=lambda c: c["queue"] == "pool")
    finally:
        phones.stop()
    assert len(rows) == POOL
    assert all(r["answered_at"] and r["hangup_side"] == "caller" for r in rows), rows
    assert len({r["agent"] for r in rows}) == POOL
    assert len({r["worker"] for r in rows}) >= POOL // 2  # no worker holds more than 2
    assert all(r["agent_rtp_rx"] > 0 and r["caller_rtp_rx"] > 0 for r in rows)


def test_worker_dying_mid_call_frees_the_agent_and_keeps_the_record(
    center: Center, artifacts: Path
) -> None:
    """SIGKILL the worker holding a bridged call: bob is freed, the row and WAV survive."""
    bob = start_agent(center, "bob-phone-2", [("1002", "bob-demo-secret")], 5, artifacts)
    caller = start_sipp(
        "doomed-caller",
        artifacts,
        "caller.xml",
        center.edge,
        local_port=center.sipp_port(6),
        media_port=free_port(span=4),
        service="1000",
        keys={"caller": "5550199", "digit": "2", "dtmf_ms": "1500", "hold_ms": "30000"},
        timeout_s=60,
    )
    try:
        center.wait_agents(["bob"])

        def bridged() -> list[dict[str, Any]]:
            calls = center.get("/api/calls")
            return [
                c for c in calls if c["caller"] == "5550199" and c["answered"] and not c["ended"]
            ]

        wait_until(lambda: bool(bridged()), 20, "bob to be talking", interval=0.2)
        time.sleep(2.0)  # let the recording hold some audio
        worker = str(bridged()[0]["worker"])
        pid = center.get("/api/health")["components"]["workers"]["each"][worker]["pid"]
        os.kill(pid, signal.SIGKILL)

        (row,) = center.wait_calls(
            1, where=lambda c: c["caller"] == "5550199", recorded=True, timeout=20
        )
        assert row["hangup_side"] == "system" and row["agent"] == "bob"
        assert row["answered_at"] and row["ended_at"]
        assert row["recording_duration_s"] > 1.5
        assert analyse(Path(row["recording_path"])).duration_s > 1.5  # header repaired
        wait_until(lambda: center.agent_state("bob") in ("wrap_up", "available"), 10, "bob freed")
    finally:
        caller.stop()
        bob.stop()
    wait_until(lambda: center.get("/api/health")["status"] == "ok", 30, "health ok", interval=0.25)


def test_a_crashed_worker_is_restarted(center: Center) -> None:
    """SIGKILL one worker: its last will marks it down, `kefu serve` starts it again."""
    before = center.get("/api/health")["components"]["workers"]["each"]["3"]
    assert before["up"] and before["pid"] > 0
    os.kill(before["pid"], signal.SIGKILL)

    def restarted() -> bool:
        now = center.get("/api/health")["components"]["workers"]["each"]["3"]
        return bool(now["up"]) and now["pid"] not in (0, before["pid"])

    wait_until(restarted, 30, "worker 3 to come back with a new pid", interval=0.25)
    assert "worker-3 exited" in center.proc.log_path.read_text()
    wait_until(lambda: center.get("/api/health")["status"] == "ok", 20, "health ok", interval=0.25)


def test_edge_answers_503_when_every_worker_is_full(tmp_path: Path) -> None:
    """Two workers hold two callers each; the fifth INVITE gets 503 with Retry-After."""
    ports = pick_ports(2)
    center = start_center(tmp_path, center_config(ports, workers=2), ports)
    filler: ManagedProcess | None = None
    try:
        filler = start_sipp(
            "fillers",
            tmp_path,
            "hold.xml",
            center.edge,
            local_port=center.sipp_port(0),
            service="1000",
            calls=4,
            concurrency=4,
            rate=20,
            pause_ms=8000,
            timeout_s=30,
        )

        def legs() -> int:
            workers = center.get("/api/health")["components"]["workers"]["each"]
            return sum(int(w["legs"]) for w in workers.values())

        wait_until(lambda: legs() >= 4, 15, "4 callers on the workers", interval=0.2)
        result = run_sipp(
            "invite_only.xml",
            center.edge,
            local_port=center.sipp_port(1),
            service="1000",
            keys={"expect": "503"},
            timeout_s=20,
            workdir=tmp_path,
            timeout=40,
            trace_to=tmp_path / "503.msg",
        )
        assert result.ok, result.output[-2000:]
        assert re.search(r"SIP/2.0 503[^\n]*\n(?:[^\n]+\n)*?Retry-After: 7", result.messages)
        assert filler.proc is not None and filler.proc.wait(40) == 0, filler.log_tail()
    finally:
        if filler is not None:
            filler.stop()
        assert center.proc.stop(timeout=30) == 0
