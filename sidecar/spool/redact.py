"""A spool URL as people may see it: the password replaced by ``***``.  Without the
PostgreSQL driver, so that showing a URL (``config check``) does not load it."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["redact_url"]

_SECRET_PARAMS = {"password", "sslpassword"}


def redact_url(url: str) -> str:
    """``postgresql://sidecar:***@db/sidecar``: the password (in the authority or as a
    query parameter) replaced, everything else as given."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, hosts = netloc.rsplit("@", 1)
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{hosts}"
        query = urlencode([(k, "***" if k in _SECRET_PARAMS else v)
                           for k, v in parse_qsl(parts.query, keep_blank_values=True)],
                          safe="*/:,")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return f"{url.split(':', 1)[0]}://***"
