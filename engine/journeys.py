"""Journeys: trigger matching, keyed waits, exits and steps as pure state transitions.

A journey is one run of a rule for one customer and one correlation key (``cart_id`` …).
Its row is reused when the same key triggers again after it ended (``generation`` counts
the runs), so there is exactly one row per (rule, customer, key, instance).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import rule_engine
from croniter import croniter

from engine.context import CustomerFacts, TriggerFacts, values_for
from engine.expressions import Expression
from engine.rules import Rule

__all__ = [
    "ACTIVE",
    "CANCELLED",
    "COMPLETED",
    "EXITED",
    "Decision",
    "Journey",
    "JourneyOutcome",
    "Transition",
    "candidates",
    "evolve",
    "fire_step",
    "latest_occurrence",
    "on_event",
    "schedule_journeys",
    "step_dedupe",
]

ACTIVE = "active"
COMPLETED = "completed"
EXITED = "exited"
CANCELLED = "cancelled"

Ident = tuple[str, int, str, str]  # rule id, customer id, key, instance


@dataclass(frozen=True, kw_only=True)
class Journey:
    id: int | None
    rule_id: str
    customer_id: int
    key: str
    instance: str = ""
    status: str = ACTIVE
    generation: int = 1
    trigger: TriggerFacts
    next_step: int = 0
    due_at: datetime | None = None
    variant: str | None = None
    ended_at: datetime | None = None
    end_reason: str | None = None

    @property
    def ident(self) -> Ident:
        return (self.rule_id, self.customer_id, self.key, self.instance)


@dataclass(frozen=True, kw_only=True)
class Transition:
    ident: Ident
    generation: int
    kind: str  # started, restarted, repeat_ignored, exited, step, completed, cancelled
    at: datetime
    event_seq: int | None = None
    step: int | None = None
    reason: str | None = None
    journey_id: int | None = None  # when known already (saves a lookup)


@dataclass(frozen=True, kw_only=True)
class Decision:
    """An outcome of a rule for a customer: ``would_send``, ``skipped``, ``not_started``…"""

    dedupe: str
    rule_id: str
    customer_id: int
    ident: Ident | None
    generation: int
    step: int
    outcome: str
    reason: str | None
    channel: str | None
    template: str | None
    variant: str | None
    at: datetime
    due_at: datetime | None
    event_seq: int | None


@dataclass
class JourneyOutcome:
    journeys: dict[Ident, Journey] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    stale: int = 0

    def extend(self, other: JourneyOutcome) -> None:
        self.journeys.update(other.journeys)
        self.transitions += other.transitions
        self.decisions += other.decisions
        self.stale += other.stale


_V = TypeVar("_V")


def evolve(value: _V, **changes: Any) -> _V:
    """``dataclasses.replace`` for the frozen, ``__post_init__``-free values of this module,
    without its per-call field introspection (due steps make several per step)."""
    new = object.__new__(type(value))
    new.__dict__.update(value.__dict__, **changes)
    return new


def _check(expr: Expression | None, values: Any) -> tuple[bool, str | None]:
    """(passes, reason it did not) — an expression error counts as not passing."""
    if expr is None:
        return True, None
    try:
        return bool(expr.evaluate(values)), None
    except rule_engine.EngineError as exc:
        return False, f"error in `{expr.text}`: {getattr(exc, 'message', exc)}"


def _why(expr: Expression | None, error: str | None, state: str = "is false") -> str:
    """Why a condition did not pass: its error, or the condition itself."""
    return error or f"if `{expr.text if expr is not None else ''}` {state}"


def _key(rule: Rule, values: Any) -> tuple[str | None, str | None]:
    if rule.trigger.key is None:
        return "", None
    try:
        value = rule.trigger.key.evaluate(values)
    except rule_engine.EngineError as exc:
        return None, f"key `{rule.trigger.key.text}` failed: {getattr(exc, 'message', exc)}"
    if value is None or value == "":
        return None, f"key `{rule.trigger.key.text}` is missing from the event"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).removesuffix(".0") if not isinstance(value, str) else value
    return text, None


def _not_started(
    rule: Rule, customer: CustomerFacts, event: TriggerFacts, now: datetime, reason: str
) -> Decision:
    return Decision(
        dedupe=f"ns:{rule.id}:{event.seq}",
        rule_id=rule.id,
        customer_id=customer.id,
        ident=None,
        generation=0,
        step=-1,
        outcome="not_started",
        reason=reason,
        channel=None,
        template=None,
        variant=None,
        at=now,
        due_at=None,
        event_seq=event.seq,
    )


def _already_exited(
    rule: Rule,
    key: str,
    event: TriggerFacts,
    customer: CustomerFacts,
    history: Sequence[TriggerFacts],
    now: datetime,
    abandoned_after: timedelta,
) -> TriggerFacts | None:
    """An exit event of ``rule`` for ``key`` that arrived before ``event`` but happened at or
    after it (events out of order): the journey it would have ended must not start."""
    for exit_on in rule.exit_on:
        for seen in history:
            if seen.name != exit_on.event or seen.timestamp < event.timestamp:
                continue
            if seen.seq is not None and event.seq is not None and seen.seq >= event.seq:
                continue  # arrives after the trigger: the ordinary exit handles it
            values = values_for(customer, seen, now, abandoned_after=abandoned_after)
            if not _check(exit_on.where, values)[0]:
                continue
            if exit_on.match_key and rule.trigger.key is not None and _key(rule, values)[0] != key:
                continue
            return seen
    return None


def step_dedupe(journey: Journey) -> str:
    """The decision key of a journey's current step in its current run: decided once."""
    rule_id, customer_id, key, instance = journey.ident
    return f"j:{rule_id}:{customer_id}:{key}:{instance}:{journey.generation}:{journey.next_step}"


