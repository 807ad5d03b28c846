"""The SQL store: SQLite (embedded, WAL) and PostgreSQL, through SQLAlchemy Core.

SQLite write transactions begin with ``BEGIN IMMEDIATE`` so that a read-then-write step
waits for the writer lock up front instead of failing half-way; reads use deferred
transactions and never block the writer (WAL).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from engine.clock import Clock
from engine.customers import (
    ANONYMOUS,
    USER,
    CheckoutState,
    EventIn,
    OrderState,
    Outcome,
    Profile,
    World,
)
from engine.errors import StoreError
from engine.models import (
    EVENT_DONE,
    EVENT_FAILED,
    EVENT_PENDING,
    Checkout,
    Customer,
    Event,
    Identity,
    Order,
    table,
)
from engine.store.base import CustomerView, EventStep, ProcessResult

__all__ = ["SqlStore", "create_store"]

log = logging.getLogger(__name__)

EVENTS = table(Event)
CUSTOMERS = table(Customer)
IDENTITIES = table(Identity)
ORDERS = table(Order)
CHECKOUTS = table(Checkout)

_CHUNK = 500  # bound parameters per IN (...) list


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def create_engine(url: str, *, sqlite_synchronous: str = "full") -> Engine:
    """An engine for ``url`` with Nudge's connection settings."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
            connect_args={"check_same_thread": False, "timeout": 30},
        )

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={sqlite_synchronous.upper()}")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            deferred = conn.get_execution_options().get("nudge_read_only", False)
            conn.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(
        url,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
    )


