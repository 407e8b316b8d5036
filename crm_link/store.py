"""The SQL store behind the core: engine + session factory, and call-record writes.

Blocking SQLAlchemy calls; the async core runs them with `asyncio.to_thread` so a slow
disk never stalls call handling.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from crm_link.models import Base, CallRecord


def database_url(configured: str | None, data_dir: Path) -> str:
    return configured or f"sqlite:///{(data_dir / 'kefu.sqlite3').resolve()}"


class CallStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, pool_pre_ping=True)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

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


__all__ = ["CallRecord", "CallStore", "Session", "database_url"]
