"""The Kamailio edge against real peers over loopback: SIPp phones, trunks and fake workers.

Each test starts its own Kamailio (`pbx.edge.Edge`) on free ports with short timers and
stops it, and every SIPp it started, by PID — also when the test fails.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from config.loader import load
from config.schema import Settings, Trunk
from pbx.edge import Edge, EdgeError, EdgeTimers, WorkerAddr, check_config, render_edge
from pbx.procs import ManagedProcess, PortBusy, free_port, wait_until
from tests.support.sipp import SippResult, run_sipp, sipp_argv

pytestmark = pytest.mark.integration

TIMERS = EdgeTimers(fr_timer_ms=1000, worker_fr_ms=1000, worker_fr_inv_ms=4000)
ALICE = ("1001", "alice-demo-secret")  # from config/demo.yaml
BOB = ("1002", "bob-demo-secret")
CARRIER_IP = "127.0.0.5"  # a trunk of its own, apart from the demo trunk's 127.0.0.1


# ---------------------------------------------------------------- fixtures / helpers


@dataclass
class EdgeLab:
    """A running edge plus the SIPp processes a test started around it."""

    edge: Edge
    settings: Settings
    workers: list[WorkerAddr]
    dir: Path
    ports: set[int]
    procs: list[ManagedProcess] = field(default_factory=list)
    carrier_port: int = 0
    """Where the outbound trunks `carrier` and `tech` send calls (on CARRIER_IP)."""

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.settings.edge.sip_port}"

    def port(self) -> int:
        return free_port(avoid=self.ports)

    def argv(self, scenario: str, *, extra: list[str] | None = None, **kw: object) -> list[str]:
        kw.setdefault("local_port", self.port())
        kw.setdefault("timeout_s", 30)
        return sipp_argv(scenario, self.target, **kw) + (extra or [])  # type: ignore[arg-type]

    def run(
        self, scenario: str, *, trace: bool = False, extra: list[str] | None = None, **kw: object
    ) -> SippResult:
        """Run a scenario to its end; with `trace`, also return every SIP message it saw."""
        kw.setdefault("local_port", self.port())
        kw.setdefault("timeout_s", 30)
        msg_file = self.dir / f"sipp-{uuid.uuid4().hex[:8]}.msg" if trace else None
        return run_sipp(scenario, self.target, timeout=45, trace_to=msg_file, extra=extra, **kw)

    def start(
        self, name: str, scenario: str, *, extra: list[str] | None = None, **kw: object
    ) -> ManagedProcess:
        argv = self.argv(scenario, extra=extra, **kw)
        proc = ManagedProcess(name, argv, self.dir / f"{name}.log").start()
        self.procs.append(proc)
        return proc

    def fake_worker(self, worker: WorkerAddr, ring_ms: int = 0) -> ManagedProcess:
        """A SIPp UAS on the worker's port that answers and holds every call (-aa: OPTIONS)."""
        return self.start(
            f"worker-{worker.worker_id}",
            "fake_worker.xml",
            local_port=worker.port,
            media_port=self.port(),
            calls=100000,
            concurrency=10000,
            timeout_s=120,
            extra=["-d", str(ring_ms)],
        )

    def carrier(self, hold_ms: int) -> tuple[ManagedProcess, Path]:
        """A SIPp UAS as the carrier: answers one call, hangs up after `hold_ms` unless the
        worker does first; returns the process and the file of every SIP message it saw."""
        messages = self.dir / f"carrier-{uuid.uuid4().hex[:8]}.msg"
        proc = self.start(
            "carrier",
            "uas_answer.xml",
            local_ip=CARRIER_IP,
            local_port=self.carrier_port,
            media_port=self.port(),
            keys={"ring_ms": "100", "hold_ms": str(hold_ms)},
            extra=["-trace_msg", "-message_file", str(messages)],
        )
        time.sleep(0.3)  # let SIPp bind before the INVITE arrives
        return proc, messages

    def register(self, user: str, password: str, port: int) -> SippResult:
        return self.run("register.xml", local_port=port, service=user, auth=(user, password))

    def loads(self) -> dict[str, int]:
        return {w.duid: w.load for w in self.edge.dispatcher_state()}


