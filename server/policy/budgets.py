"""Budget reservations that hold across replicas: the store is the truth, this
replica's last view of it the fallback (docs/design/money.md 2.3-2.6).

`reserve` is one store call (all or nothing over the call's scopes). A slow store is
not a down one: under load, reserves queue for a pooled connection and for the scope's
row lock (every replica's reserves of one scope take it in turn), well past a quarter
second on a busy host, and a replica that then admitted offline overshot the budget
(the contract: N replicas "admit exactly what fits"; the offline fallback is for
"while the store is down"). So a reserve waits up to `timeout_s` (5 s, the store's own
command timeout): a refused or broken connection still fails at once, only a store
that hangs costs the wait, and while it is down one reserve at a time (a probe, every
`retry_after_s`) asks it again, the others admitting offline. An admitted hold is
kept alive by a lease this replica renews every `renew_every_s` until `release` (its
record is queued: the ledger write settles it), so a dead replica's holds run out;
every replica sweeps expired ones every `sweep_every_s` (freed within lease + sweep).
A hold whose call will write no record is freed at once (`cancel`, and a reserve whose
caller went away while it was in flight), not when its lease runs out.

While the store does not answer (a timeout or any error, then not asked again for
`retry_after_s` but by the probe), a scope is checked against the last state this
replica read of it (`spent + reserved`), less the reservations it made offline: N replicas then
overshoot by at most that remainder x (N - 1). A period that began since starts clean
(0 spent). A scope this replica never read cannot be checked: `UnavailableError`
(503). Offline holds live in this replica only; their records settle when the store
is back (adding spend, no hold to free). Until those records are written, the store
cannot know of them, so this replica still counts them, asking the store with its
limits less them: one replica alone never overshoots. A reserve that timed out may
still reach the store: its hold is freed there at once (its call counts offline, once).
One warning says when
the store stops answering, one when it is back.

`states` reads for the x-budget-* headers of an answer that reserves nothing: from
memory when seen within a second, else from the store (no row made), else the last
state seen; never a 503 (a scope never seen: no headers).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol

from server.errors import UnavailableError
from server.usage.budget import BudgetScope, Reservation, ScopeState

__all__ = ["BudgetStore", "Budgets"]

logger = logging.getLogger("tandem.budgets")

# a slow store is waited for, a hung one given up on: the store's command timeout
# (server/store/postgres.py COMMAND_TIMEOUT_S; SQLite's busy timeout is as long)
TIMEOUT_S = 5.0
RETRY_AFTER_S = 1.0  # once it failed, the store is not asked again for this long
HOLD_LEASE_S = 30.0
RENEW_EVERY_S = 10.0  # a lease outlives two missed renewals
SWEEP_EVERY_S = 10.0  # a dead replica's holds are freed within 30 + 10 s (contract: 60)
# a read for the headers (`states`): state seen this recently is answered without a trip;
# the store is waited for this long at most (a listing is not held up by a slow store)
FRESH_S = 1.0
READ_TIMEOUT_S = 1.0


class BudgetStore(Protocol):
    async def budget_states(self, scopes: Sequence[BudgetScope]) -> tuple[ScopeState, ...]: ...

    async def reserve_budget(
        self, hold_id: str, scopes: Sequence[BudgetScope], nanos: int, lease_s: float
    ) -> Reservation: ...

    async def renew_holds(self, hold_ids: Sequence[str], lease_s: float) -> None: ...

    async def release_expired_holds(self) -> int: ...

    async def release_hold(self, hold_id: str, periods: Sequence[tuple[str, int]]) -> None: ...


class _Seen(NamedTuple):
    """A scope's period as this replica last read it from the store, and when (the
    clock's time)."""

    start_us: int
    spent_nanos: int
    reserved_nanos: int
    at: float = -math.inf


_Period = tuple[str, int]  # (scope name, period start)


