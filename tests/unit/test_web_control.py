"""The call-control routes (`/api/calls/{id}/hold|resume|transfer...`): who may act on
which call, how each refusal reads over HTTP, and the audit trail, through FastAPI's
test client against a stand-in for `core.control` (the logic is `test_core_transfers`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.control import ControlError
from softphone_web.app import Web, create_app
from tests.unit.test_web_auth import FakeCore, login
from tests.unit.test_web_auth import web as web  # the fixture, used by name


class FakeControl:
    """alice has call c1; bob is away; c1 is not on hold."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None, dict[str, Any]]] = []

    def _check(self, action: str, call_id: str, agent: str | None, **kw: Any) -> dict[str, Any]:
        if call_id != "c1":
            raise KeyError(f"no call {call_id!r} in progress")
        if agent not in (None, "alice"):
            raise PermissionError("not your call")
        if kw.get("to_agent") == "bob":
            raise ControlError("agent bob is away (lunch)")
        if kw.get("to_agent") and kw.get("to_queue"):
            raise ValueError("name either an agent or a queue to transfer to")
        self.calls.append((action, call_id, agent, kw))
        return {"call_id": call_id, "agent": "alice", "held": action == "hold"}

    def hold(self, call_id: str, *, agent: str | None) -> dict[str, Any]:
        return self._check("hold", call_id, agent)

    def resume(self, call_id: str, *, agent: str | None) -> dict[str, Any]:
        if call_id == "c1":
            raise ControlError("the caller is not on hold")
        return self._check("resume", call_id, agent)

    def transfer(self, call_id: str, *, agent: str | None, to_agent: str | None = None,
                 to_queue: str | None = None) -> dict[str, Any]:  # fmt: skip
        return self._check("transfer", call_id, agent, to_agent=to_agent, to_queue=to_queue)

    def consult(self, call_id: str, *, agent: str | None, to_agent: str | None = None,
                to_queue: str | None = None) -> dict[str, Any]:  # fmt: skip
        return self._check("consult", call_id, agent, to_agent=to_agent, to_queue=to_queue)

    def complete(self, call_id: str, *, agent: str | None) -> dict[str, Any]:
        return self._check("complete", call_id, agent)

    def cancel(self, call_id: str, *, agent: str | None) -> dict[str, Any]:
        return self._check("cancel", call_id, agent)


class ControlledCore(FakeCore):
    def __init__(self) -> None:
        super().__init__()
        self.control = FakeControl()


@pytest.fixture
def core() -> ControlledCore:
    return ControlledCore()


@pytest.fixture
def client(core: ControlledCore, web: Web) -> TestClient:
    return TestClient(create_app(core, web))


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_the_agent_on_the_call_holds_transfers_and_consults(
    client: TestClient, core: ControlledCore, tmp_path: Path
) -> None:
    alice = login(client, "alice", "alice-demo-secret")
    assert client.post("/api/calls/c1/hold", headers=alice).json()["held"] is True
    blind = client.post("/api/calls/c1/transfer", json={"to_queue": "support"}, headers=alice)
    assert blind.status_code == 200
    attended = {"to_queue": "support", "mode": "attended"}
    assert client.post("/api/calls/c1/transfer", json=attended, headers=alice).status_code == 200
    assert client.post("/api/calls/c1/transfer/complete", headers=alice).status_code == 200
    assert client.post("/api/calls/c1/transfer/cancel", headers=alice).status_code == 200
    assert [(a, agent) for a, _, agent, _ in core.control.calls] == [
        ("hold", "alice"), ("transfer", "alice"), ("consult", "alice"), ("complete", "alice"),
        ("cancel", "alice"),
    ]  # fmt: skip
    events = [e["event"] for e in audit(tmp_path) if e["event"].startswith("call.")]
    assert events == ["call.hold", "call.transfer", "call.consult", "call.complete",
                      "call.cancel"]  # fmt: skip


def test_refusals_read_as_http_statuses(client: TestClient, tmp_path: Path) -> None:
    alice = login(client, "alice", "alice-demo-secret")
    bob = login(client, "bob", "bob-demo-secret")
    assert client.post("/api/calls/c1/hold", headers=bob).status_code == 403
    assert client.post("/api/calls/c9/hold", headers=alice).status_code == 404
    resumed = client.post("/api/calls/c1/resume", headers=alice)
    assert (resumed.status_code, resumed.json()["detail"]) == (409, "the caller is not on hold")
    away = client.post("/api/calls/c1/transfer", json={"to_agent": "bob"}, headers=alice)
    assert (away.status_code, away.json()["detail"]) == (409, "agent bob is away (lunch)")
    both = {"to_agent": "carol", "to_queue": "support"}
    assert client.post("/api/calls/c1/transfer", json=both, headers=alice).status_code == 422
    bad_mode = {"to_queue": "support", "mode": "warm"}
    assert client.post("/api/calls/c1/transfer", json=bad_mode, headers=alice).status_code == 422
    assert client.post("/api/calls/c1/hold").status_code == 401
    denied = [e for e in audit(tmp_path) if e["event"] == "call.denied"]
    assert denied and denied[0]["user"] == "bob" and denied[0]["action"] == "hold"


def test_a_supervisor_acts_on_any_call(client: TestClient, core: ControlledCore) -> None:
    sue = login(client, "sue", "sue-demo-secret")
    assert client.post("/api/calls/c1/hold", headers=sue).status_code == 200
    assert core.control.calls[-1][2] is None  # no agent restriction
