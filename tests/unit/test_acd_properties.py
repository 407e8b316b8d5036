"""Hypothesis properties of the ACD engine: the fair order, and the state machine.

Fairness: whatever the queues, skills, priorities, strategies and event order, no call
is offered to an agent while a call that agent could take waits with a better score
(higher priority, or equal priority and longer wait), and no free agent is left idle
beside a call they could take. The eligibility used here is the test's own model
(skills and levels only), not the engine's.

State machine: random event sequences never break the books — an agent is reserved for
at most one call, a call is offered to at most one agent, no reservation outlives its
ring deadline, and an event the engine refuses raises and changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from acd.engine import (
    CALLBACK_DIAL_S,
    AcdEngine,
    AcdEvent,
    AgentLoggedIn,
    AgentLoggedOut,
    AgentSetAvailable,
    AgentSetAway,
    AgentSpec,
    AgentState,
    CallbackAnswered,
    CallbackFailed,
    CallLeft,
    CancelOffer,
    Enqueue,
    ExtendWrapUp,
    IllegalTransition,
    OfferAnswered,
    OfferCall,
    OfferFailed,
    OverflowTarget,
    PlaceCallback,
    QueueSpec,
    Reconcile,
    RequestCallback,
    Step,
)
from acd.strategies import STRATEGIES

SKILLS = ("a", "b", "c")

# ---------------------------------------------------------------- fairness

STEPS = [
    (),
    (Step(after_s=0, min_proficiency=3), Step(after_s=5, min_proficiency=1)),
    (Step(after_s=0, min_proficiency=4), Step(after_s=2, min_proficiency=2),
     Step(after_s=9, min_proficiency=1)),
]  # fmt: skip


@dataclass
class Scenario:
    queues: list[QueueSpec]
    agents: list[AgentSpec]
    ops: list[tuple[object, ...]]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    queues = []
    for i in range(draw(st.integers(1, 3))):
        needs = draw(st.dictionaries(st.sampled_from(SKILLS), st.integers(1, 3), min_size=1,
                                     max_size=2))  # fmt: skip
        queues.append(
            QueueSpec(
                name=f"q{i}",
                skills=needs,
                priority=draw(st.integers(0, 2)),
                strategy=draw(st.sampled_from(sorted(STRATEGIES))),
                steps=draw(st.sampled_from(STEPS)),
                ring_timeout_s=1e6,  # no ring-outs: eligibility is skills and steps only
                wrapup_s=draw(st.sampled_from([0.0, 5.0])),
            )
        )
    agents = [
        AgentSpec(agent_id=f"g{i}", skills=draw(st.dictionaries(
            st.sampled_from(SKILLS), st.integers(1, 5), min_size=1, max_size=3)))
        for i in range(draw(st.integers(1, 5)))
    ]  # fmt: skip
    enqueue = st.tuples(
        st.just("enqueue"),
        st.integers(0, len(queues) - 1),
        st.integers(0, 3),
        st.one_of(st.none(), st.sampled_from(SKILLS)),
    )
    tick = st.tuples(st.just("tick"), st.sampled_from([0.0, 1.0, 3.0, 7.0]))
    op = st.one_of(
        enqueue,
        st.tuples(st.sampled_from(["login", "logout", "away", "available"]),
                  st.integers(0, len(agents) - 1)),
        st.tuples(st.sampled_from(["answer", "hangup", "abandon"]), st.integers(0, 9)),
        tick,
    )  # fmt: skip
    # a backlog first (nobody is logged in yet), so agents arrive to a choice of calls
    backlog = draw(st.lists(st.one_of(enqueue, tick), min_size=2, max_size=10))
    return Scenario(queues, agents, backlog + draw(st.lists(op, max_size=40)))


@dataclass
class Model:
    """The test's own view: waiting unoffered calls with their score and needs."""

    queues: dict[str, QueueSpec]
    agents: dict[str, AgentSpec]
    waiting: dict[str, tuple[tuple[int, float, int], dict[str, int]]] = field(default_factory=dict)
    known: dict[str, tuple[tuple[int, float, int], dict[str, int]]] = field(default_factory=dict)
    """Every call ever enqueued, so a call put back after a cancelled offer keeps its key."""
    queue_of: dict[str, str] = field(default_factory=dict)

    def eligible(self, agent_id: str, call_id: str, now: float) -> bool:
        """Has the call's skills, and the queue's at the floor of the step in force."""
        key, needs = self.known[call_id]
        queue = self.queues[self.queue_of[call_id]]
        floor = 1
        for step in queue.steps:  # worked out here, not with the engine's own helper
            if now - key[1] >= step.after_s:
                floor = step.min_proficiency
        levels = self.agents[agent_id].levels
        return all(
            levels.get(s, 0) >= max(n, floor if s in queue.required else 0)
            for s, n in needs.items()
        )


