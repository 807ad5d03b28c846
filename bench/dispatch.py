"""Delivery benchmark: signed webhooks through the outbox, against bare HTTP clients.

One run measures, against the same receiver (``bench/receiver.py``: a raw asyncio HTTP/1.1
keep-alive server in its own process, answering 200 to every POST) with the same 2 KB
message bodies, each signed per request (Standard Webhooks, ``engine.dispatch.sign_headers``):

1. **Baselines**: requests/s of a bare ``aiohttp.ClientSession`` loop, a bare
   ``httpx.AsyncClient`` (default transport), httpx over ``httpx_aiohttp.AiohttpTransport``
   (what the engine's Poster uses) and the engine's own ``Poster.post``, at concurrency 10,
   50 and 200.
2. **Full outbox path**: N messages written with ``unit.write_messages`` into a real SQLite
   engine (fresh file per run), then ``Dispatcher(engine).run(stop)`` until every outbox row
   is ``delivered``, at ``delivery.concurrency`` 10, 50 and 200; then once more at 200 with the
   receiver answering after 100 ms. Done-ness is read from ``Dispatcher.delivered``, which
   counts rows only after the commit that marks them delivered (so it is the database's
   state, at no polling cost); the database is checked at the end. Goals: >= 3,000
   deliveries/s; no collapse from 10 to 200 (read here as: 200/10 >= 0.8); >= 1,000/s with
   the 100 ms receiver at 200.
3. **Event -> delivery latency**: ``nudge run`` (scheduler, dispatcher, uvicorn) in a
   subprocess on a temp config, one rule sending an email at once on ``Bench Ping``, no caps
   or quiet hours; 100 events/s through ``POST /v1/track`` (each for a new userId with
   ``context.traits.email``), open loop; per message, the time from the POST's 200 to the
   webhook's arrival at the receiver (both ``time.monotonic()``, system-wide on Linux).
   Goal: p99 < 1 s. The stages (ingest -> journey -> message -> POST) are read from the
   database afterwards.

    .venv/bin/python bench/dispatch.py [--quick] [--json] [--profile]

``--profile`` adds one more outbox run (concurrency 50) under cProfile, every thread (the
event loop and the store's worker threads), and prints where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import ctypes
import io
import json
import math
import multiprocessing
import os
import platform
import pstats
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from engine.clock import SystemClock
from engine.config import Settings, load_settings
from engine.delivery import Dispatcher, run_dispatcher_process
from engine.dispatch import Poster, sign_headers
from engine.service import Engine, message_id_for
from engine.store import create_store
from engine.store.base import Attempt
from engine.store.delivery import DELIVERED

GOAL_DELIVERIES_PER_S = 3_000
GOAL_DELAYED_PER_S = 1_000
# deliveries/s at 200 over deliveries/s at 10. "Collapse" is what httpx's default transport
# does (a fall to a fraction, or to nothing, as concurrency grows); every client here loses
# some throughput from 10 to 200 (bare aiohttp ~0.85x, httpx over aiohttp ~0.7x), so the
# line is drawn at half. The bare clients' own ratios are printed beside it.
GOAL_NO_COLLAPSE = 0.5
GOAL_P99_S = 1.0
OTHER_CPU_WARN_PCT = 10.0
CONCURRENCIES = (10, 50, 200)
BODY_BYTES = 2048
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
HERE = Path(__file__).resolve().parent
WRITE_KEY = "wk_bench_dispatch"
CLIENTS = {
    "aiohttp": "(a) bare aiohttp.ClientSession",
    "httpx": "(b) bare httpx.AsyncClient, default transport",
    "httpx+aiohttp": "(c) httpx + httpx_aiohttp.AiohttpTransport",
    "poster": "(d) engine Poster.post (c + gate, deadline, stream)",
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- processes ---------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid``, all threads."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _die_with_parent() -> None:
    """In a child before exec: get SIGTERM when this script dies, however it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_process(proc: subprocess.Popen[Any]) -> int | None:
    """SIGTERM the process this script started, then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)
    return proc.returncode


class Receiver:
    """``bench/receiver.py`` in its own process; it prints the port it bound."""

    def __init__(self, *, delay_ms: float = 0.0, record: bool = False, lifetime: float) -> None:
        argv = [sys.executable, str(HERE / "receiver.py"), "--max-lifetime", str(lifetime)]
        argv += ["--delay-ms", str(delay_ms)] + (["--record"] if record else [])
        self.delay_ms = delay_ms
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, preexec_fn=_die_with_parent
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], READY_TIMEOUT_S)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("port "):
            stop_process(self.proc)
            raise RuntimeError(f"receiver did not start (said {line!r})")
        self.base = f"http://127.0.0.1:{int(line.split()[1])}"
        self.url = self.base + "/email"

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(self.base + "/__stats", timeout=30).json())

    def records(self) -> list[list[Any]]:
        return list(httpx.get(self.base + "/__records", timeout=60).json())

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLK_TCK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def receiver_capacity(receiver: Receiver, tmp: Path, seconds: int) -> float | None:
    """The receiver's own requests/s under wrk (a C client, 50 connections), if wrk exists."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = string.rep("x", {BODY_BYTES})\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        'wrk.headers["webhook-id"] = "msg_capacity"\n'
    )
    done = subprocess.run(
        [wrk, "-t1", "-c50", f"-d{seconds}s", "-s", str(script), receiver.url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    for line in done.stdout.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    return None


# --- payloads ----------------------------------------------------------------------------


def message_body(i: int, message_id: str) -> str:
    """A ``message.send`` body as the engine writes it, padded to 2 KB."""
    user = f"user-{i}"
    unsubscribe = f"http://127.0.0.1:8000/u/{base64.urlsafe_b64encode(os.urandom(72)).decode()}"
    body: dict[str, Any] = {
        "type": "message.send",
        "id": message_id,
        "channel": "email",
        "to": {"customer_id": user, "email": f"{user}@example.com", "push_tokens": []},
        "content": {
            "subject": "You left something in your cart",
            "html": "",
            "text": "Your cart is waiting: Organic Cotton T-Shirt, 24.99 USD.",
        },
        "rule": "bench-dispatch",
        "step": 1,
        "variant": None,
        "unsubscribe_url": unsubscribe,
        "created_at": datetime.now(UTC).isoformat(),
        "headers": {
            "List-Unsubscribe": f"<{unsubscribe}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    }
    size = len(json.dumps(body, separators=(",", ":")))
    body["content"]["html"] = "<p>" + "x" * max(BODY_BYTES - size - 7, 0) + "</p>"
    return json.dumps(body, separators=(",", ":"))


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


# --- baselines ---------------------------------------------------------------------------


async def _client_poster(kind: str, concurrency: int) -> tuple[Any, Any]:
    """(``close()``, ``post(url, body, headers) -> status``) for one baseline kind."""
    if kind == "aiohttp":
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))

        async def post_aiohttp(url: str, body: bytes, headers: dict[str, str]) -> int:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                return response.status

        return session.close, post_aiohttp
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    if kind in ("httpx", "httpx+aiohttp"):
        transport = AiohttpTransport(limits=limits) if kind == "httpx+aiohttp" else None
        client = httpx.AsyncClient(limits=limits, transport=transport)

        async def post_httpx(url: str, body: bytes, headers: dict[str, str]) -> int:
            response = await client.post(url, content=body, headers=headers)
            return response.status_code

        return client.aclose, post_httpx
    poster = Poster(concurrency=concurrency)

    async def post_poster(url: str, body: bytes, headers: dict[str, str]) -> int:
        result = await poster.post(url, body, headers, timeout=10.0)
        return result.status or 0

    return poster.aclose, post_poster


async def _baseline(
    kind: str, url: str, secret: str, bodies: list[bytes], concurrency: int, seconds: float
) -> dict[str, Any]:
    """Closed loop: ``concurrency`` workers POST back to back for ``seconds``; the rate counts
    the answers that came within the window (requests still out at its end are cancelled, so
    a client that collapses cannot stretch the run)."""
    close, post = await _client_poster(kind, concurrency)
    counter = iter(range(10**12))
    done = failed = 0
    end = math.inf

    async def one() -> None:
        nonlocal done, failed
        n = next(counter)
        body = bodies[n % len(bodies)]
        headers = sign_headers(secret, f"msg_{n:032x}", datetime.now(UTC), body)
        status = await post(url, body, headers)
        if time.perf_counter() > end:
            return
        if 200 <= status < 300:
            done += 1
        else:
            failed += 1

    async def worker() -> None:
        while time.perf_counter() < end:
            await one()

    async def bounded(jobs: list[Any], limit: float) -> tuple[float, float]:
        """Run ``jobs`` for at most ``limit`` seconds; (CPU, machine busy) seconds at the end
        of that window, before the cancelled stragglers are cleaned up."""
        tasks = [asyncio.ensure_future(job) for job in jobs]
        _, late = await asyncio.wait(tasks, timeout=limit)
        at_end = time.process_time(), machine_busy_seconds()
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        return at_end

    try:
        # Open the connections first (bounded: the default httpx transport can take seconds).
        await bounded([one() for _ in range(concurrency)], max(seconds, 2.0))
        done = failed = 0
        cpu, busy = time.process_time(), machine_busy_seconds()
        start = time.perf_counter()
        end = start + seconds
        cpu_end, busy_end = await bounded([worker() for _ in range(concurrency)], seconds)
        cpu, busy = cpu_end - cpu, busy_end - busy
    finally:
        await close()
    return {
        "client": kind,
        "concurrency": concurrency,
        "requests": done,
        "failed": failed,
        "seconds": seconds,
        "per_s": round(done / seconds, 1),
        "cpu_pct": round(100 * cpu / seconds),
        "cpu_us_per_request": round(1e6 * cpu / max(done, 1)),
        "other_cpu_pct": round(max(0.0, 100 * (busy - cpu) / seconds)),
    }


def baselines(
    receiver: Receiver,
    secret: str,
    seconds: float,
    concurrencies: tuple[int, ...],
    kinds: tuple[str, ...] = tuple(CLIENTS),
) -> list[dict[str, Any]]:
    bodies = [message_body(i, f"msg_{i:032x}").encode() for i in range(64)]
    out = []
    for concurrency in concurrencies:
        for kind in kinds:
            receiver_cpu = receiver.cpu_seconds()
            result = asyncio.run(
                _baseline(kind, receiver.url, secret, bodies, concurrency, seconds)
            )
            receiver_cpu = receiver.cpu_seconds() - receiver_cpu
            result["delay_ms"] = receiver.delay_ms
            result["receiver_cpu_pct"] = round(100 * receiver_cpu / seconds)
            # machine busy time minus this process: the receiver is not "other"
            result["other_cpu_pct"] = max(0, result["other_cpu_pct"] - result["receiver_cpu_pct"])
            log(
                f"  baseline {kind:<14} c={concurrency:<4} delay={receiver.delay_ms:g}ms: "
                f"{result['per_s']:>8,.0f} req/s ({result['cpu_us_per_request']} CPU us/request; "
                f"CPU {result['cpu_pct']}%, receiver "
                f"{result['receiver_cpu_pct']}%, other processes {result['other_cpu_pct']}%)"
            )
            out.append(result)
    return out


# --- the full outbox path ------------------------------------------------------------------


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=2))  # JSON is YAML
    return path


