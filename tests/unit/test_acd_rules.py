"""Issue 3's routing rules, one fake-clock scenario each (the clock is a float we pass)."""

from __future__ import annotations

import math

import pytest

from acd.engine import (
    CALLBACK_RETRY_S,
    AcdEngine,
    AgentLoggedIn,
    AgentLoggedOut,
    AgentSetAvailable,
    AgentSetAway,
    AgentSpec,
    AgentState,
    CallbackAnswered,
    CallbackFailed,
    CallLeft,
    CancelOffer,
    Enqueue,
    ExtendWrapUp,
    IllegalTransition,
    OfferAnswered,
    OfferCall,
    Overflow,
    OverflowTarget,
    PlaceCallback,
    QueueSpec,
    Reconcile,
    RequestCallback,
    Step,
)
from acd.model import state_diagram
from wire.events import AgentStateChanged, CallOverflowed, CallQueued


def drain(engine: AcdEngine) -> list[object]:
    out = []
    while (cmd := engine.next_command()) is not None:
        out.append(cmd)
    return out


def offers(commands: list[object]) -> list[tuple[str, str]]:
    return [(c.call_id, c.agent_id) for c in commands if isinstance(c, OfferCall)]


def online(engine: AcdEngine, *agents: str, now: float = 0.0) -> None:
    for agent_id in agents:
        engine.handle(AgentLoggedIn(agent_id=agent_id), now=now)
    drain(engine)


def enqueue(engine: AcdEngine, call_id: str, queue: str, now: float, **kw: object) -> list[object]:
    engine.handle(Enqueue(call_id=call_id, queue=queue, caller="555", **kw), now=now)
    return drain(engine)


def run_until(engine: AcdEngine, until: float) -> list[object]:
    """Fire every timer up to `until`, as the runner would, collecting commands."""
    out: list[object] = []
    while (deadline := engine.next_deadline()) is not None and deadline <= until:
        engine.handle_timer(now=deadline)
        out += drain(engine)
    return out


# ---------------------------------------------------------------- 1. steps widen with wait

STEPPED = QueueSpec(
    name="sales",
    skills={"sales": 1},
    steps=(Step(after_s=0, min_proficiency=4), Step(after_s=30, min_proficiency=2),
           Step(after_s=60, min_proficiency=1)),
    ring_timeout_s=15,
    preferred_agent_s=20,
)  # fmt: skip
LEVELS = [
    AgentSpec(agent_id="expert", skills={"sales": 5}),
    AgentSpec(agent_id="mid", skills={"sales": 3}),
    AgentSpec(agent_id="novice", skills={"sales": 1}),
]


def test_steps_widen_with_wait_from_experts_to_anyone() -> None:
    """Only >=4 for 30 s, then >=2 (mid gets it), never the novice before 60 s."""
    engine = AcdEngine([STEPPED], LEVELS)
    online(engine, "mid", "novice")
    assert offers(enqueue(engine, "c1", "sales", now=0.0)) == []
    assert offers(run_until(engine, 29.9)) == []
    assert offers(run_until(engine, 30.0)) == [("c1", "mid")]
    trace = engine.trace("c1")[-1]
    assert (trace.step, trace.floor, trace.winner) == (1, 2, "mid")
    novice = next(c for c in trace.candidates if c.agent_id == "novice")
    assert novice.excluded == "step"


def test_last_step_lets_any_agent_of_the_queue_take_it() -> None:
    engine = AcdEngine([STEPPED], LEVELS)
    online(engine, "novice")
    enqueue(engine, "c1", "sales", now=0.0)
    assert offers(run_until(engine, 59.0)) == []
    assert offers(run_until(engine, 60.0)) == [("c1", "novice")]


