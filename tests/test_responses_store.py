"""Stored responses on the Responses door, driven by the official `openai` SDK against a
live gateway: `store` (the default), `retrieve` (and its replayed stream), `delete`,
`input_items.list`, `previous_response_id` (on one gateway and across two replicas of
one PostgreSQL), `item_reference`, the owner's scope, the chain's bound, the TTL,
`usage.store: none` and a store that is down."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.eventually import eventually
from tests.fake_upstream import FakeUpstream
from tests.responses_helpers import AUTH, CALLER, ECHO_AND_RELAY, WEATHER, post, raw, sdk_for
from tests.servers import TandemProcess, start_tandem
from tests.stores import pg_schema_url
from tests.tcp_proxy import TcpProxy

CONFIG = f"""{ECHO_AND_RELAY}
{AUTH}
usage: {{store: "%(store)s", flush_interval_ms: 20}}
"""


def config(fake: FakeUpstream, store: str = "sqlite:///usage.db", extra: str = "") -> str:
    return fake.filled(CONFIG.replace("%(store)s", store)) + extra


@pytest.fixture(scope="module")
def gateway(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TandemProcess]:
    process = start_tandem(tmp_path_factory.mktemp("responses_store"), config(fake))
    yield process
    assert process.terminate() == 0, process.stderr()


def error_of(exc: openai.APIStatusError) -> Any:
    """The `error` object of an SDK's error (the SDK unwraps it)."""
    return exc.body


@pytest.fixture
def sdk(gateway: TandemProcess, fake: FakeUpstream) -> Iterator[Any]:
    fake.reset()
    with sdk_for(gateway) as client:
        yield client


def test_a_response_is_kept_and_retrieved_as_answered(sdk: Any) -> None:
    created = sdk.responses.create(model="echo", input="keep this", metadata={"k": "v"})
    assert created.store is True
    found = sdk.responses.retrieve(created.id)
    assert found.model_dump() == created.model_dump()
    assert found.output_text == "keep this"


def test_a_stored_stream_replays_its_events_as_first_sent(gateway: TandemProcess) -> None:
    body = {"model": "echo", "input": "one two three four", "stream": True}
    first = post(gateway, body)
    assert first.status_code == 200
    completed = orjson.loads(first.text.strip().split("\n\n")[-1].split("data: ")[1])
    rid = completed["response"]["id"]
    replayed = raw(gateway, "GET", f"/v1/responses/{rid}", params={"stream": "true"})
    assert replayed.headers["content-type"].startswith("text/event-stream")
    assert replayed.text == first.text
    events = first.text.strip().split("\n\n")
    resumed = raw(gateway, "GET", f"/v1/responses/{rid}?stream=true&starting_after=5")
    assert resumed.text.strip().split("\n\n") == events[6:]