def outbox_engine(home: Path, url: str, secret: str, concurrency: int, synchronous: str) -> Engine:
    home.mkdir(parents=True)
    for folder in ("rules", "templates"):
        (home / folder).mkdir()
    config = write_config(
        home / "config.yaml",
        {
            "database_url": f"sqlite:///{home / 'nudge.db'}",
            "sqlite_synchronous": synchronous,
            "rules_dir": str(home / "rules"),
            "templates_dir": str(home / "templates"),
            "channels": {"email": {"endpoints": [{"url": url, "secret": secret}]}},
            "delivery": {"concurrency": concurrency},
            "log_level": "WARNING",
        },
    )
    settings: Settings = load_settings(config)
    clock = SystemClock()
    store = create_store(settings, clock)
    store.upgrade()
    return Engine(settings=settings, store=store, clock=clock)


def fill_outbox(engine: Engine, count: int, run: str, chunk: int = 2000) -> float:
    """``count`` messages (and their outbox rows) through ``unit.write_messages``; seconds.
    ``run`` makes the message ids (``webhook-id``) unique across runs."""
    endpoints = {
        str(channel): [e.url for e in config.endpoints]
        for channel, config in engine.settings.channels.items()
    }
    start = time.perf_counter()
    now = datetime.now(UTC)
    for first in range(0, count, chunk):
        messages = []
        for i in range(first, min(first + chunk, count)):
            dedupe = f"bench-dispatch-{run}:{i}:0:1:0"
            message_id = message_id_for(dedupe)
            messages.append(
                {
                    "id": message_id,
                    "decision_dedupe": dedupe,
                    "customer_id": i + 1,
                    "rule_id": "bench-dispatch",
                    "step": 0,
                    "variant": None,
                    "channel": "email",
                    "template": "cart_email",
                    "body": message_body(i, message_id),
                    "links": [],
                    "created_at": now,
                }
            )
        with engine.store.unit() as unit:
            unit.write_messages(messages, endpoints)
    return time.perf_counter() - start


