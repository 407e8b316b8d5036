"""`kefu serve`: one command that runs a whole contact center on this box.

Starts, in order, the MQTT broker (mosquitto, unless an external one is configured),
rtpengine (when browsers may register: `edge.ws_port`/`wss_port`), the Kamailio edge,
the media workers and the core; restarts any child that dies (exponential backoff,
reset after a minute of good health); prints `kefu ready` once `GET /api/health` says
every component is up; and on SIGINT/SIGTERM stops everything in reverse order. Each
child logs to `<data-dir>/logs/<name>.log`.

Workers are started as `python -m pbx.worker` rather than through the `kefu` CLI so a
worker process imports nothing but pjsua2, aiomqtt and the wire vocabulary: memory per
worker is what bounds how many callers one box can hold.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from config.loader import ConfigError, demo_path, load
from config.schema import Settings
from pbx.edge import Edge, EdgeError
from pbx.procs import ManagedProcess, PortBusy, port_is_free, require_free, start_mosquitto
from pbx.rtpengine import Rtpengine, RtpengineError
from recording.prompts import espeak_voices

READY_TIMEOUT_S = 90.0
MAX_BACKOFF_S = 30.0


@dataclass
class Child:
    proc: ManagedProcess
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0

    def revive(self, name: str, now: float, start: Callable[[], object]) -> None:
        """Called while the child is down: schedule a restart with exponential backoff
        (1 s, 2 s, 4 s ... 30 s; reset after a minute up), or do it when it is due."""
        if self.next_start == 0.0:
            delay = min(MAX_BACKOFF_S, 2.0**self.restarts)
            self.next_start = now + delay
            print(
                f"{name} exited with {self.proc.returncode()}; restarting in {delay:.0f}s "
                f"(log: {self.proc.log_path})",
                file=sys.stderr,
                flush=True,
            )
        elif now >= self.next_start:
            self.restarts += 1
            self.next_start = 0.0
            self.started_at = now
            start()


def worker_argv(settings: Settings, worker_id: int) -> list[str]:
    pbx = settings.pbx
    return [
        sys.executable, "-m", "pbx.worker",
        "--id", str(worker_id),
        "--sip-port", str(pbx.worker_base_port + worker_id - 1),
        "--rtp-port", str(pbx.rtp_base_port + (worker_id - 1) * pbx.rtp_ports_per_worker),
        "--rtp-ports", str(pbx.rtp_ports_per_worker),
        "--broker-host", settings.broker.host,
        "--broker-port", str(settings.broker.port),
        "--max-legs", str(pbx.max_legs),
        "--clock-rate", str(pbx.clock_rate),
        "--edge", f"{settings.edge.sip_host}:{settings.edge.sip_port}",
        "--rtp-timeout", str(pbx.rtp_timeout_s),
    ]  # fmt: skip


class Supervisor:
    def __init__(self, settings: Settings, config_path: Path, data_dir: Path) -> None:
        self.settings = settings
        self.config_path = config_path
        self.data_dir = data_dir
        self.logs = data_dir / "logs"
        self.run_dir = data_dir / "run"
        self.broker: ManagedProcess | None = None
        self.edge = Edge(die_with_parent=True)
        self.rtpengine: Rtpengine | None = None
        self.rtpengine_child: Child | None = None
        self.children: dict[str, Child] = {}
        self.stopping = False
        self.peer_retry_at = 0.0

    # -- start

    def check_ports(self) -> None:
        s = self.settings
        ports = s.named_ports()
        require_free(ports, s.edge.sip_host if s.edge.sip_host != "0.0.0.0" else "127.0.0.1")
        busy = [
            str(port)
            for port in range(s.pbx.worker_base_port, s.pbx.worker_base_port + s.pbx.workers)
            if not port_is_free(port, tcp=False)
        ]
        if busy:
            raise PortBusy(f"worker SIP ports already in use: {', '.join(busy)}")

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.check_ports()
        if self.settings.broker.embedded:
            self.broker = start_mosquitto(
                self.settings.broker.port,
                self.run_dir,
                self.logs / "mosquitto.log",
                die_with_parent=True,
            )
            print(f"broker: mosquitto on 127.0.0.1:{self.settings.broker.port}", flush=True)
        if self.settings.edge.webrtc:
            # Before Kamailio: its rtpengine module pings the relay once at start-up.
            self.rtpengine = self._start_rtpengine()
            assert self.rtpengine.proc is not None
            self.rtpengine_child = Child(proc=self.rtpengine.proc, started_at=time.monotonic())
            rtp = self.settings.rtpengine
            print(
                f"media relay: rtpengine ng on 127.0.0.1:{rtp.ng_port}, media on "
                f"{rtp.interface}:{rtp.port_min}-{rtp.port_max}",
                flush=True,
            )
        self.edge.start(self.settings, self.run_dir, self.logs / "kamailio.log")
        edge = self.settings.edge
        browsers = [
            f"{scheme}://{edge.sip_host}:{port}"
            for scheme, port in (("ws", edge.ws_port), ("wss", edge.wss_port))
            if port is not None
        ]
        ws = f", browsers on {' and '.join(browsers)}" if browsers else ""
        print(f"edge: kamailio on {edge.sip_host}:{edge.sip_port}{ws}", flush=True)
        for n in range(1, self.settings.pbx.workers + 1):
            self._spawn(f"worker-{n}", worker_argv(self.settings, n))
        self._spawn(
            "core",
            [sys.executable, "-m", "core.cli", "core", "--config", str(self.config_path),
             "--data-dir", str(self.data_dir)],
        )  # fmt: skip

    def _start_rtpengine(self) -> Rtpengine:
        return Rtpengine(die_with_parent=True).start(
            self.settings.rtpengine, self.run_dir, self.logs / "rtpengine.log"
        )

    def _restart_rtpengine(self) -> None:
        """A relay that cannot come back (its port taken) is retried with more backoff."""
        child = self.rtpengine_child
        assert child is not None
        try:
            self.rtpengine = self._start_rtpengine()
        except (PortBusy, RtpengineError, TimeoutError) as exc:
            print(f"rtpengine restart failed: {exc}", file=sys.stderr, flush=True)
            return
        assert self.rtpengine.proc is not None
        child.proc = self.rtpengine.proc

    def _spawn(self, name: str, argv: list[str]) -> None:
        proc = ManagedProcess(name, argv, self.logs / f"{name}.log", die_with_parent=True).start()
        self.children[name] = Child(proc=proc, started_at=time.monotonic())

    # -- health

    def health(self) -> dict[str, object] | None:
        url = f"http://{self.settings.http.host}:{self.settings.http.port}/api/health"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return dict(json.load(response))
        except urllib.error.HTTPError as exc:
            try:
                return dict(json.load(exc))
            except ValueError:
                return None
        except (OSError, ValueError):
            return None

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        report: dict[str, object] | None = None
        while time.monotonic() < deadline and not self.stopping:
            self.supervise_once()
            report = self.health()
            if report is not None and report.get("status") == "ok":
                print("kefu ready", flush=True)
                return
            time.sleep(0.25)
        if self.stopping:
            return
        raise TimeoutError(f"not healthy after {READY_TIMEOUT_S:.0f}s: {json.dumps(report)}")

    # -- supervise

    def supervise_once(self) -> None:
        now = time.monotonic()
        for name, child in self.children.items():
            if child.proc.alive():
                if now - child.started_at > 60:
                    child.restarts = 0
                continue
            child.revive(name, now, child.proc.start)
        # rtpengine: browser calls lose their media when it dies (their SIP dialogs live
        # on); a new one serves new calls. Kamailio retries a relay that did not answer
        # every 2 s, so it needs no restart of its own.
        relay = self.rtpengine_child
        if relay is not None:
            if relay.proc.alive():
                if now - relay.started_at > 60:
                    relay.restarts = 0
            else:
                relay.revive("rtpengine", now, self._restart_rtpengine)
        # A broker or edge that dies is restarted too; a failed restart is retried
        # later, never allowed to take the running calls down with it.
        if now < self.peer_retry_at:
            return
        try:
            if self.broker is not None and not self.broker.alive():
                print("mosquitto exited; restarting", file=sys.stderr, flush=True)
                self.broker = start_mosquitto(
                    self.settings.broker.port,
                    self.run_dir,
                    self.logs / "mosquitto.log",
                    die_with_parent=True,
                )
            if not self.edge.alive():
                print("kamailio exited; restarting", file=sys.stderr, flush=True)
                self.edge.stop()
                self.edge.start(self.settings, self.run_dir, self.logs / "kamailio.log")
        except (PortBusy, EdgeError, TimeoutError, RuntimeError) as exc:
            self.peer_retry_at = now + 2.0
            print(f"restart failed, retrying in 2s: {exc}", file=sys.stderr, flush=True)

    def run_forever(self) -> None:
        while not self.stopping:
            self.supervise_once()
            time.sleep(0.5)

    # -- stop

    def stop(self) -> None:
        """Workers first (they hang up their legs and report it), then the core (which
        writes those calls' records), then the edge, rtpengine and the broker."""
        self.stopping = True
        workers = [c for name, c in self.children.items() if name != "core"]
        for child in workers:
            child.proc.signal(signal.SIGTERM)
        for child in workers:
            child.proc.stop(timeout=10)
        if "core" in self.children:
            time.sleep(0.5)  # the last LegEnded events reach the core
            self.children["core"].proc.stop(timeout=15)
        self.edge.stop()
        if self.rtpengine is not None:
            self.rtpengine.stop()
        if self.broker is not None:
            self.broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kefu serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="YAML file (default: the demo)")
    parser.add_argument("--data-dir", type=Path, default=Path("var"), help="default: ./var")
    args = parser.parse_args(argv)
    config_path = (args.config or demo_path()).resolve()
    try:
        settings = load(config_path, voices=espeak_voices())
    except ConfigError as exc:
        print(f"kefu serve: invalid configuration\n{exc}", file=sys.stderr)
        return 2
    supervisor = Supervisor(settings, config_path, args.data_dir.resolve())

    def on_signal(signum: int, _frame: object) -> None:
        supervisor.stopping = True

    def on_hangup(_signum: int, _frame: object) -> None:
        # `kill -HUP` on kefu serve reloads the IVR flows, as on the core itself
        core = supervisor.children.get("core")
        if core is not None and core.proc.alive():
            core.proc.signal(signal.SIGHUP)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    try:
        supervisor.start()
        supervisor.wait_ready()
        supervisor.run_forever()
    except (PortBusy, TimeoutError, RuntimeError, ValueError) as exc:
        print(f"kefu serve: {exc}", file=sys.stderr)
        for name, child in supervisor.children.items():
            if not child.proc.alive():
                print(f"--- {name} log tail:\n{child.proc.log_tail(15)}", file=sys.stderr)
        supervisor.stop()
        return 1
    supervisor.stop()
    print("kefu stopped", flush=True)
    return 0
