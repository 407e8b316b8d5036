"""The shape of a kefu configuration file, validated once at load.

Every section of `config/demo.yaml` has a model here; call flows are `ivr.schema.Flow`
(inline under `ivr:` or in `flow_files`). Cross-references (a DID that names a flow, a
flow node that names a queue or skill, an agent skill that no queue uses) are checked
in `Settings._check_references`, so a typo is caught before a single call sees it.
`config.loader` turns validation errors into `file: path: expectation` lines.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from config.crm import CrmSettings
from ivr.schema import Flow
from ivr.validate import validate_flows

SipUser = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.+-]{1,64}$")]
Digits = Annotated[str, StringConstraints(pattern=r"^[0-9*#]{1,32}$")]
Host = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.:-]{0,252}[A-Za-z0-9])?$")
]
"""An IP address or host name (it is written into the edge's config)."""
Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
Origin = Annotated[
    str,
    StringConstraints(
        pattern=r"^https?://[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?(:[0-9]{1,5})?$"
    ),
]
"""A web page's origin as browsers send it: scheme://host[:port], no path."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Prompt(_Model):
    """Either text rendered by espeak-ng (cached) or a WAV file the operator supplies."""

    text: str | None = None
    file: Path | None = None
    voice: str = "en-us"

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.text is None) == (self.file is None):
            raise ValueError("give exactly one of 'text' or 'file'")
        return self


_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def host_port(value: str, default_port: int = 5060) -> tuple[str, int]:
    """`host` or `host:port` (IPv4 address or host name) -> (host, port).

    A ValueError says what is wrong; the result is written into the edge's config."""
    match = _HOST_PORT.match(value)
    if match is None:
        if value.startswith(("sip:", "sips:")):
            hint = " (without the 'sip:' scheme)"
        elif value.count(":") > 1:
            hint = " (IPv6 addresses are not supported)"
        else:
            hint = ""
        raise ValueError(f"{value!r} is not host or host:port{hint}, e.g. 203.0.113.5:5060")
    host, port = match["host"], match["port"]
    where = "" if port is None else f" in {value!r}"
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r}{where} is not an IPv4 address") from None
    elif not all(_LABEL.match(label) for label in host.split(".")):
        raise ValueError(f"{host!r}{where} is not a host name")
    number = default_port if port is None else int(port)
    if not 1 <= number <= 65535:
        raise ValueError(f"port {number} in {value!r} is not between 1 and 65535")
    return host, number


class Trunk(_Model):
    name: Name
    allow: list[str] = Field(min_length=1, description="source IPs or CIDR networks")
    outbound: str | None = Field(
        None,
        description="where calls out through this trunk go: host or host:port (port 5060 "
        "when left out); None: the trunk only brings calls in",
    )
    outbound_prefix: str = Field(
        "", pattern=r"^[0-9]{0,16}$", description="digits put before every number dialled out"
    )

    @field_validator("outbound")
    @classmethod
    def _outbound(cls, value: str | None) -> str | None:
        if value is not None:
            host_port(value)
        return value

    @model_validator(mode="after")
    def _networks(self) -> Self:
        for entry in self.allow:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ValueError(f"allow: {entry!r} is not an IP address or network") from exc
        if self.outbound_prefix and self.outbound is None:
            raise ValueError("outbound_prefix: the trunk has no 'outbound' address to dial out to")
        return self

    @property
    def outbound_address(self) -> str | None:
        """`host:port` that calls out through this trunk go to; None if there is none."""
        if self.outbound is None:
            return None
        host, port = host_port(self.outbound)
        return f"{host}:{port}"


