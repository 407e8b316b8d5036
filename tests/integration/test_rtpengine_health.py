"""`/api/health` and the real rtpengine: the core pings the relay's ng port off its event
loop and reports it as a component while the edge takes WebSockets.

Each test starts its own rtpengine (directly, or through `kefu serve`) on free loopback
ports and stops it by PID; a relay frozen with SIGSTOP is always continued again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from config.schema import Rtpengine as RtpengineSettings
from pbx.procs import free_port, wait_until
from pbx.rtpengine import Rtpengine
from tests.support.center import center_config, pick_ports, start_center
from tests.support.core_harness import build, close, harness_data

pytestmark = pytest.mark.integration


def relay_settings(avoid: set[int]) -> dict[str, int]:
    ng = free_port(avoid=avoid)
    media = free_port(span=40, avoid=avoid)
    return {"ng_port": ng, "port_min": media, "port_max": media + 39}


async def test_core_sees_rtpengine_stop_and_start_again(tmp_path: Path) -> None:
    """A core whose edge takes WebSockets: rtpengine ok while it runs, not ok (refused,
    at once) once it is stopped, ok again when a new one answers on the same port."""
    relay_cfg = relay_settings(set())
    data = harness_data()
    data["rtpengine"] = relay_cfg
    h = await build(tmp_path, data)
    relay = Rtpengine()
    try:
        settings = RtpengineSettings(**relay_cfg)
        relay.start(settings, tmp_path / "run", tmp_path / "rtpengine.log")
        await h.core._check_rtpengine()
        assert h.core.health()["components"]["rtpengine"] == {
            "ok": True, "ng_port": relay_cfg["ng_port"],
        }  # fmt: skip
        relay.stop()
        started = time.monotonic()
        await h.core._check_rtpengine()
        report = h.core.health()
        assert report["status"] == "degraded"
        assert report["components"]["rtpengine"]["ok"] is False
        assert "Connection refused" in report["components"]["rtpengine"]["error"], report
        assert time.monotonic() - started < 0.4  # not the ping timeout
        relay.start(settings, tmp_path / "run", tmp_path / "rtpengine-2.log")
        await h.core._check_rtpengine()
        assert h.core.health()["components"]["rtpengine"]["ok"] is True
    finally:
        relay.stop()
        close(h)


@pytest.mark.e2e
def test_kefu_serve_health_follows_rtpengine(tmp_path: Path) -> None:
    """`kefu serve` with browsers on: health is ok with rtpengine in it; a hung relay
    (SIGSTOP) makes it degraded with rtpengine not ok (ping timed out) while the API
    still answers; continued, ok again; killed, `kefu serve` restarts it and ok again."""
    ports = pick_ports(1)
    taken = set(ports.values())
    ws = free_port(avoid=taken)
    relay_cfg = relay_settings(taken)
    config = center_config(ports, workers=1)
    config["edge"] |= {"ws_port": ws, "ws_origins": [f"http://127.0.0.1:{ports['http']}"]}
    config["rtpengine"] = relay_cfg
    center = start_center(tmp_path, config, ports)
    pid_file = center.data_dir / "run" / "rtpengine.pid"

    def health() -> dict[str, Any]:
        return dict(center.get("/api/health"))

    def relay_is(ok: bool) -> bool:
        report = health()
        return bool(report["components"]["rtpengine"]["ok"] is ok)

    frozen = 0
    try:
        report = health()
        assert report["status"] == "ok", report
        assert report["components"]["rtpengine"] == {"ok": True, "ng_port": relay_cfg["ng_port"]}
        frozen = int(pid_file.read_text())
        os.kill(frozen, signal.SIGSTOP)
        wait_until(lambda: relay_is(False), 10, "health: rtpengine not ok", interval=0.2)
        started = time.monotonic()
        report = health()  # the core's loop is not held up by the ping
        assert time.monotonic() - started < 0.5
        assert report["status"] == "degraded", report
        assert "timed out" in report["components"]["rtpengine"]["error"], report
        assert all(v["ok"] for k, v in report["components"].items() if k != "rtpengine")
        os.kill(frozen, signal.SIGCONT)
        frozen = 0
        wait_until(lambda: health()["status"] == "ok", 10, "health ok again", interval=0.2)

        first = int(pid_file.read_text())
        os.kill(first, signal.SIGKILL)
        wait_until(
            lambda: (
                pid_file.read_text().strip() not in ("", str(first)) and health()["status"] == "ok"
            ),
            20,
            "rtpengine restarted by kefu serve and health ok",
            interval=0.2,
        )
    finally:
        if frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen, signal.SIGCONT)
        code = center.proc.stop(timeout=30)
    assert code == 0, center.proc.log_tail(30)
    core_log = center.log("core")
    assert "rtpengine unavailable" in core_log and "rtpengine answers" in core_log
