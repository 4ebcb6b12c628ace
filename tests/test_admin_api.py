"""The admin API end to end: a real gateway on SQLite and on the local PostgreSQL (a
schema of its own), keys managed over HTTP (`/admin/v1`) and gRPC (`AdminService`), spend
summed by the database from records written into the store, and `tandem keys` /
`tandem spend` as an operator runs them."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from tandem.v1 import admin_pb2, admin_pb2_grpc

from server.store import open_store
from server.store.keys import new_key
from server.usage.record import UsageRecord
from tests.eventually import eventually
from tests.rpc_status import details_of
from tests.servers import TandemProcess, run_cli, start_tandem
from tests.stores import pg_schema_url

ADMIN_KEY = "admin-api-admin-key-0123456789abcdef"
CONFIG = """
providers: [{name: demo, kind: mock}]
models: [{name: echo, provider: demo}, {name: premium, provider: demo}, {name: other, provider: demo}]
tiers:
  free: {default_model: echo, models: [echo]}
  standard: {default_model: premium, models: [echo, premium]}
auth: {required: true, key_cache_s: 0.3, admin_keys: ["%(admin)s"]}
usage: {store: "%(store)s", flush_interval_ms: 50}
"""
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
# a call on the stub (its generated types say a message; on a grpc.aio channel: awaitable)
Rpc = Callable[[admin_pb2_grpc.AdminServiceStub], Any]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('admin') / 'tandem.db'}"
    else:
        with pg_schema_url() as url:
            yield url


@pytest.fixture(scope="module")
def config_path(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("admin-cli") / "tandem.yaml"
    path.write_text(CONFIG % {"admin": ADMIN_KEY, "store": store_url})
    return path


@pytest.fixture(scope="module")
def sqlite_config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """For what does not depend on the backend (the CLI's own checks): one run, not two."""
    folder = tmp_path_factory.mktemp("admin-cli-sqlite")
    path = folder / "tandem.yaml"
    path.write_text(CONFIG % {"admin": ADMIN_KEY, "store": f"sqlite:///{folder / 'tandem.db'}"})
    return path


@pytest.fixture(scope="module")
def gateway(config_path: Path) -> Iterator[TandemProcess]:
    process = start_tandem(config_path.parent, config_path.read_text())
    yield process
    assert process.terminate() == 0, process.stderr()


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


def admin_url(gateway: TandemProcess, path: str) -> str:
    return f"{gateway.base_url}/admin/v1{path}"


def create(gateway: TandemProcess, **fields: Any) -> dict[str, Any]:
    answer = httpx.post(admin_url(gateway, "/keys"), json=fields, headers=ADMIN)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def chat_status(gateway: TandemProcess, key: str, model: str = "echo") -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
    )
    return answer.status_code


def on_grpc(gateway: TandemProcess, call: Rpc) -> Any:
    async def run() -> Any:
        async with grpc.aio.insecure_channel(gateway.grpc) as channel:
            return await call(admin_pb2_grpc.AdminServiceStub(channel))

    return asyncio.run(run())


def grpc_error(
    gateway: TandemProcess,
    call: Rpc,
) -> grpc.aio.AioRpcError:
    try:
        on_grpc(gateway, call)
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("the call succeeded")


AS_ADMIN = (("authorization", f"Bearer {ADMIN_KEY}"),)


# --- keys over HTTP


def test_a_key_made_read_changed_and_revoked_over_http(gateway: TandemProcess) -> None:
    user = new_user()
    expires = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    created = create(
        gateway,
        user=user,
        tier="standard",
        models=["premium"],
        requests_per_minute=60,
        budget={"usd": 12.5, "period": "weekly"},
        expires_at=expires.isoformat().replace("+00:00", "Z"),
        labels={"team": "search", "env": "prod"},
    )
    secret = created.pop("key")
    assert secret.startswith(f"tdm_{created['id']}_")
    assert created == {
        "id": created["id"],
        "user": user,
        "tier": "standard",
        "models": ["premium"],
        "requests_per_minute": 60,
        "tokens_per_minute": None,
        "max_concurrent_requests": None,
        "budget": {"usd": 12.5, "period": "weekly"},
        "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
        "labels": {"env": "prod", "team": "search"},
        "created_at": created["created_at"],
        "revoked": False,
    }
    # the key works (its narrowing is the policy's to apply: WP4)
    assert eventually(lambda: chat_status(gateway, secret, "premium") == 200)

    read = httpx.get(admin_url(gateway, f"/keys/{created['id']}"), headers=ADMIN)
    assert read.status_code == 200
    assert read.json() == created  # never the secret again
    assert secret not in read.text

    # PATCH: null clears, a field left out stays, an empty list is no model at all
    patched = httpx.patch(
        admin_url(gateway, f"/keys/{created['id']}"),
        json={"budget": None, "models": [], "tokens_per_minute": 1000},
        headers=ADMIN,
    )
    assert patched.status_code == 200, patched.text
    assert {k: patched.json()[k] for k in ("budget", "models", "tokens_per_minute")} == {
        "budget": None,
        "models": [],
        "tokens_per_minute": 1000,
    }
    assert patched.json()["requests_per_minute"] == 60
    patched = httpx.patch(
        admin_url(gateway, f"/keys/{created['id']}"), json={"models": None}, headers=ADMIN
    )
    assert patched.json()["models"] is None  # the tier's again

    revoked = httpx.delete(admin_url(gateway, f"/keys/{created['id']}"), headers=ADMIN)
    assert revoked.status_code == 200
    assert revoked.json() == {**patched.json(), "revoked": True}
    assert eventually(lambda: chat_status(gateway, secret, "premium") == 403)
    # revoking again returns the key as it is
    again = httpx.delete(admin_url(gateway, f"/keys/{created['id']}"), headers=ADMIN)
    assert (again.status_code, again.json()["revoked"]) == (200, True)


