"""End to end through `kefu serve`: the agent's socket gets the screen pop — the CRM
card, open tickets, the IVR path, the routing decision — before the agent's phone
rings, and the web API keeps agents to their own calls and strangers out.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from pbx.procs import ManagedProcess, free_port, wait_until
from tests.support.center import Center, center_config, pick_ports, start_center
from tests.support.sipp import run_sipp, start_sipp

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def center(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Center]:
    tmp = tmp_path_factory.mktemp("pop-center")
    ports = pick_ports(workers=2)
    config = center_config(ports, workers=2)
    config["demo_customers"] = True  # 5551234 is Wang Fang: VIP, open high-priority ticket
    running = start_center(tmp, config, ports)
    try:
        yield running
    finally:
        assert running.proc.stop(timeout=30) == 0, running.proc.log_tail(30)


class AgentSocket:
    """An agent's browser socket: every message with the moment it arrived."""

    def __init__(self, center: Center, token: str, origin: str | None = None) -> None:
        self.messages: list[tuple[float, dict[str, Any]]] = []
        url = f"ws://127.0.0.1:{center.ports['http']}/ws/agent?token={token}"
        self._connection = connect(
            url, additional_headers={"Origin": origin or center.http}, open_timeout=5
        )
        self.ws: ClientConnection = self._connection.__enter__()  # a context manager only
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            for raw in self.ws:
                self.messages.append((time.time(), json.loads(raw)))
        except Exception:  # closed
            return

    def wait_for(self, kind: str, timeout: float = 30) -> tuple[float, dict[str, Any]]:
        def found() -> tuple[float, dict[str, Any]] | None:
            return next(((t, m) for t, m in self.messages if m.get("type") == kind), None)

        wait_until(lambda: found() is not None, timeout, f"a {kind!r} message", interval=0.05)
        result = found()
        assert result is not None
        return result

    def close(self) -> None:
        self._connection.__exit__(None, None, None)


def agent_phone(center: Center, n: int, log_dir: Path) -> tuple[ManagedProcess, Path]:
    """alice's SIPp phone: registered, then answering one call; its SIP trace file."""
    port = center.sipp_port(n)
    done = run_sipp(
        "register.xml", center.edge, local_port=port, service="1001",
        auth=("1001", "alice-demo-secret"), timeout_s=10, timeout=30,
    )  # fmt: skip
    assert done.ok, done.output[-2000:]
    trace = log_dir / "alice-sip.log"
    phone = start_sipp(
        "alice-phone", log_dir, "agent.xml", center.edge, local_port=port,
        media_port=free_port(span=4), calls=1, timeout_s=120,
        extra=["-trace_msg", "-message_file", str(trace)],
    )  # fmt: skip
    return phone, trace


def invite_received_at(trace: Path) -> float:
    """When the phone received its INVITE (SIPp's trace stamps each message)."""
    stamp = None
    for line in trace.read_text(errors="replace").splitlines():
        if line.startswith("-----"):
            stamp = line.strip("- ").strip()
        elif line.startswith("UDP message received") and stamp is not None:
            continue
        elif line.startswith("INVITE ") and stamp is not None:
            return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()
    raise AssertionError(f"no INVITE in {trace}")


def caller(center: Center, number: str, n: int, log_dir: Path) -> ManagedProcess:
    return start_sipp(
        f"caller-{number}", log_dir, "caller.xml", center.edge, local_port=center.sipp_port(n),
        media_port=free_port(span=4), service="1000", timeout_s=60,
        keys={"caller": number, "digit": "1", "dtmf_ms": "1000", "hold_ms": "6000"},
    )  # fmt: skip


def test_screen_pop_reaches_the_agent_before_the_phone_rings(
    center: Center, artifacts: Path
) -> None:
    token = center.login("alice", "alice-demo-secret")
    socket = AgentSocket(center, token)
    hello = socket.wait_for("hello")[1]
    assert hello["agent"] == "alice" and hello["role"] == "agent"
    phone, trace = agent_phone(center, 1, artifacts)
    call = caller(center, "5551234", 2, artifacts)
    try:
        center.wait_agents(["alice"])
        popped_at, pop = socket.wait_for("offer")
        socket.wait_for("answered")
        wait_until(lambda: trace.exists() and "INVITE " in trace.read_text(), 10, "the INVITE")
        rang_at = invite_received_at(trace)
        (row,) = center.wait_calls(1, timeout=30, where=lambda r: r["caller"] == "5551234")
        socket.wait_for("ended")
    finally:
        for proc in (call, phone):
            proc.stop()
        socket.close()
    assert popped_at <= rang_at + 0.005, f"pop {popped_at:.3f} after the ring {rang_at:.3f}"
    assert pop["call_id"] == row["call_id"] and pop["queue"] == "sales"
    assert pop["customer"]["name"] == "Wang Fang" and pop["customer"]["vip"] is True
    assert [t["ticket_id"] for t in pop["open_tickets"]] == ["T-2041"]
    assert ("menu", "digit", "1") in [
        (s["node"], s["what"], s["detail"]) for s in pop["ivr"]["path"]
    ]
    assert pop["routing"]["priority"] == 25 and pop["routing"]["winner"] == "alice"
    assert pop["new_customer"] is None


def test_an_unknown_caller_pops_a_new_customer_form(center: Center, artifacts: Path) -> None:
    token = center.login("alice", "alice-demo-secret")
    socket = AgentSocket(center, token)
    phone, _ = agent_phone(center, 3, artifacts)
    call = caller(center, "5550777", 4, artifacts)
    try:
        center.wait_agents(["alice"])
        _, pop = socket.wait_for("offer")
    finally:
        for proc in (call, phone):
            proc.stop()
        socket.close()
    assert pop["customer"] is None and pop["open_tickets"] == []
    assert pop["new_customer"] == {"phone": "5550777"}


def test_strangers_foreign_pages_and_other_agents_are_refused(center: Center) -> None:
    alice = center.login("alice", "alice-demo-secret")
    with pytest.raises(InvalidStatus) as refused:
        AgentSocket(center, alice, origin="http://evil.example")
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        AgentSocket(center, "not-a-token")
    with pytest.raises(urllib.error.HTTPError) as denied:
        center.request("GET", "/api/calls", token="not-a-token")
    assert denied.value.code == 401
    bob = center.login("bob", "bob-demo-secret")
    with pytest.raises(urllib.error.HTTPError) as denied:
        center.request("PUT", "/api/agents/alice/state", {"state": "away"}, token=bob)
    assert denied.value.code == 403
    events = [json.loads(line)["event"] for line in
              (center.data_dir / "audit.jsonl").read_text().splitlines()]  # fmt: skip
    assert "socket.refused" in events and "login" in events