def lab_settings(
    edge_port: int,
    rpc_port: int,
    worker_base: int,
    workers: int,
    probe_s: int = 1,
    carrier_port: int = 0,
) -> Settings:
    """The demo settings on these ports, without browsers (no WebSocket, no rtpengine:
    tests/integration/test_webrtc.py has those); with `carrier_port`, two outbound trunks
    to it: `carrier` as is and `tech` with the prefix 77."""
    base = load()
    trunks = list(base.edge.trunks)
    if carrier_port:
        outbound = f"{CARRIER_IP}:{carrier_port}"
        trunks += [
            Trunk(name="carrier", allow=[CARRIER_IP], outbound=outbound),
            Trunk(name="tech", allow=[CARRIER_IP], outbound=outbound, outbound_prefix="77"),
        ]
    edge = base.edge.model_copy(
        update={
            "sip_port": edge_port,
            "rpc_port": rpc_port,
            "probe_interval_s": probe_s,
            "retry_after_s": 7,
            "trunks": trunks,
            "ws_port": None,
        }
    )
    pbx = base.pbx.model_copy(update={"workers": workers, "worker_base_port": worker_base})
    return base.model_copy(update={"edge": edge, "pbx": pbx})


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[..., EdgeLab]]:
    labs: list[EdgeLab] = []

    def make(workers: int = 3, *, outbound: bool = False) -> EdgeLab:
        ports: set[int] = set()
        sip, rpc = free_port(avoid=ports), free_port(avoid=ports)
        worker_base = free_port(span=workers, avoid=ports)
        carrier = free_port(CARRIER_IP, avoid=ports) if outbound else 0
        settings = lab_settings(sip, rpc, worker_base, workers, carrier_port=carrier)
        run_dir = tmp_path / f"edge-{len(labs)}"
        edge = Edge()
        lab = EdgeLab(edge, settings, [], run_dir, ports, carrier_port=carrier)
        labs.append(lab)
        edge.start(settings, run_dir, run_dir / "kamailio.log", timers=TIMERS)
        lab.workers = [
            WorkerAddr(i + 1, "127.0.0.1", worker_base + i) for i in range(settings.pbx.workers)
        ]
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            for proc in lab.procs:
                proc.stop()
            lab.edge.stop()


def udp_request(port: int, message: str, timeout: float = 1.0, local_ip: str = "127.0.0.1") -> int:
    """Send one SIP request; the first final status code that comes back (0: none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((local_ip, 0))
        sock.settimeout(timeout)
        lport = sock.getsockname()[1]
        sock.sendto(message.replace("LPORT", str(lport)).encode(), ("127.0.0.1", port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65535).decode(errors="replace")
            except OSError:
                return 0
            match = re.match(r"SIP/2\.0 (\d{3})", data)
            if match and not match.group(1).startswith("1"):
                return int(match.group(1))
    return 0


def register_message(port: int, user: str, authorization: str | None = None) -> str:
    auth = f"Authorization: {authorization}\r\n" if authorization else ""
    return (
        f"REGISTER sip:127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:LPORT;branch=z9hG4bK{uuid.uuid4().hex[:12]};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{user}@127.0.0.1>;tag={uuid.uuid4().hex[:8]}\r\n"
        f"To: <sip:{user}@127.0.0.1>\r\n"
        f"Call-ID: {uuid.uuid4().hex}\r\n"
        "CSeq: 1 REGISTER\r\n"
        f"Contact: <sip:{user}@127.0.0.1:LPORT>\r\n"
        "Expires: 60\r\n"
        f"{auth}"
        "Content-Length: 0\r\n\r\n"
    )


# ---------------------------------------------------------------- config and process


def test_render_writes_workers_trunks_and_hashed_credentials(tmp_path: Path) -> None:
    """The rendered files name every worker with its maxload, every trunk network, no password."""
    settings = lab_settings(5060, 5071, 5100, 3)
    files = render_edge(settings, run_dir=tmp_path)
    lines = files.dispatcher_list.read_text().splitlines()[1:]
    assert lines == [
        "1 sip:127.0.0.1:5100 0 0 duid=w1;maxload=2",
        "1 sip:127.0.0.1:5101 0 0 duid=w2;maxload=2",
        "1 sip:127.0.0.1:5102 0 0 duid=w3;maxload=2",
    ]
    assert "1 127.0.0.1 32 0 demo-trunk" in files.address_list.read_text()
    cfg = files.config.read_text()
    assert "{{" not in cfg
    assert "alice-demo-secret" not in cfg
    assert 'ds_select_dst("1", "10")' in cfg
    check_config(files)


def test_invalid_config_reports_kamailios_message(tmp_path: Path) -> None:
    """A broken kamailio.cfg is refused with Kamailio's own error line."""
    files = render_edge(lab_settings(5060, 5071, 5100, 1), run_dir=tmp_path)
    files.config.write_text(files.config.read_text() + "\nroute[BROKEN] { no_such_function(); }\n")
    with pytest.raises(EdgeError, match=r"no_such_function|ERROR"):
        check_config(files)


