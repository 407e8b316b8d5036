"""The IVR flow schema: call flows as data, validated by pydantic when they are loaded.

A flow is a graph of named nodes (`play`, `menu`, `collect`, `condition`, `lookup`,
`set`, `queue`, `transfer`, `voicemail`, `hangup`, `goto`, `survey`) joined by
next-node links, with a start node, the languages it speaks and business-hours
calendars. This module checks what one model can check on its own (field ranges, one
prompt source, a regex that compiles, a time zone that exists); `ivr.validate` checks
the graph and the cross-references (targets, reachability, loops without caller input,
queues, skills, prompt files), and `ivr.engine` runs it.

Neighbours: `config.schema` embeds `Flow` under its `ivr:` section; `ivr.prompts`
names every prompt slot so the core can render them before a call needs them.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
"""Flow, node, queue, skill, calendar and survey-question names."""
VarName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.]{0,63}$")]
Lang = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[a-z0-9]{2,8})?$")]
LangOrAny = Annotated[str, StringConstraints(pattern=r"^(\*|[a-z]{2,3}(-[a-z0-9]{2,8})?)$")]
Digit = Annotated[str, StringConstraints(pattern=r"^[0-9*#]$")]

ANY_LANGUAGE = "*"
"""The key of a prompt that serves every language (a single `{text: ...}` or `{file: ...}`)."""

DEFAULT_VOICES: Mapping[str, str] = {"en": "en-us", "zh": "cmn", "ko": "ko", "yue": "yue"}
"""espeak-ng voice per language code when neither the prompt nor the flow names one."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Prompt(_Model):
    """One piece of audio: text rendered by espeak-ng (cached) or a WAV file."""

    text: str | None = None
    file: Path | None = None
    """Relative to the directory of the main configuration file (flow files included)."""
    voice: str | None = None
    """espeak-ng voice; None: the flow's voice for the language being played."""

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.text is None) == (self.file is None):
            raise ValueError("give exactly one of 'text' or 'file'")
        return self


def _localize(value: Any) -> Any:
    # `"Hello"` and `{text: Hello}` are one prompt for every language; `{en: ..., zh: ...}`
    # is one per language. Telling them apart here keeps pydantic's errors short.
    if isinstance(value, str):
        return {ANY_LANGUAGE: {"text": value}}
    if isinstance(value, Mapping) and set(value) & {"text", "file", "voice"}:
        return {ANY_LANGUAGE: value}
    if isinstance(value, Mapping):  # `{en: Hello}` is short for `{en: {text: Hello}}`
        return {k: {"text": v} if isinstance(v, str) else v for k, v in value.items()}
    return value


