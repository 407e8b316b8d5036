"""Races and failure paths of the core's call handling, found by a review of the IVR
wiring: events in unusual orders, refused commands, reloads mid-call, callbacks crossing
offers. Each test names the defect it guards against."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from acd.engine import AgentLoggedOut, AgentSetAway, AgentState
from core import app
from tests.support.core_harness import Harness, W, Walk, harness_data
from wire import events as ev


async def test_1_voicemail_ended_by_hanging_up_is_kept(harness: Harness) -> None:
    """The worker emits LegEnded at once and LegRecorded >= 0.3 s later (header written
    when the recorder is destroyed). _leg_recorded finds the call through self.legs,
    which _leg_ended already emptied: the message and its ticket are dropped."""
    core = harness.core
    walk = Walk(harness, caller="5555678")
    await walk.start()
    await walk.press("1")
    await walk.press("3")
    await walk.prompt_ends()
    (record,) = [c for c in walk.sent if isinstance(c, ev.Record)]
    await walk.hang_up()  # the caller ends the message by hanging up
    await harness.send(
        ev.LegRecorded(
            worker=W,
            leg="walk-1",
            record_id=record.record_id,
            path=record.path,
            duration_s=7.5,
            stopped_by="hangup",
        )
    )
    await harness.settled()
    row = core.store.get("walk-1")
    assert row is not None
    assert row.voicemail_path == record.path, "voicemail lost"
    assert row.voicemail_ticket == "VM-walk-1"


# ------------------------------------------------------------------ 2. transfer


async def test_2_a_failed_transfer_without_on_fail_hangs_up_the_caller(harness: Harness) -> None:
    """transfer node without on_fail: the flow finished at once ("transferred"), so
    TransferFailed goes nowhere and nothing hangs the caller up: silence for ever."""
    core = harness.core
    await harness.send(
        ev.LegIncoming(worker=W, leg="x-1", sip_call_id="x", caller="5550111", did="3001")
    )
    await harness.send(ev.LegAnswered(worker=W, leg="x-1"))
    dial, _ = harness.last(ev.Dial)
    await harness.send(
        ev.LegEnded(worker=W, leg=dial.leg, by="remote", sip_code=486, reason="Busy Here")
    )
    sent = [c for c, _ in harness.commands()]
    assert core.ivr.session("x-1") is None  # the flow is gone already
    assert any(isinstance(c, ev.Hangup) and c.leg == "x-1" for c in sent), (
        f"caller x-1 left on an answered, silent leg; sent={sent}, "
        f"ended_at={core.calls['x-1'].ended_at}"
    )


# ------------------------------------------------------------------ 3. overflow to IVR


def _sales_leaves_to_ivr(data: dict[str, Any]) -> None:
    data["queues"]["sales"]["leave_when_empty"] = True
    data["queues"]["sales"]["overflow"] = {"kind": "ivr", "target": "xfer"}


async def test_3_overflow_to_ivr_of_two_calls_starts_both_flows(make: Any) -> None:
    """_overflow drains the whole flow command queue keeping only FlowEnded: the first
    overflowed call's new-flow commands (here its transfer Dial) are thrown away."""
    h = await make(_sales_leaves_to_ivr)
    core = h.core
    # alice takes a first call and is in wrap-up (staffed, not available) ...
    await h.send(
        ev.LegIncoming(worker=W, leg="c-0", sip_call_id="c-0", caller="5550001", did="1000")
    )
    await h.send(ev.LegAnswered(worker=W, leg="c-0"))
    await h.send(ev.DtmfReceived(worker=W, leg="c-0", digit="1"))
    dial, _ = h.last(ev.Dial)
    await h.send(ev.LegAnswered(worker=W, leg=dial.leg))
    await h.send(ev.LegEnded(worker=W, leg="c-0", by="remote", sip_code=200, reason=""))
    await h.send(ev.LegEnded(worker=W, leg=dial.leg, by="local", sip_code=200, reason=""))
    assert core.acd.agent("alice").state is AgentState.WRAP_UP
    for leg in ("c-1", "c-2"):
        await h.send(
            ev.LegIncoming(worker=W, leg=leg, sip_call_id=leg, caller="5550001", did="1000")
        )
        await h.send(ev.LegAnswered(worker=W, leg=leg))
        await h.send(ev.DtmfReceived(worker=W, leg=leg, digit="1"))
    assert {c.call_id for c in core.acd.waiting()} == {"c-1", "c-2"}
    h.commands()
    core._acd(AgentLoggedOut(agent_id="alice"))  # the last agent leaves: leave_when_empty
    core._pump()
    dials = [c.related_leg for c, _ in h.commands() if isinstance(c, ev.Dial)]
    s1 = core.ivr.session("c-1")
    assert sorted(dials) == ["c-1", "c-2"], (
        f"only {dials} got their new flow's command; c-1 flow={s1 and s1.flow_name} "
        f"step={s1 and s1.step} timers={s1 and s1.timers}"
    )


