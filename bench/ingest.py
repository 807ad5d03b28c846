"""Ingest benchmark: Nudge's durable ``/v1/track`` and ``/v1/batch`` against a bare endpoint.

One run measures, with the same load generator (wrk, in its own process) and the same uvicorn
settings (one worker, loop and HTTP parser as ``uvicorn[standard]`` picks them):

* ``bare``: a FastAPI app whose endpoints only read the body and parse it with orjson;
* ``serve``: ``nudge serve`` (HTTP only); every 200 is sent after the SQLite commit;
* ``run``: ``nudge run`` (HTTP plus the event processor on the same database), unless
  ``--no-run``.

Every request carries realistic Segment e-commerce track calls, each with a unique
``messageId`` (wrk thread id plus a per-thread counter), so that dedupe never turns an insert
into a no-op. After each engine stops, the rows in ``events`` are counted per scenario (one
write key, so one ``source``, per scenario) and compared with the 2xx answers wrk counted.

    .venv/bin/python bench/ingest.py [--duration 10] [--connections 32] [--json]

Read the figures with two caveats that the report prints where it can: the machine should be
otherwise idle (the CPU used by other processes meanwhile is measured and warned about), and
each engine starts from an empty database, while SQLite's cost per insert grows with the size
of the (source, messageId) unique index, whose keys are random.

The exit status is 1 if an acknowledged event is missing from the database, 2 if a scenario
could not run (what did run is still printed); a missed goal is reported, not an error.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

import httpx

GOAL_BATCH_EVENTS_PER_S = 15_000
GOAL_TRACK_VS_BARE = 0.40
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
OTHER_CPU_WARN_PCT = 10.0
MARKER = "@@nudge-bench "
CLK_TCK = os.sysconf("SC_CLK_TCK")

# One source per phase, so that the rows of each scenario can be counted afterwards. Literal
# keys are fine here: they live in a throw-away config in a temp dir.
KEYS = {
    "bench-warmup": "wk_bench_warmup",
    "bench-track": "wk_bench_track",
    "bench-batch": "wk_bench_batch",
}

# The wrk script. Arguments: events per request (1: one event for /v1/track, else a Segment
# batch) and the Basic credentials. ``setup`` runs in wrk's main Lua state and numbers the
# threads; ``issued`` counts the requests each thread generated. wrk generates one extra
# request on thread 0 to validate the script and never sends it (wrk.c, main), hence
# ``issued - 1`` requests sent. messageIds look like random v4 UUIDs, as analytics.js sends
# them, so inserts land all over the unique index; thread id and counter make them unique.
WRK_LUA = r"""
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

issued = 0
body_bytes = 0
local counter = 0
local per_request = 1

local EVENTS = {"Product Viewed", "Product Viewed", "Product Viewed", "Product Added"}
local PRODUCTS = {
  {"Organic Cotton T-Shirt", "Apparel", "Northwind", 24.99},
  {"Merino Wool Beanie", "Accessories", "Fjallstrom", 32.00},
  {"Ceramic Pour-Over Set", "Kitchen", "Hearth & Co", 58.50},
  {"Trail Running Shoes", "Footwear", "Stridewell", 129.95},
  {"Linen Throw Pillow", "Home", "Casa Verde", 39.00},
  {"Insulated Water Bottle", "Outdoor", "Summit Gear", 27.49},
}
local TRACK = '{"type":"track","messageId":"%08x-%04x-4%03x-a%03x-%012x",'
  .. '"userId":"user-%d","anonymousId":"%08x-5d1c-4e2b-9a3d-%012x","event":"%s",'
  .. '"properties":{"product_id":"sku-%05d","name":"%s","category":"%s","brand":"%s",'
  .. '"price":%.2f,"currency":"USD","quantity":%d},'
  .. '"context":{"library":{"name":"analytics.js","version":"next-1.70.0"},'
  .. '"ip":"203.0.113.%d","page":{"path":"/products/sku-%05d"},'
  .. '"userAgent":"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) Safari/605.1.15"},'
  .. '"timestamp":"%s","sentAt":"%s"}'

