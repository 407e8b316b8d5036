"""The CRM outbox: interactions waiting to be written to an external CRM.

A message is a row in `crm_outbox`, written in the same database as the call it is
about, so it survives restarts and a CRM that is away for hours. `drain` sends the due
ones oldest first, one at a time: a delivered message is marked `sent`; a CRM that is
down (`CrmUnavailable`) pushes the message back by `Backoff` and ends the round (the
rest would fail the same way); one the CRM refuses (`CrmRejected`, a 4xx) is marked
`rejected` and kept for a person to look at. Delivery is at least once: the receiver
gets `Idempotency-Key: kefu-outbox-<id>` and the call id in the payload.

Each message is claimed before it is sent (its `next_attempt_at` moved a lease ahead,
`FOR UPDATE SKIP LOCKED` on PostgreSQL), so two drainers do not send the same message
at the same time. Time comes in as `now` (no clock here): the core passes the wall
clock, tests pass whatever moment they need.

Neighbours: `crm_link.models.OutboxMessage` (the table), `crm_link.adapters` (the
deliverers and their two exceptions), `crm_link.crm.CrmLink` (who calls this).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from crm_link.models import OutboxMessage
from crm_link.store import CallStore, utc

log = logging.getLogger(__name__)


class CrmUnavailable(Exception):
    """The CRM is slow, down or failing (timeout, refused connection, 5xx, 408, 429):
    try again later."""


class CrmRejected(Exception):
    """The CRM refused the message (a 4xx): sending it again will not help."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Wait `base_s` after the first failure, `factor` times longer after each further
    one, never more than `max_s`."""

    base_s: float = 5.0
    factor: float = 2.0
    max_s: float = 900.0

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        # capped before the power can overflow a float (a CRM away for days)
        exponent = min(failures - 1, 64)
        return float(min(self.max_s, self.base_s * self.factor**exponent))


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainReport:
    sent: int = 0
    retried: int = 0
    """Failed this round; due again after their backoff."""
    rejected: int = 0
    pending: int = 0
    """Still waiting after this round (due later or not reached)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """A claimed message, detached from the database."""

    id: int
    kind: str
    key: str
    payload: dict[str, Any]
    attempts: int

    @property
    def idempotency_key(self) -> str:
        return f"kefu-outbox-{self.id}"


def enqueue(
    store: CallStore,
    *,
    target: str,
    kind: str,
    key: str,
    payload: Mapping[str, Any],
    now: datetime,
) -> int:
    """Queue `payload` for `target`; returns the message id. The same payload as the
    key's latest message (sent, or on its way) is not queued again: a call saved twice
    with nothing new for the CRM is written once. A pending message for the same key
    that was never tried takes a new payload instead; one already tried stays as it is
    and a new message follows it (an update, e.g. the recording or a wrap-up)."""
    now = now.astimezone(UTC)
    body = json.dumps(payload, ensure_ascii=False, sort_keys=True)
    with store.sessions.begin() as session:
        latest = session.scalars(
            select(OutboxMessage)
            .where(
                OutboxMessage.target == target,
                OutboxMessage.key == key,
                OutboxMessage.kind == kind,
                OutboxMessage.status != "rejected",
            )
            .order_by(OutboxMessage.id.desc())
            .limit(1)
        ).first()
        if latest is not None and latest.payload == body:
            return latest.id
        waiting = session.scalars(
            select(OutboxMessage)
            .where(
                OutboxMessage.target == target,
                OutboxMessage.key == key,
                OutboxMessage.kind == kind,
                OutboxMessage.status == "pending",
                OutboxMessage.attempts == 0,
            )
            .order_by(OutboxMessage.id.desc())
            .limit(1)
            .with_for_update()
        ).first()
        if waiting is not None:
            waiting.payload = body
            return waiting.id
        message = OutboxMessage(
            target=target, kind=kind, key=key, payload=body, status="pending",
            attempts=0, created_at=now, next_attempt_at=now,
        )  # fmt: skip
        session.add(message)
        session.flush()
        return message.id


def drain(
    store: CallStore,
    deliver: Callable[[Message], None],
    *,
    target: str,
    now: datetime,
    backoff: Backoff = Backoff(),
    limit: int = 50,
    lease_s: float = 60.0,
) -> DrainReport:
    """Send up to `limit` due messages of `target` through `deliver` (see the module
    docstring for what its exceptions mean)."""
    now = now.astimezone(UTC)
    sent = retried = rejected = 0
    for _ in range(limit):
        message = _claim(store, target, now, lease_s)
        if message is None:
            break
        try:
            deliver(message)
        except CrmRejected as exc:
            _finish(store, message.id, now, status="rejected", error=str(exc))
            rejected += 1
            log.error("CRM refused outbox message %d (%s): %s", message.id, message.key, exc)
            continue
        except Exception as exc:
            # CrmUnavailable, or a bug in a deliverer: either way the message is kept
            delay = backoff.delay(message.attempts + 1)
            _finish(store, message.id, now, error=f"{type(exc).__name__}: {exc}", retry_in=delay)
            retried += 1
            log.warning(
                "CRM write-back of %s failed (try %d), next in %.0f s: %s",
                message.key, message.attempts + 1, delay, exc,
            )  # fmt: skip
            break
        _finish(store, message.id, now, status="sent")
        sent += 1
    return DrainReport(sent=sent, retried=retried, rejected=rejected, pending=count(store, target))


def _claim(store: CallStore, target: str, now: datetime, lease_s: float) -> Message | None:
    with store.sessions.begin() as session:
        row = session.scalars(
            select(OutboxMessage)
            .where(
                OutboxMessage.target == target,
                OutboxMessage.status == "pending",
                OutboxMessage.next_attempt_at <= now,
            )
            .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if row is None:
            return None
        row.next_attempt_at = now + timedelta(seconds=lease_s)
        return Message(
            id=row.id, kind=row.kind, key=row.key, payload=json.loads(row.payload),
            attempts=row.attempts,
        )  # fmt: skip


def _finish(
    store: CallStore,
    message_id: int,
    now: datetime,
    *,
    status: str = "pending",
    error: str | None = None,
    retry_in: float = 0.0,
) -> None:
    with store.sessions.begin() as session:
        row = session.get(OutboxMessage, message_id)
        if row is None:  # deleted by hand meanwhile
            return
        row.attempts += 1
        row.status = status
        row.last_error = error[:2000] if error else None
        if status == "sent":
            row.sent_at = now
        if status == "pending":
            row.next_attempt_at = now + timedelta(seconds=retry_in)


def count(store: CallStore, target: str | None = None, status: str = "pending") -> int:
    with store.sessions() as session:
        query = select(func.count()).select_from(OutboxMessage)
        query = query.where(OutboxMessage.status == status)
        if target is not None:
            query = query.where(OutboxMessage.target == target)
        return int(session.scalar(query) or 0)


def messages(store: CallStore, target: str | None = None) -> list[OutboxMessage]:
    """Every message, oldest first (for tests and an operator's look)."""
    with store.sessions() as session:
        query = select(OutboxMessage).order_by(OutboxMessage.id)
        if target is not None:
            query = query.where(OutboxMessage.target == target)
        rows = list(session.scalars(query))
    for row in rows:  # SQLite hands them back without a zone
        row.created_at = utc(row.created_at) or row.created_at
        row.next_attempt_at = utc(row.next_attempt_at) or row.next_attempt_at
        row.sent_at = utc(row.sent_at)
    return rows