def _listify(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else [value]


Localized = Annotated[dict[LangOrAny, Prompt], BeforeValidator(_localize)]
"""A prompt per language (`{en: ..., zh: ...}`), or one for all (`{text: ...}`)."""
Prompts = Annotated[list[Localized], BeforeValidator(_listify), Field(min_length=1)]
"""One or more localized prompts played back to back."""


# ---------------------------------------------------------------- calendars

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_SPEC = re.compile(r"^(mon|tue|wed|thu|fri|sat|sun)(-(mon|tue|wed|thu|fri|sat|sun))?$")
_RANGE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


def _minutes_range(text: str) -> tuple[int, int]:
    match = _RANGE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a time range like '09:00-18:00'")
    start = int(match[1]) * 60 + int(match[2])
    end = int(match[3]) * 60 + int(match[4])
    if end > 24 * 60 or start == end:
        raise ValueError(f"{text!r} is not a time range like '09:00-18:00'")
    return start, end


def _holidays_as_text(value: Any) -> Any:
    # YAML reads an unquoted 2025-01-01 as a date; the schema keeps holidays as text.
    if isinstance(value, list):
        return [str(item) if isinstance(item, date) else item for item in value]
    return value


class Calendar(_Model):
    """Opening hours per weekday and holidays, in one time zone.

    `hours` maps `mon`, `mon-fri`, `sat-sun`... to ranges like `09:00-18:00`; a range
    whose end is before its start runs past midnight (`22:00-06:00`). A holiday (a date
    or `YYYY-MM-DD..YYYY-MM-DD`) is closed all day, whatever `hours` says.
    """

    time_zone: str
    hours: dict[str, list[str]] = Field(min_length=1)
    holidays: Annotated[list[str], BeforeValidator(_holidays_as_text)] = []

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (e.g. 'Asia/Shanghai')") from None
        return value

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for spec, ranges in value.items():
            if _DAY_SPEC.match(spec) is None:
                raise ValueError(f"{spec!r} is not a weekday or range like 'mon-fri'")
            for text in ranges:
                _minutes_range(text)
        return value

    @field_validator("holidays")
    @classmethod
    def _holidays(cls, value: list[str]) -> list[str]:
        for text in value:
            _date_range(text)
        return value

    def weekly(self) -> dict[int, list[tuple[int, int]]]:
        """Weekday (0 = Monday) -> opening ranges in minutes after local midnight."""
        table: dict[int, list[tuple[int, int]]] = {day: [] for day in range(7)}
        for spec, ranges in self.hours.items():
            first, _, last = spec.partition("-")
            lo, hi = _DAYS.index(first), _DAYS.index(last or first)
            days = range(lo, hi + 1) if lo <= hi else [*range(lo, 7), *range(hi + 1)]
            for day in days:
                table[day].extend(_minutes_range(text) for text in ranges)
        return table

    def holiday_ranges(self) -> list[tuple[date, date]]:
        return [_date_range(text) for text in self.holidays]


def _date_range(text: str) -> tuple[date, date]:
    first, sep, last = str(text).partition("..")
    try:
        lo = date.fromisoformat(first.strip())
        hi = date.fromisoformat(last.strip()) if sep else lo
    except ValueError:
        raise ValueError(f"{text!r} is not a date or range like '2025-10-01..2025-10-07'") from None
    if hi < lo:
        raise ValueError(f"{text!r} ends before it starts")
    return lo, hi


# ---------------------------------------------------------------- nodes


class _Node(_Model):
    def links(self) -> list[tuple[tuple[str | int, ...], str]]:
        """(path inside the node, target node) for every next-node link."""
        out: list[tuple[tuple[str | int, ...], str]] = []
        for key in ("next", "fallback", "not_found", "on_fail", "overflow", "after_agent"):
            target = getattr(self, key, None)
            if isinstance(target, str):
                out.append(((key,), target))
        return out

    def silent_links(self) -> list[str]:
        """Targets this node can move to with no caller input (for the loop check)."""
        return []

    def prompt_slots(self) -> list[tuple[tuple[str | int, ...], Localized]]:
        """(path inside the node, prompt) for every prompt this node may play."""
        out: list[tuple[tuple[str | int, ...], Localized]] = []
        for key, value in self:
            if isinstance(value, list) and value and isinstance(value[0], dict):
                out.extend(((key, i), item) for i, item in enumerate(value))
            elif (
                isinstance(value, dict) and value and isinstance(next(iter(value.values())), Prompt)
            ):
                out.append(((key,), value))
        return out


class PlayNode(_Node):
    """Play one or more prompts, then go on; with `barge_in` a digit cuts the prompt
    short and is kept as type-ahead for the next menu or collect."""

    kind: Literal["play"]
    prompts: Prompts
    barge_in: bool = False
    next: Name

    def silent_links(self) -> list[str]:
        return [] if self.barge_in else [self.next]


class MenuNode(_Node):
    """Digits (and optionally spoken phrases) choose the next node.

    A wrong digit plays `invalid_prompt` and the menu again; no input within
    `timeout_s` plays `timeout_prompt` and the menu again. After `max_failures` wrong
    choices or `max_timeouts` silences the caller goes to `fallback` (None: hang up).
    """

    kind: Literal["menu"]
    prompt: Prompts
    options: dict[Digit, Name] = {}
    speech: dict[str, Name] = {}
    """Spoken phrase -> next node; the phrases are the recogniser's grammar."""
    speech_min_confidence: float = Field(0.5, ge=0, le=1)
    timeout_s: float = Field(5.0, gt=0, le=120)
    max_failures: int = Field(3, ge=1, le=20)
    max_timeouts: int = Field(3, ge=1, le=20)
    invalid_prompt: Localized | None = None
    timeout_prompt: Localized | None = None
    fallback: Name | None = None

    @model_validator(mode="after")
    def _some_choice(self) -> Self:
        if not self.options and not self.speech:
            raise ValueError("a menu needs 'options' (digits) or 'speech' (phrases)")
        return self

    def links(self) -> list[tuple[tuple[str | int, ...], str]]:
        out = super().links()
        out += [(("options", digit), target) for digit, target in self.options.items()]
        out += [(("speech", phrase), target) for phrase, target in self.speech.items()]
        return out

    def silent_links(self) -> list[str]:
        # repeated timeouts lead to the fallback with the caller saying nothing
        return [self.fallback] if self.fallback else []


class Confirm(_Model):
    """Read the entry back digit by digit: "<intro> 1 2 3 <outro>"."""

    intro: Prompts = [{ANY_LANGUAGE: Prompt(text="You entered")}]
    outro: Prompts = [{ANY_LANGUAGE: Prompt(text="Press 1 to confirm, or 2 to enter it again.")}]
    yes: Digit = "1"
    no: Digit = "2"

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        if self.yes == self.no:
            raise ValueError("'yes' and 'no' must be different digits")
        return self


class CollectNode(_Node):
    """Collect digits into variable `into`, check them, optionally read them back."""

    kind: Literal["collect"]
    prompt: Prompts
    into: VarName
    min_length: int = Field(1, ge=1, le=64)
    max_length: int = Field(16, ge=1, le=64)
    terminator: Digit | None = "#"
    timeout_s: float = Field(5.0, gt=0, le=120)
    """Wait for the first digit once the prompt has ended."""
    inter_digit_timeout_s: float = Field(3.0, gt=0, le=60)
    pattern: str | None = None
    """A regular expression the whole entry must match."""
    luhn: bool = False
    """The entry must pass the Luhn (mod 10) check, like card and many account numbers."""
    confirm: Confirm | None = None
    invalid_prompt: Localized | None = None
    max_failures: int = Field(3, ge=1, le=20)
    next: Name
    fallback: Name | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.min_length > self.max_length:
            raise ValueError("min_length is larger than max_length")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern: not a regular expression: {exc}") from None
        return self

    def prompt_slots(self) -> list[tuple[tuple[str | int, ...], Localized]]:
        out = super().prompt_slots()
        if self.confirm is not None:
            out += [(("confirm", "intro", i), p) for i, p in enumerate(self.confirm.intro)]
            out += [(("confirm", "outro", i), p) for i, p in enumerate(self.confirm.outro)]
        return out

    def silent_links(self) -> list[str]:
        return [self.fallback] if self.fallback else []


class When(_Model):
    """Conditions that must all hold; each field left out is not tested."""

    open: Name | None = None
    """Within the named calendar's hours and not on one of its holidays."""
    holiday: Name | None = None
    """Today (in the calendar's time zone) is one of the calendar's holidays."""
    known_customer: bool | None = None
    vip: bool | None = None
    tier: list[str] | None = None
    """The customer's tier is one of these."""
    ticket_priority: list[str] | None = None
    """The customer has an open ticket with one of these priorities."""
    language: list[Lang] | None = None
    """The call's current language is one of these."""
    dnis: list[str] | None = None
    """The number the caller dialled is one of these."""
    vars: dict[VarName, str] | None = None
    """Each variable equals the given text."""

    @model_validator(mode="after")
    def _something(self) -> Self:
        if not self.model_fields_set:
            raise ValueError("a test needs at least one condition")
        return self


class Branch(_Model):
    when: When
    next: Name


class ConditionNode(_Node):
    """The first branch whose test holds chooses the next node, else `otherwise`."""

    kind: Literal["condition"]
    branches: list[Branch] = Field(min_length=1)
    otherwise: Name

    def links(self) -> list[tuple[tuple[str | int, ...], str]]:
        out: list[tuple[tuple[str | int, ...], str]] = [
            (("branches", i, "next"), b.next) for i, b in enumerate(self.branches)
        ]
        return [*out, (("otherwise",), self.otherwise)]

    def silent_links(self) -> list[str]:
        return [target for _, target in self.links()]


class LookupNode(_Node):
    """Ask the CRM about the caller (by calling number, or by a collected variable)."""

    kind: Literal["lookup"]
    by: Literal["caller", "variable"] = "caller"
    variable: VarName | None = None
    timeout_s: float = Field(3.0, gt=0, le=30)
    next: Name
    not_found: Name | None = None
    """Where to go when the CRM knows no such customer or does not answer (None: next)."""

    @model_validator(mode="after")
    def _variable(self) -> Self:
        if (self.by == "variable") != (self.variable is not None):
            raise ValueError("give 'variable' exactly when by: variable")
        return self

    def silent_links(self) -> list[str]:
        return [target for _, target in self.links()]


class SetNode(_Node):
    """Set the language, priority, required skills and screen variables of the call."""

    kind: Literal["set"]
    language: Lang | None = None
    priority: int | None = Field(None, ge=0, le=100)
    skills: dict[Name, Annotated[int, Field(ge=1, le=5)]] = {}
    """Required skill -> minimum level, merged into what the queue node asks for."""
    vars: dict[VarName, str] = {}
    next: Name

    def silent_links(self) -> list[str]:
        return [self.next]


class Announce(_Model):
    """Tell a waiting caller their position and estimated wait every `every_s`."""

    every_s: float = Field(30.0, ge=5, le=3600)
    position: Prompts | None = [{ANY_LANGUAGE: Prompt(text="You are caller number")}]
    wait: Prompts | None = [{ANY_LANGUAGE: Prompt(text="Your estimated wait, in minutes, is")}]


class CallbackOffer(_Model):
    """After `after_s` in queue, offer to keep the caller's place and call them back."""

    after_s: float = Field(gt=0, le=7200)
    prompt: Prompts = [
        {ANY_LANGUAGE: Prompt(text="Press 1 to keep your place in the queue and be called back.")}
    ]
    digit: Digit = "1"
    next: Name
    """Where the flow goes once the caller accepted (say thank you, hang up)."""


class QueueNode(_Node):
    """Wait for an agent with music on hold, announcements and a callback offer."""

    kind: Literal["queue"]
    queue: Name
    skills: dict[Name, Annotated[int, Field(ge=1, le=5)]] = {}
    priority: int | None = Field(None, ge=0, le=100)
    music_on_hold: Localized | None = None
    """None: the queue's own music on hold."""
    announce: Announce | None = None
    callback: CallbackOffer | None = None
    max_wait_s: float | None = Field(None, gt=0, le=86400)
    overflow: Name | None = None
    """Where a caller goes after `max_wait_s` (voicemail, another queue...)."""
    after_agent: Name | None = None
    """Where the caller goes when the agent hangs up first (a survey); None: hang up."""

    @model_validator(mode="after")
    def _overflow(self) -> Self:
        if (self.max_wait_s is None) != (self.overflow is None):
            raise ValueError("give 'max_wait_s' and 'overflow' together")
        return self

    def links(self) -> list[tuple[tuple[str | int, ...], str]]:
        out = super().links()
        if self.callback is not None:
            out.append((("callback", "next"), self.callback.next))
        return out

    def prompt_slots(self) -> list[tuple[tuple[str | int, ...], Localized]]:
        out = super().prompt_slots()
        if self.announce is not None:
            for key in ("position", "wait"):
                items = getattr(self.announce, key) or []
                out += [(("announce", key, i), p) for i, p in enumerate(items)]
        if self.callback is not None:
            out += [(("callback", "prompt", i), p) for i, p in enumerate(self.callback.prompt)]
        return out


class TransferNode(_Node):
    """Hand the call to an external number (through the trunk) or to one agent."""

    kind: Literal["transfer"]
    number: Annotated[str, StringConstraints(pattern=r"^\+?[0-9*#]{1,32}$")] | None = None
    agent: Name | None = None
    on_fail: Name | None = None
    """Where to go when the transfer fails (None: hang up)."""

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.number is None) == (self.agent is None):
            raise ValueError("give exactly one of 'number' or 'agent'")
        return self


