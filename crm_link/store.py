"""The SQL store behind the core: engine + session factory, schema migrations, call
records (interactions) and the built-in CRM — customers, phone numbers, tickets with
their history, wrap-ups and call-ticket links.

`CallStore(url)` brings the database to the newest schema with Alembic
(`crm_link/migrations`) before anything else, whether it is empty, at an older
revision, or was written by a kefu from before migrations. SQLite (the embedded
default) and PostgreSQL are both supported and both tested.

Callers are found by their normalised E.164 number (`crm_link.phones`): an indexed
equality, so `+1 555-5678`, `5555678` and `15555678` all find the same customer.

What the agent desktop changes goes through here too: customers created and changed
with their numbers checked (`BadPhone`, a number or account of another customer:
`PhoneTaken` / `AccountTaken` — the CSV import may still share a switchboard number),
deleted only without open work (`OpenTickets`), tickets with their history, pages of
call history (`calls`), and a call linked to a customer created during it
(`link_customer`, which the core's later saves of that call leave alone).

Blocking SQLAlchemy calls; the async core runs them off its event loop so a slow disk
never stalls call handling. Neighbours: `crm_link.models` (tables), `crm_link.adapters`
(external CRMs in front of this store), `crm_link.outbox` (write-back queue),
`crm_link.importer` (`kefu import customers`).
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import and_, create_engine, delete, event, func, or_, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import del_attribute
from sqlalchemy.pool import NullPool

from crm_link.models import (
    Base,
    CallRecord,
    CallTicket,
    Customer,
    PhoneNumber,
    Ticket,
    TicketEvent,
)
from crm_link.phones import DEFAULT_REGION, caller_candidates, digits, normalise

PRIORITY_ORDER = {"urgent": 4, "high": 3, "normal": 2, "low": 1}
TICKET_FIELDS = ("subject", "status", "priority", "assignee", "sla_due_at", "description")
"""What `update_ticket` may change (each change is a history row)."""
TICKET_STATUSES = ("open", "pending", "closed")
"""`closed`: solved or given up; every other status counts as open work."""
CUSTOMER_FIELDS = ("name", "company", "tier", "vip", "language", "account_number", "email",
                   "tags", "owner")  # fmt: skip
"""What `create_customer` / `update_customer` may set besides the phone numbers."""
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK = 0x6B656675  # "kefu": PostgreSQL advisory lock while migrating


class BadPhone(ValueError):
    """A number that is not a phone number in the store's region."""

    def __init__(self, raw: str) -> None:
        super().__init__(f"not a phone number: {raw!r}")
        self.raw = raw


class PhoneTaken(ValueError):
    """The number already belongs to another customer."""

    def __init__(self, e164: str, customer_id: str, name: str) -> None:
        super().__init__(f"{e164} already belongs to customer {customer_id} ({name})")
        self.e164, self.customer_id, self.name = e164, customer_id, name


class AccountTaken(ValueError):
    """The account number already belongs to another customer."""

    def __init__(self, account: str, customer_id: str, name: str) -> None:
        super().__init__(f"account {account} already belongs to customer {customer_id} ({name})")
        self.account, self.customer_id, self.name = account, customer_id, name


class OpenTickets(ValueError):
    """The customer still has open work: it cannot be deleted."""

    def __init__(self, customer_id: str, tickets: Sequence[str]) -> None:
        super().__init__(
            f"customer {customer_id} has open tickets ({', '.join(tickets)}): close them first"
        )
        self.customer_id, self.tickets = customer_id, list(tickets)


@dataclass(frozen=True)
class CustomerCard:
    """What a look-up returns: the customer, their open tickets (most urgent first, then
    the nearest SLA) and their last interactions — the screen pop and the routing input."""

    customer_id: str
    name: str
    company: str
    tier: str
    vip: bool
    language: str
    ticket_priority: str
    """Priority of the most urgent open ticket; "" without one."""
    open_tickets: list[dict[str, str]] = field(default_factory=list)
    """ticket_id, subject, priority, status, assignee, sla_due_at (ISO or "")."""
    account_number: str = ""
    email: str = ""
    owner: str = ""
    tags: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    """E.164."""
    preferred_agent: str = ""
    """The assignee of the most urgent open ticket that has one."""
    recent_interactions: list[dict[str, Any]] = field(default_factory=list)
    """Newest first: call_id, at, queue, agent, answered, disposition, tickets."""
    source: str = "store"
    """Who answered: `store` (built-in) or an external adapter's name (`http`)."""


