"""The CRM model: customers' phone numbers (E.164), contact fields, ticket SLA,
assignee and history, wrap-up of interactions, call-ticket links, the CRM outbox.

Revision ID: 0002_crm_model
Revises: 0001_baseline
Create Date: 2026-11-24

Data: every `customers.phone` becomes a `phone_numbers` row, normalised against the
default region the store passes in (`config.attributes["region"]`, "US" otherwise);
one that cannot be read is kept as `raw` with no E.164 (never matched, never lost).
A ticket opened from a call (`tickets.call_id`, the voicemails) is linked to that call.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from crm_link.phones import DEFAULT_REGION, normalise

revision: str = "0002_crm_model"
down_revision: str | None = "0001_baseline"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("customers", sa.Column("email", sa.String(255)))
    op.add_column(
        "customers", sa.Column("tags", sa.JSON, nullable=False, server_default=sa.text("'[]'"))
    )
    op.add_column("customers", sa.Column("owner", sa.String(64)))
    op.add_column("customers", sa.Column("created_at", _TS))
    op.add_column("customers", sa.Column("updated_at", _TS))
    op.create_index("ix_customers_owner", "customers", ["owner"])

    phones = op.create_table(
        "phone_numbers",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "customer_id",
            sa.String(64),
            sa.ForeignKey("customers.customer_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("e164", sa.String(20)),
        sa.Column("raw", sa.String(64), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.UniqueConstraint("customer_id", "e164", name="uq_phone_numbers_customer"),
    )
    op.create_index("ix_phone_numbers_customer_id", "phone_numbers", ["customer_id"])
    op.create_index("ix_phone_numbers_e164", "phone_numbers", ["e164"])

    op.add_column("tickets", sa.Column("description", sa.Text))
    op.add_column("tickets", sa.Column("assignee", sa.String(64)))
    op.add_column("tickets", sa.Column("sla_due_at", _TS))
    op.add_column("tickets", sa.Column("updated_at", _TS))
    op.create_index("ix_tickets_assignee", "tickets", ["assignee"])
    op.create_index("ix_tickets_sla_due_at", "tickets", ["sla_due_at"])

    op.create_table(
        "ticket_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "ticket_id",
            sa.String(64),
            sa.ForeignKey("tickets.ticket_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("at", _TS, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("old_value", sa.String(255)),
        sa.Column("new_value", sa.String(255)),
        sa.Column("note", sa.Text),
    )
    op.create_index("ix_ticket_events_ticket_id", "ticket_events", ["ticket_id"])

    op.add_column("calls", sa.Column("disposition", sa.String(64)))
    op.add_column("calls", sa.Column("notes", sa.Text))
    op.add_column("calls", sa.Column("wrap_up_s", sa.Float))
    op.create_index("ix_calls_disposition", "calls", ["disposition"])

    op.create_table(
        "call_tickets",
        sa.Column("call_id", sa.String(64), primary_key=True),
        sa.Column(
            "ticket_id",
            sa.String(64),
            sa.ForeignKey("tickets.ticket_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("linked_at", _TS),
        sa.Column("actor", sa.String(64), nullable=False),
    )
    op.create_index("ix_call_tickets_ticket_id", "call_tickets", ["ticket_id"])

    op.create_table(
        "crm_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=False),
        sa.Column("sent_at", _TS),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("ix_crm_outbox_key", "crm_outbox", ["key"])
    op.create_index("ix_crm_outbox_status", "crm_outbox", ["status"])
    op.create_index("ix_crm_outbox_next_attempt_at", "crm_outbox", ["next_attempt_at"])

    _move_phones(phones)
    _link_ticket_calls()


def _move_phones(phones: sa.Table) -> None:
    region = context.config.attributes.get("region") or DEFAULT_REGION
    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT customer_id, phone FROM customers WHERE phone IS NOT NULL AND phone <> ''")
    ).all()
    if rows:
        op.bulk_insert(
            phones,
            [
                {"customer_id": cid, "e164": normalise(phone, region), "raw": phone, "label": ""}
                for cid, phone in rows
            ],
        )


def _link_ticket_calls() -> None:
    op.execute(
        "INSERT INTO call_tickets (call_id, ticket_id, linked_at, actor) "
        "SELECT call_id, ticket_id, created_at, 'migration' FROM tickets "
        "WHERE call_id IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_table("crm_outbox")
    op.drop_table("call_tickets")
    with op.batch_alter_table("calls") as batch:
        batch.drop_index("ix_calls_disposition")
        for name in ("wrap_up_s", "notes", "disposition"):
            batch.drop_column(name)
    op.drop_table("ticket_events")
    with op.batch_alter_table("tickets") as batch:
        batch.drop_index("ix_tickets_sla_due_at")
        batch.drop_index("ix_tickets_assignee")
        for name in ("updated_at", "sla_due_at", "assignee", "description"):
            batch.drop_column(name)
    op.drop_table("phone_numbers")
    with op.batch_alter_table("customers") as batch:
        batch.drop_index("ix_customers_owner")
        for name in ("updated_at", "created_at", "owner", "tags", "email"):
            batch.drop_column(name)
