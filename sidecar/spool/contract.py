"""The storage contract: every operation the ingest, the delivery worker, the CLI and
``/metrics`` need from a spool, whatever keeps it (SQLite on one machine, PostgreSQL for
replicas).  One test suite (``tests/unit/spool/spool_contract.py``) holds every backend to it.

What every backend guarantees:

* **Durable add with dedup.**  ``add_many`` stores every batch of one call in one
  transaction, committed durably before it returns (the 200 to Meta waits for it).  An
  event id already stored blocks a repeat for ``dedup_retention_s`` (pending, in-flight
  and dead events block for as long as they exist; a purged delivered event leaves a
  tombstone that keeps blocking until the window ends).  Past ``max_spool_events``
  undelivered events nothing of the call is stored and ``SpoolUnavailable`` is raised.
* **Claims are leases.**  ``settle_and_claim`` records finished sends and moves due
  pending events to in-flight until ``now + lease_s``; no event is claimed twice while its
  lease holds.  ``recover`` gives expired leases back (``at_start``: a backend that only
  this process delivers from may give back every lease).
* **Nothing half-written.**  Every failure is ``SpoolUnavailable`` (ingest answers 503 and
  Meta retries) and leaves the store as it was before the call.
* **Quarantine and dead letters are kept**, listed and replayable; replay re-normalizes a
  quarantined change through the ``Renormalize`` the caller passes in.  They are kept
  until ``purge`` deletes them (housekeeping does after ``delivery.dead_retention_s``,
  counted from receipt or the last replay, like an event's age).  They do not count
  toward ``max_spool_events``, which bounds the delivery backlog (pending + in-flight).
* **Storage running out refuses ingest first.**  While the backend's storage is (nearly)
  full, ``add_many``, ``record_delivered`` and ``check_writable`` raise
  ``SpoolUnavailable`` (so ``/readyz`` fails exactly while an ingest would answer 503),
  ``stats().disk_full`` is True, and everything that shrinks the spool or moves the
  backlog — ``settle_and_claim``, ``settle``, ``release``, ``recover`` and ``purge`` —
  still works: the backlog drains and an operator can free space.  When space returns
  ingest resumes by itself.  (SQLite keeps ``delivery.spool_reserve_bytes`` of the disk
  for this; a backend whose storage is a server's decides what "full" means there.)
* **Wake-ups.**  The process that commits an add wakes its own delivery worker (in the
  same process, or the parent's with ``--workers N``).  A backend shared by several
  machines also wakes the others' workers: ``watch_commits`` runs in every delivering
  process; the worker's poll stays the fallback, so a lost wake-up only delays.

Operations are coroutines; a backend on a blocking driver runs them in a thread.
``take_ownership`` and ``close`` are plain calls, made outside any event loop too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from sidecar.errors import SidecarError
from sidecar.events import Event, QuarantinedChange

__all__ = [
    "Spool",
    "requeue_refusal",
    "Batch",
    "Renormalize",
    "AddResult",
    "Settlement",
    "SpooledEvent",
    "SpoolStats",
    "SpoolRow",
    "QuarantineRow",
    "ReplayResult",
    "ReplayTally",
    "renormalize_stored",
    "PurgeResult",
    "STATES",
]

STATES = ("pending", "in_flight", "delivered", "dead")

# One request's share of a commit: its events and its quarantined changes.
Batch = tuple[Sequence[Event], Sequence[QuarantinedChange]]

# A quarantined change (and when it was received) → its events now; raises
# ``BadPayload`` when the change still cannot become events.
Renormalize = Callable[[QuarantinedChange, datetime], list[Event]]


@dataclass(frozen=True, slots=True)
class AddResult:
    stored: list[str]  # ids newly stored, in order
    duplicates: int  # events dropped as repeats of a stored id
    quarantined: int  # quarantined changes newly stored


@dataclass(slots=True)
class Settlement:
    """Outcomes of finished sends, recorded together: delivered ids, retries
    ``(id, next_attempt_at, error)`` and dead letters ``(id, error)``."""

    delivered: list[str] = field(default_factory=list)
    retry: list[tuple[str, float, str]] = field(default_factory=list)
    dead: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.delivered) + len(self.retry) + len(self.dead)

    def extend(self, other: Settlement) -> None:
        """Add ``other``'s outcomes to these (a failed write gives them back)."""
        self.delivered.extend(other.delivered)
        self.retry.extend(other.retry)
        self.dead.extend(other.dead)


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    id: str
    body: bytes  # the event as stored and sent: ``events.encode_event``
    attempts: int  # failed attempts so far
    received_at: float  # start of the age budget: receipt, or the last replay

    @property
    def event(self) -> Event:
        return Event.decode(self.body)


