"""Two `tandem serve` replicas on one PostgreSQL store: a key revoked, or given an expiry
that passes, through one replica's admin API is refused by the other within
`auth.key_cache_s` (each replica refetches a key once per TTL)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.eventually import eventually
from tests.servers import TandemProcess, start_tandem
from tests.stores import pg_schema_url

pytestmark = pytest.mark.timeout(120)

ADMIN_KEY = "replicas-admin-key-0123456789abcdef"
KEY_CACHE_S = 1.0
SLACK_S = 1.5  # a request's own time, and the poll's, on a slow machine
CONFIG = """
providers: [{name: demo, kind: mock}]
models: [{name: echo, provider: demo}]
tiers:
  free: {default_model: echo}
auth: {required: true, key_cache_s: %(ttl)s, admin_keys: ["%(admin)s"]}
usage: {store: "%(store)s"}
telemetry: {access_log: false}
"""
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[TandemProcess]]:
    with pg_schema_url() as url:
        config = CONFIG % {"ttl": KEY_CACHE_S, "admin": ADMIN_KEY, "store": url}
        directory: Path = tmp_path_factory.mktemp("replicas")
        started = [start_tandem(directory, config) for _ in range(2)]
        try:
            yield started
        finally:
            for replica in started:
                assert replica.terminate() == 0, replica.stderr()


def chat_status(replica: TandemProcess, key: str) -> int:
    answer = httpx.post(
        f"{replica.base_url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {key}"},
    )
    return answer.status_code


def make_key(replica: TandemProcess) -> dict[str, Any]:
    answer = httpx.post(
        f"{replica.base_url}/admin/v1/keys",
        json={"user": f"user-{uuid.uuid4().hex[:8]}"},
        headers=ADMIN,
    )
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def working_on_both(replicas: list[TandemProcess], key: str) -> None:
    """Until both replicas accept the key (and so hold it in their caches)."""
    for replica in replicas:

        def accepted(replica: TandemProcess = replica) -> bool:
            return chat_status(replica, key) == 200

        eventually(accepted, 2 * KEY_CACHE_S + 10)


def refused_within(replica: TandemProcess, key: str, seconds: float) -> None:
    started = time.monotonic()
    eventually(lambda: chat_status(replica, key) == 403, seconds + 10)
    took = time.monotonic() - started
    assert took <= seconds, f"refused after {took:.2f} s, more than {seconds} s"


def test_a_key_revoked_on_one_replica_is_refused_by_the_other(
    replicas: list[TandemProcess],
) -> None:
    one, other = replicas
    created = make_key(one)
    working_on_both(replicas, created["key"])
    revoked = httpx.delete(f"{one.base_url}/admin/v1/keys/{created['id']}", headers=ADMIN)
    assert (revoked.status_code, revoked.json()["revoked"]) == (200, True)
    refused_within(other, created["key"], KEY_CACHE_S + SLACK_S)
    read = httpx.get(f"{other.base_url}/admin/v1/keys/{created['id']}", headers=ADMIN)
    assert read.json()["revoked"] is True  # the admin API reads the store: at once


def test_a_key_given_an_expiry_on_one_replica_is_refused_by_the_other_once_past(
    replicas: list[TandemProcess],
) -> None:
    one, other = replicas
    created = make_key(one)
    working_on_both(replicas, created["key"])
    lifetime_s = 1.0
    expires = datetime.now(UTC) + timedelta(seconds=lifetime_s)
    patched = httpx.patch(
        f"{one.base_url}/admin/v1/keys/{created['id']}",
        json={"expires_at": expires.isoformat().replace("+00:00", "Z")},
        headers=ADMIN,
    )
    assert patched.status_code == 200, patched.text
    refused_within(other, created["key"], lifetime_s + KEY_CACHE_S + SLACK_S)
    answer = httpx.post(
        f"{other.base_url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {created['key']}"},
    )
    assert answer.json()["error"]["type"] == "permission_error"
    assert "expired" in answer.json()["error"]["message"]
