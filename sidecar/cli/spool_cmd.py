"""``sidecar spool stats | list | replay | purge``: look into the spool and act on it.

The operator's window on dead letters and quarantined changes.  Safe to run while the
server is running: SQLite's WAL lets both use the file, and a replayed event is picked
up by the running worker at its next poll.  A missing spool file is reported, never
created, so a typo in ``-c`` does not leave an empty spool behind.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import re
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from sidecar.cli._args import positive_int
from sidecar.cli._output import format_table, print_json
from sidecar.config import load_config
from sidecar.errors import UsageError
from sidecar.normalize import renormalize
from sidecar.spool import QuarantineRow, Spool, SpoolRow, SpoolStats, open_spool

__all__ = ["register", "run", "parse_duration"]

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)([smhdw]?)\s*$")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "spool", help="inspect and replay stored events",
        description="Inspect the spool, replay dead or quarantined events, purge old ones.")
    parser.set_defaults(func=run)
    sub = parser.add_subparsers(dest="spool_command", metavar="SUBCOMMAND")
    sub.required = True

    stats = sub.add_parser("stats", help="counts by state and the oldest pending age")
    _common(stats)
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(spool_func=_stats)

    lst = sub.add_parser("list", help="list stored events (all, or dead) and quarantined changes")
    _common(lst)
    lst.add_argument("--dead", action="store_true", help="only dead-lettered events")
    lst.add_argument("--quarantined", action="store_true", help="quarantined changes")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.add_argument("--limit", type=positive_int, default=100, metavar="N",
                     help="at most N rows of each kind (default 100)")
    lst.set_defaults(spool_func=_list)

    replay = sub.add_parser(
        "replay", help="requeue dead events / re-admit quarantined changes",
        description="Requeue dead events (attempts reset) and re-admit quarantined changes "
                    "(re-checked against their schema unless --force). Exit 1 unless every "
                    "given id was replayed.")
    _common(replay)
    replay.add_argument("ids", nargs="*", metavar="ID", help="event or quarantined change id")
    replay.add_argument("--all-dead", action="store_true", help="requeue every dead event")
    replay.add_argument("--force", action="store_true",
                        help="resend delivered events; forward a quarantined change that "
                             "still fails its schema whole and unsplit, as whatsapp.<field>")
    replay.set_defaults(spool_func=_replay)

    purge = sub.add_parser(
        "purge", help="delete delivered events, dead letters or quarantined changes",
        description="Delete stored rows to free space (works on a full disk too). Without "
                    "--dead or --quarantined: delivered events. Deleted ids keep blocking "
                    "repeats until delivery.dedup_retention_s has passed. Pending and "
                    "in-flight events are never purged.")
    _common(purge)
    purge.add_argument("--dead", action="store_true", help="dead letters")
    purge.add_argument("--quarantined", action="store_true",
                       help="quarantined changes (replayed or not)")
    purge.add_argument("--before", metavar="AGE",
                       help="only rows older than AGE (delivered: since delivery; dead and "
                            "quarantined: since receipt or the last replay): 7d, 12h, 30m, "
                            "3600s or 3600 (seconds); default 0s, every selected row")
    purge.add_argument("--delivered-before", metavar="AGE",
                       help="also delivered events, those delivered at least AGE ago")
    purge.set_defaults(spool_func=_purge)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, metavar="FILE", help="config file")


def run(args: argparse.Namespace) -> int:
    func: Callable[[Spool, argparse.Namespace], Coroutine[None, None, int]] = args.spool_func
    if func is _purge:
        _purge_cutoffs(args, now=0.0)  # a usage error before touching anything
    if func is _replay and bool(args.ids) == bool(args.all_dead):
        raise UsageError("spool replay: give event ids or --all-dead (not both)")
    spool = open_spool(load_config(args.config).delivery, must_exist=True)
    try:
        return asyncio.run(func(spool, args))
    finally:
        spool.close()


def parse_duration(text: str, flag: str = "duration") -> float:
    """``7d``, ``12h``, ``30m``, ``3600s``, ``3600`` → seconds.  An empty text is an error,
    not zero (``--before "$KEEP"`` with ``KEEP`` unset must not purge everything)."""
    match = _DURATION.match(text)
    if match is None:
        raise UsageError(f"{flag}: bad duration {text!r}: use e.g. 7d, 12h, 30m, 3600s or 3600")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds > 100 * 365 * 86400:
        raise UsageError(f"{flag}: bad duration {text!r}: more than 100 years")
    return seconds


# ---------------------------------------------------------------------- commands

async def _stats(spool: Spool, args: argparse.Namespace) -> int:
    stats = await spool.stats()
    if args.json:
        print_json(asdict(stats), sort_keys=True)
    else:
        print(_format_stats(stats))
    return 0


def _format_stats(s: SpoolStats) -> str:
    age = "-" if s.oldest_pending_age_s is None else _format_age(s.oldest_pending_age_s)
    rows = [("pending", s.pending), ("in flight", s.in_flight), ("delivered", s.delivered),
            ("dead", s.dead), ("quarantined", s.quarantined), ("oldest pending age", age),
            ("disk", "FULL: new deliveries get 503" if s.disk_full else "ok")]
    return "\n".join(f"{name:<20}{value}" for name, value in rows)


async def _list(spool: Spool, args: argparse.Namespace) -> int:
    want_events = args.dead or not args.quarantined
    # One row past the limit: whether rows were left out (said on stderr, so that the
    # JSON on stdout keeps its shape).
    events = await spool.list_events(state="dead" if args.dead else None,
                                     limit=args.limit + 1) if want_events else None
    quarantined = await spool.list_quarantined(limit=args.limit + 1) \
        if args.quarantined else None
    for kind, rows in (("dead events" if args.dead else "events", events),
                       ("quarantined changes", quarantined)):
        if rows is not None and len(rows) > args.limit:
            del rows[args.limit:]
            print(f"spool list: more {kind} than shown; the first {args.limit} are listed "
                  "(--limit N lists more)", file=sys.stderr)
    if args.json:
        out: dict[str, Any] = {}
        if events is not None:
            out["events"] = [asdict(r) for r in events]
        if quarantined is not None:
            out["quarantined"] = [asdict(r) for r in quarantined]
        print_json(out, sort_keys=True)
        return 0
    if events is not None:
        _print_table(["ID", "TYPE", "STATE", "ATTEMPTS", "RECEIVED", "NEXT ATTEMPT", "LAST ERROR"],
                     [_event_cells(r) for r in events])
    if quarantined is not None:
        if events is not None:
            print()
        _print_table(["ID", "WABA", "FIELD", "RECEIVED", "REPLAYED", "REASON"],
                     [_quarantine_cells(r) for r in quarantined])
    return 0


def _event_cells(r: SpoolRow) -> list[str]:
    return [r.id, r.type, r.state, str(r.attempts), _format_time(r.received_at),
            _format_time(r.next_attempt_at) if r.state == "pending" else "-",
            r.last_error or "-"]


def _quarantine_cells(r: QuarantineRow) -> list[str]:
    return [r.id, r.waba_id, r.field, _format_time(r.received_at), _format_time(r.replayed_at),
            r.reason]


async def _replay(spool: Spool, args: argparse.Namespace) -> int:
    if args.all_dead:
        print(f"replayed {await spool.replay_all_dead()} dead events")
        return 0
    result = await spool.replay(args.ids, force=args.force,
                                renormalize=functools.partial(renormalize, force=args.force))
    for id_ in result.replayed:
        print(f"replayed {id_}")
    if result.events_added:
        print(f"{result.events_added} events added from quarantined changes")
    for id_, why in result.skipped.items():
        print(f"skipped {id_}: {why}")
    for id_, why in result.still_invalid.items():
        print(f"still invalid {id_}: {why} (use --force to replay anyway)")
    for id_ in result.not_found:
        print(f"not found {id_}")
    return 0 if result.is_complete else 1


def _purge_cutoffs(args: argparse.Namespace, *, now: float) -> dict[str, float]:
    """``Spool.purge`` keywords from the flags: the kinds selected, each with its time."""
    if args.before is not None and args.delivered_before is not None:
        raise UsageError("spool purge: give --before or --delivered-before, not both")
    before = now - parse_duration("0s" if args.before is None else args.before, "--before")
    cutoffs: dict[str, float] = {}
    if args.dead:
        cutoffs["dead_before"] = before
    if args.quarantined:
        cutoffs["quarantined_before"] = before
    if args.delivered_before is not None:
        cutoffs["delivered_before"] = now - parse_duration(args.delivered_before,
                                                           "--delivered-before")
    elif not cutoffs:
        cutoffs["delivered_before"] = before
    return cutoffs


async def _purge(spool: Spool, args: argparse.Namespace) -> int:
    cutoffs = _purge_cutoffs(args, now=time.time())
    result = await spool.purge(**cutoffs)
    for key, count, what in (("delivered_before", result.delivered, "delivered events"),
                             ("dead_before", result.dead, "dead letters"),
                             ("quarantined_before", result.quarantined,
                              "quarantined changes")):
        if key in cutoffs:
            print(f"purged {count} {what}")
    return 0


# ---------------------------------------------------------------------- output

def _print_table(header: list[str], rows: list[list[str]]) -> None:
    print(format_table(header, rows) if rows else "(none)")


def _format_time(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _format_age(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