def test_start_refuses_a_busy_sip_port(tmp_path: Path) -> None:
    """Kamailio would share a busy UDP port silently; Edge.start refuses instead."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        settings = lab_settings(port, free_port(), free_port(span=1), 1)
        edge = Edge()
        with pytest.raises(PortBusy):
            edge.start(settings, tmp_path, tmp_path / "k.log")
        assert edge.proc is None


# ---------------------------------------------------------------- registrar


def test_register_right_password_shows_user(make_lab: Callable[..., EdgeLab]) -> None:
    """An agent registers with digest auth and appears in registered_users()."""
    lab = make_lab(workers=1)
    assert lab.edge.ping()
    port = lab.port()
    result = lab.register(*ALICE, port)
    assert result.ok, result.output
    users = lab.edge.registered_users()
    assert users.keys() == {"1001"}
    assert f"127.0.0.1:{port}" in users["1001"]


def test_register_wrong_password_and_unknown_user_refused(
    make_lab: Callable[..., EdgeLab],
) -> None:
    """Wrong password: challenged again, not 200. Unknown user: 403. Nothing registered."""
    lab = make_lab(workers=1)
    wrong = lab.register("1001", "not-the-password", lab.port())
    assert not wrong.ok
    unknown = lab.register("9999", "whatever-password", lab.port())
    assert not unknown.ok

    sip_port = lab.settings.edge.sip_port
    assert udp_request(sip_port, register_message(sip_port, "9999")) == 401
    fake = (
        'Digest username="9999", realm="127.0.0.1", nonce="abc", '
        f'uri="sip:127.0.0.1:{sip_port}", response="00000000000000000000000000000000"'
    )
    assert udp_request(sip_port, register_message(sip_port, "9999", fake)) == 403
    assert lab.edge.registered_users() == {}


def test_user_added_at_run_time_can_register(make_lab: Callable[..., EdgeLab]) -> None:
    """htable.sets over RPC lets a new agent register without a restart."""
    lab = make_lab(workers=1)
    port = lab.port()
    assert not lab.register("2001", "new-agent-pass", port).ok
    lab.edge.add_user("2001", "new-agent-pass")
    result = lab.register("2001", "new-agent-pass", port)
    assert result.ok, result.output
    assert "2001" in lab.edge.registered_users()


# ---------------------------------------------------------------- access control


def test_invite_from_a_stranger_is_forbidden(make_lab: Callable[..., EdgeLab]) -> None:
    """An INVITE from 127.0.0.2 (no trunk, no worker) gets 403."""
    lab = make_lab(workers=1)
    result = lab.run(
        "invite_only.xml", local_ip="127.0.0.2", service="1000", keys={"expect": "403"}
    )
    assert result.ok, result.output
    # The scenario itself can fail: expecting 503 when the edge says 403 is an error.
    wrong = lab.run("invite_only.xml", local_ip="127.0.0.2", service="1000", keys={"expect": "503"})
    assert not wrong.ok


# ---------------------------------------------------------------- dispatching


def test_trunk_calls_spread_by_load_then_503_then_recover(
    make_lab: Callable[..., EdgeLab],
) -> None:
    """3 workers x maxload 2: 6 calls spread 2/2/2, the 7th gets 503 + Retry-After, and the
    load returns to 0."""
    lab = make_lab(workers=3)
    for worker in lab.workers:
        lab.fake_worker(worker)
    wait_until(lambda: all(w.active for w in lab.edge.dispatcher_state()), 10, "workers probed")

    wave = lab.start(
        "wave-1",
        "invite_only.xml",
        service="1000",
        keys={"expect": "200"},
        calls=6,
        concurrency=6,
        rate=50,
        extra=["-d", "4000"],
    )
    wait_until(lambda: sum(lab.loads().values()) == 6, 10, "6 calls dispatched")
    assert lab.loads() == {"w1": 2, "w2": 2, "w3": 2}

    seventh = lab.run("invite_only.xml", service="1000", keys={"expect": "503"}, trace=True)
    assert seventh.ok, seventh.output
    assert re.search(r"SIP/2.0 503[^\n]*\n(?:[^\n]+\n)*?Retry-After: 7", seventh.messages)
    assert sum(lab.loads().values()) == 6

    assert wave.proc is not None
    assert wave.proc.wait(20) == 0, wave.log_tail()
    wait_until(lambda: sum(lab.loads().values()) == 0, 5, "load back to 0")

    again = lab.run(
        "invite_only.xml",
        service="1000",
        keys={"expect": "200"},
        calls=6,
        concurrency=6,
        rate=50,
        extra=["-d", "500"],
    )
    assert again.ok, again.output
    wait_until(lambda: sum(lab.loads().values()) == 0, 5, "load back to 0 after wave 2")


def test_dead_worker_is_failed_over_and_comes_back(make_lab: Callable[..., EdgeLab]) -> None:
    """Nothing on w1's port: calls fail over to w2/w3, the probe marks w1 inactive; once a
    worker listens there again the probe brings it back."""
    lab = make_lab(workers=3)
    for worker in lab.workers[1:]:
        lab.fake_worker(worker)

    # Straight away, before any probe has judged w1: the least-loaded pick lands on
    # w1 for one of these calls, which must time out there and fail over.
    result = lab.run(
        "invite_only.xml",
        service="1000",
        keys={"expect": "200"},
        calls=4,
        concurrency=4,
        rate=50,
        extra=["-d", "300"],
    )
    assert result.ok, result.output
    state = {w.duid: w for w in lab.edge.dispatcher_state()}
    assert not state["w1"].active
    wait_until(lambda: sum(lab.loads().values()) == 0, 5, "load back to 0")

    lab.fake_worker(lab.workers[0])
    wait_until(lambda: all(w.active for w in lab.edge.dispatcher_state()), 10, "w1 active again")


def test_all_workers_dead_gives_503(make_lab: Callable[..., EdgeLab]) -> None:
    """No worker answers: after failing over through all of them the trunk gets 503."""
    lab = make_lab(workers=2)
    result = lab.run("invite_only.xml", service="1000", keys={"expect": "503"}, trace=True)
    assert result.ok, result.output
    assert "Retry-After: 7" in result.messages
    assert sum(lab.loads().values()) == 0


def test_cancelled_trunk_call_frees_its_worker_slot(make_lab: Callable[..., EdgeLab]) -> None:
    """The trunk cancels a call while the worker rings: 487, and the worker's load is 0 again."""
    lab = make_lab(workers=1)
    lab.fake_worker(lab.workers[0], ring_ms=5000)
    wait_until(lambda: all(w.active for w in lab.edge.dispatcher_state()), 10, "worker probed")
    sip_port = lab.settings.edge.sip_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(8)
        lport = sock.getsockname()[1]
        branch, call_id, tag = f"z9hG4bK{uuid.uuid4().hex[:10]}", uuid.uuid4().hex, "ctag"
        common = (
            f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:caller@127.0.0.1>;tag={tag}\r\n"
            f"Call-ID: {call_id}\r\n"
        )
        ruri = f"sip:1000@127.0.0.1:{sip_port}"

        def send(method: str, to: str, extra: str = "") -> None:
            msg = (
                f"{method} {ruri} SIP/2.0\r\n{common}To: {to}\r\nCSeq: 1 {method}\r\n"
                f"{extra}Content-Length: 0\r\n\r\n"
            )
            sock.sendto(msg.encode(), ("127.0.0.1", sip_port))

        def wait_for(status: str, method: str) -> str:
            while True:
                data = sock.recv(65535).decode(errors="replace")
                if data.startswith(f"SIP/2.0 {status}") and f"CSeq: 1 {method}" in data:
                    return data

        send("INVITE", f"<{ruri}>", f"Contact: <sip:caller@127.0.0.1:{lport}>\r\n")
        wait_for("180", "INVITE")
        assert lab.loads() == {"w1": 1}
        send("CANCEL", f"<{ruri}>")
        final = wait_for("487", "INVITE")
        to = re.search(r"^To: (.*)$", final, re.M | re.I)
        assert to is not None
        send("ACK", to.group(1).strip())
    wait_until(lambda: lab.loads() == {"w1": 0}, 5, "load back to 0 after CANCEL")