def test_a_streamed_tool_call_replays_as_first_sent(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("tools")
    body = {"model": "relay", "input": "weather?", "tools": [WEATHER], "stream": True}
    first = post(gateway, body)
    assert first.status_code == 200
    assert "response.function_call_arguments.delta" in first.text
    last = orjson.loads(first.text.strip().split("\n\n")[-1].split("data: ")[1])
    replayed = raw(gateway, "GET", f"/v1/responses/{last['response']['id']}?stream=true")
    assert replayed.text == first.text


def test_the_sdk_replays_a_stored_response_as_a_stream(sdk: Any) -> None:
    created = sdk.responses.create(model="echo", input="replay me please")
    events = list(sdk.responses.retrieve(created.id, stream=True))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "replay me please"
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_a_deleted_response_is_not_found(gateway: TandemProcess, sdk: Any) -> None:
    created = sdk.responses.create(model="echo", input="short lived")
    deleted = raw(gateway, "DELETE", f"/v1/responses/{created.id}")
    assert deleted.json() == {"id": created.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.delete(created.id)


def test_the_sdk_deletes_a_response(sdk: Any) -> None:
    created = sdk.responses.create(model="echo", input="gone soon")
    sdk.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.responses.retrieve(created.id)
    assert error_of(caught.value)["type"] == "not_found_error"


def test_input_items_are_listed_newest_first_in_pages(sdk: Any) -> None:
    given = [{"role": "user", "content": f"line {n}"} for n in range(5)]
    created = sdk.responses.create(model="echo", input=given)
    page = sdk.responses.input_items.list(created.id, limit=2)
    assert [item.content[0].text for item in page.data] == ["line 4", "line 3"]
    assert page.has_more is True
    assert page.first_id == page.data[0].id
    every = list(sdk.responses.input_items.list(created.id, limit=2))  # the SDK pages on
    assert [item.content[0].text for item in every] == [f"line {n}" for n in (4, 3, 2, 1, 0)]
    ids = [item.id for item in every]
    assert len(set(ids)) == 5
    again = sdk.responses.input_items.list(created.id, order="asc", limit=3, after=ids[-1])
    assert [item.id for item in again.data] == ids[::-1][1:4]  # ids stay the same
    assert again.has_more is True
    single = sdk.responses.create(model="echo", input="just one")
    [item] = sdk.responses.input_items.list(single.id).data
    assert (item.type, item.role, item.content[0].text) == ("message", "user", "just one")


@pytest.mark.parametrize(
    ("query", "param"), [("limit=0", "limit"), ("limit=101", "limit"), ("order=up", "order")]
)
def test_an_input_items_query_out_of_range_is_a_400(
    gateway: TandemProcess, sdk: Any, query: str, param: str
) -> None:
    created = sdk.responses.create(model="echo", input="x")
    refused = raw(gateway, "GET", f"/v1/responses/{created.id}/input_items?{query}")
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == param


def test_previous_response_id_brings_the_earlier_turns_but_not_their_instructions(
    sdk: Any, fake: FakeUpstream
) -> None:
    first = sdk.responses.create(model="relay", instructions="be brief", input="my name is Ann")
    second = sdk.responses.create(
        model="relay", input="what is my name?", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    assert fake.requests[-1].body["messages"] == [
        {"role": "user", "content": "my name is Ann"},
        {"role": "assistant", "content": "my name is Ann"},
        {"role": "user", "content": "what is my name?"},
    ]
    sdk.responses.create(
        model="relay", instructions="now terse", input="and again?", previous_response_id=second.id
    )
    sent = fake.requests[-1].body["messages"]
    assert sent[0] == {"role": "system", "content": "now terse"}
    assert [m["content"] for m in sent[1:]] == [
        "my name is Ann",
        "my name is Ann",
        "what is my name?",
        "what is my name?",
        "and again?",
    ]


def test_a_tool_loop_continues_from_the_stored_call(sdk: Any, fake: FakeUpstream) -> None:
    fake.reset("tools", "ok")
    first = sdk.responses.create(model="relay", input="weather?", tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    outputs = [
        {"type": "function_call_output", "call_id": c.call_id, "output": "sunny"} for c in calls
    ]
    second = sdk.responses.create(model="relay", input=outputs, previous_response_id=first.id)
    assert second.status == "completed"
    sent = fake.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in sent[1]["tool_calls"]] == ["call_a", "call_b"]


def test_an_item_reference_is_the_stored_item(sdk: Any, fake: FakeUpstream) -> None:
    first = sdk.responses.create(model="relay", input="remember me")
    [message] = first.output
    sdk.responses.create(
        model="relay",
        input=[{"type": "item_reference", "id": message.id}, {"role": "user", "content": "ok?"}],
    )
    assert fake.requests[-1].body["messages"] == [
        {"role": "assistant", "content": "remember me"},
        {"role": "user", "content": "ok?"},
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model="relay", input=[{"type": "item_reference", "id": "msg_nope"}])
    assert error_of(caught.value)["param"] == "input[0].id"


def test_item_references_are_bounded_before_anything_is_asked(
    gateway: TandemProcess, sdk: Any, fake: FakeUpstream
) -> None:
    """One stored 60 KB item named 300 times would be 18 MB of input from a 14 KB
    body: refused, as a chain past 16 MiB is, before the upstream is asked."""
    [big] = sdk.responses.create(model="echo", input="x" * 60_000).output
    fake.reset()
    many = [{"type": "item_reference", "id": big.id}] * 300
    refused = post(gateway, {"model": "relay", "input": many})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "input"
    assert (
        "item_reference items and the conversation passed 16 MiB"
        in refused.json()["error"]["message"]
    )
    too_many = [{"type": "item_reference", "id": "msg_x"}] * 1_001
    refused = post(gateway, {"model": "relay", "input": too_many})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "input"
    assert fake.requests == []
    fine = post(gateway, {"model": "relay", "input": many[:5]})  # within: each resolved
    assert fine.status_code == 200, fine.text
    assert [len(m["content"]) for m in fake.requests[-1].body["messages"]] == [60_000] * 5


@pytest.mark.parametrize(
    ("item_id", "why"), [("msg_\x00nul", "NUL"), ("msg_" + "x" * 3_000, "256 characters")]
)
def test_an_item_id_no_store_could_keep_is_a_400_before_the_upstream(
    gateway: TandemProcess, fake: FakeUpstream, item_id: str, why: str
) -> None:
    """PostgreSQL holds no NUL and indexes no 3 KB key: refused whichever the store,
    before the upstream is paid for an answer that could not be kept."""
    fake.reset()
    given = [{"role": "user", "content": "hi"}, {"role": "user", "content": "q", "id": item_id}]
    refused = post(gateway, {"model": "relay", "input": given})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "input[1].id"
    assert why in refused.json()["error"]["message"]
    assert fake.requests == []


def test_an_input_of_too_many_items_is_a_400(gateway: TandemProcess, fake: FakeUpstream) -> None:
    fake.reset()
    refused = post(
        gateway, {"model": "relay", "input": [{"role": "user", "content": "q"}] * 10_001}
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "input"
    assert fake.requests == []


def test_a_continuation_of_a_cut_conversation_is_a_404_naming_previous_response_id(
    sdk: Any, fake: FakeUpstream
) -> None:
    first = sdk.responses.create(model="relay", input="one")
    second = sdk.responses.create(model="relay", input="two", previous_response_id=first.id)
    sdk.responses.delete(first.id)
    fake.reset()
    with pytest.raises(openai.NotFoundError) as caught:  # not an answer without "one"
        sdk.responses.create(model="relay", input="three", previous_response_id=second.id)
    assert error_of(caught.value)["param"] == "previous_response_id"
    assert fake.requests == []


def test_another_callers_response_is_not_found(gateway: TandemProcess, sdk: Any) -> None:
    mine = sdk.responses.create(model="echo", input="private")
    with sdk_for(gateway, sub="intruder") as other:
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            other.responses.delete(mine.id)
        with pytest.raises(openai.NotFoundError):
            other.responses.input_items.list(mine.id)
        with pytest.raises(openai.NotFoundError) as caught:
            other.responses.create(model="echo", input="x", previous_response_id=mine.id)
    error = error_of(caught.value)
    assert (error["type"], error["param"]) == ("not_found_error", "previous_response_id")
    assert sdk.responses.retrieve(mine.id).output_text == "private"  # still there
    for method, path in (
        ("GET", f"/v1/responses/{mine.id}"),
        ("DELETE", f"/v1/responses/{mine.id}"),
        ("GET", f"/v1/responses/{mine.id}/input_items"),
    ):  # the door's policy, as on every route: no credential, no answer
        refused = httpx.request(method, f"{gateway.base_url}{path}")
        assert refused.status_code == 401, path


def test_an_unknown_previous_response_is_a_404_naming_it(sdk: Any, fake: FakeUpstream) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.responses.create(model="relay", input="x", previous_response_id="resp_unknown")
    assert error_of(caught.value)["param"] == "previous_response_id"
    assert fake.requests == []


def stored_rows(gateway: TandemProcess) -> int:
    """How many responses the gateway's store holds, read directly."""
    with sqlite3.connect(gateway.stderr_path.parent / "usage.db") as db:
        count: int = db.execute("SELECT count(*) FROM responses").fetchone()[0]
    return count


def test_store_false_keeps_nothing(gateway: TandemProcess, sdk: Any) -> None:
    before = stored_rows(gateway)
    created = sdk.responses.create(model="echo", input="forget me", store=False)
    assert created.store is False
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(created.id)
    streamed = sdk.responses.create(model="echo", input="forget me", store=False, stream=True)
    last = list(streamed)[-1]
    assert last.type == "response.completed"
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(last.response.id)
    assert stored_rows(gateway) == before
    kept = sdk.responses.create(model="echo", input="keep me", store=True)  # and the control
    assert sdk.responses.retrieve(kept.id).store is True
    assert stored_rows(gateway) == before + 1


def test_a_chain_past_16_mib_is_a_400_naming_previous_response_id(
    gateway: TandemProcess, sdk: Any, fake: FakeUpstream
) -> None:
    from server.store import StoredResponse
    from server.store.sqlite import SqliteStore  # the gateway's own store, directly

    rid = "resp_big_chain"
    now = time.time()
    big = StoredResponse(
        id=rid,
        owner=f"sub:{CALLER}",
        created_at=now,
        expires_at=now + 600,
        previous_id=None,
        chain_bytes=16 * 2**20 + 1,  # as if its turns had stored that much
        response=orjson.dumps({"id": rid, "output": []}).decode(),
        input="[]",
        splits="[]",
    )

    async def save() -> None:
        store = SqliteStore(str(gateway.stderr_path.parent / "usage.db"))
        try:
            await store.save_response(big, [])
        finally:
            await store.aclose()

    asyncio.run(save())
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model="relay", input="more", previous_response_id=rid)
    assert error_of(caught.value)["param"] == "previous_response_id"
    assert "16 MiB" in error_of(caught.value)["message"]
    assert fake.requests == []


def test_a_stored_response_expires_and_is_purged(fake: FakeUpstream, tmp_path: Path) -> None:
    ttl = "responses: {ttl_days: 0.00001}\n"  # under a second
    process = start_tandem(tmp_path, config(fake, extra=ttl))
    try:
        with sdk_for(process) as sdk:
            created = sdk.responses.create(model="echo", input="brief")

            def gone() -> bool:
                try:
                    sdk.responses.retrieve(created.id)
                except openai.NotFoundError:
                    return True
                return False

            eventually(gone, what=": the response expired")
            with pytest.raises(openai.NotFoundError):
                sdk.responses.create(model="echo", input="x", previous_response_id=created.id)

            def purged() -> bool:  # in the background: no write needed
                with sqlite3.connect(tmp_path / "usage.db") as db:
                    ids = {row[0] for row in db.execute("SELECT id FROM responses")}
                    items = db.execute("SELECT count(*) FROM response_items").fetchone()[0]
                return created.id not in ids and items == 0

            eventually(purged, timeout_s=15, what=": the expired row purged")
    finally:
        assert process.terminate() == 0, process.stderr()


def test_without_a_store_nothing_is_kept_and_store_true_is_a_400(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    process = start_tandem(tmp_path, config(fake, store="none"))
    try:
        with sdk_for(process) as sdk:
            created = sdk.responses.create(model="echo", input="x")
            assert created.store is False
            with pytest.raises(openai.BadRequestError) as caught:
                sdk.responses.create(model="echo", input="x", store=True)
            assert error_of(caught.value)["param"] == "store"
            with pytest.raises(openai.NotFoundError):
                sdk.responses.retrieve(created.id)
            with pytest.raises(openai.NotFoundError):
                sdk.responses.create(model="echo", input="x", previous_response_id=created.id)
    finally:
        assert process.terminate() == 0, process.stderr()


def test_store_default_false_keeps_only_what_asks(fake: FakeUpstream, tmp_path: Path) -> None:
    process = start_tandem(tmp_path, config(fake, extra="responses: {store_default: false}\n"))
    try:
        with sdk_for(process) as sdk:
            assert sdk.responses.create(model="echo", input="x").store is False
            kept = sdk.responses.create(model="echo", input="x", store=True)
            assert sdk.responses.retrieve(kept.id).store is True
    finally:
        assert process.terminate() == 0, process.stderr()


def test_a_continuation_on_another_replica_finds_the_response_at_once(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    fake.reset()
    with pg_schema_url() as url:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        a = start_tandem(tmp_path / "a", config(fake, store=url))
        b = start_tandem(tmp_path / "b", config(fake, store=url))
        try:
            with sdk_for(a) as on_a, sdk_for(b) as on_b:
                for stream in (False, True):
                    if stream:
                        with on_a.responses.stream(model="relay", input="first turn") as events:
                            first = events.get_final_response()
                    else:
                        first = on_a.responses.create(model="relay", input="first turn")
                    second = on_b.responses.create(
                        model="relay", input="second turn", previous_response_id=first.id
                    )
                    assert second.status == "completed"
                    assert [m["content"] for m in fake.requests[-1].body["messages"]] == [
                        "first turn",
                        "first turn",
                        "second turn",
                    ]
                    assert on_b.responses.retrieve(first.id).output_text == "first turn"
        finally:
            assert a.terminate() == 0, a.stderr()
            assert b.terminate() == 0, b.stderr()


def test_while_the_store_is_down_a_request_that_needs_it_is_a_503_before_the_upstream(
    fake: FakeUpstream, tmp_path: Path, proxied_pg: tuple[str, str], proxy: TcpProxy
) -> None:
    _, through_proxy = proxied_pg
    process = start_tandem(tmp_path, config(fake, store=through_proxy))
    try:
        with sdk_for(process) as sdk:
            kept = sdk.responses.create(model="relay", input="before")
            proxy.cut()

            def degraded() -> bool:
                ready = httpx.get(f"{process.base_url}/readyz").json()
                return "usage_store" in ready["degraded"]

            eventually(degraded, what=": the store seen down")
            fake.reset()
            for fields in ({}, {"stream": True}, {"store": False, "previous_response_id": kept.id}):
                with pytest.raises(openai.APIStatusError) as caught:
                    sdk.responses.create(model="relay", input="now", **fields)
                assert caught.value.status_code == 503
                assert error_of(caught.value)["type"] == "unavailable_error"
            assert fake.requests == []
            # what does not need the store is served
            assert sdk.responses.create(model="relay", input="x", store=False).status == "completed"
            proxy.restore()
            eventually(lambda: not degraded(), what=": the store back")
            again = sdk.responses.create(model="relay", input="y", previous_response_id=kept.id)
            assert again.status == "completed"
    finally:
        assert process.terminate() == 0, process.stderr()
