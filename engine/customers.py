"""Applying events to unified customer profiles, and identity resolution (pure).

The processor loads a :class:`World` (the profiles, identities, orders and checkouts that a
batch of events touches), calls :func:`apply_events`, and writes back what changed. Every
update here is commutative — counters add, first/last times are min/max, traits are
last-writer-wins by event time, orders and checkouts are keyed records — so the profile a
customer ends with does not depend on the order in which their anonymous and identified
histories arrive (a property test checks it).

Identity rules (Segment's):

* a call with both ``userId`` and ``anonymousId`` links them: an anonymous-only profile is
  merged into the user's profile (or promoted, if the user has none yet);
* an anonymousId already linked to a *different* user is re-linked to the new user (a shared
  device), without merging the two users' histories;
* ``alias`` merges ``previousId``'s profile (anonymous or an old userId) into ``userId``'s.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "ANONYMOUS",
    "USER",
    "CheckoutState",
    "EventIn",
    "OrderState",
    "Outcome",
    "Profile",
    "World",
    "apply_events",
    "compute_stats",
    "contact_email",
    "merge_profiles",
    "profile_zone",
    "push_tokens",
]

USER = "user"
ANONYMOUS = "anonymous"
#: Key in ``trait_times`` holding when the device time zone was last seen (not a trait).
DEVICE_ZONE = "$device_timezone"

IdentityKey = tuple[str, str]
_OPEN_KEPT = 50


@dataclass(frozen=True, kw_only=True, slots=True)
class EventIn:
    """The parts of a logged event the profile needs."""

    seq: int
    type: str
    name: str | None
    user_id: str | None
    anonymous_id: str | None
    previous_id: str | None
    timestamp: datetime
    payload: dict[str, Any]


@dataclass(kw_only=True, slots=True)
class OrderState:
    order_id: str
    cart_id: str | None = None
    placed_at: datetime | None = None
    revenue: float = 0.0
    refunded: float = 0.0
    cancelled: bool = False
    currency: str | None = None
    discount: float = 0.0
    coupon: str | None = None
    products: list[dict[str, Any]] = field(default_factory=list)

    @property
    def counts(self) -> bool:
        """A placed order that was neither cancelled nor refunded in full."""
        if self.placed_at is None or self.cancelled:
            return False
        return self.revenue <= 0 or self.refunded < self.revenue

    @property
    def net_revenue(self) -> float:
        return max(0.0, self.revenue - self.refunded) if self.counts else 0.0


@dataclass(kw_only=True, slots=True)
class CheckoutState:
    cart_id: str
    started_at: datetime | None = None
    completed_at: datetime | None = None
    updated_at: datetime | None = None
    value: float = 0.0
    currency: str | None = None
    products: list[dict[str, Any]] = field(default_factory=list)


@dataclass(kw_only=True, slots=True)
class Profile:
    """A customer as the processor sees it; ``key`` is the row id, or negative if new."""

    key: int
    user_id: str | None = None
    identities: set[IdentityKey] = field(default_factory=set)
    traits: dict[str, Any] = field(default_factory=dict)
    trait_times: dict[str, str] = field(default_factory=dict)
    consent: dict[str, Any] = field(default_factory=dict)
    event_counts: dict[str, int] = field(default_factory=dict)
    first_seen_at: datetime | None = None
    last_seen_at: datetime | None = None
    context_timezone: str | None = None
    orders: dict[str, OrderState] = field(default_factory=dict)
    checkouts: dict[str, CheckoutState] = field(default_factory=dict)
    created_at: datetime | None = None
    #: The bulk-computed intelligence (RFM, habits, predictions), read-only here.
    intel: dict[str, Any] = field(default_factory=dict)

    @property
    def anonymous_id(self) -> str | None:
        """One of the profile's anonymousIds (the smallest, so it is stable), for display."""
        return min((v for k, v in self.identities if k == ANONYMOUS), default=None)

    @property
    def is_new(self) -> bool:
        return self.key < 0


@dataclass(kw_only=True)
class World:
    """What a batch may touch: profiles by key and the identity map."""

    profiles: dict[int, Profile] = field(default_factory=dict)
    identities: dict[IdentityKey, int] = field(default_factory=dict)
    order_owner: dict[str, int] = field(default_factory=dict)
    checkout_owner: dict[str, int] = field(default_factory=dict)
    next_temp_key: int = -1

    def add(self, profile: Profile) -> None:
        """Register a loaded profile with its identities, orders and checkouts."""
        self.profiles[profile.key] = profile
        for ident in profile.identities:
            self.identities[ident] = profile.key
        for order_id in profile.orders:
            self.order_owner[order_id] = profile.key
        for cart_id in profile.checkouts:
            self.checkout_owner[cart_id] = profile.key


