"""Mixed traffic over every door, for scripts/soak.py and scripts/faults.py.

Each request carries its own `x-request-id` (gRPC: metadata), so the ledger
can be read back against what was sent: `Traffic.expected` maps every id to
the status its record must have (`ok`, `cancelled`), or None where no record
may exist (a listing, a request refused before any provider was called). A
cancelled request is a stream of the slow mock model that the client closes
after its first chunk.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import aiohttp
import grpc
import orjson
from tandem.v1 import chat_pb2, chat_pb2_grpc

__all__ = ["DOORS", "Answer", "Door", "Tally", "Traffic", "served"]

NATIVE = "/native/v1/chat/completions"
CHAT = "/v1/chat/completions"
SLOW_WORDS = 40  # a cancelled stream's prompt: 40 words at the slow model's pace


@dataclass(frozen=True)
class Answer:
    """What one request came to: `ok`, or the problem (`status 503 unavailable_error`...)."""

    problem: str | None = None
    unavailable: bool = False  # the contract's 503 for a store the answer needs


OK = Answer()


@dataclass(frozen=True)
class Call:
    request_id: str
    key: str
    model: str
    text: str
    cancel: bool


@dataclass(frozen=True)
class Door:
    name: str
    path: str  # its HTTP route (what /openapi.json lists), or "" for gRPC
    stream: bool
    recorded: bool  # a generation: the ledger has its record
    send: Callable[[Traffic, Call], Awaitable[Answer]]


async def _problem(answer: aiohttp.ClientResponse) -> Answer:
    body = await answer.read()
    unavailable = answer.status == 503 and (
        b"unavailable_error" in body or b"unavailable" in body.lower()
    )
    kind = "unavailable_error" if unavailable else body[:120].decode(errors="replace")
    return Answer(f"status {answer.status} {kind}", unavailable)


async def _http(
    traffic: Traffic,
    call: Call,
    path: str,
    body: dict[str, object] | None,
    end: bytes | None,
    *,
    anthropic: bool = False,
) -> Answer:
    """POST `body` (GET without one); a stream is read to `end` (or cut after its first
    chunk when `call.cancel`); a whole answer must parse as JSON."""
    headers = {"x-request-id": call.request_id}
    if anthropic:
        headers["x-api-key"] = call.key
    else:
        headers["authorization"] = f"Bearer {call.key}"
    url = traffic.base + path
    try:
        if body is None:
            request = traffic.session.get(url, headers=headers)
        else:
            headers["content-type"] = "application/json"
            request = traffic.session.post(url, data=orjson.dumps(body), headers=headers)
        async with request as answer:
            if answer.status != 200:
                return await _problem(answer)
            if end is None:
                orjson.loads(await answer.read())
                return OK
            if call.cancel:
                await answer.content.readany()
                answer.close()  # the connection goes: the server sees the caller leave
                return OK
            data = await answer.read()
            return OK if end in data[-200:] else Answer(f"stream without {end!r}")
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        return Answer(f"{type(exc).__name__}")


def _messages(call: Call) -> list[dict[str, str]]:
    return [{"role": "user", "content": call.text}]


def _chat(path: str, stream: bool) -> Callable[[Traffic, Call], Awaitable[Answer]]:
    def send(traffic: Traffic, call: Call) -> Awaitable[Answer]:
        body: dict[str, object] = {"model": call.model, "messages": _messages(call)}
        if stream:
            body["stream"] = True
        return _http(traffic, call, path, body, b"data: [DONE]" if stream else None)

    return send


def _completions(stream: bool) -> Callable[[Traffic, Call], Awaitable[Answer]]:
    def send(traffic: Traffic, call: Call) -> Awaitable[Answer]:
        body: dict[str, object] = {"model": call.model, "prompt": call.text, "stream": stream}
        return _http(traffic, call, "/v1/completions", body, b"data: [DONE]" if stream else None)

    return send


def _ollama(route: str, stream: bool) -> Callable[[Traffic, Call], Awaitable[Answer]]:
    def send(traffic: Traffic, call: Call) -> Awaitable[Answer]:
        body: dict[str, object] = {"model": call.model, "stream": stream}
        if route == "chat":
            body["messages"] = _messages(call)
        else:
            body["prompt"] = call.text
        return _http(traffic, call, f"/api/{route}", body, b'"done":true' if stream else None)

    return send


def _anthropic(stream: bool) -> Callable[[Traffic, Call], Awaitable[Answer]]:
    def send(traffic: Traffic, call: Call) -> Awaitable[Answer]:
        body: dict[str, object] = {
            "model": call.model,
            "max_tokens": 256,
            "messages": _messages(call),
            "stream": stream,
        }
        end = b"event: message_stop" if stream else None
        return _http(traffic, call, "/v1/messages", body, end, anthropic=True)

    return send


def _responses(stream: bool) -> Callable[[Traffic, Call], Awaitable[Answer]]:
    def send(traffic: Traffic, call: Call) -> Awaitable[Answer]:
        body: dict[str, object] = {"model": call.model, "input": call.text, "stream": stream}
        # its last event, response.completed, is the whole response: its usage ends it
        end = b'"total_tokens":' if stream else None
        return _http(traffic, call, "/v1/responses", body, end)

    return send


def _embeddings(traffic: Traffic, call: Call) -> Awaitable[Answer]:
    body: dict[str, object] = {"model": call.model, "input": call.text}
    return _http(traffic, call, "/v1/embeddings", body, None)


def _models(traffic: Traffic, call: Call) -> Awaitable[Answer]:
    return _http(traffic, call, "/v1/models", None, None)


def _grpc_problem(error: grpc.aio.AioRpcError) -> Answer:
    code = error.code()
    return Answer(
        f"gRPC {code.name} {(error.details() or '')[:120]}", code == grpc.StatusCode.UNAVAILABLE
    )


def _grpc_request(call: Call) -> chat_pb2.ChatCompletionRequest:
    return chat_pb2.ChatCompletionRequest(
        model=call.model, messages=[chat_pb2.ChatMessage(role="user", content=call.text)]
    )


def _metadata(call: Call) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {call.key}"), ("x-request-id", call.request_id))


async def _grpc_unary(traffic: Traffic, call: Call) -> Answer:
    try:
        answer = await traffic.stub.CreateChatCompletion(
            _grpc_request(call), metadata=_metadata(call), timeout=60
        )
    except grpc.aio.AioRpcError as exc:
        return _grpc_problem(exc)
    return OK if answer.choices else Answer("gRPC answer without a choice")


async def _grpc_stream(traffic: Traffic, call: Call) -> Answer:
    stream = traffic.stub.StreamChatCompletion(
        _grpc_request(call), metadata=_metadata(call), timeout=60
    )
    try:
        usage = False
        async for chunk in stream:
            if call.cancel:
                stream.cancel()
                return OK
            usage = usage or chunk.HasField("usage")
    except grpc.aio.AioRpcError as exc:
        return _grpc_problem(exc)
    return OK if usage else Answer("gRPC stream without usage")


DOORS = (
    Door("grpc unary", "", False, True, _grpc_unary),
    Door("grpc stream", "", True, True, _grpc_stream),
    Door("native", NATIVE, False, True, _chat(NATIVE, False)),
    Door("native stream", NATIVE, True, True, _chat(NATIVE, True)),
    Door("/v1 chat", CHAT, False, True, _chat(CHAT, False)),
    Door("/v1 chat stream", CHAT, True, True, _chat(CHAT, True)),
    Door("/v1 completions", "/v1/completions", False, True, _completions(False)),
    Door("/v1 completions stream", "/v1/completions", True, True, _completions(True)),
    Door("/v1 embeddings", "/v1/embeddings", False, True, _embeddings),
    Door("/v1 models", "/v1/models", False, False, _models),
    Door("/api/chat", "/api/chat", False, True, _ollama("chat", False)),
    Door("/api/chat stream", "/api/chat", True, True, _ollama("chat", True)),
    Door("/api/generate", "/api/generate", False, True, _ollama("generate", False)),
    Door("/api/generate stream", "/api/generate", True, True, _ollama("generate", True)),
    Door("/v1/messages", "/v1/messages", False, True, _anthropic(False)),
    Door("/v1/messages stream", "/v1/messages", True, True, _anthropic(True)),
    Door("/v1/responses", "/v1/responses", False, True, _responses(False)),
    Door("/v1/responses stream", "/v1/responses", True, True, _responses(True)),
)


def served(base: str) -> tuple[tuple[Door, ...], list[str]]:
    """The doors this server has (its /openapi.json lists their routes), and the names
    of those it lacks: an older checkout is soaked over what it serves."""
    paths = set(orjson.loads(urllib.request.urlopen(f"{base}/openapi.json").read())["paths"])
    have = tuple(d for d in DOORS if not d.path or d.path in paths)
    return have, [d.name for d in DOORS if d not in have]


@dataclass
class Tally:
    """What the traffic sent and saw (picklable: it crosses back from the load's process)."""

    expected: dict[str, str | None] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)  # ids whose record may or may not exist
    doors: Counter[str] = field(default_factory=Counter)
    problems: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # phase, door, what
    unavailable: Counter[tuple[str, str]] = field(default_factory=Counter)  # phase, door