def test_budget_dollars_are_exact_json_numbers(gateway: TandemProcess) -> None:
    created = create(gateway, user=new_user(), budget={"usd": 0.000000001})
    answer = httpx.get(admin_url(gateway, f"/keys/{created['id']}"), headers=ADMIN)
    assert b'"budget":{"usd":0.000000001,"period":"monthly"}' in answer.content
    # sent as written (a Python float would lose digits before it left)
    body = b'{"user": "u", "budget": {"usd": 123456789.123456789}}'
    big = httpx.post(admin_url(gateway, "/keys"), content=body, headers=ADMIN).json()
    assert (
        b'"usd":123456789.123456789'
        in httpx.get(admin_url(gateway, f"/keys/{big['id']}"), headers=ADMIN).content
    )


def test_no_odd_request_is_a_500(gateway: TandemProcess) -> None:
    for path in (
        "/keys/%ED%A0%80",
        "/keys/%FF",
        "/keys?user=%ED%A0%80",
        "/spend?model=%FF",
        "/keys?page_size=" + "9" * 5000,  # past int()'s 4300 digits
    ):
        answer = httpx.get(admin_url(gateway, path), headers=ADMIN)
        assert answer.status_code in (200, 400, 404), (path, answer.text)
    # the first and the last moments a Timestamp holds: a window, not a 500
    first, last = "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z"
    for since, until in ((first, last), (last, first)):
        answer = spend(gateway, since=since, until=until, group_by="day")
        assert answer.status_code == 200, answer.text