def test_preferred_agent_alone_first_then_everyone() -> None:
    """The ticket owner (mid, below the step floor) gets 20 s alone; then the expert."""
    engine = AcdEngine([STEPPED], LEVELS)
    online(engine, "expert", "mid")
    engine.handle(AgentSetAway(agent_id="mid", reason="lunch"), now=0.5)
    drain(engine)
    assert offers(enqueue(engine, "c1", "sales", now=1.0, preferred_agent="mid")) == []
    assert engine.trace("c1") == []
    engine.handle(AgentSetAvailable(agent_id="mid"), now=5.0)
    assert offers(drain(engine)) == [("c1", "mid")]  # mid, though expert idles longer
    engine.handle(OfferAnswered(call_id="c1"), now=6.0)
    # a second call for mid that mid cannot take in time goes to the expert at 21 s
    assert offers(enqueue(engine, "c2", "sales", now=1.0, preferred_agent="mid")) == []
    assert offers(run_until(engine, 21.0)) == [("c2", "expert")]


# ---------------------------------------------------------------- 2. strategies by name

SKILLED = [
    AgentSpec(agent_id="a", skills={"s": 2}),
    AgentSpec(agent_id="b", skills={"s": 5}),
    AgentSpec(agent_id="c", skills={"s": 3}),
]


def first_offer(strategy: str, seed: int = 0) -> str:
    engine = AcdEngine([QueueSpec(name="q", skill="s", strategy=strategy)], SKILLED, seed=seed)
    engine.handle(AgentLoggedIn(agent_id="c"), now=0.0)
    engine.handle(AgentLoggedIn(agent_id="b"), now=1.0)
    engine.handle(AgentLoggedIn(agent_id="a"), now=2.0)
    drain(engine)
    ((_, agent),) = offers(enqueue(engine, "x", "q", now=10.0))
    return agent


def test_strategy_registry_picks_by_name() -> None:
    assert first_offer("longest_idle") == "c"
    assert first_offer("most_skilled") == "b"
    assert first_offer("round_robin") == "a"  # first member after "nobody yet"
    with pytest.raises(KeyError, match="unknown strategy 'fastest'"):
        AcdEngine([QueueSpec(name="q", skill="s", strategy="fastest")], SKILLED)


def test_most_skilled_ties_go_to_the_longest_idle() -> None:
    agents = [AgentSpec(agent_id=n, skills={"s": 4}) for n in ("a", "b")]
    engine = AcdEngine([QueueSpec(name="q", skill="s", strategy="most_skilled")], agents)
    engine.handle(AgentLoggedIn(agent_id="b"), now=0.0)
    engine.handle(AgentLoggedIn(agent_id="a"), now=1.0)
    drain(engine)
    assert offers(enqueue(engine, "x", "q", now=5.0)) == [("x", "b")]


def test_round_robin_rotates_through_members() -> None:
    engine = AcdEngine([QueueSpec(name="q", skill="s", strategy="round_robin", wrapup_s=0)],
                       SKILLED)  # fmt: skip
    online(engine, "a", "b", "c")
    served = []
    for i in range(4):
        ((call, agent),) = offers(enqueue(engine, f"x{i}", "q", now=float(i)))
        served.append(agent)
        engine.handle(OfferAnswered(call_id=call), now=i + 0.1)
        engine.handle(CallLeft(call_id=call), now=i + 0.2)
        run_until(engine, i + 0.2)
    assert served == ["a", "b", "c", "a"]


def test_least_occupied_prefers_the_agent_who_talked_least() -> None:
    engine = AcdEngine([QueueSpec(name="q", skill="s", strategy="least_occupied", wrapup_s=0)],
                       SKILLED[:2])  # fmt: skip
    online(engine, "a", "b")
    assert offers(enqueue(engine, "x1", "q", now=0.0)) == [("x1", "a")]
    engine.handle(OfferAnswered(call_id="x1"), now=1.0)
    engine.handle(CallLeft(call_id="x1"), now=100.0)
    run_until(engine, 100.0)  # a is free again, and now the more idle by the clock
    assert offers(enqueue(engine, "x2", "q", now=101.0)) == [("x2", "b")]


