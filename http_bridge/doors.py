"""The HTTP doors, one record each, in the one table every other place looks up.

A door is its protocol name (on its calls' usage records, access lines, metrics
and spans), the paths that are its, how it writes an error (errors.py), the
header its callers' key may come in, its dialect (how it reads a request, writes
an answer and frames a stream: dialects.py), and the module of its routes
(`endpoints`, an `Endpoints` built on this record: routing.py).

A path is a door's by its longest prefix: OpenAI's `/v1/` holds Anthropic's
`/v1/messages`. Where the call scope counts a request, how an error is written,
which door a route registers under: all ask `door_at`.

Adding a door: its record here (and its name in `server.context.Protocol`), its
translation package (server/translate/), its routes module, and its row in the
parity matrix (tests/test_door_parity.py). The gRPC door (server/grpc_door/) is
the one door with no path: `grpc`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from tandem.v1 import embeddings_pb2

from http_bridge.dialects import Dialect, ollama_stream, openai_dialect
from http_bridge.errors import (
    ErrorBody,
    anthropic_error_body,
    ollama_error_body,
    openai_error_body,
)
from http_bridge.framing import NAMED_SSE, NDJSON
from server.context import Protocol
from server.errors import NotFoundError
from server.translate.anthropic import inbound as anthropic_inbound
from server.translate.anthropic import replies as anthropic_replies
from server.translate.ollama import inbound as ollama_inbound
from server.translate.ollama import replies as ollama_replies
from server.translate.responses import inbound as responses_inbound

__all__ = [
    "ADMIN",
    "ANTHROPIC",
    "DOORS",
    "NATIVE",
    "OLLAMA",
    "OPENAI",
    "RESPONSES",
    "Door",
    "door_at",
    "door_named",
    "protocol_at",
    "spelling_at",
]


@dataclass(frozen=True, slots=True)
class Door:
    name: Protocol
    # the paths under these are this door's (the longest wins); a prefix is whole path
    # segments: `/v1/messages` holds itself and `/v1/messages/...`, not `/v1/messagesX`
    prefixes: tuple[str, ...]
    dialect: Dialect  # its chat and embeddings; a route may vary it (`dataclasses.replace`)
    routes: str  # the module of its routes, whose `endpoints` app.py serves
    # how it writes an error (errors.py), whoever answers it
    error_body: ErrorBody = openai_error_body
    # and these paths, exactly, outside its prefixes: its calls, but an error there is
    # written as OpenAI's, as at a path of no door (`spelling_at`)
    paths: tuple[str, ...] = ()
    # a header the caller's key may come in bare, before `authorization: Bearer <key>`
    key_header: str | None = None


# the native door is OpenAI's shapes, strict and without the `object` keys
NATIVE = Door("native", ("/native/v1/",), openai_dialect(strict=True), "http_bridge.routes_native")
OPENAI = Door("openai", ("/v1/",), openai_dialect(strict=False), "http_bridge.routes_openai")

OLLAMA = Door(
    name="ollama",
    prefixes=("/api/",),
    paths=("/",),  # "Ollama is running", where Ollama's clients check that it is up
    dialect=Dialect(
        parse_chat=ollama_inbound.parse_chat,
        encode_completion=lambda answer, ctx: ollama_replies.encode_completion(answer, ctx.started),
        stream_encoder=ollama_stream(generate=False),
        parse_embedding=ollama_inbound.parse_embedding,
        encode_embeddings=ollama_replies.encode_embed,
        framing=NDJSON,
        model_name=ollama_inbound.resolve_tag,
    ),
    error_body=ollama_error_body,
    routes="http_bridge.routes_ollama",
)


def _no_embeddings(body: object) -> embeddings_pb2.EmbeddingRequest:
    """A door with no embeddings route (Anthropic's, the Responses API): never called."""
    raise NotFoundError("this API has no embeddings")


ANTHROPIC = Door(
    name="anthropic",
    prefixes=("/v1/messages",),
    key_header="x-api-key",  # Anthropic's clients send it so; a Bearer token works too
    dialect=Dialect(
        parse_chat=anthropic_inbound.parse_chat,
        encode_completion=lambda answer, ctx: anthropic_replies.encode_completion(answer),
        # the core left its prompt estimate on the trace, before the first chunk
        stream_encoder=lambda request, first, ctx: (
            anthropic_replies.StreamEncoder(ctx.trace.prompt_estimate).encode
        ),
        parse_embedding=_no_embeddings,
        encode_embeddings=lambda request, answer: {},
        framing=NAMED_SSE,
        unread=anthropic_inbound.unread,
    ),
    error_body=anthropic_error_body,
    routes="http_bridge.routes_anthropic",
)


def _given_per_request(job: str) -> Callable[..., NoReturn]:
    """A job the route gives per request, never run from the record: the Responses
    door's answers echo the request's settings, map its tool names back and seal its
    reasoning; its parsing opens sealed reasoning (routes_responses.py). A record of
    its own would answer with other settings than the route's, silently."""

    def given_by_the_route(*args: object) -> NoReturn:
        raise RuntimeError(f"the Responses door's {job} is given per request by its route")

    return given_by_the_route


# OpenAI's Responses API: under `/v1/`, its own prefix wins. Its route gives the chat's
# parsing and encoders per request; the record holds what never varies.
RESPONSES = Door(
    name="responses",
    prefixes=("/v1/responses",),
    dialect=Dialect(
        parse_chat=_given_per_request("parse_chat"),
        encode_completion=_given_per_request("encode_completion"),
        stream_encoder=_given_per_request("stream_encoder"),
        parse_embedding=_no_embeddings,
        encode_embeddings=lambda request, answer: {},
        framing=NAMED_SSE,
        unread=responses_inbound.unread,
    ),
    routes="http_bridge.routes_responses",
)

# The admin API (`/admin/v1/`): keys and spend, for admin keys alone. It has no chat:
# its dialect is the native one, never called; its errors are written as OpenAI's.
ADMIN = Door("admin", ("/admin/v1/",), NATIVE.dialect, "http_bridge.routes_admin")

# in the order app.py serves them and /openapi.json lists their routes
DOORS = (NATIVE, OPENAI, OLLAMA, ANTHROPIC, RESPONSES, ADMIN)

_BY_NAME = {door.name: door for door in DOORS}
_EXACT = {path: door for door in DOORS for path in door.paths}
# a prefix without its closing slash is also its own path
_OWN = {p: door for door in DOORS for p in door.prefixes if not p.endswith("/")}
_BY_PREFIX = sorted(
    ((p if p.endswith("/") else p + "/", door) for door in DOORS for p in door.prefixes),
    key=lambda p: -len(p[0]),
)


def door_at(path: str) -> Door | None:
    """The door a path is (its own path, else its longest prefix's), or None for the
    rest (probes, metrics, docs)."""
    exact = _EXACT.get(path) or _OWN.get(path)
    if exact is not None:
        return exact
    for prefix, door in _BY_PREFIX:
        if path.startswith(prefix):
            return door
    return None


def protocol_at(path: str) -> Protocol | None:
    """The protocol a request to `path` is counted under, before a route makes it sure."""
    door = door_at(path)
    return None if door is None else door.name


def spelling_at(path: str) -> ErrorBody:
    """How an error at `path` is written, whoever answers it (a route, the body limit,
    the origin guard, the last resort): as the door whose prefix it is under writes one,
    else as OpenAI does (a door's own exact path too: Ollama's `/`)."""
    door = door_at(path)
    return openai_error_body if door is None or path in _EXACT else door.error_body


def door_named(name: Protocol) -> Door:
    """The door whose calls are recorded as `name` (a `CallContext.protocol`)."""
    return _BY_NAME[name]
