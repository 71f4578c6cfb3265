"""Putting learned elements into a run table: remembered, deduplicated, batched.

The DNS filter learns addresses on every answer. Forking ``ip netns exec …
nft`` per answer would let a guest buy a process per query, so
:class:`ElementInstaller` keeps an in-memory map of what it installed (and
until when it lasts) and skips elements that are present with at least half
their lifetime left, and it batches: while one ``nft -f -`` runs, every
further request joins the next batch, so a burst of answers costs one
process per round, not one per answer. Each caller still waits until its
elements are installed (the DNS reply must not overtake its firewall
elements).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable

from cleanroom.network.egress import Element
from cleanroom.network.ruleset import add_elements, add_permanent_elements

__all__ = ["Apply", "ElementInstaller"]

Apply = Callable[[str], Awaitable[object]]
"""``apply(script)``: run one ``nft -f -`` script in the run namespace; raises on failure."""

_Key = tuple[str, Element]
_FOREVER = float("inf")


class ElementInstaller:
    """Installs timed (``allowed``) and permanent (``denied``) elements through ``apply``.

    ``max_elements`` caps how many learned elements one run may hold (the
    map and the nft sets stay bounded); :meth:`allow` reports how many it had
    to leave out.
    """

    def __init__(
        self,
        apply: Apply,
        *,
        max_elements: int = 8192,
        static_allowed: Iterable[Element] = (),
        static_denied: Iterable[Element] = (),
    ) -> None:
        self._apply = apply
        self.max_elements = max_elements
        self._static = {"allowed": tuple(static_allowed), "denied": tuple(static_denied)}
        """The table's own elements: nft refuses an element inside one of them, and
        such an element would add nothing, so it is skipped."""
        self._installed: dict[_Key, float] = {}
        """(set, element) -> monotonic expiry (inf: permanent)."""
        self._pending: dict[_Key, int | None] = {}
        """Waiting for the next batch: timeout in seconds, None for permanent."""
        self._next: asyncio.Future[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self.invocations = 0
        """How many nft processes this installer started (for tests and the audit)."""

    def installed(self, set_name: str) -> int:
        """How many elements of ``set_name`` are installed and not yet expired."""
        now = time.monotonic()
        return sum(1 for (s, _), exp in self._installed.items() if s == set_name and exp > now)

    async def allow(self, elements: Iterable[Element], ttl: int) -> int:
        """Make ``elements`` last at least ``ttl`` seconds in ``allowed``; returns how
        many were left out because the run holds ``max_elements`` already."""
        now = time.monotonic()
        wanted: list[_Key] = []
        for element in elements:
            key = ("allowed", element)
            if self._installed.get(key, 0.0) - now >= ttl / 2 or self._covered(key):
                continue  # present for long enough (or a static element covers it): no work
            wanted.append(key)
        if not wanted:
            return 0
        self._prune(now)
        room = max(self.max_elements - len(self._installed) - len(self._pending), 0)
        fresh = [k for k in wanted if k not in self._installed and k not in self._pending]
        refused = set(fresh[room:]) if len(fresh) > room else set()
        queued = [key for key in wanted if key not in refused]
        for key in queued:
            old = self._pending.get(key)
            self._pending[key] = ttl if old is None else max(old, ttl)
        if queued:
            await self._flush_soon()
        return len(refused)

    async def deny(self, elements: Iterable[Element]) -> None:
        """Put ``elements`` into ``denied`` for the table's whole life (never capped:
        they only ever narrow what the guest reaches)."""
        queued = False
        for element in elements:
            key = ("denied", element)
            if key in self._installed or key in self._pending or self._covered(key):
                continue
            if any(
                s == "denied" and o.covers(element) for s, o in (*self._installed, *self._pending)
            ):
                continue  # a wider deny already holds it (nft would refuse it)
            self._pending[key] = None
            queued = True
        if queued:
            await self._flush_soon()

    def _covered(self, key: _Key) -> bool:
        set_name, element = key
        return any(o.covers(element) for o in self._static[set_name])

    def _prune(self, now: float) -> None:
        if len(self._installed) < self.max_elements:
            return
        for key in [k for k, exp in self._installed.items() if exp <= now]:
            del self._installed[key]

    async def _flush_soon(self) -> None:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        waiter = self._next
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_loop())
        await asyncio.shield(waiter)

    async def _flush_loop(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            done, self._next = self._next, None
            assert done is not None
            denied = [e for (s, e), t in batch.items() if s == "denied"]
            allowed = [(e, t) for (s, e), t in batch.items() if s == "allowed" and t is not None]
            # Denies first in the same transaction: a learned deny is never missing
            # while an allow for the same address exists.
            script = add_permanent_elements("denied", denied) if denied else ""
            script += add_elements("allowed", allowed) if allowed else ""
            try:
                self.invocations += 1
                await self._apply(script)
            except asyncio.CancelledError:
                done.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - handed to every waiter of the batch
                if not done.done():
                    done.set_exception(exc)
                    done.exception()  # mark retrieved: its waiters may all be gone
                continue
            now = time.monotonic()
            for (set_name, element), timeout in batch.items():
                expiry = _FOREVER if timeout is None else now + timeout
                key = (set_name, element)
                self._installed[key] = max(self._installed.get(key, 0.0), expiry)
            if not done.done():
                done.set_result(None)
        if self._next is not None and not self._next.done():  # nothing was queued for it
            self._next.set_result(None)
        self._next = None

    async def close(self) -> None:
        """Stop a running batch (its waiters see ``CancelledError``)."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.done():
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
        for fut in (self._next,):
            if fut is not None and not fut.done():
                fut.cancel()
        self._next = None
        self._pending.clear()