class Edge(_Model):
    """The Kamailio edge: the only SIP port the world sees."""

    sip_host: Host = "127.0.0.1"
    sip_port: int = Field(5060, ge=1, le=65535)
    rpc_port: int = Field(5071, ge=1, le=65535, description="JSON-RPC over HTTP, loopback only")
    trunks: list[Trunk] = Field(min_length=1)
    probe_interval_s: int = Field(5, ge=1, le=300)
    retry_after_s: int = Field(5, ge=1, le=3600)
    register_max_expires_s: int = Field(
        600,
        ge=60,
        description="registrations live in the edge's memory: after an edge restart, "
        "phones are back at their next refresh, at most this long",
    )
    ws_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="SIP over WebSocket for browser softphones (JsSIP), plain ws on "
        "sip_host; their media goes through rtpengine. None: no browsers, no rtpengine",
    )
    wss_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="SIP over secure WebSocket (wss) on sip_host, for agent desktops "
        "served over https (a browser allows getUserMedia on plain http only from "
        "localhost); needs tls_cert and tls_key",
    )
    tls_cert: Path | None = Field(None, description="PEM certificate (chain) for wss_port")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    ws_origins: list[Origin] = Field(
        default_factory=list,
        description="pages allowed to open the WebSocket (the Origin header, e.g. "
        "http://127.0.0.1:8080); any other handshake gets 403",
    )

    @model_validator(mode="after")
    def _trunk_names(self) -> Self:
        # The edge picks an outbound trunk by name (`;trunk=<name>`): names must be unique,
        # and an outbound address that is the edge itself would loop.
        problems: list[tuple[tuple[str | int, ...], str]] = []
        seen: set[str] = set()
        for i, trunk in enumerate(self.trunks):
            if trunk.name in seen:
                problems.append((("trunks", i, "name"), f"trunk {trunk.name!r} is named twice"))
            seen.add(trunk.name)
            if trunk.outbound_address == f"{self.sip_host}:{self.sip_port}":
                problems.append(
                    (
                        ("trunks", i, "outbound"),
                        f"{trunk.outbound!r} is the edge itself: calls would loop",
                    )
                )
        if self.wss_port is not None:
            for key in ("tls_cert", "tls_key"):
                if getattr(self, key) is None:
                    problems.append(((key,), "wss_port needs a PEM file here"))
        if self.webrtc and not self.ws_origins:
            problems.append(
                (
                    ("ws_origins",),
                    "name the pages that may open the WebSocket (e.g. http://127.0.0.1:8080)",
                )
            )
        if problems:
            raise ReferenceProblems(problems)
        return self

    @property
    def webrtc(self) -> bool:
        """Browsers can register: the edge listens for WebSocket, `kefu serve` runs rtpengine."""
        return self.ws_port is not None or self.wss_port is not None


class Rtpengine(_Model):
    """The media relay between browsers (WebRTC: ICE, DTLS-SRTP) and the workers (plain
    RTP). Only started when `edge.ws_port` or `edge.wss_port` is set; userspace
    forwarding, no kernel module."""

    ng_port: int = Field(
        22222, ge=1, le=65535, description="its control port (ng protocol, UDP, loopback)"
    )
    interface: Host = Field(
        "127.0.0.1",
        description="the address its media sockets bind to and put in SDP (the one "
        "browsers and workers can reach)",
    )
    port_min: int = Field(30000, ge=1024, le=65535, description="first UDP media port")
    port_max: int = Field(31999, ge=1024, le=65535, description="last UDP media port")
    timeout_s: int = Field(
        60, ge=1, le=3600, description="drop a call's media state after this long without RTP"
    )

    @model_validator(mode="after")
    def _range(self) -> Self:
        # rtpengine takes an even/odd pair per stream and a browser call has two legs.
        if self.port_max - self.port_min < 3:
            raise ReferenceProblems(
                [(("port_max",), f"needs at least 4 ports from port_min={self.port_min}")]
            )
        return self


