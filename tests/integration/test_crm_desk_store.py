"""The store's desk operations on SQLite and on a private PostgreSQL: customers created,
changed and deleted with their numbers in E.164, a customer's and a ticket's views, the
call history pages, and linking a call to a customer the agent created during it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from crm_link.demo import demo_customers
from crm_link.models import CallRecord
from crm_link.store import (
    AccountTaken,
    BadPhone,
    CallStore,
    OpenTickets,
    PhoneTaken,
)
from tests.support.postgres import db_url, postgres  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


@pytest.fixture
def crm(db_url: str) -> Iterator[CallStore]:  # noqa: F811
    """The demo customers: Wang Fang (c-1001, 5551234, open T-2041), Maria Lopez (c-1002,
    5555678, pending T-2050), Kim Min-jun (c-1003, 5550199, closed T-1999)."""
    store = CallStore(db_url)
    store.seed(*demo_customers())
    yield store
    store.close()


def call(call_id: str, at: datetime = NOW, **columns: object) -> CallRecord:
    fields: dict[str, object] = dict(
        call_id=call_id, sip_call_id="x", caller="5551234", did="1000", queue="sales",
        agent="alice", worker=1, arrived_at=at, answered_at=at + timedelta(seconds=20),
        ended_at=at + timedelta(seconds=140), customer_id="c-1001",
    )  # fmt: skip
    fields.update(columns)
    return CallRecord(**fields)


def test_a_new_customer_gets_its_numbers_in_e164_and_is_found_as_a_caller(
    crm: CallStore,
) -> None:
    new = crm.create_customer(
        name="Ana Silva", company="Silva Imports", tier="gold", vip=True, language="pt",
        phones=["(555) 201-3344", "+1 555 201 3344", "+44 20 7946 0958"],
        account_number=" 88001 ", tags=["new", " "], owner="alice", at=NOW,
    )  # fmt: skip
    card = crm.lookup("caller", "5552013344")
    assert card is not None and card.customer_id == new and card.vip
    assert card.phones == ["+15552013344", "+442079460958"]  # the same number once
    assert (card.account_number, card.tags, card.owner) == ("88001", ["new"], "alice")
    customer = crm.customer(new)
    assert customer is not None and customer.phone == "5552013344"
    assert customer.created_at is not None


def test_a_number_or_account_of_another_customer_or_no_number_refuses_the_whole_customer(
    crm: CallStore,
) -> None:
    with pytest.raises(PhoneTaken) as taken:
        crm.create_customer(name="X", phones=["5559876543", "+1 555-1234"], at=NOW)
    assert (taken.value.customer_id, taken.value.name) == ("c-1001", "Wang Fang")
    assert "+15551234" in str(taken.value)
    with pytest.raises(BadPhone, match="'12'"):
        crm.create_customer(name="X", phones=["5559876543", "12"], at=NOW)
    with pytest.raises(AccountTaken, match="c-1003"):
        crm.create_customer(name="X", account_number="6011000990139424", at=NOW)
    with pytest.raises(ValueError, match="not a customer field: colour"):
        crm.create_customer(name="X", colour="red", at=NOW)
    assert crm.lookup("caller", "5559876543") is None  # nothing was written
    assert [c.name for c in crm.search_customers("x")] == []


def test_a_customer_changes_some_fields_and_gains_and_loses_numbers(crm: CallStore) -> None:
    later = NOW + timedelta(hours=1)
    changed = crm.update_customer(
        "c-1002", at=later, tier="gold", company="Lopez Bakery", add_phones=["555 0142"],
        remove_phones=["+1 555 5678"],
    )  # fmt: skip
    assert changed == ["tier", "phones"]  # the company did not change
    customer = crm.customer("c-1002")
    assert customer is not None and [p.e164 for p in customer.phones] == ["+15550142"]
    assert customer.phone == "5550142" and customer.updated_at is not None
    assert crm.lookup("caller", "5555678") is None
    assert crm.update_customer("c-1002", at=later, tier="gold") == []
    with pytest.raises(PhoneTaken, match="Wang Fang"):
        crm.update_customer("c-1002", at=later, add_phones=["5551234"])
    with pytest.raises(AccountTaken):
        crm.update_customer("c-1002", at=later, account_number="79927398713")
    with pytest.raises(KeyError):
        crm.update_customer("c-none", at=later, tier="gold")
    # its own number again, or clearing its account number, is no clash
    assert crm.update_customer("c-1002", at=later, add_phones=["5550142"]) == []
    assert crm.update_customer("c-1002", at=later, account_number="") == ["account_number"]


def test_deleting_a_customer_with_open_work_is_refused_otherwise_the_calls_stay_unlinked(
    crm: CallStore,
) -> None:
    with pytest.raises(OpenTickets, match="T-2050"):
        crm.delete_customer("c-1002")
    assert crm.customer("c-1002") is not None
    crm.save(call("k1", customer_id="c-1003", caller="5550199"))
    crm.link_tickets("k1", ["T-1999"], at=NOW)
    assert crm.delete_customer("c-1003") == {"tickets_deleted": 1, "calls_unlinked": 1}
    assert crm.customer("c-1003") is None and crm.ticket("T-1999") is None
    row = crm.get("k1")
    assert row is not None and row.customer_id is None and crm.linked_tickets("k1") == []
    assert crm.lookup("caller", "5550199") is None
    with pytest.raises(KeyError):
        crm.delete_customer("c-1003")
    # the number is free again
    assert crm.create_customer(name="New owner", phones=["5550199"], at=NOW)


def test_a_customers_tickets_open_first_and_a_ticket_with_its_history_and_calls(
    crm: CallStore,
) -> None:
    urgent = crm.create_ticket(customer_id="c-1001", subject="Line down", priority="urgent",
                               at=NOW, actor="bob", call_id="k2")  # fmt: skip
    done = crm.create_ticket(customer_id="c-1001", subject="Old", at=NOW, status="closed")
    tickets = crm.customer_tickets("c-1001")
    assert tickets is not None
    assert [t["ticket_id"] for t in tickets] == [urgent, "T-2041", done]
    assert crm.customer_tickets("c-none") is None
    crm.update_ticket(urgent, at=NOW + timedelta(minutes=1), actor="alice", status="pending",
                      note="engineer booked")  # fmt: skip
    detail = crm.ticket_detail(urgent)
    assert detail is not None and detail["status"] == "pending" and detail["calls"] == ["k2"]
    assert detail["customer_id"] == "c-1001" and detail["channel"] == "phone"
    assert [(h["kind"], h["actor"], h["new"], h["note"]) for h in detail["history"]] == [
        ("created", "bob", "open", None),
        ("call", "bob", "k2", None),
        ("status", "alice", "pending", None),
        ("note", "alice", None, "engineer booked"),
    ]
    assert crm.ticket_detail("T-none") is None
    # an SLA given in another zone is kept as the same moment (SQLite keeps no zone)
    paris = datetime(2026, 11, 25, 9, 0, tzinfo=timezone(timedelta(hours=1)))
    crm.update_ticket(urgent, at=NOW, sla_due_at=paris)
    assert crm.ticket_detail(urgent)["sla_due_at"] == "2026-11-25T08:00:00+00:00"  # type: ignore[index]


def test_call_history_pages_newest_first_with_names_and_tickets(crm: CallStore) -> None:
    for n in range(5):
        crm.save(call(f"h{n}", at=NOW + timedelta(minutes=n)))
    crm.save(call("tie-a", at=NOW + timedelta(minutes=2)))  # the same moment as h2
    crm.save(call("bob1", agent="bob", customer_id=None, caller="5550000"))
    crm.link_tickets("h4", ["T-2041"], at=NOW)
    first = crm.calls(agent="alice", limit=3)
    assert [c["call_id"] for c in first] == ["h4", "h3", "tie-a"]
    assert first[0]["customer_name"] == "Wang Fang" and first[0]["tickets"] == ["T-2041"]
    assert first[0]["talk_s"] == 120.0 and first[0]["arrived_at"].startswith("2026-11-24T09:04")
    rest = crm.calls(agent="alice", limit=10, before=first[-1]["call_id"])
    assert [c["call_id"] for c in rest] == ["h2", "h1", "h0"]
    assert crm.calls(agent="alice", before="h0") == []
    (unknown,) = crm.calls(agent="bob")
    assert (unknown["customer_id"], unknown["customer_name"]) == (None, None)
    assert [c["call_id"] for c in crm.calls(customer_id="c-1001", limit=2)] == ["h4", "h3"]
    with pytest.raises(KeyError):
        crm.calls(agent="alice", before="no-such-call")


def test_a_call_linked_to_a_new_customer_keeps_it_through_the_cores_later_saves(
    crm: CallStore,
) -> None:
    """The caller was unknown; the agent creates them and links the call; the core's
    save with the recording (no customer in its picture) leaves the link alone."""
    new = crm.create_customer(name="Ana Silva", phones=["5552013344"], at=NOW)
    assert crm.link_customer("u1", new) is False  # no row yet: the call is still up
    crm.save(call("u1", customer_id=None, caller="5552013344"))
    assert crm.link_customer("u1", new) is True
    crm.save(call("u1", customer_id=None, caller="5552013344", recording_path="/r/u1.wav"))
    row = crm.get("u1")
    assert row is not None and row.customer_id == new and row.recording_path == "/r/u1.wav"
    assert crm.link_customer("u1", new) is True  # again: nothing changes
    with pytest.raises(ValueError, match=f"linked to customer {new} already"):
        crm.link_customer("u1", "c-1002")
    with pytest.raises(KeyError):
        crm.link_customer("u1", "c-none")
    (line,) = crm.calls(customer_id=new)
    assert line["customer_name"] == "Ana Silva"
