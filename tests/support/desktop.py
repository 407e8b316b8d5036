"""The agent desktop in a real browser, for the e2e tests: a center that takes browser
phones (Kamailio WebSocket + rtpengine), Debian's Chromium with a fake microphone, an
agent signed in with their JsSIP phone registered, and a SIPp caller dialling in."""

from __future__ import annotations

import asyncio
import math
import struct
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pbx.procs import free_port
from tests.support.center import Center, center_config, pick_ports, start_center
from tests.support.sipp import SippResult, run_sipp

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page, Playwright

CHROMIUM = "/usr/bin/chromium"
BUNDLE = Path(__file__).resolve().parents[2] / "softphone_web" / "static" / "vendor" / "jssip.js"


def tone_wav(path: Path, hz: float, seconds: float) -> Path:
    """A 48 kHz sine WAV: the browser's fake microphone."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48000)
        frames = b"".join(
            struct.pack("<h", int(12000 * math.sin(2 * math.pi * hz * i / 48000)))
            for i in range(int(48000 * seconds))
        )
        out.writeframes(frames)
    return path


@contextmanager
def browser_center(
    tmp: Path, mutate: Callable[[dict[str, Any]], None] | None = None, **config_kw: Any
) -> Iterator[Center]:
    """One worker, browsers on the edge's WebSocket (origin: the center's own page),
    rtpengine for their media; stopped (cleanly, or the test fails) at the end."""
    ports = pick_ports(workers=1)
    taken = set(ports.values())
    ws, ng = free_port(avoid=taken), free_port(avoid=taken)
    media = free_port(span=40, avoid=taken | {ws, ng})
    config = center_config(ports, workers=1, **config_kw)
    config["edge"] |= {"ws_port": ws, "ws_origins": [f"http://127.0.0.1:{ports['http']}"]}
    config["rtpengine"] = {"ng_port": ng, "port_min": media, "port_max": media + 39}
    if mutate is not None:
        mutate(config)
    running = start_center(tmp, config, ports)
    try:
        yield running
    finally:
        assert running.proc.stop(timeout=30) == 0, running.proc.log_tail(30)


async def launch(pw: Playwright, mic: Path) -> Browser:
    """Headless Chromium whose microphone plays `mic`, with no permission prompts."""
    assert BUNDLE.is_file(), f"{BUNDLE} is missing: run scripts/bootstrap"
    return await pw.chromium.launch(
        executable_path=CHROMIUM, headless=True,
        args=["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
              f"--use-file-for-fake-audio-capture={mic}",
              "--autoplay-policy=no-user-gesture-required"],
    )  # fmt: skip


async def sign_in(browser: Browser, center: Center, user: str, password: str) -> Page:
    """A page on the desktop, signed in, its browser phone registered."""
    page = await browser.new_page()
    await page.goto(center.http + "/")
    await page.fill("input[name=user]", user)
    await page.fill("input[name=password]", password)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("#desk:not([hidden])")
    await page.wait_for_function(
        "document.getElementById('phone-status').textContent === 'phone ready'",
        timeout=15_000,
    )
    return page


def dial_in(center: Center, n: int, caller: str, hold_ms: int) -> asyncio.Task[SippResult]:
    """A SIPp caller from `caller` on DID 1000 who presses 1 (sales) and stays `hold_ms`."""
    return asyncio.create_task(asyncio.to_thread(
        run_sipp, "caller.xml", center.edge, local_port=center.sipp_port(n),
        media_port=free_port(span=4), service="1000", timeout_s=60, timeout=90,
        keys={"caller": caller, "digit": "1", "dtmf_ms": "1000", "hold_ms": str(hold_ms)},
    ))  # fmt: skip