def _timed(fn: Callable[..., Any], spent: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            spent.append(time.perf_counter() - start)

    return wrapper


async def _drive(engine: Engine, count: int, timeout: float) -> dict[str, Any]:
    dispatcher = Dispatcher(engine)
    claims: list[float] = []
    records: list[float] = []
    dispatcher._claim = _timed(dispatcher._claim, claims)  # type: ignore[method-assign]
    dispatcher._record = _timed(dispatcher._record, records)  # type: ignore[method-assign]
    stop = asyncio.Event()
    cpu = time.process_time()
    start = time.perf_counter()
    task = asyncio.create_task(dispatcher.run(stop))
    while dispatcher.delivered < count and not task.done():
        if time.perf_counter() - start > timeout:
            break
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    delivered = dispatcher.delivered
    stop.set()
    await task
    return {
        "delivered": delivered,
        "seconds": elapsed,
        "wall_s": time.perf_counter() - start,
        "cpu_s": cpu,
        "claims": len(claims),
        "claim_s": sum(claims),
        "records": len(records),
        "record_s": sum(records),
    }


def _profiled_drive(engine: Engine, count: int, timeout: float) -> tuple[dict[str, Any], str]:
    """:func:`_drive` under cProfile on the loop thread and on every worker thread."""
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_profile() -> None:
        profile = cProfile.Profile()
        with lock:
            profiles.append(profile)
        profile.enable()

    async def main() -> dict[str, Any]:
        executor = ThreadPoolExecutor(max_workers=4, initializer=start_profile)
        asyncio.get_running_loop().set_default_executor(executor)
        return await _drive(engine, count, timeout)

    loop_profile = cProfile.Profile()
    loop_profile.enable()
    try:
        result = asyncio.run(main())  # shuts the executor down: the worker threads exit
    finally:
        loop_profile.disable()
    stats = pstats.Stats(loop_profile)
    for profile in profiles:
        stats.add(profile)
    return result, profile_report(stats)


def _area(filename: str, function: str) -> str:
    """Which library a profiled function belongs to."""
    path = filename.replace("\\", "/")
    for marker, name in (
        ("/sqlalchemy/", "sqlalchemy"),
        ("/aiohttp/", "aiohttp"),
        ("/httpx_aiohttp/", "httpx_aiohttp"),
        ("/httpx/", "httpx"),
        ("/httpcore/", "httpcore"),
        ("/standardwebhooks/", "standardwebhooks"),
        ("/engine/store/", "engine.store"),
        ("/engine/", "engine (dispatch/delivery)"),
        ("/asyncio/", "asyncio"),
        ("/concurrent/", "threads"),
        ("/threading.py", "threads"),
        ("/sqlite3/", "sqlite3"),
        ("/json/", "json"),
        ("/email/", "email"),
    ):
        if marker in path:
            return name
    if filename == "~":
        if "_queue.SimpleQueue" in function:
            return "idle: worker threads waiting for work"
        if "select.epoll" in function:
            return "idle: event loop waiting for I/O"
        if "sqlite3" in function:
            return "sqlite3 (C, SQL execution)"
        if "acquire" in function:
            return "idle: waiting on a lock"
        if "socket" in function:
            return "socket calls (C)"
        return "builtins (C)"
    return "other: " + Path(filename).name


def profile_report(stats: pstats.Stats, top: int = 30) -> str:
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    areas: dict[str, float] = {}
    total = 0.0
    for (filename, _line, function), (_cc, _nc, tottime, _ct, _callers) in raw.items():
        area = _area(filename, function)
        areas[area] = areas.get(area, 0.0) + tottime
        total += tottime
    busy = sum(v for k, v in areas.items() if not k.startswith("idle"))
    lines = [
        f"own time by library, all threads: {total:.2f} s profiled, {busy:.2f} s of it not "
        "idle (% of the non-idle time; cProfile inflates Python-heavy code)"
    ]
    for area, seconds in sorted(areas.items(), key=lambda kv: -kv[1])[:20]:
        share = "" if area.startswith("idle") else f"{100 * seconds / busy:5.1f}%"
        lines.append(f"  {seconds:8.3f} s  {share:>6}  {area}")
    buffer = io.StringIO()
    stats.stream = buffer  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return "\n".join(lines) + "\n" + buffer.getvalue()


def outbox_run(
    root: Path,
    name: str,
    receiver: Receiver,
    secret: str,
    concurrency: int,
    count: int,
    synchronous: str,
    timeout: float,
    *,
    profile: bool = False,
) -> dict[str, Any]:
    engine = outbox_engine(root / name, receiver.url, secret, concurrency, synchronous)
    try:
        setup = fill_outbox(engine, count, f"{name}-{uuid.uuid4().hex[:8]}")
        before, receiver_cpu = receiver.stats(), receiver.cpu_seconds()
        busy = machine_busy_seconds()
        report = None
        if profile:
            drive, report = _profiled_drive(engine, count, timeout)
        else:
            drive = asyncio.run(_drive(engine, count, timeout))
        busy = (machine_busy_seconds() - busy) * drive["seconds"] / drive["wall_s"]
        after, receiver_cpu = receiver.stats(), receiver.cpu_seconds() - receiver_cpu
        with contextlib.closing(sqlite3.connect(root / name / "nudge.db")) as conn:
            statuses = dict(
                conn.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall()
            )
    finally:
        engine.store.close()
    seconds = drive["seconds"]
    result = {
        "name": name,
        "concurrency": concurrency,
        "delay_ms": receiver.delay_ms,
        "messages": count,
        "setup_s": round(setup, 2),
        "delivered": drive["delivered"],
        "complete": drive["delivered"] >= count,
        "seconds": round(seconds, 3),
        "per_s": round(drive["delivered"] / seconds, 1),
        "outbox_statuses": statuses,
        "receiver_posts": after["posts"] - before["posts"],
        "receiver_duplicates": after["duplicates"] - before["duplicates"],
        "bench_cpu_pct": round(100 * drive["cpu_s"] / seconds),
        "cpu_us_per_delivery": round(1e6 * drive["cpu_s"] / max(drive["delivered"], 1)),
        "receiver_cpu_pct": round(100 * receiver_cpu / seconds),
        "other_cpu_pct": round(max(0.0, 100 * (busy - drive["cpu_s"] - receiver_cpu) / seconds)),
        "claims": drive["claims"],
        "claim_ms_avg": round(1000 * drive["claim_s"] / max(drive["claims"], 1), 2),
        "claim_pct_of_wall": round(100 * drive["claim_s"] / seconds, 1),
        "records": drive["records"],
        "record_ms_avg": round(1000 * drive["record_s"] / max(drive["records"], 1), 2),
        "record_pct_of_wall": round(100 * drive["record_s"] / seconds, 1),
        "rows_per_record": round(drive["delivered"] / max(drive["records"], 1), 1),
    }
    if report is not None:
        result["profile"] = report
    log(
        f"  outbox c={concurrency:<4} delay={receiver.delay_ms:g}ms: {result['per_s']:>8,.0f} "
        f"deliveries/s ({result['delivered']:,}/{count:,} in {seconds:.2f}s; setup "
        f"{setup:.1f}s; claims {result['claim_pct_of_wall']}% / records "
        f"{result['record_pct_of_wall']}% of wall; {result['cpu_us_per_delivery']} CPU "
        f"us/delivery; CPU {result['bench_cpu_pct']}%, receiver "
        f"{result['receiver_cpu_pct']}%, other processes {result['other_cpu_pct']}%)"
    )
    return result


def pool_run(
    root: Path,
    name: str,
    receiver: Receiver,
    secret: str,
    concurrency: int,
    processes: int,
    count: int,
    synchronous: str,
    timeout: float,
) -> dict[str, Any]:
    """The full outbox path with ``processes`` dispatcher processes (what
    ``delivery.processes`` gives ``nudge run``), each ``run_dispatcher_process``. The rate is
    taken over the deliveries themselves (first to last ``delivered_at``), so the children's
    start-up (imports) is not counted."""
    engine = outbox_engine(root / name, receiver.url, secret, concurrency, synchronous)
    setup = fill_outbox(engine, count, f"{name}-{uuid.uuid4().hex[:8]}")
    settings = engine.settings
    engine.store.close()
    before = receiver.stats()
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=run_dispatcher_process, args=(settings,), daemon=True)
        for _ in range(processes)
    ]
    database = root / name / "nudge.db"
    delivered = 0
    try:
        for child in children:
            child.start()
        deadline = time.monotonic() + timeout + 10  # + the children's start-up
        with contextlib.closing(sqlite3.connect(database, timeout=30)) as conn:
            while delivered < count and time.monotonic() < deadline:
                time.sleep(0.05)
                delivered = conn.execute(
                    "SELECT count(*) FROM outbox WHERE status = 'delivered'"
                ).fetchone()[0]
    finally:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()
    with contextlib.closing(sqlite3.connect(database)) as conn:
        first, last = conn.execute(
            "SELECT min(delivered_at), max(delivered_at) FROM outbox WHERE status = 'delivered'"
        ).fetchone()
        statuses = dict(conn.execute("SELECT status, count(*) FROM outbox GROUP BY status"))
    span = (
        (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
        if first and last
        else 0.0
    )
    after = receiver.stats()
    per_s = delivered / span if span > 0 else 0.0
    result = {
        "name": name,
        "concurrency": concurrency,
        "processes": processes,
        "messages": count,
        "setup_s": round(setup, 2),
        "delivered": delivered,
        "complete": delivered >= count,
        "seconds": round(span, 3),
        "per_s": round(per_s, 1),
        "outbox_statuses": statuses,
        "receiver_posts": after["posts"] - before["posts"],
        "receiver_duplicates": after["duplicates"] - before["duplicates"],
    }
    log(
        f"  outbox c={concurrency:<4} x {processes} processes: {per_s:>8,.0f} deliveries/s "
        f"({delivered:,}/{count:,} in {span:.2f}s between the first and last delivery; "
        f"{result['receiver_duplicates']} duplicate webhook-ids)"
    )
    return result


def store_alone(root: Path, url: str, secret: str, count: int, synchronous: str) -> dict[str, Any]:
    """The dispatcher's store steps with no HTTP: ``Dispatcher._claim`` a batch, mark every row
    delivered with ``Dispatcher._record``, until the outbox is empty; one thread, no loop."""
    engine = outbox_engine(root / "store-alone", url, secret, 50, synchronous)
    try:
        fill_outbox(engine, count, f"store-{uuid.uuid4().hex[:8]}")
        dispatcher = Dispatcher(engine)
        batch = engine.settings.delivery.batch_size
        claim_s = record_s = 0.0
        rows = 0
        while True:
            start = time.perf_counter()
            items = dispatcher._claim(batch)
            claim_s += time.perf_counter() - start
            if not items:
                break
            now = engine.clock.now()
            attempts = [
                Attempt(
                    outbox_id=item.id,
                    attempt=1,
                    attempts=1,
                    at=now,
                    status=200,
                    error=None,
                    duration_ms=1.0,
                    action="delivered",
                    new_status=DELIVERED,
                    next_attempt_at=None,
                )
                for item in items
            ]
            start = time.perf_counter()
            dispatcher._record(attempts)
            record_s += time.perf_counter() - start
            rows += len(items)
    finally:
        engine.store.close()
    result = {
        "rows": rows,
        "batch_size": batch,
        "claim_ms_per_batch": round(1000 * claim_s / max(rows / batch, 1), 2),
        "record_ms_per_batch": round(1000 * record_s / max(rows / batch, 1), 2),
        "claim_us_per_row": round(1e6 * claim_s / max(rows, 1), 1),
        "record_us_per_row": round(1e6 * record_s / max(rows, 1), 1),
        "rows_per_s": round(rows / (claim_s + record_s), 1),
    }
    log(
        f"  store alone: {result['rows_per_s']:,.0f} rows/s claimed + recorded "
        f"(claim {result['claim_us_per_row']} us/row, record {result['record_us_per_row']} "
        f"us/row, batches of {batch})"
    )
    return result


# --- event -> delivery latency -------------------------------------------------------------

RULE = """id: bench-ping
description: Benchmark rule, sends an email at once on Bench Ping.
trigger:
  event: Bench Ping
steps:
  - channel: email
    template: bench_ping
"""
TEMPLATE = (
    "{% block subject %}Ping {{ event.properties.n }}{% endblock %}\n"
    "{% block html %}<p>Ping for {{ customer.email }}</p>{% endblock %}\n"
    "{% block text %}Ping for {{ customer.email }}{% endblock %}\n"
)


def nudge_command() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "nudge")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nudge")
    if not found:
        raise SystemExit("the nudge command was not found (run this with .venv/bin/python)")
    return found


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "p50": round(percentile(values, 50), 4),
        "p90": round(percentile(values, 90), 4),
        "p99": round(percentile(values, 99), 4),
        "max": round(max(values), 4),
    }