def test_weighted_random_is_deterministic_per_seed_and_favours_skill() -> None:
    picks = [first_offer("weighted_random", seed) for seed in range(200)]
    assert picks == [first_offer("weighted_random", seed) for seed in range(200)]
    # weights 2 : 5 : 3 -> b about half the time, a about a fifth
    assert picks.count("b") > picks.count("c") > picks.count("a") > 0


# ---------------------------------------------------------------- 3. one fair order

TWO = [QueueSpec(name="sales", skill="sales"), QueueSpec(name="vip", skill="vip", priority=5)]
BOTH = [AgentSpec(agent_id="ann", skills={"sales": 3, "vip": 3})]


def test_priority_beats_wait_across_queues() -> None:
    """An agent on two queues takes the VIP queue's newer call before an older sales call."""
    engine = AcdEngine(TWO, BOTH)
    enqueue(engine, "old", "sales", now=0.0)
    enqueue(engine, "new", "vip", now=50.0)
    online(engine, "ann", now=60.0)
    engine.handle(AgentLoggedOut(agent_id="ann"), now=60.0)
    engine.handle(AgentLoggedIn(agent_id="ann"), now=61.0)
    assert [c.call_id for c in engine.waiting()] == ["new", "old"]
    assert engine.waiting("sales")[0].call_id == "old"


def test_call_priority_and_wait_make_one_score() -> None:
    engine = AcdEngine(TWO, BOTH)
    enqueue(engine, "a", "sales", now=0.0)
    enqueue(engine, "b", "sales", now=1.0, priority=2)
    enqueue(engine, "c", "sales", now=2.0, priority=2)
    assert engine.position("b") == 1 and engine.position("c") == 2
    assert engine.position("a") == 3
    engine.handle(AgentLoggedIn(agent_id="ann"), now=3.0)
    assert offers(drain(engine)) == [("b", "ann")]


# ---------------------------------------------------------------- 5. wrap-up

WRAP = [
    QueueSpec(name="long", skill="x", wrapup_s=30),
    QueueSpec(name="short", skill="x", wrapup_s=0),
]


def test_wrap_up_is_the_handled_queues_and_not_cut_short_by_another() -> None:
    engine = AcdEngine(WRAP, [AgentSpec(agent_id="ann", skills={"x": 1})])
    online(engine, "ann")
    enqueue(engine, "c1", "long", now=1.0)
    engine.handle(OfferAnswered(call_id="c1"), now=2.0)
    engine.handle(CallLeft(call_id="c1"), now=10.0)
    enqueue(engine, "c2", "short", now=11.0)  # a zero-wrap-up queue is waiting
    assert offers(run_until(engine, 39.9)) == []
    assert engine.agent("ann").state is AgentState.WRAP_UP
    assert offers(run_until(engine, 40.0)) == [("c2", "ann")]


def test_agent_extends_wrap_up_and_away_after_wrap_up_is_honoured() -> None:
    engine = AcdEngine(WRAP, [AgentSpec(agent_id="ann", skills={"x": 1})])
    online(engine, "ann")
    enqueue(engine, "c1", "long", now=1.0)
    engine.handle(OfferAnswered(call_id="c1"), now=2.0)
    engine.handle(CallLeft(call_id="c1"), now=10.0)
    engine.handle(ExtendWrapUp(agent_id="ann", seconds=15), now=20.0)
    assert engine.next_deadline() == 55.0
    engine.handle(AgentSetAway(agent_id="ann", reason="break"), now=21.0)
    assert engine.agent("ann").state is AgentState.WRAP_UP
    cmds = run_until(engine, 60.0)
    assert AgentStateChanged(agent="ann", state="away", reason="break") in cmds
    with pytest.raises(IllegalTransition):
        engine.handle(ExtendWrapUp(agent_id="ann", seconds=5), now=61.0)


# ---------------------------------------------------------------- 6. overflow


def overflow_engine(**rules: object) -> AcdEngine:
    sales = QueueSpec(
        name="sales", skill="sales", overflow=OverflowTarget(kind="queue", target="backup"), **rules
    )
    backup = QueueSpec(
        name="backup",
        skill="backup",
        overflow=OverflowTarget(kind="voicemail", target="box1"),
        max_wait_s=100,
    )
    agents = [AgentSpec(agent_id="s", skills={"sales": 1}),
              AgentSpec(agent_id="b", skills={"backup": 1})]  # fmt: skip
    return AcdEngine([sales, backup], agents)