def options_burst(sip_port: int, local_ip: str, count: int) -> int:
    """Fire `count` OPTIONS from one socket without waiting, then count the 200s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((local_ip, 0))
        lport = sock.getsockname()[1]
        for n in range(count):
            msg = (
                f"OPTIONS sip:127.0.0.1:{sip_port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {local_ip}:{lport};branch=z9hG4bKflood{n};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:f@{local_ip}>;tag=f{n}\r\n"
                f"To: <sip:127.0.0.1>\r\nCall-ID: flood-{n}\r\nCSeq: 1 OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            sock.sendto(msg.encode(), ("127.0.0.1", sip_port))
            if n % 50 == 49:
                time.sleep(0.005)  # a burst, not a socket-buffer overflow
        answered = 0
        sock.settimeout(0.5)
        with contextlib.suppress(OSError):
            while answered < count:
                if sock.recv(65535).startswith(b"SIP/2.0 200"):
                    answered += 1
    return answered


def test_flood_from_a_stranger_is_cut_but_not_from_the_trunk(
    make_lab: Callable[..., EdgeLab],
) -> None:
    """pike drops a stranger sending 600 requests in a burst; the trunk's 600 all pass."""
    lab = make_lab(workers=1)
    sip_port = lab.settings.edge.sip_port
    assert options_burst(sip_port, "127.0.0.1", 600) == 600
    stranger = options_burst(sip_port, "127.0.0.4", 600)
    assert 150 <= stranger < 450, stranger
    assert lab.edge.ping()