@dataclass(frozen=True, slots=True)
class SpoolStats:
    pending: int
    in_flight: int
    delivered: int
    dead: int
    quarantined: int  # not yet replayed
    oldest_pending_age_s: float | None  # oldest pending or in-flight event
    disk_full: bool = False  # ingest refused for lack of storage space (see the module doc)


@dataclass(frozen=True, slots=True)
class SpoolRow:
    id: str
    type: str
    state: str
    attempts: int
    last_error: str | None
    received_at: float
    next_attempt_at: float | None


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    id: str
    waba_id: str
    field: str
    reason: str
    received_at: float
    replayed_at: float | None


@dataclass(frozen=True, slots=True)
class ReplayResult:
    replayed: list[str]  # ids put back on the delivery queue
    not_found: list[str]
    still_invalid: dict[str, str]  # quarantined id -> why it still cannot become events
    skipped: dict[str, str]  # id -> why it was left alone (already pending, delivered, ...)
    events_added: int  # new events from replayed quarantined changes (after dedup)

    @property
    def is_complete(self) -> bool:
        """True when every requested id was replayed."""
        return not (self.not_found or self.still_invalid or self.skipped)


def renormalize_stored(id_: str, row: Sequence[Any], renormalize: Renormalize
                       ) -> list[Event] | str:
    """A stored quarantine row ``(waba_id, field, entry_time, reason, value JSON,
    received_at)`` → its events now, or why it still cannot become events."""
    waba_id, field, entry_time, reason, value_text, received_at = row
    change = QuarantinedChange(id=id_, waba_id=waba_id, field=field, entry_time=entry_time,
                               reason=reason, value=json.loads(value_text))
    try:
        return renormalize(change, datetime.fromtimestamp(received_at, tz=timezone.utc))
    except SidecarError as exc:
        return str(exc)


def requeue_refusal(state: str, *, force: bool) -> str | None:
    """Why a stored event in ``state`` is not put back on the queue by ``replay``, or
    None when it is (every backend refuses in the same words)."""
    if state in ("pending", "in_flight"):
        return f"already {state.replace('_', ' ')}"
    if state == "delivered" and not force:
        return "already delivered (use --force to send it again)"
    return None


class ReplayTally:
    """How every backend's ``replay`` adds up what it did with each requested id."""

    def __init__(self) -> None:
        self._replayed: list[str] = []
        self._not_found: list[str] = []
        self._still_invalid: dict[str, str] = {}
        self._skipped: dict[str, str] = {}
        self._added = 0

    def event(self, id_: str, skipped_because: str | None) -> None:
        """A stored event: requeued (None), or left alone for this reason."""
        if skipped_because is None:
            self._replayed.append(id_)
        else:
            self._skipped[id_] = skipped_because

    def change(self, id_: str, outcome: int | str | None) -> None:
        """A quarantined change: re-admitted with this many new events, still invalid for
        this reason, or (None) no such change either."""
        if outcome is None:
            self._not_found.append(id_)
        elif isinstance(outcome, str):
            self._still_invalid[id_] = outcome
        else:
            self._replayed.append(id_)
            self._added += outcome

    def result(self) -> ReplayResult:
        return ReplayResult(replayed=self._replayed, not_found=self._not_found,
                            still_invalid=self._still_invalid, skipped=self._skipped,
                            events_added=self._added)


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """Rows deleted by one ``purge``, by kind."""

    delivered: int = 0
    dead: int = 0
    quarantined: int = 0

    @property
    def total(self) -> int:
        return self.delivered + self.dead + self.quarantined


