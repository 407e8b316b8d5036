"""Browsers as agent phones: JsSIP in Chromium registers to the Kamailio edge over
WebSocket, and a pjsua2 worker calls it through rtpengine (WebRTC <-> plain RTP).

Each test starts its own rtpengine (`pbx.rtpengine`) and Kamailio (`pbx.edge`) on free
loopback ports, a tiny HTTP server for the test page (`tests/support/webrtc_agent.html`
plus the JsSIP bundle `scripts/bootstrap` builds), and stops them all by PID. Chromium
is Debian's /usr/bin/chromium driven by Playwright, its microphone a WAV file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from config.loader import load
from config.schema import Rtpengine as RtpengineSettings
from config.schema import Settings
from pbx.edge import Edge, EdgeError, EdgeTimers, WorkerAddr
from pbx.procs import free_port, wait_until
from pbx.rtpengine import Rtpengine
from tests.integration.test_worker import WorkerProc, bus, ready, tone
from tests.support.center import Center, center_config, pick_ports, start_center
from tests.support.sipp import run_sipp
from wire.events import (
    Dial,
    Hangup,
    LegAnswered,
    LegEnded,
    LegRecorded,
    LegRinging,
    Play,
    Record,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
BUNDLE = ROOT / "softphone_web" / "static" / "vendor" / "jssip.js"
PAGE = ROOT / "tests" / "support" / "webrtc_agent.html"
ALICE = ("1001", "alice-demo-secret")  # config/demo.yaml
MIC_HZ = 440  # what the browser's fake microphone says
TONE_HZ = 1200  # what the worker plays to the browser
MEDIA_PORTS = 100
TIMERS = EdgeTimers(fr_timer_ms=1000, worker_fr_ms=1000, worker_fr_inv_ms=4000)


# ---------------------------------------------------------------- the lab


class PageServer:
    """Serves one folder over HTTP on 127.0.0.1 (a free port) from a thread."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = int(self.httpd.server_address[1])
        self.origin = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class WebrtcLab:
    settings: Settings
    edge: Edge
    relay: Rtpengine
    dir: Path
    page: PageServer
    """The allowed origin: edge.ws_origins names it."""
    stranger: PageServer
    """The same page from another origin (another port): refused."""

    @property
    def sip_port(self) -> int:
        return self.settings.edge.sip_port

    @property
    def ws_port(self) -> int:
        assert self.settings.edge.ws_port is not None
        return self.settings.edge.ws_port

    @property
    def wss_port(self) -> int:
        assert self.settings.edge.wss_port is not None
        return self.settings.edge.wss_port

    def agent_config(self, user: str, password: str, transport: str = "ws") -> dict[str, str]:
        port = self.wss_port if transport == "wss" else self.ws_port
        return {
            "ws": f"{transport}://127.0.0.1:{port}",
            "uri": f"sip:{user}@127.0.0.1:{self.sip_port}",
            "password": password,
            "registrar": f"sip:127.0.0.1:{self.sip_port}",
        }


def lab_settings(ports: dict[str, int], origin: str, tls: tuple[Path, Path]) -> Settings:
    """The demo settings on free ports: one worker, ws and wss (with the certificate and
    key `tls`) allowed from `origin` only."""
    base = load()
    edge = base.edge.model_copy(
        update={
            "sip_port": ports["sip"],
            "rpc_port": ports["rpc"],
            "ws_port": ports["ws"],
            "wss_port": ports["wss"],
            "tls_cert": tls[0],
            "tls_key": tls[1],
            "ws_origins": [origin],
            "probe_interval_s": 1,
        }
    )
    relay = RtpengineSettings(
        ng_port=ports["ng"], port_min=ports["media"], port_max=ports["media"] + MEDIA_PORTS - 1
    )
    pbx = base.pbx.model_copy(update={"workers": 1, "worker_base_port": ports["worker"]})
    return base.model_copy(update={"edge": edge, "pbx": pbx, "rtpengine": relay})


