"""End to end in a real browser: Debian's Chromium (Playwright) opens the agent desktop
served by `kefu serve`, signs alice in, her browser phone registers over the edge's
WebSocket; a SIPp caller (a VIP in the CRM) dials in; the page shows the customer and
her open ticket while the phone is still ringing; alice answers in the page and audio
flows both ways through rtpengine. Then an unknown caller: alice creates the customer
from the pop's form while it rings, her wrap-up opens their ticket, Ready ends the
wrap-up, and the call shows in her history. Screenshots land in the test's artifacts.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.center import Center
from tests.support.desktop import browser_center, dial_in, launch, sign_in, tone_wav

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def center(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Center]:
    def demo(config: dict[str, Any]) -> None:
        config["demo_customers"] = True

    # a wrap-up long enough to see its countdown and end it with Ready
    with browser_center(tmp_path_factory.mktemp("desktop-center"), demo, wrapup_s=20) as c:
        yield c


def test_agent_signs_in_sees_the_pop_while_ringing_and_answers_in_the_page(
    center: Center, artifacts: Path
) -> None:
    from playwright.async_api import async_playwright

    mic = tone_wav(artifacts / "mic.wav", 440, 60)

    async def scenario() -> dict[str, Any]:
        async with async_playwright() as pw:
            browser = await launch(pw, mic)
            try:
                page = await sign_in(browser, center, "alice", "alice-demo-secret")
                await asyncio.to_thread(center.wait_agents, ["alice"])
                caller = dial_in(center, 1, "5551234", hold_ms=12_000)
                # ringing: the Answer button is live; the pop must already be on screen
                await page.wait_for_selector("#phone-answer:not([disabled])", timeout=30_000)
                ringing = {
                    "customer": await page.inner_text("#customer"),
                    "tickets": await page.inner_text("#tickets"),
                    "ivr": await page.inner_text("#ivr-path"),
                    "status": await page.inner_text("#call-status"),
                }
                await page.screenshot(path=str(artifacts / "ringing.png"), full_page=True)
                await page.click("#phone-answer")
                await page.wait_for_function(
                    "document.getElementById('call-status').textContent === 'On the call'",
                    timeout=10_000,
                )
                await asyncio.sleep(3)  # talk
                await page.screenshot(path=str(artifacts / "talking.png"), full_page=True)
                result = await caller
                assert result.ok, result.output[-3000:]
                await page.wait_for_function(
                    "document.getElementById('call-status').textContent.startsWith('Call ended')",
                    timeout=15_000,
                )
                # wrap-up: a disposition, notes, a new ticket, and her open ticket linked
                await page.wait_for_selector("#wrapup:not([hidden])")
                await page.select_option("select[name=disposition]", "follow-up needed")
                await page.fill("textarea[name=notes]", "Invoice 8812 charged twice; refund asked")
                await page.fill("input[name=subject]", "Refund invoice 8812")
                await page.select_option("select[name=priority]", "high")
                await page.fill("input[name=link]", "T-2041")
                await page.click("#wrapup button[type=submit]")
                await page.wait_for_function(
                    "document.getElementById('wrapup-result').textContent.startsWith('Saved')",
                    timeout=10_000,
                )
                await page.screenshot(path=str(artifacts / "wrapped-up.png"), full_page=True)
                ringing["wrapup"] = await page.inner_text("#wrapup-result")
                return ringing
            finally:
                await browser.close()

    ringing = asyncio.run(scenario())
    assert "Wang Fang" in ringing["customer"] and "VIP" in ringing["customer"]
    assert "T-2041" in ringing["tickets"]
    assert "menu: digit 1" in ringing["ivr"]
    assert ringing["status"].startswith("Ringing")
    (row,) = center.wait_calls(1, where=lambda r: r["agent"] == "alice", recorded=True)
    assert row["caller"] == "5551234" and row["answered_at"] is not None
    assert row["caller_rtp_rx"] > 100 and row["agent_rtp_rx"] > 100  # audio both ways
    assert row["customer_id"] == "c-1001"
    assert row["disposition"] == "follow-up needed" and "8812" in row["notes"]
    assert row["wrap_up_s"] is not None and row["wrap_up_s"] >= 0
    assert "T-2041" in ringing["wrapup"]
    with sqlite3.connect(center.data_dir / "kefu.sqlite3") as db:
        linked = {t for (t,) in db.execute(
            "SELECT ticket_id FROM call_tickets WHERE call_id = ?", (row["call_id"],))}  # fmt: skip
        (subject, priority) = db.execute(
            "SELECT subject, priority FROM tickets WHERE ticket_id IN "
            "(SELECT ticket_id FROM call_tickets WHERE call_id = ? AND ticket_id != 'T-2041')",
            (row["call_id"],),
        ).fetchone()
    assert "T-2041" in linked and len(linked) == 2
    assert (subject, priority) == ("Refund invoice 8812", "high")


def test_an_unknown_callers_customer_is_created_from_the_pop_and_the_call_is_in_the_history(
    center: Center, artifacts: Path
) -> None:
    from playwright.async_api import async_playwright

    mic = tone_wav(artifacts / "mic.wav", 440, 30)

    async def scenario() -> dict[str, str]:
        async with async_playwright() as pw:
            browser = await launch(pw, mic)
            try:
                page = await sign_in(browser, center, "alice", "alice-demo-secret")
                await page.wait_for_function("document.getElementById('state').textContent")
                if await page.is_visible("#ready"):  # still wrapping up an earlier call
                    await page.click("#ready")
                await asyncio.to_thread(center.wait_agents, ["alice"])
                caller = dial_in(center, 2, "5552013344", hold_ms=6_000)
                await page.wait_for_selector("#new-customer:not([hidden])", timeout=30_000)
                seen = {"phone": await page.input_value("#new-customer input[name=phone]")}
                await page.fill("#new-customer input[name=name]", "Ana Silva")
                await page.fill("#new-customer input[name=company]", "Silva Imports")
                await page.click("#new-customer button[type=submit]")
                await page.wait_for_selector("#new-customer[hidden]", state="attached")
                seen["card"] = await page.inner_text("#customer")
                await page.click("#phone-answer")
                result = await caller
                assert result.ok, result.output[-3000:]
                await page.wait_for_selector("#wrapup:not([hidden])", timeout=15_000)
                await page.wait_for_selector("#ready:not([hidden])", timeout=5_000)
                await page.wait_for_function(
                    "document.getElementById('wrapup-left').textContent.startsWith('wrap-up')"
                )
                seen["countdown"] = await page.inner_text("#wrapup-left")
                await page.fill("input[name=subject]", "First order")
                await page.click("#wrapup button[type=submit]")
                await page.wait_for_function(
                    "document.getElementById('wrapup-result').textContent.startsWith('Saved')",
                    timeout=10_000,
                )
                seen["wrapup"] = await page.inner_text("#wrapup-result")
                await page.click("#ready")
                await page.wait_for_function(
                    "document.getElementById('state').dataset.state === 'available'",
                    timeout=5_000,
                )
                await page.wait_for_function(
                    "document.getElementById('history-list').textContent.includes('Ana Silva')",
                    timeout=10_000,
                )
                await page.click("#history-list li:first-child")
                await page.wait_for_selector("#interaction:not([hidden])")
                seen["interaction"] = await page.inner_text("#interaction")
                await page.screenshot(path=str(artifacts / "history.png"), full_page=True)
                return seen
            finally:
                await browser.close()

    seen = asyncio.run(scenario())
    assert seen["phone"] == "5552013344"
    assert "Ana Silva" in seen["card"] and "Silva Imports" in seen["card"]
    assert seen["countdown"].endswith(" s")
    assert "First order" not in seen["wrapup"] and "T-" in seen["wrapup"]
    assert "Ana Silva" in seen["interaction"] and "First order" not in seen["interaction"]
    (row,) = center.wait_calls(1, where=lambda r: r["caller"] == "5552013344")
    with sqlite3.connect(center.data_dir / "kefu.sqlite3") as db:
        (name,) = db.execute(
            "SELECT name FROM customers WHERE customer_id = ?", (row["customer_id"],)
        ).fetchone()
        (subject,) = db.execute(
            "SELECT subject FROM tickets WHERE customer_id = ?", (row["customer_id"],)
        ).fetchone()
    assert (name, subject) == ("Ana Silva", "First order")