def track_call(user: str, n: int) -> dict[str, Any]:
    return {
        "type": "track",
        "messageId": str(uuid.uuid4()),
        "userId": user,
        "event": "Bench Ping",
        "properties": {"n": n},
        "context": {"traits": {"email": f"{user}@example.com"}},
        "timestamp": datetime.now(UTC).isoformat(),
    }


async def _send_load(
    base: str, users: list[str], rate: float
) -> tuple[dict[str, float], dict[str, float], int]:
    """POST one ``Bench Ping`` per user at ``rate``/s, open loop. Returns (user -> when the
    200 came, user -> request seconds, non-200 count)."""
    acked: dict[str, float] = {}
    took: dict[str, float] = {}
    failed = 0
    async with httpx.AsyncClient(base_url=base, auth=(WRITE_KEY, ""), timeout=30.0) as client:

        async def send(n: int, user: str) -> None:
            nonlocal failed
            started = time.monotonic()
            try:
                response = await client.post("/v1/track", json=track_call(user, n))
            except httpx.HTTPError:
                failed += 1
                return
            now = time.monotonic()
            if response.status_code == 200:
                acked[user], took[user] = now, now - started
            else:
                failed += 1

        tasks = []
        start = time.monotonic()
        for n, user in enumerate(users):
            wait = start + n / rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(send(n, user)))
        await asyncio.gather(*tasks)
    return acked, took, failed


