"""The holes a hostile review found in the accounting (issue 23), each closed on a live
gateway: reasoning, tools, schemas and media are charged; a timeout after the upstream
had the request is charged its prompt once; an answer with no choice is a 502."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import grpc
import httpx
import ollama
import openai
import orjson
import pytest
from aiohttp import web

from server.messages import estimate_tokens
from tests.eventually import eventually
from tests.fake_upstream import FakeUpstream
from tests.servers import TandemProcess, grpc_chat_failure, start_tandem
from tests.sse import DONE, open_stream, send

THOUGHT = "thinking about it "  # one piece of reasoning, every THOUGHT_EVERY_S
THOUGHT_EVERY_S = 0.05
THOUGHTS_READ = 10  # the caller reads this many, then goes away
PROMPT = "one two three"
PROMPT_ESTIMATE = 4  # max(3 words, ceil(13 bytes / 4))
NO_CHOICE_USAGE = {"prompt_tokens": 7, "completion_tokens": 0, "total_tokens": 7}


class HolesUpstream(FakeUpstream):
    """The shared fake, with three more behaviours for every dialect it speaks:

    - `thinkdrip`: stream nothing but reasoning, a piece every 50 ms, for 20 s
      (OpenAI's `reasoning_content`, Ollama's `thinking`, Anthropic's `thinking_delta`)
    - `nochoice`: answer `choices: []` with a usage (OpenAI's dialect)
    - `filterfirst`: stream a chunk with no choice (as Azure's prompt filter
      verdict comes), then the answer `one two`
    """

    async def _answer(self, request: web.Request, body: Any, behaviour: str) -> web.StreamResponse:
        if behaviour == "nochoice":
            head = {"id": "up-1", "created": 1, "model": body["model"], "choices": []}
            if not body.get("stream"):
                return web.json_response({**head, "usage": NO_CHOICE_USAGE})
            response = await open_stream(request)
            await response.write(b"data: " + orjson.dumps({**head, "usage": NO_CHOICE_USAGE}))
            await response.write(b"\n\ndata: [DONE]\n\n")
            return response
        if behaviour == "filterfirst":
            response = await open_stream(request)
            head = {"id": "up-1", "created": 1, "model": body["model"]}
            events: list[dict[str, Any]] = [
                {**head, "choices": [], "prompt_filter_results": [{"prompt_index": 0}]},
                {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
                {**head, "choices": [{"index": 0, "delta": {"content": "one "}}]},
                {**head, "choices": [{"index": 0, "delta": {"content": "two"}}]},
                {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            ]
            for data in events:
                await send(response, data)
            await response.write(DONE)
            return response
        if behaviour != "thinkdrip":
            return await super()._answer(request, body, behaviour)
        response = await open_stream(request)
        head = {"id": "up-1", "created": 1, "model": body["model"]}
        for _ in range(400):
            delta = {"role": "assistant", "reasoning_content": THOUGHT}
            data = {**head, "choices": [{"index": 0, "delta": delta}]}
            await send(response, data)
            await asyncio.sleep(THOUGHT_EVERY_S)
        return response

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        if self.script and self.script[0] == "thinkdrip":
            self.script.popleft()
            await self._record(request)
            response = await open_stream(request)

            async def event(name: str, data: dict[str, Any]) -> None:
                await send(response, {"type": name, **data}, name)

            message: dict[str, Any] = {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude",
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": 11, "output_tokens": 1},
            }
            await event("message_start", {"message": message})
            start = {"type": "thinking", "thinking": ""}
            await event("content_block_start", {"index": 0, "content_block": start})
            for _ in range(400):
                delta = {"type": "thinking_delta", "thinking": THOUGHT}
                await event("content_block_delta", {"index": 0, "delta": delta})
                await asyncio.sleep(THOUGHT_EVERY_S)
            return response
        return await super()._messages(request)

    async def _ollama_chat(self, request: web.Request) -> web.StreamResponse:
        if self.script and self.script[0] == "thinkdrip":
            self.script.popleft()
            body = await self._record(request)
            response = web.StreamResponse(headers={"content-type": "application/x-ndjson"})
            await response.prepare(request)
            for _ in range(400):
                message = {"role": "assistant", "content": "", "thinking": THOUGHT}
                line = {"model": body["model"], "done": False, "message": message}
                await response.write(orjson.dumps(line) + b"\n")
                await asyncio.sleep(THOUGHT_EVERY_S)
            return response
        return await super()._ollama_chat(request)


CONFIG = """
providers:
  - {name: up, kind: openai, base_url: "%(base)s", api_key: k, max_retries: 0}
  - {name: lab, kind: ollama, base_url: "%(root)s", max_retries: 0}
  - {name: claude, kind: anthropic, base_url: "%(root)s", api_key: k, max_retries: 0}
  - {name: patient, kind: openai, base_url: "%(base)s", api_key: k, timeout_s: 2, max_retries: 2}
  - {name: nowhere, kind: openai, base_url: "http://127.0.0.1:%(closed)d/v1", max_retries: 2}
  - {name: jammed, kind: openai, base_url: "http://127.0.0.1:%(jammed)d/v1", timeout_s: 1, max_retries: 0}
models:
  - {name: relay, provider: up}
  - {name: llama, provider: lab}
  - {name: sonnet, provider: claude}
  - {name: waits, provider: patient}
  - {name: unreachable, provider: nowhere}
  - {name: connecting, provider: jammed}
tiers:
  free: {default_model: relay, tokens_per_minute: %(tpm)d}
usage: {store: "sqlite:///usage.db", flush_interval_ms: 20}
"""
TOKENS_PER_MINUTE = 10_000_000


@pytest.fixture(scope="module")
def holes() -> Iterator[HolesUpstream]:
    with HolesUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def jammed() -> Iterator[int]:
    """A port whose accept queue is full: a connect to it hangs (its SYN is dropped)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        queued = [socket.socket() for _ in range(8)]
        for client in queued:
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
        yield port
        for client in queued:
            client.close()


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def start(
    tmp_path: Any, holes: HolesUpstream, jammed: int, tpm: int = TOKENS_PER_MINUTE
) -> TandemProcess:
    values = {
        "base": holes.base_url,
        "root": holes.root,
        "closed": closed_port(),
        "jammed": jammed,
        "tpm": tpm,
    }
    return start_tandem(tmp_path, CONFIG % values)


@pytest.fixture(scope="module")
def gateway(
    holes: HolesUpstream, jammed: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TandemProcess]:
    process = start(tmp_path_factory.mktemp("holes"), holes, jammed)
    yield process
    assert process.terminate() == 0, process.stderr()


def ledger(gateway: TandemProcess) -> list[dict[str, Any]]:
    """The anonymous caller's records, newest first."""
    found: list[dict[str, Any]] = httpx.get(f"{gateway.base_url}/native/v1/usage").json()["records"]
    return found


@pytest.fixture
def new_record(gateway: TandemProcess, holes: HolesUpstream) -> Callable[[], dict[str, Any]]:
    """The one record a test adds to the module gateway's ledger, once it is written."""
    holes.reset()
    before = len(ledger(gateway))

    def added() -> dict[str, Any]:
        def written() -> list[dict[str, Any]]:
            found = ledger(gateway)
            assert len(found) > before, "the record is not written yet"
            return found

        found = eventually(written, 20)
        assert len(found) == before + 1, found
        return found[0]

    return added


def user(text: str = PROMPT) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# --- reasoning, thinking and refusals are what was sent -----------------------------------


def read_reasoning_openai(gateway: TandemProcess) -> int:
    sdk: Any
    with openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="x", max_retries=0) as sdk:
        received = 0
        with sdk.chat.completions.create(model="relay", messages=user(), stream=True) as stream:
            for chunk in stream:
                if getattr(chunk.choices[0].delta, "reasoning_content", None):
                    received += 1
                if received >= THOUGHTS_READ:
                    break
    return received


def read_reasoning_ollama(gateway: TandemProcess) -> int:
    client = ollama.Client(host=gateway.base_url)
    received = 0
    stream: Any = client.chat(model="llama", messages=user(), stream=True, think=True)
    for part in stream:
        if part.message.thinking:
            received += 1
        if received >= THOUGHTS_READ:
            break
    stream.close()
    client._client.close()
    return received


def read_reasoning_anthropic(gateway: TandemProcess) -> int:
    with anthropic.Anthropic(base_url=gateway.base_url, api_key="x", max_retries=0) as sdk:
        received = 0
        with sdk.messages.stream(
            model="sonnet",
            max_tokens=2000,
            messages=user(),  # type: ignore[arg-type]
            thinking={"type": "enabled", "budget_tokens": 1024},
        ) as stream:
            for event in stream:
                if event.type == "content_block_delta" and event.delta.type == "thinking_delta":
                    received += 1
                if received >= THOUGHTS_READ:
                    break
    return received


@pytest.mark.parametrize(
    "read",
    [read_reasoning_openai, read_reasoning_ollama, read_reasoning_anthropic],
    ids=["v1-openai-kind", "api-chat-ollama-kind", "v1-messages-anthropic-kind"],
)
def test_reasoning_read_then_dropped_is_charged(
    gateway: TandemProcess,
    holes: HolesUpstream,
    read: Any,
    new_record: Callable[[], dict[str, Any]],
) -> None:
    holes.reset("thinkdrip")
    assert read(gateway) == THOUGHTS_READ
    record = new_record()
    assert record["status"] == "cancelled"
    assert record["usage_source"] == "estimated"
    # at least the pieces the caller read, by the estimate
    assert record["completion_tokens"] >= estimate_tokens(THOUGHT * THOUGHTS_READ), record


# --- the prompt's estimate covers tools, schemas and media ----------------------------------


def test_a_megabyte_tool_description_cut_at_a_second_is_charged(
    gateway: TandemProcess, holes: HolesUpstream, new_record: Callable[[], dict[str, Any]]
) -> None:
    holes.reset("slow:30")
    description = "word " * 200_000  # 1 MB, 262,144 tokens by the estimate
    tool = {"type": "function", "function": {"name": "f", "description": description}}
    body = {"model": "relay", "messages": user(), "stream": True, "tools": [tool]}
    with (
        pytest.raises(httpx.ReadTimeout),
        httpx.stream(
            "POST",
            f"{gateway.base_url}/v1/chat/completions",
            json=body,
            timeout=httpx.Timeout(30, read=1),
        ) as response,
    ):
        response.read()
    record = new_record()
    assert record["status"] == "cancelled"
    assert record["prompt_tokens"] >= 250_000, record


def data_url_of_a_megabyte() -> str:
    return "data:image/png;base64," + base64.b64encode(b"\x89PNG" + b"\0" * 750_000).decode()


def test_an_image_part_is_charged_a_thousand_tokens(
    gateway: TandemProcess, holes: HolesUpstream, new_record: Callable[[], dict[str, Any]]
) -> None:
    holes.reset("nousage")
    parts = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": data_url_of_a_megabyte()}},
    ]
    messages = [{"role": "user", "content": parts}, *user()]  # the fake echoes the last
    body = {"model": "relay", "messages": messages}
    answer = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    record = new_record()
    assert record["usage_source"] == "estimated"
    assert record["prompt_tokens"] == estimate_tokens("look") + 1000 + PROMPT_ESTIMATE, record


