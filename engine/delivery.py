"""The dispatcher: the outbox's I/O loop around :mod:`engine.dispatch`.

It claims due outbox rows in batches (each claim is a lease: a dispatcher that dies mid-batch
leaves rows that come back when the lease ends, to be posted again with the *same*
``webhook-id``), POSTs them concurrently through one pooled :class:`~engine.dispatch.Poster`,
signs every attempt (Standard Webhooks), turns each result into the next action with the pure
:func:`~engine.dispatch.next_action` and records the results in batches.

At-least-once: a crash between "posted" and "recorded" re-sends that message once its lease
ends, under the same ``webhook-id``, so receivers can drop the duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from engine.config import Settings
from engine.dispatch import (
    AttemptResult,
    Breaker,
    Delivered,
    Disable,
    GiveUp,
    Poster,
    Retry,
    next_action,
    sign_headers,
)
from engine.service import Engine
from engine.store.base import Attempt, OutboxItem
from engine.store.delivery import DEAD, DELIVERED, FAILED, PENDING

__all__ = ["Dispatcher", "DispatcherPool", "DispatcherThread", "run_dispatcher_process"]

log = logging.getLogger(__name__)

_FLUSH_SECONDS = 0.05  # record finished attempts at least this often while busy


def _ok_for_breaker(result: AttemptResult) -> bool:
    """The endpoint is healthy if it answered with anything but 408, 429 or a 5xx."""
    return result.status is not None and result.status not in (408, 429) and result.status < 500


class Dispatcher:
    """Delivers the outbox of ``engine``; one per process."""

    def __init__(self, engine: Engine, *, poster: Poster | None = None) -> None:
        self.engine = engine
        settings = engine.settings.delivery
        self.batch_size = settings.batch_size
        self.concurrency = settings.concurrency
        self.poster = poster or Poster(concurrency=settings.concurrency)
        self.breakers: dict[str, Breaker] = {}
        self._secrets = {
            e.url: (e.secret.get_secret_value(), e.timeout.total_seconds())
            for channel in engine.settings.channels.values()
            for e in channel.endpoints
        }
        self._disabled: dict[str, str] = {}
        self._disabled_at = 0.0
        self._to_disable: dict[str, str] = {}
        self.delivered = 0

    # -- store steps (run in a worker thread) ---------------------------------------------

    def _claim(self, limit: int) -> list[OutboxItem]:
        now = self.engine.clock.now()
        lease = now + self.engine.settings.delivery.lease
        with self.engine.store.unit() as unit:
            if time.monotonic() - self._disabled_at > 1.0:
                self._disabled = unit.disabled_endpoints()
                self._disabled_at = time.monotonic()
            return unit.claim_outbox(now, limit, lease)

    def _record(self, attempts: Sequence[Attempt]) -> None:
        disable, self._to_disable = self._to_disable, {}
        with self.engine.store.unit() as unit:
            unit.record_attempts(attempts)
            for url, reason in disable.items():
                unit.set_endpoint_disabled(url, reason)
        if disable:
            self._disabled.update(disable)
        self.delivered += sum(1 for a in attempts if a.new_status == DELIVERED)

    def _release(self, ids: list[int]) -> None:
        with self.engine.store.unit() as unit:
            unit.release_outbox(ids)

    # -- one delivery ------------------------------------------------------------------------

    def _skip(self, item: OutboxItem) -> Attempt | None:
        """An attempt that is not made: endpoint gone, disabled, or its breaker open."""
        now = self.engine.clock.now()
        url = item.endpoint

        def held(new_status: str, action: str, at: datetime | None = None) -> Attempt:
            return Attempt(
                outbox_id=item.id,
                attempt=0,
                attempts=item.attempts,
                at=now,
                status=None,
                error=None,
                duration_ms=0.0,
                action=action,
                new_status=new_status,
                next_attempt_at=at,
            )

        if url not in self._secrets:
            return held(DEAD, "endpoint no longer in config.yaml")
        if url in self._disabled:
            return held(DEAD, f"endpoint disabled: {self._disabled[url]}")
        breaker = self.breakers.get(url, Breaker())
        cooldown = self.engine.settings.delivery.breaker_cooldown
        if not breaker.allows(now, cooldown):
            # Open: until the cooldown ends; half-open: until the trial's answer is due.
            since = breaker.trial_at if breaker.state == "half_open" else breaker.opened_at
            return held(PENDING, "circuit open", max((since or now) + cooldown, now))
        self.breakers[url] = breaker.trial(now)
        return None

    async def _deliver(self, item: OutboxItem) -> Attempt:
        skipped = self._skip(item)
        if skipped is not None:
            return skipped
        secret, timeout = self._secrets[item.endpoint]
        body = item.body.encode()
        sent_at = self.engine.clock.now()
        headers = sign_headers(secret, item.message_id, sent_at, body)
        result = await self.poster.post(item.endpoint, body, headers, timeout=timeout)
        now = self.engine.clock.now()
        attempt = item.attempts + 1
        action = next_action(attempt, result, now)
        settings = self.engine.settings.delivery
        self.breakers[item.endpoint] = self.breakers.get(item.endpoint, Breaker()).record(
            _ok_for_breaker(result),
            now,
            threshold=settings.breaker_threshold,
            cooldown=settings.breaker_cooldown,
        )
        new_status, at, words = PENDING, None, ""
        if isinstance(action, Delivered):
            new_status, words = DELIVERED, "delivered"
        elif isinstance(action, Retry):
            new_status, at = PENDING, action.at
            words = f"{action.reason}; retry at {action.at.isoformat()}"
        elif isinstance(action, GiveUp):
            new_status = DEAD if action.dead else FAILED
            words = action.reason
        elif isinstance(action, Disable):
            new_status, words = DEAD, action.reason
            self._to_disable[item.endpoint] = action.reason
            log.warning("dispatcher: endpoint %s disabled: %s", item.endpoint, action.reason)
        return Attempt(
            outbox_id=item.id,
            attempt=attempt,
            attempts=attempt,
            at=sent_at,
            status=result.status,
            error=result.error,
            duration_ms=result.duration_ms,
            action=words,
            new_status=new_status,
            next_attempt_at=at,
        )

    # -- loops -------------------------------------------------------------------------------

    async def dispatch_once(self) -> int:
        """Claim one batch, deliver it, record it; returns how many rows were handled."""
        items = await asyncio.to_thread(self._claim, self.batch_size)
        if not items:
            return 0
        attempts = await asyncio.gather(*(self._deliver(i) for i in items))
        await asyncio.to_thread(self._record, attempts)
        return len(items)

    async def run(self, stop: asyncio.Event, wake: threading.Event | None = None) -> None:
        """Deliver until ``stop`` is set: up to ``concurrency`` deliveries in flight, fed from
        a local queue of claimed rows that is refilled a batch at a time; finished ones are
        recorded in batches. The database work (one claim or one record at a time, on a
        worker thread) overlaps the HTTP requests instead of pausing them. On stop, the
        requests in flight are finished and recorded and the rows claimed but not yet posted
        are released (nothing is left half-done)."""
        wake = wake or self.engine.outbox_signal
        interval = self.engine.settings.delivery.interval.total_seconds()
        queue: deque[OutboxItem] = deque()
        inflight: set[asyncio.Task[Attempt]] = set()
        done: list[Attempt] = []
        progress = asyncio.Event()  # a delivery or the database step finished

        def finished(task: asyncio.Task[Any]) -> None:
            if task in inflight:
                inflight.discard(task)
                done.append(task.result())
            progress.set()

        def start() -> None:
            while queue and len(inflight) < self.concurrency:
                task = asyncio.create_task(self._deliver(queue.popleft()))
                inflight.add(task)
                task.add_done_callback(finished)

        flushed = time.monotonic()
        db: asyncio.Task[list[OutboxItem] | None] | None = None  # the claim or record running
        idle = False
        try:
            while not stop.is_set():
                if db is not None and db.done():
                    items = db.result()
                    db = None
                    if items is not None:
                        queue.extend(items)
                        idle = not items
                start()
                if db is None:
                    if done and (
                        len(done) >= self.batch_size
                        or not inflight
                        or time.monotonic() - flushed >= _FLUSH_SECONDS
                    ):
                        db = asyncio.create_task(self._record_task(done))
                        done, flushed = [], time.monotonic()
                    elif len(queue) < self.batch_size // 2 + 1 and not (idle and not wake.is_set()):
                        wake.clear()
                        db = asyncio.create_task(self._claim_task(self.batch_size))
                    if db is not None:
                        db.add_done_callback(finished)
                if db is None and not inflight and not queue:
                    await _wait_either(stop, wake, interval)
                    idle = False
                    continue
                progress.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(progress.wait(), timeout=_FLUSH_SECONDS)
        finally:
            if db is not None:
                queue.extend(await db or ())
            if inflight:  # posted: wait for the answers, so they are recorded
                await asyncio.gather(*inflight, return_exceptions=True)
            if done:
                await asyncio.to_thread(self._record, done)
            if queue:  # claimed but never posted: back to the queue at once, not at lease end
                await asyncio.to_thread(self._release, [item.id for item in queue])
            await self.poster.aclose()

    async def _claim_task(self, limit: int) -> list[OutboxItem] | None:
        return await asyncio.to_thread(self._claim, limit)

    async def _record_task(self, attempts: list[Attempt]) -> list[OutboxItem] | None:
        await asyncio.to_thread(self._record, attempts)
        return None


async def _wait_either(stop: asyncio.Event, wake: threading.Event, seconds: float) -> None:
    """Sleep up to ``seconds``, waking early on ``stop`` or on ``wake`` (set by another
    thread when new outbox rows commit)."""
    deadline = time.monotonic() + seconds
    while not stop.is_set() and not wake.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            await asyncio.wait_for(stop.wait(), timeout=min(left, 0.01))
        except TimeoutError:
            continue


class DispatcherThread:
    """Runs a :class:`Dispatcher` on its own thread and event loop (``nudge run``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="nudge-dispatcher", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            dispatcher = Dispatcher(self.engine)
            while not self._stop.is_set():
                try:
                    await dispatcher.run(self._stop)
                except Exception:
                    log.exception("dispatcher failed; restarting in 1 s")
                    dispatcher = Dispatcher(self.engine)
                    await asyncio.sleep(1)

        asyncio.run(main())

    def stop(self, timeout: float = 30) -> None:
        """Finish the deliveries in flight, record them, and stop."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)


def run_dispatcher_process(settings: Settings) -> None:
    """A dispatcher in a process of its own (the target of :class:`DispatcherPool`'s
    children): its own connection pool, event loop and GIL; stops on SIGTERM or SIGINT after
    finishing its requests in flight. It polls the outbox every ``delivery.interval`` (the
    in-process dispatcher is the one woken at once by new rows)."""
    from engine.clock import SystemClock
    from engine.store import create_store

    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    clock = SystemClock()
    engine = Engine(settings=settings, store=create_store(settings, clock), clock=clock)

    parent = os.getppid()

    async def orphaned(stop: asyncio.Event) -> None:
        while not stop.is_set():  # the parent died without stopping us (kill -9): stop too
            if os.getppid() != parent:
                stop.set()
            await asyncio.sleep(1)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watch = asyncio.create_task(orphaned(stop))
        await Dispatcher(engine).run(stop, threading.Event())
        watch.cancel()

    try:
        asyncio.run(main())
    finally:
        engine.store.close()


class DispatcherPool:
    """``delivery.processes`` dispatchers: one on a thread of this process, the others in
    child processes (spawned: nothing of this process's state is shared but the database).
    One event loop delivers about a core's worth of webhooks; more processes use more cores.
    Claims are leases on the outbox rows, so dispatchers never share a delivery."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.thread = DispatcherThread(engine)
        self.children: list[multiprocessing.process.BaseProcess] = []

    def start(self) -> None:
        self.thread.start()
        context = multiprocessing.get_context("spawn")
        for n in range(self.engine.settings.delivery.processes - 1):
            child = context.Process(
                target=run_dispatcher_process,
                args=(self.engine.settings,),
                name=f"nudge-dispatcher-{n + 1}",
                daemon=True,
            )
            child.start()
            self.children.append(child)

    def stop(self, timeout: float = 30) -> None:
        """Stop every dispatcher; each finishes and records its requests in flight."""
        for child in self.children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)
        self.thread.stop(timeout)
        for child in self.children:
            child.join(timeout)
            if child.is_alive():
                child.kill()
        self.children = []
