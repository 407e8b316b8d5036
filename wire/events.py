"""The shared vocabulary: media events, media commands and contact-center events.

Three families cross process boundaries:

* media events — a media worker reports what happened to a call leg
  (`LegIncoming`, `LegAnswered`, `DtmfReceived`, `PlaybackFinished`, `LegEnded`, ...);
* media commands — the core tells a worker what to do with a leg
  (`Answer`, `Play`, `StopPlay`, `Record`, `StopRecord`, `Dial`, `Bridge`, `Hangup`);
  they travel as MQTT v5 requests and are answered with a `CommandResult`;
* contact-center events — what supervisors and agents see
  (`CallQueued`, `CallOffered`, `CallAnswered`, `CallEnded`, `CallOverflowed`,
  `AgentStateChanged`).

All are frozen, slotted, keyword-only dataclasses. `wire.codec` is the one place that
maps them to MQTT topics + JSON and back. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# ---------------------------------------------------------------- media events


@dataclass(frozen=True, slots=True, kw_only=True)
class RtpCounters:
    """RTP packet counts of one leg's audio stream, as seen by the worker."""

    rx_packets: int = 0
    tx_packets: int = 0
    rx_lost: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class LegIncoming:
    """A trunk INVITE reached a worker; the leg rings until the core answers it."""

    worker: int
    leg: str
    sip_call_id: str
    caller: str
    """The user part of the From header (the caller's number)."""
    did: str
    """The user part of the request URI (the number dialled)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LegRinging:
    """An outbound leg got a provisional 180/183: the far end is ringing."""

    worker: int
    leg: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LegAnswered:
    """A leg is connected (inbound after `Answer`, outbound on the far end's 200 OK)."""

    worker: int
    leg: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DtmfReceived:
    worker: int
    leg: str
    digit: str
    method: str = "rfc2833"
    """`rfc2833` or `info`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaybackFinished:
    """A non-looping `Play` reached its end, or was cut by barge-in (`interrupted`)."""

    worker: int
    leg: str
    play_id: str
    interrupted: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class LegEnded:
    """A leg is gone. `by` says which side ended it: `remote`, `local` or `error`."""

    worker: int
    leg: str
    by: str
    sip_code: int
    reason: str
    rtp: RtpCounters = field(default_factory=RtpCounters)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingFinished:
    """The recorder of a bridge was closed; the WAV header is complete."""

    worker: int
    leg: str
    path: str
    duration_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class LegRecorded:
    """A `Record` ended; the WAV (that leg's incoming audio only) is complete."""

    worker: int
    leg: str
    record_id: str
    path: str
    duration_s: float
    """Audio in the file; the beep is not in it (trailing silence is)."""
    stopped_by: str
    """`terminator` (a digit of `terminators`, also reported as `DtmfReceived`),
    `max_time`, `silence`, `hangup` (the leg ended) or `stopped` (`StopRecord`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerStatus:
    """Retained per worker; the broker's last will flips `up` to False on a crash."""

    worker: int
    up: bool
    pid: int = 0
    sip_port: int = 0
    legs: int = 0
    max_legs: int = 0


MediaEvent = (
    LegIncoming
    | LegRinging
    | LegAnswered
    | DtmfReceived
    | PlaybackFinished
    | LegEnded
    | RecordingFinished
    | LegRecorded
    | WorkerStatus
)

# ---------------------------------------------------------------- media commands


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    leg: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Play:
    """Play WAV files in order on a leg, replacing whatever it was playing."""

    leg: str
    play_id: str
    files: tuple[str, ...]
    loop: bool = False
    barge_in: bool = False
    """Stop the prompt at the first DTMF digit (the digit is still reported)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StopPlay:
    leg: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Dial:
    """Place an outbound leg (an agent) through the edge; `leg` is chosen by the caller."""

    leg: str
    uri: str
    caller_id: str = ""
    related_leg: str = ""
    """The caller leg this agent leg is for; the worker keeps both in one process."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Bridge:
    """Connect two legs' audio both ways; optionally record the mix to `record_path`."""

    a: str
    b: str
    record_path: str = ""
    hangup_together: bool = True
    """When one leg ends the worker ends the other, even if the core is away."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Unbridge:
    """Disconnect a bridged leg from its partner without hanging either up (hold, a
    transfer). The bridge's recording stays with `leg` (the caller): it keeps recording
    what `leg` says, and the next `Bridge` of `leg` with the same `record_path` goes on
    in the same file; a `Bridge` with another path, or the leg ending, closes it."""

    leg: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Hangup:
    leg: str
    sip_code: int = 0
    """0: BYE/CANCEL as fits the leg's state; 4xx-6xx to reject a ringing inbound leg."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """Record what the caller says on one answered, unbridged leg (voicemail, a spoken
    answer): an optional beep, then the leg's incoming audio alone to a mono WAV.

    Any prompt still playing is cut; `Play` and `Bridge` are refused until it ends.
    The end is reported as `LegRecorded`."""

    leg: str
    record_id: str
    path: str
    """Absolute `.wav` path on the worker's host; parent folders are created."""
    max_s: float
    """Stop after this much audio (at most 3600 s)."""
    terminators: str = "#"
    """DTMF digits that stop the recording ("" for none)."""
    beep: bool = True
    """Play a 0.2 s 1 kHz tone first; recording starts when it ends."""
    silence_s: float = 0.0
    """If > 0, stop after this much continuous silence from the caller."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StopRecord:
    """End a leg's `Record` (`stopped_by="stopped"`); nothing to stop is fine."""

    leg: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandResult:
    ok: bool
    error: str = ""


MediaCommand = Answer | Play | StopPlay | Record | StopRecord | Dial | Bridge | Unbridge | Hangup

# ---------------------------------------------------------------- contact-center events


@dataclass(frozen=True, slots=True, kw_only=True)
class CallQueued:
    call_id: str
    queue: str
    caller: str
    position: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CallOffered:
    call_id: str
    queue: str
    agent: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CallAnswered:
    call_id: str
    queue: str
    agent: str
    wait_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEnded:
    call_id: str
    queue: str
    agent: str
    hangup_side: str
    """`caller`, `agent`, `system` (IVR goodbye, error) or `abandon` (hung up waiting)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStateChanged:
    agent: str
    state: str
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CallOverflowed:
    """A queue gave up on a waiting call (max wait, max length, join/leave when empty)."""

    call_id: str
    queue: str
    reason: str
    """`max_wait`, `max_length`, `join_empty` or `leave_empty`."""
    target_kind: str
    """`queue`, `voicemail`, `callback` or `ivr`."""
    target: str


CcEvent = CallQueued | CallOffered | CallAnswered | CallEnded | CallOverflowed | AgentStateChanged
