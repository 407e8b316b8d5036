"""The IVR menu engine, driven with a fake clock: no sockets, no sleeping."""

from __future__ import annotations

import pytest

from ivr.engine import (
    CallGone,
    CallStarted,
    DigitPressed,
    Disconnect,
    IllegalTransition,
    IvrEngine,
    MenuSpec,
    PlayPrompt,
    PromptEnded,
    RouteToQueue,
    Session,
    Step,
)

MENU = MenuSpec("main", {"1": "sales", "2": "support"}, timeout_s=5.0, max_retries=2)


def drain(engine: IvrEngine) -> list[object]:
    out = []
    while (cmd := engine.next_command()) is not None:
        out.append(cmd)
    return out


def started() -> tuple[IvrEngine, PlayPrompt]:
    engine = IvrEngine({"main": MENU})
    engine.handle(CallStarted(call_id="c1", menu="main"), now=0.0)
    (play,) = drain(engine)
    assert isinstance(play, PlayPrompt)
    return engine, play


def test_prompt_then_digit_routes_to_queue() -> None:
    """A caller who presses 1 during the prompt is routed to sales at once."""
    engine, play = started()
    assert play.prompts == ("ivr.main.prompt",) and play.barge_in
    engine.handle(DigitPressed(call_id="c1", digit="1"), now=1.0)
    assert drain(engine) == [RouteToQueue(call_id="c1", queue="sales", digits="1")]
    assert engine.session("c1") is None
    assert engine.next_deadline() is None


def test_timeout_repeats_prompt_then_says_goodbye() -> None:
    """No input: the prompt repeats max_retries times, then goodbye and disconnect."""
    engine, play = started()
    seq = play.seq
    for _ in range(MENU.max_retries):
        engine.handle(PromptEnded(call_id="c1", seq=seq), now=engine.next_deadline() or 10.0)
        deadline = engine.next_deadline()
        assert deadline is not None
        engine.handle_timer(now=deadline)
        (again,) = drain(engine)
        assert isinstance(again, PlayPrompt) and again.prompts == ("ivr.main.prompt",)
        seq = again.seq
    engine.handle(PromptEnded(call_id="c1", seq=seq), now=100.0)
    engine.handle_timer(now=105.0)
    (bye,) = drain(engine)
    assert isinstance(bye, PlayPrompt) and bye.prompts == ("ivr.main.goodbye",)
    assert not bye.barge_in
    engine.handle(PromptEnded(call_id="c1", seq=bye.seq), now=106.0)
    assert drain(engine) == [Disconnect(call_id="c1", reason="no valid input")]


def test_timer_does_not_fire_before_deadline() -> None:
    """The no-input timer starts when the prompt ends, not when it starts."""
    engine, play = started()
    assert engine.next_deadline() is None
    engine.handle(PromptEnded(call_id="c1", seq=play.seq), now=3.0)
    assert engine.next_deadline() == 8.0
    engine.handle_timer(now=7.9)
    assert drain(engine) == []


def test_invalid_digit_plays_message_then_menu_again() -> None:
    """A wrong digit plays the invalid-choice message, then the menu prompt."""
    engine, _ = started()
    engine.handle(DigitPressed(call_id="c1", digit="9"), now=1.0)
    (msg,) = drain(engine)
    assert isinstance(msg, PlayPrompt) and msg.prompts == ("ivr.main.invalid",)
    engine.handle(DigitPressed(call_id="c1", digit="1"), now=1.5)  # ignored during message
    assert drain(engine) == []
    engine.handle(PromptEnded(call_id="c1", seq=msg.seq), now=2.0)
    (menu,) = drain(engine)
    assert isinstance(menu, PlayPrompt) and menu.prompts == ("ivr.main.prompt",)
    engine.handle(DigitPressed(call_id="c1", digit="2"), now=3.0)
    assert drain(engine) == [RouteToQueue(call_id="c1", queue="support", digits="2")]


def test_late_end_of_a_barged_prompt_is_ignored() -> None:
    """The end of an interrupted prompt must not count as the end of the next one."""
    engine, play = started()
    engine.handle(DigitPressed(call_id="c1", digit="7"), now=1.0)
    drain(engine)  # the invalid-choice message
    engine.handle(PromptEnded(call_id="c1", seq=play.seq), now=1.01)  # stale
    session = engine.session("c1")
    assert session is not None and session.step is Step.MESSAGE
    assert drain(engine) == []


def test_hangup_forgets_the_session() -> None:
    engine, _ = started()
    engine.handle(CallGone(call_id="c1"), now=2.0)
    assert engine.session("c1") is None
    engine.handle(DigitPressed(call_id="c1", digit="1"), now=3.0)
    assert drain(engine) == []


def test_unknown_menu_disconnects() -> None:
    engine = IvrEngine({"main": MENU})
    engine.handle(CallStarted(call_id="c9", menu="nope"), now=0.0)
    assert drain(engine) == [Disconnect(call_id="c9", reason="unknown menu")]


def test_illegal_step_raises_and_changes_nothing() -> None:
    session = Session(call_id="c1", menu=MENU, step=Step.GOODBYE)
    with pytest.raises(IllegalTransition):
        session.move(Step.PROMPTING)
    assert session.step is Step.GOODBYE
