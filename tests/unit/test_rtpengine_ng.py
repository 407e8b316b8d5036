"""The ng client (`pbx.rtpengine.ng_ping`) against a tiny UDP server in the test, and the
core's rtpengine health check built on it (the real daemon: tests/integration)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pbx.rtpengine import RtpengineError, bdecode, bencode, ng_ping
from tests.support.core_harness import Harness

Reply = Callable[[bytes, Any], list[bytes]]
"""(cookie, decoded command) -> the datagrams to send back"""


class FakeNg:
    """A UDP server on a free loopback port that answers each ng datagram with `reply`
    and keeps what it received."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.received: list[tuple[bytes, Any]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            cookie, _, body = data.partition(b" ")
            command = bdecode(body)
            self.received.append((cookie, command))
            for datagram in self.reply(cookie, command):
                self.sock.sendto(datagram, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@contextlib.contextmanager
def fake_ng(reply: Reply) -> Iterator[FakeNg]:
    server = FakeNg(reply)
    try:
        yield server
    finally:
        server.close()


def pong(cookie: bytes, _command: Any) -> list[bytes]:
    return [cookie + b" " + bencode({"result": "pong"})]


def test_ping_sends_a_bencoded_command_with_a_cookie_and_takes_pong() -> None:
    """The datagram is `<cookie> d7:command4:pinge`; the pong carrying that cookie is ok."""
    with fake_ng(pong) as server:
        ng_ping(server.port, timeout=1.0)
        ng_ping(server.port, timeout=1.0)
    (first, command), (second, _) = server.received
    assert command == {"command": "ping"}
    assert first and first != second  # a fresh cookie per request
    assert bencode({"command": "ping"}) == b"d7:command4:pinge"


def test_a_reply_with_another_cookie_is_skipped() -> None:
    """A stale answer to an earlier request (other cookie) is not taken for this one."""

    def stale_then_pong(cookie: bytes, command: Any) -> list[bytes]:
        stale = b"000000000000 " + bencode({"result": "error", "error-reason": "stale"})
        return [stale, *pong(cookie, command)]

    with fake_ng(stale_then_pong) as server:
        ng_ping(server.port, timeout=1.0)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"result": "error", "error-reason": "Unknown command"}, r"ng ping: Unknown command"),
        ({"result": "ok"}, r"ng ping on \d+: answered \{'result': 'ok'\}, not pong"),
    ],
)
def test_an_answer_that_is_not_pong_fails_naming_it(answer: dict[str, str], message: str) -> None:
    with (
        fake_ng(lambda cookie, _c: [cookie + b" " + bencode(answer)]) as server,
        pytest.raises(RtpengineError, match=message),
    ):
        ng_ping(server.port, timeout=1.0)


def test_garbage_is_an_ng_error_not_a_crash() -> None:
    with (
        fake_ng(lambda cookie, _c: [cookie + b" d6:resultxx"]) as server,
        pytest.raises(RtpengineError, match=r"ng ping on \d+: not bencode"),
    ):
        ng_ping(server.port, timeout=1.0)


def test_a_silent_relay_fails_after_the_timeout() -> None:
    with fake_ng(lambda _cookie, _c: []) as server:
        started = time.monotonic()
        with pytest.raises(RtpengineError, match=r"ng ping on \d+: timed out"):
            ng_ping(server.port, timeout=0.2)
        assert 0.2 <= time.monotonic() - started < 1.0


def test_nothing_listening_fails_at_once() -> None:
    """Loopback answers a datagram to a closed port with ICMP port unreachable."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    started = time.monotonic()
    with pytest.raises(RtpengineError, match=r"Connection refused"):
        ng_ping(port, timeout=2.0)
    assert time.monotonic() - started < 1.0


async def test_core_health_reports_the_relay_with_webrtc_on(harness: Harness) -> None:
    """The demo takes WebSockets, so health lists rtpengine: not ok before the first
    check, ok after a pong, not ok with the reason once the relay stops answering."""
    core = harness.core
    assert core.settings.edge.webrtc
    assert core.health()["components"]["rtpengine"]["ok"] is False
    with fake_ng(pong) as server:
        relay = core.settings.rtpengine.model_copy(update={"ng_port": server.port})
        core.settings = core.settings.model_copy(update={"rtpengine": relay})
        await core._check_rtpengine()
        assert core.health()["components"]["rtpengine"] == {"ok": True, "ng_port": server.port}
    await core._check_rtpengine()
    report = core.health()["components"]["rtpengine"]
    assert report["ok"] is False and "ng ping on" in report["error"], report


async def test_core_health_has_no_relay_without_websockets(
    make: Callable[..., Any],
) -> None:
    def no_browsers(data: dict[str, Any]) -> None:
        del data["edge"]["ws_port"], data["edge"]["ws_origins"]

    harness = await make(no_browsers)
    assert "rtpengine" not in harness.core.health()["components"]