# ------------------------------------------------------------------ 4. reload


async def test_4a_a_call_during_reload_rendering_is_not_broken(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reload_flows makes version 2 current before its prompts are rendered (in a thread,
    seconds with espeak-ng): a call answered meanwhile raises KeyError in _play."""
    core = harness.core
    data = harness_data()
    data["ivr"]["simple"]["nodes"]["menu"]["prompt"] = {"text": "New menu text."}
    config = tmp_path / "center.yaml"
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    core.config_path = config
    started = threading.Event()

    def slow_render() -> None:
        started.set()
        time.sleep(0.5)

    real = core._render_flows

    def slow(*args: Any) -> Any:
        slow_render()
        return real(*args)

    monkeypatch.setattr(core, "_render_flows", slow)
    task = asyncio.create_task(core.reload_flows())
    await asyncio.to_thread(started.wait, 10)
    await harness.send(
        ev.LegIncoming(worker=W, leg="r-1", sip_call_id="r", caller="5550001", did="1000")
    )
    try:
        await harness.send(ev.LegAnswered(worker=W, leg="r-1"))
    finally:
        await task
    assert any(isinstance(c, ev.Play) for c, _ in harness.commands())


async def test_4b_reload_refuses_flows_the_running_config_cannot_serve(
    harness: Harness, tmp_path: Path
) -> None:
    """Only settings.ivr is swapped, but the new file is validated against its own dids/
    queues: dropping flow 'xfer' (and its DID in the same edit) is accepted, yet the
    running DID 3000 still names it -> every call to 3000 is hung up ('unknown flow')."""
    core = harness.core
    data = harness_data()
    del data["ivr"]["xfer"]
    data["dids"].pop("3000")
    config = tmp_path / "center.yaml"
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    core.config_path = config
    result = await core.reload_flows()
    await harness.send(
        ev.LegIncoming(worker=W, leg="d-1", sip_call_id="d", caller="5550001", did="3000")
    )
    await harness.send(ev.LegAnswered(worker=W, leg="d-1"))
    hung = [c for c, _ in harness.commands() if isinstance(c, ev.Hangup) and c.leg == "d-1"]
    assert not result["ok"] or not hung, "reload accepted; DID 3000 callers are now hung up"


async def test_4c_reload_that_adds_a_spoken_menu_loads_the_model(
    make: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """_load_speech reads self.settings.ivr, which reload_flows updates only after it."""

    def no_speech(data: dict[str, Any]) -> None:
        data["ivr"]["main"]["nodes"]["main_menu"].pop("speech")

    h = await make(no_speech)
    core = h.core

    class FakeModel:
        path = "fake"

    monkeypatch.setattr("core.app.SpeechModel", FakeModel)
    monkeypatch.setattr(core, "render_prompts", lambda: None)
    config = tmp_path / "center.yaml"
    config.write_text(yaml.safe_dump(harness_data(), allow_unicode=True))  # with speech
    core.config_path = config
    assert (await core.reload_flows())["ok"]
    assert core._speech is not None, "spoken options stay off until a restart"


# ------------------------------------------------------------------ 5. speech leak


async def test_5_speech_grammar_is_forgotten_and_a_late_answer_ignored(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grammar of a spoken answer lives with that Record: a digit instead (the
    Record stopped) drops it, and a recognition for an older question is not delivered."""
    core = harness.core
    monkeypatch.setattr(core, "_speech_ready", lambda: True)
    walk = Walk(harness, caller="5550100")
    await walk.start()
    await walk.press("1")
    await walk.prompt_ends()
    (record,) = [c for c in walk.sent if isinstance(c, ev.Record)]
    call = core.calls["walk-1"]
    assert call.grammar is not None and "sales" in call.grammar[1]
    await walk.press("2")  # a digit instead: StopRecord
    await harness.send(ev.LegRecorded(worker=W, leg="walk-1", record_id=record.record_id,
                                      path=record.path, duration_s=1.0,
                                      stopped_by="stopped"))  # fmt: skip
    assert call.grammar is None


async def test_6_caller_accepting_a_callback_while_the_agent_rings(harness: Harness) -> None:
    """The offer rings, the caller takes the callback (the flow says goodbye): the
    agent's late answer is hung up, not bridged, and is not held against the agent; the
    caller's goodbye plays on and the place is kept for the callback."""
    core = harness.core
    core.set_agent_state("alice", "away", "lunch")
    walk = Walk(harness, caller="13800000002")
    await walk.start()
    for _ in range(3):
        await walk.press("1")
    await walk.until_callback_offer()
    core.set_agent_state("alice", "available")
    (dial,) = [c for c in walk.drain() if isinstance(c, ev.Dial)]
    await walk.press("1")  # keep my place, call me back
    await harness.send(ev.LegAnswered(worker=W, leg=dial.leg))
    after = walk.drain()
    assert not any(isinstance(c, ev.Bridge) for c in after)
    assert any(isinstance(c, ev.Hangup) and c.leg == dial.leg for c in after)
    assert core.acd.agent("alice").missed == 0
    session = core.ivr.session("walk-1")
    assert session is not None and session.node == "callback_ok"


# ------------------------------------------------------------------ 7. legs leak


async def test_7_a_refused_dial_of_a_cancelled_offer_leaves_no_leg(harness: Harness) -> None:
    core = harness.core
    await harness.send(
        ev.LegIncoming(worker=W, leg="caller-1", sip_call_id="x", caller="5550001", did="1000")
    )
    await harness.send(ev.LegAnswered(worker=W, leg="caller-1"))
    await harness.send(ev.DtmfReceived(worker=W, leg="caller-1", digit="1"))
    dial, on_fail = harness.last(ev.Dial)
    await harness.send(ev.LegEnded(worker=W, leg="caller-1", by="remote", sip_code=200, reason=""))
    on_fail(ev.CommandResult(ok=False, error="unknown related leg"))
    await harness.settled()
    assert dial.leg not in core.legs, "a never-placed leg stays in Core.legs for ever"


# ------------------------------------------------------------------ 8. callback recording


async def _placed_callback(harness: Harness) -> tuple[Walk, None, None, None]:
    """Walk to the sales queue (alice away), accept the callback offer."""
    core = harness.core
    await harness.send(ev.WorkerStatus(worker=W, up=True, pid=7, legs=0))
    core.set_agent_state("alice", "away", "lunch")
    walk = Walk(harness, caller="13800000002")
    await walk.start()
    for _ in range(3):
        await walk.press("1")
    await walk.until_callback_offer()
    await walk.press("1")
    return walk, None, None, None


async def test_8_callback_bridge_recording_lands_in_its_row(harness: Harness) -> None:
    """The worker reports a bridge recording under the bridge's leg a (the customer
    leg); _recording_finished only matches call ids and agent legs: lost duration."""
    core = harness.core
    walk, *_ = await _placed_callback(harness)
    await walk.prompt_ends()
    await walk.hang_up()
    core.set_agent_state("alice", "available")
    dial_agent = next(c for c in walk.drain() if isinstance(c, ev.Dial))
    await harness.send(ev.LegAnswered(worker=W, leg=dial_agent.leg))
    (dial_customer,) = [c for c in walk.drain() if isinstance(c, ev.Dial)]
    await harness.send(ev.LegAnswered(worker=W, leg=dial_customer.leg))
    (bridge,) = [c for c in walk.drain() if isinstance(c, ev.Bridge)]
    assert bridge.record_path
    for leg in (dial_agent.leg, dial_customer.leg):
        await harness.send(ev.LegEnded(worker=W, leg=leg, by="remote", sip_code=200, reason=""))
    await harness.send(
        ev.RecordingFinished(worker=W, leg=bridge.a, path=bridge.record_path, duration_s=42.0)
    )
    await harness.settled()
    row = core.store.get("walk-1-cb")
    assert row is not None and row.recording_duration_s == 42.0


# ------------------------------------------------------------------ 9. hangup_side


async def test_9_a_caller_waiting_for_a_callback_did_not_abandon(harness: Harness) -> None:
    core = harness.core
    walk, *_ = await _placed_callback(harness)
    await walk.hang_up()  # hangs up during "we will call you back"
    row = core.store.get("walk-1")
    assert row is not None and row.callback_number == "13800000002"
    assert row.hangup_side != "abandon", "counted as an abandoned call"


# ------------------------------------------------------------------ 10. queue overflow


def _sales_overflows_to_support(data: dict[str, Any]) -> None:
    data["queues"]["sales"]["max_wait_s"] = 40
    data["queues"]["sales"]["overflow"] = {"kind": "queue", "target": "support"}


async def test_10_queue_overflow_during_an_announcement_keeps_the_flow_going(make: Any) -> None:
    """_overflow(kind=queue) sends Play(moh) over the announcement: no PlaybackFinished
    for its seq, so the flow stays ANNOUNCING: no more announcements, and the callback
    offer is postponed by 5 s for ever."""
    h = await make(_sales_overflows_to_support)
    core = h.core
    core.set_agent_state("alice", "away", "lunch")
    walk = Walk(h, caller="13800000002")
    await walk.start()
    for _ in range(3):
        await walk.press("1")
    await walk.timers(after_s=31)  # position announcement plays
    assert "announce.position" in walk.last_play().files[0]
    core.acd.handle_timer(now=core.now() + 41)  # the queue's max wait: to support
    core._pump()
    walk.drain()
    assert walk.last_play().play_id == "moh"
    for t in (62, 70, 80, 90, 100):
        await walk.timers(after_s=t)
    session = core.ivr.session("walk-1")
    assert any("callback.prompt" in p.files[0] for p in walk.sent if isinstance(p, ev.Play)), (
        f"no callback offer ever; step={session and session.step}"
    )


# ------------------------------------------------------------------ 2b. transfer after an agent


def _survey_then_transfer(data: dict[str, Any]) -> None:
    data["ivr"]["after"] = {
        "start": "q", "languages": ["en"], "default_language": "en",
        "nodes": {
            "q": {"kind": "queue", "queue": "sales", "after_agent": "out"},
            "out": {"kind": "transfer", "number": "5550100", "on_fail": "sorry"},
            "sorry": {"kind": "hangup", "prompt": {"text": "Nobody answered."}},
        },
    }  # fmt: skip
    data["dids"]["4000"] = {"ivr": "after"}


async def test_2b_a_transfer_after_the_agent_that_fails_takes_on_fail(make: Any) -> None:
    """_transfer_ended/_transfer_timeout use call.answered_at (set by the *agent's*
    answer) as 'the transfer answered': a busy target is not reported, TRANSFERRING
    has no timer, the 30 s ring limit never hangs the target up."""
    h = await make(_survey_then_transfer)
    await h.send(ev.LegIncoming(worker=W, leg="t-1", sip_call_id="t", caller="5550001", did="4000"))
    await h.send(ev.LegAnswered(worker=W, leg="t-1"))
    dial, _ = h.last(ev.Dial)
    await h.send(ev.LegAnswered(worker=W, leg=dial.leg))
    await h.send(ev.LegEnded(worker=W, leg=dial.leg, by="remote", sip_code=200, reason=""))
    xfer, _ = h.last(ev.Dial)
    assert xfer.uri.startswith("sip:5550100@")
    await h.send(ev.LegEnded(worker=W, leg=xfer.leg, by="remote", sip_code=486, reason="Busy"))
    await h.settled()
    sent = [c for c, _ in h.commands()]
    s = h.core.ivr.session("t-1")
    assert any(isinstance(c, ev.Play | ev.Hangup) for c in sent), (
        f"nothing sent; flow step={s and s.step} timers={s and s.timers}"
    )


# ------------------------------------------------------------------ 11. callback dial refused


async def test_11_a_callback_dial_the_worker_refused_is_not_the_agents_fault(
    harness: Harness,
) -> None:
    core = harness.core
    walk, *_ = await _placed_callback(harness)
    await walk.prompt_ends()
    await walk.hang_up()
    core.set_agent_state("alice", "available")
    found = [(c, f) for c, f in harness.commands() if isinstance(c, ev.Dial)]
    ((_dial_agent, on_fail),) = found
    on_fail(ev.CommandResult(ok=False, error="worker full: 4/4 legs"))
    await harness.settled()
    assert core.acd.agent("alice").missed == 0, "counted as alice letting it ring out"


async def test_an_edge_rpc_outage_stops_only_the_presence_poll(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kamailio's RPC away: nobody is logged out for it, and the queue positions, the
    database check and the CRM outbox drain go on."""
    core = harness.core

    def rpc_down() -> dict[str, str]:
        raise ConnectionRefusedError("edge RPC")

    monkeypatch.setattr(core.edge, "registered_users", rpc_down)
    monkeypatch.setattr(app, "REGISTRATION_POLL_S", 0.01)
    core._acd(AgentSetAway(agent_id="alice", reason="break"))  # the caller must wait
    await harness.send(
        ev.LegIncoming(worker=W, leg="c1", sip_call_id="x", caller="5550001", did="1000")
    )
    await harness.send(ev.LegAnswered(worker=W, leg="c1"))
    await harness.send(ev.DtmfReceived(worker=W, leg="c1", digit="1"))
    core._positions.clear()
    drained: list[bool] = []

    async def drain() -> None:
        drained.append(True)

    monkeypatch.setattr(core, "_drain_crm", drain)
    poll = asyncio.create_task(core._poll_registrations())
    try:
        for _ in range(100):
            await asyncio.sleep(0.02)
            if drained and core.db_ok and "c1" in core._positions:
                break
    finally:
        poll.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poll
    assert core.edge_ok is False
    assert core._positions["c1"][0] == 1  # still told its place
    assert drained and core.db_ok
    assert core.acd.agent("alice").state is AgentState.AWAY  # not logged out
