"""The FastAPI application: ingest, tracking, operator API and dashboard."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from engine import __version__
from engine.service import Engine
from engine.web.api import api_router
from engine.web.errors import install_error_handlers
from engine.web.ingest import install_ingest
from engine.web.tracking import install_tracking
from engine.web.writer import EventWriter

__all__ = ["create_app"]


def create_app(engine: Engine) -> FastAPI:
    """The HTTP app for ``engine``; the ingest writer runs for the app's lifetime."""
    writer = EventWriter(engine.store, max_events=engine.settings.ingest.commit_max_events)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await writer.start()
        try:
            yield
        finally:
            await writer.stop()

    app = FastAPI(
        title="Nudge",
        version=__version__,
        description="Trigger-driven marketing automation: Segment-compatible ingest and more.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_ingest(app, engine, writer)
    install_tracking(app, engine, writer)
    app.include_router(api_router(engine))
    return app