function init(args)
  per_request = tonumber(args[1])
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Basic " .. args[2]
  math.randomseed(os.time() + 7919 * tid)
end

local function event(now)
  counter = counter + 1
  local user = math.random(1, 20000)
  local sku = math.random(1, 5000)
  local p = PRODUCTS[sku % #PRODUCTS + 1]
  return string.format(TRACK,
    math.random(0, 0x7fffffff), tid, math.random(0, 0xfff), math.random(0, 0xfff), counter,
    user, user * 2654435761 % 0x7fffffff, user, EVENTS[counter % #EVENTS + 1],
    sku, p[1], p[2], p[3], p[4], math.random(1, 3), user % 250 + 1, sku, now, now)
end

function request()
  issued = issued + 1
  local now = os.date("!%Y-%m-%dT%H:%M:%S.000Z")
  local body
  if per_request == 1 then
    body = event(now)
  else
    local parts = {}
    for i = 1, per_request do
      parts[i] = event(now)
    end
    body = '{"batch":[' .. table.concat(parts, ",") .. '],"sentAt":"' .. now .. '"}'
  end
  body_bytes = body_bytes + #body
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local issued, sent_bytes = 0, 0
  for _, t in ipairs(threads) do
    issued = issued + t:get("issued")
    sent_bytes = sent_bytes + t:get("body_bytes")
  end
  local e = summary.errors
  local figures = {
    duration_us = summary.duration, requests = summary.requests, bytes = summary.bytes,
    issued = issued, body_bytes = sent_bytes, connect = e.connect, read = e.read,
    write = e.write, status = e.status, timeout = e.timeout,
    p50_us = latency:percentile(50), p90_us = latency:percentile(90),
    p99_us = latency:percentile(99), max_us = latency.max, mean_us = latency.mean,
  }
  local parts = {}
  for k, v in pairs(figures) do
    parts[#parts + 1] = string.format('"%s":%.17g', k, v)
  end
  io.write("@@nudge-bench {" .. table.concat(parts, ",") .. "}\n")
end
"""

# The reference: same framework, same server settings; no auth, validation or database.
BARE_APP = """
import sys

import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

app = FastAPI()
_OK = b'{"success":true}'


async def bare(request: Request) -> Response:
    body = await request.body()
    orjson.loads(body)
    return Response(_OK, media_type="application/json")


app.add_api_route("/v1/track", bare, methods=["POST"])
app.add_api_route("/v1/batch", bare, methods=["POST"])


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="info", access_log=False)
"""


@dataclass
class Result:
    scenario: str
    target: str  # bare | serve | run
    path: str
    events_per_request: int
    duration_s: float
    requests: int  # answered (any status)
    non_2xx: int
    socket_errors: int
    sent_requests: int  # written by wrk, answered or not
    rps: float
    events_per_s: float  # events in 2xx answers per second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    event_bytes: float
    server_cpu_pct: float  # of one core
    wrk_cpu_pct: float
    other_cpu_pct: float  # everything else on the machine meanwhile
    pending_after: int | None = None
    rows: int | None = None
    durable: bool | None = None
    durability: str | None = None
    vs_bare: float | None = None
    goal: str | None = None
    goal_met: bool | None = None

    @property
    def acked_events(self) -> int:
        return (self.requests - self.non_2xx) * self.events_per_request

    def check_durability(self, rows: int) -> None:
        """Compare the stored rows with the events acknowledged with a 2xx.

        A request in flight when wrk's clock ran out has been sent but its answer was never
        read; the server still commits it (and answers into a closed socket). So the rows may
        exceed the acknowledged events by the events of those requests, and no more; fewer
        rows than acknowledged events means an acknowledged event was lost.
        """
        acked = self.acked_events
        sent = self.sent_requests * self.events_per_request
        self.rows = rows
        self.durable = acked <= rows <= sent
        if rows < acked:
            self.durability = f"LOST: {rows:,} rows < {acked:,} events acknowledged"
        elif rows == acked:
            self.durability = f"OK: {rows:,} rows = {acked:,} events acknowledged 2xx"
        elif rows <= sent:
            unanswered = self.sent_requests - self.requests
            self.durability = (
                f"OK: {rows:,} rows = {acked:,} acknowledged 2xx + {rows - acked:,} from the "
                f"{unanswered} requests in flight when wrk stopped (sent {sent:,})"
            )
        else:
            self.durability = f"EXTRA: {rows:,} rows > {sent:,} events sent"


class Server:
    """A server subprocess started by this script; stopped through its own PID only."""

    def __init__(self, name: str, argv: list[str], log_path: str, cwd: str) -> None:
        self.name = name
        self.log_path = log_path
        # NUDGE_* variables would override the bench's config file.
        env = {k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")}
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    def wait_ready(self, url: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready in {READY_TIMEOUT_S:.0f}s:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the server process, all threads."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> int | None:
        """SIGTERM (uvicorn shuts down gracefully, the ingest writer commits), then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    # guest time is already included in user time
    return (sum(values[:8]) - idle) / CLK_TCK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: installing Debian's wrk with apt-get", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env, stdout=subprocess.DEVNULL
    )
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is still not on PATH after apt-get install wrk")
    return found


def nudge_command() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "nudge")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nudge")
    if not found:
        raise SystemExit("the nudge command was not found (run this with .venv/bin/python)")
    return found


