"""Screen-pop latency: from the caller's INVITE to the pop on the agent's socket and to
the pop in the agent desktop's DOM, and the pop against the moment the agent's phone
starts ringing.

    python -m bench.screen_pop [--calls 200] [--agents 10] [--rate 2] [--browsers 3]

One `kefu serve` (4 workers) whose DID goes straight into the pool queue (no IVR, so
the latency is routing + CRM look-up + the pop itself); `--agents` pool agents signed
in on the web API, each with its socket open (the `websockets` client, as a browser
would); one SIPp phone answers for all of them and traces every INVITE it gets. SIPp
callers (a distinct number each) call at `--rate` calls/s and hang up after 1.5 s.

Per call: t0 = the caller's INVITE leaving SIPp (its trace), t_pop = the pop frame
read on the agent's socket, t_ring = the agent phone receiving the worker's INVITE.

The first `--browsers` agents are also signed in to the real agent desktop (the page
`/` serves, `softphone_web/static/`) in Debian's Chromium (Playwright, headless, one
browser context per agent). A MutationObserver on `#customer` (what `showPop` in
desktop.js rewrites) stamps t_dom = `performance.timeOrigin + performance.now()` when
the pop reached the DOM, and the next `requestAnimationFrame` t_frame (the frame that
paints it). The page's clock is related to Python's `time.time()` by evaluating it
between two `time.time()` readings (the tightest of 21 round trips), before and after
the run; page times are moved onto Python's clock by the mean of the two offsets.
The pop needs only the page's socket, not its browser phone: this center has no
`edge.ws_port`, so `/api/me/sip` grants the page no SIP credentials ("no browser
phone") and the SIPp phone stays the only registration of each agent.

Prints p50/p95/max of t_pop - t0, t_dom - t0, t_dom - t_pop (same calls, the page
after the Python socket client), t_pop - t_ring and t_dom - t_ring (negative: the pop
was first; the core dials a desktop page's phone only once the page says it shows the
pop, and a plain socket's once the frame is written — `softphone_web.hub`), writes
bench/results/screen_pop.json.
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

from playwright.sync_api import Browser, Page, sync_playwright
from websockets.sync.client import connect

from bench.common import table, write_result
from pbx.procs import free_port, wait_until
from tests.support.center import Center, center_config, pick_ports, start_center
from tests.support.sipp import SCENARIOS, run_sipp, start_sipp

CHROMIUM = "/usr/bin/chromium"
# Installed in each desktop page once signed in: the moment the pop's DOM changed (and the
# frame after it), per caller. desktop.js writes "Ringing: <caller>" into #call-status
# before `showPop` rewrites #customer, so the caller is known when the observer runs.
OBSERVE_POPS = """() => {
  window.kefuPops = {};
  const status = document.getElementById("call-status");
  new MutationObserver(() => {
    const at = performance.timeOrigin + performance.now();
    const m = /^Ringing: (\\S+)/.exec(status.textContent);
    if (!m || m[1] in window.kefuPops) return;
    const seen = { dom: at, frame: null };
    window.kefuPops[m[1]] = seen;
    requestAnimationFrame(() => { seen.frame = performance.timeOrigin + performance.now(); });
  }).observe(document.getElementById("customer"), { childList: true, subtree: true });
}"""
PAGE_NOW = "performance.timeOrigin + performance.now()"

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


def quantiles_ms(values: list[float]) -> dict[str, float | None]:
    return {
        q: round(pct(values, v) * 1000, 1) if values else None
        for q, v in (("p50", 0.5), ("p95", 0.95), ("max", 1.0))
    }


def open_desktop(browser: Browser, center: Center, user: str, password: str) -> Page:
    """`user` signed in to the agent desktop in its own browser context, pops observed."""
    page = browser.new_context().new_page()
    page.goto(f"{center.http}/")
    page.fill("#login-form input[name=user]", user)
    page.fill("#login-form input[name=password]", password)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#desk", state="visible", timeout=10_000)
    # the socket's hello (the agent's state) and the phone refused: no SIP credentials
    page.wait_for_function("document.getElementById('state').dataset.state !== ''", timeout=10_000)
    page.wait_for_function(
        "document.getElementById('phone-status').textContent.startsWith('no browser phone')",
        timeout=10_000,
    )
    page.evaluate(OBSERVE_POPS)
    return page


def clock_offset(page: Page, rounds: int = 21) -> dict[str, float]:
    """The page clock minus Python's `time.time()` (s), from the tightest round trip;
    with the round trip (the offset's uncertainty is half of it) and the page's
    `Date.now()` against its performance clock."""
    samples = []
    for _ in range(rounds):
        before = time.time()
        page_now = float(page.evaluate(PAGE_NOW)) / 1000
        after = time.time()
        samples.append((after - before, page_now - (before + after) / 2))
    rtt, offset = min(samples)
    date_vs_perf = float(page.evaluate(f"Date.now() - ({PAGE_NOW})")) / 1000
    return {"offset_ms": round(offset * 1000, 3), "rtt_ms": round(rtt * 1000, 3),
            "date_now_minus_perf_ms": round(date_vs_perf * 1000, 3)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.screen_pop")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument(
        "--browsers", type=int, default=3, help="agents also signed in to the desktop page"
    )
    args = parser.parse_args(argv)
    browsers = min(args.browsers, args.agents)

    tmp = Path(tempfile.mkdtemp(prefix="kefu-pop-"))
    ports = pick_ports(4)
    config = center_config(ports, workers=4, pool_agents=args.agents, wrapup_s=0)
    config["ivr"] = {"main": {"start": "q", "languages": ["en"], "default_language": "en",
                              "nodes": {"q": {"kind": "queue", "queue": "pool"}}}}  # fmt: skip
    center: Center = start_center(tmp, config, ports)
    pops: dict[str, float] = {}
    doms: dict[str, dict[str, float | None]] = {}
    clocks: list[dict[str, float]] = []
    sockets = []
    pw = None
    try:
        pw = sync_playwright().start()
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
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox"],  # root in CI
        )
        pages = [
            open_desktop(browser, center, f"p{i:02d}", f"pool-secret-{i:02d}")
            for i in range(1, browsers + 1)
        ]
        clocks += [clock_offset(page) for page in pages]
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
        clocks += [clock_offset(page) for page in pages]
        for page in pages:
            doms.update(page.evaluate("window.kefuPops"))
    finally:
        for ws in sockets:
            ws.close()
        if pw is not None:
            pw.stop()  # closes the browser
        center.proc.stop(timeout=30)
    sent = invites(call_trace, "sent")
    rang = invites(ring_trace, "received")
    to_pop = [pops[n] - sent[n] for n in pops if n in sent]
    vs_ring = [pops[n] - rang[n] for n in pops if n in rang]
    late = sum(1 for d in vs_ring if d > 0)
    # page milliseconds -> Python seconds, by the mean measured offset
    offset_s = statistics.mean(c["offset_ms"] for c in clocks) / 1000 if clocks else 0.0
    dom = {n: float(d["dom"]) / 1000 - offset_s for n, d in doms.items()}
    frame = {n: float(d["frame"]) / 1000 - offset_s for n, d in doms.items() if d["frame"]}
    to_dom = [dom[n] - sent[n] for n in dom if n in sent]
    to_frame = [frame[n] - sent[n] for n in frame if n in sent]
    socket_to_dom = [dom[n] - pops[n] for n in dom if n in pops]
    dom_vs_ring = [dom[n] - rang[n] for n in dom if n in rang]
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
        "browser_agents": browsers,
        "dom_pops": len(dom),
        "invite_to_dom_ms": quantiles_ms(to_dom),
        "invite_to_dom_frame_ms": quantiles_ms(to_frame),
        "socket_pop_to_dom_ms": quantiles_ms(socket_to_dom),
        "dom_minus_ring_ms": quantiles_ms(dom_vs_ring),
        "doms_after_ring": sum(1 for d in dom_vs_ring if d > 0),
        "page_clock": {
            "offset_ms": round(offset_s * 1000, 3),
            "note": "page performance.timeOrigin+now() minus Python time.time(), tightest "
                    "of 21 evaluate round trips per page, before and after the run",
            "samples": clocks,
        },
    }  # fmt: skip
    print(table(
        ["metric", "p50", "p95", "max"],
        [["INVITE -> pop on socket (ms)", *metrics["invite_to_pop_ms"].values()],
         ["INVITE -> pop in the DOM (ms)", *metrics["invite_to_dom_ms"].values()],
         ["INVITE -> frame after the DOM (ms)", *metrics["invite_to_dom_frame_ms"].values()],
         ["socket pop -> DOM, same call (ms)", *metrics["socket_pop_to_dom_ms"].values()],
         ["pop - agent phone rings (ms)", *metrics["pop_minus_ring_ms"].values()],
         ["DOM - agent phone rings (ms)", *metrics["dom_minus_ring_ms"].values()]],
    ))  # fmt: skip
    print(f"{len(pops)}/{args.calls} pops; {late} after the ring; {len(dom)} in {browsers} "
          f"desktop pages, {metrics['doms_after_ring']} after the ring (page clock "
          f"{offset_s * 1000:+.3f} ms from time.time())")  # fmt: skip
    path = write_result("screen_pop", vars(args), metrics)
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