def test_max_wait_moves_the_call_to_another_queue_keeping_its_place() -> None:
    engine = overflow_engine(max_wait_s=60)
    online(engine, "s", "b")
    engine.handle(AgentLoggedOut(agent_id="s"), now=0.0)  # sales staffed by nobody now
    engine.handle(AgentSetAway(agent_id="b", reason="x"), now=0.0)
    enqueue(engine, "c1", "sales", now=1.0)
    enqueue(engine, "c0", "backup", now=30.0)
    cmds = run_until(engine, 61.0)
    assert CallOverflowed(call_id="c1", queue="sales", reason="max_wait", target_kind="queue",
                          target="backup") in cmds  # fmt: skip
    # it arrived earlier than backup's own caller, so it is ahead of it there
    assert [c.call_id for c in engine.waiting("backup")] == ["c1", "c0"]
    engine.handle(AgentSetAvailable(agent_id="b"), now=62.0)
    assert offers(drain(engine)) == [("c1", "b")]


def test_voicemail_overflow_takes_the_call_out_of_the_engine() -> None:
    engine = overflow_engine(max_wait_s=60)
    enqueue(engine, "c1", "backup", now=0.0)
    cmds = run_until(engine, 100.0)
    assert Overflow(call_id="c1", queue="backup", reason="max_wait", target_kind="voicemail",
                    target="box1") in cmds  # fmt: skip
    assert engine.waiting() == [] and engine.next_deadline() is None


def test_max_length_and_join_empty_overflow_at_arrival() -> None:
    engine = overflow_engine(max_length=1)
    enqueue(engine, "c1", "sales", now=0.0)
    cmds = enqueue(engine, "c2", "sales", now=1.0)
    assert any(isinstance(c, Overflow) and c.reason == "max_length" for c in cmds)
    assert [c.call_id for c in engine.waiting("backup")] == ["c2"]
    engine = overflow_engine(join_empty=False)
    cmds = enqueue(engine, "c1", "sales", now=0.0)
    assert any(isinstance(c, Overflow) and c.reason == "join_empty" for c in cmds)
    online(engine, "s", now=1.0)
    assert offers(enqueue(engine, "c2", "sales", now=2.0)) == [("c2", "s")]


def test_leave_when_empty_moves_waiting_callers_when_the_last_agent_leaves() -> None:
    engine = overflow_engine(leave_when_empty=True)
    online(engine, "s")
    enqueue(engine, "c1", "sales", now=1.0)
    enqueue(engine, "c2", "sales", now=2.0)
    engine.handle(OfferAnswered(call_id="c1"), now=3.0)
    assert [c.call_id for c in engine.waiting("sales")] == ["c2"]
    engine.handle(AgentLoggedOut(agent_id="s"), now=4.0)
    cmds = drain(engine)
    assert [c.reason for c in cmds if isinstance(c, Overflow)] == ["leave_empty"]
    assert [c.call_id for c in engine.waiting("backup")] == ["c2"]


def test_overflow_rules_without_a_target_are_refused() -> None:
    spill = OverflowTarget(kind="queue", target="nowhere")
    with pytest.raises(ValueError, match="bad overflow queue 'nowhere'"):
        AcdEngine([QueueSpec(name="q", skill="s", max_wait_s=9, overflow=spill)], [])
    with pytest.raises(ValueError, match="overflow target"):
        QueueSpec(name="q", skill="s", max_wait_s=30)
    with pytest.raises(ValueError, match="widen"):
        QueueSpec(name="q", skill="s", steps=(Step(after_s=0, min_proficiency=2),
                                              Step(after_s=9, min_proficiency=3)))  # fmt: skip


# ---------------------------------------------------------------- 7. callback


