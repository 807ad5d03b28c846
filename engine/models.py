"""SQLModel tables: the schema shared by SQLite and PostgreSQL.

Times are stored as UTC (``UTCDateTime``); JSON columns are JSONB on PostgreSQL.
The migrations in ``engine/store/migrations`` create exactly these tables; a test checks
that they agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

__all__ = [
    "EVENT_DONE",
    "EVENT_FAILED",
    "EVENT_PENDING",
    "Checkout",
    "Customer",
    "DecisionRow",
    "DeliveryAttemptRow",
    "Event",
    "Identity",
    "JourneyRow",
    "JourneyTransitionRow",
    "MessageRow",
    "Order",
    "OutboxRow",
    "StateEntry",
    "SuppressionRow",
    "UTCDateTime",
    "table",
]

EVENT_PENDING = 0
EVENT_DONE = 1
EVENT_FAILED = 2


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every dialect."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} (all datetimes must be timezone-aware)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(JSONB(), "postgresql")


_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(nullable: bool = False, index: bool = False) -> Any:
    return Field(sa_column=sa.Column(UTCDateTime(), nullable=nullable, index=index))


def _json_col() -> Any:
    return Field(default_factory=dict, sa_column=sa.Column(_json(), nullable=False))


class Event(SQLModel, table=True):
    """The append-only log of every accepted inbound event; ``status`` tracks processing."""

    __tablename__ = "events"
    __table_args__ = (
        sa.UniqueConstraint("source", "message_id", name="uq_events_source_message"),
        sa.Index(
            "ix_events_pending",
            "seq",
            sqlite_where=sa.text("status = 0"),
            postgresql_where=sa.text("status = 0"),
        ),
        sa.Index("ix_events_customer_time", "customer_id", "timestamp"),
    )

    seq: int | None = Field(default=None, sa_column=sa.Column(_BigId, primary_key=True))
    source: str = Field(max_length=64)
    message_id: str = Field(max_length=255)
    type: str = Field(max_length=16)
    name: str | None = Field(default=None, max_length=255)
    user_id: str | None = Field(default=None, max_length=255)
    anonymous_id: str | None = Field(default=None, max_length=255)
    previous_id: str | None = Field(default=None, max_length=255)
    group_id: str | None = Field(default=None, max_length=255)
    timestamp: datetime = _ts()
    original_timestamp: datetime | None = _ts(nullable=True)
    sent_at: datetime | None = _ts(nullable=True)
    received_at: datetime = _ts()
    payload: dict[str, Any] = _json_col()
    status: int = Field(
        default=EVENT_PENDING,
        sa_column=sa.Column(sa.SmallInteger, nullable=False, server_default=sa.text("0")),
    )
    customer_id: int | None = Field(default=None, sa_column=sa.Column(_BigId, nullable=True))
    error: str | None = Field(default=None)


class Customer(SQLModel, table=True):
    """The unified profile. ``merged_into`` marks a profile folded into another."""

    __tablename__ = "customers"

    id: int | None = Field(default=None, sa_column=sa.Column(_BigId, primary_key=True))
    user_id: str | None = Field(default=None, max_length=255, unique=True)
    anonymous_id: str | None = Field(default=None, max_length=255)
    email: str | None = Field(default=None, max_length=320, index=True)
    timezone: str | None = Field(default=None, max_length=64)
    device_timezone: str | None = Field(default=None, max_length=64)
    traits: dict[str, Any] = _json_col()
    trait_times: dict[str, Any] = _json_col()
    consent: dict[str, Any] = _json_col()
    stats: dict[str, Any] = _json_col()
    event_counts: dict[str, Any] = _json_col()
    #: RFM, lapsing, habits and predictions, recomputed in bulk (engine/intelligence).
    intel: dict[str, Any] | None = Field(default=None, sa_column=sa.Column(_json(), nullable=True))
    first_seen_at: datetime | None = _ts(nullable=True)
    last_seen_at: datetime | None = _ts(nullable=True)
    orders_count: int = Field(default=0)
    revenue: float = Field(default=0.0)
    first_order_at: datetime | None = _ts(nullable=True)
    last_order_at: datetime | None = _ts(nullable=True, index=True)
    merged_into: int | None = Field(default=None, sa_column=sa.Column(_BigId, nullable=True))
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class Identity(SQLModel, table=True):
    """``(kind, value)`` → customer: kind is ``user`` (userId) or ``anonymous`` (anonymousId)."""

    __tablename__ = "identities"

    kind: str = Field(primary_key=True, max_length=16)
    value: str = Field(primary_key=True, max_length=255)
    customer_id: int = Field(sa_column=sa.Column(_BigId, nullable=False, index=True))
    first_seen_at: datetime = _ts()


class Order(SQLModel, table=True):
    """One order, as far as its events told: placed, refunded (partly), cancelled."""

    __tablename__ = "orders"

    order_id: str = Field(primary_key=True, max_length=255)
    customer_id: int = Field(sa_column=sa.Column(_BigId, nullable=False, index=True))
    cart_id: str | None = Field(default=None, max_length=255)
    placed_at: datetime | None = _ts(nullable=True)
    revenue: float = Field(default=0.0)
    refunded: float = Field(default=0.0)
    cancelled: bool = Field(default=False)
    currency: str | None = Field(default=None, max_length=8)
    discount: float = Field(default=0.0)
    coupon: str | None = Field(default=None, max_length=255)
    products: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=sa.Column(_json(), nullable=False)
    )


class Checkout(SQLModel, table=True):
    """A started checkout (cart); ``completed_at`` is set by the order that closed it."""

    __tablename__ = "checkouts"

    cart_id: str = Field(primary_key=True, max_length=255)
    customer_id: int = Field(sa_column=sa.Column(_BigId, nullable=False, index=True))
    started_at: datetime | None = _ts(nullable=True)
    completed_at: datetime | None = _ts(nullable=True)
    updated_at: datetime | None = _ts(nullable=True)
    value: float = Field(default=0.0)
    currency: str | None = Field(default=None, max_length=8)
    products: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=sa.Column(_json(), nullable=False)
    )


class StateEntry(SQLModel, table=True):
    """Small named pieces of engine state (singleton job marks, leases)."""

    __tablename__ = "engine_state"

    key: str = Field(primary_key=True, max_length=128)
    value: dict[str, Any] = _json_col()
    updated_at: datetime = _ts()


def table(model: type[SQLModel]) -> sa.Table:
    """The Core table behind a SQLModel class."""
    return cast(sa.Table, model.__table__)  # type: ignore[attr-defined]


class JourneyRow(SQLModel, table=True):
    """One keyed run of a rule for a customer (reused, with a new generation, on re-trigger)."""

    __tablename__ = "journeys"
    __table_args__ = (
        sa.UniqueConstraint("rule_id", "customer_id", "key", "instance", name="uq_journeys_ident"),
        sa.Index(
            "ix_journeys_due",
            "due_at",
            sqlite_where=sa.text("status = 'active'"),
            postgresql_where=sa.text("status = 'active'"),
        ),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(_BigId, primary_key=True))
    rule_id: str = Field(max_length=64)
    customer_id: int = Field(sa_column=sa.Column(_BigId, nullable=False, index=True))
    key: str = Field(max_length=255)
    instance: str = Field(max_length=64)
    status: str = Field(max_length=16)
    generation: int = Field(default=1)
    trigger: dict[str, Any] = _json_col()
    trigger_seq: int | None = Field(default=None, sa_column=sa.Column(_BigId, nullable=True))
    trigger_at: datetime = _ts()
    next_step: int = Field(default=0)
    due_at: datetime | None = _ts(nullable=True)
    variant: str | None = Field(default=None, max_length=64)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    ended_at: datetime | None = _ts(nullable=True)
    end_reason: str | None = Field(default=None)


class JourneyTransitionRow(SQLModel, table=True):
    """The history of every journey: started, restarted, exited, step, completed…"""

    __tablename__ = "journey_transitions"

    id: int | None = Field(default=None, sa_column=sa.Column(_BigId, primary_key=True))
    journey_id: int = Field(sa_column=sa.Column(_BigId, nullable=False, index=True))
    generation: int
    kind: str = Field(max_length=32)
    at: datetime = _ts()
    event_seq: int | None = Field(default=None, sa_column=sa.Column(_BigId, nullable=True))
    step: int | None = Field(default=None)
    reason: str | None = Field(default=None)


class DecisionRow(SQLModel, table=True):
    """Every outcome of a rule for a customer, sent or not, with its reason."""

    __tablename__ = "decisions"
    __table_args__ = (sa.Index("ix_decisions_customer_at", "customer_id", "at"),)

    id: int | None = Field(default=None, sa_column=sa.Column(_BigId, primary_key=True))
    dedupe: str = Field(max_length=400, unique=True)
    rule_id: str = Field(max_length=64, index=True)
    customer_id: int = Field(sa_column=sa.Column(_BigId, nullable=False))
    journey_id: int | None = Field(default=None, sa_column=sa.Column(_BigId, nullable=True))
    generation: int = Field(default=0)
    step: int = Field(default=0)
    outcome: str = Field(max_length=32)
    reason: str | None = Field(default=None)
    channel: str | None = Field(default=None, max_length=16)
    template: str | None = Field(default=None, max_length=128)
    variant: str | None = Field(default=None, max_length=64)
    at: datetime = _ts()
    due_at: datetime | None = _ts(nullable=True)
    event_seq: int | None = Field(default=None, sa_column=sa.Column(_BigId, nullable=True))


class MessageRow(SQLModel, table=True):
    """A message decided ``sent``: the exact JSON body every endpoint receives, signed per
    attempt. Its id (``msg_…``, derived from the decision) is the ``webhook-id``."""

    __tablename__ = "messages"
    __table_args__ = (sa.Index("ix_messages_customer_at", "customer_id", "created_at"),)

    id: str = Field(primary_key=True, max_length=64)
    decision_dedupe: str = Field(max_length=400, unique=True)
    customer_id: int = Field(sa_column=sa.Column(_BigId, nullable=False))
    rule_id: str = Field(max_length=64)
    step: int
    variant: str | None = Field(default=None, max_length=64)
    channel: str = Field(max_length=16)
    template: str = Field(max_length=128)
    body: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    links: list[str] = Field(default_factory=list, sa_column=sa.Column(_json(), nullable=False))
    created_at: datetime = _ts()


class OutboxRow(SQLModel, table=True):
    """One message to one endpoint: pending → delivered | failed | dead (re-drivable)."""

    __tablename__ = "outbox"
    __table_args__ = (
        sa.UniqueConstraint("message_id", "endpoint", name="uq_outbox_message_endpoint"),
        sa.Index(
            "ix_outbox_due",
            "next_attempt_at",
            sqlite_where=sa.text("status = 'pending'"),
            postgresql_where=sa.text("status = 'pending'"),
        ),
        sa.Index("ix_outbox_status_updated", "status", "updated_at"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(_BigId, primary_key=True))
    message_id: str = Field(max_length=64)
    endpoint: str = Field(max_length=2000)
    channel: str = Field(max_length=16)
    status: str = Field(max_length=16)
    attempts: int = Field(default=0)
    next_attempt_at: datetime = _ts()
    lease_until: datetime | None = _ts(nullable=True)
    last_status: int | None = Field(default=None)
    last_error: str | None = Field(default=None)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    delivered_at: datetime | None = _ts(nullable=True)


class DeliveryAttemptRow(SQLModel, table=True):
    """Every POST of an outbox row: when, what came back, how long it took."""

    __tablename__ = "delivery_attempts"

    id: int | None = Field(default=None, sa_column=sa.Column(_BigId, primary_key=True))
    outbox_id: int = Field(sa_column=sa.Column(_BigId, nullable=False, index=True))
    attempt: int
    at: datetime = _ts()
    status: int | None = Field(default=None)
    error: str | None = Field(default=None)
    duration_ms: float = Field(default=0.0)
    action: str = Field(max_length=200)


class SuppressionRow(SQLModel, table=True):
    """An address no marketing may go to: hard bounce, complaint or unsubscribe."""

    __tablename__ = "suppressions"
    __table_args__ = (
        sa.UniqueConstraint("channel", "address", name="uq_suppressions_channel_address"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(_BigId, primary_key=True))
    channel: str = Field(max_length=16)
    address: str = Field(max_length=320)
    reason: str = Field(max_length=64)
    customer_id: int | None = Field(default=None, sa_column=sa.Column(_BigId, nullable=True))
    at: datetime = _ts()
