"""End to end in a real browser: alice, on the agent desktop in Chromium, answers a
SIPp caller, consults bob (a SIPp desk phone) with the page's transfer panel, completes
the transfer, and wraps up her part of the call; bob finishes it. Screenshots land in
the test's artifacts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbx.procs import free_port
from tests.e2e.test_desktop import BUNDLE, CHROMIUM, tone_wav
from tests.support.center import Center, center_config, pick_ports, start_center
from tests.support.sipp import run_sipp, start_sipp

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def center(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Center]:
    tmp = tmp_path_factory.mktemp("desktop-transfer-center")
    ports = pick_ports(workers=1)
    taken = set(ports.values())
    ws, ng = free_port(avoid=taken), free_port(avoid=taken)
    media = free_port(span=40, avoid=taken | {ws, ng})
    config = center_config(ports, workers=1)
    config["edge"] |= {"ws_port": ws, "ws_origins": [f"http://127.0.0.1:{ports['http']}"]}
    config["rtpengine"] = {"ng_port": ng, "port_min": media, "port_max": media + 39}
    running = start_center(tmp, config, ports)
    try:
        yield running
    finally:
        assert running.proc.stop(timeout=30) == 0, running.proc.log_tail(30)


def test_agent_consults_a_colleague_and_hands_the_caller_over_from_the_page(
    center: Center, artifacts: Path
) -> None:
    from playwright.async_api import async_playwright

    assert BUNDLE.is_file(), f"{BUNDLE} is missing: run scripts/bootstrap"
    mic = tone_wav(artifacts / "mic.wav", 440, 60)
    bob_port = center.sipp_port(2)
    registered = run_sipp(
        "register.xml", center.edge, local_port=bob_port, service="1002",
        auth=("1002", "bob-demo-secret"), timeout_s=10, timeout=30,
    )  # fmt: skip
    assert registered.ok, registered.output[-2000:]
    bob = start_sipp(
        "bob-phone", artifacts, "agent.xml", center.edge, local_port=bob_port,
        media_port=free_port(span=4), calls=1, concurrency=1, timeout_s=120,
    )  # fmt: skip

    async def scenario() -> str:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                      f"--use-file-for-fake-audio-capture={mic}",
                      "--autoplay-policy=no-user-gesture-required"],
            )  # fmt: skip
            try:
                page = await browser.new_page()
                await page.goto(center.http + "/")
                await page.fill("input[name=user]", "alice")
                await page.fill("input[name=password]", "alice-demo-secret")
                await page.click("#login-form button[type=submit]")
                await page.wait_for_function(
                    "document.getElementById('phone-status').textContent === 'phone ready'",
                    timeout=15_000,
                )
                await asyncio.to_thread(center.wait_agents, ["alice", "bob"])
                caller = asyncio.create_task(asyncio.to_thread(
                    run_sipp, "caller.xml", center.edge, local_port=center.sipp_port(1),
                    media_port=free_port(span=4), service="1000", timeout_s=60, timeout=90,
                    keys={"caller": "5550188", "digit": "1", "dtmf_ms": "1000",
                          "hold_ms": "20000"},
                ))  # fmt: skip
                await page.wait_for_selector("#phone-answer:not([disabled])", timeout=30_000)
                await page.click("#phone-answer")
                await page.wait_for_selector("#control:not([hidden])", timeout=10_000)

                await page.click("#hold")
                await page.wait_for_function(
                    "document.getElementById('hold').textContent === 'Resume'", timeout=5_000
                )
                await page.click("#hold")  # back with the caller
                await page.wait_for_function(
                    "document.getElementById('hold').textContent === 'Hold'", timeout=5_000
                )
                await page.focus("#transfer-target")  # loads the colleagues and queues
                await page.wait_for_selector(
                    "#transfer-target option[value='agent:bob']", state="attached"
                )
                await page.select_option("#transfer-target", "agent:bob")
                await page.select_option("select[name=mode]", "attended")
                await page.click("#transfer")
                await page.wait_for_selector("#transfer-complete:not([disabled])", timeout=15_000)
                await page.screenshot(path=str(artifacts / "consulting.png"), full_page=True)
                await page.click("#transfer-complete")
                await page.wait_for_selector("#wrapup:not([hidden])", timeout=10_000)
                status = await page.inner_text("#call-status")
                await page.select_option("select[name=disposition]", "escalated")
                await page.fill("textarea[name=notes]", "Billing question: handed to Bob")
                await page.click("#wrapup button[type=submit]")
                await page.wait_for_function(
                    "document.getElementById('wrapup-result').textContent.startsWith('Saved')",
                    timeout=10_000,
                )
                await page.screenshot(path=str(artifacts / "handed-over.png"), full_page=True)
                result = await caller
                assert result.ok, result.output[-3000:]
                return status
            finally:
                await browser.close()

    try:
        status = asyncio.run(scenario())
    finally:
        bob.stop()
    assert "transferred" in status
    (row,) = center.wait_calls(1, where=lambda r: r["caller"] == "5550188", recorded=True)
    assert row["agent"] == "bob" and row["hangup_side"] == "caller"
    (handoff,) = json.loads(row["handoffs"])
    assert (handoff["from"], handoff["to_agent"], handoff["mode"]) == ("alice", "bob",
                                                                       "attended")  # fmt: skip
    assert row["disposition"] == "escalated" and "Bob" in row["notes"]
    assert row["agent_rtp_rx"] > 50  # bob's phone, after the hand-over