@dataclass(kw_only=True)
class Outcome:
    """What :func:`apply_events` changed, for the store to write back."""

    dirty: set[int] = field(default_factory=set)
    merged: dict[int, int] = field(default_factory=dict)  # loser key -> survivor key
    moved_identities: dict[IdentityKey, int] = field(default_factory=dict)
    assigned: dict[int, int] = field(default_factory=dict)  # event seq -> profile key
    failed: dict[int, str] = field(default_factory=dict)  # event seq -> reason
    orders: set[str] = field(default_factory=set)  # order ids to write back
    checkouts: set[str] = field(default_factory=set)  # cart ids to write back
    # (channel, address, reason, profile key, at): hard bounces, complaints.
    suppress: list[tuple[str, str, str, int, datetime]] = field(default_factory=list)
    # (channel, email or None, profile key): unsubscribe suppressions an explicit
    # Subscribed event lifts (keyed by the address for email, by the customer otherwise).
    unsuppress: list[tuple[str, str | None, int]] = field(default_factory=list)


def _new_profile(world: World, now: datetime) -> Profile:
    key = world.next_temp_key
    world.next_temp_key -= 1
    profile = Profile(key=key, created_at=now)
    world.profiles[key] = profile
    return profile


def _link(world: World, out: Outcome, profile: Profile, ident: IdentityKey) -> None:
    old = world.identities.get(ident)
    if old is not None and old != profile.key and old in world.profiles:
        world.profiles[old].identities.discard(ident)
        out.dirty.add(old)
    world.identities[ident] = profile.key
    profile.identities.add(ident)
    out.moved_identities[ident] = profile.key
    out.dirty.add(profile.key)
    if ident[0] == USER and profile.user_id is None:
        profile.user_id = ident[1]


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _earlier(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _newer_zone(stamp: str, zone: str, current_stamp: str | None, current: str | None) -> bool:
    if current is None or current_stamp is None:
        return True
    return (stamp, zone) > (current_stamp, current)


def _merge_traits(into: Profile, traits: dict[str, Any], times: dict[str, str]) -> None:
    for name, value in traits.items():
        when = times.get(name, "")
        current = into.trait_times.get(name)
        # Later event wins; on a tie the larger JSON text wins, so the result is order-free.
        if (
            current is None
            or when > current
            or (when == current and repr(value) > repr(into.traits.get(name)))
        ):
            into.traits[name] = value
            into.trait_times[name] = when


_CONSENT = "$consent:"  # trait_times key: when the consent for a channel was last given
_CHANNELS = ("email", "push", "sms")
_HARD_BOUNCES = frozenset({"hard", "permanent", "hard_bounce", "hardbounce"})
_CONSENT_EVENTS = frozenset(
    {"Unsubscribed", "Subscribed", "Email Bounced", "Email Complained", "Email Marked as Spam"}
)


def _set_consent(profile: Profile, channel: str, value: bool, when: str) -> None:
    """The later choice wins; on a tie, opting out wins (never message on a coin toss)."""
    current = profile.trait_times.get(_CONSENT + channel)
    if current is None or when > current or (when == current and value is False):
        profile.consent[channel] = value
        profile.trait_times[_CONSENT + channel] = when


def _apply_consent(
    out: Outcome, profile: Profile, event: EventIn, traits: dict[str, Any], props: dict[str, Any]
) -> None:
    """Consent and suppressions: ``accepts_marketing`` traits, ``Unsubscribed`` /
    ``Subscribed`` events (``channel``, default email), hard ``Email Bounced`` and
    ``Email Complained`` (the address in ``email`` or the profile's)."""
    if traits and isinstance(traits.get("accepts_marketing"), bool):
        _set_consent(profile, "email", traits["accepts_marketing"], event.timestamp.isoformat())
    name = event.name
    if event.type != "track" or name not in _CONSENT_EVENTS:
        return
    stamp = event.timestamp.isoformat()
    given = props.get("channel")
    channel = given if isinstance(given, str) and given in _CHANNELS else "email"
    if name in ("Unsubscribed", "Subscribed"):
        _set_consent(profile, channel, name == "Subscribed", stamp)
        if name == "Subscribed":
            out.unsuppress.append((channel, contact_email(profile), profile.key))
        return
    address = props.get("email") if isinstance(props.get("email"), str) else None
    address = (address or contact_email(profile) or "").strip().lower()
    if not address:
        return
    if name == "Email Bounced":
        kind = str(props.get("bounce_type") or props.get("type") or "").lower()
        if kind in _HARD_BOUNCES:
            out.suppress.append(("email", address, "hard bounce", profile.key, event.timestamp))
    elif name in ("Email Complained", "Email Marked as Spam"):
        out.suppress.append(("email", address, "complaint", profile.key, event.timestamp))


def push_tokens(traits: dict[str, Any]) -> tuple[str, ...]:
    """The device tokens in the ``push_tokens`` (list) or ``push_token`` trait."""
    raw = traits.get("push_tokens")
    tokens = raw if isinstance(raw, list) else [traits.get("push_token")]
    return tuple(t for t in tokens if isinstance(t, str) and t.strip())


def _merge_order(a: OrderState, b: OrderState) -> OrderState:
    # The earliest placement is the order (a repeated Order Completed does not change it);
    # refunds and cancellation accumulate from either side.
    placed = [o for o in (a, b) if o.placed_at is not None]
    first = min(placed, key=lambda o: (o.placed_at, o.revenue, repr(o.products))) if placed else a
    return OrderState(
        order_id=a.order_id,
        cart_id=first.cart_id or a.cart_id or b.cart_id,
        placed_at=first.placed_at,
        revenue=first.revenue,
        refunded=max(a.refunded, b.refunded),
        cancelled=a.cancelled or b.cancelled,
        currency=first.currency or a.currency or b.currency,
        discount=first.discount,
        coupon=first.coupon,
        products=first.products or a.products or b.products,
    )


def _merge_checkout(a: CheckoutState, b: CheckoutState) -> CheckoutState:
    # Contents come from the latest update; start and completion are the earliest seen.
    updated = [c for c in (a, b) if c.updated_at is not None]
    latest = max(updated, key=lambda c: (c.updated_at, c.value, repr(c.products))) if updated else a
    return CheckoutState(
        cart_id=a.cart_id,
        started_at=_earlier(a.started_at, b.started_at),
        completed_at=_earlier(a.completed_at, b.completed_at),
        updated_at=latest.updated_at,
        value=latest.value,
        currency=latest.currency,
        products=latest.products,
    )


def merge_profiles(survivor: Profile, loser: Profile) -> None:
    """Fold ``loser`` into ``survivor`` (commutative in everything but the keys)."""
    survivor.identities |= loser.identities
    if survivor.user_id is None:
        survivor.user_id = loser.user_id
    _merge_traits(survivor, loser.traits, loser.trait_times)
    for channel, value in loser.consent.items():
        _set_consent(survivor, channel, value, loser.trait_times.get(_CONSENT + channel, ""))
    for name, count in loser.event_counts.items():
        survivor.event_counts[name] = survivor.event_counts.get(name, 0) + count
    survivor.first_seen_at = _earlier(survivor.first_seen_at, loser.first_seen_at)
    survivor.last_seen_at = _later(survivor.last_seen_at, loser.last_seen_at)
    survivor.created_at = _earlier(survivor.created_at, loser.created_at)
    if loser.context_timezone and _newer_zone(
        loser.trait_times.get(DEVICE_ZONE, ""),
        loser.context_timezone,
        survivor.trait_times.get(DEVICE_ZONE),
        survivor.context_timezone,
    ):
        survivor.context_timezone = loser.context_timezone
        survivor.trait_times[DEVICE_ZONE] = loser.trait_times.get(DEVICE_ZONE, "")
    for order_id, order in loser.orders.items():
        mine = survivor.orders.get(order_id)
        survivor.orders[order_id] = order if mine is None else _merge_order(mine, order)
    for cart_id, checkout in loser.checkouts.items():
        own = survivor.checkouts.get(cart_id)
        survivor.checkouts[cart_id] = checkout if own is None else _merge_checkout(own, checkout)


def _merge_into(world: World, out: Outcome, survivor: Profile, loser: Profile) -> None:
    merge_profiles(survivor, loser)
    for ident in loser.identities:
        world.identities[ident] = survivor.key
        out.moved_identities[ident] = survivor.key
    loser.identities = set()
    for order_id in loser.orders:
        world.order_owner[order_id] = survivor.key
        out.orders.add(order_id)
    for cart_id in loser.checkouts:
        world.checkout_owner[cart_id] = survivor.key
        out.checkouts.add(cart_id)
    del world.profiles[loser.key]
    out.dirty.discard(loser.key)
    out.dirty.add(survivor.key)
    # Earlier merges into the loser now point at the survivor.
    for old, into in list(out.merged.items()):
        if into == loser.key:
            out.merged[old] = survivor.key
    out.merged[loser.key] = survivor.key
    for seq, key in list(out.assigned.items()):
        if key == loser.key:
            out.assigned[seq] = survivor.key


def _pick(a: Profile, b: Profile) -> tuple[Profile, Profile]:
    """(survivor, loser): the identified one survives, else the older row."""
    if (a.user_id is None) != (b.user_id is None):
        return (a, b) if a.user_id is not None else (b, a)
    if a.is_new != b.is_new:
        return (b, a) if a.is_new else (a, b)
    return (a, b) if abs(a.key) < abs(b.key) else (b, a)


def _resolve(world: World, out: Outcome, event: EventIn, now: datetime) -> Profile:
    user = (USER, event.user_id) if event.user_id else None
    anon = (ANONYMOUS, event.anonymous_id) if event.anonymous_id else None

    if event.type == "alias" and event.previous_id and user:
        target = _find(world, user) or _new_profile(world, now)
        _link(world, out, target, user)
        previous = _find(world, (USER, event.previous_id)) or _find(
            world, (ANONYMOUS, event.previous_id)
        )
        if previous is None:
            _link(world, out, target, (ANONYMOUS, event.previous_id))
        elif previous.key != target.key:
            _merge_into(world, out, target, previous)
        if anon:
            _attach_anonymous(world, out, target, anon)
        return world.profiles[target.key]

    by_user = _find(world, user) if user else None
    by_anon = _find(world, anon) if anon else None
    if user is None and by_anon is None and event.name in ("Order Refunded", "Order Cancelled"):
        # An anonymous refund (Shopify sends no customer) belongs to the order's customer.
        props = event.payload.get("properties")
        order_id = _text(props.get("order_id")) if isinstance(props, dict) else None
        owner_key = world.order_owner.get(order_id) if order_id else None
        owner = world.profiles.get(owner_key) if owner_key is not None else None
        if owner is not None and anon is not None:
            _link(world, out, owner, anon)
            return owner
    if user is None:
        assert anon is not None
        if by_anon is None:
            by_anon = _new_profile(world, now)
            _link(world, out, by_anon, anon)
        return by_anon
    if by_user is None:
        if by_anon is not None and by_anon.user_id is None:
            _link(world, out, by_anon, user)  # promote the anonymous profile
            return by_anon
        by_user = _new_profile(world, now)
        _link(world, out, by_user, user)
    if anon:
        _attach_anonymous(world, out, by_user, anon)
    return world.profiles[by_user.key]


def _attach_anonymous(world: World, out: Outcome, target: Profile, anon: IdentityKey) -> None:
    current = _find(world, anon)
    if current is None:
        _link(world, out, target, anon)
    elif current.key == target.key:
        return
    elif current.user_id is None:
        survivor, loser = _pick(target, current)
        _merge_into(world, out, survivor, loser)
    else:
        _link(world, out, target, anon)  # device now used by another known customer


def _find(world: World, ident: IdentityKey | None) -> Profile | None:
    if ident is None:
        return None
    key = world.identities.get(ident)
    return world.profiles.get(key) if key is not None else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str | int | float):
        text = str(value).strip()
        return text or None
    return None