class Broker(_Model):
    """MQTT broker. `embedded: true` means `kefu serve` starts mosquitto itself."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    embedded: bool = True


class Pbx(_Model):
    workers: int = Field(8, ge=1, le=512)
    worker_base_port: int = Field(5100, ge=1024, le=65000)
    rtp_base_port: int = Field(20000, ge=1024, le=65534)  # the whole range is checked below
    rtp_ports_per_worker: int = Field(40, ge=8, le=1000)
    max_legs: int = Field(4, ge=2, le=4, description="the pjsua2 wheel holds at most 4 calls")
    clock_rate: Literal[8000, 16000] = 8000
    rtp_timeout_s: float = Field(
        60.0, ge=0, le=3600, description="hang up a leg that sends no RTP this long (0: never)"
    )

    @property
    def trunk_calls_per_worker(self) -> int:
        """Each caller needs its agent leg in the same process: two legs per conversation."""
        return self.max_legs // 2


class Http(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    allowed_origins: list[str] = Field(
        [],
        description="browser origins allowed to open agent sockets (scheme://host:port); "
        "default: this server's own address, as 127.0.0.1 and localhost",
    )

    def origins(self) -> frozenset[str]:
        if self.allowed_origins:
            return frozenset(o.rstrip("/") for o in self.allowed_origins)
        hosts = {self.host, "127.0.0.1", "localhost"} - {"0.0.0.0", "::"}
        return frozenset(f"http://{h}:{self.port}" for h in hosts)


class User(_Model):
    """A supervisor or admin who signs in to the web API (agents sign in as themselves)."""

    role: Literal["supervisor", "admin"]
    name: str | None = None
    password: str | None = Field(None, min_length=8, description="demo only: prefer the hash")
    password_hash: str | None = Field(None, description="argon2, from `kefu passwd`")

    @model_validator(mode="after")
    def _one_secret(self) -> Self:
        if (self.password is None) == (self.password_hash is None):
            raise ValueError("give exactly one of 'password' or 'password_hash'")
        if self.password_hash is not None and not self.password_hash.startswith("$argon2"):
            raise ValueError("password_hash must be an argon2 hash (see `kefu passwd`)")
        return self


Proficiency = Annotated[int, Field(ge=1, le=5)]
Strategy = Literal[
    "longest_idle", "least_occupied", "most_skilled", "round_robin", "weighted_random"
]
"""The names in `acd.strategies.STRATEGIES` (a unit test keeps the two lists equal)."""


class Agent(_Model):
    sip_user: SipUser
    password: str = Field(min_length=8)
    name: str | None = None
    skills: dict[Name, Proficiency] = Field(min_length=1)
    languages: list[str] = Field(
        default_factory=list, description="calls in these languages; empty: any language"
    )
    auto_available: bool = False
    web_password_hash: str | None = Field(
        None, description="argon2 hash for the web sign-in; default: the SIP password"
    )
    no_answer_limit: int = Field(
        2, ge=1, le=20, description="offers missed in a row before the agent is set away"
    )


class Step(_Model):
    """From `after_s` of waiting on, agents need `min_proficiency` in the queue's skills."""

    after_s: float = Field(ge=0)
    min_proficiency: Proficiency


class ServiceLevel(_Model):
    threshold_s: float = Field(20.0, gt=0, le=3600)
    target_pct: float = Field(80.0, gt=0, le=100)


class Overflow(_Model):
    """Where a call goes when its queue gives up on it."""

    kind: Literal["queue", "voicemail", "callback", "ivr"]
    target: str = Field(
        "", description="queue: a queue; ivr: a menu; callback: queue to wait in (default: same)"
    )


class Queue(_Model):
    skill: Name | None = Field(None, description="shorthand: one required skill at level 1")
    skills: dict[Name, Proficiency] = Field(
        default_factory=dict, description="required skills with minimum proficiency"
    )
    strategy: Strategy = "longest_idle"
    steps: list[Step] = Field(default_factory=list, description="widen with wait")
    service_level: ServiceLevel = ServiceLevel()
    ring_timeout_s: float = Field(15.0, gt=0, le=300)
    wrapup_s: float = Field(10.0, ge=0, le=3600)
    max_wait_s: float | None = Field(None, gt=0)
    max_length: int | None = Field(None, ge=1)
    join_empty: bool = True
    leave_when_empty: bool = False
    overflow: Overflow | None = None
    priority: int = Field(0, ge=-100, le=100)
    preferred_agent_s: float = Field(0.0, ge=0, le=3600)
    music_on_hold: Prompt | None = None

    @property
    def required(self) -> dict[str, int]:
        out = dict(self.skills)
        if self.skill is not None:
            out.setdefault(self.skill, 1)
        return out

    @model_validator(mode="after")
    def _rules(self) -> Self:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.skill is None and not self.skills:
            problems.append((("skills",), "give 'skill' or 'skills' (required skills)"))
        for i, step in enumerate(self.steps[1:], start=1):
            before = self.steps[i - 1]
            if step.after_s <= before.after_s:
                problems.append(
                    (
                        ("steps", i, "after_s"),
                        f"must be later than step {i - 1} ({before.after_s:g} s)",
                    )
                )
            if step.min_proficiency > before.min_proficiency:
                problems.append(
                    (
                        ("steps", i, "min_proficiency"),
                        f"steps must widen: at most {before.min_proficiency} (step {i - 1})",
                    )
                )
        rules = [
            name
            for name, on in (
                ("max_wait_s", self.max_wait_s is not None),
                ("max_length", self.max_length is not None),
                ("join_empty", not self.join_empty),
                ("leave_when_empty", self.leave_when_empty),
            )
            if on
        ]
        if rules and self.overflow is None:
            problems.append(
                (("overflow",), f"required key is missing (the target of {', '.join(rules)})")
            )
        if problems:
            raise ReferenceProblems(problems)
        return self