class Bench:
    def __init__(self, args: argparse.Namespace, wrk: str, tmp: str) -> None:
        self.args = args
        self.wrk = wrk
        self.tmp = tmp
        self.script = os.path.join(tmp, "ingest.lua")
        with open(self.script, "w") as f:
            f.write(WRK_LUA)
        self.servers: list[Server] = []
        self.wrk_output: list[str] = []
        self.drain: dict[str, Any] | None = None

    def start(self, name: str, argv: list[str], cwd: str, ready_url: str) -> Server:
        server = Server(name, argv, os.path.join(cwd, "server.log"), cwd)
        self.servers.append(server)
        server.wait_ready(ready_url)
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()

    def wrk_run(self, url: str, seconds: int, per: int, key: str) -> dict[str, Any]:
        """Run wrk against ``url``; its figures plus wall time and wrk's own CPU seconds."""
        args = self.args
        argv = [
            self.wrk,
            f"-t{args.threads}",
            f"-c{args.connections}",
            f"-d{seconds}s",
            "--timeout",
            "30s",
            "--latency",
            "-s",
            self.script,
            url,
            "--",
            str(per),
            base64.b64encode(f"{key}:".encode()).decode(),
        ]
        before, start = os.times(), time.monotonic()
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        wall, after = time.monotonic() - start, os.times()
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
        self.wrk_output.append(f"--- wrk {url} ({seconds}s) ---\n{done.stdout}")
        for line in done.stdout.splitlines():
            if line.startswith(MARKER):
                figures: dict[str, Any] = json.loads(line[len(MARKER) :])
                figures["wall_s"] = wall
                figures["cpu_s"] = (after.children_user - before.children_user) + (
                    after.children_system - before.children_system
                )
                return figures
        raise RuntimeError(f"no figures in wrk's output:\n{done.stdout}\n{done.stderr}")

    def measure(self, server: Server, base: str, target: str, kind: str) -> Result:
        args = self.args
        path = f"/v1/{kind}"
        per = 1 if kind == "track" else args.batch_size
        preflight(base, path, per)
        if args.warmup > 0:
            self.wrk_run(base + path, args.warmup, per, KEYS["bench-warmup"])
        server_before, machine_before = server.cpu_seconds(), machine_busy_seconds()
        f = self.wrk_run(base + path, args.duration, per, KEYS[f"bench-{kind}"])
        server_cpu = server.cpu_seconds() - server_before
        other_cpu = machine_busy_seconds() - machine_before - server_cpu - f["cpu_s"]
        seconds = f["duration_us"] / 1e6
        wall = f["wall_s"]
        result = Result(
            scenario=f"{target} {path}",
            target=target,
            path=path,
            events_per_request=per,
            duration_s=round(seconds, 3),
            requests=f["requests"],
            non_2xx=f["status"],
            socket_errors=sum(f[k] for k in ("connect", "read", "write", "timeout")),
            sent_requests=f["issued"] - 1,
            rps=f["requests"] / seconds,
            events_per_s=(f["requests"] - f["status"]) * per / seconds,
            p50_ms=f["p50_us"] / 1000,
            p90_ms=f["p90_us"] / 1000,
            p99_ms=f["p99_us"] / 1000,
            max_ms=f["max_us"] / 1000,
            event_bytes=f["body_bytes"] / max(f["issued"] * per, 1),
            server_cpu_pct=100 * server_cpu / wall,
            wrk_cpu_pct=100 * f["cpu_s"] / wall,
            other_cpu_pct=max(0.0, 100 * other_cpu / wall),
        )
        if target != "bare":
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                result.pending_after = pending(base)
        return result

    def bare(self) -> list[Result]:
        home = os.path.join(self.tmp, "bare")
        os.makedirs(home)
        module = os.path.join(home, "bare_app.py")
        with open(module, "w") as f:
            f.write(BARE_APP)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        argv = [sys.executable, module, str(port)]
        server = self.start("bare app", argv, home, base + "/healthz")
        results = [self.measure(server, base, "bare", kind) for kind in ("track", "batch")]
        server.stop()
        return results

    def engine(self, mode: str) -> list[Result]:
        """``nudge serve`` or ``nudge run`` on a fresh database in the temp dir."""
        home = os.path.join(self.tmp, mode)
        for folder in ("rules", "templates"):
            os.makedirs(os.path.join(home, folder))
        db = os.path.join(home, "nudge.db")
        port = free_port()
        config = {
            "database_url": f"sqlite:///{db}",
            "sqlite_synchronous": self.args.synchronous,
            "server": {"host": "127.0.0.1", "port": port},
            "write_keys": [{"source": source, "key": key} for source, key in KEYS.items()],
            "rules_dir": os.path.join(home, "rules"),
            "templates_dir": os.path.join(home, "templates"),
            "log_level": "INFO",
        }
        config_path = os.path.join(home, "config.yaml")
        with open(config_path, "w") as f:
            json.dump(config, f, indent=2)  # JSON is YAML
        base = f"http://127.0.0.1:{port}"
        argv = [nudge_command(), mode, "--config", config_path]
        server = self.start(f"nudge {mode}", argv, home, base + "/healthz")
        results = [self.measure(server, base, mode, kind) for kind in ("track", "batch")]
        if mode == "run" and self.args.drain > 0:
            self.drain = drain(base, self.args.drain)
        code = server.stop()
        if code not in (0, -signal.SIGTERM):
            print(f"nudge {mode} exited with {code}:\n{server.log_tail()}", file=sys.stderr)
        with contextlib.closing(sqlite3.connect(db)) as conn:
            rows = dict(conn.execute("SELECT source, count(*) FROM events GROUP BY source"))
        for result in results:
            result.check_durability(rows.get("bench-" + result.path.rsplit("/", 1)[1], 0))
        return results


