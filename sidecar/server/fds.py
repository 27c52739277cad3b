"""File descriptors: the public listener can never run the process out of them.

Every connection the public listener holds is a file descriptor from ``accept`` on, an
idle TCP connection that never sends a ClientHello included.  When a process runs out,
``accept`` fails on every listener: asyncio logs it and retries once a second, and
uvloop (libuv) closes the listener for good, the admin listener too (a liveness probe
then restarts the pod).  So:

* at start, the soft ``RLIMIT_NOFILE`` is raised to the hard limit (1,024 soft is
  common, far below what ``max_connections: 1000`` needs);
* ``limits.max_connections`` is counted from accept (``sidecar.tls.holder``), and past it
  a connection is closed at once;
* what the cap can hold at most — the cap, plus one accept burst (the listen backlog:
  the event loop accepts up to that many before the first is refused), plus a reserve
  for the admin listener, the spool, the upstream pool and the process itself — must
  fit under the limit, or ``serve`` and ``config check`` refuse the config with one line
  naming ``limits.max_connections``.
"""

from __future__ import annotations

import resource

from sidecar.config import Config
from sidecar.errors import ConfigError

__all__ = ["RESERVED_FDS", "public_backlog", "fds_needed", "raise_nofile_limit",
           "nofile_hard_limit", "check_fd_budget"]

# The admin listener and its connections (probes, scrapes), the spool's files and the
# threads' connections to it, metrics files, the event loop's own, stdio, wake sockets.
RESERVED_FDS = 256


def public_backlog(max_connections: int) -> int:
    """The public listener's listen backlog: room for a reconnect storm of the whole cap."""
    return min(4096, max(100, max_connections))


def fds_needed(config: Config) -> int:
    max_connections = config.limits.max_connections
    # Direct mode has two upstream pools in one process: the ingest's, and the worker's
    # that sends what `spool replay` puts back.
    pools = 2 if config.delivery.mode == "direct" else 1
    return (max_connections + public_backlog(max_connections)
            + pools * config.upstream.max_in_flight + RESERVED_FDS)


def nofile_hard_limit() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return hard


def raise_nofile_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft  # refused (e.g. above fs.nr_open): check_fd_budget judges what is left
    return hard


def check_fd_budget(config: Config, *, limit: int) -> None:
    """Refuse a ``max_connections`` that ``limit`` file descriptors cannot hold."""
    if limit == resource.RLIM_INFINITY:
        return
    needed = fds_needed(config)
    if needed > limit:
        max_connections = config.limits.max_connections
        in_flight = config.upstream.max_in_flight
        # Name the key that asks for more: the connection cap, or the upstream pool.
        key = ("upstream.max_in_flight" if in_flight > max_connections
               else "limits.max_connections")
        raise ConfigError(
            f"config key '{key}': {max_connections} connections and {in_flight} upstream "
            f"connections need up to {needed} file descriptors (with the listen backlog and "
            f"{RESERVED_FDS} for the rest of the process), but RLIMIT_NOFILE allows "
            f"{limit}; lower {key} or raise the hard limit (ulimit -Hn, systemd "
            "LimitNOFILE=, the container's nofile ulimit)")