class Did(_Model):
    ivr: Name
    """The call flow (a name under `ivr:`) that answers calls to this number."""


class CallPriority(_Model):
    """How CRM facts about the caller raise a call's queue priority (added up)."""

    vip: int = Field(20, ge=0, le=100)
    open_ticket: dict[
        Literal["urgent", "high", "normal", "low"], Annotated[int, Field(ge=0, le=100)]
    ] = {
        "urgent": 10,
        "high": 5,
    }


class Recording(_Model):
    enabled: bool = True


class Database(_Model):
    url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite in the data dir")


class Settings(_Model):
    edge: Edge
    broker: Broker = Broker()
    pbx: Pbx = Pbx()
    rtpengine: Rtpengine = Rtpengine()
    http: Http = Http()
    database: Database = Database()
    recording: Recording = Recording()
    priority: CallPriority = CallPriority()
    demo_customers: bool = Field(
        False, description="seed the demo customers and tickets into an empty database"
    )
    music_on_hold: Prompt | None = Field(
        None, description="None: a built-in tune synthesised with sox"
    )
    agents: dict[Name, Agent] = Field(min_length=1)
    users: dict[Name, User] = Field({}, description="supervisors and admins of the web API")
    crm: CrmSettings = Field(CrmSettings(), description="customer look-ups and write-back")
    queues: dict[Name, Queue] = Field(min_length=1)
    flow_files: list[Path] = Field(
        [],
        description="files of call flows (top level `ivr:`), relative to this file; "
        "their flows join the ones written under `ivr:` here",
    )
    ivr: dict[Name, Flow] = Field({}, description="call flows by name (see ivr.schema)")
    dids: dict[Digits, Did] = Field(min_length=1)

    def named_ports(self) -> dict[str, int]:
        """Every single port the center listens on, by its config path (not the ranges)."""
        ports = {
            "edge.sip_port": self.edge.sip_port,
            "edge.rpc_port": self.edge.rpc_port,
            "http.port": self.http.port,
        }
        if self.broker.embedded:
            ports["broker.port"] = self.broker.port
        if self.edge.ws_port is not None:
            ports["edge.ws_port"] = self.edge.ws_port
        if self.edge.wss_port is not None:
            ports["edge.wss_port"] = self.edge.wss_port
        if self.edge.webrtc:
            ports["rtpengine.ng_port"] = self.rtpengine.ng_port
        return ports

    @model_validator(mode="after")
    def _check_references(self) -> Self:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        queue_names = ", ".join(sorted(self.queues))
        ivr_names = ", ".join(sorted(self.ivr)) or "none"
        if not self.ivr:
            problems.append((("ivr",), "no call flow: write one under ivr: or in flow_files"))
        for did, target in self.dids.items():
            if target.ivr not in self.ivr:
                problems.append(
                    (("dids", did, "ivr"), f"unknown IVR flow {target.ivr!r} (ivr: {ivr_names})")
                )
        skills = {s for q in self.queues.values() for s in q.required}
        problems += [
            (("ivr", *where), message)
            for where, message in validate_flows(
                self.ivr, queues=self.queues, skills=skills, agents=self.agents
            )
        ]
        for queue_name, queue in self.queues.items():
            spill = queue.overflow
            if spill is None:
                continue
            where = ("queues", queue_name, "overflow", "target")
            if spill.kind in ("callback", "voicemail"):
                # The queue engine keeps the place (and is tested for it), but the media
                # side cannot yet place the outbound call or record a message.
                problems.append(
                    (
                        ("queues", queue_name, "overflow", "kind"),
                        f"overflow to {spill.kind} is not available yet in the running "
                        "center (use 'queue' or 'ivr')",
                    )
                )
                continue
            if spill.kind in ("queue", "callback") and spill.target:
                if spill.target not in self.queues:
                    problems.append(
                        (where, f"unknown queue {spill.target!r} (queues: {queue_names})")
                    )
                elif spill.kind == "queue" and spill.target == queue_name:
                    problems.append((where, "a queue cannot overflow into itself"))
            elif spill.kind == "queue":
                problems.append((where, f"name the queue to overflow to (queues: {queue_names})"))
            elif spill.kind == "ivr" and spill.target not in self.ivr:
                problems.append((where, f"unknown IVR flow {spill.target!r} (ivr: {ivr_names})"))
        for name in self.users:
            if name in self.agents:
                problems.append((("users", name), f"{name!r} is already an agent's sign-in name"))
        users: dict[str, str] = {}
        for agent_id, agent in self.agents.items():
            if agent.sip_user in users:
                problems.append(
                    (
                        ("agents", agent_id, "sip_user"),
                        f"SIP user {agent.sip_user!r} already belongs to {users[agent.sip_user]}",
                    )
                )
            users[agent.sip_user] = agent_id
            for skill in agent.skills:
                if skill not in skills:
                    problems.append(
                        (
                            ("agents", agent_id, "skills", skill),
                            f"no queue uses skill {skill!r} (skills: {', '.join(sorted(skills))})",
                        )
                    )
        ports = self.named_ports()
        worker_ports = range(
            self.pbx.worker_base_port, self.pbx.worker_base_port + self.pbx.workers
        )
        for name, port in ports.items():
            if port in worker_ports:
                problems.append(
                    (
                        ("pbx", "worker_base_port"),
                        f"worker SIP ports {worker_ports.start}-{worker_ports.stop - 1} "
                        f"overlap {name}={port}",
                    )
                )
        if len(set(ports.values())) != len(ports):
            problems.append((("edge",), f"ports must differ: {ports}"))
        pbx = self.pbx
        rtp = range(pbx.rtp_base_port, pbx.rtp_base_port + pbx.workers * pbx.rtp_ports_per_worker)
        if rtp.stop - 1 > 65535:
            problems.append(
                (
                    ("pbx", "rtp_base_port"),
                    f"{pbx.workers} workers x {pbx.rtp_ports_per_worker} RTP ports from "
                    f"{rtp.start} run past 65535",
                )
            )
        clashes = [f"{name}={port}" for name, port in ports.items() if port in rtp]
        clashes += [f"worker SIP port {p}" for p in worker_ports if p in rtp][:1]
        if clashes:
            problems.append(
                (
                    ("pbx", "rtp_base_port"),
                    f"RTP ports {rtp.start}-{rtp.stop - 1} overlap {', '.join(clashes)}",
                )
            )
        if self.edge.webrtc:
            problems += self._rtpengine_clashes(ports, worker_ports, rtp)
        if problems:
            raise ReferenceProblems(problems)
        return self

    def _rtpengine_clashes(
        self, ports: dict[str, int], worker_ports: range, worker_rtp: range
    ) -> list[tuple[tuple[str | int, ...], str]]:
        """rtpengine's media ports must stay clear of every other port kefu binds."""
        media = range(self.rtpengine.port_min, self.rtpengine.port_max + 1)
        clashes = [f"{name}={port}" for name, port in ports.items() if port in media]
        clashes += [f"worker SIP port {p}" for p in worker_ports if p in media][:1]
        if worker_rtp.start < media.stop and media.start < worker_rtp.stop:
            clashes.append(f"the workers' RTP ports {worker_rtp.start}-{worker_rtp.stop - 1}")
        if not clashes:
            return []
        return [
            (
                ("rtpengine", "port_min"),
                f"rtpengine media ports {media.start}-{media.stop - 1} "
                f"overlap {', '.join(clashes)}",
            )
        ]


class ReferenceProblems(ValueError):
    """Several cross-reference errors at once, each with its path inside the file."""

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, p))}: {m}" for p, m in problems))