def pending(base: str) -> int:
    return int(httpx.get(base + "/healthz", timeout=10.0).json()["pending_events"])


def drain(base: str, seconds: float) -> dict[str, Any]:
    """How fast the processor of ``nudge run`` works off its backlog with no load."""
    start, first = time.monotonic(), pending(base)
    left, now = first, start
    while left and now - start < seconds:
        time.sleep(0.5)
        left, now = pending(base), time.monotonic()
    elapsed = now - start
    return {
        "pending_before": first,
        "pending_after": left,
        "seconds": round(elapsed, 2),
        "events_per_s": (first - left) / elapsed if elapsed else 0.0,
    }


def preflight(base: str, path: str, per: int) -> None:
    """One small request first, so that a configuration mistake fails loudly, not as 401s."""
    event = {"type": "track", "userId": "preflight", "event": "Bench Preflight"}
    body: dict[str, Any]
    if per == 1:
        body = {**event, "messageId": "preflight-track"}
    else:
        body = {"batch": [{**event, "messageId": f"preflight-batch-{i}"} for i in range(2)]}
    response = httpx.post(base + path, json=body, auth=(KEYS["bench-warmup"], ""), timeout=10.0)
    if response.status_code != 200:
        raise RuntimeError(f"preflight POST {path}: {response.status_code} {response.text}")


