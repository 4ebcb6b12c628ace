"""The conversation service over a real SQLite store: whose a response is, the `store`
flag's default and refusals, a chain's items, its bounds (UTF-8 bytes, depth) and its
cut (404), `item_reference`s bounded before they are read, which items are referable,
and a store that fails (503, never its own error) or whose purge fails (not keep's)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from server.config import ResponsesConfig, load_config
from server.context import ANONYMOUS, CallContext, Caller
from server.core import conversations as module
from server.core.conversations import MAX_CHAIN_BYTES, MAX_REFERENCES, Conversations, owner_of
from server.errors import InvalidRequestError, NotFoundError, UnavailableError
from server.policy import Policy
from server.store import StoredResponse
from server.store.sqlite import SqliteStore

ANN = Caller(user="ann", tier="free")


def answer(rid: str, text: str) -> dict[str, Any]:
    output = [{"id": f"msg_{rid}", "type": "message", "role": "assistant", "content": text}]
    return {"id": rid, "object": "response", "output": output}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(str(tmp_path / "usage.db"))
    yield opened
    await opened.aclose()


def service(store: Any, clock: Clock | None = None, **config: Any) -> Conversations:
    policy = Policy(load_config(None, environ={}))
    return Conversations(store, ResponsesConfig(**config), policy, clock=clock or Clock())


def test_owners_are_named_as_rate_limits_count_callers_never_confused() -> None:
    assert owner_of(Caller(user="ann", tier="t", key_id="k1")) == "key:k1"
    assert owner_of(ANN) == "sub:ann"
    assert owner_of(Caller(user="ann", tier="t", kind="admin")) == "admin:ann"
    assert owner_of(ANONYMOUS) == "anonymous"


def test_store_defaults_to_true_with_a_store_and_false_without(store: SqliteStore) -> None:
    assert service(store).wants_store(None) is True
    assert service(store, store_default=False).wants_store(None) is False
    assert service(store).wants_store(False) is False
    without = service(None)
    assert without.wants_store(None) is False
    with pytest.raises(InvalidRequestError) as refused:
        without.wants_store(True)
    assert refused.value.param == "store"
    with pytest.raises(InvalidRequestError):
        service(store).wants_store("yes")


async def test_a_chain_brings_each_turns_input_and_output_oldest_first(
    store: SqliteStore,
) -> None:
    conversations = service(store)
    q1 = {"id": "in1", "content": "q1 é€ 😀"}  # bytes are counted, not characters
    await conversations.keep(ANN, answer("resp_1", "a1 ü"), [q1], None, given={"in1"})
    first = await conversations.history(ANN, "resp_1")
    q2 = {"id": "in2", "content": "q2"}
    await conversations.keep(ANN, answer("resp_2", "a2"), [q2], first, given={"in2"})
    history = await conversations.history(ANN, "resp_2")
    assert [item["id"] for item in history.items] == ["in1", "msg_resp_1", "in2", "msg_resp_2"]
    # what the chain stored of input and output, in UTF-8 bytes (each turn one of each)
    sizes = [len(orjson.dumps([item])) for item in history.items]
    assert (first.chain_bytes, history.chain_bytes) == (sum(sizes[:2]), sum(sizes))
    found = await conversations.items(ANN, ["in1", "msg_resp_2", "nope"], 0)
    assert found == {"in1": q1, "msg_resp_2": answer("resp_2", "a2")["output"][0]}
    assert await conversations.items(Caller(user="bob", tier="free"), ["in1"], 0) == {}
    with pytest.raises(NotFoundError) as missing:
        await conversations.history(Caller(user="bob", tier="free"), "resp_2")
    assert missing.value.param == "previous_response_id"


async def test_a_chain_past_the_bound_is_a_400_naming_previous_response_id(
    store: SqliteStore,
) -> None:
    conversations = service(store)
    big = StoredResponse(
        "resp_big", "sub:ann", 0, 1e12, None, MAX_CHAIN_BYTES + 1, "{}", "[]", "[]"
    )
    await store.save_response(big, [])
    with pytest.raises(InvalidRequestError) as refused:
        await conversations.history(ANN, "resp_big")
    assert refused.value.param == "previous_response_id"


async def test_a_response_expires_after_its_ttl(store: SqliteStore) -> None:
    clock = Clock()
    conversations = service(store, clock, ttl_days=1)
    await conversations.keep(ANN, answer("resp_1", "a"), [], None)
    ctx = CallContext(request_id="r", protocol="responses", caller=ANN)
    assert (await conversations.get(ctx, "resp_1")).id == "resp_1"
    clock.now += 86_400
    with pytest.raises(NotFoundError):
        await conversations.get(ctx, "resp_1")
    with pytest.raises(NotFoundError):
        await conversations.delete(ctx, "resp_1")


async def test_an_expired_or_deleted_earlier_response_is_a_404_naming_previous_response_id(
    store: SqliteStore,
) -> None:
    clock = Clock()
    conversations = service(store, clock, ttl_days=1)
    await conversations.keep(ANN, answer("resp_1", "a"), [], None)
    clock.now += 43_200  # half a day: resp_2 outlives resp_1 by that
    await conversations.keep(
        ANN, answer("resp_2", "b"), [], await conversations.history(ANN, "resp_1")
    )
    await conversations.keep(
        ANN, answer("resp_3", "c"), [], await conversations.history(ANN, "resp_2")
    )
    assert len((await conversations.history(ANN, "resp_3")).items) == 3
    clock.now += 43_200  # resp_1 expired; resp_2 and resp_3 live
    with pytest.raises(NotFoundError) as cut:
        await conversations.history(ANN, "resp_3")
    assert cut.value.param == "previous_response_id"
    assert "expired or was deleted" in cut.value.message
    clock.now -= 43_200
    ctx = CallContext(request_id="r", protocol="responses", caller=ANN)
    await conversations.delete(ctx, "resp_2")
    with pytest.raises(NotFoundError) as deleted:
        await conversations.history(ANN, "resp_3")
    assert deleted.value.param == "previous_response_id"


async def test_a_chain_past_its_depth_is_a_400_and_a_cycle_does_not_hang(
    store: SqliteStore,
) -> None:
    row = StoredResponse("resp_a", "sub:ann", 0, 1e12, "resp_b", 10, '{"output": []}', "[]", "[]")
    await store.save_response(row, [])
    await store.save_response(
        StoredResponse("resp_b", "sub:ann", 0, 1e12, "resp_a", 10, '{"output": []}', "[]", "[]"),
        [],
    )
    with pytest.raises(InvalidRequestError) as refused:  # a corrupt cycle: refused, at once
        await service(store).history(ANN, "resp_a")
    assert refused.value.param == "previous_response_id"


async def test_a_chain_reads_its_input_and_output_not_the_settings_echoed(
    store: SqliteStore,
) -> None:
    conversations = service(store)
    echoed = {**answer("resp_1", "a"), "instructions": "x" * 100_000, "tools": []}
    await conversations.keep(ANN, echoed, [{"id": "in1", "content": "q"}], None)
    history = await conversations.history(ANN, "resp_1")
    assert history.items == [{"id": "in1", "content": "q"}, echoed["output"][0]]
    assert history.chain_bytes < 200  # what the chain reads is what its bound counts
    # a row whose response object is not read: only its input and output are
    row = StoredResponse("resp_2", "sub:ann", 0, 1e12, None, 4, "not read", "[]", "[]", "[]")
    await store.save_response(row, [])
    assert (await conversations.history(ANN, "resp_2")).items == []


def referenced(rid: str, size: int) -> dict[str, Any]:
    """An answer whose one output item (`msg_<rid>`) is about `size` bytes."""
    return answer(rid, "x" * size)


async def test_references_are_bounded_before_their_items_are_read(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "MAX_CHAIN_BYTES", 100_000)
    conversations = service(store)
    await conversations.keep(ANN, referenced("resp_1", 1_000), [], None)
    calls: list[str] = []
    for name in ("item_sizes", "load_items"):
        real = getattr(store, name)

        def counted(*args: Any, real: Any = real, name: str = name) -> Any:
            calls.append(name)
            return real(*args)

        monkeypatch.setattr(store, name, counted)
    # the same item 90 times: 90 KB, within the bound; one query each, the id once
    found = await conversations.items(ANN, ["msg_resp_1"] * 90, 0)
    assert list(found) == ["msg_resp_1"]
    assert calls == ["item_sizes", "load_items"]
    calls.clear()
    with pytest.raises(InvalidRequestError) as refused:  # 110 KB: refused, nothing read
        await conversations.items(ANN, ["msg_resp_1"] * 110, 0)
    assert refused.value.param == "input"
    assert calls == ["item_sizes"]
    with pytest.raises(InvalidRequestError):  # the chain's bytes count too
        await conversations.items(ANN, ["msg_resp_1"] * 50, 60_000)
    calls.clear()
    with pytest.raises(InvalidRequestError) as many:  # too many: refused before any query
        await conversations.items(ANN, ["msg_resp_1"] * (MAX_REFERENCES + 1), 0)
    assert many.value.param == "input"
    assert calls == []


async def test_referable_items_are_the_output_and_the_input_the_caller_named(
    store: SqliteStore,
) -> None:
    conversations = service(store)
    given = {"id": "mine", "content": "a"}
    minted = {"id": "msg_1_in1", "content": "b"}
    await conversations.keep(ANN, answer("resp_1", "a"), [given, minted], None, given={"mine"})
    found = await conversations.items(ANN, ["mine", "msg_1_in1", "msg_resp_1"], 0)
    assert set(found) == {"mine", "msg_resp_1"}
    ctx = CallContext(request_id="r", protocol="responses", caller=ANN)
    assert orjson.loads((await conversations.get(ctx, "resp_1")).input) == [given, minted]


async def test_keeping_a_response_does_not_purge(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(now: float, limit: int) -> int:
        raise OSError("purge failed")

    monkeypatch.setattr(store, "purge_responses", broken)
    await service(store).keep(ANN, answer("resp_1", "a"), [], None)  # kept, not a 503
    assert await store.find_response("sub:ann", "resp_1", 1000.0) is not None


class FailingStore:
    """A store whose every call fails as a driver's would."""

    def __getattr__(self, name: str) -> Any:
        async def fail(*args: object) -> None:
            raise OSError("connection refused to 10.0.0.1:5432")

        return fail


