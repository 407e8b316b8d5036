"""The queue engine with a fake clock: longest idle, ring timeout, wrap-up, abandon.

The walking skeleton's behaviour, kept; issue 3's rules are in `test_acd_rules.py`.
"""

from __future__ import annotations

import pytest

from acd.engine import (
    RETRY_S,
    AcdEngine,
    AgentLoggedIn,
    AgentLoggedOut,
    AgentSetAvailable,
    AgentSpec,
    AgentState,
    CallLeft,
    CancelOffer,
    Enqueue,
    IllegalTransition,
    OfferAnswered,
    OfferCall,
    OfferFailed,
    QueueSpec,
)
from wire.events import AgentStateChanged, CallQueued

QUEUES = [
    QueueSpec(name="sales", skill="sales", ring_timeout_s=15, wrapup_s=10),
    QueueSpec(name="support", skill="support", ring_timeout_s=15, wrapup_s=30),
]
AGENTS = [
    AgentSpec(agent_id="alice", skills=frozenset({"sales"})),
    AgentSpec(agent_id="bob", skills=frozenset({"support"})),
    AgentSpec(agent_id="carol", skills=frozenset({"sales", "support"})),
]


def drain(engine: AcdEngine) -> list[object]:
    out = []
    while (cmd := engine.next_command()) is not None:
        out.append(cmd)
    return out


def offers(commands: list[object]) -> list[OfferCall]:
    return [c for c in commands if isinstance(c, OfferCall)]


def engine_with(*logged_in: tuple[str, float]) -> AcdEngine:
    engine = AcdEngine(QUEUES, AGENTS)
    for agent_id, when in logged_in:
        engine.handle(AgentLoggedIn(agent_id=agent_id), now=when)
    drain(engine)
    return engine


def test_longest_idle_skilled_agent_gets_the_call() -> None:
    """carol has been idle longer than alice, so the sales call rings carol."""
    engine = engine_with(("carol", 0.0), ("alice", 5.0), ("bob", 1.0))
    engine.handle(Enqueue(call_id="c1", queue="sales", caller="555"), now=10.0)
    cmds = drain(engine)
    assert CallQueued(call_id="c1", queue="sales", caller="555", position=1) in cmds
    assert offers(cmds) == [OfferCall(call_id="c1", agent_id="carol", queue="sales")]
    assert engine.agent("carol").state is AgentState.RESERVED


def test_no_agent_with_skill_keeps_call_waiting() -> None:
    engine = engine_with(("bob", 0.0))
    engine.handle(Enqueue(call_id="c1", queue="sales", caller="555"), now=1.0)
    assert offers(drain(engine)) == []
    assert engine.position("c1") == 1
    engine.handle(AgentLoggedIn(agent_id="alice"), now=30.0)
    assert offers(drain(engine)) == [OfferCall(call_id="c1", agent_id="alice", queue="sales")]


def test_agent_serving_two_queues_takes_the_longest_waiting_call() -> None:
    engine = engine_with()
    engine.handle(Enqueue(call_id="late", queue="sales", caller="1"), now=20.0)
    engine.handle(Enqueue(call_id="early", queue="support", caller="2"), now=10.0)
    drain(engine)
    engine.handle(AgentLoggedIn(agent_id="carol"), now=25.0)
    assert offers(drain(engine))[0].call_id == "early"


def test_ring_timeout_keeps_the_place_and_goes_to_the_next_agent() -> None:
    """No answer in 15 s: the call keeps its place and rings the next agent; one miss
    does not send the agent away (default `no_answer_limit` is 2), but the agent sits
    out that call for one ring cycle and takes the next one instead."""
    engine = engine_with(("alice", 0.0))
    engine.handle(Enqueue(call_id="c1", queue="sales", caller="1"), now=1.0)
    engine.handle(Enqueue(call_id="c2", queue="sales", caller="2"), now=2.0)
    drain(engine)
    deadline = engine.next_deadline()
    assert deadline == 16.0
    engine.handle_timer(now=15.9)
    assert drain(engine) == []
    engine.handle_timer(now=deadline)
    cmds = drain(engine)
    assert CancelOffer(call_id="c1", agent_id="alice") in cmds
    assert AgentStateChanged(agent="alice", state="away", reason="no_answer") not in cmds
    assert offers(cmds) == [OfferCall(call_id="c2", agent_id="alice", queue="sales")]
    assert engine.position("c1") == 1
    engine.handle(AgentLoggedIn(agent_id="carol"), now=17.0)
    assert offers(drain(engine)) == [OfferCall(call_id="c1", agent_id="carol", queue="sales")]


