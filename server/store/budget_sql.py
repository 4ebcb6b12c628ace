"""Budgets' state in the `usage.store` database, for both stores (design: money.md 2.2-2.5).

`budget_periods` holds, per scope and period, the settled spend (equal to the ledger's sum
by construction) and the open reservations; `budget_holds` one row per reservation and
scope, with a lease. Every change takes its locks in one order, so nothing deadlocks:
the holds of a settlement or a sweep by (id, scope), then each period by (scope, start),
a scope's advisory lock (only where its row is missing) just before its rows.

- Read (`states`): each scope's (spent, reserved), reserving nothing and writing
  nothing: a missing row reads as the ledger's sum its creation would start from (the
  same SQL: `_sqlite_ledger_sum`, PL/pgSQL `tandem_ledger_sum`).
- Reserve: one transaction, all or nothing. A missing period row is made from the
  ledger's sum for the scope's `LedgerFilter` over the period, so spend equals the ledger
  from the first reservation of a period on.
- Settle: in the ledger write's transaction, for the records newly inserted only (a
  batch written twice settles once): each record's hold freed (unless the sweeper freed
  it already), its cost added to each of its periods. A period with no row yet gets
  nothing: the row, made later, sums the ledger, this record included.
- PostgreSQL: a reserve making a row and a settlement finding none would race (the sum
  taken before the batch commits, the batch committed without a row to add to): both
  take the scope's advisory lock on that path, then read again (READ COMMITTED: each
  statement sees what committed before it), so one sees the other's commit. SQLite has
  one writer (`BEGIN IMMEDIATE`): no race.
- Release: a hold whose call will write no record (its caller went away while the
  reserve was in flight, or the reserve timed out and the call was admitted offline) is
  freed at once, not when its lease runs out: marked released (its reservation freed,
  once). Where it is not there (yet), a released row takes its place, so a reserve that
  lands late fails on the hold's key and reserves nothing; a record that still comes
  settles as for a swept hold (spend added, nothing freed).
- Leases: `lease_until` is the database's clock in PostgreSQL (replicas with skewed
  clocks agree) and the host's in SQLite (one host).

The SQLite functions here run inside a `BEGIN IMMEDIATE` the store opens on its thread.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from server.usage.budget import BudgetScope, Reservation, ScopeState, Settlement

__all__ = [
    "PG_FUNCTIONS",
    "PG_RELEASE",
    "PG_RENEW",
    "PG_RESERVE",
    "PG_SETTLE",
    "PG_STATES",
    "PG_SWEEP",
    "RELEASED_KEPT_S",
    "budget_schema",
    "pg_reserve_args",
    "pg_settle_args",
    "pg_states_args",
    "reservation",
    "settled_now",
    "sqlite_release",
    "sqlite_renew",
    "sqlite_reserve",
    "sqlite_settle",
    "sqlite_states",
    "sqlite_sweep",
    "sqlite_unwritten",
]

RELEASED_KEPT_S = 86_400  # a hold the sweeper freed is kept a day: its record may still come
_ADVISORY_CLASS = 0x7464  # "td": pg_advisory_xact_lock(class, hashtext(scope))


def budget_schema(*, time: str, int64: str) -> str:
    """The two tables; `time` is the backend's type for moments (as `created_at`)."""
    return f"""
CREATE TABLE IF NOT EXISTS budget_periods (
    scope TEXT NOT NULL,
    period_start {time} NOT NULL,
    spent_nanos {int64} NOT NULL DEFAULT 0,
    reserved_nanos {int64} NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, period_start)
);
CREATE TABLE IF NOT EXISTS budget_holds (
    id TEXT NOT NULL,
    scope TEXT NOT NULL,
    period_start {time} NOT NULL,
    nanos {int64} NOT NULL,
    lease_until {time} NOT NULL,
    released BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (id, scope)
);
CREATE INDEX IF NOT EXISTS budget_holds_by_lease ON budget_holds (lease_until) WHERE NOT released;
"""


def reservation(
    scopes: Sequence[BudgetScope], found: dict[str, tuple[int, int]], admitted: bool
) -> Reservation:
    """The answer, in the caller's order, from each scope's (spent, reserved) by name."""
    return Reservation(admitted, tuple(ScopeState(scope, *found[scope.name]) for scope in scopes))


