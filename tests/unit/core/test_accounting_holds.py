"""A call admitted under a budget whose end fails before its record is made: its hold
is freed at once (`cancel`), never left reserved until its lease runs out (or renewed
for as long as the replica lives, as it was: nothing else stopped renewing it)."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from server.config import build_config
from server.context import CallContext
from server.core.accounting import Accounting
from server.policy import Admission, Hold
from server.providers.base import Route
from server.usage.prices import Prices


class Keeper:
    def __init__(self) -> None:
        self.released: list[str] = []
        self.cancelled: list[tuple[str, tuple[tuple[str, int], ...]]] = []

    async def reserve(self, hold_id: str, scopes: Sequence[Any], nanos: int) -> Any:
        raise AssertionError("not here")

    async def states(self, scopes: Sequence[Any]) -> Any:
        raise AssertionError("not here")

    def release(self, hold_id: str) -> None:
        self.released.append(hold_id)

    def cancel(self, hold_id: str, periods: Sequence[tuple[str, int]]) -> None:
        self.cancelled.append((hold_id, tuple(periods)))


class Recorder:
    def __init__(self, fails: bool) -> None:
        self.fails = fails
        self.records: list[Any] = []

    def record(self, record: Any, settlement: Any = None) -> None:
        if self.fails:
            raise RuntimeError("the record could not be made")
        self.records.append((record, settlement))


def account(recorder: Recorder, keeper: Keeper) -> Accounting:
    config = build_config({}, {})
    route = Route(config.models[0], SimpleNamespace(name="mock", kind="mock"))
    hold = Hold("hold-1", 1_000, (("key:k:total", 0),), keeper)
    ctx = CallContext(request_id="r", protocol="openai")
    return Accounting(
        recorder,  # type: ignore[arg-type]
        ctx,
        route,
        Admission(hold=hold),
        False,
        10,
        Prices.from_config(config),
    )


def test_a_call_recorded_settles_its_hold_by_its_record() -> None:
    keeper, recorder = Keeper(), Recorder(fails=False)
    with account(recorder, keeper):
        pass
    assert keeper.released == ["hold-1"]
    assert keeper.cancelled == []
    assert recorder.records[0][1].record_id == "hold-1"


def test_a_call_whose_record_fails_frees_its_hold_at_once() -> None:
    keeper, recorder = Keeper(), Recorder(fails=True)
    with pytest.raises(RuntimeError), account(recorder, keeper):
        pass
    assert keeper.cancelled == [("hold-1", (("key:k:total", 0),))]
