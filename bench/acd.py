"""ACD routing latency: the pure engine under a contact center's worth of traffic.

    python -m bench.acd [--agents 5000] [--skills 200] [--waiting 10000] [--events 150000]

A discrete-event simulation on a fake clock drives one `AcdEngine`: 200 skill queues
(mixed strategies, half with widening steps, a few high-priority), 5 000 agents with 3-6
skills at proficiency 1-5 (a fifth also speak Spanish), and callers arriving as a Poisson
stream sized so that about 10 000 wait at any time while every agent is busy. Events:
arrivals (some with priority, a language or a preferred agent), answers after 1-4 s of
ringing (3 % ring out), hang-ups after ~5 min, abandons after ~15 min of patience,
agents going on break and back, logging out and in, and the engine's own timers.

Latency is the wall time of one `handle()` / `handle_timer()` call plus draining its
commands, i.e. the routing work one fact costs. Setup (logins, callers pouring in at
eight times the steady rate until 10 000 wait, one more simulated minute) is not
measured. Prints a table, writes bench/results/acd.json.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import random
import statistics
import time
from collections import defaultdict
from typing import Any

from acd.engine import (
    AcdEngine,
    AcdEvent,
    AgentLoggedIn,
    AgentLoggedOut,
    AgentSetAvailable,
    AgentSetAway,
    AgentSpec,
    AgentState,
    CallLeft,
    CancelOffer,
    Enqueue,
    IllegalTransition,
    OfferAnswered,
    OfferCall,
    QueueSpec,
    Step,
)
from acd.strategies import STRATEGIES
from bench.common import table, write_result

HANDLE_S = 300.0
PATIENCE_S = 900.0
WRAPUP_S = 10.0


def build(agents: int, skills: int, rng: random.Random) -> tuple[list[QueueSpec], list[AgentSpec]]:
    names = sorted(STRATEGIES)
    queues = [
        QueueSpec(
            name=f"q{i}",
            skills={f"s{i}": 1},
            strategy=names[i % len(names)],
            steps=(Step(after_s=0, min_proficiency=3), Step(after_s=20, min_proficiency=1))
            if i % 2
            else (),
            priority=1 if i % 20 == 0 else 0,
            ring_timeout_s=15,
            wrapup_s=WRAPUP_S,
            preferred_agent_s=10,
        )
        for i in range(skills)
    ]
    specs = [
        AgentSpec(
            agent_id=f"a{i:05d}",
            skills={
                f"s{s}": rng.randint(1, 5) for s in rng.sample(range(skills), rng.randint(3, 6))
            },
            languages=frozenset({"en", "es"} if rng.random() < 0.2 else {"en"}),
        )
        for i in range(agents)
    ]
    return queues, specs


class Sim:
    def __init__(self, args: argparse.Namespace) -> None:
        self.rng = random.Random(args.seed)
        self.queues, self.agents = build(args.agents, args.skills, self.rng)
        self.members: dict[str, list[str]] = defaultdict(list)
        for a in self.agents:
            for s in a.levels:
                self.members[f"q{s[1:]}"].append(a.agent_id)
        self.engine = AcdEngine(self.queues, self.agents, seed=args.seed)
        self.now = 0.0
        self.pending: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.calls = 0
        self.live: set[str] = set()  # calls the caller is still on (waiting or talking)
        self.talking: set[str] = set()
        self.ringing: set[str] = set()
        self.measured = 0
        # arrivals sized to keep the queue steady: service capacity plus abandons
        capacity = args.agents / (HANDLE_S + WRAPUP_S + 2.5)
        self.rate = capacity + args.waiting / PATIENCE_S
        self.latency: dict[str, list[int]] = defaultdict(list)
        self.measuring = False

    def at(self, when: float, kind: str, payload: Any = None) -> None:
        self.seq += 1
        heapq.heappush(self.pending, (when, self.seq, kind, payload))

    def arrival(self) -> Enqueue:
        self.calls += 1
        call_id = f"c{self.calls}"
        queue = self.queues[self.rng.randrange(len(self.queues))]
        r = self.rng.random()
        preferred = None
        if r < 0.02 and self.members[queue.name]:
            preferred = self.rng.choice(self.members[queue.name])
        self.live.add(call_id)
        self.at(self.now + self.rng.expovariate(1 / PATIENCE_S), "abandon", call_id)
        return Enqueue(
            call_id=call_id,
            queue=queue.name,
            caller="5550000",
            priority=2 if r > 0.9 else 0,
            language="es" if 0.02 <= r < 0.07 else None,
            preferred_agent=preferred,
        )

    def feed(self, kind: str, event: AcdEvent | None) -> None:
        engine = self.engine
        t0 = time.perf_counter_ns()
        try:
            if event is None:
                engine.handle_timer(now=self.now)
            else:
                engine.handle(event, now=self.now)
        except IllegalTransition:
            pass  # e.g. a break requested while on a call: the desktop would refuse it
        commands = []
        while (cmd := engine.next_command()) is not None:
            commands.append(cmd)
        elapsed = time.perf_counter_ns() - t0
        if self.measuring:
            self.latency[kind].append(elapsed)
            self.measured += 1
        for cmd in commands:
            if isinstance(cmd, OfferCall):
                self.ringing.add(cmd.call_id)
                if self.rng.random() < 0.97:  # the rest ring out: the engine's timer
                    self.at(self.now + self.rng.uniform(1, 4), "answer", cmd.call_id)
            elif isinstance(cmd, CancelOffer):
                self.ringing.discard(cmd.call_id)

    def step(self) -> bool:
        deadline = self.engine.next_deadline()
        if self.pending and (deadline is None or self.pending[0][0] <= deadline):
            self.now, _, kind, payload = heapq.heappop(self.pending)
            self.dispatch(kind, payload)
            return True
        if deadline is None:
            return False
        self.now = deadline
        self.feed("timer", None)
        return True

    def dispatch(self, kind: str, payload: Any) -> None:
        if kind == "arrival":
            self.feed(kind, self.arrival())
            self.at(self.now + self.rng.expovariate(self.rate), "arrival")
        elif kind == "answer":
            call = payload
            if call in self.ringing:  # not re-offered elsewhere or abandoned meanwhile
                self.ringing.discard(call)
                self.talking.add(call)
                self.feed(kind, OfferAnswered(call_id=call))
                handle = max(20.0, self.rng.expovariate(1 / HANDLE_S))
                self.at(self.now + handle, "hangup", call)
        elif kind == "hangup":
            self.live.discard(payload)
            self.talking.discard(payload)
            self.feed(kind, CallLeft(call_id=payload))
        elif kind == "abandon":
            if payload in self.live and payload not in self.talking:
                self.live.discard(payload)
                self.ringing.discard(payload)
                self.feed(kind, CallLeft(call_id=payload))
        elif kind == "break":
            agent = self.engine.agent(self.rng.choice(self.agents).agent_id)
            aid = agent.spec.agent_id
            if agent.state is AgentState.LOGGED_OUT:
                self.feed("login", AgentLoggedIn(agent_id=aid))
            elif self.rng.random() < 0.1:
                self.feed("logout", AgentLoggedOut(agent_id=aid))
                self.at(self.now + 600, "login", aid)
            elif agent.state is not AgentState.ON_CALL:
                self.feed(kind, AgentSetAway(agent_id=aid, reason="break"))
                self.at(self.now + self.rng.uniform(120, 600), "back", aid)
            self.at(self.now + self.rng.expovariate(2.0), "break")
        elif kind == "back":
            if self.engine.agent(payload).state is AgentState.AWAY:
                self.feed(kind, AgentSetAvailable(agent_id=payload))
        elif kind == "login":
            self.feed(kind, AgentLoggedIn(agent_id=payload))

    def setup(self, waiting: int) -> None:
        """Log everyone in, then let callers pour in (unmeasured) until the queues hold
        `waiting` calls, and run a minute more at the steady rate."""
        for a in self.agents:
            self.feed("login", AgentLoggedIn(agent_id=a.agent_id))
        steady, self.rate = self.rate, self.rate * 8
        self.at(0.0, "arrival")
        self.at(1.0, "break")
        while len(self.live) - len(self.talking) < waiting and self.step():
            pass
        self.rate = steady
        warm_until = self.now + 60.0
        while self.now < warm_until and self.step():
            pass


def pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.acd")
    parser.add_argument("--agents", type=int, default=5000)
    parser.add_argument("--skills", type=int, default=200)
    parser.add_argument("--waiting", type=int, default=10000)
    parser.add_argument("--events", type=int, default=150_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a tenth of everything")
    args = parser.parse_args(argv)
    if args.quick:
        args.agents, args.skills = args.agents // 10, max(args.skills // 10, 5)
        args.waiting, args.events = args.waiting // 10, args.events // 10
    sim = Sim(args)
    t0 = time.perf_counter()
    sim.setup(args.waiting)
    setup_s = time.perf_counter() - t0
    gc.collect()
    sim.measuring = True
    waiting_samples = []
    t0 = time.perf_counter()
    while sim.measured < args.events and sim.step():
        if sim.measured % 5000 == 0:
            waiting_samples.append(sum(len(sim.engine.waiting(q.name)) for q in sim.queues))
    wall = time.perf_counter() - t0
    everything = [ns for values in sim.latency.values() for ns in values]
    busy_s = sum(everything) / 1e9
    rows: list[list[Any]] = [
        [kind, len(v), f"{pct(v, 0.5):.3f}", f"{pct(v, 0.99):.3f}", f"{max(v) / 1e6:.3f}"]
        for kind, v in sorted(sim.latency.items(), key=lambda kv: -len(kv[1]))
    ]
    rows.append(
        ["all", len(everything), f"{pct(everything, 0.5):.3f}", f"{pct(everything, 0.99):.3f}",
         f"{max(everything) / 1e6:.3f}"]
    )  # fmt: skip
    p99 = pct(everything, 0.99)
    metrics: dict[str, Any] = {
        "events": len(everything),
        "events_per_s": round(len(everything) / busy_s),
        "p50_ms": round(pct(everything, 0.5), 4),
        "p99_ms": round(p99, 4),
        "max_ms": round(max(everything) / 1e6, 3),
        "per_kind": {r[0]: {"n": r[1], "p50_ms": float(r[2]), "p99_ms": float(r[3])} for r in rows},
        "waiting_mean": round(statistics.fmean(waiting_samples)) if waiting_samples else 0,
        "waiting_min": min(waiting_samples, default=0),
        "simulated_s": round(sim.now),
        "setup_s": round(setup_s, 1),
        "wall_s": round(wall, 1),
    }
    params = {k: getattr(args, k) for k in ("agents", "skills", "waiting", "events", "seed")}
    path = write_result("acd", params, metrics)
    print(table(["event", "count", "p50 ms", "p99 ms", "max ms"], rows))
    print(
        f"\n{metrics['events_per_s']} events/s of engine time; waiting calls mean "
        f"{metrics['waiting_mean']} (min {metrics['waiting_min']}); "
        f"{metrics['simulated_s']} s simulated; setup {setup_s:.1f} s, run {wall:.1f} s"
    )
    print(f"goal p99 <= 1 ms: {'met' if p99 <= 1.0 else 'MISSED'}  ({path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
