"""The queue engine: skills-based routing that is fair across queues, explainable and
deterministic.

Pure: `handle(event, now=)`, `next_command()`, `next_deadline()`, `handle_timer(now=)`.
No asyncio, no I/O, no clock — the async runner in `core/` feeds it facts from the
media side and carries out its commands; `acd.replay` feeds it a recorded journal.
Neighbours: `acd.model` (specs, records, the state table), `acd.events` (what comes in
and goes out), `acd.strategies` (which agent), `acd.estimate` (expected wait).

The rules, each with a fake-clock test in `tests/unit/test_acd*.py`:

* **One fair order.** Every waiting call has one key: effective priority (call's plus
  queue's), then arrival time. Calls are routed best key first, each to the agent its
  queue's strategy picks among the available, eligible agents; an agent who becomes
  free takes the best-keyed call it is eligible for, across all its queues.
* **Eligibility** = member of the queue (meets its minimum skills), available, meets the
  floor of the routing step in force (steps widen with wait), has the call's own skills
  and language, is the preferred agent during the preferred window, and did not just
  let this call ring out.
* **No answer.** Ring timeout (or a failed agent leg) puts the call back in its place
  and on to the next agent; the agent sits out this call for one ring cycle and after
  `no_answer_limit` misses in a row goes away with reason `no_answer`. An offer the media
  side could not even place is not the agent's fault: retried after `RETRY_S`.
* **Wrap-up** lasts the handled call's queue's `wrapup_s`, can be extended by the agent,
  and only the timer or the agent ends it — another queue never sees a wrapping agent.
* **Overflow** on max wait, max length, join-empty and leave-when-empty, to another
  queue (moved here, keeping its place) or out (voicemail, IVR, callback).
* **Callback (virtual hold)**: the call keeps its key after the caller hangs up; at the
  head it reserves an agent and asks the core to place the callback.
* **Transfers**: a blind `Transfer` sends the agent to wrap-up and the call into a
  queue afresh; a named agent (`Enqueue.agent`, also how a consultation reaches one)
  must be available and is offered the call at once, and should they not answer it
  waits in the queue for anyone. `ConsultCompleted` hands the call to the consulted
  agent.
* **Self-healing**: reservations end at the ring deadline (callbacks get the dial time
  on top); `Reconcile` drops calls and agents the media side no longer has.

Data structures (what keeps routing sub-millisecond with 10 000 waiting calls): per queue
a sorted list of waiting-call keys and a sorted list of its available agents; one
timer heap with lazy invalidation; only calls and agents whose situation changed are
looked at after an event.
"""

from __future__ import annotations

import heapq
import random
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum

from acd import estimate as ewt
from acd import strategies
from acd.events import (
    AcdCommand,
    AcdEvent,
    AgentLoggedIn,
    AgentLoggedOut,
    AgentSetAvailable,
    AgentSetAway,
    CallbackAnswered,
    CallbackFailed,
    CallLeft,
    CancelCallback,
    CancelOffer,
    ConsultCompleted,
    Enqueue,
    ExtendWrapUp,
    OfferAnswered,
    OfferCall,
    OfferFailed,
    Overflow,
    PlaceCallback,
    Reconcile,
    RequestCallback,
    Transfer,
)
from acd.model import (
    STAFFED,
    TRANSITIONS,
    Agent,
    AgentSpec,
    AgentState,
    Candidate,
    Estimate,
    IllegalTransition,
    OverflowTarget,
    QueueSpec,
    ServiceLevel,
    Step,
    Trace,
    WaitingCall,
)
from wire.events import AgentStateChanged, CallOffered, CallOverflowed, CallQueued

__all__ = [
    "CALLBACK_ATTEMPTS",
    "CALLBACK_DIAL_S",
    "CALLBACK_RETRY_S",
    "RETRY_S",
    "TRANSITIONS",
    "AcdCommand",
    "AcdEngine",
    "AcdEvent",
    "Agent",
    "AgentLoggedIn",
    "AgentLoggedOut",
    "AgentSetAvailable",
    "AgentSetAway",
    "AgentSpec",
    "AgentState",
    "CallLeft",
    "CallbackAnswered",
    "CallbackFailed",
    "CancelCallback",
    "CancelOffer",
    "Candidate",
    "ConsultCompleted",
    "Enqueue",
    "Estimate",
    "ExtendWrapUp",
    "IllegalTransition",
    "OfferAnswered",
    "OfferCall",
    "OfferFailed",
    "Overflow",
    "OverflowTarget",
    "PlaceCallback",
    "QueueSpec",
    "Reconcile",
    "RequestCallback",
    "ServiceLevel",
    "Step",
    "Trace",
    "Transfer",
    "WaitingCall",
]

