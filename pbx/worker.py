"""The media worker: one pjsua2 process with at most `max_legs` call legs.

It carries out media commands from the core (`wire.events.Answer`, `Play`, `Record`,
`Dial`, `Bridge`, `Hangup`, ...) arriving as MQTT v5 requests on `wire.codec.command_topic(n)`
and reports media events (`LegIncoming`, `LegAnswered`, `DtmfReceived`, `LegRecorded`,
`LegEnded`, ...)
with `wire.codec`. It holds no business logic: which prompt, which agent and when to
give up are the core's decisions. Its neighbours: the Kamailio edge sends it trunk
INVITEs and routes the agent legs it dials; `pbx.media` is its pjsua2 adapter.

Everything pjsua2 runs on the one asyncio thread: the loop calls `libHandleEvents(0)`
every few milliseconds, drains the notes the callbacks queued, and only then acts on
them. Calls survive a broker or core restart: MQTT reconnects with backoff and events
produced meanwhile wait in a bounded outbox. Run as
`python -m pbx.worker --id N --sip-port P --rtp-port R ...` or through `main(argv)`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import enum
import gc
import logging
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pjsua2 as pj
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pbx.media import Inbox, LegCall, Note, Player, Stack, StackConfig, rtp_snapshot
from pbx.mqtt import no_delay
from wire import codec
from wire.events import (
    Answer,
    Bridge,
    CommandResult,
    Dial,
    DtmfReceived,
    Hangup,
    LegAnswered,
    LegEnded,
    LegIncoming,
    LegRecorded,
    LegRinging,
    Play,
    PlaybackFinished,
    Record,
    RecordingFinished,
    RtpCounters,
    StopPlay,
    StopRecord,
    Unbridge,
    WorkerStatus,
)

log = logging.getLogger("kefu.worker")

POLL_S = 0.02
"""SIP timers are serviced this often while legs exist; RTP runs on PJSIP's media
thread and SIP datagrams wake the loop at once (`_watch_sip_socket`), so this only
bounds timer lateness (retransmissions start at 500 ms) and DTMF/EOF note latency."""
IDLE_POLL_S = 0.25
"""With no legs, only transaction timers of OPTIONS probes are pending. Idle wake-ups
are the per-process cost that hundreds of workers multiply (measured: 20 ms polling
alone is ~1.2% of a core per idle worker)."""
DESTROY_DELAY_S = 0.3
"""stop/startTransmit are queued to the clock thread (2.15.1): free ports later."""
STATS_EVERY_S = 1.0
OUTBOX_MAX = 10_000
RECORD_MAX_S = 3600.0
"""Longest `Record` accepted: a voicemail or a spoken answer, not a whole call."""
SILENCE_LEVEL = 5
"""A `Record` leg is silent while its conference level stays at or below this. The level
is pjmedia's 0-255 u-law-like scale of one 20 ms frame (measured: 0 with no RTP or
line silence, 2-32 on the SIPp speech pcap whose pauses are all < 0.7 s)."""
DTMF_DIGITS = frozenset("0123456789*#ABCD")
BEEP_S = 0.2
"""The tone before a `Record` (1 kHz); the recording starts when it ends."""


class LegState(enum.Enum):
    RINGING = "ringing"  # inbound, 180 sent, waiting for Answer
    CALLING = "calling"  # outbound, INVITE sent
    ANSWERING = "answering"  # 200 sent / received, waiting for ACK or media
    UP = "up"  # confirmed with active media; LegAnswered published
    ENDING = "ending"  # hangup sent, waiting for DISCONNECTED


@dataclass(eq=False)
class RecordingJob:
    """A closed recorder (a bridge's, or a `Record`'s) until its WAV header is complete.

    It names the legs by id only: holding a `Leg` would keep its pjsua2 Call alive."""

    leg_id: str
    path: str
    recorder: pj.AudioMediaRecorder | None
    record_id: str | None = None
    """Set for a `Record` (reported as `LegRecorded`); None for a bridge recording."""
    stopped_by: str = ""


@dataclass(eq=False)
class RecordState:
    """A `Record` in progress on one leg: the beep, then the leg's audio -> recorder."""

    cmd: Record
    recorder: pj.AudioMediaRecorder
    beep: Player | None = None
    capturing: bool = False
    """The leg's port transmits to the recorder (after the beep)."""
    deadline: float = 0.0
    quiet_since: float | None = None


@dataclass(eq=False)
class BridgeState:
    a: Leg
    b: Leg
    hangup_together: bool
    record_path: str = ""
    recorder: pj.AudioMediaRecorder | None = None
    started: float = 0.0


@dataclass(eq=False)
class Leg:
    id: str
    call: LegCall
    inbound: bool
    state: LegState
    sip_call_id: str = ""
    confirmed: bool = False
    media_active: bool = False
    ringing_sent: bool = False
    local_end: bool = False
    rtp: tuple[int, int, int] = (0, 0, 0)
    rx_seen: int = 0
    """rx packet count at `rx_since` (for the RTP timeout)."""
    rx_since: float = 0.0
    player: Player | None = None
    play: Play | None = None
    pending_play: Play | None = None
    bridge: BridgeState | None = None
    record: RecordState | None = None
    kept: tuple[str, pj.AudioMediaRecorder] | None = None
    """(path, recorder) of a bridge recording this leg kept through an `Unbridge`: the
    leg's audio still goes to it, and a `Bridge` with the same path goes on in it."""


class CommandError(Exception):
    """A command that cannot be carried out; the message goes back as the error."""


@dataclass
class WorkerConfig:
    worker: int
    sip_port: int
    rtp_port: int
    rtp_ports: int
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    max_legs: int = 4
    clock_rate: int = 8000
    rtp_timeout_s: float = 60.0
    """Hang up an answered leg that received no RTP for this long (0: never)."""
    edge: str = ""
    pj_log_level: int = 1


@dataclass
class _Outgoing:
    topic: str
    payload: bytes
    retain: bool = False
    correlation: bytes | None = None