class VoicemailNode(_Node):
    """Record a message after an optional prompt and a beep."""

    kind: Literal["voicemail"]
    prompt: Prompts | None = None
    mailbox: Name
    """Where the message is filed (a queue or team name); the core makes it a ticket."""
    max_s: float = Field(120.0, gt=0, le=600)
    terminator: Digit | None = "#"
    beep: bool = True
    next: Name | None = None
    """After recording (None: hang up)."""


class HangupNode(_Node):
    kind: Literal["hangup"]
    prompt: Prompts | None = None
    reason: str = "flow ended"


class GotoNode(_Node):
    kind: Literal["goto"]
    next: Name

    def silent_links(self) -> list[str]:
        return [self.next]


class Question(_Model):
    name: Name
    """The key the answer is stored under (`csat`, `nps`...)."""
    prompt: Prompts
    min: int = Field(1, ge=0, le=99)
    max: int = Field(5, ge=0, le=99)

    @model_validator(mode="after")
    def _range(self) -> Self:
        if self.min > self.max:
            raise ValueError("min is larger than max")
        return self


class SurveyNode(_Node):
    """Post-call questions answered by DTMF (CSAT 1-5, NPS 0-10), stored with the call.

    An answer of two digits (10) ends on the second digit, `#`, or a short pause.
    """

    kind: Literal["survey"]
    questions: list[Question] = Field(min_length=1)
    timeout_s: float = Field(6.0, gt=0, le=60)
    retries: int = Field(1, ge=0, le=5)
    """How often a question is asked again after a wrong or missing answer."""
    invalid_prompt: Localized | None = None
    thanks: Prompts | None = None
    next: Name | None = None
    """After the survey (None: hang up)."""

    @model_validator(mode="after")
    def _unique(self) -> Self:
        names = [q.name for q in self.questions]
        if len(set(names)) != len(names):
            raise ValueError("question names must be unique")
        return self

    def prompt_slots(self) -> list[tuple[tuple[str | int, ...], Localized]]:
        out = super().prompt_slots()
        for i, question in enumerate(self.questions):
            out += [(("questions", i, "prompt", j), p) for j, p in enumerate(question.prompt)]
        return out


