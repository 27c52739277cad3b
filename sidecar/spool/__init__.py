"""The durable store behind the 200 we answer Meta.

    contract.py  the storage contract every backend implements, and its value types
    writer.py    group commit in front of any backend
    parts.py     an event as its own part plus the parts it shares, each stored once
    sqlite/      the embedded backend: one SQLite file per machine
    postgres/    the shared backend: one PostgreSQL database for every replica

``open_spool`` picks the backend the config names (``delivery.spool_url`` or
``delivery.spool_path``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar.config import DeliveryConfig
from sidecar.spool.contract import (
    STATES,
    AddResult,
    Batch,
    PurgeResult,
    QuarantineRow,
    Renormalize,
    ReplayResult,
    Settlement,
    Spool,
    SpooledEvent,
    SpoolRow,
    SpoolStats,
)
from sidecar.spool.sqlite import SQLiteSpool
from sidecar.spool.sqlite.schema import require_spool_file
from sidecar.spool.writer import SpoolWriter

if TYPE_CHECKING:
    from sidecar.spool.postgres import PostgresSpool

__all__ = [
    "Spool",
    "SpoolWriter",
    "SQLiteSpool",
    "PostgresSpool",
    "open_spool",
    "AddResult",
    "Batch",
    "Renormalize",
    "Settlement",
    "SpooledEvent",
    "SpoolStats",
    "SpoolRow",
    "QuarantineRow",
    "ReplayResult",
    "PurgeResult",
    "STATES",
]


def open_spool(delivery: DeliveryConfig, *, must_exist: bool = False) -> Spool:
    """The spool ``delivery`` names.  ``must_exist`` (the CLI): a missing spool is an
    error, never created, so a typo in ``-c`` leaves no empty spool behind (for
    PostgreSQL: a database without the spool's schema, found at the first operation)."""
    if delivery.spool_url is not None:
        from sidecar.spool.postgres import PostgresSpool

        return PostgresSpool(delivery.spool_url, max_spool_events=delivery.max_spool_events,
                             dedup_retention_s=delivery.dedup_retention_s,
                             must_exist=must_exist)
    if must_exist:
        require_spool_file(delivery.spool_path)
    return SQLiteSpool(delivery.spool_path, max_spool_events=delivery.max_spool_events,
                       dedup_retention_s=delivery.dedup_retention_s,
                       reserve_bytes=delivery.spool_reserve_bytes)


def __getattr__(name: str) -> object:
    """``PostgresSpool`` is imported on first use: the driver (libpq, ~11 MB per process)
    is loaded only by processes whose config names a PostgreSQL spool."""
    if name == "PostgresSpool":
        from sidecar.spool.postgres import PostgresSpool

        return PostgresSpool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
