"""The stores' secrets in process: made once, the first value kept, the same value for
every store on one database (two SQLite connections to one file, two PostgreSQL pools
on one schema, asking at once) and after a reopen."""

from __future__ import annotations

import asyncio
from pathlib import Path

from server.store import Store, open_store
from tests.stores import pg_schema_url


async def both_ask_at_once(url: str) -> None:
    first, second = open_store(url), open_store(url)
    assert first is not None
    assert second is not None
    try:
        await first.open()
        await second.open()
        got = await asyncio.gather(
            *(
                store.get_or_create_secret("k", value)
                for store, value in ((first, "a"), (second, "b"))
            )
        )
        assert got[0] == got[1] in ("a", "b")
        assert await first.get_or_create_secret("k", "c") == got[0]
        assert await first.get_or_create_secret("other", "d") == "d"
    finally:
        await first.aclose()
        await second.aclose()
    reopened: Store | None = open_store(url)
    assert reopened is not None
    try:
        assert await reopened.get_or_create_secret("k", "e") == got[0]
    finally:
        await reopened.aclose()


async def test_sqlite_keeps_the_first_secret(tmp_path: Path) -> None:
    await both_ask_at_once(f"sqlite:///{tmp_path}/store.db")


def test_postgresql_keeps_the_first_secret() -> None:
    with pg_schema_url() as url:
        asyncio.run(both_ask_at_once(url))