def _products(props: dict[str, Any]) -> list[dict[str, Any]]:
    items = props.get("products")
    if isinstance(items, list):
        return [p for p in items if isinstance(p, dict)]
    if props.get("product_id") is not None or props.get("sku") is not None:
        return [{k: v for k, v in props.items() if k != "products"}]
    return []


def _products_total(products: list[dict[str, Any]]) -> float | None:
    total = 0.0
    seen = False
    for item in products:
        price = _number(item.get("price"))
        if price is None:
            continue
        seen = True
        total += price * (_number(item.get("quantity")) or 1.0)
    return total if seen else None


def _amount(props: dict[str, Any], *names: str) -> float | None:
    for name in names:
        value = _number(props.get(name))
        if value is not None:
            return value
    return None


def _cart_id(props: dict[str, Any]) -> str | None:
    return _text(props.get("cart_id")) or _text(props.get("checkout_id"))


def _owner(
    world: World, out: Outcome, owners: dict[str, int], ref: str, default: Profile
) -> Profile:
    """The profile that holds order/checkout ``ref`` (its first owner), else ``default``."""
    key = owners.get(ref)
    owner = world.profiles.get(key) if key is not None else None
    if owner is None:
        owners[ref] = default.key
        return default
    out.dirty.add(owner.key)
    return owner