def test_a_response_schema_is_part_of_the_prompt(
    gateway: TandemProcess, holes: HolesUpstream, new_record: Callable[[], dict[str, Any]]
) -> None:
    holes.reset("nousage")
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "description": "x" * 4000}},
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}
    body = {"model": "relay", "messages": user(), "response_format": response_format}
    answer = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    record = new_record()
    assert record["prompt_tokens"] > PROMPT_ESTIMATE + 1000, record
    assert answer.json()["usage"]["prompt_tokens"] == record["prompt_tokens"]


def test_extra_fields_are_part_of_the_prompt(
    gateway: TandemProcess, holes: HolesUpstream, new_record: Callable[[], dict[str, Any]]
) -> None:
    """vLLM's `documents` (or a legacy `functions`) reach the model as prompt: what the
    gateway sends is estimated, whatever the upstream makes of it."""
    holes.reset("nousage")
    documents = [{"title": "t", "text": "word " * 4000}]
    body = {"model": "relay", "messages": user(), "documents": documents, "store": None}
    answer = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    sent = holes.requests[-1].body
    assert sent["documents"] == documents
    assert "store" not in sent  # null is "not set", here as everywhere
    record = new_record()
    assert record["usage_source"] == "estimated"
    assert record["prompt_tokens"] >= PROMPT_ESTIMATE + 4000, record