def test_an_unknown_key_is_404(gateway: TandemProcess) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        answer = httpx.request(
            method, admin_url(gateway, "/keys/000000000000"), json={"labels": {}}, headers=ADMIN
        )
        assert answer.status_code == 404, (method, answer.text)
        assert answer.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "user"),
        ({"user": ""}, "user"),
        ({"user": "u", "tier": "gold"}, "tier"),
        ({"user": "u", "models": ["premium"]}, "models"),  # not tier free's
        ({"user": "u", "models": "echo"}, "models"),
        ({"user": "u", "requests_per_minute": 0}, "requests_per_minute"),
        ({"user": "u", "tokens_per_minute": 1.5}, "tokens_per_minute"),
        ({"user": "u", "max_concurrent_requests": True}, "max_concurrent_requests"),
        ({"user": "u", "budget": {"usd": -1}}, "budget.usd"),
        ({"user": "u", "budget": {"usd": 0.0000000001}}, "budget.usd"),
        ({"user": "u", "budget": {"usd": 1, "period": "yearly"}}, "budget.period"),
        ({"user": "u", "budget": {"usd": 1, "periodd": "daily"}}, "budget"),
        ({"user": "u", "budget": 5}, "budget"),
        ({"user": "u", "budget": {"usd": "5"}}, "budget.usd"),  # money is a number on HTTP
        ({"user": "u", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"user": "u", "expires_at": "tomorrow"}, "expires_at"),
        ({"user": "u", "expires_at": "9999-12-31T23:59:59.000001Z"}, "expires_at"),
        ({"user": "u", "labels": {f"k{i}": "v" for i in range(17)}}, "labels"),
        ({"user": "u", "labels": {"bad key": "v"}}, "labels"),
        ({"user": "u", "labels": {"k": "v" * 257}}, "labels.k"),
        ({"user": "u", "labels": {"k": 1}}, "labels.k"),
        ({"user": "u", "id": "abc"}, "id"),
        ({"user": "u", "revoked": True}, "revoked"),
        ({"user": "u", "colour": "blue"}, "colour"),
    ],
)
def test_a_bad_key_is_a_400_naming_its_field(
    gateway: TandemProcess, body: dict[str, Any], param: str
) -> None:
    answer = httpx.post(admin_url(gateway, "/keys"), json=body, headers=ADMIN)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param), error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        # the decimal context would underflow it to $0 before the places were checked
        (b'{"user": "u", "budget": {"usd": 1e-2000000000}}', "budget.usd"),
        (b'{"user": "u", "budget": {"usd": 1.00000000001}}', "budget.usd"),
        (b'{"user": "u", "budget": {"usd": "1_0"}}', "budget.usd"),
        # no lone surrogate reaches a proto string, a label's name included
        (b'{"user": "u", "labels": {"\\ud800": "x"}}', "labels"),
        (b'{"user": "u", "labels": {"k": "\\udfff"}}', "labels.k"),
        (b'{"user": "u", "\\ud800": 1}', "body"),
        (b'{"user": "u", "budget": {"usd": 1, "\\ud800": 1}}', "budget"),
        (b'{"user": "u", "expires_at": "9999-12-31T23:59:59.999999Z"}', "expires_at"),
    ],
)
def test_a_bad_key_body_is_a_400_naming_its_field(
    gateway: TandemProcess, body: bytes, param: str
) -> None:
    """Bodies as sent on the wire: what a Python dict cannot say (1e-2000000000)."""
    user = new_user()
    answer = httpx.post(
        admin_url(gateway, "/keys"),
        content=body.replace(b'"u"', f'"{user}"'.encode()),
        headers=ADMIN,
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param, answer.text
    listed = httpx.get(admin_url(gateway, "/keys"), params={"user": user}, headers=ADMIN)
    assert listed.json()["keys"] == []  # nothing stored


def test_budgets_are_exact_whatever_the_exponent(gateway: TandemProcess) -> None:
    for body, usd in (
        (b'{"user": "u", "budget": {"usd": 1.0000000000000}}', b'"usd":1,'),
        (b'{"user": "u", "budget": {"usd": 0e-2000000000}}', b'"usd":0,'),
        (b'{"user": "u", "budget": {"usd": 25e-1}}', b'"usd":2.5,'),
    ):
        answer = httpx.post(admin_url(gateway, "/keys"), content=body, headers=ADMIN)
        assert answer.status_code == 201, answer.text
        assert usd in answer.content, answer.text


def test_the_latest_expiry_is_kept_and_never_breaks_a_listing(
    gateway: TandemProcess, store_url: str
) -> None:
    user = new_user()
    latest = create(gateway, user=user, expires_at="9999-12-31T23:59:59Z")
    assert latest["expires_at"] == "9999-12-31T23:59:59.000000Z"
    # a row stored beyond what a Timestamp holds (by hand, or before input was bounded)
    _, record = new_key(user, "free")
    written = dataclasses.replace(record, expires_at=253_402_300_800.5)

    async def store_it() -> None:
        store = open_store(store_url)
        assert store is not None
        await store.open()
        try:
            await store.create_key(written)
        finally:
            await store.aclose()

    asyncio.run(store_it())
    listed = httpx.get(admin_url(gateway, "/keys"), params={"user": user}, headers=ADMIN)
    assert listed.status_code == 200, listed.text
    expiries = {key["id"]: key["expires_at"] for key in listed.json()["keys"]}
    assert expiries == {
        latest["id"]: "9999-12-31T23:59:59.000000Z",
        written.id: "9999-12-31T23:59:59.999999Z",  # clamped to the latest a Timestamp holds
    }
    read = httpx.get(admin_url(gateway, f"/keys/{written.id}"), headers=ADMIN)
    assert read.status_code == 200, read.text
    grpc_read = on_grpc(
        gateway,
        lambda stub: stub.GetKey(admin_pb2.GetKeyRequest(id=written.id), metadata=AS_ADMIN),
    )
    assert grpc_read.expires_at.seconds == 253_402_300_799


def test_a_bad_update_is_a_400_naming_its_field(gateway: TandemProcess) -> None:
    key_id = create(gateway, user=new_user())["id"]
    for body, param in (
        ({}, "body"),
        ({"user": "someone"}, "user"),  # not changed by an update
        ({"tier": "standard"}, "tier"),
        ({"models": ["premium"]}, "models"),  # tier free's key
        ({"budget": {"usd": "x"}}, "budget.usd"),
    ):
        answer = httpx.patch(admin_url(gateway, f"/keys/{key_id}"), json=body, headers=ADMIN)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["error"]["param"] == param, body
    not_json = httpx.post(admin_url(gateway, "/keys"), content=b"{", headers=ADMIN)
    assert (not_json.status_code, not_json.json()["error"]["param"]) == (400, "body")


def test_keys_are_listed_in_pages_whose_tokens_keep_their_filters(
    gateway: TandemProcess,
) -> None:
    user = new_user()
    made = [create(gateway, user=user)["id"] for _ in range(5)]
    create(gateway, user=new_user())  # someone else's: never on this user's pages
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        params = {"user": user, "page_size": "2", **({"page_token": token} if token else {})}
        answer = httpx.get(admin_url(gateway, "/keys"), params=params, headers=ADMIN)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        seen += [key["id"] for key in page["keys"]]
        pages += 1
        token = page["next_page_token"]
        if token is None:
            break
        assert len(page["keys"]) == 2
        # a token is for its filters only: with another user or tier it is refused
        for other in ({"user": new_user()}, {"user": user, "tier": "free"}):
            reused = httpx.get(
                admin_url(gateway, "/keys"), params={**other, "page_token": token}, headers=ADMIN
            )
            assert reused.status_code == 400, reused.text
            assert reused.json()["error"]["param"] == "page_token"
    assert (seen, pages) == (made, 3)
    # and a page size may change between pages (AIP-158)
    first = httpx.get(
        admin_url(gateway, "/keys"), params={"user": user, "page_size": "1"}, headers=ADMIN
    ).json()
    rest = httpx.get(
        admin_url(gateway, "/keys"),
        params={"user": user, "page_size": "10", "page_token": first["next_page_token"]},
        headers=ADMIN,
    ).json()
    assert [k["id"] for k in first["keys"] + rest["keys"]] == made
    for params in ({"page_token": "not-a-token"}, {"page_size": "0"}, {"page_size": "1001"}):
        bad = httpx.get(admin_url(gateway, "/keys"), params=params, headers=ADMIN)
        assert bad.status_code == 400, params
    by_tier = httpx.get(
        admin_url(gateway, "/keys"), params={"tier": "standard", "user": user}, headers=ADMIN
    )
    assert by_tier.json() == {"keys": [], "next_page_token": None}


# --- keys over gRPC


def test_a_key_made_read_changed_and_revoked_over_grpc(gateway: TandemProcess) -> None:
    user = new_user()
    key = admin_pb2.Key(user=user, tier="standard", requests_per_minute=30, labels={"a": "1"})
    key.budget.usd = "2.5"
    key.models.names.append("echo")

    created = on_grpc(
        gateway, lambda stub: stub.CreateKey(admin_pb2.CreateKeyRequest(key=key), metadata=AS_ADMIN)
    )
    assert created.key.startswith(f"tdm_{created.id}_")
    assert (created.user, created.tier, list(created.models.names)) == (user, "standard", ["echo"])
    assert (created.budget.usd, created.budget.period) == ("2.5", "monthly")
    assert not created.HasField("tokens_per_minute")
    assert eventually(lambda: chat_status(gateway, created.key) == 200)

    read = on_grpc(
        gateway, lambda stub: stub.GetKey(admin_pb2.GetKeyRequest(id=created.id), metadata=AS_ADMIN)
    )
    assert read.key == ""
    created.ClearField("key")
    assert read == created

    # only the masked fields change: a masked field left unset is cleared
    change = admin_pb2.Key(id=created.id, tokens_per_minute=500, requests_per_minute=1)
    mask = FieldMask(paths=["tokens_per_minute", "budget", "labels"])
    updated = on_grpc(
        gateway,
        lambda stub: stub.UpdateKey(
            admin_pb2.UpdateKeyRequest(key=change, update_mask=mask), metadata=AS_ADMIN
        ),
    )
    assert updated.tokens_per_minute == 500
    assert updated.requests_per_minute == 30  # set, but not in the mask
    assert not updated.HasField("budget")
    assert dict(updated.labels) == {}
    assert list(updated.models.names) == ["echo"]

    bad_mask = grpc_error(
        gateway,
        lambda stub: stub.UpdateKey(
            admin_pb2.UpdateKeyRequest(key=change, update_mask=FieldMask(paths=["tier"])),
            metadata=AS_ADMIN,
        ),
    )
    assert bad_mask.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details_of(bad_mask).bad_request is not None

    listed = on_grpc(
        gateway,
        lambda stub: stub.ListKeys(admin_pb2.ListKeysRequest(user=user), metadata=AS_ADMIN),
    )
    assert [k.id for k in listed.keys] == [created.id]
    assert listed.next_page_token == ""

    revoked = on_grpc(
        gateway,
        lambda stub: stub.RevokeKey(admin_pb2.RevokeKeyRequest(id=created.id), metadata=AS_ADMIN),
    )
    assert revoked.revoked
    missing = grpc_error(
        gateway,
        lambda stub: stub.GetKey(admin_pb2.GetKeyRequest(id="000000000000"), metadata=AS_ADMIN),
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND


def _bad_keys() -> list[tuple[admin_pb2.Key, str]]:
    keys: list[tuple[admin_pb2.Key, str]] = []
    for usd in (
        "1.0000000001",
        "1e999999999",
        "1e30",
        "NaN",
        "-0.5",
        " 1",
        "five",
        "1e-2000000000",  # underflows to 0 under the decimal context
        "1_0",  # Decimal takes it as 10
        "\uff15",  # a fullwidth 5: Decimal takes it too
    ):
        key = admin_pb2.Key(user="u")
        key.budget.usd = usd
        keys.append((key, "budget.usd"))
    past = admin_pb2.Key(user="u")
    past.expires_at.FromSeconds(1)
    keys.append((past, "expires_at"))
    out_of_range = admin_pb2.Key(user="u")
    out_of_range.expires_at.seconds = 2**62
    keys.append((out_of_range, "expires_at"))
    past_the_last = admin_pb2.Key(user="u")
    past_the_last.expires_at.seconds, past_the_last.expires_at.nanos = 253_402_300_799, 1
    keys.append((past_the_last, "expires_at"))
    keys.append((admin_pb2.Key(user="u", requests_per_minute=-5), "requests_per_minute"))
    keys.append((admin_pb2.Key(user="u\x00"), "user"))
    keys.append((admin_pb2.Key(user="u", labels={"k": "\x00"}), "labels.k"))
    keys.append((admin_pb2.Key(user="u", id="x"), "id"))
    return keys


@pytest.mark.parametrize(("key", "field"), _bad_keys())
def test_a_bad_key_over_grpc_is_invalid_argument_naming_its_field(
    gateway: TandemProcess, key: admin_pb2.Key, field: str
) -> None:
    error = grpc_error(
        gateway,
        lambda stub: stub.CreateKey(admin_pb2.CreateKeyRequest(key=key), metadata=AS_ADMIN),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    bad_request = details_of(error).bad_request
    assert bad_request is not None
    assert [v.field for v in bad_request.field_violations] == [field]


def test_a_page_token_that_is_not_ours_is_a_400(gateway: TandemProcess) -> None:
    for made in (b'[1.0, "a\\u0000b", "x"]', b"[1, 2, 3]", b"{}", b"\xff"):
        token = base64.urlsafe_b64encode(made).decode()
        answer = httpx.get(admin_url(gateway, "/keys"), params={"page_token": token}, headers=ADMIN)
        assert answer.status_code == 400, (made, answer.text)
        assert answer.json()["error"]["param"] == "page_token"


# --- admin keys only


def _every_route(key_id: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [
        ("POST", "/keys", {"user": "x"}),
        ("GET", "/keys", None),
        ("GET", f"/keys/{key_id}", None),
        ("PATCH", f"/keys/{key_id}", {"labels": {}}),
        ("DELETE", f"/keys/{key_id}", None),
        ("GET", "/spend", None),
        # a query that would be a 400 is still a 403: the caller is checked first
        ("GET", "/keys?page_size=abc", None),
        ("GET", "/keys?zzz=1", None),
        ("GET", "/spend?since=xx", None),
    ]


def _every_rpc(key_id: str) -> list[Callable[..., Any]]:
    return [
        lambda stub, m: stub.CreateKey(
            admin_pb2.CreateKeyRequest(key=admin_pb2.Key(user="x")), metadata=m
        ),
        lambda stub, m: stub.GetKey(admin_pb2.GetKeyRequest(id=key_id), metadata=m),
        lambda stub, m: stub.ListKeys(admin_pb2.ListKeysRequest(), metadata=m),
        lambda stub, m: stub.UpdateKey(
            admin_pb2.UpdateKeyRequest(key=admin_pb2.Key(id=key_id, requests_per_minute=1)),
            metadata=m,
        ),
        lambda stub, m: stub.RevokeKey(admin_pb2.RevokeKeyRequest(id=key_id), metadata=m),
        lambda stub, m: stub.GetSpend(admin_pb2.GetSpendRequest(), metadata=m),
    ]


def test_only_admin_keys_may_call_any_admin_route_or_rpc(gateway: TandemProcess) -> None:
    created = create(gateway, user=new_user(), tier="standard")
    user_key = created["key"]
    assert eventually(lambda: chat_status(gateway, user_key, "premium") == 200)
    for method, path, body in _every_route(created["id"]):
        as_user = httpx.request(
            method,
            admin_url(gateway, path),
            json=body,
            headers={"authorization": f"Bearer {user_key}"},
        )
        assert as_user.status_code == 403, (method, path, as_user.text)
        assert as_user.json()["error"]["type"] == "permission_error"
        anonymous = httpx.request(method, admin_url(gateway, path), json=body)
        assert anonymous.status_code == 401, (method, path, anonymous.text)
        assert anonymous.json()["error"]["type"] == "authentication_error"
    as_user_metadata = (("authorization", f"Bearer {user_key}"),)
    for call in _every_rpc(created["id"]):
        for metadata, code in (
            (as_user_metadata, grpc.StatusCode.PERMISSION_DENIED),
            ((), grpc.StatusCode.UNAUTHENTICATED),
        ):
            bound: Rpc = functools.partial(call, m=metadata)
            assert grpc_error(gateway, bound).code() == code
    # nothing changed: the key is as it was, still active
    read = httpx.get(admin_url(gateway, f"/keys/{created['id']}"), headers=ADMIN).json()
    assert read == {k: v for k, v in created.items() if k != "key"}


def test_admin_calls_are_in_the_access_log_metrics_and_openapi(gateway: TandemProcess) -> None:
    httpx.get(admin_url(gateway, "/keys"), params={"page_size": "1"}, headers=ADMIN)
    metrics = httpx.get(f"{gateway.base_url}/metrics").text
    counted = [
        line
        for line in metrics.splitlines()
        if line.startswith("tandem_requests_total{") and 'protocol="admin"' in line
    ]
    assert counted, "admin calls are counted under protocol admin"
    eventually(lambda: '"protocol":"admin","route":"/admin/v1/keys"' in gateway.stderr())
    paths = httpx.get(f"{gateway.base_url}/openapi.json").json()["paths"]
    assert {"/admin/v1/keys", "/admin/v1/keys/{key_id}", "/admin/v1/spend"} <= paths.keys()
    assert {"post", "get"} <= paths["/admin/v1/keys"].keys()
    assert {"get", "patch", "delete"} <= paths["/admin/v1/keys/{key_id}"].keys()


# --- spend


def _record(
    user: str, model: str, key_id: str | None, at: datetime, cost_nanos: int, tokens: int
) -> UsageRecord:
    return UsageRecord(
        id=uuid.uuid4().hex,
        request_id=uuid.uuid4().hex,
        user=user,
        model=model,
        provider="demo",
        protocol="native",
        prompt_tokens=tokens,
        completion_tokens=2 * tokens,
        status="ok",
        latency_ms=1.0,
        ttft_ms=None,
        created_at=int(at.timestamp() * 1_000_000),
        cost_nanos=cost_nanos,
        cost_source="priced",
        key_id=key_id,
        tier="free",
    )


def write_records(store_url: str, records: list[UsageRecord]) -> None:
    async def write() -> None:
        store = open_store(store_url)
        assert store is not None
        await store.open()
        try:
            await store.write_usage(records)
        finally:
            await store.aclose()

    asyncio.run(write())


@pytest.fixture(scope="module")
def spent(store_url: str) -> dict[str, Any]:
    """Records of two users, two models, two keys over two UTC days (one just before
    midnight, one just after), written into the gateway's store."""
    alice, bob = new_user(), new_user()
    day1 = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    day2 = datetime(2026, 3, 2, 0, 0, 1, tzinfo=UTC)
    write_records(
        store_url,
        [
            _record(alice, "echo", "aaaaaaaaaaaa", day1, 1_000_000_001, 10),
            _record(alice, "premium", "aaaaaaaaaaaa", day2, 5, 1),
            _record(bob, "premium", "bbbbbbbbbbbb", day2, 3_000_000_000, 100),
            _record(bob, "premium", None, day1, 7, 1),
        ],
    )
    return {
        "alice": alice,
        "bob": bob,
        "since": "2026-03-01T00:00:00Z",
        "until": "2026-03-03T00:00:00Z",
    }


def spend(gateway: TandemProcess, **params: str) -> httpx.Response:
    return httpx.get(admin_url(gateway, "/spend"), params=params, headers=ADMIN)


def test_spend_is_summed_by_day_model_user_and_key(
    gateway: TandemProcess, spent: dict[str, Any]
) -> None:
    alice, bob = spent["alice"], spent["bob"]
    window = {"since": spent["since"], "until": spent["until"]}

    def groups(group_by: str, **params: str) -> list[tuple[str, int, int, int]]:
        answer = spend(gateway, group_by=group_by, **window, **params)
        assert answer.status_code == 200, answer.text
        return [
            (g["group"], g["requests"], g["total_tokens"], g["cost_nanos"])
            for g in answer.json()["groups"]
        ]

    # by descending cost
    assert groups("day") == [
        ("2026-03-02", 2, 303, 3_000_000_005),
        ("2026-03-01", 2, 33, 1_000_000_008),
    ]
    assert groups("model") == [("premium", 3, 306, 3_000_000_012), ("echo", 1, 30, 1_000_000_001)]
    assert groups("user") == [(bob, 2, 303, 3_000_000_007), (alice, 2, 33, 1_000_000_006)]
    assert groups("key") == [
        ("bbbbbbbbbbbb", 1, 300, 3_000_000_000),
        ("aaaaaaaaaaaa", 2, 33, 1_000_000_006),
        ("", 1, 3, 7),  # a call made without a key
    ]
    assert groups("model", user=alice) == [("echo", 1, 30, 1_000_000_001), ("premium", 1, 3, 5)]
    assert groups("day", key_id="aaaaaaaaaaaa", model="premium") == [("2026-03-02", 1, 3, 5)]

    answer = spend(gateway, group_by="user", **window)
    body = answer.json()
    assert body["totals"] == {
        "requests": 4,
        "prompt_tokens": 112,
        "completion_tokens": 224,
        "total_tokens": 336,
        "cost_nanos": 4_000_000_013,
        "cost_usd": 4.000000013,
    }
    # dollars are exact JSON numbers, never floats' digits
    assert b'"cost_usd":3.000000007' in answer.content
    assert b'"cost_usd":4.000000013}' in answer.content
    # one day only: until is exclusive
    day = spend(gateway, since="2026-03-02T00:00:00Z", until="2026-03-02T00:00:01Z").json()
    assert (day["groups"], day["totals"]["requests"]) == ([], 0)
    day = spend(gateway, since="2026-03-02T00:00:00Z", until="2026-03-02T00:00:02Z").json()
    assert day["totals"]["cost_nanos"] == 3_000_000_005


def test_spend_over_grpc_matches_http(gateway: TandemProcess, spent: dict[str, Any]) -> None:
    request = admin_pb2.GetSpendRequest(group_by="model")
    request.since.FromJsonString(spent["since"])
    request.until.FromJsonString(spent["until"])
    answer = on_grpc(gateway, lambda stub: stub.GetSpend(request, metadata=AS_ADMIN))
    assert [(g.group, g.cost_nanos, g.cost_usd) for g in answer.groups] == [
        ("premium", 3_000_000_012, "3.000000012"),
        ("echo", 1_000_000_001, "1.000000001"),
    ]
    assert (answer.totals.requests, answer.totals.cost_usd) == (4, "4.000000013")
    bad = grpc_error(
        gateway,
        lambda stub: stub.GetSpend(admin_pb2.GetSpendRequest(group_by="week"), metadata=AS_ADMIN),
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "week"}, "group_by"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01T00:00:00Z"}, "until"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_a_bad_spend_query_is_a_400_naming_it(
    gateway: TandemProcess, params: dict[str, str], param: str
) -> None:
    answer = spend(gateway, **params)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param


# --- the command line


def cli(config: Path, *args: str) -> str:
    done = run_cli(*args, "--config", config, cwd=config.parent)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_keys_create_and_update_take_every_option(
    gateway: TandemProcess, config_path: Path
) -> None:
    user = new_user()
    started = datetime.now(UTC)
    created = orjson.loads(
        cli(
            config_path,
            "keys",
            "create",
            "--user",
            user,
            "--tier",
            "standard",
            "--models",
            "echo,premium",
            "--rpm",
            "10",
            "--tpm",
            "2000",
            "--max-concurrent",
            "3",
            "--budget-usd",
            "7.25",
            "--budget-period",
            "daily",
            "--expires-in",
            "30d",
            "--label",
            "team=a",
            "--label",
            "env=b",
            "--json",
        )
    )
    expires = datetime.fromisoformat(created["expires_at"].replace("Z", "+00:00"))
    assert timedelta(days=30) <= expires - started < timedelta(days=30, minutes=1)
    assert {
        k: v for k, v in created.items() if k not in ("id", "key", "created_at", "expires_at")
    } == {
        "user": user,
        "tier": "standard",
        "models": ["echo", "premium"],
        "requests_per_minute": 10,
        "tokens_per_minute": 2000,
        "max_concurrent_requests": 3,
        "budget": {"usd": 7.25, "period": "daily"},
        "labels": {"env": "b", "team": "a"},
        "revoked": False,
    }
    # the server sees what the CLI made, as the API shows it
    read = httpx.get(admin_url(gateway, f"/keys/{created['id']}"), headers=ADMIN)
    assert read.json() == {k: v for k, v in created.items() if k != "key"}

    updated = orjson.loads(
        cli(
            config_path,
            "keys",
            "update",
            created["id"],
            "--rpm",
            "99",
            "--budget-usd",
            "1",
            "--json",
        )
    )
    assert (updated["requests_per_minute"], updated["budget"]) == (
        99,
        {"usd": 1, "period": "monthly"},
    )
    assert updated["tokens_per_minute"] == 2000  # not given: unchanged
    table = cli(config_path, "keys", "update", created["id"], "--label", "team=c")
    assert table.splitlines()[0].split()[:3] == ["ID", "USER", "TIER"]
    assert created["id"] in table.splitlines()[1]

    # without --json, create prints the secret alone
    secret = cli(config_path, "keys", "create", "--user", user).strip()
    assert secret.startswith("tdm_")
    assert "\n" not in secret

    listed = orjson.loads(cli(config_path, "keys", "list", "--json"))
    assert created["id"] in {key["id"] for key in listed}
    assert all("key" not in key for key in listed)
    listing = cli(config_path, "keys", "list")
    assert created["id"] in listing
    assert created["key"] not in listing


def test_keys_options_are_checked_as_the_api_checks_them(sqlite_config_path: Path) -> None:
    config_path = sqlite_config_path
    for options, named in (
        (["--models", "premium"], "--models"),  # not tier free's
        (["--budget-usd", "0.0000000001"], "--budget-usd"),
        (["--rpm", "0"], "--rpm"),
        (["--label", "bad key=v"], "--label"),
        # bounded as the API bounds them: one line, never a traceback
        (["--expires-in", "2920000d"], "--expires-in"),  # past 9999-12-31
        (["--expires-in", "99999999999d"], "--expires-in"),  # past timedelta's range
        (["--rpm", "99999999999"], "--rpm"),  # past int32
        (["--tpm", "2147483648"], "--tpm"),
        (["--max-concurrent", "-1"], "--max-concurrent"),
        (["--budget-usd", "1_0"], "--budget-usd"),
        (["--budget-usd", "1e-2000000000"], "--budget-usd"),
        (["--label", "k=\udcff"], "--label"),  # a non-UTF-8 argv byte
        (["--tier", "\udcff"], "--tier"),
    ):
        done = run_cli(
            "keys",
            "create",
            "--user",
            "u",
            *options,
            "--config",
            config_path,
            cwd=config_path.parent,
        )
        assert done.returncode == 2, (options, done.stdout)
        assert named in done.stderr, (options, done.stderr)
        assert "Traceback" not in done.stderr, (options, done.stderr)
    for args in (["keys", "revoke", "\udcff"], ["spend", "--user", "\udcff"]):
        done = run_cli(*args, "--config", config_path, cwd=config_path.parent)
        assert done.returncode == 2, (args, done.stdout)
        assert "UTF-8" in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr, (args, done.stderr)
    done = run_cli(
        "keys", "create", "--user", "u", "--expires-in", "soon", "--config", config_path,
        cwd=config_path.parent,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--expires-in" in done.stderr


def test_tandem_spend_prints_a_table_or_json(config_path: Path, spent: dict[str, Any]) -> None:
    window = ["--since", spent["since"], "--until", spent["until"]]
    report = orjson.loads(cli(config_path, "spend", "--group-by", "user", *window, "--json"))
    assert [(g["group"], g["cost_nanos"]) for g in report["groups"]] == [
        (spent["bob"], 3_000_000_007),
        (spent["alice"], 1_000_000_006),
    ]
    assert report["totals"]["cost_usd"] == 4.000000013
    lines = cli(config_path, "spend", "--group-by", "day", *window).splitlines()
    assert lines[0].split() == ["DAY", "REQUESTS", "PROMPT", "COMPLETION", "TOKENS", "COST_USD"]
    assert lines[1].split() == ["2026-03-02", "2", "101", "202", "303", "3.000000005"]
    assert lines[-1].split() == ["total", "4", "112", "224", "336", "4.000000013"]
    alone = cli(config_path, "spend", "--user", spent["alice"], *window).splitlines()
    assert alone[-1].split() == ["total", "2", "11", "22", "33", "1.000000006"]


def test_an_expired_key_is_refused_like_a_revoked_one(gateway: TandemProcess) -> None:
    created = create(gateway, user=new_user())
    assert eventually(lambda: chat_status(gateway, created["key"]) == 200)
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    patched = httpx.patch(
        admin_url(gateway, f"/keys/{created['id']}"), json={"expires_at": soon}, headers=ADMIN
    )
    assert patched.status_code == 200, patched.text
    started = time.monotonic()
    assert eventually(lambda: chat_status(gateway, created["key"]) == 403)
    assert time.monotonic() - started < 5
