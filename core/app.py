"""The core process (`kefu core`): every decision about a call, no media.

It listens to the media workers over MQTT, feeds the pure IVR flow engine
(`ivr.engine`) and queue engine (`acd.engine`) with what happened, carries out their
commands on the worker that holds the caller, and writes the record of each call
through SQLAlchemy. One asyncio timer is re-armed from both engines' `next_deadline()`
(the flow engine runs on wall-clock time for business hours, the queue engine on the
loop's monotonic clock). Agent presence comes from the edge's registrar (polled over
Kamailio's JSON-RPC), so an agent whose phone registers becomes available when
`auto_available` is set.

How flow commands become media (see `_do_flow`): prompts are `Play` (`Collect` with
barge-in; a spoken menu then `Record`s the caller and runs vosk in a thread),
`Enqueue` joins the queue engine with music on hold, `RecordVoicemail` is `Record`
filed as a ticket, `Transfer` dials an agent or the trunk and bridges, `StoreSurvey`
and `FlowEnded` land in the call's row. `kefu config reload` (or SIGHUP) loads new
flows for new calls; running calls finish on the version they started with.

Hold and transfers of a call an agent is on are `core.control` (it uses the same offer
path); the desktop's customers, tickets and wrap-ups are `core.desk`.

Neighbours: `core.bus` (MQTT), `ivr.engine`, `acd.engine`, `crm_link.store` (SQL),
`recording` (prompts, paths, speech), `softphone_web.app` (HTTP), `pbx.edge`
(registrations, trunk URIs).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import signal
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
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
from config.loader import ConfigError, load
from config.schema import Settings
from core.bus import BrokerUnavailable, Bus
from core.control import CallControl, Consult
from core.desk import Desk
from crm_link.crm import CrmLink
from crm_link.demo import demo_customers
from crm_link.models import CallRecord
from crm_link.store import CallStore, CustomerCard, database_url
from ivr import events as flow
from ivr.engine import FlowEngine
from ivr.prompts import catalog as prompt_catalog
from ivr.validate import validate_flows
from pbx.edge import Edge, trunk_uri
from pbx.rtpengine import RtpengineError, ng_ping
from recording import prompts
from recording.speech import SpeechModel, SpeechUnavailable
from recording.storage import recording_path, repair_wav
from softphone_web.app import Web, create_app
from wire import events as ev

log = logging.getLogger("kefu.core")

REGISTRATION_POLL_S = 1.0
JOURNAL_MAX_BYTES = 256 * 1024 * 1024
MAX_WRITE_RETRY_S = 30.0
"""A call record that cannot be written (database away) is retried, never dropped."""
RECONCILE_EVERY = 5
"""Registration polls between two reconciliations of the queue engine."""
SPEECH_MARGIN_S = 1.0
"""A spoken answer is recorded for the menu's timeout minus this, so the recogniser's
answer (about 0.2-0.5 s for a short grammar) reaches the flow before its timeout."""
POP_FIRST_S = 0.05
"""How long an agent's phone may wait for their browser to take the screen pop."""
TRANSFER_RING_S = 30.0
"""How long a transfer target may ring before the transfer counts as failed."""
RTPENGINE_POLL_S = 2.0
RTPENGINE_PING_TIMEOUT_S = 0.5
"""rtpengine answers an ng ping on loopback in well under a millisecond; a relay that
takes longer than this is as good as down for the health report."""


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
    agent_ended: bool = False
    """The agent left first and the caller stayed (for a survey)."""
    customer: CustomerCard | None = None
    """The CRM's card for the caller, looked up as the call arrives."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """The caller's last calls (for the screen pop), fetched as the call arrives."""
    routing: list[dict[str, Any]] = field(default_factory=list)
    """The queue engine's decision trace for each offer of this call."""
    prompt_seq: dict[str, int] = field(default_factory=dict)
    """play_id -> flow prompt sequence number"""
    # -- what the IVR did
    flow: str = ""
    language: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    survey: dict[str, int | None] = field(default_factory=dict)
    keep_caller: bool = False
    """The flow goes on (a survey) when the agent hangs up: bridge without hangup_together."""
    speech: tuple[int, tuple[str, ...], float] | None = None
    """(flow seq, phrases, seconds) of the spoken menu waiting for its prompt to end."""
    recording_input: str | None = None
    """record_id of a `Record` running on the caller leg (speech or voicemail)."""
    grammar: tuple[int, tuple[str, ...]] | None = None
    """(flow seq, phrases) of the spoken answer being recorded."""
    waiting: bool = False
    """In a queue right now (a hang-up then is an abandon)."""
    transfer_leg: str | None = None
    transfer_answered: bool = False
    transfer_given_up: bool = False
    voicemail: str | None = None
    voicemail_duration_s: float | None = None
    voicemail_ticket: str | None = None
    transfer_to: str | None = None
    callback_number: str | None = None
    # -- a callback the queue engine placed (agent first, then the customer)
    row_id: str = ""
    """The SQL row; empty: `call_id` (a callback writes `<call id>-cb`)."""
    callback_uri: str | None = None
    customer_leg: str | None = None
    # -- call control (`core.control`)
    connected: bool = False
    """The current agent leg answered (a transferred call is answered again)."""
    held: bool = False
    """Unbridged from its agent and hearing music (hold, a consultation)."""
    consult: Consult | None = None
    handoffs: list[dict[str, Any]] = field(default_factory=list)
    priority: int = 0
    """The call's own priority as it was queued (a transfer keeps it)."""
    entered_queue_at: float | None = None
    """When it last joined a queue (a transfer joins again): its wait counts from here."""

    @property
    def is_callback(self) -> bool:
        return bool(self.row_id) and self.row_id != self.call_id

    def record(self) -> CallRecord:
        def ts(value: float | None) -> datetime | None:
            return None if value is None else datetime.fromtimestamp(value, tz=UTC)

        survey = self.survey
        return CallRecord(
            call_id=self.row_id or self.call_id,
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
            ivr_path=json.dumps(self.timeline, ensure_ascii=False) if self.timeline else None,
            variables=json.dumps(self.variables, ensure_ascii=False) if self.variables else None,
            survey_csat=survey.get("csat"),
            survey_nps=survey.get("nps"),
            survey_answers=json.dumps(survey) if survey else None,
            flow=self.flow or None,
            language=self.language or None,
            customer_id=self.customer.customer_id if self.customer else None,
            voicemail_path=self.voicemail,
            voicemail_duration_s=self.voicemail_duration_s,
            voicemail_ticket=self.voicemail_ticket,
            transfer_to=self.transfer_to,
            callback_number=self.callback_number,
            handoffs=json.dumps(self.handoffs) if self.handoffs else None,
        )