def settled_now(settlements: Iterable[Settlement], inserted: Iterable[str]) -> list[Settlement]:
    """The settlements of the records just inserted, once each."""
    ids = set(inserted)
    chosen: dict[str, Settlement] = {}
    for settlement in settlements:
        if settlement.record_id in ids:
            chosen.setdefault(settlement.record_id, settlement)
    return list(chosen.values())


def _deltas(
    settlements: Sequence[Settlement], holds: Iterable[tuple[str, int, int, Any]]
) -> list[tuple[str, int, int, int]]:
    """(scope, start, spend to add, reserved to free), sorted: the lock order."""
    spend: dict[tuple[str, int], int] = defaultdict(int)
    freed: dict[tuple[str, int], int] = defaultdict(int)
    for settlement in settlements:
        for scope, start in settlement.periods:
            spend[scope, start] += settlement.cost_nanos
    for scope, start, nanos, released in holds:
        if not released:
            freed[scope, start] += nanos
    return [
        (scope, start, spend.get((scope, start), 0), freed.get((scope, start), 0))
        for scope, start in sorted(spend.keys() | freed.keys())
    ]


# --- SQLite -----------------------------------------------------------------------------

_SQLITE_IDS_PER_QUERY = 500


def _sqlite_ledger_sum(db: sqlite3.Connection, scope: BudgetScope) -> int:
    conditions = ["created_at >= ?"]
    args: list[Any] = [scope.start_us]
    if scope.end_us is not None:
        conditions.append("created_at < ?")
        args.append(scope.end_us)
    ledger = scope.ledger
    for column, value in (
        ("key_id", ledger.key_id),
        ("tier", ledger.tier),
        ('"user"', ledger.user),
        ("caller_kind", ledger.caller_kind),
    ):
        if value is not None:
            conditions.append(f"{column} = ?")
            args.append(value)
    if ledger.caller_kind is not None:  # a caller without a key: not its user's keys' records
        conditions.append("key_id IS NULL")
    sql = f"SELECT COALESCE(SUM(cost_nanos), 0) FROM usage_records WHERE {' AND '.join(conditions)}"
    return int(db.execute(sql, args).fetchone()[0])


def sqlite_reserve(
    db: sqlite3.Connection,
    hold_id: str,
    scopes: Sequence[BudgetScope],
    nanos: int,
    lease_until_us: int,
) -> Reservation:
    found: dict[str, tuple[int, int]] = {}
    for scope in sorted(scopes, key=lambda s: s.name):
        row = db.execute(
            "SELECT spent_nanos, reserved_nanos FROM budget_periods "
            "WHERE scope = ? AND period_start = ?",
            (scope.name, scope.start_us),
        ).fetchone()
        if row is None:  # a new period: it starts from what the ledger says was spent in it
            row = (_sqlite_ledger_sum(db, scope), 0)
            db.execute(
                "INSERT INTO budget_periods (scope, period_start, spent_nanos) VALUES (?, ?, ?)",
                (scope.name, scope.start_us, row[0]),
            )
        found[scope.name] = (int(row[0]), int(row[1]))
    admitted = all(sum(found[scope.name]) + nanos <= scope.limit_nanos for scope in scopes)
    if admitted:
        db.executemany(
            "UPDATE budget_periods SET reserved_nanos = reserved_nanos + ? "
            "WHERE scope = ? AND period_start = ?",
            [(nanos, scope.name, scope.start_us) for scope in scopes],
        )
        db.executemany(
            "INSERT INTO budget_holds (id, scope, period_start, nanos, lease_until) "
            "VALUES (?, ?, ?, ?, ?)",
            [(hold_id, scope.name, scope.start_us, nanos, lease_until_us) for scope in scopes],
        )
        found = {name: (spent, reserved + nanos) for name, (spent, reserved) in found.items()}
    return reservation(scopes, found, admitted)


def sqlite_states(
    db: sqlite3.Connection, scopes: Sequence[BudgetScope]
) -> dict[str, tuple[int, int]]:
    """Each scope's (spent, reserved) by name, reserving nothing: a scope with no row yet
    reads as the ledger's sum, as its row would start, and no row is made."""
    found: dict[str, tuple[int, int]] = {}
    for scope in scopes:
        row = db.execute(
            "SELECT spent_nanos, reserved_nanos FROM budget_periods "
            "WHERE scope = ? AND period_start = ?",
            (scope.name, scope.start_us),
        ).fetchone()
        found[scope.name] = (
            (int(row[0]), int(row[1])) if row is not None else (_sqlite_ledger_sum(db, scope), 0)
        )
    return found


