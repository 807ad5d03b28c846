"""Orchestration that does I/O: claim → pure step → commit.

Each function here runs one unit of work in one transaction through the store, so a crash
at any point leaves either the whole step or none of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from engine.clock import Clock
from engine.config import Settings
from engine.context import CustomerFacts, TriggerFacts
from engine.customers import (
    EventIn,
    Profile,
    apply_events,
    compute_stats,
    contact_email,
    push_tokens,
)
from engine.durations import format_duration
from engine.errors import RenderError
from engine.intelligence.bulk import compute as compute_intelligence
from engine.intelligence.preferences import preferences, price_cuts
from engine.journeys import (
    Decision,
    EventView,
    Ident,
    Journey,
    JourneyOutcome,
    Transition,
    advance,
    candidates,
    evolve,
    fire_step,
    latest_occurrence,
    on_event,
    schedule_journeys,
    step_dedupe,
)
from engine.locations import Problem
from engine.policy import (
    Audience,
    Cap,
    Defer,
    Holdout,
    Policy,
    QuietHours,
    Request,
    Send,
    Skip,
    decide_many,
)
from engine.rendering import Renderer, template_context
from engine.rules import Rule, RuleSet, load_rules
from engine.store.base import Store, Unit
from engine.tracking import LinkSigner

__all__ = [
    "Engine",
    "RuleBook",
    "customer_profile",
    "fire_due_once",
    "fire_due_until_idle",
    "process_events_once",
    "process_until_idle",
    "recompute_intelligence",
    "run_schedules",
]

log = logging.getLogger(__name__)

#: Views and searches that count towards a customer's preferences.
_PREFERENCE_WINDOW = timedelta(days=180)

#: How long a journey whose rule is not loaded (its file has errors) waits before a retry.
_RULE_RETRY = timedelta(minutes=5)


def make_renderer(settings: Settings) -> tuple[Renderer, list[Problem]]:
    """The templates compiled (with the settings' limits) and the problems found."""
    renderer = Renderer(
        settings.templates_dir,
        max_output_bytes=settings.rendering.max_output_bytes,
        max_render_seconds=settings.rendering.max_render_seconds,
        hidden_categories=settings.sensitive.categories,
    )
    return renderer, renderer.load()


class RuleBook:
    """The loaded rules and templates; :meth:`reload` swaps in a new set atomically."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self.current = RuleSet()
        self.renderer = Renderer(settings.templates_dir)

    def reload(self) -> RuleSet:
        """Load the rules and templates again; a file with an error is skipped and reported."""
        with self._lock:
            renderer, template_problems = make_renderer(self._settings)
            rules = load_rules(
                self._settings.rules_dir,
                self._settings.templates_dir,
                renderer=renderer,
                sensitive=self._settings.sensitive,
            )
            rules = dataclasses.replace(rules, problems=(*template_problems, *rules.problems))
            for problem in rules.problems:
                log.log(
                    logging.ERROR if problem.severity == "error" else logging.WARNING,
                    "rules: %s",
                    problem,
                )
            self.current, self.renderer = rules, renderer
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
    policy: Policy = field(init=False)
    #: Set when new outbox rows commit, so the dispatcher need not wait for its next poll.
    outbox_signal: threading.Event = field(init=False, default_factory=threading.Event)
    _signer: list[LinkSigner] = field(init=False, default_factory=list, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", RuleBook(self.settings))
        object.__setattr__(self, "policy", policy_from(self.settings))

    def link_signer(self, unit: Unit | None = None) -> LinkSigner:
        """Signs tracked links and unsubscribe tokens: with ``link_secret``, or else a random
        key kept in the database (the same for every process sharing it)."""
        if self._signer:
            return self._signer[0]
        if self.settings.link_secret is not None:
            key = self.settings.link_secret.get_secret_value()
        elif unit is None:
            with self.store.unit() as own:
                return self.link_signer(own)
        else:
            state = unit.init_state("secret:links", {"key": secrets.token_urlsafe(32)})
            key = str(state["key"])
        signer = LinkSigner(key, self.settings.base_url)
        self._signer.append(signer)
        return signer


def suppression_address(channel: str, customer_id: int, email: str | None) -> str:
    """What a suppression of ``channel`` is keyed on: the email address for email (a bounce
    or unsubscribe follows the address), else the customer."""
    if channel == "email" and email:
        return email.strip().lower()
    return f"customer:{customer_id}"


def policy_from(settings: Settings) -> Policy:
    """The global policy of ``config.yaml``: frequency caps and quiet hours."""
    quiet = settings.quiet_hours
    return Policy(
        caps=tuple(
            Cap(channel=c.channel, max=c.max, per=c.per, on_limit=c.on_limit)
            for c in settings.frequency_caps
        ),
        quiet_hours=QuietHours(
            start=quiet.start,
            end=quiet.end,
            channels=frozenset(quiet.channels),
            on_quiet=quiet.on_quiet,
        )
        if quiet is not None
        else None,
    )


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
        intel=profile.intel,
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
        if outcome.suppress or outcome.unsuppress:
            unit.suppress(
                [(c, a, r, ids.get(k), at) for c, a, r, k, at in outcome.suppress],
                [
                    (c, suppression_address(c, ids[k], email))
                    for c, email, k in outcome.unsuppress
                    if k in ids
                ],
            )

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
        ready: list[_Ready] = []
        for journey in due:
            rule = rules.by_id(journey.rule_id)
            customer = facts.get(journey.customer_id)
            if rule is None and rules.errors:
                # Its file may be one that failed to load: wait for a fix, do not cancel.
                out.journeys[journey.ident] = evolve(journey, due_at=now + _RULE_RETRY)
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
            if decision is not None and decision.outcome == "would_send" and rule is not None:
                ready.append(_Ready(rule, journey, updated, decision, transition))
                continue
            out.journeys[journey.ident] = updated
            out.transitions.append(transition)
            if decision is not None:
                out.decisions.append(decision)
        sent = _decide(engine, unit, ready, facts, now, out) if ready else 0
        unit.write_journeys(out)
    if sent:
        engine.outbox_signal.set()
    return len(due)


@dataclass(frozen=True)
class _Ready:
    """A due step that passed its conditions: the policy decides what becomes of it."""

    rule: Rule
    journey: Journey  # as claimed
    advanced: Journey  # after the step
    decision: Decision  # would_send
    transition: Transition


def _request(item: _Ready) -> Request:
    rule, step = item.rule, item.rule.steps[item.decision.step]
    return Request(
        rule_id=rule.id,
        priority=rule.priority,
        channel=step.channel,
        step=step.index,
        due_at=item.journey.due_at or item.decision.at,
        rule_caps=tuple(
            Cap(channel=c.channel, max=c.max, per=c.per, on_limit=c.on_limit) for c in rule.caps
        ),
        holdout=rule.holdout,
        variants=tuple((v.id, v.weight) for v in rule.variants),
        arm=item.journey.variant,
    )


def _history_window(policy: Policy, rules: list[Rule]) -> timedelta:
    windows = [c.per for c in policy.caps] + [c.per for r in rules for c in r.caps]
    return max(windows, default=timedelta(0))


def _decide(
    engine: Engine,
    unit: Unit,
    ready: list[_Ready],
    facts: dict[int, CustomerFacts],
    now: datetime,
    out: JourneyOutcome,
) -> int:
    """The policy stage of the due steps in ``ready`` (ARCHITECTURE.md §4): consent,
    address, caps, quiet hours, holdout and variant, then render and queue the message —
    decision, message and outbox rows in the caller's transaction. Returns messages queued.

    A channel with no endpoints configured is a dry run: everything happens (the message is
    rendered and counts against caps) except the delivery; the outcome is ``would_send``."""
    settings = engine.settings
    endpoints: dict[str, list[str]] = {
        str(channel): [e.url for e in config.endpoints]
        for channel, config in settings.channels.items()
    }
    customers = sorted({item.decision.customer_id for item in ready})
    unit.lock_customers(customers)
    window = _history_window(engine.policy, [item.rule for item in ready])
    history = unit.sent_messages(customers, now - window) if window else {}
    suppressed = unit.suppressed(
        [
            (channel, suppression_address(channel, c, facts[c].email))
            for c in customers
            for channel in ("email", "push", "sms")
        ]
    )
    signer = engine.link_signer(unit)
    renderer = engine.rules.renderer
    messages: list[dict[str, Any]] = []
    by_customer: dict[int, list[_Ready]] = {}
    for item in ready:
        by_customer.setdefault(item.decision.customer_id, []).append(item)

    def finish(item: _Ready, outcome: str, reason: str | None, variant: str | None) -> None:
        journey = evolve(item.advanced, variant=variant or item.advanced.variant)
        out.journeys[journey.ident] = journey
        out.transitions.append(evolve(item.transition, reason=outcome))
        out.decisions.append(evolve(item.decision, outcome=outcome, reason=reason, variant=variant))

    for customer_id, items in by_customer.items():
        customer = facts[customer_id]
        audience = Audience(
            customer_id=customer_id,
            consent=customer.consent,
            accepts_marketing=None,  # folded into consent["email"] by the processor
            suppressed=frozenset(
                channel
                for channel in ("email", "push", "sms")
                if (channel, suppression_address(channel, customer_id, customer.email))
                in suppressed
            ),
            email=customer.email,
            push_tokens=push_tokens(customer.traits),
            timezone=customer.timezone,
            phone=_phone(customer),
        )
        pairs = [(_request(item), item) for item in items]
        lookup = {id(r): item for r, item in pairs}  # decide_many hands the same objects back
        rendered: dict[int, dict[str, Any] | str] = {}
        decided = decide_many(
            [r for r, _ in pairs],
            audience,
            history.get(customer_id, []),
            engine.policy,
            now,
            sent=_renderer_for(engine, renderer, signer, lookup, customer, now, rendered),
        )
        for request, verdict in decided:
            item = lookup[id(request)]
            if isinstance(verdict, Skip):
                finish(item, "skipped", verdict.reason, None)
            elif isinstance(verdict, Holdout):
                finish(item, "holdout", "in the rule's holdout group", verdict.label)
            elif isinstance(verdict, Defer):
                until = verdict.until
                out.journeys[item.journey.ident] = evolve(item.journey, due_at=until)
                out.transitions.append(
                    evolve(item.transition, kind="deferred", reason=verdict.reason)
                )
                out.decisions.append(
                    evolve(
                        item.decision,
                        dedupe=f"{item.decision.dedupe}:deferred:{until.isoformat()}",
                        outcome="deferred",
                        reason=f"{verdict.reason}; until {until.isoformat()}",
                    )
                )
            elif isinstance(verdict, Send):
                message = rendered[id(request)]
                if isinstance(message, str):
                    finish(item, "failed", message, verdict.variant)
                    continue
                messages.append(message)
                if endpoints.get(request.channel):
                    finish(item, "sent", None, verdict.variant)
                else:  # a channel without endpoints is a dry run: all but the POST
                    finish(item, "would_send", "no endpoint configured (dry run)", verdict.variant)
    return unit.write_messages(messages, endpoints)


def _renderer_for(
    engine: Engine,
    renderer: Renderer,
    signer: LinkSigner,
    lookup: dict[int, _Ready],
    customer: CustomerFacts,
    now: datetime,
    rendered: dict[int, dict[str, Any] | str],
) -> Callable[[Request, Send], bool]:
    """Renders each send as the policy decides it (into ``rendered``): a message that fails
    to render does not take a capped slot from the requests after it."""

    def render(request: Request, verdict: Send) -> bool:
        item = lookup[id(request)]
        message = _render(engine, renderer, signer, item, customer, verdict.variant, now)
        rendered[id(request)] = message
        return not isinstance(message, str)

    return render


def _phone(customer: CustomerFacts) -> str | None:
    phone = customer.traits.get("phone")
    return phone.strip() if isinstance(phone, str) and phone.strip() else None


def message_id_for(dedupe: str) -> str:
    """The message (and ``webhook-id``) of a decision: derived from its unique key, so a
    decision can only ever produce one message id."""
    return "msg_" + hashlib.sha256(dedupe.encode()).hexdigest()[:32]


def _render(
    engine: Engine,
    renderer: Renderer,
    signer: LinkSigner,
    item: _Ready,
    customer: CustomerFacts,
    variant: str | None,
    now: datetime,
) -> dict[str, Any] | str:
    """The message row for a send, or why it could not be rendered."""
    settings = engine.settings
    rule = item.rule
    step = rule.steps[item.decision.step]
    template = rule.template_for(step, variant)
    message_id = message_id_for(item.decision.dedupe)
    context = template_context(
        customer,
        item.journey.trigger if item.journey.trigger.type != "schedule" else None,
        rule_id=rule.id,
        rule_description=rule.description,
        variant=variant,
        now=now,
        abandoned_after=settings.processing.abandoned_after,
        hidden_categories=()
        if "categories" in rule.uses_sensitive
        else settings.sensitive.categories,
    )
    unsubscribe = signer.unsubscribe_url(customer.id, step.channel, message_id)
    try:
        rendered = renderer.render(
            template,
            step.channel,
            context,
            link=lambda url: signer.click_url(message_id, url),
            unsubscribe_url=unsubscribe,
        )
    except RenderError as exc:
        return f"render: {exc}"
    body: dict[str, Any] = {
        "type": "message.send",
        "id": message_id,
        "channel": step.channel,
        "to": {
            "customer_id": customer.display_id,
            "email": customer.email,
            "push_tokens": list(push_tokens(customer.traits)),
            "phone": _phone(customer),
        },
        "content": rendered.content,
        "rule": rule.id,
        "step": step.index + 1,
        "variant": variant,
        "unsubscribe_url": unsubscribe,
        "created_at": now.isoformat(),
    }
    if step.channel == "email":
        body["headers"] = {
            "List-Unsubscribe": f"<{unsubscribe}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
    return {
        "id": message_id,
        "decision_dedupe": item.decision.dedupe,
        "customer_id": customer.id,
        "rule_id": rule.id,
        "step": step.index,
        "variant": variant,
        "channel": step.channel,
        "template": template,
        "body": orjson.dumps(body).decode(),
        "links": list(rendered.links),
        "created_at": now,
    }


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


def recompute_intelligence(engine: Engine) -> dict[str, Any]:
    """RFM, lapsing, habits and predictions for every buyer, in bulk (the hourly job and
    ``nudge intelligence fit``); the fitted models are kept in ``engine_state`` and
    returned."""
    settings = engine.settings
    now = engine.clock.now()
    with engine.store.unit() as unit:
        history = unit.shop_history(settings.default_timezone, now - _PREFERENCE_WINDOW)
    result = compute_intelligence(history.buyers, now)
    per_customer = dict(result.per_customer)
    interactions = history.interactions
    cuts = price_cuts(i.price for items in interactions.values() for i in items if i.price)
    for customer_id, items in interactions.items():
        doc = per_customer.setdefault(customer_id, {"computed_at": now.isoformat(), "segments": []})
        doc["preferences"] = preferences(
            items, now, cuts=cuts, orders_with_discount=history.discounts.get(customer_id, (0, 0))
        )
    models = {
        **result.models,
        "price_cuts": list(cuts) if cuts is not None else None,
        "customers": len(per_customer),
    }
    with engine.store.unit() as unit:
        unit.write_intel(per_customer)
        unit.set_state("intelligence:models", models)
    return models


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
        "intelligence": profile.intel,
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
