"""The IVR flow engine: runs validated call flows (`ivr.schema`), pure and deterministic.

Same shape as `acd.engine`: `handle(event, now=)` feeds caller and
system facts (`ivr.events`), `next_command()` drains what the core must do,
`next_deadline()` / `handle_timer(now=)` run every timeout (menu silence, inter-digit
gaps, CRM lookups, queue announcements, callback offers, overflow). `now` is epoch
seconds: business hours are evaluated in each calendar's time zone from it, so the
core must feed wall-clock time (and turn deadlines back into delays).

Each call is a `Session`, a state machine (`Step` + `TRANSITIONS`; an illegal move
raises and changes nothing) walking the nodes of one flow version: `load_flows()` adds
a version for new calls while running calls finish on the version they started with.
Every step the caller takes lands in the session's timeline, which travels with the
enqueue / transfer / voicemail commands and with the final `FlowEnded`.

Digit collection happens here, not on the media side: `Collect` only asks the worker to
play prompts that a digit cuts short (and to run the recogniser for spoken menus).
"""

from __future__ import annotations

import heapq
import math
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from ivr.events import (
    AgentConnected,
    AgentHungUp,
    CallGone,
    CallStarted,
    Collect,
    Customer,
    DigitPressed,
    Disconnect,
    Enqueue,
    FlowCommand,
    FlowEnded,
    FlowEvent,
    IllegalTransition,
    LeaveQueue,
    Lookup,
    LookupResult,
    PlayHold,
    PlayPrompt,
    PromptEnded,
    QueuePosition,
    RecordVoicemail,
    RequestCallback,
    SetScreen,
    SpeechRecognized,
    StoreSurvey,
    TimelineEntry,
    Transfer,
    TransferFailed,
    VoicemailRecorded,
)
from ivr.hours import is_holiday, is_open
from ivr.prompts import catalog, digit_key, prompt_key
from ivr.schema import (
    CollectNode,
    ConditionNode,
    Flow,
    GotoNode,
    HangupNode,
    Localized,
    LookupNode,
    MenuNode,
    PlayNode,
    Prompt,
    QueueNode,
    SetNode,
    SurveyNode,
    TransferNode,
    VoicemailNode,
    When,
)

__all__ = [
    "MAX_HOPS",
    "TRANSITIONS",
    "FlowEngine",
    "IllegalTransition",
    "Session",
    "Step",
    "luhn_ok",
    "state_diagram",
]

MAX_HOPS = 64
"""Nodes entered without waiting for anything before the engine gives up on a call.
Validation rejects such loops; this guards a flow that skipped validation."""
SURVEY_INTER_DIGIT_S = 2.0
"""A pause this long after the first digit of a survey answer ends it ("1" vs "10")."""
VOICEMAIL_GRACE_S = 10.0
"""How long past `max_s` the engine waits for `VoicemailRecorded` before moving on."""


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check used by card and many account numbers."""
    if not digits.isdigit():
        return False
    total = 0
    for i, char in enumerate(reversed(digits)):
        value = int(char)
        if i % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


# ---------------------------------------------------------------- session state machine


class Step(Enum):
    NEW = "new"
    PLAYING = "playing"
    """Prompts of a play / hangup / voicemail / survey-thanks node play; then `after`."""
    PROMPTING = "prompting"
    """The prompt of a menu / collect / confirm / survey question plays; input barges in."""
    WAITING = "waiting"
    """The input prompt ended: the no-input timer runs."""
    COLLECTING = "collecting"
    """Some digits are in; the inter-digit timer runs."""
    MESSAGE = "message"
    """An invalid-input or timeout message plays; then `after` (usually the prompt again)."""
    LOOKING_UP = "looking_up"
    QUEUED = "queued"
    """Waiting for an agent on music on hold."""
    ANNOUNCING = "announcing"
    """Still queued; a position announcement or the callback offer plays."""
    CONNECTED = "connected"
    """Talking to an agent; a survey may follow when the agent hangs up."""
    RECORDING = "recording"
    TRANSFERRING = "transferring"
    """Transfer placed; waiting in case it fails (only with `on_fail`)."""
    DONE = "done"


_S = Step
_ENTER = frozenset(
    {
        _S.PLAYING,
        _S.PROMPTING,
        _S.WAITING,
        _S.LOOKING_UP,
        _S.QUEUED,
        _S.RECORDING,
        _S.TRANSFERRING,
        _S.DONE,
    }
)
"""Where entering a node can lead (WAITING: an input node fed by type-ahead)."""

TRANSITIONS: dict[Step, frozenset[Step]] = {
    _S.NEW: _ENTER,
    _S.PLAYING: _ENTER,
    _S.PROMPTING: _ENTER | {_S.COLLECTING, _S.MESSAGE},
    _S.WAITING: _ENTER | {_S.COLLECTING, _S.MESSAGE},
    _S.COLLECTING: _ENTER | {_S.COLLECTING, _S.MESSAGE},
    _S.MESSAGE: _ENTER,
    _S.LOOKING_UP: _ENTER,
    _S.QUEUED: _ENTER | {_S.ANNOUNCING, _S.CONNECTED},
    _S.ANNOUNCING: _ENTER | {_S.ANNOUNCING, _S.CONNECTED},
    _S.CONNECTED: _ENTER,
    _S.RECORDING: _ENTER,
    _S.TRANSFERRING: _ENTER,
    _S.DONE: frozenset(),
}


def state_diagram() -> str:
    """The session state machine as Mermaid text, drawn from `TRANSITIONS` itself."""
    lines = ["stateDiagram-v2", f"    [*] --> {Step.NEW.name}"]
    for source, targets in TRANSITIONS.items():
        lines += [f"    {source.name} --> {t.name}" for t in sorted(targets, key=list(Step).index)]
    lines.append(f"    {Step.DONE.name} --> [*]")
    return "\n".join(lines)


class Timer(Enum):
    INPUT = "input"
    INTER_DIGIT = "inter_digit"
    LOOKUP = "lookup"
    ANNOUNCE = "announce"
    CALLBACK = "callback"
    MAX_WAIT = "max_wait"
    VOICEMAIL = "voicemail"


class After(Enum):
    """What follows the prompt that is playing now."""

    ENTER = "enter"
    """Enter node `after_arg`."""
    REPROMPT = "reprompt"
    """Ask the current input node's question again."""
    DISCONNECT = "disconnect"
    """Hang up with reason `after_arg`."""
    HOLD = "hold"
    """Back to music on hold."""
    RECORD = "record"
    """Start the voicemail recording."""


