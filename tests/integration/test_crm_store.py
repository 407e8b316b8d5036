"""The built-in CRM store on SQLite and on a private PostgreSQL: migrations (empty,
pre-Alembic and very old databases), caller look-up by E.164, tickets with history,
wrap-ups, voicemail tickets, the copy of an external CRM's cards."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from crm_link.demo import demo_customers
from crm_link.models import Base, CallRecord, Customer
from crm_link.store import CallStore, CustomerCard, head_revision
from tests.support.postgres import db_url, postgres  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


@pytest.fixture
def crm(db_url: str) -> Iterator[CallStore]:  # noqa: F811
    """The store with the demo customers (Wang Fang, VIP, 5551234; Maria Lopez, 5555678;
    Kim Min-jun, account 6011000990139424, a closed ticket only)."""
    store = CallStore(db_url)
    assert store.seed(*demo_customers()) == 3
    yield store
    store.close()


def call(call_id: str, **columns: object) -> CallRecord:
    """A call row as the core writes it."""
    fields: dict[str, object] = dict(
        call_id=call_id, sip_call_id="x", caller="5551234", did="1000", ivr_digits="1",
        queue="sales", agent="alice", worker=1, arrived_at=NOW,
        answered_at=NOW + timedelta(seconds=20), ended_at=NOW + timedelta(seconds=140),
        customer_id="c-1001",
    )  # fmt: skip
    fields.update(columns)
    return CallRecord(**fields)


# ---------------------------------------------------------------- look-ups


def test_lookup_by_caller_number_finds_the_vip_their_most_urgent_ticket_and_its_owner(
    crm: CallStore,
) -> None:
    card = crm.lookup("caller", "5551234")
    assert card is not None and card.name == "Wang Fang" and card.vip
    assert card.ticket_priority == "high" and card.open_tickets[0]["ticket_id"] == "T-2041"
    assert card.preferred_agent == "alice" and card.phones == ["+15551234"]
    assert card.source == "store"


def test_a_number_with_country_code_and_formatting_matches_a_short_tail_does_not(
    crm: CallStore,
) -> None:
    for number in ("+1 555-5678", "5555678", "15555678", "(555) 5678", "+15555678"):
        card = crm.lookup("caller", number)
        assert card is not None and card.name == "Maria Lopez", number
    for number in ("5678", "", "anonymous", "+86 555 5678"):
        assert crm.lookup("caller", number) is None, number


def test_lookup_by_account_number_and_closed_tickets_do_not_count(crm: CallStore) -> None:
    card = crm.lookup("variable", "6011000990139424")
    assert card is not None and card.name == "Kim Min-jun"
    assert card.ticket_priority == "" and card.open_tickets == []
    assert crm.lookup("account", "6011 0009 9013 9424") == card  # digits as typed on a keypad


def test_a_customer_with_a_short_or_empty_number_matches_no_caller(crm: CallStore) -> None:
    """Numbers that are no phone numbers are kept as written but never match."""
    with crm.sessions.begin() as session:
        session.add(Customer(customer_id="c-x", name="No Number", phone=""))
        session.add(Customer(customer_id="c-y", name="Short", phone="123"))
    short = crm.customer("c-y")
    assert short is not None and [(p.raw, p.e164) for p in short.phones] == [("123", None)]
    assert crm.lookup("caller", "5559990123") is None
    assert crm.lookup("caller", "123") is None
    with pytest.raises(ValueError, match="not a phone number"):
        crm.add_phone("c-x", "12")


def test_unknown_caller_and_seed_runs_once(crm: CallStore) -> None:
    assert crm.lookup("caller", "5550000") is None
    assert crm.seed(*demo_customers()) == 0


def test_a_shared_number_finds_the_lowest_customer_id_and_search_finds_by_part(
    crm: CallStore,
) -> None:
    assert crm.add_phone("c-1003", "+1 555 1234", label="switchboard") == "+15551234"
    card = crm.lookup("caller", "5551234")
    assert card is not None and card.customer_id == "c-1001"
    assert [c.customer_id for c in crm.search_customers("lopez")] == ["c-1002"]
    assert [c.customer_id for c in crm.search_customers("1234")] == ["c-1003", "c-1001"]  # by name
    assert [c.customer_id for c in crm.search_customers("79927398713")] == ["c-1001"]
    assert crm.search_customers("100%") == []  # LIKE wildcards are literal


# ---------------------------------------------------------------- tickets and interactions


def test_ticket_changes_are_history_rows_and_the_nearest_sla_ranks_first(crm: CallStore) -> None:
    sooner = crm.create_ticket(
        customer_id="c-1001", subject="Refund overdue", priority="high", at=NOW, actor="bob",
        sla_due_at=NOW + timedelta(hours=2),
    )  # fmt: skip
    card = crm.lookup("caller", "5551234")
    assert card is not None
    assert [t["ticket_id"] for t in card.open_tickets] == [sooner, "T-2041"]
    assert card.open_tickets[0]["sla_due_at"] == (NOW + timedelta(hours=2)).isoformat()

    later = NOW + timedelta(minutes=5)
    changed = crm.update_ticket(
        sooner, at=later, actor="alice", status="pending", assignee="alice", priority="high",
        note="called the bank",
    )  # fmt: skip
    assert changed == ["status", "assignee"]  # the priority did not change
    ticket = crm.ticket(sooner)
    assert ticket is not None and ticket.status == "pending"
    history = [(e.kind, e.actor, e.old_value, e.new_value, e.note) for e in ticket.history]
    assert history == [
        ("created", "bob", None, "open", None),
        ("status", "alice", "open", "pending", None),
        ("assignee", "alice", None, "alice", None),
        ("note", "alice", None, None, "called the bank"),
    ]
    with pytest.raises(ValueError, match="not a ticket field"):
        crm.update_ticket(sooner, at=later, customer_id="c-1002")
    with pytest.raises(KeyError):
        crm.update_ticket("T-none", at=later, status="closed")


def test_a_wrap_up_survives_the_cores_later_saves_and_shows_in_the_next_screen_pop(
    crm: CallStore,
) -> None:
    """The core saves a call at hang-up and again with its recording; the agent's
    disposition, notes and linked tickets written in between stay."""
    crm.save(call("c1"))
    crm.wrap_up("c1", disposition="resolved", notes="refund promised", wrap_up_s=42.5,
                tickets=["T-2041"], actor="alice", at=NOW)  # fmt: skip
    crm.save(call("c1", recording_path="/rec/c1.wav", recording_duration_s=120.0))
    row = crm.get("c1")
    assert row is not None and row.recording_path == "/rec/c1.wav"
    assert (row.disposition, row.notes, row.wrap_up_s) == ("resolved", "refund promised", 42.5)
    assert crm.linked_tickets("c1") == ["T-2041"]
    card = crm.lookup("caller", "+15551234")
    assert card is not None
    assert card.recent_interactions == [
        {"call_id": "c1", "at": NOW.isoformat(), "queue": "sales", "agent": "alice",
         "answered": True, "disposition": "resolved", "tickets": ["T-2041"]}
    ]  # fmt: skip
    payload = crm.interaction("c1")
    assert payload is not None
    assert (payload["talk_s"], payload["disposition"], payload["tickets"]) == (
        120.0, "resolved", ["T-2041"],
    )  # fmt: skip
    ticket = crm.ticket("T-2041")
    assert ticket is not None and ticket.history[-1].kind == "call"
    with pytest.raises(KeyError):
        crm.wrap_up("c-none", disposition="x", at=NOW)


def test_a_voicemail_ticket_is_filed_once_linked_to_its_call_even_for_an_unknown_id(
    crm: CallStore,
) -> None:
    first = crm.file_voicemail(call_id="vm-call-1", customer_id="c-1002", mailbox="sales",
                               caller="5555678", at=NOW)  # fmt: skip
    again = crm.file_voicemail(call_id="vm-call-1", customer_id="c-1002", mailbox="sales",
                               caller="5555678", at=NOW)  # fmt: skip
    assert first == again == "VM-vm-call-1"
    assert crm.linked_tickets("vm-call-1") == [first]
    card = crm.lookup("caller", "5555678")
    assert card is not None and first in [t["ticket_id"] for t in card.open_tickets]
    # a customer id that only an external CRM knew: PostgreSQL's foreign key needs a row
    crm.file_voicemail(call_id="vm-call-2", customer_id="ext-77", mailbox="support",
                       caller="+49 30 123456", at=NOW)  # fmt: skip
    stub = crm.customer("ext-77")
    assert stub is not None and [p.e164 for p in stub.phones] == ["+4930123456"]


def test_an_external_crms_card_is_remembered_for_the_fallback(crm: CallStore) -> None:
    card = CustomerCard(
        customer_id="sf-001", name="Ana Silva", company="Silva Lda", tier="gold", vip=True,
        language="pt", ticket_priority="urgent", account_number="PT-77",
        phones=["+351 21 123 4567"], tags=["b2b"],
        open_tickets=[{"ticket_id": "SF-9", "subject": "Outage", "priority": "urgent",
                       "status": "open", "assignee": "bob", "sla_due_at": ""}],
    )  # fmt: skip
    crm.remember(card, at=NOW)
    crm.remember(card, at=NOW)  # twice: nothing doubles
    found = crm.lookup("caller", "+351211234567")
    assert found is not None and (found.name, found.vip, found.tags) == ("Ana Silva", True, ["b2b"])
    assert [t["ticket_id"] for t in found.open_tickets] == ["SF-9"]
    assert found.preferred_agent == "bob" and found.phones == ["+351211234567"]
    assert crm.lookup("account", "PT-77") == found


# ---------------------------------------------------------------- migrations


def old_schema() -> sa.MetaData:
    """The tables exactly as kefu created them before Alembic (a copy of the models of
    commit 5599836, `Base.metadata.create_all` + nullable columns added at start-up)."""
    meta = sa.MetaData()
    ts = sa.DateTime(timezone=True)
    sa.Table(
        "calls", meta,
        sa.Column("call_id", sa.String(64), primary_key=True),
        sa.Column("sip_call_id", sa.String(255), nullable=False),
        sa.Column("caller", sa.String(64), nullable=False, index=True),
        sa.Column("did", sa.String(64), nullable=False),
        sa.Column("ivr_digits", sa.String(64), nullable=False),
        sa.Column("queue", sa.String(64), index=True),
        sa.Column("agent", sa.String(64), index=True),
        sa.Column("worker", sa.Integer, nullable=False),
        sa.Column("arrived_at", ts, nullable=False, index=True),
        sa.Column("queued_at", ts), sa.Column("offered_at", ts),
        sa.Column("answered_at", ts), sa.Column("ended_at", ts),
        sa.Column("hangup_side", sa.String(16)),
        sa.Column("recording_path", sa.String(1024)),
        sa.Column("recording_duration_s", sa.Float),
        sa.Column("caller_rtp_rx", sa.Integer, nullable=False),
        sa.Column("caller_rtp_tx", sa.Integer, nullable=False),
        sa.Column("agent_rtp_rx", sa.Integer, nullable=False),
        sa.Column("agent_rtp_tx", sa.Integer, nullable=False),
        sa.Column("routing_trace", sa.Text), sa.Column("ivr_path", sa.Text),
        sa.Column("variables", sa.Text), sa.Column("survey_csat", sa.Integer),
        sa.Column("survey_nps", sa.Integer), sa.Column("survey_answers", sa.Text),
        sa.Column("flow", sa.String(64)), sa.Column("language", sa.String(16)),
        sa.Column("customer_id", sa.String(64), index=True),
        sa.Column("voicemail_path", sa.String(1024)),
        sa.Column("voicemail_duration_s", sa.Float),
        sa.Column("voicemail_ticket", sa.String(64)),
        sa.Column("transfer_to", sa.String(64)),
        sa.Column("callback_number", sa.String(64)),
    )  # fmt: skip
    sa.Table(
        "customers", meta,
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("company", sa.String(255), nullable=False),
        sa.Column("tier", sa.String(32), nullable=False),
        sa.Column("vip", sa.Boolean, nullable=False),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("account_number", sa.String(64), unique=True),
        sa.Column("phone", sa.String(32), index=True),
    )  # fmt: skip
    sa.Table(
        "tickets", meta,
        sa.Column("ticket_id", sa.String(64), primary_key=True),
        sa.Column("customer_id", sa.String(64), sa.ForeignKey("customers.customer_id"),
                  nullable=False, index=True),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("call_id", sa.String(64), index=True),
        sa.Column("created_at", ts),
    )  # fmt: skip
    return meta


def test_a_database_from_before_migrations_is_upgraded_without_losing_a_row(
    db_url: str,  # noqa: F811
) -> None:
    meta = old_schema()
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        meta.create_all(conn)
        conn.execute(meta.tables["calls"].insert(), [dict(
            call_id="old-1", sip_call_id="a@b", caller="5551234", did="1000", ivr_digits="1",
            queue="sales", agent="alice", worker=2, arrived_at=NOW, ended_at=NOW + timedelta(60),
            caller_rtp_rx=100, caller_rtp_tx=90, agent_rtp_rx=80, agent_rtp_tx=70,
            survey_csat=5, ivr_path='[[0.0, "menu"]]', customer_id="c-1",
            voicemail_ticket="VM-old-1",
        )])  # fmt: skip
        conn.execute(meta.tables["customers"].insert(), [
            dict(customer_id="c-1", name="Old Timer", company="", tier="gold", vip=True,
                 language="en", account_number="A-1", phone="5551234"),
            dict(customer_id="c-2", name="Bad Number", company="", tier="standard", vip=False,
                 language="", account_number=None, phone="12"),
        ])  # fmt: skip
        conn.execute(meta.tables["tickets"].insert(), [dict(
            ticket_id="VM-old-1", customer_id="c-1", subject="Voicemail", status="open",
            priority="normal", channel="voicemail", call_id="old-1", created_at=NOW,
        )])  # fmt: skip
    engine.dispose()

    store = CallStore(db_url)
    try:
        assert store.revision() == head_revision()
        row = store.get("old-1")
        assert row is not None
        assert (row.caller, row.worker, row.survey_csat, row.agent_rtp_tx) == ("5551234", 2, 5, 70)
        assert row.ivr_path == '[[0.0, "menu"]]' and row.disposition is None
        card = store.lookup("caller", "+1 555 1234")
        assert card is not None and (card.customer_id, card.account_number) == ("c-1", "A-1")
        assert card.open_tickets[0]["ticket_id"] == "VM-old-1"
        assert card.recent_interactions[0]["call_id"] == "old-1"
        assert store.linked_tickets("old-1") == ["VM-old-1"]
        bad = store.customer("c-2")
        assert bad is not None and [(p.raw, p.e164) for p in bad.phones] == [("12", None)]
        store.save(call("new-1"))  # the new columns work on the old tables
    finally:
        store.close()
    again = CallStore(db_url)  # a second start changes nothing
    assert again.upgrade() == (head_revision(), head_revision())
    again.close()


def test_a_very_old_calls_table_gains_the_missing_columns(db_url: str) -> None:  # noqa: F811
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("CREATE TABLE calls (call_id VARCHAR(64) PRIMARY KEY, caller VARCHAR(64))")
        )
        conn.execute(sa.text("INSERT INTO calls VALUES ('ancient', '5551234')"))
    CallStore(db_url).close()
    columns = {c["name"] for c in sa.inspect(engine).get_columns("calls")}
    assert {"survey_csat", "ivr_path", "recording_path", "disposition", "wrap_up_s"} <= columns
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT caller FROM calls")).scalar() == "5551234"
    engine.dispose()


def test_the_migrations_build_exactly_the_models(db_url: str) -> None:  # noqa: F811
    """Alembic's autogenerate finds nothing to add: models and migrations agree."""
    CallStore(db_url).close()
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def test_stores_opened_at_once_on_an_empty_database_migrate_it_once(db_url: str) -> None:  # noqa: F811
    """The core and an import starting together: one migrates, the others wait."""
    errors: list[BaseException] = []
    stores: list[CallStore] = []

    def open_store() -> None:
        try:
            stores.append(CallStore(db_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for store in stores:
        store.close()
    assert errors == [] and len(stores) == 4
    assert stores[0].revision() == head_revision()


def test_a_migration_that_fails_half_way_leaves_the_database_as_it_was(
    db_url: str,  # noqa: F811
) -> None:
    """All revisions run in one transaction (SQLite too): a clash in the second one
    undoes the first, and the next start can try again."""
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        old_schema().create_all(conn)
        conn.execute(sa.text("CREATE TABLE crm_outbox (id INTEGER PRIMARY KEY)"))  # in the way
    with pytest.raises(sa.exc.SQLAlchemyError):
        CallStore(db_url)
    inspector = sa.inspect(engine)
    assert not inspector.has_table("alembic_version") and not inspector.has_table("phone_numbers")
    assert "email" not in {c["name"] for c in inspector.get_columns("customers")}
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE crm_outbox"))
    engine.dispose()
    store = CallStore(db_url)
    assert store.revision() == head_revision()
    store.close()


def test_an_in_memory_sqlite_database_is_migrated_on_the_stores_own_connection() -> None:
    store = CallStore("sqlite://")
    try:
        assert store.revision() == head_revision() and store.seed(*demo_customers()) == 3
        card = store.lookup("caller", "5551234")
        assert card is not None and card.name == "Wang Fang"
    finally:
        store.close()
