"""The SQL store behind the core: engine + session factory, call-record writes and
the built-in CRM look-up.

Blocking SQLAlchemy calls; the async core runs them off its event loop so a slow disk
never stalls call handling. Until Alembic migrations land (issue #5), columns added to
an existing table are added here at start-up (nullable ones only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import and_, create_engine, event, func, inspect, literal, or_, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from crm_link.models import Base, CallRecord, Customer, Ticket

PRIORITY_ORDER = {"urgent": 4, "high": 3, "normal": 2, "low": 1}


@dataclass(frozen=True)
class CustomerCard:
    """What a look-up returns: the customer and their most urgent open ticket."""

    customer_id: str
    name: str
    company: str
    tier: str
    vip: bool
    language: str
    ticket_priority: str
    open_tickets: list[dict[str, str]] = field(default_factory=list)


def digits(number: str) -> str:
    return re.sub(r"\D", "", number)


def database_url(configured: str | None, data_dir: Path) -> str:
    return configured or f"sqlite:///{(data_dir / 'kefu.sqlite3').resolve()}"


class CallStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, pool_pre_ping=True)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self._add_missing_columns()
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _add_missing_columns(self) -> None:
        inspector = inspect(self.engine)
        with self.engine.begin() as conn:
            for table in Base.metadata.sorted_tables:
                present = {c["name"] for c in inspector.get_columns(table.name)}
                for column in table.columns:
                    if column.name not in present and column.nullable:
                        kind = column.type.compile(dialect=self.engine.dialect)
                        conn.execute(
                            text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
                        )

    def lookup(self, by: str, value: str) -> CustomerCard | None:
        """A customer by calling number (`by="caller"`) or account number (otherwise)."""
        wanted = digits(value)
        if not wanted:
            return None
        with self.sessions() as session:
            if by == "caller":
                # A trunk may send the number with or without the country code: either
                # one ends with the other (7 digits at least, or it is any number).
                matches = [Customer.phone == wanted]
                if len(wanted) >= 7:
                    matches.append(Customer.phone.like(f"%{wanted}"))
                    # the stored number must be a real one too: "" or "123" is a tail
                    # of every caller's number
                    matches.append(
                        and_(
                            func.length(Customer.phone) >= 7,
                            literal(wanted).like("%" + Customer.phone),
                        )
                    )
                query = select(Customer).where(or_(*matches))
            else:
                query = select(Customer).where(Customer.account_number == wanted)
            customer = session.scalars(query.order_by(Customer.customer_id).limit(1)).first()
            if customer is None:
                return None
            tickets = session.scalars(
                select(Ticket).where(
                    Ticket.customer_id == customer.customer_id, Ticket.status != "closed"
                )
            ).all()
        ranked = sorted(tickets, key=lambda t: -PRIORITY_ORDER.get(t.priority, 0))
        return CustomerCard(
            customer_id=customer.customer_id,
            name=customer.name,
            company=customer.company,
            tier=customer.tier,
            vip=customer.vip,
            language=customer.language,
            ticket_priority=ranked[0].priority if ranked else "",
            open_tickets=[
                {"ticket_id": t.ticket_id, "subject": t.subject, "priority": t.priority}
                for t in ranked
            ],
        )

    def seed(self, customers: list[Customer], tickets: list[Ticket]) -> int:
        """Add demo customers once (an empty customers table only); returns how many."""
        with self.sessions.begin() as session:
            if session.scalars(select(Customer).limit(1)).first() is not None:
                return 0
            session.add_all([*customers, *tickets])
        return len(customers)

    def file_voicemail(
        self, *, call_id: str, customer_id: str, mailbox: str, caller: str, at: datetime
    ) -> str:
        """Open a ticket for a voicemail from a known customer; returns its id."""
        ticket_id = f"VM-{call_id[:12]}"
        with self.sessions.begin() as session:
            session.merge(
                Ticket(
                    ticket_id=ticket_id,
                    customer_id=customer_id,
                    subject=f"Voicemail for {mailbox} from {caller}",
                    status="open",
                    priority="normal",
                    channel="voicemail",
                    call_id=call_id,
                    created_at=at,
                )
            )
        return ticket_id

    def save(self, record: CallRecord) -> None:
        with self.sessions.begin() as session:
            session.merge(record)

    def get(self, call_id: str) -> CallRecord | None:
        with self.sessions() as session:
            return session.get(CallRecord, call_id)

    def recent(self, limit: int = 50) -> list[CallRecord]:
        with self.sessions() as session:
            query = select(CallRecord).order_by(CallRecord.arrived_at.desc()).limit(limit)
            return list(session.scalars(query))

    def ping(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT 1")).scalar() == 1

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (the API) never block the writer
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


__all__ = ["CallRecord", "CallStore", "CustomerCard", "Session", "database_url"]
