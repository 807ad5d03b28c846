"""``nudge demo``: a simulated shop that drives a running engine with realistic traffic.

:func:`generate` is pure: from a seed, a period of ``days`` ending at ``now`` and a target
count it builds exactly ``events`` Segment calls, as a Segment client would send them, for a
population of customers with habits (Tuesday family shoppers, Friday friends shoppers,
regulars, lapsing regulars, one-time buyers, checkout abandoners, anonymous window shoppers).
Customers are simulated one after the other until the count is reached; the last one's
timeline is cut at the count. The same seed and ``now`` give the same calls, ids included;
customer ids are ``cust-<seed>-<n>``, so a second run with the same seed adds to the same
customers (use another ``--seed`` for a separate population).

:func:`send_calls` posts calls to ``/v1/batch``; :func:`live_calls` makes one current visit.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson

from engine.clock import Clock, SystemClock

__all__ = [
    "CATALOGUE",
    "PERSONAS",
    "DemoCustomer",
    "DemoData",
    "SendResult",
    "generate",
    "live_calls",
    "send_calls",
]

CURRENCY = "USD"

#: (product_id, sku, name, category, brand, price)
CATALOGUE: tuple[tuple[str, str, str, str, str, float], ...] = (
    ("p-101", "COF-ESP-500", "Espresso Beans 500 g", "Coffee", "Nordic Roast", 14.90),
    ("p-102", "COF-FIL-1K", "Filter Coffee 1 kg", "Coffee", "Nordic Roast", 22.50),
    ("p-103", "COF-ETH-250", "Single Origin Ethiopia 250 g", "Coffee", "Highland Estates", 12.00),
    ("p-104", "COF-DEC-250", "Decaf House Blend 250 g", "Coffee", "Highland Estates", 9.50),
    ("p-105", "COF-CBR-4", "Cold Brew Pack", "Coffee", "Nordic Roast", 18.00),
    ("p-106", "COF-CAP-30", "Coffee Capsules x30", "Coffee", "Capsula", 11.90),
    ("p-201", "TEA-SEN-100", "Sencha Green Tea", "Tea", "Kyoto Leaf", 15.00),
    ("p-202", "TEA-MAT-30", "Ceremonial Matcha 30 g", "Tea", "Kyoto Leaf", 24.00),
    ("p-203", "TEA-EGR-100", "Earl Grey Loose Leaf", "Tea", "Albion Tea", 8.50),
    ("p-204", "TEA-EBR-80", "English Breakfast x80", "Tea", "Albion Tea", 6.90),
    ("p-205", "TEA-ROO-100", "Rooibos Vanilla", "Tea", "Albion Tea", 7.20),
    ("p-301", "PAN-OIL-1L", "Extra Virgin Olive Oil 1 l", "Pantry", "Harvest & Co", 16.50),
    ("p-302", "PAN-FLO-2K", "Sourdough Flour 2 kg", "Pantry", "Harvest & Co", 5.90),
    ("p-303", "PAN-RIC-2K", "Basmati Rice 2 kg", "Pantry", "Harvest & Co", 7.40),
    ("p-304", "PAN-PAS-6", "Organic Pasta Pack", "Pantry", "Nonna Lucia", 6.20),
    ("p-305", "PAN-TOM-3", "Tomato Passata x3", "Pantry", "Nonna Lucia", 5.10),
    ("p-306", "PAN-PES-190", "Pesto Genovese", "Pantry", "Nonna Lucia", 4.80),
    ("p-307", "PAN-HON-500", "Wildflower Honey", "Pantry", "Bee Happy", 9.90),
    ("p-308", "PAN-GRA-750", "Breakfast Granola", "Pantry", "Morning Co", 6.50),
    ("p-401", "SNK-CRI-150", "Sea Salt Crisps", "Snacks", "Crunchy Bros", 3.20),
    ("p-402", "SNK-CAS-200", "Chilli Cashews", "Snacks", "Crunchy Bros", 5.40),
    ("p-403", "SNK-CHO-70", "Dark Chocolate 70%", "Snacks", "Cacao Craft", 3.90),
    ("p-404", "SNK-CAR-100", "Salted Caramel Bar", "Snacks", "Cacao Craft", 3.50),
    ("p-405", "SNK-COO-250", "Oat Cookies", "Snacks", "Morning Co", 4.20),
    ("p-406", "SNK-CRA-200", "Cheese Crackers", "Snacks", "Crunchy Bros", 3.80),
    ("p-407", "SNK-TRA-300", "Trail Mix", "Snacks", "Crunchy Bros", 6.90),
    ("p-501", "DRK-ELD-6", "Elderflower Lemonade x6", "Drinks", "Fizz Lab", 9.60),
    ("p-502", "DRK-GIN-6", "Ginger Beer x6", "Drinks", "Fizz Lab", 10.20),
    ("p-503", "DRK-IPA-6", "Alcohol-free IPA x6", "Drinks", "Hoppy Days", 12.90),
    ("p-504", "DRK-SPA-12", "Sparkling Water x12", "Drinks", "Fizz Lab", 7.80),
    ("p-505", "DRK-COL-6", "Craft Cola x6", "Drinks", "Fizz Lab", 8.40),
    ("p-506", "DRK-KOM-3", "Kombucha Trio", "Drinks", "Hoppy Days", 11.50),
    ("p-601", "KIT-KET-1", "Pour-over Kettle", "Kitchen", "Oak & Iron", 49.00),
    ("p-602", "KIT-SKI-26", "Cast Iron Skillet", "Kitchen", "Oak & Iron", 39.00),
    ("p-603", "KIT-KNI-20", "Chef's Knife 20 cm", "Kitchen", "Oak & Iron", 59.00),
    ("p-604", "KIT-BOA-40", "Bamboo Cutting Board", "Kitchen", "Linen House", 24.00),
    ("p-605", "KIT-PRE-1L", "French Press 1 l", "Kitchen", "Oak & Iron", 29.00),
    ("p-701", "HOM-TOW-2", "Linen Tea Towels x2", "Home", "Linen House", 14.00),
    ("p-702", "HOM-CAN-FIG", "Soy Candle Fig", "Home", "Linen House", 19.00),
    ("p-703", "HOM-MUG-4", "Ceramic Mug Set x4", "Home", "Linen House", 32.00),
)

#: persona -> (label, customers per deck of 20); decks are shuffled, so every 20 customers
#: simulated include each persona.
PERSONAS: dict[str, tuple[str, int]] = {
    "tuesday": ("Tuesday family shopper", 3),
    "friday": ("Friday friends shopper", 3),
    "regular": ("regular", 2),
    "lapsing": ("lapsing regular", 2),
    "one_time": ("one-time buyer", 4),
    "abandoner": ("checkout abandoner", 2),
    "window": ("window shopper", 4),
}
_LIKES = {
    "tuesday": ("Pantry", "Snacks", "Coffee", "Tea", "Home"),
    "friday": ("Drinks", "Snacks"),
}
# (zone, locale, weight)
_ZONES = (
    ("Europe/Stockholm", "sv-SE", 30),
    ("America/New_York", "en-US", 25),
    ("Europe/London", "en-GB", 20),
    ("Asia/Tokyo", "ja-JP", 10),
    ("America/Los_Angeles", "en-US", 10),
    ("Europe/Berlin", "de-DE", 5),
)
# fmt: off
_FIRST = ("Anna", "Erik", "Maja", "Liam", "Olivia", "Noah", "Yuki", "Haruto", "Emma", "Oscar",
          "Sofia", "James", "Ella", "Hugo", "Aiko", "Grace", "Felix", "Leo", "Mia", "Lucas")
_LAST = ("Andersson", "Smith", "Tanaka", "Johansson", "Brown", "Sato", "Miller", "Karlsson",
         "Wilson", "Schmidt", "Taylor", "Nilsson", "Suzuki", "Davis", "Weber")
_QUERIES = ("coffee", "green tea", "gift", "snacks", "olive oil", "lemonade", "chocolate",
            "kettle", "decaf", "pasta", "candle", "party drinks")
# fmt: on
_PRODUCT_KEYS = ("product_id", "sku", "name", "category", "brand", "price")
_UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 Safari/605.1.15"


@dataclass(frozen=True, kw_only=True, slots=True)
class DemoCustomer:
    """A simulated customer; ``user_id`` is None for one who never identified."""

    persona: str
    user_id: str | None
    anonymous_id: str
    timezone: str
    events: int


@dataclass(frozen=True, kw_only=True, slots=True)
class DemoData:
    """The calls, sorted by timestamp, and who made them."""

    calls: list[dict[str, Any]]
    customers: list[DemoCustomer]

    def examples(self) -> dict[str, str]:
        """label -> customer ref worth a look: the busiest Tuesday, Friday and lapsing
        shoppers, and an identified customer with an abandoned checkout."""
        orders: Counter[str] = Counter()
        started: dict[str, str] = {}
        completed: set[str] = set()
        for call in self.calls:
            user, props = call.get("userId"), call.get("properties") or {}
            if user and call.get("event") == "Order Completed":
                orders[user] += 1
                completed.add(props["cart_id"])
            elif user and call.get("event") == "Checkout Started":
                started[props["cart_id"]] = user
        found: dict[str, str] = {}
        for persona in ("tuesday", "friday", "lapsing"):
            mine = [c.user_id for c in self.customers if c.persona == persona and c.user_id]
            if mine:
                found[PERSONAS[persona][0]] = max(mine, key=lambda u: (orders[u], u))
        abandoned = {u for cart, u in started.items() if cart not in completed}
        by_persona = sorted(self.customers, key=lambda c: c.persona != "abandoner")
        for customer in by_persona:
            if customer.user_id in abandoned:
                found["abandoned checkout"] = customer.user_id
                break
        return found


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _product(item: tuple[str, str, str, str, str, float], **extra: Any) -> dict[str, Any]:
    return {**dict(zip(_PRODUCT_KEYS, item, strict=True)), "currency": CURRENCY, **extra}


class _Sim:
    """One customer's timeline while it is being built."""

    def __init__(self, rng: random.Random, *, seed: int, index: int, persona: str) -> None:
        self.rng, self.persona = rng, persona
        self.zone, self.locale, _ = rng.choices(_ZONES, weights=[z[2] for z in _ZONES])[0]
        self.tz = ZoneInfo(self.zone)
        self.ios = rng.random() < 0.3  # the app: push tokens; else the web shop
        library = ("analytics-ios", "4.1.8") if self.ios else ("analytics.js", "5.2.0")
        self.context: dict[str, Any] = {"library": {"name": library[0], "version": library[1]}}
        self.context.update(timezone=self.zone, locale=self.locale)
        self.context.update({"device": {"type": "ios"}} if self.ios else {"userAgent": _UA})
        self.anonymous_id = self.uuid()
        self.account = f"cust-{seed}-{index:04d}"
        self.user_id: str | None = None
        self.likes = [p for p in CATALOGUE if p[3] in _LIKES.get(persona, (p[3],))]
        self.calls: list[tuple[datetime, dict[str, Any]]] = []

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def step(self, when: datetime, lo: float = 15, hi: float = 120) -> datetime:
        return when + timedelta(seconds=self.rng.uniform(lo, hi))

    def emit(self, when: datetime, kind: str, **fields: Any) -> None:
        call: dict[str, Any] = {
            "type": kind,
            "messageId": self.uuid(),
            "anonymousId": self.anonymous_id,
        }
        call.update({"userId": self.user_id} if self.user_id else {})
        call.update(fields, context=dict(self.context), timestamp=_iso(when))
        self.calls.append((when, call))

    def track(self, when: datetime, event: str, props: dict[str, Any]) -> datetime:
        self.emit(when, "track", event=event, properties=props)
        return self.step(when)

    def identify(self, when: datetime) -> datetime:
        self.user_id = self.account
        first, last = self.rng.choice(_FIRST), self.rng.choice(_LAST)
        traits: dict[str, Any] = {
            "email": f"{first}.{last}+{self.account}@example.com".lower(),
            "first_name": first,
            "last_name": last,
            "timezone": self.zone,
            "accepts_marketing": self.rng.random() < 0.75,
        }
        if self.ios:
            traits["push_tokens"] = [f"{self.rng.getrandbits(256):064x}"]
        self.emit(when, "identify", traits=traits)
        return self.step(when, 5, 30)

    def local(self, day: date, hours: tuple[int, int]) -> datetime:
        """A time on local ``day`` between ``hours`` (local wall clock), as UTC."""
        hour, minute = self.rng.randint(*hours), self.rng.randrange(60)
        return datetime(day.year, day.month, day.day, hour, minute, tzinfo=self.tz).astimezone(UTC)

    def browse(self, when: datetime, views: int) -> datetime:
        if self.rng.random() < 0.4:
            when = self.track(when, "Products Searched", {"query": self.rng.choice(_QUERIES)})
        for _ in range(views):
            when = self.track(when, "Product Viewed", _product(self.rng.choice(self.likes)))
        return when

    def shop(self, when: datetime, stage: str) -> datetime:
        """A cart session that stops at ``cart``, ``checkout`` (abandoned) or ``order``."""
        rng, cart_id = self.rng, self.uuid()
        count = rng.choices((1, 2, 3, 4, 5), weights=(3, 4, 3, 2, 1))[0]
        items = {p[0]: (p, rng.choice((1, 1, 1, 2, 3))) for p in rng.sample(self.likes, count)}
        for item, qty in list(items.values()):
            when = self.track(when, "Product Viewed", _product(item))
            when = self.track(when, "Product Added", _product(item, cart_id=cart_id, quantity=qty))
        if len(items) > 1 and rng.random() < 0.15:
            item, qty = items.pop(rng.choice(sorted(items)))
            when = self.track(
                when, "Product Removed", _product(item, cart_id=cart_id, quantity=qty)
            )
        products = [
            _product(p, quantity=q, position=i + 1) for i, (p, q) in enumerate(items.values())
        ]
        if rng.random() < 0.6:
            when = self.track(when, "Cart Viewed", {"cart_id": cart_id, "products": products})
        if stage == "cart":
            return when
        value = round(sum(p[5] * q for p, q in items.values()), 2)
        ids = {"checkout_id": cart_id, "cart_id": cart_id, "currency": CURRENCY}
        when = self.track(when, "Checkout Started", {**ids, "value": value, "products": products})
        if stage != "order":
            return when
        order_id, coupon = f"ord_{rng.getrandbits(64):016x}", rng.random() < 0.2
        discount = round(value * 0.1, 2) if coupon else 0.0
        revenue = round(value - discount, 2)
        shipping = 0.0 if revenue >= 50 else 4.95
        total = round(revenue + shipping, 2)
        props = {**ids, "order_id": order_id, "revenue": revenue, "total": total, "tax": 0.0}
        props.update(shipping=shipping, discount=discount, products=products)
        if coupon:
            props["coupon"] = rng.choice(("WELCOME10", "SPRING10", "FRIENDS10"))
        when = self.step(when, 60, 600)
        self.track(when, "Order Completed", props)
        fate, ref = rng.random(), {"order_id": order_id, "currency": CURRENCY}
        if fate < 0.03:
            later = when + timedelta(hours=rng.uniform(1, 8))
            self.track(later, "Order Cancelled", {**ref, "total": total})
        elif fate < 0.08:  # refunded in full or in part, some days later
            later = when + timedelta(days=rng.uniform(2, 12))
            self.track(
                later, "Order Refunded", {**ref, "total": rng.choice((total, round(total / 2, 2)))}
            )
        return self.step(when)


