"""The ``nudge`` command."""

from __future__ import annotations

import base64
import dataclasses
import gc
import json
import logging
import os
import secrets
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from engine.clock import SystemClock
from engine.config import Settings, describe_settings, load_settings
from engine.errors import NudgeError
from engine.service import Engine, customer_profile

__all__ = ["app", "main"]

app = typer.Typer(no_args_is_help=True, help="Nudge: trigger-driven marketing automation.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
customers_app = typer.Typer(no_args_is_help=True, help="Customer profiles.")
secrets_app = typer.Typer(no_args_is_help=True, help="Local development secrets.")
deliveries_app = typer.Typer(no_args_is_help=True, help="The outbox: deliveries and dead letters.")
intelligence_app = typer.Typer(no_args_is_help=True, help="RFM, habits and predictions.")
app.add_typer(db_app, name="db")
app.add_typer(customers_app, name="customers")
app.add_typer(secrets_app, name="secrets")
app.add_typer(deliveries_app, name="deliveries")
app.add_typer(intelligence_app, name="intelligence")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Settings file (default: $NUDGE_CONFIG or ./config.yaml)."),
]

console = Console(soft_wrap=True)


def _settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except NudgeError as exc:
        console.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2) from exc


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Per-tick and per-migration chatter stays out of the operator's log unless debugging.
    quiet = logging.DEBUG if settings.log_level == "DEBUG" else logging.WARNING
    for name in ("apscheduler", "alembic", "httpx"):
        logging.getLogger(name).setLevel(quiet)


def _engine(settings: Settings, *, upgrade: bool = True, rules: bool = False) -> Engine:
    from engine.store import create_store

    store = create_store(settings, SystemClock())
    if upgrade:
        store.upgrade()
    engine = Engine(settings=settings, store=store, clock=store.clock)
    if rules:
        engine.rules.reload()
        # SIGHUP reloads the rules (and templates) without a restart.
        signal.signal(signal.SIGHUP, lambda *_: engine.rules.reload())
    return engine


def _server_overrides(settings: Settings, host: str | None, port: int | None) -> dict[str, Any]:
    server = settings.server.model_dump()
    if host is not None:
        server["host"] = host
    if port is not None:
        server["port"] = port
    return {"server": server}


def _banner(settings: Settings) -> None:
    url = f"http://{settings.server.host}:{settings.server.port}"
    console.print(f"[bold]Nudge[/bold] is running on [cyan]{url}[/cyan]", highlight=False)
    console.print(f"  ingest:   {url}/v1/track, {url}/v1/batch (Segment-compatible)")
    console.print(f"  database: {settings.database_url}", highlight=False)
    console.print(f"  API docs: {url}/docs")
    if settings.write_keys:
        key = settings.write_keys[0].key.get_secret_value()
        console.print(
            f"  write key (source {settings.write_keys[0].source!r}): {key}", highlight=False
        )
        console.print("  try it:", highlight=False)
        console.print(
            f"    curl -u '{key}:' -H 'Content-Type: application/json' {url}/v1/track \\\n"
            '      -d \'{"userId": "alice", "event": "Product Viewed", '
            '"properties": {"product_id": "sku-1", "price": 25}}\'',
            highlight=False,
            soft_wrap=True,
        )
        console.print(f"    nudge customers show alice   (or GET {url}/api/customers/alice)")
        console.print(f"    nudge demo --events 2000 --live --url {url}")
    else:
        console.print(
            "  [yellow]no write_keys configured: the ingest API refuses every call[/yellow]"
        )


def _sink_secrets(settings: Settings) -> list[str]:
    return sorted(
        {
            e.secret.get_secret_value()
            for channel in settings.channels.values()
            for e in channel.endpoints
        }
    )


