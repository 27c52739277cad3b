"""A cap on request-body bytes held in memory at once, across every connection of a
process (Envoy's overload manager, for the one resource a burst here is made of).

``limits.max_connections × limits.max_body_bytes`` is 3 GB by default: a retry storm after
an outage (Meta resends everything, each body up to 3 MB) would get a container with a
memory limit OOM-killed, and every request in flight with it.  So every body is paid for
before it is read: a declared ``Content-Length`` up front, a chunked body chunk by chunk.
A request that would take the total past the budget is answered 503 at once (Meta
retries), its body left unread in the kernel.  The bytes stay paid for until the request
is answered: what the body became (parsed JSON, events) lives as long.

With ``--workers N`` the instance's budget is split evenly, like ``max_connections``.
"""

from __future__ import annotations

from collections.abc import Callable

from sidecar.errors import Overloaded

__all__ = ["BodyBudget", "BodyHold"]


class BodyBudget:
    """One process's budget (one event loop: no lock needed)."""

    def __init__(self, limit: int, *, on_change: Callable[[int], None] | None = None,
                 on_drained: Callable[[], None] | None = None,
                 drained_after: int | None = None) -> None:
        self.limit = limit
        self.in_use = 0
        self._on_change = on_change or (lambda n: None)
        # Called once the budget is idle again after a burst of at least drained_after
        # bytes: the moment to hand freed memory back to the OS (server/memory.py).
        self._on_drained = on_drained or (lambda: None)
        self._drained_after = min(16 << 20, limit // 4) if drained_after is None \
            else drained_after
        self._peak = 0

    def hold(self) -> BodyHold:
        return BodyHold(self)

    def _take(self, n: int) -> bool:
        if self.in_use + n > self.limit:
            return False
        self.in_use += n
        self._peak = max(self._peak, self.in_use)
        self._on_change(self.in_use)
        return True

    def _give_back(self, n: int) -> None:
        self.in_use -= n
        self._on_change(self.in_use)
        if self.in_use == 0 and self._peak >= self._drained_after:
            self._peak = 0
            self._on_drained()


class BodyHold:
    """What one request has taken from the budget; ``release`` gives it all back."""

    __slots__ = ("_budget", "taken")

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.taken = 0

    def take(self, n: int) -> None:
        """Pay for ``n`` more bytes, or raise ``Overloaded`` (503) taking nothing."""
        if not self._budget._take(n):
            raise Overloaded("too many request bodies in memory; retry later")
        self.taken += n

    def release(self) -> None:
        if self.taken:
            taken, self.taken = self.taken, 0
            self._budget._give_back(taken)
