"""One ``sidecar serve`` per listen address on a host, whatever the worker count.

With ``--workers N`` the public socket is bound with ``SO_REUSEPORT``, and the kernel
lets any process of the same user bind the same port too: a second instance (another
spool, another admin port, an old config) would silently take half of Meta's
deliveries.  Two checks refuse it at start, with one line:

* **a lock named after the listen address**: an abstract-namespace Unix socket
  (``@whatsapp-sidecar/listen/HOST/PORT``), bound by the serving parent for its whole
  life.  The kernel frees it when the process exits, SIGKILL included, so no stale lock
  is ever left; it needs no writable folder (a read-only root filesystem is fine); and it
  lives in the network namespace, exactly like the port: containers with their own
  network (and replicas on other hosts) never collide, a second sidecar in the same Pod
  does.  Envoy coordinates its hot restarts through the same kind of socket.
* **the port's owner**: a plain bind without ``SO_REUSEPORT`` fails while anyone listens
  on the port (an instance whose parent died but whose ingest processes still drain, a
  wildcard listener overlapping this address, another program).
"""

from __future__ import annotations

import errno
import socket
import sys

from sidecar.errors import SidecarError
from sidecar.server.listen import bind_socket

__all__ = ["claim_listen_address"]


def claim_listen_address(host: str, port: int) -> socket.socket | None:
    """Hold the lock for ``host:port`` and check nobody listens there; the socket to keep
    open while serving (None where abstract sockets do not exist, or for port 0).
    ``SidecarError`` (one line) when another instance serves it."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lock: socket.socket | None = None
    if sys.platform == "linux" and port != 0:
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lock.bind(f"\0whatsapp-sidecar/listen/{host}/{port}")
        except OSError as exc:
            lock.close()
            if exc.errno == errno.EADDRINUSE:
                raise SidecarError(
                    f"listen {where} is already served by another sidecar serve process "
                    "(one instance per host and port; stop it first)") from None
            raise
    try:
        bind_socket(host, port).close()  # without SO_REUSEPORT: fails while anyone listens
    except OSError as exc:
        if lock is not None:
            lock.close()
        raise SidecarError(f"listen {where}: cannot listen: {exc.strerror or exc}") from None
    return lock