def _wait_posts(receiver: Receiver, target: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    posts = receiver.stats()["posts"]
    while posts < target and time.monotonic() < deadline:
        time.sleep(0.1)
        posts = receiver.stats()["posts"]
    return int(posts)


def _stages(db: Path, prefix: str) -> dict[str, Any]:
    """Per delivered message, the engine's own timestamps (wall clock, one process)."""
    query = """
        SELECT e.received_at, j.created_at, m.created_at, o.delivered_at
        FROM events e
        JOIN journeys j ON j.trigger_seq = e.seq
        JOIN messages m ON m.customer_id = j.customer_id AND m.rule_id = j.rule_id
        JOIN outbox o ON o.message_id = m.id
        WHERE e.user_id LIKE ? AND o.status = 'delivered'
    """
    parts: dict[str, list[float]] = {"ingest_to_journey": [], "journey_to_message": []}
    parts["message_to_post"] = []
    with contextlib.closing(sqlite3.connect(db)) as conn:
        for received, journey, message, posted in conn.execute(query, (prefix + "%",)):
            times = [datetime.fromisoformat(t) for t in (received, journey, message, posted)]
            parts["ingest_to_journey"].append((times[1] - times[0]).total_seconds())
            parts["journey_to_message"].append((times[2] - times[1]).total_seconds())
            parts["message_to_post"].append((times[3] - times[2]).total_seconds())
        decisions = dict(
            conn.execute("SELECT outcome, count(*) FROM decisions GROUP BY outcome").fetchall()
        )
        outbox = dict(
            conn.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall()
        )
    return {
        "stages_s": {name: spread(values) for name, values in parts.items()},
        "decisions": decisions,
        "outbox": outbox,
    }


def latency_run(
    root: Path, receiver: Receiver, secret: str, rate: float, seconds: float, synchronous: str
) -> dict[str, Any]:
    home = root / "latency"
    for folder in ("rules", "templates"):
        (home / folder).mkdir(parents=True)
    (home / "rules" / "bench_ping.yaml").write_text(RULE)
    (home / "templates" / "bench_ping.email.j2").write_text(TEMPLATE)
    port = free_port()
    db = home / "nudge.db"
    config = write_config(
        home / "config.yaml",
        {
            "database_url": f"sqlite:///{db}",
            "sqlite_synchronous": synchronous,
            "server": {"host": "127.0.0.1", "port": port},
            "write_keys": [{"source": "bench", "key": WRITE_KEY}],
            "rules_dir": str(home / "rules"),
            "templates_dir": str(home / "templates"),
            "channels": {"email": {"endpoints": [{"url": receiver.url, "secret": secret}]}},
            "log_level": "WARNING",
        },
    )
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")}
    log_path = home / "nudge.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [nudge_command(), "run", "--config", str(config)],
            cwd=home,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            preexec_fn=_die_with_parent,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"nudge run exited: {log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/healthz", timeout=1.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"nudge run not ready: {log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        # Warm-up: a few messages end to end, so that first-use costs are not measured.
        warm = [f"warm-{i}" for i in range(5)]
        asyncio.run(_send_load(base, warm, 10))
        if _wait_posts(receiver, len(warm), 20) < len(warm):
            raise RuntimeError(f"warm-up messages not delivered: {log_path.read_text()[-3000:]}")
        users = [f"ping-{i}" for i in range(int(rate * seconds))]
        cpu, wall = proc_cpu_seconds(proc.pid), time.monotonic()
        acked, took, failed = asyncio.run(_send_load(base, users, rate))
        sent_for = time.monotonic() - wall
        posts = _wait_posts(receiver, len(warm) + len(acked), 20)
        cpu, wall = proc_cpu_seconds(proc.pid) - cpu, time.monotonic() - wall
        arrivals: dict[str, float] = {}
        for customer, _webhook_id, at in receiver.records():
            if customer is not None and customer not in arrivals:
                arrivals[customer] = at
    finally:
        code = stop_process(proc)
    if code not in (0, -signal.SIGTERM):
        log(f"nudge run exited with {code}:\n{log_path.read_text()[-3000:]}")
    latencies = [arrivals[u] - acked[u] for u in acked if u in arrivals]
    return {
        "rate_per_s": rate,
        "seconds": seconds,
        "sent_for_s": round(sent_for, 2),
        "events": len(users),
        "acked": len(acked),
        "ingest_failed": failed,
        "received": len(latencies),
        "missing": len(acked) - len(latencies),
        "receiver_posts": posts,
        "latency_s": spread(latencies),
        "ingest_request_s": spread(list(took.values())),
        "nudge_cpu_pct": round(100 * cpu / wall),
        **_stages(db, "ping-"),
    }


# --- report ------------------------------------------------------------------------------


def dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def fs_type(path: Path) -> str:
    real = os.path.realpath(path)
    best, kind = "", "?"
    with contextlib.suppress(OSError), open("/proc/mounts") as f:
        for line in f:
            mount, fstype = line.split()[1:3]
            if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(
                best
            ):
                best, kind = mount, fstype
    return kind


def machine_info(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "sqlite_synchronous": args.synchronous,
        "db_filesystem": fs_type(tmp),
        **{
            name: dist_version(name)
            for name in ("aiohttp", "httpx", "httpx-aiohttp", "sqlalchemy", "uvicorn", "uvloop")
        },
    }


def _ratio(baselines: list[dict[str, Any]], client: str) -> float | None:
    """A client's own requests/s at the highest concurrency over the lowest (no delay)."""
    rates = {
        b["concurrency"]: b["per_s"]
        for b in baselines
        if b["client"] == client and not b.get("delay_ms")
    }
    low, high = rates.get(min(CONCURRENCIES)), rates.get(max(CONCURRENCIES))
    return high / low if low and high is not None else None


def judge(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per goal: figure, goal, met."""
    rows: list[dict[str, Any]] = []
    runs = [r for r in result["outbox"] if r["name"] != "profile"]
    outbox = {r["concurrency"]: r for r in runs if not r["delay_ms"]}
    for c, r in sorted(outbox.items()):
        rows.append(
            {
                "figure": f"outbox deliveries/s, c={c}",
                "value": f"{r['per_s']:,.0f}/s" + ("" if r["complete"] else " (timed out)"),
                "goal": f">= {GOAL_DELIVERIES_PER_S:,}/s",
                "met": r["per_s"] >= GOAL_DELIVERIES_PER_S and r["complete"],
            }
        )
    low, high = outbox.get(min(CONCURRENCIES)), outbox.get(max(CONCURRENCIES))
    if low and high and low["per_s"]:
        ratio = high["per_s"] / low["per_s"]
        result["collapse_ratio_200_10"] = round(ratio, 3)
        clients = sorted(
            {b["client"] for b in result["baselines"] if b["client"] != "httpx"}
        )  # bare httpx (default transport) is the collapse itself: 0 at 200
        beside = ", ".join(
            f"{c} {r:.2f}x" for c in clients if (r := _ratio(result["baselines"], c)) is not None
        )
        rows.append(
            {
                "figure": "no collapse: deliveries/s c=200 / c=10",
                "value": f"{ratio:.2f}x" + (f" (clients alone: {beside})" if beside else ""),
                "goal": f">= {GOAL_NO_COLLAPSE:.1f}x",
                "met": ratio >= GOAL_NO_COLLAPSE,
            }
        )
    for r in runs:
        if r["delay_ms"]:
            rows.append(
                {
                    "figure": f"outbox, receiver +{r['delay_ms']:g} ms, c={r['concurrency']}",
                    "value": f"{r['per_s']:,.0f}/s" + ("" if r["complete"] else " (timed out)"),
                    "goal": f">= {GOAL_DELAYED_PER_S:,}/s",
                    "met": r["per_s"] >= GOAL_DELAYED_PER_S and r["complete"],
                }
            )
    for r in result.get("pool", []):
        rows.append(
            {
                "figure": f"outbox deliveries/s, {r['processes']} processes, c={r['concurrency']}",
                "value": f"{r['per_s']:,.0f}/s" + ("" if r["complete"] else " (timed out)"),
                "goal": f">= {GOAL_DELIVERIES_PER_S:,}/s",
                "met": r["per_s"] >= GOAL_DELIVERIES_PER_S and r["complete"],
            }
        )
    lat = result.get("latency")
    if lat and lat.get("latency_s"):
        s = lat["latency_s"]
        rows.append(
            {
                "figure": f"event -> delivery p99 at {lat['rate_per_s']:g} events/s",
                "value": f"{s['p99'] * 1000:,.0f} ms (p50 {s['p50'] * 1000:,.0f}, "
                f"max {s['max'] * 1000:,.0f}; {lat['missing']} missing)",
                "goal": f"< {GOAL_P99_S * 1000:,.0f} ms",
                "met": s["p99"] < GOAL_P99_S and lat["missing"] == 0,
            }
        )
    return rows


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    if not console.is_terminal:
        console = Console(soft_wrap=True, width=150)  # wide enough for the tables in a log
    m = result["machine"]
    console.print("[bold]Nudge delivery benchmark[/bold]")
    console.print(
        f"  machine : {m['platform']}, {m['cpus']} CPUs ({m['cpus_usable']} usable), {m['cpu']}, "
        f"load average at start {' '.join(str(x) for x in m['loadavg_at_start'])}",
        highlight=False,
    )
    console.print(
        f"  python  : {m['python']}; aiohttp {m['aiohttp']}, httpx {m['httpx']}, httpx-aiohttp "
        f"{m['httpx-aiohttp']}, sqlalchemy {m['sqlalchemy']}, uvicorn {m['uvicorn']}",
        highlight=False,
    )
    console.print(
        f"  sqlite  : {m['sqlite']}, WAL, synchronous={m['sqlite_synchronous']}, database on "
        f"{m['db_filesystem']}",
        highlight=False,
    )
    capacity = result.get("receiver_capacity_per_s")
    console.print(
        "  receiver: raw asyncio HTTP/1.1 (uvloop) in its own process; "
        + (f"{capacity:,.0f} req/s under wrk -c50" if capacity else "capacity not measured")
        + f"; bodies {BODY_BYTES:,} bytes, signed per request",
        highlight=False,
    )
    console.print()

    base = Table(title="HTTP clients alone: requests/s (CPU us per request)")
    base.add_column("client")
    levels = sorted({(b["delay_ms"], b["concurrency"]) for b in result["baselines"]})
    for delay, c in levels:
        base.add_column(f"c={c}" + (f" +{delay:g}ms" if delay else ""), justify="right")
    for kind, label in CLIENTS.items():
        cells = []
        for delay, c in levels:
            hit = [
                b
                for b in result["baselines"]
                if (b["client"], b["delay_ms"], b["concurrency"]) == (kind, delay, c)
            ]
            cells.append(
                f"{hit[0]['per_s']:,.0f} ({hit[0]['cpu_us_per_request']:,})" if hit else "-"
            )
        base.add_row(label, *cells)
    console.print(base)

    by = {(b["client"], b["delay_ms"], b["concurrency"]): b["per_s"] for b in result["baselines"]}
    out = Table(title="Full outbox path: Dispatcher(engine).run on SQLite")
    for name in ("concurrency", "receiver", "delivered", "deliveries/s", "vs (c)", "vs (a)"):
        out.add_column(name, justify="right")
    for name in ("claim/record % wall", "rows/record", "CPU us/delivery", "CPU this/recv/other"):
        out.add_column(name, justify="right")
    for r in result["outbox"]:
        c, delay = r["concurrency"], r["delay_ms"]
        ref_c, ref_a = by.get(("httpx+aiohttp", delay, c)), by.get(("aiohttp", delay, c))
        out.add_row(
            str(c),
            f"+{delay:g} ms" if delay else "0 ms",
            f"{r['delivered']:,}/{r['messages']:,}",
            f"{r['per_s']:,.0f}",
            f"{r['per_s'] / ref_c:.2f}x" if ref_c else "-",
            f"{r['per_s'] / ref_a:.2f}x" if ref_a else "-",
            f"{r['claim_pct_of_wall']:.0f}% / {r['record_pct_of_wall']:.0f}%",
            f"{r['rows_per_record']:,.0f}",
            f"{r['cpu_us_per_delivery']:,}",
            f"{r['bench_cpu_pct']}% / {r['receiver_cpu_pct']}% / {r['other_cpu_pct']}%",
        )
    console.print(out)
    for r in result["outbox"]:
        odd = {k: v for k, v in r["outbox_statuses"].items() if k != "delivered"}
        if odd or r["receiver_duplicates"] or r["receiver_posts"] != r["delivered"]:
            console.print(
                f"  c={r['concurrency']}: outbox {r['outbox_statuses']}, receiver got "
                f"{r['receiver_posts']:,} POSTs ({r['receiver_duplicates']} duplicates)",
                highlight=False,
            )
    console.print(
        "  claim / record = time in Dispatcher._claim / _record (store worker threads) over "
        "the run's wall time; CPU = process CPU time / wall time (100% = one core); other = "
        "every other process on the machine meanwhile."
    )
    per = [r["cpu_us_per_delivery"] for r in result["outbox"] if not r["delay_ms"]]
    if per:
        console.print(
            f"  one event loop and one GIL: at 100% of one core, {GOAL_DELIVERIES_PER_S:,}/s "
            f"leaves {1e6 / GOAL_DELIVERIES_PER_S:,.0f} CPU us per delivery; the full path "
            f"used {min(per):,}-{max(per):,} (clients alone: see the table above)",
            highlight=False,
        )
    alone = result.get("store_alone")
    if alone:
        console.print(
            f"  store steps alone (Dispatcher._claim + _record, no HTTP, one thread, batches of "
            f"{alone['batch_size']}): {alone['rows_per_s']:,.0f} rows/s; claim "
            f"{alone['claim_us_per_row']:,.0f} us/row, record {alone['record_us_per_row']:,.0f} "
            "us/row",
            highlight=False,
        )
    busy = [
        f"{b['client']} c={b['concurrency']}"
        for b in result["baselines"]
        if b["other_cpu_pct"] > OTHER_CPU_WARN_PCT
    ] + [f"outbox {r['name']}" for r in result["outbox"] if r["other_cpu_pct"] > OTHER_CPU_WARN_PCT]
    if busy:
        console.print(
            f"  [yellow]WARNING: other processes used > {OTHER_CPU_WARN_PCT:g}% of a core during: "
            f"{', '.join(busy)}; those figures are not reliable[/yellow]",
            highlight=False,
        )

    lat = result.get("latency")
    if lat:
        console.print()
        console.print(
            f"[bold]Event -> delivery[/bold] (nudge run, {lat['rate_per_s']:g} events/s for "
            f"{lat['seconds']:g}s, sent in {lat['sent_for_s']}s): {lat['received']:,} of "
            f"{lat['acked']:,} acknowledged events delivered ({lat['missing']} missing, "
            f"{lat['ingest_failed']} ingest failures); nudge run CPU {lat['nudge_cpu_pct']}%",
            highlight=False,
        )
        rows = [("POST 200 -> webhook received", lat["latency_s"])]
        rows.append(("ingest POST itself", lat["ingest_request_s"]))
        rows += [(f"  stage: {k.replace('_', ' ')}", v) for k, v in lat["stages_s"].items()]
        table = Table()
        for name in ("interval", "p50 ms", "p90 ms", "p99 ms", "max ms"):
            table.add_column(name, justify="right" if name != "interval" else "left")
        for label, s in rows:
            if s:
                table.add_row(label, *(f"{s[k] * 1000:,.0f}" for k in ("p50", "p90", "p99", "max")))
        console.print(table)
        console.print(
            f"  decisions {lat['decisions']}, outbox {lat['outbox']}; stages from the engine's "
            "own timestamps (events.received_at, journeys.created_at, messages.created_at, "
            "outbox.delivered_at = when the POST started)",
            highlight=False,
        )

    console.print()
    goals = Table(title="Goals")
    for name in ("figure", "measured", "goal", ""):
        goals.add_column(name)
    for row in result["goals"]:
        mark = "[green]met[/green]" if row["met"] else "[red]NOT met[/red]"
        goals.add_row(row["figure"], row["value"], row["goal"], mark)
    console.print(goals)
    for r in result["outbox"]:
        if "profile" in r:
            console.print()
            console.print(f"[bold]Profile of an outbox run at c={r['concurrency']}[/bold]")
            console.print(r["profile"], highlight=False, markup=False)


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Nudge delivery benchmark (outbox, webhooks).")
    parser.add_argument("--quick", action="store_true", help="shorter runs (~1 minute)")
    parser.add_argument("--messages", type=int, help="outbox messages per run (20000; 5000)")
    parser.add_argument("--baseline-seconds", type=float, help="seconds per baseline (2; 1)")
    parser.add_argument("--rate", type=float, default=100, help="events/s for latency (100)")
    parser.add_argument("--latency-seconds", type=float, help="seconds of load (20; 8)")
    parser.add_argument("--delay-ms", type=float, default=100, help="slow receiver delay (100)")
    parser.add_argument(
        "--synchronous", choices=["full", "normal"], default="full", help="sqlite_synchronous"
    )
    parser.add_argument("--timeout", type=float, help="max seconds per outbox run (30; 15)")
    parser.add_argument("--skip", action="append", default=[], choices=["baselines", "latency"])
    parser.add_argument("--profile", action="store_true", help="profile an outbox run (c=50)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    quick = args.quick
    args.messages = args.messages or (5_000 if quick else 20_000)
    args.baseline_seconds = args.baseline_seconds or (1.0 if quick else 2.0)
    args.latency_seconds = args.latency_seconds or (8.0 if quick else 20.0)
    args.timeout = args.timeout or (15.0 if quick else 30.0)
    return args


@contextlib.contextmanager
def receivers() -> Iterator[list[Receiver]]:
    """The receivers started inside the block, each stopped (by its PID) at the end."""
    started: list[Receiver] = []
    try:
        yield started
    finally:
        for receiver in started:
            receiver.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for key in [k for k in os.environ if k.startswith("NUDGE_")]:
        del os.environ[key]  # they would override the bench's settings
    tmp = Path(tempfile.mkdtemp(prefix="nudge-bench-dispatch-"))
    secret = new_secret()
    lifetime = 900.0  # the receivers' safety net: gone after 15 minutes whatever happens
    result: dict[str, Any] = {"machine": machine_info(tmp, args), "args": vars(args)}
    started = time.monotonic()
    try:
        with receivers() as running:
            fast = Receiver(lifetime=lifetime)
            running.append(fast)
            slow = Receiver(delay_ms=args.delay_ms, lifetime=lifetime)
            running.append(slow)
            log("receiver capacity (wrk)...")
            result["receiver_capacity_per_s"] = receiver_capacity(fast, tmp, 1 if args.quick else 2)
            result["baselines"] = []
            if "baselines" not in args.skip:
                log("baselines...")
                result["baselines"] = baselines(fast, secret, args.baseline_seconds, CONCURRENCIES)
                result["baselines"] += baselines(
                    slow, secret, args.baseline_seconds, (200,), ("aiohttp", "httpx+aiohttp")
                )
            log(f"full outbox path, {args.messages:,} messages per run...")
            result["outbox"] = [
                outbox_run(
                    tmp, f"c{c}", fast, secret, c, args.messages, args.synchronous, args.timeout
                )
                for c in CONCURRENCIES
            ]
            result["outbox"].append(
                outbox_run(
                    tmp,
                    "slow",
                    slow,
                    secret,
                    200,
                    args.messages // 2,
                    args.synchronous,
                    args.timeout,
                )
            )
            log("full outbox path, 2 dispatcher processes (delivery.processes: 2)...")
            result["pool"] = [
                pool_run(
                    tmp,
                    f"pool{c}",
                    fast,
                    secret,
                    c,
                    2,
                    args.messages,
                    args.synchronous,
                    args.timeout,
                )
                for c in (50, 200)
            ]
            result["store_alone"] = store_alone(
                tmp, fast.url, secret, min(args.messages, 4000), args.synchronous
            )
            if "latency" not in args.skip:
                log(f"event -> delivery latency, {args.rate:g} events/s...")
                recording = Receiver(record=True, lifetime=lifetime)
                running.append(recording)
                result["latency"] = latency_run(
                    tmp, recording, secret, args.rate, args.latency_seconds, args.synchronous
                )
            if args.profile:
                log("profiled outbox run (c=50)...")
                result["outbox"].append(
                    outbox_run(
                        tmp,
                        "profile",
                        fast,
                        secret,
                        50,
                        args.messages,
                        args.synchronous,
                        args.timeout * 3,
                        profile=True,
                    )
                )
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["goals"] = judge(result)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_report(result)
        print(f"\n(whole run: {result['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
