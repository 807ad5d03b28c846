"""What a rule would do for one customer: every sub-expression's value and each step's
due time (pure; ``nudge preview`` prints it)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import rule_engine
from croniter import croniter

from engine.context import CustomerFacts, TriggerFacts, values_for
from engine.expressions import Expression
from engine.rules import Rule

__all__ = ["preview"]


def _show(expr: Expression | None, values: Any) -> dict[str, Any] | None:
    if expr is None:
        return None
    try:
        result: Any = expr.evaluate(values)
        error = None
    except rule_engine.EngineError as exc:
        result, error = None, str(getattr(exc, "message", exc))
    return {
        "expression": expr.text,
        "value": _plain(result),
        "error": error,
        "parts": [{"text": text, "value": _plain(value)} for text, value in expr.describe(values)],
    }


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _passes(shown: dict[str, Any] | None) -> bool:
    return shown is None or (shown["error"] is None and bool(shown["value"]))


def preview(
    rule: Rule,
    customer: CustomerFacts,
    event: TriggerFacts | None,
    now: datetime,
    *,
    abandoned_after: timedelta = timedelta(hours=1),
) -> dict[str, Any]:
    """A JSON-ready account of how ``rule`` treats ``customer`` (and ``event``) at ``now``."""
    values = values_for(customer, event, now, abandoned_after=abandoned_after)
    out: dict[str, Any] = {"rule": rule.id, "customer": customer.display_id, "now": now.isoformat()}
    start: datetime | None
    if rule.trigger.schedule is not None:
        zone = customer.timezone if rule.trigger.timezone == "customer" else rule.trigger.timezone
        itr = croniter(rule.trigger.schedule, now.astimezone(ZoneInfo(zone)))
        upcoming = [itr.get_next(datetime) for _ in range(3)]
        audience = _show(rule.trigger.audience, values)
        condition = _show(rule.condition, values)
        out |= {
            "trigger": {"schedule": rule.trigger.schedule, "zone": zone},
            "next_occurrences": [t.isoformat() for t in upcoming],
            "audience": audience,
            "if": condition,
            "matches": _passes(audience) and _passes(condition),
        }
        start = upcoming[0]
    else:
        where = _show(rule.trigger.where, values)
        condition = _show(rule.condition, values)
        key = _show(rule.trigger.key, values)
        name_ok = event is not None and event.name == rule.trigger.event
        out |= {
            "trigger": {"event": rule.trigger.event, "on_repeat": rule.trigger.on_repeat},
            "event": event.snapshot() if event is not None else None,
            "event_matches": name_ok,
            "where": where,
            "if": condition,
            "key": key,
            "matches": name_ok
            and _passes(where)
            and _passes(condition)
            and key is not None
            and key["value"] not in (None, "")
            if rule.trigger.key is not None
            else name_ok and _passes(where) and _passes(condition),
            "exit_on": [
                {
                    "event": e.event,
                    "same_key": e.match_key,
                    "where": e.where.text if e.where else None,
                }
                for e in rule.exit_on
            ],
        }
        start = event.timestamp if event is not None else None
    out["steps"] = [
        {
            "step": s.index + 1,
            "channel": s.channel,
            "template": s.template,
            "due_at": (start + s.offset).isoformat() if start is not None else None,
            "if": _show(s.condition, values),
        }
        for s in rule.steps
    ]
    return out