@dataclass
class Worker:
    cfg: WorkerConfig
    inbox: Inbox = field(default_factory=collections.deque)
    legs: dict[str, Leg] = field(default_factory=dict)
    outbox: collections.deque[_Outgoing] = field(
        default_factory=lambda: collections.deque(maxlen=OUTBOX_MAX)
    )

    def __post_init__(self) -> None:
        self.stack = Stack(
            StackConfig(
                worker=self.cfg.worker,
                sip_port=self.cfg.sip_port,
                rtp_port=self.cfg.rtp_port,
                rtp_ports=self.cfg.rtp_ports,
                max_legs=self.cfg.max_legs,
                clock_rate=self.cfg.clock_rate,
                pj_log_level=self.cfg.pj_log_level,
            ),
            self.inbox,
        )
        # pj objects waiting to be freed: (not before, object). Holding them here is
        # what keeps GC from freeing them under PJSIP.
        self.graveyard: list[tuple[float, Any]] = []
        # Calls we refused (486) or whose leg is gone, kept alive until DISCONNECTED.
        self.orphans: set[LegCall] = set()
        # Bridges whose recorder still has queued stopTransmits, then ones whose
        # recorder is destroyed but whose WAV header is not yet complete.
        self.recordings: list[tuple[float, RecordingJob]] = []
        self.closing: list[tuple[float, RecordingJob]] = []
        # Disconnected Calls not yet freed because a newer Call holds their slot.
        self.retired: list[LegCall] = []
        self.outbox_ready = asyncio.Event()
        self.stopping = asyncio.Event()
        self.last_stats = 0.0
        self.status_legs = -1
        self.beep_path = ""

    # ------------------------------------------------------------------ events out

    def emit(self, event: object, *, retain: bool = False) -> None:
        self.outbox.append(_Outgoing(codec.topic_for(event), codec.encode(event), retain))
        self.outbox_ready.set()

    def reply(self, topic: str, correlation: bytes | None, result: CommandResult) -> None:
        self.outbox.append(_Outgoing(topic, codec.encode(result), False, correlation))
        self.outbox_ready.set()

    def status(self, *, up: bool = True) -> WorkerStatus:
        return WorkerStatus(
            worker=self.cfg.worker,
            up=up,
            pid=os.getpid() if up else 0,
            sip_port=self.cfg.sip_port,
            legs=len(self.legs) if up else 0,
            max_legs=self.cfg.max_legs,
        )

    def _status_if_changed(self) -> None:
        if len(self.legs) != self.status_legs:
            self.status_legs = len(self.legs)
            self.emit(self.status(), retain=True)

    # ------------------------------------------------------------------ pjsua2 loop

    async def run_media(self) -> None:
        while not self.stopping.is_set():
            self.pump()
            busy = (
                self.legs or self.graveyard or self.orphans or self.recordings or self.closing
                or self.retired
            )  # fmt: skip
            await asyncio.sleep(POLL_S if busy else IDLE_POLL_S)

    def _watch_sip_socket(self, loop: asyncio.AbstractEventLoop) -> int | None:
        """Pump as soon as a SIP datagram arrives instead of waiting for the next tick."""
        fd = _udp_fd(self.cfg.sip_port)
        if fd is None:
            log.warning("SIP socket not found; relying on polling only")
            return None
        loop.add_reader(fd, self.pump)
        return fd

    def pump(self) -> None:
        self.stack.poll()
        while self.inbox:
            note = self.inbox.popleft()
            try:
                self._on_note(note)
            except Exception:
                log.exception("handling %s failed", note.kind)
        now = time.monotonic()
        for leg in [lg for lg in self.legs.values() if lg.record is not None]:
            self._check_record(leg, now)
        if now - self.last_stats >= STATS_EVERY_S:
            self.last_stats = now
            for leg in list(self.legs.values()):
                if leg.media_active:
                    self._snapshot(leg)
                    self._check_rtp(leg, now)
        self._reap(now)
        self._status_if_changed()

    def _check_rtp(self, leg: Leg, now: float) -> None:
        # A far end that vanished without a BYE (crashed trunk, lost network) would
        # hold the leg, and a worker slot, for ever: no RTP for rtp_timeout_s ends it.
        # Legs on hold are not media_active and never get here.
        if leg.state is not LegState.UP or not self.cfg.rtp_timeout_s:
            return
        if leg.rtp[0] != leg.rx_seen:
            leg.rx_seen, leg.rx_since = leg.rtp[0], now
        elif leg.rx_since == 0.0:
            leg.rx_since = now
        elif now - leg.rx_since >= self.cfg.rtp_timeout_s:
            log.warning("leg %s: no RTP for %.0f s, hanging up", leg.id, now - leg.rx_since)
            self._hangup_leg(leg, 0)

    def _snapshot(self, leg: Leg) -> None:
        snap = rtp_snapshot(leg.call)
        if snap is not None:
            leg.rtp = max(leg.rtp, snap)

    def _reap(self, now: float) -> None:
        if self.retired:
            self._release_calls()
        if self.graveyard:
            keep = [(t, obj) for t, obj in self.graveyard if t > now]
            if len(keep) != len(self.graveyard):
                # Dropping the last reference here, on our thread, is the explicit
                # destruction point (never a PJSIP callback, never GC at random).
                self.graveyard = keep
        if self.recordings:
            done = [(t, b) for t, b in self.recordings if t <= now]
            self.recordings = [(t, b) for t, b in self.recordings if t > now]
            for _, br in done:
                self._close_recorder(br)
        if self.closing:
            self.closing = [
                (t, br) for t, br in self.closing if not self._finish_recording(br, force=t <= now)
            ]

    def _retire(self, call: LegCall) -> None:
        """A disconnected Call: free it as soon as no newer Call holds its pjsua slot."""
        self.retired.append(call)
        self._release_calls()

    def _release_calls(self) -> None:
        # pjsua2's ~Call() clears the user data of the slot id it last had and hangs up
        # any call active there. With 4 slots reused round robin, a Call freed after its
        # slot was taken again detaches (or hangs up) the newer call: measured under
        # load as legs that never ended. So a retired Call is freed only while its slot
        # has no newer owner; its own conference port is pjsua's, freed at disconnect.
        owners = self.stack.owners
        keep: list[LegCall] = []
        for call in self.retired:
            slot = call.getId()
            owner = owners.get(slot)
            if owner is call:
                del owners[slot]
            elif owner is not None and slot != pj.PJSUA_INVALID_ID:
                keep.append(call)
        self.retired = keep  # the dropped ones had their last reference here

    def _bury(self, obj: Any, delay: float = DESTROY_DELAY_S) -> None:
        self.graveyard.append((time.monotonic() + delay, obj))

    def _leg_of(self, call: LegCall | None) -> Leg | None:
        if call is None or not call.leg:
            return None
        leg = self.legs.get(call.leg)
        return leg if leg is not None and leg.call is call else None

    def _on_note(self, note: Note) -> None:
        if note.kind == "incoming":
            assert note.call is not None
            self._on_incoming(note.call, note.data)
            return
        if note.kind == "eof":
            self._on_eof(note.player)
            return
        leg = self._leg_of(note.call)
        if leg is None:
            if note.kind == "state" and note.data["state"] == pj.PJSIP_INV_STATE_DISCONNECTED:
                assert note.call is not None
                self.orphans.discard(note.call)
                self._retire(note.call)
            return
        if note.kind == "state":
            self._on_state(leg, note.data["state"], note.data["code"], note.data["reason"])
        elif note.kind == "media":
            self._on_media(leg, bool(note.data["active"]))
        elif note.kind == "stats":
            leg.rtp = max(leg.rtp, note.data["rtp"])
        elif note.kind == "dtmf":
            self._on_dtmf(leg, note.data["digit"], note.data["method"])

    def _on_incoming(self, call: LegCall, data: dict[str, str]) -> None:
        if len(self.legs) >= self.cfg.max_legs or self.stopping.is_set():
            # The edge's load check and increment are separate locks: it can
            # overshoot by one, so refusing here is what makes the cap real.
            log.info("refuse %s: %d/%d legs in use", data["sip_call_id"], len(self.legs),
                     self.cfg.max_legs)  # fmt: skip
            self.orphans.add(call)
            self._hangup_call(call, 486)
            return
        leg = Leg(uuid.uuid4().hex, call, True, LegState.RINGING, data["sip_call_id"])
        call.leg = leg.id
        self.legs[leg.id] = leg
        prm = pj.CallOpParam()
        prm.statusCode = 180
        try:
            call.answer(prm)
            leg.ringing_sent = True
        except pj.Error as exc:
            log.warning("leg %s: 180 failed: %s", leg.id, exc.info())
        log.info("leg %s incoming from %s to %s (%s)", leg.id, data["caller"], data["did"],
                 leg.sip_call_id)  # fmt: skip
        self.emit(
            LegIncoming(
                worker=self.cfg.worker,
                leg=leg.id,
                sip_call_id=leg.sip_call_id,
                caller=data["caller"],
                did=data["did"],
            )
        )

    def _on_state(self, leg: Leg, state: int, code: int, reason: str) -> None:
        if state == pj.PJSIP_INV_STATE_EARLY and not leg.inbound and not leg.ringing_sent:
            if code in (180, 183):
                leg.ringing_sent = True
                log.info("leg %s ringing (%d)", leg.id, code)
                self.emit(LegRinging(worker=self.cfg.worker, leg=leg.id))
        elif state == pj.PJSIP_INV_STATE_CONNECTING and leg.state is LegState.CALLING:
            leg.state = LegState.ANSWERING
        elif state == pj.PJSIP_INV_STATE_CONFIRMED:
            leg.confirmed = True
            self._maybe_up(leg)
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self._on_disconnected(leg, code, reason)

    def _on_media(self, leg: Leg, active: bool) -> None:
        was = leg.media_active
        leg.media_active = active
        if not active:
            return
        if was:
            # A re-INVITE (hold/resume, rtpengine) may give the call a new conference
            # port: connect it again.
            self._reconnect(leg)
        self._maybe_up(leg)
        if leg.pending_play is not None:
            play, leg.pending_play = leg.pending_play, None
            try:
                self._start_play(leg, play)
            except CommandError as exc:
                log.warning("leg %s: deferred play %s failed: %s", leg.id, play.play_id, exc)

    def _maybe_up(self, leg: Leg) -> None:
        if (
            leg.confirmed
            and leg.media_active
            and leg.state
            in (
                LegState.ANSWERING,
                LegState.CALLING,
                LegState.RINGING,
            )
        ):
            leg.state = LegState.UP
            log.info("leg %s answered", leg.id)
            self.emit(LegAnswered(worker=self.cfg.worker, leg=leg.id))

    def _reconnect(self, leg: Leg) -> None:
        try:
            med = leg.call.getAudioMedia(-1)
            if leg.player is not None:
                leg.player.startTransmit(med)
            br = leg.bridge
            if br is not None:
                other = br.b if br.a is leg else br.a
                if other.media_active:
                    other_med = other.call.getAudioMedia(-1)
                    med.startTransmit(other_med)
                    other_med.startTransmit(med)
                if br.recorder is not None:
                    med.startTransmit(br.recorder)
            if leg.kept is not None:
                med.startTransmit(leg.kept[1])
            rec = leg.record
            if rec is not None:
                if rec.beep is not None:
                    rec.beep.startTransmit(med)
                if rec.capturing:
                    med.startTransmit(rec.recorder)
        except pj.Error as exc:
            log.warning("leg %s: reconnecting media failed: %s", leg.id, exc.info())

    def _on_dtmf(self, leg: Leg, digit: str, method: str) -> None:
        log.info("leg %s dtmf %s (%s)", leg.id, digit, method)
        self.emit(DtmfReceived(worker=self.cfg.worker, leg=leg.id, digit=digit, method=method))
        if leg.record is not None and digit in leg.record.cmd.terminators:
            self._stop_record(leg, "terminator")
        if leg.play is not None and leg.play.barge_in:
            play = leg.play
            self._stop_play(leg)
            self.emit(
                PlaybackFinished(
                    worker=self.cfg.worker, leg=leg.id, play_id=play.play_id, interrupted=True
                )
            )

    def _on_eof(self, player: Player | None) -> None:
        if player is None:
            return
        leg = self.legs.get(player.leg)
        if leg is not None and leg.record is not None and leg.record.beep is player:
            self._end_beep(leg, leg.record)
            try:
                self._capture(leg, leg.record)
            except pj.Error as exc:  # the leg lost its audio: it is ending
                log.warning("leg %s: recording failed: %s", leg.id, exc.info())
                self._stop_record(leg, "hangup")
            return
        if leg is None or leg.player is not player or leg.play is None or leg.play.loop:
            return
        play = leg.play
        self._stop_play(leg)
        log.info("leg %s playback %s finished", leg.id, play.play_id)
        self.emit(PlaybackFinished(worker=self.cfg.worker, leg=leg.id, play_id=play.play_id))

    def _on_disconnected(self, leg: Leg, code: int, reason: str) -> None:
        # No snapshot here: the stream is gone by DISCONNECTED (getStreamStat fails,
        # measured); onStreamDestroyed delivered the final counters.
        leg.media_active = False  # its conference port is gone: no stopTransmit on it
        self._stop_play(leg)
        leg.pending_play = None
        if leg.record is not None:
            self._stop_record(leg, "hangup")
        self._close_kept(leg)
        del self.legs[leg.id]
        if leg.local_end:
            by = "local"
        elif leg.state is not LegState.UP and (code == 408 or code >= 500) and not leg.inbound:
            by = "error"
        else:
            by = "remote"
        rx, tx, lost = leg.rtp
        log.info("leg %s ended by %s: %d %s (rtp rx=%d tx=%d lost=%d)", leg.id, by, code,
                 reason, rx, tx, lost)  # fmt: skip
        self.emit(
            LegEnded(
                worker=self.cfg.worker,
                leg=leg.id,
                by=by,
                sip_code=code,
                reason=reason,
                rtp=RtpCounters(rx_packets=rx, tx_packets=tx, rx_lost=lost),
            )
        )
        br = leg.bridge
        if br is not None:
            other = br.b if br.a is leg else br.a
            self._end_bridge(br)
            if br.hangup_together and other.id in self.legs:
                log.info("leg %s: partner %s ended, hanging up", other.id, leg.id)
                self._hangup_leg(other, 0)
        self._retire(leg.call)

    # ------------------------------------------------------------------ media helpers

    def _start_play(self, leg: Leg, play: Play) -> None:
        missing = [f for f in play.files if not Path(f).is_file()]
        if missing:
            raise CommandError(f"no such file: {', '.join(missing)}")
        self._stop_play(leg)
        player = Player(self.inbox, leg.id, play.play_id)
        options = 0 if play.loop else pj.PJMEDIA_FILE_NO_LOOP
        try:
            if len(play.files) == 1:
                player.createPlayer(play.files[0], options)
            else:
                files = pj.StringVector()
                for f in play.files:
                    files.append(f)
                player.createPlaylist(files, "", options)
            player.startTransmit(leg.call.getAudioMedia(-1))
        except pj.Error as exc:
            self._bury(player)
            raise CommandError(f"cannot play {list(play.files)}: {exc.info()}") from None
        leg.player = player
        leg.play = play

    def _stop_play(self, leg: Leg) -> None:
        player, leg.player, leg.play = leg.player, None, None
        if player is None:
            return
        if leg.media_active:
            with contextlib.suppress(pj.Error):
                player.stopTransmit(leg.call.getAudioMedia(-1))
        self._bury(player)

    def _end_bridge(self, br: BridgeState) -> None:
        for leg, other in ((br.a, br.b), (br.b, br.a)):
            if leg.bridge is br:
                leg.bridge = None
            if leg.media_active and other.media_active:
                with contextlib.suppress(pj.Error):
                    leg.call.getAudioMedia(-1).stopTransmit(other.call.getAudioMedia(-1))
            if br.recorder is not None and leg.media_active:
                with contextlib.suppress(pj.Error):
                    leg.call.getAudioMedia(-1).stopTransmit(br.recorder)
        if br.recorder is not None:
            # The WAV header is written when the recorder is destroyed, after the
            # queued stopTransmit ran; report the file only then.
            job = RecordingJob(br.a.id, br.record_path, br.recorder)
            br.recorder = None
            self.recordings.append((time.monotonic() + DESTROY_DELAY_S, job))

    def _close_kept(self, leg: Leg) -> None:
        """Close the recording a leg kept through an `Unbridge` (reported as finished)."""
        if leg.kept is None:
            return
        (path, recorder), leg.kept = leg.kept, None
        if leg.media_active:
            with contextlib.suppress(pj.Error):
                leg.call.getAudioMedia(-1).stopTransmit(recorder)
        self.recordings.append(
            (time.monotonic() + DESTROY_DELAY_S, RecordingJob(leg.id, path, recorder))
        )

    def _close_recorder(self, job: RecordingJob) -> None:
        # Dropping the last reference destroys the port, but in 2.15.1 the conference
        # removes it on its clock thread: the WAV header is rewritten a little later
        # (measured: read at once, the file is "not a WAVE file"). Publish once it is.
        job.recorder = None  # the only reference: the port is destroyed here
        self.closing.append((time.monotonic() + 3.0, job))

    def _finish_recording(self, job: RecordingJob, *, force: bool = False) -> bool:
        duration = _wav_seconds(job.path)
        if duration is None and not force:
            return False
        if duration is None:
            log.warning("recording %s: WAV header not completed", job.path)
        log.info("leg %s recording %s finished (%.1f s)", job.leg_id, job.path,
                 duration or 0.0)  # fmt: skip
        if job.record_id is not None:
            self.emit(
                LegRecorded(
                    worker=self.cfg.worker,
                    leg=job.leg_id,
                    record_id=job.record_id,
                    path=job.path,
                    duration_s=duration or 0.0,
                    stopped_by=job.stopped_by,
                )
            )
            return True
        self.emit(
            RecordingFinished(
                worker=self.cfg.worker, leg=job.leg_id, path=job.path, duration_s=duration or 0.0
            )
        )
        return True

    def _hangup_call(self, call: LegCall, code: int) -> None:
        prm = pj.CallOpParam()
        prm.statusCode = code
        try:
            call.hangup(prm)
        except pj.Error as exc:
            log.warning("hangup failed: %s", exc.info())

    def _hangup_leg(self, leg: Leg, code: int) -> None:
        if leg.state is LegState.ENDING:
            return
        self._snapshot(leg)
        if not code:
            # Ringing inbound: "temporarily unavailable"; answered or outbound: pjsua
            # sends BYE or CANCEL whatever the code.
            code = 480 if leg.inbound and leg.state is LegState.RINGING else 200
        leg.local_end = True
        leg.state = LegState.ENDING
        self._hangup_call(leg.call, code)

    # ------------------------------------------------------------------ commands

    def execute(self, cmd: object) -> None:
        """Carry out one command or raise `CommandError`."""
        if self.stopping.is_set():
            raise CommandError(f"worker {self.cfg.worker} is shutting down")
        if isinstance(cmd, Answer):
            leg = self._need(cmd.leg)
            if not leg.inbound or leg.state is not LegState.RINGING:
                raise CommandError(f"leg {cmd.leg} is {leg.state.value}, not a ringing inbound leg")
            prm = pj.CallOpParam()
            prm.statusCode = 200
            try:
                leg.call.answer(prm)
            except pj.Error as exc:
                raise CommandError(f"answer failed: {exc.info()}") from None
            leg.state = LegState.ANSWERING
        elif isinstance(cmd, Play):
            leg = self._need(cmd.leg)
            if not cmd.files:
                raise CommandError("Play needs at least one file")
            if leg.bridge is not None:
                raise CommandError(f"leg {cmd.leg} is bridged")
            if leg.record is not None:
                raise CommandError(
                    f"leg {cmd.leg} is recording ({leg.record.cmd.record_id}): StopRecord first"
                )
            if leg.media_active:
                self._start_play(leg, cmd)
            elif leg.state in (LegState.ANSWERING, LegState.CALLING):
                missing = [f for f in cmd.files if not Path(f).is_file()]
                if missing:
                    raise CommandError(f"no such file: {', '.join(missing)}")
                leg.pending_play = cmd  # media comes up with the ACK/200
            else:
                raise CommandError(f"leg {cmd.leg} has no audio yet ({leg.state.value})")
        elif isinstance(cmd, StopPlay):
            leg = self._need(cmd.leg)
            leg.pending_play = None
            self._stop_play(leg)
        elif isinstance(cmd, Record):
            self._record(cmd)
        elif isinstance(cmd, StopRecord):
            leg = self._need(cmd.leg)
            if leg.record is not None:
                self._stop_record(leg, "stopped")
        elif isinstance(cmd, Dial):
            self._dial(cmd)
        elif isinstance(cmd, Bridge):
            self._bridge(cmd)
        elif isinstance(cmd, Unbridge):
            self._unbridge(cmd)
        elif isinstance(cmd, Hangup):
            leg = self._need(cmd.leg)
            if cmd.sip_code and not 400 <= cmd.sip_code <= 699:
                raise CommandError(f"sip_code must be 0 or 400-699, not {cmd.sip_code}")
            self._hangup_leg(leg, cmd.sip_code)
        else:
            raise CommandError(f"{type(cmd).__name__} is not a media command")

    def _need(self, leg_id: str) -> Leg:
        leg = self.legs.get(leg_id)
        if leg is None:
            raise CommandError(f"unknown leg {leg_id!r}")
        return leg

    def _dial(self, cmd: Dial) -> None:
        if not cmd.leg or cmd.leg in self.legs:
            raise CommandError(f"leg id {cmd.leg!r} is empty or already in use")
        if len(self.legs) >= self.cfg.max_legs:
            raise CommandError(f"worker full: {len(self.legs)}/{self.cfg.max_legs} legs")
        if cmd.related_leg and cmd.related_leg not in self.legs:
            raise CommandError(f"unknown related leg {cmd.related_leg!r}")
        call = self.stack.new_call()
        call.leg = cmd.leg
        prm = pj.CallOpParam(True)
        prm.opt.audioCount = 1
        prm.opt.videoCount = 0
        if cmd.caller_id:
            prm.txOption.localUri = f'"{cmd.caller_id}" <sip:{cmd.caller_id}@127.0.0.1>'
        try:
            call.makeCall(cmd.uri, prm)
        except pj.Error as exc:
            self._bury(call)
            raise CommandError(f"cannot dial {cmd.uri!r}: {exc.info()}") from None
        self.stack.owners[call.getId()] = call
        leg = Leg(cmd.leg, call, False, LegState.CALLING)
        with contextlib.suppress(pj.Error):
            leg.sip_call_id = str(call.getInfo().callIdString)
        self.legs[leg.id] = leg
        log.info("leg %s dialling %s", leg.id, cmd.uri)

    def _bridge(self, cmd: Bridge) -> None:
        if cmd.a == cmd.b:
            raise CommandError("cannot bridge a leg to itself")
        a, b = self._need(cmd.a), self._need(cmd.b)
        for leg in (a, b):
            if not leg.media_active or leg.state is not LegState.UP:
                raise CommandError(f"leg {leg.id} is not answered ({leg.state.value})")
            if leg.bridge is not None:
                raise CommandError(f"leg {leg.id} is already bridged")
            if leg.record is not None:
                raise CommandError(f"leg {leg.id} is recording: StopRecord first")
        br = BridgeState(a, b, cmd.hangup_together, cmd.record_path, started=time.monotonic())
        if cmd.record_path:
            try:
                Path(cmd.record_path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CommandError(f"cannot create {cmd.record_path}: {exc}") from None
        for leg in (a, b):
            leg.pending_play = None
            self._stop_play(leg)
        # A leg that kept its recording through an Unbridge goes on in the same file
        # when bridged again with that path; any other bridge closes it first.
        resumed: Leg | None = None
        for leg in (a, b):
            if leg.kept is not None:
                if resumed is None and cmd.record_path and leg.kept[0] == cmd.record_path:
                    resumed = leg
                else:
                    self._close_kept(leg)
        try:
            am, bm = a.call.getAudioMedia(-1), b.call.getAudioMedia(-1)
            if resumed is not None:
                assert resumed.kept is not None
                br.recorder = resumed.kept[1]
                (bm if resumed is a else am).startTransmit(br.recorder)
                resumed.kept = None
            elif cmd.record_path:
                rec = pj.AudioMediaRecorder()
                rec.createRecorder(cmd.record_path)
                br.recorder = rec
                am.startTransmit(rec)
                bm.startTransmit(rec)
            am.startTransmit(bm)
            bm.startTransmit(am)
        except pj.Error as exc:
            if br.recorder is not None:
                self._bury(br.recorder)
                br.recorder = None
            raise CommandError(f"bridge failed: {exc.info()}") from None
        a.bridge = b.bridge = br
        log.info("legs %s and %s bridged%s", a.id, b.id,
                 f", recording to {cmd.record_path}" if cmd.record_path else "")  # fmt: skip

    def _unbridge(self, cmd: Unbridge) -> None:
        leg = self._need(cmd.leg)
        br = leg.bridge
        if br is None:
            raise CommandError(f"leg {leg.id} is not bridged")
        other = br.b if br.a is leg else br.a
        for one, two in ((leg, other), (other, leg)):
            one.bridge = None
            if one.media_active and two.media_active:
                with contextlib.suppress(pj.Error):
                    one.call.getAudioMedia(-1).stopTransmit(two.call.getAudioMedia(-1))
        if br.recorder is not None:
            if other.media_active:
                with contextlib.suppress(pj.Error):
                    other.call.getAudioMedia(-1).stopTransmit(br.recorder)
            leg.kept, br.recorder = (br.record_path, br.recorder), None
        log.info("legs %s and %s unbridged%s", leg.id, other.id,
                 f"; {leg.id} keeps recording to {br.record_path}" if leg.kept else "")  # fmt: skip

    def _record(self, cmd: Record) -> None:
        leg = self._need(cmd.leg)
        if leg.bridge is not None:
            raise CommandError(f"leg {leg.id} is bridged: record the bridge (Bridge.record_path)")
        if leg.record is not None:
            raise CommandError(f"leg {leg.id} is already recording ({leg.record.cmd.record_id})")
        if not leg.media_active or leg.state is not LegState.UP:
            raise CommandError(f"leg {leg.id} is not answered ({leg.state.value})")
        if not isinstance(cmd.max_s, int | float) or not 0 < cmd.max_s <= RECORD_MAX_S:
            raise CommandError(f"max_s must be > 0 and <= {RECORD_MAX_S:g}, not {cmd.max_s!r}")
        if not isinstance(cmd.silence_s, int | float) or cmd.silence_s < 0:
            raise CommandError(f"silence_s must be >= 0, not {cmd.silence_s!r}")
        if not isinstance(cmd.terminators, str) or set(cmd.terminators) - DTMF_DIGITS:
            raise CommandError(
                f"terminators must be DTMF digits (0-9*#A-D), not {cmd.terminators!r}"
            )
        path = Path(cmd.path)
        if not path.is_absolute() or path.suffix.lower() != ".wav":
            raise CommandError(f"path must be an absolute .wav path, not {cmd.path!r}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CommandError(f"cannot create {cmd.path}: {exc}") from None
        leg.pending_play = None
        self._stop_play(leg)  # a prompt still playing is cut, as a new Play would
        # Created now so a bad path fails the command; a recorder no port transmits to
        # writes nothing (measured), so the beep is not in the file.
        recorder = pj.AudioMediaRecorder()
        try:
            recorder.createRecorder(cmd.path)
        except pj.Error as exc:
            self._bury(recorder)
            raise CommandError(f"cannot record to {cmd.path}: {exc.info()}") from None
        rec = RecordState(cmd, recorder)
        leg.record = rec
        if cmd.beep:
            beep = Player(self.inbox, leg.id, f"beep:{cmd.record_id}")
            try:
                beep.createPlayer(self._beep_file(), pj.PJMEDIA_FILE_NO_LOOP)
                beep.startTransmit(leg.call.getAudioMedia(-1))
                rec.beep = beep
            except (pj.Error, OSError) as exc:
                self._bury(beep)
                msg = exc.info() if isinstance(exc, pj.Error) else str(exc)
                log.warning("leg %s: no beep (%s); recording at once", leg.id, msg)
        if rec.beep is None:
            try:
                self._capture(leg, rec)
            except pj.Error as exc:
                leg.record = None
                self._bury(recorder)
                raise CommandError(f"cannot record leg {leg.id}: {exc.info()}") from None
        log.info("leg %s recording %s to %s (max %.1f s)", leg.id, cmd.record_id, cmd.path,
                 cmd.max_s)  # fmt: skip

    def _beep_file(self) -> str:
        if not self.beep_path:
            self.beep_path = str(_write_beep())
        return self.beep_path

    def _capture(self, leg: Leg, rec: RecordState) -> None:
        """Connect the leg's incoming audio, and nothing else, to the recorder."""
        leg.call.getAudioMedia(-1).startTransmit(rec.recorder)
        now = time.monotonic()
        rec.capturing = True
        rec.deadline = now + float(rec.cmd.max_s)
        rec.quiet_since = now

    def _end_beep(self, leg: Leg, rec: RecordState) -> None:
        beep, rec.beep = rec.beep, None
        if beep is None:
            return
        if leg.media_active:
            with contextlib.suppress(pj.Error):
                beep.stopTransmit(leg.call.getAudioMedia(-1))
        self._bury(beep)

    def _check_record(self, leg: Leg, now: float) -> None:
        """Max time and trailing silence, once per loop tick (no Python in the 20 ms path:
        one conference level read per tick, measured 2.3 us)."""
        rec = leg.record
        if rec is None or not rec.capturing:
            return
        if now >= rec.deadline:
            self._stop_record(leg, "max_time")
            return
        if rec.cmd.silence_s <= 0 or not leg.media_active:
            return
        try:
            # pjsua2 names conference levels from the port's side: the call port's
            # "tx" level is what the far end sends us (measured; "rx" stays 0).
            level = leg.call.getAudioMedia(-1).getTxLevel()
        except pj.Error:
            return
        if level > SILENCE_LEVEL:
            rec.quiet_since = now
        elif rec.quiet_since is not None and now - rec.quiet_since >= rec.cmd.silence_s:
            self._stop_record(leg, "silence")

    def _stop_record(self, leg: Leg, stopped_by: str) -> None:
        rec, leg.record = leg.record, None
        if rec is None:
            return
        self._end_beep(leg, rec)
        if rec.capturing and leg.media_active:
            with contextlib.suppress(pj.Error):
                leg.call.getAudioMedia(-1).stopTransmit(rec.recorder)
        log.info("leg %s recording %s stopped by %s", leg.id, rec.cmd.record_id, stopped_by)
        job = RecordingJob(leg.id, rec.cmd.path, rec.recorder, rec.cmd.record_id, stopped_by)
        # Destroyed after the queued stopTransmit ran; LegRecorded once the header is done.
        self.recordings.append((time.monotonic() + DESTROY_DELAY_S, job))

    def handle_request(
        self, payload: bytes, response_topic: str | None, correlation: bytes | None
    ) -> None:
        try:
            cmd = codec.decode(payload)
            self.execute(cmd)
            result = CommandResult(ok=True)
        except codec.WireError as exc:
            result = CommandResult(ok=False, error=f"bad command: {exc}")
        except CommandError as exc:
            result = CommandResult(ok=False, error=str(exc))
        except Exception as exc:  # a bug must cost one command, not the calls
            log.exception("command failed")
            result = CommandResult(ok=False, error=f"internal error: {exc!r}")
        if not result.ok:
            log.info("command refused: %s", result.error)
        if response_topic:
            self.reply(response_topic, correlation, result)

    # ------------------------------------------------------------------ MQTT

    async def run_mqtt(self) -> None:
        backoff = 0.2
        will = aiomqtt.Will(
            codec.status_topic(self.cfg.worker),
            codec.encode(self.status(up=False)),
            qos=1,
            retain=True,
        )
        while not self.stopping.is_set():
            try:
                async with aiomqtt.Client(
                    self.cfg.broker_host,
                    self.cfg.broker_port,
                    identifier=f"kefu-worker-{self.cfg.worker}-{os.getpid()}",
                    protocol=aiomqtt.ProtocolVersion.V5,
                    will=will,
                    keepalive=10,
                ) as client:
                    no_delay(client)
                    log.info("broker %s:%d connected", self.cfg.broker_host, self.cfg.broker_port)
                    backoff = 0.2
                    # The retained status may have been replaced by our own last will;
                    # statuses queued while away are stale.
                    status_topic = codec.status_topic(self.cfg.worker)
                    for out in [o for o in self.outbox if o.topic == status_topic]:
                        self.outbox.remove(out)
                    self.status_legs = -1
                    self._status_if_changed()
                    await client.subscribe(codec.command_topic(self.cfg.worker), qos=1)
                    publisher = asyncio.create_task(self._publish_loop(client))
                    reader = asyncio.create_task(self._read_commands(client))
                    try:
                        # Either one failing (a lost PUBACK kills the publisher while the
                        # connection looks up) means: reconnect, the outbox is kept.
                        done, _ = await asyncio.wait(
                            {publisher, reader}, return_when=asyncio.FIRST_COMPLETED
                        )
                        for task in done:
                            exc = task.exception()
                            if exc is not None:
                                raise aiomqtt.MqttError(f"{exc!r}") from exc
                        raise aiomqtt.MqttError("connection ended")
                    finally:
                        for task in (publisher, reader):
                            task.cancel()
                            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                                await task
            except aiomqtt.MqttError as exc:
                if self.stopping.is_set():
                    return
                log.warning("broker unavailable (%s); retrying in %.1f s", exc, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff)
            backoff = min(backoff * 2, 5.0)

    async def _read_commands(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            props = message.properties
            rt = getattr(props, "ResponseTopic", None) if props else None
            cd = getattr(props, "CorrelationData", None) if props else None
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                payload = str(payload).encode()
            self.handle_request(bytes(payload), rt, cd)

    async def _publish_loop(self, client: aiomqtt.Client) -> None:
        while True:
            await self.outbox_ready.wait()
            await self._drain_outbox(client)
            self.outbox_ready.clear()

    async def _drain_outbox(self, client: aiomqtt.Client) -> None:
        while self.outbox:
            out = self.outbox[0]
            props = None
            if out.correlation is not None:
                props = Properties(PacketTypes.PUBLISH)
                props.CorrelationData = out.correlation
            # Removed only once the broker took it: a lost connection keeps it queued.
            await client.publish(out.topic, out.payload, qos=1, retain=out.retain, properties=props)
            if self.outbox and self.outbox[0] is out:
                self.outbox.popleft()

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        self.stack.start()
        log.info("worker %d up: sip 127.0.0.1:%d rtp %d-%d, %d legs max, %d Hz",
                 self.cfg.worker, self.cfg.sip_port, self.cfg.rtp_port,
                 self.cfg.rtp_port + self.cfg.rtp_ports - 1, self.cfg.max_legs,
                 self.cfg.clock_rate)  # fmt: skip
        sip_fd = self._watch_sip_socket(loop)
        media = asyncio.create_task(self.run_media())
        mqtt = asyncio.create_task(self.run_mqtt())
        await self.stopping.wait()
        log.info("worker %d stopping", self.cfg.worker)
        await self._wind_down()
        if sip_fd is not None:
            loop.remove_reader(sip_fd)
        media.cancel()
        mqtt.cancel()
        for task in (media, mqtt):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._say_goodbye()
        self._destroy()

    async def _wind_down(self) -> None:
        """Hang up every leg and let the BYEs, recorders and events go out."""
        for leg in list(self.legs.values()):
            self._hangup_leg(leg, 0)
        deadline = time.monotonic() + 3.0
        while (self.legs or self.recordings or self.closing) and time.monotonic() < deadline:
            self.pump()
            await asyncio.sleep(POLL_S)
        # Whatever is left gets its header from libDestroy(); report it anyway.
        for _, br in self.recordings:
            self._close_recorder(br)
        for _, br in self.closing:
            self._finish_recording(br, force=True)
        self.recordings.clear()
        self.closing.clear()

    async def _say_goodbye(self) -> None:
        self.outbox.append(
            _Outgoing(
                codec.status_topic(self.cfg.worker), codec.encode(self.status(up=False)), True
            )
        )
        with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
            async with asyncio.timeout(3.0):
                async with aiomqtt.Client(
                    self.cfg.broker_host,
                    self.cfg.broker_port,
                    identifier=f"kefu-worker-{self.cfg.worker}-{os.getpid()}-bye",
                    protocol=aiomqtt.ProtocolVersion.V5,
                ) as client:
                    await self._drain_outbox(client)

    def _destroy(self) -> None:
        for leg in self.legs.values():
            self._bury(leg.call)
        self.legs.clear()
        self.graveyard.clear()
        self.orphans.clear()
        self.retired.clear()
        self.stack.owners.clear()
        self.inbox.clear()
        gc.collect()  # any stray pj object must go before libDestroy, never after

        self.stack.destroy()


def _wav_seconds(path: str) -> float | None:
    """Duration of a PCM WAV whose RIFF and data sizes match the file; else None."""
    try:
        size = os.path.getsize(path)
        with wave.open(path, "rb") as w:
            frames = w.getnframes()
            rate = w.getframerate()
            width = w.getsampwidth() * w.getnchannels()
        with open(path, "rb") as f:
            riff = int.from_bytes(f.read(8)[4:8], "little")
    except (OSError, EOFError, wave.Error):
        return None
    if riff != size - 8 or frames * width > size or not rate:
        return None
    return frames / float(rate)


def _write_beep() -> Path:
    """A 0.2 s 1 kHz tone (8 kHz mono WAV), written once per user into the temp dir."""
    path = Path(tempfile.gettempdir()) / f"kefu-{os.getuid()}" / "beep-1khz-200ms.wav"
    if _wav_seconds(str(path)):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = 8000
    t = np.arange(int(rate * BEEP_S)) / rate
    ramp = np.minimum(1.0, np.minimum(t, BEEP_S - t) / 0.005)  # 5 ms fades: no clicks
    samples = (0.3 * 32767 * np.sin(2 * np.pi * 1000 * t) * ramp).astype("<i2")
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    os.replace(tmp, path)  # other workers may be writing the same file
    return path


def _udp_fd(port: int) -> int | None:
    """The fd of this process's UDP socket bound to `port` (PJSIP does not expose it)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(fd)) as sock:
                if sock.type == socket.SOCK_DGRAM and sock.getsockname()[1:2] == (port,):
                    return fd
        except OSError:
            continue
    return None


def parse_args(argv: Sequence[str] | None) -> tuple[WorkerConfig, str]:
    p = argparse.ArgumentParser(prog="kefu worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--id", type=int, required=True, help="worker number (MQTT topics)")
    p.add_argument("--sip-port", type=int, required=True, help="loopback UDP SIP port")
    p.add_argument("--rtp-port", type=int, required=True, help="first RTP port")
    p.add_argument("--rtp-ports", type=int, default=40, help="size of the RTP port range")
    p.add_argument("--broker-host", default="127.0.0.1")
    p.add_argument("--broker-port", type=int, default=1883)
    p.add_argument("--max-legs", type=int, default=4, choices=range(1, 5))
    p.add_argument("--clock-rate", type=int, default=8000, choices=(8000, 16000))
    p.add_argument("--edge", default="", help="HOST:PORT of the Kamailio edge (informational)")
    p.add_argument(
        "--rtp-timeout",
        type=float,
        default=60.0,
        help="seconds without RTP before hang-up (0: off)",
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG also turns on PJSIP logs")
    a = p.parse_args(argv)
    cfg = WorkerConfig(
        worker=a.id,
        sip_port=a.sip_port,
        rtp_port=a.rtp_port,
        rtp_ports=a.rtp_ports,
        broker_host=a.broker_host,
        broker_port=a.broker_port,
        max_legs=a.max_legs,
        clock_rate=a.clock_rate,
        rtp_timeout_s=a.rtp_timeout,
        edge=a.edge,
        pj_log_level=4 if a.log_level.upper() == "DEBUG" else 1,
    )
    return cfg, a.log_level.upper()


def main(argv: Sequence[str] | None = None) -> int:
    cfg, level = parse_args(argv)
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s worker-{cfg.worker} %(levelname)s %(message)s",
    )
    try:
        asyncio.run(Worker(cfg).run())
    except pj.Error as exc:
        log.error("pjsua2: %s", exc.info())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
