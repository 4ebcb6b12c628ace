"""Which version of the schema a store holds: a replica refuses a store newer than it knows.

Version 1 is every store made before the table existed (the ledger, keys and stored
responses); 2 adds money (costs on records, keys' limits, budgets). Tables and columns
are only ever added, at open, so an older replica still reads a store an upgrade
touched only when the version says it may.
"""

from __future__ import annotations

__all__ = ["SCHEMA_VERSION", "StoreTooNewError", "schema_version_sql", "version_statements"]

SCHEMA_VERSION = 2

schema_version_sql = "CREATE TABLE IF NOT EXISTS tandem_schema (version INTEGER NOT NULL);"


class StoreTooNewError(RuntimeError):
    def __init__(self, found: int) -> None:
        super().__init__(
            f"usage.store: the store's schema is version {found}, newer than this Tandem "
            f"knows ({SCHEMA_VERSION}); upgrade Tandem before serving from it"
        )


def version_statements(found: int | None) -> list[str]:
    """What brings `tandem_schema` to this version, given the version found (None: no row
    yet); raises StoreTooNewError for a newer one. Run inside the open's transaction."""
    if found is None:
        return [f"INSERT INTO tandem_schema (version) VALUES ({SCHEMA_VERSION})"]
    if found > SCHEMA_VERSION:
        raise StoreTooNewError(found)
    if found < SCHEMA_VERSION:
        return [f"UPDATE tandem_schema SET version = {SCHEMA_VERSION}"]
    return []
