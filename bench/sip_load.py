"""SIP load against `kefu serve`, with SIPp on the same box (as the Asterisk numbers were).

    python -m bench.sip_load [--workers 16] [--quick]

Three phases on one running center:
1. queue   — callers press 3 and wait on music on hold (no agent free), ramped in waves
             up to the edge's capacity and one wave past it; failures appear as 503s;
2. bridged — as many callers as the workers can bridge, each answered by a pool agent
             (SIPp UAS), audio both ways, every call recorded;
3. cps     — short calls through IVR -> queue -> agent at rising call rates until one
             fails.
Prints a table and writes bench/results/sip_load.json. Every loop is bounded.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import cpu_percent, sample_tree, table, write_result
from pbx.procs import ManagedProcess, free_port, wait_until
from tests.support.center import Center, center_config, pick_ports, start_center
from tests.support.sipp import run_sipp, start_sipp

ASTERISK = {
    "queue_callers_moh": 1000,
    "queue_callers_sending_audio": 500,
    "bridged_calls": 264,
    "bridged_recorded": 164,
    "cps_ivr_queue_agent": 90,
}


def sipp_counts(output: str) -> tuple[int, int]:
    """(successful, failed) from SIPp's final screen."""

    def last(label: str) -> int:
        found = re.findall(rf"{label}\s*\|\s*\d+\s*\|\s*(\d+)", output)
        return int(found[-1]) if found else 0

    return last("Successful call"), last("Failed call")


def live_legs(center: Center) -> int:
    workers = center.get("/api/health")["components"]["workers"]["each"]
    return sum(int(w["legs"]) for w in workers.values())


def settle(center: Center, timeout: float = 90) -> None:
    """Until every leg is gone; callers SIPp was stopped mid-call (a saturated box) end
    by the workers' RTP timeout (60 s)."""
    wait_until(lambda: live_legs(center) == 0, timeout, "all legs to end", interval=0.5)


def measure(center: Center, seconds: float) -> dict[str, Any]:
    before = sample_tree(center.proc.pid)
    time.sleep(seconds)
    after = sample_tree(center.proc.pid)
    cpu = cpu_percent(before, after)
    return {
        "cpu_pct": cpu,
        "cpu_pct_total": round(sum(cpu.values()), 1),
        "rss_mb": {k: round(v, 1) for k, v in after.rss.items()},
        "rss_mb_total": round(sum(after.rss.values()), 1),
    }


def callers(
    center: Center, tmp: Path, n: int, *, calls: int, rate: float, hold_ms: int, digit: str = "3",
    dtmf_ms: int = 300, name: str = "callers",
) -> ManagedProcess:  # fmt: skip
    return start_sipp(
        name,
        tmp,
        "caller.xml",
        center.edge,
        local_port=center.sipp_port(n),
        media_port=free_port(span=4),
        service="1000",
        calls=calls,
        concurrency=calls,
        rate=rate,
        keys={
            "caller": "5550000",
            "digit": digit,
            "dtmf_ms": str(dtmf_ms),
            "hold_ms": str(hold_ms),
        },
        timeout_s=int(hold_ms / 1000) + 60,
    )


def finish(proc: ManagedProcess, timeout: float) -> tuple[int, int]:
    assert proc.proc is not None
    try:
        proc.proc.wait(timeout)
    except Exception:
        proc.stop()
    return sipp_counts(proc.log_path.read_text(errors="replace"))