def _apply_commerce(
    world: World, out: Outcome, profile: Profile, event: EventIn, props: dict[str, Any]
) -> None:
    name = event.name
    when = event.timestamp
    if name == "Checkout Started":
        cart = _cart_id(props)
        if cart is None:
            return
        products = _products(props)
        value = _amount(props, "value", "revenue", "total")
        if value is None:
            value = _products_total(products) or 0.0
        new = CheckoutState(
            cart_id=cart,
            started_at=when,
            updated_at=when,
            value=value,
            currency=_text(props.get("currency")),
            products=products,
        )
        holder = _owner(world, out, world.checkout_owner, cart, profile)
        old = holder.checkouts.get(cart)
        holder.checkouts[cart] = new if old is None else _merge_checkout(old, new)
        out.checkouts.add(cart)
    elif name == "Order Completed":
        order_id = _text(props.get("order_id")) or f"event-{event.seq}"
        products = _products(props)
        revenue = _amount(props, "revenue", "total", "value")
        if revenue is None:
            revenue = _products_total(products) or 0.0
        cart = _cart_id(props)
        order = OrderState(
            order_id=order_id,
            cart_id=cart,
            placed_at=when,
            revenue=revenue,
            currency=_text(props.get("currency")),
            discount=abs(_amount(props, "discount") or 0.0),
            coupon=_text(props.get("coupon")),
            products=products,
        )
        holder = _owner(world, out, world.order_owner, order_id, profile)
        if holder is not profile and holder.orders[order_id].placed_at is None:
            # The order was known only from a refund filed elsewhere: it belongs to the buyer.
            profile.orders[order_id] = holder.orders.pop(order_id)
            world.order_owner[order_id] = profile.key
            holder = profile
        old_order = holder.orders.get(order_id)
        holder.orders[order_id] = order if old_order is None else _merge_order(old_order, order)
        out.orders.add(order_id)
        if cart is not None:
            done = CheckoutState(cart_id=cart, completed_at=when)
            holder = _owner(world, out, world.checkout_owner, cart, profile)
            old = holder.checkouts.get(cart)
            holder.checkouts[cart] = done if old is None else _merge_checkout(old, done)
            out.checkouts.add(cart)
    elif name in ("Order Refunded", "Order Cancelled"):
        ref = _text(props.get("order_id"))
        if ref is None:
            return
        holder = _owner(world, out, world.order_owner, ref, profile)
        order = holder.orders.get(ref) or OrderState(order_id=ref)
        holder.orders[ref] = order
        out.orders.add(ref)
        if name == "Order Cancelled":
            order.cancelled = True
            return
        amount = _amount(props, "total", "revenue", "value", "amount")
        if amount is None:
            amount = _products_total(_products(props))
        # A refund without an amount is a full refund of what the order is known to be worth.
        order.refunded += abs(amount) if amount is not None else order.revenue