def sqlite_unwritten(db: sqlite3.Connection, ids: Sequence[str]) -> set[str]:
    """Of `ids`, those the ledger does not hold yet (in the write's transaction)."""
    present: set[str] = set()
    for i in range(0, len(ids), _SQLITE_IDS_PER_QUERY):
        chunk = ids[i : i + _SQLITE_IDS_PER_QUERY]
        rows = db.execute(
            f"SELECT id FROM usage_records WHERE id IN ({', '.join('?' * len(chunk))})", chunk
        )
        present.update(row[0] for row in rows)
    return set(ids) - present


def sqlite_settle(db: sqlite3.Connection, settlements: Sequence[Settlement]) -> None:
    holds: list[tuple[str, int, int, Any]] = []
    for settlement in sorted(settlements, key=lambda s: s.record_id):
        holds += db.execute(
            "DELETE FROM budget_holds WHERE id = ? RETURNING scope, period_start, nanos, released",
            (settlement.record_id,),
        ).fetchall()
    db.executemany(
        "UPDATE budget_periods SET spent_nanos = spent_nanos + ?, "
        "reserved_nanos = reserved_nanos - ? WHERE scope = ? AND period_start = ?",
        [(spend, free, scope, start) for scope, start, spend, free in _deltas(settlements, holds)],
    )


def sqlite_renew(db: sqlite3.Connection, hold_ids: Sequence[str], lease_until_us: int) -> None:
    for i in range(0, len(hold_ids), _SQLITE_IDS_PER_QUERY):
        chunk = hold_ids[i : i + _SQLITE_IDS_PER_QUERY]
        db.execute(
            "UPDATE budget_holds SET lease_until = ? "
            f"WHERE id IN ({', '.join('?' * len(chunk))}) AND NOT released",
            (lease_until_us, *chunk),
        )


def sqlite_release(
    db: sqlite3.Connection, hold_id: str, periods: Sequence[tuple[str, int]], now_us: int
) -> None:
    """Free a hold whose call will write no record (see the module's docstring)."""
    freed: list[tuple[str, int, int, Any]] = []
    for scope, start in sorted(periods):
        row = db.execute(
            "SELECT period_start, nanos, released FROM budget_holds WHERE id = ? AND scope = ?",
            (hold_id, scope),
        ).fetchone()
        if row is None:  # not there (yet): a late reserve of it will fail on its key
            db.execute(
                "INSERT INTO budget_holds (id, scope, period_start, nanos, lease_until, released) "
                "VALUES (?, ?, ?, 0, ?, true)",
                (hold_id, scope, start, now_us),
            )
        elif not row[2]:
            db.execute(
                "UPDATE budget_holds SET released = true WHERE id = ? AND scope = ?",
                (hold_id, scope),
            )
            freed.append((scope, row[0], row[1], False))
    db.executemany(
        "UPDATE budget_periods SET reserved_nanos = reserved_nanos - ? "
        "WHERE scope = ? AND period_start = ?",
        [(free, scope, start) for scope, start, _, free in _deltas((), freed)],
    )


def sqlite_sweep(db: sqlite3.Connection, now_us: int) -> int:
    gone = db.execute(
        "UPDATE budget_holds SET released = true WHERE NOT released AND lease_until < ? "
        "RETURNING scope, period_start, nanos, released",
        (now_us,),
    ).fetchall()
    freed = [(scope, start, nanos, False) for scope, start, nanos, _ in gone]
    db.executemany(
        "UPDATE budget_periods SET reserved_nanos = reserved_nanos - ? "
        "WHERE scope = ? AND period_start = ?",
        [(free, scope, start) for scope, start, _, free in _deltas((), freed)],
    )
    db.execute(
        "DELETE FROM budget_holds WHERE released AND lease_until < ?",
        (now_us - RELEASED_KEPT_S * 1_000_000,),
    )
    return len(gone)


# --- PostgreSQL ---------------------------------------------------------------------------

