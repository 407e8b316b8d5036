"""Child processes and ports: start a peer, wait until it answers, stop it by PID.

Used by `kefu serve` (mosquitto, Kamailio, core, workers) and by the tests that start
real peers. Kamailio binds UDP with SO_REUSEADDR and silently *shares* a busy port, so
every port is checked free (UDP and TCP) before anything is started on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Self


class PortBusy(RuntimeError):
    pass


def port_is_free(port: int, host: str = "127.0.0.1", *, udp: bool = True, tcp: bool = True) -> bool:
    kinds = ([socket.SOCK_DGRAM] if udp else []) + ([socket.SOCK_STREAM] if tcp else [])
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            if kind == socket.SOCK_STREAM:
                # A listener still makes bind fail; connections of a process that just
                # died (TIME_WAIT) do not, as they would not stop its restart either.
                # Not for UDP: there SO_REUSEADDR would hide a live Kamailio.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def require_free(ports: dict[str, int], host: str = "127.0.0.1") -> None:
    """Raise `PortBusy` naming every configured port that something else holds."""
    busy = [f"{name}={port}" for name, port in ports.items() if not port_is_free(port, host)]
    if busy:
        raise PortBusy(f"ports already in use on {host}: {', '.join(busy)}")


def free_port(host: str = "127.0.0.1", *, span: int = 1, avoid: set[int] | None = None) -> int:
    """A port such that `span` consecutive ports are free for UDP and TCP."""
    if avoid is None:  # not `avoid or set()`: an empty set passed in must be updated
        avoid = set()
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind((host, 0))
            base = int(sock.getsockname()[1])
        if base + span > 65000:
            continue
        wanted = range(base, base + span)
        if avoid.intersection(wanted):
            continue
        if all(port_is_free(p, host) for p in wanted):
            avoid.update(wanted)
            return base
    raise PortBusy(f"no run of {span} free ports found on {host}")


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def tcp_listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class ManagedProcess:
    """One child process in its own process group, logged to a file, stopped by PID."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        *,
        die_with_parent: bool = False,
    ):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.die_with_parent = die_with_parent
        """SIGTERM the child if its parent dies, even by SIGKILL (Linux PR_SET_PDEATHSIG):
        each child runs in its own session, so nothing else would stop it."""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,
                preexec_fn=_terminate_with_parent if self.die_with_parent else None,
            )
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL it if it lingers; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


_PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:
    """Runs in the child between fork and exec: ask the kernel for SIGTERM when the
    parent goes. Only the supervisor uses it (it has no other threads at that point)."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def mosquitto_config(port: int, data_dir: Path) -> Path:
    """A loopback-only, anonymous broker config (the demo and the tests)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / f"mosquitto-{port}.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "max_queued_messages 10000\n"
        "set_tcp_nodelay true\n"
        "log_type error\nlog_type warning\n"
    )
    return conf


def start_mosquitto(
    port: int, data_dir: Path, log_path: Path, *, die_with_parent: bool = False
) -> ManagedProcess:
    require_free({"broker": port})
    proc = ManagedProcess(
        "mosquitto",
        ["/usr/sbin/mosquitto", "-c", str(mosquitto_config(port, data_dir))],
        log_path,
        die_with_parent=die_with_parent,
    ).start()
    try:
        wait_until(lambda: tcp_listening(port) or not proc.alive(), 10, f"mosquitto on {port}")
    except TimeoutError:
        proc.stop()
        raise
    if not proc.alive():
        raise RuntimeError(f"mosquitto exited: {proc.log_tail()}")
    return proc


@contextlib.contextmanager
def mosquitto(data_dir: Path) -> Iterator[int]:
    """A broker on a free port for the life of the block (tests)."""
    port = free_port()
    proc = start_mosquitto(port, data_dir, data_dir / "mosquitto.log")
    try:
        yield port
    finally:
        proc.stop()


class RunsOneProcess:
    """A peer run as one `ManagedProcess` (`self.proc`, set by its `start()`): stop it,
    ask its pid and whether it lives, or use it in a `with` block that stops it."""

    proc: ManagedProcess | None = None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return self.proc.stop()

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
