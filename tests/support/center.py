"""A running `kefu serve` for end-to-end tests and benchmarks: a config on free ports,
a temp data dir, and a handle to read what a person would check (health, agents, the
SQL record of calls). Stopped by PID by whoever started it.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import yaml

from pbx.procs import ManagedProcess, free_port, wait_until
from tests.support.configs import menu_flow
from tests.support.sipp import run_sipp, start_sipp

ADMIN, ADMIN_PASSWORD = "admin", "admin-test-secret"


def center_config(
    ports: dict[str, int],
    *,
    workers: int,
    pool_agents: int = 0,
    ring_timeout_s: float = 10,
    wrapup_s: float = 1,
    flows: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A center on `ports`; `flows` (default: a one-level menu, 1 sales, 2 support,
    3 pool) answer DID 1000 as flow `main`."""
    agents: dict[str, Any] = {
        "alice": {"sip_user": "1001", "password": "alice-demo-secret", "skills": {"sales": 3},
                  "auto_available": True},
        "bob": {"sip_user": "1002", "password": "bob-demo-secret", "skills": {"support": 3},
                "auto_available": True},
    }  # fmt: skip
    for i in range(1, pool_agents + 1):
        agents[f"p{i:02d}"] = {
            "sip_user": f"20{i:02d}",
            "password": f"pool-secret-{i:02d}",
            "skills": {"pool": 1},
            "auto_available": True,
        }
    return {
        "edge": {
            "sip_host": "127.0.0.1",
            "sip_port": ports["sip"],
            "rpc_port": ports["rpc"],
            "probe_interval_s": 2,
            "retry_after_s": 7,
            "trunks": [{"name": "test-trunk", "allow": ["127.0.0.1"]}],
        },
        "broker": {"host": "127.0.0.1", "port": ports["broker"], "embedded": True},
        "pbx": {
            "workers": workers,
            "worker_base_port": ports["workers"],
            "rtp_base_port": ports["rtp"],
            "rtp_ports_per_worker": 20,
        },
        "http": {"host": "127.0.0.1", "port": ports["http"]},
        "agents": agents,
        "users": {ADMIN: {"role": "admin", "password": ADMIN_PASSWORD}},
        "queues": {
            "sales": {"skill": "sales", "ring_timeout_s": ring_timeout_s, "wrapup_s": wrapup_s},
            "support": {"skill": "support", "ring_timeout_s": ring_timeout_s, "wrapup_s": wrapup_s},
            "pool": {"skill": "pool", "ring_timeout_s": ring_timeout_s, "wrapup_s": wrapup_s},
        },
        "ivr": flows or {"main": menu_flow({"1": "sales", "2": "support", "3": "pool"})},
        "dids": {"1000": {"ivr": "main"}},
    }


def pick_ports(workers: int) -> dict[str, int]:
    taken: set[int] = set()
    return {
        "sip": free_port(avoid=taken),
        "rpc": free_port(avoid=taken),
        "http": free_port(avoid=taken),
        "broker": free_port(avoid=taken),
        "workers": free_port(span=workers, avoid=taken),
        "rtp": free_port(span=workers * 20, avoid=taken),
        "sipp": free_port(span=40, avoid=taken),
    }


