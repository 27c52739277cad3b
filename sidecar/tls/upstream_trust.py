"""Which certificates an ``https://`` upstream may present: the system's roots, or only
the CAs in ``upstream.ca_file`` (an internal PKI), re-read when that file changes.

The delivery pool asks for a context each time it opens a connection (connections are
kept alive, so that is rare).  A changed file is validated before it is used, as the
listener's reload does: a file that no longer parses or holds no certificate leaves the
last good context in use and is logged once; the next change is tried again.  Chain
and host name are verified either way, and a CA file replaces the system's roots rather
than adding to them.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from sidecar.errors import TLSMaterialError
from sidecar.tls.material import CertFacts, cert_facts, read_pem_certs

__all__ = ["UpstreamTrust"]

log = logging.getLogger("sidecar.tls")

_KEY = "upstream.ca_file"


class UpstreamTrust:
    def __init__(self, ca_file: Path | None) -> None:
        """Raises ``TLSMaterialError`` (naming the key) when ``ca_file`` is unusable."""
        self.ca_file = ca_file
        self._stamp: tuple[int, int, int] | None = None  # of the file in use
        self._refused: object = None  # the stamp (or stat error) last refused: said once
        self.certificates: tuple[CertFacts, ...] = ()  # the CA file's, as in use now
        if ca_file is None:
            self._context = ssl.create_default_context()
        else:
            self._stamp = _stamp(ca_file)
            self._context, self.certificates = _build(ca_file)

    def context(self) -> ssl.SSLContext:
        """The context for a new connection: rebuilt first if the CA file changed."""
        path = self.ca_file
        if path is None:
            return self._context
        try:
            stamp = _stamp(path)
        except TLSMaterialError as exc:
            self._refuse(str(exc), exc)
            return self._context
        if stamp == self._stamp or stamp == self._refused:
            return self._context
        try:
            context, certificates = _build(path)
        except TLSMaterialError as exc:
            self._refuse(stamp, exc)
            return self._context
        self._context, self.certificates = context, certificates
        self._stamp, self._refused = stamp, None
        log.info("upstream.ca_reloaded", extra={"file": str(path)})
        return context

    def _refuse(self, key: object, exc: TLSMaterialError) -> None:
        if key != self._refused:
            self._refused = key
            log.warning("upstream.ca_reload_failed", extra={"error": str(exc)})


def _stamp(path: Path) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TLSMaterialError(f"{_KEY} {path}: file not found") from None
    except OSError as exc:
        raise TLSMaterialError(f"{_KEY} {path}: unreadable ({exc.strerror})") from None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _build(path: Path) -> tuple[ssl.SSLContext, tuple[CertFacts, ...]]:
    _, certs = read_pem_certs(path, _KEY)
    # Re-encode what was parsed (bundles carry comments OpenSSL need not see), into a
    # fresh client context: verification and the hostname check are on, and its store
    # holds these CAs only.
    pem = b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cadata=pem.decode("ascii"))
    except ssl.SSLError as exc:
        raise TLSMaterialError(f"{_KEY} {path}: rejected by OpenSSL ({exc.reason})") from None
    return context, tuple(cert_facts(cert, path) for cert in certs)