# One round trip: missing rows made (from the ledger), every row locked in scope order,
# then all updated and the holds inserted, or nothing. `scopes` come sorted by name.
PG_FUNCTIONS = f"""
-- what the ledger says a scope spent in a period: a new period row's start, and a read
-- of a scope that has no row yet
CREATE OR REPLACE FUNCTION tandem_ledger_sum(
    p_start TIMESTAMPTZ, p_end TIMESTAMPTZ, p_key TEXT, p_tier TEXT, p_user TEXT, p_kind TEXT
) RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    q TEXT := 'SELECT coalesce(sum(cost_nanos), 0) FROM usage_records WHERE created_at >= $1';
    s BIGINT;
BEGIN
    IF p_end IS NOT NULL THEN q := q || ' AND created_at < $2'; END IF;
    IF p_key IS NOT NULL THEN q := q || ' AND key_id = $3'; END IF;
    IF p_tier IS NOT NULL THEN q := q || ' AND tier = $4'; END IF;
    IF p_user IS NOT NULL THEN q := q || ' AND "user" = $5'; END IF;
    IF p_kind IS NOT NULL THEN  -- a caller without a key: not its user's keys'
        q := q || ' AND caller_kind = $6 AND key_id IS NULL';
    END IF;
    EXECUTE q INTO s USING p_start, p_end, p_key, p_tier, p_user, p_kind;
    RETURN s;
END $$;

-- each scope's (spent, reserved) in its period, reserving nothing and making no row
CREATE OR REPLACE FUNCTION tandem_budget_states(
    scopes TEXT[], starts TIMESTAMPTZ[], ends TIMESTAMPTZ[], key_ids TEXT[], tiers TEXT[],
    users TEXT[], kinds TEXT[]
) RETURNS TABLE (r_scope TEXT, r_spent BIGINT, r_reserved BIGINT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    s BIGINT;
    r BIGINT;
BEGIN
    FOR i IN 1..coalesce(array_length(scopes, 1), 0) LOOP
        SELECT b.spent_nanos, b.reserved_nanos INTO s, r FROM budget_periods b
            WHERE b.scope = scopes[i] AND b.period_start = starts[i];
        IF NOT FOUND THEN
            s := tandem_ledger_sum(starts[i], ends[i], key_ids[i], tiers[i], users[i], kinds[i]);
            r := 0;
        END IF;
        r_scope := scopes[i];
        r_spent := s;
        r_reserved := r;
        RETURN NEXT;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION tandem_reserve(
    hold TEXT, scopes TEXT[], starts TIMESTAMPTZ[], ends TIMESTAMPTZ[], limits BIGINT[],
    key_ids TEXT[], tiers TEXT[], users TEXT[], kinds TEXT[], x BIGINT, lease_s FLOAT8
) RETURNS TABLE (r_scope TEXT, r_spent BIGINT, r_reserved BIGINT, r_admitted BOOLEAN)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n INT := coalesce(array_length(scopes, 1), 0);
    spent BIGINT[] := '{{}}';
    reserved BIGINT[] := '{{}}';
    fits BOOLEAN := true;
    s BIGINT;
    r BIGINT;
BEGIN
    FOR i IN 1..n LOOP
        SELECT b.spent_nanos, b.reserved_nanos INTO s, r FROM budget_periods b
            WHERE b.scope = scopes[i] AND b.period_start = starts[i] FOR UPDATE;
        IF NOT FOUND THEN
            PERFORM pg_advisory_xact_lock({_ADVISORY_CLASS}, hashtext(scopes[i]));
            s := tandem_ledger_sum(starts[i], ends[i], key_ids[i], tiers[i], users[i], kinds[i]);
            INSERT INTO budget_periods (scope, period_start, spent_nanos)
                VALUES (scopes[i], starts[i], s) ON CONFLICT DO NOTHING;
            SELECT b.spent_nanos, b.reserved_nanos INTO s, r FROM budget_periods b
                WHERE b.scope = scopes[i] AND b.period_start = starts[i] FOR UPDATE;
        END IF;
        spent := spent || s;
        reserved := reserved || r;
        IF s + r + x > limits[i] THEN fits := false; END IF;
    END LOOP;
    IF fits THEN
        FOR i IN 1..n LOOP
            UPDATE budget_periods b SET reserved_nanos = b.reserved_nanos + x
                WHERE b.scope = scopes[i] AND b.period_start = starts[i];
            INSERT INTO budget_holds (id, scope, period_start, nanos, lease_until)
                VALUES (hold, scopes[i], starts[i], x, now() + lease_s * interval '1 second');
            reserved[i] := reserved[i] + x;
        END LOOP;
    END IF;
    FOR i IN 1..n LOOP
        r_scope := scopes[i];
        r_spent := spent[i];
        r_reserved := reserved[i];
        r_admitted := fits;
        RETURN NEXT;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION tandem_settle(
    ids TEXT[], scopes TEXT[], starts TIMESTAMPTZ[], costs BIGINT[]
) RETURNS VOID LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    h_scopes TEXT[];
    h_starts TIMESTAMPTZ[];
    h_free BIGINT[];
    d RECORD;
BEGIN
    -- `ids`: the records just inserted, whose holds go; (scopes, starts, costs): their spend
    WITH locked AS (
        SELECT h.id, h.scope FROM budget_holds h WHERE h.id = ANY(ids)
        ORDER BY h.id COLLATE "C", h.scope COLLATE "C" FOR UPDATE
    ), gone AS (
        DELETE FROM budget_holds h USING locked l WHERE h.id = l.id AND h.scope = l.scope
        RETURNING h.scope, h.period_start, CASE WHEN h.released THEN 0 ELSE h.nanos END AS free
    )
    SELECT coalesce(array_agg(gone.scope), '{{}}'), coalesce(array_agg(gone.period_start), '{{}}'),
           coalesce(array_agg(gone.free), '{{}}')
        INTO h_scopes, h_starts, h_free FROM gone;
    FOR d IN
        SELECT t.scope, t.start, sum(t.spend)::BIGINT AS spend, sum(t.free)::BIGINT AS free
        FROM (
            SELECT c.scope, c.start, c.cost AS spend, 0::BIGINT AS free
                FROM unnest(scopes, starts, costs) AS c(scope, start, cost)
            UNION ALL
            SELECT f.scope, f.start, 0::BIGINT, f.free
                FROM unnest(h_scopes, h_starts, h_free) AS f(scope, start, free)
        ) t GROUP BY 1, 2 ORDER BY t.scope COLLATE "C", t.start
    LOOP
        UPDATE budget_periods b SET spent_nanos = b.spent_nanos + d.spend,
            reserved_nanos = b.reserved_nanos - d.free
            WHERE b.scope = d.scope AND b.period_start = d.start;
        IF NOT FOUND THEN  -- a reserve may be making the row: wait for it, or it for us
            PERFORM pg_advisory_xact_lock({_ADVISORY_CLASS}, hashtext(d.scope));
            UPDATE budget_periods b SET spent_nanos = b.spent_nanos + d.spend,
                reserved_nanos = b.reserved_nanos - d.free
                WHERE b.scope = d.scope AND b.period_start = d.start;
        END IF;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION tandem_release(
    hold TEXT, scopes TEXT[], starts TIMESTAMPTZ[]
) RETURNS VOID LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    f_scopes TEXT[] := '{{}}';
    f_starts TIMESTAMPTZ[] := '{{}}';
    f_nanos BIGINT[] := '{{}}';
    st TIMESTAMPTZ;
    x BIGINT;
BEGIN
    -- `scopes` come sorted: the holds' rows first, then their periods (the lock order)
    FOR i IN 1..coalesce(array_length(scopes, 1), 0) LOOP
        -- not there (yet): a released row in its place, so a late reserve of it fails
        INSERT INTO budget_holds (id, scope, period_start, nanos, lease_until, released)
            VALUES (hold, scopes[i], starts[i], 0, now(), true) ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            UPDATE budget_holds h SET released = true
                WHERE h.id = hold AND h.scope = scopes[i] AND NOT h.released
                RETURNING h.period_start, h.nanos INTO st, x;
            IF FOUND THEN
                f_scopes := f_scopes || scopes[i];
                f_starts := f_starts || st;
                f_nanos := f_nanos || x;
            END IF;
        END IF;
    END LOOP;
    FOR i IN 1..coalesce(array_length(f_scopes, 1), 0) LOOP
        UPDATE budget_periods b SET reserved_nanos = b.reserved_nanos - f_nanos[i]
            WHERE b.scope = f_scopes[i] AND b.period_start = f_starts[i];
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION tandem_sweep() RETURNS INT LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    g RECORD;
    n INT := 0;
BEGIN
    FOR g IN
        WITH expired AS (
            SELECT h.id, h.scope FROM budget_holds h
            WHERE NOT h.released AND h.lease_until < now()
            ORDER BY h.id COLLATE "C", h.scope COLLATE "C" FOR UPDATE
        ), gone AS (
            UPDATE budget_holds h SET released = true FROM expired e
            WHERE h.id = e.id AND h.scope = e.scope AND NOT h.released
            RETURNING h.scope, h.period_start, h.nanos
        )
        SELECT gone.scope, gone.period_start, sum(gone.nanos)::BIGINT AS nanos, count(*) AS holds
        FROM gone GROUP BY 1, 2 ORDER BY gone.scope COLLATE "C", gone.period_start
    LOOP
        UPDATE budget_periods b SET reserved_nanos = b.reserved_nanos - g.nanos
            WHERE b.scope = g.scope AND b.period_start = g.period_start;
        n := n + g.holds;
    END LOOP;
    DELETE FROM budget_holds h
        WHERE h.released AND h.lease_until < now() - interval '{RELEASED_KEPT_S} seconds';
    RETURN n;
END $$;
"""

