"""Transfers between agents: `calls.handoffs`, the JSON list of who handed the call to
whom (or to which queue), when, blind or attended.

Revision ID: 0003_call_handoffs
Revises: 0002_crm_model
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_call_handoffs"
down_revision: str | None = "0002_crm_model"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("calls", sa.Column("handoffs", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("handoffs")
