"""The local PostgreSQL and Redis for tests: every user of PostgreSQL gets a schema of
its own, dropped after; Redis users take a database of this suite's and a key prefix
of their own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

__all__ = ["PG_DSN", "REDIS_URL", "count_records", "pg_schema_url", "redis_limits_config"]

PG_DSN = os.environ.get("TANDEM_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
_REDIS_BASE_URL = os.environ.get("TANDEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_URL = urlunsplit(urlsplit(_REDIS_BASE_URL)._replace(path="/9"))  # this suite's database

_REDIS_LIMITS = """
providers: [{name: demo, kind: mock}]
models: [{name: echo, provider: demo}]
tiers:
  free: {default_model: echo, requests_per_minute: %(rpm)d}
rate_limits: {backend: redis, url: "%(url)s", prefix: "%(prefix)s"}
"""


def redis_limits_config(url: str, prefix: str, rpm: int) -> str:
    """A config of one mock model, `echo`, that tier free may call `rpm` times a minute,
    counted in the Redis at `url` under the key `prefix`."""
    return _REDIS_LIMITS % {"rpm": rpm, "url": url, "prefix": prefix}


@contextlib.contextmanager
def pg_schema_url(dsn: str = PG_DSN) -> Iterator[str]:
    """A `usage.store` URL selecting a fresh schema (created by the store on open)."""
    schema = f"tandem_test_{uuid.uuid4().hex[:12]}"
    separator = "&" if "?" in dsn else "?"
    try:
        yield f"{dsn}{separator}search_path={schema}"
    finally:

        async def drop() -> None:
            connection = await asyncpg.connect(dsn)
            try:
                await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await connection.close()

        asyncio.run(drop())


async def count_records(url: str) -> int:
    """How many usage records the store at `url` holds, read directly."""
    connection = await asyncpg.connect(url)
    try:
        count: int = await connection.fetchval("SELECT count(*) FROM usage_records")
        return count
    finally:
        await connection.close()