class Spool(Protocol):
    """See the module docstring for what every implementation guarantees."""

    # -- lifecycle
    def take_ownership(self) -> None:
        """Become a delivering process of this spool, or raise ``SpoolUnavailable``
        (e.g. a spool only one process may deliver from, already delivered from)."""
        ...

    def close(self) -> None:
        """Release connections and locks; idempotent."""
        ...

    # -- ingest
    async def add_many(self, batches: Sequence[Batch]) -> list[AddResult]:
        """Store every batch in one durable transaction; dedup by event id."""
        ...

    async def filter_new(self, ids: Sequence[str]) -> set[str]:
        """Direct mode: the ids not stored within the dedup window."""
        ...

    async def record_delivered(self, events: Sequence[Event],
                               quarantined: Sequence[QuarantinedChange]) -> None:
        """Direct mode: keep the ids the upstream accepted (dedup) and the quarantine."""
        ...

    async def check_writable(self) -> None:
        """Raise ``SpoolUnavailable`` unless a write would commit now (``/readyz``)."""
        ...

    async def watch_commits(self, wake: Callable[[], None], stop: asyncio.Event) -> None:
        """Until ``stop``: call ``wake`` (from any thread) soon after another process
        stored or requeued events, wherever it runs.  A backend only this machine
        writes, whose writers wake the worker themselves (SQLite), returns at once."""
        ...

    # -- delivery
    async def settle_and_claim(self, settlement: Settlement, limit: int, *,
                               lease_s: float) -> list[SpooledEvent]:
        """Record finished sends, then claim up to ``limit`` due events (oldest due
        first), in one transaction."""
        ...

    async def next_due(self) -> float | None:
        """When the earliest pending event comes due, or None."""
        ...

    async def settle(self, settlement: Settlement) -> None: ...

    async def release(self, ids: Sequence[str]) -> None:
        """Give in-flight events back without counting an attempt (shutdown)."""
        ...

    async def recover(self, *, at_start: bool = False) -> int:
        """Give expired leases back to pending; the number given back."""
        ...

    # -- inspection (CLI, /metrics)
    async def backlog(self) -> tuple[int, float | None]:
        """Undelivered events and the age of the oldest (None when none), one snapshot."""
        ...

    async def stats(self) -> SpoolStats: ...

    async def list_events(self, *, state: str | None = None,
                          limit: int = 100) -> list[SpoolRow]: ...

    async def list_quarantined(self, *, limit: int = 100) -> list[QuarantineRow]: ...

    # -- replay and purge
    async def replay(self, ids: Sequence[str], *, renormalize: Renormalize,
                     force: bool = False) -> ReplayResult:
        """Requeue dead events (attempts and age reset; delivered ones only with
        ``force``) and re-admit quarantined changes through ``renormalize``."""
        ...

    async def replay_all_dead(self) -> int: ...

    async def purge(self, *, delivered_before: float | None = None,
                    dead_before: float | None = None,
                    quarantined_before: float | None = None) -> PurgeResult:
        """Delete stored rows older than the times given (unix seconds); a kind given
        None is left alone:

        * ``delivered_before``: delivered events delivered before it;
        * ``dead_before``: dead letters received (or last replayed) before it;
        * ``quarantined_before``: quarantined changes, replayed or not, received (or
          last replayed) before it.

        Pending and in-flight events are never deleted.  A deleted event's id keeps
        blocking repeats until ``dedup_retention_s`` after it was stored (a tombstone),
        so a purge never weakens dedup.  Works while ingest is refused for a full disk
        (that is when it is needed), and gives the space back to the storage where the
        backend can."""
        ...
