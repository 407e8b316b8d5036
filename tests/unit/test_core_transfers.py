"""Hold, resume and transfers through the core (`core.control`), fed worker events
directly: what the media side is asked to do, what the queue engine and each agent's
desktop are told, and the call's row. alice (sales) has the caller; bob (support)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from acd.engine import AgentLoggedIn, AgentSetAway, AgentState
from core.control import ControlError
from softphone_web.hub import Hub
from tests.support.core_harness import Harness, W
from wire import events as ev

CALLER = "caller-1"


def ended(leg: str, *, by: str = "remote", code: int = 200) -> ev.LegEnded:
    return ev.LegEnded(worker=W, leg=leg, by=by, sip_code=code, reason="")


class Socket:
    """An agent's open desktop socket: takes what the hub queues, as the web's sender
    does (so the core's Dial, which waits for the pop to be written, goes out)."""

    def __init__(self, hub: Hub, agent: str) -> None:
        self.hub, self.sub = hub, hub.subscribe(agent, f"token-{agent}")
        self.got: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._send())

    async def _send(self) -> None:
        while (message := await self.sub.queue.get()) is not None:
            self.got.append(message)
            self.hub.sent(self.sub)


async def messages(socket: Socket) -> list[dict[str, Any]]:
    """What the socket wrote since the last look (after letting its sender run)."""
    for _ in range(3):
        await asyncio.sleep(0)
    out, socket.got = socket.got, []
    return out


async def kinds(socket: Socket) -> list[str]:
    return [m["type"] for m in await messages(socket)]