@dataclass
class Center:
    """A running `kefu serve` and the ways a test looks at it."""

    proc: ManagedProcess
    data_dir: Path
    ports: dict[str, int]
    config: dict[str, Any]
    _token: str | None = None

    @property
    def edge(self) -> str:
        return f"127.0.0.1:{self.ports['sip']}"

    def sipp_port(self, n: int) -> int:
        return self.ports["sipp"] + n

    def desk_phone(
        self,
        name: str,
        user: str,
        password: str,
        n: int,
        log_dir: Path,
        *,
        scenario: str = "agent.xml",
        calls: int = 1,
        timeout_s: int = 120,
        keys: dict[str, str] | None = None,
    ) -> ManagedProcess:
        """An agent's SIPp desk phone: `user` registers (digest auth) from SIPp port `n`,
        then `scenario` answers `calls` calls there, one at a time."""
        port = self.sipp_port(n)
        done = run_sipp(
            "register.xml", self.edge, local_port=port, service=user, auth=(user, password),
            timeout_s=10, timeout=30,
        )  # fmt: skip
        assert done.ok, done.output[-2000:]
        return start_sipp(
            name, log_dir, scenario, self.edge, local_port=port, media_port=free_port(span=4),
            calls=calls, concurrency=1, timeout_s=timeout_s, keys=keys,
        )  # fmt: skip

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    def login(self, user: str = ADMIN, password: str = ADMIN_PASSWORD) -> str:
        """A session token for `user` (the test admin by default)."""
        body = json.dumps({"user": user, "password": password}).encode()
        request = urllib.request.Request(
            f"{self.http}/api/login", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(json.load(response)["token"])

    def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """A JSON request as the test admin (or `token`'s user); an error status raises
        `urllib.error.HTTPError` (with no socket left open)."""
        status, data = self._call(method, path, body, token)
        if status >= 400:
            raise urllib.error.HTTPError(
                f"{self.http}{path}", status, json.dumps(data), Message(), None
            )
        return data

    def get(self, path: str) -> Any:
        """The JSON body of a GET, whatever the status (health is 503 when degraded)."""
        return self._call("GET", path, None, None)[1]

    def _call(self, method: str, path: str, body: Any, token: str | None) -> tuple[int, Any]:
        if token is None:
            if self._token is None:
                self._token = self.login()
            token = self._token
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.http}{path}", data=data, method=method,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            with exc:  # read and closed here, not left to the garbage collector
                raw = exc.read()
            return exc.code, json.loads(raw) if raw else None

    def agent_state(self, agent: str) -> str:
        for row in self.get("/api/agents"):
            if row["agent"] == agent:
                return str(row["state"])
        raise KeyError(agent)

    def wait_agents(self, agents: list[str], state: str = "available", timeout: float = 20) -> None:
        wait_until(
            lambda: all(self.agent_state(a) == state for a in agents),
            timeout,
            f"agents {agents} {state}",
            interval=0.2,
        )

    def wait_until_queued(self, caller: str, timeout: float = 20) -> None:
        """Until a live call from `caller` waits in a queue (the IVR is done with it)."""

        def queued() -> bool:
            return any(
                c["caller"] == caller and c["queue"] and c["position"]
                for c in self.get("/api/calls")
            )

        wait_until(queued, timeout, f"a call from {caller} in a queue", interval=0.2)

    def calls(self) -> list[dict[str, Any]]:
        with sqlite3.connect(self.data_dir / "kefu.sqlite3") as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM calls ORDER BY arrived_at")]

    def wait_calls(
        self,
        count: int,
        timeout: float = 30,
        *,
        where: Callable[[dict[str, Any]], bool] = lambda _row: True,
        recorded: bool = False,
    ) -> list[dict[str, Any]]:
        """The finished calls matching `where`, once there are `count` of them (with
        `recorded`: once their WAVs are confirmed closed)."""

        def done() -> list[dict[str, Any]]:
            try:
                rows = [c for c in self.calls() if c["ended_at"] and where(c)]
            except sqlite3.Error:
                return []
            if recorded:
                rows = [c for c in rows if c["recording_duration_s"] is not None]
            return rows

        wait_until(lambda: len(done()) >= count, timeout, f"{count} finished calls", interval=0.25)
        return done()

    def log(self, name: str) -> str:
        path = self.data_dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def start_center(tmp: Path, config: dict[str, Any], ports: dict[str, int]) -> Center:
    cfg = tmp / "kefu.yaml"
    cfg.write_text(yaml.safe_dump(config))
    data_dir = tmp / "data"
    proc = ManagedProcess(
        "kefu-serve",
        [
            sys.executable,
            "-m",
            "core.cli",
            "serve",
            "--config",
            str(cfg),
            "--data-dir",
            str(data_dir),
        ],
        tmp / "serve.log",
    ).start()
    center = Center(proc=proc, data_dir=data_dir, ports=ports, config=config)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = proc.log_path.read_text(errors="replace") if proc.log_path.exists() else ""
        if "kefu ready" in text:
            return center
        if not proc.alive():
            break
        time.sleep(0.2)
    proc.stop()
    raise RuntimeError(f"kefu serve did not become ready:\n{proc.log_tail(40)}")
