"""Every HTTP route of the app is one door's, by the one table of doors (http_bridge/doors.py),
and each door's record agrees with the places that look it up. In-process: the app is
built, never served."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any, cast, get_args

import pytest
from fastapi import FastAPI
from starlette.routing import BaseRoute
from tandem.v1 import chat_pb2

from http_bridge.app import create_app, door_endpoints
from http_bridge.doors import (
    DOORS,
    RESPONSES,
    Door,
    door_at,
    door_named,
    protocol_at,
    spelling_at,
)
from http_bridge.errors import (
    anthropic_error_body,
    ollama_error_body,
    openai_error_body,
)
from http_bridge.framing import NAMED_SSE, NDJSON, SSE
from http_bridge.routing import DoorApp, Endpoints
from server.chunks import Chunk
from server.context import Protocol

# the app's paths that are no door's: the probes, the metrics, the docs
NOT_A_DOOR = {"/healthz", "/readyz", "/metrics", "/docs", "/docs/assets", "/openapi.json"}

# every way an HTTP door writes an error (http_bridge/errors.py)
ERROR_BODIES = (openai_error_body, ollama_error_body, anthropic_error_body)


def _inner(app: Any) -> tuple[DoorApp, FastAPI]:
    """The door's table and the FastAPI app, under the app's middleware."""
    while not isinstance(app, DoorApp):
        app = app.app
    return app, app.app


def _routes(routes: list[BaseRoute]) -> list[BaseRoute]:
    """FastAPI's routes, an included router's each (it holds the router it includes)."""
    found = []
    for route in routes:
        included = getattr(route, "original_router", None)
        found.extend(_routes(included.routes) if included is not None else [route])
    return found


def served_paths() -> dict[str, set[str]]:
    """Every path the app serves (its table's, then FastAPI's), with the doors whose
    routes declared it (`Endpoints`: table and router); the rest declare none."""
    table, fastapi = _inner(create_app(cast(Any, None), cast(Any, None), max_body_bytes=1))
    declared: dict[str, set[str]] = {}
    for endpoints in door_endpoints():
        paths = [path for _, path in endpoints.table]
        paths += [path for route in _routes(endpoints.router.routes) if (path := _path(route))]
        for path in paths:
            declared.setdefault(path, set()).add(endpoints.door.name)
    served = {path for _, path in table.table}
    served |= {path for route in _routes(fastapi.routes) if (path := _path(route))}
    return {path: declared.get(path, set()) for path in sorted(served)}


def _path(route: BaseRoute) -> str | None:
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


def test_every_route_is_exactly_one_door_s_or_a_listed_non_door_path() -> None:
    served = served_paths()
    assert served.keys() >= NOT_A_DOOR
    for path, declared_by in served.items():
        door = door_at(path)
        if path in NOT_A_DOOR:
            assert (door, declared_by) == (None, set()), path
        else:
            assert door is not None, f"{path} is no door's and not listed as a non-door path"
            assert declared_by == {door.name}, f"{path} is {door.name}'s, declared by {declared_by}"


def test_every_door_serves_routes_under_each_of_its_paths() -> None:
    served = served_paths()
    for door in DOORS:
        for prefix in door.prefixes:
            assert any(path.startswith(prefix) and door_at(path) is door for path in served), (
                f"{door.name}: nothing served under {prefix}"
            )
        for path in door.paths:
            assert path in served, f"{door.name}: {path} is not served"


def test_a_path_is_one_door_s_by_its_longest_prefix() -> None:
    prefixes = [prefix for door in DOORS for prefix in door.prefixes]
    paths = [path for door in DOORS for path in door.paths]
    assert len(prefixes) == len(set(prefixes)), "two doors claim one prefix"
    assert len(paths) == len(set(paths)), "two doors claim one path"
    assert all(p.startswith("/") for p in prefixes + paths)
    # OpenAI's and Anthropic's share /v1: the longer prefix wins, whatever the order
    expected: dict[str, Protocol | None] = {
        "/v1/chat/completions": "openai",
        "/v1/models": "openai",
        "/v1/messages": "anthropic",
        "/v1/messages/count_tokens": "anthropic",
        "/v1/messagesX": "openai",  # a prefix is whole segments
        "/native/v1/chat/completions": "native",
        "/api/chat": "ollama",
        "/": "ollama",
        "/api": None,
        "/v1": None,
        "/healthz": None,
        "/nowhere": None,
    }
    assert {path: protocol_at(path) for path in expected} == expected


def test_an_error_is_written_as_its_path_s_door_writes_one_else_as_openai() -> None:
    paths = ("/api/tags", "/v1/messages", "/v1/messages/x", "/v1/messagesX", "/docs")
    assert {path: spelling_at(path) for path in paths} == {
        "/api/tags": ollama_error_body,
        "/v1/messages": anthropic_error_body,
        "/v1/messages/x": anthropic_error_body,
        "/v1/messagesX": openai_error_body,
        "/docs": openai_error_body,
    }
    assert spelling_at("/native/v1/embeddings") is openai_error_body
    # Ollama's `/` is its call, but a wrong method there is answered as OpenAI answers
    assert (protocol_at("/"), spelling_at("/")) == ("ollama", openai_error_body)


@pytest.mark.parametrize("door", DOORS, ids=lambda door: door.name)
def test_each_door_s_record_agrees_with_what_looks_it_up(door: Door) -> None:
    assert door.name in get_args(Protocol)  # what its calls are recorded as
    assert door.error_body in ERROR_BODIES  # how it writes an error
    assert door_named(door.name) is door
    assert door.dialect.framing in (SSE, NAMED_SSE, NDJSON)
    assert door.key_header is None or door.key_header == door.key_header.lower()
    endpoints = import_module(door.routes).endpoints
    assert isinstance(endpoints, Endpoints)
    assert endpoints.door is door
    assert endpoints.tags == [door.name]
    assert all(door_at(path) is door for _, path in endpoints.table)


def test_the_responses_record_never_answers_what_only_its_route_knows() -> None:
    """Its answers echo the request's settings, map its tool names back and seal its
    reasoning: only the route knows them, so the record's own encoders (or parsing,
    which opens sealed reasoning) never run rather than answer otherwise, silently."""
    dialect = RESPONSES.dialect
    jobs: list[Callable[[], object]] = [
        lambda: dialect.parse_chat({"model": "m", "input": "x"}),
        lambda: dialect.encode_completion(chat_pb2.ChatCompletion(), cast(Any, None)),
        lambda: dialect.stream_encoder(
            chat_pb2.ChatCompletionRequest(), Chunk(id="chatcmpl-x"), cast(Any, None)
        ),
    ]
    for job in jobs:
        with pytest.raises(RuntimeError, match="given per request by its route"):
            job()


def test_the_doors_and_grpc_are_every_protocol() -> None:
    names = [door.name for door in DOORS]
    assert len(names) == len(set(names))
    assert set(get_args(Protocol)) == {*names, "grpc"}
    assert {door.error_body for door in DOORS} == set(ERROR_BODIES)  # each is a door's


def test_a_door_refuses_a_route_under_another_door_s_path() -> None:
    openai = next(door for door in DOORS if door.name == "openai")
    with pytest.raises(ValueError, match="not a path of the openai door"):
        Endpoints(openai).post("/v1/messages")


def test_every_door_that_chats_has_its_row_in_the_parity_matrix() -> None:
    from tests.test_door_parity import DOORS as PARITY

    chatless = {"admin"}  # keys and spend (routes_admin.py): no chat to compare
    assert {door.name for door in DOORS} - chatless | {"grpc"} <= set(PARITY)