def test_callback_keeps_the_virtual_place_behind_older_live_callers() -> None:
    engine = AcdEngine([QueueSpec(name="q", skill="s", wrapup_s=0)],
                       [AgentSpec(agent_id="ann", skills={"s": 1})])  # fmt: skip
    enqueue(engine, "older", "q", now=0.0)
    enqueue(engine, "cb", "q", now=1.0)
    enqueue(engine, "newer", "q", now=2.0)
    engine.handle(RequestCallback(call_id="cb", number="+8210"), now=3.0)
    engine.handle(CallLeft(call_id="cb"), now=3.5)  # the caller hangs up: virtual hold
    assert engine.position("cb") == 2
    online(engine, "ann", now=4.0)
    engine.handle(AgentLoggedOut(agent_id="ann"), now=4.0)
    engine.handle(AgentLoggedIn(agent_id="ann"), now=5.0)
    assert offers(drain(engine)) == [("older", "ann")]
    engine.handle(OfferAnswered(call_id="older"), now=6.0)
    engine.handle(CallLeft(call_id="older"), now=9.0)
    cmds = run_until(engine, 9.0)
    assert [c for c in cmds if isinstance(c, PlaceCallback)] == [
        PlaceCallback(call_id="cb", agent_id="ann", queue="q", number="+8210")
    ]
    assert engine.agent("ann").state is AgentState.RESERVED
    # the customer does not pick up: ann is free, the callback keeps its place, retried
    engine.handle(CallbackFailed(call_id="cb", reason="no_answer"), now=20.0)
    assert offers(drain(engine)) == [("newer", "ann")]
    engine.handle(OfferAnswered(call_id="newer"), now=21.0)
    engine.handle(CallLeft(call_id="newer"), now=22.0)
    cmds = run_until(engine, 20.0 + CALLBACK_RETRY_S)
    assert [c.call_id for c in cmds if isinstance(c, PlaceCallback)] == ["cb"]
    engine.handle(CallbackAnswered(call_id="cb"), now=150.0)
    assert engine.agent("ann").state is AgentState.ON_CALL


# ---------------------------------------------------------------- 8. position and EWT


def test_estimate_grows_with_position_and_shrinks_with_staff() -> None:
    agents = [AgentSpec(agent_id=f"a{i}", skills={"s": 1}) for i in range(4)]
    engine = AcdEngine([QueueSpec(name="q", skill="s")], agents)
    online(engine, "a0", "a1")
    for i in range(6):
        enqueue(engine, f"c{i}", "q", now=float(i))
    ringing = engine.estimate("c0", now=6.0)
    assert ringing is not None and ringing.ewt_s == 0.0
    est2, est5 = engine.estimate("c2", now=6.0), engine.estimate("c5", now=6.0)
    assert est2 is not None and est5 is not None
    assert est2.position == 3 and est5.position == 6
    # c2 needs one of the two busy agents to finish: Exp(2/180) -> mean 90 s
    assert est2.ewt_s == pytest.approx(90.0)
    assert est5.ewt_s == pytest.approx(4 * 90.0)
    assert 0 < est2.low_s < est2.ewt_s < est2.high_s
    assert est5.ewt_s > est2.ewt_s
    # no history yet: two agents at the prior of one call per 180 s each
    assert est2.service_rate_per_s == pytest.approx(2 / 180)
    online(engine, "a2", "a3", now=7.0)  # more staff: c2 and c3 are now ringing
    more = engine.estimate("c5", now=7.0)
    assert more is not None and more.ewt_s < est5.ewt_s


def test_estimate_with_nobody_staffed_is_infinite() -> None:
    engine = AcdEngine([QueueSpec(name="q", skill="s")], [AgentSpec(agent_id="a", skills={"s": 1})])
    enqueue(engine, "c", "q", now=0.0)
    est = engine.estimate("c", now=1.0)
    assert est is not None and math.isinf(est.ewt_s) and est.agents == 0


# ---------------------------------------------------------------- 9. decision trace


