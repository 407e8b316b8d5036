"""The demo flow (`config/flows/demo.yaml`) walked end to end by pure callers, and a
property test: random caller behaviour never breaks the engine and every call ends."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.engine import FlowEngine, Step
from ivr.events import (
    AgentConnected,
    AgentHungUp,
    CallStarted,
    Collect,
    Customer,
    DigitPressed,
    Disconnect,
    Enqueue,
    FlowCommand,
    FlowEnded,
    FlowEvent,
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
)
from ivr.schema import Flow, FlowFile
from tests.unit.test_ivr_flow_engine import Caller, only, played

DEMO = Path(__file__).resolve().parents[2] / "config" / "flows" / "demo.yaml"
MONDAY_10 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC).timestamp()  # 10:00 in Shanghai
SATURDAY_20 = datetime(2026, 3, 7, 12, 0, tzinfo=UTC).timestamp()  # 20:00 in Shanghai
NATIONAL_DAY = datetime(2026, 10, 1, 2, 0, tzinfo=UTC).timestamp()


OFFICE_HOURS = {"mon-fri": ["09:00-18:00"], "sat": ["10:00-14:00"]}


def demo() -> dict[str, Flow]:
    """The demo flow with real office hours (the shipped demo answers around the clock)."""
    data = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    data["ivr"]["main"]["calendars"]["office"]["hours"] = OFFICE_HOURS
    return FlowFile.model_validate(data).ivr


def key(node: str, slot: str, lang: str) -> str:
    return f"ivr.main.v1.{node}.{slot}.{lang}"


def test_three_level_menu_account_confirm_vip_queue_and_survey() -> None:
    """A Chinese-speaking caller: invalid digit, timeout, sales > orders > status, a
    Luhn-checked account number confirmed, a VIP by CRM data, position announcements,
    then a survey stored after the agent hangs up."""
    engine = FlowEngine(demo())
    call = Caller(engine=engine, now=MONDAY_10, caller="13800000000")
    assert played(call.first) == (
        key("language", "prompt.0", "en"),
        key("language", "prompt.1", "en"),
    )

    lookup = only(call.press("2"), Lookup)
    assert (lookup.by, lookup.value) == ("caller", "13800000000")
    (menu,) = call.send(LookupResult(call_id="c1", seq=lookup.seq, customer=None))
    assert isinstance(menu, Collect) and menu.prompts == (key("main_menu", "prompt.0", "zh"),)
    assert "销售" in menu.speech

    (invalid,) = call.press("8")
    assert played([invalid]) == (key("main_menu", "invalid_prompt", "zh"),)
    call.prompt_ended()
    call.prompt_ended()
    (timeout,) = call.wait()
    assert played([timeout]) == (key("main_menu", "timeout_prompt", "zh"),)
    call.prompt_ended()

    assert played(call.press("1")) == (key("sales_menu", "prompt.0", "zh"),)
    assert played(call.press("2")) == (key("order_menu", "prompt.0", "zh"),)
    assert played(call.press("1")) == (key("account", "prompt.0", "zh"),)
    (readback,) = call.press("79927398713#")
    assert isinstance(readback, Collect)
    assert readback.prompts[0] == key("account", "confirm.intro.0", "zh")
    assert readback.prompts[1:3] == ("ivr.main.v1.digits.zh.7", "ivr.main.v1.digits.zh.9")
    by_account = only(call.press("1"), Lookup)
    assert (by_account.by, by_account.key, by_account.value) == (
        "variable",
        "account",
        "79927398713",
    )

    vip = Customer(customer_id="cust-7", name="王芳", vip=True, tier="gold")
    screen, greeting = call.send(LookupResult(call_id="c1", seq=by_account.seq, customer=vip))
    assert isinstance(screen, SetScreen) and screen.variables["customer.vip"] == "yes"
    assert played([greeting]) == (key("vip_greeting", "prompts.0", "zh"),)
    cmds = call.prompt_ended()
    enqueue = only(cmds, Enqueue)
    assert (enqueue.queue, enqueue.priority, dict(enqueue.skills)) == (
        "support",
        10,
        {"support": 2},
    )
    assert enqueue.language == "zh" and enqueue.keep_caller_after_agent
    assert enqueue.variables["account"] == "79927398713"
    assert enqueue.variables["customer.name"] == "王芳" and enqueue.variables["route"] == "vip"
    steps = [(e.node, e.what) for e in enqueue.timeline]
    assert ("main_menu", "invalid") in steps and ("main_menu", "timeout") in steps
    assert ("account", "confirmed") in steps and ("vip_queue", "queued") in steps

    call.send(QueuePosition(call_id="c1", position=2, ewt_s=90))
    start = call.now
    (announce,) = call.wait()
    assert call.now == start + 30
    assert announce.prompts[1] == "ivr.main.v1.digits.zh.2"  # type: ignore[union-attr]
    assert isinstance(call.prompt_ended()[0], PlayHold)

    call.send(AgentConnected(call_id="c1", agent="bob"))
    (csat,) = call.send(AgentHungUp(call_id="c1"))
    assert played([csat]) == (key("survey", "questions.0.prompt.0", "zh"),)
    call.press("5")
    cmds = call.press("9")
    cmds += call.wait()  # "9" then a pause: NPS 9, not the start of a two-digit answer
    assert only(cmds, StoreSurvey).answers == (("csat", 5), ("nps", 9))
    assert call.prompt_ended()[0] == Disconnect(call_id="c1", reason="survey done")

    catalog = engine.prompt_catalog()
    missing = [
        k
        for cmd in call.out
        if isinstance(cmd, PlayPrompt | Collect)
        for k in cmd.prompts
        if k not in catalog
    ]
    assert missing == []


def test_sales_caller_takes_the_callback_offer() -> None:
    call = Caller(engine=FlowEngine(demo()), now=MONDAY_10)
    lookup = only(call.press("1"), Lookup)
    call.send(LookupResult(call_id="c1", seq=lookup.seq, customer=None))
    call.press("1")
    cmds = call.press("1")
    assert only(cmds, Enqueue).variables == {"topic": "new order"}
    queued_at = call.now
    call.wait()  # t+30: no position known yet, nothing said
    call.wait()  # t+60: the callback offer
    assert call.now == queued_at + 60
    assert played(call.out[-1:]) == (key("sales_queue", "callback.prompt.0", "en"),)
    cmds = call.press("1")
    assert only(cmds, RequestCallback).queue == "sales"
    assert played(cmds) == (key("callback_ok", "prompt.0", "en"),)


def test_after_hours_and_holidays_lead_to_voicemail() -> None:
    for when in (SATURDAY_20, NATIONAL_DAY):
        call = Caller(engine=FlowEngine(demo()), now=when)
        lookup = only(call.press("1"), Lookup)
        (closed,) = call.send(LookupResult(call_id="c1", seq=lookup.seq, customer=None))
        assert played([closed]) == (key("closed", "prompt.0", "en"),)
        call.press("1")
        record = only(call.prompt_ended(), RecordVoicemail)
        assert record.mailbox == "support"


# ---------------------------------------------------------------- property


ACTIONS = st.one_of(
    st.sampled_from("0123456789*#").map(lambda d: ("digit", d)),
    st.sampled_from(
        ["end", "timer", "stale", "vip", "nobody", "position", "agent", "agent_gone"]
    ).map(lambda a: (a, "")),
    st.sampled_from(["support", "销售", "banana"]).map(lambda t: ("speech", t)),
)


def _event(action: tuple[str, str], engine: FlowEngine, out: list[FlowCommand]) -> FlowEvent | None:
    kind, arg = action
    s = engine.session("c1")
    seq = s.seq if s is not None else 0
    lookups = [c for c in out if isinstance(c, Lookup)]
    events: dict[str, Any] = {
        "digit": DigitPressed(call_id="c1", digit=arg),
        "end": PromptEnded(call_id="c1", seq=seq),
        "stale": PromptEnded(call_id="c1", seq=seq - 1),
        "vip": LookupResult(
            call_id="c1",
            seq=lookups[-1].seq if lookups else seq,
            customer=Customer(customer_id="1", vip=True),
        ),
        "nobody": LookupResult(call_id="c1", seq=seq, customer=None),
        "position": QueuePosition(call_id="c1", position=3, ewt_s=200),
        "agent": AgentConnected(call_id="c1", agent="alice"),
        "agent_gone": AgentHungUp(call_id="c1"),
        "speech": SpeechRecognized(call_id="c1", text=arg, confidence=0.8),
    }
    return events.get(kind)


@settings(max_examples=150, deadline=None)
@given(
    start=st.sampled_from([MONDAY_10, SATURDAY_20, NATIONAL_DAY]),
    actions=st.lists(st.tuples(ACTIONS, st.floats(0, 90)), max_size=60),
)
def test_random_callers_never_break_the_engine_and_every_call_ends(
    start: float, actions: list[tuple[tuple[str, str], float]]
) -> None:
    engine = FlowEngine(demo())
    out: list[FlowCommand] = []
    now = start

    def drain() -> None:
        while (cmd := engine.next_command()) is not None:
            out.append(cmd)

    engine.handle(CallStarted(call_id="c1", flow="main", caller="555"), now=now)
    drain()
    for action, dt in actions:
        now += dt
        if action[0] == "timer":
            engine.handle_timer(now=now)
        elif (event := _event(action, engine, out)) is not None:
            engine.handle(event, now=now)
        drain()
        s = engine.session("c1")
        # the deadline heap agrees with the session's own timers
        assert engine.next_deadline() == (s.deadline if s is not None else None)

    # then the caller goes quiet; agents answer and hang up; the call must end
    for _ in range(300):
        s = engine.session("c1")
        if s is None:
            break
        if s.step in (Step.QUEUED, Step.ANNOUNCING):
            engine.handle(AgentConnected(call_id="c1", agent="alice"), now=now)
        elif s.step is Step.CONNECTED:
            engine.handle(AgentHungUp(call_id="c1"), now=now)
        elif s.step in (Step.PLAYING, Step.PROMPTING, Step.MESSAGE):
            now += 2.0
            engine.handle(PromptEnded(call_id="c1", seq=s.seq), now=now)
        else:
            deadline = engine.next_deadline()
            assert deadline is not None, f"stuck in {s.step} at {s.node}"
            now = max(now, deadline)
            engine.handle_timer(now=now)
        drain()
    assert engine.session("c1") is None
    ended = [c for c in out if isinstance(c, FlowEnded)]
    assert len(ended) == 1
    assert out[-1] is ended[0]
    assert engine.next_deadline() is None