RETRY_S = 1.0
"""How long a call whose offer could not be placed waits before the next attempt."""
CALLBACK_DIAL_S = 45.0
"""Extra reservation time for a callback: the core rings the agent, then the customer."""
CALLBACK_RETRY_S = 120.0
"""A callback the customer did not pick up is tried again after this, keeping its place."""
CALLBACK_ATTEMPTS = 3
TRACES_KEPT = 1000
"""Traces of finished calls kept for `trace()` (the newest ones)."""

_INF = float("inf")
_State = AgentState


class _Timer(Enum):
    RING = "ring"
    """An offer's ring deadline (token: the agent's reservation serial)."""
    WRAPUP = "wrapup"
    """End of an agent's wrap-up (token: the wrap-up end time it was armed for)."""
    WAKE = "wake"
    """A waiting call's situation changes with time: a step widens, a window or a
    skip ends, max wait is reached (token: the call's sequence number)."""


@dataclass(slots=True)
class _Queue:
    """A queue at run time: its members, waiting calls in fair order, who is free."""

    spec: QueueSpec
    members: list[str]
    """Agents meeting the queue's minimum skills, sorted by id."""
    order: dict[str, int]
    entries: list[tuple[int, float, int, str]] = field(default_factory=list)
    """(-priority, arrival, seq, call id) of every call in the queue, sorted."""
    available: list[str] = field(default_factory=list)
    """Members in AVAILABLE, sorted by id."""
    counts: dict[AgentState, int] = field(default_factory=dict)
    staffed: int = 0


