"""The screen pop lands before the agent's phone rings: with the agent's desktop socket
open, the core dials only once the socket wrote the pop — and never waits on a stuck
browser for long, nor rings for an offer withdrawn meanwhile."""

from __future__ import annotations

import asyncio
import time

from acd.engine import AgentSetAway, CallLeft
from core.app import POP_FIRST_S
from tests.support.core_harness import Harness, W
from wire import events as ev


def dials(h: Harness) -> list[ev.Dial]:
    return [c for c, _ in h.commands() if isinstance(c, ev.Dial)]


async def next_dial(h: Harness, *, within: float) -> ev.Dial:
    """The next Dial the core queues for a worker (other commands are passed over)."""
    async with asyncio.timeout(within):
        while True:
            _worker, command, _on_fail = await h.core._outbox.get()
            if isinstance(command, ev.Dial):
                return command


async def caller(h: Harness) -> None:
    await h.send(ev.LegIncoming(worker=W, leg="c1", sip_call_id="x", caller="5550001", did="1000"))
    await h.send(ev.LegAnswered(worker=W, leg="c1"))
    await h.send(ev.DtmfReceived(worker=W, leg="c1", digit="1"))


async def test_the_dial_waits_for_the_socket_to_write_the_pop(harness: Harness) -> None:
    hub = harness.core.web.hub
    sub = hub.subscribe("alice", "t")
    await caller(harness)
    assert dials(harness) == []  # the pop is queued, not yet written
    kinds = []
    while not sub.queue.empty():
        message = sub.queue.get_nowait()
        assert message is not None
        kinds.append(message["type"])
        hub.sent(sub)  # the browser's frame went out
    assert kinds == ["state", "offer"]
    await harness.settled()
    (dial,) = dials(harness)
    assert dial.related_leg == "c1"


async def test_a_stuck_browser_delays_the_ring_only_briefly(harness: Harness) -> None:
    harness.core.web.hub.subscribe("alice", "t")  # never writes anything
    started = time.monotonic()
    await caller(harness)
    dial = await next_dial(harness, within=2.0)
    waited = time.monotonic() - started
    assert dial.related_leg == "c1"
    assert POP_FIRST_S <= waited < POP_FIRST_S + 0.5, waited


async def test_an_offer_withdrawn_while_the_pop_goes_out_is_not_dialled(
    harness: Harness,
) -> None:
    core = harness.core
    hub = core.web.hub
    sub = hub.subscribe("alice", "t")
    await caller(harness)
    leg = core.calls["c1"].agent_leg
    core._acd(AgentSetAway(agent_id="alice", reason="break"))  # she leaves as it rings
    core._pump()
    hub.sent(sub)
    await harness.settled()
    assert dials(harness) == []
    assert leg not in core.legs and core.calls["c1"].agent_leg is None
    core._acd(CallLeft(call_id="c1"))


async def test_a_desktop_page_that_confirms_pops_rings_once_it_shows_the_caller(
    harness: Harness,
) -> None:
    hub = harness.core.web.hub
    sub = hub.subscribe("alice", "t")
    hub.page_says(sub, {"type": "hello", "shows_pops": True})
    await caller(harness)
    while not sub.queue.empty():
        sub.queue.get_nowait()
        hub.sent(sub)  # written is not enough for a page that confirms
    await asyncio.sleep(POP_FIRST_S / 5)
    assert dials(harness) == []
    hub.page_says(sub, {"type": "shown", "call_id": "c1"})
    dial = await next_dial(harness, within=POP_FIRST_S / 2)
    assert dial.related_leg == "c1"
