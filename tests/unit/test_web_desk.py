"""The desk routes of the web API — customers, tickets, call history, queues — through
FastAPI's test client, against a real `core.desk.Desk` on a SQLite store with the demo
customers and a real queue engine: every route, who may use it, and each refusal."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from acd import engine as acd
from acd.build import specs_from_settings
from config.loader import parse
from config.schema import Settings
from core.desk import Desk
from crm_link.crm import CrmLink
from crm_link.demo import demo_customers
from crm_link.models import CallRecord
from crm_link.store import CallStore
from softphone_web.app import Web, create_app
from tests.support.configs import demo_data

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


@dataclass
class LiveCall:
    agent: str | None
    ended_at: float | None = None


class DeskCore:
    """The parts of the core the desk routes use, real where they can be: the store,
    the desk on one SQL thread, the queue engine on a fake clock. `live` holds the calls
    the core would still have in memory."""

    def __init__(self, settings: Settings, data_dir: Path) -> None:
        self.settings = settings
        self.store = CallStore(f"sqlite:///{data_dir / 'kefu.sqlite3'}")
        self.store.seed(*demo_customers())
        self.sql = ThreadPoolExecutor(max_workers=1)
        self.live: dict[str, LiveCall] = {}
        self.desk = Desk(self.store, CrmLink(self.store), self.sql, live=self.live.get)
        self.acd = acd.AcdEngine(*specs_from_settings(settings))
        self.clock = 100.0

    def now(self) -> float:
        return self.clock

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "components": {}}

    def agents_view(self) -> list[dict[str, Any]]:
        return []

    def calls_view(self) -> list[dict[str, Any]]:
        return []

    def set_agent_state(self, agent_id: str, state: str, reason: str = "") -> None:
        event = (
            acd.AgentSetAvailable(agent_id=agent_id)
            if state == "available"
            else acd.AgentSetAway(agent_id=agent_id, reason=reason)
        )
        self.acd.handle(event, now=self.clock)

    async def reload_flows(self) -> dict[str, Any]:
        return {"ok": True}

    def agent_snapshot(self, agent_id: str) -> dict[str, Any]:
        return {"state": None, "call": None}

    def close(self) -> None:
        self.sql.shutdown(wait=True)
        self.store.close()


def stored_call(call_id: str, agent: str, customer_id: str | None, minutes: int = 0) -> CallRecord:
    at = NOW + timedelta(minutes=minutes)
    return CallRecord(
        call_id=call_id, sip_call_id="x", caller="5551234" if customer_id else "5552013344",
        did="1000", queue="sales", agent=agent, worker=1, arrived_at=at,
        answered_at=at + timedelta(seconds=10), ended_at=at + timedelta(seconds=70),
        customer_id=customer_id,
    )  # fmt: skip


@pytest.fixture
def core(tmp_path: Path) -> Iterator[DeskCore]:
    data = demo_data()
    data["users"] = {
        "sue": {"role": "supervisor", "password": "sue-demo-secret"},
        "root": {"role": "admin", "password": "root-demo-secret"},
    }
    made = DeskCore(parse(data, "test.yaml"), tmp_path)
    made.store.save(stored_call("a1", "alice", "c-1001"))
    made.store.save(stored_call("a2", "alice", None, minutes=1))
    made.store.save(stored_call("b1", "bob", "c-1002", minutes=2))
    yield made
    made.close()


@pytest.fixture
def web(core: DeskCore, tmp_path: Path) -> Web:
    return Web.from_settings(core.settings, tmp_path)


@pytest.fixture
def client(core: DeskCore, web: Web) -> TestClient:
    return TestClient(create_app(core, web))


def login(client: TestClient, user: str) -> dict[str, str]:
    response = client.post("/api/login", json={"user": user, "password": f"{user}-demo-secret"})
    assert response.status_code == 200, response.text
    client.cookies.clear()
    return {"Authorization": f"Bearer {response.json()['token']}"}


def events(web: Web) -> list[tuple[str, str]]:
    return [(e["event"], e["user"]) for e in web.audit.entries()]


NEW = {"name": "Ana Silva", "company": "Silva Imports", "tier": "gold", "vip": True,
       "language": "pt", "phones": ["(555) 201-3344"], "tags": ["new"],
       "owner": "alice"}  # fmt: skip


def test_every_desk_route_needs_a_session(client: TestClient) -> None:
    for method, path in [
        ("post", "/api/customers"), ("patch", "/api/customers/c-1001"),
        ("delete", "/api/customers/c-1001"), ("get", "/api/customers/c-1001/tickets"),
        ("put", "/api/calls/a1/customer"), ("get", "/api/tickets/T-2041"),
        ("post", "/api/tickets"), ("patch", "/api/tickets/T-2041"),
        ("get", "/api/interactions?customer_id=c-1001"), ("get", "/api/interactions/a1"),
        ("get", "/api/agents/alice/calls"), ("get", "/api/queues"),
        ("get", "/api/agents/alice/wrapup"),
    ]:  # fmt: skip
        assert client.request(method.upper(), path, json={}).status_code == 401, path


def test_an_agent_creates_a_customer_and_may_then_open_and_change_it(
    client: TestClient, web: Web
) -> None:
    alice = login(client, "alice")
    created = client.post("/api/customers", json=NEW, headers=alice)
    assert created.status_code == 201, created.text
    card = created.json()
    assert card["phones"] == ["+15552013344"] and card["vip"] and card["open_tickets"] == []
    new = card["customer_id"]
    assert client.get(f"/api/customers/{new}", headers=alice).json()["name"] == "Ana Silva"
    changed = client.patch(
        f"/api/customers/{new}", headers=alice,
        json={"tier": "platinum", "add_phones": ["+44 20 7946 0958"], "email": "ana@silva.example"},
    )  # fmt: skip
    assert changed.status_code == 200, changed.text
    assert changed.json()["changed"] == ["tier", "email", "phones"]
    assert changed.json()["customer"]["phones"] == ["+15552013344", "+442079460958"]
    bob = login(client, "bob")  # has not served or searched her
    assert client.patch(f"/api/customers/{new}", json={"tier": "x"}, headers=bob).status_code == 403
    assert ("customer.create", "alice") in events(web)
    assert ("customer.update", "alice") in events(web) and ("customer.denied", "bob") in events(web)


def test_a_taken_number_names_its_customer_and_a_bad_one_is_named(client: TestClient) -> None:
    alice = login(client, "alice")
    taken = client.post("/api/customers", headers=alice,
                        json={"name": "X", "phones": ["555 201 0000", "+1 555-1234"]})  # fmt: skip
    assert taken.status_code == 409
    assert "c-1001" in taken.json()["detail"] and "Wang Fang" in taken.json()["detail"]
    bad = client.post("/api/customers", json={"name": "X", "phones": ["12"]}, headers=alice)
    assert bad.status_code == 422 and "'12'" in bad.json()["detail"]
    account = client.post("/api/customers", headers=alice,
                          json={"name": "X", "account_number": "79927398713"})  # fmt: skip
    assert account.status_code == 409 and "Wang Fang" in account.json()["detail"]
    assert client.post("/api/customers", json={"name": ""}, headers=alice).status_code == 422
    client.get("/api/customers?q=lopez", headers=alice)
    patched = client.patch("/api/customers/c-1002", json={"add_phones": ["5551234"]}, headers=alice)
    assert patched.status_code == 409 and "Wang Fang" in patched.json()["detail"]


def test_the_unknown_callers_customer_is_linked_to_the_agents_own_call(
    client: TestClient, core: DeskCore
) -> None:
    alice = login(client, "alice")
    body = {**NEW, "call_id": "b1"}
    assert client.post("/api/customers", json=body, headers=alice).status_code == 403
    assert (
        client.post("/api/customers", json={**NEW, "call_id": "zz"}, headers=alice).status_code
        == 404
    )
    done = client.post("/api/customers", json={**NEW, "call_id": "a2"}, headers=alice)
    assert done.status_code == 201, done.text
    row = core.store.get("a2")
    assert row is not None and row.customer_id == done.json()["customer_id"]
    # the wrap-up may now open a ticket for the caller
    body = {"disposition": "resolved", "new_ticket": {"subject": "Quote"}}
    wrapped = client.post("/api/calls/a2/wrapup", headers=alice, json=body)
    assert wrapped.status_code == 200, wrapped.text


def test_a_call_up_is_linked_once_the_core_has_written_its_row(
    client: TestClient, core: DeskCore
) -> None:
    """During the call the row does not exist yet: the link waits for it."""
    core.live["up1"] = LiveCall(agent="alice")
    alice = login(client, "alice")
    done = client.post("/api/customers", json={**NEW, "call_id": "up1"}, headers=alice)
    assert done.status_code == 201, done.text
    customer_id = done.json()["customer_id"]
    core.live["up1"].ended_at = 1.0
    core.store.save(stored_call("up1", "alice", None, minutes=5))  # the core, at hang-up
    body = {"disposition": "sale", "new_ticket": {"subject": "Order"}}
    wrapped = client.post("/api/calls/up1/wrapup", headers=alice, json=body)
    assert wrapped.status_code == 200, wrapped.text
    row = core.store.get("up1")
    assert row is not None and row.customer_id == customer_id
    bob = login(client, "bob")
    core.live["up2"] = LiveCall(agent="alice")
    assert client.post("/api/customers", json={**NEW, "name": "Y", "phones": [], "call_id": "up2"},
                       headers=bob).status_code == 403  # fmt: skip


def test_linking_a_found_customer_to_a_call(client: TestClient, core: DeskCore, web: Web) -> None:
    alice = login(client, "alice")
    body = {"customer_id": "c-1002"}
    assert client.put("/api/calls/a2/customer", json=body, headers=alice).status_code == 403
    client.get("/api/customers?q=lopez", headers=alice)
    linked = client.put("/api/calls/a2/customer", json=body, headers=alice)
    assert linked.json() == {"call_id": "a2", "customer_id": "c-1002", "saved": True}
    again = client.put("/api/calls/a2/customer", json={"customer_id": "c-1001"}, headers=alice)
    assert again.status_code == 403  # she has not opened Wang Fang in this session
    sue = login(client, "sue")
    clash = client.put("/api/calls/a2/customer", json={"customer_id": "c-1001"}, headers=sue)
    assert clash.status_code == 409 and "c-1002" in clash.json()["detail"]
    assert client.put("/api/calls/b1/customer", json=body, headers=alice).status_code == 403
    assert ("call.customer", "alice") in events(web)


def test_only_a_supervisor_deletes_and_never_a_customer_with_open_tickets(
    client: TestClient, core: DeskCore, web: Web
) -> None:
    alice = login(client, "alice")
    client.get("/api/customers?q=kim", headers=alice)
    assert client.delete("/api/customers/c-1003", headers=alice).status_code == 403
    sue = login(client, "sue")
    refused = client.delete("/api/customers/c-1002", headers=sue)
    assert refused.status_code == 409 and "T-2050" in refused.json()["detail"]
    gone = client.delete("/api/customers/c-1003", headers=sue)
    assert gone.json() == {"customer_id": "c-1003", "deleted": True, "tickets_deleted": 1,
                           "calls_unlinked": 0}  # fmt: skip
    assert client.delete("/api/customers/c-1003", headers=sue).status_code == 404
    assert client.get("/api/customers/c-1003", headers=sue).status_code == 404
    assert ("customer.delete", "sue") in events(web)
    assert ("customer.delete.refused", "sue") in events(web)


def test_tickets_are_read_created_and_changed_only_for_customers_the_agent_may_open(
    client: TestClient, core: DeskCore, web: Web
) -> None:
    bob = login(client, "bob")
    assert client.get("/api/tickets/T-2041", headers=bob).status_code == 403
    assert client.get("/api/customers/c-1001/tickets", headers=bob).status_code == 403
    new = {"customer_id": "c-1001", "subject": "Callback about refund"}
    assert client.post("/api/tickets", json=new, headers=bob).status_code == 403
    assert (
        client.patch("/api/tickets/T-2041", json={"status": "pending"}, headers=bob).status_code
        == 403
    )

    alice = login(client, "alice")
    client.get("/api/customers?q=wang", headers=alice)
    created = client.post("/api/tickets", headers=alice, json={
        **new, "priority": "urgent", "sla_due_at": "2026-11-25T09:00:00+01:00", "call_id": "a1",
    })  # fmt: skip
    assert created.status_code == 201, created.text
    ticket = created.json()
    assert ticket["assignee"] == "alice" and ticket["calls"] == ["a1"]
    assert ticket["sla_due_at"] == "2026-11-25T08:00:00+00:00"
    listed = client.get("/api/customers/c-1001/tickets", headers=alice).json()
    assert [t["ticket_id"] for t in listed] == [ticket["ticket_id"], "T-2041"]

    changed = client.patch("/api/tickets/T-2041", headers=alice, json={
        "status": "closed", "comment": "refund sent", "call_id": "a1",
    })  # fmt: skip
    assert changed.status_code == 200, changed.text
    assert changed.json()["changed"] == ["status", "comment", "call"]
    history = client.get("/api/tickets/T-2041", headers=alice).json()["history"]
    assert [(h["kind"], h["actor"]) for h in history][-3:] == [
        ("status", "alice"),
        ("note", "alice"),
        ("call", "alice"),
    ]
    assert history[-2]["note"] == "refund sent"
    for body, code in [
        ({"status": "solved-ish"}, 422), ({"assignee": "nobody"}, 422), ({"status": None}, 422),
        ({"call_id": "b1"}, 403), ({"call_id": "zz"}, 404),
    ]:  # fmt: skip
        assert client.patch("/api/tickets/T-2041", json=body, headers=alice).status_code == code, (
            body
        )
    unassigned = client.patch("/api/tickets/T-2041", json={"assignee": ""}, headers=alice)
    assert unassigned.json()["ticket"]["assignee"] == ""
    assert client.get("/api/tickets/T-none", headers=alice).status_code == 404
    assert client.post("/api/tickets", json={**new, "customer_id": "c-none"},
                       headers=login(client, "sue")).status_code == 404  # fmt: skip
    assert ("ticket.create", "alice") in events(web) and ("ticket.update", "alice") in events(web)
    assert ("ticket.read", "alice") in events(web) and ("ticket.denied", "bob") in events(web)


def test_call_history_is_the_agents_own_paged_and_opens_the_served_customers(
    client: TestClient, core: DeskCore, web: Web
) -> None:
    alice = login(client, "alice")
    first = client.get("/api/agents/alice/calls?limit=1", headers=alice).json()
    assert [c["call_id"] for c in first["items"]] == ["a2"] and first["next_before"] == "a2"
    rest = client.get("/api/agents/alice/calls?limit=5&before=a2", headers=alice).json()
    assert [c["call_id"] for c in rest["items"]] == ["a1"] and rest["next_before"] is None
    assert rest["items"][0]["customer_name"] == "Wang Fang"
    # a customer she served may now be opened, and her call read in full
    assert client.get("/api/customers/c-1001", headers=alice).status_code == 200
    detail = client.get("/api/interactions/a1", headers=alice).json()
    assert detail["customer_name"] == "Wang Fang" and detail["talk_s"] == 60.0
    assert client.get("/api/interactions/b1", headers=alice).status_code == 403
    assert client.get("/api/interactions/zz", headers=alice).status_code == 404
    assert client.get("/api/agents/bob/calls", headers=alice).status_code == 403
    assert client.get("/api/agents/alice/calls?before=zz", headers=alice).status_code == 404
    assert client.get("/api/agents/alice/calls?limit=0", headers=alice).status_code == 422
    sue = login(client, "sue")
    assert [
        c["call_id"] for c in client.get("/api/agents/bob/calls", headers=sue).json()["items"]
    ] == ["b1"]
    assert client.get("/api/agents/nobody/calls", headers=sue).status_code == 404
    assert ("calls.read", "alice") in events(web) and ("calls.denied", "alice") in events(web)
    assert ("call.read", "alice") in events(web) and ("call.denied", "alice") in events(web)


def test_a_customers_interactions(client: TestClient, web: Web) -> None:
    bob = login(client, "bob")
    assert client.get("/api/interactions?customer_id=c-1001", headers=bob).status_code == 403
    assert client.get("/api/interactions", headers=bob).status_code == 403
    client.get("/api/customers?q=wang", headers=bob)
    seen = client.get("/api/interactions?customer_id=c-1001", headers=bob).json()
    assert [c["call_id"] for c in seen["items"]] == ["a1"]
    sue = login(client, "sue")
    every = client.get("/api/interactions?limit=2", headers=sue).json()
    assert [c["call_id"] for c in every["items"]] == ["b1", "a2"] and every["next_before"] == "a2"
    assert ("interactions.read", "bob") in events(web)


def test_queues_show_waiting_callers_the_longest_wait_and_staffing(
    client: TestClient, core: DeskCore
) -> None:
    core.acd.handle(acd.AgentLoggedIn(agent_id="bob", available=False), now=10.0)
    core.acd.handle(acd.Enqueue(call_id="q1", queue="sales", caller="5550001"), now=40.0)
    core.acd.handle(acd.Enqueue(call_id="q2", queue="sales", caller="5550002"), now=70.0)
    core.clock = 100.0
    alice = login(client, "alice")
    views = {q["queue"]: q for q in client.get("/api/queues", headers=alice).json()}
    assert views["sales"] == {
        "queue": "sales", "waiting": 2, "ringing": 0, "callbacks": 0, "longest_wait_s": 60.0,
        "agents": 1, "staffed": 0, "available": 0, "wrapup_s": 10.0,
    }  # fmt: skip
    assert views["support"]["staffed"] == 0 and views["support"]["waiting"] == 0
    core.acd.handle(acd.AgentSetAvailable(agent_id="bob"), now=100.0)
    assert client.get("/api/queues", headers=alice).json()[1]["available"] == 1


def test_ready_ends_the_wrap_up_the_countdown_says_how_long_is_left(
    client: TestClient, core: DeskCore
) -> None:
    """PUT state available during wrap-up ends it at once (the desktop's Ready button)."""
    engine = core.acd
    engine.handle(acd.AgentLoggedIn(agent_id="alice"), now=0.0)
    engine.handle(acd.Enqueue(call_id="w1", queue="sales", caller="5550001"), now=1.0)
    engine.handle(acd.OfferAnswered(call_id="w1"), now=2.0)
    engine.handle(acd.CallLeft(call_id="w1"), now=30.0)
    core.clock = 33.0
    alice = login(client, "alice")
    left = client.get("/api/agents/alice/wrapup", headers=alice).json()
    assert left == {"agent": "alice", "state": "wrap_up", "wrapup_left_s": 7.0}
    assert client.get("/api/agents/bob/wrapup", headers=alice).status_code == 403
    ready = client.put("/api/agents/alice/state", json={"state": "available"}, headers=alice)
    assert ready.is_success
    after = client.get("/api/agents/alice/wrapup", headers=alice).json()
    assert after == {"agent": "alice", "state": "available", "wrapup_left_s": None}
