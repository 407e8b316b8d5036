"""The core process (`kefu core`): every decision about a call, no media.

It listens to the media workers over MQTT, feeds the pure IVR and queue engines with
what happened, carries out their commands on the worker that holds the caller, and
writes the record of each call through SQLAlchemy. One asyncio timer is re-armed from
the engines' `next_deadline()`. Agent presence comes from the edge's registrar (polled
over Kamailio's JSON-RPC), so an agent whose phone registers becomes available when
`auto_available` is set.

Neighbours: `core.bus` (MQTT), `ivr.engine`, `acd.engine`, `crm_link.store` (SQL),
`recording` (prompts, paths), `softphone_web.app` (HTTP health and live views),
`pbx.edge` (registrations).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import signal
import time
import uuid
from collections.abc import Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import uvicorn

from acd import engine as acd
from acd import journal
from acd.build import specs_from_settings
from config.schema import Settings
from core.bus import BrokerUnavailable, Bus
from crm_link.demo import demo_customers
from crm_link.models import CallRecord
from crm_link.store import CallStore, CustomerCard, database_url
from ivr import engine as ivr
from pbx.edge import Edge
from recording import prompts
from recording.storage import recording_path, repair_wav
from softphone_web.app import create_app
from wire import events as ev

log = logging.getLogger("kefu.core")

REGISTRATION_POLL_S = 1.0
JOURNAL_MAX_BYTES = 256 * 1024 * 1024
MAX_WRITE_RETRY_S = 30.0
"""A call record that cannot be written (database away) is retried, never dropped."""
RECONCILE_EVERY = 5
"""Registration polls between two reconciliations of the queue engine."""


@dataclass
class Call:
    """The core's view of one call from the trunk (keyed by the caller leg id)."""

    call_id: str
    worker: int
    sip_call_id: str
    caller: str
    did: str
    arrived_at: float
    queue: str | None = None
    ivr_digits: str = ""
    agent: str | None = None
    agent_leg: str | None = None
    queued_at: float | None = None
    offered_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    hangup_side: str | None = None
    recording: str | None = None
    recording_duration_s: float | None = None
    caller_rtp: ev.RtpCounters = field(default_factory=ev.RtpCounters)
    agent_rtp: ev.RtpCounters = field(default_factory=ev.RtpCounters)
    caller_ended: bool = False
    customer: CustomerCard | None = None
    """The CRM's card for the caller, looked up while the IVR plays."""
    routing: list[dict[str, Any]] = field(default_factory=list)
    """The queue engine's decision trace for each offer of this call."""
    prompt_seq: dict[str, int] = field(default_factory=dict)
    """play_id -> IVR prompt sequence number"""

    def record(self) -> CallRecord:
        def ts(value: float | None) -> datetime | None:
            return None if value is None else datetime.fromtimestamp(value, tz=UTC)

        return CallRecord(
            call_id=self.call_id,
            sip_call_id=self.sip_call_id,
            caller=self.caller,
            did=self.did,
            ivr_digits=self.ivr_digits,
            queue=self.queue,
            agent=self.agent,
            worker=self.worker,
            arrived_at=ts(self.arrived_at),
            queued_at=ts(self.queued_at),
            offered_at=ts(self.offered_at),
            answered_at=ts(self.answered_at),
            ended_at=ts(self.ended_at),
            hangup_side=self.hangup_side,
            recording_path=self.recording,
            recording_duration_s=self.recording_duration_s,
            routing_trace=json.dumps(self.routing) if self.routing else None,
            caller_rtp_rx=self.caller_rtp.rx_packets,
            caller_rtp_tx=self.caller_rtp.tx_packets,
            agent_rtp_rx=self.agent_rtp.rx_packets,
            agent_rtp_tx=self.agent_rtp.tx_packets,
        )


