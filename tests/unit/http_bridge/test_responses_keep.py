"""A response the store fails to keep fails its answer: streamed, the last event is
`response.failed` instead of `response.completed`; whole, a 503. The caller asked for
a response it can continue: one that cannot be continued must not look kept.

In process (httpx's ASGITransport), with a store that fails only when written: no
live store can be made to fail between a request's start and its end on cue."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from http_bridge.app import create_app
from server.config import ResponsesConfig, load_config
from server.core.conversations import Conversations
from server.providers import build_providers
from tests.in_process import plane_over


class UnwritableStore:
    """Reads find nothing; a write fails as a driver's would."""

    async def save_response(self, *args: object) -> None:
        raise OSError("disk I/O error at /var/lib/tandem")

    def __getattr__(self, name: str) -> Any:
        async def nothing(*args: object) -> None:
            return None

        return nothing


async def post(body: dict[str, Any]) -> httpx.Response:
    config = load_config(None, environ={})
    plane = plane_over(build_providers(config)["mock"])
    conversations = Conversations(UnwritableStore(), ResponsesConfig(), plane.policy)
    app = create_app(plane, plane.policy, max_body_bytes=1 << 20, conversations=conversations)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://tandem"
    ) as client:
        return await client.post("/v1/responses", json=body)


async def test_a_stream_whose_response_cannot_be_kept_ends_failed() -> None:
    answer = await post({"model": "echo", "input": "one two", "stream": True})
    assert answer.status_code == 200
    events = [e.split("\n") for e in answer.text.strip().split("\n\n")]
    names = [name.removeprefix("event: ") for name, _ in events]
    assert "response.completed" not in names
    assert names[-1] == "response.failed"
    failed = orjson.loads(events[-1][1].removeprefix("data: "))
    assert failed["response"]["error"]["code"] == "response_store_unavailable"
    assert failed["response"]["output"][0]["content"][0]["text"] == "one two"
    assert "/var/lib" not in answer.text


async def test_a_whole_answer_whose_response_cannot_be_kept_is_a_503() -> None:
    answer = await post({"model": "echo", "input": "one two"})
    assert answer.status_code == 503
    assert answer.json()["error"]["type"] == "unavailable_error"
    assert "/var/lib" not in answer.text


async def test_with_store_false_nothing_is_written() -> None:
    answer = await post({"model": "echo", "input": "one two", "store": False})
    assert answer.status_code == 200
    assert answer.json()["store"] is False
