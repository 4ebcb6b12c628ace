"""The conversation service over a real SQLite store: whose a response is, the `store`
flag's default and refusals, a chain's items and its bound, a store that fails (503,
never its own error), and the purge's pace."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from server.config import ResponsesConfig, load_config
from server.context import ANONYMOUS, CallContext, Caller
from server.core import conversations as module
from server.core.conversations import MAX_CHAIN_BYTES, Conversations, owner_of
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
    await conversations.keep(ANN, answer("resp_1", "a1"), [{"id": "in1", "content": "q1"}], None)
    first = await conversations.history(ANN, "resp_1")
    await conversations.keep(ANN, answer("resp_2", "a2"), [{"id": "in2", "content": "q2"}], first)
    history = await conversations.history(ANN, "resp_2")
    assert [item["id"] for item in history.items] == ["in1", "msg_resp_1", "in2", "msg_resp_2"]
    # what the chain stored of input and output, in bytes (each turn one item of each)
    sizes = [len(orjson.dumps([item])) for item in history.items]
    assert (first.chain_bytes, history.chain_bytes) == (sum(sizes[:2]), sum(sizes))
    assert await conversations.item(ANN, "in1") == {"id": "in1", "content": "q1"}
    assert await conversations.item(ANN, "msg_resp_2") == answer("resp_2", "a2")["output"][0]
    assert await conversations.item(Caller(user="bob", tier="free"), "in1") is None
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


async def test_expired_rows_are_purged_on_writes_at_most_once_a_second(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    conversations = service(store, clock, ttl_days=1e-5)  # 0.864 s
    purges: list[float] = []
    real = store.purge_responses

    async def counted(now: float, limit: int) -> int:
        purges.append(now)
        assert limit == module.PURGE_BATCH
        return await real(now, limit)

    monkeypatch.setattr(store, "purge_responses", counted)
    for n in range(3):
        await conversations.keep(ANN, answer(f"resp_{n}", "a"), [], None)
    assert purges == [1000.0]
    clock.now += 1.0
    await conversations.keep(ANN, answer("resp_9", "a"), [], None)
    assert purges == [1000.0, 1001.0]
    assert await store.find_response("sub:ann", "resp_0", 0.0) is None  # purged


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
        conversations.item(ANN, "msg_1"),
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
    assert await conversations.item(ANN, name) is None