def test_count_tokens_is_the_same_estimate(
    gateway: TandemProcess, holes: HolesUpstream, new_record: Callable[[], dict[str, Any]]
) -> None:
    sdk: Any
    holes.reset("nousage")
    image = data_url_of_a_megabyte().partition(",")[2]
    content = [
        {"type": "text", "text": "look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image}},
    ]
    tool = {"name": "f", "description": "d " * 3000, "input_schema": {"type": "object"}}
    messages = [{"role": "user", "content": content}, {"role": "assistant", "content": "ok"}]
    body = {"model": "relay", "messages": [*messages, *user()], "tools": [tool]}
    with anthropic.Anthropic(base_url=gateway.base_url, api_key="x", max_retries=0) as sdk:
        counted = sdk.messages.count_tokens(**body).input_tokens
        sdk.messages.create(max_tokens=100, **body)
    record = new_record()
    assert record["usage_source"] == "estimated"
    assert counted == record["prompt_tokens"] >= PROMPT_ESTIMATE + 1000 + 3000


def test_a_tool_definition_over_the_tier_is_refused_up_front(
    holes: HolesUpstream, jammed: int, tmp_path: Any
) -> None:
    holes.reset()
    gateway = start(tmp_path, holes, jammed, tpm=1000)
    try:
        tool = {"type": "function", "function": {"name": "f", "description": "word " * 2000}}
        body = {"model": "relay", "messages": user(), "tools": [tool]}
        answer = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body)
        assert answer.status_code == 429, answer.text
        assert answer.headers["x-should-retry"] == "false"
        assert holes.requests == []
    finally:
        assert gateway.terminate() == 0, gateway.stderr()


