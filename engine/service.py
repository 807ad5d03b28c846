"""Orchestration that does I/O: claim → pure step → commit.

Each function here runs one unit of work in one transaction through the store, so a crash
at any point leaves either the whole step or none of it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from engine.clock import Clock
from engine.config import Settings
from engine.context import CustomerFacts, TriggerFacts
from engine.customers import EventIn, Profile, apply_events, compute_stats, contact_email
from engine.durations import format_duration
from engine.journeys import (
    Decision,
    EventView,
    Ident,
    Journey,
    JourneyOutcome,
    advance,
    candidates,
    fire_step,
    latest_occurrence,
    on_event,
    schedule_journeys,
    step_dedupe,
)
from engine.locations import Problem
from engine.rules import Rule, RuleSet, load_rules
from engine.store.base import Store, Unit

__all__ = [
    "Engine",
    "RuleBook",
    "customer_profile",
    "fire_due_once",
    "fire_due_until_idle",
    "process_events_once",
    "process_until_idle",
    "run_schedules",
]

log = logging.getLogger(__name__)

#: How long a journey whose rule is not loaded (its file has errors) waits before a retry.
_RULE_RETRY = timedelta(minutes=5)


class RuleBook:
    """The loaded rules; :meth:`reload` swaps in a new set atomically."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self.current = RuleSet()

    def reload(self) -> RuleSet:
        """Load the rules again; a file with an error is skipped and reported."""
        with self._lock:
            rules = load_rules(self._settings.rules_dir, self._settings.templates_dir)
            for problem in rules.problems:
                log.log(
                    logging.ERROR if problem.severity == "error" else logging.WARNING,
                    "rules: %s",
                    problem,
                )
            self.current = rules
            log.info("rules: %d loaded, %d problem(s)", len(rules.rules), len(rules.problems))
            return rules

    @property
    def problems(self) -> tuple[Problem, ...]:
        return self.current.problems


@dataclass(frozen=True, kw_only=True)
class Engine:
    """The running engine's parts, passed to whoever needs them (no globals)."""

    settings: Settings
    store: Store
    clock: Clock
    rules: RuleBook = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", RuleBook(self.settings))


@dataclass(frozen=True, kw_only=True)
class ProcessResult:
    claimed: int
    applied: int
    failed: int
    journeys: int = 0
    stale: int = 0


def _stats(engine: Engine, profile: Profile) -> dict[str, Any]:
    return compute_stats(
        profile,
        now=engine.clock.now(),
        default_timezone=engine.settings.default_timezone,
        abandoned_after=engine.settings.processing.abandoned_after,
    )


def _facts(
    customer_id: int, profile: Profile, stats: dict[str, Any], default_timezone: str
) -> CustomerFacts:
    return CustomerFacts(
        id=customer_id,
        user_id=profile.user_id,
        anonymous_id=profile.anonymous_id,
        email=contact_email(profile),
        timezone=stats.get("timezone") or default_timezone,
        traits=profile.traits,
        consent=profile.consent,
        stats=stats,
        event_counts=profile.event_counts,
    )


def _trigger(event: EventIn) -> TriggerFacts:
    props = event.payload.get("properties")
    return TriggerFacts(
        name=event.name if event.type == "track" and event.name else event.type,
        type=event.type,
        timestamp=event.timestamp,
        properties=props if isinstance(props, dict) else {},
        seq=event.seq,
    )


