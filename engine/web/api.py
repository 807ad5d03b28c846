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

    @admin.get("/rules", summary="Loaded rules and the problems found in rule files")
    async def get_rules() -> dict[str, Any]:
        return _rules_doc(engine)

    @admin.post("/rules/reload", summary="Reload rules and templates from disk")
    async def reload_rules() -> dict[str, Any]:
        await run_in_threadpool(engine.rules.reload)
        return _rules_doc(engine)

    @router.get("/healthz", tags=["ops"], summary="Liveness and queue depth")
    async def healthz() -> dict[str, Any]:
        pending = await run_in_threadpool(engine.store.pending_events)
        return {"status": "ok", "pending_events": pending}

    router.include_router(admin)
    return router


def _rules_doc(engine: Engine) -> dict[str, Any]:
    current = engine.rules.current
    return {
        "rules": [
            {
                "id": r.id,
                "description": r.description,
                "enabled": r.enabled,
                "trigger": r.trigger.event or f"schedule {r.trigger.schedule}",
                "steps": [
                    {"wait": s.wait.total_seconds(), "channel": s.channel, "template": s.template}
                    for s in r.steps
                ],
                "priority": r.priority,
                "file": r.file,
            }
            for r in current.rules
        ],
        "problems": [p.to_dict() for p in current.problems],
        "loaded_at": current.loaded_at.isoformat(),
    }