class Budgets:
    def __init__(
        self,
        store: BudgetStore,
        *,
        flushed: Callable[[], Awaitable[None]] | None = None,
        timeout_s: float = TIMEOUT_S,
        retry_after_s: float = RETRY_AFTER_S,
        lease_s: float = HOLD_LEASE_S,
        renew_every_s: float = RENEW_EVERY_S,
        sweep_every_s: float = SWEEP_EVERY_S,
        fresh_s: float = FRESH_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`flushed`: the usage recorder's (`UsageRecorder.flushed`), so reservations made
        offline count here until their records are written, even once the store is
        back; without it they are forgotten as soon as their records are queued."""
        self._store = store
        self._flushed = flushed
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s
        self._lease_s = lease_s
        self._renew_every_s = renew_every_s
        self._sweep_every_s = sweep_every_s
        self._fresh_s = fresh_s
        self._read_timeout_s = read_timeout_s
        self._clock = clock
        self._seen: dict[str, _Seen] = {}  # by scope name
        self._held: set[str] = set()  # this replica's holds in the store, renewed
        # reserved offline, records not yet written: what the store cannot know of yet
        self._offline: dict[str, tuple[tuple[_Period, ...], int]] = {}  # hold id -> periods, nanos
        self._unwritten: dict[_Period, int] = {}
        self._queued: list[str] = []  # offline holds whose records are queued
        self._forgetting: asyncio.Task[None] | None = None
        self._down_until = 0.0  # while the store failed: when to ask it again
        self._down = False
        self._probing = False  # while down: a reserve is asking the store again
        self._freeing: set[asyncio.Task[None]] = set()  # holds freed early, in the store
        self._reading: dict[tuple[_Period, ...], asyncio.Task[None]] = {}  # reads in flight
        self._tasks: list[asyncio.Task[None]] = []

    async def reserve(self, hold_id: str, scopes: Sequence[BudgetScope], nanos: int) -> Reservation:
        """Reserve `nanos` in every scope, or in none; the states found, for the headers.
        Raises UnavailableError while the store is down for a scope never read here."""
        if not scopes:
            return Reservation(True, ())
        if not self._down:
            return await self._reserve_in_store(hold_id, scopes, nanos)
        if self._probing or self._clock() < self._down_until:
            return self._reserve_offline(hold_id, scopes, nanos)
        self._probing = True  # one call at a time finds out whether it is back
        try:
            return await self._reserve_in_store(hold_id, scopes, nanos)
        finally:
            self._probing = False

    async def _reserve_in_store(
        self, hold_id: str, scopes: Sequence[BudgetScope], nanos: int
    ) -> Reservation:
        """The store's answer; this replica's last view of it if the store fails."""
        unwritten = [self._unwritten.get((s.name, s.start_us), 0) for s in scopes]
        asked = [  # this replica's offline reservations, unknown to the store, still count
            s._replace(limit_nanos=s.limit_nanos - n) if n else s
            for s, n in zip(scopes, unwritten, strict=True)
        ]
        try:
            async with asyncio.timeout(self._timeout_s):
                found = await self._store.reserve_budget(hold_id, asked, nanos, self._lease_s)
        except asyncio.CancelledError:  # the caller went away: the store may have its hold
            self._free_in_store(hold_id, scopes)
            raise
        except Exception as exc:  # any store failure: the fallback
            self._free_in_store(hold_id, scopes)  # a timed-out reserve may land: counted once
            self._store_down("reserving", exc)
        else:
            self._store_up()
            self._saw(found.states)
            if found.admitted:
                self._held.add(hold_id)
            states = (
                ScopeState(scope, state.spent_nanos, state.reserved_nanos + n)
                for scope, state, n in zip(scopes, found.states, unwritten, strict=True)
            )
            return Reservation(found.admitted, tuple(states))
        return self._reserve_offline(hold_id, scopes, nanos)

    def _saw(self, states: Sequence[ScopeState]) -> None:
        at = self._clock()
        for state in states:
            self._seen[state.scope.name] = _Seen(
                state.scope.start_us, state.spent_nanos, state.reserved_nanos, at
            )

    def _known(
        self, scopes: Sequence[BudgetScope], seen_since: float = -math.inf
    ) -> list[tuple[int, int]] | None:
        """(spent, reserved) per scope as this replica knows them, its offline
        reservations included; None if a scope was not seen (since `seen_since`). A
        period begun since it was seen starts clean, unless only a recent view will do."""
        used: list[tuple[int, int]] = []
        for scope in scopes:
            last = self._seen.get(scope.name)
            if last is None or last.at < seen_since:
                return None
            if last.start_us != scope.start_us:  # a period begun since: it starts clean
                if seen_since > -math.inf:  # (another replica may have spent in it already)
                    return None
                last = _Seen(scope.start_us, 0, 0)
            unwritten = self._unwritten.get((scope.name, scope.start_us), 0)
            used.append((last.spent_nanos, last.reserved_nanos + unwritten))
        return used

    async def states(self, scopes: Sequence[BudgetScope]) -> tuple[ScopeState, ...] | None:
        """Each scope's state now, for the headers of an answer that reserves nothing
        (a listing, an error before admission); None when it cannot be known.

        A read takes nothing and decides nothing, so it is cheap and never fails the
        call: state seen within `fresh_s` (by a reserve or a read) is answered from
        memory; else the store is asked, for `read_timeout_s` at most; a store that is
        down (or slow) gives the last state seen here, and a scope never seen gives
        None (no headers), never a 503. While down, reads do not ask the store (the
        reserves' probe and the background tasks find out when it is back)."""
        if not scopes:
            return None
        used = self._known(scopes, self._clock() - self._fresh_s)
        if used is None:
            if not self._down:
                await self._read(scopes)
            used = self._known(scopes)  # as just read, else as last seen
            if used is None:
                return None
        return tuple(
            ScopeState(scope, spent, reserved)
            for scope, (spent, reserved) in zip(scopes, used, strict=True)
        )

    async def _read(self, scopes: Sequence[BudgetScope]) -> None:
        """Read the scopes from the store into `_seen`: one read at a time per set of
        scopes, shared by the calls that want it meanwhile (a burst of listings is one
        trip), and left running if the call that started it goes away."""
        key = tuple((scope.name, scope.start_us) for scope in scopes)
        task = self._reading.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._read_store(scopes), name="budget-read"
            )
            self._reading[key] = task
            task.add_done_callback(lambda _: self._reading.pop(key, None))
        await asyncio.shield(task)

    async def _read_store(self, scopes: Sequence[BudgetScope]) -> None:
        try:
            async with asyncio.timeout(self._read_timeout_s):
                found = await self._store.budget_states(scopes)
        except TimeoutError:  # slow is not down (reserves wait longer): as last seen
            return
        except Exception as exc:  # any store failure: down, as for a reserve
            self._store_down("reading", exc)
            return
        self._saw(found)

    def _reserve_offline(
        self, hold_id: str, scopes: Sequence[BudgetScope], nanos: int
    ) -> Reservation:
        used = self._known(scopes)  # (spent, reserved) per scope, as far as known here
        if used is None:
            raise UnavailableError(
                "the budget store is unavailable; retry shortly",
                code="budget_store_unavailable",
            )
        admitted = all(
            spent + reserved + nanos <= scope.limit_nanos
            for scope, (spent, reserved) in zip(scopes, used, strict=True)
        )
        if admitted:
            periods = tuple((scope.name, scope.start_us) for scope in scopes)
            self._offline[hold_id] = (periods, nanos)
            for period in periods:
                self._unwritten[period] = self._unwritten.get(period, 0) + nanos
        return Reservation(
            admitted,
            tuple(
                ScopeState(scope, spent, reserved + nanos * admitted)
                for scope, (spent, reserved) in zip(scopes, used, strict=True)
            ),
        )

    def release(self, hold_id: str) -> None:
        """Its record is queued (its ledger write settles it): stop renewing the hold; an
        offline one counts until the record is written."""
        self._held.discard(hold_id)
        if hold_id not in self._offline:
            return
        if self._flushed is None:
            self._forget(hold_id)
            return
        self._queued.append(hold_id)
        if self._forgetting is None or self._forgetting.done():
            self._forgetting = asyncio.get_running_loop().create_task(
                self._forget_written(self._flushed), name="budget-offline"
            )

    async def _forget_written(self, flushed: Callable[[], Awaitable[None]]) -> None:
        while self._queued:
            queued, self._queued = self._queued, []
            await flushed()  # their records, queued before, are written
            for hold_id in queued:
                self._forget(hold_id)

    def cancel(self, hold_id: str, periods: Sequence[tuple[str, int]]) -> None:
        """Its call will write no record (it failed before its record was made): free
        its reservation now, not when its lease runs out."""
        self._held.discard(hold_id)
        if hold_id in self._offline:  # in this replica only (the store's, if any, is freed)
            self._forget(hold_id)
            return
        self._free(hold_id, periods)

    def _free_in_store(self, hold_id: str, scopes: Sequence[BudgetScope]) -> None:
        self._free(hold_id, tuple((scope.name, scope.start_us) for scope in scopes))

    def _free(self, hold_id: str, periods: Sequence[tuple[str, int]]) -> None:
        """Free the hold in the store, in the background (no timeout: a SQLite call
        cancelled before it ran would never run); if that fails, its lease runs out."""
        task = asyncio.get_running_loop().create_task(
            self._release_hold(hold_id, periods), name="budget-free"
        )
        self._freeing.add(task)
        task.add_done_callback(self._freeing.discard)

    async def _release_hold(self, hold_id: str, periods: Sequence[tuple[str, int]]) -> None:
        try:
            await self._store.release_hold(hold_id, periods)
        except Exception as exc:  # the store failing: its lease runs out instead
            logger.debug("budgets: freeing hold %s failed (%s)", hold_id, type(exc).__name__)

    def _forget(self, hold_id: str) -> None:
        periods, nanos = self._offline.pop(hold_id)
        for period in periods:
            left = self._unwritten[period] - nanos
            if left:
                self._unwritten[period] = left
            else:
                del self._unwritten[period]

    def start(self) -> None:
        """Renew this replica's leases and sweep everyone's expired holds, in the background."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(
                self._every(self._renew_every_s, self._renew, "renewing holds"),
                name="budget-renew",
            ),
            loop.create_task(
                self._every(self._sweep_every_s, self._sweep, "sweeping holds"),
                name="budget-sweep",
            ),
        ]

    async def aclose(self) -> None:
        if self._freeing:  # holds being freed: a moment to finish, else their leases run out
            await asyncio.wait(list(self._freeing), timeout=1.0)
        tasks, self._tasks = [*self._tasks, *self._reading.values()], [*self._freeing]
        if self._forgetting is not None:
            tasks.append(self._forgetting)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _every(
        self, interval_s: float, work: Callable[[], Awaitable[bool]], action: str
    ) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                asked = await work()
            except Exception as exc:  # the store failing: said once, tried again next time
                self._store_down(action, exc)
            else:
                if asked:
                    self._store_up()

    async def _renew(self) -> bool:
        if not self._held:
            return False
        await self._store.renew_holds(list(self._held), self._lease_s)
        return True

    async def _sweep(self) -> bool:
        freed = await self._store.release_expired_holds()
        if freed:
            logger.info("budgets: freed %d holds whose lease ran out (a replica died?)", freed)
        return True

    def _store_down(self, action: str, exc: Exception) -> None:
        self._down_until = self._clock() + self._retry_after_s
        if not self._down:
            self._down = True
            logger.warning(
                "budgets: the usage store failed while %s (%s); admitting against the last "
                "spend seen here, scopes never seen refused with 503, until it answers",
                action,
                type(exc).__name__,
            )

    def _store_up(self) -> None:
        if self._down:
            self._down = False
            logger.warning("budgets: the usage store answers again; budgets are shared once more")
