"""The delivery half of a unit of work: sent-message history for caps, suppressions, the
messages and their outbox rows, claims with a lease, attempt results, dead letters.

Mixed into :class:`engine.store.unit.SqlUnit`; every method runs inside its transaction.
Dialect differences (``FOR UPDATE`` locks, ``RETURNING`` claims) stay in this package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from engine.policy import SentMessage
from engine.store.base import Attempt, OutboxItem
from engine.store.bulk import bulk_insert, bulk_update, time_text
from engine.store.tables import ATTEMPTS, CUSTOMERS, MESSAGES, OUTBOX, STATE, SUPPRESSIONS

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from engine.clock import Clock

__all__ = ["DEAD", "DELIVERED", "FAILED", "PENDING", "DeliveryMixin"]

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
DEAD = "dead"
_ENDPOINT = "endpoint:"  # engine_state key prefix: a disabled endpoint


class DeliveryMixin:
    conn: Connection
    dialect: str
    clock: Clock

    # provided by SqlUnit, which mixes this class in
    _insert: Any
    set_state: Callable[[str, dict[str, Any]], None]

    # -- policy inputs ------------------------------------------------------------------------

    def lock_customers(self, ids: Sequence[int]) -> None:
        """Serialise decisions per customer, so a cap is checked and taken atomically.

        SQLite: the unit already holds the database's single writer lock (BEGIN IMMEDIATE).
        PostgreSQL: row locks on the customers, in id order (no deadlocks between workers).
        """
        if self.dialect == "postgresql" and ids:
            self.conn.execute(
                sa.select(CUSTOMERS.c.id)
                .where(CUSTOMERS.c.id.in_(sorted(set(ids))))
                .order_by(CUSTOMERS.c.id)
                .with_for_update()
            ).all()

    def sent_messages(
        self, customer_ids: Sequence[int], since: datetime
    ) -> dict[int, list[SentMessage]]:
        """Messages sent to these customers after ``since`` (what caps count)."""
        out: dict[int, list[SentMessage]] = {}
        if not customer_ids:
            return out
        rows = self.conn.execute(
            sa.select(MESSAGES.c.customer_id, MESSAGES.c.rule_id, MESSAGES.c.channel)
            .add_columns(MESSAGES.c.created_at)
            .where(
                MESSAGES.c.customer_id.in_(sorted(set(customer_ids))),
                MESSAGES.c.created_at > since,
            )
        )
        for r in rows:
            out.setdefault(r.customer_id, []).append(
                SentMessage(rule_id=r.rule_id, channel=r.channel, at=r.created_at)
            )
        return out

    def suppressed(self, addresses: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """(channel, address) → reason, for the suppressed ones among ``addresses``."""
        if not addresses:
            return {}
        wanted = {(c, a.strip().lower()) for c, a in addresses}
        rows = self.conn.execute(
            sa.select(SUPPRESSIONS.c.channel, SUPPRESSIONS.c.address, SUPPRESSIONS.c.reason).where(
                SUPPRESSIONS.c.address.in_(sorted({a for _, a in wanted}))
            )
        )
        return {(r.channel, r.address): r.reason for r in rows if (r.channel, r.address) in wanted}

    def suppress(
        self,
        rows: Sequence[tuple[str, str, str, int | None, datetime]],
        lift: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Add suppressions (channel, address, reason, customer id, at); a hard bounce or a
        complaint replaces an unsubscribe, otherwise the first reason stays. ``lift`` removes
        *unsubscribe* suppressions (an explicit opt-in)."""
        for channel, address in lift:
            self.conn.execute(
                SUPPRESSIONS.delete().where(
                    SUPPRESSIONS.c.channel == channel,
                    SUPPRESSIONS.c.address == address.strip().lower(),
                    SUPPRESSIONS.c.reason == "unsubscribed",
                )
            )
        if rows:
            stmt = self._insert(SUPPRESSIONS)
            # A bounce or complaint outranks an unsubscribe (an opt-in lifts only the latter).
            stmt = stmt.on_conflict_do_update(
                index_elements=["channel", "address"],
                set_={"reason": stmt.excluded.reason, "at": stmt.excluded.at},
                where=sa.and_(
                    SUPPRESSIONS.c.reason == "unsubscribed",
                    stmt.excluded.reason != "unsubscribed",
                ),
            )
            self.conn.execute(
                stmt,
                [
                    {
                        "channel": c,
                        "address": a.strip().lower(),
                        "reason": r,
                        "customer_id": cid,
                        "at": at,
                    }
                    for c, a, r, cid, at in rows
                ],
            )

    def move_delivery_history(self, loser: int, survivor: int) -> None:
        """After an identity merge: messages and customer-keyed suppressions move over."""
        self.conn.execute(
            MESSAGES.update().where(MESSAGES.c.customer_id == loser).values(customer_id=survivor)
        )
        old, new = f"customer:{loser}", f"customer:{survivor}"
        taken = sa.select(SUPPRESSIONS.c.channel).where(SUPPRESSIONS.c.address == new)
        self.conn.execute(
            SUPPRESSIONS.update()
            .where(SUPPRESSIONS.c.address == old, SUPPRESSIONS.c.channel.not_in(taken))
            .values(address=new, customer_id=survivor)
        )
        self.conn.execute(SUPPRESSIONS.delete().where(SUPPRESSIONS.c.address == old))
        self.conn.execute(
            SUPPRESSIONS.update()
            .where(SUPPRESSIONS.c.customer_id == loser)
            .values(customer_id=survivor)
        )

    # -- messages and outbox --------------------------------------------------------------------

    def write_messages(
        self, messages: Sequence[dict[str, Any]], endpoints: dict[str, list[str]]
    ) -> int:
        """Insert messages and one pending outbox row per endpoint of the message's channel.
        A message already written (same id) is left alone. Returns messages inserted."""
        if not messages:
            return 0
        now = self.clock.now()
        existing: set[str] = set()
        ids = [m["id"] for m in messages]
        for start in range(0, len(ids), 500):
            existing.update(
                r[0]
                for r in self.conn.execute(
                    sa.select(MESSAGES.c.id).where(MESSAGES.c.id.in_(ids[start : start + 500]))
                )
            )
        fresh: list[dict[str, Any]] = []
        for message in messages:
            if message["id"] not in existing:
                existing.add(message["id"])
                fresh.append(message)
        bulk_insert(self.conn, self.dialect, MESSAGES, fresh)
        outbox = [
            {
                "message_id": m["id"],
                "endpoint": url,
                "channel": m["channel"],
                "status": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
            }
            for m in fresh
            for url in endpoints.get(m["channel"], [])
        ]
        bulk_insert(
            self.conn, self.dialect, OUTBOX, outbox, ignore_conflicts=["message_id", "endpoint"]
        )
        return len(fresh)

    def claim_outbox(self, now: datetime, limit: int, lease_until: datetime) -> list[OutboxItem]:
        """Due pending deliveries, leased until ``lease_until`` (a crashed dispatcher's claims
        come back when the lease ends; the retry carries the same message id)."""
        if self.dialect == "sqlite":
            return self._claim_outbox_sqlite(now, limit, lease_until)
        due = (
            sa.select(OUTBOX.c.id)
            .where(
                OUTBOX.c.status == PENDING,
                OUTBOX.c.next_attempt_at <= now,
                sa.or_(OUTBOX.c.lease_until.is_(None), OUTBOX.c.lease_until <= now),
            )
            .order_by(OUTBOX.c.next_attempt_at, OUTBOX.c.id)
            .limit(limit)
        )
        if self.dialect == "postgresql":
            due = due.with_for_update(skip_locked=True)
        ids = [r[0] for r in self.conn.execute(due)]
        if not ids:
            return []
        self.conn.execute(
            OUTBOX.update().where(OUTBOX.c.id.in_(ids)).values(lease_until=lease_until)
        )
        rows = self.conn.execute(
            sa.select(
                OUTBOX.c.id,
                OUTBOX.c.message_id,
                OUTBOX.c.endpoint,
                OUTBOX.c.channel,
                OUTBOX.c.attempts,
                MESSAGES.c.body,
            )
            .join(MESSAGES, MESSAGES.c.id == OUTBOX.c.message_id)
            .where(OUTBOX.c.id.in_(ids))
            .order_by(OUTBOX.c.next_attempt_at, OUTBOX.c.id)
        )
        return [
            OutboxItem(
                id=r.id,
                message_id=r.message_id,
                endpoint=r.endpoint,
                channel=r.channel,
                attempts=r.attempts,
                body=r.body,
            )
            for r in rows
        ]

    def _claim_outbox_sqlite(
        self, now: datetime, limit: int, lease_until: datetime
    ) -> list[OutboxItem]:
        """The claim as two statements in SQL text (the unit holds the writer lock): the
        dispatcher claims a batch every few milliseconds, and SQLAlchemy's statement and
        row processing was a third of its cost. Times are bound in their stored form."""
        at, lease = time_text(now), time_text(lease_until)
        claimed = list(
            self.conn.exec_driver_sql(
                "UPDATE outbox SET lease_until = ? WHERE id IN (SELECT id FROM outbox"
                " WHERE status = 'pending' AND next_attempt_at <= ?"
                " AND (lease_until IS NULL OR lease_until <= ?)"
                " ORDER BY next_attempt_at, id LIMIT ?)"
                " RETURNING id, message_id, endpoint, channel, attempts, next_attempt_at",
                (lease, at, at, limit),
            )
        )
        if not claimed:
            return []
        claimed.sort(key=lambda r: (r[5], r[0]))
        ids = sorted({r[1] for r in claimed})
        bodies: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            bodies.update(
                self.conn.exec_driver_sql(
                    f"SELECT id, body FROM messages WHERE id IN ({', '.join('?' * len(part))})",
                    tuple(part),
                ).fetchall()
            )
        return [
            OutboxItem(
                id=r[0],
                message_id=r[1],
                endpoint=r[2],
                channel=r[3],
                attempts=r[4],
                body=bodies[r[1]],
            )
            for r in claimed
            if r[1] in bodies
        ]

    def release_outbox(self, ids: Sequence[int]) -> None:
        """Give claimed rows back (their lease ends now): a dispatcher stopping."""
        for start in range(0, len(ids), 500):
            self.conn.execute(
                OUTBOX.update()
                .where(OUTBOX.c.id.in_(list(ids[start : start + 500])))
                .values(lease_until=None)
            )

    def record_attempts(self, attempts: Sequence[Attempt]) -> None:
        """Write each attempt's result and move its outbox row on (delivered, retry at,
        failed, dead); the lease is released."""
        if not attempts:
            return
        now = self.clock.now()
        bulk_insert(
            self.conn,
            self.dialect,
            ATTEMPTS,
            [
                {
                    "outbox_id": a.outbox_id,
                    "attempt": a.attempt,
                    "at": a.at,
                    "status": a.status,
                    "error": a.error,
                    "duration_ms": a.duration_ms,
                    "action": a.action[:200],
                }
                for a in attempts
                if a.attempt > 0
            ],
        )
        # Every column of every row, so one executemany does them all (next_attempt_at only
        # matters while pending; a finished row keeps the time it was decided).
        bulk_update(
            self.conn,
            self.dialect,
            OUTBOX,
            [
                {
                    "id": a.outbox_id,
                    "status": a.new_status,
                    "lease_until": None,
                    "updated_at": now,
                    "last_status": a.status,
                    "last_error": a.error or (a.action if a.new_status != DELIVERED else None),
                    "attempts": a.attempts,
                    "next_attempt_at": a.next_attempt_at or a.at,
                    "delivered_at": a.at if a.new_status == DELIVERED else None,
                }
                for a in attempts
            ],
            key="id",
        )

    def disabled_endpoints(self) -> dict[str, str]:
        """Endpoint URL → why it is disabled (a 410 Gone, or an operator)."""
        rows = self.conn.execute(
            sa.select(STATE.c.key, STATE.c.value).where(STATE.c.key.like(_ENDPOINT + "%"))
        )
        return {
            r.key[len(_ENDPOINT) :]: str((r.value or {}).get("reason", "disabled"))
            for r in rows
            if (r.value or {}).get("disabled")
        }

    def set_endpoint_disabled(self, url: str, reason: str | None) -> None:
        """Disable an endpoint (``reason``) or enable it again (``None``)."""
        key = _ENDPOINT + url
        value = {
            "disabled": reason is not None,
            "reason": reason,
            "at": self.clock.now().isoformat(),
        }
        self.set_state(key, value)

    def redrive(self, outbox_ids: Sequence[int] | None, now: datetime) -> int:
        """Put dead / failed deliveries (these, or all dead ones) back in the queue, due now,
        with a fresh attempt budget. Returns how many."""
        query = OUTBOX.update().values(
            status=PENDING, next_attempt_at=now, lease_until=None, attempts=0, updated_at=now
        )
        if outbox_ids is None:
            query = query.where(OUTBOX.c.status == DEAD)
        else:
            query = query.where(
                OUTBOX.c.id.in_(list(outbox_ids)), OUTBOX.c.status.in_([DEAD, FAILED])
            )
        return int(self.conn.execute(query).rowcount or 0)