def _due(rule: Rule, trigger_at: datetime, step: int) -> datetime | None:
    return trigger_at + rule.steps[step].offset if step < len(rule.steps) else None


class EventView:
    """One event of one customer as the rules see it: expression values and each rule's
    key, computed once however many times (candidates, exits, triggers) they are asked for."""

    def __init__(
        self,
        customer: CustomerFacts,
        event: TriggerFacts,
        now: datetime,
        abandoned_after: timedelta = timedelta(hours=1),
    ) -> None:
        self.values = values_for(customer, event, now, abandoned_after=abandoned_after)
        self._keys: dict[str, tuple[str | None, str | None]] = {}

    def key(self, rule: Rule) -> tuple[str | None, str | None]:
        got = self._keys.get(rule.id)
        if got is None:
            got = self._keys[rule.id] = _key(rule, self.values)
        return got


def candidates(
    rules: Iterable[Rule],
    customer: CustomerFacts,
    event: TriggerFacts,
    now: datetime,
    *,
    abandoned_after: timedelta = timedelta(hours=1),
    view: EventView | None = None,
) -> tuple[set[Ident], set[tuple[str, int]]]:
    """What :func:`on_event` may touch for this event: exact journey idents, and
    (rule, customer) pairs whose every active journey it may end (``key: false`` exits,
    parallel rules). The store loads just those. Pass the same ``view`` to
    :func:`on_event` to compute the keys once."""
    idents: set[Ident] = set()
    pairs: set[tuple[str, int]] = set()
    view = view or EventView(customer, event, now, abandoned_after)
    for rule in rules:
        if rule.trigger.on_repeat == "parallel" or any(
            x.event == event.name and not x.match_key for x in rule.exit_on
        ):
            pairs.add((rule.id, customer.id))
            continue
        key, _ = view.key(rule)
        if key is not None:
            idents.add((rule.id, customer.id, key, ""))
    return idents, pairs


