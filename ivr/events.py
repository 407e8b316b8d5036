"""What goes into and comes out of the flow engine (`ivr.engine`): frozen data.

Events in are caller and system facts the core translates from the media workers, the
queue engine and the CRM; commands out are what the core must carry out.
Prompts are always keys (`ivr.prompts`), never files: the core maps them to WAV files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "AgentConnected",
    "AgentHungUp",
    "CallGone",
    "CallStarted",
    "Collect",
    "Customer",
    "DigitPressed",
    "Disconnect",
    "Enqueue",
    "FlowCommand",
    "FlowEnded",
    "FlowEvent",
    "IllegalTransition",
    "LeaveQueue",
    "Lookup",
    "LookupResult",
    "PlayHold",
    "PlayPrompt",
    "PromptEnded",
    "QueuePosition",
    "RecordVoicemail",
    "RequestCallback",
    "SetScreen",
    "SpeechRecognized",
    "StoreSurvey",
    "TimelineEntry",
    "Transfer",
    "TransferFailed",
    "VoicemailRecorded",
]


class IllegalTransition(RuntimeError):
    """A session was asked to move where its state machine does not allow."""


# ---------------------------------------------------------------- shared with every caller leg


@dataclass(frozen=True, slots=True, kw_only=True)
class DigitPressed:
    call_id: str
    digit: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PromptEnded:
    """The prompt with sequence number `seq` finished or was cut by barge-in."""

    call_id: str
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CallGone:
    """The caller hung up (or the leg failed); forget the session."""

    call_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PlayPrompt:
    call_id: str
    seq: int
    """Echoed back in `PromptEnded`, so a late end of an older prompt is ignored."""
    prompts: tuple[str, ...]
    barge_in: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnect:
    call_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TimelineEntry:
    """One step the caller took, for the agent's screen and reports."""

    at: float
    """Epoch seconds."""
    node: str
    what: str
    """`enter`, `digit`, `speech`, `invalid`, `timeout`, `collected`, `confirmed`,
    `branch`, `lookup`, `set`, `queued`, `position`, `announce`, `callback`, `agent`,
    `agent_hung_up`, `survey`, `voicemail`, `transfer`, `hangup`, `caller_hung_up`..."""
    detail: str = ""


# ---------------------------------------------------------------- events in


@dataclass(frozen=True, slots=True, kw_only=True)
class CallStarted:
    """The caller leg is answered: run `flow` (the current version) for it."""

    call_id: str
    flow: str
    caller: str = ""
    """The calling number (what a `lookup by: caller` searches for)."""
    dnis: str = ""
    """The number the caller dialled."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechRecognized:
    """The recogniser heard `text` (one of the grammar's phrases, or not) during a menu."""

    call_id: str
    text: str
    confidence: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Customer:
    """What the CRM knows about the caller, as far as the flow branches on it."""

    customer_id: str
    name: str = ""
    tier: str = ""
    vip: bool = False
    ticket_priority: str = ""
    """Priority of the customer's most urgent open ticket; empty: none open."""
    language: str = ""
    fields: Mapping[str, str] = field(default_factory=dict)
    """More fields for the agent's screen (`customer.<key>` variables)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupResult:
    call_id: str
    seq: int
    """Echo of `Lookup.seq`; a late answer to an older lookup is ignored."""
    customer: Customer | None
    """None: not found (or the CRM failed)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuePosition:
    """The queue engine's view of a waiting caller: position (1 = next) and estimated wait."""

    call_id: str
    position: int
    ewt_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConnected:
    call_id: str
    agent: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentHungUp:
    """The agent left first and the caller is still on the line (survey time)."""

    call_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class VoicemailRecorded:
    call_id: str
    seq: int
    path: str
    duration_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferFailed:
    call_id: str
    reason: str = ""


FlowEvent = (
    CallStarted
    | DigitPressed
    | PromptEnded
    | CallGone
    | SpeechRecognized
    | LookupResult
    | QueuePosition
    | AgentConnected
    | AgentHungUp
    | VoicemailRecorded
    | TransferFailed
)

# ---------------------------------------------------------------- commands out


@dataclass(frozen=True, slots=True, kw_only=True)
class Collect:
    """Play `prompts` (a digit cuts them short) and listen for input: "play and collect".

    The engine does the collecting itself from `DigitPressed` events and its own timers;
    the fields tell the media side what is expected, and `speech` asks it to run the
    recogniser with these phrases as the grammar (empty: digits only).
    """

    call_id: str
    seq: int
    """Echoed back in `PromptEnded`, like `PlayPrompt.seq`."""
    prompts: tuple[str, ...]
    max_digits: int
    terminator: str | None = None
    timeout_s: float
    inter_digit_timeout_s: float | None = None
    speech: tuple[str, ...] = ()
    language: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlayHold:
    """Loop music on hold for a queued caller (again, after an announcement)."""

    call_id: str
    queue: str
    music: tuple[str, ...] = ()
    """Prompt keys of the queue node's own music; empty: the queue's configured music."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Lookup:
    """Ask the CRM for a customer; answer with `LookupResult(seq=...)`."""

    call_id: str
    seq: int
    by: Literal["caller", "variable"]
    key: str
    """`caller`, or the variable's name."""
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Enqueue:
    """Put the caller in `queue` (music on hold follows as `PlayHold`)."""

    call_id: str
    queue: str
    caller: str
    skills: Mapping[str, int]
    """Required skill -> minimum level."""
    priority: int | None
    language: str
    announce_every_s: float | None
    callback_after_s: float | None
    keep_caller_after_agent: bool
    """A survey follows: the agent hanging up must not end the caller's leg."""
    variables: Mapping[str, str]
    timeline: tuple[TimelineEntry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaveQueue:
    call_id: str
    queue: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestCallback:
    """The caller keeps their place; call `number` back when an agent is free."""

    call_id: str
    queue: str
    number: str
    variables: Mapping[str, str]
    timeline: tuple[TimelineEntry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Transfer:
    call_id: str
    number: str | None
    """External number through the trunk, or None when `agent` is set."""
    agent: str | None
    caller: str
    variables: Mapping[str, str]
    timeline: tuple[TimelineEntry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordVoicemail:
    """Record the caller (after a beep) until `terminator`, silence or `max_s`;
    answer with `VoicemailRecorded(seq=...)`."""

    call_id: str
    seq: int
    mailbox: str
    max_s: float
    terminator: str | None
    beep: bool
    variables: Mapping[str, str]
    timeline: tuple[TimelineEntry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreSurvey:
    """Answers of a post-call survey, to be stored with the interaction."""

    call_id: str
    survey: str
    """The survey node's name."""
    answers: tuple[tuple[str, int | None], ...]
    """(question name, score or None when not answered)."""
    complete: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SetScreen:
    """Variables for the agent's screen changed (a `set` node or a lookup)."""

    call_id: str
    variables: Mapping[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowEnded:
    """The call left the flow engine: the final timeline and variables for the record."""

    call_id: str
    flow: str
    version: int
    reason: str
    timeline: tuple[TimelineEntry, ...]
    variables: Mapping[str, str]


FlowCommand = (
    PlayPrompt
    | Collect
    | PlayHold
    | Lookup
    | Enqueue
    | LeaveQueue
    | RequestCallback
    | Transfer
    | RecordVoicemail
    | StoreSurvey
    | SetScreen
    | Disconnect
    | FlowEnded
)