async def test_a_failing_store_is_a_503_and_a_store_seen_down_is_one_at_once() -> None:
    conversations = service(FailingStore())
    for call in (
        conversations.history(ANN, "resp_1"),
        conversations.items(ANN, ["msg_1"], 0),
        conversations.keep(ANN, answer("resp_1", "a"), [], None),
    ):
        with pytest.raises(UnavailableError) as down:
            await call
        assert "10.0.0.1" not in down.value.message
    policy = Policy(load_config(None, environ={}))
    watched = Conversations(FailingStore(), ResponsesConfig(), policy, store_down=lambda: True)
    with pytest.raises(UnavailableError):
        watched.check_available()
    service(None).check_available()  # no store: nothing to wait for


@pytest.mark.parametrize("name", ["resp_\x00", "resp_\ud800", "resp_" + "x" * 300])
async def test_an_id_no_store_could_hold_is_not_found_without_asking(name: str) -> None:
    conversations = service(FailingStore())  # asked, it would be a 503
    ctx = CallContext(request_id="r", protocol="responses", caller=ANN)
    with pytest.raises(NotFoundError):
        await conversations.get(ctx, name)
    with pytest.raises(NotFoundError):
        await conversations.delete(ctx, name)
    with pytest.raises(NotFoundError):
        await conversations.history(ANN, name)
    assert await conversations.items(ANN, [name], 0) == {}