@contextlib.contextmanager
def webrtc_lab(tmp_path: Path, worker_port: int) -> Iterator[WebrtcLab]:
    if not BUNDLE.is_file():
        pytest.fail(f"{BUNDLE} is missing: run scripts/bootstrap (npm ci + npm run build)")
    web = tmp_path / "web"
    web.mkdir()
    shutil.copy(PAGE, web / "agent.html")
    shutil.copy(BUNDLE, web / "jssip.js")
    with contextlib.ExitStack() as stack:
        page = PageServer(web)
        stack.callback(page.close)
        stranger = PageServer(web)
        stack.callback(stranger.close)
        avoid = {page.port, stranger.port, worker_port}
        ports = {
            name: free_port(avoid=avoid, span=MEDIA_PORTS if name == "media" else 1)
            for name in ("sip", "rpc", "ws", "wss", "ng", "media")
        }
        tls = self_signed(tmp_path / "tls")
        settings = lab_settings({**ports, "worker": worker_port}, page.origin, tls)
        relay = Rtpengine().start(
            settings.rtpengine, tmp_path / "rtpengine", tmp_path / "rtpengine.log", log_level=6
        )
        stack.callback(relay.stop)
        edge = Edge()
        stack.callback(edge.stop)
        edge.start(
            settings,
            tmp_path / "edge",
            tmp_path / "kamailio.log",
            workers=[WorkerAddr(1, "127.0.0.1", worker_port)],
            timers=TIMERS,
        )
        yield WebrtcLab(settings, edge, relay, tmp_path, page, stranger)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM), valid for a day."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def ws_handshake(port: int, origin: str | None, *, tls: bool = False) -> str:
    """Open a WebSocket (subprotocol sip) by hand; the HTTP status line that comes back."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: sip\r\n" + (f"Origin: {origin}\r\n" if origin else "") + "\r\n"
    )
    with contextlib.ExitStack() as stack:
        conn = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=3))
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the lab's self-signed certificate
            conn = stack.enter_context(context.wrap_socket(conn))
        conn.sendall(request.encode())
        data = conn.recv(4096)
    return data.decode(errors="replace").split("\r\n", 1)[0]


def chromium_args(mic: Path) -> list[str]:
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic}",
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--autoplay-policy=no-user-gesture-required",
        "--ignore-certificate-errors",  # the lab's self-signed certificate (wss)
        "--no-sandbox",  # root in CI
    ]


def sine_wav(path: Path, hz: int, seconds: float, rate: int = 48000) -> Path:
    subprocess.run(
        ["sox", "-n", "-r", str(rate), "-c", "1", "-b", "16", str(path),
         "synth", str(seconds), "sine", str(hz), "vol", "0.5"],
        check=True,
    )  # fmt: skip
    return path


def dominant_hz(path: Path) -> tuple[float, float]:
    """The loudest frequency of a mono 16-bit WAV, and its RMS."""
    with wave.open(str(path)) as wav:
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(float)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    return float(freqs[int(np.argmax(spectrum[1:])) + 1]), float(np.sqrt(np.mean(samples**2)))


# ---------------------------------------------------------------- tests


def test_websocket_only_from_allowed_origins_and_rpc_still_served(
    tmp_path: Path,
) -> None:
    """WS and WSS handshakes: an allowed Origin gets 101; a foreign or missing Origin 403;
    no upgrade on the RPC port, no RPC on the WS port; JSON-RPC keeps working."""
    with webrtc_lab(tmp_path, free_port()) as lab:
        for port, tls in ((lab.ws_port, False), (lab.wss_port, True)):
            assert ws_handshake(port, lab.page.origin, tls=tls).startswith("HTTP/1.1 101 ")
            for origin in (lab.stranger.origin, "http://evil.example", None):
                status = ws_handshake(port, origin, tls=tls)
                assert status.startswith("HTTP/1.1 403 "), (port, origin, status)
        # The RPC port upgrades nothing: it serves JSON-RPC at /RPC only.
        assert ws_handshake(lab.settings.edge.rpc_port, lab.page.origin).startswith("HTTP/1.1 404 ")
        assert lab.edge.rpc("core.uptime")["uptime"] >= 0
        ws_rpc = Edge()
        ws_rpc.rpc_port = lab.ws_port
        with pytest.raises(EdgeError, match=r"HTTP 403"):
            ws_rpc.rpc("core.uptime")
        # Raw SIP over TCP on the WebSocket port is dropped, not served.
        with socket.create_connection(("127.0.0.1", lab.ws_port), timeout=2) as conn:
            conn.sendall(
                b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKx\r\n"
                b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: x\r\n"
                b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            )
            conn.settimeout(1)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                assert conn.recv(4096) == b""
        assert lab.edge.alive() and lab.relay.alive()


@pytest.mark.parametrize("transport", ["ws", "wss"])
def test_browser_agent_talks_to_a_worker_through_rtpengine(
    tmp_path: Path, broker: int, worker: WorkerProc, transport: str
) -> None:
    """Chromium registers as 1001 over WS (a foreign page cannot); a call the worker
    cancels while it rings leaves nothing in rtpengine; the next one the page answers:
    the worker's tone reaches the browser and the browser's microphone the worker's
    recording; rtpengine holds RTP/AVP toward the worker and DTLS-SRTP toward the
    browser; the browser holds and resumes (re-INVITEs through rtpengine) and hears the
    tone again; rtpengine forgets the call at either side's BYE; with rtpengine down a
    call gets 503, and a restarted one carries the next; a closed tab unregisters."""
    from playwright.async_api import async_playwright

    mic = sine_wav(tmp_path / "mic.wav", MIC_HZ, 60)
    played = tone(tmp_path / "tone.wav", 4, TONE_HZ)
    recording = tmp_path / "rec" / "browser.wav"
    timings: dict[str, float] = {}

    async def scenario(lab: WebrtcLab) -> None:
        async with async_playwright() as pw, bus(broker) as b:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=chromium_args(mic)
            )
            try:
                await ready(b, worker)
                # A page from another origin: the edge refuses its WebSocket.
                foreign = await browser.new_page()
                await foreign.goto(f"{lab.stranger.origin}/agent.html")
                await foreign.evaluate(
                    "cfg => kefu.start(cfg)", lab.agent_config(*ALICE, transport)
                )
                await foreign.wait_for_function("kefu.state.disconnected", timeout=10_000)
                assert not await foreign.evaluate("kefu.state.registered")
                await foreign.close()
                assert lab.edge.registered_users() == {}

                page = await browser.new_page()
                await page.goto(f"{lab.page.origin}/agent.html")
                started = time.monotonic()
                await page.evaluate("cfg => kefu.start(cfg)", lab.agent_config(*ALICE, transport))
                await page.wait_for_function("kefu.state.registered", timeout=10_000)
                timings["register_s"] = time.monotonic() - started
                contact = lab.edge.registered_users()["1001"]
                assert "transport=ws" in contact, contact  # JsSIP's, over wss too
                # The edge's socket the registration came in on: ws on tcp, wss on tls.
                port = lab.wss_port if transport == "wss" else lab.ws_port
                proto = "tls" if transport == "wss" else "tcp"
                socket_ = _contact_field(lab.edge, "1001", "Socket")
                assert socket_ == f"{proto}:127.0.0.1:{port}", socket_

                # Ringing, then cancelled by the worker (a ring timeout): 487 from the page.
                await page.evaluate("kefu.state.autoAnswer = false")
                await b.ok(Dial(leg="rings", uri=f"sip:1001@127.0.0.1:{lab.sip_port}"))
                await b.event(LegRinging, leg="rings", within=10)
                await page.wait_for_function("kefu.state.incoming === 1", timeout=5_000)
                assert len(lab.relay.calls()) == 1
                await b.ok(Hangup(leg="rings"))
                await b.event(LegEnded, leg="rings", within=10)
                await page.wait_for_function("kefu.state.ended !== ''", timeout=5_000)
                assert await page.evaluate("kefu.state.ended") == "failed: Canceled"
                await asyncio.to_thread(
                    wait_until, lambda: lab.relay.calls() == [], 5, "cancelled call deleted"
                )
                await page.evaluate("kefu.state.autoAnswer = true")

                dialled = time.monotonic()
                await b.ok(Dial(leg="agent", uri=f"sip:1001@127.0.0.1:{lab.sip_port}"))
                await b.event(LegAnswered, leg="agent", within=10)
                timings["dial_to_answer_s"] = time.monotonic() - dialled
                await page.wait_for_function(
                    "kefu.state.answered && /connected|completed/.test(kefu.state.iceState)",
                    timeout=10_000,
                )
                (call_id,) = lab.relay.calls()
                state = await page.evaluate("kefu.state")
                remote_sdp = state["remoteSdp"]
                for line in ("UDP/TLS/RTP/SAVPF", "a=ice-ufrag:", "a=fingerprint:", "a=rtcp-mux",
                             "a=mid:", "a=setup:actpass"):  # fmt: skip
                    assert line in remote_sdp, (line, remote_sdp)
                assert "127.0.0.1" in remote_sdp

                # Worker -> browser: a tone the page's analyser must pick out.
                await b.ok(Play(leg="agent", play_id="tone", files=(played,), loop=True))
                heard = await _hear(page, TONE_HZ, within=5.0)
                timings["tone_heard_s"] = heard["after_s"]

                # Browser -> worker: the fake microphone lands in the worker's recording.
                await b.ok(
                    Record(leg="agent", record_id="mic", path=str(recording), max_s=2, beep=False)
                )
                rec = await b.event(LegRecorded, leg="agent", within=10)
                assert rec.stopped_by == "max_time", rec

                stats = await page.evaluate("kefu.stats()")
                print("browser stats:", stats)
                assert stats["inbound"]["packets"] > 50, stats
                assert stats["outbound"]["packets"] > 50, stats
                assert stats["inbound"]["energy"] > 0, stats
                media = _relay_media(lab.relay.query(call_id))
                assert sorted(media) == ["RTP/AVP", "UDP/TLS/RTP/SAVPF"], media
                assert all(packets > 50 for packets in media.values()), media

                # Hold and resume from the browser: both re-INVITEs pass rtpengine (the
                # worker would refuse a DTLS offer, the browser a plain RTP answer).
                await b.ok(Play(leg="agent", play_id="tone2", files=(played,), loop=True))
                await page.evaluate("kefu.hold()")
                await page.wait_for_function("kefu.state.held", timeout=5_000)
                await page.evaluate("kefu.unhold()")
                await page.wait_for_function("kefu.state.resumed === 1", timeout=5_000)
                await asyncio.sleep(0.5)  # the analyser forgets what it heard before the hold
                await _hear(page, TONE_HZ, within=5.0)
                assert lab.relay.calls() == [call_id]

                await b.ok(Hangup(leg="agent"))
                ended = await b.event(LegEnded, leg="agent", within=10)
                assert ended.rtp.rx_packets > 50 and ended.rtp.tx_packets > 50, ended
                await page.wait_for_function("kefu.state.ended !== ''", timeout=5_000)
                assert await page.evaluate("kefu.state.ended") == "Terminated"
                hung_up = time.monotonic()
                await asyncio.to_thread(
                    wait_until, lambda: lab.relay.calls() == [], 5, "rtpengine forgets the call"
                )
                timings["relay_forgot_s"] = time.monotonic() - hung_up

                # The browser hangs up: its BYE passes rtpengine too.
                await b.ok(Dial(leg="agent2", uri=f"sip:1001@127.0.0.1:{lab.sip_port}"))
                await b.event(LegAnswered, leg="agent2", within=10)
                await page.wait_for_function("kefu.state.answered", timeout=5_000)
                await page.evaluate("kefu.hangup()")
                by_browser = await b.event(LegEnded, leg="agent2", within=10)
                assert by_browser.by == "remote", by_browser
                await asyncio.to_thread(
                    wait_until, lambda: lab.relay.calls() == [], 5, "browser's BYE deleted it"
                )

                # rtpengine gone: 503 at once, no call rings. Back (a new process on the
                # same port): the edge uses it again after rtpengine_disable_tout (2 s).
                lab.relay.stop()
                stopped = time.monotonic()
                await b.ok(Dial(leg="norelay", uri=f"sip:1001@127.0.0.1:{lab.sip_port}"))
                norelay = await b.event(LegEnded, leg="norelay", within=10)
                timings["no_relay_503_s"] = time.monotonic() - stopped
                assert (norelay.sip_code, norelay.reason) == (503, "Media Relay Unavailable")
                incoming = await page.evaluate("kefu.state.incoming")
                rtp, folder = lab.settings.rtpengine, lab.dir / "rtpengine"
                await asyncio.to_thread(lab.relay.start, rtp, folder, lab.dir / "rtpengine.log")
                back = time.monotonic()
                await asyncio.sleep(2.5)
                await b.ok(Dial(leg="agent3", uri=f"sip:1001@127.0.0.1:{lab.sip_port}"))
                await b.event(LegAnswered, leg="agent3", within=10)
                assert await page.evaluate("kefu.state.incoming") == incoming + 1
                await b.ok(Play(leg="agent3", play_id="tone3", files=(played,), loop=True))
                await _hear(page, TONE_HZ, within=5.0)
                timings["relay_back_then_heard_s"] = time.monotonic() - back
                await b.ok(Hangup(leg="agent3"))
                await b.event(LegEnded, leg="agent3", within=10)

                # Closing the tab closes its WebSocket: the agent is no longer reachable.
                await page.close()
                closed = time.monotonic()

                async def unregistered() -> float:
                    await asyncio.to_thread(
                        wait_until,
                        lambda: "1001" not in lab.edge.registered_users(),
                        5,
                        "the closed tab's registration removed",
                    )
                    return time.monotonic() - closed

                gone_after = asyncio.create_task(unregistered())
                # At once, before the edge has noticed: the contact is still there but its
                # WebSocket is gone. The INVITE times out (408 after the agent fr timer,
                # measured) and the failure route deletes the relay's session.
                await b.ok(Dial(leg="closing", uri=f"sip:1001@127.0.0.1:{lab.sip_port}"))
                closing = await b.event(LegEnded, leg="closing", within=10)
                assert closing.sip_code in (408, 480), closing
                timings["closed_tab_dial_s"] = time.monotonic() - closed
                print("dial right after close:", closing.sip_code, closing.reason)
                await asyncio.to_thread(
                    wait_until, lambda: lab.relay.calls() == [], 5, "no session for a closed tab"
                )
                timings["unregistered_s"] = await gone_after
                await b.ok(Dial(leg="again", uri=f"sip:1001@127.0.0.1:{lab.sip_port}"))
                gone = await b.event(LegEnded, leg="again", within=10)
                assert gone.sip_code == 480, gone
            finally:
                await browser.close()

    with webrtc_lab(tmp_path, worker.sip_port) as lab:
        try:
            asyncio.run(scenario(lab))
        except BaseException:
            print((tmp_path / "kamailio.log").read_text(errors="replace")[-6000:])
            print((tmp_path / "rtpengine.log").read_text(errors="replace")[-4000:])
            raise

    hz, rms = dominant_hz(recording)
    print(f"recording: {hz:.1f} Hz, RMS {rms:.0f}")
    assert abs(hz - MIC_HZ) < 10, (hz, rms)
    assert rms > 1000, f"the browser's microphone is (nearly) silent in the recording: {rms}"
    print(f"webrtc timings ({transport}):", {k: round(v, 3) for k, v in timings.items()})


def _contact_field(edge: Edge, user: str, field: str) -> str:
    """One field of a user's (first) contact in the edge's `ul.dump`."""
    for domain in edge.rpc("ul.dump")["Domains"]:
        for aor in domain["Domain"]["AoRs"]:
            if aor["Info"]["AoR"] == user:
                return str(aor["Info"]["Contacts"][0]["Contact"][field])
    raise AssertionError(f"{user} is not registered")


async def _hear(page: Any, hz: float, within: float) -> dict[str, float]:
    """Poll the page's analyser until `hz` is the loudest frequency it hears."""
    started = time.monotonic()
    last = None
    while time.monotonic() - started < within:
        last = await page.evaluate("kefu.peak()")
        if last is not None and abs(last["hz"] - hz) < 15 and last["db"] > -60:
            return {**last, "after_s": time.monotonic() - started}
        await asyncio.sleep(0.1)
    raise AssertionError(f"the browser never heard {hz} Hz: last peak {last}")


