"""The HTTP CRM adapter against a real HTTP server on loopback (http.server in a
thread): look-ups come from the CRM while it is up, from the built-in store while it
is down or slow, and interactions written while it is away reach it once it is back."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from config.crm import CrmSettings, HttpCrmSettings
from crm_link import outbox
from crm_link.adapters import HttpCrm
from crm_link.crm import CrmLink
from crm_link.demo import demo_customers
from crm_link.models import CallRecord
from crm_link.outbox import Backoff
from crm_link.store import CallStore
from pbx.procs import free_port
from tests.support.postgres import db_url, postgres  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
TOKEN = "Bearer s3cret"

# What the external CRM knows: the demo's Maria Lopez under another name and id (so an
# answer shows where it came from), and a customer the built-in store has never seen.
CRM_CUSTOMERS: dict[str, dict[str, Any]] = {
    "+15555678": {
        "id": "sf-0042", "name": "Maria Lopez-Garcia", "company": "Lopez Bakery SL",
        "vip": "true", "tier": "gold", "language": "es", "account_number": "SF-42",
        "phones": ["+15555678"], "tags": "bakery, b2b",
        "tickets": [
            {"id": "SF-T1", "subject": "Oven warranty", "priority": "urgent", "status": "open",
             "assignee": "bob"},
            {"id": "SF-T0", "subject": "Old", "priority": "urgent", "status": "closed"},
        ],
    },
    "+4930123456": {"id": "sf-0099", "name": "Jonas Weber", "phones": ["+4930123456"]},
}  # fmt: skip


class FakeCrm:
    """A small CRM: GET /customers?phone=, GET /accounts/<n>, POST /interactions.
    `mode`: `up`, `slow` (answers after 3 s) or `error` (503); `stop()` closes the
    port (connection refused) and `start()` opens the same port again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mode = "up"
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.interactions: list[tuple[dict[str, Any], dict[str, str]]] = []
        self.reject_interactions = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._release = threading.Event()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        crm = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _gate(self) -> bool:
                crm.requests.append((self.command, self.path, dict(self.headers)))
                if crm.mode == "slow":
                    crm._release.wait(3)
                if crm.mode == "error":
                    self._reply(503, {"error": "maintenance"})
                    return False
                if self.headers.get("Authorization") != TOKEN:
                    self._reply(401, {"error": "who are you"})
                    return False
                return True

            def do_GET(self) -> None:
                if not self._gate():
                    return
                url = urlsplit(self.path)
                if url.path == "/customers":
                    phone = parse_qs(url.query).get("phone", [""])[0]
                    found = CRM_CUSTOMERS.get(phone)
                    self._reply(200, [found] if found else [])
                elif url.path.startswith("/accounts/"):
                    account = unquote(url.path.removeprefix("/accounts/"))
                    found = next((c for c in CRM_CUSTOMERS.values()
                                  if c.get("account_number") == account), None)  # fmt: skip
                    self._reply(200 if found else 404, found or {"error": "no such account"})
                else:
                    self._reply(404, {})

            def do_POST(self) -> None:
                if not self._gate():
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if crm.reject_interactions:
                    self._reply(422, {"error": "disposition unknown"})
                    return
                crm.interactions.append((body, dict(self.headers)))
                self._reply(201, {"ok": True})

        self._release.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._release.set()  # a slow answer in progress ends now
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)

    def gets(self) -> int:
        return sum(1 for method, _, _ in self.requests if method == "GET")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def fake_crm() -> Iterator[FakeCrm]:
    server = FakeCrm()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def store(db_url: str) -> Iterator[CallStore]:  # noqa: F811
    crm_store = CallStore(db_url)
    crm_store.seed(*demo_customers())
    yield crm_store
    crm_store.close()


def settings(base: str, **overrides: Any) -> HttpCrmSettings:
    values: dict[str, Any] = {
        "customer_url": f"{base}/customers?phone={{number}}",
        "account_url": f"{base}/accounts/{{account}}",
        "interaction_url": f"{base}/interactions",
        "auth": TOKEN,
        "timeout_s": 0.5,
        "cache_ttl_s": 60,
        "retry_after_s": 10,
    }
    values.update(overrides)
    return HttpCrmSettings(**values)