def judge(results: list[Result]) -> None:
    bare = {r.path: r for r in results if r.target == "bare"}
    for r in results:
        if r.target == "bare":
            continue
        reference = bare.get(r.path)
        if reference is not None and reference.rps:
            r.vs_bare = r.rps / reference.rps
        if r.path == "/v1/track" and r.vs_bare is not None:
            r.goal = f">= {GOAL_TRACK_VS_BARE:.2f}x bare req/s"
            r.goal_met = r.vs_bare >= GOAL_TRACK_VS_BARE
        elif r.path == "/v1/batch":
            r.goal = f">= {GOAL_BATCH_EVENTS_PER_S:,} events/s"
            r.goal_met = r.events_per_s >= GOAL_BATCH_EVENTS_PER_S


def fs_type(path: str) -> str:
    path = os.path.realpath(path)
    best, kind = "", "?"
    with contextlib.suppress(OSError), open("/proc/mounts") as f:
        for line in f:
            mount, fstype = line.split()[1:3]
            inside = path == mount or path.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, kind = mount, fstype
    return kind


def dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def machine_info(wrk: str, tmp: str, args: argparse.Namespace) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        if match:
            cpu = match.group(1).strip()
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    busy = machine_busy_seconds()
    time.sleep(1.0)
    busy = machine_busy_seconds() - busy
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "busy_before_pct": round(100 * busy),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "sqlite_synchronous": args.synchronous,
        "db_filesystem": fs_type(tmp),
        "wrk": (wrk_version.stdout or wrk_version.stderr).split("Copyright")[0].strip(),
        **{
            name: dist_version(name)
            for name in ("uvicorn", "uvloop", "httptools", "fastapi", "sqlalchemy", "orjson")
        },
    }