def _apply_rules(
    engine: Engine,
    unit: Unit,
    rules: RuleSet,
    triggers: list[tuple[TriggerFacts, int]],
    facts: dict[int, CustomerFacts],
    now: datetime,
) -> JourneyOutcome:
    """Exits and triggers of a batch's events (``facts``: the profiles just written, from
    memory); the journeys they change are written through ``unit``."""
    settings = engine.settings
    journeys = JourneyOutcome()
    by_name: dict[str, list[Rule]] = {}
    for rule in rules.rules:
        if rule.enabled:
            for name in {rule.trigger.event, *(x.event for x in rule.exit_on)}:
                if name is not None:
                    by_name.setdefault(name, []).append(rule)
    triggers = [(t, cid) for t, cid in triggers if t.name in by_name]
    if not triggers:
        return journeys
    customers = sorted({cid for _, cid in triggers})
    missing = [cid for cid in customers if cid not in facts]
    if missing:
        facts = facts | unit.customer_facts(missing, settings.default_timezone)
    idents: set[Ident] = set()
    pairs: set[tuple[str, int]] = set()
    abandoned_after = settings.processing.abandoned_after
    views = [EventView(facts[cid], trigger, now, abandoned_after) for trigger, cid in triggers]
    for (trigger, cid), view in zip(triggers, views, strict=True):
        more_idents, more_pairs = candidates(
            by_name[trigger.name], facts[cid], trigger, now, view=view
        )
        idents |= more_idents
        pairs |= more_pairs
    by_customer: dict[int, dict[Ident, Journey]] = {}
    for ident, journey in unit.load_journeys(idents, pairs).items():
        by_customer.setdefault(ident[1], {})[ident] = journey
    # Exit events already known (earlier batches and this one), for triggers that arrive
    # after the event that would have ended them.
    exit_names = sorted({x.event for t, _ in triggers for r in by_name[t.name] for x in r.exit_on})
    history: dict[int, list[TriggerFacts]] = {}
    if exit_names:
        since = min(t.timestamp for t, _ in triggers)
        history = unit.events_named(customers, exit_names, since)
        for trigger, cid in triggers:
            if trigger.name in exit_names:
                history.setdefault(cid, []).append(trigger)
    for (trigger, cid), view in zip(triggers, views, strict=True):
        journeys.extend(
            on_event(
                by_name[trigger.name],
                facts[cid],
                trigger,
                by_customer.setdefault(cid, {}),
                now,
                max_lag=settings.processing.trigger_max_lag,
                abandoned_after=abandoned_after,
                history=history.get(cid, ()),
                view=view,
            )
        )
    unit.write_journeys(journeys)
    return journeys


def process_events_once(engine: Engine, limit: int | None = None) -> ProcessResult:
    """Apply one batch of pending events to profiles and to the rules' journeys."""
    settings = engine.settings
    rules = engine.rules.current
    with engine.store.unit() as unit:
        events = unit.claim_events(limit or settings.processing.batch_size)
        if not events:
            return ProcessResult(claimed=0, applied=0, failed=0)
        now = engine.clock.now()
        world = unit.load_world(events)
        loaded = set(world.profiles)
        outcome = apply_events(world, events, now)
        computed: dict[int, dict[str, Any]] = {}

        def stats(profile: Profile) -> dict[str, Any]:
            computed[profile.key] = _stats(engine, profile)
            return computed[profile.key]

        ids = unit.write_profiles(world, loaded, outcome, stats)
        unit.write_identities(outcome.moved_identities, ids)

        triggers = [
            (_trigger(e), ids[outcome.assigned[e.seq]]) for e in events if e.seq in outcome.assigned
        ]
        facts = {
            ids[key]: _facts(ids[key], profile, computed[key], settings.default_timezone)
            for key, profile in world.profiles.items()
            if key in computed and key in ids
        }
        journeys = _apply_rules(engine, unit, rules, triggers, facts, now)
        unit.mark_events(outcome, ids)
    if outcome.failed:
        log.warning(
            "processor: %d of %d events failed (see events.error)", len(outcome.failed), len(events)
        )
    return ProcessResult(
        claimed=len(events),
        applied=len(outcome.assigned),
        failed=len(outcome.failed),
        journeys=len(journeys.journeys),
        stale=journeys.stale,
    )


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


def _late(journey: Journey, rule: Rule, now: datetime, limit: timedelta) -> Decision | None:
    if journey.due_at is None or now - journey.due_at <= limit:
        return None
    step = rule.steps[journey.next_step]
    return Decision(
        dedupe=step_dedupe(journey),
        rule_id=rule.id,
        customer_id=journey.customer_id,
        ident=journey.ident,
        generation=journey.generation,
        step=journey.next_step,
        outcome="skipped",
        reason=f"late: due {journey.due_at.isoformat()}, more than {format_duration(limit)} ago",
        channel=step.channel,
        template=rule.template_for(step, journey.variant),
        variant=journey.variant,
        at=now,
        due_at=journey.due_at,
        event_seq=journey.trigger.seq,
    )


