"""The web API's guard: sign-in, sessions, roles, Origin checks, limits and the audit
log, through FastAPI's test client against a small stand-in for the core's views."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from config.loader import parse
from softphone_web.app import Web, create_app
from tests.support.configs import demo_data

ORIGIN = "http://127.0.0.1:8080"


class FakeDesk:
    """The CRM work the API hands to `core.desk`: one customer, one call."""

    async def customer_search(self, query: str) -> list[dict[str, Any]]:
        return [{"customer_id": "c-1001", "name": "Wang Fang"}] if "wang" in query.lower() else []

    async def wrap_up(self, call_id: str, *, agent: str | None, disposition: str,
                      notes: str = "", new_ticket: dict[str, str] | None = None,
                      link_tickets: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
        if call_id != "c1":
            raise KeyError(f"no call {call_id!r}")
        if agent not in (None, "alice"):
            raise PermissionError("not your call")
        return {"call_id": call_id, "disposition": disposition, "tickets": ["T-1"]}

    async def customer_card(self, customer_id: str) -> dict[str, Any] | None:
        return (
            {"customer_id": customer_id, "name": "Wang Fang"} if customer_id == "c-1001" else None
        )


class FakeCore:
    """The views the API reads: two agents, alice on a call from Wang Fang."""

    def __init__(self) -> None:
        self.states = {"alice": "on_call", "bob": "available"}
        self.desk = FakeDesk()

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "components": {}}

    def agents_view(self) -> list[dict[str, Any]]:
        return [
            {"agent": a, "state": s, "reason": "", "call": None} for a, s in self.states.items()
        ]

    def calls_view(self) -> list[dict[str, Any]]:
        return [{"call_id": "c1", "agent": "alice", "caller": "5551234", "queue": "sales"}]

    def set_agent_state(self, agent_id: str, state: str, reason: str = "") -> None:
        if agent_id not in self.states:
            raise KeyError(f"unknown agent {agent_id!r}")
        self.states[agent_id] = state

    async def reload_flows(self) -> dict[str, Any]:
        return {"ok": True, "version": 2, "flows": ["main"]}

    def agent_snapshot(self, agent_id: str) -> dict[str, Any]:
        return {"state": self.states[agent_id], "call": None}


@pytest.fixture
def web(tmp_path: Path) -> Web:
    data = demo_data()
    data["users"] = {
        "sue": {"role": "supervisor", "password": "sue-demo-secret"},
        "root": {"role": "admin", "password": "root-demo-secret"},
    }
    return Web.from_settings(parse(data, "test.yaml"), tmp_path)


@pytest.fixture
def client(web: Web) -> TestClient:
    return TestClient(create_app(FakeCore(), web))


def login(client: TestClient, user: str, password: str) -> dict[str, str]:
    response = client.post("/api/login", json={"user": user, "password": password})
    assert response.status_code == 200, response.text
    client.cookies.clear()  # the bearer token only, so each request says who it is
    return {"Authorization": f"Bearer {response.json()['token']}"}


def test_every_route_needs_a_session(client: TestClient) -> None:
    for method, path in [("get", "/api/agents"), ("get", "/api/calls"), ("get", "/api/me"),
                         ("get", "/api/customers?q=wang"), ("get", "/api/health"),
                         ("post", "/api/config/reload"), ("get", "/api/audit")]:  # fmt: skip
        assert getattr(client, method)(path).status_code == 401, path
    assert client.get("/api/agents", headers={"Authorization": "Bearer forged"}).status_code == 401


def test_sign_in_with_cookie_or_token_and_sign_out(client: TestClient, web: Web) -> None:
    response = client.post("/api/login", json={"user": "alice", "password": "alice-demo-secret"})
    assert response.status_code == 200
    assert response.json()["role"] == "agent" and response.json()["agent"] == "alice"
    assert client.get("/api/me").json()["user"] == "alice"  # the cookie
    assert client.post("/api/logout").status_code == 200
    assert client.get("/api/me").status_code == 401
    events = [e["event"] for e in web.audit.entries()]
    assert events == ["login", "logout"]
    assert "alice-demo-secret" not in web.audit.path.read_text()


def test_wrong_passwords_are_limited_per_client_and_account(client: TestClient, web: Web) -> None:
    for _ in range(5):
        response = client.post("/api/login", json={"user": "bob", "password": "guess"})
        assert response.status_code == 401
    limited = client.post("/api/login", json={"user": "bob", "password": "bob-demo-secret"})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert client.post(
        "/api/login", json={"user": "alice", "password": "alice-demo-secret"}
    ).is_success
    events = [e["event"] for e in web.audit.entries()]
    assert events.count("login.failed") == 5 and "login.limited" in events


def test_an_agent_sees_and_changes_only_itself(client: TestClient) -> None:
    alice = login(client, "alice", "alice-demo-secret")
    assert [a["agent"] for a in client.get("/api/agents", headers=alice).json()] == ["alice"]
    assert (
        client.put("/api/agents/bob/state", json={"state": "away"}, headers=alice).status_code
        == 403
    )
    assert client.put("/api/agents/alice/state", json={"state": "away"}, headers=alice).is_success
    sue = login(client, "sue", "sue-demo-secret")
    assert len(client.get("/api/agents", headers=sue).json()) == 2
    assert client.put("/api/agents/bob/state", json={"state": "away"}, headers=sue).is_success


def test_an_agent_reads_only_its_own_calls_and_customers_it_found(
    client: TestClient, web: Web
) -> None:
    bob = login(client, "bob", "bob-demo-secret")
    assert client.get("/api/calls", headers=bob).json() == []
    assert client.get("/api/calls/c1", headers=bob).status_code == 403
    assert client.get("/api/customers/c-1001", headers=bob).status_code == 403
    assert client.get("/api/customers?q=Wang", headers=bob).json()[0]["customer_id"] == "c-1001"
    assert client.get("/api/customers/c-1001", headers=bob).json()["name"] == "Wang Fang"
    alice = login(client, "alice", "alice-demo-secret")
    assert client.get("/api/calls/c1", headers=alice).json()["caller"] == "5551234"
    events = [(e["event"], e["user"]) for e in web.audit.entries()]
    assert ("call.denied", "bob") in events and ("customer.denied", "bob") in events
    assert ("customer.read", "bob") in events and ("call.read", "alice") in events


def test_only_an_admin_reloads_or_disables(client: TestClient) -> None:
    sue = login(client, "sue", "sue-demo-secret")
    assert client.post("/api/config/reload", headers=sue).status_code == 403
    assert client.post("/api/users/bob/disable", headers=sue).status_code == 403
    root = login(client, "root", "root-demo-secret")
    assert client.post("/api/config/reload", headers=root).json()["version"] == 2
    bob = login(client, "bob", "bob-demo-secret")
    assert client.post("/api/users/bob/disable", headers=root).json()["sessions_ended"] == 1
    assert client.get("/api/me", headers=bob).status_code == 401
    again = client.post("/api/login", json={"user": "bob", "password": "bob-demo-secret"})
    assert again.status_code == 401
    client.post("/api/users/bob/enable", headers=root)
    assert client.post("/api/login", json={"user": "bob", "password": "bob-demo-secret"}).is_success


def test_agent_socket_checks_origin_and_session(client: TestClient) -> None:
    alice = login(client, "alice", "alice-demo-secret")
    token = alice["Authorization"].split()[1]
    for headers, path, code in [
        ({"Origin": "http://evil.example"}, f"/ws/agent?token={token}", 4003),
        ({}, f"/ws/agent?token={token}", 4003),
        ({"Origin": ORIGIN}, "/ws/agent", 4001),
        ({"Origin": ORIGIN}, "/ws/agent?token=forged", 4001),
    ]:
        with pytest.raises(WebSocketDisconnect) as closed:
            with client.websocket_connect(path, headers=headers) as ws:
                ws.receive_json()
        assert closed.value.code == code, (headers, path)
    sue = login(client, "sue", "sue-demo-secret")  # a supervisor has no agent socket
    with pytest.raises(WebSocketDisconnect) as closed:
        with client.websocket_connect(
            f"/ws/agent?token={sue['Authorization'].split()[1]}", headers={"Origin": ORIGIN}
        ) as ws:
            ws.receive_json()
    assert closed.value.code == 4001


def test_agent_socket_gets_pushes_and_closes_when_the_session_ends(
    client: TestClient, web: Web
) -> None:
    alice = login(client, "alice", "alice-demo-secret")
    token = alice["Authorization"].split()[1]
    with client.websocket_connect(f"/ws/agent?token={token}", headers={"Origin": ORIGIN}) as ws:
        hello = ws.receive_json()
        assert hello["type"] == "hello" and hello["agent"] == "alice"

        async def push() -> int:  # on the app's event loop, as the core does
            return web.hub.publish("alice", {"type": "offer", "customer_id": "c-1001"})

        assert ws.portal.call(push) == 1
        offer = ws.receive_json()
        assert offer["type"] == "offer" and offer["sent_at"] > 0
        # the pushed customer may now be opened by this agent
        assert client.get("/api/customers/c-1001", headers=alice).status_code == 200
        assert client.post("/api/logout", headers=alice).is_success
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 4001


def test_hub_drops_a_socket_that_does_not_keep_up() -> None:
    from softphone_web.hub import QUEUE_LIMIT, Hub

    async def scenario() -> None:
        hub = Hub()
        sub = hub.subscribe("alice", "t")
        for i in range(QUEUE_LIMIT + 1):
            hub.publish("alice", {"n": i})
        assert hub.connected("alice") == 0
        assert await sub.queue.get() is None and sub.close_code == 4008

    asyncio.run(scenario())


def test_kefu_passwd_hash_signs_in(tmp_path: Path) -> None:
    """`kefu passwd` prints a hash that the configuration takes as `password_hash`."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "core.cli", "passwd"], input="sue-new-secret\n",
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    data = demo_data()
    data["users"] = {"sue": {"role": "supervisor", "password_hash": done.stdout.strip()}}
    web = Web.from_settings(parse(data, "test.yaml"), tmp_path)
    client = TestClient(create_app(FakeCore(), web))
    assert login(client, "sue", "sue-new-secret")
    assert (
        client.post("/api/login", json={"user": "sue", "password": "sue-demo-secret"}).status_code
        == 401
    )


def test_wrap_up_only_on_your_own_call(client: TestClient, web: Web) -> None:
    body = {"disposition": "resolved", "notes": "refund sent", "new_ticket": {"subject": "x"}}
    bob = login(client, "bob", "bob-demo-secret")
    assert client.post("/api/calls/c1/wrapup", json=body, headers=bob).status_code == 403
    alice = login(client, "alice", "alice-demo-secret")
    done = client.post("/api/calls/c1/wrapup", json=body, headers=alice)
    assert done.json() == {"call_id": "c1", "disposition": "resolved", "tickets": ["T-1"]}
    assert client.post("/api/calls/c9/wrapup", json=body, headers=alice).status_code == 404
    bad = client.post("/api/calls/c1/wrapup", json={"disposition": ""}, headers=alice)
    assert bad.status_code == 422
    assert ("call.wrapup", "alice") in [(e["event"], e["user"]) for e in web.audit.entries()]
