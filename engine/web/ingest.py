"""Segment-compatible tracking API and the Shopify webhook receiver."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from engine.config import Settings
from engine.errors import AuthError, LimitError, ValidationError
from engine.events import InboundEvent, normalize_segment, normalize_shopify, parse_time
from engine.service import Engine
from engine.web.writer import EventWriter

__all__ = ["install_ingest"]

_OK = b'{"success":true}'

_EVENT_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "A Segment call (see docs/ingest.md).",
                    "properties": {
                        "userId": {"type": "string"},
                        "anonymousId": {"type": "string"},
                        "messageId": {"type": "string"},
                        "event": {"type": "string"},
                        "properties": {"type": "object"},
                        "traits": {"type": "object"},
                        "context": {"type": "object"},
                        "timestamp": {"type": "string", "format": "date-time"},
                        "sentAt": {"type": "string", "format": "date-time"},
                    },
                }
            }
        },
    }
}
_BATCH_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["batch"],
                    "properties": {
                        "batch": {"type": "array", "items": {"type": "object"}},
                        "context": {"type": "object"},
                        "sentAt": {"type": "string", "format": "date-time"},
                    },
                }
            }
        },
    }
}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, gunzipped if sent so; over ``limit`` bytes is a :class:`LimitError`."""
    declared = request.headers.get("content-length")
    encoding = request.headers.get("content-encoding", "").lower()
    if declared and declared.isdigit() and int(declared) > limit and encoding != "gzip":
        raise _too_large(int(declared), limit)
    body = await request.body()
    if encoding == "gzip":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise ValidationError(
                f"the body is not valid gzip: {exc}",
                code="invalid_gzip",
                details=[{"field": "(body)", "message": "Content-Encoding: gzip but not gzip"}],
            ) from exc
        if inflater.unconsumed_tail:
            raise _too_large(limit + 1, limit)
        if not inflater.eof or inflater.unused_data:
            raise ValidationError(
                "the gzip body is truncated or has trailing data",
                code="invalid_gzip",
                details=[{"field": "(body)", "message": "incomplete or multi-member gzip stream"}],
            )
    elif encoding not in ("", "identity"):
        raise ValidationError(
            f"unsupported Content-Encoding {encoding!r} (use gzip or none)",
            code="unsupported_encoding",
            details=[{"field": "Content-Encoding", "message": "use gzip or none"}],
        )
    if len(body) > limit:
        raise _too_large(len(body), limit)
    return body


def _too_large(size: int, limit: int) -> LimitError:
    return LimitError(
        f"the request body is over the limit of {limit} bytes",
        code="request_too_large",
        details=[{"field": "(body)", "limit": "max_request_bytes", "max": limit, "size": size}],
    )


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValidationError(
            f"malformed JSON: {exc}",
            code="invalid_json",
            details=[{"field": "(body)", "message": str(exc)}],
        ) from exc


class WriteKeys:
    """Constant-time lookup of a write key's source."""

    def __init__(self, settings: Settings) -> None:
        self._keys = [
            (hashlib.sha256(k.key.get_secret_value().encode()).digest(), k.source)
            for k in settings.write_keys
        ]

    def header_key(self, request: Request) -> str | None:
        """The write key of the Basic ``Authorization`` header, if there is one."""
        header = request.headers.get("authorization", "")
        if not header:
            return None
        if header[:6].lower() != "basic ":
            raise _auth_error("the Authorization header must be Basic auth with the write key")
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise _auth_error("the Authorization header is not valid Basic auth") from exc
        key = decoded.split(":", 1)[0]
        if not key:
            raise _auth_error("the Basic auth user name (the write key) is empty")
        return key

    def authenticate(self, request: Request) -> str | None:
        """The source of the Basic auth write key, checked before the body is read; ``None``
        when the request has no Authorization header (the key may be in the body)."""
        key = self.header_key(request)
        return None if key is None else self.source(key)

    def source(self, key: str | None, body: Any = None) -> str:
        """The source of ``key`` (else of ``writeKey`` in ``body``); AuthError if unknown."""
        if key is None and isinstance(body, dict) and isinstance(body.get("writeKey"), str):
            key = body["writeKey"]
        if not key:
            raise _auth_error(
                "a write key is required: HTTP Basic auth with the write key as user name, "
                "or writeKey in the body"
            )
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for candidate, source in self._keys:
            if hmac.compare_digest(candidate, digest):
                found = source
        if found is None:
            raise _auth_error("unknown write key")
        return found


def _auth_error(message: str) -> AuthError:
    return AuthError(
        message,
        details=[{"field": "Authorization", "message": message}],
        challenge='Basic realm="nudge"',
    )


