"""The IVR flow engine node by node, driven with a fake clock: no sockets, no sleeping."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from ivr.engine import (
    TRANSITIONS,
    FlowEngine,
    IllegalTransition,
    Session,
    Step,
    luhn_ok,
    state_diagram,
)
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
    Transfer,
    TransferFailed,
    VoicemailRecorded,
)
from ivr.schema import Flow

MONDAY_10_SHANGHAI = datetime(2026, 3, 2, 2, 0, tzinfo=UTC).timestamp()
"""Monday 2 March 2026, 10:00 in Asia/Shanghai (UTC+8)."""


def make_flow(nodes: dict[str, Any], **extra: Any) -> Flow:
    data: dict[str, Any] = {
        "start": next(iter(nodes)),
        "languages": ["en"],
        "default_language": "en",
        "nodes": nodes,
    }
    data.update(extra)
    return Flow.model_validate(data)


class Caller:
    """One call driven through an engine with a fake clock."""

    def __init__(
        self,
        flow: Flow | None = None,
        *,
        engine: FlowEngine | None = None,
        now: float = 1000.0,
        call_id: str = "c1",
        caller: str = "5551234",
        dnis: str = "1000",
    ) -> None:
        self.engine = engine if engine is not None else FlowEngine({"main": flow or _never()})
        self.now = now
        self.call_id = call_id
        self.out: list[FlowCommand] = []
        self.first = self.send(CallStarted(call_id=call_id, flow="main", caller=caller, dnis=dnis))

    def send(self, event: FlowEvent) -> list[FlowCommand]:
        self.engine.handle(event, now=self.now)
        return self.drain()

    def drain(self) -> list[FlowCommand]:
        cmds: list[FlowCommand] = []
        while (cmd := self.engine.next_command()) is not None:
            cmds.append(cmd)
        self.out += cmds
        return cmds

    def press(self, digits: str, gap: float = 0.2) -> list[FlowCommand]:
        cmds: list[FlowCommand] = []
        for digit in digits:
            self.now += gap
            cmds += self.send(DigitPressed(call_id=self.call_id, digit=digit))
        return cmds

    def last_seq(self) -> int:
        for cmd in reversed(self.out):
            if isinstance(cmd, PlayPrompt | Collect):
                return cmd.seq
        raise AssertionError("nothing played yet")

    def prompt_ended(self, after: float = 1.0) -> list[FlowCommand]:
        self.now += after
        return self.send(PromptEnded(call_id=self.call_id, seq=self.last_seq()))

    def wait(self) -> list[FlowCommand]:
        """Jump to the engine's next deadline and fire it."""
        deadline = self.engine.next_deadline()
        assert deadline is not None, "no timer is running"
        assert deadline >= self.now
        self.now = deadline
        self.engine.handle_timer(now=self.now)
        return self.drain()

    def last_lookup(self) -> int:
        return [c for c in self.out if isinstance(c, Lookup)][-1].seq

    @property
    def session(self) -> Session:
        s = self.engine.session(self.call_id)
        assert s is not None
        return s

    def whats(self) -> list[str]:
        return [e.what for e in self.session.timeline]


def _never() -> Flow:
    return make_flow({"bye": {"kind": "hangup"}})


def played(cmds: list[FlowCommand]) -> tuple[str, ...]:
    """All prompt keys played or asked in `cmds`."""
    keys: list[str] = []
    for cmd in cmds:
        if isinstance(cmd, PlayPrompt | Collect):
            keys += cmd.prompts
    return tuple(keys)


def only(cmds: list[FlowCommand], kind: type[Any]) -> Any:
    found = [c for c in cmds if isinstance(c, kind)]
    assert len(found) == 1, f"expected one {kind.__name__} in {cmds}"
    return found[0]


def k(node: str, slot: str, lang: str = "en", version: int = 1) -> str:
    return f"ivr.main.v{version}.{node}.{slot}.{lang}"


MENU = {
    "menu": {
        "kind": "menu",
        "prompt": "Press 1 for sales, 2 for support.",
        "options": {"1": "sales", "2": "support"},
        "timeout_s": 5,
        "max_failures": 2,
        "max_timeouts": 2,
        "invalid_prompt": "Not valid.",
        "timeout_prompt": "I did not hear you.",
        "fallback": "bye",
    },
    "sales": {"kind": "hangup", "reason": "sales"},
    "support": {"kind": "hangup", "reason": "support"},
    "bye": {"kind": "hangup", "prompt": "Goodbye.", "reason": "fallback"},
}


# ---------------------------------------------------------------- play