# --- a timeout after the upstream had the request ------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_timeout_after_sending_is_charged_the_prompt_once(
    gateway: TandemProcess,
    holes: HolesUpstream,
    new_record: Callable[[], dict[str, Any]],
    stream: bool,
) -> None:
    prompt = "word " * 20_000  # 100 KB: 25,000 tokens by the estimate
    holes.reset("slow:30", "slow:30", "slow:30")
    answer = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json={"model": "waits", "messages": user(prompt), "stream": stream},
        timeout=60,
    )
    assert answer.status_code == 504, answer.text
    assert len(holes.requests) == 3, "timeouts before the first byte are retried"
    record = new_record()
    assert record["status"] == "error:timeout_error"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (estimate_tokens(prompt), 0)


def test_an_embedding_that_timed_out_after_sending_is_charged_its_inputs_once(
    gateway: TandemProcess, holes: HolesUpstream, new_record: Callable[[], dict[str, Any]]
) -> None:
    text = "word " * 20_000
    holes.reset("slow:30")
    answer = httpx.post(
        f"{gateway.base_url}/v1/embeddings", json={"model": "waits", "input": [text]}, timeout=60
    )
    assert answer.status_code == 504, answer.text
    assert len(holes.requests) == 1  # embeddings are asked once
    record = new_record()
    assert record["status"] == "error:timeout_error"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (estimate_tokens(text), 0)