class Core:
    def __init__(self, settings: Settings, data_dir: Path, config_dir: Path) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.config_dir = config_dir
        self.store = CallStore(database_url(settings.database.url, data_dir))
        # One writer thread: saves of the same call (at hang-up, then with its
        # recording) must not race each other into two INSERTs.
        self._sql = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sql")
        self.edge = Edge.attach(settings)
        self.bus = Bus(settings.broker.host, settings.broker.port, self.on_event)
        self.ivr = ivr.IvrEngine(
            {
                name: ivr.MenuSpec(
                    name,
                    {d: o.queue for d, o in menu.options.items()},
                    menu.timeout_s,
                    menu.max_retries,
                )
                for name, menu in settings.ivr.items()
            }
        )
        self.acd = acd.AcdEngine(*specs_from_settings(settings))
        # Every input the queue engine sees, one JSON line each: `kefu acd replay`
        # re-runs it against a candidate policy.
        self._journal = open(data_dir / "acd-journal.jsonl", "a", encoding="utf-8")
        self.calls: dict[str, Call] = {}
        self.legs: dict[str, tuple[str, str]] = {}
        """leg id -> (call id, 'caller' | 'agent')"""
        self.workers: dict[int, ev.WorkerStatus] = {}
        self.registered: dict[str, str] = {}
        self.edge_ok = False
        self.db_ok = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.prompt_files: dict[str, str] = {}
        self._outbox: asyncio.Queue[tuple[int, ev.MediaCommand, Any]] = asyncio.Queue()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started_at = time.time()

    # ------------------------------------------------------------------ set-up

    def render_prompts(self) -> None:
        cache = self.data_dir / "prompts"
        for name, menu in self.settings.ivr.items():
            for which in ("prompt", "invalid", "goodbye"):
                path = prompts.resolve(getattr(menu, which), cache, self.config_dir)
                self.prompt_files[f"ivr.{name}.{which}"] = str(path)
        default_moh = (
            prompts.resolve(self.settings.music_on_hold, cache, self.config_dir)
            if self.settings.music_on_hold
            else prompts.music_on_hold(cache)
        )
        for name, queue in self.settings.queues.items():
            moh = queue.music_on_hold
            path = prompts.resolve(moh, cache, self.config_dir) if moh else default_moh
            self.prompt_files[f"queue.{name}.moh"] = str(path)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.render_prompts)
        await self._check_database()
        if self.settings.demo_customers:
            seeded = await asyncio.to_thread(self.store.seed, *demo_customers())
            if seeded:
                log.info("seeded %d demo customers", seeded)
        app = create_app(self)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=self.settings.http.host,
                port=self.settings.http.port,
                log_level="warning",
                lifespan="off",
            )
        )
        tasks = [
            asyncio.create_task(self.bus.run(), name="bus"),
            asyncio.create_task(self._send_commands(), name="outbox"),
            asyncio.create_task(self._poll_registrations(), name="registrations"),
            asyncio.create_task(server.serve(), name="http"),
        ]
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._loop.add_signal_handler(sig, stop.set)
        log.info("core running; HTTP on %s:%d", self.settings.http.host, self.settings.http.port)
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter and task.exception() is not None:
                log.error("task %s failed: %r", task.get_name(), task.exception())
        server.should_exit = True
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._tasks:  # records being written (or retried) get a last chance
            await asyncio.wait(self._tasks, timeout=5.0)
        self._journal.close()
        self._sql.shutdown(wait=True)  # the last records reach the database
        self.store.close()

    # ------------------------------------------------------------------ clock

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _acd(self, event: acd.AcdEvent, *, now: float) -> None:
        self.acd.handle(event, now=now)
        # after handle: an event the engine refused (and so ignored) is not replayed
        self._journal.write(journal.dump(event, now) + "\n")

    def _rotate_journal(self) -> None:
        """Start a new journal file past JOURNAL_MAX_BYTES; old ones keep their data."""
        if self._journal.tell() < JOURNAL_MAX_BYTES:
            return
        self._journal.close()
        path = self.data_dir / "acd-journal.jsonl"
        path.rename(path.with_name(f"acd-journal-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"))
        self._journal = open(path, "a", encoding="utf-8")

    def _pump(self) -> None:
        """Carry out everything the engines asked for, then re-arm the one timer."""
        while True:
            progressed = False
            while (icmd := self.ivr.next_command()) is not None:
                progressed = True
                self._do_ivr(icmd)
            while (acmd := self.acd.next_command()) is not None:
                progressed = True
                self._do_acd(acmd)
            if not progressed:
                break
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadlines = [
            d for d in (self.ivr.next_deadline(), self.acd.next_deadline()) if d is not None
        ]
        if deadlines and self._loop is not None:
            self._timer = self._loop.call_at(min(deadlines), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self.now()
        self.ivr.handle_timer(now=now)
        self.acd.handle_timer(now=now)
        self._pump()

    # ------------------------------------------------------------------ media events

    async def on_event(self, event: Any) -> None:
        if isinstance(event, ev.WorkerStatus):
            previous = self.workers.get(event.worker)
            self.workers[event.worker] = event
            restarted = previous is not None and previous.pid not in (0, event.pid)
            if not event.up or restarted:
                self._worker_lost(event.worker)
                self._pump()
            return
        handler: Any = {
            ev.LegIncoming: self._leg_incoming,
            ev.LegAnswered: self._leg_answered,
            ev.DtmfReceived: self._dtmf,
            ev.PlaybackFinished: self._playback_finished,
            ev.LegEnded: self._leg_ended,
            ev.RecordingFinished: self._recording_finished,
        }.get(type(event))
        if handler is not None:
            handler(event)
            self._pump()

    def _leg_incoming(self, e: ev.LegIncoming) -> None:
        target = self.settings.dids.get(e.did)
        if target is None:
            log.warning("call %s to unknown DID %r from %s: rejected", e.leg, e.did, e.caller)
            self._send(e.worker, ev.Hangup(leg=e.leg, sip_code=404))
            return
        call = Call(
            call_id=e.leg,
            worker=e.worker,
            sip_call_id=e.sip_call_id,
            caller=e.caller,
            did=e.did,
            arrived_at=time.time(),
        )
        self.calls[call.call_id] = call
        self.legs[e.leg] = (call.call_id, "caller")
        self._spawn(self._look_up_caller(call))
        log.info("call %s from %s to %s on worker %d", call.call_id, e.caller, e.did, e.worker)
        self._send(e.worker, ev.Answer(leg=e.leg))

    async def _check_database(self) -> None:
        try:
            self.db_ok = await asyncio.get_running_loop().run_in_executor(
                self._sql, self.store.ping
            )
        except Exception as exc:
            if self.db_ok:
                log.warning("database unavailable: %s", exc)
            self.db_ok = False

    async def _look_up_caller(self, call: Call) -> None:
        """The CRM card, fetched while the IVR plays; it feeds the call's priority."""
        try:
            call.customer = await asyncio.get_running_loop().run_in_executor(
                self._sql, self.store.lookup, "caller", call.caller
            )
        except Exception:
            log.exception("CRM look-up of %s failed; routing without it", call.caller)

    def _priority(self, call: Call) -> int:
        card, rules = call.customer, self.settings.priority
        if card is None:
            return 0
        ticket = rules.open_ticket.get(card.ticket_priority, 0)  # type: ignore[call-overload]
        return (rules.vip if card.vip else 0) + ticket

    def _leg_answered(self, e: ev.LegAnswered) -> None:
        call, role = self._lookup(e.leg)
        if call is not None and role == "caller":
            menu = self.settings.dids[call.did].ivr
            self.ivr.handle(ivr.CallStarted(call_id=call.call_id, menu=menu), now=self.now())
            return
        if call is None:
            # Not ours (e.g. answered before this core started): calls survive a core
            # restart on their worker, so an unknown leg is left alone.
            return
        if call.agent_leg != e.leg or call.answered_at is not None or call.caller_ended:
            # An agent picked up an offer that was already cancelled or superseded: end
            # that leg rather than leave the agent on dead air.
            self._send(e.worker, ev.Hangup(leg=e.leg))
            return
        try:
            self._acd(acd.OfferAnswered(call_id=call.call_id), now=self.now())
        except acd.IllegalTransition:
            log.warning("call %s: answer on leg %s came after the offer ended", call.call_id, e.leg)
            self._send(e.worker, ev.Hangup(leg=e.leg))
            return
        call.answered_at = time.time()
        if self.settings.recording.enabled:
            call.recording = str(recording_path(self.data_dir, call.call_id, call.arrived_at))
        self._send(
            call.worker,
            ev.Bridge(a=call.call_id, b=e.leg, record_path=call.recording or ""),
            on_fail=lambda _r, c=call: self._bridge_failed(c),
        )
        wait = call.answered_at - (call.queued_at or call.arrived_at)
        self._publish(
            ev.CallAnswered(
                call_id=call.call_id, queue=call.queue or "", agent=call.agent or "", wait_s=wait
            )
        )

    def _bridge_failed(self, call: Call) -> None:
        """Caller and agent are both up but not connected: end both, say why."""
        log.error("call %s: bridge refused; hanging up both legs", call.call_id)
        call.hangup_side = call.hangup_side or "system"
        for leg in (call.call_id, call.agent_leg):
            if leg is not None and leg in self.legs:
                self._send(call.worker, ev.Hangup(leg=leg))

    def _dtmf(self, e: ev.DtmfReceived) -> None:
        call, role = self._lookup(e.leg)
        if call is not None and role == "caller":
            self.ivr.handle(ivr.DigitPressed(call_id=call.call_id, digit=e.digit), now=self.now())

    def _playback_finished(self, e: ev.PlaybackFinished) -> None:
        call, role = self._lookup(e.leg)
        if call is None or role != "caller":
            return
        seq = call.prompt_seq.pop(e.play_id, None)
        if seq is not None:
            self.ivr.handle(ivr.PromptEnded(call_id=call.call_id, seq=seq), now=self.now())

    def _leg_ended(self, e: ev.LegEnded) -> None:
        call, role = self._lookup(e.leg)
        self.legs.pop(e.leg, None)
        if call is None:
            return
        now = self.now()
        if role == "agent":
            if e.leg != call.agent_leg:
                # an offer that was cancelled or superseded: nothing to account for
                if call.caller_ended:
                    self._maybe_finish(call)
                return
            call.agent_rtp = e.rtp
            if call.answered_at is None:
                # the agent's phone rejected, failed or was cancelled before answering
                if call.caller_ended:
                    self._maybe_finish(call)  # abandoned while the agent's phone rang
                else:
                    call.agent_leg = call.agent = None
                    failed = acd.OfferFailed(call_id=call.call_id, reason="no_answer")
                    self._acd(failed, now=now)
                return
            if call.hangup_side is None:
                call.hangup_side = "agent"
            self._maybe_finish(call)
            return
        call.caller_rtp = e.rtp
        call.caller_ended = True
        if call.hangup_side is None:
            if e.by == "local":
                call.hangup_side = "system"
            elif call.answered_at is None and call.queued_at is not None:
                call.hangup_side = "abandon"
            else:
                call.hangup_side = "caller"
        if call.agent_leg is not None and call.agent_leg in self.legs:
            # normally the worker ends a bridged agent leg itself (hangup_together);
            # this covers a caller who left between the agent's answer and the bridge
            self._send(call.worker, ev.Hangup(leg=call.agent_leg))
        self.ivr.handle(ivr.CallGone(call_id=call.call_id), now=now)
        self._acd(acd.CallLeft(call_id=call.call_id), now=now)
        self._maybe_finish(call)

    def _recording_finished(self, e: ev.RecordingFinished) -> None:
        call = self.calls.get(e.leg)
        if call is None:
            for candidate in self.calls.values():
                if candidate.agent_leg == e.leg:
                    call = candidate
        if call is None:
            return
        call.recording = e.path
        call.recording_duration_s = e.duration_s
        if call.ended_at is not None:
            self._save(call)

    def _worker_lost(self, worker: int) -> None:
        """A worker died (its last will, or a new pid): its legs are gone with it.

        End its calls as the media side would have, so agents are not left on a call
        that no longer exists, and finish the header of any recording it was writing.
        """
        for call in list(self.calls.values()):
            if call.worker != worker or call.ended_at is not None:
                continue
            log.warning("call %s lost with worker %d", call.call_id, worker)
            call.hangup_side = call.hangup_side or "system"
            legs = [leg for leg, (cid, _) in self.legs.items() if cid == call.call_id]
            legs.sort(key=lambda leg: leg == call.call_id)  # agent leg first, caller last
            for leg in legs:
                self._leg_ended(
                    ev.LegEnded(
                        worker=worker, leg=leg, by="error", sip_code=500, reason="worker lost"
                    )
                )
            if call.recording and call.recording_duration_s is None:
                self._spawn(self._repair_recording(call))

    async def _repair_recording(self, call: Call) -> None:
        assert call.recording is not None
        duration = await asyncio.to_thread(repair_wav, Path(call.recording))
        if duration is None:
            log.warning(
                "recording %s of call %s could not be repaired", call.recording, call.call_id
            )
            return
        call.recording_duration_s = duration
        self._save(call)

    def _maybe_finish(self, call: Call) -> None:
        """A call is over once the caller leg and any agent leg have both ended."""
        if not call.caller_ended or (call.agent_leg is not None and call.agent_leg in self.legs):
            return
        if call.ended_at is not None:
            return
        call.ended_at = time.time()
        log.info(
            "call %s ended (%s); queue=%s agent=%s",
            call.call_id,
            call.hangup_side,
            call.queue,
            call.agent,
        )
        self._publish(
            ev.CallEnded(
                call_id=call.call_id,
                queue=call.queue or "",
                agent=call.agent or "",
                hangup_side=call.hangup_side or "",
            )
        )
        self._save(call)
        # keep the view for a moment so a late RecordingFinished still lands in the row
        assert self._loop is not None
        self._loop.call_later(30.0, self.calls.pop, call.call_id, None)

    def _save(self, call: Call) -> None:
        async def write() -> None:
            delay = 1.0
            while True:
                try:
                    # the call's state as of this attempt: a retry never writes an older
                    # picture over a newer one
                    await asyncio.get_running_loop().run_in_executor(
                        self._sql, self.store.save, call.record()
                    )
                    return
                except Exception as exc:
                    log.warning("record of call %s not written (%s); retrying in %.0fs",
                                call.call_id, exc, delay)  # fmt: skip
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_WRITE_RETRY_S)

        self._spawn(write())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """A background task the loop keeps a reference to until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _lookup(self, leg: str) -> tuple[Call | None, str]:
        entry = self.legs.get(leg)
        if entry is None:
            return None, ""
        return self.calls.get(entry[0]), entry[1]

    # ------------------------------------------------------------------ engine commands

    def _do_ivr(self, cmd: ivr.IvrCommand) -> None:
        call = self.calls.get(cmd.call_id)
        if call is None or call.caller_ended:
            return
        if isinstance(cmd, ivr.PlayPrompt):
            play_id = uuid.uuid4().hex[:12]
            call.prompt_seq = {play_id: cmd.seq}
            files = tuple(self.prompt_files[key] for key in cmd.prompts)
            self._send(
                call.worker,
                ev.Play(leg=call.call_id, play_id=play_id, files=files, barge_in=cmd.barge_in),
            )
        elif isinstance(cmd, ivr.RouteToQueue):
            call.queue = cmd.queue
            call.ivr_digits += cmd.digits
            call.queued_at = time.time()
            moh = self.prompt_files[f"queue.{cmd.queue}.moh"]
            self._send(
                call.worker, ev.Play(leg=call.call_id, play_id="moh", files=(moh,), loop=True)
            )
            # The CRM's language is not a routing requirement (the engine treats a
            # call's language as hard); the caller's choice in the IVR will be (#4).
            enqueue = acd.Enqueue(
                call_id=call.call_id,
                queue=cmd.queue,
                caller=call.caller,
                priority=self._priority(call),
            )
            self._acd(enqueue, now=self.now())
        else:
            call.hangup_side = "system"
            self._send(call.worker, ev.Hangup(leg=call.call_id))

    def _do_acd(self, cmd: acd.AcdCommand) -> None:
        if isinstance(cmd, acd.OfferCall):
            call = self.calls.get(cmd.call_id)
            if call is None:
                return
            agent = self.settings.agents[cmd.agent_id]
            leg = uuid.uuid4().hex
            call.agent, call.agent_leg = cmd.agent_id, leg
            call.offered_at = call.offered_at or time.time()  # the first offer counts
            if cmd.trace is not None:
                call.routing.append(plain(cmd.trace))
            self.legs[leg] = (call.call_id, "agent")
            edge = self.settings.edge
            uri = f"sip:{agent.sip_user}@{edge.sip_host}:{edge.sip_port}"
            self._send(
                call.worker,
                ev.Dial(leg=leg, uri=uri, caller_id=call.caller, related_leg=call.call_id),
                on_fail=lambda _r, c=call, leg=leg: self._dial_failed(c, leg),
            )
        elif isinstance(cmd, acd.CancelOffer):
            call = self.calls.get(cmd.call_id)
            if call is not None and call.agent_leg is not None and call.answered_at is None:
                self._send(call.worker, ev.Hangup(leg=call.agent_leg))
                call.agent_leg = call.agent = None  # a late answer on it is hung up
                if call.caller_ended:
                    self._maybe_finish(call)  # the caller left while the agent's phone rang
        elif isinstance(cmd, acd.Overflow):
            self._overflow(cmd)
        elif isinstance(cmd, acd.PlaceCallback):
            # Nothing asks for callbacks yet (config refuses callback overflow); should
            # one come, say so and let the engine give the place up after its retries.
            log.error("call %s: callbacks cannot be placed yet", cmd.call_id)
            failed = acd.CallbackFailed(call_id=cmd.call_id, reason="callbacks unavailable")
            self._acd(failed, now=self.now())
        else:
            self._publish(cmd)

    def _overflow(self, cmd: acd.Overflow) -> None:
        call = self.calls.get(cmd.call_id)
        log.info("call %s overflowed from %s (%s) to %s %s", cmd.call_id, cmd.queue,
                 cmd.reason, cmd.target_kind, cmd.target)  # fmt: skip
        if call is None or call.caller_ended:
            return
        if cmd.target_kind == "queue":  # the engine already moved it
            call.queue = cmd.target
            moh = self.prompt_files[f"queue.{cmd.target}.moh"]
            self._send(
                call.worker, ev.Play(leg=call.call_id, play_id="moh", files=(moh,), loop=True)
            )
        elif cmd.target_kind == "ivr":
            self._acd(acd.CallLeft(call_id=call.call_id), now=self.now())
            self.ivr.handle(ivr.CallStarted(call_id=call.call_id, menu=cmd.target), now=self.now())
        else:
            # voicemail and callback need media the walking skeleton lacks (issue #4);
            # config validation refuses those targets, so this is a defect if reached.
            log.error("call %s: overflow to %s is not available", call.call_id, cmd.target_kind)
            call.hangup_side = "system"
            self._send(call.worker, ev.Hangup(leg=call.call_id))

    def _dial_failed(self, call: Call, leg: str) -> None:
        """The worker refused to place the agent leg (e.g. momentarily full)."""
        if call.agent_leg != leg or self.legs.pop(leg, None) is None:
            return
        if call.caller_ended:
            self._maybe_finish(call)  # the caller left while the Dial was refused
            self._pump()
            return
        call.agent_leg = call.agent = None
        if not call.caller_ended:
            failed = acd.OfferFailed(
                call_id=call.call_id, reason="not_placed", agent_at_fault=False
            )
            self._acd(failed, now=self.now())
        self._pump()

    # ------------------------------------------------------------------ I/O

    def _send(self, worker: int, command: ev.MediaCommand, on_fail: Any = None) -> None:
        self._outbox.put_nowait((worker, command, on_fail))

    def _publish(self, event: object) -> None:
        self._spawn(self.bus.publish(event))

    async def _send_commands(self) -> None:
        """One sender keeps each worker's commands in the order the engines gave them."""
        while True:
            worker, command, on_fail = await self._outbox.get()
            try:
                await self.bus.connected.wait()
                task = asyncio.create_task(self.bus.request(worker, command))
                task.add_done_callback(functools.partial(self._settled, worker, command, on_fail))
                await asyncio.sleep(0)  # let the publish go out before the next one
            except Exception:
                log.exception("could not send %s to worker %d", type(command).__name__, worker)

    def _settled(
        self, worker: int, command: Any, on_fail: Any, task: asyncio.Task[ev.CommandResult]
    ) -> None:
        try:
            result = task.result()
        except (BrokerUnavailable, aiomqtt.MqttError, asyncio.CancelledError) as exc:
            # e.g. a PUBACK lost when the broker dropped: the command may never have
            # reached the worker, so its failure path must run (a Dial's above all).
            result = ev.CommandResult(ok=False, error=f"not delivered: {exc!r}")
        if not result.ok:
            log.warning("worker %d refused %s: %s", worker, type(command).__name__, result.error)
            if on_fail is not None:
                on_fail(result)

    async def _poll_registrations(self) -> None:
        users = {a.sip_user: name for name, a in self.settings.agents.items()}
        polls = 0
        while True:
            try:
                registered = await asyncio.to_thread(self.edge.registered_users)
                self.edge_ok = True
            except Exception as exc:
                if self.edge_ok:
                    log.warning("edge RPC unavailable: %s", exc)
                self.edge_ok = False
                await asyncio.sleep(REGISTRATION_POLL_S)
                continue
            now = self.now()
            for user, contact in registered.items():
                agent_id = users.get(user)
                if agent_id is not None and user not in self.registered:
                    log.info("agent %s registered from %s", agent_id, contact)
                    available = self.settings.agents[agent_id].auto_available
                    self._acd(acd.AgentLoggedIn(agent_id=agent_id, available=available), now=now)
            for user in set(self.registered) - set(registered):
                agent_id = users.get(user)
                if agent_id is not None:
                    log.info("agent %s unregistered", agent_id)
                    self._acd(acd.AgentLoggedOut(agent_id=agent_id), now=now)
            self.registered = registered
            polls += 1
            self._journal.flush()
            self._rotate_journal()
            if polls % RECONCILE_EVERY == 0:
                # Self-healing: whatever the engine holds that the media side and the
                # registrar no longer know about is let go.
                live = frozenset(cid for cid, c in self.calls.items() if not c.caller_ended)
                agents = frozenset(users[u] for u in registered if u in users)
                self._acd(acd.Reconcile(live_calls=live, registered_agents=agents), now=now)
                self._spawn(self._check_database())
            self._pump()
            await asyncio.sleep(REGISTRATION_POLL_S)

    # ------------------------------------------------------------------ views (HTTP)

    def health(self) -> dict[str, Any]:
        expected = range(1, self.settings.pbx.workers + 1)
        workers = {
            str(n): {
                "up": bool(self.workers.get(n) and self.workers[n].up),
                "legs": self.workers[n].legs if n in self.workers else 0,
                "pid": self.workers[n].pid if n in self.workers else 0,
            }
            for n in expected
        }
        db_ok = self.db_ok  # refreshed off the event loop: a dead database must not stall it
        components: dict[str, dict[str, Any]] = {
            "core": {"ok": True, "uptime_s": round(time.time() - self.started_at, 1)},
            "broker": {"ok": self.bus.connected.is_set()},
            "edge": {"ok": self.edge_ok, "registered": sorted(self.registered)},
            "database": {"ok": db_ok},
            "workers": {"ok": all(w["up"] for w in workers.values()), "each": workers},
        }
        ok = all(c["ok"] for c in components.values())
        return {"status": "ok" if ok else "degraded", "components": components}

    def agents_view(self) -> list[dict[str, Any]]:
        return [
            {
                "agent": a.spec.agent_id,
                "state": a.state.value,
                "reason": a.reason,
                "call": a.call_id,
            }
            for a in self.acd.agents()
        ]

    def set_agent_state(self, agent_id: str, state: str, reason: str = "") -> None:
        if agent_id not in self.settings.agents:
            raise KeyError(f"unknown agent {agent_id!r}")
        event: acd.AcdEvent
        if state == "available":
            event = acd.AgentSetAvailable(agent_id=agent_id)
        elif state == "away":
            event = acd.AgentSetAway(agent_id=agent_id, reason=reason or "break")
        else:
            raise ValueError(f"state must be 'available' or 'away', not {state!r}")
        self._acd(event, now=self.now())
        self._pump()

    def calls_view(self) -> list[dict[str, Any]]:
        out = []
        for call in self.calls.values():
            out.append(
                {
                    "call_id": call.call_id,
                    "worker": call.worker,
                    "caller": call.caller,
                    "did": call.did,
                    "queue": call.queue,
                    "position": self.acd.position(call.call_id),
                    "agent": call.agent,
                    "answered": call.answered_at is not None,
                    "ended": call.ended_at is not None,
                }
            )
        return out


def plain(value: Any) -> Any:
    """Dataclasses, mappings and tuples as JSON-ready dicts and lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list | set | frozenset):
        return [plain(v) for v in value]
    return value
