"""Inbound payloads → canonical events (pure).

Segment's HTTP tracking API and Shopify's webhooks both become :class:`InboundEvent` values,
which the store appends to the ``events`` log as they are. Validation errors name the field
(``batch[3].userId``) so that a sender can fix what it sends.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator
from pydantic import ValidationError as PydanticValidationError

from engine.errors import LimitError, ValidationError

__all__ = [
    "CALL_TYPES",
    "ECOMMERCE_ALIASES",
    "SHOPIFY_TOPICS",
    "InboundEvent",
    "SegmentEvent",
    "normalize_segment",
    "normalize_shopify",
    "parse_time",
    "pydantic_details",
]

CALL_TYPES = ("track", "identify", "page", "screen", "group", "alias")

#: Segment e-commerce spec v1 names, and a few common variants, mapped to the v2 names.
ECOMMERCE_ALIASES = {
    "Searched Products": "Products Searched",
    "Viewed Product": "Product Viewed",
    "Added Product": "Product Added",
    "Removed Product": "Product Removed",
    "Viewed Cart": "Cart Viewed",
    "Started Checkout": "Checkout Started",
    "Completed Order": "Order Completed",
    "Refunded Order": "Order Refunded",
    "Cancelled Order": "Order Cancelled",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class InboundEvent:
    """One accepted event, ready to append to the log (all times aware UTC)."""

    source: str
    message_id: str
    type: str
    name: str | None
    user_id: str | None
    anonymous_id: str | None
    previous_id: str | None = None
    group_id: str | None = None
    timestamp: datetime
    original_timestamp: datetime | None = None
    sent_at: datetime | None = None
    received_at: datetime
    payload: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The ``events`` table row for this event."""
        return {
            "source": self.source,
            "message_id": self.message_id,
            "type": self.type,
            "name": self.name,
            "user_id": self.user_id,
            "anonymous_id": self.anonymous_id,
            "previous_id": self.previous_id,
            "group_id": self.group_id,
            "timestamp": self.timestamp,
            "original_timestamp": self.original_timestamp,
            "sent_at": self.sent_at,
            "received_at": self.received_at,
            "payload": self.payload,
        }


def _id(value: Any) -> Any:
    # Segment libraries send ids as strings; numbers are accepted and kept as their text.
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip() == "":
        return None
    return value


