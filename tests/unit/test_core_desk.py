"""The desk inside a real core (no broker): an unknown caller's customer created by the
agent during the call gets the wrap-up's ticket, and Ready ends the wrap-up early."""

from __future__ import annotations

from acd.model import AgentState
from tests.support.core_harness import Harness, W
from wire import events as ev


async def test_a_customer_created_during_the_call_gets_the_wrap_ups_ticket(
    harness: Harness,
) -> None:
    """5552013344 is unknown: the pop offers a form; alice creates the customer while
    talking; after the hang-up her wrap-up opens a ticket for that customer."""
    core = harness.core
    await harness.send(
        ev.LegIncoming(worker=W, leg="u-1", sip_call_id="u", caller="5552013344", did="1000")
    )
    await harness.settled()
    await harness.send(ev.LegAnswered(worker=W, leg="u-1"))
    await harness.send(ev.DtmfReceived(worker=W, leg="u-1", digit="1"))
    dial, _ = harness.last(ev.Dial)
    await harness.send(ev.LegAnswered(worker=W, leg=dial.leg))
    card = await core.desk.create_customer(
        {"name": "Ana Silva"}, phones=["5552013344"], call_id="u-1", agent="alice"
    )
    assert core.store.get("u-1") is None  # the core writes the row at hang-up
    await harness.send(ev.LegEnded(worker=W, leg="u-1", by="remote", sip_code=200, reason=""))
    await harness.send(ev.LegEnded(worker=W, leg=dial.leg, by="local", sip_code=200, reason=""))
    await harness.settled()
    done = await core.desk.wrap_up(
        "u-1", agent="alice", disposition="new customer", new_ticket={"subject": "First order"}
    )
    row = core.store.get("u-1")
    assert row is not None and row.customer_id == card["customer_id"]
    ticket = core.store.ticket(done["tickets"][0])
    assert ticket is not None and ticket.customer_id == card["customer_id"]
    # the next call from that number is recognised
    found = core.crm.lookup("caller", "+1 555 201 3344")
    assert found is not None and found.name == "Ana Silva"


async def test_ready_during_wrap_up_makes_the_agent_available_at_once(harness: Harness) -> None:
    core = harness.core
    dial = await harness.caller_in_queue()
    await harness.send(ev.LegAnswered(worker=W, leg=dial.leg))
    await harness.send(ev.LegEnded(worker=W, leg="caller-1", by="remote", sip_code=200, reason=""))
    await harness.send(ev.LegEnded(worker=W, leg=dial.leg, by="local", sip_code=200, reason=""))
    await harness.settled()
    alice = core.acd.agent("alice")
    assert alice.state is AgentState.WRAP_UP and alice.wrapup_until is not None
    core.set_agent_state("alice", "available")  # PUT /api/agents/alice/state
    assert alice.state is AgentState.AVAILABLE and alice.wrapup_until is None
    # and the next caller is offered to her at once
    await harness.send(
        ev.LegIncoming(worker=W, leg="caller-2", sip_call_id="y", caller="5550002", did="1000")
    )
    await harness.send(ev.LegAnswered(worker=W, leg="caller-2"))
    await harness.send(ev.DtmfReceived(worker=W, leg="caller-2", digit="1"))
    nxt, _ = harness.last(ev.Dial)
    assert nxt.related_leg == "caller-2"