def test_two_misses_in_a_row_send_the_agent_away_no_answer() -> None:
    engine = engine_with(("alice", 0.0))
    engine.handle(Enqueue(call_id="c1", queue="sales", caller="1"), now=1.0)
    engine.handle(Enqueue(call_id="c2", queue="sales", caller="2"), now=2.0)
    drain(engine)
    engine.handle_timer(now=16.0)  # alice misses c1, is offered c2
    assert engine.agent("alice").state is AgentState.RESERVED
    engine.handle_timer(now=31.0)  # and misses c2 too
    cmds = drain(engine)
    assert AgentStateChanged(agent="alice", state="away", reason="no_answer") in cmds
    assert [c.call_id for c in engine.waiting("sales")] == ["c1", "c2"]


def test_an_answer_resets_the_no_answer_count() -> None:
    engine = engine_with(("alice", 0.0))
    for i, at in enumerate((1.0, 2.0, 3.0)):
        engine.handle(Enqueue(call_id=f"c{i}", queue="sales", caller="1"), now=at)
    engine.handle_timer(now=16.0)  # miss c0; c1 rings
    engine.handle(OfferAnswered(call_id="c1"), now=17.0)
    engine.handle(CallLeft(call_id="c1"), now=20.0)
    engine.handle_timer(now=30.0)  # wrap-up over; c0 (skip expired at 31) not yet: c2
    engine.handle_timer(now=45.0)  # miss c2: one miss since the answer
    assert engine.agent("alice").state is not AgentState.AWAY


def test_no_answer_limit_one_is_the_walking_skeleton_behaviour() -> None:
    agents = [AgentSpec(agent_id="alice", skills=frozenset({"sales"}), no_answer_limit=1)]
    engine = AcdEngine(QUEUES, agents)
    engine.handle(AgentLoggedIn(agent_id="alice"), now=0.0)
    engine.handle(Enqueue(call_id="c1", queue="sales", caller="1"), now=1.0)
    drain(engine)
    engine.handle_timer(now=16.0)
    assert AgentStateChanged(agent="alice", state="away", reason="no_answer") in drain(engine)


def test_failed_agent_leg_requeues_without_waiting_for_timeout() -> None:
    engine = engine_with(("alice", 0.0), ("carol", 1.0))
    engine.handle(Enqueue(call_id="c1", queue="sales", caller="1"), now=2.0)
    assert offers(drain(engine))[0].agent_id == "alice"
    engine.handle(OfferFailed(call_id="c1", reason="busy"), now=3.0)
    assert offers(drain(engine)) == [OfferCall(call_id="c1", agent_id="carol", queue="sales")]
    assert engine.agent("alice").state is AgentState.AVAILABLE
    assert engine.agent("alice").missed == 1


def test_wrap_up_then_available_again() -> None:
    """After the call the agent wraps up for the queue's wrapup_s, then takes the next."""
    engine = engine_with(("bob", 0.0))
    engine.handle(Enqueue(call_id="c1", queue="support", caller="1"), now=1.0)
    engine.handle(OfferAnswered(call_id="c1"), now=4.0)
    engine.handle(Enqueue(call_id="c2", queue="support", caller="2"), now=5.0)
    drain(engine)
    engine.handle(CallLeft(call_id="c1"), now=60.0)
    assert engine.agent("bob").state is AgentState.WRAP_UP
    assert offers(drain(engine)) == []
    assert engine.next_deadline() == 90.0
    engine.handle_timer(now=90.0)
    assert offers(drain(engine)) == [OfferCall(call_id="c2", agent_id="bob", queue="support")]


