"""The storage port: what the service and the web app need from a database.

:class:`Store` is the database; :class:`Unit` is one open write transaction on it, through
which the service claims work, loads what its pure steps need and writes their results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from engine.context import CustomerFacts, TriggerFacts
from engine.customers import EventIn, Outcome, Profile, World
from engine.intelligence.bulk import Buyer
from engine.intelligence.preferences import Interaction
from engine.journeys import Ident, Journey, JourneyOutcome
from engine.policy import SentMessage

__all__ = ["Attempt", "CustomerView", "OutboxItem", "ShopHistory", "Store", "Unit"]


@dataclass(frozen=True, kw_only=True)
class CustomerView:
    """Everything the operator views show of one customer."""

    id: int
    profile: Profile
    stats: dict[str, Any]
    created_at: datetime | None
    updated_at: datetime | None
    recent_events: list[dict[str, Any]] = field(default_factory=list)
    journeys: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class OutboxItem:
    """A claimed delivery: one message to one endpoint."""

    id: int
    message_id: str
    endpoint: str
    channel: str
    attempts: int
    body: str


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """What became of a claimed delivery: ``attempt`` 0 means it was not posted (endpoint
    disabled, breaker open); ``attempts`` is the row's count of attempts after this one;
    ``new_status`` pending (with ``next_attempt_at``), delivered, failed or dead; ``action``
    says why in words."""

    outbox_id: int
    attempt: int
    attempts: int
    at: datetime
    status: int | None
    error: str | None
    duration_ms: float
    action: str
    new_status: str
    next_attempt_at: datetime | None = None


@dataclass(kw_only=True)
class ShopHistory:
    """What the intelligence job reads (see :meth:`Unit.shop_history`)."""

    buyers: list[Buyer] = field(default_factory=list)
    interactions: dict[int, list[Interaction]] = field(default_factory=dict)
    discounts: dict[int, tuple[int, int]] = field(default_factory=dict)  # (discounted, orders)


class Unit(Protocol):
    """One write transaction."""

    def claim_events(self, limit: int) -> list[EventIn]: ...

    def load_world(self, events: list[EventIn]) -> World: ...

    def write_profiles(
        self,
        world: World,
        loaded: set[int],
        outcome: Outcome,
        stats: Callable[[Profile], dict[str, Any]],
    ) -> dict[int, int]: ...

    def write_identities(self, moved: dict[tuple[str, str], int], ids: dict[int, int]) -> None: ...

    def mark_events(self, outcome: Outcome, ids: dict[int, int]) -> None: ...

    def customer_facts(
        self, ids: Sequence[int], default_timezone: str
    ) -> dict[int, CustomerFacts]: ...

    def events_named(
        self, customer_ids: Sequence[int], names: Sequence[str], since: datetime
    ) -> dict[int, list[TriggerFacts]]: ...

    def load_journeys(
        self, idents: Iterable[Ident], pairs: Iterable[tuple[str, int]]
    ) -> dict[Ident, Journey]: ...

    def claim_due_journeys(self, now: datetime, limit: int) -> list[Journey]: ...

    def existing_journeys(
        self, rule_id: str, instance: str, customer_ids: Sequence[int]
    ) -> set[Ident]: ...

    def write_journeys(self, outcome: JourneyOutcome) -> None: ...

    def customer_zones(self, default_timezone: str) -> list[str]: ...

    def customers_in_zone(
        self, zone: str | None, default_timezone: str, after_id: int, limit: int
    ) -> list[CustomerFacts]: ...

    def get_state(self, key: str) -> dict[str, Any] | None: ...

    def lock_customers(self, ids: Sequence[int]) -> None: ...

    def shop_history(self, default_timezone: str, since: datetime) -> ShopHistory: ...

    def write_intel(self, per_customer: dict[int, dict[str, Any]]) -> None: ...

    def sent_messages(
        self, customer_ids: Sequence[int], since: datetime
    ) -> dict[int, list[SentMessage]]: ...

    def suppressed(self, addresses: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]: ...

    def suppress(
        self,
        rows: Sequence[tuple[str, str, str, int | None, datetime]],
        lift: Sequence[tuple[str, str]] = (),
    ) -> None: ...

    def write_messages(
        self, messages: Sequence[dict[str, Any]], endpoints: dict[str, list[str]]
    ) -> int: ...

    def claim_outbox(
        self, now: datetime, limit: int, lease_until: datetime
    ) -> list[OutboxItem]: ...

    def record_attempts(self, attempts: Sequence[Attempt]) -> None: ...

    def release_outbox(self, ids: Sequence[int]) -> None: ...

    def disabled_endpoints(self) -> dict[str, str]: ...

    def set_endpoint_disabled(self, url: str, reason: str | None) -> None: ...

    def redrive(self, outbox_ids: Sequence[int] | None, now: datetime) -> int: ...

    def set_state(self, key: str, value: dict[str, Any]) -> None: ...

    def init_state(self, key: str, value: dict[str, Any]) -> dict[str, Any]: ...


class Store(Protocol):
    def upgrade(self) -> None:
        """Bring the schema to the newest migration."""
        ...

    def insert_events(self, rows: Sequence[dict[str, Any]]) -> int:
        """Append events in one transaction; duplicates (source, message_id) are ignored.

        Returns how many were new. Durable when it returns.
        """
        ...

    def unit(self) -> AbstractContextManager[Unit]:
        """A write transaction: everything done through the unit commits together."""
        ...

    def find_customer(self, ref: str) -> int | None:
        """Customer id for a reference: id, userId, anonymousId or email."""
        ...

    def customer_view(self, customer_id: int, *, events: int = 20) -> CustomerView | None: ...

    def pending_events(self) -> int: ...

    def message(self, message_id: str) -> dict[str, Any] | None: ...

    def customer_refs(self, customer_id: int) -> dict[str, Any] | None: ...

    def deliveries(self, status: str | None, limit: int) -> list[dict[str, Any]]: ...

    def delivery(self, ref: str) -> dict[str, Any] | None: ...

    def close(self) -> None: ...
