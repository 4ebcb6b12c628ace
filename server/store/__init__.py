"""The database named by `usage.store`: API keys, the usage ledger, stored responses and
shared secrets.

SQLite (`sqlite:////abs.db`; `load_config` makes `sqlite:///rel.db` absolute from
the config file's folder) or PostgreSQL (`postgresql://...`), behind one interface. Both
create their tables at open; ledger writes are idempotent by record id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from server.store.conversations import ConversationStore, StoredItem, StoredResponse
from server.store.keys import ApiKey
from server.store.keys_sql import KeyPage
from server.store.spend_sql import SpendQuery, SpendReport
from server.store.sqlite import SqliteStore
from server.usage.budget import BudgetScope, Reservation, ScopeState, Settlement
from server.usage.record import UsagePage, UsageQuery, UsageRecord

__all__ = ["ApiKey", "ConversationStore", "Store", "StoredItem", "StoredResponse", "open_store"]


class Store(ConversationStore, Protocol):
    async def open(self) -> None: ...

    async def create_key(self, key: ApiKey) -> None: ...

    async def find_key(self, key_id: str) -> ApiKey | None: ...

    async def key_ids_since(self, created_at: float) -> list[str]:
        """The ids (only) of the keys created at or after `created_at` (the epoch's s)."""

    async def revoke_key(self, key_id: str, at: float) -> bool: ...

    async def update_key(self, key_id: str, changes: Mapping[str, Any], at: float) -> ApiKey | None:
        """Set `changes` (columns of `keys_sql.UPDATABLE`, values as `ApiKey` holds them)
        and `updated_at`; the key as it now is, or None if there is no such key."""

    async def list_keys_page(self, page: KeyPage) -> list[ApiKey]:
        """Keys oldest first, after `page.after`: at most `page.limit` + 1 (the one
        more says that a next page exists)."""

    async def spend(self, query: SpendQuery) -> SpendReport:
        """Cost and tokens of the matching records, grouped and summed by the database."""

    async def get_or_create_secret(self, name: str, value: str) -> str:
        """The secret `name` (e.g. the key that seals reasoning), set to `value` first
        if it has none: atomic, so replicas asking at once all get the first one."""

    async def write_usage(
        self, records: Sequence[UsageRecord], settlements: Sequence[Settlement] = ()
    ) -> None:
        """Store a batch in one transaction; a record already stored is skipped. In the
        same transaction, the settlements of the records inserted now (only: a batch
        written twice settles once) free their holds and add their costs to the
        budgets' periods, so a period's spend is what the ledger says."""

    # --- budgets (server/store/budget_sql.py; docs/design/money.md 2.2-2.5) ---

    async def reserve_budget(
        self, hold_id: str, scopes: Sequence[BudgetScope], nanos: int, lease_s: float
    ) -> Reservation:
        """Reserve `nanos` in every scope's period, or in none (one transaction); a hold
        per scope, named `hold_id` (the usage record's id), leased for `lease_s`."""

    async def budget_states(self, scopes: Sequence[BudgetScope]) -> tuple[ScopeState, ...]:
        """Each scope's (spent, reserved) in its period now, in the caller's order,
        reserving nothing and writing nothing: a scope with no row yet reads as the
        ledger's sum its row would start from."""

    async def renew_holds(self, hold_ids: Sequence[str], lease_s: float) -> None:
        """Extend the leases of these holds (not those the sweeper freed) to `lease_s`."""

    async def release_hold(self, hold_id: str, periods: Sequence[tuple[str, int]]) -> None:
        """Free a hold whose call will write no record, in each (scope, period start),
        now; where it is not there yet, a reserve of it that lands later reserves
        nothing."""

    async def release_expired_holds(self) -> int:
        """Free every hold whose lease ran out (its replica died); how many were freed."""

    async def query_usage(self, query: UsageQuery) -> UsagePage: ...

    async def ping(self) -> None:
        """Raise unless the database answers (the background dependency check)."""

    async def aclose(self) -> None: ...


def open_store(url: str) -> Store | None:
    """The store for a `usage.store` URL; None for `none`. Connects on `open()`."""
    if url == "none":
        return None
    if url.startswith("sqlite:///"):
        return SqliteStore(url.removeprefix("sqlite:///"))
    from server.store.postgres import PostgresStore  # asyncpg only when configured

    return PostgresStore(url.replace("postgres://", "postgresql://", 1))