def install_ingest(app: FastAPI, engine: Engine, writer: EventWriter) -> None:
    """Add the Segment and Shopify endpoints to ``app``.

    They are added to the app itself, not through an included router: FastAPI matches an
    included router's routes twice, which costs ~40 µs on every ingest call (measured).
    """
    settings = engine.settings
    limits = settings.ingest
    keys = WriteKeys(settings)
    clock = engine.clock
    router = app

    async def single(request: Request, call_type: str) -> Response:
        received_at = clock.now()
        source = keys.authenticate(request)
        body = await read_body(request, limits.max_request_bytes)
        data = parse_json(body)
        source = source or keys.source(None, data)
        event = normalize_segment(
            data,
            call_type=call_type,
            source=source,
            received_at=received_at,
            max_event_bytes=limits.max_event_bytes,
            raw_size=len(body),
        )
        await writer.write([event.row()])
        return Response(_OK, media_type="application/json")

    def make_endpoint(call: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await single(request, call)

        endpoint.__name__ = f"segment_{call}"
        return endpoint

    for call in ("track", "identify", "page", "screen", "group", "alias"):
        endpoint = make_endpoint(call)
        summary = f"Segment {call} call"
        router.add_api_route(
            f"/v1/{call}",
            endpoint,
            methods=["POST"],
            summary=summary,
            tags=["ingest"],
            openapi_extra=_EVENT_SCHEMA,
        )
        if call in ("track", "identify", "page"):
            router.add_api_route(
                f"/v1/{call[0]}",
                endpoint,
                methods=["POST"],
                include_in_schema=False,
            )

    @router.post("/v1/batch", tags=["ingest"], summary="Segment batch", openapi_extra=_BATCH_SCHEMA)
    async def batch(request: Request) -> Response:
        received_at = clock.now()
        source = keys.authenticate(request)
        body = await read_body(request, limits.max_request_bytes)
        data = parse_json(body)
        source = source or keys.source(None, data)
        if not isinstance(data, dict) or not isinstance(data.get("batch"), list):
            raise ValidationError(
                "batch: a list of events is required",
                details=[{"field": "batch", "message": "expected a list of events"}],
            )
        context = data.get("context") if isinstance(data.get("context"), dict) else None
        sent_at = parse_time(data["sentAt"], "sentAt") if data.get("sentAt") is not None else None
        events: list[InboundEvent] = []
        rejected: list[dict[str, Any]] = []
        for index, item in enumerate(data["batch"]):
            try:
                events.append(
                    normalize_segment(
                        item,
                        call_type=None,
                        source=source,
                        received_at=received_at,
                        max_event_bytes=limits.max_event_bytes,
                        where=f"batch[{index}]",
                        batch_context=context,
                        batch_sent_at=sent_at,
                    )
                )
            except ValidationError as exc:
                rejected.append(
                    {
                        "index": index,
                        "code": exc.code,
                        "message": exc.message,
                        "details": exc.details,
                    }
                )
        if not events and rejected:
            raise ValidationError(
                f"all {len(rejected)} events in the batch were rejected",
                code="batch_rejected",
                details=rejected,
            )
        if events:
            await writer.write([e.row() for e in events])
        if not rejected:
            return Response(_OK, media_type="application/json")
        return Response(
            orjson.dumps({"success": True, "accepted": len(events), "rejected": rejected}),
            media_type="application/json",
        )

    @router.post("/webhooks/shopify", tags=["ingest"], summary="Shopify webhooks")
    async def shopify(request: Request) -> Response:
        received_at = clock.now()
        secret = settings.shopify.secret
        if secret is None or not secret.get_secret_value():
            raise AuthError(
                "Shopify webhooks are not configured (set shopify.secret)",
                details=[{"field": "shopify.secret", "message": "not set"}],
            )
        body = await read_body(request, limits.max_request_bytes)
        given = request.headers.get("x-shopify-hmac-sha256", "")
        expected = base64.b64encode(
            hmac.new(secret.get_secret_value().encode(), body, hashlib.sha256).digest()
        ).decode()
        if not given or not hmac.compare_digest(given.strip(), expected):
            raise AuthError(
                "X-Shopify-Hmac-Sha256 does not match the body",
                details=[{"field": "X-Shopify-Hmac-Sha256", "message": "bad signature"}],
            )
        topic = request.headers.get("x-shopify-topic")
        if not topic:
            raise ValidationError(
                "X-Shopify-Topic header is required",
                details=[{"field": "X-Shopify-Topic", "message": "missing"}],
            )
        event = normalize_shopify(
            topic,
            parse_json(body),
            webhook_id=request.headers.get("x-shopify-webhook-id")
            or request.headers.get("x-shopify-event-id"),
            received_at=received_at,
        )
        if event is None:
            return Response(
                orjson.dumps({"success": True, "ignored": f"topic {topic} is not used by Nudge"}),
                media_type="application/json",
            )
        await writer.write([event.row()])
        return Response(_OK, media_type="application/json")