def test_play_then_next_node_after_the_prompt_ends() -> None:
    """A play node plays its prompts in order and moves on only when they end."""
    call = Caller(
        make_flow(
            {
                "hello": {"kind": "play", "prompts": ["Hello.", "Welcome."], "next": "bye"},
                "bye": {"kind": "hangup", "reason": "done"},
            }
        )
    )
    (play,) = call.first
    assert isinstance(play, PlayPrompt) and not play.barge_in
    assert play.prompts == (k("hello", "prompts.0"), k("hello", "prompts.1"))
    assert call.press("5") == []  # no barge-in: digits are not choices
    cmds = call.prompt_ended()
    assert cmds[0] == Disconnect(call_id="c1", reason="done")
    ended = only(cmds, FlowEnded)
    assert [e.what for e in ended.timeline][-2:] == ["enter", "hangup"]


def test_barge_in_digit_skips_the_prompt_and_reaches_the_menu() -> None:
    """A digit during a barge-in prompt cuts it and is the menu's choice (type-ahead)."""
    call = Caller(
        make_flow(
            {"hello": {"kind": "play", "prompts": "Hi", "barge_in": True, "next": "menu"}, **MENU}
        )
    )
    cmds = call.press("2")
    assert cmds[0] == Disconnect(call_id="c1", reason="support")
    assert played(cmds) == ()  # the menu prompt was never played


def test_late_end_of_a_cut_prompt_is_ignored() -> None:
    """The end of a barged play must not count as the end of what follows."""
    call = Caller(
        make_flow(
            {
                "hello": {"kind": "play", "prompts": "Hi", "barge_in": True, "next": "code"},
                "code": {
                    "kind": "collect",
                    "prompt": "Code?",
                    "into": "code",
                    "min_length": 3,
                    "max_length": 3,
                    "next": "bye",
                },
                "bye": {"kind": "hangup"},
            }
        )
    )
    play_seq = call.last_seq()
    call.press("1")
    assert call.send(PromptEnded(call_id="c1", seq=play_seq)) == []
    assert call.session.step is Step.COLLECTING and call.session.digits == "1"


# ---------------------------------------------------------------- menu


def test_menu_digit_chooses_the_next_node() -> None:
    call = Caller(make_flow(MENU))
    (ask,) = call.first
    assert (
        isinstance(ask, Collect) and ask.max_digits == 1 and ask.prompts == (k("menu", "prompt.0"),)
    )
    assert call.press("1")[0] == Disconnect(call_id="c1", reason="sales")


def test_menu_invalid_digit_plays_message_then_the_menu_again() -> None:
    call = Caller(make_flow(MENU))
    (msg,) = call.press("7")
    assert isinstance(msg, PlayPrompt) and msg.prompts == (k("menu", "invalid_prompt"),)
    assert call.press("1") == []  # digits during the message are not choices
    (again,) = call.prompt_ended()
    assert isinstance(again, Collect) and again.prompts == (k("menu", "prompt.0"),)
    assert call.press("2")[0] == Disconnect(call_id="c1", reason="support")


def test_menu_max_failures_goes_to_the_fallback() -> None:
    call = Caller(make_flow(MENU))
    call.press("7")
    call.prompt_ended()
    (msg,) = call.press("8")  # second failure of max 2: the message, then the fallback
    assert isinstance(msg, PlayPrompt) and msg.prompts == (k("menu", "invalid_prompt"),)
    (bye,) = call.prompt_ended()
    assert isinstance(bye, PlayPrompt) and bye.prompts == (k("bye", "prompt.0"),)
    cmds = call.prompt_ended()
    assert cmds[0] == Disconnect(call_id="c1", reason="fallback")


def test_menu_timeout_starts_when_the_prompt_ends() -> None:
    call = Caller(make_flow(MENU), now=0.0)
    assert call.engine.next_deadline() is None
    call.prompt_ended(after=3.0)
    assert call.engine.next_deadline() == 8.0
    call.engine.handle_timer(now=7.9)
    assert call.drain() == []


def test_menu_timeouts_play_timeout_prompt_then_fallback() -> None:
    call = Caller(make_flow(MENU))
    call.prompt_ended()
    (msg,) = call.wait()
    assert isinstance(msg, PlayPrompt) and msg.prompts == (k("menu", "timeout_prompt"),)
    (again,) = call.prompt_ended()
    assert isinstance(again, Collect)
    call.prompt_ended()
    (msg2,) = call.wait()
    assert msg2.prompts == (k("menu", "timeout_prompt"),)  # type: ignore[union-attr]
    (bye,) = call.prompt_ended()
    assert isinstance(bye, PlayPrompt) and bye.prompts == (k("bye", "prompt.0"),)
    assert call.whats().count("timeout") == 2


def test_menu_without_fallback_hangs_up() -> None:
    nodes = {**MENU, "menu": {**MENU["menu"], "fallback": None, "invalid_prompt": None}}
    call = Caller(make_flow(nodes))
    call.press("7")
    (again,) = call.out[-1:]
    assert isinstance(again, Collect)  # no message: straight back to the question
    cmds = call.press("7")
    assert cmds[0] == Disconnect(call_id="c1", reason="no valid input")


