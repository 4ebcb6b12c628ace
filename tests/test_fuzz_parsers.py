"""Fuzzing the JSON parsers in process: whatever a client sends, a parser answers with
a value or an `InvalidRequestError` naming what is wrong, never anything else."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.types import Message

from http_bridge.deps import read_json
from server.core.validation import validate_chat_request, validate_embedding_request
from server.errors import InvalidRequestError
from server.translate.ollama import inbound as ollama_inbound
from server.translate.openai import inbound
from server.translate.usage import parse_usage_params
from tests.fuzzing import INTERNALS, JSON, FuzzCases, fuzz_settings, json_values, mutate, nested

MAX_DEPTH = 32  # CONTRACT.md: JSON nested deeper is a 400

KEYS = st.sampled_from(
    [
        "model",
        "messages",
        "role",
        "content",
        "parts",
        "type",
        "text",
        "image_url",
        "url",
        "stop",
        "n",
        "max_tokens",
        "temperature",
        "seed",
        "stream",
        "stream_options",
        "include_usage",
        "tool_choice",
        "mode",
        "function",
        "name",
        "tools",
        "parameters",
        "logit_bias",
        "response_format",
        "json_schema",
        "schema",
        "input",
        "encoding_format",
        "dimensions",
        "user",
        # Ollama's
        "options",
        "think",
        "top_k",
        "reasoning_effort",
        "thinking",
        "num_predict",
        "prompt",
        "system",
        "images",
        "format",
        "tool_calls",
        "tool_name",
        "arguments",
    ]
)

CHAT_SEEDS: tuple[JSON, ...] = (
    {"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
    {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        "stop": "x",
        "tool_choice": "auto",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"a": 1}}}],
        "logit_bias": {"1": 5},
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {}}},
        "n": 2,
        "max_tokens": 3,
        "temperature": 0.5,
    },
)
EMBEDDING_SEEDS: tuple[JSON, ...] = (
    {"model": "echo", "input": "one"},
    {"input": ["one", "two"], "encoding_format": "base64", "dimensions": 8},
)


def mutated(seeds: tuple[JSON, ...]) -> st.SearchStrategy[JSON]:
    """A seed with one value somewhere inside replaced by any JSON, or added."""

    @st.composite
    def strategy(draw: st.DrawFn) -> JSON:
        value = draw(st.sampled_from(seeds))
        for _ in range(draw(st.integers(1, 3))):
            value = mutate(value, draw, keys=KEYS, below=5)
        return value

    return strategy()


def bodies(seeds: tuple[JSON, ...]) -> st.SearchStrategy[JSON]:
    return st.one_of(mutated(seeds), json_values(keys=KEYS), json_values())


def assert_invalid_request(error: InvalidRequestError) -> None:
    """An InvalidRequestError says what is wrong, naming no internal detail."""
    assert error.message
    assert INTERNALS.search(error.message) is None, error.message
    if error.param is not None:
        assert error.param in error.message, error.message


def parses_or_refuses(parse: Callable[[], object]) -> None:
    try:
        parse()
    except InvalidRequestError as error:
        assert_invalid_request(error)


# The OpenAI dialect's parsers, by name: the requests each starts from, and the parse.
PARSERS: dict[str, tuple[tuple[JSON, ...], Callable[[JSON, bool], object]]] = {
    "chat": (
        CHAT_SEEDS,
        lambda body, strict: validate_chat_request(inbound.parse_chat(body, strict=strict)),
    ),
    "embeddings": (
        EMBEDDING_SEEDS,
        lambda body, strict: validate_embedding_request(
            inbound.parse_embedding(body, strict=strict)
        ),
    ),
}


@pytest.mark.parametrize("parser", sorted(PARSERS))
@fuzz_settings(max_examples=500)
@given(data=st.data(), strict=st.booleans())
def test_each_parser_returns_a_request_or_an_invalid_request_error(
    fuzz_cases: FuzzCases, parser: str, data: st.DataObject, strict: bool
) -> None:
    seeds, parse = PARSERS[parser]
    body = data.draw(bodies(seeds), label="body")
    fuzz_cases[f"parsers: {parser}"] += 1
    parses_or_refuses(lambda: parse(body, strict))


OLLAMA_SEEDS: tuple[JSON, ...] = (
    {"model": "echo", "messages": [{"role": "user", "content": "hi", "images": ["iVBORw0="]}]},
    {
        "model": "echo:latest",
        "messages": [
            {"role": "user", "content": "w?"},
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
            {"role": "tool", "content": "ok", "tool_name": "f"},
        ],
        "options": {"temperature": 0.1, "num_predict": 5, "stop": ["x"], "seed": 1, "top_k": 4},
        "think": True,
        "format": {"type": "object"},
        "stream": False,
    },
    {"model": "echo", "prompt": "p", "system": "s", "images": ["/9j/4AAQ"], "format": "json"},
    {"model": "echo", "input": ["a", "b"], "dimensions": 8},
    {"model": "echo", "prompt": "one"},
)
OLLAMA_PARSERS = {
    "chat": lambda body: validate_chat_request(ollama_inbound.parse_chat(body)),
    "generate": lambda body: validate_chat_request(ollama_inbound.parse_generate(body)),
    "embed": lambda body: validate_embedding_request(ollama_inbound.parse_embedding(body)),
    "embeddings": lambda body: validate_embedding_request(
        ollama_inbound.parse_legacy_embeddings(body)
    ),
}


@fuzz_settings(max_examples=800)
@given(body=bodies(OLLAMA_SEEDS), parser=st.sampled_from(sorted(OLLAMA_PARSERS)))
def test_ollama_parsers_return_a_request_or_an_invalid_request_error(
    fuzz_cases: FuzzCases, body: JSON, parser: str
) -> None:
    fuzz_cases["parsers: ollama"] += 1
    parses_or_refuses(lambda: OLLAMA_PARSERS[parser](body))


def depth_of(value: JSON) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


def _request(body: bytes) -> Request:
    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({"type": "http", "method": "POST", "headers": []}, receive)


def json_texts() -> st.SearchStrategy[bytes]:
    """JSON text and near-JSON: any value, escapes JSON allows but Unicode does not
    (lone surrogates, NUL), numbers past 64 bits, deep nesting, and noise."""
    escapes = st.sampled_from(["\\ud800", "\\udfff", "\\ud83d\\ude00", "\\u0000", "\\\\", '\\"'])
    return st.one_of(
        json_values().map(orjson.dumps),
        st.lists(escapes, max_size=4).map(
            lambda parts: f'{{"model": "{"".join(parts)}"}}'.encode()
        ),
        st.integers(min_value=2**64, max_value=2**200).map(lambda n: b'{"n": %d}' % n),
        st.integers(1, 1100).map(nested),
        st.binary(max_size=64),
        st.text(max_size=32).map(lambda text: text.encode("utf-8", "surrogatepass")),
    )


@fuzz_settings(max_examples=1000)
@given(body=json_texts())
async def test_read_json_returns_a_value_at_most_32_deep_or_an_invalid_request_error(
    fuzz_cases: FuzzCases, body: bytes
) -> None:
    fuzz_cases["parsers: read_json"] += 1
    try:
        value = await read_json(_request(body))
    except InvalidRequestError as error:
        assert_invalid_request(error)
        return
    assert depth_of(value) <= MAX_DEPTH, body[:80]


PARAMS = st.sampled_from(["since", "until", "user", "model", "limit"])
PARAM_VALUES = st.one_of(
    st.text(max_size=24),
    st.text(alphabet="0123456789-:.TZtz+ ", max_size=40),
    st.sampled_from(
        ["2026-01-31T12:00:00Z", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00"]
    ),
    st.integers(-5, 2000).map(str),
)


@fuzz_settings(max_examples=1000)
@given(params=st.dictionaries(st.one_of(PARAMS, st.text(max_size=8)), PARAM_VALUES, max_size=5))
def test_usage_params_parse_or_are_an_invalid_request_error(
    fuzz_cases: FuzzCases, params: Mapping[str, str]
) -> None:
    fuzz_cases["parsers: usage params"] += 1
    parses_or_refuses(lambda: parse_usage_params(params))