def create_store(settings: Any, clock: Clock) -> SqlStore:
    """The store for ``settings.database_url``."""
    return SqlStore(
        create_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous),
        clock=clock,
    )


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class SqlStore:
    """The :class:`~engine.store.base.Store` over SQLAlchemy."""

    def __init__(self, engine: Engine, *, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock
        self.dialect = engine.dialect.name

    # -- plumbing -------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction (IMMEDIATE on SQLite)."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.OperationalError as exc:
            raise StoreError(f"database write failed: {exc.orig}") from exc

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction that never takes the writer lock."""
        with (
            self.engine.connect().execution_options(nudge_read_only=True) as conn,
            conn.begin(),
        ):
            yield conn

    def _insert(self, tbl: sa.Table) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(tbl)

    def _upsert(
        self, conn: Connection, tbl: sa.Table, rows: list[dict[str, Any]], keys: list[str]
    ) -> None:
        if not rows:
            return
        stmt = self._insert(tbl)
        update = {c: stmt.excluded[c] for c in rows[0] if c not in keys}
        conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=update), rows)

    def upgrade(self) -> None:
        from engine.store.migrate import upgrade

        upgrade(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- events ---------------------------------------------------------------------------

    def insert_events(self, rows: Sequence[dict[str, Any]]) -> int:
        if not rows:
            return 0
        stmt = self._insert(EVENTS).on_conflict_do_nothing(index_elements=["source", "message_id"])
        with self.write() as conn:
            result = conn.execute(stmt, list(rows))
            return max(result.rowcount, 0)

    def pending_events(self) -> int:
        with self.read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(EVENTS.c.status == EVENT_PENDING)
                ).scalar_one()
            )

    def _claim(self, conn: Connection, limit: int) -> list[EventIn]:
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
            for r in conn.execute(query)
        ]

    def process_events(
        self, limit: int, step: EventStep, stats: Callable[[Profile], dict[str, Any]]
    ) -> ProcessResult:
        with self.write() as conn:
            events = self._claim(conn, limit)
            if not events:
                return ProcessResult(claimed=0, applied=0, failed=0)
            world = self._load_world(conn, events)
            loaded = set(world.profiles)
            outcome = step(world, events)
            ids = self._write_profiles(conn, world, loaded, outcome, stats)
            self._write_identities(conn, outcome.moved_identities, ids)
            done: list[dict[str, Any]] = [
                {"b_seq": seq, "b_customer": ids[key], "b_status": EVENT_DONE, "b_error": None}
                for seq, key in outcome.assigned.items()
            ]
            done += [
                {"b_seq": seq, "b_customer": None, "b_status": EVENT_FAILED, "b_error": reason}
                for seq, reason in outcome.failed.items()
            ]
            conn.execute(
                EVENTS.update()
                .where(EVENTS.c.seq == sa.bindparam("b_seq"))
                .values(
                    status=sa.bindparam("b_status"),
                    customer_id=sa.bindparam("b_customer"),
                    error=sa.bindparam("b_error"),
                ),
                done,
            )
            return ProcessResult(
                claimed=len(events), applied=len(outcome.assigned), failed=len(outcome.failed)
            )

    # -- world loading and writing ------------------------------------------------------------

    def _load_world(self, conn: Connection, events: list[EventIn]) -> World:
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
            for chunk in _chunks(values):
                ids.update(
                    conn.execute(
                        sa.select(IDENTITIES.c.customer_id).where(
                            IDENTITIES.c.kind == users_or_anons, IDENTITIES.c.value.in_(chunk)
                        )
                    ).scalars()
                )
        for chunk in _chunks(sorted(order_ids)):
            ids.update(
                conn.execute(
                    sa.select(ORDERS.c.customer_id).where(ORDERS.c.order_id.in_(chunk))
                ).scalars()
            )
        for chunk in _chunks(sorted(cart_ids)):
            ids.update(
                conn.execute(
                    sa.select(CHECKOUTS.c.customer_id).where(CHECKOUTS.c.cart_id.in_(chunk))
                ).scalars()
            )
        world = World()
        for profile in self._load_profiles(conn, sorted(ids)).values():
            world.add(profile)
        return world

    def _load_profiles(self, conn: Connection, ids: Sequence[int]) -> dict[int, Profile]:
        profiles: dict[int, Profile] = {}
        for chunk in _chunks(ids):
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
                    profiles[r.customer_id].orders[r.order_id] = OrderState(
                        order_id=r.order_id,
                        cart_id=r.cart_id,
                        placed_at=r.placed_at,
                        revenue=r.revenue,
                        refunded=r.refunded,
                        cancelled=r.cancelled,
                        currency=r.currency,
                        discount=r.discount,
                        coupon=r.coupon,
                        products=list(r.products or []),
                    )
            for r in conn.execute(sa.select(CHECKOUTS).where(CHECKOUTS.c.customer_id.in_(chunk))):
                if r.customer_id in profiles:
                    profiles[r.customer_id].checkouts[r.cart_id] = CheckoutState(
                        cart_id=r.cart_id,
                        started_at=r.started_at,
                        completed_at=r.completed_at,
                        updated_at=r.updated_at,
                        value=r.value,
                        currency=r.currency,
                        products=list(r.products or []),
                    )
        return profiles

    def _customer_row(
        self, profile: Profile, stats: dict[str, Any], now: datetime
    ) -> dict[str, Any]:
        email = profile.traits.get("email")
        return {
            "user_id": profile.user_id,
            "anonymous_id": profile.anonymous_id,
            "email": email.strip().lower() if isinstance(email, str) and email.strip() else None,
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

    def _write_profiles(
        self,
        conn: Connection,
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
            created = conn.execute(
                CUSTOMERS.insert().returning(CUSTOMERS.c.id, sort_by_parameter_order=True),
                [{**rows[key], "created_at": now} for key in new_keys],
            ).scalars()
            ids.update(zip(new_keys, created, strict=True))
        if survivors:
            conn.execute(
                CUSTOMERS.update()
                .where(CUSTOMERS.c.id == sa.bindparam("b_id"))
                .values(merged_into=sa.bindparam("b_into"), user_id=None),
                [{"b_id": loser, "b_into": ids[into]} for loser, into in survivors.items()],
            )
            for loser, into in survivors.items():
                conn.execute(
                    EVENTS.update()
                    .where(EVENTS.c.customer_id == loser)
                    .values(customer_id=ids[into])
                )
        updates = [{"b_id": key, **row} for key, row in rows.items() if key > 0]
        if updates:
            conn.execute(
                CUSTOMERS.update()
                .where(CUSTOMERS.c.id == sa.bindparam("b_id"))
                .values({c: sa.bindparam(c) for c in updates[0] if c != "b_id"}),
                updates,
            )
        orders: list[dict[str, Any]] = []
        for order_id in sorted(outcome.orders):
            key = world.order_owner[order_id]
            o = world.profiles[key].orders[order_id]
            orders.append(
                {
                    "order_id": o.order_id,
                    "customer_id": ids[key],
                    "cart_id": o.cart_id,
                    "placed_at": o.placed_at,
                    "revenue": o.revenue,
                    "refunded": o.refunded,
                    "cancelled": o.cancelled,
                    "currency": o.currency,
                    "discount": o.discount,
                    "coupon": o.coupon,
                    "products": o.products,
                }
            )
        checkouts: list[dict[str, Any]] = []
        for cart_id in sorted(outcome.checkouts):
            key = world.checkout_owner[cart_id]
            c = world.profiles[key].checkouts[cart_id]
            checkouts.append(
                {
                    "cart_id": c.cart_id,
                    "customer_id": ids[key],
                    "started_at": c.started_at,
                    "completed_at": c.completed_at,
                    "updated_at": c.updated_at,
                    "value": c.value,
                    "currency": c.currency,
                    "products": c.products,
                }
            )
        self._upsert(conn, ORDERS, orders, ["order_id"])
        self._upsert(conn, CHECKOUTS, checkouts, ["cart_id"])
        return ids

    def _write_identities(
        self, conn: Connection, moved: dict[tuple[str, str], int], ids: dict[int, int]
    ) -> None:
        now = self.clock.now()
        rows = [
            {"kind": kind, "value": value, "customer_id": ids[key], "first_seen_at": now}
            for (kind, value), key in sorted(moved.items())
        ]
        if not rows:
            return
        stmt = self._insert(IDENTITIES)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["kind", "value"], set_={"customer_id": stmt.excluded.customer_id}
            ),
            rows,
        )

    # -- operator views -------------------------------------------------------------------

    def find_customer(self, ref: str) -> int | None:
        ref = ref.strip()
        with self.read() as conn:
            for kind, prefix in ((USER, "user:"), (ANONYMOUS, "anon:")):
                if ref.startswith(prefix):
                    return self._by_identity(conn, kind, ref[len(prefix) :])
            if ref.startswith("email:") or "@" in ref:
                email = ref.removeprefix("email:").lower()
                found = conn.execute(
                    sa.select(CUSTOMERS.c.id)
                    .where(CUSTOMERS.c.email == email, CUSTOMERS.c.merged_into.is_(None))
                    .order_by(CUSTOMERS.c.last_seen_at.desc())
                    .limit(1)
                ).scalar()
                if found is not None:
                    return int(found)
            for kind in (USER, ANONYMOUS):
                found_id = self._by_identity(conn, kind, ref)
                if found_id is not None:
                    return found_id
            if ref.isdigit():
                row = conn.execute(
                    sa.select(CUSTOMERS.c.id, CUSTOMERS.c.merged_into).where(
                        CUSTOMERS.c.id == int(ref)
                    )
                ).first()
                if row is not None:
                    return int(row.merged_into or row.id)
        return None

    def _by_identity(self, conn: Connection, kind: str, value: str) -> int | None:
        found = conn.execute(
            sa.select(IDENTITIES.c.customer_id).where(
                IDENTITIES.c.kind == kind, IDENTITIES.c.value == value
            )
        ).scalar()
        return None if found is None else int(found)

    def customer_view(self, customer_id: int, *, events: int = 20) -> CustomerView | None:
        with self.read() as conn:
            profiles = self._load_profiles(conn, [customer_id])
            profile = profiles.get(customer_id)
            if profile is None:
                return None
            row = conn.execute(
                sa.select(CUSTOMERS.c.stats, CUSTOMERS.c.created_at, CUSTOMERS.c.updated_at).where(
                    CUSTOMERS.c.id == customer_id
                )
            ).one()
            recent = [
                {
                    "seq": r.seq,
                    "type": r.type,
                    "name": r.name,
                    "timestamp": r.timestamp.isoformat(),
                    "source": r.source,
                    "message_id": r.message_id,
                    "properties": (r.payload or {}).get("properties", {}),
                }
                for r in conn.execute(
                    sa.select(EVENTS)
                    .where(EVENTS.c.customer_id == customer_id)
                    .order_by(EVENTS.c.timestamp.desc(), EVENTS.c.seq.desc())
                    .limit(events)
                )
            ]
        return CustomerView(
            id=customer_id,
            profile=profile,
            stats=dict(row.stats or {}),
            created_at=row.created_at,
            updated_at=row.updated_at,
            recent_events=recent,
        )


def _parse(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value)
