"""The ticks that drive the engine (the only module that imports APScheduler).

APScheduler only says *when to look*; every timer and every piece of progress lives in the
database (journeys' ``due_at``, schedule occurrences in ``engine_state``), so a restart
resumes where the last commit left off, and a tick that runs late simply finds more to do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from engine.service import (
    Engine,
    fire_due_until_idle,
    process_until_idle,
    recompute_intelligence,
    run_schedules,
)

__all__ = ["EngineScheduler"]

log = logging.getLogger(__name__)


class EngineScheduler:
    """Runs the engine's periodic work on background threads.

    Jobs: ``process-events`` (profiles and journey triggers/exits), ``fire-due-steps``
    (journey steps whose time has come), ``run-schedules`` (cron-triggered rules), and
    hourly ``recompute-intelligence`` (RFM, habits, predictions; not part of
    :meth:`run_pending`, which drives the per-tick jobs).
    """

    def __init__(self, engine: Engine, *, max_batches_per_tick: int = 50) -> None:
        self.engine = engine
        self.max_batches = max_batches_per_tick
        self._scheduler = BackgroundScheduler(timezone="UTC")
        interval = engine.settings.processing.interval
        self._jobs: dict[str, Callable[[], int]] = {
            "process-events": self.process_events,
            "run-schedules": self.run_schedules,
            "fire-due-steps": self.fire_due_steps,
        }
        periods = {
            "process-events": interval,
            "run-schedules": timedelta(seconds=30),
            "fire-due-steps": interval,
        }
        for job_id, func in self._jobs.items():
            # One instance at a time; ticks that fall behind are merged into one (coalesce),
            # and a late tick still runs however late (misfire_grace_time=None): it only
            # polls the database, which holds the real timers.
            self._scheduler.add_job(
                self._guard(job_id, func),
                IntervalTrigger(seconds=periods[job_id].total_seconds()),
                id=job_id,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )

        # RFM, habits and predictions for the whole shop: hourly, and once soon after start.
        self._scheduler.add_job(
            self._guard("recompute-intelligence", self.recompute_intelligence),
            IntervalTrigger(hours=1),
            id="recompute-intelligence",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=datetime.now(UTC) + timedelta(minutes=1),
        )

    @staticmethod
    def _guard(job_id: str, func: Callable[[], int]) -> Callable[[], int]:
        def run() -> int:
            try:
                return func()
            except Exception:
                log.exception("%s tick failed; it is retried on the next tick", job_id)
                return 0

        return run

    def process_events(self) -> int:
        return process_until_idle(self.engine, max_batches=self.max_batches)

    def run_schedules(self) -> int:
        return run_schedules(self.engine)

    def fire_due_steps(self) -> int:
        return fire_due_until_idle(self.engine, max_batches=self.max_batches)

    def recompute_intelligence(self) -> int:
        return int(recompute_intelligence(self.engine).get("buyers", 0))

    def run_pending(self) -> dict[str, int]:
        """Run every job once, in order, on this thread (what the ticks do; for tests,
        backtests and a simulated clock)."""
        return {job_id: func() for job_id, func in self._jobs.items()}

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        """Stop ticking and wait for a running tick to commit."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
