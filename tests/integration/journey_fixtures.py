"""A simulated world for journey and schedule tests: a real SQLite file, the real scheduler's
jobs run synchronously (``EngineScheduler.run_pending``) on a :class:`SimulatedClock`, and
events appended through the real normalisation (``normalize_segment``) into the store.

:class:`Sim` can be "restarted": every engine object is dropped and the SQLAlchemy engine
disposed, and new ones are built over the same file with a clock at the same time, as a
process restart would.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nudge_testing import Database, stored_time

from engine.clock import SimulatedClock
from engine.config import Settings, load_settings
from engine.events import normalize_segment
from engine.scheduler import EngineScheduler
from engine.service import Engine, customer_profile
from engine.store import create_store

PROJECT = Path(__file__).resolve().parents[2]
SAMPLE_RULES = PROJECT / "rules"
SAMPLE_TEMPLATES = PROJECT / "templates"

#: A minimal valid template per channel: the blocks the channel needs, rendered at send time.
TEMPLATE_TEXT = {
    "email": "{% block subject %}Hi{% endblock %}{% block html %}<p>Hi</p>{% endblock %}"
    "{% block text %}Hi{% endblock %}",
    "push": "{% block title %}Hi{% endblock %}{% block body %}Hi{% endblock %}"
    "{% block url %}/{% endblock %}",
}


def reachable(name: str) -> dict[str, Any]:
    """Traits that make a customer reachable on every channel a rule can use: an ``email``
    and a push token (the policy skips a send with no address: "no email address", "no push
    token")."""
    return {"email": f"{name}@example.com", "push_tokens": [f"tok-{name}"]}


def nudge_command(*args: str) -> list[str]:
    """The installed ``nudge`` script next to this interpreter, else ``python -m engine``."""
    script = Path(sys.executable).with_name("nudge")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "engine", *args]


def clean_env() -> dict[str, str]:
    """The environment without ``NUDGE_*`` variables (for subprocesses)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")}


def copy_sample(rules_dir: Path, templates_dir: Path, rule: str, *templates: str) -> None:
    """Copy ``rules/<rule>.yaml`` and ``templates/<name>`` files into the test's folders."""
    rules_dir.mkdir(parents=True, exist_ok=True)
    templates_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE_RULES / f"{rule}.yaml", rules_dir / f"{rule}.yaml")
    for name in templates:
        shutil.copy(SAMPLE_TEMPLATES / name, templates_dir / name)


def write_template(templates_dir: Path, name: str, channel: str) -> None:
    templates_dir.mkdir(parents=True, exist_ok=True)
    (templates_dir / f"{name}.{channel}.j2").write_text(TEMPLATE_TEXT[channel])