def _start_sink(settings: Settings, port: int) -> threading.Thread:
    """The demo receiver on its own thread (``nudge run --sink``)."""
    import uvicorn

    from engine.web.sink import create_sink_app

    server = uvicorn.Server(
        uvicorn.Config(
            create_sink_app(_sink_secrets(settings), console=console),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, name="nudge-sink", daemon=True)
    thread.start()
    console.print(f"  sink:     http://127.0.0.1:{port}/ prints each delivered message")
    return thread


def _serve(
    config: Path | None,
    host: str | None,
    port: int | None,
    *,
    background: bool,
    sink: int | None = None,
) -> None:
    """The HTTP server, with (``run``) or without (``serve``) the background work."""
    import uvicorn

    from engine.delivery import DispatcherPool
    from engine.scheduler import EngineScheduler
    from engine.web import create_app

    settings = _settings(config)
    settings = _settings(config, **_server_overrides(settings, host, port))
    _logging(settings)
    engine = _engine(settings, rules=True)  # serve: for GET /api/rules and reloads
    scheduler = EngineScheduler(engine) if background else None
    dispatcher = DispatcherPool(engine) if background else None
    if scheduler is not None and dispatcher is not None:
        if sink is not None:
            _start_sink(settings, sink)
        scheduler.start()
        dispatcher.start()
        _banner(settings)
        _rules_summary(engine)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(engine),
            host=settings.server.host,
            port=settings.server.port,
            log_level=settings.log_level.lower(),
            access_log=False,
        )
    )
    gc.freeze()  # the long-lived heap is built: keep full collections off the request path
    try:
        server.run()
    finally:
        if scheduler is not None:
            scheduler.shutdown()
        if dispatcher is not None:
            dispatcher.stop()
        engine.store.close()


@app.command()
def run(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
    sink: Annotated[
        int | None,
        typer.Option(help="Also run the demo webhook receiver on this port (e.g. 8025)."),
    ] = None,
) -> None:
    """Run everything in one process: HTTP API, event processing, the scheduler and the
    dispatcher."""
    _serve(config, host, port, background=True, sink=sink)


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
) -> None:
    """Run the HTTP API alone (ingest, API); pair with `nudge worker` processes."""
    _serve(config, host, port, background=False)


@app.command()
def worker(
    config: ConfigOption = None,
    once: Annotated[bool, typer.Option(help="Process what is pending, then exit.")] = False,
) -> None:
    """Run the background work (events, journeys, schedules, deliveries) without the HTTP
    API."""
    import asyncio

    from engine.delivery import Dispatcher, DispatcherPool
    from engine.scheduler import EngineScheduler

    settings = _settings(config)
    _logging(settings)
    engine = _engine(settings, rules=True)
    scheduler = EngineScheduler(engine)
    if once:
        done = scheduler.run_pending()

        async def deliver() -> int:
            dispatcher = Dispatcher(engine)
            total = 0
            try:
                while handled := await dispatcher.dispatch_once():
                    total += handled
            finally:
                await dispatcher.poster.aclose()
            return total

        delivered = asyncio.run(deliver())
        console.print(f"processed {done['process-events']} events")
        console.print(
            f"started {done['run-schedules']} scheduled journeys, "
            f"decided {done['fire-due-steps']} due steps, {delivered} delivery attempt(s)"
        )
        engine.store.close()
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    dispatcher = DispatcherPool(engine)
    scheduler.start()
    dispatcher.start()
    logging.getLogger(__name__).info("worker started")
    stop.wait()
    scheduler.shutdown()
    dispatcher.stop()
    engine.store.close()


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Create or migrate the database schema to the newest version."""
    settings = _settings(config)
    engine = _engine(settings)
    engine.store.close()
    console.print(f"database at {settings.database_url} is up to date", highlight=False)


@app.command("config")
def show_config(config: ConfigOption = None) -> None:
    """Print the effective settings (secrets masked) with each setting's help."""
    settings = _settings(config)
    table = Table("setting", "value", "help", title="Nudge settings")
    for key, value, help_text in describe_settings(settings):
        table.add_row(key, value, help_text)
    console.print(table)


@customers_app.command("show")
def customers_show(
    ref: Annotated[str, typer.Argument(help="Customer id, userId, anonymousId or email.")],
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    events: Annotated[int, typer.Option(help="How many recent events to show.")] = 10,
) -> None:
    """Show a customer's unified profile: identities, traits, stats, last events."""
    settings = _settings(config)
    engine = _engine(settings, upgrade=False)
    doc = customer_profile(engine, ref, events=events)
    engine.store.close()
    if doc is None:
        console.print(
            f"[red]no customer {ref!r}[/red] (looked up as id, userId, anonymousId, email)"
        )
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    _print_profile(doc)


