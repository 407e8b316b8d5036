"""The ACD's vocabulary: queue and agent specs, the agent state table, the runtime records.

Pure data, no behaviour beyond validation and the one guarded state move. `acd.engine`
owns the records and mutates them; `acd.strategies` and `acd.estimate` only read them;
`acd.build` makes the specs from `config.schema.Settings`. The transition table is the
documentation of the agent state machine: `state_diagram()` draws it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Literal

OverflowKind = Literal["queue", "voicemail", "callback", "ivr"]
OVERFLOW_KINDS: tuple[OverflowKind, ...] = ("queue", "voicemail", "callback", "ivr")

# ---------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One routing step: from `after_s` of waiting on, agents need `min_proficiency`.

    Steps widen with wait (Genesys bullseye, Amazon Connect expiring steps): e.g.
    `Step(after_s=0, min_proficiency=4), Step(after_s=30, min_proficiency=2)`. The floor
    applies to every required skill of the queue, on top of the queue's own minimum.
    """

    after_s: float
    min_proficiency: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceLevel:
    """`target` of the calls answered within `threshold_s` (80 % in 20 s)."""

    threshold_s: float = 20.0
    target: float = 0.8


@dataclass(frozen=True, slots=True, kw_only=True)
class OverflowTarget:
    """Where a call goes when a queue gives up on it.

    `queue`: moved inside the engine (keeps its place by original arrival time);
    `callback`: the caller is offered a callback, which waits in `target` (or the same
    queue when empty); `voicemail` / `ivr`: the call leaves the engine, the core takes it.
    """

    kind: OverflowKind
    target: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSpec:
    name: str
    skill: str | None = None
    """Shorthand for one required skill at proficiency 1 (the walking skeleton's shape)."""
    skills: Mapping[str, int] = field(default_factory=dict)
    """Required skills with their minimum proficiency (1-5)."""
    ring_timeout_s: float = 15.0
    wrapup_s: float = 10.0
    strategy: str = "longest_idle"
    steps: tuple[Step, ...] = ()
    service_level: ServiceLevel = ServiceLevel()
    max_wait_s: float | None = None
    max_length: int | None = None
    join_empty: bool = True
    """False: a call arriving while no agent of the queue is staffed overflows at once."""
    leave_when_empty: bool = False
    """True: waiting callers overflow when the last staffed agent leaves."""
    overflow: OverflowTarget | None = None
    priority: int = 0
    """Added to every call's own priority: one score orders calls across queues."""
    preferred_agent_s: float = 0.0
    """How long a call with a preferred agent waits for that agent alone."""
    required: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        required = dict(self.skills)
        if self.skill is not None:
            required.setdefault(self.skill, 1)
        if not required:
            raise ValueError(f"queue {self.name}: give 'skill' or 'skills'")
        for skill, level in required.items():
            if not 1 <= level <= 5:
                raise ValueError(f"queue {self.name}: skill {skill} level {level} not in 1..5")
        previous: Step | None = None
        for step in self.steps:
            if previous is not None and (
                step.after_s <= previous.after_s or step.min_proficiency > previous.min_proficiency
            ):
                raise ValueError(f"queue {self.name}: steps must start later and widen")
            previous = step
        rules = (
            self.max_wait_s is not None
            or self.max_length is not None
            or not self.join_empty
            or self.leave_when_empty
        )
        if rules and self.overflow is None:
            raise ValueError(f"queue {self.name}: overflow rules need an overflow target")
        object.__setattr__(self, "required", MappingProxyType(required))

    def step_at(self, waited_s: float) -> tuple[int, int]:
        """(index of the step in force, proficiency floor) after `waited_s` of waiting."""
        index, floor = -1, 1
        for i, step in enumerate(self.steps):
            if step.after_s <= waited_s:
                index, floor = i, step.min_proficiency
        return index, floor


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSpec:
    agent_id: str
    skills: Mapping[str, int] | frozenset[str]
    """Skill -> proficiency 1-5; a bare set means proficiency 1 for each."""
    languages: frozenset[str] = frozenset()
    """Languages of the calls the agent takes; empty: any language."""
    no_answer_limit: int = 2
    """Consecutive offers not answered before the agent is set away (`no_answer`)."""
    levels: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.skills, frozenset | set):
            levels = dict.fromkeys(self.skills, 1)
        else:
            levels = dict(self.skills)
        object.__setattr__(self, "levels", MappingProxyType(levels))


# ---------------------------------------------------------------- agent state machine


class AgentState(Enum):
    LOGGED_OUT = "logged_out"
    AVAILABLE = "available"
    RESERVED = "reserved"
    """A call is offered (or a callback is being placed): the agent's phone is ringing."""
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
STAFFED = frozenset({_S.AVAILABLE, _S.RESERVED, _S.ON_CALL, _S.WRAP_UP})
"""Logged in and not away: the agent counts for join/leave-when-empty and for EWT."""
BUSY = frozenset({_S.RESERVED, _S.ON_CALL, _S.WRAP_UP})


