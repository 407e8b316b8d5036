"""The media worker (`pbx.worker`) against real peers: mosquitto, SIPp and raw SIP.

Each test starts a private broker and a worker subprocess on free loopback ports,
drives the worker with MQTT v5 requests exactly as the core will, and checks what
the SIP peers and the event stream saw. SIPp scenarios live in `tests/sipp/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
import uuid
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pbx.procs import ManagedProcess, free_port, wait_until
from tests.support.sipp import start_sipp
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
    StopPlay,
    StopRecord,
    Unbridge,
    WorkerStatus,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WORKER_ID = 7
MOSQUITTO = "/usr/sbin/mosquitto"
BEEP_S = 0.2  # pbx.worker.BEEP_S: the tone before a Record, not in the file


# ---------------------------------------------------------------- helpers


class Bus:
    """The core's side of the wire: MQTT v5 requests to a worker, and its events."""

    def __init__(self, client: aiomqtt.Client, worker: int):
        self.client = client
        self.worker = worker
        self.reply_topic = f"test/{uuid.uuid4().hex}/reply"
        self.events: list[Any] = []
        self.changed = asyncio.Event()
        self.pending: dict[bytes, asyncio.Future[CommandResult]] = {}

    async def _read(self) -> None:
        async for msg in self.client.messages:
            payload = msg.payload if isinstance(msg.payload, bytes) else b""
            if msg.topic.matches(self.reply_topic):
                corr = getattr(msg.properties, "CorrelationData", None)
                fut = self.pending.pop(bytes(corr or b""), None)
                if fut is not None and not fut.done():
                    fut.set_result(codec.decode(payload))
                continue
            self.events.append(codec.decode(payload))
            self.changed.set()

    async def request(self, cmd: object, *, within: float = 5.0) -> CommandResult:
        raw = cmd if isinstance(cmd, bytes) else codec.encode(cmd)
        corr = uuid.uuid4().bytes
        fut: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self.pending[corr] = fut
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = corr
        await self.client.publish(codec.command_topic(self.worker), raw, qos=1, properties=props)
        return await asyncio.wait_for(fut, within)

    async def ok(self, cmd: object) -> None:
        result = await self.request(cmd)
        assert result.ok, f"{cmd!r} refused: {result.error}"

    async def wait(self, pred: Callable[[Any], bool], within: float = 10.0) -> Any:
        """The first event (seen before or after the call) matching `pred`."""
        async with asyncio.timeout(within):
            seen = 0
            while True:
                for ev in self.events[seen:]:
                    if pred(ev):
                        return ev
                seen = len(self.events)
                self.changed.clear()
                await self.changed.wait()

    async def event(self, kind: type, within: float = 10.0, **fields: Any) -> Any:
        def match(ev: Any) -> bool:
            return isinstance(ev, kind) and all(getattr(ev, k) == v for k, v in fields.items())

        try:
            return await self.wait(match, within)
        except TimeoutError:
            raise AssertionError(
                f"no {kind.__name__}{fields} within {within}s; events: {self.events}"
            ) from None


@contextlib.asynccontextmanager
async def bus(broker: int, worker: int = WORKER_ID) -> AsyncIterator[Bus]:
    async with aiomqtt.Client("127.0.0.1", broker, protocol=aiomqtt.ProtocolVersion.V5) as client:
        b = Bus(client, worker)
        await client.subscribe(b.reply_topic, qos=1)
        await client.subscribe(f"{codec.PREFIX}/worker/{worker}/event/#", qos=1)
        await client.subscribe(codec.status_topic(worker), qos=1)
        reader = asyncio.create_task(b._read())
        try:
            yield b
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await reader


class WorkerProc:
    def __init__(self, tmp: Path, broker: int, *, max_legs: int = 4, rtp_timeout_s: float = 60):
        self.sip_port = free_port()
        self.rtp_port = free_port(span=16)
        argv = [
            sys.executable, "-m", "pbx.worker", "--id", str(WORKER_ID),
            "--sip-port", str(self.sip_port), "--rtp-port", str(self.rtp_port),
            "--rtp-ports", "16", "--broker-host", "127.0.0.1",
            "--broker-port", str(broker), "--max-legs", str(max_legs),
            "--clock-rate", "8000", "--edge", "127.0.0.1:5060", "--log-level", "INFO",
            "--rtp-timeout", str(rtp_timeout_s),
        ]  # fmt: skip
        self.proc = ManagedProcess(
            "worker",
            argv,
            tmp / "worker.log",
            env={"PYTHONPATH": str(ROOT)},
        )

    def log(self) -> str:
        return self.proc.log_tail(60)


async def ready(b: Bus, w: WorkerProc, within: float = 10.0) -> WorkerStatus:
    try:
        return await b.event(WorkerStatus, within, up=True, pid=w.proc.pid)
    except AssertionError:
        raise AssertionError(f"worker not up:\n{w.log()}") from None


