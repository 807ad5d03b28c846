"""One transaction's worth of store operations (the unit of work the service drives).

The service opens a unit with :meth:`SqlStore.unit`, and claims, loads, runs its pure steps
and writes through it; everything commits together or not at all.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.clock import Clock
from engine.context import CustomerFacts, TriggerFacts
from engine.customers import (
    ANONYMOUS,
    USER,
    CheckoutState,
    EventIn,
    OrderState,
    Outcome,
    Profile,
    World,
    contact_email,
)
from engine.intelligence.bulk import Buyer
from engine.intelligence.preferences import Interaction
from engine.journeys import ACTIVE, CANCELLED, Ident, Journey, JourneyOutcome, evolve
from engine.models import EVENT_DONE, EVENT_FAILED, EVENT_PENDING
from engine.store.base import ShopHistory
from engine.store.bulk import CHUNK, bulk_insert, bulk_update, chunks, dialect_insert
from engine.store.delivery import DeliveryMixin
from engine.store.tables import (
    CHECKOUTS,
    CUSTOMERS,
    DECISIONS,
    EVENTS,
    IDENTITIES,
    JOURNEYS,
    ORDERS,
    STATE,
    TRANSITIONS,
)

__all__ = ["SqlUnit", "load_profiles"]

_S = TypeVar("_S", OrderState, CheckoutState)


def _parse(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value)


def _state(kind: type[_S], r: Any) -> _S:
    """An order/checkout state from its row: the dataclass fields are the table's columns."""
    values = {f.name: getattr(r, f.name) for f in fields(kind)}
    values["products"] = list(values["products"] or [])
    return kind(**values)


def _row(state: OrderState | CheckoutState) -> dict[str, Any]:
    return {f.name: getattr(state, f.name) for f in fields(state)}


def load_profiles(conn: Connection, ids: Sequence[int]) -> dict[int, Profile]:
    profiles: dict[int, Profile] = {}
    for chunk in chunks(ids):
        for r in conn.execute(sa.select(CUSTOMERS).where(CUSTOMERS.c.id.in_(chunk))):
            profiles[r.id] = Profile(
                key=r.id,
                user_id=r.user_id,
                traits=dict(r.traits or {}),
                trait_times=dict(r.trait_times or {}),
                consent=dict(r.consent or {}),
                event_counts=dict(r.event_counts or {}),
                first_seen_at=r.first_seen_at,
                last_seen_at=r.last_seen_at,
                context_timezone=r.device_timezone,
                created_at=r.created_at,
                intel=dict(r.intel or {}),
            )
        for r in conn.execute(
            sa.select(IDENTITIES.c.kind, IDENTITIES.c.value, IDENTITIES.c.customer_id).where(
                IDENTITIES.c.customer_id.in_(chunk)
            )
        ):
            if r.customer_id in profiles:
                profiles[r.customer_id].identities.add((r.kind, r.value))
        for r in conn.execute(sa.select(ORDERS).where(ORDERS.c.customer_id.in_(chunk))):
            if r.customer_id in profiles:
                profiles[r.customer_id].orders[r.order_id] = _state(OrderState, r)
        for r in conn.execute(sa.select(CHECKOUTS).where(CHECKOUTS.c.customer_id.in_(chunk))):
            if r.customer_id in profiles:
                profiles[r.customer_id].checkouts[r.cart_id] = _state(CheckoutState, r)
    return profiles


