"""journeys and decisions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 15:48:08.097207
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

import engine.models

# Use sa.String, not sqlmodel AutoString, for text columns.
revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("dedupe", sa.String(length=400), nullable=False),
        sa.Column("rule_id", sa.String(length=64), nullable=False),
        sa.Column(
            "customer_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "journey_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=True),
        sa.Column("template", sa.String(length=128), nullable=True),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("at", engine.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("due_at", engine.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("event_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dedupe"),
    )
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.create_index("ix_decisions_customer_at", ["customer_id", "at"], unique=False)
        batch_op.create_index(batch_op.f("ix_decisions_rule_id"), ["rule_id"], unique=False)

    op.create_table(
        "journey_transitions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "journey_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("at", engine.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("event_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("journey_transitions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_journey_transitions_journey_id"), ["journey_id"], unique=False
        )

    op.create_table(
        "journeys",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("rule_id", sa.String(length=64), nullable=False),
        sa.Column(
            "customer_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("instance", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column(
            "trigger",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "trigger_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("trigger_at", engine.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("next_step", sa.Integer(), nullable=False),
        sa.Column("due_at", engine.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("created_at", engine.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", engine.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", engine.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("rule_id", "customer_id", "key", "instance", name="uq_journeys_ident"),
    )
    with op.batch_alter_table("journeys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_journeys_customer_id"), ["customer_id"], unique=False)
        batch_op.create_index(
            "ix_journeys_due",
            ["due_at"],
            unique=False,
            sqlite_where=sa.text("status = 'active'"),
            postgresql_where=sa.text("status = 'active'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("journeys", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_journeys_due",
            sqlite_where=sa.text("status = 'active'"),
            postgresql_where=sa.text("status = 'active'"),
        )
        batch_op.drop_index(batch_op.f("ix_journeys_customer_id"))

    op.drop_table("journeys")
    with op.batch_alter_table("journey_transitions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_journey_transitions_journey_id"))

    op.drop_table("journey_transitions")
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_decisions_rule_id"))
        batch_op.drop_index("ix_decisions_customer_at")

    op.drop_table("decisions")
