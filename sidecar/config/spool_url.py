"""``delivery.spool_url`` read without the PostgreSQL driver (so that loading or showing
a config does not load it): whether it can be a connection string, and how people may
see it, the password replaced by ``***``.

The user and password are found the way libpq finds them: everything after ``//`` up to
the first ``@`` that comes before any ``/``.  A password may therefore hold ``?``, ``#``
or ``:`` unencoded, which a generic URL parser would take for the query, the fragment or
a port, and then show."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

__all__ = ["SCHEMES", "redact_url", "url_secrets", "url_problem"]

SCHEMES = ("postgresql", "postgres")

_SECRET_PARAMS = {"password", "sslpassword"}


def _split(url: str) -> tuple[str, str | None, str]:
    """(``scheme://``, the userinfo or None, the rest: hosts, path, query)."""
    if "://" not in url:
        raise ValueError("no scheme")
    scheme, rest = url.split("://", 1)
    end = min((i for i in (rest.find("@"), rest.find("/")) if i >= 0), default=-1)
    if end >= 0 and rest[end] == "@":
        return scheme + "://", rest[:end], rest[end + 1:]
    return scheme + "://", None, rest


def url_secrets(url: str) -> set[str]:
    """Every form in which the URL holds a secret, to be removed from any message that
    quotes one: the userinfo's password and the ``password`` / ``sslpassword`` query
    values, each as written and decoded (a malformed one, which no parser accepts, is
    still found: a driver's error message quotes it)."""
    try:
        _, userinfo, rest = _split(url)
    except ValueError:
        return set()
    written: list[str] = []
    if userinfo is not None and ":" in userinfo:
        written.append(userinfo.split(":", 1)[1])
    query = rest.split("?", 1)[1].split("#", 1)[0] if "?" in rest else ""
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if unquote(name) in _SECRET_PARAMS:
            written.append(value)
    return {form for value in written for form in (value, unquote(value)) if form}


def _ambiguous(userinfo: str | None, rest: str) -> bool:
    """An ``@`` that libpq and a reader would split differently: a second one in the
    authority (``user:pa@ss@host``), or one inside the query of a URL without a path
    (``postgresql://db?password=se@cret``, whose "userinfo" is then ``db?password=se``).
    Either way a piece of the password would be shown as a host or a user."""
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    user = userinfo.split(":", 1)[0] if userinfo is not None else ""
    return "@" in authority or any(c in user for c in "?#=")


def url_problem(url: str) -> str | None:
    """Why the URL cannot be a connection string (hosts, port), without quoting it."""
    try:
        prefix, userinfo, rest = _split(url)
        if _ambiguous(userinfo, rest):
            raise ValueError("an @ that must be percent-encoded")
        parts = urlsplit(prefix + rest)
        for host in parts.netloc.split(","):
            urlsplit(prefix + host).port  # noqa: B018 - raises for a bad port
    except ValueError as exc:  # its text may quote a piece of the URL: not shown
        what = ("host" if "IPv6" in str(exc) or "@" in str(exc)
                else "port" if "Port" in str(exc) else "form")
        return f"not a valid URL (its {what} cannot be read; a password with / or @ " \
               "must be percent-encoded)"
    return None


def redact_url(url: str) -> str:
    """``postgresql://sidecar:***@db/sidecar``: the password (in the userinfo or as a
    query parameter) replaced, everything else as given."""
    try:
        prefix, userinfo, rest = _split(url)
        if _ambiguous(userinfo, rest):
            raise ValueError("ambiguous")
        if userinfo is not None and ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        parts = urlsplit(prefix + rest)
        query = urlencode([(k, "***" if k in _SECRET_PARAMS else v)
                           for k, v in parse_qsl(parts.query, keep_blank_values=True)],
                          safe="*/:,")
        netloc = parts.netloc if userinfo is None else f"{userinfo}@{parts.netloc}"
        return (prefix + netloc + parts.path + (f"?{query}" if query else "")
                + (f"#{parts.fragment}" if parts.fragment else ""))
    except ValueError:
        return f"{url.split(':', 1)[0]}://***"
