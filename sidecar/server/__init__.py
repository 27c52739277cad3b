"""Running the sidecar: the composition root, the two roles, reloads, the ``--workers N``
supervisor, and the HTTP listeners.

    compose.py     the one place a process's parts are built, for its roles
    roles.py       ingest (public listener → checks → spool/upstream) and delivery
                   (admin listener, worker, housekeeping)
    reload.py      the live config and TLS state, validated before each swap
    supervisor.py  N ingest processes on one port, the parent delivering
    run.py         ``sidecar serve``: own the spool, bind, run
    process.py     event loop, signals, GC freeze, CPU count
    listen.py      the HTTP/1.1 listeners: Hypercorn on our socket and TLS context
    http11.py      the one Hypercorn internal (header deadline, HTTP/1.1 only)
    guard.py       the listeners' ASGI-level limits
    fds.py         RLIMIT_NOFILE for the connection cap
"""

from sidecar.server.process import default_workers
from sidecar.server.run import run_server

__all__ = ["run_server", "default_workers"]