def print_report(
    info: dict[str, Any],
    results: list[Result],
    args: argparse.Namespace,
    drained: dict[str, Any] | None,
) -> None:
    sizes = sorted({round(r.event_bytes) for r in results})
    print("Nudge ingest benchmark")
    print(
        f"  machine : nproc {info['nproc']}, {info['cpu']}, Linux {info['kernel']}, "
        f"busy {info['busy_before_pct']}% of a core before the run (load average "
        f"{' '.join(str(x) for x in info['loadavg_at_start'])})"
    )
    print(
        f"  python  : {info['python']}; uvicorn {info['uvicorn']} (uvloop {info['uvloop']}, "
        f"httptools {info['httptools']}), fastapi {info['fastapi']}, "
        f"sqlalchemy {info['sqlalchemy']}, orjson {info['orjson']}"
    )
    print(
        f"  sqlite  : {info['sqlite']}, WAL, sqlite_synchronous={info['sqlite_synchronous']}, "
        f"database on {info['db_filesystem']}"
    )
    print(
        f"  load    : {info['wrk']} -t{args.threads} -c{args.connections}, {args.duration}s "
        f"per scenario after {args.warmup}s of warm-up; events of "
        f"{'-'.join(str(s) for s in sizes)} bytes; batch = {args.batch_size} events/request"
    )
    print()
    header = (
        f"{'scenario':<26}{'req/s':>9}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'CPU srv':>9}{'vs bare':>9}  goal"
    )
    print(header)
    print("-" * (len(header) + 32))
    for r in results:
        label = r.scenario + (" +processor" if r.target == "run" else "")
        ratio = f"{r.vs_bare:.2f}x" if r.vs_bare is not None else "-"
        goal = f"{r.goal}: {'PASS' if r.goal_met else 'FAIL'}" if r.goal else ""
        print(
            f"{label:<26}{r.rps:>9,.0f}{r.events_per_s:>10,.0f}{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}"
            f"{r.server_cpu_pct:>8.0f}%{ratio:>9}  {goal}"
        )
    print()
    print(
        "CPU srv = server process CPU time / wall time (100% = one core). "
        "wrk / other processes: "
        + ", ".join(f"{r.wrk_cpu_pct:.0f}%/{r.other_cpu_pct:.0f}%" for r in results)
    )
    for r in results:
        if r.non_2xx or r.socket_errors:
            print(f"  {r.scenario}: {r.non_2xx} non-2xx answers, {r.socket_errors} socket errors")
        if r.other_cpu_pct > OTHER_CPU_WARN_PCT:
            print(
                f"  WARNING: other processes used {r.other_cpu_pct:.0f}% of a core during "
                f"{r.scenario}: its figures are not reliable"
            )
    print()
    print("durability (rows in events once the engine stopped vs events acknowledged 2xx):")
    for r in results:
        if r.durability:
            print(f"  {r.scenario:<16} {r.durability}")
    for r in results:
        if r.target == "run" and r.pending_after is not None:
            print(f"  processor backlog after {r.scenario}: {r.pending_after:,} events pending")
    if drained:
        print(
            f"  processor with no load: {drained['events_per_s']:,.0f} events/s "
            f"({drained['pending_before']:,} -> {drained['pending_after']:,} pending "
            f"in {drained['seconds']}s)"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Nudge ingest benchmark (durable track/batch vs a bare endpoint, wrk)."
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario (10)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds (2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--batch-size", type=int, default=100, help="events per batch (100)")
    parser.add_argument(
        "--synchronous",
        choices=["full", "normal"],
        default="full",
        help="the engine's sqlite_synchronous (full)",
    )
    parser.add_argument("--no-run", action="store_true", help="skip `nudge run` (+processor)")
    parser.add_argument(
        "--drain",
        type=float,
        default=10,
        help="after `nudge run`, seconds to watch the processor work off its backlog (10)",
    )
    parser.add_argument("--dir", default=None, help="where to make the temp dir (database)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (db, logs)")
    parser.add_argument("--verbose", action="store_true", help="also print wrk's own output")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.connections < args.threads:
        parser.error("need 1 <= --threads <= --connections")
    if args.duration < 1 or args.batch_size < 2:
        parser.error("need --duration >= 1 and --batch-size >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = ensure_wrk()
    tmp = tempfile.mkdtemp(prefix="nudge-bench-", dir=args.dir)
    bench = Bench(args, wrk, tmp)
    results: list[Result] = []
    errors: list[str] = []
    targets = [("bare", bench.bare), ("serve", lambda: bench.engine("serve"))]
    if not args.no_run:
        targets.append(("run", lambda: bench.engine("run")))
    try:
        info = machine_info(wrk, tmp, args)
        for name, measure in targets:
            try:
                results += measure()
            except (RuntimeError, OSError, httpx.HTTPError, subprocess.SubprocessError) as exc:
                errors.append(f"{name}: {exc}")
    finally:
        bench.stop_all()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    judge(results)
    if args.verbose:
        print("\n".join(bench.wrk_output), file=sys.stderr)
    if args.json:
        doc = {
            "machine": info,
            "settings": {
                k: getattr(args, k)
                for k in ("duration", "warmup", "threads", "connections", "batch_size")
            },
            "goals": {
                "batch_events_per_s": GOAL_BATCH_EVENTS_PER_S,
                "track_vs_bare_rps": GOAL_TRACK_VS_BARE,
            },
            "results": [asdict(r) for r in results],
            "processor_drain": bench.drain,
            "errors": errors,
        }
        print(json.dumps(doc, indent=2))
    else:
        print_report(info, results, args, bench.drain)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        return 2
    # A missed goal is a figure; an acknowledged event missing from the database is a bug.
    return 0 if all(r.durable for r in results if r.durable is not None) else 1


if __name__ == "__main__":
    sys.exit(main())
