"""rtpengine: the media relay between browser softphones and the media workers.

A browser speaks WebRTC (ICE, DTLS-SRTP, RTP and RTCP on one port); a pjsua2 worker
speaks plain RTP. rtpengine (Debian `rtpengine-daemon`, userspace forwarding only, no
kernel module, no iptables) sits between them: the Kamailio edge (`pbx.edge`) rewrites
the SDP of every worker <-> browser call through rtpengine's `ng` control port, so a
worker sees an ordinary SIP agent leg and Python never touches a browser's audio.

This module builds the command line (`rtpengine_argv`), runs it in the foreground as a
`pbx.procs.ManagedProcess` (`Rtpengine.start`), and talks the ng protocol (bencoded
dictionaries over UDP with a cookie) to ping it (`ng_ping`, also the core's health
probe) and list or query its calls. `kefu serve` starts it before Kamailio when
`edge.ws_port` is set; the tests start their own.
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path
from typing import Any

from config.schema import Rtpengine as RtpengineSettings
from pbx.procs import ManagedProcess, RunsOneProcess, require_free, wait_until

RTPENGINE = "/usr/bin/rtpengine"
NG_TIMEOUT_S = 1.0


class RtpengineError(RuntimeError):
    """rtpengine did not start, or its ng port did not answer as expected."""


def rtpengine_argv(
    settings: RtpengineSettings, pid_file: Path, *, binary: str = RTPENGINE, log_level: int = 5
) -> list[str]:
    """Foreground, log to stderr, no config file (not even /etc/rtpengine/rtpengine.conf,
    which the package reads by default), no kernel table: userspace forwarding only."""
    return [
        binary,
        "--config-file=none",
        "--foreground",
        "--log-stderr",
        f"--log-level={log_level}",
        "--table=-1",
        f"--interface={settings.interface}",
        f"--listen-ng=127.0.0.1:{settings.ng_port}",
        f"--port-min={settings.port_min}",
        f"--port-max={settings.port_max}",
        f"--timeout={settings.timeout_s}",
        f"--silent-timeout={max(settings.timeout_s, 3600)}",
        "--delete-delay=0",
        "--num-threads=2",
        f"--pidfile={pid_file}",
    ]


# ---------------------------------------------------------------- bencode (ng protocol)


def bencode(value: Any) -> bytes:
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list | tuple):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> Any:
    """Strings come back as `str` (ng replies are UTF-8 text)."""
    value, end = _bdecode(data, 0)
    if end != len(data):
        raise ValueError(f"trailing bytes after bencoded value at {end}")
    return value


def _bdecode(data: bytes, i: int) -> tuple[Any, int]:
    head = data[i : i + 1]
    if head == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1 : end]), end + 1
    if head in (b"l", b"d"):
        items: list[Any] = []
        i += 1
        while data[i : i + 1] != b"e":
            item, i = _bdecode(data, i)
            items.append(item)
        if head == b"l":
            return items, i + 1
        return dict(zip(items[::2], items[1::2], strict=True)), i + 1
    if head.isdigit():
        colon = data.index(b":", i)
        start = colon + 1
        stop = start + int(data[i:colon])
        return data[start:stop].decode(errors="replace"), stop
    raise ValueError(f"not bencode at byte {i}: {data[i : i + 10]!r}")


def ng_request(port: int, command: dict[str, Any], *, timeout: float = NG_TIMEOUT_S) -> Any:
    """One ng command to 127.0.0.1:`port`; the decoded reply dictionary.

    `RtpengineError` when nothing answers in time or the reply says `error`."""
    cookie = secrets.token_hex(6).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            # Connected, so a closed port fails at once: Linux reports the ICMP port
            # unreachable only to a connected UDP socket (unconnected: the full timeout).
            sock.connect(("127.0.0.1", port))
            sock.send(cookie + b" " + bencode(command))
            while True:
                data = sock.recv(65535)
                got, _, body = data.partition(b" ")
                if got == cookie:
                    break
        except OSError as exc:  # timeout, or ICMP port unreachable on loopback
            raise RtpengineError(f"ng {command.get('command')} on {port}: {exc}") from exc
    try:
        reply = bdecode(body)
    except ValueError as exc:
        raise RtpengineError(f"ng {command.get('command')} on {port}: {exc}") from exc
    if not isinstance(reply, dict) or reply.get("result") == "error":
        reason = reply.get("error-reason") if isinstance(reply, dict) else reply
        raise RtpengineError(f"ng {command.get('command')}: {reason}")
    return reply


def ng_ping(port: int, *, timeout: float = NG_TIMEOUT_S) -> None:
    """rtpengine on 127.0.0.1:`port` answers the ng `ping` with `pong` within `timeout`.

    `RtpengineError` says why not: no answer in time, nothing listening (loopback
    answers with ICMP port unreachable), an error reply, or a reply that is not `pong`.
    Blocks up to `timeout`: call it off the event loop."""
    reply = ng_request(port, {"command": "ping"}, timeout=timeout)
    if reply.get("result") != "pong":
        raise RtpengineError(f"ng ping on {port}: answered {reply!r}, not pong")


# ---------------------------------------------------------------- the process


class Rtpengine(RunsOneProcess):
    """One rtpengine process and a small ng client for it."""

    def __init__(self, binary: str = RTPENGINE, *, die_with_parent: bool = False) -> None:
        self.binary = binary
        self.die_with_parent = die_with_parent
        self.proc: ManagedProcess | None = None
        self.ng_port = 0

    @classmethod
    def attach(cls, settings: RtpengineSettings) -> Rtpengine:
        """A client for an rtpengine that another process runs."""
        engine = cls()
        engine.ng_port = settings.ng_port
        return engine

    def start(
        self,
        settings: RtpengineSettings,
        run_dir: Path,
        log_path: Path,
        *,
        log_level: int = 5,
        timeout: float = 10.0,
    ) -> Rtpengine:
        # Its media ports are taken as needed (busy ones are skipped); the control port
        # must be ours, or the edge would talk to someone else's relay.
        require_free({"rtpengine.ng_port": settings.ng_port})
        run_dir.mkdir(parents=True, exist_ok=True)
        argv = rtpengine_argv(
            settings, run_dir / "rtpengine.pid", binary=self.binary, log_level=log_level
        )
        self.ng_port = settings.ng_port
        proc = ManagedProcess(
            "rtpengine", argv, log_path, die_with_parent=self.die_with_parent
        ).start()
        self.proc = proc
        try:
            wait_until(
                lambda: not proc.alive() or self.ping(timeout=0.2),
                timeout,
                f"rtpengine ng on 127.0.0.1:{settings.ng_port}",
                interval=0.1,
            )
        except TimeoutError:
            self.stop()
            raise RtpengineError(f"rtpengine did not answer ping:\n{proc.log_tail()}") from None
        if not proc.alive():
            raise RtpengineError(f"rtpengine exited ({proc.returncode()}):\n{proc.log_tail()}")
        return self

    # ------------------------------------------------------------ ng

    def ping(self, timeout: float = NG_TIMEOUT_S) -> bool:
        try:
            ng_ping(self.ng_port, timeout=timeout)
        except RtpengineError:
            return False
        return True

    def calls(self) -> list[str]:
        """Call-IDs of the sessions rtpengine holds now."""
        reply = ng_request(self.ng_port, {"command": "list", "limit": 1000})
        return [str(c) for c in reply.get("calls", [])]

    def query(self, call_id: str) -> dict[str, Any]:
        """rtpengine's view of one call: per tag (leg) its streams and packet counters."""
        return dict(ng_request(self.ng_port, {"command": "query", "call-id": call_id}))
