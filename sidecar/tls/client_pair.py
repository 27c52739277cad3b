"""The client's certificate and key, for the commands that connect as Meta does
(``certs probe``, ``send-test``): loaded into a context, or one line saying why not."""

from __future__ import annotations

import ssl
from pathlib import Path

from sidecar.errors import TLSMaterialError

__all__ = ["load_client_pair", "reason_of"]


class _Encrypted(Exception):
    """OpenSSL asked for a passphrase."""


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL prompts on the terminal and waits for ever (no timeout
    # of the command applies): an encrypted key is refused instead.
    raise _Encrypted


def load_client_pair(context: ssl.SSLContext, cert: Path, key: Path | None) -> None:
    """Load ``cert`` (and ``key``, else the key in ``cert``) as the client's pair."""
    try:
        context.load_cert_chain(str(cert), str(key) if key is not None else None,
                                password=_no_passphrase)
    except _Encrypted:
        raise TLSMaterialError(f"--key {key if key is not None else cert}: the private key "
                               "is encrypted; give an unencrypted one (no passphrase is "
                               "asked for)") from None
    except (OSError, ssl.SSLError) as exc:
        pair = f"--cert {cert} / --key {key}" if key is not None else f"--cert {cert}"
        raise TLSMaterialError(f"{pair}: cannot load the client pair ({reason_of(exc)})"
                               ) from None


def reason_of(exc: BaseException) -> str:
    """A short, secret-free reason: the OpenSSL reason, or errno text, or the class name."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return text if text and len(text) < 200 else type(exc).__name__
