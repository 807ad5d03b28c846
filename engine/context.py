"""The values rule expressions (and, later, templates) see: customer, event, now (pure)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["CustomerFacts", "TriggerFacts", "Values", "refresh_stats", "values_for"]

Values = Callable[[tuple[str, ...]], Any]

_INTEL = frozenset({"rfm", "habits", "predicted", "segments", "preferences"})  # customer.<these>
_INTEL_STATS = frozenset({"lapse_ratio"})  # customer.stats.<these>, from intel too


@dataclass(frozen=True, kw_only=True)
class CustomerFacts:
    """A customer as rules see it (from the ``customers`` row)."""

    id: int
    user_id: str | None
    anonymous_id: str | None
    email: str | None
    timezone: str
    traits: dict[str, Any] = field(default_factory=dict)
    consent: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    event_counts: dict[str, int] = field(default_factory=dict)
    #: RFM, lapsing, habits, predictions (engine/intelligence; empty until computed).
    intel: dict[str, Any] = field(default_factory=dict)

    @property
    def display_id(self) -> str:
        return self.user_id or self.anonymous_id or str(self.id)


@dataclass(frozen=True, kw_only=True)
class TriggerFacts:
    """The event that started (or is being matched against) a journey."""

    name: str
    type: str
    timestamp: datetime
    properties: dict[str, Any] = field(default_factory=dict)
    seq: int | None = None

    def snapshot(self, *, properties: bool = True) -> dict[str, Any]:
        """JSON-ready form; without ``properties`` when the event log keeps them (``seq``)."""
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "timestamp": self.timestamp.isoformat(),
            "seq": self.seq,
        }
        if properties:
            out["properties"] = self.properties
        return out

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> TriggerFacts:
        return cls(
            name=data["name"],
            type=data.get("type", "track"),
            timestamp=datetime.fromisoformat(data["timestamp"]),
            properties=dict(data.get("properties") or {}),
            seq=data.get("seq"),
        )


def _when(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def refresh_stats(
    stats: dict[str, Any], now: datetime, abandoned_after: timedelta
) -> dict[str, Any]:
    """``stats`` with the values that depend on *now* brought up to date."""
    out = dict(stats)
    last = _when(stats.get("last_order_at"))
    out["days_since_last_order"] = (
        round((now - last).total_seconds() / 86400, 2) if last is not None else None
    )
    opened = [_when(t) for t in stats.get("open_checkouts", [])]
    out["carts_abandoned"] = stats.get("carts_abandoned_closed", 0) + sum(
        1 for t in opened if t is not None and t <= now - abandoned_after
    )
    for name in ("first_seen_at", "last_seen_at", "first_order_at", "last_order_at"):
        out[name] = _when(stats.get(name))
    return out


def values_for(
    customer: CustomerFacts,
    event: TriggerFacts | None,
    now: datetime,
    *,
    abandoned_after: timedelta = timedelta(hours=1),
) -> Values:
    """``values(path)`` for :meth:`engine.expressions.Expression.evaluate`."""
    stats: dict[str, Any] = {}  # brought up to date on first use: many rules read none
    seen: dict[tuple[str, ...], Any] = {}  # several rules read the same paths of one event

    def values(path: tuple[str, ...]) -> Any:
        try:
            return seen[path]
        except KeyError:
            value = seen[path] = lookup(path)
            return value

    def lookup(path: tuple[str, ...]) -> Any:
        head = path[0]
        if head == "now":
            return now
        if head == "local_now":
            return now.astimezone(ZoneInfo(customer.timezone))
        if head == "event":
            if event is None:
                return None
            part = path[1]
            if part == "properties":
                return event.properties.get(path[2]) if len(path) > 2 else event.properties
            return {"name": event.name, "type": event.type, "timestamp": event.timestamp}[part]
        part = path[1]
        if part == "traits":
            return customer.traits.get(path[2]) if len(path) > 2 else customer.traits
        if part == "consent":
            return customer.consent.get(path[2])
        if part in _INTEL:
            found = customer.intel.get(part)
            if len(path) == 2:
                return found if found is not None or part != "segments" else []
            return found.get(path[2]) if isinstance(found, dict) else None
        if part == "stats":
            if path[2] in _INTEL_STATS:
                return customer.intel.get(path[2])
            if path[2] == "event_counts":
                counts = customer.event_counts
                return counts.get(path[3], 0) if len(path) > 3 else counts
            if not stats:
                stats.update(refresh_stats(customer.stats, now, abandoned_after))
            return stats.get(path[2])
        return {
            "id": customer.display_id,
            "user_id": customer.user_id,
            "anonymous_id": customer.anonymous_id,
            "email": customer.email,
            "timezone": customer.timezone,
        }[part]

    return values