def on_event(
    rules: Iterable[Rule],
    customer: CustomerFacts,
    event: TriggerFacts,
    journeys: dict[Ident, Journey],
    now: datetime,
    *,
    max_lag: timedelta,
    abandoned_after: timedelta = timedelta(hours=1),
    history: Sequence[TriggerFacts] = (),
    view: EventView | None = None,
) -> JourneyOutcome:
    """Apply one event: end the journeys it exits, then start/restart those it triggers.

    ``journeys`` holds the customer's existing journeys (any status) and is updated in
    place so that later events of the same batch see the changes. ``history`` holds the
    customer's exit-relevant events known so far, so that a trigger arriving after the
    event that would have ended it (out of order) starts nothing.
    """
    out = JourneyOutcome()
    view = view or EventView(customer, event, now, abandoned_after)
    values = view.values
    rules = [r for r in rules if r.enabled]
    for rule in rules:
        for exit_on in rule.exit_on:
            if exit_on.event != event.name:
                continue
            passes, _ = _check(exit_on.where, values)
            if not passes:
                continue
            key = None
            if exit_on.match_key and rule.trigger.key is not None:
                key, _ = view.key(rule)
                if key is None:
                    continue
            if key is not None and rule.trigger.on_repeat != "parallel":
                direct = (rule.id, customer.id, key, "")
                candidates = [(direct, journeys[direct])] if direct in journeys else []
            else:
                candidates = [(i, j) for i, j in journeys.items() if i[0] == rule.id]
            for existing, journey in candidates:
                if (
                    journey.rule_id == rule.id
                    and journey.status == ACTIVE
                    and (key is None or journey.key == key)
                    and journey.trigger.timestamp <= event.timestamp
                ):
                    ended = evolve(
                        journey,
                        status=EXITED,
                        due_at=None,
                        ended_at=now,
                        end_reason=f"exit: {event.name}",
                    )
                    journeys[existing] = out.journeys[existing] = ended
                    out.transitions.append(
                        Transition(
                            ident=existing,
                            generation=journey.generation,
                            kind="exited",
                            at=now,
                            event_seq=event.seq,
                            reason=f"{event.name} at {event.timestamp.isoformat()}",
                        )
                    )
    for rule in rules:
        if rule.trigger.event != event.name:
            continue
        if event.timestamp < now - max_lag:
            out.stale += 1
            continue
        passes, reason = _check(rule.trigger.where, values)
        if not passes:
            if reason:  # an error is worth showing; a plain "no" is a filter
                out.decisions.append(_not_started(rule, customer, event, now, reason))
            continue
        passes, reason = _check(rule.condition, values)
        if not passes:
            out.decisions.append(
                _not_started(rule, customer, event, now, _why(rule.condition, reason))
            )
            continue
        key, reason = view.key(rule)
        if key is None:
            out.decisions.append(_not_started(rule, customer, event, now, reason or "no key"))
            continue
        exited_by = _already_exited(rule, key, event, customer, history, now, abandoned_after)
        if exited_by is not None:
            out.decisions.append(
                _not_started(
                    rule,
                    customer,
                    event,
                    now,
                    f"already ended: {exited_by.name} at {exited_by.timestamp.isoformat()}",
                )
            )
            continue
        instance = str(event.seq) if rule.trigger.on_repeat == "parallel" else ""
        ident: Ident = (rule.id, customer.id, key, instance)
        current = journeys.get(ident)
        if (
            current is not None
            and current.trigger.seq is not None
            and event.seq is not None
            and event.seq <= current.trigger.seq
        ):
            continue  # this event, or a later one, already (re)started it: a replay
        if current is not None and current.status == ACTIVE:
            if rule.trigger.on_repeat == "ignore" or event.timestamp < current.trigger.timestamp:
                # An older trigger arriving late does not pull the wait back either.
                out.transitions.append(
                    Transition(
                        ident=ident,
                        generation=current.generation,
                        kind="repeat_ignored",
                        at=now,
                        event_seq=event.seq,
                        journey_id=current.id,
                    )
                )
                continue
            kind = "restarted"
        else:
            kind = "started"
        generation = current.generation + 1 if current is not None else 1
        journey = Journey(
            id=current.id if current is not None else None,
            rule_id=rule.id,
            customer_id=customer.id,
            key=key,
            instance=instance,
            status=ACTIVE,
            generation=generation,
            trigger=event,
            next_step=0,
            due_at=_due(rule, event.timestamp, 0),
            variant=None,
        )
        journeys[ident] = out.journeys[ident] = journey
        out.transitions.append(
            Transition(ident=ident, generation=generation, kind=kind, at=now, event_seq=event.seq)
        )
    return out