# ---------------------------------------------------------------- speech


SPEECH = {
    "menu": {
        "kind": "menu",
        "prompt": "Say sales or support.",
        "options": {"1": "sales"},
        "speech": {"Sales": "sales", "support": "support"},
        "speech_min_confidence": 0.6,
        "invalid_prompt": "Pardon?",
        "fallback": "sales",
    },
    "sales": {"kind": "hangup", "reason": "sales"},
    "support": {"kind": "hangup", "reason": "support"},
}


def test_menu_asks_for_speech_with_the_phrases_as_grammar() -> None:
    call = Caller(make_flow(SPEECH))
    (ask,) = call.first
    assert isinstance(ask, Collect) and ask.speech == ("Sales", "support") and ask.language == "en"


def test_spoken_option_is_recognised() -> None:
    call = Caller(make_flow(SPEECH))
    cmds = call.send(SpeechRecognized(call_id="c1", text="  SUPPORT ", confidence=0.9))
    assert cmds[0] == Disconnect(call_id="c1", reason="support")
    assert ("speech", "support (0.90)") in [
        (e.what, e.detail) for e in only(cmds, FlowEnded).timeline
    ]


def test_unsure_or_unknown_speech_is_an_invalid_choice() -> None:
    call = Caller(make_flow(SPEECH))
    (msg,) = call.send(SpeechRecognized(call_id="c1", text="support", confidence=0.3))
    assert isinstance(msg, PlayPrompt) and msg.prompts == (k("menu", "invalid_prompt"),)
    call.prompt_ended()
    (msg2,) = call.send(SpeechRecognized(call_id="c1", text="banana", confidence=0.99))
    assert isinstance(msg2, PlayPrompt)
    assert call.send(SpeechRecognized(call_id="c1", text="", confidence=1.0)) == []


# ---------------------------------------------------------------- collect


def collect_flow(**collect: Any) -> Flow:
    node = {
        "kind": "collect",
        "prompt": "Enter your account number.",
        "into": "account",
        "min_length": 4,
        "max_length": 11,
        "inter_digit_timeout_s": 3,
        "timeout_s": 5,
        "invalid_prompt": "Not valid.",
        "max_failures": 2,
        "next": "done",
        "fallback": "failed",
        **collect,
    }
    return make_flow(
        {
            "account": node,
            "done": {"kind": "hangup", "reason": "done"},
            "failed": {"kind": "hangup", "reason": "failed"},
        }
    )


def test_collect_terminator_ends_the_entry() -> None:
    call = Caller(collect_flow())
    (ask,) = call.first
    assert isinstance(ask, Collect)
    assert (ask.max_digits, ask.terminator, ask.inter_digit_timeout_s) == (11, "#", 3.0)
    cmds = call.press("12345#")
    assert only(cmds, FlowEnded).variables == {"account": "12345"}


def test_collect_ends_at_max_length() -> None:
    call = Caller(collect_flow(max_length=4))
    cmds = call.press("9876")
    assert only(cmds, FlowEnded).variables == {"account": "9876"}


def test_collect_inter_digit_timeout_ends_the_entry() -> None:
    call = Caller(collect_flow())
    call.press("123")
    assert call.session.step is Step.COLLECTING
    assert call.engine.next_deadline() == pytest.approx(call.now + 3.0)
    call.press("4")
    cmds = call.wait()
    assert only(cmds, FlowEnded).variables == {"account": "1234"}


def test_collect_too_short_is_invalid_and_asked_again() -> None:
    call = Caller(collect_flow())
    (msg,) = call.press("12#")
    assert isinstance(msg, PlayPrompt) and msg.prompts == (k("account", "invalid_prompt"),)
    (again,) = call.prompt_ended()
    assert isinstance(again, Collect)
    assert call.session.digits == ""


def test_collect_luhn_fail_then_ok() -> None:
    call = Caller(collect_flow(luhn=True))
    (msg,) = call.press("79927398710#")
    assert isinstance(msg, PlayPrompt)
    assert "fails the Luhn check" in call.session.timeline[-1].detail
    call.prompt_ended()
    cmds = call.press("79927398713#")
    assert only(cmds, FlowEnded).variables == {"account": "79927398713"}


def test_collect_pattern() -> None:
    call = Caller(collect_flow(pattern=r"9\d+"))
    call.press("1234#")
    assert call.session.timeline[-1].what == "invalid"
    call.prompt_ended()
    assert only(call.press("9234#"), FlowEnded).variables == {"account": "9234"}


def test_collect_first_digit_timeout_counts_and_falls_back() -> None:
    call = Caller(collect_flow())
    call.prompt_ended()
    (again,) = call.wait()
    assert isinstance(again, Collect)  # a timeout asks again without the invalid message
    call.prompt_ended()
    cmds = call.wait()
    assert cmds[0] == Disconnect(call_id="c1", reason="failed")


