"""SQL tables (SQLAlchemy 2.0 declarative). SQLite is the embedded default, PostgreSQL
the other supported database; the schema is built and upgraded only by the Alembic
migrations in `crm_link/migrations` (a test checks the two agree).

`CallRecord` is the interaction: the record of one call from the trunk — who called
which number, the IVR path and inputs, the queue and agent, the moments that make the
KPIs (arrived, queued, offered, answered, ended), who hung up, the recording, the RTP
packet counts that prove media flowed both ways, the survey — and what the agent wrote
at wrap-up (disposition, notes, wrap-up time, the tickets linked through `CallTicket`).
The core writes it (`session.merge`, only the columns it sets), so the wrap-up columns
survive the core's later saves of the same call.

`Customer`, `PhoneNumber`, `Ticket` and `TicketEvent` are the built-in CRM
(`crm_link.store` looks callers up in it; an external CRM replaces it through
`crm_link.adapters`). `OutboxMessage` holds interactions on their way to an external
CRM (`crm_link.outbox`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class CallRecord(Base):
    __tablename__ = "calls"

    call_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sip_call_id: Mapped[str] = mapped_column(String(255), default="")
    caller: Mapped[str] = mapped_column(String(64), index=True)
    did: Mapped[str] = mapped_column(String(64))
    ivr_digits: Mapped[str] = mapped_column(String(64), default="")
    queue: Mapped[str | None] = mapped_column(String(64), index=True)
    agent: Mapped[str | None] = mapped_column(String(64), index=True)
    worker: Mapped[int] = mapped_column(Integer)
    arrived_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    offered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    answered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    hangup_side: Mapped[str | None] = mapped_column(String(16))
    """`caller`, `agent`, `system` or `abandon`."""
    recording_path: Mapped[str | None] = mapped_column(String(1024))
    recording_duration_s: Mapped[float | None] = mapped_column(Float)
    caller_rtp_rx: Mapped[int] = mapped_column(Integer, default=0)
    caller_rtp_tx: Mapped[int] = mapped_column(Integer, default=0)
    agent_rtp_rx: Mapped[int] = mapped_column(Integer, default=0)
    agent_rtp_tx: Mapped[int] = mapped_column(Integer, default=0)
    routing_trace: Mapped[str | None] = mapped_column(Text)
    """JSON: the queue engine's decision trace for each offer (candidates, exclusions,
    winner and score)."""
    ivr_path: Mapped[str | None] = mapped_column(Text)
    """JSON list of [seconds since arrival, step] the caller took in the IVR."""
    variables: Mapped[str | None] = mapped_column(Text)
    """JSON object of what the IVR collected and set (for the agent's screen)."""
    survey_csat: Mapped[int | None] = mapped_column(Integer)
    survey_nps: Mapped[int | None] = mapped_column(Integer)
    survey_answers: Mapped[str | None] = mapped_column(Text)
    """JSON object of every survey question's score (null: not answered)."""
    flow: Mapped[str | None] = mapped_column(String(64))
    """The IVR flow and version the call ran (`main@v3`)."""
    language: Mapped[str | None] = mapped_column(String(16))
    customer_id: Mapped[str | None] = mapped_column(String(64), index=True)
    voicemail_path: Mapped[str | None] = mapped_column(String(1024))
    voicemail_duration_s: Mapped[float | None] = mapped_column(Float)
    voicemail_ticket: Mapped[str | None] = mapped_column(String(64))
    """The ticket the message was filed into (callers the CRM knows)."""
    transfer_to: Mapped[str | None] = mapped_column(String(64))
    """Number or agent the IVR transferred the call to."""
    callback_number: Mapped[str | None] = mapped_column(String(64))
    """The caller kept their place and asked to be called back here."""
    handoffs: Mapped[str | None] = mapped_column(Text)
    """JSON list of the agents' transfers of the call, in order: when, from which
    agent, to which agent or queue, blind or attended (the last holder is `agent`)."""
    # -- the agent's wrap-up (written by `CallStore.wrap_up`, never by the core's saves)
    disposition: Mapped[str | None] = mapped_column(String(64), index=True)
    """The outcome the agent chose (`resolved`, `callback`, `sale`...; the center's list)."""
    notes: Mapped[str | None] = mapped_column(Text)
    wrap_up_s: Mapped[float | None] = mapped_column(Float)
    """Seconds the agent spent in wrap-up after the call."""


def _no_tags() -> list[str]:
    return []


class Customer(Base):
    __tablename__ = "customers"

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    company: Mapped[str] = mapped_column(String(255), default="")
    tier: Mapped[str] = mapped_column(String(32), default="standard")
    vip: Mapped[bool] = mapped_column(Boolean, default=False)
    language: Mapped[str] = mapped_column(String(8), default="")
    account_number: Mapped[str | None] = mapped_column(String(64), unique=True)
    phone: Mapped[str | None] = mapped_column(String(32), index=True)
    """Digits of the main number as it was given (displays and searches); the caller
    look-up uses the normalised `phones`. `CallStore` fills `phones` from it."""
    email: Mapped[str | None] = mapped_column(String(255))
    tags: Mapped[list[str]] = mapped_column(JSON, default=_no_tags, server_default=text("'[]'"))
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    """Who looks after the account (an agent id or a name)."""
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    phones: Mapped[list[PhoneNumber]] = relationship(
        back_populates="customer",
        cascade="all, delete-orphan",
        order_by="PhoneNumber.id",
        lazy="selectin",
    )


class PhoneNumber(Base):
    """One of a customer's numbers; a number may belong to several customers (a
    company's switchboard), the look-up then takes the lowest customer id."""

    __tablename__ = "phone_numbers"
    __table_args__ = (UniqueConstraint("customer_id", "e164", name="uq_phone_numbers_customer"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.customer_id", ondelete="CASCADE"), index=True
    )
    e164: Mapped[str | None] = mapped_column(String(20), index=True)
    """`+15551234567`; None when the number could not be read (kept as `raw`, never
    matched): the migration of an older database loses nothing."""
    raw: Mapped[str] = mapped_column(String(64), default="")
    """As it was given."""
    label: Mapped[str] = mapped_column(String(16), default="")
    """`mobile`, `work`, `home`... (free text)."""

    customer: Mapped[Customer] = relationship(back_populates="phones")


class Ticket(Base):
    __tablename__ = "tickets"

    ticket_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.customer_id"), index=True)
    subject: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="open")
    """`open`, `pending` or `closed`."""
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    """`low`, `normal`, `high` or `urgent`."""
    channel: Mapped[str] = mapped_column(String(16), default="phone")
    """`phone`, `voicemail`, `email`..."""
    call_id: Mapped[str | None] = mapped_column(String(64), index=True)
    """The call the ticket was opened from (a voicemail's call)."""
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    description: Mapped[str | None] = mapped_column(Text)
    assignee: Mapped[str | None] = mapped_column(String(64), index=True)
    """The agent who owns the ticket: the preferred agent for the customer's calls."""
    sla_due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    """When the ticket must be resolved (or answered) by."""
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    history: Mapped[list[TicketEvent]] = relationship(
        back_populates="ticket",
        cascade="all, delete-orphan",
        order_by="(TicketEvent.at, TicketEvent.id)",
        lazy="selectin",
    )


class TicketEvent(Base):
    """One change of a ticket: created, a field changed (old -> new), a note, a call
    linked. Written by `CallStore.create_ticket` / `update_ticket` / `link_tickets`."""

    __tablename__ = "ticket_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ticket_id: Mapped[str] = mapped_column(
        ForeignKey("tickets.ticket_id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(64), default="")
    """Agent id, `import`, `ivr`, `system`..."""
    kind: Mapped[str] = mapped_column(String(16))
    """`created`, `status`, `priority`, `assignee`, `subject`, `sla_due_at`, `note`, `call`."""
    old_value: Mapped[str | None] = mapped_column(String(255))
    new_value: Mapped[str | None] = mapped_column(String(255))
    note: Mapped[str | None] = mapped_column(Text)

    ticket: Mapped[Ticket] = relationship(back_populates="history")


class CallTicket(Base):
    """A ticket linked to a call (interaction). No foreign key to `calls`: the core
    writes a call's row at hang-up, and a ticket can be linked before (a voicemail)."""

    __tablename__ = "call_tickets"

    call_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    ticket_id: Mapped[str] = mapped_column(
        ForeignKey("tickets.ticket_id", ondelete="CASCADE"), primary_key=True, index=True
    )
    linked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(64), default="")


class OutboxMessage(Base):
    """Something to deliver to an external CRM (an interaction), kept until it is.

    `crm_link.outbox.drain` sends the due ones, oldest first; a failure pushes
    `next_attempt_at` back exponentially. `status`: `pending`, `sent`, or `rejected`
    (the CRM refused it with a 4xx: kept for a person to look at, never retried)."""

    __tablename__ = "crm_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    target: Mapped[str] = mapped_column(String(64))
    """The adapter's name (`http`)."""
    kind: Mapped[str] = mapped_column(String(32))
    """`interaction`."""
    key: Mapped[str] = mapped_column(String(128), index=True)
    """What the message is about (the call id): a newer message for the same key
    replaces a pending one."""
    payload: Mapped[str] = mapped_column(Text)
    """JSON."""
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
