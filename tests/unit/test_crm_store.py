"""The built-in CRM look-up on a real SQLite file: by caller number and by account."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from crm_link.demo import demo_customers
from crm_link.models import Customer
from crm_link.store import CallStore


def store(tmp_path: Path) -> CallStore:
    crm = CallStore(f"sqlite:///{tmp_path / 'kefu.sqlite3'}")
    customers, tickets = demo_customers()
    assert crm.seed(customers, tickets) == 3
    return crm


def test_lookup_by_caller_number_finds_the_vip_and_their_most_urgent_ticket(
    tmp_path: Path,
) -> None:
    card = store(tmp_path).lookup("caller", "5551234")
    assert card is not None and card.name == "Wang Fang" and card.vip
    assert card.ticket_priority == "high"
    assert card.open_tickets[0]["ticket_id"] == "T-2041"


def test_lookup_matches_a_number_with_country_code_and_formatting(tmp_path: Path) -> None:
    crm = store(tmp_path)
    card = crm.lookup("caller", "+1 555-5678")
    assert card is not None and card.name == "Maria Lopez"
    assert crm.lookup("caller", "5678") is None  # a short tail is not a match


def test_lookup_by_account_number_and_closed_tickets_do_not_count(tmp_path: Path) -> None:
    card = store(tmp_path).lookup("variable", "6011000990139424")
    assert card is not None and card.name == "Kim Min-jun"
    assert card.ticket_priority == "" and card.open_tickets == []


def test_a_customer_with_a_short_or_empty_number_matches_no_caller(tmp_path: Path) -> None:
    crm = store(tmp_path)
    with crm.sessions.begin() as session:
        session.add(Customer(customer_id="c-x", name="No Number", phone=""))
        session.add(Customer(customer_id="c-y", name="Short", phone="123"))
    assert crm.lookup("caller", "5559990123") is None


def test_unknown_caller_and_seed_runs_once(tmp_path: Path) -> None:
    crm = store(tmp_path)
    assert crm.lookup("caller", "5550000") is None
    assert crm.lookup("caller", "") is None
    customers, tickets = demo_customers()
    assert crm.seed(customers, tickets) == 0


def test_columns_added_later_are_added_to_an_old_table(tmp_path: Path) -> None:
    """A database from an older kefu gains the new nullable columns at start-up."""
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE calls (call_id VARCHAR(64) PRIMARY KEY, caller VARCHAR(64))")
    CallStore(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(calls)")}
    assert {"survey_csat", "survey_nps", "ivr_path", "recording_path"} <= columns