def test_a_caller_the_crm_knows_comes_from_the_crm_cached_and_remembered(
    fake_crm: FakeCrm, store: CallStore
) -> None:
    clock = Clock()
    crm = HttpCrm(settings(fake_crm.base), store, clock=clock)
    try:
        card = crm.lookup_customer("+1 555-5678")
        assert card is not None and card.source == "http"
        assert (card.customer_id, card.name, card.vip, card.tags) == (
            "sf-0042", "Maria Lopez-Garcia", True, ["bakery", "b2b"],
        )  # fmt: skip
        assert [t["ticket_id"] for t in card.open_tickets] == ["SF-T1"]  # closed one left out
        assert card.ticket_priority == "urgent" and card.preferred_agent == "bob"
        method, path, headers = fake_crm.requests[0]
        assert (method, path) == ("GET", "/customers?phone=%2B15555678")
        assert headers["Authorization"] == TOKEN

        assert crm.lookup_customer("5555678") == card  # the same number: from the cache
        assert fake_crm.gets() == 1
        clock.t += 61  # the cache entry expired: asked again
        assert crm.lookup_customer("5555678") == card and fake_crm.gets() == 2

        assert crm.lookup_customer("5550000") is None  # the CRM does not know this one
        by_account = crm.lookup_account("SF-42")
        assert by_account is not None and by_account.customer_id == "sf-0042"
        assert crm.lookup_account("nope") is None  # 404

        jonas = crm.lookup_customer("+49 30 123456")  # not in the built-in store
        assert jonas is not None and jonas.customer_id == "sf-0099"

        fake_crm.stop()  # what the CRM said stays known to the built-in store
        remembered = store.lookup("caller", "+4930123456")
        assert remembered is not None and remembered.name == "Jonas Weber"
        by_account = store.lookup("account", "SF-42")
        assert by_account is not None and by_account.name == "Maria Lopez-Garcia"
        assert by_account.open_tickets[0]["ticket_id"] == "SF-T1"
    finally:
        crm.close()


def test_while_the_crm_is_down_or_slow_the_built_in_store_answers(
    fake_crm: FakeCrm, store: CallStore
) -> None:
    clock = Clock()
    crm = HttpCrm(settings(fake_crm.base, cache_ttl_s=0), store, clock=clock, remember=False)
    try:
        fake_crm.stop()  # connection refused
        card = crm.lookup_customer("5551234")
        assert card is not None and (card.name, card.source) == ("Wang Fang", "store")

        fake_crm.start()
        fake_crm.mode = "slow"
        clock.t += 11  # past retry_after_s: the CRM is asked again, and times out
        started = time.monotonic()
        card = crm.lookup_customer("5555678")
        took = time.monotonic() - started
        assert card is not None and (card.name, card.source) == ("Maria Lopez", "store")
        assert 0.4 < took < 2.0, took  # the 0.5 s timeout, not the CRM's 3 s
        asked = fake_crm.gets()
        assert crm.lookup_customer("5555678") is not None  # within retry_after_s:
        assert fake_crm.gets() == asked  # not asked at all

        fake_crm.mode = "error"  # 503 is a failure too
        clock.t += 11
        card = crm.lookup_customer("5555678")
        assert card is not None and card.source == "store" and fake_crm.gets() == asked + 1

        fake_crm.mode = "up"
        clock.t += 11
        card = crm.lookup_customer("5555678")
        assert card is not None and card.source == "http"
        assert crm.failures == 4
    finally:
        crm.close()


def wrapped_up_call(store: CallStore, call_id: str, disposition: str) -> None:
    store.save(
        CallRecord(
            call_id=call_id, sip_call_id="x", caller="5551234", did="1000", ivr_digits="1",
            queue="sales", agent="alice", worker=1, arrived_at=NOW,
            answered_at=NOW + timedelta(seconds=10), ended_at=NOW + timedelta(seconds=70),
            customer_id="c-1001",
        )
    )  # fmt: skip
    store.wrap_up(call_id, disposition=disposition, notes="n", wrap_up_s=12.0,
                  tickets=["T-2041"], at=NOW, actor="alice")  # fmt: skip