def _habit_days(sim: _Sim, start: datetime, now: datetime, weekday: int, p: float) -> list[date]:
    day, last, days = (start + timedelta(days=1)).astimezone(sim.tz).date(), now.date(), []
    day += timedelta(days=(weekday - day.weekday()) % 7)
    while day < last:
        if sim.rng.random() < p:
            off = sim.rng.random() < 0.1  # now and then another day of that week
            days.append(day + timedelta(days=sim.rng.choice((-1, 1, 2, 3)) if off else 0))
        day += timedelta(days=7)
    return days


def _plan(sim: _Sim, start: datetime, now: datetime) -> list[tuple[datetime, str]]:
    """(start time, session kind) for the persona's whole period, in time order."""
    rng, span = sim.rng, (now - start).total_seconds() / 86400
    persona, plan = sim.persona, []

    def at(days: float, hours: tuple[int, int] = (8, 22)) -> datetime:
        return sim.local((start + timedelta(days=days)).astimezone(sim.tz).date(), hours)

    def every(lo: float, hi: float, first: float, until: float) -> list[datetime]:
        out, t = [], first
        while t < until:
            out.append(at(t))
            t += rng.uniform(lo, hi)
        return out

    if persona in ("tuesday", "friday"):
        weekday, p = (1, 0.75) if persona == "tuesday" else (4, 0.55)
        hour = rng.choice((10, 18, 19)) if persona == "tuesday" else rng.choice((17, 19, 20))
        hours = (hour - 1, hour + 1)
        plan = [(sim.local(d, hours), "order") for d in _habit_days(sim, start, now, weekday, p)]
        plan += [(at(rng.uniform(1, span)), "browse") for _ in range(int(span / 30))]
    elif persona in ("regular", "lapsing"):
        stop = span * rng.uniform(0.35, 0.55) if persona == "lapsing" else span
        lo, hi = (6, 14) if persona == "lapsing" else (10, 28)
        plan = [(t, "order") for t in every(lo, hi, rng.uniform(1, 8), stop)]
    elif persona == "one_time":
        plan = [(at(rng.uniform(1, span)), "order")]
    elif persona == "abandoner":
        plan = [(at(rng.uniform(1, span * 0.6)), "order")] if rng.random() < 0.5 else []
        plan.append((now - timedelta(hours=rng.uniform(3, min(120, span * 12))), "checkout"))
    else:  # window shopper
        visits = rng.randint(1, 3)
        plan = [(at(rng.uniform(0.2, span)), rng.choice(("browse", "cart"))) for _ in range(visits)]
    plan.sort()
    # The first visit is anonymous browsing; the customer identifies at the next one.
    first = plan[0][0] if plan else at(rng.uniform(0.1, span))
    earliest = start + timedelta(minutes=rng.uniform(5, 600))
    visit = max(earliest, first - timedelta(hours=rng.uniform(1, 72)))
    return [(visit, "first"), *plan]


