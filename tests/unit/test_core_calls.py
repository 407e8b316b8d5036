"""The core's call handling, fed worker events directly (no broker, no workers): what
it asks the media side to do, and that no race leaves a call or an agent behind."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from acd.engine import AgentLoggedIn, AgentState
from tests.support.core_harness import Harness, W, Walk, harness_data
from wire import events as ev


async def test_a_bridged_call_is_recorded_and_written(harness: Harness) -> None:
    dial = await harness.caller_in_queue()
    await harness.send(ev.LegAnswered(worker=W, leg=dial.leg))
    bridge, _ = harness.last(ev.Bridge)
    assert (bridge.a, bridge.b) == ("caller-1", dial.leg) and bridge.record_path
    await harness.send(ev.LegEnded(worker=W, leg="caller-1", by="remote", sip_code=200, reason=""))
    await harness.send(ev.LegEnded(worker=W, leg=dial.leg, by="local", sip_code=200, reason=""))
    await harness.settled()
    row = harness.core.store.get("caller-1")
    assert row is not None and row.agent == "alice" and row.hangup_side == "caller"
    assert harness.core.acd.agent("alice").state is AgentState.WRAP_UP


async def test_caller_gone_before_a_refused_dial_still_ends_the_call(harness: Harness) -> None:
    """The worker refuses the Dial because the caller leg already ended: no leak."""
    await harness.caller_in_queue()
    on_fail = harness.dial_failed
    await harness.send(ev.LegEnded(worker=W, leg="caller-1", by="remote", sip_code=200, reason=""))
    on_fail(ev.CommandResult(ok=False, error="unknown related leg"))
    await harness.settled()
    row = harness.core.store.get("caller-1")
    assert row is not None and row.ended_at is not None and row.hangup_side == "abandon"
    assert harness.core.acd.agent("alice").state is AgentState.AVAILABLE


async def test_an_answer_after_the_offer_was_cancelled_is_hung_up(harness: Harness) -> None:
    """Ring timeout cancels the offer; the phone answers a moment later: hang it up,
    and the next offer of the same call still bridges."""
    dial = await harness.caller_in_queue()
    core = harness.core
    core.acd.handle_timer(now=core.now() + 3600)  # far past the ring timeout
    core._pump()
    hangup, _ = harness.last(ev.Hangup)
    assert hangup.leg == dial.leg
    await harness.send(ev.LegAnswered(worker=W, leg=dial.leg))  # too late
    assert [c.leg for c, _ in harness.commands() if isinstance(c, ev.Hangup)] == [dial.leg]
    assert not any(isinstance(c, ev.Bridge) for c, _ in harness.commands())
    await harness.send(ev.LegEnded(worker=W, leg=dial.leg, by="local", sip_code=487, reason=""))
    # alice missed once (no-answer limit 2): still available, sitting this call out
    # for one ring cycle; then she is offered it again
    assert core.acd.agent("alice").state is AgentState.AVAILABLE
    assert core.acd.position("caller-1") == 1
    core.acd.handle_timer(now=core.now() + 7200)
    core._pump()
    again, _ = harness.last(ev.Dial)
    assert again.leg != dial.leg
    await harness.send(ev.LegAnswered(worker=W, leg=again.leg))
    bridge, _ = harness.last(ev.Bridge)
    assert bridge.b == again.leg


async def test_a_refused_bridge_hangs_up_both_legs(harness: Harness) -> None:
    dial = await harness.caller_in_queue()
    await harness.send(ev.LegAnswered(worker=W, leg=dial.leg))
    _, on_fail = harness.last(ev.Bridge)
    on_fail(ev.CommandResult(ok=False, error="cannot create recorder"))
    legs = sorted(c.leg for c, _ in harness.commands() if isinstance(c, ev.Hangup))
    assert legs == sorted(["caller-1", dial.leg])


async def test_an_unknown_answered_leg_is_left_alone(harness: Harness) -> None:
    """A leg this core never saw (it restarted mid-call) is not hung up: calls survive."""
    await harness.send(ev.LegAnswered(worker=W, leg="from-before-a-restart"))
    assert harness.commands() == []


async def test_worker_loss_ends_its_calls_and_frees_the_agent(harness: Harness) -> None:
    dial = await harness.caller_in_queue()
    await harness.send(ev.LegAnswered(worker=W, leg=dial.leg))
    await harness.send(ev.WorkerStatus(worker=W, up=True, pid=100))
    await harness.send(ev.WorkerStatus(worker=W, up=False, pid=100))
    await harness.settled()
    row = harness.core.store.get("caller-1")
    assert row is not None and row.hangup_side == "system" and row.ended_at is not None
    assert harness.core.acd.agent("alice").state is AgentState.WRAP_UP


async def test_caller_abandoning_while_the_agent_rings_is_recorded(harness: Harness) -> None:
    dial = await harness.caller_in_queue()
    await harness.send(ev.LegEnded(worker=W, leg="caller-1", by="remote", sip_code=200, reason=""))
    hangup, _ = harness.last(ev.Hangup)
    assert hangup.leg == dial.leg  # the agent's phone stops ringing
    await harness.send(ev.LegEnded(worker=W, leg=dial.leg, by="local", sip_code=487, reason=""))
    await harness.settled()
    row = harness.core.store.get("caller-1")
    assert row is not None and row.hangup_side == "abandon" and row.answered_at is None
    assert harness.core.acd.agent("alice").state is AgentState.AVAILABLE
    assert "caller-1" not in {c.call_id for c in harness.core.acd.waiting()}


async def test_a_record_the_database_refused_is_written_when_it_is_back(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database is away at hang-up: the row is retried, not dropped."""
    store = harness.core.store
    real_save, failures = store.save, []

    def flaky_save(record: Any) -> None:
        if not failures:
            failures.append(record.call_id)
            raise ConnectionError("database restarting")
        real_save(record)

    monkeypatch.setattr(store, "save", flaky_save)
    await harness.caller_in_queue()
    await harness.send(ev.LegEnded(worker=W, leg="caller-1", by="remote", sip_code=200, reason=""))
    for _ in range(100):  # the first retry comes after 1 s
        await asyncio.sleep(0.05)
        if (row := store.get("caller-1")) is not None:
            break
    assert failures == ["caller-1"]
    assert row is not None and row.hangup_side == "abandon"


