"""The IVR engine: one DTMF menu per call, pure and deterministic.

Driven like aioquic's connection: `handle(event, now=)` feeds it caller facts,
`next_command()` drains what the media side must do, `next_deadline()` /
`handle_timer(now=)` run the no-input timeout. It never touches a socket or a clock,
so a test walks a whole menu with a fake clock in microseconds.

A session plays the menu prompt (digits barge in), waits `timeout_s` for a digit,
repeats the prompt on timeout up to `max_retries` times, plays the invalid-choice
message on a wrong digit, and finally either routes the caller to a queue or says
goodbye and disconnects. Prompts are named by key (`ivr.<menu>.prompt`, ...); the core
maps keys to WAV files.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum


class MenuSpec:
    """The parts of a menu the engine needs (built from `config.schema.Menu`)."""

    __slots__ = ("max_retries", "name", "options", "timeout_s")

    def __init__(
        self, name: str, options: dict[str, str], timeout_s: float, max_retries: int
    ) -> None:
        self.name = name
        self.options = dict(options)
        """digit -> queue name"""
        self.timeout_s = timeout_s
        self.max_retries = max_retries

    def prompt(self, which: str) -> str:
        return f"ivr.{self.name}.{which}"


# ---------------------------------------------------------------- events in


@dataclass(frozen=True, slots=True, kw_only=True)
class CallStarted:
    call_id: str
    menu: str


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


IvrEvent = CallStarted | DigitPressed | PromptEnded | CallGone

# ---------------------------------------------------------------- commands out


@dataclass(frozen=True, slots=True, kw_only=True)
class PlayPrompt:
    call_id: str
    seq: int
    """Echoed back in `PromptEnded`, so a late end of an older prompt is ignored."""
    prompts: tuple[str, ...]
    barge_in: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteToQueue:
    call_id: str
    queue: str
    digits: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnect:
    call_id: str
    reason: str


IvrCommand = PlayPrompt | RouteToQueue | Disconnect

# ---------------------------------------------------------------- sessions


class Step(Enum):
    PROMPTING = "prompting"
    """Menu prompt playing; a digit barges in."""
    WAITING = "waiting"
    """Prompt done; the no-input timer runs."""
    MESSAGE = "message"
    """Invalid-choice message playing; the menu prompt follows."""
    GOODBYE = "goodbye"
    """Too many failures: goodbye playing, then disconnect."""
    DONE = "done"


TRANSITIONS: dict[Step, frozenset[Step]] = {
    Step.PROMPTING: frozenset({Step.WAITING, Step.MESSAGE, Step.DONE}),
    Step.WAITING: frozenset({Step.PROMPTING, Step.MESSAGE, Step.GOODBYE, Step.DONE}),
    Step.MESSAGE: frozenset({Step.PROMPTING, Step.GOODBYE, Step.DONE}),
    Step.GOODBYE: frozenset({Step.DONE}),
    Step.DONE: frozenset(),
}


class IllegalTransition(RuntimeError):
    pass


@dataclass(slots=True)
class Session:
    call_id: str
    menu: MenuSpec
    step: Step = Step.PROMPTING
    seq: int = 0
    failures: int = 0
    deadline: float | None = None
    timeline: list[tuple[float, str]] = field(default_factory=list)

    def move(self, to: Step) -> None:
        if to not in TRANSITIONS[self.step]:
            raise IllegalTransition(f"{self.call_id}: {self.step.value} -> {to.value}")
        self.step = to


class IvrEngine:
    def __init__(self, menus: dict[str, MenuSpec]) -> None:
        self._menus = dict(menus)
        self._sessions: dict[str, Session] = {}
        self._commands: deque[IvrCommand] = deque()

    # -- queries

    def session(self, call_id: str) -> Session | None:
        return self._sessions.get(call_id)

    def next_command(self) -> IvrCommand | None:
        return self._commands.popleft() if self._commands else None

    def next_deadline(self) -> float | None:
        deadlines = [s.deadline for s in self._sessions.values() if s.deadline is not None]
        return min(deadlines, default=None)

    # -- inputs

    def handle(self, event: IvrEvent, *, now: float) -> None:
        if isinstance(event, CallStarted):
            self._start(event, now)
            return
        session = self._sessions.get(event.call_id)
        if session is None:
            return  # a late event for a call that already left the IVR
        if isinstance(event, CallGone):
            session.timeline.append((now, "caller hung up"))
            self._finish(session, Step.DONE)
        elif isinstance(event, DigitPressed):
            self._digit(session, event.digit, now)
        elif event.seq == session.seq:
            self._prompt_ended(session, now)

    def handle_timer(self, *, now: float) -> None:
        for session in list(self._sessions.values()):
            if session.deadline is not None and session.deadline <= now:
                session.deadline = None
                session.timeline.append((now, "no input"))
                self._fail(session, now, invalid=False)

    # -- transitions

    def _start(self, event: CallStarted, now: float) -> None:
        menu = self._menus.get(event.menu)
        if menu is None:
            self._commands.append(Disconnect(call_id=event.call_id, reason="unknown menu"))
            return
        session = Session(call_id=event.call_id, menu=menu)
        session.timeline.append((now, f"menu {menu.name}"))
        self._sessions[event.call_id] = session
        self._play(session, (menu.prompt("prompt"),), barge_in=True)

    def _digit(self, session: Session, digit: str, now: float) -> None:
        if session.step not in (Step.PROMPTING, Step.WAITING):
            return  # digits during a message or goodbye are not choices
        session.deadline = None
        queue = session.menu.options.get(digit)
        if queue is None:
            session.timeline.append((now, f"invalid digit {digit}"))
            self._fail(session, now, invalid=True)
            return
        session.timeline.append((now, f"pressed {digit} -> queue {queue}"))
        self._finish(session, Step.DONE)
        self._commands.append(RouteToQueue(call_id=session.call_id, queue=queue, digits=digit))

    def _prompt_ended(self, session: Session, now: float) -> None:
        if session.step is Step.PROMPTING:
            session.move(Step.WAITING)
            session.deadline = now + session.menu.timeout_s
        elif session.step is Step.MESSAGE:
            session.move(Step.PROMPTING)
            self._play(session, (session.menu.prompt("prompt"),), barge_in=True)
        elif session.step is Step.GOODBYE:
            self._finish(session, Step.DONE)
            self._commands.append(Disconnect(call_id=session.call_id, reason="no valid input"))

    def _fail(self, session: Session, now: float, *, invalid: bool) -> None:
        session.failures += 1
        if session.failures > session.menu.max_retries:
            session.move(Step.GOODBYE)
            prompts = (session.menu.prompt("invalid"),) if invalid else ()
            self._play(session, (*prompts, session.menu.prompt("goodbye")), barge_in=False)
        elif invalid:
            session.move(Step.MESSAGE)
            self._play(session, (session.menu.prompt("invalid"),), barge_in=False)
        else:
            session.move(Step.PROMPTING)
            self._play(session, (session.menu.prompt("prompt"),), barge_in=True)

    def _play(self, session: Session, prompts: tuple[str, ...], *, barge_in: bool) -> None:
        session.seq += 1
        self._commands.append(
            PlayPrompt(call_id=session.call_id, seq=session.seq, prompts=prompts, barge_in=barge_in)
        )

    def _finish(self, session: Session, step: Step) -> None:
        session.move(step)
        session.deadline = None
        del self._sessions[session.call_id]
