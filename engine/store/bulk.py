"""Bulk SQL for the store: chunked IN lists, multi-row inserts and executemany updates with
values bound in their stored form on SQLite (dialect differences stay in ``engine/store``)."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from engine.models import UTCDateTime

__all__ = ["CHUNK", "bulk_insert", "bulk_update", "chunks", "dialect_insert", "time_text"]

CHUNK = 500  # bound parameters per IN (...) list
_MULTI_ROWS = 1000  # rows per multi-row INSERT on SQLite
_SQLITE_VARIABLES = 32000  # below SQLite's limit of 32766 bound variables


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def time_text(value: Any) -> Any:
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]  # what SQLAlchemy stores, without zone


def _json_text(value: Any) -> Any:
    return None if value is None else orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _as_is(value: Any) -> Any:
    return value


def _sqlite_converters(tbl: sa.Table, names: Sequence[str]) -> list[Any]:
    """Per column, the function giving the text SQLAlchemy itself would store on SQLite."""
    out = []
    for name in names:
        kind = tbl.c[name].type
        if isinstance(kind, UTCDateTime):
            out.append(time_text)
        elif isinstance(kind, sa.JSON):
            out.append(_json_text)
        else:
            out.append(_as_is)
    return out


def _sqlite_params(
    tbl: sa.Table, names: Sequence[str], rows: Sequence[dict[str, Any]]
) -> list[tuple[Any, ...]]:
    converters = _sqlite_converters(tbl, names)
    times = [i for i, c in enumerate(converters) if c is time_text]
    others = [(i, c) for i, c in enumerate(converters) if c is not time_text and c is not _as_is]
    # Many rows share their times (the batch's "now"): format each distinct time once.
    seen: dict[datetime, str] = {}
    get = operator.itemgetter(*names)
    out: list[tuple[Any, ...]] = []
    for row in rows:
        values = list(get(row)) if len(names) > 1 else [get(row)]
        for i in times:
            value = values[i]
            if value is not None:
                text = seen.get(value)
                if text is None:
                    text = seen[value] = time_text(value)
                values[i] = text
        for i, convert in others:
            values[i] = convert(values[i])
        out.append(tuple(values))
    return out


def bulk_insert(
    conn: Connection,
    dialect: str,
    tbl: sa.Table,
    rows: Sequence[dict[str, Any]],
    *,
    ignore_conflicts: Sequence[str] | None = None,
) -> int:
    """Insert many rows in one executemany; with ``ignore_conflicts`` (the unique columns)
    a row that already exists is skipped. Returns rows inserted.

    On SQLite the values are bound in the column types' storage form directly (the same
    text SQLAlchemy writes), skipping per-row type processing, which dominates the cost of
    large batches; PostgreSQL goes through SQLAlchemy (psycopg binds natively).
    """
    if not rows:
        return 0
    if dialect != "sqlite":
        stmt = dialect_insert(dialect, tbl)
        if ignore_conflicts is not None:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(ignore_conflicts))
        # executemany's rowcount is not reliable on psycopg: count the rows returned.
        key = next(iter(tbl.primary_key.columns))
        return len(conn.execute(stmt.returning(key), list(rows)).all())
    names = list(rows[0])
    params = _sqlite_params(tbl, names, rows)
    # One multi-row INSERT per chunk: executemany re-takes the GIL for every row, which
    # stalls a writer thread badly while the event loop is busy (measured: ~20x).
    group = "(" + ", ".join("?" for _ in names) + ")"
    size = max(1, min(_MULTI_ROWS, _SQLITE_VARIABLES // len(names)))
    conflict = (
        f" ON CONFLICT ({', '.join(ignore_conflicts)}) DO NOTHING"
        if ignore_conflicts is not None
        else ""
    )
    inserted = 0
    for start in range(0, len(params), size):
        part = params[start : start + size]
        sql = (
            f"INSERT INTO {tbl.name} ({', '.join(names)}) VALUES "
            + ", ".join(group for _ in part)
            + conflict
        )
        flat = tuple(itertools.chain.from_iterable(part))
        inserted += max(conn.exec_driver_sql(sql, flat).rowcount, 0)
    return inserted


def bulk_update(
    conn: Connection, dialect: str, tbl: sa.Table, rows: Sequence[dict[str, Any]], key: str
) -> None:
    """``UPDATE tbl SET ... WHERE key = ...`` for many rows (same columns in each)."""
    if not rows:
        return
    names = [n for n in rows[0] if n != key]
    if dialect != "sqlite":
        stmt = (
            tbl.update()
            .where(tbl.c[key] == sa.bindparam("b_key"))
            .values({n: sa.bindparam(n) for n in names})
        )
        conn.execute(stmt, [{**{n: r[n] for n in names}, "b_key": r[key]} for r in rows])
        return
    sql = f"UPDATE {tbl.name} SET {', '.join(f'{n} = ?' for n in names)} WHERE {key} = ?"
    conn.exec_driver_sql(sql, _sqlite_params(tbl, [*names, key], rows))


def dialect_insert(dialect: str, tbl: sa.Table) -> Any:
    """INSERT with the dialect's ON CONFLICT support."""
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(tbl)
