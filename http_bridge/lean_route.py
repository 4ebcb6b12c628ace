"""A FastAPI route class for the hot endpoints: the declared dependency, called directly.

FastAPI's generic request handler (dependency solver, body and response
models) cost ~80 us a call measured here, a third of the HTTP door's budget.
Hot endpoints take the raw `Request` and exactly one dependency, the call
context (`Annotated[CallContext, Depends(...)]`). This route keeps that
declaration, so OpenAPI, the exception handlers and the middleware stay
FastAPI's, and calls the very same dependency function itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from server.context import CallContext

__all__ = ["LeanRoute", "lean_post"]

Endpoint = Callable[..., Awaitable[Response]]


class LeanRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[[Request, CallContext], Awaitable[Response]] = self.endpoint
        dependencies = [d.call for d in self.dependant.dependencies]
        if len(dependencies) != 1 or dependencies[0] is None or self.dependant.path_params:
            raise TypeError(f"{self.path}: a LeanRoute endpoint takes (request, ctx) only")
        open_call: Callable[[Request], Awaitable[CallContext]] = dependencies[0]

        async def handler(request: Request) -> Response:
            return await endpoint(request, await open_call(request))

        return handler


def lean_post(router: APIRouter, path: str, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
    """Decorator: register a hot POST endpoint on a `LeanRoute`."""

    def register(endpoint: Endpoint) -> Endpoint:
        router.add_api_route(
            path, endpoint, methods=["POST"], route_class_override=LeanRoute, **kwargs
        )
        return endpoint

    return register