def _relay_media(query: dict[str, Any]) -> dict[str, int]:
    """rtpengine's `query`: transport protocol of each leg -> packets it received."""
    out: dict[str, int] = {}
    for tag in query.get("tags", {}).values():
        for media in tag.get("medias", []):
            packets = sum(
                int(stream.get("stats", {}).get("packets", 0))
                for stream in media.get("streams", [])
            )
            out[str(media.get("protocol"))] = packets
    return out


@pytest.mark.e2e
def test_kefu_serve_runs_rtpengine_restarts_it_and_stops_it(tmp_path: Path) -> None:
    """`kefu serve` with edge.ws_port starts rtpengine (before Kamailio), starts it again
    when it dies, and stops it on exit; the edge takes a WebSocket from the desk's origin."""
    ports = pick_ports(1)
    taken = set(ports.values())
    ws, ng = free_port(avoid=taken), free_port(avoid=taken)
    media = free_port(span=40, avoid=taken)
    config = center_config(ports, workers=1)
    desk = f"http://127.0.0.1:{ports['http']}"
    config["edge"] |= {"ws_port": ws, "ws_origins": [desk]}
    config["rtpengine"] = {"ng_port": ng, "port_min": media, "port_max": media + 39}
    center = start_center(tmp_path, config, ports)
    relay = Rtpengine()
    relay.ng_port = ng
    pid_file = center.data_dir / "run" / "rtpengine.pid"
    try:
        assert relay.ping()
        assert ws_handshake(ws, desk).startswith("HTTP/1.1 101 ")
        first = int(pid_file.read_text())
        os.kill(first, signal.SIGKILL)
        wait_until(
            lambda: pid_file.read_text().strip() not in ("", str(first)) and relay.ping(),
            15,
            "rtpengine restarted by kefu serve",
            interval=0.2,
        )
        assert "rtpengine exited" in center.proc.log_path.read_text()
    finally:
        code = center.proc.stop(timeout=30)
    assert code == 0, center.proc.log_tail(30)
    assert not relay.ping(timeout=0.3)