def _print_profile(doc: dict[str, Any]) -> None:
    title = doc["user_id"] or doc["anonymous_id"] or str(doc["id"])
    console.rule(f"customer {title} (#{doc['id']})")
    idents = ", ".join(f"{i['kind']}:{i['value']}" for i in doc["identities"])
    console.print(f"identities: {idents}", highlight=False)
    table = Table("trait", "value", title="traits")
    for key, value in sorted(doc["traits"].items()):
        table.add_row(key, json.dumps(value, default=str))
    console.print(table)
    stats = Table("stat", "value", title="stats")
    for key, value in doc["stats"].items():
        stats.add_row(key, json.dumps(value))
    console.print(stats)
    counts = Table("event", "count", title="event counts")
    for key, value in doc["event_counts"].items():
        counts.add_row(key, str(value))
    console.print(counts)
    recent = Table("time", "type", "name", "properties", title="recent events")
    for event in doc["recent_events"]:
        recent.add_row(
            event["timestamp"],
            event["type"],
            event["name"] or "",
            json.dumps(event["properties"], default=str)[:80],
        )
    console.print(recent)
    journeys = Table("rule", "key", "status", "step", "due at", "note", title="journeys")
    for j in doc.get("journeys", []):
        journeys.add_row(
            j["rule"],
            j["key"] or j["instance"] or "",
            j["status"],
            str(j["next_step"] + 1),
            j["due_at"] or "",
            j["end_reason"] or "",
        )
    console.print(journeys)
    decisions = Table(
        "at", "rule", "step", "outcome", "channel", "template", "reason", title="decisions"
    )
    for d in doc.get("decisions", []):
        decisions.add_row(
            d["at"],
            d["rule"],
            str(d["step"] + 1) if d["step"] >= 0 else "-",
            d["outcome"],
            d["channel"] or "",
            d["template"] or "",
            d["reason"] or "",
        )
    console.print(decisions)


