"""The ticks that drive the engine (the only module that imports APScheduler).

APScheduler only says *when to look*; every timer and every piece of progress lives in the
database, so a restart resumes where the last commit left off.
"""

from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from engine.service import Engine, process_until_idle

__all__ = ["EngineScheduler"]

log = logging.getLogger(__name__)


class EngineScheduler:
    """Runs the engine's periodic work on background threads."""

    def __init__(self, engine: Engine, *, max_batches_per_tick: int = 50) -> None:
        self.engine = engine
        self.max_batches_per_tick = max_batches_per_tick
        self._scheduler = BackgroundScheduler(timezone="UTC")
        interval = engine.settings.processing.interval.total_seconds()
        # One instance at a time; a tick that is late is merged into the next (coalesce), and
        # a late tick still runs however late it is: it only polls the database.
        self._scheduler.add_job(
            self.process_events,
            IntervalTrigger(seconds=interval),
            id="process-events",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )

    def process_events(self) -> int:
        try:
            return process_until_idle(self.engine, max_batches=self.max_batches_per_tick)
        except Exception:
            log.exception("event processing tick failed; it will be retried on the next tick")
            return 0

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        """Stop ticking and wait for a running tick to commit."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
