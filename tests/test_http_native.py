"""`/native/v1` and the HTTP error model on a live server: strictness, framing, limits."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from google.protobuf.json_format import ParseDict
from tandem.v1 import chat_pb2, embeddings_pb2

from tests.eventually import eventually
from tests.servers import TandemProcess

CHAT = "/native/v1/chat/completions"


@pytest.fixture
def http(shared_server: TandemProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_server.base_url, timeout=10) as client:
        yield client


def chat_body(text: str = "hi", **fields: object) -> dict[str, object]:
    return {"model": "echo", "messages": [{"role": "user", "content": text}], **fields}


def sse_events(text: str) -> list[str]:
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") for e in events)
    return [e[6:] for e in events]


def assert_error(response: httpx.Response, status: int, kind: str, param: str | None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert (error["type"], error["param"]) == (kind, param)


def test_native_reply_is_the_protos_json(http: httpx.Client) -> None:
    response = http.post(CHAT, json=chat_body("native answer"))
    assert response.status_code == 200
    body = response.json()
    assert "object" not in body
    assert body["choices"][0]["index"] == 0  # zero values are kept
    completion = ParseDict(body, chat_pb2.ChatCompletion())
    assert completion.choices[0].message.content == "native answer"
    assert completion.usage.total_tokens == 4
    assert isinstance(body["created"], int)


def test_plain_openai_request_is_a_valid_native_request(http: httpx.Client) -> None:
    body = chat_body(
        temperature=0.7,
        top_p=0.9,
        max_tokens=50,
        stop="\n",
        n=1,
        seed=7,
        presence_penalty=0.1,
        frequency_penalty=0.2,
        user="u-1",
        tool_choice="none",
    )
    body["messages"] = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "parts"}, {"type": "text", "text": "work"}],
        },
    ]
    response = http.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "parts\nwork"


def test_tool_choice_object_and_tools_are_accepted(http: httpx.Client) -> None:
    body = chat_body(
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": {}}},
    )
    assert http.post(CHAT, json=body).status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat_body(colour="red"), "colour"),
        (chat_body(temperature="0.5"), "temperature"),
        (chat_body(max_tokens="10"), "max_tokens"),
        (chat_body(max_tokens=1.5), "max_tokens"),
        (chat_body(stream="yes"), "stream"),
        (chat_body(stop=[1]), "stop[0]"),
        (chat_body(seed=2**64), "seed"),
        (
            {"model": "echo", "messages": [{"role": "user", "content": "x", "mood": "ok"}]},
            "messages[0].mood",
        ),
        ({"model": "echo", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "echo", "messages": "hi"}, "messages"),
        ({"model": "echo"}, "messages"),
        ({"model": 7, "messages": [{"role": "user", "content": "x"}]}, "model"),
        (
            chat_body(tools=[{"type": "function", "function": {"name": "f", "extra": 1}}]),
            "tools[0].function.extra",
        ),
    ],
)
def test_native_strictness_names_the_field(
    http: httpx.Client, body: dict[str, object], param: str
) -> None:
    assert_error(http.post(CHAT, json=body), 400, "invalid_request_error", param)


def test_openai_door_ignores_unknown_fields_but_not_wrong_types(http: httpx.Client) -> None:
    assert http.post("/v1/chat/completions", json=chat_body(colour="red")).status_code == 200
    response = http.post("/v1/chat/completions", json=chat_body(temperature="hot"))
    assert_error(response, 400, "invalid_request_error", "temperature")


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'"text"'])
def test_a_body_that_is_not_a_json_object_is_400(http: httpx.Client, raw: bytes) -> None:
    response = http.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400, "invalid_request_error", "body")


def test_native_stream_is_sse_with_usage_on_the_last_chunk(http: httpx.Client) -> None:
    response = http.post(CHAT, json=chat_body("a b c", stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [ParseDict(orjson.loads(e), chat_pb2.ChatCompletionChunk()) for e in events[:-1]]
    assert [c.choices[0].delta.content for c in chunks] == ["a ", "b ", "c"]
    assert [c.HasField("usage") for c in chunks] == [False, False, True]
    assert chunks[-1].usage.prompt_tokens == 3


def test_stream_failing_before_the_first_chunk_is_a_plain_error(http: httpx.Client) -> None:
    response = http.post(CHAT, json=chat_body(model="ghost", stream=True))
    assert_error(response, 404, "not_found_error", "model")
    response = http.post("/v1/chat/completions", json=chat_body(stream=True, n=0))
    assert_error(response, 400, "invalid_request_error", "n")


def test_native_embeddings_and_models(http: httpx.Client) -> None:
    response = http.post("/native/v1/embeddings", json={"model": "echo", "input": "x y"})
    assert response.status_code == 200
    parsed = ParseDict(response.json(), embeddings_pb2.EmbeddingResponse())
    assert len(parsed.data[0].embedding) == 64
    assert parsed.usage.prompt_tokens == 2
    base64 = http.post(
        "/native/v1/embeddings", json={"input": ["x y"], "encoding_format": "base64"}
    ).json()
    assert isinstance(base64["data"][0]["embedding"], str)
    bad = http.post("/native/v1/embeddings", json={"input": ["x"], "encoding_format": "hex"})
    assert_error(bad, 400, "invalid_request_error", "encoding_format")
    tokens = http.post("/native/v1/embeddings", json={"input": [[1, 2, 3]]})
    assert_error(tokens, 400, "invalid_request_error", "input")
    models = http.get("/native/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["echo", "slow-echo", "org/echo-2"]
    assert "object" not in models
    assert [m["price"] for m in models["data"]] == [
        None,
        None,
        {
            "input_per_mtok": 0.15,
            "output_per_mtok": 0.6,
            "cached_input_per_mtok": 0.15,
            "cache_write_per_mtok": 0.15,
        },
    ]


def test_unknown_route_is_404_in_the_error_model(http: httpx.Client) -> None:
    assert_error(http.get("/v2/nothing"), 404, "not_found_error", None)
    assert_error(http.get("/v1/models/ghost"), 404, "not_found_error", "id")


def test_wrong_method_keeps_405_with_the_error_body(http: httpx.Client) -> None:
    response = http.get(CHAT)
    assert_error(response, 405, "invalid_request_error", None)
    assert response.headers["allow"] == "POST"


def test_body_over_the_limit_is_413_before_it_is_read(http: httpx.Client) -> None:
    big = chat_body("x" * 70_000)
    assert_error(http.post(CHAT, json=big), 413, "invalid_request_error", None)

    def chunked() -> Iterator[bytes]:  # no content-length: counted as it arrives
        yield b'{"model": "echo", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"}]}'

    response = http.post("/v1/chat/completions", content=chunked())
    assert_error(response, 413, "invalid_request_error", None)


def test_413_answers_a_declared_length_without_waiting_for_the_body(
    shared_server: TandemProcess,
) -> None:
    import socket

    host, port = shared_server.http.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
            b"content-type: application/json\r\ncontent-length: 100000000\r\n\r\n{"
        )
        head = sock.recv(65536).decode()
    assert head.startswith("HTTP/1.1 413")
    assert "x-request-id:" in head


@pytest.mark.parametrize("route", ["/healthz", "/readyz", "/native/v1/models", "/nope"])
def test_every_answer_carries_a_request_id(http: httpx.Client, route: str) -> None:
    assert len(http.get(route).headers["x-request-id"]) == 32
    echoed = http.get(route, headers={"x-request-id": "abc:DEF.1-2_3"})
    assert echoed.headers["x-request-id"] == "abc:DEF.1-2_3"
    replaced = http.get(route, headers={"x-request-id": "has spaces"})
    assert replaced.headers["x-request-id"] != "has spaces"


def test_openapi_describes_every_route(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    paths = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert {
        ("/native/v1/chat/completions", "post"),
        ("/native/v1/models", "get"),
        ("/native/v1/embeddings", "post"),
        ("/v1/chat/completions", "post"),
        ("/v1/models", "get"),
        ("/v1/models/{model_id}", "get"),
        ("/v1/embeddings", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    } <= paths
    chat = spec["paths"]["/native/v1/chat/completions"]["post"]
    schema = chat["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["temperature"] == {"type": ["number", "null"]}
    assert http.get("/docs").status_code == 200


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_n_shows_the_sse_ending_in_done(shared_server: TandemProcess) -> None:
    done = subprocess.run(
        [
            "curl",
            "-sN",
            f"{shared_server.base_url}/v1/chat/completions",
            "-H",
            "content-type: application/json",
            "-d",
            '{"model": "echo", "stream": true, "messages": [{"role": "user", "content": "curl me"}]}',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    events = sse_events(done.stdout)
    assert events[-1] == "[DONE]"
    assert [orjson.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]] == [
        "curl ",
        "me",
    ]


def test_errors_in_parts_name_content_as_sent(http: httpx.Client) -> None:
    sent = {
        "model": "echo",
        "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}],
    }
    assert_error(
        http.post(CHAT, json=sent), 400, "invalid_request_error", "messages[0].content[0].text"
    )
    as_parts = {
        "model": "echo",
        "messages": [{"role": "user", "parts": [{"type": "text", "text": 5}]}],
    }
    assert_error(
        http.post(CHAT, json=as_parts), 400, "invalid_request_error", "messages[0].parts[0].text"
    )


def test_two_members_of_a_oneof_are_refused(http: httpx.Client) -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}, "text": "hi"}
    response = http.post(
        CHAT, json={"model": "echo", "messages": [{"role": "user", "content": [part]}]}
    )
    assert_error(response, 400, "invalid_request_error", "messages[0].content[0].text")


def test_an_assistant_refusal_part_is_accepted(http: httpx.Client) -> None:
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot."}]},
        {"role": "user", "content": "ok"},
    ]
    assert http.post(CHAT, json={"model": "echo", "messages": messages}).status_code == 200


def test_each_chunk_leaves_as_soon_as_it_is_ready(http: httpx.Client) -> None:
    """No chunk waits for the next one: the first arrives one word-delay in, not two."""
    started = time.monotonic()
    arrivals = []
    with http.stream(
        "POST",
        CHAT,
        json={
            "model": "slow-echo",
            "stream": True,
            "messages": [{"role": "user", "content": "a b c"}],
        },
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 4  # 3 words, [DONE]
    assert arrivals[0] < 0.18  # chunk_delay_ms is 100
    assert 0.07 < arrivals[1] - arrivals[0] < 0.18


def test_a_client_gone_mid_upload_is_not_logged_as_a_bug(tandem: Any) -> None:
    """The call is reported as the client's going (499, info), and nothing is logged
    as an error."""
    import socket

    server = tandem()
    host, port = server.http.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-request-id: gone-mid-upload\r\n"
            b'content-length: 100\r\n\r\n{"mod'
        )

    def access_lines() -> list[dict[str, Any]]:
        lines = (orjson.loads(line) for line in server.stderr().splitlines())
        found = [line for line in lines if line.get("request_id") == "gone-mid-upload"]
        assert len(found) == 1, found
        return found

    (line,) = eventually(access_lines)
    assert (line["level"], line["status"], line["route"]) == ("info", 499, "/v1/chat/completions")
    assert server.terminate() == 0
    levels = {orjson.loads(line)["level"] for line in server.stderr().splitlines()}
    assert levels <= {"info", "warning"}