def state_diagram() -> str:
    """The agent state machine as a Mermaid diagram, drawn from `TRANSITIONS`."""
    lines = ["stateDiagram-v2"]
    for src, targets in TRANSITIONS.items():
        for dst in sorted(targets, key=lambda s: s.value):
            lines.append(f"    {src.value} --> {dst.value}")
    return "\n".join(lines)


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
    missed: int = 0
    """Consecutive offers not answered; reset by an answer."""
    pending_away: str | None = None
    """Away requested during wrap-up: honoured when the wrap-up ends."""
    reservation: int = 0
    """Serial of the current reservation, so stale timers can be told apart."""
    state_since: float = 0.0
    time_in: dict[AgentState, float] = field(default_factory=dict)
    """Seconds spent in each state (closed intervals only), for occupancy."""
    answered_at: float | None = None
    handled: int = 0
    handle_total_s: float = 0.0
    """Sum of handle times (answer to end of wrap-up), for the observed service rate."""
    queues: tuple[str, ...] = ()
    """Queues whose minimum skills this agent meets (set by the engine)."""

    def move(self, to: AgentState, now: float, reason: str = "") -> None:
        if to not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"agent {self.spec.agent_id}: {self.state.value} -> {to.value}")
        self.time_in[self.state] = self.time_in.get(self.state, 0.0) + max(
            0.0, now - self.state_since
        )
        self.state = to
        self.state_since = now
        self.reason = reason
        if to is AgentState.AVAILABLE:
            self.idle_since = now

    def occupancy(self, now: float) -> float:
        """Busy share of staffed time (reserved, on call, wrap-up over all staffed)."""
        spent = dict(self.time_in)
        spent[self.state] = spent.get(self.state, 0.0) + max(0.0, now - self.state_since)
        staffed = sum(spent.get(s, 0.0) for s in STAFFED)
        busy = sum(spent.get(s, 0.0) for s in BUSY)
        return busy / staffed if staffed > 0 else 0.0


@dataclass(slots=True)
class WaitingCall:
    call_id: str
    queue: str
    caller: str
    enqueued_at: float
    """Kept across failed offers and overflow moves: the call keeps its place."""
    priority: int = 0
    """Effective priority: the call's own plus its queue's."""
    own_priority: int = 0
    skills: Mapping[str, int] = field(default_factory=dict)
    preferred_agent: str | None = None
    language: str | None = None
    seq: int = 0
    queue_entered_at: float = 0.0
    """When it entered its current queue (max wait counts from here)."""
    offered_to: str | None = None
    ring_deadline: float | None = None
    not_before: float | None = None
    """Set after an offer that could not be placed: no new offer until then."""
    attempts: list[str] = field(default_factory=list)
    missed_by: dict[str, float] = field(default_factory=dict)
    """Agent -> until when it is skipped for this call after not answering it."""
    callback_number: str | None = None
    live: bool = True
    """False once the caller hung up with a callback requested (virtual hold)."""
    callback_failures: int = 0
    hops: int = 0
    """Overflow moves so far (bounded, so a cycle of queues cannot loop)."""
    direct_agent: str | None = None
    """Offered to this agent at once (`Enqueue.agent`); cleared when that offer fails."""

    @property
    def key(self) -> tuple[int, float, int]:
        """The one fair order across queues: higher priority, then longer wait."""
        return (-self.priority, self.enqueued_at, self.seq)


# ---------------------------------------------------------------- explanations


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """One agent of the queue as the router saw it."""

    agent_id: str
    excluded: str | None
    """None when eligible, else `state`, `skill`, `proficiency`, `step`, `language`,
    `preferred` or `no_answer`."""
    detail: str = ""
    score: float | None = None
    """The strategy's score for eligible agents (higher wins)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Trace:
    """Why this agent got this call: kept with the call and carried in `OfferCall`."""

    call_id: str
    queue: str
    at: float
    strategy: str
    step: int
    """Index of the routing step in force (-1: before any step)."""
    floor: int
    """Proficiency floor the step asked for."""
    priority: int
    waited_s: float
    candidates: tuple[Candidate, ...]
    """Every staffed-and-available agent of the queue, eligible or not."""
    not_available: Mapping[str, int]
    """The queue's other agents, counted by state (excluded for `state`)."""
    winner: str
    winner_score: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Estimate:
    """Position and expected wait, with an interval, for the IVR and wallboards."""

    position: int
    ewt_s: float
    low_s: float
    high_s: float
    confidence: float
    agents: int
    """Staffed agents who could take the call."""
    service_rate_per_s: float