@pytest.mark.e2e
def test_a_caller_reaches_a_browser_agent_through_kefu_serve(tmp_path: Path) -> None:
    """kefu serve with browsers on: alice registers from Chromium, a SIPp caller presses 1
    (sales); the core dials her like a desk phone, the page answers; the caller's audio
    reaches the browser and the browser's microphone is in the call's recording."""
    from playwright.async_api import async_playwright

    if not BUNDLE.is_file():
        pytest.fail(f"{BUNDLE} is missing: run scripts/bootstrap (npm ci + npm run build)")
    web = tmp_path / "web"
    web.mkdir()
    shutil.copy(PAGE, web / "agent.html")
    shutil.copy(BUNDLE, web / "jssip.js")
    mic = sine_wav(tmp_path / "mic.wav", MIC_HZ, 60)
    pages = PageServer(web)
    ports = pick_ports(1)
    taken = set(ports.values()) | {pages.port}
    ws, ng = free_port(avoid=taken), free_port(avoid=taken)
    media = free_port(span=40, avoid=taken)
    config = center_config(ports, workers=1)
    config["edge"] |= {"ws_port": ws, "ws_origins": [pages.origin]}
    config["rtpengine"] = {"ng_port": ng, "port_min": media, "port_max": media + 39}
    sip = ports["sip"]
    agent = {
        "ws": f"ws://127.0.0.1:{ws}",
        "uri": f"sip:1001@127.0.0.1:{sip}",
        "password": ALICE[1],
        "registrar": f"sip:127.0.0.1:{sip}",
    }

    async def scenario(center: Center) -> dict[str, Any]:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=chromium_args(mic)
            )
            try:
                page = await browser.new_page()
                await page.goto(f"{pages.origin}/agent.html")
                await page.evaluate("cfg => kefu.start(cfg)", agent)
                await page.wait_for_function("kefu.state.registered", timeout=10_000)
                await asyncio.to_thread(center.wait_agents, ["alice"])
                result = await asyncio.to_thread(
                    run_sipp,
                    "caller.xml",
                    center.edge,
                    local_port=center.sipp_port(1),
                    media_port=free_port(span=4),
                    service="1000",
                    keys={"caller": "5550142", "digit": "1", "dtmf_ms": "1500", "hold_ms": "9000"},
                    timeout_s=60,
                    timeout=90,
                )
                assert result.ok, result.output[-3000:]
                await page.wait_for_function("kefu.state.ended !== ''", timeout=10_000)
                state = await page.evaluate("kefu.state")
                assert state["incoming"] == 1 and state["answered"], state
                assert state["ended"] == "Terminated", state
                return dict(state["lastStats"])
            finally:
                await browser.close()

    try:
        center = start_center(tmp_path, config, ports)
        try:
            stats = asyncio.run(scenario(center))
            (row,) = center.wait_calls(1, where=lambda c: c["agent"] == "alice", recorded=True)
        except BaseException:
            for name in ("kamailio", "rtpengine", "core", "worker-1"):
                print(f"===== {name}\n{center.log(name)[-3000:]}")
            raise
        finally:
            code = center.proc.stop(timeout=30)
        assert code == 0, center.proc.log_tail(30)
    finally:
        pages.close()

    # The caller's pcap (speech) reached the browser through the worker and rtpengine.
    assert stats["inbound"]["packets"] > 100 and stats["inbound"]["energy"] > 0, stats
    assert stats["outbound"]["packets"] > 100, stats
    assert row["queue"] == "sales" and row["hangup_side"] == "caller", row
    hz, rms = dominant_hz(Path(row["recording_path"]))
    assert abs(hz - MIC_HZ) < 10, (hz, rms)  # the steady mic tone outweighs the speech
