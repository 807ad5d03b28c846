"""Group commit for ingest: many requests, one transaction, each answered after the commit.

A request hands its rows to :meth:`EventWriter.write` and waits. One background task takes
everything queued so far, inserts it in one transaction on a dedicated thread, and resolves
every waiting request together; while that commit runs the next group gathers. Nothing is
acknowledged before it is committed. If a group fails, its requests are retried one by one
so that one bad request cannot fail the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from engine.errors import StoreError
from engine.store.base import Store

__all__ = ["EventWriter"]

log = logging.getLogger(__name__)


class EventWriter:
    def __init__(self, store: Store, *, max_events: int = 5000) -> None:
        self._store = store
        self._max_events = max_events
        self._pending: deque[tuple[list[dict[str, Any]], asyncio.Future[int]]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nudge-ingest")
        self._closing = False

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="nudge-ingest-writer")
        self._task.add_done_callback(self._on_exit)

    def _on_exit(self, task: asyncio.Task[None]) -> None:
        # If the writer ever dies, nobody may wait forever: fail what is queued.
        if not task.cancelled() and task.exception() is not None:
            log.error("ingest writer stopped: %s", task.exception())
        while self._pending:
            _, future = self._pending.popleft()
            _settle(future, exc=StoreError("the ingest writer stopped; retry the request"))

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def write(self, rows: list[dict[str, Any]]) -> int:
        """Store ``rows`` durably. Returns how many rows the commit that carried them
        inserted (its whole group's new rows, duplicates not counted)."""
        if self._wakeup is None or self._closing or self._task is None or self._task.done():
            raise StoreError("the ingest writer is not running; retry the request")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((rows, future))
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                group: list[tuple[list[dict[str, Any]], asyncio.Future[int]]] = []
                size = 0
                while self._pending and (
                    not group or size + len(self._pending[0][0]) <= self._max_events
                ):
                    item = self._pending.popleft()
                    group.append(item)
                    size += len(item[0])
                await self._commit(loop, group)
            if self._closing and not self._pending:
                return

    async def _commit(
        self,
        loop: asyncio.AbstractEventLoop,
        group: list[tuple[list[dict[str, Any]], asyncio.Future[int]]],
    ) -> None:
        rows = [row for item, _ in group for row in item]
        try:
            inserted = await loop.run_in_executor(self._executor, self._store.insert_events, rows)
        except Exception as exc:
            if len(group) == 1:
                _settle(group[0][1], exc=exc)
                return
            log.warning(
                "ingest: a group of %d requests failed (%s); retrying one by one", len(group), exc
            )
            for item, future in group:
                try:
                    one = await loop.run_in_executor(
                        self._executor, self._store.insert_events, item
                    )
                except Exception as single_exc:
                    _settle(future, exc=single_exc)
                else:
                    _settle(future, value=one)
            return
        # The count of new rows is per group; each request learns the group's total.
        for _, future in group:
            _settle(future, value=inserted)


def _settle(
    future: asyncio.Future[int], *, value: int = 0, exc: BaseException | None = None
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)