def test_collect_confirm_reads_digits_back_and_accepts() -> None:
    call = Caller(collect_flow(confirm={}))
    (readback,) = call.press("4321#")
    assert isinstance(readback, Collect) and readback.max_digits == 1
    assert readback.prompts == (
        k("account", "confirm.intro.0"),
        "ivr.main.v1.digits.en.4",
        "ivr.main.v1.digits.en.3",
        "ivr.main.v1.digits.en.2",
        "ivr.main.v1.digits.en.1",
        k("account", "confirm.outro.0"),
    )
    assert "account" not in call.session.variables  # not before the caller confirms
    cmds = call.press("1")
    assert only(cmds, FlowEnded).variables == {"account": "4321"}
    assert "confirmed" in [e.what for e in only(cmds, FlowEnded).timeline]


def test_collect_confirm_no_asks_for_the_entry_again() -> None:
    call = Caller(collect_flow(confirm={}))
    call.press("4321#")
    (ask,) = call.press("2")
    assert isinstance(ask, Collect) and ask.prompts == (k("account", "prompt.0"),)
    (readback,) = call.press("5678#")
    assert "ivr.main.v1.digits.en.5" in readback.prompts  # type: ignore[union-attr]
    assert only(call.press("1"), FlowEnded).variables == {"account": "5678"}


def test_luhn() -> None:
    assert luhn_ok("79927398713") and luhn_ok("4111111111111111") and luhn_ok("0")
    assert not luhn_ok("79927398710") and not luhn_ok("") and not luhn_ok("12a4")


# ---------------------------------------------------------------- condition


def hours_flow() -> Flow:
    return make_flow(
        {
            "hours": {
                "kind": "condition",
                "branches": [
                    {"when": {"holiday": "office"}, "next": "holiday"},
                    {"when": {"open": "office"}, "next": "open"},
                ],
                "otherwise": "closed",
            },
            "open": {"kind": "hangup", "reason": "open"},
            "closed": {"kind": "hangup", "reason": "closed"},
            "holiday": {"kind": "hangup", "reason": "holiday"},
        },
        calendars={
            "office": {
                "time_zone": "Asia/Shanghai",
                "hours": {"mon-fri": ["09:00-18:00"]},
                "holidays": ["2026-10-01..2026-10-07"],
            }
        },
    )


@pytest.mark.parametrize(
    ("utc", "reason"),
    [
        (datetime(2026, 3, 2, 2, 0, tzinfo=UTC), "open"),  # Mon 10:00 Shanghai
        (datetime(2026, 3, 2, 0, 59, tzinfo=UTC), "closed"),  # Mon 08:59 Shanghai
        (datetime(2026, 3, 1, 23, 0, tzinfo=UTC), "closed"),  # Mon 07:00 Shanghai, Sun in UTC
        (datetime(2026, 3, 6, 9, 59, tzinfo=UTC), "open"),  # Fri 17:59 Shanghai
        (datetime(2026, 3, 7, 2, 0, tzinfo=UTC), "closed"),  # Saturday
        (datetime(2026, 10, 1, 2, 0, tzinfo=UTC), "holiday"),  # Thu, National Day
    ],
)
def test_condition_on_business_hours_in_the_calendars_zone(utc: datetime, reason: str) -> None:
    call = Caller(hours_flow(), now=utc.timestamp())
    assert call.first[0] == Disconnect(call_id="c1", reason=reason)


def test_condition_on_dnis_language_and_variables() -> None:
    flow = make_flow(
        {
            "route": {
                "kind": "condition",
                "branches": [
                    {"when": {"dnis": ["2000"], "language": ["zh"]}, "next": "a"},
                    {"when": {"dnis": ["2000"], "vars": {"x": "1"}}, "next": "b"},
                    {"when": {"dnis": ["2000"]}, "next": "c"},
                ],
                "otherwise": "d",
            },
            **{n: {"kind": "hangup", "reason": n} for n in "abcd"},
        },
        languages=["en", "zh"],
    )
    assert Caller(flow, dnis="2000").first[0] == Disconnect(call_id="c1", reason="c")
    assert Caller(flow, dnis="1000").first[0] == Disconnect(call_id="c1", reason="d")


# ---------------------------------------------------------------- lookup


def lookup_flow(**lookup: Any) -> Flow:
    return make_flow(
        {
            "who": {"kind": "lookup", "next": "vip", "not_found": "stranger", **lookup},
            "vip": {
                "kind": "condition",
                "branches": [
                    {"when": {"vip": True}, "next": "gold"},
                    {"when": {"ticket_priority": ["urgent"]}, "next": "urgent"},
                ],
                "otherwise": "normal",
            },
            **{
                n: {"kind": "hangup", "reason": n} for n in ("gold", "urgent", "normal", "stranger")
            },
        },
        languages=["en", "zh"],
    )


