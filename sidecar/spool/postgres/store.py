"""The PostgreSQL spool's ingest and delivery operations (blocking; ``PostgresSpool``
runs them in a thread).  Each hot-path operation is one statement (``sql.py`` says why).

The ``events`` row is also the dedup record: an id already stored blocks a repeat for
``dedup_retention_s`` (pending, in-flight and dead rows block for as long as they
exist; a purged row leaves a tombstone until its window ends).  An event is stored as
its own part plus the parts it shares with others of its batch, each part once
(``spool.parts``; the tables in ``schema.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sidecar.errors import SpoolUnavailable
from sidecar.events import Event, QuarantinedChange, canonical_json
from sidecar.spool.contract import AddResult, Batch, Settlement, SpooledEvent
from sidecar.spool.parts import StoredBatch, Unreadable, encode_holes, reassemble, split_events
from sidecar.spool.postgres import sql
from sidecar.spool.postgres.database import Database
from sidecar.spool.postgres.pool import Connection

__all__ = ["PostgresStore", "add_parameters", "spooled", "NO_LIMIT"]

NO_LIMIT = 2**62  # max depth for direct mode's record of delivered ids


def add_parameters(encoded: StoredBatch) -> tuple[list[bytes], list[str | None], uuid.UUID,
                                                  list[str], list[bytes]]:
    """``ADD``'s stored-form arrays: own parts and holes per event, then the batch id and
    the shared parts (id, body), which ``ADD`` stores for the events it inserts."""
    return ([e.own.encode("utf-8") for e in encoded.events],
            [encode_holes(e.holes) for e in encoded.events], uuid.uuid4(),
            list(encoded.parts), [text.encode("utf-8") for text in encoded.parts.values()])


def _text(value: str) -> str:
    """A string from the body, for a ``text`` column: PostgreSQL refuses NUL in text,
    and one such value would fail the whole group commit it is in (every request of
    it a 503, again on each retry)."""
    return value.replace("\x00", "\ufffd")


def spooled(rows: Sequence[tuple[object, ...]]
            ) -> tuple[list[SpooledEvent], list[tuple[str, str]]]:
    """``SETTLE_AND_CLAIM``'s rows as the worker's ``SpooledEvent``s: the claimed events
    (kind 0: id, own part, attempts, since, holes, batch), then the parts they refer to
    (kind 1: part id, body, batch), each reassembled to the bytes the upstream receives;
    and ``(id, error)`` for each claimed row that cannot be (``parts.Unreadable``)."""
    parts: dict[object, dict[str, str]] = {}
    for kind, id_, body, *_, batch, _, _ in rows:
        if kind == 1:
            assert isinstance(id_, str) and isinstance(body, bytes)
            parts.setdefault(batch, {})[id_] = body.decode("utf-8")
    claimed = []
    unreadable = []
    for kind, id_, own, attempts, since, holes, batch, _, _ in rows:
        if kind != 0:
            continue
        assert isinstance(id_, str) and isinstance(own, bytes)
        assert isinstance(attempts, int) and isinstance(since, float)
        assert holes is None or isinstance(holes, str)
        try:
            body = own if holes is None else reassemble(own.decode("utf-8"), holes,
                                                        parts.get(batch, {}))
        except (Unreadable, UnicodeDecodeError) as exc:
            unreadable.append((id_, str(exc)))
            continue
        claimed.append(SpooledEvent(id=id_, body=body, attempts=attempts, received_at=since))
    return claimed, unreadable


class PostgresStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ ingest

    def add_many(self, batches: Sequence[Batch]) -> list[AddResult]:
        """Store every batch in ONE statement (one round trip, one durable commit).

        Raises ``SpoolUnavailable`` (and stores nothing) when the new events would take
        the depth past ``max_spool_events`` or the database cannot be written.  Repeats
        of stored ids still succeed when the spool is full: they add nothing.  Under
        concurrent commits from several processes the bound may be passed by the
        events of the commits made at the same instant (each checks what is committed).
        """
        every = [e for events, _ in batches for e in events]
        quarantined = [q for _, qs in batches for q in qs]
        with self.db.connection() as conn:
            fits, stored, kept = self.insert(conn, every, quarantined, state="pending",
                                             max_depth=self.db.max_spool_events)
        if not fits:
            raise SpoolUnavailable("spool full")
        results = []
        for events, qs in batches:
            ids = _first_taken(stored, [e.id for e in events])
            results.append(AddResult(stored=ids, duplicates=len(events) - len(ids),
                                     quarantined=len(_first_taken(kept, [q.id for q in qs]))))
        return results

    def insert(self, conn: Connection, events: Sequence[Event],
               quarantined: Sequence[QuarantinedChange], *, state: str,
               max_depth: int) -> tuple[bool, set[str], set[str]]:
        """Run ``ADD``: (whether it fit, ids stored, quarantined ids kept).  Within
        ``events``, only an id's first occurrence can be stored."""
        unique = list({e.id: e for e in reversed(events)}.values())[::-1]
        q_unique = list({q.id: q for q in reversed(quarantined)}.values())[::-1]
        own, holes, batch, part_ids, part_bodies = add_parameters(split_events(unique))
        now = self.db.now()
        delivered = state == "delivered"
        row = conn.execute(sql.ADD, (
            [e.id for e in unique], own, holes, now, now - self.db.dedup_retention_s,
            max_depth, state, 1 if delivered else 0, now if delivered else None,
            batch, part_ids, part_bodies,
            [q.id for q in q_unique], [_text(q.waba_id) for q in q_unique],
            [_text(q.field) for q in q_unique], [q.entry_time for q in q_unique],
            [_text(q.reason) for q in q_unique], [canonical_json(q.value) for q in q_unique],
        )).fetchone()
        assert row is not None
        return bool(row[0]), set(row[1]), set(row[2])

    def filter_new(self, ids: Sequence[str]) -> set[str]:
        cutoff = self.db.now() - self.db.dedup_retention_s
        with self.db.connection() as conn:
            rows = conn.execute(sql.KNOWN, (list(ids),)).fetchall()
        blocking = {id_ for id_, state, created_at in rows
                    if state not in ("delivered", "purged") or created_at >= cutoff}
        return {i for i in ids if i not in blocking}

    def record_delivered(self, events: Sequence[Event],
                         quarantined: Sequence[QuarantinedChange]) -> None:
        with self.db.connection() as conn:
            self.insert(conn, events, quarantined, state="delivered", max_depth=NO_LIMIT)

    # ------------------------------------------------------------------ delivery

    def settle_and_claim(self, settlement: Settlement, limit: int, *,
                         lease_s: float) -> list[SpooledEvent]:
        """Record finished sends and claim the next events in one statement."""
        now = self.db.now()
        with self.db.tx(durable=False) as conn:
            rows = conn.execute(sql.SETTLE_AND_CLAIM, (
                *_outcomes(settlement), now, self.db.owner, max(0, limit),
                now + lease_s)).fetchall()
        claimed, unreadable = spooled(rows)
        if unreadable:  # dead-lettered under the lease just taken, not sent
            self.settle(Settlement(dead=unreadable))
        return claimed

    def settle(self, settlement: Settlement) -> None:
        if not settlement:
            return
        with self.db.tx(durable=False) as conn:
            conn.execute(sql.SETTLE, (*_outcomes(settlement), self.db.now(), self.db.owner))

    def release(self, ids: Sequence[str]) -> None:
        with self.db.tx(durable=False) as conn:
            conn.execute(sql.RELEASE, (list(ids), self.db.owner))

    def recover(self, *, at_start: bool = False) -> int:
        """In-flight events whose lease expired (a replica died, was stopped or stalled)
        go back to pending.  ``at_start`` changes nothing: on a shared spool a live
        lease may be another replica's send in progress, so only expiry frees it."""
        with self.db.tx(durable=False) as conn:
            return conn.execute(sql.RECOVER, (self.db.now(),)).rowcount

    def next_due(self) -> float | None:
        with self.db.connection() as conn:
            row = conn.execute(sql.NEXT_DUE).fetchone()
        return float(row[0]) if row is not None and row[0] is not None else None

    def backlog(self) -> tuple[int, float | None]:
        now = self.db.now()
        with self.db.connection() as conn, conn.transaction():  # one snapshot
            depth = conn.execute(sql.DEPTH).fetchone()
            oldest = conn.execute(sql.OLDEST).fetchone()
        assert depth is not None and oldest is not None
        age = None if oldest[0] is None else max(0.0, now - float(oldest[0]))
        return int(depth[0]), age


def _first_taken(stored: set[str], ids: list[str]) -> list[str]:
    """The ids in ``stored``, each taken out at its first occurrence (later ones, in
    this batch or the next, are repeats)."""
    taken = []
    for id_ in ids:
        if id_ in stored:
            stored.remove(id_)
            taken.append(id_)
    return taken


def _outcomes(s: Settlement) -> tuple[list[str], list[str], list[float | None],
                                      list[str | None]]:
    """A settlement as the four parallel arrays ``SETTLE`` unnests: id, kind, next
    attempt (retries), error."""
    rows: list[tuple[str, str, float | None, str | None]] = [
        *((id_, "delivered", None, None) for id_ in s.delivered),
        *((id_, "retry", at, error) for id_, at, error in s.retry),
        *((id_, "dead", None, error) for id_, error in s.dead),
    ]
    return ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
            [r[3] for r in rows])