def test_caller_abandons_while_ringing() -> None:
    engine = engine_with(("alice", 0.0))
    engine.handle(Enqueue(call_id="c1", queue="sales", caller="1"), now=1.0)
    drain(engine)
    engine.handle(CallLeft(call_id="c1"), now=3.0)
    cmds = drain(engine)
    assert CancelOffer(call_id="c1", agent_id="alice") in cmds
    assert engine.agent("alice").state is AgentState.AVAILABLE
    assert engine.next_deadline() is None


def test_logout_while_ringing_puts_call_back() -> None:
    engine = engine_with(("alice", 0.0))
    engine.handle(Enqueue(call_id="c1", queue="sales", caller="1"), now=1.0)
    drain(engine)
    engine.handle(AgentLoggedOut(agent_id="alice"), now=2.0)
    assert CancelOffer(call_id="c1", agent_id="alice") in drain(engine)
    assert engine.position("c1") == 1
    assert engine.agent("alice").state is AgentState.LOGGED_OUT


def test_illegal_transition_raises_and_changes_nothing() -> None:
    engine = engine_with()
    agent = engine.agent("alice")
    with pytest.raises(IllegalTransition):
        agent.move(AgentState.ON_CALL, now=1.0)
    assert agent.state is AgentState.LOGGED_OUT
    with pytest.raises(IllegalTransition):
        engine.handle(OfferAnswered(call_id="nope"), now=1.0)


def test_unknown_agent_and_queue_are_errors() -> None:
    engine = engine_with()
    with pytest.raises(KeyError, match="unknown agent 'zed'"):
        engine.handle(AgentSetAvailable(agent_id="zed"), now=0.0)
    with pytest.raises(KeyError, match="unknown queue 'sals'"):
        engine.handle(Enqueue(call_id="c", queue="sals", caller="1"), now=0.0)


def test_an_hour_of_simulated_traffic_is_served_in_order() -> None:
    """A fake clock walks ten minutes of arrivals, answers and wrap-ups without sleeping."""
    engine = engine_with(("alice", 0.0), ("carol", 0.0))
    talking: dict[str, float] = {}  # call -> when it ends
    served: list[str] = []
    arrivals = {f"c{i}": i * 3.0 for i in range(40)}
    now = 0.0
    while now <= 3000.0:
        for call_id, at in list(arrivals.items()):
            if at <= now:
                engine.handle(Enqueue(call_id=call_id, queue="sales", caller="1"), now=now)
                del arrivals[call_id]
        for call_id, end in list(talking.items()):
            if end <= now:
                engine.handle(CallLeft(call_id=call_id), now=now)
                del talking[call_id]
        for offer in offers(drain(engine)):
            engine.handle(OfferAnswered(call_id=offer.call_id), now=now)
            talking[offer.call_id] = now + 20.0
            served.append(offer.call_id)
        candidates = [*arrivals.values(), *talking.values()]
        if (deadline := engine.next_deadline()) is not None:
            candidates.append(deadline)
        if not candidates:
            break
        now = max(now, min(candidates))
        engine.handle_timer(now=now)
    assert sorted(served) == sorted(f"c{i}" for i in range(40))
    assert served == [f"c{i}" for i in range(40)]  # first come, first served


def test_offer_that_could_not_be_placed_retries_later_without_blaming_the_agent() -> None:
    """A worker that is momentarily full is not the agent's fault: retry in RETRY_S."""
    engine = engine_with(("alice", 0.0))
    engine.handle(Enqueue(call_id="c1", queue="sales", caller="1"), now=1.0)
    drain(engine)
    engine.handle(OfferFailed(call_id="c1", reason="not_placed", agent_at_fault=False), now=1.2)
    cmds = drain(engine)
    assert offers(cmds) == []  # no hot loop of offers
    assert engine.agent("alice").state is AgentState.AVAILABLE
    assert engine.position("c1") == 1
    assert engine.next_deadline() == 1.2 + RETRY_S
    engine.handle_timer(now=1.2 + RETRY_S)
    assert offers(drain(engine)) == [OfferCall(call_id="c1", agent_id="alice", queue="sales")]
