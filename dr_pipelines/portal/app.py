"""The portal's ASGI application: the route table, JSON errors for everything, the worker's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dr_pipelines.core.settings import Settings
from dr_pipelines.portal import openapi, page, routes
from dr_pipelines.portal.context import Portal
from dr_pipelines.portal.errors import PortalError
from dr_pipelines.portal.worker import ExportWorker

E = routes.endpoint

ROUTES = [
    Route("/api/health", E(routes.health, authenticate=False), methods=["GET"]),
    Route("/api/session", E(routes.session_create, body=True, authenticate=False), methods=["POST"]),
    Route("/api/session", E(routes.session_delete, authenticate=False), methods=["DELETE"]),
    Route("/api/clinic", E(routes.clinic), methods=["GET"]),
    Route("/api/data", E(routes.data_all, streams_body=True), methods=["GET"]),
    Route("/api/data/{table}", E(routes.data_table, streams_body=True), methods=["GET"]),
    Route("/api/streams/{attempt_id}", E(routes.stream_status), methods=["GET"]),
    Route("/api/exports", E(routes.exports_list), methods=["GET"]),
    Route("/api/exports", E(routes.exports_create, body=True), methods=["POST"]),
    Route("/api/exports/{job_id}", E(routes.export_status), methods=["GET"]),
    Route("/api/exports/{job_id}/files/{name}", E(routes.export_file, streams_body=True), methods=["GET"]),
    Route("/api/{rest:path}", E(routes.unknown_route), methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
]


def create_app(settings: Settings) -> Starlette:
    """The portal for ``settings`` (its database, storage, limits, signing secret)."""
    portal = Portal.from_settings(settings)
    doc = openapi.document(_version())

    async def openapi_json(_request: Request) -> JSONResponse:
        return JSONResponse(doc)

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return routes.error_response(PortalError(exc.status_code, code, str(exc.detail), "see /openapi.json"))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        portal.worker = ExportWorker(portal)
        try:
            yield
        finally:
            portal.worker.close()

    app = Starlette(routes=[Route("/openapi.json", openapi_json, methods=["GET"]), *ROUTES, *page.ROUTES],
                    exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.portal = portal
    return app


def _version() -> str:
    try:
        return version("dr_pipelines")
    except Exception:  # noqa: BLE001 - a checkout without metadata
        return "0"


def serve(settings: Settings, *, host: str | None = None, port: int | None = None,
          announce: Any = print) -> None:
    """Run the portal on uvicorn until interrupted; ``announce`` hears where it listens."""
    import uvicorn

    app = create_app(settings)
    config = uvicorn.Config(app, host=host or settings.portal_host, port=port or settings.portal_port,
                            log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    announce(f"drp portal listening on http://{config.host}:{config.port} (API description: /openapi.json)")
    server.run()
