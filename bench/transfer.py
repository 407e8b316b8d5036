"""Call-control latency: hold, attended and blind transfers through the web API, on
real workers, Kamailio and SIPp phones.

    python -m bench.transfer [--calls 20]

One `kefu serve` (2 workers) whose DID goes straight into the sales queue; alice (sales)
and bob (support) each have a SIPp desk phone that answers at once and traces every
INVITE it gets. One caller at a time: alice answers, then over HTTP (a signed-in
session, as the desktop does) she holds and resumes, then transfers the caller to bob —
attended on even calls (consult, wait for bob, complete), blind on odd ones. The caller
hangs up a few seconds later; the next call starts once both agents are free.

Per call (host clock: Python `time.time()`, SIPp's trace, the worker's log lines):
- `hold` / `resume`: the POST's round trip (the core has queued the worker commands);
- `hold -> unbridged`: the POST sent to the worker logging the caller unbridged;
- `transfer -> colleague rings`: the POST sent to bob's phone receiving the INVITE
  (attended and blind);
- `complete -> caller bridged`: attended, the POST sent to the worker logging the caller
  bridged to bob's leg; `blind -> caller bridged`: the POST to that same moment (bob's
  phone answers at once, so this is the caller's time on music).

Prints p50/p95/max and writes bench/results/transfer.json.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import table, write_result
from bench.screen_pop import _STAMP, quantiles_ms
from pbx.procs import free_port, wait_until
from tests.support.center import Center, center_config, pick_ports, start_center
from tests.support.sipp import run_sipp, start_sipp

CALLER = "5550999"
_WORKER_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ INFO legs (\w+) and (\w+) (un)?bridged"
)


def invites_received(trace: Path) -> list[float]:
    """When each INVITE reached the phone, in order."""
    out: list[float] = []
    stamp: float | None = None
    received = False
    for line in trace.read_text(errors="replace").splitlines():
        if match := _STAMP.match(line):
            stamp = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S.%f").timestamp()
            received = False
        elif line.startswith("UDP message received"):
            received = True
        elif received and line.startswith("INVITE ") and stamp is not None:
            out.append(stamp)
            received = False
    return out


def bridge_events(center: Center) -> list[tuple[float, str, str, bool]]:
    """(when, leg a, leg b, bridged?) from every worker's log."""
    out = []
    for log in sorted((center.data_dir / "logs").glob("worker-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if match := _WORKER_LINE.match(line):
                at = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                out.append((at, match[2], match[3], match[4] is None))
    return sorted(out)


def first_after(events: list[tuple[float, str, str, bool]], t: float,
                test: Callable[[str, str, bool], bool]) -> float | None:  # fmt: skip
    return next((at for at, a, b, up in events if at >= t and test(a, b, up)), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transfer")
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="kefu-transfer-"))
    ports = pick_ports(2)
    config = center_config(ports, workers=2, wrapup_s=0)
    config["ivr"] = {"main": {"start": "q", "languages": ["en"], "default_language": "en",
                              "nodes": {"q": {"kind": "queue", "queue": "sales"}}}}  # fmt: skip
    center = start_center(tmp, config, ports)
    samples: list[dict[str, Any]] = []
    bob_trace = tmp / "bob-sip.log"
    try:
        phones = []
        for n, (agent, user, secret) in enumerate(
            [("alice", "1001", "alice-demo-secret"), ("bob", "1002", "bob-demo-secret")], 1
        ):
            port = center.sipp_port(n)
            done = run_sipp("register.xml", center.edge, local_port=port, service=user,
                            auth=(user, secret), timeout_s=10, timeout=30)  # fmt: skip
            assert done.ok, done.output[-1500:]
            extra = ["-trace_msg", "-message_file", str(bob_trace)] if agent == "bob" else []
            phones.append(start_sipp(
                f"{agent}-phone", tmp, "agent.xml", center.edge, local_port=port,
                media_port=free_port(span=4), calls=args.calls, timeout_s=600, extra=extra,
            ))  # fmt: skip
        center.wait_agents(["alice", "bob"])
        alice = center.login("alice", "alice-demo-secret")
        for i in range(args.calls):
            samples.append(one_call(center, alice, tmp, i, attended=i % 2 == 0))
            center.wait_agents(["alice", "bob"], timeout=30)
        for phone in phones:
            phone.stop()
    finally:
        center.proc.stop(timeout=30)
    rings = invites_received(bob_trace)
    events = bridge_events(center)
    for s, ring in zip(samples, rings, strict=False):
        s["ring"] = ring
    return report(samples, events, args.calls)


def one_call(center: Center, token: str, tmp: Path, i: int, *, attended: bool) -> dict[str, Any]:
    caller = start_sipp(
        f"caller-{i}", tmp, "caller.xml", center.edge, local_port=center.sipp_port(3),
        media_port=free_port(span=4), service="1000", timeout_s=60,
        keys={"caller": CALLER, "digit": "none", "dtmf_ms": "100", "hold_ms": "4000"},
    )  # fmt: skip
    try:
        call = live_call(center, lambda c: c["connected"] and c["agent"] == "alice")
        path = f"/api/calls/{call['call_id']}"
        s: dict[str, Any] = {"call": call["call_id"], "attended": attended}

        def post(action: str, body: Any = None) -> float:
            t = time.time()
            center.request("POST", f"{path}/{action}", body, token=token)
            s[action.replace("/", "_")] = time.time() - t
            return t

        s["hold_at"] = post("hold")
        time.sleep(0.3)  # a person's pace: each step lands before the next is asked
        post("resume")
        time.sleep(0.3)
        if attended:
            s["transfer_at"] = post("transfer", {"to_agent": "bob", "mode": "attended"})
            live_call(center, lambda c: bool((c["consult"] or {}).get("answered")))
            s["complete_at"] = post("transfer/complete")
        else:
            s["transfer_at"] = post("transfer", {"to_agent": "bob"})
        live_call(center, lambda c: c["connected"] and c["agent"] == "bob")
    finally:
        wait_until(lambda: not caller.alive(), 20, "the caller to hang up", interval=0.1)
        caller.stop()
    return s


def live_call(center: Center, where: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def check() -> bool:
        found[:] = [c for c in center.get("/api/calls") if c["caller"] == CALLER and where(c)]
        return bool(found)

    wait_until(check, 20, "the call", interval=0.01)
    return found[0]


def report(samples: list[dict[str, Any]], events: list[Any], calls: int) -> int:
    unbridged, rang, completed, blind_bridged = [], [], [], []
    for s in samples:
        call = s["call"]
        at = first_after(events, s["hold_at"], lambda a, _b, up, c=call: a == c and not up)
        if at is not None:
            unbridged.append(at - s["hold_at"])
        if "ring" in s:
            rang.append(s["ring"] - s["transfer_at"])
        start = s.get("complete_at", s["transfer_at"])
        # the caller bridged to a leg other than alice's: after the hand-over
        at = first_after(events, start, lambda a, _b, up, c=call: a == c and up)
        if at is not None:
            (completed if s["attended"] else blind_bridged).append(at - start)
    metrics: dict[str, Any] = {
        "calls": calls,
        "measured": len(samples),
        "hold_http_ms": quantiles_ms([s["hold"] for s in samples]),
        "resume_http_ms": quantiles_ms([s["resume"] for s in samples]),
        "transfer_http_ms": quantiles_ms([s["transfer"] for s in samples]),
        "complete_http_ms": quantiles_ms(
            [s["transfer_complete"] for s in samples if "transfer_complete" in s]
        ),
        "hold_to_unbridged_ms": quantiles_ms(unbridged),
        "transfer_to_colleague_ring_ms": quantiles_ms(rang),
        "complete_to_caller_bridged_ms": quantiles_ms(completed),
        "blind_to_caller_bridged_ms": quantiles_ms(blind_bridged),
    }
    rows = [
        [name, *(metrics[key][q] for q in ("p50", "p95", "max"))]
        for name, key in [
            ("POST hold (round trip)", "hold_http_ms"),
            ("POST resume (round trip)", "resume_http_ms"),
            ("POST transfer (round trip)", "transfer_http_ms"),
            ("POST complete (round trip)", "complete_http_ms"),
            ("hold -> worker unbridged", "hold_to_unbridged_ms"),
            ("transfer -> colleague's phone rings", "transfer_to_colleague_ring_ms"),
            ("complete -> caller bridged to colleague", "complete_to_caller_bridged_ms"),
            ("blind -> caller bridged to colleague", "blind_to_caller_bridged_ms"),
        ]
    ]
    print(table(["ms", "p50", "p95", "max"], rows))
    print(f"calls: {len(samples)} of {calls} ({sum(s['attended'] for s in samples)} attended)")
    print(write_result("transfer", {"calls": calls}, metrics))
    return 0 if len(samples) == calls else 1


if __name__ == "__main__":
    raise SystemExit(main())