def _simulate(sim: _Sim, start: datetime, now: datetime) -> list[dict[str, Any]]:
    rng, free = sim.rng, start
    for planned, kind in _plan(sim, start, now):
        when = max(planned, free)
        if kind == "first":
            when = sim.browse(when, rng.randint(1, 4))
        elif kind == "browse":
            when = sim.browse(when, rng.randint(2, 5))
        else:
            if sim.user_id is None and sim.persona != "window":
                when = sim.identify(when)
            abandon = kind == "order" and rng.random() < 0.08  # even regulars abandon some
            when = sim.shop(when, "checkout" if abandon else kind)
        free = when + timedelta(minutes=30)
    ordered = sorted(sim.calls, key=lambda c: c[0])  # stable: a session keeps its order
    return [call for t, call in ordered if start <= t <= now]


def generate(*, events: int, days: int, seed: int, now: datetime) -> DemoData:
    """Exactly ``events`` Segment calls over the ``days`` before ``now``, sorted by time."""
    if events < 1 or days < 1 or now.tzinfo is None:
        raise ValueError("events and days must be positive and now timezone-aware")
    rng, start = random.Random(seed), now - timedelta(days=days)
    deck = [name for name, (_, per_deck) in PERSONAS.items() for _ in range(per_deck)]
    timelines: list[list[dict[str, Any]]] = []
    customers: list[DemoCustomer] = []
    total = 0
    while total < events:
        before = total
        rng.shuffle(deck)
        for persona in deck:
            sim = _Sim(rng, seed=seed, index=len(customers) + 1, persona=persona)
            calls = _simulate(sim, start, now)[: events - total]
            if not calls:
                continue
            total += len(calls)
            timelines.append(calls)
            user_id = next((c["userId"] for c in calls if "userId" in c), None)
            customer = DemoCustomer(
                persona=persona,
                user_id=user_id,
                anonymous_id=sim.anonymous_id,
                timezone=sim.zone,
                events=len(calls),
            )
            customers.append(customer)
            if total == events:
                break
        if total == before:  # cannot happen with days >= 1, but never loop forever
            raise ValueError(f"no customer has a visit in {days} days before {now}")
    merged = [call for calls in timelines for call in calls]
    merged.sort(key=lambda c: c["timestamp"])  # stable: each customer's order is kept
    return DemoData(calls=merged, customers=customers)


