"""The queue engine's side of transfers, with a fake clock: blind to a queue or to a
named agent, a named agent who does not answer, consultations completed and dropped."""

from __future__ import annotations

import pytest

from acd.engine import (
    AcdEngine,
    AgentLoggedIn,
    AgentSetAvailable,
    AgentSetAway,
    AgentState,
    CallLeft,
    CancelOffer,
    ConsultCompleted,
    Enqueue,
    IllegalTransition,
    OfferAnswered,
    OfferCall,
    OfferFailed,
    Transfer,
)
from tests.unit.test_acd_engine import AGENTS, QUEUES, drain  # the same small center


def offers(commands: list[object]) -> list[tuple[str, str, str]]:
    return [(c.call_id, c.agent_id, c.queue) for c in commands if isinstance(c, OfferCall)]


def state(engine: AcdEngine, agent: str) -> AgentState:
    return engine.agent(agent).state


@pytest.fixture
def on_call() -> AcdEngine:
    """alice (sales) is on call c1; bob and carol are logged in and free."""
    engine = AcdEngine(QUEUES, AGENTS)
    engine.handle(AgentLoggedIn(agent_id="alice"), now=0)
    engine.handle(Enqueue(call_id="c1", queue="sales", caller="555"), now=1)
    engine.handle(OfferAnswered(call_id="c1"), now=2)
    engine.handle(AgentLoggedIn(agent_id="bob"), now=3)
    engine.handle(AgentLoggedIn(agent_id="carol"), now=4)
    drain(engine)
    return engine


def test_blind_transfer_to_a_queue_wraps_the_agent_up_and_routes_the_call(
    on_call: AcdEngine,
) -> None:
    on_call.handle(Transfer(call_id="c1", queue="support", caller="555", priority=5), now=10)
    assert state(on_call, "alice") is AgentState.WRAP_UP
    # bob has been idle longer than carol: longest idle in support
    assert offers(drain(on_call)) == [("c1", "bob", "support")]
    on_call.handle(OfferAnswered(call_id="c1"), now=12)
    assert state(on_call, "bob") is AgentState.ON_CALL
    assert [t.strategy for t in on_call.trace("c1")] == ["longest_idle", "longest_idle"]
    on_call.handle(CallLeft(call_id="c1"), now=20)
    assert state(on_call, "bob") is AgentState.WRAP_UP
    assert on_call.agent("bob").wrapup_until == 50  # support's wrap-up: the queue it left


def test_blind_transfer_to_a_named_agent_offers_it_at_once(on_call: AcdEngine) -> None:
    on_call.handle(Transfer(call_id="c1", queue="sales", caller="555", agent="carol"), now=10)
    commands = drain(on_call)
    assert offers(commands) == [("c1", "carol", "sales")]
    trace = on_call.trace("c1")[-1]
    assert (trace.strategy, trace.winner) == ("direct", "carol")
    assert state(on_call, "carol") is AgentState.RESERVED


def test_a_named_agent_who_does_not_answer_leaves_the_call_to_the_queue(
    on_call: AcdEngine,
) -> None:
    on_call.handle(Transfer(call_id="c1", queue="support", caller="555", agent="carol"), now=10)
    drain(on_call)
    on_call.handle(OfferFailed(call_id="c1", reason="no_answer"), now=14)
    # anyone in support now; carol sits out one ring cycle
    assert offers(drain(on_call)) == [("c1", "bob", "support")]


def test_a_named_agent_who_is_not_free_refuses_the_transfer_and_nothing_changes(
    on_call: AcdEngine,
) -> None:
    on_call.handle(AgentSetAway(agent_id="carol", reason="lunch"), now=5)
    drain(on_call)
    with pytest.raises(IllegalTransition, match="carol is away \\(lunch\\)"):
        on_call.handle(Transfer(call_id="c1", queue="sales", caller="555", agent="carol"), now=10)
    with pytest.raises(IllegalTransition, match="already has"):
        on_call.handle(Transfer(call_id="c1", queue="sales", caller="555", agent="alice"), now=10)
    with pytest.raises(KeyError, match="nobody"):
        on_call.handle(Transfer(call_id="c1", queue="sales", caller="555", agent="nobody"), now=10)
    with pytest.raises(KeyError, match="billing"):
        on_call.handle(Transfer(call_id="c1", queue="billing", caller="555"), now=10)
    with pytest.raises(IllegalTransition, match="not on an agent"):
        on_call.handle(Transfer(call_id="c9", queue="sales", caller="555"), now=10)
    assert state(on_call, "alice") is AgentState.ON_CALL
    assert drain(on_call) == []


def test_a_completed_consultation_hands_the_call_over(on_call: AcdEngine) -> None:
    on_call.handle(Enqueue(call_id="c1~1", queue="support", caller="alice", agent="bob"), now=10)
    assert offers(drain(on_call)) == [("c1~1", "bob", "support")]
    with pytest.raises(IllegalTransition, match="not answered"):
        on_call.handle(ConsultCompleted(call_id="c1", consult_id="c1~1"), now=11)
    on_call.handle(OfferAnswered(call_id="c1~1"), now=12)
    assert state(on_call, "alice") is AgentState.ON_CALL  # alice keeps the caller meanwhile
    on_call.handle(ConsultCompleted(call_id="c1", consult_id="c1~1"), now=20)
    assert state(on_call, "alice") is AgentState.WRAP_UP
    assert on_call.agent("alice").wrapup_until == 30  # sales, the queue she handled
    assert state(on_call, "bob") is AgentState.ON_CALL
    assert on_call.agent("bob").call_id == "c1"
    on_call.handle(CallLeft(call_id="c1"), now=40)
    assert state(on_call, "bob") is AgentState.WRAP_UP
    assert on_call.agent("bob").wrapup_until == 70  # support: where he was consulted


def test_a_consultation_through_a_queue_can_be_dropped_while_it_waits_or_rings(
    on_call: AcdEngine,
) -> None:
    on_call.handle(AgentSetAway(agent_id="bob", reason="break"), now=5)
    on_call.handle(AgentSetAway(agent_id="carol", reason="break"), now=5)
    on_call.handle(Enqueue(call_id="c1~1", queue="support", caller="alice", priority=100), now=10)
    assert on_call.position("c1~1") == 1
    on_call.handle(CallLeft(call_id="c1~1"), now=11)
    assert on_call.position("c1~1") is None

    on_call.handle(Enqueue(call_id="c1~2", queue="support", caller="alice", priority=100), now=12)
    drain(on_call)
    on_call.handle(AgentSetAvailable(agent_id="bob"), now=13)
    assert offers(drain(on_call)) == [("c1~2", "bob", "support")]
    on_call.handle(CallLeft(call_id="c1~2"), now=14)
    commands = drain(on_call)
    assert CancelOffer(call_id="c1~2", agent_id="bob") in commands
    assert state(on_call, "bob") is AgentState.AVAILABLE
    assert state(on_call, "alice") is AgentState.ON_CALL
