"""The Kamailio edge: render its configuration from kefu's settings, run it, ask it things.

The edge is the only SIP port the world sees (see DESIGN.md, "Edge dispatching"):
trunk INVITEs are spread over the media workers (`pbx.worker`) by current call load,
agent devices register here, and workers dial agents (`sip:<user>@edge`) and outside
numbers through it. A worker dials out with `trunk_uri(settings, number, trunk)`,
`sip:<number>@<edge>;trunk=<name>`; the edge sends that, and only from a worker, to
the trunk's `outbound` address as `sip:<outbound_prefix><number>@<host:port>`. This module

* renders `pbx/templates/kamailio.cfg` plus `dispatcher.list` and `address.list` into
  a run directory (`render_edge`, also `python -m pbx.edge render`); each trunk's
  outbound address becomes a case of the config's route[TO_TRUNK],
* builds the URI a worker dials to reach an outside number (`trunk_uri`),
* runs Kamailio in the foreground as a `pbx.procs.ManagedProcess` (`Edge.start`),
* talks JSON-RPC over HTTP to it on `edge.rpc_port` (registrations, dispatcher state,
  adding agent credentials) and pings it with a SIP OPTIONS over UDP.

With `edge.ws_port` (plain ws) or `edge.wss_port` (TLS, `edge.tls_cert`/`tls_key`) set
the edge also takes browser softphones (JsSIP) over WebSocket: the handshake is checked
against `edge.ws_origins`, and every call between a worker and a browser has its media
anchored in rtpengine (`pbx.rtpengine`), which speaks WebRTC (ICE, DTLS-SRTP, rtcp-mux)
to the browser and plain RTP to the worker (`RTP_TO_BROWSER`, `RTP_TO_WORKER`).
rtpengine must be running before Kamailio starts.

Its neighbours: `config.schema` (the `Edge`, `Trunk`, `Pbx`, `Agent` settings),
`pbx.procs` (ports and processes), and the supervisor behind `kefu serve`, which starts
it; the core builds `Dial` URIs with `trunk_uri`.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import ipaddress
import json
import re
import secrets
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.schema import Pbx, Settings
from pbx.procs import ManagedProcess, RunsOneProcess, require_free, tcp_listening, wait_until

KAMAILIO = "/usr/sbin/kamailio"
TEMPLATES = Path(__file__).resolve().parent / "templates"
DISPATCH_SET = 1
TRUNK_GROUP = 1
RPC_TIMEOUT_S = 2.0

# rtpengine flags for the SDP sent to each side of a worker <-> browser call (offers and
# answers alike), measured with Chromium + JsSIP (docs/FACTS.md). The browser gets
# WebRTC: ICE with rtpengine's candidates only, DTLS-SRTP with rtpengine as the DTLS
# server, RTP and RTCP on one port, an a=mid. The worker gets plain RTP/AVP with RTCP
# on its own port and no ICE; both see rtpengine's address as origin and connection.
RTP_TO_BROWSER = (
    "ICE=force DTLS=passive UDP/TLS/RTP/SAVPF rtcp-mux-offer SDES-off generate-mid "
    "replace-origin replace-session-connection"
)
RTP_TO_WORKER = "RTP/AVP ICE=remove rtcp-mux-demux replace-origin replace-session-connection"


class EdgeError(RuntimeError):
    """Kamailio refused the configuration, did not start, or an RPC call failed."""


@dataclass(frozen=True, slots=True)
class WorkerAddr:
    """Where one media worker listens for SIP (UDP)."""

    worker_id: int
    host: str
    port: int

    @property
    def duid(self) -> str:
        """The dispatcher's unique id for the worker: call load is counted per duid."""
        return f"w{self.worker_id}"

    @property
    def uri(self) -> str:
        return f"sip:{self.host}:{self.port}"


def default_workers(pbx: Pbx, host: str = "127.0.0.1") -> list[WorkerAddr]:
    """Workers 1..n on `worker_base_port + i`, as `kefu serve` starts them."""
    return [WorkerAddr(i + 1, host, pbx.worker_base_port + i) for i in range(pbx.workers)]


@dataclass(frozen=True, slots=True)
class EdgeTimers:
    """SIP timers of the edge, in milliseconds; tests shorten them."""

    fr_timer_ms: int = 3000
    """Non-INVITE transactions and worker probes: a dead worker is noticed this fast."""
    worker_fr_ms: int = 2000
    """A worker that has not said 100 Trying by then is dead: fail over."""
    worker_fr_inv_ms: int = 10000
    """A worker answers trunk calls itself (IVR), so a long ring means it is stuck."""
    agent_fr_ms: int = 4000
    agent_fr_inv_ms: int | None = None
    """None: the longest queue ring timeout plus a margin (the worker cancels first)."""
    trunk_fr_ms: int = 5000
    """A carrier that has not said 100 Trying by then is unreachable: 408 to the worker."""
    trunk_fr_inv_ms: int = 120000
    """The longest an outside number may ring (the worker normally cancels first)."""