class SqlUnit(DeliveryMixin):
    """Store operations bound to one open transaction."""

    def __init__(self, conn: Connection, *, dialect: str, clock: Clock) -> None:
        self.conn = conn
        self.dialect = dialect
        self.clock = clock

    def _insert(self, tbl: sa.Table) -> Any:
        return dialect_insert(self.dialect, tbl)

    def allocate_ids(self, tbl: sa.Table, count: int) -> list[int]:
        """``count`` new primary keys for ``tbl``, so rows can be inserted in one
        executemany (RETURNING with ordered results is row-at-a-time on SQLite)."""
        if self.dialect == "postgresql":
            sequence = sa.func.pg_get_serial_sequence(tbl.name, "id")
            query = sa.select(sa.func.nextval(sequence)).select_from(
                sa.func.generate_series(1, count)
            )
            return [int(v) for v in self.conn.execute(query).scalars()]
        # SQLite: the write transaction (BEGIN IMMEDIATE) holds the only writer lock.
        top = self.conn.execute(sa.select(sa.func.coalesce(sa.func.max(tbl.c.id), 0))).scalar()
        return list(range(int(top or 0) + 1, int(top or 0) + 1 + count))

    def _upsert(self, tbl: sa.Table, rows: list[dict[str, Any]], keys: list[str]) -> None:
        if not rows:
            return
        stmt = self._insert(tbl)
        update = {c: stmt.excluded[c] for c in rows[0] if c not in keys}
        self.conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=update), rows)

    # -- events -----------------------------------------------------------------------------

    def claim_events(self, limit: int) -> list[EventIn]:
        query = (
            sa.select(
                EVENTS.c.seq,
                EVENTS.c.type,
                EVENTS.c.name,
                EVENTS.c.user_id,
                EVENTS.c.anonymous_id,
                EVENTS.c.previous_id,
                EVENTS.c.timestamp,
                EVENTS.c.payload,
            )
            .where(EVENTS.c.status == EVENT_PENDING)
            .order_by(EVENTS.c.seq)
            .limit(limit)
        )
        if self.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        return [
            EventIn(
                seq=r.seq,
                type=r.type,
                name=r.name,
                user_id=r.user_id,
                anonymous_id=r.anonymous_id,
                previous_id=r.previous_id,
                timestamp=r.timestamp,
                payload=r.payload or {},
            )
            for r in self.conn.execute(query)
        ]

    # -- world loading and writing ------------------------------------------------------------

    def load_world(self, events: list[EventIn]) -> World:
        idents: set[tuple[str, str]] = set()
        order_ids: set[str] = set()
        cart_ids: set[str] = set()
        for e in events:
            if e.user_id:
                idents.add((USER, e.user_id))
            if e.anonymous_id:
                idents.add((ANONYMOUS, e.anonymous_id))
            if e.previous_id:
                idents.add((USER, e.previous_id))
                idents.add((ANONYMOUS, e.previous_id))
            props = e.payload.get("properties")
            if isinstance(props, dict):
                for name in ("order_id",):
                    if props.get(name) is not None:
                        order_ids.add(str(props[name]).strip())
                for name in ("cart_id", "checkout_id"):
                    if props.get(name) is not None:
                        cart_ids.add(str(props[name]).strip())
        ids: set[int] = set()
        for users_or_anons in (USER, ANONYMOUS):
            values = [v for k, v in idents if k == users_or_anons]
            for chunk in chunks(values):
                ids.update(
                    self.conn.execute(
                        sa.select(IDENTITIES.c.customer_id).where(
                            IDENTITIES.c.kind == users_or_anons, IDENTITIES.c.value.in_(chunk)
                        )
                    ).scalars()
                )
        for chunk in chunks(sorted(order_ids)):
            ids.update(
                self.conn.execute(
                    sa.select(ORDERS.c.customer_id).where(ORDERS.c.order_id.in_(chunk))
                ).scalars()
            )
        for chunk in chunks(sorted(cart_ids)):
            ids.update(
                self.conn.execute(
                    sa.select(CHECKOUTS.c.customer_id).where(CHECKOUTS.c.cart_id.in_(chunk))
                ).scalars()
            )
        world = World()
        for profile in load_profiles(self.conn, sorted(ids)).values():
            world.add(profile)
        return world

    def _customer_row(
        self, profile: Profile, stats: dict[str, Any], now: datetime
    ) -> dict[str, Any]:
        return {
            "user_id": profile.user_id,
            "anonymous_id": profile.anonymous_id,
            "email": contact_email(profile),
            "timezone": stats.get("timezone"),
            "device_timezone": profile.context_timezone,
            "traits": profile.traits,
            "trait_times": profile.trait_times,
            "consent": profile.consent,
            "stats": stats,
            "event_counts": profile.event_counts,
            "first_seen_at": profile.first_seen_at,
            "last_seen_at": profile.last_seen_at,
            "orders_count": stats.get("orders", 0),
            "revenue": stats.get("revenue", 0.0),
            "first_order_at": _parse(stats.get("first_order_at")),
            "last_order_at": _parse(stats.get("last_order_at")),
            "updated_at": now,
        }

    def write_profiles(
        self,
        world: World,
        loaded: set[int],
        outcome: Outcome,
        stats: Callable[[Profile], dict[str, Any]],
    ) -> dict[int, int]:
        dirty, merged = outcome.dirty, outcome.merged
        now = self.clock.now()
        ids = {key: key for key in loaded}
        # Losers first: they give up their identities (and, for alias merges, their userId).
        survivors = {loser: into for loser, into in merged.items() if loser > 0}
        rows: dict[int, dict[str, Any]] = {}
        for key in sorted(dirty):
            profile = world.profiles.get(key)
            if profile is not None:
                rows[key] = self._customer_row(profile, stats(profile), now)
        new_keys = [key for key in rows if key < 0]
        if new_keys:
            created = self.allocate_ids(CUSTOMERS, len(new_keys))
            bulk_insert(
                self.conn,
                self.dialect,
                CUSTOMERS,
                [
                    {**rows[key], "id": new_id, "created_at": now}
                    for key, new_id in zip(new_keys, created, strict=True)
                ],
            )
            ids.update(zip(new_keys, created, strict=True))
        if survivors:
            self.conn.execute(
                CUSTOMERS.update()
                .where(CUSTOMERS.c.id == sa.bindparam("b_id"))
                .values(merged_into=sa.bindparam("b_into"), user_id=None),
                [{"b_id": loser, "b_into": ids[into]} for loser, into in survivors.items()],
            )
            for loser, into in survivors.items():
                self.move_customer_history(loser, ids[into])
        updates = [{"id": key, **row} for key, row in rows.items() if key > 0]
        bulk_update(self.conn, self.dialect, CUSTOMERS, updates, key="id")
        orders: list[dict[str, Any]] = []
        for order_id in sorted(outcome.orders):
            key = world.order_owner[order_id]
            o = world.profiles[key].orders[order_id]
            orders.append({**_row(o), "customer_id": ids[key]})
        checkouts: list[dict[str, Any]] = []
        for cart_id in sorted(outcome.checkouts):
            key = world.checkout_owner[cart_id]
            c = world.profiles[key].checkouts[cart_id]
            checkouts.append({**_row(c), "customer_id": ids[key]})
        self._upsert(ORDERS, orders, ["order_id"])
        self._upsert(CHECKOUTS, checkouts, ["cart_id"])
        return ids

    def write_identities(self, moved: dict[tuple[str, str], int], ids: dict[int, int]) -> None:
        now = self.clock.now()
        rows = [
            {"kind": kind, "value": value, "customer_id": ids[key], "first_seen_at": now}
            for (kind, value), key in sorted(moved.items())
        ]
        if not rows:
            return
        stmt = self._insert(IDENTITIES)
        self.conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["kind", "value"], set_={"customer_id": stmt.excluded.customer_id}
            ),
            rows,
        )

    def mark_events(self, outcome: Outcome, ids: dict[int, int]) -> None:
        """Events applied (with their customer) or failed (with the reason)."""
        rows: list[dict[str, Any]] = [
            {"seq": seq, "status": EVENT_DONE, "customer_id": ids[key], "error": None}
            for seq, key in outcome.assigned.items()
        ]
        rows += [
            {"seq": seq, "status": EVENT_FAILED, "customer_id": None, "error": reason}
            for seq, reason in outcome.failed.items()
        ]
        bulk_update(self.conn, self.dialect, EVENTS, rows, key="seq")

    def move_customer_history(self, loser: int, survivor: int) -> None:
        """After a merge: the loser's events, decisions, journeys, messages and suppressions
        belong to the survivor.

        A journey the survivor already has for the same rule and key stays the survivor's;
        the loser's twin is cancelled.
        """
        self.conn.execute(
            EVENTS.update().where(EVENTS.c.customer_id == loser).values(customer_id=survivor)
        )
        self.conn.execute(
            DECISIONS.update().where(DECISIONS.c.customer_id == loser).values(customer_id=survivor)
        )
        # What was sent to the loser still counts against the survivor's caps, and what the
        # loser asked not to receive still holds.
        self.move_delivery_history(loser, survivor)
        twin = JOURNEYS.alias("twin")
        clash = (
            sa.select(twin.c.id)
            .where(
                twin.c.customer_id == survivor,
                twin.c.rule_id == JOURNEYS.c.rule_id,
                twin.c.key == JOURNEYS.c.key,
                twin.c.instance == JOURNEYS.c.instance,
            )
            .exists()
        )
        self.conn.execute(
            JOURNEYS.update()
            .where(JOURNEYS.c.customer_id == loser, ~clash)
            .values(customer_id=survivor)
        )
        self.conn.execute(
            JOURNEYS.update()
            .where(JOURNEYS.c.customer_id == loser, JOURNEYS.c.status == ACTIVE)
            .values(
                status=CANCELLED,
                due_at=None,
                ended_at=self.clock.now(),
                end_reason=f"merged into customer {survivor}",
            )
        )

    # -- intelligence ---------------------------------------------------------------------------

    def shop_history(self, default_timezone: str, since: datetime) -> ShopHistory:
        """What the intelligence job reads, in one pass over the orders: every buyer's orders
        (not cancelled; oldest first, value net of refunds) and zone, the products each
        customer ordered (any time) and viewed or searched for (since ``since``), and
        (orders with a discount or coupon, orders) per buyer."""
        history = ShopHistory()
        query = (
            sa.select(
                ORDERS.c.customer_id,
                ORDERS.c.placed_at,
                ORDERS.c.revenue,
                ORDERS.c.refunded,
                ORDERS.c.products,
                ORDERS.c.discount,
                ORDERS.c.coupon,
                CUSTOMERS.c.timezone,
            )
            .join(CUSTOMERS, CUSTOMERS.c.id == ORDERS.c.customer_id)
            .where(
                ORDERS.c.cancelled.is_(False),
                ORDERS.c.placed_at.is_not(None),
                CUSTOMERS.c.merged_into.is_(None),
            )
            .order_by(ORDERS.c.customer_id, ORDERS.c.placed_at)
        )
        orders: dict[int, list[tuple[datetime, float]]] = {}
        zones: dict[int, str] = {}
        for order in self.conn.execute(query):
            cid = order.customer_id
            value = max(0.0, float(order.revenue or 0) - float(order.refunded or 0))
            orders.setdefault(cid, []).append((order.placed_at, value))
            zones[cid] = order.timezone or default_timezone
            mine = history.interactions.setdefault(cid, [])
            for product in order.products or []:
                if isinstance(product, dict):
                    mine.append(_interaction("order", order.placed_at, product))
            done, total = history.discounts.get(cid, (0, 0))
            discounted = bool((order.discount or 0) > 0 or order.coupon)
            history.discounts[cid] = (done + discounted, total + 1)
        history.buyers = [Buyer(customer_id=c, zone=zones[c], orders=o) for c, o in orders.items()]
        views = sa.select(
            EVENTS.c.customer_id, EVENTS.c.timestamp, EVENTS.c.name, EVENTS.c.payload
        ).where(
            EVENTS.c.name.in_(["Product Viewed", "Products Searched"]),
            EVENTS.c.timestamp >= since,
            EVENTS.c.customer_id.is_not(None),
        )
        for event in self.conn.execute(views):
            props = (event.payload or {}).get("properties")
            if isinstance(props, dict):
                kind = "view" if event.name == "Product Viewed" else "search"
                history.interactions.setdefault(event.customer_id, []).append(
                    _interaction(kind, event.timestamp, props)
                )
        return history

    def write_intel(self, per_customer: dict[int, dict[str, Any]]) -> None:
        rows = [{"id": cid, "intel": doc} for cid, doc in sorted(per_customer.items())]
        for start in range(0, len(rows), 1000):
            bulk_update(self.conn, self.dialect, CUSTOMERS, rows[start : start + 1000], key="id")

    # -- rule context -------------------------------------------------------------------------

    def customer_facts(self, ids: Sequence[int], default_timezone: str) -> dict[int, CustomerFacts]:
        out: dict[int, CustomerFacts] = {}
        for chunk in chunks(sorted(set(ids))):
            query = sa.select(*_FACT_COLUMNS).where(CUSTOMERS.c.id.in_(chunk))
            for r in self.conn.execute(query):
                out[r.id] = _facts(r, default_timezone)
        return out

    def events_named(
        self, customer_ids: Sequence[int], names: Sequence[str], since: datetime
    ) -> dict[int, list[TriggerFacts]]:
        """Processed events of these customers with these names at or after ``since``."""
        out: dict[int, list[TriggerFacts]] = {}
        if not names:
            return out
        for chunk in chunks(sorted(set(customer_ids))):
            query = sa.select(
                EVENTS.c.seq,
                EVENTS.c.customer_id,
                EVENTS.c.type,
                EVENTS.c.name,
                EVENTS.c.timestamp,
                EVENTS.c.payload,
            ).where(
                EVENTS.c.customer_id.in_(chunk),
                EVENTS.c.name.in_(sorted(set(names))),
                EVENTS.c.timestamp >= since,
            )
            for r in self.conn.execute(query):
                props = (r.payload or {}).get("properties")
                out.setdefault(r.customer_id, []).append(
                    TriggerFacts(
                        name=r.name,
                        type=r.type,
                        timestamp=r.timestamp,
                        properties=props if isinstance(props, dict) else {},
                        seq=r.seq,
                    )
                )
        return out

    # -- journeys -------------------------------------------------------------------------------

    def load_journeys(
        self, idents: Iterable[Ident], pairs: Iterable[tuple[str, int]]
    ) -> dict[Ident, Journey]:
        """The journeys with these idents (any status), and every active journey of these
        (rule, customer) pairs."""
        out: dict[Ident, Journey] = {}
        pair_col = sa.tuple_(JOURNEYS.c.rule_id, JOURNEYS.c.customer_id)
        for chunk in chunks(sorted(pairs), CHUNK // 2):
            query = sa.select(JOURNEYS).where(pair_col.in_(chunk), JOURNEYS.c.status == ACTIVE)
            for r in self.conn.execute(query):
                journey = _journey(r)
                out[journey.ident] = journey
        wanted = sorted(i for i in idents if i not in out)
        if self.dialect == "sqlite":
            for journey in _sqlite_journeys(self.conn, wanted):
                out[journey.ident] = journey
            return out
        for rule_id in sorted({i[0] for i in wanted}):
            group = [i for i in wanted if i[0] == rule_id]
            for chunk in chunks(group, CHUNK // 2):
                query = sa.select(JOURNEYS).where(
                    JOURNEYS.c.rule_id == rule_id,
                    JOURNEYS.c.customer_id.in_(sorted({i[1] for i in chunk})),
                    JOURNEYS.c.key.in_(sorted({i[2] for i in chunk})),
                )
                for r in self.conn.execute(query):
                    journey = _journey(r)
                    if journey.ident in wanted:
                        out[journey.ident] = journey
        return out

    def with_trigger_properties(self, journeys: list[Journey]) -> list[Journey]:
        """``journeys`` with their trigger events' properties read from the event log."""
        seqs = sorted({j.trigger.seq for j in journeys if j.trigger.seq is not None})
        found: dict[int, dict[str, Any]] = {}
        for chunk in chunks(seqs):
            query = sa.select(EVENTS.c.seq, EVENTS.c.payload).where(EVENTS.c.seq.in_(chunk))
            for r in self.conn.execute(query):
                props = (r.payload or {}).get("properties")
                found[r.seq] = props if isinstance(props, dict) else {}
        return [
            evolve(j, trigger=evolve(j.trigger, properties=found.get(j.trigger.seq, {})))
            if j.trigger.seq is not None
            else j
            for j in journeys
        ]

    def claim_due_journeys(self, now: datetime, limit: int) -> list[Journey]:
        query = (
            sa.select(JOURNEYS)
            .where(JOURNEYS.c.status == ACTIVE, JOURNEYS.c.due_at <= now)
            .order_by(JOURNEYS.c.due_at, JOURNEYS.c.id)
            .limit(limit)
        )
        if self.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        rows = list(self.conn.execute(query))
        # A customer's due steps are decided together, whatever the batch boundary: they
        # compete for the same capped slots, and the higher priority must win.
        seen = {r.id for r in rows}
        customers = sorted({r.customer_id for r in rows})
        for chunk in chunks(customers):
            more = sa.select(JOURNEYS).where(
                JOURNEYS.c.status == ACTIVE,
                JOURNEYS.c.due_at <= now,
                JOURNEYS.c.customer_id.in_(chunk),
            )
            if self.dialect == "postgresql":
                more = more.with_for_update(skip_locked=True)
            rows += [r for r in self.conn.execute(more) if r.id not in seen]
        return self.with_trigger_properties([_journey(r) for r in rows])

    def existing_journeys(
        self, rule_id: str, instance: str, customer_ids: Sequence[int]
    ) -> set[Ident]:
        found: set[Ident] = set()
        for chunk in chunks(sorted(set(customer_ids))):
            query = sa.select(JOURNEYS.c.customer_id, JOURNEYS.c.key).where(
                JOURNEYS.c.rule_id == rule_id,
                JOURNEYS.c.instance == instance,
                JOURNEYS.c.customer_id.in_(chunk),
            )
            found.update(
                (rule_id, r.customer_id, r.key, instance) for r in self.conn.execute(query)
            )
        return found

    def write_journeys(self, outcome: JourneyOutcome) -> None:
        """Journeys (new and changed), their transitions and the decisions, all at once."""
        now = self.clock.now()
        ids: dict[Ident, int] = {}
        new = [j for j in outcome.journeys.values() if j.id is None]
        old = [j for j in outcome.journeys.values() if j.id is not None]
        if new:
            created = self.allocate_ids(JOURNEYS, len(new))
            bulk_insert(
                self.conn,
                self.dialect,
                JOURNEYS,
                [
                    {**_journey_row(j), "id": new_id, "created_at": now, "updated_at": now}
                    for j, new_id in zip(new, created, strict=True)
                ],
            )
            ids.update(zip((j.ident for j in new), created, strict=True))
        if old:
            bulk_update(
                self.conn,
                self.dialect,
                JOURNEYS,
                [{"id": j.id, **_journey_row(j), "updated_at": now} for j in old],
                key="id",
            )
            ids.update((j.ident, j.id) for j in old if j.id is not None)
        ids.update(
            (t.ident, t.journey_id)
            for t in outcome.transitions
            if t.journey_id is not None and t.ident not in ids
        )
        missing = {t.ident for t in outcome.transitions if t.ident not in ids}
        missing |= {
            d.ident for d in outcome.decisions if d.ident is not None and d.ident not in ids
        }
        for ident in missing:
            found = self.conn.execute(
                sa.select(JOURNEYS.c.id).where(
                    JOURNEYS.c.rule_id == ident[0],
                    JOURNEYS.c.customer_id == ident[1],
                    JOURNEYS.c.key == ident[2],
                    JOURNEYS.c.instance == ident[3],
                )
            ).scalar()
            if found is not None:
                ids[ident] = found
        transitions = [
            {
                "journey_id": ids[t.ident],
                "generation": t.generation,
                "kind": t.kind,
                "at": t.at,
                "event_seq": t.event_seq,
                "step": t.step,
                "reason": t.reason,
            }
            for t in outcome.transitions
            if t.ident in ids
        ]
        if transitions:
            bulk_insert(self.conn, self.dialect, TRANSITIONS, transitions)
        self.write_decisions(
            [
                {
                    "dedupe": d.dedupe,
                    "rule_id": d.rule_id,
                    "customer_id": d.customer_id,
                    "journey_id": ids.get(d.ident) if d.ident is not None else None,
                    "generation": d.generation,
                    "step": d.step,
                    "outcome": d.outcome,
                    "reason": d.reason,
                    "channel": d.channel,
                    "template": d.template,
                    "variant": d.variant,
                    "at": d.at,
                    "due_at": d.due_at,
                    "event_seq": d.event_seq,
                }
                for d in outcome.decisions
            ]
        )

    def write_decisions(self, rows: list[dict[str, Any]]) -> int:
        """Insert decisions; one already recorded (same ``dedupe``) is left as it was."""
        if not rows:
            return 0
        return bulk_insert(self.conn, self.dialect, DECISIONS, rows, ignore_conflicts=["dedupe"])

    # -- schedule triggers ------------------------------------------------------------------------

    def customer_zones(self, default_timezone: str) -> list[str]:
        zones = self.conn.execute(
            sa.select(sa.func.coalesce(CUSTOMERS.c.timezone, default_timezone))
            .where(CUSTOMERS.c.merged_into.is_(None))
            .distinct()
        ).scalars()
        return sorted(set(zones))

    def customers_in_zone(
        self, zone: str | None, default_timezone: str, after_id: int, limit: int
    ) -> list[CustomerFacts]:
        """Live customers (``zone`` None: all) with id > ``after_id``, in id order."""
        query = (
            sa.select(*_FACT_COLUMNS)
            .where(CUSTOMERS.c.merged_into.is_(None), CUSTOMERS.c.id > after_id)
            .order_by(CUSTOMERS.c.id)
            .limit(limit)
        )
        if zone is not None:
            zone_col = sa.func.coalesce(CUSTOMERS.c.timezone, default_timezone)
            query = query.where(zone_col == zone)
        return [_facts(r, default_timezone) for r in self.conn.execute(query)]

    def get_state(self, key: str) -> dict[str, Any] | None:
        value = self.conn.execute(sa.select(STATE.c.value).where(STATE.c.key == key)).scalar()
        return dict(value) if value is not None else None

    def init_state(self, key: str, value: dict[str, Any]) -> dict[str, Any]:
        """The state under ``key``, set to ``value`` first if there is none (a race between
        processes keeps the first writer's value)."""
        stmt = self._insert(STATE).on_conflict_do_nothing(index_elements=["key"])
        self.conn.execute(stmt, [{"key": key, "value": value, "updated_at": self.clock.now()}])
        return self.get_state(key) or value

    def set_state(self, key: str, value: dict[str, Any]) -> None:
        self._upsert(STATE, [{"key": key, "value": value, "updated_at": self.clock.now()}], ["key"])


def _interaction(kind: str, at: datetime, product: dict[str, Any]) -> Interaction:
    price = product.get("price")
    return Interaction(
        at=at,
        kind=kind,
        category=product.get("category") if isinstance(product.get("category"), str) else None,
        brand=product.get("brand") if isinstance(product.get("brand"), str) else None,
        price=float(price)
        if isinstance(price, int | float) and not isinstance(price, bool)
        else None,
    )


#: What a rule sees of a customer (``_facts`` reads these).
_FACT_COLUMNS = (
    CUSTOMERS.c.id,
    CUSTOMERS.c.user_id,
    CUSTOMERS.c.anonymous_id,
    CUSTOMERS.c.email,
    CUSTOMERS.c.timezone,
    CUSTOMERS.c.traits,
    CUSTOMERS.c.consent,
    CUSTOMERS.c.stats,
    CUSTOMERS.c.event_counts,
    CUSTOMERS.c.intel,
)


def _facts(r: Any, default_timezone: str) -> CustomerFacts:
    return CustomerFacts(
        id=r.id,
        user_id=r.user_id,
        anonymous_id=r.anonymous_id,
        email=r.email,
        timezone=r.timezone or default_timezone,
        traits=dict(r.traits or {}),
        consent=dict(r.consent or {}),
        stats=dict(r.stats or {}),
        event_counts=dict(r.event_counts or {}),
        intel=dict(r.intel or {}),
    )


_JOURNEY_COLUMNS = (
    "id",
    "rule_id",
    "customer_id",
    "key",
    "instance",
    "status",
    "generation",
    "trigger",
    "next_step",
    "due_at",
    "variant",
    "ended_at",
    "end_reason",
)


def _sqlite_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)


def _sqlite_journeys(conn: Connection, idents: Sequence[Ident]) -> list[Journey]:
    """Journeys by exact ident on SQLite: the idents as a VALUES list joined to the unique
    (rule_id, customer_id, key, instance) index, one index probe each. (IN lists per
    column would probe every combination of rules x customers x keys.)"""
    found = []
    columns = ", ".join(f"j.{name}" for name in _JOURNEY_COLUMNS)
    for chunk in chunks(idents, 400):
        sql = (
            f"SELECT {columns} FROM (VALUES "
            + ", ".join("(?, ?, ?, ?)" for _ in chunk)
            + ") AS v JOIN journeys AS j ON j.rule_id = v.column1 AND j.customer_id = v.column2"
            " AND j.key = v.column3 AND j.instance = v.column4"
        )
        flat = tuple(itertools.chain.from_iterable(chunk))
        for row in conn.exec_driver_sql(sql, flat):
            r = dict(zip(_JOURNEY_COLUMNS, row, strict=True))
            r["trigger"] = orjson.loads(r["trigger"])
            r["due_at"] = _sqlite_time(r["due_at"])
            r["ended_at"] = _sqlite_time(r["ended_at"])
            found.append(_journey(SimpleNamespace(**r)))
    return found


def _journey(r: Any) -> Journey:
    return Journey(
        id=r.id,
        rule_id=r.rule_id,
        customer_id=r.customer_id,
        key=r.key,
        instance=r.instance,
        status=r.status,
        generation=r.generation,
        trigger=TriggerFacts.from_snapshot(r.trigger),
        next_step=r.next_step,
        due_at=r.due_at,
        variant=r.variant,
        ended_at=r.ended_at,
        end_reason=r.end_reason,
    )


def _journey_row(j: Journey) -> dict[str, Any]:
    return {
        "rule_id": j.rule_id,
        "customer_id": j.customer_id,
        "key": j.key,
        "instance": j.instance,
        "status": j.status,
        "generation": j.generation,
        # The event's properties stay in the event log (by seq), not copied into the journey.
        "trigger": j.trigger.snapshot(properties=j.trigger.seq is None),
        "trigger_seq": j.trigger.seq,
        "trigger_at": j.trigger.timestamp,
        "next_step": j.next_step,
        "due_at": j.due_at,
        "variant": j.variant,
        "ended_at": j.ended_at,
        "end_reason": j.end_reason,
    }
