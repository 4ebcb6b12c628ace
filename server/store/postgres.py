"""The PostgreSQL store (asyncpg), for replicas that share keys and usage.

Unknown query parameters of the URL are PostgreSQL settings (asyncpg's
rule), so `?search_path=name` selects a schema; it is created if missing.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import asyncpg

from server.store.keys import ApiKey

__all__ = ["PostgresStore"]

COMMAND_TIMEOUT_S = 5.0  # a stuck database fails the call instead of hanging it

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL,
    "user" TEXT NOT NULL,
    tier TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
);
"""
_COLUMNS = 'id, key_hash, "user", tier, created_at, revoked_at'


class PostgresStore:
    def __init__(self, url: str) -> None:
        self._url = url
        self._schema = parse_qs(urlsplit(url).query).get("search_path", [None])[0]
        # a plain name, checked with the config (server.config: usage.store)
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        if self._schema:
            connection = await asyncpg.connect(self._url)
            try:
                await connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
            finally:
                await connection.close()
        self._pool = await asyncpg.create_pool(
            self._url, min_size=1, max_size=10, command_timeout=COMMAND_TIMEOUT_S
        )
        await self._pool.execute(_SCHEMA)

    async def _ready(self) -> asyncpg.Pool:
        await self.open()
        assert self._pool is not None
        return self._pool

    async def create_key(self, key: ApiKey) -> None:
        pool = await self._ready()
        await pool.execute(
            f"INSERT INTO api_keys ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)",
            key.id,
            key.key_hash,
            key.user,
            key.tier,
            key.created_at,
            key.revoked_at,
        )

    async def find_key(self, key_id: str) -> ApiKey | None:
        pool = await self._ready()
        row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)
        return ApiKey(*row) if row else None

    async def list_keys(self) -> list[ApiKey]:
        pool = await self._ready()
        rows = await pool.fetch(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id")
        return [ApiKey(*row) for row in rows]

    async def revoke_key(self, key_id: str, at: float) -> bool:
        pool = await self._ready()
        row = await pool.fetchrow(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL RETURNING id",
            at,
            key_id,
        )
        return row is not None

    async def aclose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
