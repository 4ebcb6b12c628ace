"""The SQLite store (the default): one file, WAL, every call off the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from server.store.keys import ApiKey

__all__ = ["SqliteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL,
    user TEXT NOT NULL,
    tier TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
"""
_COLUMNS = "id, key_hash, user, tier, created_at, revoked_at"


class SqliteStore:
    def __init__(self, path: str) -> None:
        self._path = Path(path)
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self._path, timeout=5, check_same_thread=False, isolation_level=None
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    async def _run(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            return self._connect().execute(sql, args).fetchall()

        return await asyncio.to_thread(run)

    async def open(self) -> None:
        await asyncio.to_thread(self._connect)

    async def create_key(self, key: ApiKey) -> None:
        await self._run(
            f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            key.id,
            key.key_hash,
            key.user,
            key.tier,
            key.created_at,
            key.revoked_at,
        )

    async def find_key(self, key_id: str) -> ApiKey | None:
        rows = await self._run(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", key_id)
        return ApiKey(*rows[0]) if rows else None

    async def list_keys(self) -> list[ApiKey]:
        rows = await self._run(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id")
        return [ApiKey(*row) for row in rows]

    async def revoke_key(self, key_id: str, at: float) -> bool:
        rows = await self._run(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL RETURNING id",
            at,
            key_id,
        )
        return bool(rows)

    async def aclose(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.close)