def test_interactions_written_while_the_crm_is_away_are_delivered_when_it_is_back(
    fake_crm: FakeCrm, store: CallStore
) -> None:
    link = CrmLink.from_settings(
        store,
        CrmSettings(adapter="http", http=settings(fake_crm.base),
                    outbox={"base_s": 5, "factor": 2, "max_s": 60}),
    )  # fmt: skip
    try:
        fake_crm.stop()
        for call_id in ("c1", "c2"):
            wrapped_up_call(store, call_id, "resolved")
            assert link.record_interaction(call_id, now=NOW) is not None
        # saved again before any try: still one message per call, with the newer payload
        store.wrap_up("c2", disposition="escalated", at=NOW)
        link.record_interaction("c2", now=NOW)
        assert outbox.count(store) == 2

        report = link.drain(now=NOW)  # down: one try, then the round stops
        assert (report.sent, report.retried, report.pending) == (0, 1, 2)
        first = outbox.messages(store)[0]
        assert first.attempts == 1 and first.next_attempt_at == NOW + timedelta(seconds=5)
        assert first.last_error is not None and "ConnectError" in first.last_error

        report = link.drain(now=NOW + timedelta(seconds=1))  # c2 was never tried: due
        assert (report.sent, report.retried) == (0, 1)
        report = link.drain(now=NOW + timedelta(seconds=2))  # both backing off
        assert (report.sent, report.retried, report.pending) == (0, 0, 2)
        report = link.drain(now=NOW + timedelta(seconds=5))  # c1 again: 10 s next time
        assert outbox.messages(store)[0].next_attempt_at == NOW + timedelta(seconds=15)

        fake_crm.start()  # back, on the same port
        report = link.drain(now=NOW + timedelta(seconds=15))
        assert (report.sent, report.retried, report.pending) == (2, 0, 0)
        rows = outbox.messages(store)
        assert [(r.key, r.status, r.attempts) for r in rows] == [
            ("c1", "sent", 3),
            ("c2", "sent", 2),
        ]
        assert all(r.sent_at == NOW + timedelta(seconds=15) for r in rows)
        delivered = {body["call_id"]: (body, headers) for body, headers in fake_crm.interactions}
        assert delivered["c1"][0]["disposition"] == "resolved"
        assert delivered["c2"][0]["disposition"] == "escalated"
        assert delivered["c1"][0]["tickets"] == ["T-2041"] and delivered["c1"][0]["talk_s"] == 60.0
        assert delivered["c1"][1]["Idempotency-Key"] == f"kefu-outbox-{rows[0].id}"
        assert delivered["c1"][1]["Authorization"] == TOKEN

        assert link.drain(now=NOW + timedelta(minutes=5)).sent == 0  # nothing twice
        assert len(fake_crm.interactions) == 2
        # the core saves a call again (its recording finished): nothing new, nothing sent;
        # a real change (a later wrap-up) is an update, sent as a new message
        assert link.record_interaction("c1", now=NOW + timedelta(minutes=6)) == rows[0].id
        store.wrap_up("c1", disposition="escalated", at=NOW)
        link.record_interaction("c1", now=NOW + timedelta(minutes=6))
        assert link.drain(now=NOW + timedelta(minutes=6)).sent == 1
        c1 = [b["disposition"] for b, _ in fake_crm.interactions if b["call_id"] == "c1"]
        assert c1 == ["resolved", "escalated"]
    finally:
        link.close()


def test_an_interaction_the_crm_refuses_is_parked_and_a_503_is_retried(
    fake_crm: FakeCrm, store: CallStore
) -> None:
    link = CrmLink(store, HttpCrm(settings(fake_crm.base), store), backoff=Backoff(base_s=1))
    try:
        wrapped_up_call(store, "c1", "resolved")
        fake_crm.mode = "error"
        link.record_interaction("c1", now=NOW)
        assert link.drain(now=NOW).retried == 1
        fake_crm.mode, fake_crm.reject_interactions = "up", True
        report = link.drain(now=NOW + timedelta(seconds=1))
        assert (report.rejected, report.pending) == (1, 0)
        (row,) = outbox.messages(store)
        assert row.status == "rejected" and "422" in (row.last_error or "")
        assert link.drain(now=NOW + timedelta(hours=1)).rejected == 0  # never again
    finally:
        link.close()


def test_the_built_in_store_has_nothing_to_write_back(store: CallStore) -> None:
    link = CrmLink(store)
    wrapped_up_call(store, "c1", "resolved")
    assert link.record_interaction("c1", now=NOW) is None
    assert link.drain(now=NOW).sent == 0 and outbox.count(store) == 0
    card = link.lookup("caller", "5551234")
    assert card is not None and card.source == "store"