@dataclass(slots=True)
class Session:
    """One call in the flow engine. Read it through `FlowEngine.session()`."""

    call_id: str
    flow_name: str
    version: int
    flow: Flow
    caller: str
    dnis: str
    language: str
    language_chosen: bool = False
    node: str = ""
    step: Step = Step.NEW
    seq: int = 0
    timers: dict[Timer, float] = field(default_factory=dict)
    after: After = After.ENTER
    after_arg: str = ""
    failures: int = 0
    timeouts: int = 0
    digits: str = ""
    pending: str | None = None
    """A collected entry waiting for the caller's confirmation."""
    typeahead: str = ""
    question: int = 0
    answers: dict[str, int | None] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    customer: Customer | None = None
    priority: int | None = None
    skills: dict[str, int] = field(default_factory=dict)
    queue: str | None = None
    position: int | None = None
    ewt_s: float | None = None
    callback_offered: bool = False
    agent: str | None = None
    after_agent: str | None = None
    timeline: list[TimelineEntry] = field(default_factory=list)

    def move(self, to: Step) -> None:
        if to not in TRANSITIONS[self.step]:
            raise IllegalTransition(f"{self.call_id}: {self.step.value} -> {to.value}")
        self.step = to

    @property
    def deadline(self) -> float | None:
        return min(self.timers.values(), default=None)


# ---------------------------------------------------------------- the engine


