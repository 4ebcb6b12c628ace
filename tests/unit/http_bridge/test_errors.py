"""A bug on any HTTP route is the contract's 500: one JSON body, logged once with the request id.

There is no honest way left to make a live server fail unexpectedly, so this
runs the app in-process (httpx's ASGITransport, which also raises anything
that escapes the app) with a data plane that fails as a bug would, on both
routing paths: FastAPI's own (`GET /v1/models`) and the hot-path table
(`POST /v1/chat/completions`).
"""

from __future__ import annotations

import logging

import httpx
import pytest
from tandem.v1 import models_pb2

from http_bridge.app import create_app
from server.context import CallContext
from server.core.dataplane import DataPlane
from tests.in_process import SECRET, BrokenProvider, plane_over

INTERNAL_ERROR = {
    "error": {"message": "internal error", "type": "internal_error", "code": None, "param": None}
}


class _BuggyPlane(DataPlane):
    async def list_models(self, ctx: CallContext) -> models_pb2.ListModelsResponse:
        raise KeyError(SECRET)


async def test_a_bug_is_the_contracts_500_on_both_routing_paths(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plane = plane_over(BrokenProvider(), plane=_BuggyPlane)
    app = create_app(plane, plane.policy, max_body_bytes=1 << 20)
    chat = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://tandem"
    ) as client:
        answers = {
            "fastapi": await client.get("/v1/models", headers={"x-request-id": "bug-fastapi"}),
            "hot": await client.post(
                "/v1/chat/completions", json=chat, headers={"x-request-id": "bug-hot"}
            ),
        }
    for path, response in answers.items():
        assert response.status_code == 500, path
        assert response.headers["content-type"] == "application/json", path
        assert response.headers["x-request-id"] == f"bug-{path}"
        assert response.json() == INTERNAL_ERROR, path
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "request bug-fastapi failed",
        "request bug-hot failed",
    ]
    assert all(r.exc_info is not None and SECRET in str(r.exc_info[1]) for r in errors)