class SegmentEvent(BaseModel):
    """The fields of a Segment call that Nudge reads; unknown fields are kept in context."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    type: Literal["track", "identify", "page", "screen", "group", "alias"] | None = None
    message_id: str | None = Field(None, alias="messageId", max_length=255)
    user_id: str | None = Field(None, alias="userId", max_length=255)
    anonymous_id: str | None = Field(None, alias="anonymousId", max_length=255)
    previous_id: str | None = Field(None, alias="previousId", max_length=255)
    group_id: str | None = Field(None, alias="groupId", max_length=255)
    event: str | None = Field(None, max_length=255)
    name: str | None = Field(None, max_length=255)
    category: str | None = Field(None, max_length=255)
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    timestamp: datetime | None = None
    original_timestamp: datetime | None = Field(None, alias="originalTimestamp")
    sent_at: datetime | None = Field(None, alias="sentAt")

    _ids = field_validator(
        "user_id", "anonymous_id", "previous_id", "group_id", "message_id", mode="before"
    )(_id)

    def missing(self) -> tuple[str, str] | None:
        """(field, reason) of the first field this call type requires but lacks."""
        if self.type == "alias":
            if not self.previous_id:
                return "previousId", "previousId is required for alias"
            if not self.user_id:
                return "userId", "userId is required for alias"
        elif not self.user_id and not self.anonymous_id:
            return "userId", "userId or anonymousId is required"
        if self.type == "track" and not self.event:
            return "event", "event (the event name) is required for track"
        if self.type == "group" and not self.group_id:
            return "groupId", "groupId is required for group"
        return None


def pydantic_details(exc: PydanticValidationError, prefix: str = "") -> list[dict[str, str]]:
    """Pydantic errors as ``[{"field": "batch[2].userId", "message": ...}]``."""
    details = []
    for err in exc.errors():
        path = prefix
        for part in err["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        message = str(err["msg"]).removeprefix("Value error, ")
        details.append({"field": path or "(event)", "message": message})
    return details


_TIME = TypeAdapter(datetime)


def parse_time(value: Any, field_name: str) -> datetime:
    """A Segment time field (ISO-8601) as aware UTC; naive times are taken as UTC."""
    try:
        parsed = _TIME.validate_python(value)
    except PydanticValidationError as exc:
        message = str(exc.errors()[0]["msg"])
        raise ValidationError(
            f"{field_name}: {message}", details=[{"field": field_name, "message": message}]
        ) from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _fallback_message_id(raw: dict[str, Any], received_at: datetime) -> str:
    # A sender that sets no messageId but sets a timestamp gets content-based dedupe, so an
    # identical retried request stores nothing twice; without a timestamp each call is new.
    if raw.get("timestamp") is None and raw.get("originalTimestamp") is None:
        basis: Any = {"event": raw, "received_at": received_at.isoformat()}
    else:
        basis = {k: v for k, v in raw.items() if k not in ("sentAt", "writeKey")}
    digest = hashlib.sha256(orjson.dumps(basis, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return "nudge-" + digest[:40]


def normalize_segment(
    raw: Any,
    *,
    call_type: str | None,
    source: str,
    received_at: datetime,
    max_event_bytes: int,
    where: str = "",
    batch_context: dict[str, Any] | None = None,
    batch_sent_at: datetime | None = None,
    raw_size: int | None = None,
) -> InboundEvent:
    """Validate one Segment call and apply Segment's clock-skew correction.

    ``timestamp`` = ``receivedAt - (sentAt - originalTimestamp)`` when the sender gave both
    (its clock may be wrong, the difference is right); the original value is kept.
    Raises :class:`ValidationError` / :class:`LimitError` naming the field under ``where``.
    """
    if not isinstance(raw, dict):
        raise ValidationError(
            f"{where or 'body'}: an event must be a JSON object",
            details=[{"field": where or "(body)", "message": "expected a JSON object"}],
        )
    size = raw_size if raw_size is not None else len(orjson.dumps(raw))
    if size > max_event_bytes:
        raise LimitError(
            f"{where or 'event'} is {size} bytes, "
            f"over the limit of {max_event_bytes} bytes per event",
            code="event_too_large",
            details=[{"field": where or "(event)", "limit": "max_event_bytes", "size": size}],
        )
    prefix = f"{where}." if where else ""
    if call_type is not None:
        given = raw.get("type")
        if given is not None and given != call_type:
            raise ValidationError(
                f"{prefix}type is {given!r} but the event was sent to /v1/{call_type}",
                details=[{"field": f"{prefix}type", "message": f"expected {call_type!r}"}],
            )
        raw = {**raw, "type": call_type}
    try:
        call = SegmentEvent.model_validate(raw)
    except PydanticValidationError as exc:
        details = pydantic_details(exc, where)
        first = details[0]
        raise ValidationError(f"{first['field']}: {first['message']}", details=details) from exc
    kind = call.type
    if kind is None:
        raise ValidationError(
            f"{prefix}type is required in a batch",
            details=[{"field": f"{prefix}type", "message": "missing"}],
        )
    lacking = call.missing()
    if lacking is not None:
        field_name, reason = lacking
        raise ValidationError(
            f"{prefix}{field_name}: {reason}",
            details=[{"field": f"{prefix}{field_name}", "message": reason}],
        )

    original = _utc(call.original_timestamp or call.timestamp)
    sent_at = _utc(call.sent_at) or batch_sent_at
    if original is None:
        timestamp = received_at
    elif sent_at is not None:
        timestamp = received_at - (sent_at - original)
    else:
        timestamp = original

    name: str | None
    if kind == "track":
        name = ECOMMERCE_ALIASES.get(call.event or "", call.event)
    elif kind in ("page", "screen"):
        name = call.name
    else:
        name = None

    payload: dict[str, Any] = {}
    if call.properties:
        payload["properties"] = call.properties
    if call.traits:
        payload["traits"] = call.traits
    context = dict(batch_context or {})
    if call.context:
        context.update(call.context)
    if context:
        payload["context"] = context
    if call.integrations:
        payload["integrations"] = call.integrations
    if call.category:
        payload["category"] = call.category

    return InboundEvent(
        source=source,
        message_id=call.message_id or _fallback_message_id(raw, received_at),
        type=kind,
        name=name,
        user_id=call.user_id,
        anonymous_id=call.anonymous_id,
        previous_id=call.previous_id,
        group_id=call.group_id,
        timestamp=timestamp,
        original_timestamp=original,
        sent_at=sent_at,
        received_at=received_at,
        payload=payload,
    )


# -- Shopify -------------------------------------------------------------------------------

SHOPIFY_TOPICS = {
    "checkouts/create": "Checkout Started",
    "checkouts/update": "Checkout Started",
    "orders/create": "Order Completed",
    "refunds/create": "Order Refunded",
    "customers/create": None,
    "customers/update": None,
}


def _shopify_time(value: Any, field_name: str, fallback: datetime) -> datetime:
    if value in (None, ""):
        return fallback
    if not isinstance(value, str):
        raise ValidationError(
            f"{field_name}: expected an ISO-8601 time",
            details=[{"field": field_name, "message": "expected an ISO-8601 time"}],
        )
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValidationError(
            f"{field_name}: {value!r} is not an ISO-8601 time",
            details=[{"field": field_name, "message": "not an ISO-8601 time"}],
        ) from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _money(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _shopify_products(items: Any) -> list[dict[str, Any]]:
    products = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        product = {
            "product_id": None if item.get("product_id") is None else str(item["product_id"]),
            "variant": None if item.get("variant_id") is None else str(item["variant_id"]),
            "sku": item.get("sku") or None,
            "name": item.get("title") or item.get("name"),
            "brand": item.get("vendor") or None,
            "price": _money(item.get("price")),
            "quantity": item.get("quantity") or 1,
        }
        products.append({k: v for k, v in product.items() if v is not None})
    return products


def _shopify_customer_traits(customer: dict[str, Any], email: Any = None) -> dict[str, Any]:
    traits: dict[str, Any] = {}
    for key in ("email", "first_name", "last_name", "phone"):
        if customer.get(key):
            traits[key] = customer[key]
    if email and "email" not in traits:
        traits["email"] = email
    consent = customer.get("email_marketing_consent")
    if isinstance(consent, dict) and consent.get("state"):
        traits["accepts_marketing"] = consent["state"] == "subscribed"
    elif isinstance(customer.get("accepts_marketing"), bool):
        traits["accepts_marketing"] = customer["accepts_marketing"]
    if customer.get("tags"):
        traits["shopify_tags"] = customer["tags"]
    return traits


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _shopify_identity(body: dict[str, Any], token: Any) -> tuple[str | None, str | None]:
    customer = body.get("customer")
    if isinstance(customer, dict) and customer.get("id") is not None:
        return str(customer["id"]), None
    email = body.get("email") or body.get("contact_email")
    if isinstance(email, str) and email.strip():
        return None, f"shopify-guest:{email.strip().lower()}"
    if token:
        return None, f"shopify-checkout:{token}"
    return None, None


def normalize_shopify(
    topic: str, body: Any, *, webhook_id: str | None, received_at: datetime
) -> InboundEvent | None:
    """Map one Shopify webhook to its canonical event; ``None`` for a topic Nudge ignores.

    Customers are identified by their Shopify customer id as ``userId`` (use the same id
    when the shop also sends Segment calls); guests by their email
    (``anonymousId = shopify-guest:<email>``) so that a guest's checkout and order meet.
    """
    if topic not in SHOPIFY_TOPICS:
        return None
    if not isinstance(body, dict):
        raise ValidationError(
            "the Shopify webhook body must be a JSON object",
            details=[{"field": "(body)", "message": "expected a JSON object"}],
        )
    message_id = "shopify:" + (
        webhook_id
        or hashlib.sha256(
            topic.encode() + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        ).hexdigest()[:40]
    )
    context = {"integration": {"name": "shopify", "topic": topic}}

    if topic.startswith("customers/"):
        if body.get("id") is None:
            raise ValidationError(
                "id: a Shopify customer needs an id",
                details=[{"field": "id", "message": "missing"}],
            )
        when = _shopify_time(body.get("updated_at"), "updated_at", received_at)
        return InboundEvent(
            source="shopify",
            message_id=message_id,
            received_at=received_at,
            type="identify",
            name=None,
            user_id=str(body["id"]),
            anonymous_id=None,
            timestamp=when,
            original_timestamp=when,
            payload={"traits": _shopify_customer_traits(body), "context": context},
        )

    name = SHOPIFY_TOPICS[topic]
    if topic.startswith("checkouts/"):
        token = body.get("token")
        if not token:
            raise ValidationError(
                "token: a Shopify checkout needs its token",
                details=[{"field": "token", "message": "missing"}],
            )
        field_name = "created_at" if topic == "checkouts/create" else "updated_at"
        when = _shopify_time(body.get(field_name), field_name, received_at)
        props: dict[str, Any] = {
            "cart_id": str(token),
            "checkout_id": str(token),
            "value": _money(body.get("total_price")),
            "revenue": _money(body.get("subtotal_price")),
            "currency": body.get("currency") or body.get("presentment_currency"),
            "products": _shopify_products(body.get("line_items")),
            "url": body.get("abandoned_checkout_url"),
        }
        user_id, anonymous_id = _shopify_identity(body, token)
        customer = _mapping(body.get("customer"))
    elif topic == "orders/create":
        if body.get("id") is None:
            raise ValidationError(
                "id: a Shopify order needs an id", details=[{"field": "id", "message": "missing"}]
            )
        when = _shopify_time(body.get("created_at"), "created_at", received_at)
        codes = body.get("discount_codes")
        coupon = (
            codes[0].get("code")
            if isinstance(codes, list) and codes and isinstance(codes[0], dict)
            else None
        )
        token = body.get("checkout_token")
        props = {
            "order_id": str(body["id"]),
            "checkout_id": token,
            "cart_id": token,
            "total": _money(body.get("total_price")),
            "revenue": _money(body.get("subtotal_price")),
            "tax": _money(body.get("total_tax")),
            "discount": _money(body.get("total_discounts")),
            "coupon": coupon,
            "currency": body.get("currency"),
            "products": _shopify_products(body.get("line_items")),
        }
        user_id, anonymous_id = _shopify_identity(body, token)
        if user_id is None and anonymous_id is None:
            anonymous_id = f"shopify-order:{body['id']}"
        customer = _mapping(body.get("customer"))
    else:  # refunds/create
        if body.get("order_id") is None:
            raise ValidationError(
                "order_id: a Shopify refund needs its order_id",
                details=[{"field": "order_id", "message": "missing"}],
            )
        when = _shopify_time(body.get("created_at"), "created_at", received_at)
        amount = 0.0
        for tx in body.get("transactions") or []:
            if (
                isinstance(tx, dict)
                and tx.get("kind") == "refund"
                and tx.get("status")
                in (
                    "success",
                    None,
                )
            ):
                amount += _money(tx.get("amount")) or 0.0
        if not amount:
            for item in body.get("refund_line_items") or []:
                if isinstance(item, dict):
                    amount += _money(item.get("subtotal")) or 0.0
        props = {
            "order_id": str(body["order_id"]),
            "total": amount,
            "currency": body.get("currency"),
        }
        # Refunds carry no customer: the processor files them under the order's customer.
        user_id, anonymous_id = None, f"shopify-order:{body['order_id']}"
        customer = {}
    traits = _shopify_customer_traits(customer, body.get("email"))
    event_context: dict[str, Any] = dict(context)
    if traits:
        event_context["traits"] = traits
    return InboundEvent(
        source="shopify",
        message_id=message_id,
        received_at=received_at,
        type="track",
        name=name,
        user_id=user_id,
        anonymous_id=anonymous_id,
        timestamp=when,
        original_timestamp=when,
        payload={
            "properties": {k: v for k, v in props.items() if v is not None},
            "context": event_context,
        },
    )
