"""The queue engine: skills-based, longest-idle routing with ring timeout and wrap-up.

Pure and deterministic: `handle(event, now=)`, `next_command()`, `next_deadline()`,
`handle_timer(now=)`. No asyncio, no I/O, no clock — the async runner in `core/`
feeds it facts from the media side and carries out its commands.

Rules (the walking-skeleton subset; issue #3 grows them in place):
* a waiting call goes to the available agent with the queue's skill who has been idle
  longest; an agent serving several queues takes the call that has waited longest;
* an offered call rings for the queue's `ring_timeout_s`; on timeout (or a failed
  agent leg) the call keeps its place at the head of the queue and the agent is set
  away with reason `no_answer`;
* after a call the agent is in wrap-up for the queue's `wrapup_s`, then available;
* an offer the media side could not even place (the worker was momentarily full) is
  not the agent's fault: the agent stays available and the call, keeping its place,
  is retried after `RETRY_S`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from wire.events import AgentStateChanged, CallOffered, CallQueued

RETRY_S = 1.0
"""How long a call whose offer could not be placed waits before the next attempt."""

# ---------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSpec:
    name: str
    skill: str
    ring_timeout_s: float
    wrapup_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSpec:
    agent_id: str
    skills: frozenset[str]


# ---------------------------------------------------------------- agent state machine


class AgentState(Enum):
    LOGGED_OUT = "logged_out"
    AVAILABLE = "available"
    RESERVED = "reserved"
    """A call is offered: the agent's phone is ringing."""
    ON_CALL = "on_call"
    WRAP_UP = "wrap_up"
    AWAY = "away"


_S = AgentState
TRANSITIONS: dict[AgentState, frozenset[AgentState]] = {
    _S.LOGGED_OUT: frozenset({_S.AVAILABLE, _S.AWAY}),
    _S.AVAILABLE: frozenset({_S.RESERVED, _S.AWAY, _S.LOGGED_OUT}),
    _S.RESERVED: frozenset({_S.ON_CALL, _S.AVAILABLE, _S.AWAY, _S.LOGGED_OUT}),
    _S.ON_CALL: frozenset({_S.WRAP_UP, _S.LOGGED_OUT}),
    _S.WRAP_UP: frozenset({_S.AVAILABLE, _S.AWAY, _S.LOGGED_OUT}),
    _S.AWAY: frozenset({_S.AVAILABLE, _S.LOGGED_OUT}),
}


class IllegalTransition(RuntimeError):
    """An agent or call event that the state table forbids; nothing was changed."""


@dataclass(slots=True)
class Agent:
    spec: AgentSpec
    state: AgentState = AgentState.LOGGED_OUT
    reason: str = ""
    idle_since: float = 0.0
    wrapup_until: float | None = None
    call_id: str | None = None

    def move(self, to: AgentState, now: float, reason: str = "") -> None:
        if to not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"agent {self.spec.agent_id}: {self.state.value} -> {to.value}")
        self.state = to
        self.reason = reason
        if to is AgentState.AVAILABLE:
            self.idle_since = now