class AcdEngine:
    def __init__(self, queues: list[QueueSpec], agents: list[AgentSpec], *, seed: int = 0) -> None:
        queue_names = {q.name for q in queues}
        for q in queues:
            strategies.get(q.strategy)  # an unknown name fails here, not at the first call
            spill = q.overflow
            if spill is not None and spill.kind in ("queue", "callback"):
                if (spill.target or q.name) not in queue_names or (
                    spill.kind == "queue" and spill.target in ("", q.name)
                ):
                    raise ValueError(f"queue {q.name}: bad overflow queue {spill.target!r}")
        self._agents = {a.agent_id: Agent(spec=a) for a in agents}
        by_skill: dict[str, list[str]] = {}
        for a in agents:
            for skill in a.levels:
                by_skill.setdefault(skill, []).append(a.agent_id)
        self._queues: dict[str, _Queue] = {}
        agent_queues: dict[str, list[str]] = {a: [] for a in self._agents}
        for q in queues:
            first = next(iter(q.required))
            members = sorted(
                aid
                for aid in by_skill.get(first, ())
                if all(self._agents[aid].spec.levels.get(s, 0) >= m for s, m in q.required.items())
            )
            self._queues[q.name] = _Queue(
                spec=q,
                members=members,
                order={aid: i for i, aid in enumerate(members)},
                counts={_State.LOGGED_OUT: len(members)},
            )
            for aid in members:
                agent_queues[aid].append(q.name)
        for aid, names in agent_queues.items():
            self._agents[aid].queues = tuple(names)
        self._calls: dict[str, WaitingCall] = {}
        """Waiting, ringing or virtual (callback) calls."""
        self._handled: dict[str, tuple[str, str]] = {}
        """call_id -> (agent_id, queue) for calls being talked on."""
        self._preferring: dict[str, set[str]] = {}
        """agent_id -> waiting calls that prefer them (checked beside the fair scan)."""
        self._commands: deque[AcdCommand] = deque()
        self._timers: list[tuple[float, int, _Timer, str, float]] = []
        self._seq = 0
        self._dirty_calls: set[str] = set()
        self._dirty_agents: set[str] = set()
        self._emptied: set[str] = set()
        self._traces: dict[str, list[Trace]] = {}
        self._finished: OrderedDict[str, list[Trace]] = OrderedDict()
        self._rng = random.Random(seed)
        self._last_served: dict[str, str] = {}
        self._hop_limit = len(self._queues)

    # ------------------------------------------------------------------ queries

    def agent(self, agent_id: str) -> Agent:
        return self._agents[agent_id]

    def agents(self) -> list[Agent]:
        return list(self._agents.values())

    def queue(self, name: str) -> QueueSpec:
        return self._queues[name].spec

    def waiting(self, queue: str | None = None) -> list[WaitingCall]:
        """Calls waiting (or ringing) in fair order: priority, then arrival."""
        if queue is not None:
            return [self._calls[e[3]] for e in self._queues[queue].entries]
        return sorted(self._calls.values(), key=lambda c: c.key)

    def position(self, call_id: str) -> int | None:
        """1-based place of the call in its queue (ringing calls included), or None."""
        call = self._calls.get(call_id)
        if call is None:
            return None
        entries = self._queues[call.queue].entries
        return 1 + bisect_left(entries, (*call.key, call_id))

    def trace(self, call_id: str) -> list[Trace]:
        """Every routing decision made for the call, oldest first."""
        return list(self._traces.get(call_id) or self._finished.get(call_id) or ())

    def estimate(self, call_id: str, *, now: float, confidence: float = 0.8) -> Estimate | None:
        """Position and expected wait (with an interval) of a waiting call."""
        call = self._calls.get(call_id)
        position = self.position(call_id)
        if call is None or position is None:
            return None
        q = self._queues[call.queue]
        able = [
            self._agents[aid]
            for aid in q.members
            if self._call_needs_met(self._agents[aid], call) is None
        ]
        rate, staffed = ewt.service_rate(able)
        if call.offered_to is not None:
            mean = low = high = 0.0  # ringing now
        else:
            free = sum(1 for a in able if a.state is _State.AVAILABLE)
            # ringing calls ahead already have their agent: only unoffered ones wait
            ahead = sum(
                1 for e in q.entries[: position - 1] if self._calls[e[3]].offered_to is None
            )
            mean, low, high = ewt.wait(ahead + 1 - free, rate, confidence)
        return Estimate(
            position=position,
            ewt_s=mean,
            low_s=low,
            high_s=high,
            confidence=confidence,
            agents=staffed,
            service_rate_per_s=rate,
        )

    def next_command(self) -> AcdCommand | None:
        return self._commands.popleft() if self._commands else None

    def next_deadline(self) -> float | None:
        timers = self._timers
        while timers and not self._timer_live(timers[0]):
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    # ------------------------------------------------------------------ inputs

    def handle(self, event: AcdEvent, *, now: float) -> None:
        """Apply one fact. An illegal one raises before anything changes.

        Timers are not fired here (the runner calls `handle_timer` at `next_deadline()`),
        but eligibility is always judged at `now`, so a late timer never makes routing
        unfair — it only delays a ring timeout or an overflow."""
        if isinstance(event, Enqueue):
            self._enqueue(event, now)
        elif isinstance(event, OfferAnswered | CallbackAnswered):
            self._answered(event, now)
        elif isinstance(event, OfferFailed):
            self._offer_failed(event, now)
        elif isinstance(event, CallbackFailed):
            self._callback_failed_event(event, now)
        elif isinstance(event, CallLeft):
            self._call_left(event.call_id, now)
        elif isinstance(event, RequestCallback | CancelCallback):
            self._callback_request(event, now)
        elif isinstance(event, Reconcile):
            self._reconcile(event, now)
        elif isinstance(event, Transfer):
            self._transfer(event, now)
        elif isinstance(event, ConsultCompleted):
            self._consult_completed(event, now)
        else:
            self._agent_event(event, now)
        self._route(now)

    def handle_timer(self, *, now: float) -> None:
        self._fire_timers(now)
        self._route(now)

    # ------------------------------------------------------------------ timers

    def _arm(self, at: float, kind: _Timer, ref: str, token: float) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (at, self._seq, kind, ref, token))

    def _timer_live(self, entry: tuple[float, int, _Timer, str, float]) -> bool:
        at, _, kind, ref, token = entry
        if kind is _Timer.RING:
            agent = self._agents[ref]
            return agent.state is _State.RESERVED and agent.reservation == token
        if kind is _Timer.WRAPUP:
            agent = self._agents[ref]
            return agent.state is _State.WRAP_UP and agent.wrapup_until == at
        call = self._calls.get(ref)
        return call is not None and call.seq == token

    def _fire_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            entry = heapq.heappop(timers)
            if not self._timer_live(entry):
                continue
            _, _, kind, ref, _ = entry
            if kind is _Timer.RING:
                self._ring_timeout(self._agents[ref], now)
            elif kind is _Timer.WRAPUP:
                self._wrapup_over(self._agents[ref], now)
            else:
                self._dirty_calls.add(ref)

    # ------------------------------------------------------------------ agent facts

    def _agent_event(
        self,
        event: AgentLoggedIn | AgentLoggedOut | AgentSetAvailable | AgentSetAway | ExtendWrapUp,
        now: float,
    ) -> None:
        agent = self._agents.get(event.agent_id)
        if agent is None:
            raise KeyError(f"unknown agent {event.agent_id!r}")
        state = agent.state
        if isinstance(event, AgentLoggedIn):
            if state is _State.LOGGED_OUT:
                to = _State.AVAILABLE if event.available else _State.AWAY
                self._set_state(agent, to, now)
        elif isinstance(event, AgentLoggedOut):
            if state is not _State.LOGGED_OUT:
                self._release_offer(agent, now)
                agent.wrapup_until = None
                agent.pending_away = None
                agent.call_id = None
                self._set_state(agent, _State.LOGGED_OUT, now)
        elif isinstance(event, AgentSetAvailable):
            if state is _State.ON_CALL:
                raise IllegalTransition(f"agent {agent.spec.agent_id}: on a call")
            if state in (_State.LOGGED_OUT, _State.AWAY, _State.WRAP_UP):
                # the agent's own "ready" ends their wrap-up early: their choice to make
                agent.wrapup_until = None
                agent.pending_away = None
                agent.missed = 0
                self._set_state(agent, _State.AVAILABLE, now)
        elif isinstance(event, AgentSetAway):
            if state is _State.ON_CALL:
                raise IllegalTransition(f"agent {agent.spec.agent_id}: on a call")
            if state is _State.WRAP_UP:
                agent.pending_away = event.reason
            elif state is _State.AWAY:
                agent.reason = event.reason
                self._emit_state(agent)
            else:
                self._release_offer(agent, now)
                self._set_state(agent, _State.AWAY, now, event.reason)
        else:
            if state is not _State.WRAP_UP or agent.wrapup_until is None:
                raise IllegalTransition(f"agent {agent.spec.agent_id}: not in wrap-up")
            if event.seconds <= 0:
                raise ValueError("ExtendWrapUp.seconds must be positive")
            agent.wrapup_until += event.seconds
            self._arm(agent.wrapup_until, _Timer.WRAPUP, agent.spec.agent_id, 0.0)

    def _release_offer(self, agent: Agent, now: float) -> None:
        """The reserved agent is leaving: stop ringing them, the call keeps its place."""
        if agent.state is not _State.RESERVED or agent.call_id is None:
            return
        call = self._calls.get(agent.call_id)
        agent.call_id = None
        if call is not None:
            self._commands.append(CancelOffer(call_id=call.call_id, agent_id=agent.spec.agent_id))
            self._requeue(call)

    def _set_state(self, agent: Agent, to: AgentState, now: float, reason: str = "") -> None:
        old = agent.state
        if old is _State.WRAP_UP and agent.answered_at is not None:
            agent.handled += 1
            agent.handle_total_s += now - agent.answered_at
            agent.answered_at = None
        agent.move(to, now, reason)
        aid = agent.spec.agent_id
        for name in agent.queues:
            q = self._queues[name]
            q.counts[old] = q.counts.get(old, 0) - 1
            q.counts[to] = q.counts.get(to, 0) + 1
            if old is _State.AVAILABLE:
                del q.available[bisect_left(q.available, aid)]
            elif to is _State.AVAILABLE:
                insort(q.available, aid)
            was, now_staffed = old in STAFFED, to in STAFFED
            if was and not now_staffed:
                q.staffed -= 1
                if q.staffed == 0 and q.spec.leave_when_empty:
                    self._emptied.add(name)
            elif now_staffed and not was:
                q.staffed += 1
        if to is _State.AVAILABLE:
            self._dirty_agents.add(aid)
        self._emit_state(agent)

    def _emit_state(self, agent: Agent) -> None:
        self._commands.append(
            AgentStateChanged(
                agent=agent.spec.agent_id, state=agent.state.value, reason=agent.reason
            )
        )

    def _wrapup_over(self, agent: Agent, now: float) -> None:
        agent.wrapup_until = None
        if agent.pending_away is not None:
            reason, agent.pending_away = agent.pending_away, None
            self._set_state(agent, _State.AWAY, now, reason)
        else:
            self._set_state(agent, _State.AVAILABLE, now)

    # ------------------------------------------------------------------ call facts

    def _enqueue(self, event: Enqueue, now: float) -> None:
        q = self._queues.get(event.queue)
        if q is None:
            raise KeyError(f"unknown queue {event.queue!r}")
        if event.call_id in self._calls or event.call_id in self._handled:
            raise IllegalTransition(f"call {event.call_id} is already queued")
        direct = self._direct_agent(event.agent) if event.agent is not None else None
        self._seq += 1
        preferred = event.preferred_agent if event.preferred_agent in self._agents else None
        call = WaitingCall(
            call_id=event.call_id,
            queue=q.spec.name,
            caller=event.caller,
            enqueued_at=now,
            priority=event.priority + q.spec.priority,
            own_priority=event.priority,
            skills=dict(event.skills),
            preferred_agent=preferred,
            language=event.language,
            seq=self._seq,
            queue_entered_at=now,
        )
        self._traces.setdefault(call.call_id, [])  # a transferred call keeps its traces
        if direct is not None:
            call.direct_agent = direct.spec.agent_id
            self._insert(call, now)
            self._offer_direct(call, direct, now)
        elif not q.spec.join_empty and q.staffed == 0:
            self._overflow(call, "join_empty", now, queued=False)
        elif q.spec.max_length is not None and len(q.entries) >= q.spec.max_length:
            self._overflow(call, "max_length", now, queued=False)
        else:
            self._insert(call, now)

    def _direct_agent(self, agent_id: str) -> Agent:
        """The agent a transfer or consultation names: they must be free right now."""
        agent = self._agents.get(agent_id)
        if agent is None:
            raise KeyError(f"unknown agent {agent_id!r}")
        if agent.state is not _State.AVAILABLE:
            why = f" ({agent.reason})" if agent.reason else ""
            raise IllegalTransition(f"agent {agent_id} is {agent.state.value}{why}")
        return agent

    def _offer_direct(self, call: WaitingCall, agent: Agent, now: float) -> None:
        q = self._queues[call.queue]
        step, floor = q.spec.step_at(0.0)
        trace = Trace(
            call_id=call.call_id,
            queue=q.spec.name,
            at=now,
            strategy="direct",
            step=step,
            floor=floor,
            priority=call.priority,
            waited_s=0.0,
            candidates=(Candidate(agent_id=agent.spec.agent_id, excluded=None),),
            not_available={},
            winner=agent.spec.agent_id,
            winner_score=0.0,
        )
        self._offer(call, agent, trace, now)

    def _transfer(self, event: Transfer, now: float) -> None:
        handled = self._handled.get(event.call_id)
        if handled is None:
            raise IllegalTransition(f"call {event.call_id} is not on an agent")
        if event.queue not in self._queues:
            raise KeyError(f"unknown queue {event.queue!r}")
        if event.agent is not None:
            if event.agent == handled[0]:
                raise IllegalTransition(f"agent {event.agent} already has call {event.call_id}")
            self._direct_agent(event.agent)
        self._release_handled(event.call_id, now)
        self._enqueue(
            Enqueue(
                call_id=event.call_id,
                queue=event.queue,
                caller=event.caller,
                priority=event.priority,
                skills=event.skills,
                language=event.language,
                agent=event.agent,
            ),
            now,
        )

    def _consult_completed(self, event: ConsultCompleted, now: float) -> None:
        if event.call_id not in self._handled:
            raise IllegalTransition(f"call {event.call_id} is not on an agent")
        consulted = self._handled.get(event.consult_id)
        if consulted is None:
            raise IllegalTransition(f"consultation {event.consult_id} is not answered")
        del self._handled[event.consult_id]
        self._finish(event.consult_id)
        self._release_handled(event.call_id, now)
        self._handled[event.call_id] = consulted
        self._traces.setdefault(event.call_id, [])
        self._agents[consulted[0]].call_id = event.call_id

    def _insert(self, call: WaitingCall, now: float) -> None:
        """Put a call in its queue's fair order and arm the times its situation changes."""
        q = self._queues[call.queue]
        self._calls[call.call_id] = call
        insort(q.entries, (*call.key, call.call_id))
        if call.preferred_agent is not None:
            self._preferring.setdefault(call.preferred_agent, set()).add(call.call_id)
        spec = q.spec
        for step in spec.steps:
            at = call.enqueued_at + step.after_s
            if at > now:
                self._arm(at, _Timer.WAKE, call.call_id, call.seq)
        wakes = []
        if call.preferred_agent is not None and spec.preferred_agent_s > 0:
            wakes.append(call.enqueued_at + spec.preferred_agent_s)
        if spec.max_wait_s is not None:
            wakes.append(call.queue_entered_at + spec.max_wait_s)
        for at in wakes:
            self._arm(at, _Timer.WAKE, call.call_id, call.seq)
        self._dirty_calls.add(call.call_id)
        position = self.position(call.call_id)
        assert position is not None
        queued = CallQueued(
            call_id=call.call_id, queue=call.queue, caller=call.caller, position=position
        )
        self._commands.append(queued)

    def _remove(self, call: WaitingCall) -> None:
        """Take a call out of its queue (answered, gone, overflowed out, moved)."""
        q = self._queues[call.queue]
        i = bisect_left(q.entries, (*call.key, call.call_id))
        if i < len(q.entries) and q.entries[i][3] == call.call_id:
            del q.entries[i]
        del self._calls[call.call_id]
        if call.preferred_agent is not None:
            self._preferring.get(call.preferred_agent, set()).discard(call.call_id)

    def _finish(self, call_id: str) -> None:
        """The engine is done with the call: keep its traces among the recent ones."""
        traces = self._traces.pop(call_id, None)
        if traces is not None:
            self._finished[call_id] = traces
            while len(self._finished) > TRACES_KEPT:
                self._finished.popitem(last=False)

    def _answered(self, event: OfferAnswered | CallbackAnswered, now: float) -> None:
        call = self._calls.get(event.call_id)
        if call is None or call.offered_to is None:
            raise IllegalTransition(f"call {event.call_id} was not offered")
        if isinstance(event, CallbackAnswered) and call.live:
            raise IllegalTransition(f"call {event.call_id} is not a callback")
        agent = self._agents[call.offered_to]
        agent.missed = 0
        agent.answered_at = now
        self._set_state(agent, _State.ON_CALL, now)
        self._remove(call)
        self._handled[call.call_id] = (agent.spec.agent_id, call.queue)

    def _offer_failed(self, event: OfferFailed, now: float) -> None:
        call = self._calls.get(event.call_id)
        if call is None or call.offered_to is None:
            return  # the offer was already settled (timeout raced the failure)
        agent = self._agents[call.offered_to]
        if event.agent_at_fault:
            self._missed(agent, call, now)
            return
        agent.call_id = None
        self._requeue(call)
        call.not_before = now + RETRY_S
        self._arm(call.not_before, _Timer.WAKE, call.call_id, call.seq)
        self._set_state(agent, _State.AVAILABLE, now)

    def _ring_timeout(self, agent: Agent, now: float) -> None:
        call = self._calls.get(agent.call_id or "")
        if call is None:  # cannot happen while the books balance; free the agent anyway
            agent.call_id = None
            self._set_state(agent, _State.AVAILABLE, now)
            return
        self._commands.append(CancelOffer(call_id=call.call_id, agent_id=agent.spec.agent_id))
        if call.live:
            self._missed(agent, call, now)
        else:
            self._callback_failed(call, now)

    def _missed(self, agent: Agent, call: WaitingCall, now: float) -> None:
        """The agent let the call ring out (or their leg failed): next agent, same place."""
        agent.call_id = None
        agent.missed += 1
        backoff = self._queues[call.queue].spec.ring_timeout_s
        call.missed_by[agent.spec.agent_id] = now + backoff
        self._arm(now + backoff, _Timer.WAKE, call.call_id, call.seq)
        self._requeue(call)
        if agent.missed >= agent.spec.no_answer_limit:
            agent.missed = 0
            self._set_state(agent, _State.AWAY, now, "no_answer")
        else:
            self._set_state(agent, _State.AVAILABLE, now)

    def _requeue(self, call: WaitingCall) -> None:
        call.offered_to = None
        call.direct_agent = None  # a named agent who did not take it: anyone may now
        call.ring_deadline = None
        self._dirty_calls.add(call.call_id)

    def _call_left(self, call_id: str, now: float) -> None:
        call = self._calls.get(call_id)
        if call is not None:
            if not call.live:
                return  # the caller's leg of a virtual-hold call: already gone
            agent = self._agents[call.offered_to] if call.offered_to is not None else None
            if agent is not None:
                agent.call_id = None
                self._commands.append(CancelOffer(call_id=call_id, agent_id=agent.spec.agent_id))
            if call.callback_number is not None:
                call.live = False  # virtual hold: the place is kept, the caller hung up
                self._requeue(call)
            else:
                self._remove(call)
                self._finish(call_id)
            if agent is not None:
                self._set_state(agent, _State.AVAILABLE, now)
            return
        if call_id in self._handled:
            self._release_handled(call_id, now)
            self._finish(call_id)

    def _release_handled(self, call_id: str, now: float) -> None:
        """The agent on a call is done with it (it ended, or they handed it on)."""
        agent_id, queue = self._handled.pop(call_id)
        agent = self._agents[agent_id]
        agent.call_id = None
        if agent.state is not _State.ON_CALL:
            return  # logged out mid-call
        # the queue of the call just handled sets the wrap-up, whatever else is waiting
        self._set_state(agent, _State.WRAP_UP, now)
        agent.wrapup_until = now + self._queues[queue].spec.wrapup_s
        self._arm(agent.wrapup_until, _Timer.WRAPUP, agent_id, 0.0)

    def _callback_request(self, event: RequestCallback | CancelCallback, now: float) -> None:
        call = self._calls.get(event.call_id)
        if call is None:
            raise IllegalTransition(f"call {event.call_id} is not waiting")
        if isinstance(event, RequestCallback):
            call.callback_number = event.number
            return
        if call.callback_number is None:
            return
        if call.live:
            call.callback_number = None
            return
        if call.offered_to is not None:
            agent = self._agents[call.offered_to]
            self._release_offer(agent, now)
            self._set_state(agent, _State.AVAILABLE, now)
        self._remove(call)
        self._finish(call.call_id)

    def _callback_failed_event(self, event: CallbackFailed, now: float) -> None:
        call = self._calls.get(event.call_id)
        if call is None or call.offered_to is None:
            return
        if call.live:
            raise IllegalTransition(f"call {event.call_id} is not a callback")
        self._callback_failed(call, now)

    def _callback_failed(self, call: WaitingCall, now: float) -> None:
        """The customer did not pick up: not the agent's fault; retry, keeping the place."""
        assert call.offered_to is not None
        agent = self._agents[call.offered_to]
        agent.call_id = None
        self._requeue(call)
        call.callback_failures += 1
        if call.callback_failures >= CALLBACK_ATTEMPTS:
            self._remove(call)
            self._finish(call.call_id)
        else:
            call.not_before = now + CALLBACK_RETRY_S
            self._arm(call.not_before, _Timer.WAKE, call.call_id, call.seq)
        self._set_state(agent, _State.AVAILABLE, now)

    def _reconcile(self, event: Reconcile, now: float) -> None:
        """Trust the media side: calls it no longer has are gone, unregistered agents out."""
        for call_id, call in list(self._calls.items()):
            if call.live and call_id not in event.live_calls:
                self._call_left(call_id, now)
        for call_id in list(self._handled):
            if call_id not in event.live_calls:
                self._call_left(call_id, now)
        for agent in self._agents.values():
            if agent.state is not _State.LOGGED_OUT and agent.spec.agent_id not in (
                event.registered_agents
            ):
                self._agent_event(AgentLoggedOut(agent_id=agent.spec.agent_id), now)

    # ------------------------------------------------------------------ overflow

    def _overflow(self, call: WaitingCall, reason: str, now: float, *, queued: bool) -> None:
        q = self._queues[call.queue]
        target = q.spec.overflow
        assert target is not None  # QueueSpec refuses overflow rules without a target
        if target.kind == "queue" and call.hops >= self._hop_limit:
            call.hops += 1  # a cycle of queues: stay here, stop overflowing
            return
        self._commands.append(
            CallOverflowed(
                call_id=call.call_id,
                queue=call.queue,
                reason=reason,
                target_kind=target.kind,
                target=target.target,
            )
        )
        self._commands.append(
            Overflow(
                call_id=call.call_id,
                queue=call.queue,
                reason=reason,
                target_kind=target.kind,
                target=target.target,
            )
        )
        if queued:
            self._remove(call)
        if target.kind in ("queue", "callback"):
            dest = self._queues[target.target or call.queue]
            call.queue = dest.spec.name
            call.queue_entered_at = now
            call.priority = call.own_priority + dest.spec.priority
            call.hops += 1
            if target.kind == "callback":
                call.callback_number = call.caller
            self._insert(call, now)
        else:
            self._finish(call.call_id)

    def _overflow_due(self, call: WaitingCall, now: float) -> bool:
        spec = self._queues[call.queue].spec
        return (
            spec.max_wait_s is not None
            and call.live
            and call.callback_number is None
            and call.hops < self._hop_limit
            and now - call.queue_entered_at >= spec.max_wait_s
        )

    # ------------------------------------------------------------------ routing

    def _route(self, now: float) -> None:
        """Offer every call that can be offered now, best key first."""
        while self._dirty_calls or self._dirty_agents or self._emptied:
            self._route_round(now)

    def _route_round(self, now: float) -> None:
        for name in sorted(self._emptied):
            q = self._queues[name]
            for entry in list(q.entries):
                call = self._calls[entry[3]]
                if call.live and call.offered_to is None and call.callback_number is None:
                    self._overflow(call, "leave_empty", now, queued=True)
        self._emptied.clear()
        # candidates, best key first: calls whose situation changed, plus each newly
        # free agent's best call; settling a call re-examines the agents that wanted it
        heap: list[tuple[tuple[int, float, int], str]] = []
        seen: set[str] = set()
        watchers: dict[str, list[Agent]] = {}
        dirty = sorted(
            (c for cid in self._dirty_calls if (c := self._calls.get(cid)) is not None),
            key=lambda c: c.key,
        )
        self._dirty_calls.clear()
        for call in dirty:
            if call.offered_to is not None:
                continue
            if self._overflow_due(call, now):
                self._overflow(call, "max_wait", now, queued=True)
                continue
            seen.add(call.call_id)
            heapq.heappush(heap, (call.key, call.call_id))

        def watch(agent: Agent) -> None:
            best = self._best_call_for(agent, now)
            if best is None:
                return
            if best.call_id not in seen:
                seen.add(best.call_id)
                heapq.heappush(heap, (best.key, best.call_id))
            watchers.setdefault(best.call_id, []).append(agent)

        for aid in sorted(self._dirty_agents):
            agent = self._agents[aid]
            if agent.state is _State.AVAILABLE:
                watch(agent)
        self._dirty_agents.clear()
        while heap:
            _, call_id = heapq.heappop(heap)
            head = self._calls.get(call_id)
            if head is not None and self._routable(head, now):
                self._route_call(head, now)
            for agent in watchers.pop(call_id, ()):
                if agent.state is _State.AVAILABLE:
                    watch(agent)

    def _routable(self, call: WaitingCall, now: float) -> bool:
        if call.offered_to is not None:
            return False
        if call.not_before is not None:
            if call.not_before > now:
                return False
            call.not_before = None
        return True

    def _call_needs_met(self, agent: Agent, call: WaitingCall) -> tuple[str, str] | None:
        """What the call itself asks of an agent (beyond the queue): skills, language."""
        levels = agent.spec.levels
        for skill, need in call.skills.items():
            have = levels.get(skill, 0)
            if have == 0:
                return "skill", f"lacks {skill}"
            if have < need:
                return "proficiency", f"{skill} {have} < {need}"
        languages = agent.spec.languages  # none listed: the agent takes any language
        if call.language is not None and languages and call.language not in languages:
            return "language", f"does not speak {call.language}"
        return None

    def _exclusion(
        self, agent: Agent, call: WaitingCall, q: _Queue, now: float
    ) -> tuple[str, str] | None:
        """Why an available member of the call's queue may not take it now, or None."""
        aid = agent.spec.agent_id
        waited = now - call.enqueued_at
        preferred = call.preferred_agent
        in_window = preferred is not None and waited < q.spec.preferred_agent_s
        if in_window and aid != preferred:
            return "preferred", f"reserved for {preferred} until {q.spec.preferred_agent_s:g}s"
        if not in_window and q.spec.steps:
            _, floor = q.spec.step_at(waited)
            levels = agent.spec.levels
            for skill in q.spec.required:
                have = levels.get(skill, 0)
                if have < floor:
                    return "step", f"{skill} {have} < {floor} until the step widens"
        needs = self._call_needs_met(agent, call)
        if needs is not None:
            return needs
        until = call.missed_by.get(aid)
        if until is not None and until > now:
            return "no_answer", f"let it ring out; skipped until {until:g}"
        return None

    def _best_call_for(self, agent: Agent, now: float) -> WaitingCall | None:
        """The best-keyed routable call across the agent's queues that they may take."""
        best: WaitingCall | None = None
        best_key: tuple[int, float, int] = (2**62, _INF, 0)
        calls = self._calls
        for name in agent.queues:
            q = self._queues[name]
            entries = q.entries
            i, n = 0, len(entries)
            while i < n:
                neg_prio, at, seq, call_id = entries[i]
                if (neg_prio, at, seq) >= best_key:
                    break
                call = calls[call_id]
                if not self._routable(call, now):
                    i += 1
                    continue
                why = self._exclusion(agent, call, q, now)
                if why is None:
                    best, best_key = call, call.key
                    break
                if why[0] == "step":
                    # floors only fall with wait: younger calls of this priority fail too
                    i = bisect_right(entries, (neg_prio, _INF))
                else:
                    i += 1
        for call_id in sorted(self._preferring.get(agent.spec.agent_id, ())):
            call = calls[call_id]
            if call.key < best_key and self._routable(call, now):
                q = self._queues[call.queue]
                if agent.spec.agent_id in q.order and self._exclusion(agent, call, q, now) is None:
                    best, best_key = call, call.key
        return best

    def _route_call(self, call: WaitingCall, now: float) -> None:
        """Offer the call to the agent its queue's strategy picks, with the trace."""
        q = self._queues[call.queue]
        choices: list[strategies.Choice] = []
        excluded: list[tuple[str, tuple[str, str]]] = []
        for aid in q.available:
            agent = self._agents[aid]
            why = self._exclusion(agent, call, q, now)
            if why is not None:
                excluded.append((aid, why))
                continue
            levels = agent.spec.levels
            proficiency = sum(levels.get(s, 0) for s in q.spec.required) + sum(
                levels.get(s, 0) for s in call.skills
            )
            choices.append(strategies.Choice(agent, proficiency))
        if not choices:
            return
        ctx = strategies.Context(
            now=now,
            queue=q.spec.name,
            rng=self._rng,
            last_served=self._last_served,
            member_order=q.order,
        )
        index, scores = strategies.get(q.spec.strategy)(choices, ctx)
        winner = choices[index].agent
        step, floor = q.spec.step_at(now - call.enqueued_at)
        candidates = [Candidate(agent_id=aid, excluded=w[0], detail=w[1]) for aid, w in excluded]
        candidates += [
            Candidate(agent_id=c.agent.spec.agent_id, excluded=None, score=s)
            for c, s in zip(choices, scores, strict=True)
        ]
        candidates.sort(key=lambda c: c.agent_id)
        trace = Trace(
            call_id=call.call_id,
            queue=q.spec.name,
            at=now,
            strategy=q.spec.strategy,
            step=step,
            floor=floor,
            priority=call.priority,
            waited_s=now - call.enqueued_at,
            candidates=tuple(candidates),
            not_available={
                s.value: n for s, n in q.counts.items() if n and s is not _State.AVAILABLE
            },
            winner=winner.spec.agent_id,
            winner_score=scores[index],
        )
        self._offer(call, winner, trace, now)

    def _offer(self, call: WaitingCall, agent: Agent, trace: Trace, now: float) -> None:
        q = self._queues[call.queue]
        aid = agent.spec.agent_id
        self._seq += 1
        agent.reservation = self._seq
        agent.call_id = call.call_id
        call.offered_to = aid
        limit = q.spec.ring_timeout_s + (0.0 if call.live else CALLBACK_DIAL_S)
        call.ring_deadline = now + limit
        call.attempts.append(aid)
        self._arm(call.ring_deadline, _Timer.RING, aid, agent.reservation)
        self._last_served[q.spec.name] = aid
        self._traces.setdefault(call.call_id, []).append(trace)
        self._set_state(agent, _State.RESERVED, now)
        if call.live:
            self._commands.append(
                OfferCall(call_id=call.call_id, agent_id=aid, queue=call.queue, trace=trace)
            )
        else:
            assert call.callback_number is not None
            self._commands.append(
                PlaceCallback(
                    call_id=call.call_id,
                    agent_id=aid,
                    queue=call.queue,
                    number=call.callback_number,
                    trace=trace,
                )
            )
        self._commands.append(CallOffered(call_id=call.call_id, queue=call.queue, agent=aid))