@dataclass(frozen=True, slots=True)
class EdgeFiles:
    run_dir: Path
    config: Path
    dispatcher_list: Path
    address_list: Path
    pid_file: Path = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pid_file", self.run_dir / "kamailio.pid")

    def argv(self, kamailio: str = KAMAILIO) -> list[str]:
        """Foreground, log to stderr, pid and runtime files in the run directory."""
        return [
            kamailio, "-f", str(self.config), "-DD", "-E",
            "-Y", str(self.run_dir), "-P", str(self.pid_file), "-w", str(self.run_dir),
        ]  # fmt: skip

    def check_argv(self, kamailio: str = KAMAILIO) -> list[str]:
        return [kamailio, "-c", "-f", str(self.config), "-Y", str(self.run_dir)]


def digest_ha1(user: str, realm: str, password: str) -> str:
    """RFC 2617 HA1; the edge stores this, never the password itself."""
    return hashlib.md5(f"{user}:{realm}:{password}".encode(), usedforsecurity=False).hexdigest()


_PLACEHOLDER = re.compile(r"\{\{([A-Z][A-Z0-9_]*)\}\}")


def _fill(template: str, values: dict[str, str]) -> str:
    missing = sorted(set(_PLACEHOLDER.findall(template)) - values.keys())
    if missing:
        raise KeyError(f"kamailio.cfg template needs values for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _template() -> str:
    return (TEMPLATES / "kamailio.cfg").read_text(encoding="utf-8")


_DIALABLE = re.compile(r"^\+?[0-9*#]{1,32}$")


def trunk_uri(settings: Settings, number: str, trunk: str | None = None) -> str:
    """The URI a worker dials (`wire.events.Dial.uri`) to call `number` through a trunk.

    `sip:<number>@<edge sip_host>:<sip_port>;trunk=<name>`; the edge sends it on to that
    trunk's `outbound` address. `trunk` None: the first trunk that has one. A `#` is
    escaped (`%23`), as a SIP user part requires. ValueError when the number is not
    dialable or the trunk cannot take outbound calls."""
    if not _DIALABLE.match(number):
        raise ValueError(
            f"cannot dial {number!r}: a number is 1-32 of the digits 0-9, * and #, "
            "with an optional leading +"
        )
    trunks = settings.edge.trunks
    outbound = [t.name for t in trunks if t.outbound is not None]
    if trunk is None:
        if not outbound:
            raise ValueError(
                "no trunk can dial out: give one an outbound address (edge.trunks[].outbound)"
            )
        trunk = outbound[0]
    elif trunk not in outbound:
        names = ", ".join(outbound) or "none"
        if any(t.name == trunk for t in trunks):
            raise ValueError(f"trunk {trunk!r} has no outbound address (outbound trunks: {names})")
        raise ValueError(f"unknown trunk {trunk!r} (outbound trunks: {names})")
    edge = settings.edge
    return f"sip:{number.replace('#', '%23')}@{edge.sip_host}:{edge.sip_port};trunk={trunk}"


def _trunk_cases(settings: Settings) -> str:
    """The `switch` cases of route[TO_TRUNK]: trunk name -> outbound host:port and prefix."""
    lines: list[str] = []
    for trunk in settings.edge.trunks:
        lines += [
            f'\tcase "{_cfg_string(trunk.name)}":',
            f'\t\t$var(dst) = "{_cfg_string(trunk.outbound_address or "")}";',
            f'\t\t$var(prefix) = "{_cfg_string(trunk.outbound_prefix)}";',
            "\t\tbreak;",
        ]
    return "\n".join(lines)


def _cfg_string(value: str) -> str:
    """Refuse what cannot sit inside a Kamailio double-quoted string unescaped."""
    if re.search(r'["\\\r\n$]', value):
        raise ValueError(f"{value!r} cannot be used in the Kamailio configuration")
    return value


def render_edge(
    settings: Settings,
    *,
    workers: list[WorkerAddr] | None = None,
    run_dir: Path,
    timers: EdgeTimers | None = None,
    log_level: int = 2,
) -> EdgeFiles:
    """Write kamailio.cfg, dispatcher.list and address.list into `run_dir`."""
    edge = settings.edge
    timers = timers or EdgeTimers()
    workers = default_workers(settings.pbx) if workers is None else workers
    if not workers:
        raise ValueError("the edge needs at least one worker")
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    realm = _cfg_string(edge.sip_host)

    maxload = settings.pbx.trunk_calls_per_worker
    dispatcher_list = run_dir / "dispatcher.list"
    dispatcher_list.write_text(
        "# set destination flags priority attributes -- generated by pbx.edge\n"
        + "".join(f"{DISPATCH_SET} {w.uri} 0 0 duid={w.duid};maxload={maxload}\n" for w in workers)
    )

    address_list = run_dir / "address.list"
    lines = ["# group address mask port tag -- trunk source networks, generated by pbx.edge"]
    for trunk in edge.trunks:
        for entry in trunk.allow:
            net = ipaddress.ip_network(entry, strict=False)
            lines.append(f"{TRUNK_GROUP} {net.network_address} {net.prefixlen} 0 {trunk.name}")
    address_list.write_text("\n".join(lines) + "\n")

    credentials = [
        f'\t$sht(auth=>{a.sip_user}) = "{digest_ha1(a.sip_user, realm, a.password)}";'
        for a in settings.agents.values()
    ]
    ring_max_s = max((q.ring_timeout_s for q in settings.queues.values()), default=60.0)
    agent_fr_inv_ms = timers.agent_fr_inv_ms or int(max(ring_max_s + 10, 60) * 1000)
    values = {
        "LOG_LEVEL": str(log_level),
        "CHILDREN": "2",
        "TCP_CHILDREN": "2",
        "SIP_HOST": edge.sip_host,
        "SIP_PORT": str(edge.sip_port),
        "RPC_PORT": str(edge.rpc_port),
        "REALM": realm,
        "AUTH_SECRET": secrets.token_hex(16),
        "REGISTER_MAX_EXPIRES": str(edge.register_max_expires_s),
        "REGISTER_DEFAULT_EXPIRES": str(min(3600, edge.register_max_expires_s)),
        "FR_TIMER_MS": str(timers.fr_timer_ms),
        "WORKER_FR_MS": str(timers.worker_fr_ms),
        "WORKER_FR_INV_MS": str(timers.worker_fr_inv_ms),
        "AGENT_FR_MS": str(timers.agent_fr_ms),
        "AGENT_FR_INV_MS": str(agent_fr_inv_ms),
        "TRUNK_FR_MS": str(timers.trunk_fr_ms),
        "TRUNK_FR_INV_MS": str(timers.trunk_fr_inv_ms),
        "TRUNK_CASES": _trunk_cases(settings),
        "PIKE_UNIT_S": "2",
        "PIKE_DENSITY": "200",
        "ADDRESS_LIST": str(address_list),
        "DISPATCHER_LIST": str(dispatcher_list),
        "PROBE_INTERVAL_S": str(edge.probe_interval_s),
        "RETRY_AFTER_S": str(edge.retry_after_s),
        "AGENT_CREDENTIALS": "\n".join(credentials) or "\tnoop;",
        **_webrtc_values(settings, run_dir),
    }
    config = run_dir / "kamailio.cfg"
    config.write_text(_fill(_template(), values))
    return EdgeFiles(run_dir, config, dispatcher_list, address_list)


def _webrtc_values(settings: Settings, run_dir: Path) -> dict[str, str]:
    """Placeholders of the template's `WITH_WEBRTC` parts: the WebSocket listeners (ws,
    and wss with a tls.cfg written next to kamailio.cfg), the Origin allow-list and the
    rtpengine control socket. Left at harmless values (and the parts compiled out)
    when neither `edge.ws_port` nor `edge.wss_port` is set."""
    edge = settings.edge
    origins = sorted({o.lower() for o in edge.ws_origins})
    checks = [
        f'\t\tif ($var(origin) == "{_cfg_string(origin)}") {{\n\t\t\t$var(origin_ok) = 1;\n\t\t}}'
        for origin in origins
    ]
    defines = []
    if edge.webrtc:
        defines.append("#!define WITH_WEBRTC")
    if edge.ws_port is not None:
        defines.append("#!define WITH_WS")
    tls_config = run_dir / "tls.cfg"
    if edge.wss_port is not None:
        defines.append("#!define WITH_WSS")
        assert edge.tls_cert is not None and edge.tls_key is not None  # the schema checks
        cert = _cfg_string(str(Path(edge.tls_cert).resolve()))
        key = _cfg_string(str(Path(edge.tls_key).resolve()))
        tls_config.write_text(
            "# TLS for the wss listener -- generated by pbx.edge\n"
            "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\n"
            f"require_certificate = no\ncertificate = {cert}\nprivate_key = {key}\n\n"
            "[client:default]\nmethod = TLSv1.2+\nverify_certificate = no\n"
            "require_certificate = no\n"
        )
    return {
        "DEFINES": "\n".join(defines) or "# WebRTC: off (neither edge.ws_port nor wss_port set)",
        "WS_PORT": str(edge.ws_port or 0),
        "WSS_PORT": str(edge.wss_port or 0),
        "TLS_CONFIG": str(tls_config),
        "WS_ORIGIN_CHECKS": "\n".join(checks) or "\t\tnoop;",
        "RTPENGINE_SOCK": f"udp:127.0.0.1:{settings.rtpengine.ng_port}",
        "RTP_TO_BROWSER": RTP_TO_BROWSER,
        "RTP_TO_WORKER": RTP_TO_WORKER,
    }


def check_config(files: EdgeFiles, kamailio: str = KAMAILIO) -> None:
    """`kamailio -c`; raise `EdgeError` with Kamailio's own complaint if it fails."""
    done = subprocess.run(files.check_argv(kamailio), capture_output=True, timeout=30, check=False)
    if done.returncode != 0:
        out = (done.stdout + done.stderr).decode(errors="replace").splitlines()
        errors = [line for line in out if "ERROR" in line or "CRITICAL" in line] or out[-15:]
        raise EdgeError(f"invalid Kamailio configuration {files.config}:\n" + "\n".join(errors))


# ---------------------------------------------------------------- SIP ping


def sip_options(host: str, port: int, *, timeout: float = 1.0, local_ip: str = "127.0.0.1") -> int:
    """Send one OPTIONS over UDP to `sip:host:port`; the final status code, 0 on timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((local_ip, 0))
        sock.settimeout(timeout)
        lport = sock.getsockname()[1]
        call_id = uuid.uuid4().hex
        branch = "z9hG4bK" + uuid.uuid4().hex[:16]
        msg = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local_ip}:{lport};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:ping@{local_ip}>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        try:
            sock.sendto(msg.encode(), (host, port))
            while True:
                data = sock.recv(65535).decode(errors="replace")
                match = re.match(r"SIP/2\.0 (\d{3}) ", data)
                if match and call_id in data and not match.group(1).startswith("1"):
                    return int(match.group(1))
        except OSError:  # timeout, or ICMP port unreachable on loopback
            return 0


# ---------------------------------------------------------------- the process


@dataclass(frozen=True, slots=True)
class WorkerState:
    """One dispatcher destination as Kamailio sees it."""

    duid: str
    uri: str
    flags: str
    """'A'ctive/'I'nactive/'D'isabled, plus 'P' while probed."""
    load: int
    """Trunk calls the edge currently counts on this worker."""
    maxload: int

    @property
    def active(self) -> bool:
        return self.flags.startswith("A")


class Edge(RunsOneProcess):
    """One Kamailio edge process and a small client for its RPC port."""

    def __init__(self, kamailio: str = KAMAILIO, *, die_with_parent: bool = False) -> None:
        self.kamailio = kamailio
        self.die_with_parent = die_with_parent
        self.proc: ManagedProcess | None = None
        self.files: EdgeFiles | None = None
        self.host = "127.0.0.1"
        self.sip_port = 0
        self.rpc_port = 0
        self.realm = ""

    @classmethod
    def attach(cls, settings: Settings) -> Edge:
        """A client for an edge that another process runs (the core's view of it)."""
        edge = cls()
        edge.host, edge.sip_port = settings.edge.sip_host, settings.edge.sip_port
        edge.rpc_port, edge.realm = settings.edge.rpc_port, settings.edge.sip_host
        return edge

    def start(
        self,
        settings: Settings,
        run_dir: Path,
        log_path: Path,
        *,
        workers: list[WorkerAddr] | None = None,
        timers: EdgeTimers | None = None,
        timeout: float = 15.0,
    ) -> Edge:
        edge = settings.edge
        # Kamailio binds UDP with SO_REUSEADDR and would silently share a busy port.
        require_free({"edge.sip_port": edge.sip_port}, edge.sip_host)
        require_free({"edge.rpc_port": edge.rpc_port})
        for name, port in (("edge.ws_port", edge.ws_port), ("edge.wss_port", edge.wss_port)):
            if port is not None:
                require_free({name: port}, edge.sip_host)
        for name, pem in (("edge.tls_cert", edge.tls_cert), ("edge.tls_key", edge.tls_key)):
            if edge.wss_port is not None and pem is not None and not Path(pem).is_file():
                raise EdgeError(f"{name}: no such file {pem}")
        self.files = render_edge(settings, workers=workers, run_dir=run_dir, timers=timers)
        check_config(self.files, self.kamailio)
        self.host, self.sip_port, self.rpc_port = edge.sip_host, edge.sip_port, edge.rpc_port
        self.realm = edge.sip_host
        proc = ManagedProcess(
            "kamailio",
            self.files.argv(self.kamailio),
            log_path,
            die_with_parent=self.die_with_parent,
        ).start()
        self.proc = proc
        try:
            wait_until(
                lambda: not proc.alive() or self._rpc_answers(),
                timeout,
                f"Kamailio RPC on 127.0.0.1:{edge.rpc_port}",
            )
        except TimeoutError:
            self.stop()
            raise EdgeError(f"Kamailio did not answer RPC:\n{proc.log_tail()}") from None
        if not proc.alive():
            raise EdgeError(f"Kamailio exited ({proc.returncode()}):\n{proc.log_tail()}")
        return self

    # ------------------------------------------------------------ RPC

    def rpc(self, method: str, *params: str | int) -> Any:
        """One JSON-RPC call over HTTP; `EdgeError` on a transport or RPC error."""
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1})
        conn = http.client.HTTPConnection("127.0.0.1", self.rpc_port, timeout=RPC_TIMEOUT_S)
        try:
            conn.request("POST", "/RPC", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
        except OSError as exc:
            raise EdgeError(f"RPC {method}: {exc}") from exc
        finally:
            conn.close()
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise EdgeError(f"RPC {method}: HTTP {resp.status}, not JSON: {raw[:200]!r}") from exc
        if "error" in answer:
            raise EdgeError(f"RPC {method}: {answer['error']}")
        return answer.get("result")

    def _rpc_answers(self) -> bool:
        if not tcp_listening(self.rpc_port):
            return False
        try:
            self.rpc("core.uptime")
        except EdgeError:
            return False
        return True

    def registered_users(self) -> dict[str, str]:
        """SIP user -> contact URI of every registered agent device."""
        result = self.rpc("ul.dump") or {}
        users: dict[str, str] = {}
        for domain in result.get("Domains", []):
            for aor in domain.get("Domain", {}).get("AoRs", []):
                info = aor.get("Info", {})
                contacts = info.get("Contacts", [])
                if contacts:
                    users[str(info.get("AoR"))] = str(contacts[0]["Contact"]["Address"])
        return users

    def dispatcher_state(self) -> list[WorkerState]:
        result = self.rpc("dispatcher.list") or {}
        workers: list[WorkerState] = []
        for record in result.get("RECORDS", []):
            dset = record.get("SET", {})
            if dset.get("ID") != DISPATCH_SET:
                continue
            for target in dset.get("TARGETS", []):
                dest = target["DEST"]
                attrs = dest.get("ATTRS", {})
                workers.append(
                    WorkerState(
                        duid=str(attrs.get("DUID", "")),
                        uri=str(dest["URI"]),
                        flags=str(dest["FLAGS"]),
                        load=int(dest.get("RUNTIME", {}).get("DLGLOAD", 0)),
                        maxload=int(attrs.get("MAXLOAD", 0)),
                    )
                )
        return workers

    def add_user(self, user: str, password: str) -> None:
        """Let an agent device register without a restart (until the next restart)."""
        self.rpc("htable.sets", "auth", user, digest_ha1(user, self.realm, password))

    def remove_user(self, user: str) -> None:
        self.rpc("htable.delete", "auth", user)

    def ping(self, timeout: float = 1.0) -> bool:
        """True when the edge answers a SIP OPTIONS over UDP with 200."""
        local = "127.0.0.1" if self.host in ("0.0.0.0", "127.0.0.1") else self.host
        return sip_options(self.host, self.sip_port, timeout=timeout, local_ip=local) == 200


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    from config.loader import ConfigError, load

    parser = argparse.ArgumentParser(prog="python -m pbx.edge", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="write kamailio.cfg and its lists for inspection")
    render.add_argument("--config", type=Path, default=None, help="kefu YAML (default: demo)")
    render.add_argument("--run-dir", type=Path, required=True)
    render.add_argument("--check", action="store_true", help="also run `kamailio -c` on it")
    args = parser.parse_args(argv)

    try:
        settings = load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    files = render_edge(settings, run_dir=args.run_dir)
    for path in (files.config, files.dispatcher_list, files.address_list):
        print(path)
    if args.check:
        try:
            check_config(files)
        except EdgeError as exc:
            print(exc, file=sys.stderr)
            return 1
        print("kamailio -c: configuration OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