def tone(path: Path, seconds: float, freq: int = 440) -> str:
    subprocess.run(
        [
            "sox",
            "-n",
            "-r",
            "8000",
            "-c",
            "1",
            "-b",
            "16",
            str(path),
            "synth",
            str(seconds),
            "sine",
            str(freq),
        ],
        check=True,
    )
    return str(path)


def sipp_caller(tmp: Path, w: WorkerProc, *, hold_ms: int, dtmf_ms: int = 1500,
                digit: str = "1", name: str = "caller") -> ManagedProcess:  # fmt: skip
    return start_sipp(
        name,
        tmp,
        "caller.xml",
        f"127.0.0.1:{w.sip_port}",
        local_port=free_port(),
        media_port=free_port(span=4),
        service="1000",
        timeout_s=60,
        keys={
            "caller": "5551234",
            "digit": digit,
            "dtmf_ms": str(dtmf_ms),
            "hold_ms": str(hold_ms),
        },
    )


def wait_exit(proc: ManagedProcess, timeout: float) -> int | None:
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: not proc.alive(), timeout, proc.name)
    return proc.returncode()


class RawInvite:
    """A bare-bones UAC on a UDP socket: enough to make a worker ring or refuse."""

    def __init__(self, sip_port: int, did: str = "1000", caller: str = "5550000"):
        self.target = ("127.0.0.1", sip_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.call_id = f"{uuid.uuid4().hex}@test"
        self.branch = f"z9hG4bK{uuid.uuid4().hex[:16]}"
        self.did = did
        self.caller = caller

    def _head(self, method: str, cseq: int, to_tag: str = "") -> str:
        to = f"<sip:{self.did}@127.0.0.1:{self.target[1]}>" + (f";tag={to_tag}" if to_tag else "")
        return (
            f"{method} sip:{self.did}@127.0.0.1:{self.target[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={self.branch};rport\r\n"
            f"From: <sip:{self.caller}@127.0.0.1:{self.port}>;tag=raw{self.port}\r\n"
            f"To: {to}\r\nCall-ID: {self.call_id}\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: <sip:{self.caller}@127.0.0.1:{self.port}>\r\nMax-Forwards: 70\r\n"
        )

    def invite(self) -> None:
        sdp = (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {self.port + 2} RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
        )
        msg = (
            self._head("INVITE", 1)
            + f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
        )
        self.sock.sendto(msg.encode(), self.target)

    def answered(self, timeout: float = 5.0) -> None:
        """Wait for the 200 to the INVITE and ACK it (the call is then up, sending no RTP)."""
        self.sock.settimeout(timeout)
        while True:
            data = self.sock.recv(65535).decode(errors="replace")
            code = int(data.split(" ", 2)[1])
            if code == 200:
                break
            assert code < 300, data
        to_tag = data.split("To:", 1)[1].split("\r\n", 1)[0].split("tag=")[-1]
        self.branch = f"z9hG4bK{uuid.uuid4().hex[:16]}"  # the ACK of a 2xx is a new transaction
        ack = self._head("ACK", 1, to_tag) + "Content-Length: 0\r\n\r\n"
        self.sock.sendto(ack.encode(), self.target)

    def final(self, timeout: float = 5.0) -> int:
        """Wait for the final response to the INVITE, ACK it if it is a failure."""
        self.sock.settimeout(timeout)
        while True:
            data = self.sock.recv(65535).decode(errors="replace")
            code = int(data.split(" ", 2)[1])
            if code >= 200:
                if code >= 300:
                    to_tag = data.split("To:", 1)[1].split("\r\n", 1)[0].split("tag=")[-1]
                    ack = self._head("ACK", 1, to_tag) + "Content-Length: 0\r\n\r\n"
                    self.sock.sendto(ack.encode(), self.target)
                return code

    def close(self) -> None:
        self.sock.close()


def options(sip_port: int) -> int:
    """Send the edge's keep-alive probe (OPTIONS) and return the response code."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(3)
        port = sock.getsockname()[1]
        msg = (
            f"OPTIONS sip:127.0.0.1:{sip_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport\r\n"
            f"From: <sip:probe@127.0.0.1:{port}>;tag=p{port}\r\n"
            f"To: <sip:127.0.0.1:{sip_port}>\r\nCall-ID: {uuid.uuid4().hex}@probe\r\n"
            "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        sock.sendto(msg.encode(), ("127.0.0.1", sip_port))
        return int(sock.recv(65535).decode(errors="replace").split(" ", 2)[1])


@contextlib.contextmanager
def busy_phone() -> Iterator[int]:
    """A UDP port that answers every INVITE with 486 Busy Here (and swallows the ACK)."""
    import threading

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(65535)
            except TimeoutError:
                continue
            text = data.decode(errors="replace")
            if not text.startswith("INVITE "):
                continue
            keep = [
                line
                for line in text.split("\r\n")
                if line.split(":", 1)[0].lower() in ("via", "from", "call-id", "cseq")
            ]
            to = next(line for line in text.split("\r\n") if line.lower().startswith("to:"))
            reply = "\r\n".join(
                ["SIP/2.0 486 Busy Here", *keep, f"{to};tag=busy", "Content-Length: 0", "", ""]
            )
            sock.sendto(reply.encode(), addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        sock.close()


def tone_share(path: str, freq: float, seconds: float) -> float:
    """Share of the first `seconds` of a WAV's energy within 20 Hz of `freq`."""
    with wave.open(path, "rb") as w:
        rate = w.getframerate()
        samples = np.frombuffer(w.readframes(int(rate * seconds)), dtype="<i2")
    power = np.abs(np.fft.rfft(samples.astype(np.float64))) ** 2
    bins = np.fft.rfftfreq(samples.size, 1 / rate)
    return float(power[np.abs(bins - freq) <= 20].sum() / max(power.sum(), 1e-9))


def wav_stats(path: str) -> tuple[int, int, float, float]:
    """(channels, rate, seconds, RMS of 16-bit samples)."""
    with wave.open(path, "rb") as w:
        frames = w.readframes(w.getnframes())
        assert w.getsampwidth() == 2
        samples = np.frombuffer(frames, dtype="<i2").astype(np.float64)
        rms = float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0
        return w.getnchannels(), w.getframerate(), w.getnframes() / w.getframerate(), rms


# ---------------------------------------------------------------- tests


def test_caller_ivr_path(tmp_path: Path, broker: int, worker: WorkerProc) -> None:
    """A SIPp caller rings, is answered, hears a prompt, barges in with '1', is hung up."""
    prompt = tone(tmp_path / "prompt.wav", 10)
    short = tone(tmp_path / "short.wav", 0.5, 660)

    async def scenario() -> None:
        async with bus(broker) as b:
            await ready(b, worker)
            caller = sipp_caller(tmp_path, worker, hold_ms=30_000, dtmf_ms=2000)
            try:
                inc = await b.event(LegIncoming)
                assert (inc.caller, inc.did, inc.worker) == ("5551234", "1000", WORKER_ID)
                assert inc.sip_call_id
                await b.event(WorkerStatus, legs=1)
                leg = inc.leg

                await b.ok(Answer(leg=leg))
                await b.event(LegAnswered, leg=leg)
                await b.ok(Play(leg=leg, play_id="menu", files=(prompt,), barge_in=True))

                dtmf = await b.event(DtmfReceived, leg=leg)
                assert (dtmf.digit, dtmf.method) == ("1", "rfc2833")
                fin = await b.event(PlaybackFinished, leg=leg, play_id="menu", within=3)
                assert fin.interrupted
                # Only the first digit event of a press is reported.
                await asyncio.sleep(0.5)
                assert [e.digit for e in b.events if isinstance(e, DtmfReceived)] == ["1"]

                await b.ok(Play(leg=leg, play_id="bye", files=(short, short)))
                fin = await b.event(PlaybackFinished, leg=leg, play_id="bye", within=5)
                assert not fin.interrupted
                await b.ok(StopPlay(leg=leg))  # nothing playing: still fine

                await b.ok(Hangup(leg=leg))
                ended = await b.event(LegEnded, leg=leg)
                assert ended.by == "local"
                assert ended.rtp.rx_packets > 50, ended
                assert ended.rtp.tx_packets > 50, ended
                await b.event(WorkerStatus, legs=0)
                assert (await b.request(Answer(leg=leg))).ok is False  # gone
            finally:
                code = wait_exit(caller, 10)
                caller.stop()
            assert code == 0, f"sipp caller failed:\n{caller.log_tail(40)}"

    asyncio.run(scenario())


def test_bridge_records_and_hangs_up_together(
    tmp_path: Path, broker: int, worker: WorkerProc
) -> None:
    """Caller bridged to a dialled SIPp phone, recorded; the caller's BYE ends both legs."""
    agent_port = free_port()
    phone = start_sipp(
        "phone",
        tmp_path,
        "uas_answer.xml",
        "",
        local_port=agent_port,
        media_port=free_port(span=4),
        calls=1,
        timeout_s=60,
        keys={"ring_ms": "300", "hold_ms": "3600000"},
    )
    record = tmp_path / "rec" / "2024" / "call.wav"

    async def scenario() -> None:
        async with bus(broker) as b:
            await ready(b, worker)
            caller = sipp_caller(tmp_path, worker, hold_ms=5000, dtmf_ms=500)
            try:
                inc = await b.event(LegIncoming)
                await b.ok(Answer(leg=inc.leg))
                await b.event(LegAnswered, leg=inc.leg)
                moh = tone(tmp_path / "moh.wav", 3, 300)
                await b.ok(Play(leg=inc.leg, play_id="moh", files=(moh,), loop=True))

                await b.ok(
                    Dial(
                        leg="agent1",
                        uri=f"sip:agent@127.0.0.1:{agent_port}",
                        caller_id="5551234",
                        related_leg=inc.leg,
                    )
                )
                await b.event(LegRinging, leg="agent1")
                await b.event(LegAnswered, leg="agent1")
                await b.ok(Bridge(a=inc.leg, b="agent1", record_path=str(record)))
                bridged_at = time.monotonic()

                caller_end = await b.event(LegEnded, leg=inc.leg, within=15)
                ended_at = time.monotonic()
                agent_end = await b.event(LegEnded, leg="agent1", within=5)
                rec = await b.event(RecordingFinished, leg=inc.leg, within=5)
            finally:
                code = wait_exit(caller, 10)
                caller.stop()
            assert code == 0, f"sipp caller failed:\n{caller.log_tail(40)}"

            assert caller_end.by == "remote"
            assert agent_end.by == "local"  # the worker hung up the agent by itself
            for ended in (caller_end, agent_end):
                assert ended.rtp.rx_packets > 50, ended
                assert ended.rtp.tx_packets > 50, ended

            bridge_s = ended_at - bridged_at
            assert rec.path == str(record)
            assert abs(rec.duration_s - bridge_s) <= 1.0, (rec.duration_s, bridge_s)
            channels, rate, seconds, rms = wav_stats(str(record))
            assert (channels, rate) == (1, 8000)
            assert abs(seconds - bridge_s) <= 1.0, (seconds, bridge_s)
            assert rms > 200, f"recording is (nearly) silent: RMS {rms:.1f}"

    try:
        asyncio.run(scenario())
        code = wait_exit(phone, 10)
        assert code == 0, f"sipp phone failed:\n{phone.log_tail(40)}"
    finally:
        phone.stop()


def test_full_worker_refuses_with_486(tmp_path: Path, broker: int, worker: WorkerProc) -> None:
    """Four legs ringing fill the worker; the fifth INVITE gets 486 Busy Here."""
    uacs = [RawInvite(worker.sip_port, caller=f"55500{i}") for i in range(5)]

    async def scenario() -> None:
        async with bus(broker) as b:
            await ready(b, worker)
            legs = []
            for uac in uacs[:4]:
                uac.invite()
                legs.append((await b.event(LegIncoming, sip_call_id=uac.call_id)).leg)
            status = await b.event(WorkerStatus, legs=4)
            assert status.max_legs == 4

            uacs[4].invite()
            assert await asyncio.to_thread(uacs[4].final) == 486
            assert not any(
                isinstance(e, LegIncoming) and e.sip_call_id == uacs[4].call_id for e in b.events
            )

            # Rejecting ringing legs: an explicit code, then the default.
            await b.ok(Hangup(leg=legs[0], sip_code=603))
            assert await asyncio.to_thread(uacs[0].final) == 603
            await b.ok(Hangup(leg=legs[1]))
            assert await asyncio.to_thread(uacs[1].final) == 480
            ended = await b.event(LegEnded, leg=legs[1])
            assert ended.by == "local"
            await b.event(WorkerStatus, legs=2)

            # Capacity is back: a new INVITE rings again.
            again = RawInvite(worker.sip_port)
            try:
                again.invite()
                await b.event(LegIncoming, sip_call_id=again.call_id)
            finally:
                again.close()

    try:
        asyncio.run(scenario())
    finally:
        for uac in uacs:
            uac.close()


def test_bad_commands_are_refused_and_worker_survives(
    tmp_path: Path, broker: int, worker: WorkerProc
) -> None:
    """Garbage, unknown types, unknown legs and impossible requests get ok=False."""

    async def scenario() -> None:
        async with bus(broker) as b:
            await ready(b, worker)
            cases: list[tuple[object, str]] = [
                (b"not json at all", "not JSON"),
                (b"[1, 2]", "expected a JSON object"),
                (b'{"type": "Reboot"}', "unknown message type"),
                (b'{"type": "Answer"}', "Answer"),  # missing leg
                (Answer(leg="nope"), "unknown leg 'nope'"),
                (Hangup(leg="nope"), "unknown leg"),
                (Play(leg="nope", play_id="p", files=("/x.wav",)), "unknown leg"),
                (Bridge(a="x", b="x"), "itself"),
                (Dial(leg="", uri="sip:1@127.0.0.1"), "empty"),
                (Dial(leg="a1", uri="not a uri"), "cannot dial"),
                (LegAnswered(worker=WORKER_ID, leg="x"), "not a media command"),
            ]
            for cmd, expected in cases:
                result = await b.request(cmd)
                assert not result.ok, cmd
                assert expected in result.error, (cmd, result.error)

            # A dialled phone that is busy ends the leg with its SIP code.
            with busy_phone() as busy_port:
                await b.ok(Dial(leg="busy", uri=f"sip:agent@127.0.0.1:{busy_port}"))
                failed = await b.event(LegEnded, leg="busy")
            assert (failed.by, failed.sip_code) == ("remote", 486), failed

            # A request without a response topic is executed and answered by nobody.
            await b.client.publish(codec.command_topic(WORKER_ID), b"{}", qos=1)

            # Still serving: an INVITE rings, a Play of a missing file is refused.
            uac = RawInvite(worker.sip_port)
            try:
                uac.invite()
                inc = await b.event(LegIncoming, sip_call_id=uac.call_id)
                bad = await b.request(Play(leg=inc.leg, play_id="p", files=("/no/such.wav",)))
                assert not bad.ok and "no audio" in bad.error, bad
                await b.ok(Answer(leg=inc.leg))
                again = await b.request(Answer(leg=inc.leg))
                assert not again.ok and "not a ringing inbound leg" in again.error
                missing = await b.request(Play(leg=inc.leg, play_id="p", files=("/no/such.wav",)))
                assert not missing.ok and "no such file" in missing.error, missing
                await b.ok(Hangup(leg=inc.leg))
            finally:
                uac.close()
            assert worker.proc.alive()
            assert await asyncio.to_thread(options, worker.sip_port) == 200  # edge probe

    asyncio.run(scenario())


def test_status_lifecycle_and_broker_restart(tmp_path: Path) -> None:
    """Retained status up -> broker restart keeps the leg -> SIGTERM leaves up=False."""
    from pbx.procs import mosquitto_config, start_mosquitto, tcp_listening

    port = free_port()
    mosq = start_mosquitto(port, tmp_path / "b1", tmp_path / "b1.log")
    w = WorkerProc(tmp_path, port)
    w.proc.start()
    uac = RawInvite(w.sip_port)

    async def before() -> str:
        async with bus(port) as b:
            await ready(b, w)
            uac.invite()
            return str((await b.event(LegIncoming, sip_call_id=uac.call_id)).leg)

    async def after(leg: str) -> None:
        async with bus(port) as b:
            await ready(b, w, within=15)  # reconnected and re-published its status
            await b.ok(Hangup(leg=leg, sip_code=486))
            assert await asyncio.to_thread(uac.final) == 486

    async def down() -> None:
        async with bus(port) as b:
            await b.event(WorkerStatus, up=False)

    try:
        leg = asyncio.run(before())
        mosq.stop()
        time.sleep(1.0)
        # Same port again: the old broker's connections may sit in TIME_WAIT, which
        # start_mosquitto's free-port check refuses but mosquitto (SO_REUSEADDR) accepts.
        conf = mosquitto_config(port, tmp_path / "b2")
        mosq = ManagedProcess("mosquitto", [MOSQUITTO, "-c", str(conf)], tmp_path / "b2.log")
        mosq.start()
        wait_until(lambda: tcp_listening(port), 10, "mosquitto again")
        asyncio.run(after(leg))
        assert w.proc.stop(timeout=8) == 0, w.log()
        asyncio.run(down())
    finally:
        uac.close()
        w.proc.stop()
        mosq.stop()
        print(w.log())


async def answered_caller(
    b: Bus, w: WorkerProc, tmp: Path, **kw: Any
) -> tuple[ManagedProcess, str]:
    caller = sipp_caller(tmp, w, **kw)
    inc = await b.event(LegIncoming)
    await b.ok(Answer(leg=inc.leg))
    await b.event(LegAnswered, leg=inc.leg)
    return caller, str(inc.leg)


def finish_caller(caller: ManagedProcess) -> None:
    code = wait_exit(caller, 10)
    caller.stop()
    assert code == 0, f"sipp caller failed:\n{caller.log_tail(40)}"


def test_record_caller_until_pound(tmp_path: Path, broker: int, worker: WorkerProc) -> None:
    """After a beep the caller alone is recorded until '#': mono 8 kHz, their voice, no beep."""
    path = tmp_path / "vm" / "box1" / "msg.wav"  # parent folders do not exist yet
    prompt = tone(tmp_path / "prompt.wav", 1)

    async def scenario() -> None:
        async with bus(broker) as b:
            await ready(b, worker)
            caller, leg = await answered_caller(
                b, worker, tmp_path, hold_ms=6000, dtmf_ms=3000, digit="pound"
            )
            try:
                # silence_s is on: the speech pcap's pauses (< 0.7 s) must not end it.
                rec_cmd = Record(leg=leg, record_id="vm1", path=str(path), max_s=20, silence_s=2.0)
                await b.ok(rec_cmd)
                started = time.monotonic()
                refused = await b.request(Play(leg=leg, play_id="p", files=(prompt,)))
                assert not refused.ok and "is recording (vm1)" in refused.error, refused
                again = await b.request(Record(leg=leg, record_id="vm2", path=str(path), max_s=5))
                assert not again.ok and "already recording" in again.error, again

                dtmf = await b.event(DtmfReceived, leg=leg)
                pressed = time.monotonic()
                assert dtmf.digit == "#"
                rec = await b.event(LegRecorded, leg=leg, within=5)
                await b.ok(Hangup(leg=leg))
                await b.event(LegEnded, leg=leg)
            finally:
                finish_caller(caller)

            assert (rec.record_id, rec.path, rec.stopped_by) == ("vm1", str(path), "terminator")
            channels, rate, seconds, rms = wav_stats(str(path))
            assert (channels, rate) == (1, 8000)
            expected = pressed - started - BEEP_S
            assert abs(seconds - expected) <= 0.5, (seconds, expected)
            assert abs(rec.duration_s - seconds) < 0.05, (rec.duration_s, seconds)
            assert rms > 200, f"recording is (nearly) silent: RMS {rms:.1f}"
            # The beep went to the caller only: no 1 kHz tone at the start of the file.
            assert tone_share(str(path), 1000, 0.5) < 0.3
            assert [e.digit for e in b.events if isinstance(e, DtmfReceived)] == ["#"]

    asyncio.run(scenario())


def test_record_max_time_and_stop_record(tmp_path: Path, broker: int, worker: WorkerProc) -> None:
    """Record(max_s=2) stops by max_time at ~2 s; a second one is ended by StopRecord."""
    first, second = tmp_path / "r1.wav", tmp_path / "r2.wav"
    short = tone(tmp_path / "short.wav", 0.3)

    async def scenario() -> None:
        async with bus(broker) as b:
            await ready(b, worker)
            caller, leg = await answered_caller(
                b, worker, tmp_path, hold_ms=9000, dtmf_ms=8000, digit="none"
            )
            try:
                await b.ok(Record(leg=leg, record_id="r1", path=str(first), max_s=2, beep=False))
                rec1 = await b.event(LegRecorded, leg=leg, record_id="r1", within=5)

                await b.ok(Record(leg=leg, record_id="r2", path=str(second), max_s=30, beep=False))
                await asyncio.sleep(1.0)
                await b.ok(StopRecord(leg=leg))
                rec2 = await b.event(LegRecorded, leg=leg, record_id="r2", within=5)
                await b.ok(StopRecord(leg=leg))  # nothing to stop: still fine
                await b.ok(Play(leg=leg, play_id="after", files=(short,)))  # prompts work again
                await b.event(PlaybackFinished, leg=leg, play_id="after", within=5)
                await b.ok(Hangup(leg=leg))
                await b.event(LegEnded, leg=leg)
            finally:
                finish_caller(caller)

            assert rec1.stopped_by == "max_time"
            channels, rate, seconds, rms = wav_stats(str(first))
            assert (channels, rate) == (1, 8000)
            assert abs(seconds - 2.0) <= 0.1, seconds
            assert abs(rec1.duration_s - seconds) < 0.05
            assert rms > 200, f"recording is (nearly) silent: RMS {rms:.1f}"

            assert rec2.stopped_by == "stopped"
            seconds = wav_stats(str(second))[2]
            assert 0.7 <= seconds <= 1.5, seconds
            assert [e.record_id for e in b.events if isinstance(e, LegRecorded)] == ["r1", "r2"]

    asyncio.run(scenario())


def test_record_ends_when_caller_hangs_up(tmp_path: Path, broker: int, worker: WorkerProc) -> None:
    """The caller hangs up mid-recording: LegRecorded(hangup) with a complete, voiced WAV."""
    path = tmp_path / "hangup.wav"

    async def scenario() -> None:
        async with bus(broker) as b:
            await ready(b, worker)
            caller, leg = await answered_caller(
                b, worker, tmp_path, hold_ms=3000, dtmf_ms=2500, digit="none"
            )
            try:
                await b.ok(Record(leg=leg, record_id="h", path=str(path), max_s=30))
                started = time.monotonic()
                ended = await b.event(LegEnded, leg=leg, within=10)
                ended_at = time.monotonic()
                rec = await b.event(LegRecorded, leg=leg, within=5)
            finally:
                finish_caller(caller)
            assert ended.by == "remote"
            assert rec.stopped_by == "hangup"
            channels, rate, seconds, rms = wav_stats(str(path))  # a complete header
            assert (channels, rate) == (1, 8000)
            expected = ended_at - started - BEEP_S
            assert abs(seconds - expected) <= 0.5, (seconds, expected)
            assert abs(rec.duration_s - seconds) < 0.05
            assert rms > 200, f"recording is (nearly) silent: RMS {rms:.1f}"

    asyncio.run(scenario())


def test_record_stops_on_silence_and_refuses_bad_requests(
    tmp_path: Path, broker: int, worker: WorkerProc
) -> None:
    """A caller sending no audio: Record(silence_s=1) ends by silence after ~1 s."""
    path = tmp_path / "silent.wav"
    uac = RawInvite(worker.sip_port)

    async def scenario() -> None:
        async with bus(broker) as b:
            await ready(b, worker)
            uac.invite()
            leg = (await b.event(LegIncoming, sip_call_id=uac.call_id)).leg
            early = await b.request(Record(leg=leg, record_id="x", path=str(path), max_s=5))
            assert not early.ok and "not answered" in early.error, early
            await b.ok(Answer(leg=leg))
            await asyncio.to_thread(uac.answered)
            await b.event(LegAnswered, leg=leg)

            bad: list[tuple[Record, str]] = [
                (Record(leg="nope", record_id="x", path=str(path), max_s=5), "unknown leg 'nope'"),
                (Record(leg=leg, record_id="x", path=str(path), max_s=0), "max_s must be > 0"),
                (Record(leg=leg, record_id="x", path=str(path), max_s=5, terminators="#x"),
                 "terminators must be DTMF digits"),
                (Record(leg=leg, record_id="x", path="rel.wav", max_s=5), "absolute .wav path"),
                (Record(leg=leg, record_id="x", path=str(tmp_path / "a.mp3"), max_s=5),
                 "absolute .wav path"),
                (Record(leg=leg, record_id="x", path=str(path), max_s=5, silence_s=-1),
                 "silence_s must be >= 0"),
            ]  # fmt: skip
            for cmd, expected in bad:
                result = await b.request(cmd)
                assert not result.ok and expected in result.error, (cmd, result.error)

            cmd = Record(
                leg=leg, record_id="s", path=str(path), max_s=10, beep=False, silence_s=1.0
            )
            await b.ok(cmd)
            rec = await b.event(LegRecorded, leg=leg, within=5)
            assert rec.stopped_by == "silence", rec
            assert 0.9 <= rec.duration_s <= 1.3, rec
            await b.ok(Hangup(leg=leg))
            await b.event(LegEnded, leg=leg)

    try:
        asyncio.run(scenario())
    finally:
        uac.close()


def test_bridge_without_hangup_together_keeps_the_caller(
    tmp_path: Path, broker: int, worker: WorkerProc
) -> None:
    """Agent ends a hangup_together=False bridge: the caller stays, hears a prompt, is recorded."""
    agent_port = free_port()
    phone = start_sipp(
        "phone",
        tmp_path,
        "uas_answer.xml",
        "",
        local_port=agent_port,
        media_port=free_port(span=4),
        calls=1,
        timeout_s=60,
        keys={"ring_ms": "200", "hold_ms": "2000"},  # the agent hangs up by itself
    )
    survey = tone(tmp_path / "survey.wav", 0.5, 500)
    answer = tmp_path / "survey" / "answer.wav"

    async def scenario() -> None:
        async with bus(broker) as b:
            await ready(b, worker)
            caller, leg = await answered_caller(
                b, worker, tmp_path, hold_ms=15_000, dtmf_ms=14_000, digit="none"
            )
            try:
                await b.ok(Dial(leg="agent1", uri=f"sip:agent@127.0.0.1:{agent_port}",
                                related_leg=leg))  # fmt: skip
                await b.event(LegAnswered, leg="agent1")
                await b.ok(Bridge(a=leg, b="agent1", hangup_together=False))
                refused = await b.request(Record(leg=leg, record_id="x", path=str(answer), max_s=1))
                assert not refused.ok and "is bridged" in refused.error, refused
                refused = await b.request(Record(leg="nope", record_id="x", path=str(answer),
                                                 max_s=1))  # fmt: skip
                assert not refused.ok and "unknown leg" in refused.error, refused

                agent_end = await b.event(LegEnded, leg="agent1", within=10)
                assert agent_end.by == "remote"
                await asyncio.sleep(1.0)
                assert not any(isinstance(e, LegEnded) and e.leg == leg for e in b.events)

                # The post-call survey: a prompt, then the caller's spoken answer.
                await b.ok(Play(leg=leg, play_id="survey", files=(survey,)))
                fin = await b.event(PlaybackFinished, leg=leg, play_id="survey", within=5)
                assert not fin.interrupted
                await b.ok(Record(leg=leg, record_id="ans", path=str(answer), max_s=1.5))
                rec = await b.event(LegRecorded, leg=leg, record_id="ans", within=5)
                await b.ok(Hangup(leg=leg))
                caller_end = await b.event(LegEnded, leg=leg)
            finally:
                finish_caller(caller)
            assert caller_end.by == "local"
            assert rec.stopped_by == "max_time"
            channels, rate, seconds, rms = wav_stats(str(answer))
            assert (channels, rate, round(seconds, 1)) == (1, 8000, 1.5), seconds
            assert rms > 200, f"caller audio lost after the un-bridge: RMS {rms:.1f}"

    try:
        asyncio.run(scenario())
        code = wait_exit(phone, 10)
        assert code == 0, f"sipp phone failed:\n{phone.log_tail(40)}"
    finally:
        phone.stop()


def test_a_far_end_that_sends_no_rtp_is_hung_up_after_the_rtp_timeout(
    tmp_path: Path, broker: int
) -> None:
    """A caller that vanished without BYE (here: never sends RTP) frees its slot."""
    worker = WorkerProc(tmp_path, broker, rtp_timeout_s=3)
    worker.proc.start()
    uac = RawInvite(worker.sip_port)

    async def scenario() -> None:
        async with bus(broker) as b:
            await ready(b, worker)
            uac.invite()
            leg = (await b.event(LegIncoming, sip_call_id=uac.call_id)).leg
            await b.ok(Answer(leg=leg))
            await asyncio.to_thread(uac.answered)
            answered_at = time.monotonic()
            await b.event(LegAnswered, leg=leg)
            ended = await b.event(LegEnded, leg=leg, within=10)
            assert ended.by == "local" and ended.rtp.rx_packets == 0, ended
            assert 2.5 <= time.monotonic() - answered_at <= 6.0

    try:
        asyncio.run(scenario())
        assert "no RTP for" in worker.log()
    finally:
        uac.close()
        assert worker.proc.stop(timeout=8) == 0


def test_unbridge_holds_the_caller_and_a_new_bridge_goes_on_in_the_same_recording(
    tmp_path: Path, broker: int, worker: WorkerProc
) -> None:
    """A transfer at the media level: caller and agent 1 bridged and recorded; Unbridge
    leaves both up (the caller hears music on hold); the caller is bridged to agent 2
    with the same path and the one WAV covers the whole call."""
    ports = [free_port(), free_port()]
    phones = [
        start_sipp(
            f"phone{n}",
            tmp_path,
            "uas_answer.xml",
            "",
            local_port=port,
            media_port=free_port(span=4),
            calls=1,
            timeout_s=60,
            keys={"ring_ms": "200", "hold_ms": "3600000"},
        )
        for n, port in enumerate(ports)
    ]
    record = tmp_path / "rec" / "call.wav"

    async def scenario() -> None:
        async with bus(broker) as b:
            await ready(b, worker)
            caller, leg = await answered_caller(b, worker, tmp_path, hold_ms=9000, dtmf_ms=8500)
            try:
                refused = await b.request(Unbridge(leg=leg))
                assert not refused.ok and "not bridged" in refused.error, refused
                await b.ok(Dial(leg="a1", uri=f"sip:a1@127.0.0.1:{ports[0]}", related_leg=leg))
                await b.event(LegAnswered, leg="a1")
                await b.ok(Bridge(a=leg, b="a1", record_path=str(record)))
                started = time.monotonic()
                await asyncio.sleep(1.5)

                await b.ok(Unbridge(leg=leg))
                moh = tone(tmp_path / "moh.wav", 1, 300)
                await b.ok(Play(leg=leg, play_id="moh", files=(moh,), loop=True))
                await b.ok(Dial(leg="a2", uri=f"sip:a2@127.0.0.1:{ports[1]}", related_leg=leg))
                await b.event(LegAnswered, leg="a2")
                await b.ok(Hangup(leg="a1"))  # the first agent leaves; the caller stays
                a1_end = await b.event(LegEnded, leg="a1")
                await asyncio.sleep(0.5)
                assert not any(isinstance(e, LegEnded) and e.leg == leg for e in b.events)
                assert not any(isinstance(e, RecordingFinished) for e in b.events)

                await b.ok(Bridge(a=leg, b="a2", record_path=str(record)))
                caller_end = await b.event(LegEnded, leg=leg, within=15)
                ended = time.monotonic()
                a2_end = await b.event(LegEnded, leg="a2", within=5)
                rec = await b.event(RecordingFinished, leg=leg, within=5)
            finally:
                finish_caller(caller)
            assert caller_end.by == "remote"
            assert a1_end.by == "local" and a2_end.by == "local"
            assert a1_end.rtp.rx_packets > 50 and a2_end.rtp.rx_packets > 50
            assert a2_end.rtp.tx_packets > 50, a2_end  # the caller's audio reached agent 2
            assert [e for e in b.events if isinstance(e, RecordingFinished)] == [rec]
            assert rec.path == str(record)
            assert abs(rec.duration_s - (ended - started)) <= 1.0, (rec.duration_s, ended - started)
            _, _, seconds, rms = wav_stats(str(record))
            assert abs(seconds - (ended - started)) <= 1.0
            assert rms > 200

    try:
        asyncio.run(scenario())
    finally:
        for phone in phones:
            phone.stop()