@dataclass(slots=True)
class WaitingCall:
    call_id: str
    queue: str
    caller: str
    enqueued_at: float
    """Kept across failed offers, so a call that rang out goes back to the head."""
    offered_to: str | None = None
    ring_deadline: float | None = None
    not_before: float | None = None
    """Set after an offer that could not be placed: no new offer until then."""
    attempts: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- events in


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentLoggedIn:
    agent_id: str
    available: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentLoggedOut:
    agent_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSetAvailable:
    agent_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSetAway:
    agent_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Enqueue:
    call_id: str
    queue: str
    caller: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OfferAnswered:
    call_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OfferFailed:
    """The agent leg failed before answer (busy, unreachable, rejected)."""

    call_id: str
    reason: str
    agent_at_fault: bool = True
    """False when the leg could not be placed at all (e.g. the worker was full)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CallLeft:
    """The caller is gone: abandoned while waiting/ringing, or a handled call ended."""

    call_id: str


AcdEvent = (
    AgentLoggedIn
    | AgentLoggedOut
    | AgentSetAvailable
    | AgentSetAway
    | Enqueue
    | OfferAnswered
    | OfferFailed
    | CallLeft
)

# ---------------------------------------------------------------- commands out


@dataclass(frozen=True, slots=True, kw_only=True)
class OfferCall:
    call_id: str
    agent_id: str
    queue: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelOffer:
    """Stop ringing the agent (ring timeout); the call stays queued."""

    call_id: str
    agent_id: str


AcdCommand = OfferCall | CancelOffer | CallQueued | CallOffered | AgentStateChanged
"""Routing commands plus the contact-center events the runner publishes as they are."""


class AcdEngine:
    def __init__(self, queues: list[QueueSpec], agents: list[AgentSpec]) -> None:
        self._queues = {q.name: q for q in queues}
        self._agents = {a.agent_id: Agent(spec=a) for a in agents}
        self._calls: dict[str, WaitingCall] = {}
        """Waiting or ringing calls."""
        self._handled: dict[str, tuple[str, str]] = {}
        """call_id -> (agent_id, queue) for calls being talked on."""
        self._commands: deque[AcdCommand] = deque()

    # -- queries

    def agent(self, agent_id: str) -> Agent:
        return self._agents[agent_id]

    def agents(self) -> list[Agent]:
        return list(self._agents.values())

    def waiting(self, queue: str | None = None) -> list[WaitingCall]:
        calls = [c for c in self._calls.values() if queue is None or c.queue == queue]
        return sorted(calls, key=lambda c: (c.enqueued_at, c.call_id))

    def position(self, call_id: str) -> int | None:
        call = self._calls.get(call_id)
        if call is None:
            return None
        return 1 + [c.call_id for c in self.waiting(call.queue)].index(call_id)

    def next_command(self) -> AcdCommand | None:
        return self._commands.popleft() if self._commands else None

    def next_deadline(self) -> float | None:
        deadlines = [c.ring_deadline for c in self._calls.values() if c.ring_deadline is not None]
        deadlines += [c.not_before for c in self._calls.values() if c.not_before is not None]
        deadlines += [a.wrapup_until for a in self._agents.values() if a.wrapup_until is not None]
        return min(deadlines, default=None)

    # -- inputs

    def handle(self, event: AcdEvent, *, now: float) -> None:
        if isinstance(event, Enqueue):
            self._enqueue(event, now)
        elif isinstance(event, OfferAnswered):
            self._answered(event.call_id, now)
        elif isinstance(event, OfferFailed):
            self._offer_failed(event.call_id, now, event.reason, event.agent_at_fault)
        elif isinstance(event, CallLeft):
            self._call_left(event.call_id, now)
        else:
            self._agent_event(event, now)
        self._route(now)

    def handle_timer(self, *, now: float) -> None:
        for call in list(self._calls.values()):
            if call.ring_deadline is not None and call.ring_deadline <= now:
                assert call.offered_to is not None
                self._commands.append(CancelOffer(call_id=call.call_id, agent_id=call.offered_to))
                self._offer_failed(call.call_id, now, "no_answer")
        for call in self._calls.values():
            if call.not_before is not None and call.not_before <= now:
                call.not_before = None
        for agent in self._agents.values():
            if agent.wrapup_until is not None and agent.wrapup_until <= now:
                agent.wrapup_until = None
                self._set_state(agent, AgentState.AVAILABLE, now)
        self._route(now)

    # -- agent facts

    def _agent_event(
        self, event: AgentLoggedIn | AgentLoggedOut | AgentSetAvailable | AgentSetAway, now: float
    ) -> None:
        agent = self._agents.get(event.agent_id)
        if agent is None:
            raise KeyError(f"unknown agent {event.agent_id!r}")
        if isinstance(event, AgentLoggedIn):
            if agent.state is AgentState.LOGGED_OUT:
                to = AgentState.AVAILABLE if event.available else AgentState.AWAY
                self._set_state(agent, to, now)
        elif isinstance(event, AgentLoggedOut):
            if agent.state is AgentState.LOGGED_OUT:
                return
            if agent.state is AgentState.RESERVED and agent.call_id in self._calls:
                call = self._calls[agent.call_id]
                self._commands.append(
                    CancelOffer(call_id=call.call_id, agent_id=agent.spec.agent_id)
                )
                self._requeue(call)
            agent.wrapup_until = None
            agent.call_id = None
            self._set_state(agent, AgentState.LOGGED_OUT, now)
        elif isinstance(event, AgentSetAvailable):
            if agent.state is not AgentState.AVAILABLE:
                agent.wrapup_until = None
                self._set_state(agent, AgentState.AVAILABLE, now)
        else:
            if agent.state is AgentState.WRAP_UP:
                # away after wrap-up is honoured once the wrap-up is over
                agent.reason = event.reason
                return
            self._set_state(agent, AgentState.AWAY, now, event.reason)

    def _set_state(self, agent: Agent, to: AgentState, now: float, reason: str = "") -> None:
        agent.move(to, now, reason)
        self._commands.append(
            AgentStateChanged(agent=agent.spec.agent_id, state=to.value, reason=reason)
        )

    # -- call facts

    def _enqueue(self, event: Enqueue, now: float) -> None:
        if event.queue not in self._queues:
            raise KeyError(f"unknown queue {event.queue!r}")
        if event.call_id in self._calls or event.call_id in self._handled:
            raise IllegalTransition(f"call {event.call_id} is already queued")
        call = WaitingCall(
            call_id=event.call_id, queue=event.queue, caller=event.caller, enqueued_at=now
        )
        self._calls[call.call_id] = call
        position = self.position(call.call_id)
        assert position is not None
        self._commands.append(
            CallQueued(
                call_id=call.call_id, queue=call.queue, caller=call.caller, position=position
            )
        )

    def _answered(self, call_id: str, now: float) -> None:
        call = self._calls.get(call_id)
        if call is None or call.offered_to is None:
            raise IllegalTransition(f"call {call_id} was not offered")
        agent = self._agents[call.offered_to]
        self._set_state(agent, AgentState.ON_CALL, now)
        del self._calls[call_id]
        self._handled[call_id] = (agent.spec.agent_id, call.queue)

    def _offer_failed(
        self, call_id: str, now: float, reason: str, agent_at_fault: bool = True
    ) -> None:
        call = self._calls.get(call_id)
        if call is None or call.offered_to is None:
            return  # the offer was already settled (timeout raced the failure)
        agent = self._agents[call.offered_to]
        agent.call_id = None
        if agent.state is AgentState.RESERVED:
            if agent_at_fault:
                self._set_state(agent, AgentState.AWAY, now, reason)
            else:
                self._set_state(agent, AgentState.AVAILABLE, now)
        self._requeue(call)
        if not agent_at_fault:
            call.not_before = now + RETRY_S

    def _requeue(self, call: WaitingCall) -> None:
        call.offered_to = None
        call.ring_deadline = None

    def _call_left(self, call_id: str, now: float) -> None:
        call = self._calls.pop(call_id, None)
        if call is not None:
            if call.offered_to is not None:
                agent = self._agents[call.offered_to]
                agent.call_id = None
                self._commands.append(CancelOffer(call_id=call_id, agent_id=agent.spec.agent_id))
                self._set_state(agent, AgentState.AVAILABLE, now)
            return
        handled = self._handled.pop(call_id, None)
        if handled is None:
            return
        agent_id, queue = handled
        agent = self._agents[agent_id]
        agent.call_id = None
        if agent.state is not AgentState.ON_CALL:
            return  # logged out mid-call
        wrapup = self._queues[queue].wrapup_s
        self._set_state(agent, AgentState.WRAP_UP, now)
        agent.wrapup_until = now + wrapup

    # -- routing

    def _route(self, now: float) -> None:
        """Pair idle agents with waiting calls until no pair is left."""
        while True:
            free = sorted(
                (a for a in self._agents.values() if a.state is AgentState.AVAILABLE),
                key=lambda a: (a.idle_since, a.spec.agent_id),
            )
            waiting = [c for c in self.waiting() if c.offered_to is None and c.not_before is None]
            pair = self._first_pair(free, waiting)
            if pair is None:
                return
            agent, call = pair
            queue = self._queues[call.queue]
            call.offered_to = agent.spec.agent_id
            call.ring_deadline = now + queue.ring_timeout_s
            call.attempts.append(agent.spec.agent_id)
            agent.call_id = call.call_id
            self._set_state(agent, AgentState.RESERVED, now)
            self._commands.append(
                OfferCall(call_id=call.call_id, agent_id=agent.spec.agent_id, queue=call.queue)
            )
            self._commands.append(
                CallOffered(call_id=call.call_id, queue=call.queue, agent=agent.spec.agent_id)
            )

    def _first_pair(
        self, free: list[Agent], waiting: list[WaitingCall]
    ) -> tuple[Agent, WaitingCall] | None:
        # longest-idle agent first; each takes the longest-waiting call it is skilled for
        for agent in free:
            for call in waiting:
                if self._queues[call.queue].skill in agent.spec.skills:
                    return agent, call
        return None