PG_RESERVE = "SELECT * FROM tandem_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"

# The settlements of the records just inserted: their ids, and each (scope, start, cost).
PG_SETTLE = "SELECT tandem_settle($1, $2, $3, $4)"

# Each scope's (spent, reserved) now, reserving nothing (a read: no row made).
PG_STATES = "SELECT * FROM tandem_budget_states($1, $2, $3, $4, $5, $6, $7)"

PG_RENEW = """
WITH locked AS (
    SELECT id, scope FROM budget_holds WHERE id = ANY($1::text[]) AND NOT released
    ORDER BY id COLLATE "C", scope COLLATE "C" FOR UPDATE
)
UPDATE budget_holds h SET lease_until = now() + $2 * interval '1 second'
FROM locked l WHERE h.id = l.id AND h.scope = l.scope
"""

PG_SWEEP = "SELECT tandem_sweep()"

# A hold whose call will write no record: its id, its (scope, start)s sorted by scope.
PG_RELEASE = "SELECT tandem_release($1, $2, $3)"


def pg_reserve_args(
    hold_id: str, scopes: Sequence[BudgetScope], nanos: int, lease_s: float, moment: Any
) -> tuple[Any, ...]:
    """`tandem_reserve`'s arguments, scopes sorted by name; `moment` turns epoch µs into
    a timestamptz."""
    return (hold_id, *_pg_scope_args(scopes, moment, with_limits=True), nanos, float(lease_s))


