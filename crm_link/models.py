"""SQL tables (SQLAlchemy 2.0 declarative). SQLite is the embedded default.

`CallRecord` is the record of one call from the trunk: who called which number, the
IVR choice, the queue and agent, the moments that make the KPIs (arrived, queued,
offered, answered, ended), who hung up, the recording, and the RTP packet counts that
prove media flowed both ways.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Float, Integer, String
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
