"""The core's call handling, fed worker events directly (no broker, no workers): what
it asks the media side to do, and that no race leaves a call or an agent behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from acd.engine import AgentLoggedIn, AgentState
from config.loader import demo_path, load
from core.app import Core
from wire import events as ev

W = 3  # the worker holding the caller


class Harness:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.dial_failed: Any = None

    async def send(self, event: Any) -> None:
        await self.core.on_event(event)

    def commands(self) -> list[tuple[ev.MediaCommand, Any]]:
        """Drain what the core queued for the workers: (command, on_fail)."""
        out = []
        while not self.core._outbox.empty():
            _worker, command, on_fail = self.core._outbox.get_nowait()
            out.append((command, on_fail))
        return out

    def last(self, kind: type) -> tuple[Any, Any]:
        found = [(c, f) for c, f in self.commands() if isinstance(c, kind)]
        assert found, f"no {kind.__name__} was sent"
        return found[-1]

    async def caller_in_queue(self, call: str = "caller-1") -> ev.Dial:
        """A caller presses 1 and alice (logged in) is offered the call: the Dial
        (its failure callback is kept in `self.dial_failed`)."""
        await self.send(
            ev.LegIncoming(worker=W, leg=call, sip_call_id="x", caller="5550001", did="1000")
        )
        await self.send(ev.LegAnswered(worker=W, leg=call))
        await self.send(ev.DtmfReceived(worker=W, leg=call, digit="1"))
        dial, self.dial_failed = self.last(ev.Dial)
        assert dial.related_leg == call
        return dial

    async def settled(self) -> None:
        for _ in range(20):  # let the SQL writer thread finish
            await asyncio.sleep(0.02)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    core = Core(load(demo_path()), tmp_path, demo_path().parent)
    core._loop = asyncio.get_running_loop()
    core.prompt_files = {k: "/dev/null" for k in _prompt_keys(core)}
    core._acd(AgentLoggedIn(agent_id="alice"), now=core.now())
    core._pump()
    yield Harness(core)
    core._journal.close()
    core._sql.shutdown(wait=True)
    core.store.close()


def _prompt_keys(core: Core) -> list[str]:
    keys = [f"ivr.{m}.{w}" for m in core.settings.ivr for w in ("prompt", "invalid", "goodbye")]
    return keys + [f"queue.{q}.moh" for q in core.settings.queues]


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