class FlowEngine:
    """Runs every call's flow; holds the flow versions that calls still use."""

    def __init__(self, flows: Mapping[str, Flow] | None = None, *, version: int = 1) -> None:
        self._versions: dict[int, dict[str, Flow]] = {}
        self._current: int | None = None
        self._sessions: dict[str, Session] = {}
        self._commands: deque[FlowCommand] = deque()
        self._deadlines: list[tuple[float, str]] = []
        """Heap of (deadline, call id); an entry whose session's deadline moved is stale
        and skipped, so a timer costs O(log n), not a scan of every call."""
        self._queued_at: dict[str, float] = {}
        """call id -> the deadline last pushed for it"""
        self._running: dict[int, int] = {}
        """flow version -> calls running it (a version nobody runs is dropped)"""
        if flows is not None:
            self.load_flows(flows, version=version)

    # -- flow versions

    def load_flows(self, flows: Mapping[str, Flow], *, version: int) -> None:
        """Make `flows` the version new calls get; running calls keep theirs.

        Versions must increase: prompt keys carry the version, so reusing a number
        would let new prompts replace those of calls still running.
        """
        if self._current is not None and version <= self._current:
            raise ValueError(f"flow version {version} is not newer than {self._current}")
        self._versions[version] = dict(flows)
        self._current = version
        self._prune()

    @property
    def current_version(self) -> int | None:
        return self._current

    def versions(self) -> tuple[int, ...]:
        """Versions held: the current one and those that running calls still use."""
        return tuple(sorted(self._versions))

    def prompt_catalog(self) -> dict[str, Prompt]:
        """Every prompt key of every held version -> what to render (see `ivr.prompts`)."""
        out: dict[str, Prompt] = {}
        for version, flows in self._versions.items():
            for name, flow in flows.items():
                out.update(catalog(name, flow, version))
        return out

    def _prune(self) -> None:
        for version in list(self._versions):
            if version != self._current and not self._running.get(version):
                del self._versions[version]
                self._running.pop(version, None)

    # -- queries

    def session(self, call_id: str) -> Session | None:
        return self._sessions.get(call_id)

    def next_command(self) -> FlowCommand | None:
        return self._commands.popleft() if self._commands else None

    def next_deadline(self) -> float | None:
        heap = self._deadlines
        while heap:
            at, call_id = heap[0]
            s = self._sessions.get(call_id)
            if s is not None and s.deadline == at:
                return at
            heapq.heappop(heap)  # stale: the call left, or its deadline moved
            if self._queued_at.get(call_id) == at:
                del self._queued_at[call_id]
        return None

    def _track(self, call_id: str) -> None:
        """Remember the session's next deadline after anything that may have moved it."""
        s = self._sessions.get(call_id)
        at = s.deadline if s is not None else None
        if at is None:
            self._queued_at.pop(call_id, None)
        elif self._queued_at.get(call_id) != at:
            self._queued_at[call_id] = at
            heapq.heappush(self._deadlines, (at, call_id))

    # -- inputs

    def handle(self, event: FlowEvent, *, now: float) -> None:
        try:
            self._handle(event, now)
        finally:
            self._track(event.call_id)

    def _handle(self, event: FlowEvent, now: float) -> None:
        if isinstance(event, CallStarted):
            self._start(event, now)
            return
        s = self._sessions.get(event.call_id)
        if s is None:
            return  # a late event for a call that already left the flow
        if isinstance(event, CallGone):
            self._caller_gone(s, now)
        elif isinstance(event, DigitPressed):
            self._digit(s, event.digit, now)
        elif isinstance(event, PromptEnded):
            if event.seq == s.seq:
                self._prompt_ended(s, now)
        elif isinstance(event, SpeechRecognized):
            self._speech(s, event, now)
        elif isinstance(event, LookupResult):
            if event.seq == s.seq and s.step is Step.LOOKING_UP:
                self._lookup_done(s, event.customer, now)
        elif isinstance(event, QueuePosition):
            self._position(s, event, now)
        elif isinstance(event, AgentConnected):
            if s.step in (Step.QUEUED, Step.ANNOUNCING):
                s.timers.clear()
                s.agent = event.agent
                s.move(Step.CONNECTED)
                self._log(s, now, "agent", event.agent)
        elif isinstance(event, AgentHungUp):
            if s.step is Step.CONNECTED:
                self._log(s, now, "agent_hung_up")
                if s.after_agent is not None:
                    self._enter(s, s.after_agent, now)
                else:
                    self._disconnect(s, now, "agent hung up")
        elif isinstance(event, VoicemailRecorded):
            if event.seq == s.seq and s.step is Step.RECORDING:
                s.variables["voicemail"] = event.path
                self._log(s, now, "voicemail", f"{event.duration_s:.1f}s")
                self._after_voicemail(s, now)
        elif isinstance(event, TransferFailed) and s.step is Step.TRANSFERRING:
            node = s.flow.nodes[s.node]
            assert isinstance(node, TransferNode) and node.on_fail is not None
            self._log(s, now, "transfer_failed", event.reason)
            self._enter(s, node.on_fail, now)

    def handle_timer(self, *, now: float) -> None:
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            at, call_id = heapq.heappop(heap)
            if self._queued_at.get(call_id) == at:
                del self._queued_at[call_id]
            s = self._sessions.get(call_id)
            if s is None:
                continue
            try:
                # each firing removes its timer or re-arms it later than `now`
                while s.step is not Step.DONE and (due := _first_due(s, now)) is not None:
                    del s.timers[due]
                    self._fire(s, due, now)
            finally:
                self._track(call_id)  # a failed firing must not lose the other timers

    # -- starting, ending

    def _start(self, event: CallStarted, now: float) -> None:
        if event.call_id in self._sessions:
            return  # a repeated start must not restart a caller's flow
        flows = self._versions.get(self._current) if self._current is not None else None
        flow = flows.get(event.flow) if flows else None
        if flow is None or self._current is None:
            self._commands.append(Disconnect(call_id=event.call_id, reason="unknown flow"))
            return
        s = Session(
            call_id=event.call_id,
            flow_name=event.flow,
            version=self._current,
            flow=flow,
            caller=event.caller,
            dnis=event.dnis,
            language=flow.default_language,
        )
        self._sessions[s.call_id] = s
        self._running[s.version] = self._running.get(s.version, 0) + 1
        self._log(s, now, "start", f"{event.flow} v{self._current}")
        self._enter(s, flow.start, now)

    def _caller_gone(self, s: Session, now: float) -> None:
        self._log(s, now, "caller_hung_up")
        node = s.flow.nodes.get(s.node)
        if isinstance(node, SurveyNode) and any(v is not None for v in s.answers.values()):
            self._store_survey(s, node)  # keep the scores the caller did give
        self._finish(s, "caller hung up")

    def _disconnect(self, s: Session, now: float, reason: str) -> None:
        self._log(s, now, "hangup", reason)
        self._commands.append(Disconnect(call_id=s.call_id, reason=reason))
        self._finish(s, reason)

    def _finish(self, s: Session, reason: str) -> None:
        s.move(Step.DONE)
        s.timers.clear()
        del self._sessions[s.call_id]
        self._running[s.version] -= 1
        self._commands.append(
            FlowEnded(
                call_id=s.call_id,
                flow=s.flow_name,
                version=s.version,
                reason=reason,
                timeline=tuple(s.timeline),
                variables=dict(s.variables),
            )
        )
        self._prune()

    # -- entering nodes

    def _enter(self, s: Session, target: str, now: float) -> None:
        name = target
        for _ in range(MAX_HOPS):
            node = s.flow.nodes.get(name)
            if node is None:
                self._disconnect(s, now, f"unknown node {name!r}")
                return
            s.node = name
            s.timers.clear()
            s.failures = s.timeouts = 0
            s.digits = ""
            s.pending = None
            self._log(s, now, "enter", node.kind)
            if not isinstance(node, ConditionNode | SetNode | GotoNode | LookupNode):
                if not isinstance(node, MenuNode | CollectNode | SurveyNode):
                    s.typeahead = ""  # type-ahead only reaches the next input node
            if isinstance(node, ConditionNode):
                name = self._branch(s, node, now)
            elif isinstance(node, SetNode):
                self._set(s, node, now)
                name = node.next
            elif isinstance(node, GotoNode):
                name = node.next
            elif isinstance(node, LookupNode):
                follow = self._lookup(s, node, now)
                if follow is None:
                    return
                name = follow
            else:
                self._enter_waiting_node(s, node, now)
                return
        self._disconnect(s, now, "flow loops without caller input")

    def _enter_waiting_node(
        self,
        s: Session,
        node: PlayNode
        | MenuNode
        | CollectNode
        | QueueNode
        | TransferNode
        | VoicemailNode
        | HangupNode
        | SurveyNode,
        now: float,
    ) -> None:
        if isinstance(node, PlayNode):
            self._then(s, After.ENTER, node.next)
            s.move(Step.PLAYING)
            self._play(s, self._keys(s, ("prompts",), node.prompts), barge_in=node.barge_in)
        elif isinstance(node, MenuNode | CollectNode):
            self._ask(s, now)
        elif isinstance(node, SurveyNode):
            s.question = 0
            s.answers = {}
            self._ask(s, now)
        elif isinstance(node, QueueNode):
            self._enqueue(s, node, now)
        elif isinstance(node, TransferNode):
            self._log(s, now, "transfer", node.number or f"agent {node.agent}")
            self._commands.append(
                Transfer(
                    call_id=s.call_id,
                    number=node.number,
                    agent=node.agent,
                    caller=s.caller,
                    variables=dict(s.variables),
                    timeline=tuple(s.timeline),
                )
            )
            if node.on_fail is not None:
                s.move(Step.TRANSFERRING)
            else:
                self._finish(s, "transferred")
        elif isinstance(node, VoicemailNode):
            if node.prompt is not None:
                self._then(s, After.RECORD)
                s.move(Step.PLAYING)
                self._play(s, self._keys(s, ("prompt",), node.prompt), barge_in=False)
            else:
                self._record(s, node, now)
        elif node.prompt is not None:  # HangupNode with a goodbye
            self._then(s, After.DISCONNECT, node.reason)
            s.move(Step.PLAYING)
            self._play(s, self._keys(s, ("prompt",), node.prompt), barge_in=False)
        else:
            self._disconnect(s, now, node.reason)

    def _then(self, s: Session, after: After, arg: str = "") -> None:
        s.after, s.after_arg = after, arg

    def _follow(self, s: Session, now: float) -> None:
        """Carry out what was due after the prompt that just ended."""
        after, arg = s.after, s.after_arg
        if after is After.ENTER:
            self._enter(s, arg, now)
        elif after is After.REPROMPT:
            self._ask(s, now, replay=True)
        elif after is After.DISCONNECT:
            self._disconnect(s, now, arg)
        elif after is After.RECORD:
            node = s.flow.nodes[s.node]
            assert isinstance(node, VoicemailNode)
            self._record(s, node, now)
        else:  # HOLD
            s.move(Step.QUEUED)
            self._hold(s)

    # -- prompts

    def _keys(
        self, s: Session, slot: tuple[str | int, ...], prompts: list[Localized]
    ) -> tuple[str, ...]:
        return tuple(
            prompt_key(s.flow_name, s.version, s.node, (*slot, i), s.language)
            for i in range(len(prompts))
        )

    def _digit_keys(self, s: Session, digits: str) -> tuple[str, ...]:
        return tuple(digit_key(s.flow_name, s.version, s.language, d) for d in digits)

    def _play(self, s: Session, keys: tuple[str, ...], *, barge_in: bool) -> None:
        s.seq += 1
        self._commands.append(
            PlayPrompt(call_id=s.call_id, seq=s.seq, prompts=keys, barge_in=barge_in)
        )

    def _message(
        self,
        s: Session,
        slot: str,
        prompt: Localized | None,
        now: float,
        after: After,
        arg: str = "",
    ) -> None:
        """Play an invalid-input / timeout message, then `after` (at once if none)."""
        self._then(s, after, arg)
        if prompt is None:
            self._follow(s, now)
            return
        s.move(Step.MESSAGE)
        key = prompt_key(s.flow_name, s.version, s.node, (slot,), s.language)
        self._play(s, (key,), barge_in=False)

    def _prompt_ended(self, s: Session, now: float) -> None:
        if s.step is Step.PROMPTING:
            s.move(Step.WAITING)
            s.timers[Timer.INPUT] = now + self._input_timeout(s)
        elif s.step in (Step.PLAYING, Step.MESSAGE, Step.ANNOUNCING):
            self._follow(s, now)

    # -- input nodes: menu, collect, survey

    def _ask(self, s: Session, now: float, *, replay: bool = False) -> None:
        """Play the current input node's question (or feed it the type-ahead)."""
        name = s.node
        node = s.flow.nodes[name]
        s.digits = ""
        if s.typeahead and not replay:
            # the caller already answered during a barge-in prompt: skip the question;
            # the new seq makes the cut prompt's late end stale
            digits, s.typeahead = s.typeahead, ""
            s.seq += 1
            s.move(Step.WAITING)
            s.timers[Timer.INPUT] = now + self._input_timeout(s)
            for digit in digits:
                if s.step not in (Step.WAITING, Step.COLLECTING) or s.node != name:
                    break
                self._input_digit(s, digit, now)
            return
        s.move(Step.PROMPTING)
        s.seq += 1
        if isinstance(node, MenuNode):
            command = Collect(
                call_id=s.call_id,
                seq=s.seq,
                prompts=self._keys(s, ("prompt",), node.prompt),
                max_digits=1,
                timeout_s=node.timeout_s,
                speech=tuple(node.speech),
                language=s.language,
            )
        elif isinstance(node, CollectNode) and s.pending is not None and node.confirm:
            command = Collect(
                call_id=s.call_id,
                seq=s.seq,
                prompts=(
                    *self._keys(s, ("confirm", "intro"), node.confirm.intro),
                    *self._digit_keys(s, s.pending),
                    *self._keys(s, ("confirm", "outro"), node.confirm.outro),
                ),
                max_digits=1,
                timeout_s=node.timeout_s,
                language=s.language,
            )
        elif isinstance(node, CollectNode):
            command = Collect(
                call_id=s.call_id,
                seq=s.seq,
                prompts=self._keys(s, ("prompt",), node.prompt),
                max_digits=node.max_length,
                terminator=node.terminator,
                timeout_s=node.timeout_s,
                inter_digit_timeout_s=node.inter_digit_timeout_s,
                language=s.language,
            )
        else:
            assert isinstance(node, SurveyNode)
            question = node.questions[s.question]
            command = Collect(
                call_id=s.call_id,
                seq=s.seq,
                prompts=self._keys(s, ("questions", s.question, "prompt"), question.prompt),
                max_digits=len(str(question.max)),
                terminator="#",
                timeout_s=node.timeout_s,
                inter_digit_timeout_s=SURVEY_INTER_DIGIT_S,
                language=s.language,
            )
        self._commands.append(command)

    def _input_timeout(self, s: Session) -> float:
        node = s.flow.nodes[s.node]
        assert isinstance(node, MenuNode | CollectNode | SurveyNode)
        return node.timeout_s

    def _digit(self, s: Session, digit: str, now: float) -> None:
        if s.step in (Step.PROMPTING, Step.WAITING, Step.COLLECTING):
            self._input_digit(s, digit, now)
        elif s.step is Step.PLAYING:
            node = s.flow.nodes[s.node]
            if isinstance(node, PlayNode) and node.barge_in:
                self._log(s, now, "digit", f"{digit} (barge-in)")
                s.typeahead = digit
                self._enter(s, node.next, now)
        elif s.step in (Step.QUEUED, Step.ANNOUNCING):
            self._queue_digit(s, digit, now)
        # digits during messages, lookups, recordings and with an agent are not choices

    def _input_digit(self, s: Session, digit: str, now: float) -> None:
        node = s.flow.nodes[s.node]
        s.timers.pop(Timer.INPUT, None)
        s.timers.pop(Timer.INTER_DIGIT, None)
        if isinstance(node, MenuNode):
            self._log(s, now, "digit", digit)
            target = node.options.get(digit)
            if target is not None:
                self._enter(s, target, now)
            else:
                self._menu_failed(s, node, now, invalid=True)
            return
        if isinstance(node, CollectNode) and s.pending is not None:
            self._confirm_digit(s, node, digit, now)
            return
        if isinstance(node, CollectNode):
            max_length, terminator, gap = (
                node.max_length,
                node.terminator,
                node.inter_digit_timeout_s,
            )
        else:
            assert isinstance(node, SurveyNode)
            question = node.questions[s.question]
            max_length, terminator, gap = len(str(question.max)), "#", SURVEY_INTER_DIGIT_S
        if terminator is not None and digit == terminator:
            self._entry_done(s, now)
            return
        s.digits += digit
        if len(s.digits) >= max_length:
            self._entry_done(s, now)
            return
        s.move(Step.COLLECTING)
        s.timers[Timer.INTER_DIGIT] = now + gap

    def _speech(self, s: Session, event: SpeechRecognized, now: float) -> None:
        node = s.flow.nodes.get(s.node)
        text = " ".join(event.text.casefold().split())
        if not text or not isinstance(node, MenuNode) or not node.speech:
            return
        if s.step not in (Step.PROMPTING, Step.WAITING):
            return
        s.timers.pop(Timer.INPUT, None)
        self._log(s, now, "speech", f"{text} ({event.confidence:.2f})")
        phrases = {" ".join(p.casefold().split()): target for p, target in node.speech.items()}
        target = phrases.get(text)
        if target is not None and event.confidence >= node.speech_min_confidence:
            self._enter(s, target, now)
        else:
            self._menu_failed(s, node, now, invalid=True)

    def _menu_failed(self, s: Session, node: MenuNode, now: float, *, invalid: bool) -> None:
        if invalid:
            s.failures += 1
            self._log(s, now, "invalid", f"{s.failures}/{node.max_failures}")
            exhausted, slot, prompt = (
                s.failures >= node.max_failures,
                "invalid_prompt",
                node.invalid_prompt,
            )
        else:
            s.timeouts += 1
            self._log(s, now, "timeout", f"{s.timeouts}/{node.max_timeouts}")
            exhausted, slot, prompt = (
                s.timeouts >= node.max_timeouts,
                "timeout_prompt",
                node.timeout_prompt,
            )
        if not exhausted:
            self._message(s, slot, prompt, now, After.REPROMPT)
        elif node.fallback is not None:
            self._message(s, slot, prompt, now, After.ENTER, node.fallback)
        else:
            self._message(s, slot, prompt, now, After.DISCONNECT, "no valid input")

    def _entry_done(self, s: Session, now: float) -> None:
        node = s.flow.nodes[s.node]
        value, s.digits = s.digits, ""
        s.timers.pop(Timer.INTER_DIGIT, None)
        if isinstance(node, SurveyNode):
            self._survey_answer(s, node, value, now)
            return
        assert isinstance(node, CollectNode)
        problem = entry_problem(node, value)
        if problem is not None:
            self._log(s, now, "invalid", f"{value or '(nothing)'}: {problem}")
            self._collect_failed(s, node, now, message=True)
            return
        self._log(s, now, "collected", value)
        if node.confirm is not None:
            s.pending = value
            self._ask(s, now, replay=True)
        else:
            s.variables[node.into] = value
            self._enter(s, node.next, now)

    def _confirm_digit(self, s: Session, node: CollectNode, digit: str, now: float) -> None:
        assert node.confirm is not None and s.pending is not None
        if digit == node.confirm.yes:
            s.variables[node.into] = s.pending
            self._log(s, now, "confirmed", s.pending)
            self._enter(s, node.next, now)
            return
        if digit == node.confirm.no:
            self._log(s, now, "rejected", s.pending)
            s.pending = None  # ask for the entry again
            self._collect_failed(s, node, now, message=False)
        else:
            self._log(s, now, "invalid", f"pressed {digit} to confirm")
            self._collect_failed(s, node, now, message=True)  # the read-back again

    def _collect_failed(self, s: Session, node: CollectNode, now: float, *, message: bool) -> None:
        s.failures += 1
        prompt = node.invalid_prompt if message else None
        if s.failures < node.max_failures:
            self._message(s, "invalid_prompt", prompt, now, After.REPROMPT)
        elif node.fallback is not None:
            self._message(s, "invalid_prompt", prompt, now, After.ENTER, node.fallback)
        else:
            self._message(s, "invalid_prompt", prompt, now, After.DISCONNECT, "no valid input")

    def _input_timed_out(self, s: Session, now: float) -> None:
        node = s.flow.nodes[s.node]
        if isinstance(node, MenuNode):
            self._menu_failed(s, node, now, invalid=False)
        elif isinstance(node, CollectNode):
            # while confirming, the entry stays pending: the read-back is asked again
            self._log(s, now, "timeout", "confirm" if s.pending is not None else "")
            self._collect_failed(s, node, now, message=False)
        elif isinstance(node, SurveyNode):
            self._log(s, now, "timeout", node.questions[s.question].name)
            self._survey_answer(s, node, "", now)

    # -- survey

    def _survey_answer(self, s: Session, node: SurveyNode, value: str, now: float) -> None:
        question = node.questions[s.question]
        score = int(value) if value.isdigit() else None
        if score is not None and question.min <= score <= question.max:
            s.answers[question.name] = score
            self._log(s, now, "survey", f"{question.name}={score}")
        else:
            s.failures += 1
            if value:
                self._log(s, now, "invalid", f"{question.name}: {value}")
            if s.failures <= node.retries:
                prompt = node.invalid_prompt if value else None
                self._message(s, "invalid_prompt", prompt, now, After.REPROMPT)
                return
            s.answers[question.name] = None
            self._log(s, now, "survey", f"{question.name} unanswered")
        s.question += 1
        s.failures = 0
        if s.question < len(node.questions):
            self._ask(s, now, replay=True)
            return
        self._store_survey(s, node)
        if node.next is not None:
            after, arg = After.ENTER, node.next
        else:
            after, arg = After.DISCONNECT, "survey done"
        if node.thanks is not None:
            self._then(s, after, arg)
            s.move(Step.PLAYING)
            self._play(s, self._keys(s, ("thanks",), node.thanks), barge_in=False)
        else:
            self._then(s, after, arg)
            self._follow(s, now)

    def _store_survey(self, s: Session, node: SurveyNode) -> None:
        answers = tuple((q.name, s.answers.get(q.name)) for q in node.questions)
        self._commands.append(
            StoreSurvey(
                call_id=s.call_id,
                survey=s.node,
                answers=answers,
                complete=all(score is not None for _, score in answers),
            )
        )

    # -- condition, set, lookup

    def _branch(self, s: Session, node: ConditionNode, now: float) -> str:
        for i, branch in enumerate(node.branches):
            if self._holds(s, branch.when, now):
                self._log(s, now, "branch", f"{i} -> {branch.next}")
                return branch.next
        self._log(s, now, "branch", f"otherwise -> {node.otherwise}")
        return node.otherwise

    def _holds(self, s: Session, when: When, now: float) -> bool:
        calendars = s.flow.calendars
        customer = s.customer
        checks: list[bool] = []
        if when.open is not None:
            calendar = calendars.get(when.open)
            checks.append(calendar is not None and is_open(calendar, now))
        if when.holiday is not None:
            calendar = calendars.get(when.holiday)
            checks.append(calendar is not None and is_holiday(calendar, now))
        if when.known_customer is not None:
            checks.append((customer is not None) == when.known_customer)
        if when.vip is not None:
            checks.append((customer is not None and customer.vip) == when.vip)
        if when.tier is not None:
            checks.append(customer is not None and customer.tier in when.tier)
        if when.ticket_priority is not None:
            checks.append(customer is not None and customer.ticket_priority in when.ticket_priority)
        if when.language is not None:
            checks.append(s.language in when.language)
        if when.dnis is not None:
            checks.append(s.dnis in when.dnis)
        if when.vars is not None:
            checks.append(all(s.variables.get(k) == v for k, v in when.vars.items()))
        return all(checks)

    def _set(self, s: Session, node: SetNode, now: float) -> None:
        changes: list[str] = []
        if node.language is not None:
            s.language, s.language_chosen = node.language, True
            changes.append(f"language={node.language}")
        if node.priority is not None:
            s.priority = node.priority
            changes.append(f"priority={node.priority}")
        for skill, level in node.skills.items():
            s.skills[skill] = max(level, s.skills.get(skill, 0))
            changes.append(f"skill {skill}>={level}")
        if node.vars:
            s.variables.update(node.vars)
            changes += [f"{k}={v}" for k, v in node.vars.items()]
            self._commands.append(SetScreen(call_id=s.call_id, variables=dict(s.variables)))
        self._log(s, now, "set", ", ".join(changes))

    def _lookup(self, s: Session, node: LookupNode, now: float) -> str | None:
        """Send the lookup and wait (None), or the node to go on to when there is
        nothing to look up."""
        if node.by == "caller":
            key, value = "caller", s.caller
        else:
            assert node.variable is not None
            key, value = node.variable, s.variables.get(node.variable, "")
        if not value:
            self._log(s, now, "lookup", f"no {key} to look up")
            return node.not_found or node.next
        s.seq += 1
        s.move(Step.LOOKING_UP)
        s.timers[Timer.LOOKUP] = now + node.timeout_s
        self._log(s, now, "lookup", f"{key}={value}")
        self._commands.append(
            Lookup(call_id=s.call_id, seq=s.seq, by=node.by, key=key, value=value)
        )
        return None

    def _lookup_done(self, s: Session, customer: Customer | None, now: float) -> None:
        node = s.flow.nodes[s.node]
        assert isinstance(node, LookupNode)
        s.timers.pop(Timer.LOOKUP, None)
        if customer is None:
            self._log(s, now, "lookup", "not found")
            self._enter(s, node.not_found or node.next, now)
            return
        s.customer = customer
        s.variables.update(
            {
                "customer.id": customer.customer_id,
                "customer.name": customer.name,
                "customer.tier": customer.tier,
                "customer.vip": "yes" if customer.vip else "no",
                "customer.ticket_priority": customer.ticket_priority,
                **{f"customer.{k}": v for k, v in customer.fields.items()},
            }
        )
        if not s.language_chosen and customer.language in s.flow.languages:
            s.language = customer.language  # the CRM knows what the caller speaks
        self._log(
            s, now, "lookup", f"found {customer.customer_id}" + (" VIP" if customer.vip else "")
        )
        self._commands.append(SetScreen(call_id=s.call_id, variables=dict(s.variables)))
        self._enter(s, node.next, now)

    # -- queue

    def _enqueue(self, s: Session, node: QueueNode, now: float) -> None:
        skills = dict(s.skills)
        for skill, level in node.skills.items():
            skills[skill] = max(level, skills.get(skill, 0))
        s.queue, s.after_agent = node.queue, node.after_agent
        s.position = s.ewt_s = None
        s.callback_offered = False
        self._log(s, now, "queued", node.queue)
        self._commands.append(
            Enqueue(
                call_id=s.call_id,
                queue=node.queue,
                caller=s.caller,
                skills=skills,
                priority=node.priority if node.priority is not None else s.priority,
                language=s.language,
                announce_every_s=node.announce.every_s if node.announce else None,
                callback_after_s=node.callback.after_s if node.callback else None,
                keep_caller_after_agent=node.after_agent is not None,
                variables=dict(s.variables),
                timeline=tuple(s.timeline),
            )
        )
        s.move(Step.QUEUED)
        self._hold(s)
        if node.announce is not None:
            s.timers[Timer.ANNOUNCE] = now + node.announce.every_s
        if node.callback is not None:
            s.timers[Timer.CALLBACK] = now + node.callback.after_s
        if node.max_wait_s is not None:
            s.timers[Timer.MAX_WAIT] = now + node.max_wait_s

    def _hold(self, s: Session) -> None:
        node = s.flow.nodes[s.node]
        assert isinstance(node, QueueNode)
        music: tuple[str, ...] = ()
        if node.music_on_hold is not None:
            music = (prompt_key(s.flow_name, s.version, s.node, ("music_on_hold",), s.language),)
        self._commands.append(PlayHold(call_id=s.call_id, queue=node.queue, music=music))

    def _position(self, s: Session, event: QueuePosition, now: float) -> None:
        if s.step not in (Step.QUEUED, Step.ANNOUNCING):
            return
        if event.position != s.position:
            self._log(s, now, "position", str(event.position))
        ewt = event.ewt_s if event.ewt_s is not None and math.isfinite(event.ewt_s) else None
        s.position, s.ewt_s = event.position, ewt

    def _announce(self, s: Session, node: QueueNode, now: float) -> None:
        assert node.announce is not None
        s.timers[Timer.ANNOUNCE] = now + node.announce.every_s
        if s.step is not Step.QUEUED:
            return  # the callback offer is playing; the next round will tell
        keys: list[str] = []
        if s.position is not None and node.announce.position is not None:
            keys += self._keys(s, ("announce", "position"), node.announce.position)
            keys += self._digit_keys(s, str(s.position))
        if s.ewt_s is not None and node.announce.wait is not None:
            minutes = max(1, math.ceil(s.ewt_s / 60))
            keys += self._keys(s, ("announce", "wait"), node.announce.wait)
            keys += self._digit_keys(s, str(minutes))
        if not keys:
            return  # nothing known yet about this caller's place
        self._log(s, now, "announce", f"position={s.position} ewt={s.ewt_s}")
        self._then(s, After.HOLD)
        s.move(Step.ANNOUNCING)
        self._play(s, tuple(keys), barge_in=False)

    def _offer_callback(self, s: Session, node: QueueNode, now: float) -> None:
        assert node.callback is not None
        if s.step is not Step.QUEUED:
            s.timers[Timer.CALLBACK] = now + 5.0  # after the announcement
            return
        s.callback_offered = True
        self._log(s, now, "callback", "offered")
        self._then(s, After.HOLD)
        s.move(Step.ANNOUNCING)
        self._play(s, self._keys(s, ("callback", "prompt"), node.callback.prompt), barge_in=True)

    def _queue_digit(self, s: Session, digit: str, now: float) -> None:
        node = s.flow.nodes[s.node]
        assert isinstance(node, QueueNode)
        self._log(s, now, "digit", digit)
        if node.callback is None or not s.callback_offered or digit != node.callback.digit:
            return
        self._log(s, now, "callback", "accepted")
        self._commands.append(
            RequestCallback(
                call_id=s.call_id,
                queue=node.queue,
                number=s.caller,
                variables=dict(s.variables),
                timeline=tuple(s.timeline),
            )
        )
        s.queue = None
        self._enter(s, node.callback.next, now)

    def _overflow(self, s: Session, node: QueueNode, now: float) -> None:
        assert node.overflow is not None
        self._log(s, now, "overflow", node.overflow)
        self._commands.append(LeaveQueue(call_id=s.call_id, queue=node.queue, reason="max wait"))
        s.queue = None
        self._enter(s, node.overflow, now)

    # -- voicemail

    def _record(self, s: Session, node: VoicemailNode, now: float) -> None:
        s.seq += 1
        s.move(Step.RECORDING)
        s.timers[Timer.VOICEMAIL] = now + node.max_s + VOICEMAIL_GRACE_S
        self._log(s, now, "voicemail", f"recording into {node.mailbox}")
        self._commands.append(
            RecordVoicemail(
                call_id=s.call_id,
                seq=s.seq,
                mailbox=node.mailbox,
                max_s=node.max_s,
                terminator=node.terminator,
                beep=node.beep,
                variables=dict(s.variables),
                timeline=tuple(s.timeline),
            )
        )

    def _after_voicemail(self, s: Session, now: float) -> None:
        node = s.flow.nodes[s.node]
        assert isinstance(node, VoicemailNode)
        s.timers.pop(Timer.VOICEMAIL, None)
        if node.next is not None:
            self._enter(s, node.next, now)
        else:
            self._disconnect(s, now, "voicemail left")

    # -- timers

    def _fire(self, s: Session, timer: Timer, now: float) -> None:
        node = s.flow.nodes[s.node]
        if timer is Timer.INPUT and s.step is Step.WAITING:
            self._input_timed_out(s, now)
        elif timer is Timer.INTER_DIGIT and s.step is Step.COLLECTING:
            self._entry_done(s, now)
        elif timer is Timer.LOOKUP and s.step is Step.LOOKING_UP:
            self._log(s, now, "lookup", "timed out")
            assert isinstance(node, LookupNode)
            self._enter(s, node.not_found or node.next, now)
        elif timer is Timer.VOICEMAIL and s.step is Step.RECORDING:
            self._log(s, now, "voicemail", "no recording reported")
            self._after_voicemail(s, now)
        elif isinstance(node, QueueNode) and s.step in (Step.QUEUED, Step.ANNOUNCING):
            if timer is Timer.ANNOUNCE:
                self._announce(s, node, now)
            elif timer is Timer.CALLBACK:
                self._offer_callback(s, node, now)
            elif timer is Timer.MAX_WAIT:
                self._overflow(s, node, now)

    def _log(self, s: Session, now: float, what: str, detail: str = "") -> None:
        s.timeline.append(TimelineEntry(at=now, node=s.node, what=what, detail=detail))


def _first_due(s: Session, now: float) -> Timer | None:
    due = [(at, timer.value, timer) for timer, at in s.timers.items() if at <= now]
    return min(due)[2] if due else None


def entry_problem(node: CollectNode, value: str) -> str | None:
    """Why a collected entry is refused, or None when it is fine."""
    if len(value) < node.min_length:
        return f"shorter than {node.min_length} digits"
    if len(value) > node.max_length:
        return f"longer than {node.max_length} digits"
    if node.pattern is not None and re.fullmatch(node.pattern, value) is None:
        return "does not match the pattern"
    if node.luhn and not luhn_ok(value):
        return "fails the Luhn check"
    return None
