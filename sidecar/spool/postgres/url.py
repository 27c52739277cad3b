"""``delivery.spool_url``: the connection string, what may be shown of it, and the
connection defaults the sidecar adds when the URL does not set them.

The URL holds the database password, so it is kept as a ``Secret``; logs, errors,
``config check`` and ``/metrics`` only ever see ``display`` (the password replaced by
``***``), and every driver message passes ``reason``, which removes the password should
a message ever quote it.
"""

from __future__ import annotations

from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from sidecar.secret import Secret
from sidecar.config.spool_url import redact_url, url_secrets

__all__ = ["SpoolURL", "redact_url"]

# TCP keepalives and a user timeout: a connection whose peer vanished without a reset
# (a failover, a dropped NAT entry, a partition) is given up in about 10 s instead of
# hours, whether it was idle (LISTEN), waiting for an answer or sending.  The server's
# statement_timeout cannot help there: the server is what is gone.
_DEFAULTS = {"keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2",
             "keepalives_count": "3", "tcp_user_timeout": "10000",
             "fallback_application_name": "whatsapp-webhook-sidecar"}


class SpoolURL:
    __slots__ = ("_secret", "display", "_hidden")

    def __init__(self, url: Secret | str) -> None:
        self._secret = url if isinstance(url, Secret) else Secret(url)
        raw = self._secret.reveal()
        self.display = redact_url(raw)
        self._hidden = _secrets_of(raw)

    @property
    def conninfo(self) -> str:
        return self._secret.reveal()

    def defaults(self, connect_timeout_s: int) -> dict[str, str]:
        """Connection parameters for what the URL leaves unset."""
        try:
            given = conninfo_to_dict(self.conninfo)
        except psycopg.ProgrammingError:
            given = {}
        wanted = {**_DEFAULTS, "connect_timeout": str(connect_timeout_s)}
        return {k: v for k, v in wanted.items() if k not in given}

    def reason(self, exc: BaseException) -> str:
        """A driver error as one short line, without the password."""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        for form in self._hidden:  # longest first: one may contain another
            text = text.replace(form, "***")
        return text[:200]

    def __repr__(self) -> str:
        return f"SpoolURL({self.display!r})"


def _secrets_of(url: str) -> list[str]:
    """The password in every form a message might quote it, longest first."""
    forms = url_secrets(url)
    try:
        value = conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:
        value = None
    if value:
        forms.add(str(value))
    forms |= {quote(form, safe="") for form in forms}
    return sorted(forms, key=len, reverse=True)
