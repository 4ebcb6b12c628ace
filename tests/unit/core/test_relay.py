"""Reading a relayed Responses answer (`responses: native`): events out as they came but
for the model, the usage they say, and the `response.failed` that ends a broken stream."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from server.core.relay import Relay, check_relayed, max_output_tokens
from server.errors import InvalidRequestError, UpstreamError
from server.providers.failures import scrub_error

USAGE = {
    "input_tokens": 10,
    "input_tokens_details": {"cached_tokens": 4},
    "output_tokens": 6,
    "output_tokens_details": {"reasoning_tokens": 2},
    "total_tokens": 16,
}


def raw(kind: str, sequence: int, **data: Any) -> bytes:
    return orjson.dumps({"type": kind, "sequence_number": sequence, **data})


def response(status: str, **more: Any) -> dict[str, Any]:
    return {"id": "resp_1", "object": "response", "status": status, "model": "up-model", **more}


def test_an_event_without_a_whole_response_goes_out_byte_for_byte() -> None:
    relay = Relay("public", streaming=True)
    written = b'{"type":"response.output_text.delta", "sequence_number":3,"delta":"hi "}'
    assert relay.event(written) == (b"response.output_text.delta", written)
    assert relay.sent == ["hi "]
    assert not relay.ended


def test_a_whole_response_names_the_public_model_and_keeps_its_key_order() -> None:
    relay = Relay("public", streaming=True)
    name, data = relay.event(raw("response.created", 0, response=response("in_progress")))
    assert name == b"response.created"
    sent = orjson.loads(data)
    assert list(sent["response"]) == ["id", "object", "status", "model"]
    assert sent["response"]["model"] == "public"
    assert relay.upstream_model == "up-model"


@pytest.mark.parametrize("end", ["response.completed", "response.incomplete", "response.failed"])
def test_the_event_that_ends_a_stream_says_its_usage(end: str) -> None:
    relay = Relay("public", streaming=True)
    relay.event(raw(end, 9, response=response("completed", usage=USAGE)))
    assert relay.ended == end
    assert relay.failed_upstream is (end == "response.failed")
    assert relay.usage_known
    counts = (relay.input_tokens, relay.output_tokens, relay.cached_tokens, relay.reasoning_tokens)
    assert counts == (10, 6, 4, 2)


@pytest.mark.parametrize(
    "usage",
    [
        None,
        {},
        {"input_tokens": "10", "output_tokens": 6},
        {"input_tokens": True, "output_tokens": 1},
    ],
)
def test_usage_that_is_not_counts_is_unknown(usage: Any) -> None:
    relay = Relay("public", streaming=True)
    relay.event(raw("response.completed", 1, response=response("completed", usage=usage)))
    assert relay.ended
    assert not relay.usage_known


@pytest.mark.parametrize("written", [b"not json", b"[1]", b'{"no": "type"}', b'{"type": 3}'])
def test_a_malformed_event_is_the_upstreams_error(written: bytes) -> None:
    with pytest.raises(UpstreamError):
        Relay("public", streaming=True).event(written)


def test_failed_names_the_response_the_upstream_opened_with_its_items_done() -> None:
    relay = Relay("public", streaming=True)
    relay.event(raw("response.created", 0, response=response("in_progress", output=[])))
    item = {"type": "reasoning", "id": "rs_1", "encrypted_content": "sealed"}
    relay.event(raw("response.output_item.done", 1, output_index=0, item=item))
    name, data = relay.failed(UpstreamError("the upstream connection failed"))
    assert name == b"response.failed"
    failed = orjson.loads(data)
    assert failed["sequence_number"] == 2
    answer = failed["response"]
    assert (answer["id"], answer["status"], answer["model"]) == ("resp_1", "failed", "public")
    assert answer["output"] == [item]
    assert answer["error"] == {"code": "server_error", "message": "the upstream connection failed"}
    assert not relay.failed_upstream  # the gateway's, not the upstream's


def test_start_forgets_an_earlier_attempt() -> None:
    relay = Relay("public", streaming=True)
    relay.event(raw("response.completed", 5, response=response("completed", usage=USAGE)))
    relay.start()
    assert (relay.ended, relay.usage_known, relay.sent) == ("", False, [])
    assert orjson.loads(relay.failed(UpstreamError("x"))[1])["sequence_number"] == 0


def test_a_whole_answer_names_the_public_model_and_says_its_usage() -> None:
    relay = Relay("public", streaming=False)
    name, data = relay.whole(orjson.dumps(response("completed", usage=USAGE, output=[])))
    assert name == b""
    assert orjson.loads(data)["model"] == "public"
    assert relay.ended == "response.completed"
    assert relay.input_tokens == 10


def test_a_whole_answer_without_usage_keeps_its_texts_for_an_estimate() -> None:
    relay = Relay("public", streaming=False)
    output = [
        {"type": "reasoning", "id": "rs", "encrypted_content": "not read", "summary": []},
        {"type": "message", "content": [{"type": "output_text", "text": "the answer"}]},
    ]
    relay.whole(orjson.dumps(response("completed", output=output)))
    assert not relay.usage_known
    assert relay.sent == ["the answer"]


def test_background_and_a_stream_that_is_not_a_boolean_are_refused() -> None:
    check_relayed({"stream": True, "background": False})
    with pytest.raises(InvalidRequestError) as refused:
        check_relayed({"background": True})
    assert refused.value.param == "background"
    with pytest.raises(InvalidRequestError) as refused:
        check_relayed({"stream": "yes"})
    assert refused.value.param == "stream"


@pytest.mark.parametrize(
    ("value", "reserved"), [(100, 100), (None, 0), (True, 0), (-5, 0), ("9", 0)]
)
def test_max_output_tokens_reserved(value: Any, reserved: int) -> None:
    assert max_output_tokens({"max_output_tokens": value}) == reserved


@pytest.mark.parametrize("field", ["conversation", "prompt"])
def test_state_the_gateway_does_not_relay_is_refused(field: str) -> None:
    check_relayed({field: None})
    with pytest.raises(InvalidRequestError) as refused:
        check_relayed({field: {"id": "conv_1"}})
    assert refused.value.param == field
    with pytest.raises(InvalidRequestError):
        check_relayed({field: "conv_1"})


@pytest.mark.parametrize(
    "kind", ["response.completed\n\ndata: {}", "Response.Created", "a b", "x" * 129, "é"]
)
def test_an_event_whose_type_is_not_a_name_is_the_upstreams_error(kind: str) -> None:
    with pytest.raises(UpstreamError, match="invalid type"):
        Relay("public", streaming=True).event(raw(kind, 0))


LEAKY = "upstream api.internal.corp (10.0.0.9:8080) said no; key sk-abcdefghijklmnop"


def assert_clean(error: dict[str, Any]) -> None:
    text = orjson.dumps(error).decode()
    for secret in ("internal.corp", "10.0.0.9", "sk-abc", "configured-key"):
        assert secret not in text
    assert "said no" in error["message"]


def test_the_upstreams_error_event_is_scrubbed() -> None:
    relay = Relay("public", streaming=True)
    relay.start(lambda error: scrub_error(error, ("configured-key",)))
    written = raw(
        "error",
        3,
        message=f"{LEAKY} configured-key",
        code="api.internal.corp/x",
        param="input",
        error={"type": "server_error", "message": LEAKY, "code": "server_error"},
    )
    name, out = relay.event(written)
    assert name == b"error"
    data = orjson.loads(out)
    assert_clean(data)
    assert_clean(data["error"])
    assert (data["code"], data["param"], data["sequence_number"]) == (None, "input", 3)
    assert data["error"]["code"] == "server_error"


def test_the_upstreams_response_failed_is_scrubbed() -> None:
    relay = Relay("public", streaming=True)
    error = {"code": "server_error", "message": LEAKY}
    _, out = relay.event(raw("response.failed", 4, response=response("failed", error=error)))
    assert_clean(orjson.loads(out)["response"]["error"])
    assert relay.failed_upstream
    _, whole = Relay("public", streaming=False).whole(orjson.dumps(response("failed", error=error)))
    assert_clean(orjson.loads(whole)["error"])
