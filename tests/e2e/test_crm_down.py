"""End to end through `kefu serve` with an external CRM (`crm: http`) that is down: the
known caller is still recognised from the built-in store (screen pop, VIP priority), the
agent's wrap-up waits in the outbox while the CRM refuses connections, and reaches the
CRM once it is back (a real HTTP server in the test, `FakeCrm` of test_crm_http)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from pbx.procs import wait_until
from tests.e2e.test_screen_pop import AgentSocket, agent_phone, caller
from tests.integration.test_crm_http import TOKEN, FakeCrm
from tests.support.center import Center, center_config, pick_ports, start_center

pytestmark = pytest.mark.e2e

VIP = "5551234"  # demo customer Wang Fang: VIP, open high-priority ticket T-2041
DISPOSITION, NOTES = "resolved", "CRM was down during the call"


def outbox_rows(center: Center, call_id: str) -> list[dict[str, Any]]:
    with sqlite3.connect(center.data_dir / "kefu.sqlite3") as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM crm_outbox WHERE key = ? ORDER BY id", (call_id,))
        return [dict(r) for r in rows]


def test_crm_down_falls_back_and_the_outbox_delivers_later(tmp_path: Path) -> None:
    crm = FakeCrm()  # its port is picked but nobody listens yet: connections are refused
    ports = pick_ports(workers=1)
    config = center_config(ports, workers=1)
    config["demo_customers"] = True
    config["crm"] = {
        "adapter": "http",
        "http": {
            "customer_url": f"{crm.base}/customers?phone={{number}}",
            "interaction_url": f"{crm.base}/interactions",
            "auth": TOKEN,
            "timeout_s": 0.5,
        },
        # retries every ~0.5-1 s instead of 5 s doubling up to 15 min (core drains every 5 s)
        "outbox": {"base_s": 0.5, "factor": 2, "max_s": 1},
    }
    center = start_center(tmp_path, config, ports)
    socket = None
    try:
        socket = AgentSocket(center, center.login("alice", "alice-demo-secret"))
        phone, _ = agent_phone(center, 1, tmp_path)
        call = caller(center, VIP, 2, tmp_path)
        try:
            center.wait_agents(["alice"])
            _, pop = socket.wait_for("offer")
            (row,) = center.wait_calls(1, timeout=40, where=lambda r: r["caller"] == VIP)
        finally:
            for proc in (call, phone):
                proc.stop()
        call_id = row["call_id"]

        # The CRM was not reachable: the card is the built-in store's, priority applied.
        assert pop["call_id"] == call_id
        assert pop["customer"]["name"] == "Wang Fang" and pop["customer"]["vip"] is True
        assert [t["ticket_id"] for t in pop["open_tickets"]] == ["T-2041"]
        assert pop["routing"]["priority"] == 25 and pop["routing"]["winner"] == "alice"
        assert row["customer_id"] == pop["customer_id"] and row["agent"] == "alice"
        assert "CRM look-up failed, using the built-in store" in center.log("core")

        done = center.request(
            "POST", f"/api/calls/{call_id}/wrapup",
            {"disposition": DISPOSITION, "notes": NOTES, "link_tickets": ["T-2041"]},
            token=center.login("alice", "alice-demo-secret"),
        )  # fmt: skip
        assert done["disposition"] == DISPOSITION

        # The wrapped-up interaction waits in the outbox, tried and failed.
        def tried_with_the_wrap_up() -> bool:
            rows = outbox_rows(center, call_id)
            return (
                bool(rows)
                and all(r["attempts"] >= 1 for r in rows)
                and (json.loads(rows[-1]["payload"])["disposition"] == DISPOSITION)
            )

        wait_until(tried_with_the_wrap_up, 30, "the wrap-up tried in the outbox", interval=0.25)
        waiting = outbox_rows(center, call_id)
        for message in waiting:
            assert message["status"] == "pending" and message["sent_at"] is None, message
            assert "ConnectError" in message["last_error"], message
            assert f"POST {crm.base}/interactions" in message["last_error"], message
        assert crm.requests == []

        crm.start()  # the CRM is back, on the same port
        wait_until(
            lambda: all(r["status"] == "sent" for r in outbox_rows(center, call_id)),
            30,
            "the outbox delivered",
            interval=0.25,
        )
        # Every message that waited is delivered (later saves of the call may have queued
        # more: delivery is per message, at least once); the wrap-up's carries its data.
        delivered = {r["id"]: r for r in outbox_rows(center, call_id)}
        assert all(r["sent_at"] is not None for r in delivered.values()), delivered
        for message in waiting:
            assert delivered[message["id"]]["attempts"] >= 2  # failed while down, then sent
        got = {headers["Idempotency-Key"]: body for body, headers in crm.interactions}
        body = got[f"kefu-outbox-{waiting[-1]['id']}"]
        assert body["call_id"] == call_id and body["customer_id"] == pop["customer_id"]
        assert (body["disposition"], body["notes"]) == (DISPOSITION, NOTES)
        assert body["agent"] == "alice" and body["tickets"] == ["T-2041"]
    except BaseException:
        for name in ("core", "kamailio", "worker-1"):
            print(f"===== {name}\n{center.log(name)[-3000:]}")
        raise
    finally:
        if socket is not None:
            socket.close()
        crm.stop()
        code = center.proc.stop(timeout=30)
    assert code == 0, center.proc.log_tail(30)