@dataclass
class Traffic:
    """Requests over every door in turn, `concurrency` at a time."""

    base: str  # http://HOST:PORT
    grpc_target: str
    run: str  # the request ids' prefix
    keys: list[str]  # cached keys, used in turn
    doors: tuple[Door, ...] = DOORS
    fresh_keys: Iterator[str] = field(default_factory=lambda: iter(()))
    fresh_every: int = 0  # every Nth request uses a key never used before (0: never)
    cancel_every: int = 10  # every Nth stream is cancelled after its first chunk
    done: Callable[[], None] = lambda: None  # called after each request (progress)
    phase: Callable[[], str] = lambda: "-"  # what the faults are doing now
    tally: Tally = field(default_factory=Tally)
    session: aiohttp.ClientSession = field(init=False)
    stub: chat_pb2_grpc.ChatServiceAsyncStub = field(init=False)

    async def drive(self, count: int | None, concurrency: int, until: float | None = None) -> None:
        """`count` requests (or until the monotonic `until`), `concurrency` at a time."""
        numbers = itertools.count() if count is None else iter(range(count))
        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=60)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as self.session,
            grpc.aio.insecure_channel(self.grpc_target) as channel,
        ):
            self.stub = chat_pb2_grpc.ChatServiceStub(channel)

            async def worker() -> None:
                for number in numbers:
                    if until is not None and time.monotonic() >= until:
                        return
                    await self.one(number)

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def one(self, number: int) -> None:
        door = self.doors[number % len(self.doors)]
        streams = number // len(self.doors)
        cancel = door.stream and self.cancel_every > 0 and streams % self.cancel_every == 1
        fresh = self.fresh_every > 0 and number % self.fresh_every == self.fresh_every - 1
        key = next(self.fresh_keys, None) if fresh else None
        call = Call(
            request_id=f"{self.run}{number}",
            key=key or self.keys[number % len(self.keys)],
            model="slow" if cancel else "echo",
            text=" ".join(["slow"] * SLOW_WORDS) if cancel else f"soak {number} hello there",
            cancel=cancel,
        )
        phase = self.phase()
        answer = await door.send(self, call)
        tally = self.tally
        tally.doors[door.name] += 1
        if answer.problem is None:
            if door.recorded:
                tally.expected[call.request_id] = "cancelled" if cancel else "ok"
            else:
                tally.expected[call.request_id] = None
        else:
            where = phase if phase == self.phase() else f"{phase}/{self.phase()}"
            if answer.unavailable and key is not None:
                tally.unavailable[(where, door.name)] += 1
                tally.expected[call.request_id] = None  # refused before any provider
            else:
                tally.problems[(where, door.name, answer.problem)] += 1
                tally.failed.add(call.request_id)
        self.done()
