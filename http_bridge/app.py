"""The FastAPI application of the HTTP door: routes, error spelling, middleware."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import import_module
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.types import ASGIApp

from http_bridge.body_limit import BodyLimitMiddleware
from http_bridge.call_scope import CallScopeMiddleware
from http_bridge.cors import OriginGuard
from http_bridge.docs import serve_docs
from http_bridge.doors import DOORS
from http_bridge.responses import JsonResponse
from http_bridge.routing import ERRORS_ANSWERED, DoorApp, Endpoints, error_to_response
from server.config import ResponsesConfig, TelemetryConfig
from server.core.admin import KeyAdmin
from server.core.conversations import Conversations
from server.core.dataplane import DataPlane
from server.policy import Policy
from server.telemetry import Telemetry
from server.telemetry.metrics import CONTENT_TYPE_LATEST
from server.telemetry.readiness import Readiness

__all__ = ["create_app", "door_endpoints"]


def create_app(
    plane: DataPlane,
    policy: Policy,
    *,
    max_body_bytes: int,
    telemetry: Telemetry | None = None,
    readiness: Readiness | None = None,
    cors_origins: Iterable[str] = (),
    conversations: Conversations | None = None,
    admin: KeyAdmin | None = None,
) -> ASGIApp:
    """The ASGI app uvicorn serves: the call scope (call_scope.py), the browser
    origins' check (cors.py) and the body limit around the door's endpoint
    table (routing.py), around FastAPI (the rest, and the docs of all). Without
    `telemetry` and `readiness` (tests), fresh ones, ready."""
    if telemetry is None:
        telemetry = Telemetry(TelemetryConfig(access_log=False))
    if readiness is None:
        readiness = Readiness(telemetry.metrics)
        readiness.set_ready()
    app = FastAPI(
        title="Tandem",
        version="1",
        summary="LLM gateway: native, OpenAI-, Ollama- and Anthropic-compatible HTTP routes.",
        default_response_class=JsonResponse,
        docs_url=None,  # FastAPI's page loads Swagger UI from a CDN: serve_docs serves it here
        redoc_url=None,
    )
    app.state.plane = plane
    app.state.policy = policy
    # stored responses (`/v1/responses`); without one (tests), none are kept
    app.state.conversations = conversations or Conversations(None, ResponsesConfig(), policy)
    app.state.admin = admin  # the admin API's handlers (`/admin/v1`); None: not served
    endpoints = door_endpoints()
    for group in endpoints:
        if group.router.routes:  # a door may have only its table's (Anthropic's)
            app.include_router(group.router)
    serve_docs(app)
    _serve_ops(app, telemetry, readiness)
    for error in ERRORS_ANSWERED:
        app.add_exception_handler(error, error_to_response)
    _document(app, [route for group in endpoints for route in group.documented])
    door = DoorApp(app, endpoints)
    limited = BodyLimitMiddleware(door, max_body_bytes=max_body_bytes)
    return CallScopeMiddleware(OriginGuard(limited, cors_origins), telemetry, readiness)


def door_endpoints() -> list[Endpoints]:
    """Every door's routes (doors.py names the module of each), in the table's order."""
    found = []
    for door in DOORS:
        endpoints = import_module(door.routes).endpoints
        if not isinstance(endpoints, Endpoints) or endpoints.door is not door:
            raise TypeError(f"{door.routes}.endpoints is not the {door.name} door's")
        found.append(endpoints)
    return found


def _serve_ops(app: FastAPI, telemetry: Telemetry, readiness: Readiness) -> None:
    """The probes and the metrics, for the orchestrator and Prometheus: no door's."""

    @app.get("/healthz", tags=["ops"], summary="The process is alive")
    async def healthz() -> Response:
        return JsonResponse({"status": "ok"})

    @app.get(
        "/readyz", tags=["ops"], summary="Ready to take traffic; 503 while starting or draining"
    )
    async def readyz() -> Response:
        status, body = readiness.answer()
        return JsonResponse(body, status_code=status)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics (of every worker)")
    async def metrics() -> Response:
        return Response(telemetry.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _document(app: FastAPI, documented: list[APIRoute]) -> None:
    """/openapi.json: the routes the door's table serves (`documented`), then FastAPI's."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=[*documented, *app.routes],
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