@dataclass
class Sim(Database):
    """An engine over ``path`` on a simulated clock, ticked by hand."""

    settings: Settings = field(repr=False)
    clock: SimulatedClock = field(repr=False)
    engine: Engine = field(init=False, repr=False)
    scheduler: EngineScheduler = field(init=False, repr=False)
    _sequence: int = 0

    def __post_init__(self) -> None:
        self._build()

    def _build(self) -> None:
        store = create_store(self.settings, self.clock)
        store.upgrade()
        self.engine = Engine(settings=self.settings, store=store, clock=self.clock)
        self.engine.rules.reload()
        self.scheduler = EngineScheduler(self.engine)

    def close(self) -> None:
        self.engine.store.close()

    def restart(self, at: datetime | None = None) -> None:
        """Drop every engine object, dispose the database engine, and build new ones over
        the same file with a new clock at the same time (or ``at``)."""
        when = at or self.clock.now()
        self.close()
        del self.scheduler, self.engine
        self.clock = SimulatedClock(when)
        self._build()

    # -- time ---------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        return self.clock.now()

    def tick(self) -> dict[str, int]:
        """What the scheduler's jobs do in one round, on this thread."""
        return self.scheduler.run_pending()

    def advance(self, delta: timedelta, *, tick: bool = True) -> None:
        self.clock.advance(delta)
        if tick:
            self.tick()

    def run_until(self, when: datetime, step: timedelta) -> None:
        """Advance by ``step`` and tick each time until the clock reaches ``when``."""
        while self.clock.now() + step <= when:
            self.advance(step)
        if self.clock.now() < when:
            self.clock.set(when)
            self.tick()

    # -- events ---------------------------------------------------------------------------

    def send(self, call: dict[str, Any], *, at: datetime | None = None) -> None:
        """Append one Segment call (``type`` in it) as the ingest path would, received now;
        ``at`` is its ``timestamp`` (default: now)."""
        self._sequence += 1
        body = {"messageId": f"sim-{self._sequence}", **call}
        if at is not None:
            body["timestamp"] = at.isoformat()
        event = normalize_segment(
            body,
            call_type=None,
            source="web",
            received_at=self.clock.now(),
            max_event_bytes=self.settings.ingest.max_event_bytes,
        )
        assert self.engine.store.insert_events([event.row()]) == 1

    def track(
        self,
        event: str,
        properties: dict[str, Any] | None = None,
        *,
        user: str | None = None,
        anon: str | None = None,
        at: datetime | None = None,
        traits: dict[str, Any] | None = None,
    ) -> None:
        """A ``track`` call; ``traits`` go in its ``context.traits`` (applied to the profile,
        as Segment's libraries send an identified user's traits with each event)."""
        call: dict[str, Any] = {"type": "track", "event": event, "properties": properties or {}}
        if user:
            call["userId"] = user
        if anon:
            call["anonymousId"] = anon
        if traits:
            call["context"] = {"traits": traits}
        self.send(call, at=at)

    def identify(
        self, traits: dict[str, Any], *, user: str | None = None, anon: str | None = None
    ) -> None:
        call: dict[str, Any] = {"type": "identify", "traits": traits}
        if user:
            call["userId"] = user
        if anon:
            call["anonymousId"] = anon
        self.send(call)

    # -- reading ---------------------------------------------------------------------------

    def profile(self, ref: str) -> dict[str, Any]:
        doc = customer_profile(self.engine, ref)
        assert doc is not None, f"no customer {ref!r}"
        return doc

    def decisions(self, ref: str) -> list[dict[str, Any]]:
        """The customer's decisions, oldest first."""
        return sorted(self.profile(ref)["decisions"], key=lambda d: (d["at"], d["step"]))

    def journeys(self, ref: str) -> list[dict[str, Any]]:
        return self.profile(ref)["journeys"]

    def decision_rows(self, where: str = "1=1", params: tuple[Any, ...] = ()) -> list[dict]:
        rows = self.query(f"SELECT * FROM decisions WHERE {where} ORDER BY id", params)
        out = []
        for row in rows:
            item = dict(row)
            for name in ("at", "due_at"):
                if item[name] is not None:
                    item[name] = stored_time(item[name])
            out.append(item)
        return out


@pytest.fixture(name="make_sim")
def make_sim_fixture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Sim]]:
    """A factory: ``make_sim(start, **settings_overrides)`` → a :class:`Sim` over
    ``tmp_path/n.db`` with rules from ``tmp_path/rules`` and templates from
    ``tmp_path/templates`` (write them before calling)."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("NUDGE_")]:
        monkeypatch.delenv(name)
    made: list[Sim] = []

    def make(start: datetime, **overrides: Any) -> Sim:
        values: dict[str, Any] = {
            "database_url": f"sqlite:///{tmp_path}/n.db",
            "rules_dir": tmp_path / "rules",
            "templates_dir": tmp_path / "templates",
            "sqlite_synchronous": "normal",
            "log_level": "WARNING",
        }
        values.update(overrides)
        sim = Sim(
            path=tmp_path / "n.db",
            settings=load_settings(None, **values),
            clock=SimulatedClock(start),
        )
        assert not sim.engine.rules.current.errors, sim.engine.rules.current.errors
        made.append(sim)
        return sim

    yield make
    for sim in made:
        sim.close()