def live_calls(rng: random.Random, *, seed: int, index: int, now: datetime) -> list[dict[str, Any]]:
    """One visit of the last three hours: a browse, a new cart, an abandoned checkout or an
    order. Three hours back (inside the engine's trigger lag), so the sample rules' first
    waits (1 h push, 2 h browse reminder) are already due and messages go out while you
    watch — and the caps and quiet hours visibly defer or skip some."""
    sim = _Sim(rng, seed=seed, index=index, persona="live")
    when = sim.browse(now - timedelta(hours=3), rng.randint(1, 3))
    kind = rng.choices(("browse", "cart", "checkout", "order"), weights=(2, 2, 4, 3))[0]
    if kind in ("checkout", "order"):
        when = sim.identify(when)
    if kind != "browse":
        sim.shop(when, kind)
    return [call for t, call in sorted(sim.calls, key=lambda c: c[0]) if t <= now]


@dataclass(frozen=True, kw_only=True, slots=True)
class SendResult:
    """Events the engine accepted, rejected (with the first few reasons) and never got."""

    sent: int = 0
    rejected: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def _batches(items: list[bytes], max_events: int, max_bytes: int) -> list[list[bytes]]:
    batches: list[list[bytes]] = []
    for item in items:
        full = not batches or len(batches[-1]) >= max_events
        if full or sum(len(i) + 1 for i in batches[-1]) + len(item) > max_bytes:
            batches.append([])
        batches[-1].append(item)
    return batches


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        doc = response.json()
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def send_calls(
    calls: Sequence[dict[str, Any]],
    *,
    url: str,
    write_key: str,
    client: httpx.Client | None = None,
    clock: Clock | None = None,
    max_events: int = 100,
    max_bytes: int = 500 * 1000,
    attempts: int = 5,
    sleep: Callable[[float], None] = time.sleep,
) -> SendResult:
    """POST ``calls`` to ``{url}/v1/batch`` in batches of at most ``max_events`` events and
    ``max_bytes`` bytes (Basic auth, ``sentAt`` set), retrying 429, 5xx and connection errors
    up to ``attempts`` tries with backoff. Stops at a batch that cannot be delivered or at a
    refused write key; what was not delivered is counted as ``failed``."""
    clock, http = clock or SystemClock(), client or httpx.Client(timeout=30.0)
    endpoint, headers = f"{url.rstrip('/')}/v1/batch", {"Content-Type": "application/json"}

    def post(batch: list[bytes]) -> httpx.Response | str:
        problem = ""
        for attempt in range(attempts):
            if attempt:
                sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
            sent_at = orjson.dumps(_iso(clock.now()))  # per try: the engine corrects skew by it
            body = b'{"batch":[' + b",".join(batch) + b'],"sentAt":' + sent_at + b"}"
            try:
                response = http.post(endpoint, content=body, auth=(write_key, ""), headers=headers)
            except httpx.TransportError as exc:
                problem = f"cannot reach {url}: {exc or type(exc).__name__}"
                continue
            if response.status_code == 401:  # no use trying the next batches
                return f"{url} refused the write key: {response.text[:200]}"
            if response.status_code != 429 and response.status_code < 500:
                return response
            problem = f"{url} answered {response.status_code}: {response.text[:200]}"
        return problem

    envelope = 64  # '{"batch":[' and '],"sentAt":"..."}'
    sent = rejected = done = 0
    errors: list[str] = []
    try:
        for batch in _batches([orjson.dumps(c) for c in calls], max_events, max_bytes - envelope):
            answer = post(batch)
            if isinstance(answer, str):
                errors.append(answer)
                return SendResult(
                    sent=sent, rejected=rejected, failed=len(calls) - done, errors=errors
                )
            doc = _json(answer)
            error: dict[str, Any] = doc["error"] if isinstance(doc.get("error"), dict) else {}
            if answer.is_success:
                bad = doc.get("rejected") or []
                sent += int(doc.get("accepted", len(batch) - len(bad)))
                rejected += len(bad)
            else:  # the whole batch was refused (all events invalid, too large, ...)
                bad = error.get("details") if error.get("code") == "batch_rejected" else None
                bad = bad or [{"message": error.get("message") or answer.text[:200]}]
                rejected += len(batch)
            for item in bad[: max(0, 5 - len(errors))]:  # the first few reasons are enough
                where = f"event {done + item['index']}" if "index" in item else "batch"
                errors.append(f"{where}: {item.get('message', 'rejected')}")
            done += len(batch)
    finally:
        if client is None:
            http.close()
    return SendResult(sent=sent, rejected=rejected, errors=errors)
