"""The storage port: what the service and the web app need from a database."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from engine.customers import EventIn, Outcome, Profile, World

__all__ = ["CustomerView", "EventStep", "ProcessResult", "Store"]

#: The pure step a batch of events goes through: (world, events) → outcome.
EventStep = Callable[[World, list[EventIn]], Outcome]


@dataclass(frozen=True, kw_only=True)
class ProcessResult:
    claimed: int
    applied: int
    failed: int


@dataclass(frozen=True, kw_only=True)
class CustomerView:
    """Everything the operator views show of one customer."""

    id: int
    profile: Profile
    stats: dict[str, Any]
    created_at: datetime | None
    updated_at: datetime | None
    recent_events: list[dict[str, Any]] = field(default_factory=list)


class Store(Protocol):
    def upgrade(self) -> None:
        """Bring the schema to the newest migration."""
        ...

    def insert_events(self, rows: Sequence[dict[str, Any]]) -> int:
        """Append events in one transaction; duplicates (source, message_id) are ignored.

        Returns how many were new. Durable when it returns.
        """
        ...

    def process_events(
        self, limit: int, step: EventStep, stats: Callable[[Profile], dict[str, Any]]
    ) -> ProcessResult:
        """Claim up to ``limit`` pending events in arrival order, run ``step`` on them and
        write the outcome, all in one transaction."""
        ...

    def find_customer(self, ref: str) -> int | None:
        """Customer id for a reference: id, userId, anonymousId or email."""
        ...

    def customer_view(self, customer_id: int, *, events: int = 20) -> CustomerView | None: ...

    def pending_events(self) -> int: ...

    def close(self) -> None: ...
