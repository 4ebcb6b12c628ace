"""The FastAPI application of the HTTP door: routes, error spelling, middleware."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response
from starlette.types import ASGIApp

from http_bridge import routes_native, routes_ollama, routes_openai
from http_bridge.body_limit import BodyLimitMiddleware
from http_bridge.docs import serve_docs
from http_bridge.request_id import RequestIdMiddleware
from http_bridge.responses import JsonResponse
from http_bridge.routing import ERRORS_ANSWERED, DoorApp, error_to_response
from server.core.dataplane import DataPlane
from server.policy import Policy

__all__ = ["create_app"]


def create_app(
    plane: DataPlane, policy: Policy, is_ready: Callable[[], bool], *, max_body_bytes: int
) -> ASGIApp:
    """The ASGI app uvicorn serves: request ids and the body limit around the
    door's endpoint table (routing.py), around FastAPI (the rest, and the docs
    of all)."""
    app = FastAPI(
        title="Tandem",
        version="1",
        summary="LLM gateway: native, OpenAI-compatible and Ollama-compatible HTTP routes.",
        default_response_class=JsonResponse,
        docs_url=None,  # FastAPI's page loads Swagger UI from a CDN: serve_docs serves it here
        redoc_url=None,
    )
    app.state.plane = plane
    app.state.policy = policy
    app.include_router(routes_native.router)
    app.include_router(routes_openai.router)
    app.include_router(routes_ollama.router)
    serve_docs(app)

    @app.get("/healthz", tags=["ops"], summary="The process is alive")
    async def healthz() -> Response:
        return JsonResponse({"status": "ok"})

    @app.get(
        "/readyz", tags=["ops"], summary="Ready to take traffic; 503 while starting or draining"
    )
    async def readyz() -> Response:
        if is_ready():
            return JsonResponse({"status": "ready"})
        return JsonResponse({"status": "draining"}, status_code=503)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics of this process")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for error in ERRORS_ANSWERED:
        app.add_exception_handler(error, error_to_response)
    endpoints = [routes_native.endpoints, routes_openai.endpoints, routes_ollama.endpoints]
    documented = [route for group in endpoints for route in group.documented]

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
    door = DoorApp(app, endpoints)
    return RequestIdMiddleware(BodyLimitMiddleware(door, max_body_bytes=max_body_bytes))
