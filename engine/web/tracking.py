"""Tracked links and unsubscribes: ``GET /c/{token}``, ``GET|POST /u/{token}``.

A click is recorded as an ``Email Link Clicked`` (``Push Link Clicked``) event of the
customer, through the same writer as ingested events, and redirects only to a URL that the
message itself contained. An unsubscribe suppresses the channel for the customer's address at
once (the next decision sees it) and records an ``Unsubscribed`` event for the profile.
"""

from __future__ import annotations

import hashlib
import html

import orjson
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from engine.errors import NotFoundError
from engine.events import normalize_segment
from engine.service import Engine, suppression_address
from engine.tracking import LinkSigner
from engine.web.writer import EventWriter

__all__ = ["install_tracking"]

_CLICK_EVENTS = {"email": "Email Link Clicked", "push": "Push Link Clicked"}


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(title)}</title></head>"
        "<body style='font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto'>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>",
        status_code=status,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def install_tracking(app: FastAPI, engine: Engine, writer: EventWriter) -> None:
    store = engine.store

    def signer() -> LinkSigner:
        return engine.link_signer()

    async def record(
        customer_id: int, name: str, properties: dict[str, object], dedupe: str
    ) -> None:
        refs = store.customer_refs(customer_id)
        if refs is None:
            return
        call: dict[str, object] = {
            "type": "track",
            "event": name,
            "properties": properties,
            "messageId": dedupe,
        }
        if refs["user_id"]:
            call["userId"] = refs["user_id"]
        else:
            call["anonymousId"] = refs["anonymous_id"] or f"nudge:{refs['id']}"
        event = normalize_segment(
            call,
            call_type=None,
            source="nudge",
            received_at=engine.clock.now(),
            max_event_bytes=engine.settings.ingest.max_event_bytes,
        )
        await writer.write([event.row()])

    @app.get("/c/{token}", include_in_schema=False)
    async def click(token: str) -> Response:
        found = signer().click(token)
        message = store.message(found.message_id) if found is not None else None
        if found is None or message is None or found.url not in (message["links"] or []):
            raise NotFoundError("unknown link")
        now = engine.clock.now()
        digest = hashlib.sha256(f"{token}:{now.isoformat()}".encode()).hexdigest()[:24]
        await record(
            int(message["customer_id"]),
            _CLICK_EVENTS.get(message["channel"], "Link Clicked"),
            {
                "message_id": message["id"],
                "url": found.url,
                "rule": message["rule_id"],
                "step": int(message["step"]) + 1,
                "variant": message["variant"],
                "channel": message["channel"],
            },
            f"click-{digest}",
        )
        return RedirectResponse(found.url, status_code=302, headers={"Cache-Control": "no-store"})

    async def unsubscribe(token: str) -> tuple[int, str] | None:
        found = signer().unsubscribe(token)
        if found is None:
            return None
        refs = store.customer_refs(found.customer_id)
        if refs is None:
            return None
        customer_id = int(refs["id"])
        email = refs["email"]
        message = store.message(found.message_id) if found.message_id else None
        if message is not None:  # the address the message went to, if it has changed since
            email = orjson.loads(message["body"]).get("to", {}).get("email") or email
        address = suppression_address(found.channel, customer_id, email)
        now = engine.clock.now()
        with store.unit() as unit:
            unit.suppress([(found.channel, address, "unsubscribed", customer_id, now)])
        await record(
            customer_id,
            "Unsubscribed",
            {"channel": found.channel, "message_id": found.message_id, "via": "link"},
            f"unsubscribe-{hashlib.sha256(token.encode()).hexdigest()[:24]}",
        )
        return customer_id, found.channel

    @app.get("/u/{token}", include_in_schema=False)
    async def unsubscribe_page(token: str) -> Response:
        found = signer().unsubscribe(token)
        if found is None:
            return _page("Link not valid", "<p>This unsubscribe link is not valid.</p>", 404)
        # A GET never unsubscribes by itself (mail scanners follow links): a button POSTs.
        return _page(
            "Unsubscribe",
            f"<p>Stop receiving {html.escape(found.channel)} messages from us?</p>"
            f"<form method='post' action='/u/{html.escape(token)}'>"
            "<button type='submit'>Unsubscribe</button></form>",
        )

    @app.post("/u/{token}", include_in_schema=False)
    async def unsubscribe_post(token: str) -> Response:
        # RFC 8058: the mail client POSTs "List-Unsubscribe=One-Click"; the page's form POSTs
        # nothing. Either way the token alone decides.
        done = await unsubscribe(token)
        if done is None:
            return _page("Link not valid", "<p>This unsubscribe link is not valid.</p>", 404)
        _, channel = done
        return _page(
            "You are unsubscribed",
            f"<p>You will not receive {html.escape(channel)} marketing messages from us.</p>",
        )