# ---------------------------------------------------------------- worker -> agent


def test_worker_calls_registered_agent_through_edge(make_lab: Callable[..., EdgeLab]) -> None:
    """A worker's INVITE to sip:1001@edge reaches the registered agent; 480/404 otherwise;
    worker->agent calls never touch the dispatcher load."""
    lab = make_lab(workers=2)
    agent_port = lab.port()
    registered = lab.register(*ALICE, agent_port)
    assert registered.ok, registered.output
    agent = lab.start(
        "agent-1001", "agent.xml", local_port=agent_port, media_port=lab.port(), timeout_s=30
    )
    time.sleep(0.3)  # let SIPp bind before the INVITE arrives

    worker = lab.workers[0]
    call = lab.run(
        "invite_only.xml",
        local_port=worker.port,
        media_port=lab.port(),
        service="1001",
        keys={"expect": "200"},
        extra=["-d", "500"],
    )
    assert call.ok, call.output
    assert agent.proc is not None
    assert agent.proc.wait(10) == 0, agent.log_tail()
    assert lab.loads() == {"w1": 0, "w2": 0}

    not_registered = lab.run(
        "invite_only.xml", local_port=worker.port, service=BOB[0], keys={"expect": "480"}
    )
    assert not_registered.ok, not_registered.output
    unknown = lab.run(
        "invite_only.xml", local_port=worker.port, service="7777", keys={"expect": "404"}
    )
    assert unknown.ok, unknown.output