def test_trace_names_every_candidate_and_why() -> None:
    queue = QueueSpec(name="q", skills={"s": 1}, steps=(Step(after_s=0, min_proficiency=3),))
    agents = [
        AgentSpec(agent_id="win", skills={"s": 4}, languages=frozenset({"ko"})),
        AgentSpec(agent_id="low", skills={"s": 2}, languages=frozenset({"ko"})),
        AgentSpec(agent_id="mono", skills={"s": 5}, languages=frozenset({"en"})),
        AgentSpec(agent_id="busy", skills={"s": 5}, languages=frozenset({"ko"})),
    ]
    engine = AcdEngine([queue], agents)
    online(engine, "win", "low", "mono")
    engine.handle(AgentLoggedIn(agent_id="busy", available=False), now=0.0)
    (offer,) = [c for c in enqueue(engine, "c", "q", now=5.0, language="ko")
                if isinstance(c, OfferCall)]  # fmt: skip
    trace = offer.trace
    assert trace is not None and trace == engine.trace("c")[0]
    why = {c.agent_id: c.excluded for c in trace.candidates}
    assert why == {"win": None, "low": "step", "mono": "language"}
    assert trace.not_available == {"away": 1}
    assert (trace.winner, trace.winner_score, trace.strategy) == ("win", 5.0, "longest_idle")


# ---------------------------------------------------------------- 10. self-healing


def test_reconcile_drops_vanished_legs_and_unregistered_devices() -> None:
    agents = [AgentSpec(agent_id=n, skills={"s": 1}) for n in ("a", "b", "c")]
    engine = AcdEngine([QueueSpec(name="q", skill="s", wrapup_s=5)], agents)
    online(engine, "a", "b")
    enqueue(engine, "talking", "q", now=1.0)  # -> a
    enqueue(engine, "ringing", "q", now=2.0)  # -> b
    engine.handle(OfferAnswered(call_id="talking"), now=3.0)
    enqueue(engine, "waiting", "q", now=4.0)
    drain(engine)
    engine.handle(Reconcile(live_calls=frozenset({"waiting"}),
                            registered_agents=frozenset({"a"})), now=10.0)  # fmt: skip
    cmds = drain(engine)
    assert engine.agent("a").state is AgentState.WRAP_UP  # its call is gone
    assert engine.agent("b").state is AgentState.LOGGED_OUT
    assert CancelOffer(call_id="ringing", agent_id="b") in cmds
    assert [c.call_id for c in engine.waiting()] == ["waiting"]


def test_an_agent_is_never_reserved_past_the_ring_timeout() -> None:
    engine = AcdEngine([QueueSpec(name="q", skill="s", ring_timeout_s=20)],
                       [AgentSpec(agent_id="a", skills={"s": 1})])  # fmt: skip
    online(engine, "a")
    enqueue(engine, "c", "q", now=0.0)
    assert engine.next_deadline() == 20.0
    run_until(engine, 20.0)
    assert engine.agent("a").state is not AgentState.RESERVED


# ---------------------------------------------------------------- the table


def test_state_diagram_is_drawn_from_the_table() -> None:
    diagram = state_diagram()
    assert "on_call --> wrap_up" in diagram
    assert "on_call --> available" not in diagram


def test_enqueue_emits_position_and_rejects_duplicates() -> None:
    engine = AcdEngine(TWO, BOTH)
    assert CallQueued(call_id="a", queue="sales", caller="555", position=1) in enqueue(
        engine, "a", "sales", now=0.0
    )
    with pytest.raises(IllegalTransition):
        enqueue(engine, "a", "vip", now=1.0)


def test_a_step_that_excludes_a_better_call_does_not_hide_a_worse_one() -> None:
    """A novice skips the young VIP call (floor 4) but takes the old normal one."""
    engine = AcdEngine([STEPPED], LEVELS)
    enqueue(engine, "old", "sales", now=0.0)
    enqueue(engine, "vip", "sales", now=70.0, priority=5)
    engine.handle(AgentLoggedIn(agent_id="novice"), now=71.0)
    assert offers(drain(engine)) == [("old", "novice")]