Node = Annotated[
    PlayNode
    | MenuNode
    | CollectNode
    | ConditionNode
    | LookupNode
    | SetNode
    | QueueNode
    | TransferNode
    | VoicemailNode
    | HangupNode
    | GotoNode
    | SurveyNode,
    Field(discriminator="kind"),
]

INPUT_KINDS = frozenset({"menu", "collect", "survey"})
"""Node kinds that wait for the caller to press (or say) something."""


class Flow(_Model):
    """One call flow: where it starts, what it speaks, and its nodes."""

    start: Name
    languages: list[Lang] = Field(min_length=1)
    default_language: Lang
    voices: dict[Lang, str] = {}
    """espeak-ng voice per language for text prompts without their own voice."""
    digits: dict[Lang, dict[Digit, Prompt]] = {}
    """Per-language prompts for single digits (read-backs, positions); default: the
    digit as text in the language's voice."""
    calendars: dict[Name, Calendar] = {}
    nodes: dict[Name, Node] = Field(min_length=1)

    def voice(self, language: str) -> str:
        return self.voices.get(language) or DEFAULT_VOICES.get(language, language)


class FlowFile(_Model):
    """A file of flows (e.g. `config/flows/demo.yaml`): the `ivr:` section on its own."""

    ivr: dict[Name, Flow] = Field(min_length=1)
