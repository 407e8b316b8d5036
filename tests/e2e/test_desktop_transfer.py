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

from tests.support.center import Center
from tests.support.desktop import browser_center, dial_in, launch, sign_in, tone_wav

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def center(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Center]:
    with browser_center(tmp_path_factory.mktemp("desktop-transfer-center")) as running:
        yield running


def test_agent_consults_a_colleague_and_hands_the_caller_over_from_the_page(
    center: Center, artifacts: Path
) -> None:
    from playwright.async_api import async_playwright

    mic = tone_wav(artifacts / "mic.wav", 440, 60)
    bob = center.desk_phone("bob-phone", "1002", "bob-demo-secret", 2, artifacts)

    async def scenario() -> str:
        async with async_playwright() as pw:
            browser = await launch(pw, mic)
            try:
                page = await sign_in(browser, center, "alice", "alice-demo-secret")
                await asyncio.to_thread(center.wait_agents, ["alice", "bob"])
                caller = dial_in(center, 1, "5550188", hold_ms=20_000)
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