def _valid_zone(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return None
    return value


def _apply(world: World, out: Outcome, profile: Profile, event: EventIn) -> None:
    when = event.timestamp
    profile.first_seen_at = _earlier(profile.first_seen_at, when)
    profile.last_seen_at = _later(profile.last_seen_at, when)
    counter = event.name if event.type == "track" and event.name else event.type
    profile.event_counts[counter] = profile.event_counts.get(counter, 0) + 1

    payload = event.payload
    context = payload.get("context")
    context = context if isinstance(context, dict) else {}
    traits: dict[str, Any] = {}
    context_traits = context.get("traits")
    if isinstance(context_traits, dict):
        traits.update(context_traits)
    if event.type == "identify" and isinstance(payload.get("traits"), dict):
        traits.update(payload["traits"])
    if traits:
        stamp = when.isoformat()
        _merge_traits(profile, traits, dict.fromkeys(traits, stamp))
    zone = _valid_zone(context.get("timezone"))
    if zone:
        stamp = when.isoformat()
        if _newer_zone(stamp, zone, profile.trait_times.get(DEVICE_ZONE), profile.context_timezone):
            profile.context_timezone = zone
            profile.trait_times[DEVICE_ZONE] = stamp

    props = payload.get("properties") if event.type == "track" else None
    props = props if isinstance(props, dict) else {}
    _apply_consent(out, profile, event, traits, props)
    if event.type == "track":
        _apply_commerce(world, out, profile, event, props)


def apply_events(world: World, events: list[EventIn], now: datetime) -> Outcome:
    """Resolve each event's customer and apply it, in the given (arrival) order."""
    out = Outcome()
    for event in events:
        try:
            profile = _resolve(world, out, event, now)
            _apply(world, out, profile, event)
        except Exception as exc:  # one bad event must not stop the batch
            out.failed[event.seq] = f"{type(exc).__name__}: {exc}"
            continue
        out.assigned[event.seq] = profile.key
        out.dirty.add(profile.key)
    return out


def contact_email(profile: Profile) -> str | None:
    """The profile's email trait, trimmed and lower-cased (None if absent)."""
    email = profile.traits.get("email")
    return email.strip().lower() if isinstance(email, str) and email.strip() else None


def profile_zone(profile: Profile, default: str) -> ZoneInfo:
    """The customer's zone: the ``timezone`` trait, else the device's, else ``default``."""
    name = _valid_zone(profile.traits.get("timezone")) or profile.context_timezone or default
    return ZoneInfo(name)


def compute_stats(
    profile: Profile, *, now: datetime, default_timezone: str, abandoned_after: timedelta
) -> dict[str, Any]:
    """The profile's derived statistics as of ``now`` (JSON-ready)."""
    zone = profile_zone(profile, default_timezone)
    counted = sorted(
        (o for o in profile.orders.values() if o.counts),
        key=lambda o: (o.placed_at, o.order_id),
    )
    times = [o.placed_at for o in counted if o.placed_at is not None]
    revenue = round(sum(o.net_revenue for o in counted), 2)
    weekdays = [0] * 7
    hours = [0] * 24
    for when in times:
        local = when.astimezone(zone)
        weekdays[local.weekday()] += 1
        hours[local.hour] += 1
    gaps = [(b - a).total_seconds() / 86400 for a, b in itertools.pairwise(times)]
    started = [c for c in profile.checkouts.values() if c.started_at is not None]
    completed = [c for c in started if c.completed_at is not None]
    abandoned = [
        c
        for c in started
        if c.completed_at is None
        and c.started_at is not None
        and c.started_at <= now - abandoned_after
    ]
    open_started = sorted(
        (c.started_at for c in started if c.completed_at is None and c.started_at is not None),
        reverse=True,
    )
    last_order = times[-1] if times else None
    return {
        "has_account": profile.user_id is not None,
        "events": sum(profile.event_counts.values()),
        "first_seen_at": profile.first_seen_at.isoformat() if profile.first_seen_at else None,
        "last_seen_at": profile.last_seen_at.isoformat() if profile.last_seen_at else None,
        "orders": len(counted),
        "revenue": revenue,
        "aov": round(revenue / len(counted), 2) if counted else 0.0,
        "refunded": round(sum(min(o.refunded, o.revenue) for o in profile.orders.values()), 2),
        "cancelled_orders": sum(1 for o in profile.orders.values() if o.cancelled),
        "first_order_at": times[0].isoformat() if times else None,
        "last_order_at": last_order.isoformat() if last_order else None,
        "days_since_last_order": (
            round((now - last_order).total_seconds() / 86400, 2) if last_order else None
        ),
        "median_days_between_orders": round(statistics.median(gaps), 2) if gaps else None,
        "checkouts_started": len(started),
        "checkouts_completed": len(completed),
        "carts_abandoned": len(abandoned),
        # Open checkouts (newest 50) so that "abandoned" can be re-derived at any later time.
        "open_checkouts": [t.isoformat() for t in open_started[:_OPEN_KEPT]],
        "carts_abandoned_closed": sum(
            1 for t in open_started[_OPEN_KEPT:] if t <= now - abandoned_after
        ),
        "order_weekdays": weekdays,
        "order_hours": hours,
        "timezone": zone.key,
    }