@secrets_app.command("init")
def secrets_init(
    folder: Annotated[Path, typer.Option(help="Where to write the secret files.")] = Path(
        ".secrets"
    ),
) -> None:
    """Create random local secrets (write key, admin token, Shopify secret, webhook signing
    secret) if missing."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    makers: dict[str, str] = {
        "write_key": "wk_" + secrets.token_urlsafe(24),
        "admin_token": "adm_" + secrets.token_urlsafe(24),
        "shopify_secret": secrets.token_hex(32),
        "webhook_secret": "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    for name, value in makers.items():
        path = folder / name
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(value + "\n")
            console.print(f"created {path}", highlight=False)


def _rules_summary(engine: Engine) -> None:
    rules = engine.rules.current
    console.print(
        f"  rules:    {len(rules.rules)} loaded from {engine.settings.rules_dir}/", highlight=False
    )
    for problem in rules.problems:
        colour = "red" if problem.severity == "error" else "yellow"
        console.print(f"  [{colour}]{problem}[/{colour}]", highlight=False)


@app.command()
def validate(
    path: Annotated[
        Path | None, typer.Argument(help="A rules folder or one rule file (default: rules_dir).")
    ] = None,
    config: ConfigOption = None,
    templates: Annotated[
        Path | None, typer.Option(help="Templates folder (default: templates_dir).")
    ] = None,
    output: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
) -> None:
    """Check rules and the templates they name; exit 1 if anything is wrong."""
    from engine.rules import load_rules
    from engine.service import make_renderer

    settings = _settings(config)
    target = path or settings.rules_dir
    templates_dir = templates or settings.templates_dir
    renderer, template_problems = make_renderer(
        settings.model_copy(update={"templates_dir": templates_dir})
    )
    options: dict[str, Any] = {"renderer": renderer, "sensitive": settings.sensitive}
    if target.is_file():
        result = load_rules(target.parent, templates_dir, paths=[target], **options)
    elif target.is_dir():
        result = load_rules(target, templates_dir, **options)
    else:
        console.print(f"[red]error:[/red] {target} is neither a file nor a folder", highlight=False)
        raise typer.Exit(2)
    result = dataclasses.replace(result, problems=(*template_problems, *result.problems))
    if output == "json":
        typer.echo(
            json.dumps(
                {
                    "ok": not result.errors,
                    "rules": [r.id for r in result.rules],
                    "problems": [p.to_dict() for p in result.problems],
                },
                indent=2,
            )
        )
    else:
        for problem in result.problems:
            typer.echo(str(problem))
        errors = len(result.errors)
        warnings = len(result.problems) - errors
        typer.echo(
            f"{len(result.rules)} rule(s) valid, {errors} error(s), {warnings} warning(s)",
            err=bool(errors),
        )
    if result.errors:
        raise typer.Exit(1)


@app.command()
def preview(
    rule_id: Annotated[str, typer.Argument(metavar="RULE", help="The rule id.")],
    customer: Annotated[str, typer.Option(help="Customer id, userId, anonymousId or email.")],
    event: Annotated[
        str | None,
        typer.Option(help='The trigger event as JSON ({"event": ..., "properties": ...}).'),
    ] = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show whether RULE matches a customer, every sub-expression's value, and when each
    step would fire."""
    from engine.context import TriggerFacts
    from engine.events import ECOMMERCE_ALIASES, parse_time
    from engine.preview import preview as run_preview
    from engine.service import customer_facts_for

    settings = _settings(config)
    engine = _engine(settings, upgrade=False)
    rules = engine.rules.reload()
    rule = rules.by_id(rule_id)
    if rule is None:
        known = ", ".join(r.id for r in rules.rules) or "none"
        console.print(f"[red]no rule {rule_id!r}[/red] (loaded: {known})", highlight=False)
        raise typer.Exit(1)
    customer_id = engine.store.find_customer(customer)
    facts = customer_facts_for(engine, customer_id) if customer_id is not None else None
    if facts is None:
        console.print(f"[red]no customer {customer!r}[/red]", highlight=False)
        raise typer.Exit(1)
    now = engine.clock.now()
    trigger = None
    if event is not None:
        try:
            data = json.loads(event)
            kind = data.get("type", "track")
            name = data.get("event") if kind == "track" else kind
            trigger = TriggerFacts(
                name=ECOMMERCE_ALIASES.get(name, name) if name else kind,
                type=kind,
                timestamp=parse_time(data["timestamp"], "timestamp")
                if data.get("timestamp")
                else now,
                properties=dict(data.get("properties") or {}),
            )
        except (ValueError, AttributeError, NudgeError) as exc:
            console.print(f"[red]--event is not a usable event:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from exc
    elif rule.trigger.event is not None:
        view = engine.store.customer_view(customer_id or 0, events=500)
        for recent in view.recent_events if view else []:
            name = recent["name"] if recent["type"] == "track" else recent["type"]
            if name == rule.trigger.event:
                trigger = TriggerFacts(
                    name=name,
                    type=recent["type"],
                    timestamp=parse_time(recent["timestamp"], "timestamp"),
                    properties=recent["properties"],
                    seq=recent["seq"],
                )
                break
    report = run_preview(
        rule, facts, trigger, now, abandoned_after=settings.processing.abandoned_after
    )
    engine.store.close()
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    _print_preview(report)


def _print_preview(report: dict[str, Any]) -> None:
    verdict = "[green]matches[/green]" if report["matches"] else "[red]does not match[/red]"
    console.rule(f"rule {report['rule']} for customer {report['customer']}: {verdict}")
    if "event" in report:
        event = report["event"]
        if event is None:
            console.print(f"no {report['trigger']['event']!r} event to test (use --event)")
        else:
            console.print(f"event: {event['name']} at {event['timestamp']}", highlight=False)
    else:
        console.print(
            f"schedule {report['trigger']['schedule']} in {report['trigger']['zone']}: next "
            + ", ".join(report["next_occurrences"]),
            highlight=False,
        )
    for label in ("where", "audience", "if", "key"):
        shown = report.get(label)
        if not shown:
            continue
        table = Table("expression", "value", title=f"{label}: {shown['expression']}")
        for part in shown["parts"]:
            table.add_row(part["text"], json.dumps(part["value"], default=str))
        if shown["error"]:
            table.add_row("[red]error[/red]", shown["error"])
        console.print(table)
    steps = Table("step", "channel", "template", "due at", "step if", title="steps")
    for step in report["steps"]:
        cond = step["if"]
        steps.add_row(
            str(step["step"]),
            step["channel"],
            step["template"],
            step["due_at"] or "-",
            "" if cond is None else f"{cond['expression']} → {cond['value']}",
        )
    console.print(steps)


@app.command()
def demo(
    events: Annotated[int, typer.Option(min=1, max=1_000_000, help="Events to send.")] = 2000,
    days: Annotated[int, typer.Option(min=1, max=3650, help="Days of history, ending now.")] = 90,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed, the same shop.")] = 1,
    url: Annotated[
        str | None, typer.Option(help="Engine URL (default: http://server.host:server.port).")
    ] = None,
    write_key: Annotated[
        str | None, typer.Option(help="Write key (default: the first in settings).")
    ] = None,
    live: Annotated[
        bool, typer.Option(help="After the history, keep sending current visits.")
    ] = False,
    live_seconds: Annotated[
        int, typer.Option(min=1, max=3600, help="How long --live keeps going.")
    ] = 60,
    config: ConfigOption = None,
) -> None:
    """Drive a running engine with a simulated shop: history, then optionally live traffic."""
    import random
    import time

    from engine.demo import PERSONAS, generate, live_calls, send_calls

    if url is None or write_key is None:
        settings = _settings(config)
        if url is None:
            host = settings.server.host
            host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            url = f"http://{host}:{settings.server.port}"
        if write_key is None:
            if not settings.write_keys:
                console.print("[red]error:[/red] no write_keys in settings: pass --write-key")
                raise typer.Exit(2)
            write_key = settings.write_keys[0].key.get_secret_value()
    clock = SystemClock()
    data = generate(events=events, days=days, seed=seed, now=clock.now())
    counts = {name: sum(c.persona == name for c in data.customers) for name in PERSONAS}
    mix = ", ".join(
        f"{counts[name]} {label}s" for name, (label, _) in PERSONAS.items() if counts[name]
    )
    console.print(
        f"simulated {len(data.customers)} customers over {days} days (seed {seed}): {mix}",
        highlight=False,
    )
    result = send_calls(data.calls, url=url, write_key=write_key, clock=clock)
    sent, rejected, errors = result.sent, result.rejected, list(result.errors)
    live_users: list[str] = []
    if live and not result.failed:
        rng, deadline, visits = random.Random(f"{seed}:live"), time.monotonic() + live_seconds, 0
        console.print(f"live: sending current visits for {live_seconds} s", highlight=False)
        while time.monotonic() < deadline:
            index = 10_000 + visits
            calls = live_calls(rng, seed=seed, index=index, now=clock.now())
            live_users.extend(
                c["userId"] for c in calls if c.get("userId") and c["userId"] not in live_users
            )
            more = send_calls(calls, url=url, write_key=write_key, clock=clock)
            sent, rejected = sent + more.sent, rejected + more.rejected
            errors += more.errors
            visits += 1
            if more.failed:
                result = more
                break
            time.sleep(max(0.0, min(rng.uniform(0.5, 3.0), deadline - time.monotonic())))
        console.print(f"live: {visits} visits", highlight=False)
    console.print(
        f"events sent to {url}: {sent + rejected} ({sent} accepted, {rejected} rejected)",
        highlight=False,
    )
    for error in errors[:5]:
        console.print(f"  [yellow]{error}[/yellow]", highlight=False)
    if result.failed:
        console.print(f"[red]error:[/red] {result.failed} events were not delivered")
        raise typer.Exit(1)
    console.print("customers to look at:")
    for label, ref in data.examples().items():
        console.print(f"  {label:<24} nudge customers show {ref}", highlight=False)
    for ref in live_users[:3]:
        # Live visitors start journeys now (history is too old to trigger rules).
        console.print(
            f"  {'live visitor (journeys)':<24} nudge customers show {ref}", highlight=False
        )


@deliveries_app.command("list")
def deliveries_list(
    config: ConfigOption = None,
    status: Annotated[
        str | None, typer.Option(help="pending, delivered, failed or dead (default: all).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Most rows to show.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The outbox, most recently changed first."""
    engine = _engine(_settings(config))
    rows = engine.store.deliveries(status, limit)
    engine.store.close()
    if as_json:
        typer.echo(json.dumps(rows, default=str, indent=2))
        return
    table = Table(
        "id", "message", "rule", "step", "endpoint", "status", "tries", "next / done", "last result"
    )
    for r in rows:
        when = r["delivered_at"] or (r["next_attempt_at"] if r["status"] == "pending" else None)
        last = r["last_error"] or (f"HTTP {r['last_status']}" if r["last_status"] else "")
        table.add_row(
            str(r["id"]),
            r["message_id"],
            r["rule_id"],
            str(r["step"] + 1),
            r["endpoint"],
            r["status"],
            str(r["attempts"]),
            when.isoformat(timespec="seconds") if when else "",
            last,
        )
    console.print(table)


@deliveries_app.command("show")
def deliveries_show(
    ref: Annotated[str, typer.Argument(help="Outbox id or message id (msg_...).")],
    config: ConfigOption = None,
) -> None:
    """One delivery: its message body and every attempt."""
    engine = _engine(_settings(config))
    found = engine.store.delivery(ref)
    engine.store.close()
    if found is None:
        console.print(f"[red]no delivery {ref!r}[/red]", highlight=False)
        raise typer.Exit(1)
    typer.echo(json.dumps(found, default=str, indent=2))


@deliveries_app.command("retry")
def deliveries_retry(
    ids: Annotated[list[int] | None, typer.Argument(help="Outbox ids (dead or failed).")] = None,
    config: ConfigOption = None,
    dead: Annotated[bool, typer.Option("--dead", help="Re-drive every dead letter.")] = False,
) -> None:
    """Queue dead or failed deliveries again, due now, with a fresh retry budget."""
    if not ids and not dead:
        console.print("[red]name outbox ids, or --dead for every dead letter[/red]")
        raise typer.Exit(2)
    engine = _engine(_settings(config))
    with engine.store.unit() as unit:
        count = unit.redrive(None if dead and not ids else ids, engine.clock.now())
    engine.store.close()
    console.print(f"{count} deliveries queued again")


@deliveries_app.command("enable")
def deliveries_enable(
    url: Annotated[str, typer.Argument(help="The endpoint URL a 410 Gone disabled.")],
    config: ConfigOption = None,
) -> None:
    """Enable an endpoint again (then `nudge deliveries retry --dead`)."""
    engine = _engine(_settings(config))
    with engine.store.unit() as unit:
        unit.set_endpoint_disabled(url, None)
    engine.store.close()
    console.print(f"{url} enabled")


@intelligence_app.command("fit")
def intelligence_fit(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Recompute RFM, lapsing, habits and predictions for every buyer now, and print the
    fitted models (BG/NBD, Gamma-Gamma) with the fit date."""
    from engine.service import recompute_intelligence

    engine = _engine(_settings(config))
    models = recompute_intelligence(engine)
    engine.store.close()
    if as_json:
        typer.echo(json.dumps(models, indent=2, default=str))
        return
    console.print(
        f"{models.get('buyers', 0)} buyers, computed at {models.get('computed_at')}",
        highlight=False,
    )
    if models.get("note"):
        console.print(f"[yellow]{models['note']}[/yellow]", highlight=False)
    rfm = models.get("rfm") or {}
    if rfm:
        console.print(
            f"RFM: {rfm['method']} over {rfm['window_days']} days ({rfm['buyers']} buyers)",
            highlight=False,
        )
    for name in ("bgnbd", "gamma_gamma"):
        fitted = models.get(name) or {}
        if "error" in fitted:
            console.print(f"{name}: not fitted: {fitted['error']}", highlight=False)
        elif fitted:
            params = ", ".join(
                f"{k} = {v:.4g}" for k, v in fitted.items() if k not in ("customers",)
            )
            console.print(f"{name}: {params} ({fitted['customers']} customers)", highlight=False)


@app.command()
def sink(
    config: ConfigOption = None,
    port: Annotated[int, typer.Option(help="Listen port on 127.0.0.1.")] = 8025,
    secret: Annotated[
        list[str] | None,
        typer.Option(help="whsec_ secret(s) to verify (default: the channels' endpoints)."),
    ] = None,
) -> None:
    """A demo webhook receiver: verifies each signed message and prints it."""
    import uvicorn

    from engine.config import resolve_secret
    from engine.web.sink import create_sink_app

    secrets_ = [resolve_secret(s) for s in secret] if secret else _sink_secrets(_settings(config))
    if not secrets_:
        console.print("[red]no secrets: configure channels in config.yaml or pass --secret[/red]")
        raise typer.Exit(2)
    console.print(f"sink listening on http://127.0.0.1:{port}/", highlight=False)
    uvicorn.run(
        create_sink_app(secrets_, console=console),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
    )


def main() -> None:
    app()