# ---------------------------------------------------------------- worker -> trunk


def test_render_writes_each_trunks_outbound_address(tmp_path: Path) -> None:
    """route[TO_TRUNK] gets one case per trunk: host:port (5060 when left out) and prefix."""
    settings = lab_settings(5060, 5071, 5100, 1)
    trunks = [
        *settings.edge.trunks,
        Trunk(name="carrier", allow=["192.0.2.1"], outbound="sip.carrier.example"),
        Trunk(name="tech", allow=["192.0.2.1"], outbound="192.0.2.7:5080", outbound_prefix="77"),
    ]
    edge = settings.edge.model_copy(update={"trunks": trunks})
    files = render_edge(settings.model_copy(update={"edge": edge}), run_dir=tmp_path)
    cfg = files.config.read_text()
    cases = re.findall(
        r'case "([^"]+)":\s+\$var\(dst\) = "([^"]*)";\s+\$var\(prefix\) = "(\d*)"', cfg
    )
    assert cases == [
        ("demo-trunk", "", ""),
        ("carrier", "sip.carrier.example:5060", ""),
        ("tech", "192.0.2.7:5080", "77"),
    ]
    check_config(files)


def caller_keys(hold_ms: int) -> dict[str, str]:
    """caller.xml as a worker's outbound leg: no digit, hang up `hold_ms` after the answer."""
    return {"caller": "worker", "digit": "none", "dtmf_ms": "100", "hold_ms": str(hold_ms)}


def test_worker_dials_out_through_the_trunk(make_lab: Callable[..., EdgeLab]) -> None:
    """A worker's INVITE to sip:5550100@edge;trunk=carrier reaches the carrier as
    sip:5550100@<outbound>; the worker's BYE and then the carrier's BYE pass; the
    dispatcher load stays 0."""
    lab = make_lab(workers=2, outbound=True)
    worker = lab.workers[0]
    carrier, messages = lab.carrier(hold_ms=3_600_000)  # waits for the worker's BYE
    call = lab.run(
        "caller.xml",
        local_port=worker.port,
        media_port=lab.port(),
        service="5550100",
        keys=caller_keys(800),
        extra=["-set", "ruri_params", ";trunk=carrier"],
    )
    assert call.ok, call.output
    assert carrier.proc is not None
    assert carrier.proc.wait(10) == 0, carrier.log_tail()
    seen = messages.read_text()
    outbound = f"{CARRIER_IP}:{lab.carrier_port}"
    assert re.search(rf"^INVITE sip:5550100@{outbound} SIP/2\.0\r?$", seen, re.M), seen
    assert re.search(r"^Record-Route: <sip:127\.0\.0\.1:\d+;lr", seen, re.M), seen
    assert re.search(rf"^BYE sip:phone@{outbound}", seen, re.M), seen
    assert lab.loads() == {"w1": 0, "w2": 0}

    # The carrier hangs up this time, through the `tech` trunk (prefix 77).
    carrier, messages = lab.carrier(hold_ms=300)
    call = lab.run(
        "caller.xml",
        local_port=worker.port,
        media_port=lab.port(),
        service="5550199",
        keys=caller_keys(20_000),
        trace=True,
        extra=["-set", "ruri_params", ";trunk=tech"],
    )
    assert call.ok, call.output
    assert re.search(r"^BYE sip:worker@127\.0\.0\.1", call.messages, re.M), call.messages
    assert carrier.proc is not None
    assert carrier.proc.wait(10) == 0, carrier.log_tail()
    assert re.search(rf"^INVITE sip:775550199@{outbound} ", messages.read_text(), re.M)
    assert lab.loads() == {"w1": 0, "w2": 0}


