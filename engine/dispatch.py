"""Outbound delivery: Standard Webhooks signing, retry decisions as values, a per-endpoint
circuit breaker, and the pooled HTTP poster.

Everything here but :class:`Poster` is pure: the caller passes ``now`` and applies the returned
value (``Retry(at=...)``, ``GiveUp(...)``, a new :class:`Breaker`). :class:`Poster` is the only
part that touches the network; it turns every network failure into an :class:`AttemptResult`.

Why ``httpx_aiohttp.AiohttpTransport``: httpx's default transport collapses at high concurrency
(measured ~1,300 req/s at 10 concurrent and ~355 at 50), the aiohttp transport stays ~3,600 req/s
at 10-200. Two gaps of that transport are closed here: it has no overall deadline (its timeouts
are per socket read, so a server trickling one byte at a time is never timed out), hence the
``asyncio.timeout`` around each request; and it maps aiohttp errors loosely (a refused connection
and a server disconnect both arrive as ``httpx.ConnectTimeout``, an unparsable response as a raw
``aiohttp.ClientResponseError``), hence :func:`_describe_error` reads the original aiohttp
exception from ``__cause__``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import functools
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Literal

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from standardwebhooks.webhooks import Webhook

from engine import __version__

__all__ = [
    "RETRY_SCHEDULE",
    "Action",
    "AttemptResult",
    "Breaker",
    "Delivered",
    "Disable",
    "GiveUp",
    "Poster",
    "Retry",
    "new_message_id",
    "next_action",
    "parse_retry_after",
    "sign_headers",
]

#: Delays before attempt 2, 3, ... (Standard Webhooks' schedule): 8 attempts in all, ~27.5 h.
RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)

_SECRET_PREFIX = "whsec_"
_BODY_KEEP = 64 * 1024  # bytes of a response body kept for diagnostics
_BODY_DRAIN = 1024 * 1024  # bytes read at most; past this the connection is dropped, not reused
_REASON_BODY = 200  # characters of the response body quoted in a failure reason
_MAX_DELTA_SECONDS = timedelta.max.days * 86_400  # 14 digits


# --- signing ---------------------------------------------------------------------------------


def new_message_id() -> str:
    """A fresh ``webhook-id``: ``msg_`` and 32 lowercase hex characters (a uuid4)."""
    return f"msg_{uuid.uuid4().hex}"


@functools.lru_cache(maxsize=64)
def _webhook(secret: str) -> Webhook:
    # Cached: a signer per endpoint secret, not per request.
    # The library accepts almost anything (it strips the prefix if present and decodes base64
    # leniently, dropping stray characters), so check the whsec_<base64> shape here.
    if not secret.startswith(_SECRET_PREFIX):
        raise ValueError("a webhook secret must look like whsec_<base64>")
    encoded = secret[len(_SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret must look like whsec_<base64>: bad base64") from None
    if not key:
        raise ValueError("a webhook secret must look like whsec_<base64>: empty key")
    return Webhook(secret)


def sign_headers(secret: str, msg_id: str, timestamp: datetime, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers for ``body`` (which must be UTF-8, as JSON is):
    ``webhook-id``, ``webhook-timestamp`` (integer seconds), ``webhook-signature``
    (``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``) and ``content-type``.

    Raises ValueError for a secret that is not ``whsec_<base64>``, a naive ``timestamp`` or a
    body that is not UTF-8.
    """
    if timestamp.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    webhook = _webhook(secret)
    # Webhook.sign does timestamp.replace(tzinfo=utc): hand it UTC so that is a no-op.
    utc = timestamp.astimezone(UTC)
    signature = webhook.sign(msg_id=msg_id, timestamp=utc, data=body.decode("utf-8"))
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(math.floor(utc.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


# --- retry decisions -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AttemptResult:
    """What one delivery attempt produced. ``status`` is None when no complete response came
    (timeout, connection refused or reset, response cut off); ``error`` then says why."""

    status: int | None
    error: str | None = None
    retry_after: str | None = None  # the raw Retry-After header value
    duration_ms: float = 0.0
    body: bytes = b""  # the first 64 KiB of the response body, for diagnostics


@dataclass(frozen=True, kw_only=True)
class Delivered:
    """2xx: the endpoint accepted the message."""

    @property
    def label(self) -> str:
        return "delivered"


@dataclass(frozen=True, kw_only=True)
class Retry:
    """A transient failure: try again at ``at``."""

    at: datetime
    reason: str

    @property
    def label(self) -> str:
        return "retry"


@dataclass(frozen=True, kw_only=True)
class GiveUp:
    """No more attempts: ``dead`` when retries ran out (a dead letter, re-drivable), otherwise a
    permanent failure (the endpoint rejected the message, e.g. 400)."""

    reason: str
    dead: bool

    @property
    def label(self) -> str:
        return "dead" if self.dead else "failed"


@dataclass(frozen=True, kw_only=True)
class Disable:
    """410 Gone: the endpoint asks never to be called again."""

    reason: str

    @property
    def label(self) -> str:
        return "disabled"


Action = Delivered | Retry | GiveUp | Disable


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """A ``Retry-After`` header (delta-seconds or HTTP-date) as a wait from ``now``; None when
    absent or unparsable; never negative (a date in the past is no wait)."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        seconds = int(text) if len(text) <= 14 else _MAX_DELTA_SECONDS  # no 4,300-digit ints
        return timedelta(seconds=min(seconds, _MAX_DELTA_SECONDS))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": HTTP-dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(when - now, timedelta(0))


def _retryable(status: int | None) -> bool:
    return status is None or status in (408, 429) or 500 <= status <= 599


def _describe(result: AttemptResult) -> str:
    """``HTTP 503 Service Unavailable: <start of the body>`` or the network error."""
    if result.status is None:
        return result.error or "no response"
    try:
        text = f"HTTP {result.status} {HTTPStatus(result.status).phrase}"
    except ValueError:
        text = f"HTTP {result.status}"
    if 300 <= result.status < 400:
        text += " (redirects are not followed)"
    snippet = " ".join(result.body[: _REASON_BODY * 4].decode("utf-8", "replace").split())
    if snippet:
        cut = snippet[:_REASON_BODY]
        text += f": {cut}" + ("…" if len(snippet) > _REASON_BODY else "")
    return text


def next_action(
    attempt: int,
    result: AttemptResult,
    now: datetime,
    *,
    schedule: Sequence[timedelta] = RETRY_SCHEDULE,
    jitter: float = 0.1,
    rand: Callable[[], float] = random.random,
    max_retry_after: timedelta = timedelta(days=1),
) -> Action:
    """What to do after attempt number ``attempt`` (1-based) produced ``result``.

    2xx → Delivered; 410 → Disable; 408, 429, 5xx and no response → Retry at
    ``now + schedule[attempt-1]`` ± ``jitter`` (never sooner than a Retry-After, itself capped at
    ``max_retry_after``), or GiveUp(dead=True) once the schedule is used up; any other status
    (4xx, 1xx, 3xx) → GiveUp(dead=False).
    """
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    status = result.status
    if status is not None and 200 <= status <= 299:
        return Delivered()
    if status == 410:
        return Disable(reason=f"{_describe(result)} (the endpoint asks not to be called again)")
    what = _describe(result)
    if not _retryable(status):
        return GiveUp(reason=what, dead=False)
    if attempt > len(schedule):
        return GiveUp(reason=f"gave up after {attempt} attempts; last: {what}", dead=True)
    at = now + schedule[attempt - 1] * (1 + jitter * (2 * rand() - 1))
    wait = parse_retry_after(result.retry_after, now)
    if wait is not None:
        honoured = min(wait, max_retry_after)
        at = max(at, now + honoured)
        what += f" (Retry-After {int(honoured.total_seconds())}s)"
    return Retry(at=at, reason=what)


# --- circuit breaker -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Breaker:
    """A per-endpoint circuit breaker, as a value.

    ``closed`` → after ``threshold`` consecutive failures ``open`` for ``cooldown`` → the next
    request is a trial (``half_open``, no other request allowed while it is out) → ``closed`` on
    its success, ``open`` again on its failure. A trial whose result never comes back (a crash)
    expires after ``cooldown`` and another trial is allowed.

    Usage::

        if breaker.allows(now, cooldown):
            breaker = breaker.trial(now)  # a no-op when closed
            ...send...
            breaker = breaker.record(ok, now, threshold=5, cooldown=cooldown)

    ``ok`` is the caller's call; a sensible one is "the endpoint answered, and not with 408,
    429 or 5xx".
    """

    state: Literal["closed", "open", "half_open"] = "closed"
    failures: int = 0  # consecutive failures
    opened_at: datetime | None = None  # when it last opened
    trial_at: datetime | None = None  # when the half-open trial was let through

    def allows(self, now: datetime, cooldown: timedelta) -> bool:
        """May a request go to this endpoint at ``now``?"""
        if self.state == "closed":
            return True
        if self.state == "open":
            return self.opened_at is None or now >= self.opened_at + cooldown
        return self.trial_at is None or now >= self.trial_at + cooldown

    def trial(self, now: datetime) -> Breaker:
        """The breaker with the half-open trial taken at ``now`` (call when :meth:`allows`
        said yes); unchanged when closed."""
        if self.state == "closed":
            return self
        return replace(self, state="half_open", trial_at=now)

    def record(self, ok: bool, now: datetime, *, threshold: int, cooldown: timedelta) -> Breaker:
        """The breaker after a request's outcome. A success closes it from any state (the
        endpoint works); a failure opens it from half-open, or from closed at ``threshold``."""
        if threshold < 1:
            raise ValueError(f"threshold must be at least 1, got {threshold}")
        if ok:
            return Breaker()
        failures = self.failures + 1
        if self.state == "half_open" or (self.state == "closed" and failures >= threshold):
            return Breaker(state="open", failures=failures, opened_at=now)
        # closed below the threshold, or a late failure while open (no new information: the
        # cooldown is not extended)
        return replace(self, failures=failures)


# --- the HTTP poster -------------------------------------------------------------------------


def _describe_error(exc: BaseException, timeout: float) -> str:
    """A short, stable description of a network failure."""
    # The aiohttp transport wraps aiohttp's errors in (often the wrong) httpx ones: read the
    # original from __cause__.
    cause = exc.__cause__ if isinstance(exc, httpx.HTTPError) and exc.__cause__ else exc
    if isinstance(cause, TimeoutError | httpx.TimeoutException):
        return f"timeout after {timeout:g}s"
    if isinstance(cause, aiohttp.ClientConnectorDNSError):
        return f"DNS lookup failed for {cause.host}"
    if isinstance(cause, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return f"TLS error: {cause}"
    if isinstance(cause, aiohttp.ClientConnectorError):
        if isinstance(cause.os_error, ConnectionRefusedError):
            return "connection refused"
        return f"cannot connect: {cause.os_error.strerror or cause.os_error}"
    if isinstance(cause, aiohttp.ClientPayloadError):
        return "connection closed mid-response"
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return "connection closed before a complete response"
    if isinstance(cause, aiohttp.ClientResponseError):
        message = cause.message.splitlines()[0] if cause.message else ""
        return f"invalid HTTP response: {message}".rstrip(": ")
    if isinstance(cause, ConnectionResetError):
        return "connection reset"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, httpx.InvalidURL | httpx.UnsupportedProtocol | aiohttp.InvalidURL):
        return f"invalid URL: {cause}"
    if isinstance(cause, OSError) and cause.strerror:
        return f"network error: {cause.strerror}"
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__


async def _drain(response: httpx.Response) -> bytes:
    """Read the body (so the connection can be reused), keeping the first 64 KiB; stop after
    1 MiB (the connection is then closed instead of reused)."""
    kept = bytearray()
    seen = 0
    async for chunk in response.aiter_raw():
        if len(kept) < _BODY_KEEP:
            kept += chunk[: _BODY_KEEP - len(kept)]
        seen += len(chunk)
        if seen >= _BODY_DRAIN:
            break
    return bytes(kept)


# the kept body is raw bytes: ask for it uncompressed
_HEADERS = [(b"user-agent", f"nudge/{__version__}".encode()), (b"accept-encoding", b"identity")]


@functools.lru_cache(maxsize=256)
def _url(url: str) -> httpx.URL:
    """Endpoint URLs parsed once (httpx's URL parser is a sixth of a request's cost)."""
    return httpx.URL(url)


class Poster:
    """One pooled ``httpx_aiohttp.AiohttpTransport`` (httpx's transport API) with at most
    ``concurrency`` requests in flight, for the dispatcher.

    The client and the semaphore are created on first use, inside the running loop; use one
    Poster from one event loop, and :meth:`aclose` it there.
    """

    def __init__(self, *, concurrency: int = 100) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.concurrency = concurrency
        self._transport: AiohttpTransport | None = None
        self._gate: asyncio.Semaphore | None = None

    def _started(self) -> tuple[AiohttpTransport, asyncio.Semaphore]:
        if self._transport is None or self._gate is None:
            limits = httpx.Limits(
                max_connections=self.concurrency, max_keepalive_connections=self.concurrency
            )
            self._transport = AiohttpTransport(limits=limits)
            self._gate = asyncio.Semaphore(self.concurrency)
        return self._transport, self._gate

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float
    ) -> AttemptResult:
        """POST ``body`` to ``url``; ``timeout`` bounds the whole exchange (connect, send,
        response and body), not counting the wait for a free slot. Never raises for network
        trouble: timeouts, refused or reset connections and responses cut off mid-body come
        back as ``AttemptResult(status=None, error=...)``. Redirects are not followed (a 3xx
        is returned with its status).

        The request goes straight to the transport (``httpx.Request`` →
        ``handle_async_request``): the client layer's cookie, auth, redirect and hook
        handling, which a webhook POST does not use, cost a third of the throughput."""
        transport, gate = self._started()
        try:
            target = _url(url)
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            return AttemptResult(status=None, error=_describe_error(exc, timeout))
        request = httpx.Request(
            "POST",
            target,
            content=body,
            # As bytes: httpx then skips guessing each header's text encoding.
            headers=[*_HEADERS, *((k.encode(), v.encode()) for k, v in headers.items())],
            extensions={
                "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
            },
        )
        async with gate:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):
                    response = await transport.handle_async_request(request)
                    try:
                        kept = await _drain(response)
                    finally:
                        await response.aclose()
            except (httpx.HTTPError, httpx.InvalidURL, aiohttp.ClientError, OSError) as exc:
                # TimeoutError (asyncio.timeout's) is an OSError
                return AttemptResult(
                    status=None,
                    error=_describe_error(exc, timeout),
                    duration_ms=(time.perf_counter() - started) * 1000,
                )
            return AttemptResult(
                status=response.status_code,
                retry_after=response.headers.get("retry-after"),
                duration_ms=(time.perf_counter() - started) * 1000,
                body=kept,
            )

    async def aclose(self) -> None:
        """Close the pooled connections; the Poster can be used again afterwards."""
        transport, self._transport, self._gate = self._transport, None, None
        if transport is not None:
            await transport.aclose()