class Core:
    def __init__(self, settings: Settings, data_dir: Path, config_path: Path) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.config_path = config_path
        self.config_dir = config_path.parent
        self.store = CallStore(
            database_url(settings.database.url, data_dir), region=settings.crm.region
        )
        # Look-ups go through the configured CRM (the built-in store, or an external
        # one with the store as fallback); interactions are written back via an outbox.
        self.crm = CrmLink.from_settings(self.store, settings.crm)
        # One writer thread: saves of the same call (at hang-up, then with its
        # recording) must not race each other into two INSERTs.
        self._sql = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sql")
        self.edge = Edge.attach(settings)
        self.bus = Bus(settings.broker.host, settings.broker.port, self.on_event)
        self.ivr = FlowEngine(settings.ivr, version=1)
        self.acd = acd.AcdEngine(*specs_from_settings(settings))
        # Every input the queue engine sees, one JSON line each: `kefu acd replay`
        # re-runs it against a candidate policy.
        self._journal = open(data_dir / "acd-journal.jsonl", "a", encoding="utf-8")
        self.calls: dict[str, Call] = {}
        self.legs: dict[str, tuple[str, str]] = {}
        """leg id -> (call id, 'caller' | 'agent' | 'transfer')"""
        self.workers: dict[int, ev.WorkerStatus] = {}
        self.registered: dict[str, str] = {}
        self.edge_ok = False
        self.db_ok = False
        self.rtpengine_ok = False
        self.rtpengine_error = "not checked yet"
        self._tasks: set[asyncio.Task[None]] = set()
        self.prompt_files: dict[str, str] = {}
        self._outbox: asyncio.Queue[tuple[int, ev.MediaCommand, Any]] = asyncio.Queue()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._speech: SpeechModel | None = None
        self._positions: dict[str, tuple[int, float | None]] = {}
        """call id -> the last (position, wait) told to the flow engine"""
        # The agent desktop's CRM work (customers, tickets, wrap-ups, call history) on
        # the SQL thread; it reads the calls held here (still up? whose?).
        self.desk = Desk(self.store, self.crm, self._sql, live=self.calls.get)
        self.web = Web.from_settings(settings, data_dir)
        self.control = CallControl(self)
        self.started_at = time.time()

    # ------------------------------------------------------------------ set-up

    def render_prompts(self) -> None:
        """Every prompt of the current flows and every queue's music, as WAV files."""
        cache = self.data_dir / "prompts"
        for key, prompt in self.ivr.prompt_catalog().items():
            if key not in self.prompt_files:
                self.prompt_files[key] = str(prompts.resolve(prompt, cache, self.config_dir))
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
        await asyncio.to_thread(self._load_speech)
        await self._check_database()
        if self.settings.demo_customers:
            seeded = await asyncio.to_thread(self.store.seed, *demo_customers())
            if seeded:
                log.info("seeded %d demo customers", seeded)
        app = create_app(self, self.web)
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
        if self.settings.edge.webrtc:
            tasks.append(asyncio.create_task(self._watch_rtpengine(), name="rtpengine"))
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._loop.add_signal_handler(sig, stop.set)
        self._loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self._reload_logged()))
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
        self.crm.close()
        self.store.close()

    # ------------------------------------------------------------------ reload

    async def reload_flows(self) -> dict[str, Any]:
        """Load the configuration file again and run its flows for new calls.

        Only the flows change: queues, agents, DIDs and ports need a restart, so the new
        flows are checked against the running ones (every DID and overflow keeps its
        flow; queues, skills and agents are the running center's). Their prompts are
        rendered before they go live. Any problem changes nothing and is returned,
        `file: path: problem`; calls in a flow finish on the version they started with.
        """
        try:
            settings = await asyncio.to_thread(
                functools.partial(load, self.config_path, voices=prompts.espeak_voices())
            )
        except ConfigError as exc:
            return {"ok": False, "errors": exc.lines}
        problems = self._reload_problems(settings)
        if problems:
            return {"ok": False, "errors": problems}
        version = (self.ivr.current_version or 0) + 1
        try:
            rendered = await asyncio.to_thread(self._render_flows, settings.ivr, version)
            await asyncio.to_thread(self._load_speech, settings.ivr)
        except prompts.PromptError as exc:
            return {
                "ok": False,
                "errors": [f"{self.config_path}: a prompt cannot be rendered: {exc}"],
            }
        self.prompt_files.update(rendered)
        self.ivr.load_flows(settings.ivr, version=version)
        self.settings = self.settings.model_copy(update={"ivr": settings.ivr})
        log.info("flows reloaded: version %d (%s)", version, ", ".join(sorted(settings.ivr)))
        notes = [
            f"{section} changed: restart to apply"
            for section in ("queues", "agents", "dids", "edge", "pbx")
            if getattr(settings, section) != getattr(self.settings, section)
        ]
        return {"ok": True, "version": version, "flows": sorted(settings.ivr), "notes": notes}

    def _reload_problems(self, new: Settings) -> list[str]:
        """What in the new flows the running center could not carry out."""
        where = str(self.config_path)
        running = self.settings
        out = [
            f"{where}: dids.{did}.ivr: flow {target.ivr!r} is gone, but calls to {did} "
            "still use it until a restart"
            for did, target in running.dids.items()
            if target.ivr not in new.ivr
        ]
        out += [
            f"{where}: queues.{name}.overflow.target: flow {q.overflow.target!r} is gone"
            for name, q in running.queues.items()
            if q.overflow is not None and q.overflow.kind == "ivr"
            and q.overflow.target not in new.ivr
        ]  # fmt: skip
        skills = {s for q in running.queues.values() for s in q.required}
        out += [
            f"{where}: ivr.{'.'.join(map(str, path))}: {message} (in the running center)"
            for path, message in validate_flows(
                new.ivr, queues=running.queues, skills=skills, agents=running.agents
            )
        ]
        return out

    def _render_flows(self, flows: Mapping[str, Any], version: int) -> dict[str, str]:
        """Prompt key -> WAV of every prompt of `flows` as version `version`."""
        cache = self.data_dir / "prompts"
        return {
            key: str(prompts.resolve(prompt, cache, self.config_dir))
            for name, f in flows.items()
            for key, prompt in prompt_catalog(name, f, version).items()
        }

    async def _reload_logged(self) -> None:
        result = await self.reload_flows()
        if not result["ok"]:
            log.error("reload refused; flows unchanged:\n%s", "\n".join(result["errors"]))

    # ------------------------------------------------------------------ clock

    def now(self) -> float:
        """The queue engine's clock (monotonic); the flow engine runs on `time.time()`."""
        assert self._loop is not None
        return self._loop.time()

    def _acd(self, event: acd.AcdEvent, *, now: float | None = None) -> None:
        now = self.now() if now is None else now
        self.acd.handle(event, now=now)
        # after handle: an event the engine refused (and so ignored) is not replayed
        self._journal.write(journal.dump(event, now) + "\n")

    def _flow(self, event: flow.FlowEvent) -> None:
        self.ivr.handle(event, now=time.time())

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
                self._do_flow(icmd)
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
        if self._loop is None:
            return
        deadlines = []
        if (flow_at := self.ivr.next_deadline()) is not None:
            deadlines.append(self.now() + max(0.0, flow_at - time.time()))
        if (acd_at := self.acd.next_deadline()) is not None:
            deadlines.append(acd_at)
        if deadlines:
            self._timer = self._loop.call_at(min(deadlines), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        # A defect in one engine must not stop the other's timers (nor its own later ones).
        try:
            self.ivr.handle_timer(now=time.time())
        except Exception:
            log.exception("flow engine timer failed")
        try:
            self.acd.handle_timer(now=self.now())
        except Exception:
            log.exception("queue engine timer failed")
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
            ev.LegRecorded: self._leg_recorded,
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
            flow=target.ivr,
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

    async def _watch_rtpengine(self) -> None:
        """Ping the media relay every RTPENGINE_POLL_S from a thread (the ping blocks up
        to its timeout): a dead or hung rtpengine shows in health, never stalls the loop."""
        while True:
            await self._check_rtpengine()
            await asyncio.sleep(RTPENGINE_POLL_S)

    async def _check_rtpengine(self) -> None:
        port = self.settings.rtpengine.ng_port
        try:
            await asyncio.to_thread(ng_ping, port, timeout=RTPENGINE_PING_TIMEOUT_S)
        except RtpengineError as exc:
            if self.rtpengine_ok:
                log.warning("rtpengine unavailable: %s", exc)
            self.rtpengine_ok, self.rtpengine_error = False, str(exc)
            return
        if not self.rtpengine_ok:
            log.info("rtpengine answers on ng port %d", port)
        self.rtpengine_ok, self.rtpengine_error = True, ""

    async def _look_up_caller(self, call: Call) -> None:
        """The CRM card, fetched while the IVR plays; it feeds the call's priority."""
        try:
            card = await asyncio.to_thread(self.crm.lookup, "caller", call.caller)
        except Exception:
            log.exception("CRM look-up of %s failed; routing without it", call.caller)
            return
        if call.customer is None:
            call.customer = card
        if card is not None:
            call.history = list(card.recent_interactions)

    def _agent_uri(self, agent_id: str) -> str:
        """Where a worker dials an agent: the agent's SIP user at the edge's registrar."""
        edge = self.settings.edge
        return f"sip:{self.settings.agents[agent_id].sip_user}@{edge.sip_host}:{edge.sip_port}"

    def _preferred_agent(self, call: Call) -> str | None:
        agent = call.customer.preferred_agent if call.customer is not None else None
        return agent if agent in self.settings.agents else None

    def _priority(self, call: Call) -> int:
        """What the CRM adds to a call's priority (`priority:` in the configuration)."""
        card, rules = call.customer, self.settings.priority
        if card is None:
            return 0
        ticket = rules.open_ticket.get(card.ticket_priority, 0)  # type: ignore[call-overload]
        return (rules.vip if card.vip else 0) + ticket

    def _leg_answered(self, e: ev.LegAnswered) -> None:
        call, role = self._lookup(e.leg)
        if call is not None and role == "caller":
            self._flow(
                flow.CallStarted(
                    call_id=call.call_id, flow=call.flow, caller=call.caller, dnis=call.did
                )
            )
            return
        if call is None:
            # Not ours (e.g. answered before this core started): calls survive a core
            # restart on their worker, so an unknown leg is left alone.
            return
        if role == "transfer":
            self._transfer_answered(call, e.leg)
            return
        if role in ("cb_agent", "cb_customer"):
            self._callback_answered(call, e.leg, role)
            return
        if role == "consult":
            self.control.consult_answered(call, e.leg)
            return
        if call.agent_leg != e.leg or call.connected or call.caller_ended:
            # An agent picked up an offer that was already cancelled or superseded: end
            # that leg rather than leave the agent on dead air.
            self._send(e.worker, ev.Hangup(leg=e.leg))
            return
        session = self.ivr.session(call.call_id)
        in_queue = (
            ("queued", "announcing", "connected") if call.handoffs else ("queued", "announcing")
        )
        if session is not None and session.step.value not in in_queue:
            # The caller left the queue in the flow meanwhile (took the callback offer
            # and hears goodbye): not the agent's fault, and no bridge.
            log.info("call %s: answered by %s after leaving the queue", call.call_id, call.agent)
            self._send(e.worker, ev.Hangup(leg=e.leg))
            call.agent_leg = call.agent = None
            self._acd(acd.OfferFailed(call_id=call.call_id, reason="left", agent_at_fault=False))
            return
        try:
            self._acd(acd.OfferAnswered(call_id=call.call_id))
        except acd.IllegalTransition:
            log.warning("call %s: answer on leg %s came after the offer ended", call.call_id, e.leg)
            self._send(e.worker, ev.Hangup(leg=e.leg))
            return
        now = time.time()
        call.answered_at = call.answered_at or now
        call.connected = True
        call.waiting = False
        self._stop_input(call)
        if self.settings.recording.enabled and call.recording is None:
            call.recording = str(recording_path(self.data_dir, call.call_id, call.arrived_at))
        self._send(
            call.worker,
            ev.Bridge(
                a=call.call_id,
                b=e.leg,
                record_path=call.recording or "",
                hangup_together=not call.keep_caller,
            ),
            on_fail=lambda _r, c=call: self._bridge_failed(c),
        )
        assert call.agent is not None
        self._flow(flow.AgentConnected(call_id=call.call_id, agent=call.agent))
        wait = now - (call.entered_queue_at or call.queued_at or call.arrived_at)
        self._publish(
            ev.CallAnswered(
                call_id=call.call_id, queue=call.queue or "", agent=call.agent or "", wait_s=wait
            )
        )
        self.web.hub.publish(call.agent, {"type": "answered", "call_id": call.call_id})

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
            call.ivr_digits = (call.ivr_digits + e.digit)[-64:]
            self._flow(flow.DigitPressed(call_id=call.call_id, digit=e.digit))

    def _playback_finished(self, e: ev.PlaybackFinished) -> None:
        call, role = self._lookup(e.leg)
        if call is None or role != "caller":
            return
        seq = call.prompt_seq.pop(e.play_id, None)
        if seq is None:
            return
        self._flow(flow.PromptEnded(call_id=call.call_id, seq=seq))
        speech, call.speech = call.speech, None
        session = self.ivr.session(call.call_id)
        if speech is not None and speech[0] == seq and session is not None and session.seq == seq:
            self._listen(call, seq, speech[1], speech[2])

    def _leg_ended(self, e: ev.LegEnded) -> None:
        call, role = self._lookup(e.leg)
        self.legs.pop(e.leg, None)
        if call is None:
            return
        if role == "transfer":
            self._transfer_ended(call, e)
            return
        if role in ("cb_agent", "cb_customer"):
            self._callback_leg_ended(call, e.leg, e)
            return
        if role == "consult":
            self.control.consult_leg_ended(call, e)
            return
        if role == "agent":
            if e.leg != call.agent_leg:
                # an offer that was cancelled or superseded: nothing to account for
                if call.caller_ended:
                    self._maybe_finish(call)
                return
            call.agent_rtp = e.rtp
            if not call.connected:
                # the agent's phone rejected, failed or was cancelled before answering
                if call.caller_ended:
                    self._maybe_finish(call)  # abandoned while the agent's phone rang
                else:
                    call.agent_leg = call.agent = None
                    failed = acd.OfferFailed(
                        call_id=call.call_id,
                        reason="no_answer" if e.by != "error" else "failed",
                        agent_at_fault=e.by != "error",  # a worker lost is not the agent
                    )
                    self._acd(failed)
                return
            if self.control.agent_left(call):
                return  # the caller was on hold: handed on, not hung up
            if call.hangup_side is None:
                call.hangup_side = "agent"
            if not call.caller_ended and call.keep_caller:
                # the caller stays for the survey; the agent starts wrap-up now
                call.agent_ended = True
                self._acd(acd.CallLeft(call_id=call.call_id))
                self._flow(flow.AgentHungUp(call_id=call.call_id))
            self._maybe_finish(call)
            return
        call.caller_rtp = e.rtp
        call.caller_ended = True
        call.recording_input = None
        if call.hangup_side is None:
            if e.by == "local":
                call.hangup_side = "system"
            elif call.callback_number is not None:
                call.hangup_side = "callback"  # keeps the place; called back later
            elif call.waiting:
                call.hangup_side = "abandon"
            else:
                call.hangup_side = "caller"
        for leg, (cid, _) in list(self.legs.items()):
            if cid == call.call_id and leg != call.call_id:
                # normally the worker ends a bridged agent leg itself (hangup_together);
                # this covers a caller who left between an answer and the bridge, and
                # an agent kept past the caller's hang-up by a survey bridge
                self._send(call.worker, ev.Hangup(leg=leg))
        self.control.caller_gone(call)
        self._flow(flow.CallGone(call_id=call.call_id))
        self._acd(acd.CallLeft(call_id=call.call_id))
        self._positions.pop(call.call_id, None)
        self._maybe_finish(call)

    def _recording_finished(self, e: ev.RecordingFinished) -> None:
        call = self.calls.get(e.leg)
        if call is None:
            for candidate in self.calls.values():
                if e.leg in (candidate.agent_leg, candidate.customer_leg):
                    call = candidate
        if call is None:
            return
        call.recording = e.path
        call.recording_duration_s = e.duration_s
        if call.ended_at is not None:
            self._save(call)

    def _leg_recorded(self, e: ev.LegRecorded) -> None:
        """A `Record` on the caller ended: a spoken menu answer or a voicemail.

        It is reported once the WAV is complete, which is after the leg's `LegEnded`
        when the caller hangs up to finish a message: the call is found by its id."""
        call, role = self._lookup(e.leg)
        if call is None:
            call, role = self.calls.get(e.leg), "caller"  # the caller leg is the call id
        if call is None or role != "caller":
            return
        if call.recording_input == e.record_id:
            call.recording_input = None
        kind, _, seq_text = e.record_id.partition("-")
        seq = int(seq_text) if seq_text.isdigit() else -1
        grammar, call.grammar = call.grammar, None
        if kind == "vm":
            call.voicemail, call.voicemail_duration_s = e.path, e.duration_s
            self._flow(
                flow.VoicemailRecorded(
                    call_id=call.call_id, seq=seq, path=e.path, duration_s=e.duration_s
                )
            )
            self._spawn(self._file_voicemail(call))
        elif kind == "sp" and e.stopped_by in ("max_time", "silence") and grammar is not None:
            if grammar[0] == seq and not call.caller_ended:
                self._spawn(self._recognize(call, seq, grammar[1], Path(e.path)))

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
        """A call is over once the caller leg, the agent leg and any transfer leg have
        ended (a cancelled offer's leg does not hold it)."""
        if not call.caller_ended or (call.agent_leg is not None and call.agent_leg in self.legs):
            return
        if any(entry in ((call.call_id, "transfer"), (call.call_id, "consult"))
               for entry in self.legs.values()):  # fmt: skip
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
        if call.agent is not None:
            self.web.hub.publish(
                call.agent,
                {"type": "ended", "call_id": call.call_id, "hangup_side": call.hangup_side},
            )
        self._save(call)
        # keep the view for a moment so a late RecordingFinished still lands in the row
        assert self._loop is not None
        self._loop.call_later(30.0, self._forget, call)

    def _save(self, call: Call) -> None:
        wrote_back: list[bool] = []

        async def write() -> None:
            delay = 1.0
            while True:
                try:
                    # the call's state as of this attempt: a retry never writes an older
                    # picture over a newer one
                    await asyncio.get_running_loop().run_in_executor(
                        self._sql, self.store.save, call.record()
                    )
                    if call.ended_at is not None and not wrote_back:
                        wrote_back.append(True)
                        await self._write_back(call)
                    return
                except Exception as exc:
                    log.warning("record of call %s not written (%s); retrying in %.0fs",
                                call.call_id, exc, delay)  # fmt: skip
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_WRITE_RETRY_S)

        self._spawn(write())

    async def _drain_crm(self) -> None:
        """Deliver what waits in the outbox to the external CRM (nothing for the store)."""
        try:
            report = await asyncio.to_thread(
                functools.partial(self.crm.drain, now=datetime.now(UTC))
            )
        except Exception:
            log.exception("CRM outbox drain failed; retried at the next round")
            return
        if report.sent or report.retried or report.rejected:
            log.info("CRM outbox: %s", report)

    async def _write_back(self, call: Call) -> None:
        """The finished call, queued for the external CRM (after its row is written)."""
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._sql,
                functools.partial(
                    self.crm.record_interaction, call.row_id or call.call_id,
                    now=datetime.now(UTC),
                ),
            )  # fmt: skip
        except Exception:
            log.exception("call %s not queued for the CRM", call.call_id)

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

    # ------------------------------------------------------------------ flow commands

    def _do_flow(self, cmd: flow.FlowCommand) -> None:
        call = self.calls.get(cmd.call_id)
        if call is None:
            return
        if isinstance(cmd, flow.FlowEnded):
            call.timeline = [
                {"at": round(t.at - call.arrived_at, 3), "node": t.node, "what": t.what,
                 "detail": t.detail}
                for t in cmd.timeline
            ]  # fmt: skip
            call.variables = dict(cmd.variables)
            call.flow = f"{cmd.flow}@v{cmd.version}"
            if call.ended_at is not None:
                self._save(call)  # the flow outlived the call's row (a late event)
            return
        if isinstance(cmd, flow.StoreSurvey):
            call.survey = dict(cmd.answers)
            log.info("call %s survey %s: %s", call.call_id, cmd.survey, call.survey)
            return
        if isinstance(cmd, flow.SetScreen):
            call.variables = dict(cmd.variables)
            return
        if isinstance(cmd, flow.LeaveQueue):
            call.waiting = False
            self._acd(acd.CallLeft(call_id=call.call_id))
            self._positions.pop(call.call_id, None)
            return
        if isinstance(cmd, flow.RequestCallback):
            self._request_callback(call, cmd)
            return
        if isinstance(cmd, flow.Lookup):
            self._spawn(self._flow_lookup(call, cmd))
            return
        if call.caller_ended:
            return  # media commands for a leg that is gone
        if isinstance(cmd, flow.PlayPrompt):
            self._play(call, cmd.seq, cmd.prompts, barge_in=cmd.barge_in)
        elif isinstance(cmd, flow.Collect):
            call.language = cmd.language or call.language
            self._play(call, cmd.seq, cmd.prompts, barge_in=True)
            if cmd.speech and self._speech_ready():
                call.speech = (cmd.seq, cmd.speech, cmd.timeout_s)
        elif isinstance(cmd, flow.PlayHold):
            files = tuple(self.prompt_files[k] for k in cmd.music) or (
                self.prompt_files[f"queue.{call.queue or cmd.queue}.moh"],
            )
            self._stop_input(call)
            call.prompt_seq = {}
            self._send(
                call.worker, ev.Play(leg=call.call_id, play_id="moh", files=files, loop=True)
            )
        elif isinstance(cmd, flow.Enqueue):
            self._enqueue(call, cmd)
        elif isinstance(cmd, flow.RecordVoicemail):
            self._stop_input(call)
            record_id = f"vm-{cmd.seq}"
            when = datetime.fromtimestamp(call.arrived_at, tz=UTC)
            path = self.data_dir / "voicemail" / when.strftime("%Y/%m/%d") / f"{call.call_id}.wav"
            call.recording_input = record_id
            self._send(
                call.worker,
                ev.Record(
                    leg=call.call_id,
                    record_id=record_id,
                    path=str(path),
                    max_s=cmd.max_s,
                    terminators=cmd.terminator or "",
                    beep=cmd.beep,
                ),
            )
        elif isinstance(cmd, flow.Transfer):
            self._transfer(call, cmd)
        elif isinstance(cmd, flow.Disconnect):
            call.hangup_side = call.hangup_side or "system"
            self._send(call.worker, ev.Hangup(leg=call.call_id))

    def _play(self, call: Call, seq: int, keys: tuple[str, ...], *, barge_in: bool) -> None:
        self._stop_input(call)
        if not keys:
            # nothing to say (e.g. a menu re-asked without a prompt): it has "ended"
            self._flow(flow.PromptEnded(call_id=call.call_id, seq=seq))
            return
        missing = [key for key in keys if key not in self.prompt_files]
        if missing:  # a defect (prompts are rendered before flows go live): skip, say so
            log.error("call %s: prompts not rendered: %s", call.call_id, ", ".join(missing))
            keys = tuple(key for key in keys if key in self.prompt_files)
            if not keys:
                self._flow(flow.PromptEnded(call_id=call.call_id, seq=seq))
                return
        play_id = uuid.uuid4().hex[:12]
        call.prompt_seq = {play_id: seq}
        files = tuple(self.prompt_files[key] for key in keys)
        self._send(
            call.worker,
            ev.Play(leg=call.call_id, play_id=play_id, files=files, barge_in=barge_in),
        )

    def _cut_prompts(self, call: Call) -> None:
        """Something else is played over the caller's prompt: the flow hears it ended."""
        pending, call.prompt_seq = call.prompt_seq, {}
        for seq in pending.values():
            self._flow(flow.PromptEnded(call_id=call.call_id, seq=seq))

    def _stop_input(self, call: Call) -> None:
        """End a `Record` of the caller (a spoken answer) before anything else plays:
        the worker refuses Play and Bridge on a recording leg."""
        call.speech = None
        if call.recording_input is not None:
            call.recording_input = None
            self._send(call.worker, ev.StopRecord(leg=call.call_id))

    def _enqueue(self, call: Call, cmd: flow.Enqueue) -> None:
        call.queue = cmd.queue
        call.queued_at = call.queued_at or time.time()
        call.entered_queue_at = time.time()
        call.waiting = True
        call.language = cmd.language
        call.keep_caller = cmd.keep_caller_after_agent
        call.variables = dict(cmd.variables)
        # The flow's priority (a `set` or `queue` node) plus what the CRM says.
        priority = (cmd.priority or 0) + self._priority(call)
        call.priority = priority
        self._acd(
            acd.Enqueue(
                call_id=call.call_id,
                queue=cmd.queue,
                caller=call.caller,
                priority=priority,
                skills=dict(cmd.skills),
                language=cmd.language or None,
                # the assignee of the caller's most urgent open ticket gets first refusal
                preferred_agent=self._preferred_agent(call),
            )
        )
        self._tell_position(call)

    def _tell_position(self, call: Call) -> None:
        """Feed the flow engine the caller's place (for its announcements) if it moved."""
        position = self.acd.position(call.call_id)
        if position is None:
            return
        estimate = self.acd.estimate(call.call_id, now=self.now())
        ewt = None  # unknown (no agent could take it yet): the flow says the position only
        if estimate is not None and math.isfinite(estimate.ewt_s):
            ewt = round(estimate.ewt_s, 1)
        if self._positions.get(call.call_id) == (position, ewt):
            return
        self._positions[call.call_id] = (position, ewt)
        self._flow(flow.QueuePosition(call_id=call.call_id, position=position, ewt_s=ewt))

    def _request_callback(self, call: Call, cmd: flow.RequestCallback) -> None:
        """The caller keeps their place; the queue engine places the call later."""
        call.callback_number = cmd.number
        try:
            self._acd(acd.RequestCallback(call_id=call.call_id, number=cmd.number))
        except acd.IllegalTransition:
            log.warning("call %s asked for a callback but is no longer queued", call.call_id)

    async def _flow_lookup(self, call: Call, cmd: flow.Lookup) -> None:
        by = "caller" if cmd.by == "caller" else "account"
        card: CustomerCard | None = None
        try:
            card = await asyncio.to_thread(self.crm.lookup, by, cmd.value)
        except Exception:
            log.exception("CRM look-up (%s %s) of call %s failed", by, cmd.value, call.call_id)
        if card is not None:
            call.customer = card
        customer = None
        if card is not None:
            customer = flow.Customer(
                customer_id=card.customer_id,
                name=card.name,
                tier=card.tier,
                vip=card.vip,
                ticket_priority=card.ticket_priority,
                language=card.language,
                fields={"company": card.company, "open_tickets": str(len(card.open_tickets))},
            )
        self._flow(flow.LookupResult(call_id=call.call_id, seq=cmd.seq, customer=customer))
        self._pump()

    # -- spoken menus

    def _speech_ready(self) -> bool:
        """Whether spoken options can be recognised (the model loaded at start)."""
        return self._speech is not None

    def _load_speech(self, flows: Mapping[str, Any] | None = None) -> None:
        """Load the vosk model (seconds; off the event loop) if a flow has spoken options."""
        spoken = any(
            getattr(node, "speech", None)
            for f in (flows if flows is not None else self.settings.ivr).values()
            for node in f.nodes.values()
        )
        if not spoken or self._speech is not None:
            return
        try:
            self._speech = SpeechModel()
        except SpeechUnavailable as exc:
            log.warning("spoken menu options are off (digits still work): %s", exc)
            return
        log.info("speech model loaded from %s", self._speech.path)

    def _listen(self, call: Call, seq: int, phrases: tuple[str, ...], timeout_s: float) -> None:
        """The menu prompt ended: record what the caller says, for the recogniser."""
        record_id = f"sp-{seq}"
        call.recording_input = record_id
        path = self.data_dir / "speech" / f"{call.call_id}-{seq}.wav"
        self._send(
            call.worker,
            ev.Record(
                leg=call.call_id,
                record_id=record_id,
                path=str(path),
                max_s=max(1.0, timeout_s - SPEECH_MARGIN_S),
                terminators="0123456789*#",  # a digit still chooses (and is reported)
                beep=False,
            ),
        )
        call.speech = None
        call.grammar = (seq, phrases)

    async def _recognize(self, call: Call, seq: int, phrases: tuple[str, ...], wav: Path) -> None:
        if self._speech is None:
            return
        try:
            result = await asyncio.to_thread(self._speech.recognize, wav, phrases)
        except Exception:
            log.exception("call %s: speech recognition failed", call.call_id)
            return
        finally:
            with contextlib.suppress(OSError):
                os.unlink(wav)
        session = self.ivr.session(call.call_id)
        if session is None or session.seq != seq:
            return  # the caller moved on (a digit, a timeout) while we listened
        log.info("call %s said %r (%.2f)", call.call_id, result.text, result.confidence)
        if result.text:
            self._flow(
                flow.SpeechRecognized(
                    call_id=call.call_id, text=result.text, confidence=result.confidence
                )
            )
            self._pump()

    # -- voicemail

    async def _file_voicemail(self, call: Call) -> None:
        """A message from a caller the CRM knows becomes a ticket on their account."""
        if call.customer is None or call.voicemail is None:
            return
        try:
            call.voicemail_ticket = await asyncio.get_running_loop().run_in_executor(
                self._sql,
                functools.partial(
                    self.store.file_voicemail,
                    call_id=call.call_id,
                    customer_id=call.customer.customer_id,
                    mailbox=call.variables.get("mailbox", call.queue or "voicemail"),
                    caller=call.caller,
                    at=datetime.now(tz=UTC),
                ),
            )
        except Exception:
            log.exception("voicemail of call %s not filed as a ticket", call.call_id)
            return
        if call.ended_at is not None:
            self._save(call)

    # -- transfers

    def _transfer(self, call: Call, cmd: flow.Transfer) -> None:
        """Dial the target from the caller's worker; bridge when it answers."""
        self._stop_input(call)
        if cmd.agent is not None:
            call.transfer_to = cmd.agent
            state = self.acd.agent(cmd.agent).state
            if state is not acd.AgentState.AVAILABLE:
                # not rung while on a call, away or signed out: the flow's on_fail now
                self._transfer_lost(call, f"agent {cmd.agent} is {state.value}")
                return
            uri = self._agent_uri(cmd.agent)
        else:
            assert cmd.number is not None
            try:
                uri = trunk_uri(self.settings, cmd.number)
            except ValueError as exc:
                log.error("call %s: cannot transfer to %s: %s", call.call_id, cmd.number, exc)
                self._flow(flow.TransferFailed(call_id=call.call_id, reason=str(exc)))
                return
            call.transfer_to = cmd.number
        leg = uuid.uuid4().hex
        self.legs[leg] = (call.call_id, "transfer")
        call.transfer_leg, call.transfer_answered, call.transfer_given_up = leg, False, False
        log.info("call %s: transfer to %s (%s)", call.call_id, call.transfer_to, uri)
        self._send(
            call.worker,
            ev.Dial(leg=leg, uri=uri, caller_id=call.caller, related_leg=call.call_id),
            on_fail=lambda r, c=call, leg=leg: self._transfer_failed(c, leg, r.error),
        )
        assert self._loop is not None
        self._loop.call_later(TRANSFER_RING_S, self._transfer_timeout, call, leg)

    def _transfer_answered(self, call: Call, leg: str) -> None:
        if call.caller_ended or leg != call.transfer_leg or call.transfer_given_up:
            self._send(call.worker, ev.Hangup(leg=leg))
            return
        call.transfer_answered = True
        call.answered_at = call.answered_at or time.time()
        self._send(call.worker, ev.StopPlay(leg=call.call_id))
        self._send(
            call.worker,
            ev.Bridge(a=call.call_id, b=leg, hangup_together=True),
            on_fail=lambda _r, c=call: self._bridge_failed(c),
        )

    def _transfer_failed(self, call: Call, leg: str, reason: str) -> None:
        """The worker refused to place the transfer leg."""
        if self.legs.pop(leg, None) is None:
            return
        self._transfer_lost(call, reason)
        self._pump()

    def _transfer_timeout(self, call: Call, leg: str) -> None:
        if leg in self.legs and leg == call.transfer_leg and not call.transfer_answered:
            call.transfer_given_up = True  # an answer crossing this hang-up is refused
            self._send(call.worker, ev.Hangup(leg=leg))

    def _transfer_ended(self, call: Call, e: ev.LegEnded) -> None:
        if e.leg != call.transfer_leg:
            self._maybe_finish(call)
            return
        if call.transfer_answered:
            call.hangup_side = call.hangup_side or "transfer"
            self._maybe_finish(call)
            return
        self._transfer_lost(call, f"{e.sip_code} {e.reason}".strip())

    def _transfer_lost(self, call: Call, reason: str) -> None:
        """The target never answered: the flow's `on_fail`, or goodbye when it has none."""
        call.transfer_leg = None
        if call.caller_ended:
            self._maybe_finish(call)
            return
        log.info("call %s: transfer to %s failed (%s)", call.call_id, call.transfer_to, reason)
        session = self.ivr.session(call.call_id)
        if session is not None and session.step.value == "transferring":
            self._flow(flow.TransferFailed(call_id=call.call_id, reason=reason))
        else:
            call.hangup_side = call.hangup_side or "system"
            self._send(call.worker, ev.Hangup(leg=call.call_id))

    # ------------------------------------------------------------------ queue commands

    def _do_acd(self, cmd: acd.AcdCommand) -> None:
        if getattr(cmd, "call_id", None) in self.control.consults:
            # about a consultation between agents, not a caller: not a queue statistic
            self.control.on_acd(cmd)
            return
        if isinstance(cmd, acd.OfferCall):
            call = self.calls.get(cmd.call_id)
            if call is not None:
                self._offer(call, cmd)
        elif isinstance(cmd, acd.CancelOffer):
            call = self.calls.get(cmd.call_id)
            if call is not None and call.is_callback and call.answered_at is None:
                # the engine gave the callback attempt up (it retries later itself)
                call.hangup_side = "callback_failed"
                for cb_leg in (call.agent_leg, call.customer_leg):
                    if cb_leg is not None and cb_leg in self.legs:
                        self._send(call.worker, ev.Hangup(leg=cb_leg))
                return
            if call is not None and call.agent_leg is not None and not call.connected:
                self._send(call.worker, ev.Hangup(leg=call.agent_leg))
                call.agent_leg = call.agent = None  # a late answer on it is hung up
                if call.caller_ended:
                    self._maybe_finish(call)  # the caller left while the agent's phone rang
        elif isinstance(cmd, acd.Overflow):
            self._overflow(cmd)
        elif isinstance(cmd, acd.PlaceCallback):
            self._place_callback(cmd)
        else:
            if isinstance(cmd, ev.AgentStateChanged):
                self.web.hub.publish(
                    cmd.agent, {"type": "state", "state": cmd.state, "reason": cmd.reason}
                )
            self._publish(cmd)

    def _offer(self, call: Call, cmd: acd.OfferCall) -> None:
        leg = uuid.uuid4().hex
        call.agent, call.agent_leg = cmd.agent_id, leg
        call.offered_at = call.offered_at or time.time()  # the first offer counts
        if cmd.trace is not None:
            call.routing.append(plain(cmd.trace))
        self.legs[leg] = (call.call_id, "agent")
        self.ring_agent(
            call, leg, cmd.agent_id, self.screen_pop(call, "offer"),
            caller_id=call.caller,
            wanted=lambda: call.agent_leg == leg,
            on_fail=lambda _r: self._dial_failed(call, leg),
        )  # fmt: skip

    def ring_agent(
        self,
        call: Call,
        leg: str,
        agent: str,
        pop: dict[str, Any],
        *,
        caller_id: str,
        wanted: Callable[[], bool],
        on_fail: Callable[[ev.CommandResult], None],
    ) -> None:
        """Push the screen pop to the agent's sockets, then dial the agent's phone.

        The pop must be on the agent's screen no later than the phone rings: with a
        socket open, the Dial waits until the desktop page says it shows the pop (or,
        for a client that does not confirm, until the frame is written), at most
        POP_FIRST_S, so a stuck browser cannot hold a call up. An offer withdrawn
        meanwhile (`wanted()` false) is not dialled at all."""
        self.web.hub.publish(agent, pop)
        dial = ev.Dial(leg=leg, uri=self._agent_uri(agent), caller_id=caller_id,
                       related_leg=call.call_id)  # fmt: skip
        if not self.web.hub.connected(agent):
            self._send(call.worker, dial, on_fail=on_fail)
            return

        async def after_the_pop() -> None:
            await self.web.hub.popped(agent, call.call_id, POP_FIRST_S)
            if wanted() and not call.caller_ended and leg in self.legs:
                self._send(call.worker, dial, on_fail=on_fail)
                return
            # withdrawn while the pop went out: there is no phone to ring or hang up
            self.legs.pop(leg, None)
            if call.caller_ended:
                self._maybe_finish(call)

        self._spawn(after_the_pop())

    def _overflow(self, cmd: acd.Overflow) -> None:
        call = self.calls.get(cmd.call_id)
        log.info("call %s overflowed from %s (%s) to %s %s", cmd.call_id, cmd.queue,
                 cmd.reason, cmd.target_kind, cmd.target)  # fmt: skip
        if call is None or call.caller_ended:
            return
        if cmd.target_kind == "queue":  # the engine already moved it
            call.queue = cmd.target
            self._cut_prompts(call)  # an announcement playing ends here
            moh = self.prompt_files[f"queue.{cmd.target}.moh"]
            self._send(
                call.worker, ev.Play(leg=call.call_id, play_id="moh", files=(moh,), loop=True)
            )
        elif cmd.target_kind == "ivr":
            # The caller leaves the queue and starts the target flow afresh.
            self._acd(acd.CallLeft(call_id=call.call_id))
            self._flow(flow.CallGone(call_id=call.call_id))
            call.flow = cmd.target
            call.waiting = False
            self._flow(
                flow.CallStarted(
                    call_id=call.call_id, flow=cmd.target, caller=call.caller, dnis=call.did
                )
            )
        else:
            # config validation refuses queue-level voicemail and callback overflow (a
            # flow's queue node does both), so this is a defect if reached.
            log.error("call %s: overflow to %s is not available", call.call_id, cmd.target_kind)
            call.hangup_side = "system"
            self._send(call.worker, ev.Hangup(leg=call.call_id))

    def _dial_failed(self, call: Call, leg: str) -> None:
        """The worker refused to place the agent leg (e.g. momentarily full)."""
        if self.legs.pop(leg, None) is None:
            return
        if call.agent_leg != leg:  # an offer already cancelled
            if call.caller_ended:
                self._maybe_finish(call)
                self._pump()
            return
        if call.caller_ended:
            self._maybe_finish(call)  # the caller left while the Dial was refused
            self._pump()
            return
        call.agent_leg = call.agent = None
        failed = acd.OfferFailed(call_id=call.call_id, reason="not_placed", agent_at_fault=False)
        self._acd(failed)
        self._pump()

    # -- callbacks

    def _place_callback(self, cmd: acd.PlaceCallback) -> None:
        """The queue engine reserved an agent for a caller who kept their place: ring the
        agent first, then dial the customer through the trunk, then bridge the two.

        The callback is its own row (`<call id>-cb`), linked by `callback_for`; the
        original call's row keeps what happened while the caller was on the line."""
        worker = self._least_loaded_worker()
        try:
            customer_uri = trunk_uri(self.settings, cmd.number)
        except ValueError as exc:
            log.error("call %s: callback to %s cannot be placed: %s", cmd.call_id, cmd.number, exc)
            self._acd(acd.CallbackFailed(call_id=cmd.call_id, reason=str(exc)))
            return
        if worker is None:
            log.warning("call %s: no worker up for the callback; retried", cmd.call_id)
            self._acd(acd.CallbackFailed(call_id=cmd.call_id, reason="no worker"))
            return
        original = self.calls.get(cmd.call_id)
        call = Call(
            call_id=cmd.call_id,
            row_id=f"{cmd.call_id}-cb",
            worker=worker,
            sip_call_id="",
            caller=cmd.number,
            did=original.did if original is not None else "",
            arrived_at=time.time(),
            queue=cmd.queue,
            agent=cmd.agent_id,
            offered_at=time.time(),
            callback_number=cmd.number,
            callback_uri=customer_uri,
            variables={"callback_for": cmd.call_id},
        )
        if cmd.trace is not None:
            call.routing.append(plain(cmd.trace))
        call.caller_ended = True  # no caller leg yet: the customer is dialled later
        self.calls[cmd.call_id] = call
        leg = uuid.uuid4().hex
        call.agent_leg = leg
        self.legs[leg] = (call.call_id, "cb_agent")
        log.info("call %s: callback to %s, ringing %s first", cmd.call_id, cmd.number,
                 cmd.agent_id)  # fmt: skip
        self._send(
            worker,
            ev.Dial(
                leg=leg,
                uri=self._agent_uri(cmd.agent_id),
                caller_id=cmd.number,
            ),
            on_fail=lambda _r, c=call, leg=leg: self._callback_leg_failed(c, leg, "not placed"),
        )

    def _least_loaded_worker(self) -> int | None:
        up = [w for w in self.workers.values() if w.up]
        return min(up, key=lambda w: (w.legs, w.worker)).worker if up else None

    def _callback_answered(self, call: Call, leg: str, role: str) -> None:
        if role == "cb_agent":
            if call.agent_leg != leg or call.customer_leg is not None or call.hangup_side:
                self._send(call.worker, ev.Hangup(leg=leg))
                return
            # the agent is there: now the customer's phone rings
            customer = uuid.uuid4().hex
            call.customer_leg = customer
            self.legs[customer] = (call.call_id, "cb_customer")
            assert call.callback_uri is not None
            self._send(
                call.worker,
                ev.Dial(leg=customer, uri=call.callback_uri, caller_id=call.did, related_leg=leg),
                on_fail=lambda _r, c=call, leg=customer: self._callback_leg_failed(
                    c, leg, "not placed"
                ),
            )
            return
        if call.customer_leg != leg or call.agent_leg not in self.legs:
            self._send(call.worker, ev.Hangup(leg=leg))
            return
        try:
            self._acd(acd.CallbackAnswered(call_id=call.call_id))
        except acd.IllegalTransition:
            log.warning("call %s: callback answered after it was given up", call.call_id)
            self._send(call.worker, ev.Hangup(leg=leg))
            return
        call.answered_at = time.time()
        if self.settings.recording.enabled:
            call.recording = str(recording_path(self.data_dir, call.row_id, call.arrived_at))
        assert call.agent_leg is not None
        self._send(
            call.worker,
            ev.Bridge(a=leg, b=call.agent_leg, record_path=call.recording or ""),
            on_fail=lambda _r, c=call: self._bridge_failed(c),
        )
        self._publish(
            ev.CallAnswered(call_id=call.call_id, queue=call.queue or "", agent=call.agent or "",
                            wait_s=0.0)
        )  # fmt: skip

    def _callback_leg_failed(self, call: Call, leg: str, reason: str) -> None:
        """A callback leg could not be placed (the worker refused the Dial)."""
        if self.legs.pop(leg, None) is None:
            return
        self._callback_leg_ended(
            call, leg, ev.LegEnded(worker=call.worker, leg=leg, by="error", sip_code=500,
                                   reason=reason)
        )  # fmt: skip
        self._pump()

    def _callback_leg_ended(self, call: Call, leg: str, e: ev.LegEnded) -> None:
        other = call.customer_leg if leg == call.agent_leg else call.agent_leg
        if call.answered_at is None:
            # hangup_side already set: the engine gave this attempt up itself (CancelOffer)
            if call.hangup_side is None and leg == call.agent_leg and call.customer_leg is None:
                # the agent did not pick up: the engine's usual no-answer handling, unless
                # the leg was never placed or its worker was lost
                at_fault = e.by not in ("error",)
                self._acd(acd.OfferFailed(call_id=call.call_id, reason="no_answer",
                                          agent_at_fault=at_fault))  # fmt: skip
            elif call.hangup_side is None:
                reason = f"{e.sip_code} {e.reason}".strip()
                self._acd(acd.CallbackFailed(call_id=call.call_id, reason=reason))
            call.hangup_side = call.hangup_side or "callback_failed"
        elif leg == call.customer_leg:
            call.caller_rtp = e.rtp
            call.hangup_side = call.hangup_side or "caller"
        else:
            call.agent_rtp = e.rtp
            call.hangup_side = call.hangup_side or "agent"
        if other is not None and other in self.legs:
            self._send(call.worker, ev.Hangup(leg=other))
            return
        # both legs are gone: the callback is over
        if call.answered_at is not None:
            self._acd(acd.CallLeft(call_id=call.call_id))
        call.ended_at = time.time()
        self._save(call)
        assert self._loop is not None
        self._loop.call_later(30.0, self._forget, call)

    def _forget(self, call: Call) -> None:
        if self.calls.get(call.call_id) is call:
            del self.calls[call.call_id]

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
        """Every second: agent presence from the registrar, queue positions for the
        flows, the journal; every few: reconcile the queue engine, check the database
        and drain the CRM outbox. An edge whose RPC is away stops only the presence part
        (nobody is logged out for it)."""
        users = {a.sip_user: name for name, a in self.settings.agents.items()}
        polls = 0
        while True:
            registered: dict[str, str] | None
            try:
                registered = await asyncio.to_thread(self.edge.registered_users)
                self.edge_ok = True
            except Exception as exc:
                if self.edge_ok:
                    log.warning("edge RPC unavailable: %s", exc)
                self.edge_ok = False
                registered = None
            now = self.now()
            if registered is not None:
                self._presence(registered, users, now)
            for call in list(self.calls.values()):
                if call.queue and call.answered_at is None and not call.caller_ended:
                    self._tell_position(call)
            polls += 1
            self._journal.flush()
            self._rotate_journal()
            if polls % RECONCILE_EVERY == 0:
                if registered is not None:
                    # Self-healing: whatever the engine holds that the media side and
                    # the registrar no longer know about is let go.
                    live = frozenset(
                        cid
                        for cid, c in self.calls.items()
                        if c.ended_at is None and (not c.caller_ended or c.is_callback)
                    ) | frozenset(self.control.consults)
                    agents = frozenset(users[u] for u in registered if u in users)
                    self._acd(acd.Reconcile(live_calls=live, registered_agents=agents), now=now)
                self._spawn(self._check_database())
                self._spawn(self._drain_crm())
            self._pump()
            await asyncio.sleep(REGISTRATION_POLL_S)

    def _presence(self, registered: dict[str, str], users: dict[str, str], now: float) -> None:
        """Agents whose phone registered log in; those whose phone went log out."""
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
        if self.settings.edge.webrtc:  # browsers' media goes through it (refreshed off the loop)
            components["rtpengine"] = {
                "ok": self.rtpengine_ok,
                "ng_port": self.settings.rtpengine.ng_port,
                **({"error": self.rtpengine_error} if self.rtpengine_error else {}),
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

    # ------------------------------------------------------------------ the agent's screen

    def screen_pop(self, call: Call, kind: str) -> dict[str, Any]:
        """What the agent sees as the call is offered: who calls, what they did in the
        IVR, how long they waited, and why this agent was chosen."""
        card = call.customer
        session = self.ivr.session(call.call_id)
        timeline = (
            [{"at": round(t.at - call.arrived_at, 1), "node": t.node, "what": t.what,
              "detail": t.detail} for t in session.timeline]
            if session is not None else call.timeline
        )  # fmt: skip
        variables = dict(session.variables) if session is not None else call.variables
        trace = call.routing[-1] if call.routing else None
        return {
            "type": kind,
            "call_id": call.call_id,
            "caller": call.caller,
            "did": call.did,
            "queue": call.queue,
            "waited_s": round(time.time() - (call.queued_at or call.arrived_at), 1),
            "language": call.language,
            "customer_id": card.customer_id if card else None,
            "customer": (
                {
                    "customer_id": card.customer_id,
                    "name": card.name,
                    "company": card.company,
                    "tier": card.tier,
                    "vip": card.vip,
                    "language": card.language,
                }
                if card
                else None
            ),
            "new_customer": None if card else {"phone": call.caller},
            "open_tickets": card.open_tickets if card else [],
            "recent_calls": call.history,
            "handoffs": call.handoffs,
            "ivr": {"path": timeline, "variables": variables},
            "routing": (
                {
                    "priority": trace.get("priority"),
                    "step": trace.get("step"),
                    "strategy": trace.get("strategy"),
                    "winner": trace.get("winner"),
                    "candidates": len(trace.get("candidates") or []),
                }
                if trace
                else None
            ),
        }

    def agent_snapshot(self, agent_id: str) -> dict[str, Any]:
        """For a socket that just opened: the agent's state and the call it has, if any."""
        state = self.acd.agent(agent_id) if agent_id in self.settings.agents else None
        call = next(
            (c for c in self.calls.values() if c.agent == agent_id and c.ended_at is None), None
        )
        return {
            "state": state.state.value if state else None,
            "call": self.screen_pop(call, "current") if call is not None else None,
        }

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
                    "connected": call.connected,
                    "held": call.held,
                    "consult": self.control.view(call)["consult"],
                    "handoffs": call.handoffs,
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