def test_lookup_by_caller_and_vip_branch() -> None:
    call = Caller(lookup_flow(timeout_s=2), caller="+8613800000000")
    (ask,) = call.first
    assert ask == Lookup(
        call_id="c1", seq=call.last_lookup(), by="caller", key="caller", value="+8613800000000"
    )
    vip = Customer(
        customer_id="42",
        name="Wang Fang",
        tier="gold",
        vip=True,
        language="zh",
        fields={"city": "Suzhou"},
    )
    cmds = call.send(LookupResult(call_id="c1", seq=call.last_lookup(), customer=vip))
    screen = only(cmds, SetScreen)
    assert screen.variables["customer.name"] == "Wang Fang"
    assert screen.variables["customer.city"] == "Suzhou"
    assert cmds[1] == Disconnect(call_id="c1", reason="gold")


def test_lookup_result_adopts_the_customers_language_unless_chosen() -> None:
    """The CRM's language applies to a caller who did not choose one in the flow."""
    nodes = {
        "who": {"kind": "lookup", "next": "hello"},
        "hello": {"kind": "play", "prompts": {"en": "Hello", "zh": "你好"}, "next": "bye"},
        "bye": {"kind": "hangup"},
    }
    call = Caller(make_flow(nodes, languages=["en", "zh"]))
    cust = Customer(customer_id="1", language="zh")
    cmds = call.send(LookupResult(call_id="c1", seq=call.last_lookup(), customer=cust))
    assert played(cmds) == (k("hello", "prompts.0", "zh"),)

    chosen = {"pick": {"kind": "set", "language": "en", "next": "who"}, **nodes}
    call = Caller(make_flow(chosen, languages=["en", "zh"]), call_id="c2")
    cmds = call.send(LookupResult(call_id="c2", seq=call.last_lookup(), customer=cust))
    assert played(cmds) == (k("hello", "prompts.0", "en"),)


def test_lookup_not_found_timeout_and_stale_answers() -> None:
    call = Caller(lookup_flow())
    seq = call.last_lookup()
    assert call.send(LookupResult(call_id="c1", seq=seq - 1, customer=None)) == []
    cmds = call.send(LookupResult(call_id="c1", seq=seq, customer=None))
    assert cmds[0] == Disconnect(call_id="c1", reason="stranger")

    slow = Caller(lookup_flow(timeout_s=2), call_id="c2")
    assert slow.engine.next_deadline() == pytest.approx(slow.now + 2)
    assert slow.wait()[0] == Disconnect(call_id="c2", reason="stranger")

    urgent = Caller(lookup_flow(), call_id="c3")
    cust = Customer(customer_id="7", ticket_priority="urgent")
    cmds = urgent.send(LookupResult(call_id="c3", seq=urgent.last_lookup(), customer=cust))
    assert Disconnect(call_id="c3", reason="urgent") in cmds


def test_lookup_by_collected_variable() -> None:
    flow = make_flow(
        {
            "acct": {
                "kind": "collect",
                "prompt": "Account?",
                "into": "account",
                "max_length": 4,
                "next": "who",
            },
            "who": {"kind": "lookup", "by": "variable", "variable": "account", "next": "bye"},
            "bye": {"kind": "hangup"},
        }
    )
    call = Caller(flow)
    lookup = only(call.press("1234"), Lookup)
    assert (lookup.by, lookup.key, lookup.value) == ("variable", "account", "1234")


# ---------------------------------------------------------------- set + queue


def queue_flow(**queue: Any) -> Flow:
    return make_flow(
        {
            "prep": {
                "kind": "set",
                "priority": 5,
                "skills": {"sales": 2},
                "vars": {"topic": "order"},
                "next": "wait",
            },
            "wait": {
                "kind": "queue",
                "queue": "sales",
                "skills": {"sales": 1, "zh": 3},
                "announce": {"every_s": 30},
                "callback": {"after_s": 90, "next": "cb"},
                "max_wait_s": 600,
                "overflow": "vm",
                "after_agent": "survey",
                **queue,
            },
            "cb": {"kind": "hangup", "reason": "callback"},
            "vm": {"kind": "voicemail", "mailbox": "sales"},
            "survey": {
                "kind": "survey",
                "questions": [
                    {"name": "csat", "prompt": "Rate us 1 to 5."},
                    {"name": "nps", "prompt": "0 to 10?", "min": 0, "max": 10},
                ],
                "invalid_prompt": "Please try again.",
                "thanks": "Thanks!",
            },
        }
    )


