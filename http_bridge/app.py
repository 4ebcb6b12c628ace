"""The FastAPI application of the HTTP door."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from http_bridge.responses import JsonResponse
from server.core.dataplane import DataPlane
from server.policy import Policy

__all__ = ["create_app"]


def create_app(plane: DataPlane, policy: Policy, is_ready: Callable[[], bool]) -> FastAPI:
    app = FastAPI(title="Tandem", version="1", default_response_class=JsonResponse)
    app.state.plane = plane
    app.state.policy = policy

    @app.get("/healthz")
    async def healthz() -> JsonResponse:
        """The process is alive."""
        return JsonResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> JsonResponse:
        """Ready to take traffic; 503 while starting or draining."""
        if is_ready():
            return JsonResponse({"status": "ready"})
        return JsonResponse({"status": "draining"}, status_code=503)

    return app
