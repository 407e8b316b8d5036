"""SQL tables (SQLAlchemy 2.0 declarative). SQLite is the embedded default.

`CallRecord` is the record of one call from the trunk: who called which number, the
IVR choice, the queue and agent, the moments that make the KPIs (arrived, queued,
offered, answered, ended), who hung up, the recording, the RTP packet counts that
prove media flowed both ways, the caller's IVR path and post-call survey.

`Customer` and `Ticket` are the built-in CRM store the IVR looks callers up in (by
calling number or account number); the full CRM model (issue #5) grows them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


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
    """Digits only, as callers' numbers arrive from the trunk (E.164 without '+')."""


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