def test_set_and_queue_command_fields() -> None:
    call = Caller(queue_flow())
    screen, enqueue, hold = call.first
    assert screen == SetScreen(call_id="c1", variables={"topic": "order"})
    assert isinstance(enqueue, Enqueue)
    assert enqueue.queue == "sales" and enqueue.caller == "5551234"
    assert dict(enqueue.skills) == {"sales": 2, "zh": 3}  # the stricter level wins
    assert enqueue.priority == 5
    assert (enqueue.announce_every_s, enqueue.callback_after_s) == (30, 90)
    assert enqueue.keep_caller_after_agent
    assert enqueue.variables == {"topic": "order"}
    assert [e.what for e in enqueue.timeline] == ["start", "enter", "set", "enter", "queued"]
    assert hold == PlayHold(call_id="c1", queue="sales")


def test_queue_announces_position_and_wait_every_n_seconds() -> None:
    call = Caller(queue_flow(callback=None, max_wait_s=None, overflow=None), now=0.0)
    assert call.wait() == []  # t=30: nothing known about the caller's place yet
    call.send(QueuePosition(call_id="c1", position=12, ewt_s=130))
    (announce,) = call.wait()
    assert call.now == 60.0
    assert isinstance(announce, PlayPrompt) and not announce.barge_in
    assert announce.prompts == (
        k("wait", "announce.position.0"),
        "ivr.main.v1.digits.en.1",
        "ivr.main.v1.digits.en.2",
        k("wait", "announce.wait.0"),
        "ivr.main.v1.digits.en.3",  # 130 s: about 3 minutes
    )
    assert call.prompt_ended() == [PlayHold(call_id="c1", queue="sales")]
    call.send(QueuePosition(call_id="c1", position=3, ewt_s=20))
    (again,) = call.wait()
    assert call.now == 90.0
    assert "ivr.main.v1.digits.en.3" in again.prompts  # type: ignore[union-attr]


def test_queue_offers_callback_and_caller_accepts() -> None:
    call = Caller(queue_flow(announce=None), now=0.0)
    assert call.press("1") == []  # not offered yet
    (offer,) = call.wait()
    assert call.now == 90.0
    assert isinstance(offer, PlayPrompt) and offer.barge_in
    assert offer.prompts == (k("wait", "callback.prompt.0"),)
    cmds = call.press("1")
    request = only(cmds, RequestCallback)
    assert (request.queue, request.number) == ("sales", "5551234")
    assert Disconnect(call_id="c1", reason="callback") in cmds


def test_queue_overflow_after_max_wait() -> None:
    call = Caller(queue_flow(announce=None, callback=None), now=0.0)
    cmds = call.wait()
    assert call.now == 600.0
    assert cmds[0] == LeaveQueue(call_id="c1", queue="sales", reason="max wait")
    assert isinstance(cmds[1], RecordVoicemail)


def test_agent_answer_stops_queue_timers_and_survey_follows_hang_up() -> None:
    """CSAT 4 and NPS 10 (two digits) are stored when the agent hangs up first."""
    call = Caller(queue_flow(), now=0.0)
    call.now = 20.0
    call.send(AgentConnected(call_id="c1", agent="alice"))
    assert call.engine.next_deadline() is None
    assert call.session.step is Step.CONNECTED
    (q1,) = call.send(AgentHungUp(call_id="c1"))
    assert isinstance(q1, Collect) and q1.max_digits == 1
    (q2,) = call.press("4")
    assert isinstance(q2, Collect) and q2.max_digits == 2
    cmds = call.press("10")
    survey = only(cmds, StoreSurvey)
    assert survey.answers == (("csat", 4), ("nps", 10)) and survey.complete
    assert played(cmds) == (k("survey", "thanks.0"),)
    assert call.prompt_ended()[0] == Disconnect(call_id="c1", reason="survey done")


def test_survey_single_digit_answer_ends_on_a_pause_and_invalid_is_retried() -> None:
    call = Caller(queue_flow(), now=0.0)
    call.send(AgentConnected(call_id="c1", agent="alice"))
    call.send(AgentHungUp(call_id="c1"))
    (msg,) = call.press("9")  # CSAT is 1-5
    assert isinstance(msg, PlayPrompt) and msg.prompts == (k("survey", "invalid_prompt"),)
    call.prompt_ended()
    call.press("5")
    call.press("7")  # NPS: "7" and a pause
    cmds = call.wait()
    assert only(cmds, StoreSurvey).answers == (("csat", 5), ("nps", 7))


def test_survey_unanswered_and_caller_hanging_up_mid_survey() -> None:
    call = Caller(queue_flow(), now=0.0)
    call.send(AgentConnected(call_id="c1", agent="alice"))
    call.send(AgentHungUp(call_id="c1"))
    call.press("3")
    call.prompt_ended()
    cmds = call.send(CallGone(call_id="c1"))
    survey = only(cmds, StoreSurvey)
    assert survey.answers == (("csat", 3), ("nps", None)) and not survey.complete
    assert only(cmds, FlowEnded).reason == "caller hung up"

    quiet = Caller(queue_flow(), now=0.0, call_id="c2")
    quiet.send(AgentConnected(call_id="c2", agent="bob"))
    quiet.send(AgentHungUp(call_id="c2"))
    for _ in range(4):  # two questions, each asked twice (retries: 1), no answer
        quiet.prompt_ended()
        cmds = quiet.wait()
    assert only(cmds, StoreSurvey).answers == (("csat", None), ("nps", None))


