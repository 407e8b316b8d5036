"""The core without a broker or workers: `Core.on_event` fed worker events directly,
and what it asks the media side to do drained from its outbox (`tests/unit/test_core_*`).

`build(tmp, data)` makes a core on a configuration dict (default `harness_data()`: the
demo flow on DID 2000, a one-level menu on 1000, a transfer on 3000, a carrier trunk),
with the demo customers seeded and alice logged in. `Walk` is one caller on a flow.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from acd.engine import AgentLoggedIn
from config.loader import demo_path, parse
from core.app import Core
from crm_link.demo import demo_customers
from tests.support.configs import demo_data, menu_flow
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
        """Let the core's background work (SQL writes, CRM look-ups) finish."""
        for _ in range(200):
            await asyncio.sleep(0.02)
            if not self.core._tasks:
                break


def harness_data() -> dict[str, Any]:
    """The demo flow answers 2000; 1000 is a one-level menu; 3000 transfers out (3001
    too, with no fallback when the transfer fails)."""
    data = demo_data()
    data["ivr"]["simple"] = menu_flow({"1": "sales", "2": "support"})
    data["ivr"]["xfer"] = {
        "start": "out", "languages": ["en"], "default_language": "en",
        "nodes": {
            "out": {"kind": "transfer", "number": "5550100", "on_fail": "sorry"},
            "sorry": {"kind": "hangup", "prompt": {"text": "Nobody answered."}},
        },
    }  # fmt: skip
    data["ivr"]["xfer_plain"] = {
        "start": "out", "languages": ["en"], "default_language": "en",
        "nodes": {"out": {"kind": "transfer", "number": "5550100"}},
    }  # fmt: skip
    data["dids"] = {
        "1000": {"ivr": "simple"}, "2000": {"ivr": "main"}, "3000": {"ivr": "xfer"},
        "3001": {"ivr": "xfer_plain"},
    }  # fmt: skip
    data["edge"]["trunks"][0]["outbound"] = "127.0.0.1:5999"  # the carrier
    return data


def _prompt_keys(core: Core) -> list[str]:
    return [*core.ivr.prompt_catalog(), *(f"queue.{q}.moh" for q in core.settings.queues)]


async def build(tmp_path: Path, data: dict[str, Any] | None = None) -> Harness:
    core = Core(parse(data or harness_data(), "test.yaml"), tmp_path, demo_path())
    core._loop = asyncio.get_running_loop()
    core.prompt_files = {k: f"/prompts/{k}.wav" for k in _prompt_keys(core)}
    core.store.seed(*demo_customers())
    core._acd(AgentLoggedIn(agent_id="alice"), now=core.now())
    core._pump()
    return Harness(core)


def close(h: Harness) -> None:
    h.core._journal.close()
    h.core._sql.shutdown(wait=True)
    h.core.store.close()


class Walk:
    """One caller on the demo flow, answering what the core asks of the worker."""

    def __init__(
        self, harness: Harness, caller: str, leg: str = "walk-1", did: str = "2000"
    ) -> None:
        self.h, self.caller, self.leg, self.did = harness, caller, leg, did
        self.sent: list[ev.MediaCommand] = []

    async def start(self) -> None:
        await self.h.send(
            ev.LegIncoming(
                worker=W, leg=self.leg, sip_call_id="w", caller=self.caller, did=self.did
            )
        )
        await self.h.send(ev.LegAnswered(worker=W, leg=self.leg))
        self.drain()

    def drain(self) -> list[ev.MediaCommand]:
        new = [c for c, _ in self.h.commands()]
        self.sent += new
        return new

    def last_play(self) -> ev.Play:
        plays = [c for c in self.sent if isinstance(c, ev.Play) and c.leg == self.leg]
        assert plays, "nothing was played"
        return plays[-1]

    async def press(self, digits: str) -> None:
        for digit in digits:
            await self.h.send(ev.DtmfReceived(worker=W, leg=self.leg, digit=digit))
        await self.h.settled()  # CRM look-ups run on the SQL thread
        self.drain()

    async def prompt_ends(self) -> None:
        play = self.last_play()
        await self.h.send(ev.PlaybackFinished(worker=W, leg=self.leg, play_id=play.play_id))
        await self.h.settled()
        self.drain()

    async def timers(self, after_s: float) -> None:
        core = self.h.core
        core.ivr.handle_timer(now=time.time() + after_s)
        core._pump()
        await self.h.settled()
        self.drain()

    async def until_callback_offer(self) -> None:
        """Wait in the queue (announcements play and end) until the callback offer."""
        for i in range(4):
            await self.timers(after_s=61 + 10 * i)
            if "callback.prompt" in self.last_play().files[0]:
                return
            await self.prompt_ends()
        raise AssertionError("no callback offer")

    async def hang_up(self) -> None:
        await self.h.send(ev.LegEnded(worker=W, leg=self.leg, by="remote", sip_code=200, reason=""))
        await self.h.settled()
