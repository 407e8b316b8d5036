"""Screen-pop latency: from the caller's INVITE to the pop on the agent's socket, and
the pop against the moment the agent's phone starts ringing.

    python -m bench.screen_pop [--calls 200] [--agents 10] [--rate 2]

One `kefu serve` (4 workers) whose DID goes straight into the pool queue (no IVR, so
the latency is routing + CRM look-up + the pop itself); `--agents` pool agents signed
in on the web API, each with its socket open (the `websockets` client, as a browser
would); one SIPp phone answers for all of them and traces every INVITE it gets. SIPp
callers (a distinct number each) call at `--rate` calls/s and hang up after 1.5 s.

Per call: t0 = the caller's INVITE leaving SIPp (its trace), t_pop = the pop frame
read on the agent's socket, t_ring = the agent phone receiving the worker's INVITE.
Prints p50/p95/max of t_pop - t0 and of t_pop - t_ring (negative: the pop was first),
writes bench/results/screen_pop.json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from bench.common import table, write_result
from pbx.procs import free_port, wait_until
from tests.support.center import Center, center_config, pick_ports, start_center
from tests.support.sipp import SCENARIOS, run_sipp, start_sipp

_STAMP = re.compile(r"^-+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)")
_FROM = re.compile(r"^From:.*?<sip:(\d+)@", re.IGNORECASE)


def invites(trace: Path, direction: str) -> dict[str, float]:
    """Calling number -> time of the first INVITE `direction` ("sent"/"received")."""
    out: dict[str, float] = {}
    stamp: float | None = None
    wanted = False
    is_invite = False
    for line in trace.read_text(errors="replace").splitlines():
        if match := _STAMP.match(line):
            stamp = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S.%f").timestamp()
            wanted = is_invite = False
        elif line.startswith(f"UDP message {direction}"):
            wanted = True
        elif wanted and line.startswith("INVITE "):
            is_invite = True
        elif is_invite and (match := _FROM.match(line)) and stamp is not None:
            out.setdefault(match[1], stamp)
            is_invite = False
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.screen_pop")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--rate", type=float, default=2.0)
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="kefu-pop-"))
    ports = pick_ports(4)
    config = center_config(ports, workers=4, pool_agents=args.agents, wrapup_s=0)
    config["ivr"] = {"main": {"start": "q", "languages": ["en"], "default_language": "en",
                              "nodes": {"q": {"kind": "queue", "queue": "pool"}}}}  # fmt: skip
    center: Center = start_center(tmp, config, ports)
    pops: dict[str, float] = {}
    sockets = []
    try:
        agent_port = center.sipp_port(1)
        for i in range(1, args.agents + 1):
            done = run_sipp(
                "register.xml", center.edge, local_port=agent_port, service=f"20{i:02d}",
                auth=(f"20{i:02d}", f"pool-secret-{i:02d}"), timeout_s=10, timeout=30,
            )  # fmt: skip
            assert done.ok, done.output[-1500:]
            token = center.login(f"p{i:02d}", f"pool-secret-{i:02d}")
            ws = connect(
                f"ws://127.0.0.1:{ports['http']}/ws/agent?token={token}",
                additional_headers={"Origin": center.http},
            ).__enter__()
            sockets.append(ws)

            def read(ws: Any = ws) -> None:
                try:
                    for raw in ws:
                        msg = json.loads(raw)
                        if msg.get("type") == "offer":
                            pops.setdefault(msg["caller"], time.time())
                except Exception:
                    return

            threading.Thread(target=read, daemon=True).start()
        ring_trace = tmp / "agents-sip.log"
        phone = start_sipp(
            "pool-phone", tmp, "agent.xml", center.edge, local_port=agent_port,
            media_port=free_port(span=4), calls=args.calls, timeout_s=600,
            extra=["-trace_msg", "-message_file", str(ring_trace)],
        )  # fmt: skip
        center.wait_agents([f"p{i:02d}" for i in range(1, args.agents + 1)])
        # callers: caller.xml with a distinct number per call (9 + SIPp's call number)
        scenario = tmp / "callers.xml"
        text = (SCENARIOS / "caller.xml").read_text().replace("[caller]", "9[call_number]")
        scenario.write_text(text)
        call_trace = tmp / "callers-sip.log"
        callers = run_sipp(
            str(scenario), center.edge, local_port=center.sipp_port(2),
            media_port=free_port(span=4), service="1000", calls=args.calls,
            concurrency=args.calls, rate=args.rate, timeout_s=int(args.calls / args.rate) + 90,
            keys={"caller": "0", "digit": "none", "dtmf_ms": "100", "hold_ms": "1500"},
            timeout=args.calls / args.rate + 120, trace_to=call_trace,
        )  # fmt: skip
        wait_until(lambda: len(pops) >= args.calls * 0.95, 30, "the pops", interval=0.5)
        phone.stop()
    finally:
        for ws in sockets:
            ws.close()
        center.proc.stop(timeout=30)
    sent = invites(call_trace, "sent")
    rang = invites(ring_trace, "received")
    to_pop = [pops[n] - sent[n] for n in pops if n in sent]
    vs_ring = [pops[n] - rang[n] for n in pops if n in rang]
    late = sum(1 for d in vs_ring if d > 0)
    metrics: dict[str, Any] = {
        "calls": args.calls,
        "callers_ok": callers.ok,
        "pops": len(pops),
        "invite_to_pop_ms": {q: round(pct(to_pop, v) * 1000, 1)
                             for q, v in (("p50", 0.5), ("p95", 0.95), ("max", 1.0))},
        "pop_minus_ring_ms": {q: round(pct(vs_ring, v) * 1000, 1)
                              for q, v in (("p50", 0.5), ("p95", 0.95), ("max", 1.0))},
        "pops_after_ring": late,
        "mean_invite_to_pop_ms": round(statistics.mean(to_pop) * 1000, 1) if to_pop else None,
    }  # fmt: skip
    print(table(
        ["metric", "p50", "p95", "max"],
        [["INVITE -> pop on socket (ms)", *metrics["invite_to_pop_ms"].values()],
         ["pop - agent phone rings (ms)", *metrics["pop_minus_ring_ms"].values()]],
    ))  # fmt: skip
    print(f"{len(pops)}/{args.calls} pops; {late} after the ring")
    path = write_result("screen_pop", vars(args), metrics)
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