def test_agent_hang_up_without_survey_ends_the_flow() -> None:
    call = Caller(queue_flow(after_agent=None))
    call.send(AgentConnected(call_id="c1", agent="alice"))
    cmds = call.send(AgentHungUp(call_id="c1"))
    assert cmds[0] == Disconnect(call_id="c1", reason="agent hung up")


# ---------------------------------------------------------------- transfer, voicemail, goto


def test_transfer_to_external_number_ends_the_flow() -> None:
    flow = make_flow({"out": {"kind": "transfer", "number": "+4930123456"}})
    cmds = Caller(flow).first
    transfer = only(cmds, Transfer)
    assert (transfer.number, transfer.agent, transfer.caller) == ("+4930123456", None, "5551234")
    assert only(cmds, FlowEnded).reason == "transferred"


def test_failed_transfer_to_agent_goes_to_on_fail() -> None:
    flow = make_flow(
        {
            "out": {"kind": "transfer", "agent": "alice", "on_fail": "vm"},
            "vm": {
                "kind": "voicemail",
                "mailbox": "sales",
                "max_s": 60,
                "prompt": "Leave a message.",
                "next": "bye",
            },
            "bye": {"kind": "hangup", "reason": "bye"},
        }
    )
    call = Caller(flow)
    assert only(call.first, Transfer).agent == "alice"
    assert call.session.step is Step.TRANSFERRING
    (intro,) = call.send(TransferFailed(call_id="c1", reason="busy"))
    assert isinstance(intro, PlayPrompt) and intro.prompts == (k("vm", "prompt.0"),)
    (record,) = call.prompt_ended()
    assert isinstance(record, RecordVoicemail)
    assert (record.mailbox, record.max_s, record.terminator, record.beep) == (
        "sales",
        60,
        "#",
        True,
    )
    cmds = call.send(
        VoicemailRecorded(call_id="c1", seq=record.seq, path="/vm/c1.wav", duration_s=12.5)
    )
    ended = only(cmds, FlowEnded)
    assert ended.variables["voicemail"] == "/vm/c1.wav"
    assert ended.reason == "bye"


def test_voicemail_moves_on_when_the_recording_is_never_reported() -> None:
    flow = make_flow({"vm": {"kind": "voicemail", "mailbox": "sales", "max_s": 30}})
    call = Caller(flow, now=0.0)
    cmds = call.wait()
    assert call.now == 40.0
    assert cmds[0] == Disconnect(call_id="c1", reason="voicemail left")


def test_goto_and_hangup_with_goodbye() -> None:
    flow = make_flow(
        {
            "jump": {"kind": "goto", "next": "bye"},
            "bye": {"kind": "hangup", "prompt": "Goodbye.", "reason": "bye"},
        }
    )
    call = Caller(flow)
    (bye,) = call.first
    assert isinstance(bye, PlayPrompt) and bye.prompts == (k("bye", "prompt.0"),)
    cmds = call.prompt_ended()
    assert cmds[0] == Disconnect(call_id="c1", reason="bye")
    assert [(e.node, e.what) for e in only(cmds, FlowEnded).timeline][:3] == [
        ("", "start"),
        ("jump", "enter"),
        ("bye", "enter"),
    ]


# ---------------------------------------------------------------- languages, versions, misc


LANG_FLOW = {
    "start": "choose",
    "languages": ["en", "zh"],
    "default_language": "en",
    "nodes": {
        "choose": {
            "kind": "menu",
            "prompt": [
                {"text": "English, 1.", "voice": "en-us"},
                {"text": "中文请按2。", "voice": "cmn"},
            ],
            "options": {"1": "en", "2": "zh"},
        },
        "en": {"kind": "set", "language": "en", "next": "hello"},
        "zh": {"kind": "set", "language": "zh", "next": "hello"},
        "hello": {
            "kind": "play",
            "prompts": {"en": {"text": "Hello"}, "zh": {"text": "你好"}},
            "next": "bye",
        },
        "bye": {"kind": "hangup"},
    },
}


def test_language_choice_picks_prompts_per_language() -> None:
    engine = FlowEngine({"main": Flow.model_validate(LANG_FLOW)})
    call = Caller(engine=engine)
    (hello,) = call.press("2")
    assert isinstance(hello, PlayPrompt) and hello.prompts == (k("hello", "prompts.0", "zh"),)
    catalog = engine.prompt_catalog()
    assert catalog[k("hello", "prompts.0", "zh")].text == "你好"
    assert catalog[k("hello", "prompts.0", "zh")].voice == "cmn"
    assert catalog[k("hello", "prompts.0", "en")].voice == "en-us"
    assert catalog["ivr.main.v1.digits.zh.7"].voice == "cmn"