def pg_states_args(scopes: Sequence[BudgetScope], moment: Any) -> tuple[Any, ...]:
    """`tandem_budget_states`' arguments; `moment` turns epoch µs into a timestamptz."""
    return _pg_scope_args(scopes, moment, with_limits=False)


def _pg_scope_args(
    scopes: Sequence[BudgetScope], moment: Any, *, with_limits: bool
) -> tuple[Any, ...]:
    ordered = sorted(scopes, key=lambda s: s.name)
    limits = ([s.limit_nanos for s in ordered],) if with_limits else ()
    return (
        [s.name for s in ordered],
        [moment(s.start_us) for s in ordered],
        [None if s.end_us is None else moment(s.end_us) for s in ordered],
        *limits,
        [s.ledger.key_id for s in ordered],
        [s.ledger.tier for s in ordered],
        [s.ledger.user for s in ordered],
        [s.ledger.caller_kind for s in ordered],
    )


def pg_settle_args(settlements: Sequence[Settlement], moment: Any) -> tuple[Any, ...]:
    """`tandem_settle`'s arguments; `moment` turns epoch µs into a timestamptz."""
    periods = [(s.cost_nanos, *period) for s in settlements for period in s.periods]
    return (
        [s.record_id for s in settlements],
        [scope for _, scope, _ in periods],
        [moment(start) for _, _, start in periods],
        [cost for cost, _, _ in periods],
    )
