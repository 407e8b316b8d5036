"""Baseline: the schema kefu had before migrations (calls, customers, tickets).

Revision ID: 0001_baseline
Revises: -
Create Date: 2026-11-24

An empty database gets the three tables. A database written by kefu before Alembic
(no `alembic_version`; older versions added nullable columns at start-up) keeps its
tables and rows and gains whatever columns and indexes of this baseline it lacks, so
every older database reaches the same starting point. The tables are a frozen copy:
later changes belong in later revisions, never here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_baseline"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_meta = sa.MetaData()
_TS = sa.DateTime(timezone=True)

sa.Table(
    "calls",
    _meta,
    sa.Column("call_id", sa.String(64), primary_key=True),
    sa.Column("sip_call_id", sa.String(255), nullable=False),
    sa.Column("caller", sa.String(64), nullable=False, index=True),
    sa.Column("did", sa.String(64), nullable=False),
    sa.Column("ivr_digits", sa.String(64), nullable=False),
    sa.Column("queue", sa.String(64), index=True),
    sa.Column("agent", sa.String(64), index=True),
    sa.Column("worker", sa.Integer, nullable=False),
    sa.Column("arrived_at", _TS, nullable=False, index=True),
    sa.Column("queued_at", _TS),
    sa.Column("offered_at", _TS),
    sa.Column("answered_at", _TS),
    sa.Column("ended_at", _TS),
    sa.Column("hangup_side", sa.String(16)),
    sa.Column("recording_path", sa.String(1024)),
    sa.Column("recording_duration_s", sa.Float),
    sa.Column("caller_rtp_rx", sa.Integer, nullable=False),
    sa.Column("caller_rtp_tx", sa.Integer, nullable=False),
    sa.Column("agent_rtp_rx", sa.Integer, nullable=False),
    sa.Column("agent_rtp_tx", sa.Integer, nullable=False),
    sa.Column("routing_trace", sa.Text),
    sa.Column("ivr_path", sa.Text),
    sa.Column("variables", sa.Text),
    sa.Column("survey_csat", sa.Integer),
    sa.Column("survey_nps", sa.Integer),
    sa.Column("survey_answers", sa.Text),
    sa.Column("flow", sa.String(64)),
    sa.Column("language", sa.String(16)),
    sa.Column("customer_id", sa.String(64), index=True),
    sa.Column("voicemail_path", sa.String(1024)),
    sa.Column("voicemail_duration_s", sa.Float),
    sa.Column("voicemail_ticket", sa.String(64)),
    sa.Column("transfer_to", sa.String(64)),
    sa.Column("callback_number", sa.String(64)),
)
sa.Table(
    "customers",
    _meta,
    sa.Column("customer_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("company", sa.String(255), nullable=False),
    sa.Column("tier", sa.String(32), nullable=False),
    sa.Column("vip", sa.Boolean, nullable=False),
    sa.Column("language", sa.String(8), nullable=False),
    sa.Column("account_number", sa.String(64), unique=True),
    sa.Column("phone", sa.String(32), index=True),
)
sa.Table(
    "tickets",
    _meta,
    sa.Column("ticket_id", sa.String(64), primary_key=True),
    sa.Column(
        "customer_id",
        sa.String(64),
        sa.ForeignKey("customers.customer_id"),
        nullable=False,
        index=True,
    ),
    sa.Column("subject", sa.String(255), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("priority", sa.String(16), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("call_id", sa.String(64), index=True),
    sa.Column("created_at", _TS),
)


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    for table in _meta.sorted_tables:
        if not inspector.has_table(table.name):
            table.create(bind)
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                # Rows exist already: a column they never had can only be nullable.
                op.add_column(table.name, sa.Column(column.name, column.type, nullable=True))
        indexed = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexed:
                index.create(bind)


def downgrade() -> None:
    for table in reversed(_meta.sorted_tables):
        op.drop_table(table.name)