def fire_step(
    rule: Rule | None,
    journey: Journey,
    customer: CustomerFacts,
    now: datetime,
    *,
    abandoned_after: timedelta = timedelta(hours=1),
) -> tuple[Journey, Decision | None, Transition]:
    """A due step: re-check the rule against the customer *now*, decide, advance."""
    step_no = journey.next_step
    if rule is None or not rule.enabled or step_no >= len(rule.steps):
        cause = (
            "rule removed"
            if rule is None
            else ("rule disabled" if not rule.enabled else "no such step")
        )
        ended = evolve(journey, status=CANCELLED, due_at=None, ended_at=now, end_reason=cause)
        return (
            ended,
            None,
            Transition(
                ident=journey.ident,
                generation=journey.generation,
                kind="cancelled",
                at=now,
                step=step_no,
                reason=cause,
            ),
        )
    step = rule.steps[step_no]
    values = values_for(customer, journey.trigger, now, abandoned_after=abandoned_after)
    template = rule.template_for(step, journey.variant)

    def decision(outcome: str, reason: str | None) -> Decision:
        return Decision(
            dedupe=step_dedupe(journey),
            rule_id=rule.id,
            customer_id=customer.id,
            ident=journey.ident,
            generation=journey.generation,
            step=step_no,
            outcome=outcome,
            reason=reason,
            channel=step.channel,
            template=template,
            variant=journey.variant,
            at=now,
            due_at=journey.due_at,
            event_seq=journey.trigger.seq,
        )

    passes, reason = _check(rule.condition, values)
    if not passes:
        why = _why(rule.condition, reason, "is no longer true")
        ended = evolve(journey, status=EXITED, due_at=None, ended_at=now, end_reason=why)
        return (
            ended,
            decision("skipped", f"condition: {why}"),
            Transition(
                ident=journey.ident,
                generation=journey.generation,
                kind="exited",
                at=now,
                step=step_no,
                reason=why,
            ),
        )
    passes, reason = _check(step.condition, values)
    chosen = (
        decision("would_send", None)
        if passes
        else decision(
            "skipped",
            "step condition: " + _why(step.condition, reason),
        )
    )
    return (
        advance(rule, journey, now),
        chosen,
        Transition(
            ident=journey.ident,
            generation=journey.generation,
            kind="step",
            at=now,
            step=step_no,
            reason=chosen.outcome,
        ),
    )


def advance(rule: Rule, journey: Journey, now: datetime) -> Journey:
    """The journey after its current step: the next step's due time, or completed."""
    following = journey.next_step + 1
    if following >= len(rule.steps):
        return evolve(
            journey,
            next_step=following,
            status=COMPLETED,
            due_at=None,
            ended_at=now,
            end_reason="all steps done",
        )
    return evolve(
        journey, next_step=following, due_at=_due(rule, journey.trigger.timestamp, following)
    )


def latest_occurrence(cron: str, zone: str, now: datetime) -> datetime:
    """The latest time at or before ``now`` that ``cron`` fires in ``zone`` (aware UTC)."""
    tz = ZoneInfo(zone)
    local = now.astimezone(tz)
    itr = croniter(cron, local + timedelta(seconds=1))
    previous: datetime = itr.get_prev(datetime)
    # A wall time that happens twice (clocks going back) is one occurrence: the first.
    wall = previous.replace(tzinfo=None)
    return wall.replace(tzinfo=tz, fold=0).astimezone(now.tzinfo)


def schedule_journeys(
    rule: Rule,
    customers: Iterable[CustomerFacts],
    occurrence: datetime,
    now: datetime,
    existing: set[Ident],
    *,
    abandoned_after: timedelta = timedelta(hours=1),
) -> JourneyOutcome:
    """Journeys for the customers in ``rule``'s audience for one cron ``occurrence``."""
    out = JourneyOutcome()
    instance = occurrence.isoformat()
    trigger = TriggerFacts(name="schedule", type="schedule", timestamp=occurrence)
    for customer in customers:
        ident: Ident = (rule.id, customer.id, "", instance)
        if ident in existing:
            continue
        values = values_for(customer, None, now, abandoned_after=abandoned_after)
        passes, _ = _check(rule.trigger.audience, values)
        if not passes:
            continue
        passes, _ = _check(rule.condition, values)
        if not passes:
            continue
        journey = Journey(
            id=None,
            rule_id=rule.id,
            customer_id=customer.id,
            key="",
            instance=instance,
            trigger=trigger,
            due_at=_due(rule, occurrence, 0),
        )
        out.journeys[ident] = journey
        out.transitions.append(Transition(ident=ident, generation=1, kind="started", at=now))
    return out