class Desk:
    """alice on the caller, bob logged in; both agents' sockets open."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.core = h.core
        self.alice_leg = ""

    async def connect(self) -> None:
        dial = await self.h.caller_in_queue()
        self.alice_leg = dial.leg
        await self.h.send(ev.LegAnswered(worker=W, leg=dial.leg))
        self.bridge = self.h.last(ev.Bridge)[0]
        self.core._acd(AgentLoggedIn(agent_id="bob"))
        self.core._pump()
        self.alice = Socket(self.core.web.hub, "alice")
        self.bob = Socket(self.core.web.hub, "bob")

    async def sent(self) -> list[ev.MediaCommand]:
        """What the core asked of the worker, once its pending work (a Dial waiting
        for a screen pop to be written) is done."""
        await self.h.settled()
        return [c for c, _ in self.h.commands()]

    def state(self, agent: str) -> AgentState:
        return self.core.acd.agent(agent).state


@pytest.fixture
async def desk(harness: Harness) -> Desk:
    d = Desk(harness)
    await d.connect()
    return d


async def test_hold_plays_music_and_resume_bridges_again_in_the_same_recording(
    desk: Desk,
) -> None:
    control = desk.core.control
    view = control.hold(CALLER, agent="alice")
    assert view["held"] is True
    unbridge, play = await desk.sent()
    assert unbridge == ev.Unbridge(leg=CALLER)
    assert isinstance(play, ev.Play) and play.loop and play.files[0].endswith("sales.moh.wav")
    with pytest.raises(ControlError, match="already on hold"):
        control.hold(CALLER, agent="alice")
    control.resume(CALLER, agent="alice")
    (bridge,) = await desk.sent()
    assert bridge == desk.bridge  # same legs, same recording path
    assert await kinds(desk.alice) == ["held", "resumed"]
    with pytest.raises(ControlError, match="not on hold"):
        control.resume(CALLER, agent="alice")


async def test_requests_for_someone_elses_or_no_call_are_refused(desk: Desk) -> None:
    control = desk.core.control
    with pytest.raises(PermissionError):
        control.hold(CALLER, agent="bob")
    with pytest.raises(KeyError):
        control.hold("nope", agent="alice")
    with pytest.raises(ValueError, match="either an agent or a queue"):
        control.transfer(CALLER, agent="alice", to_agent="bob", to_queue="support")
    with pytest.raises(ControlError, match="unknown agent 'zed'"):
        control.transfer(CALLER, agent="alice", to_agent="zed")
    desk.core._acd(AgentSetAway(agent_id="bob", reason="lunch"))
    with pytest.raises(ControlError, match="bob is away \\(lunch\\)"):
        control.transfer(CALLER, agent="alice", to_agent="bob")
    with pytest.raises(ControlError, match="bob is away"):
        control.consult(CALLER, agent="alice", to_agent="bob")
    # nothing changed: alice still has the caller, bridged, no consultation left over
    assert desk.state("alice") is AgentState.ON_CALL
    assert await desk.sent() == [] and control.consults == {}
    control.hold(CALLER, agent=None)  # a supervisor may act on any call


async def test_blind_transfer_to_an_agent(desk: Desk) -> None:
    control = desk.core.control
    control.transfer(CALLER, agent="alice", to_agent="bob")
    unbridge, moh, hangup, dial = await desk.sent()
    assert unbridge == ev.Unbridge(leg=CALLER) and isinstance(moh, ev.Play)
    assert hangup == ev.Hangup(leg=desk.alice_leg)
    assert isinstance(dial, ev.Dial) and "1002" in dial.uri  # bob's phone
    assert desk.state("alice") is AgentState.WRAP_UP
    assert desk.state("bob") is AgentState.RESERVED
    assert [m["hangup_side"] for m in await messages(desk.alice) if m["type"] == "ended"] == [
        "transferred"
    ]
    (pop,) = [m for m in await messages(desk.bob) if m["type"] == "offer"]
    assert pop["handoffs"][0]["from"] == "alice"
    await desk.h.send(ended(desk.alice_leg, by="local"))
    await desk.h.send(ev.LegAnswered(worker=W, leg=dial.leg))
    (bridge,) = await desk.sent()
    assert (bridge.a, bridge.b) == (CALLER, dial.leg)
    assert bridge.record_path == desk.bridge.record_path  # one recording for the call
    assert desk.state("bob") is AgentState.ON_CALL
    await desk.h.send(ended(CALLER))
    await desk.h.send(ended(dial.leg, by="local"))
    await desk.h.settled()
    row = desk.core.store.get(CALLER)
    assert row is not None and row.agent == "bob" and row.hangup_side == "caller"
    (handoff,) = json.loads(row.handoffs or "[]")
    assert (handoff["from"], handoff["to_agent"], handoff["mode"]) == ("alice", "bob", "blind")
    assert desk.state("bob") is AgentState.WRAP_UP


async def test_a_blind_transfer_to_an_agent_who_does_not_answer_waits_in_the_queue(
    desk: Desk,
) -> None:
    control = desk.core.control
    control.transfer(CALLER, agent="alice", to_agent="bob")
    dial = next(c for c in await desk.sent() if isinstance(c, ev.Dial))
    await desk.h.send(ended(dial.leg, code=486))
    call = desk.core.calls[CALLER]
    assert call.waiting and call.agent is None and not call.connected
    assert desk.core.acd.position(CALLER) == 1  # sales again, for whoever is free next


async def test_blind_transfer_to_a_queue(desk: Desk) -> None:
    desk.core.control.transfer(CALLER, agent="alice", to_queue="support")
    dial = next(c for c in await desk.sent() if isinstance(c, ev.Dial))
    assert "1002" in dial.uri  # bob is support's only agent
    assert desk.core.calls[CALLER].queue == "support"
    await desk.h.send(ev.LegAnswered(worker=W, leg=dial.leg))
    assert desk.state("bob") is AgentState.ON_CALL


async def test_attended_transfer_consults_then_completes(desk: Desk) -> None:
    control = desk.core.control
    view = control.consult(CALLER, agent="alice", to_agent="bob")
    assert view["held"] and view["consult"] == {"agent": "bob", "queue": "sales",
                                                "answered": False}  # fmt: skip
    unbridge, hold, dial = await desk.sent()
    assert unbridge == ev.Unbridge(leg=CALLER) and isinstance(hold, ev.Play)
    assert isinstance(dial, ev.Dial) and dial.caller_id == "alice"
    (pop,) = [m for m in await messages(desk.bob) if m["type"] == "consult"]
    assert (pop["type"], pop["consult_from"], pop["call_id"]) == ("consult", "alice", CALLER)
    with pytest.raises(ControlError, match="has not answered yet"):
        control.complete(CALLER, agent="alice")
    with pytest.raises(ControlError, match="complete or cancel"):
        control.resume(CALLER, agent="alice")

    await desk.h.send(ev.LegAnswered(worker=W, leg=dial.leg))
    (talk,) = await desk.sent()
    assert talk == ev.Bridge(a=desk.alice_leg, b=dial.leg, hangup_together=False)
    assert "consult_answered" in await kinds(desk.alice)
    assert desk.state("alice") is AgentState.ON_CALL  # alice keeps the caller meanwhile
    assert desk.state("bob") is AgentState.ON_CALL

    control.complete(CALLER, agent="alice")
    apart, bye, bridge = await desk.sent()
    assert apart == ev.Unbridge(leg=dial.leg)
    assert bye == ev.Hangup(leg=desk.alice_leg)
    assert (bridge.a, bridge.b, bridge.record_path) == (CALLER, dial.leg,
                                                        desk.bridge.record_path)  # fmt: skip
    assert desk.state("alice") is AgentState.WRAP_UP
    assert desk.core.acd.agent("bob").call_id == CALLER
    assert [t for t in await kinds(desk.bob) if t != "state"] == [
        "consult_connected",
        "transferred",
    ]
    with pytest.raises(PermissionError):
        control.hold(CALLER, agent="alice")  # bob's call now
    control.hold(CALLER, agent="bob")

    await desk.h.send(ended(desk.alice_leg, by="local"))
    await desk.h.send(ended(CALLER))
    await desk.h.send(ended(dial.leg, by="local"))
    await desk.h.settled()
    row = desk.core.store.get(CALLER)
    assert row is not None and row.agent == "bob"
    (handoff,) = json.loads(row.handoffs or "[]")
    assert (handoff["from"], handoff["to_agent"], handoff["mode"]) == ("alice", "bob",
                                                                       "attended")  # fmt: skip


async def test_cancelling_a_consultation_gives_the_caller_back(desk: Desk) -> None:
    control = desk.core.control
    control.consult(CALLER, agent="alice", to_agent="bob")
    dial = (await desk.sent())[-1]
    assert isinstance(dial, ev.Dial)
    await desk.h.send(ev.LegAnswered(worker=W, leg=dial.leg))
    await desk.sent()
    control.cancel(CALLER, agent="alice")
    apart, bye, bridge = await desk.sent()
    assert (apart, bye) == (ev.Unbridge(leg=dial.leg), ev.Hangup(leg=dial.leg))
    assert (bridge.a, bridge.b) == (CALLER, desk.alice_leg)
    assert desk.state("alice") is AgentState.ON_CALL
    assert desk.state("bob") is AgentState.WRAP_UP  # he took part in a consultation
    assert control.consults == {}
    assert "consult_ended" in await kinds(desk.bob)


async def test_a_consulted_agent_who_does_not_answer_ends_the_consultation(desk: Desk) -> None:
    control = desk.core.control
    control.consult(CALLER, agent="alice", to_agent="bob")
    dial = (await desk.sent())[-1]
    assert isinstance(dial, ev.Dial)
    await desk.h.send(ended(dial.leg, code=486))
    assert desk.core.calls[CALLER].consult is None and control.consults == {}
    assert "consult_ended" in await kinds(desk.alice)
    assert desk.core.acd.position(f"{CALLER}~1") is None  # not left waiting anywhere
    control.resume(CALLER, agent="alice")
    assert isinstance((await desk.sent())[-1], ev.Bridge)


async def test_a_consultation_through_a_queue_waits_for_an_agent(desk: Desk) -> None:
    control = desk.core.control
    desk.core._acd(AgentSetAway(agent_id="bob", reason="break"))
    control.consult(CALLER, agent="alice", to_queue="support")
    assert not any(isinstance(c, ev.Dial) for c in await desk.sent())
    assert desk.core.acd.position(f"{CALLER}~1") == 1
    desk.core.set_agent_state("bob", "available")
    dial = next(c for c in await desk.sent() if isinstance(c, ev.Dial))
    assert "1002" in dial.uri


async def test_the_agent_leaving_a_held_caller_hands_them_back_to_the_queue(desk: Desk) -> None:
    control = desk.core.control
    control.hold(CALLER, agent="alice")
    await desk.sent()
    await desk.h.send(ended(desk.alice_leg))  # alice closed her browser
    call = desk.core.calls[CALLER]
    assert call.ended_at is None and call.waiting
    assert desk.state("alice") is AgentState.WRAP_UP
    assert call.handoffs[-1]["mode"] == "agent left"
    assert desk.core.acd.position(CALLER) == 1


async def test_the_agent_leaving_an_answered_consultation_completes_it(desk: Desk) -> None:
    control = desk.core.control
    control.consult(CALLER, agent="alice", to_agent="bob")
    dial = (await desk.sent())[-1]
    assert isinstance(dial, ev.Dial)
    await desk.h.send(ev.LegAnswered(worker=W, leg=dial.leg))
    await desk.sent()
    await desk.h.send(ended(desk.alice_leg))
    (bridge,) = await desk.sent()
    assert (bridge.a, bridge.b) == (CALLER, dial.leg)
    assert desk.core.calls[CALLER].agent == "bob"


async def test_the_caller_hanging_up_during_a_consultation_ends_everything(desk: Desk) -> None:
    control = desk.core.control
    control.consult(CALLER, agent="alice", to_agent="bob")
    dial = (await desk.sent())[-1]
    assert isinstance(dial, ev.Dial)
    await desk.h.send(ev.LegAnswered(worker=W, leg=dial.leg))
    await desk.sent()
    await desk.h.send(ended(CALLER))
    hangups = {c.leg for c in await desk.sent() if isinstance(c, ev.Hangup)}
    assert hangups == {desk.alice_leg, dial.leg}
    await desk.h.send(ended(desk.alice_leg, by="local"))
    assert desk.core.calls[CALLER].ended_at is None  # the consultation leg is still up
    await desk.h.send(ended(dial.leg, by="local"))
    await desk.h.settled()
    assert desk.core.calls[CALLER].ended_at is not None
    assert desk.state("alice") is AgentState.WRAP_UP
    assert desk.state("bob") is AgentState.WRAP_UP
    assert control.consults == {}


async def test_each_agent_of_a_transferred_call_wraps_up_their_part(desk: Desk) -> None:
    desk.core.control.transfer(CALLER, agent="alice", to_agent="bob")
    dial = next(c for c in await desk.sent() if isinstance(c, ev.Dial))
    await desk.h.send(ended(desk.alice_leg, by="local"))
    await desk.h.send(ev.LegAnswered(worker=W, leg=dial.leg))
    await desk.h.settled()
    # alice's part is over while bob talks; bob's is not
    done = await desk.core.desk.wrap_up(CALLER, agent="alice", disposition="escalated",
                                        notes="billing, for bob")  # fmt: skip
    assert done["disposition"] == "escalated"
    with pytest.raises(ValueError, match="still up"):
        await desk.core.desk.wrap_up(CALLER, agent="bob", disposition="resolved")
    with pytest.raises(PermissionError):
        await desk.core.desk.wrap_up(CALLER, agent="carol", disposition="resolved")
    await desk.h.send(ended(CALLER))
    await desk.h.send(ended(dial.leg, by="local"))
    await desk.h.settled()
    await desk.core.desk.wrap_up(CALLER, agent="bob", disposition="resolved", notes="refunded")
    row = desk.core.store.get(CALLER)
    assert row is not None and row.disposition == "resolved" and row.wrap_up_s is not None
    assert row.notes == "[alice] billing, for bob\n[bob] refunded"
    # alice changing her mind later does not overwrite the outcome bob recorded
    await desk.core.desk.wrap_up(CALLER, agent="alice", disposition="escalated")
    row = desk.core.store.get(CALLER)
    assert row is not None and row.disposition == "resolved"
