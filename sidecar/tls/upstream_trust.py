"""Which certificates an ``https://`` upstream may present: the system's roots, or only
the CAs in ``upstream.ca_file`` (an internal PKI), re-read when that file changes.

The delivery pool asks for a context each time it opens a connection (connections are
kept alive, so that is rare), and the file is read each time: a change of its content is
validated before it is used, as the listener's reload does.  A file that no longer parses
or holds no certificate leaves the last good context in use and is logged once.  Chain
and host name are verified either way, and a CA file replaces the system's roots rather
than adding to them.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from cryptography import x509
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
        self._pem = b""  # the file's bytes in use: a change is a change of content
        self._refused = ""  # the last problem logged, so each is said once
        self.certificates: tuple[CertFacts, ...] = ()  # the CA file's, as in use now
        if ca_file is None:
            self._context = ssl.create_default_context()
        else:
            self._pem, certs = read_pem_certs(ca_file, _KEY)
            self._context, self.certificates = _build(ca_file, certs)

    def context(self) -> ssl.SSLContext:
        """The context for a new connection: rebuilt first if the CA file changed."""
        path = self.ca_file
        if path is None:
            return self._context
        try:
            pem, certs = read_pem_certs(path, _KEY)
            if pem != self._pem:
                self._context, self.certificates = _build(path, certs)
                self._pem = pem
                log.info("upstream.ca_reloaded", extra={"file": str(path)})
            self._refused = ""
        except TLSMaterialError as exc:
            if str(exc) != self._refused:
                self._refused = str(exc)
                log.warning("upstream.ca_reload_failed", extra={"error": str(exc)})
        return self._context


def _build(path: Path, certs: list[x509.Certificate]
           ) -> tuple[ssl.SSLContext, tuple[CertFacts, ...]]:
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
