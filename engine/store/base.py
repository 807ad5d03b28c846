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
from engine.journeys import Ident, Journey, JourneyOutcome

__all__ = ["CustomerView", "Store", "Unit"]


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

    def set_state(self, key: str, value: dict[str, Any]) -> None: ...


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

    def close(self) -> None: ...