def merged(*needs: Mapping[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for need in needs:
        for skill, level in need.items():
            out[skill] = max(out.get(skill, 0), level)
    return out


def check_offers(model: Model, engine: AcdEngine, commands: list[object], now: float) -> None:
    for cmd in commands:
        if isinstance(cmd, OfferCall):
            key, _ = model.waiting.pop(cmd.call_id)
            assert model.eligible(cmd.agent_id, cmd.call_id, now), cmd
            for other, (other_key, _) in model.waiting.items():
                if other_key < key:
                    assert not model.eligible(cmd.agent_id, other, now), (
                        f"{cmd.call_id} offered to {cmd.agent_id} ahead of {other}"
                    )
        elif isinstance(cmd, CancelOffer) and any(
            c.call_id == cmd.call_id for c in engine.waiting()
        ):
            model.waiting[cmd.call_id] = model.known[cmd.call_id]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_no_call_is_offered_ahead_of_a_better_eligible_call(sc: Scenario) -> None:
    engine = AcdEngine(sc.queues, sc.agents, seed=7)
    model = Model({q.name: q for q in sc.queues}, {a.agent_id: a for a in sc.agents})
    now, seq = 0.0, 0
    ringing: list[str] = []
    talking: list[str] = []

    def feed(event: AcdEvent) -> None:
        try:
            engine.handle(event, now=now)
        except IllegalTransition:
            return
        drain()

    def drain() -> None:
        commands = []
        while (cmd := engine.next_command()) is not None:
            commands.append(cmd)
        check_offers(model, engine, commands, now)
        for cmd in commands:
            if isinstance(cmd, OfferCall):
                ringing.append(cmd.call_id)
            elif isinstance(cmd, CancelOffer) and cmd.call_id in ringing:
                ringing.remove(cmd.call_id)

    for op in sc.ops:
        kind = op[0]
        if kind == "tick":
            until = now + float(op[1])
            while (d := engine.next_deadline()) is not None and d <= until:
                now = d
                engine.handle_timer(now=now)
                drain()
            now = until
        elif kind == "enqueue":
            q = sc.queues[op[1]]
            extra = {op[3]: 1} if op[3] is not None else {}
            seq += 1
            call_id = f"c{seq}"
            prio = int(op[2])
            key = (-(prio + q.priority), now, seq)
            model.known[call_id] = (key, merged(q.required, extra))
            model.queue_of[call_id] = q.name
            model.waiting[call_id] = model.known[call_id]
            feed(Enqueue(call_id=call_id, queue=q.name, caller="1", priority=prio, skills=extra))
        elif kind in ("login", "logout", "away", "available"):
            agent_id = sc.agents[op[1]].agent_id
            event: AcdEvent = {
                "login": AgentLoggedIn(agent_id=agent_id),
                "logout": AgentLoggedOut(agent_id=agent_id),
                "away": AgentSetAway(agent_id=agent_id, reason="break"),
                "available": AgentSetAvailable(agent_id=agent_id),
            }[str(kind)]
            feed(event)
        elif kind == "answer" and ringing:
            call_id = ringing.pop(int(op[1]) % len(ringing))
            talking.append(call_id)
            feed(OfferAnswered(call_id=call_id))
        elif kind == "hangup" and talking:
            feed(CallLeft(call_id=talking.pop(int(op[1]) % len(talking))))
        elif kind == "abandon" and model.waiting:
            call_id = sorted(model.waiting)[int(op[1]) % len(model.waiting)]
            del model.waiting[call_id]
            feed(CallLeft(call_id=call_id))
        # the model and the engine agree on who waits, and nobody idles beside a call
        unoffered = {c.call_id for c in engine.waiting() if c.offered_to is None}
        assert unoffered == set(model.waiting)
        for agent in engine.agents():
            if agent.state is AgentState.AVAILABLE:
                for call_id in model.waiting:
                    assert not model.eligible(agent.spec.agent_id, call_id, now), (
                        f"{agent.spec.agent_id} idles beside {call_id}"
                    )


# ---------------------------------------------------------------- state machine

QUEUES = [
    QueueSpec(name="main", skills={"a": 1}, ring_timeout_s=10, wrapup_s=5,
              steps=(Step(after_s=0, min_proficiency=3), Step(after_s=20, min_proficiency=1)),
              preferred_agent_s=8, max_wait_s=90,
              overflow=OverflowTarget(kind="queue", target="spill")),
    QueueSpec(name="spill", skills={"b": 1}, ring_timeout_s=6, wrapup_s=0,
              strategy="weighted_random", leave_when_empty=True,
              overflow=OverflowTarget(kind="voicemail", target="vm")),
]  # fmt: skip
AGENTS = [
    AgentSpec(agent_id="x", skills={"a": 4, "b": 1}),
    AgentSpec(agent_id="y", skills={"a": 1}),
    AgentSpec(agent_id="z", skills={"b": 3}, languages=frozenset({"ko"})),
]
RESERVE_LIMIT = max(q.ring_timeout_s for q in QUEUES) + CALLBACK_DIAL_S

agent_ids = st.sampled_from([a.agent_id for a in AGENTS])
call_ids = st.sampled_from([f"c{i}" for i in range(8)])


class Books(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = AcdEngine(QUEUES, AGENTS, seed=1)
        self.now = 0.0
        self.reserved_since: dict[str, float] = {}

    def _drain(self) -> None:
        while (cmd := self.engine.next_command()) is not None:
            if isinstance(cmd, OfferCall | PlaceCallback):
                self.reserved_since[cmd.agent_id] = self.now

    def _snapshot(self) -> object:
        e = self.engine
        agents = [(a.spec.agent_id, a.state, a.reason, a.call_id, a.missed, a.pending_away,
                   a.wrapup_until) for a in e.agents()]  # fmt: skip
        calls = [(c.call_id, c.queue, c.offered_to, c.live, c.callback_number, c.not_before)
                 for c in e.waiting()]  # fmt: skip
        return agents, calls, e.next_deadline()

    def _try(self, event: AcdEvent) -> None:
        before = self._snapshot()
        try:
            self.engine.handle(event, now=self.now)
        except (IllegalTransition, KeyError):
            assert self._snapshot() == before, f"{event} raised but changed the books"
            assert self.engine.next_command() is None
            return
        self._drain()

    @rule(dt=st.sampled_from([0.5, 2.0, 5.0, 11.0, 30.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        while (d := self.engine.next_deadline()) is not None and d <= self.now:
            self.engine.handle_timer(now=d)
            self._drain()

    @rule(agent=agent_ids, kind=st.sampled_from(["in", "out", "away", "ready", "extend"]))
    def agent_event(self, agent: str, kind: str) -> None:
        event: AcdEvent = {
            "in": AgentLoggedIn(agent_id=agent),
            "out": AgentLoggedOut(agent_id=agent),
            "away": AgentSetAway(agent_id=agent, reason="break"),
            "ready": AgentSetAvailable(agent_id=agent),
            "extend": ExtendWrapUp(agent_id=agent, seconds=3),
        }[kind]
        self._try(event)

    @rule(call=call_ids, queue=st.sampled_from(["main", "spill"]), prio=st.integers(0, 2),
          preferred=st.one_of(st.none(), agent_ids), ko=st.booleans())  # fmt: skip
    def enqueue(self, call: str, queue: str, prio: int, preferred: str | None, ko: bool) -> None:
        self._try(Enqueue(call_id=call, queue=queue, caller="1", priority=prio,
                          preferred_agent=preferred, language="ko" if ko else None))  # fmt: skip

    @rule(call=call_ids, kind=st.sampled_from(
        ["answer", "fail", "not_placed", "left", "callback", "cb_answer", "cb_fail"]))  # fmt: skip
    def call_event(self, call: str, kind: str) -> None:
        event: AcdEvent = {
            "answer": OfferAnswered(call_id=call),
            "fail": OfferFailed(call_id=call, reason="busy"),
            "not_placed": OfferFailed(call_id=call, reason="full", agent_at_fault=False),
            "left": CallLeft(call_id=call),
            "callback": RequestCallback(call_id=call, number="+1"),
            "cb_answer": CallbackAnswered(call_id=call),
            "cb_fail": CallbackFailed(call_id=call, reason="no_answer"),
        }[kind]
        self._try(event)

    @precondition(lambda self: self.engine.waiting())
    @rule(keep=st.sets(call_ids), registered=st.sets(agent_ids))
    def reconcile(self, keep: set[str], registered: set[str]) -> None:
        self._try(Reconcile(live_calls=frozenset(keep), registered_agents=frozenset(registered)))

    @invariant()
    def one_agent_per_call_and_one_call_per_agent(self) -> None:
        offered = {c.call_id: c.offered_to for c in self.engine.waiting() if c.offered_to}
        reserved = {
            a.spec.agent_id: a.call_id
            for a in self.engine.agents()
            if a.state is AgentState.RESERVED
        }
        assert len(set(offered.values())) == len(offered)
        assert {agent: call for call, agent in offered.items()} == reserved

    @invariant()
    def no_reservation_outlives_its_deadline(self) -> None:
        for a in self.engine.agents():
            if a.state is AgentState.RESERVED:
                assert self.now - self.reserved_since[a.spec.agent_id] <= RESERVE_LIMIT

    @invariant()
    def positions_are_a_permutation(self) -> None:
        for queue in ("main", "spill"):
            calls = self.engine.waiting(queue)
            assert [self.engine.position(c.call_id) for c in calls] == list(
                range(1, len(calls) + 1)
            )


TestBooks = Books.TestCase
TestBooks.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
