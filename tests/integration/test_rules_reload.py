"""Rules at run time: ``/api/rules`` and ``/api/rules/reload`` on the real app under uvicorn,
a ``nudge worker`` that reloads on SIGHUP and stops cleanly on SIGTERM, and ``nudge preview``
against a real database."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest
import yaml
from journey_fixtures import (
    SAMPLE_RULES,
    SAMPLE_TEMPLATES,
    Sim,
    clean_env,
    copy_sample,
    make_sim_fixture,  # noqa: F401
    nudge_command,
)
from nudge_testing import ADMIN_TOKEN, Database, Nudge

from engine.clock import SystemClock
from engine.config import load_settings
from engine.events import normalize_segment
from engine.scheduler import EngineScheduler
from engine.service import customer_profile
from engine.store import create_store

DEADLINE = 30.0  # seconds, for each wait on a subprocess
SAMPLE_IDS = {
    "abandoned-checkout",
    "browse-abandonment",
    "post-purchase",
    "welcome-series",
    "tuesday-family",
    "friday-friends",
}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

BROKEN_KEY = """\
id: broken-rule
trigger:
  event: Checkout Started
chanel: email
template: cart_email
"""
BROKEN_YAML = """\
id: broken-yaml
trigger:
  event: Checkout Started
steps: [{wait: 1h, channel: email, template: cart_email}
"""


def copy_all_samples(tmp_path: Path) -> tuple[Path, Path]:
    rules, templates = tmp_path / "rules", tmp_path / "templates"
    rules.mkdir()
    templates.mkdir()
    for path in SAMPLE_RULES.glob("*.yaml"):
        (rules / path.name).write_text(path.read_text())
    for path in SAMPLE_TEMPLATES.glob("*.j2"):
        (templates / path.name).write_text(path.read_text())
    return rules, templates


def rule_ids(doc: dict[str, Any]) -> set[str]:
    return {r["id"] for r in doc["rules"]}


# -- the admin API ---------------------------------------------------------------------------


def test_rules_api_lists_the_loaded_rules(
    start_engine: Callable[..., Nudge], tmp_path: Path
) -> None:
    rules, templates = copy_all_samples(tmp_path)
    nudge = start_engine(rules_dir=rules, templates_dir=templates)
    nudge.engine.rules.reload()

    response = nudge.admin_get("/api/rules")
    assert response.status_code == 200, response.text
    doc = response.json()
    assert rule_ids(doc) == SAMPLE_IDS
    assert doc["problems"] == []
    [checkout] = [r for r in doc["rules"] if r["id"] == "abandoned-checkout"]
    assert checkout["trigger"] == "Checkout Started"
    assert checkout["steps"] == [
        {"wait": 3600.0, "channel": "push", "template": "cart_push"},
        {"wait": 82800.0, "channel": "email", "template": "cart_email"},
    ]
    assert checkout["file"] == str(rules / "abandoned_checkout.yaml")


def test_rules_reload_requires_the_admin_token(running_engine: Nudge) -> None:
    response = running_engine.http.post("/api/rules/reload")
    running_engine.expect_error(response, 401, code="unauthorized")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (BROKEN_KEY, 4, "unknown key 'chanel' (did you mean 'channel'?)"),
        (BROKEN_YAML, 5, "YAML"),
    ],
    ids=["unknown-key", "bad-yaml"],
)
def test_broken_rule_file_is_reported_and_the_other_rules_keep_working(
    start_engine: Callable[..., Nudge], tmp_path: Path, text: str, line: int, message: str
) -> None:
    rules, templates = copy_all_samples(tmp_path)
    nudge = start_engine(rules_dir=rules, templates_dir=templates)
    nudge.engine.rules.reload()

    broken = rules / "broken.yaml"
    broken.write_text(text)
    response = nudge.http.post("/api/rules/reload", headers=ADMIN)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert rule_ids(doc) == SAMPLE_IDS, "a broken file disables itself, never the others"
    [problem] = doc["problems"]
    assert (problem["file"], problem["line"], problem["severity"]) == (str(broken), line, "error")
    assert message in problem["message"]
    assert nudge.admin_get("/api/rules").json()["problems"] == doc["problems"]

    # The rules that loaded still start journeys from events sent over HTTP.
    body = {
        "messageId": "after-reload",
        "userId": "pat",
        "event": "Checkout Started",
        "properties": {"cart_id": "cart-77", "value": 42},
    }
    assert nudge.post("/v1/track", body).status_code == 200
    EngineScheduler(nudge.engine).run_pending()
    profile = customer_profile(nudge.engine, "pat")
    assert profile is not None
    [journey] = profile["journeys"]
    assert (journey["rule"], journey["key"], journey["status"]) == (
        "abandoned-checkout",
        "cart-77",
        "active",
    )

    # Fixed and reloaded: the problem is gone.
    broken.unlink()
    doc = nudge.http.post("/api/rules/reload", headers=ADMIN).json()
    assert (rule_ids(doc), doc["problems"]) == (SAMPLE_IDS, [])


# -- nudge worker: SIGHUP and SIGTERM -------------------------------------------------------------


class Lines:
    """Lines of a subprocess stream, read on a thread, waited for with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = DEADLINE) -> str:
        for line in self.seen:
            if text in line:
                return line
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {text!r} in the log:\n" + "\n".join(self.seen))
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the stream ended without {text!r}:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if text in line:
                return line

    def rest(self) -> str:
        self._thread.join(DEADLINE)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.seen.append(line)
        return "\n".join(self.seen)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def test_worker_reloads_rules_on_sighup_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    rules, templates = tmp_path / "rules", tmp_path / "templates"
    copy_sample(rules, templates, "abandoned_checkout", "cart_push.push.j2", "cart_email.email.j2")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database_url": f"sqlite:///{tmp_path}/w.db",
                "rules_dir": str(rules),
                "templates_dir": str(templates),
                "log_level": "INFO",
                "processing": {"interval": "50ms"},
            }
        )
    )
    worker = subprocess.Popen(
        nudge_command("worker", "--config", str(config)),
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stderr is not None
        log = Lines(worker.stderr)
        log.wait_for("rules: 1 loaded, 0 problem(s)")
        log.wait_for("worker started")

        copy_sample(rules, templates, "post_purchase", "review_request.email.j2")
        (rules / "broken.yaml").write_text(BROKEN_KEY)
        os.kill(worker.pid, signal.SIGHUP)
        assert "broken.yaml:4:1" in log.wait_for("unknown key 'chanel'")
        log.wait_for("rules: 2 loaded, 1 problem(s)")
        assert worker.poll() is None, "SIGHUP reloads; it does not stop the worker"

        # The reloaded rule is the one the worker now applies.
        settings = load_settings(config)
        store = create_store(settings, SystemClock())
        try:
            now = datetime.now(UTC)
            calls = [
                {"type": "identify", "userId": "rae", "traits": {"email": "rae@example.com"}},
                {
                    "type": "track",
                    "userId": "rae",
                    "event": "Order Completed",
                    "properties": {"order_id": "o-1", "revenue": 30.0},
                },
            ]
            rows = [
                normalize_segment(
                    {**call, "messageId": f"w-{i}"},
                    call_type=None,
                    source="web",
                    received_at=now,
                    max_event_bytes=32768,
                ).row()
                for i, call in enumerate(calls)
            ]
            assert store.insert_events(rows) == 2
        finally:
            store.close()
        db = Database(tmp_path / "w.db")
        wait_until(
            lambda: db.count("journeys", "rule_id = 'post-purchase'") == 1,
            "the worker to start a post-purchase journey",
        )
        [due] = db.query("SELECT due_at FROM journeys WHERE rule_id = 'post-purchase'")
        assert datetime.fromisoformat(due[0]).replace(tzinfo=UTC) - now == timedelta(days=7)

        os.kill(worker.pid, signal.SIGTERM)
        assert worker.wait(DEADLINE) == 0
        output = log.rest()
        assert "Traceback" not in output, output
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(DEADLINE)


# -- nudge preview -----------------------------------------------------------------------------

T0 = datetime(2026, 3, 3, 10, 0, tzinfo=UTC)


@pytest.fixture
def preview(make_sim: Callable[..., Sim], tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """``preview(*args)`` runs ``nudge preview abandoned-checkout --customer pia --json`` over a
    database where ``pia`` started checkout ``c-7`` (value 50) at ``T0``; its JSON."""
    rules, templates = tmp_path / "rules", tmp_path / "templates"
    copy_sample(rules, templates, "abandoned_checkout", "cart_push.push.j2", "cart_email.email.j2")
    sim = make_sim(T0)
    sim.track("Checkout Started", {"cart_id": "c-7", "value": 50}, user="pia")
    sim.tick()
    sim.close()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database_url": f"sqlite:///{tmp_path}/n.db",
                "rules_dir": str(rules),
                "templates_dir": str(templates),
            }
        )
    )

    def run(*args: str) -> dict[str, Any]:
        done = subprocess.run(
            nudge_command(
                "preview",
                "abandoned-checkout",
                "--customer",
                "pia",
                "--json",
                "--config",
                str(config),
                *args,
            ),
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=DEADLINE * 2,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    return run


def parts(shown: dict[str, Any]) -> dict[str, Any]:
    return {p["text"]: p["value"] for p in shown["parts"]}


def test_preview_explains_the_stored_checkout(preview: Callable[..., dict[str, Any]]) -> None:
    report = preview()
    assert (report["rule"], report["customer"], report["matches"]) == (
        "abandoned-checkout",
        "pia",
        True,
    )
    assert report["event"]["name"] == "Checkout Started"
    assert report["event"]["timestamp"] == T0.isoformat()
    condition = report["if"]
    assert (condition["expression"], condition["value"], condition["error"]) == (
        "event.properties.value >= 20",
        True,
        None,
    )
    shown = parts(condition)
    assert shown["event.properties.value >= 20"] is True
    assert float(shown["event.properties.value"]) == 50
    assert float(shown["20"]) == 20
    assert (report["key"]["expression"], report["key"]["value"]) == (
        "event.properties.cart_id",
        "c-7",
    )
    assert [(s["channel"], s["template"], s["due_at"]) for s in report["steps"]] == [
        ("push", "cart_push", (T0 + timedelta(hours=1)).isoformat()),
        ("email", "cart_email", (T0 + timedelta(hours=24)).isoformat()),
    ]


def test_preview_of_a_given_low_value_event_does_not_match(
    preview: Callable[..., dict[str, Any]],
) -> None:
    event = {"event": "Checkout Started", "properties": {"value": 5, "cart_id": "x"}}
    report = preview("--event", json.dumps(event))
    assert report["matches"] is False
    assert report["event_matches"] is True
    assert (report["if"]["value"], report["if"]["error"]) == (False, None)
    shown = parts(report["if"])
    assert shown["event.properties.value >= 20"] is False
    assert float(shown["event.properties.value"]) == 5
    assert report["key"]["value"] == "x"


def test_preview_shows_numbers_in_expression_parts_as_json_numbers(
    preview: Callable[..., dict[str, Any]],
) -> None:
    shown = parts(preview()["if"])
    assert shown["event.properties.value"] == 50
    assert shown["20"] == 20