def fire_due_once(engine: Engine, limit: int | None = None) -> int:
    """Decide one batch of due journey steps; returns how many steps were handled."""
    settings = engine.settings
    rules = engine.rules.current
    with engine.store.unit() as unit:
        now = engine.clock.now()
        due = unit.claim_due_journeys(now, limit or settings.processing.due_batch_size)
        if not due:
            return 0
        facts = unit.customer_facts([j.customer_id for j in due], settings.default_timezone)
        out = JourneyOutcome()
        for journey in due:
            rule = rules.by_id(journey.rule_id)
            customer = facts.get(journey.customer_id)
            if rule is None and rules.errors:
                # Its file may be one that failed to load: wait for a fix, do not cancel.
                out.journeys[journey.ident] = replace(journey, due_at=now + _RULE_RETRY)
                continue
            late = None
            if rule is not None and rule.enabled and journey.next_step < len(rule.steps):
                late = _late(journey, rule, now, settings.processing.step_max_lateness)
            if customer is None or late is not None:
                assert rule is not None or customer is None
                if late is not None and rule is not None:
                    updated = advance(rule, journey, now)
                    out.decisions.append(late)
                    out.journeys[journey.ident] = updated
                    continue
                if customer is None:
                    continue
            updated, decision, transition = fire_step(
                rule,
                journey,
                customer,
                now,
                abandoned_after=settings.processing.abandoned_after,
            )
            out.journeys[journey.ident] = updated
            out.transitions.append(transition)
            if decision is not None:
                out.decisions.append(decision)
        unit.write_journeys(out)
        return len(due)


def fire_due_until_idle(engine: Engine, max_batches: int | None = None) -> int:
    total = 0
    batches = 0
    while max_batches is None or batches < max_batches:
        handled = fire_due_once(engine)
        total += handled
        batches += 1
        if handled == 0:
            break
    return total


def run_schedules(engine: Engine, *, batch: int = 5000) -> int:
    """Start the journeys of schedule-triggered rules whose cron fired (in each customer's
    zone, or the rule's own); each occurrence once per customer. Returns journeys started."""
    settings = engine.settings
    started = 0
    now = engine.clock.now()
    for rule in engine.rules.current.rules:
        if not rule.enabled or rule.trigger.schedule is None:
            continue
        with engine.store.unit() as unit:
            zones = (
                unit.customer_zones(settings.default_timezone)
                if rule.trigger.timezone == "customer"
                else [rule.trigger.timezone]
            )
        for zone in zones:
            occurrence = latest_occurrence(rule.trigger.schedule, zone, now)
            if now - occurrence > settings.processing.schedule_grace:
                continue
            state_key = f"schedule:{rule.id}:{zone}:{occurrence.isoformat()}"
            while True:
                with engine.store.unit() as unit:
                    state = unit.get_state(state_key) or {"after_id": 0, "done": False}
                    if state["done"]:
                        break
                    zone_filter = zone if rule.trigger.timezone == "customer" else None
                    customers = unit.customers_in_zone(
                        zone_filter, settings.default_timezone, state["after_id"], batch
                    )
                    existing = unit.existing_journeys(
                        rule.id, occurrence.isoformat(), [c.id for c in customers]
                    )
                    out = schedule_journeys(
                        rule,
                        customers,
                        occurrence,
                        now,
                        existing,
                        abandoned_after=settings.processing.abandoned_after,
                    )
                    unit.write_journeys(out)
                    started += len(out.journeys)
                    last = customers[-1].id if customers else state["after_id"]
                    unit.set_state(state_key, {"after_id": last, "done": len(customers) < batch})
    return started


def customer_profile(engine: Engine, ref: str, *, events: int = 20) -> dict[str, Any] | None:
    """The unified profile of the customer ``ref`` names (id, userId, anonymousId, email),
    with statistics recomputed as of now, journeys and decisions; ``None`` if unknown."""
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
        "journeys": view.journeys,
        "decisions": view.decisions,
        "created_at": view.created_at.isoformat() if view.created_at else None,
        "updated_at": view.updated_at.isoformat() if view.updated_at else None,
        "recent_events": view.recent_events,
    }


def customer_facts_for(engine: Engine, customer_id: int) -> CustomerFacts | None:
    """The rule-facing facts of one customer (for preview)."""
    with engine.store.unit() as unit:
        return unit.customer_facts([customer_id], engine.settings.default_timezone).get(customer_id)
