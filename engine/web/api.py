"""Operator JSON API (``/api/...``, admin bearer token) and health."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from engine.errors import AuthError, NotFoundError
from engine.service import Engine, customer_profile

__all__ = ["api_router"]


def api_router(engine: Engine) -> APIRouter:
    token = engine.settings.admin_token
    expected = (
        hashlib.sha256(token.get_secret_value().encode()).digest()
        if token is not None and token.get_secret_value()
        else None
    )

    def require_admin(request: Request) -> None:
        if expected is None:
            raise AuthError(
                "the admin API is disabled: set admin_token",
                details=[{"field": "admin_token", "message": "not set"}],
            )
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not given or not hmac.compare_digest(hashlib.sha256(given.encode()).digest(), expected):
            raise AuthError(
                "a valid admin token is required (Authorization: Bearer <admin_token>)",
                details=[{"field": "Authorization", "message": "missing or wrong bearer token"}],
                challenge='Bearer realm="nudge"',
            )

    router = APIRouter()
    admin = APIRouter(prefix="/api", dependencies=[Depends(require_admin)], tags=["admin"])

    @admin.get("/customers/{ref}", summary="A customer's unified profile")
    async def get_customer(ref: str, events: int = 20) -> dict[str, Any]:
        doc = await run_in_threadpool(
            customer_profile, engine, ref, events=min(max(events, 0), 500)
        )
        if doc is None:
            raise NotFoundError(
                f"no customer {ref!r} (looked up as id, userId, anonymousId and email)",
                details=[{"field": "ref", "message": "not found"}],
            )
        return doc

    @router.get("/healthz", tags=["ops"], summary="Liveness and queue depth")
    async def healthz() -> dict[str, Any]:
        pending = await run_in_threadpool(engine.store.pending_events)
        return {"status": "ok", "pending_events": pending}

    router.include_router(admin)
    return router