def test_only_workers_dial_out_and_only_to_known_trunks(make_lab: Callable[..., EdgeLab]) -> None:
    """;trunk= from a stranger, the demo trunk or the carrier itself: 403. From a worker: an
    unknown trunk 404, a trunk without an outbound address 403, a non-number 484."""
    lab = make_lab(workers=1, outbound=True)

    def dial(expect: str, trunk: str = "carrier", number: str = "5550100", **kw: object) -> None:
        result = lab.run(
            "invite_only.xml",
            service=number,
            keys={"expect": expect.split()[0]},
            trace=True,
            extra=["-set", "ruri_params", f";trunk={trunk}"],
            **kw,
        )
        assert result.ok, f"{trunk} {number} {kw}: {result.output}"
        assert f"SIP/2.0 {expect}\n" in result.messages.replace("\r", "")

    dial("403 Forbidden", local_ip="127.0.0.2")
    dial("403 Forbidden", local_ip="127.0.0.1")  # the demo trunk's network
    dial("403 Forbidden", local_ip=CARRIER_IP)
    worker = lab.workers[0].port
    dial("404 Unknown Trunk", trunk="nosuch", local_port=worker)
    dial("404 Unknown Trunk", trunk="", local_port=worker)
    dial("403 Trunk Has No Outbound Address", trunk="demo-trunk", local_port=worker)
    dial("484 Address Incomplete", number="call-me", local_port=worker)


# ---------------------------------------------------------------- robustness


def _garbage(rng: random.Random, sip_port: int) -> Iterator[bytes]:
    valid = (
        f"INVITE sip:1000@127.0.0.1:{sip_port} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKfuzz\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:1000@127.0.0.1>\r\n"
        "Call-ID: fuzz@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:5999>\r\n"
        "Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n"
    ).encode()
    register = register_message(sip_port, "1001").replace("LPORT", "5999").encode()
    for i in range(1000):
        kind = i % 5
        if kind == 0:
            yield rng.randbytes(rng.randint(1, 1400))
        elif kind == 1:
            base = rng.choice([valid, register])
            yield base[: rng.randint(1, len(base))]
        elif kind == 2:
            data = bytearray(rng.choice([valid, register]))
            for _ in range(rng.randint(1, 20)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            yield bytes(data)
        elif kind == 3:
            text = valid.decode()
            text = text.replace(
                "Content-Length: 4",
                rng.choice(
                    ["Content-Length: 99999", "Content-Length: -1", "Content-Length: x", ""]
                ),
            )
            text = text.replace(
                "CSeq: 1 INVITE",
                rng.choice(["CSeq: -5 INVITE", "CSeq: 1 BYE", "CSeq: 99999999999 INVITE", ""]),
            )
            yield text.encode()
        else:
            line = rng.choice(
                [b"SIP/2.0 200 OK\r\n\r\n", b"\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n", b"\x00" * 64]
            )
            yield line + b"Via: " + b"A" * rng.randint(0, 3000) + b"\r\n\r\n"


def test_garbage_does_not_hurt_the_edge(make_lab: Callable[..., EdgeLab]) -> None:
    """1 000 random and mangled datagrams (and some over TCP): still running, still answers
    OPTIONS and a valid REGISTER."""
    lab = make_lab(workers=1)
    sip_port = lab.settings.edge.sip_port
    rng = random.Random(20240611)
    with contextlib.ExitStack() as stack:
        senders = []
        for ip in ("127.0.0.1", "127.0.0.3"):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            sock.bind((ip, 0))
            senders.append(sock)
        for n, datagram in enumerate(_garbage(rng, sip_port)):
            senders[n % 2].sendto(datagram, ("127.0.0.1", sip_port))
            if n % 100 == 99:
                time.sleep(0.02)  # keep the socket buffer from dropping it all unread
    for n, chunk in enumerate(_garbage(random.Random(7), sip_port)):
        if n >= 20:
            break
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", sip_port), timeout=1) as conn,
        ):
            conn.sendall(chunk)
    time.sleep(0.5)

    assert lab.edge.alive(), lab.edge.proc.log_tail() if lab.edge.proc else ""
    assert lab.edge.ping()
    result = lab.register(*ALICE, lab.port())
    assert result.ok, result.output
    assert "1001" in lab.edge.registered_users()
