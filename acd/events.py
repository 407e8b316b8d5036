"""What goes into the ACD engine (facts) and what comes out (commands).

Inputs are facts the core learned from the media side, the registrar or an agent's
desktop; `acd.journal` records them one JSON line each so `acd.replay` can re-run them.
Outputs are routing commands the core carries out (`OfferCall`, `CancelOffer`,
`PlaceCallback`, `Overflow`) plus contact-center events from `wire.events`, which the core
publishes as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from acd.model import OverflowKind, Trace
from wire.events import AgentStateChanged, CallOffered, CallOverflowed, CallQueued

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
    """The agent is ready: also ends their own wrap-up early."""

    agent_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSetAway:
    """Away with a reason code; during wrap-up it takes effect when the wrap-up ends."""

    agent_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtendWrapUp:
    """The agent needs more after-call work time (only in wrap-up)."""

    agent_id: str
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Enqueue:
    call_id: str
    queue: str
    caller: str
    priority: int = 0
    """From the IVR, CRM tier / VIP, an open high-priority ticket; higher goes first."""
    skills: Mapping[str, int] = field(default_factory=dict)
    """Skills this call needs beyond the queue's, with minimum proficiency."""
    preferred_agent: str | None = None
    """E.g. the owner of the caller's open ticket; tried alone first (queue's window)."""
    language: str | None = None
    """Only agents who list this language take the call."""
    agent: str | None = None
    """Offer it to this agent at once (a transfer or consultation to a named agent),
    who must be available; should they not answer, it waits in `queue` for anyone."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Transfer:
    """The agent on `call_id` hands it on (a blind transfer): they go to wrap-up, and
    the call enters `queue` afresh, offered at once to `agent` when one is named.

    Refused before anything changes when the call is not on an agent or the named
    agent is not available, so the agent keeps the call."""

    call_id: str
    queue: str
    caller: str
    agent: str | None = None
    priority: int = 0
    skills: Mapping[str, int] = field(default_factory=dict)
    language: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsultCompleted:
    """An attended transfer completes: the agent who was consulted on `consult_id` (an
    `Enqueue`d consultation, answered) now has `call_id`, and its agent goes to wrap-up.
    A consultation that is abandoned instead is a `CallLeft(consult_id)`."""

    call_id: str
    consult_id: str


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
    """The caller is gone: abandoned while waiting/ringing, or a handled call ended.

    A waiting call with a callback requested stays queued (virtual hold)."""

    call_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestCallback:
    """The waiting caller asked to be called back at `number`; keeps their place."""

    call_id: str
    number: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelCallback:
    call_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CallbackAnswered:
    """The customer picked up the callback the reserved agent placed."""

    call_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CallbackFailed:
    """The callback did not connect; it is retried (keeping its place) a few times."""

    call_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconcile:
    """Facts from the media side and the registrar: what really exists right now.

    Calls the engine holds that are not in `live_calls` are treated as gone (virtual
    callbacks excepted); agents not in `registered_agents` are logged out."""

    live_calls: frozenset[str]
    registered_agents: frozenset[str]


AcdEvent = (
    AgentLoggedIn
    | AgentLoggedOut
    | AgentSetAvailable
    | AgentSetAway
    | ExtendWrapUp
    | Enqueue
    | OfferAnswered
    | OfferFailed
    | CallLeft
    | RequestCallback
    | CancelCallback
    | CallbackAnswered
    | CallbackFailed
    | Reconcile
    | Transfer
    | ConsultCompleted
)

# ---------------------------------------------------------------- commands out


@dataclass(frozen=True, slots=True, kw_only=True)
class OfferCall:
    call_id: str
    agent_id: str
    queue: str
    trace: Trace | None = field(default=None, compare=False)
    """Why this agent: candidates, exclusions, the winner's score."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelOffer:
    """Stop ringing the agent (ring timeout, abandon, logout); the call stays queued."""

    call_id: str
    agent_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaceCallback:
    """The agent is reserved: ring them, then dial `number` and bridge.

    Answer with `CallbackAnswered` or `CallbackFailed`."""

    call_id: str
    agent_id: str
    queue: str
    number: str
    trace: Trace | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Overflow:
    """The queue gave up on the call (`reason`: max_wait, max_length, join_empty,
    leave_empty). For `queue` the engine already moved it; for `callback` the engine keeps
    a virtual place and the core should take the number and hang up; for `voicemail` and
    `ivr` the call left the engine."""

    call_id: str
    queue: str
    reason: str
    target_kind: OverflowKind
    target: str


AcdCommand = (
    OfferCall
    | CancelOffer
    | PlaceCallback
    | Overflow
    | CallQueued
    | CallOffered
    | CallOverflowed
    | AgentStateChanged
)
"""Routing commands plus the contact-center events the runner publishes as they are."""
