"""Settings: ``config.yaml``, overridden by ``NUDGE_*`` environment variables.

Every setting is declared once here, with its type, default and help text; ``nudge config``
prints them. Secrets are written as references, never as literals in a committed file:
``$env:NAME`` reads an environment variable and ``$file:PATH`` reads a file (relative paths
are taken from the working directory); the value is held as a ``SecretStr`` and masked
whenever settings are printed.
"""

from __future__ import annotations

import os
from datetime import time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from engine.durations import parse_duration
from engine.errors import ConfigError

__all__ = [
    "CapSettings",
    "ChannelSettings",
    "DeliverySettings",
    "EndpointSettings",
    "IngestSettings",
    "ProcessingSettings",
    "QuietHoursSettings",
    "RenderingSettings",
    "SensitiveSettings",
    "ServerSettings",
    "Settings",
    "ShopifySettings",
    "WriteKey",
    "describe_settings",
    "load_settings",
    "resolve_secret",
]


def resolve_secret(value: Any) -> Any:
    """Resolve a ``$env:NAME`` or ``$file:PATH`` reference; other values pass through."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str):
        return value
    if value.startswith("$env:"):
        name = value[5:]
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set (referenced as {value})")
        return os.environ[name]
    if value.startswith("$file:"):
        path = Path(value[6:]).expanduser()
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from exc
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _duration(value: Any) -> Any:
    """``30s``/``5m``/``2h``/``1d``/``1w``, or ``200ms``; other values pass to pydantic."""
    if isinstance(value, str):
        if value.endswith("ms") and value[:-2].isdigit():
            return timedelta(milliseconds=int(value[:-2]))
        return parse_duration(value)
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]


class ServerSettings(_Section):
    host: str = Field("127.0.0.1", description="Address the HTTP server listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port the HTTP server listens on.")


class WriteKey(_Section):
    source: str = Field("default", description="Name of the source that uses this key.")
    key: SecretStr = Field(description="The write key (use $env:NAME or $file:PATH).")

    _resolve = field_validator("key", mode="before")(resolve_secret)


class ShopifySettings(_Section):
    secret: SecretStr | None = Field(
        None, description="Shopify app/webhook signing secret for X-Shopify-Hmac-Sha256."
    )

    _resolve = field_validator("secret", mode="before")(resolve_secret)


class IngestSettings(_Section):
    max_event_bytes: int = Field(32 * 1024, description="Largest accepted single event (JSON).")
    max_request_bytes: int = Field(
        500 * 1024, description="Largest accepted request body, after gzip decompression."
    )
    commit_max_events: int = Field(
        5000, ge=1, description="Most events the ingest writer commits in one transaction."
    )


class ProcessingSettings(_Section):
    batch_size: int = Field(500, ge=1, description="Events the processor claims per transaction.")
    interval: timedelta = Field(
        timedelta(milliseconds=200), description="How often the processor looks for new events."
    )
    abandoned_after: timedelta = Field(
        timedelta(hours=1),
        description="A started checkout without an order after this long counts as abandoned.",
    )
    trigger_max_lag: timedelta = Field(
        timedelta(hours=6),
        description="An event older than this when processed starts no journey (backfills).",
    )
    step_max_lateness: timedelta = Field(
        timedelta(days=1),
        description="A step found due later than this (engine was down) is skipped, not sent.",
    )
    schedule_grace: timedelta = Field(
        timedelta(hours=6),
        description="A schedule occurrence missed by up to this long (a restart) still fires.",
    )
    due_batch_size: int = Field(1000, ge=1, description="Due journey steps per transaction.")

    _durations = field_validator(
        "interval",
        "abandoned_after",
        "trigger_max_lag",
        "step_max_lateness",
        "schedule_grace",
        mode="before",
    )(_duration)


class CapSettings(_Section):
    channel: Literal["email", "push", "sms", "any"] = Field(
        description="The channel the cap counts (`any`: every channel)."
    )
    max: int = Field(ge=1, description="Most messages in any rolling window of `per`.")
    per: Duration = Field(description="The rolling window, e.g. 16h or 7d.")
    on_limit: Literal["skip", "defer"] = Field(
        "skip", description="When full: skip the message, or defer it until a slot frees."
    )


class QuietHoursSettings(_Section):
    start: time = Field(description="Start of the quiet window, customer-local (HH:MM).")
    end: time = Field(description="End of the quiet window, customer-local (HH:MM).")
    channels: list[Literal["email", "push", "sms"]] = Field(
        default_factory=list, description="Channels kept quiet (empty: all)."
    )
    on_quiet: Literal["defer", "skip"] = Field(
        "defer", description="Defer to the window's end, or skip the message."
    )


class EndpointSettings(_Section):
    url: str = Field(pattern=r"^https?://", description="Where messages are POSTed.")
    secret: SecretStr = Field(description="Standard Webhooks signing secret (whsec_...).")
    timeout: Duration = Field(timedelta(seconds=10), description="Per-request timeout.")

    _resolve = field_validator("secret", mode="before")(resolve_secret)

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr) -> SecretStr:
        import base64
        import binascii

        text = value.get_secret_value()
        if not text.startswith("whsec_"):
            raise ValueError("a signing secret starts with whsec_ (see `nudge secrets init`)")
        try:
            if not base64.b64decode(text[6:] + "==", validate=False):
                raise ValueError("the signing secret is empty")
        except binascii.Error as exc:
            raise ValueError("a signing secret is whsec_ followed by base64") from exc
        return value


class ChannelSettings(_Section):
    endpoints: list[EndpointSettings] = Field(
        default_factory=list, description="Every message of the channel goes to each endpoint."
    )


class DeliverySettings(_Section):
    concurrency: int = Field(
        100, ge=1, description="Most webhook requests in flight at once, per dispatcher."
    )
    processes: int = Field(
        1,
        ge=1,
        le=64,
        description="Dispatchers per `nudge run`/`nudge worker`: one on a thread, the rest "
        "in child processes (each a core's worth of HTTP).",
    )
    batch_size: int = Field(200, ge=1, description="Outbox rows claimed per transaction.")
    interval: Duration = Field(
        timedelta(milliseconds=100), description="How often the dispatcher polls the outbox."
    )
    lease: Duration = Field(
        timedelta(seconds=60),
        description="A claimed delivery not finished after this long is claimed again.",
    )
    breaker_threshold: int = Field(
        5, ge=1, description="Consecutive failures that open an endpoint's circuit breaker."
    )
    breaker_cooldown: Duration = Field(
        timedelta(seconds=30), description="How long an open breaker waits before a trial."
    )


class RenderingSettings(_Section):
    max_output_bytes: int = Field(
        256 * 1024, ge=1024, description="Largest rendered message (all blocks)."
    )
    max_render_seconds: float = Field(
        2.0, gt=0, description="Longest a template may take to render."
    )


class SensitiveSettings(_Section):
    attributes: list[str] = Field(
        default_factory=lambda: [
            "customer.traits.birthday",
            "customer.traits.date_of_birth",
            "customer.traits.gender",
            "customer.traits.address",
            "customer.traits.location",
            "customer.traits.latitude",
            "customer.traits.longitude",
            "customer.traits.health",
        ],
        description="Paths a rule or template may only read if it lists them in uses_sensitive.",
    )
    categories: list[str] = Field(
        default_factory=lambda: ["health", "pharmacy", "medical", "adult", "sexual wellness"],
        description="Product categories hidden from templates unless uses_sensitive: [categories].",
    )
    view_events: list[str] = Field(
        default_factory=lambda: [
            "page",
            "screen",
            "Product Viewed",
            "Product List Viewed",
            "Products Searched",
        ],
        description="Mere browsing events: a rule on them should not message too soon.",
    )
    min_wait_after_view: Duration = Field(
        timedelta(minutes=30),
        description="A browsing-triggered rule whose first step is sooner gets a warning.",
    )


class Settings(BaseSettings):
    """Nudge settings. Nested keys are overridden as ``NUDGE_SERVER__PORT=9000``."""

    model_config = SettingsConfigDict(
        env_prefix="NUDGE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    database_url: str = Field(
        "sqlite:///nudge.db",
        description="SQLAlchemy URL: sqlite:///FILE (embedded) or postgresql+psycopg://...",
    )
    sqlite_synchronous: Literal["full", "normal"] = Field(
        "full",
        description="SQLite fsync policy in WAL mode: full survives power loss, normal a crash.",
    )
    sqlite_cache_mb: int = Field(64, ge=2, description="SQLite page cache per connection, in MiB.")
    server: ServerSettings = Field(default_factory=ServerSettings, description="HTTP server.")
    public_url: str | None = Field(
        None, description="Base URL customers reach (tracked links); default http://host:port."
    )
    write_keys: list[WriteKey] = Field(
        default_factory=list, description="Segment write keys accepted by the ingest API."
    )
    shopify: ShopifySettings = Field(
        default_factory=ShopifySettings, description="Shopify webhook settings."
    )
    admin_token: SecretStr | None = Field(
        None, description="Bearer token for /api/* and the dashboard."
    )
    rules_dir: Path = Field(Path("rules"), description="Folder of rule YAML files.")
    templates_dir: Path = Field(Path("templates"), description="Folder of Jinja templates.")
    default_timezone: str = Field(
        "UTC", description="IANA zone for customers without a timezone trait."
    )
    ingest: IngestSettings = Field(default_factory=IngestSettings, description="Ingest API.")
    processing: ProcessingSettings = Field(
        default_factory=ProcessingSettings, description="Event processor."
    )
    frequency_caps: list[CapSettings] = Field(
        default_factory=list, description="Global frequency caps, all of them apply (ANDed)."
    )
    quiet_hours: QuietHoursSettings | None = Field(
        None, description="No messages in this customer-local window (defer or skip)."
    )
    channels: dict[Literal["email", "push", "sms"], ChannelSettings] = Field(
        default_factory=dict, description="Webhook endpoints per channel."
    )
    delivery: DeliverySettings = Field(
        default_factory=DeliverySettings, description="The outbox dispatcher."
    )
    rendering: RenderingSettings = Field(
        default_factory=RenderingSettings, description="Template rendering limits."
    )
    sensitive: SensitiveSettings = Field(
        default_factory=SensitiveSettings, description="The creepiness guard."
    )
    link_secret: SecretStr | None = Field(
        None, description="Key that signs tracked-link and unsubscribe tokens."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )

    _resolve = field_validator("admin_token", "link_secret", mode="before")(resolve_secret)

    @field_validator("link_secret")
    @classmethod
    def _link_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("the link secret must be at least 16 characters")
        return value

    @model_validator(mode="after")
    def _lease(self) -> Settings:
        longest = max(
            (e.timeout for c in self.channels.values() for e in c.endpoints),
            default=timedelta(0),
        )
        if self.delivery.lease <= longest * 2:
            raise ValueError(
                f"delivery.lease ({self.delivery.lease.total_seconds():g}s) must be more than "
                f"twice the longest endpoint timeout ({longest.total_seconds():g}s), or a "
                "slow delivery could be claimed and sent again while still in flight"
            )
        return self

    @field_validator("write_keys", mode="before")
    @classmethod
    def _keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return [{"key": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("default_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file; the file's contents arrive as init values.
        return env_settings, init_settings

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.server.host}:{self.server.port}"


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read settings from ``path`` (or ``$NUDGE_CONFIG``, or ``./config.yaml`` if present).

    Raises :class:`ConfigError` naming the file and the key that is wrong.
    """
    if path is None and os.environ.get("NUDGE_CONFIG"):
        path = Path(os.environ["NUDGE_CONFIG"])
    if path is None and Path("config.yaml").exists():
        path = Path("config.yaml")
    data: dict[str, Any] = {}
    where = "environment"
    if path is not None:
        where = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of settings")
        data = loaded or {}
    data.update(overrides)
    try:
        return Settings(**data)
    except PydanticValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise ConfigError(
            f"{where}: invalid settings: " + "; ".join(problems), details=problems
        ) from exc


def describe_settings(settings: Settings) -> list[tuple[str, str, str]]:
    """(dotted key, effective value with secrets masked, help text) for every setting."""
    rows: list[tuple[str, str, str]] = []

    def show(value: Any) -> str:
        if isinstance(value, SecretStr):
            return "********" if value.get_secret_value() else ""
        if isinstance(value, list):
            return "[" + ", ".join(show(v) for v in value) + "]"
        if isinstance(value, WriteKey):
            return f"{value.source}:{show(value.key)}"
        if isinstance(value, timedelta):
            return f"{value.total_seconds():g}s"
        return "" if value is None else str(value)

    def walk(model: BaseModel, prefix: str) -> None:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            key = f"{prefix}{name}"
            if isinstance(value, _Section):
                walk(value, key + ".")
            else:
                rows.append((key, show(value), field.description or ""))

    walk(settings, "")
    return rows