def test_a_call_keeps_the_flow_version_it_started_with() -> None:
    """`kefu config reload`: new flows for new calls; a running call finishes on its own."""
    v1 = make_flow(MENU)
    v2 = make_flow({**MENU, "menu": {**MENU["menu"], "options": {"1": "support"}}})
    engine = FlowEngine({"main": v1}, version=1)
    old = Caller(engine=engine, call_id="old")
    engine.load_flows({"main": v2}, version=2)
    new = Caller(engine=engine, call_id="new")
    assert engine.versions() == (1, 2)
    assert played(old.first) == (k("menu", "prompt.0", version=1),)
    assert played(new.first) == (k("menu", "prompt.0", version=2),)
    assert k("menu", "prompt.0", version=1) in engine.prompt_catalog()
    assert played(old.press("7")) == (k("menu", "invalid_prompt", version=1),)
    assert played(old.prompt_ended()) == (k("menu", "prompt.0", version=1),)
    assert old.press("1")[0] == Disconnect(call_id="old", reason="sales")
    assert engine.versions() == (2,)  # nobody uses version 1 any more
    assert new.press("1")[0] == Disconnect(call_id="new", reason="support")
    with pytest.raises(ValueError, match="not newer"):
        engine.load_flows({"main": v1}, version=2)


def test_unknown_flow_disconnects() -> None:
    engine = FlowEngine({"main": make_flow(MENU)})
    engine.handle(CallStarted(call_id="c9", flow="nope"), now=0.0)
    assert engine.next_command() == Disconnect(call_id="c9", reason="unknown flow")


def test_caller_hang_up_forgets_the_session() -> None:
    call = Caller(make_flow(MENU))
    cmds = call.send(CallGone(call_id="c1"))
    assert only(cmds, FlowEnded).reason == "caller hung up"
    assert call.engine.session("c1") is None
    assert call.send(DigitPressed(call_id="c1", digit="1")) == []


def test_illegal_step_raises_and_changes_nothing() -> None:
    session = Session(
        call_id="c1",
        flow_name="main",
        version=1,
        flow=make_flow(MENU),
        caller="",
        dnis="",
        language="en",
        step=Step.CONNECTED,
    )
    with pytest.raises(IllegalTransition):
        session.move(Step.ANNOUNCING)
    assert session.step is Step.CONNECTED
    done = Session(
        call_id="c1",
        flow_name="main",
        version=1,
        flow=make_flow(MENU),
        caller="",
        dnis="",
        language="en",
        step=Step.DONE,
    )
    with pytest.raises(IllegalTransition):
        done.move(Step.PLAYING)


def test_an_unvalidated_silent_loop_is_cut_off() -> None:
    flow = make_flow(
        {"a": {"kind": "goto", "next": "b"}, "b": {"kind": "set", "vars": {"x": "1"}, "next": "a"}}
    )
    cmds = Caller(flow).first
    assert Disconnect(call_id="c1", reason="flow loops without caller input") in cmds


def test_state_diagram_is_drawn_from_the_table() -> None:
    diagram = state_diagram()
    assert "QUEUED --> CONNECTED" in diagram and "CONNECTED --> ANNOUNCING" not in diagram
    assert diagram.count(" --> ") == sum(len(t) for t in TRANSITIONS.values()) + 2


def test_timers_of_many_calls_fire_in_order_and_a_moved_deadline_waits() -> None:
    """The deadline heap: each call's own timeout, in order, none early or twice."""
    flow = make_flow(
        {
            "m": {"kind": "menu", "prompt": {"text": "?"}, "options": {"1": "bye"},
                  "timeout_s": 5, "max_timeouts": 1, "fallback": "bye"},
            "bye": {"kind": "hangup"},
        }
    )  # fmt: skip
    engine = FlowEngine({"main": flow})
    for i in range(3):
        engine.handle(CallStarted(call_id=f"c{i}", flow="main"), now=100.0 + i)
        s = engine.session(f"c{i}")
        assert s is not None
        engine.handle(PromptEnded(call_id=f"c{i}", seq=s.seq), now=100.0 + i)
    while engine.next_command() is not None:
        pass
    assert engine.next_deadline() == 105.0
    # c0 presses a digit at 104: its menu ends, the next deadline is c1's
    engine.handle(DigitPressed(call_id="c0", digit="1"), now=104.0)
    assert engine.next_deadline() == 106.0
    engine.handle_timer(now=106.5)
    assert engine.session("c1") is None and engine.session("c2") is not None
    assert engine.next_deadline() == 107.0