def database_url(configured: str | None, data_dir: Path) -> str:
    return configured or f"sqlite:///{(data_dir / 'kefu.sqlite3').resolve()}"


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without a zone; everything kefu writes is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def iso(value: datetime | None) -> str:
    aware = utc(value)
    return aware.isoformat() if aware is not None else ""


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, region: str = DEFAULT_REGION) -> tuple[str | None, str]:
    """`alembic upgrade head` on `engine`'s database in one transaction; returns
    (before, after). Concurrent starters (the core and an import) wait for each other:
    PostgreSQL through an advisory lock, SQLite through `BEGIN IMMEDIATE`."""
    sqlite = engine.dialect.name == "sqlite"
    # an in-memory database exists only on the store's own connection
    own = sqlite and engine.url.database not in (None, "", ":memory:")
    target = _sqlite_migration_engine(engine) if own else engine
    try:
        with target.begin() as conn:
            if not sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            before = current_revision(conn)
            cfg = _alembic_config()
            cfg.attributes["connection"] = conn
            cfg.attributes["region"] = region
            command.upgrade(cfg, "head")
            after = current_revision(conn)
    finally:
        if own:
            target.dispose()
    assert after is not None
    return before, after


def _sqlite_migration_engine(engine: Engine) -> Engine:
    """A connection that really wraps the migration in one transaction. The sqlite3
    driver never BEGINs before DDL, so a migration that failed half-way would stay
    half-done; this is SQLAlchemy's documented recipe (driver autocommit, our BEGIN)."""
    migrating = create_engine(engine.url, poolclass=NullPool)

    @event.listens_for(migrating, "connect")
    def _connect(dbapi_conn: Any, _record: object) -> None:
        dbapi_conn.isolation_level = None
        _sqlite_pragmas(dbapi_conn, _record)

    @event.listens_for(migrating, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return migrating


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


class CallStore:
    def __init__(self, url: str, *, region: str = DEFAULT_REGION, migrate: bool = True) -> None:
        """Open the database at `url` and upgrade its schema (unless `migrate=False`).

        `region`: how numbers without a country code are read (ISO 3166 code)."""
        self.url = url
        self.region = region
        self.engine: Engine = create_engine(url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        event.listen(self.sessions, "before_flush", self._normalise_new_phones)
        if migrate:
            self.upgrade()

    # ------------------------------------------------------------------ schema

    def upgrade(self) -> tuple[str | None, str]:
        """Bring the schema to the newest revision; returns (before, after)."""
        return upgrade(self.engine, self.region)

    def revision(self) -> str | None:
        with self.engine.connect() as conn:
            return current_revision(conn)

    def _normalise_new_phones(self, session: Session, _context: object, _i: object) -> None:
        """Customers added with just `phone=` (the demo, older callers of the store) get
        their `phones` row; new numbers get their E.164 form."""
        for obj in list(session.new):
            if isinstance(obj, Customer) and obj.phone and not obj.phones:
                obj.phones.append(
                    PhoneNumber(raw=obj.phone, e164=normalise(obj.phone, self.region))
                )
            elif isinstance(obj, PhoneNumber) and obj.e164 is None and obj.raw:
                obj.e164 = normalise(obj.raw, self.region)

    # ------------------------------------------------------------------ look-ups

    def lookup(self, by: str, value: str) -> CustomerCard | None:
        """A customer by calling number (`by="caller"`) or account number (otherwise)."""
        with self.sessions() as session:
            customer = (
                self._by_number(session, value)
                if by == "caller"
                else self._by_account(session, value)
            )
            if customer is None:
                return None
            return self._card(session, customer)

    def _by_number(self, session: Session, number: str) -> Customer | None:
        for e164 in caller_candidates(number, self.region):
            query = (
                select(Customer)
                .join(PhoneNumber, PhoneNumber.customer_id == Customer.customer_id)
                .where(PhoneNumber.e164 == e164)
                .order_by(Customer.customer_id)
                .limit(1)
            )
            found = session.scalars(query).first()
            if found is not None:
                return found
        return None

    def _by_account(self, session: Session, account: str) -> Customer | None:
        wanted = {account.strip(), digits(account)} - {""}
        if not wanted:
            return None
        query = select(Customer).where(Customer.account_number.in_(sorted(wanted)))
        return session.scalars(query.order_by(Customer.customer_id).limit(1)).first()

    def _card(self, session: Session, customer: Customer) -> CustomerCard:
        tickets = session.scalars(
            select(Ticket).where(
                Ticket.customer_id == customer.customer_id, Ticket.status != "closed"
            )
        ).all()
        ranked = rank_tickets(tickets)
        preferred = next((t.assignee for t in ranked if t.assignee), None)
        return CustomerCard(
            customer_id=customer.customer_id,
            name=customer.name,
            company=customer.company,
            tier=customer.tier,
            vip=customer.vip,
            language=customer.language,
            ticket_priority=ranked[0].priority if ranked else "",
            open_tickets=[ticket_summary(t) for t in ranked],
            account_number=customer.account_number or "",
            email=customer.email or "",
            owner=customer.owner or "",
            tags=list(customer.tags or []),
            phones=[p.e164 for p in customer.phones if p.e164],
            preferred_agent=preferred or "",
            recent_interactions=self._interactions(session, customer.customer_id, 5),
        )

    def customer(self, customer_id: str) -> Customer | None:
        """The customer with phones loaded (detached: read it, don't change it)."""
        with self.sessions() as session:
            return session.get(Customer, customer_id)

    def search_customers(self, query: str, limit: int = 20) -> list[Customer]:
        """By part of the name or company (any case), part of a number (4+ digits) or the
        whole account number; by name."""
        query = query.strip()
        if not query:
            return []
        wanted = digits(query)
        matches = [
            func.lower(Customer.name).contains(query.lower(), autoescape=True),
            func.lower(Customer.company).contains(query.lower(), autoescape=True),
            Customer.account_number == query,
        ]
        if len(wanted) >= 4:
            numbers = select(PhoneNumber.customer_id).where(PhoneNumber.e164.contains(wanted))
            matches.append(Customer.customer_id.in_(numbers))
        with self.sessions() as session:
            found = session.scalars(
                select(Customer).where(or_(*matches)).order_by(Customer.name).limit(limit)
            )
            return list(found)

    # ------------------------------------------------------------------ customers

    def add_phone(self, customer_id: str, raw: str, label: str = "") -> str:
        """Give a customer one more number (nothing if they have it); returns its E.164.
        Raises ValueError for what is not a phone number, KeyError for no such customer."""
        e164 = normalise(raw, self.region)
        if e164 is None:
            raise ValueError(f"not a phone number: {raw!r}")
        with self.sessions.begin() as session:
            customer = session.get(Customer, customer_id)
            if customer is None:
                raise KeyError(customer_id)
            if all(p.e164 != e164 for p in customer.phones):
                customer.phones.append(PhoneNumber(e164=e164, raw=raw.strip(), label=label))
                if not customer.phone:
                    customer.phone = digits(raw)
        return e164

    def create_customer(
        self,
        *,
        name: str,
        at: datetime,
        phones: Sequence[str] = (),
        customer_id: str | None = None,
        **fields: Any,
    ) -> str:
        """A new customer (`CUSTOMER_FIELDS`) with its numbers in E.164; returns its id.

        Raises BadPhone for what is not a phone number, PhoneTaken / AccountTaken when
        another customer already has the number / account number."""
        values = _customer_values(fields)
        numbers = self._numbers(phones)
        customer_id = customer_id or f"c-{uuid.uuid4().hex[:10]}"
        with self.sessions.begin() as session:
            if session.get(Customer, customer_id) is not None:
                raise ValueError(f"customer {customer_id} exists already")
            self._check_numbers(session, numbers, customer_id)
            self._check_account(session, values.get("account_number"), customer_id)
            customer = Customer(customer_id=customer_id, name=name, created_at=at,
                                updated_at=at, **values)  # fmt: skip
            customer.phones = [PhoneNumber(e164=e164, raw=raw) for raw, e164 in numbers]
            customer.phone = digits(numbers[0][0]) if numbers else None
            session.add(customer)
        return customer_id

    def update_customer(
        self,
        customer_id: str,
        *,
        at: datetime,
        add_phones: Sequence[str] = (),
        remove_phones: Sequence[str] = (),
        **fields: Any,
    ) -> list[str]:
        """Change some of a customer's fields (`CUSTOMER_FIELDS`), add or remove numbers;
        returns what changed (`phones` for the numbers). KeyError: no such customer;
        BadPhone, PhoneTaken, AccountTaken as for `create_customer`."""
        values = _customer_values(fields)
        adding = self._numbers(add_phones)
        removing = {e164 for _, e164 in self._numbers(remove_phones)}
        changed: list[str] = []
        with self.sessions.begin() as session:
            customer = session.get(Customer, customer_id)
            if customer is None:
                raise KeyError(customer_id)
            self._check_numbers(session, adding, customer_id)
            if values.get("account_number") != customer.account_number:
                self._check_account(session, values.get("account_number"), customer_id)
            for name, value in values.items():
                if getattr(customer, name) != value:
                    setattr(customer, name, value)
                    changed.append(name)
            kept = [p for p in customer.phones if p.e164 not in removing]
            have = {p.e164 for p in kept}
            kept += [PhoneNumber(e164=e164, raw=raw) for raw, e164 in adding if e164 not in have]
            if [p.e164 for p in kept] != [p.e164 for p in customer.phones]:
                customer.phones = kept
                customer.phone = digits(kept[0].raw) if kept else None
                changed.append("phones")
            if changed:
                customer.updated_at = at
        return changed

    def delete_customer(self, customer_id: str) -> dict[str, int]:
        """Delete a customer with no open work: their numbers, closed tickets (with their
        history and call links) go too; their calls stay, unlinked from them (the center's
        record of calls keeps the number that called). KeyError: no such customer;
        OpenTickets: a ticket is not closed yet (nothing is deleted)."""
        with self.sessions.begin() as session:
            customer = session.get(Customer, customer_id)
            if customer is None:
                raise KeyError(customer_id)
            tickets = session.scalars(select(Ticket).where(Ticket.customer_id == customer_id)).all()
            still_open = sorted(t.ticket_id for t in tickets if t.status != "closed")
            if still_open:
                raise OpenTickets(customer_id, still_open)
            ids = [t.ticket_id for t in tickets]
            if ids:
                session.execute(delete(CallTicket).where(CallTicket.ticket_id.in_(ids)))
            for ticket in tickets:
                session.delete(ticket)
            unlinked = session.scalar(
                select(func.count()).where(CallRecord.customer_id == customer_id)
            )
            session.execute(
                update(CallRecord)
                .where(CallRecord.customer_id == customer_id)
                .values(customer_id=None)
            )
            session.delete(customer)
        return {"tickets_deleted": len(ids), "calls_unlinked": unlinked or 0}

    def _numbers(self, raws: Iterable[str]) -> list[tuple[str, str]]:
        """(as given, E.164) of each number, each once; BadPhone names the first bad one."""
        out: list[tuple[str, str]] = []
        for raw in raws:
            e164 = normalise(raw, self.region)
            if e164 is None:
                raise BadPhone(raw)
            if all(e164 != seen for _, seen in out):
                out.append((raw.strip(), e164))
        return out

    def _check_numbers(
        self, session: Session, numbers: Sequence[tuple[str, str]], customer_id: str
    ) -> None:
        if not numbers:
            return
        owner = session.execute(
            select(PhoneNumber.e164, Customer.customer_id, Customer.name)
            .join(Customer, Customer.customer_id == PhoneNumber.customer_id)
            .where(
                PhoneNumber.e164.in_([e164 for _, e164 in numbers]),
                Customer.customer_id != customer_id,
            )
            .order_by(Customer.customer_id)
            .limit(1)
        ).first()
        if owner is not None:
            raise PhoneTaken(str(owner[0]), owner[1], owner[2])

    def _check_account(self, session: Session, account: str | None, customer_id: str) -> None:
        if not account:
            return
        owner = session.scalars(
            select(Customer).where(
                Customer.account_number == account, Customer.customer_id != customer_id
            )
        ).first()
        if owner is not None:
            raise AccountTaken(account, owner.customer_id, owner.name)

    def remember(self, card: CustomerCard, *, at: datetime) -> None:
        """Keep a copy of an external CRM's card (customer, numbers, open tickets), so the
        fallback still knows the caller when that CRM is away and local rows (voicemail
        tickets, call links) have their customer."""
        with self.sessions.begin() as session:
            customer = session.get(Customer, card.customer_id)
            if customer is None:
                customer = Customer(customer_id=card.customer_id, created_at=at)
                session.add(customer)
            customer.name, customer.company, customer.tier = card.name, card.company, card.tier
            customer.vip, customer.language = card.vip, card.language
            customer.email, customer.owner = card.email or None, card.owner or None
            customer.tags, customer.updated_at = list(card.tags), at
            if card.account_number and customer.account_number != card.account_number:
                taken = session.scalars(
                    select(Customer).where(Customer.account_number == card.account_number)
                ).first()
                if taken is None:
                    customer.account_number = card.account_number
            known = {p.e164 for p in customer.phones}
            for number in card.phones:
                e164 = normalise(number, self.region)
                if e164 is not None and e164 not in known:
                    customer.phones.append(PhoneNumber(e164=e164, raw=number))
                    known.add(e164)
            if not customer.phone and customer.phones:
                customer.phone = digits(customer.phones[0].raw)
            for t in card.open_tickets:
                if not t.get("ticket_id"):
                    continue
                ticket = session.get(Ticket, t["ticket_id"])
                if ticket is None:
                    ticket = Ticket(
                        ticket_id=t["ticket_id"], customer_id=card.customer_id, created_at=at
                    )
                    session.add(ticket)
                ticket.subject = t.get("subject") or ticket.subject or ""
                ticket.priority = t.get("priority") or "normal"
                ticket.status = t.get("status") or "open"
                ticket.assignee = t.get("assignee") or None
                ticket.sla_due_at = _parse_time(t.get("sla_due_at"))

    def seed(self, customers: list[Customer], tickets: list[Ticket]) -> int:
        """Add demo customers once (an empty customers table only); returns how many."""
        now = datetime.now(UTC)
        with self.sessions.begin() as session:
            if session.scalars(select(Customer).limit(1)).first() is not None:
                return 0
            for customer in customers:
                customer.created_at = customer.created_at or now
            session.add_all(customers)
            session.flush()
            for ticket in tickets:
                ticket.created_at = ticket.created_at or now
                session.add(ticket)
                session.add(TicketEvent(ticket_id=ticket.ticket_id, at=now, kind="created",
                                        actor="seed", new_value=ticket.status))  # fmt: skip
        return len(customers)

    # ------------------------------------------------------------------ tickets

    def create_ticket(
        self,
        *,
        customer_id: str,
        subject: str,
        at: datetime,
        actor: str = "",
        priority: str = "normal",
        status: str = "open",
        channel: str = "phone",
        assignee: str | None = None,
        sla_due_at: datetime | None = None,
        description: str | None = None,
        call_id: str | None = None,
        ticket_id: str | None = None,
    ) -> str:
        """A new ticket (and its `created` history row), linked to `call_id` if given."""
        ticket_id = ticket_id or f"T-{uuid.uuid4().hex[:10].upper()}"
        with self.sessions.begin() as session:
            session.add(
                Ticket(
                    ticket_id=ticket_id, customer_id=customer_id, subject=subject,
                    status=status, priority=priority, channel=channel, assignee=assignee,
                    sla_due_at=_as_utc(sla_due_at), description=description, call_id=call_id,
                    created_at=at, updated_at=at,
                )
            )  # fmt: skip
            session.flush()
            session.add(TicketEvent(ticket_id=ticket_id, at=at, actor=actor, kind="created",
                                    new_value=status))  # fmt: skip
            if call_id:
                self._link(session, call_id, ticket_id, actor=actor, at=at)
        return ticket_id

    def update_ticket(
        self,
        ticket_id: str,
        *,
        at: datetime,
        actor: str = "",
        note: str | None = None,
        **changes: Any,
    ) -> list[str]:
        """Change a ticket's fields (`TICKET_FIELDS`); one history row per field that
        really changed, plus one for `note`. Returns the changed fields."""
        unknown = set(changes) - set(TICKET_FIELDS)
        if unknown:
            raise ValueError(f"not a ticket field: {', '.join(sorted(unknown))}")
        changed: list[str] = []
        with self.sessions.begin() as session:
            ticket = session.get(Ticket, ticket_id)
            if ticket is None:
                raise KeyError(ticket_id)
            for name, value in changes.items():
                old = getattr(ticket, name)
                if name == "sla_due_at":
                    old, value = utc(old), _as_utc(value)
                if old == value:
                    continue
                setattr(ticket, name, value)
                changed.append(name)
                session.add(TicketEvent(ticket_id=ticket_id, at=at, actor=actor, kind=name,
                                        old_value=_text(old), new_value=_text(value)))  # fmt: skip
            if note:
                session.add(TicketEvent(ticket_id=ticket_id, at=at, actor=actor, kind="note",
                                        note=note))  # fmt: skip
            if changed or note:
                ticket.updated_at = at
        return changed

    def ticket(self, ticket_id: str) -> Ticket | None:
        """The ticket with its history loaded (detached)."""
        with self.sessions() as session:
            return session.get(Ticket, ticket_id)

    def customer_tickets(self, customer_id: str) -> list[dict[str, str]] | None:
        """All of a customer's tickets: the open ones ranked (most urgent, nearest SLA),
        then the closed ones, last changed first. None: no such customer."""
        with self.sessions() as session:
            if session.get(Customer, customer_id) is None:
                return None
            tickets = session.scalars(select(Ticket).where(Ticket.customer_id == customer_id)).all()
        still_open = rank_tickets(t for t in tickets if t.status != "closed")
        far = datetime.min.replace(tzinfo=UTC)
        closed = sorted(
            (t for t in tickets if t.status == "closed"),
            key=lambda t: utc(t.updated_at) or utc(t.created_at) or far,
            reverse=True,
        )
        return [ticket_summary(t) for t in [*still_open, *closed]]

    def ticket_detail(self, ticket_id: str) -> dict[str, Any] | None:
        """A ticket as the desktop shows it: its fields, every change (oldest first) and
        the calls linked to it. None: no such ticket."""
        with self.sessions() as session:
            ticket = session.get(Ticket, ticket_id)
            if ticket is None:
                return None
            calls = sorted(
                session.scalars(select(CallTicket.call_id).where(CallTicket.ticket_id == ticket_id))
            )
            return {
                **ticket_summary(ticket),
                "customer_id": ticket.customer_id,
                "channel": ticket.channel,
                "description": ticket.description or "",
                "created_at": iso(ticket.created_at),
                "updated_at": iso(ticket.updated_at),
                "calls": calls,
                "history": [
                    {"at": iso(e.at), "actor": e.actor, "kind": e.kind, "old": e.old_value,
                     "new": e.new_value, "note": e.note}
                    for e in ticket.history
                ],
            }  # fmt: skip

    def file_voicemail(
        self, *, call_id: str, customer_id: str, mailbox: str, caller: str, at: datetime
    ) -> str:
        """Open a ticket for a voicemail from a known customer (once per call), linked to
        the call; returns its id."""
        ticket_id = f"VM-{call_id[:12]}"
        with self.sessions.begin() as session:
            if session.get(Customer, customer_id) is None:
                # a card from an external CRM that was never remembered: the ticket still
                # needs its customer row (PostgreSQL enforces the foreign key)
                stub = Customer(customer_id=customer_id, name=caller, phone=digits(caller),
                                created_at=at)  # fmt: skip
                if caller.strip():
                    stub.phones = [PhoneNumber(raw=caller, e164=normalise(caller, self.region))]
                session.add(stub)
                session.flush()
            if session.get(Ticket, ticket_id) is None:
                session.add(
                    Ticket(
                        ticket_id=ticket_id, customer_id=customer_id,
                        subject=f"Voicemail for {mailbox} from {caller}", status="open",
                        priority="normal", channel="voicemail", call_id=call_id,
                        created_at=at, updated_at=at,
                    )
                )  # fmt: skip
                session.flush()
                session.add(TicketEvent(ticket_id=ticket_id, at=at, actor="ivr", kind="created",
                                        new_value="open"))  # fmt: skip
            self._link(session, call_id, ticket_id, actor="ivr", at=at)
        return ticket_id

    # ------------------------------------------------------------------ interactions

    def save(self, record: CallRecord) -> None:
        """Write the core's picture of a call (only the columns it set: see the model)."""
        if record.customer_id is None:
            # the agent may have linked the caller to a customer during the call
            # (`link_customer`): the core's later picture, without one, must not undo it
            del_attribute(record, "customer_id")
        with self.sessions.begin() as session:
            session.merge(record)

    def get(self, call_id: str) -> CallRecord | None:
        with self.sessions() as session:
            return session.get(CallRecord, call_id)

    def recent(self, limit: int = 50) -> list[CallRecord]:
        with self.sessions() as session:
            query = select(CallRecord).order_by(CallRecord.arrived_at.desc()).limit(limit)
            return list(session.scalars(query))

    def wrap_up(
        self,
        call_id: str,
        *,
        disposition: str,
        at: datetime,
        notes: str | None = None,
        wrap_up_s: float | None = None,
        tickets: Sequence[str] = (),
        actor: str = "",
    ) -> None:
        """What the agent recorded after the call; links `tickets` to it. The call's row
        must exist (the core writes it at hang-up): KeyError otherwise."""
        with self.sessions.begin() as session:
            record = session.get(CallRecord, call_id)
            if record is None:
                raise KeyError(call_id)
            record.disposition, record.notes = disposition, notes
            if wrap_up_s is not None:
                record.wrap_up_s = wrap_up_s
            for ticket_id in tickets:
                if session.get(Ticket, ticket_id) is None:
                    raise KeyError(ticket_id)
                self._link(session, call_id, ticket_id, actor=actor, at=at)

    def link_tickets(
        self, call_id: str, ticket_ids: Iterable[str], *, at: datetime, actor: str = ""
    ) -> None:
        with self.sessions.begin() as session:
            for ticket_id in ticket_ids:
                self._link(session, call_id, ticket_id, actor=actor, at=at)

    def linked_tickets(self, call_id: str) -> list[str]:
        with self.sessions() as session:
            query = select(CallTicket.ticket_id).where(CallTicket.call_id == call_id)
            return sorted(session.scalars(query))

    def _link(
        self, session: Session, call_id: str, ticket_id: str, *, actor: str, at: datetime
    ) -> None:
        if session.get(CallTicket, (call_id, ticket_id)) is not None:
            return
        session.add(CallTicket(call_id=call_id, ticket_id=ticket_id, linked_at=at, actor=actor))
        session.add(TicketEvent(ticket_id=ticket_id, at=at, actor=actor, kind="call",
                                new_value=call_id))  # fmt: skip

    def link_customer(self, call_id: str, customer_id: str) -> bool:
        """Say who called: the call's row gets `customer_id` (a caller the CRM did not
        know when the call came in). False: the call has no row yet (still up). KeyError:
        no such customer; ValueError: the call is another customer's already."""
        with self.sessions.begin() as session:
            if session.get(Customer, customer_id) is None:
                raise KeyError(customer_id)
            record = session.get(CallRecord, call_id)
            if record is None:
                return False
            if record.customer_id not in (None, customer_id):
                raise ValueError(
                    f"call {call_id} is linked to customer {record.customer_id} already"
                )
            record.customer_id = customer_id
        return True

    def calls(
        self,
        *,
        agent: str | None = None,
        customer_id: str | None = None,
        limit: int = 20,
        before: str | None = None,
    ) -> list[dict[str, Any]]:
        """Calls newest first (an agent's, a customer's, or all), each with the customer's
        name and the linked tickets. `before`: a call id from the previous page — the page
        goes on with the calls older than it (ties in time ordered by call id). KeyError:
        `before` names no call."""
        query = select(CallRecord, Customer.name).outerjoin(
            Customer, Customer.customer_id == CallRecord.customer_id
        )
        if agent is not None:
            query = query.where(CallRecord.agent == agent)
        if customer_id is not None:
            query = query.where(CallRecord.customer_id == customer_id)
        with self.sessions() as session:
            if before is not None:
                cursor = session.get(CallRecord, before)
                if cursor is None:
                    raise KeyError(before)
                at = select(CallRecord.arrived_at).where(CallRecord.call_id == before)
                at_sub = at.scalar_subquery()
                query = query.where(
                    or_(
                        CallRecord.arrived_at < at_sub,
                        and_(CallRecord.arrived_at == at_sub, CallRecord.call_id < before),
                    )
                )
            query = query.order_by(CallRecord.arrived_at.desc(), CallRecord.call_id.desc())
            rows = session.execute(query.limit(limit)).all()
            links: dict[str, list[str]] = {}
            if rows:
                ids = [record.call_id for record, _ in rows]
                for link in session.scalars(select(CallTicket).where(CallTicket.call_id.in_(ids))):
                    links.setdefault(link.call_id, []).append(link.ticket_id)
            return [
                call_summary(record, name, sorted(links.get(record.call_id, [])))
                for record, name in rows
            ]

    def interactions(self, customer_id: str, limit: int = 5) -> list[dict[str, Any]]:
        """A customer's last calls, newest first (what the screen pop shows)."""
        with self.sessions() as session:
            return self._interactions(session, customer_id, limit)

    def _interactions(self, session: Session, customer_id: str, limit: int) -> list[dict[str, Any]]:
        rows = session.scalars(
            select(CallRecord)
            .where(CallRecord.customer_id == customer_id)
            .order_by(CallRecord.arrived_at.desc())
            .limit(limit)
        ).all()
        links: dict[str, list[str]] = {}
        if rows:
            query = select(CallTicket).where(CallTicket.call_id.in_([r.call_id for r in rows]))
            for link in session.scalars(query):
                links.setdefault(link.call_id, []).append(link.ticket_id)
        return [
            {"call_id": r.call_id, "at": iso(r.arrived_at), "queue": r.queue, "agent": r.agent,
             "answered": r.answered_at is not None, "disposition": r.disposition,
             "tickets": sorted(links.get(r.call_id, []))}
            for r in rows
        ]  # fmt: skip

    def interaction(self, call_id: str) -> dict[str, Any] | None:
        """One call as a JSON-ready interaction (what is written back to an external CRM)."""
        with self.sessions() as session:
            record = session.get(CallRecord, call_id)
            if record is None:
                return None
            query = select(CallTicket.ticket_id).where(CallTicket.call_id == call_id)
            return interaction_payload(record, sorted(session.scalars(query)))

    # ------------------------------------------------------------------ plumbing

    def ping(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT 1")).scalar() == 1

    def close(self) -> None:
        self.engine.dispose()


def rank_tickets(tickets: Iterable[Ticket]) -> list[Ticket]:
    """Most urgent first; among equals the nearest SLA due time, then the oldest."""
    far = datetime.max.replace(tzinfo=UTC)
    return sorted(
        tickets,
        key=lambda t: (
            -PRIORITY_ORDER.get(t.priority, 0),
            utc(t.sla_due_at) or far,
            utc(t.created_at) or far,
            t.ticket_id,
        ),
    )


def ticket_summary(ticket: Ticket) -> dict[str, str]:
    return {
        "ticket_id": ticket.ticket_id,
        "subject": ticket.subject,
        "priority": ticket.priority,
        "status": ticket.status,
        "assignee": ticket.assignee or "",
        "sla_due_at": iso(ticket.sla_due_at),
    }


def call_summary(
    record: CallRecord, customer_name: str | None, tickets: Sequence[str]
) -> dict[str, Any]:
    """One line of a call history: who called, who took it, when, how it ended."""
    return {
        "call_id": record.call_id,
        "caller": record.caller,
        "customer_id": record.customer_id,
        "customer_name": customer_name,
        "queue": record.queue,
        "agent": record.agent,
        "arrived_at": iso(record.arrived_at),
        "answered_at": iso(record.answered_at) or None,
        "ended_at": iso(record.ended_at) or None,
        "talk_s": _seconds(record.answered_at, record.ended_at),
        "hangup_side": record.hangup_side,
        "disposition": record.disposition,
        "tickets": list(tickets),
    }


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    a, b = utc(start), utc(end)
    return None if a is None or b is None else round((b - a).total_seconds(), 3)


def interaction_payload(record: CallRecord, tickets: Sequence[str]) -> dict[str, Any]:
    """A call row as the interaction an external CRM receives (times ISO 8601 UTC,
    durations in seconds, the IVR path and variables as JSON values)."""

    def loads(value: str | None) -> Any:
        return json.loads(value) if value else None

    return {
        "call_id": record.call_id,
        "customer_id": record.customer_id,
        "caller": record.caller,
        "did": record.did,
        "queue": record.queue,
        "agent": record.agent,
        "arrived_at": iso(record.arrived_at),
        "answered_at": iso(record.answered_at) or None,
        "ended_at": iso(record.ended_at) or None,
        "wait_s": _seconds(record.queued_at, record.answered_at or record.ended_at),
        "talk_s": _seconds(record.answered_at, record.ended_at),
        "wrap_up_s": record.wrap_up_s,
        "hangup_side": record.hangup_side,
        "disposition": record.disposition,
        "notes": record.notes,
        "ivr_path": loads(record.ivr_path),
        "variables": loads(record.variables),
        "survey": loads(record.survey_answers),
        "recording_path": record.recording_path,
        "voicemail_path": record.voicemail_path,
        "tickets": list(tickets),
    }


def _customer_values(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The customer columns of `fields`, with empty optional text stored as NULL (an empty
    account number must not collide with another empty one)."""
    unknown = set(fields) - set(CUSTOMER_FIELDS)
    if unknown:
        raise ValueError(f"not a customer field: {', '.join(sorted(unknown))}")
    values = dict(fields)
    for name in ("account_number", "email", "owner"):
        if name in values:
            values[name] = (values[name] or "").strip() or None
    if "tags" in values:
        values["tags"] = [str(t).strip() for t in values["tags"] or [] if str(t).strip()]
    return values


def _as_utc(value: datetime | None) -> datetime | None:
    """In UTC: SQLite keeps no zone, so a time stored in another zone would read wrong."""
    aware = utc(value)
    return aware.astimezone(UTC) if aware is not None else None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return iso(value)
    return str(value)[:255]


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return utc(datetime.fromisoformat(value))
    except ValueError:
        return None


def _sqlite_pragmas(dbapi_conn: Any, _record: object) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=5000")
        # WAL: readers (the API) never block the writer. The first switch of a new file
        # can fail with "database is locked" without waiting for busy_timeout when other
        # connections open it at the same moment (the core and `kefu import`): retry.
        for attempt in range(50):
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.1)
    finally:
        cursor.close()


__all__ = [
    "Base",
    "CallRecord",
    "CallStore",
    "CustomerCard",
    "Session",
    "database_url",
    "head_revision",
    "upgrade",
]