@pytest.mark.parametrize(
    ("model", "status", "error"),
    [
        ("unreachable", 502, "upstream_error"),  # refused
        # `timeout_s: 1` runs out before `connect_timeout_s: 5`: still nothing was sent
        ("connecting", 504, "timeout_error"),
    ],
)
def test_a_call_that_never_connected_is_free(
    gateway: TandemProcess,
    new_record: Callable[[], dict[str, Any]],
    model: str,
    status: int,
    error: str,
) -> None:
    answer = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json={"model": model, "messages": user("word " * 1000)},
        timeout=60,
    )
    assert answer.status_code == status, answer.text
    record = new_record()
    assert record["status"] == f"error:{error}"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (0, 0)


# --- an answer with no choice -------------------------------------------------------------


def openai_error(base: str, stream: bool) -> tuple[int, str]:
    body = {"model": "relay", "messages": user(), "stream": stream}
    answer = httpx.post(f"{base}/chat/completions", json=body, timeout=30)
    return answer.status_code, answer.json()["error"]["type"]


def ollama_error(path: str, stream: bool) -> Any:
    def call(gateway: TandemProcess) -> tuple[int, str]:
        client = ollama.Client(host=gateway.base_url)
        with pytest.raises(ollama.ResponseError) as caught:
            if path == "chat" and stream:
                list(client.chat(model="relay", messages=user(), stream=True))
            elif path == "chat":
                client.chat(model="relay", messages=user(), stream=False)
            elif stream:
                list(client.generate(model="relay", prompt=PROMPT, stream=True))
            else:
                client.generate(model="relay", prompt=PROMPT, stream=False)
        client._client.close()
        return caught.value.status_code, "upstream_error"

    return call


def anthropic_error(stream: bool) -> Any:
    def call(gateway: TandemProcess) -> tuple[int, str]:
        with anthropic.Anthropic(base_url=gateway.base_url, api_key="x", max_retries=0) as sdk:
            with pytest.raises(anthropic.APIStatusError) as caught:
                sdk.messages.create(
                    model="relay",
                    max_tokens=10,
                    messages=user(),  # type: ignore[arg-type]
                    stream=stream,
                )
            return caught.value.status_code, "upstream_error"

    return call


def grpc_error(stream: bool) -> Any:
    def call(gateway: TandemProcess) -> tuple[int, str]:
        code = grpc_chat_failure(gateway, "relay", PROMPT, stream=stream)
        return (502 if code == grpc.StatusCode.UNAVAILABLE else -1), "upstream_error"

    return call


DOORS = {
    "native": lambda g: openai_error(f"{g.base_url}/native/v1", False),
    "native-stream": lambda g: openai_error(f"{g.base_url}/native/v1", True),
    "v1": lambda g: openai_error(f"{g.base_url}/v1", False),
    "v1-stream": lambda g: openai_error(f"{g.base_url}/v1", True),
    "grpc": grpc_error(False),
    "grpc-stream": grpc_error(True),
    "ollama-chat": ollama_error("chat", False),
    "ollama-chat-stream": ollama_error("chat", True),
    "ollama-generate": ollama_error("generate", False),
    "ollama-generate-stream": ollama_error("generate", True),
    "anthropic": anthropic_error(False),
    "anthropic-stream": anthropic_error(True),
}


@pytest.mark.parametrize("door", list(DOORS))
def test_an_answer_with_no_choice_is_a_502(
    gateway: TandemProcess,
    holes: HolesUpstream,
    door: str,
    new_record: Callable[[], dict[str, Any]],
) -> None:
    holes.reset("nochoice")
    assert DOORS[door](gateway) == (502, "upstream_error")
    record = new_record()
    assert record["status"] == "error:upstream_error"
    # what the upstream said it used is charged, never a silent 0
    assert (record["prompt_tokens"], record["completion_tokens"]) == (7, 0)
    assert record["usage_source"] == "upstream"


def test_a_chunk_without_a_choice_before_the_answer_goes_out_with_it(
    gateway: TandemProcess, holes: HolesUpstream, new_record: Callable[[], dict[str, Any]]
) -> None:
    holes.reset("filterfirst")
    sdk: Any
    with openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="x", max_retries=0) as sdk:
        stream = sdk.chat.completions.create(model="relay", messages=user(), stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "one two"
    assert new_record()["status"] == "ok"