def phase_queue(center: Center, tmp: Path, capacity: int) -> dict[str, Any]:
    levels = sorted(
        {max(1, capacity // 4), capacity // 2, capacity, capacity + max(2, capacity // 8)}
    )
    waves = []
    for i, level in enumerate(levels):
        proc = callers(center, tmp, i, calls=level, rate=50, hold_ms=15000, name=f"queue-{level}")
        time.sleep(min(6.0, 2.0 + level / 50))
        held = live_legs(center)
        stats = measure(center, 5.0)
        ok, failed = finish(proc, 60)
        waves.append({"offered": level, "held": held, "ok": ok, "failed": failed, **stats})
        cpu = stats["cpu_pct_total"]
        print(f"  queue wave {level}: held {held}, ok {ok}, failed {failed}, cpu {cpu}%")
        settle(center)
    clean = [w for w in waves if w["failed"] == 0]
    best = max(clean, key=lambda w: w["held"]) if clean else None
    most = best["held"] if best else 0
    return {"waves": waves, "max_callers_no_failures": most, "best": best}


def register_pool(center: Center, port: int, agents: int) -> None:
    for i in range(1, agents + 1):
        done = run_sipp(
            "register.xml", center.edge, local_port=port, service=f"20{i:02d}",
            auth=(f"20{i:02d}", f"pool-secret-{i:02d}"), timeout_s=10, timeout=30,
        )  # fmt: skip
        if not done.ok:
            raise RuntimeError(f"agent 20{i:02d} could not register:\n{done.output[-1500:]}")


def answered_calls(center: Center, since: str) -> int:
    with sqlite3.connect(center.data_dir / "kefu.sqlite3") as db:
        row = db.execute(
            "SELECT count(*) FROM calls WHERE answered_at IS NOT NULL AND arrived_at >= ?", (since,)
        ).fetchone()
    return int(row[0])


def phase_bridged(center: Center, tmp: Path, capacity: int, agent_port: int) -> dict[str, Any]:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    proc = callers(center, tmp, 10, calls=capacity, rate=20, hold_ms=20000, name="bridged")
    time.sleep(4 + capacity / 20)
    legs = live_legs(center)
    stats = measure(center, 8.0)
    ok, failed = finish(proc, 90)
    settle(center)
    answered = answered_calls(center, since)
    print(f"  bridged {capacity}: legs {legs}, answered {answered}, ok {ok}, failed {failed}")
    return {"offered": capacity, "legs": legs, "answered": answered, "ok": ok, "failed": failed,
            "rss_mb_per_leg": round(stats["rss_mb_total"] / max(legs, 1), 1), **stats}  # fmt: skip


def phase_cps(center: Center, tmp: Path, capacity: int, rates: list[float]) -> dict[str, Any]:
    steps = []
    best = 0.0
    for i, rate in enumerate(rates):
        calls = int(rate * 15)
        proc = callers(
            center, tmp, 20 + i, calls=calls, rate=rate, hold_ms=2000, name=f"cps-{rate:g}"
        )
        before = sample_tree(center.proc.pid)
        ok, failed = finish(proc, 15 + 90)
        after = sample_tree(center.proc.pid)
        cpu = cpu_percent(before, after)
        steps.append({"rate": rate, "calls": calls, "ok": ok, "failed": failed,
                      "cpu_pct_total": round(sum(cpu.values()), 1)})  # fmt: skip
        print(f"  cps {rate:g}: ok {ok}, failed {failed}")
        settle(center)
        if failed:
            break
        best = rate
        if rate * 4.5 > capacity:  # concurrent calls would exceed what the workers hold
            break
    return {"steps": steps, "max_cps_no_failures": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="fewer waves (smoke run)")
    args = parser.parse_args()
    capacity = args.workers * 2
    tmp = Path(tempfile.mkdtemp(prefix="kefu-bench-"))
    ports = pick_ports(args.workers)
    config = center_config(ports, workers=args.workers, pool_agents=capacity, wrapup_s=0)
    print(f"starting kefu serve with {args.workers} workers (capacity {capacity} trunk calls)")
    started = time.monotonic()
    center = start_center(tmp, config, ports)
    startup_s = round(time.monotonic() - started, 1)
    idle = measure(center, 5.0)
    agents: ManagedProcess | None = None
    try:
        print("phase 1: callers waiting on music on hold")
        queue = phase_queue(center, tmp, capacity)
        agent_port = center.sipp_port(39)
        register_pool(center, agent_port, capacity)
        agents = start_sipp(
            "pool-agents", tmp, "agent.xml", center.edge, local_port=agent_port,
            media_port=free_port(span=4), calls=100_000, concurrency=capacity, timeout_s=600,
        )  # fmt: skip
        center.wait_agents([f"p{i:02d}" for i in range(1, capacity + 1)], timeout=30)
        print("phase 2: bridged calls, media both ways, recorded")
        bridged = phase_bridged(center, tmp, capacity, agent_port)
        print("phase 3: call rate through IVR -> queue -> agent")
        rates = [2.0, 4.0] if args.quick else [2.0, 4.0, 6.0, 8.0, 12.0]
        cps = phase_cps(center, tmp, capacity, rates)
    finally:
        if agents is not None:
            agents.stop()
        center.proc.stop(timeout=60)

    best = queue["best"] or {}
    metrics = {
        "startup_s": startup_s,
        "idle": idle,
        "idle_cpu_pct_per_worker": round(idle["cpu_pct"].get("workers", 0.0) / args.workers, 2),
        "idle_rss_mb_per_worker": round(idle["rss_mb"].get("workers", 0.0) / args.workers, 1),
        "queue_max_callers": queue["max_callers_no_failures"],
        "queue": queue,
        "bridged_calls": bridged["answered"] if bridged["failed"] == 0 else 0,
        "bridged": bridged,
        "cps": cps["max_cps_no_failures"],
        "cps_steps": cps["steps"],
    }
    path = write_result("sip_load", {"workers": args.workers, "quick": args.quick}, metrics)
    rows = [
        ["workers (pjsua2 processes)", args.workers, ""],
        ["startup to 'kefu ready' (s)", startup_s, ""],
        ["idle CPU per worker (% core)", metrics["idle_cpu_pct_per_worker"], ""],
        ["idle RSS per worker (MB)", metrics["idle_rss_mb_per_worker"], ""],
        ["callers on MOH, no failures", queue["max_callers_no_failures"],
         ASTERISK["queue_callers_sending_audio"]],
        ["  CPU at that load (% of a core)", best.get("cpu_pct_total", ""), ""],
        ["  RSS at that load (MB)", best.get("rss_mb_total", ""), ""],
        ["bridged + recorded calls", metrics["bridged_calls"], ASTERISK["bridged_recorded"]],
        ["  CPU (% of a core)", bridged["cpu_pct_total"], ""],
        ["  RSS per leg (MB, whole center)", bridged["rss_mb_per_leg"], ""],
        ["calls/s IVR->queue->agent, 0 failed", cps["max_cps_no_failures"],
         ASTERISK["cps_ivr_queue_agent"]],
    ]  # fmt: skip
    print(table(["metric", "kefu", "Asterisk (same box)"], rows))
    print(f"written {path}")


if __name__ == "__main__":
    main()
