"""The admin handlers in-process, over a real SQLite store: who may call them, and what
they answer when the store or the config no longer says what a key needs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tandem.v1 import admin_pb2

from server.config import Config, build_config
from server.context import CallContext, Caller
from server.core.admin import KeyAdmin
from server.core.key_fields import key_message, narrowing
from server.errors import InvalidRequestError, PermissionDeniedError, UnavailableError
from server.store import Store, open_store
from server.store.keys import new_key

RAW = {
    "providers": [{"name": "demo", "kind": "mock"}],
    "models": [{"name": "echo", "provider": "demo"}, {"name": "premium", "provider": "demo"}],
    "tiers": {"free": {"default_model": "echo"}, "gold": {"default_model": "premium"}},
}
ADMIN = CallContext(request_id="r", protocol="admin", caller=Caller("admin", "free", "admin"))


def config(**changes: Any) -> Config:
    return build_config({**RAW, **changes}, {})


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path / 'keys.db'}")
    assert opened is not None
    await opened.open()
    yield opened
    await opened.aclose()


class DownStore:
    """A store whose every call fails as a database that went away does."""

    def __getattr__(self, name: str) -> Any:
        async def fail(*args: object) -> None:
            raise ConnectionRefusedError("down")

        return fail


@pytest.mark.parametrize(
    "caller",
    [Caller("alice", "free"), Caller("anonymous", "free", "anonymous"), Caller("admin", "free")],
)
async def test_anyone_but_an_admin_key_is_refused_before_the_store_is_asked(
    caller: Caller,
) -> None:
    """`Caller("admin", ...)` of kind user is a JWT saying `sub: admin`: not an admin key."""
    admin = KeyAdmin(DownStore(), config())
    ctx = CallContext(request_id="r", protocol="admin", caller=caller)
    with pytest.raises(PermissionDeniedError):
        await admin.list_keys(admin_pb2.ListKeysRequest(), ctx)
    with pytest.raises(PermissionDeniedError):
        await admin.get_spend(admin_pb2.GetSpendRequest(), ctx)


async def test_a_store_that_is_down_is_a_503() -> None:
    admin = KeyAdmin(DownStore(), config())
    with pytest.raises(UnavailableError):
        await admin.get_key(admin_pb2.GetKeyRequest(id="0" * 12), ADMIN)
    with pytest.raises(UnavailableError):
        await admin.create_key(admin_pb2.CreateKeyRequest(key=admin_pb2.Key(user="u")), ADMIN)


async def test_models_of_a_key_whose_tier_left_the_config_are_a_400(store: Store) -> None:
    made = await KeyAdmin(store, config()).create_key(
        admin_pb2.CreateKeyRequest(key=admin_pb2.Key(user="u", tier="gold")), ADMIN
    )
    without_gold = KeyAdmin(store, config(tiers={"free": {"default_model": "echo"}}))
    change = admin_pb2.Key(id=made.id)
    change.models.names.append("premium")
    request = admin_pb2.UpdateKeyRequest(key=change)
    request.update_mask.paths.append("models")
    with pytest.raises(InvalidRequestError, match="tier 'gold' is not in the config"):
        await without_gold.update_key(request, ADMIN)
    request.update_mask.paths[:] = ["requests_per_minute"]
    request.key.requests_per_minute = 3
    assert (await without_gold.update_key(request, ADMIN)).requests_per_minute == 3


@pytest.mark.parametrize(
    ("stored", "shown"),
    [
        (253_402_300_800.5, "9999-12-31T23:59:59.999999Z"),  # past a Timestamp's last second
        (1e300, "9999-12-31T23:59:59.999999Z"),
        (math.inf, "9999-12-31T23:59:59Z"),
        (math.nan, "9999-12-31T23:59:59Z"),
        (-1e300, "0001-01-01T00:00:00Z"),
        (1_700_000_000.25, "2023-11-14T22:13:20.250Z"),
    ],
)
def test_a_stored_time_no_timestamp_holds_is_shown_clamped(stored: float, shown: str) -> None:
    """A row the input checks would refuse (written by hand, or before they existed)
    still reads: one bad row never breaks a listing."""
    _, record = new_key("u", "free")
    message = key_message(dataclasses.replace(record, expires_at=stored, created_at=stored))
    assert message.expires_at.ToJsonString() == shown
    assert message.created_at.ToJsonString() == shown


def _budget(usd: str) -> int:
    key = admin_pb2.Key(user="u")
    key.budget.usd = usd
    fields = narrowing(key, ["budget"], config(), "free", 0.0)
    nanos: int = fields["budget_nanos"]
    return nanos


@pytest.mark.parametrize(
    ("usd", "nanos"),
    [
        ("12.5", 12_500_000_000),
        ("0.000000001", 1),
        ("1.0000000000000", 1_000_000_000),  # trailing zeros are not places
        ("25e-1", 2_500_000_000),
        ("0E-2000000000", 0),
        ("9223372036.854775807", 2**63 - 1),
    ],
)
def test_budget_dollars_are_exact_nanos(usd: str, nanos: int) -> None:
    assert _budget(usd) == nanos


@pytest.mark.parametrize(
    "usd",
    ["1e-2000000000", "1.0000000001", "1_0", "\uff15", "9223372036.854775808", "1e999999999"],
)
def test_budget_dollars_that_are_not_nanos_are_a_400(usd: str) -> None:
    """1e-2000000000 underflows to 0 under the decimal context, and Decimal takes `1_0`
    and fullwidth digits: each is refused before any arithmetic."""
    with pytest.raises(InvalidRequestError) as raised:
        _budget(usd)
    assert raised.value.param == "budget.usd"
