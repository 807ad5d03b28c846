"""Orchestration that does I/O: claim → pure step → commit.

Each function here runs one unit of work in one transaction through the store, so a crash
at any point leaves either the whole step or none of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

from engine.clock import Clock
from engine.config import Settings
from engine.customers import EventIn, Outcome, Profile, World, apply_events, compute_stats
from engine.store.base import ProcessResult, Store

__all__ = ["Engine", "customer_profile", "process_events_once", "process_until_idle"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Engine:
    """The running engine's parts, passed to whoever needs them (no globals)."""

    settings: Settings
    store: Store
    clock: Clock


def _step(clock: Clock, world: World, events: list[EventIn]) -> Outcome:
    return apply_events(world, events, clock.now())


def _stats(engine: Engine, profile: Profile) -> dict[str, Any]:
    return compute_stats(
        profile,
        now=engine.clock.now(),
        default_timezone=engine.settings.default_timezone,
        abandoned_after=engine.settings.processing.abandoned_after,
    )


def process_events_once(engine: Engine, limit: int | None = None) -> ProcessResult:
    """Apply one batch of pending events to customer profiles."""
    result = engine.store.process_events(
        limit or engine.settings.processing.batch_size,
        partial(_step, engine.clock),
        partial(_stats, engine),
    )
    if result.failed:
        log.warning(
            "processor: %d of %d events failed (see events.error)", result.failed, result.claimed
        )
    return result


def process_until_idle(engine: Engine, max_batches: int | None = None) -> int:
    """Process batches until no event is pending; returns how many events were claimed."""
    total = 0
    batches = 0
    while max_batches is None or batches < max_batches:
        result = process_events_once(engine)
        total += result.claimed
        batches += 1
        if result.claimed == 0:
            break
    return total


def customer_profile(engine: Engine, ref: str, *, events: int = 20) -> dict[str, Any] | None:
    """The unified profile of the customer ``ref`` names (id, userId, anonymousId, email),
    with statistics recomputed as of now; ``None`` if there is no such customer."""
    customer_id = engine.store.find_customer(ref)
    if customer_id is None:
        return None
    view = engine.store.customer_view(customer_id, events=events)
    if view is None:
        return None
    profile = view.profile
    return {
        "id": view.id,
        "user_id": profile.user_id,
        "anonymous_id": profile.anonymous_id,
        "identities": [{"kind": k, "value": v} for k, v in sorted(profile.identities)],
        "traits": profile.traits,
        "consent": profile.consent,
        "stats": _stats(engine, profile),
        "event_counts": dict(sorted(profile.event_counts.items())),
        "orders": [
            {
                "order_id": o.order_id,
                "placed_at": o.placed_at.isoformat() if o.placed_at else None,
                "revenue": o.revenue,
                "refunded": o.refunded,
                "cancelled": o.cancelled,
                "cart_id": o.cart_id,
            }
            for o in sorted(
                profile.orders.values(),
                key=lambda o: (o.placed_at is None, o.placed_at or view.created_at),
            )
        ],
        "checkouts": [
            {
                "cart_id": c.cart_id,
                "started_at": c.started_at.isoformat() if c.started_at else None,
                "completed_at": c.completed_at.isoformat() if c.completed_at else None,
                "value": c.value,
            }
            for c in profile.checkouts.values()
        ],
        "created_at": view.created_at.isoformat() if view.created_at else None,
        "updated_at": view.updated_at.isoformat() if view.updated_at else None,
        "recent_events": view.recent_events,
    }
