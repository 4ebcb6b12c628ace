"""The FastAPI application of the HTTP door: routes, error spelling, middleware."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp

from http_bridge import routes_native, routes_openai
from http_bridge.body_limit import BodyLimitMiddleware
from http_bridge.disconnect import ClientDisconnected
from http_bridge.docs import serve_docs
from http_bridge.errors import error_response
from http_bridge.fast_path import FastPath
from http_bridge.request_id import RequestIdMiddleware
from http_bridge.responses import JsonResponse
from server.context import CallContext
from server.core.dataplane import DataPlane
from server.errors import GatewayError, InternalError, InvalidRequestError, NotFoundError
from server.policy import Policy

__all__ = ["create_app"]

logger = logging.getLogger("tandem.http")


def _is_ollama(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def _call_headers(request: Request) -> list[tuple[str, str]]:
    """The headers of an authenticated caller's call, rate limits included."""
    ctx: CallContext | None = getattr(request.state, "call", None)
    if ctx is None:
        return []
    await request.app.state.policy.add_headers(ctx)
    return list(ctx.response_headers)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc, ollama=_is_ollama(request), headers=await _call_headers(request))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: GatewayError
    if exc.status_code == 404:
        error = NotFoundError(f"no route {request.method} {request.url.path}")
    else:
        error = InvalidRequestError(str(exc.detail))
    headers = list((exc.headers or {}).items())
    return error_response(
        error, ollama=_is_ollama(request), status=exc.status_code, headers=headers
    )


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first["loc"] if part not in ("body", "query", "path"))
    error = InvalidRequestError(f"{param}: {first['msg']}", param=param or None)
    return error_response(error, ollama=_is_ollama(request))


async def _internal_error(request: Request, exc: Exception) -> Response:
    """Any other exception is a bug: logged once with the request id, answered
    `internal_error` and nothing more (no class name, no traceback)."""
    logger.error("request %s failed", request.state.request_id, exc_info=exc)
    return error_response(
        InternalError("internal error"),
        ollama=_is_ollama(request),
        headers=await _call_headers(request),
    )


async def _disconnected(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)  # nobody is listening; uvicorn drops it


def create_app(
    plane: DataPlane, policy: Policy, is_ready: Callable[[], bool], *, max_body_bytes: int
) -> ASGIApp:
    """The ASGI app uvicorn serves: request ids and the body limit around the
    hot-path table, around FastAPI (which declares every route)."""
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

    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientDisconnected, _disconnected)
    app.add_exception_handler(ClientDisconnect, _disconnected)  # gone while uploading
    app.add_exception_handler(Exception, _internal_error)  # both routing paths (fast_path.py)
    hot = FastPath(app, [*routes_native.router.routes, *routes_openai.router.routes])
    return RequestIdMiddleware(BodyLimitMiddleware(hot, max_body_bytes=max_body_bytes))