async def test_the_journal_rolls_over_and_keeps_every_event(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = harness.core
    monkeypatch.setattr("core.app.JOURNAL_MAX_BYTES", 1)
    core._journal.flush()
    core._rotate_journal()
    await harness.caller_in_queue()
    core._journal.flush()
    files = sorted(core.data_dir.glob("acd-journal*.jsonl"))
    assert len(files) == 2
    lines = [line for f in files for line in f.read_text().splitlines()]
    assert [line.split('"type":"')[1].split('"')[0] for line in lines] == [
        "AgentLoggedIn",
        "Enqueue",
    ]


# ---------------------------------------------------------------- the IVR flow (DID 2000)


async def test_vip_flow_queues_with_priority_then_survey_is_stored(harness: Harness) -> None:
    """The demo flow: English, the CRM says VIP (Wang Fang, high ticket), priority queue,
    the agent hangs up first, the caller answers the survey; all of it lands in the row."""
    core = harness.core
    core._acd(AgentLoggedIn(agent_id="bob"), now=core.now())
    walk = Walk(harness, caller="5551234")
    await walk.start()
    assert walk.last_play().barge_in  # the language menu
    await walk.press("1")  # English; the look-up finds the VIP
    assert walk.last_play().files == ("/prompts/ivr.main.v1.vip_greeting.prompts.0.en.wav",)
    await walk.prompt_ends()  # greeting done -> queue
    (dial,) = [c for c in walk.sent if isinstance(c, ev.Dial)]
    assert core.calls["walk-1"].queue == "support"
    assert core.calls["walk-1"].routing[0]["priority"] == 10 + 20 + 5  # flow + VIP + high
    await harness.send(ev.LegAnswered(worker=W, leg=dial.leg))
    (bridge,) = [c for c in walk.drain() if isinstance(c, ev.Bridge)]
    assert bridge.hangup_together is False  # the survey follows the agent
    await harness.send(ev.LegEnded(worker=W, leg=dial.leg, by="remote", sip_code=200, reason=""))
    await harness.settled()
    walk.drain()
    assert core.acd.agent("bob").state is AgentState.WRAP_UP
    await walk.press("4")  # CSAT
    await walk.press("9")  # NPS, one digit of up to two
    await walk.timers(after_s=3)  # the inter-digit gap ends the answer
    await walk.prompt_ends()  # thanks -> hang up
    assert any(isinstance(c, ev.Hangup) and c.leg == "walk-1" for c in walk.sent)
    await walk.hang_up()
    row = core.store.get("walk-1")
    assert row is not None
    assert (row.survey_csat, row.survey_nps) == (4, 9)
    assert row.customer_id is not None and row.flow == "main@v1" and row.language == "en"
    assert row.hangup_side == "agent" and row.agent == "bob"
    steps = [step["what"] for step in json.loads(row.ivr_path or "[]")]
    assert steps[:2] == ["start", "enter"] and "agent_hung_up" in steps and "survey" in steps
    assert json.loads(row.variables or "{}")["route"] == "vip"


async def test_voicemail_is_recorded_and_filed_as_a_ticket(harness: Harness) -> None:
    """Main menu 3: a message after the tone; the known caller gets a ticket."""
    core = harness.core
    walk = Walk(harness, caller="5555678")  # Maria Lopez, no VIP
    await walk.start()
    await walk.press("1")  # English -> look-up -> main menu
    await walk.press("3")  # leave a message
    await walk.prompt_ends()
    (record,) = [c for c in walk.sent if isinstance(c, ev.Record)]
    assert record.leg == "walk-1" and record.beep and record.terminators == "#"
    await harness.send(
        ev.LegRecorded(worker=W, leg="walk-1", record_id=record.record_id, path=record.path,
                       duration_s=4.2, stopped_by="terminator")
    )  # fmt: skip
    await harness.settled()
    walk.drain()
    await walk.prompt_ends()  # goodbye
    await walk.hang_up()
    await harness.settled()
    row = core.store.get("walk-1")
    assert row is not None and row.voicemail_path == record.path
    assert row.voicemail_duration_s == 4.2 and row.voicemail_ticket == "VM-walk-1"


async def test_spoken_menu_records_after_the_prompt_and_a_digit_stops_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A menu with phrases: once its prompt ends the caller is recorded for the
    recogniser; a digit pressed instead stops the recording before the next prompt."""
    core = harness.core
    monkeypatch.setattr(core, "_speech_ready", lambda: True)
    walk = Walk(harness, caller="5550100")
    await walk.start()
    await walk.press("1")  # English -> main menu (spoken options: sales, support)
    await walk.prompt_ends()
    (record,) = [c for c in walk.sent if isinstance(c, ev.Record)]
    assert record.record_id.startswith("sp-") and not record.beep
    assert record.max_s == 5 - 1.0  # the menu's timeout less the recogniser's margin
    await walk.press("2")  # support menu instead
    stop = [c for c in walk.sent if isinstance(c, ev.StopRecord)]
    assert stop and walk.sent.index(stop[0]) < walk.sent.index(walk.last_play())


async def test_reloaded_flows_serve_new_calls_and_running_calls_keep_theirs(
    harness: Harness, tmp_path: Path
) -> None:
    core = harness.core
    first = Walk(harness, caller="5550100", leg="old")
    await first.start()
    data = harness_data()
    data["ivr"]["main"]["nodes"]["language"]["timeout_s"] = 9
    config = tmp_path / "center.yaml"
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    core.config_path = config
    result = await core.reload_flows()
    assert result == {
        "ok": True,
        "version": 2,
        "flows": ["main", "simple", "xfer", "xfer_plain"],
        "notes": [],
    }
    second = Walk(harness, caller="5550101", leg="new")
    await second.start()
    assert core.ivr.session("old").version == 1  # type: ignore[union-attr]
    assert core.ivr.session("new").version == 2  # type: ignore[union-attr]
    assert ".v2." in next(k for k, f in core.prompt_files.items() if ".v2." in k)
    data["ivr"]["main"]["nodes"]["language"]["options"]["1"] = "nowhere"
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    refused = await core.reload_flows()
    assert not refused["ok"] and "unknown node 'nowhere'" in refused["errors"][0]
    assert core.ivr.current_version == 2


async def test_position_is_announced_even_when_no_agent_could_take_the_call(
    harness: Harness,
) -> None:
    """Nobody staffs support: the wait is unknown (infinite), the position is not."""
    walk = Walk(harness, caller="5551234")
    await walk.start()
    await walk.press("1")
    await walk.prompt_ends()  # VIP greeting -> the support queue, nobody logged in
    await walk.timers(after_s=31)
    announcement = walk.last_play()
    assert announcement.files == (
        "/prompts/ivr.main.v1.vip_queue.announce.position.0.en.wav",
        "/prompts/ivr.main.v1.digits.en.1.wav",
    )


async def test_a_callback_rings_the_agent_then_the_customer_through_the_trunk(
    harness: Harness,
) -> None:
    core = harness.core
    await harness.send(ev.WorkerStatus(worker=W, up=True, pid=7, legs=0))
    core.set_agent_state("alice", "away", "lunch")
    walk = Walk(harness, caller="13800000002")
    await walk.start()
    for _ in range(3):  # English, sales, a new order: the sales queue
        await walk.press("1")
    await walk.until_callback_offer()
    await walk.press("1")
    await walk.prompt_ends()  # "we will call you back": the IVR hangs up
    assert any(isinstance(c, ev.Hangup) and c.leg == "walk-1" for c in walk.sent)
    await walk.hang_up()
    first = core.store.get("walk-1")
    assert first is not None and first.callback_number == "13800000002"

    core.set_agent_state("alice", "available")
    dial_agent = next(c for c in walk.drain() if isinstance(c, ev.Dial))
    assert dial_agent.uri.startswith("sip:1001@") and dial_agent.caller_id == "13800000002"
    await harness.send(ev.LegAnswered(worker=W, leg=dial_agent.leg))
    (dial_customer,) = [c for c in walk.drain() if isinstance(c, ev.Dial)]
    assert dial_customer.uri.startswith("sip:13800000002@") and ";trunk=" in dial_customer.uri
    await harness.send(ev.LegAnswered(worker=W, leg=dial_customer.leg))
    (bridge,) = [c for c in walk.drain() if isinstance(c, ev.Bridge)]
    assert {bridge.a, bridge.b} == {dial_agent.leg, dial_customer.leg}
    assert core.acd.agent("alice").state is AgentState.ON_CALL
    await harness.send(
        ev.LegEnded(worker=W, leg=dial_agent.leg, by="remote", sip_code=200, reason="")
    )
    assert any(isinstance(c, ev.Hangup) and c.leg == dial_customer.leg for c in walk.drain())
    await harness.send(
        ev.LegEnded(worker=W, leg=dial_customer.leg, by="local", sip_code=200, reason="")
    )
    await harness.settled()
    back = core.store.get("walk-1-cb")
    assert back is not None and back.agent == "alice" and back.answered_at is not None
    assert back.hangup_side == "agent" and back.callback_number == "13800000002"
    assert core.acd.agent("alice").state is AgentState.WRAP_UP


async def test_a_callback_the_customer_does_not_answer_is_retried_later(
    harness: Harness,
) -> None:
    core = harness.core
    await harness.send(ev.WorkerStatus(worker=W, up=True, pid=7, legs=0))
    core.set_agent_state("alice", "away", "lunch")
    walk = Walk(harness, caller="13800000003")
    await walk.start()
    for _ in range(3):
        await walk.press("1")
    await walk.until_callback_offer()
    await walk.press("1")
    await walk.prompt_ends()
    await walk.hang_up()
    core.set_agent_state("alice", "available")
    dial_agent = next(c for c in walk.drain() if isinstance(c, ev.Dial))
    await harness.send(ev.LegAnswered(worker=W, leg=dial_agent.leg))
    (dial_customer,) = [c for c in walk.drain() if isinstance(c, ev.Dial)]
    await harness.send(
        ev.LegEnded(worker=W, leg=dial_customer.leg, by="remote", sip_code=486, reason="Busy")
    )
    assert any(isinstance(c, ev.Hangup) and c.leg == dial_agent.leg for c in walk.drain())
    await harness.send(
        ev.LegEnded(worker=W, leg=dial_agent.leg, by="local", sip_code=200, reason="")
    )
    await harness.settled()
    assert core.acd.agent("alice").state is AgentState.AVAILABLE  # not the agent's fault
    assert "walk-1" in {c.call_id for c in core.acd.waiting()}  # the place is kept
    row = core.store.get("walk-1-cb")
    assert row is not None and row.hangup_side == "callback_failed" and row.answered_at is None


async def test_a_transfer_dials_through_the_trunk_and_bridges_or_falls_back(
    harness: Harness,
) -> None:
    core = harness.core
    for leg, answered in (("xfer-1", True), ("xfer-2", False)):
        await harness.send(
            ev.LegIncoming(worker=W, leg=leg, sip_call_id=leg, caller="5550111", did="3000")
        )
        await harness.send(ev.LegAnswered(worker=W, leg=leg))
        dial, _ = harness.last(ev.Dial)
        assert dial.uri.startswith("sip:5550100@") and dial.uri.endswith(";trunk=demo-trunk")
        assert dial.related_leg == leg
        if answered:
            await harness.send(ev.LegAnswered(worker=W, leg=dial.leg))
            bridge, _ = harness.last(ev.Bridge)
            assert (bridge.a, bridge.b, bridge.hangup_together) == (leg, dial.leg, True)
            await harness.send(ev.LegEnded(worker=W, leg=dial.leg, by="remote", sip_code=200,
                                           reason=""))  # fmt: skip
            await harness.send(ev.LegEnded(worker=W, leg=leg, by="local", sip_code=200,
                                           reason=""))  # fmt: skip
        else:  # busy: the flow's on_fail says so and hangs up
            await harness.send(ev.LegEnded(worker=W, leg=dial.leg, by="remote", sip_code=486,
                                           reason="Busy Here"))  # fmt: skip
            play, _ = harness.last(ev.Play)
            assert play.files == ("/prompts/ivr.xfer.v1.sorry.prompt.0.en.wav",)
            await harness.send(ev.LegEnded(worker=W, leg=leg, by="remote", sip_code=200,
                                           reason=""))  # fmt: skip
        await harness.settled()
        row = core.store.get(leg)
        assert row is not None and row.transfer_to == "5550100" and row.ended_at is not None
        assert (row.answered_at is not None) is answered
        steps = [s["what"] for s in json.loads(row.ivr_path or "[]")]
        assert "transfer" in steps and ("transfer_failed" in steps) is not answered


async def test_wrap_up_stores_the_disposition_and_a_new_linked_ticket(harness: Harness) -> None:
    """After the VIP's call: alice records a disposition and opens a ticket on it."""
    core = harness.core
    await harness.send(
        ev.LegIncoming(worker=W, leg="w-1", sip_call_id="w", caller="5551234", did="1000")
    )
    await harness.settled()
    await harness.send(ev.LegAnswered(worker=W, leg="w-1"))
    await harness.send(ev.DtmfReceived(worker=W, leg="w-1", digit="1"))
    dial, _ = harness.last(ev.Dial)
    await harness.send(ev.LegAnswered(worker=W, leg=dial.leg))
    with pytest.raises(ValueError, match="hang up first"):
        await core.desk.wrap_up("w-1", agent="alice", disposition="resolved")
    await harness.send(ev.LegEnded(worker=W, leg="w-1", by="remote", sip_code=200, reason=""))
    await harness.send(ev.LegEnded(worker=W, leg=dial.leg, by="local", sip_code=200, reason=""))
    await harness.settled()
    with pytest.raises(PermissionError):
        await core.desk.wrap_up("w-1", agent="bob", disposition="resolved")
    done = await core.desk.wrap_up(
        "w-1", agent="alice", disposition="refund issued", notes="charged twice",
        new_ticket={"subject": "Refund 8812", "priority": "high"}, link_tickets=["T-2041"],
    )  # fmt: skip
    new = done["tickets"][1]
    row = core.store.interaction("w-1")
    assert row is not None and row["disposition"] == "refund issued"
    assert sorted(row["tickets"]) == sorted(["T-2041", new])
    ticket = core.store.ticket(new)
    assert ticket is not None and ticket.priority == "high" and ticket.assignee == "alice"


async def test_a_flow_transfer_to_an_agent_who_is_not_free_takes_on_fail_at_once(
    make: Any,
) -> None:
    """The flow's `transfer: {agent}` does not ring an agent who is on a call, away or
    signed out; its on_fail runs at once (bob is signed out here)."""

    def to_bob(data: dict[str, Any]) -> None:
        data["ivr"]["xfer"]["nodes"]["out"] = {"kind": "transfer", "agent": "bob",
                                               "on_fail": "sorry"}  # fmt: skip

    harness = await make(to_bob)
    await harness.send(ev.LegIncoming(worker=W, leg="x1", sip_call_id="x1", caller="5550111",
                                      did="3000"))  # fmt: skip
    await harness.send(ev.LegAnswered(worker=W, leg="x1"))
    sent = [c for c, _ in harness.commands()]
    assert not any(isinstance(c, ev.Dial) for c in sent)
    play = [c for c in sent if isinstance(c, ev.Play)][-1]
    assert play.files == ("/prompts/ivr.xfer.v1.sorry.prompt.0.en.wav",)
    await harness.send(ev.LegEnded(worker=W, leg="x1", by="remote", sip_code=200, reason=""))
    await harness.settled()
    row = harness.core.store.get("x1")
    assert row is not None and row.transfer_to == "bob"
    steps = [(s["what"], s["detail"]) for s in json.loads(row.ivr_path or "[]")]
    assert ("transfer_failed", "agent bob is logged_out") in steps
