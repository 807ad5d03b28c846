"""The demo webhook receiver: verifies Standard Webhooks signatures and prints each message.

Point a channel's endpoint at it (``POST /`` or ``POST /{channel}``) to watch what Nudge would
send. It answers 200 ``{"received": true}`` to a correctly signed JSON message (a repeated
``webhook-id`` too, printed as a duplicate), 401 when the signature does not verify and 400 when
the body is not a JSON object, in the API's one error shape.

Signatures are checked with ``standardwebhooks``' ``Webhook.sign`` rather than
``Webhook.verify``: ``verify`` has a fixed five-minute timestamp window (``tolerance`` could not
be honoured) and raises plain ``ValueError`` on a malformed signature list.
"""

from __future__ import annotations

import hmac
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from fastapi import FastAPI, Request
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from standardwebhooks.webhooks import Webhook

from engine.dispatch import sign_headers
from engine.errors import AuthError, ValidationError
from engine.web.errors import install_error_handlers

__all__ = ["create_sink_app"]

_SEEN_IDS = 10_000  # webhook-ids remembered for duplicate detection
_RECEIVED = 1_000  # messages kept in app.state.received
_BODY_LINES = 12
_HREF = re.compile(r"""href\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
_URL = re.compile(r"https?://[^\s<>\"')]+")


def create_sink_app(
    secrets: Sequence[str],
    *,
    console: Console | None = None,
    tolerance: timedelta = timedelta(minutes=5),
) -> FastAPI:
    """The receiver app, accepting messages signed with any of ``secrets`` (``whsec_…``) and
    timestamped within ``tolerance`` of now. Received messages are kept, newest last, in
    ``app.state.received`` as ``{"webhook_id", "channel", "received_at", "message"}``."""
    if not secrets:
        raise ValueError("the sink needs at least one webhook secret")
    for secret in secrets:  # sign_headers rejects anything but whsec_<base64>
        sign_headers(secret, "msg_check", datetime.now(UTC), b"{}")
    webhooks = [Webhook(secret) for secret in secrets]
    out = console if console is not None else Console()
    seen: OrderedDict[str, None] = OrderedDict()
    received: list[dict[str, Any]] = []

    app = FastAPI(
        title="Nudge webhook sink",
        description="Verifies signed message webhooks from Nudge and prints them.",
    )
    app.state.received = received
    install_error_handlers(app)

    async def receive(request: Request, channel: str | None = None) -> dict[str, Any]:
        body = await request.body()
        msg_id = _verify(webhooks, body, request.headers, tolerance)
        message = _parse(body)
        if msg_id in seen:
            seen.move_to_end(msg_id)
            out.print(Text(f"duplicate {msg_id} (already received)", style="yellow"))
            return {"received": True, "duplicate": True}
        seen[msg_id] = None
        if len(seen) > _SEEN_IDS:
            seen.popitem(last=False)
        name = channel or _str(message.get("channel")) or "?"
        received.append(
            {
                "webhook_id": msg_id,
                "channel": name,
                "received_at": datetime.now(UTC).isoformat(),
                "message": message,
            }
        )
        del received[:-_RECEIVED]
        out.print(_panel(message, msg_id, name))
        return {"received": True}

    for path in ("/", "/{channel}"):
        app.add_api_route(path, receive, methods=["POST"], summary="Receive a signed message")
    return app


def _unauthorized(message: str, field: str) -> AuthError:
    return AuthError(message, code="bad_signature", details=[{"field": field, "message": message}])


def _verify(
    webhooks: Sequence[Webhook], body: bytes, headers: Mapping[str, str], tolerance: timedelta
) -> str:
    """The ``webhook-id`` of a message whose signature verifies; AuthError otherwise."""
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "").strip()
    given = headers.get("webhook-signature", "")
    for name, value in (
        ("webhook-id", msg_id),
        ("webhook-timestamp", stamp),
        ("webhook-signature", given),
    ):
        if not value:
            raise _unauthorized(f"missing {name} header", name)
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > 11:  # 11 digits: year 5138
        raise _unauthorized("webhook-timestamp is not integer seconds", "webhook-timestamp")
    sent = datetime.fromtimestamp(int(stamp), UTC)
    skew = datetime.now(UTC) - sent
    if abs(skew) > tolerance:
        which = "old" if skew > timedelta(0) else "far in the future"
        raise _unauthorized(
            f"webhook-timestamp too {which} ({int(abs(skew).total_seconds())}s off, "
            f"tolerance {int(tolerance.total_seconds())}s)",
            "webhook-timestamp",
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(
            "the body is not JSON (not UTF-8)",
            code="invalid_json",
            details=[{"field": "body", "message": "not UTF-8"}],
        ) from None
    offered = [
        sig.removeprefix("v1,") for sig in given.split() if sig.startswith("v1,") and len(sig) > 3
    ]
    for webhook in webhooks:
        expected = webhook.sign(msg_id=msg_id, timestamp=sent, data=text).removeprefix("v1,")
        if any(hmac.compare_digest(expected.encode(), sig.encode()) for sig in offered):
            return msg_id
    raise _unauthorized("no webhook-signature matches the body", "webhook-signature")


def _parse(body: bytes) -> dict[str, Any]:
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        message = None
    if not isinstance(message, dict):
        raise ValidationError(
            "the body is not a JSON object",
            code="invalid_json",
            details=[{"field": "body", "message": "expected a JSON object"}],
        )
    return message


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _panel(message: dict[str, Any], msg_id: str, channel: str) -> Panel:
    """A readable card for one message (every value from the message is plain Text, never
    rich markup)."""
    to = _dict(message.get("to"))
    content = _dict(message.get("content"))
    tokens = to.get("push_tokens") if isinstance(to.get("push_tokens"), list) else []
    recipient = [_str(to.get("email"))] if _str(to.get("email")) else []
    if tokens:
        recipient.append(f"{len(tokens)} push token{'s' if len(tokens) != 1 else ''}")
    if _str(to.get("customer_id")):
        recipient.append(f"customer {to['customer_id']}")

    html = _str(content.get("html"))
    text = _str(content.get("text")) or _str(content.get("body"))
    links = set(_HREF.findall(html)) if html else set(_URL.findall(text))
    if _str(content.get("url")):
        links.add(content["url"])
    lines = text.strip().splitlines()
    shown = "\n".join(lines[:_BODY_LINES])
    if len(lines) > _BODY_LINES:
        shown += f"\n… ({len(lines) - _BODY_LINES} more lines)"

    origin = [_str(message.get("rule")) or "?"]
    if message.get("step") is not None:
        origin.append(f"step {message['step']}")
    if message.get("variant") is not None:
        origin.append(f"variant {message['variant']}")

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    grid.add_row("to", Text(", ".join(recipient) or "?"))
    heading = _str(content.get("subject")) or _str(content.get("title"))
    grid.add_row("subject" if "subject" in content else "title", Text(heading or "—"))
    grid.add_row("rule", Text(" · ".join(origin)))
    grid.add_row("webhook-id", Text(msg_id))
    grid.add_row("links", Text(str(len(links))))
    grid.add_row("unsubscribe", Text(_str(message.get("unsubscribe_url")) or "—"))
    return Panel(
        Group(grid, Text(""), Text(shown or "(no text body)")),
        title=Text(channel, style="bold"),
        title_align="left",
        expand=False,
    )
