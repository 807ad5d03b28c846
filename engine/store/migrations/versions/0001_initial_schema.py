"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 15:18:16.852684
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

import engine.models

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "checkouts",
        sa.Column("cart_id", sa.String(length=255), nullable=False),
        sa.Column(
            "customer_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("started_at", engine.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("completed_at", engine.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", engine.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("currency", sa.String(length=8), nullable=True),
        sa.Column(
            "products",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("cart_id"),
    )
    with op.batch_alter_table("checkouts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_checkouts_customer_id"), ["customer_id"], unique=False)

    op.create_table(
        "customers",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=True),
        sa.Column("anonymous_id", sa.String(length=255), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=True),
        sa.Column("device_timezone", sa.String(length=64), nullable=True),
        sa.Column(
            "traits",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "trait_times",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "consent",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "stats",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "event_counts",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("first_seen_at", engine.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_seen_at", engine.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("orders_count", sa.Integer(), nullable=False),
        sa.Column("revenue", sa.Float(), nullable=False),
        sa.Column("first_order_at", engine.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_order_at", engine.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "merged_into", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("created_at", engine.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", engine.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id"),
    )
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_customers_email"), ["email"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_customers_last_order_at"), ["last_order_at"], unique=False
        )

    op.create_table(
        "engine_state",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column(
            "value",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("updated_at", engine.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "events",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("user_id", sa.String(length=255), nullable=True),
        sa.Column("anonymous_id", sa.String(length=255), nullable=True),
        sa.Column("previous_id", sa.String(length=255), nullable=True),
        sa.Column("group_id", sa.String(length=255), nullable=True),
        sa.Column("timestamp", engine.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("original_timestamp", engine.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("sent_at", engine.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("received_at", engine.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("status", sa.SmallInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "customer_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("error", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("source", "message_id", name="uq_events_source_message"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_customer_time", ["customer_id", "timestamp"], unique=False)
        batch_op.create_index(
            "ix_events_pending",
            ["seq"],
            unique=False,
            sqlite_where=sa.text("status = 0"),
            postgresql_where=sa.text("status = 0"),
        )

    op.create_table(
        "identities",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column(
            "customer_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("first_seen_at", engine.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "value"),
    )
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_identities_customer_id"), ["customer_id"], unique=False
        )

    op.create_table(
        "orders",
        sa.Column("order_id", sa.String(length=255), nullable=False),
        sa.Column(
            "customer_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("cart_id", sa.String(length=255), nullable=True),
        sa.Column("placed_at", engine.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revenue", sa.Float(), nullable=False),
        sa.Column("refunded", sa.Float(), nullable=False),
        sa.Column("cancelled", sa.Boolean(), nullable=False),
        sa.Column("currency", sa.String(length=8), nullable=True),
        sa.Column("discount", sa.Float(), nullable=False),
        sa.Column("coupon", sa.String(length=255), nullable=True),
        sa.Column(
            "products",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("order_id"),
    )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_orders_customer_id"), ["customer_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orders_customer_id"))

    op.drop_table("orders")
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_identities_customer_id"))

    op.drop_table("identities")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_events_pending",
            sqlite_where=sa.text("status = 0"),
            postgresql_where=sa.text("status = 0"),
        )
        batch_op.drop_index("ix_events_customer_time")

    op.drop_table("events")
    op.drop_table("engine_state")
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_customers_last_order_at"))
        batch_op.drop_index(batch_op.f("ix_customers_email"))

    op.drop_table("customers")
    with op.batch_alter_table("checkouts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_checkouts_customer_id"))

    op.drop_table("checkouts")
