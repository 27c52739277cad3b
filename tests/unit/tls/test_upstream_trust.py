"""``upstream.ca_file``: an https upstream on an internal CA, against a real asyncio TLS
server on 127.0.0.1, through the delivery pool."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

import pytest
import trustme

from sidecar.delivery.http1 import HTTP1Pool
from sidecar.errors import TLSMaterialError, UpstreamUnavailable
from sidecar.tls.upstream_trust import UpstreamTrust

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def _server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    return ctx


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def _post_to(server_ca: trustme.CA, trust: UpstreamTrust | None) -> int:
    server = await asyncio.start_server(_answer, "127.0.0.1", 0, ssl=_server_context(server_ca))
    port = server.sockets[0].getsockname()[1]
    pool = HTTP1Pool(f"https://127.0.0.1:{port}/events", timeout_s=5,
                     tls=trust.context if trust else None)
    try:
        return (await pool.post(b"{}", {})).status
    finally:
        await pool.aclose()
        server.close()


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_an_internal_ca_is_trusted_only_through_ca_file(tmp_path: Path) -> None:
    internal = trustme.CA()
    ca_file = tmp_path / "upstream-ca.pem"
    internal.cert_pem.write_to_path(str(ca_file))
    assert asyncio.run(_post_to(internal, UpstreamTrust(ca_file))) == 200
    # The system's roots do not know it: refused in the handshake, nothing sent.
    with pytest.raises(UpstreamUnavailable, match="unreachable: SSLCertVerificationError"):
        asyncio.run(_post_to(internal, None))
    # And the file replaces the system's roots rather than adding to them: a server from
    # another CA is refused.
    with pytest.raises(UpstreamUnavailable, match="SSLCertVerificationError"):
        asyncio.run(_post_to(trustme.CA(), UpstreamTrust(ca_file)))


def test_hostname_is_checked(tmp_path: Path) -> None:
    internal = trustme.CA()
    ca_file = tmp_path / "upstream-ca.pem"
    internal.cert_pem.write_to_path(str(ca_file))

    async def main() -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        internal.issue_cert("backend.internal").configure_cert(ctx)  # not 127.0.0.1
        server = await asyncio.start_server(_answer, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        pool = HTTP1Pool(f"https://127.0.0.1:{port}/", timeout_s=5,
                         tls=UpstreamTrust(ca_file).context)
        try:
            with pytest.raises(UpstreamUnavailable, match="SSLCertVerificationError"):
                await pool.post(b"{}", {})
        finally:
            await pool.aclose()
            server.close()
    asyncio.run(main())


@pytest.mark.parametrize("content, expected", [
    (None, "upstream.ca_file {path}: file not found"),
    (b"", "upstream.ca_file {path}: no valid PEM certificate"),
    (b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n",
     "upstream.ca_file {path}: no valid PEM certificate"),
], ids=["missing", "empty", "garbage"])
def test_an_unusable_ca_file_is_refused_at_start(tmp_path: Path, content: bytes | None,
                                                expected: str) -> None:
    path = tmp_path / "upstream-ca.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TLSMaterialError) as info:
        UpstreamTrust(path)
    assert str(info.value) == expected.format(path=path)


def test_a_changed_file_is_used_for_new_connections_and_a_broken_one_is_not(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    ca_file = tmp_path / "upstream-ca.pem"
    old_ca.cert_pem.write_to_path(str(ca_file))
    trust = UpstreamTrust(ca_file)
    assert asyncio.run(_post_to(old_ca, trust)) == 200

    # The upstream moves to a new CA; the operator replaces the file: the next
    # connection verifies against the new CA (no restart).
    before = trust.certificates
    _replace(ca_file, new_ca.cert_pem.bytes())
    assert asyncio.run(_post_to(new_ca, trust)) == 200
    assert trust.certificates != before  # what the expiry gauge reports follows
    with pytest.raises(UpstreamUnavailable, match="SSLCertVerificationError"):
        asyncio.run(_post_to(old_ca, trust))

    # A broken replacement is reported once and the last good CA stays in use.
    with caplog.at_level(logging.WARNING, logger="sidecar.tls"):
        _replace(ca_file, b"not a certificate\n")
        assert asyncio.run(_post_to(new_ca, trust)) == 200
        assert asyncio.run(_post_to(new_ca, trust)) == 200
        ca_file.unlink()
        assert asyncio.run(_post_to(new_ca, trust)) == 200
    failures = [r for r in caplog.records if r.getMessage() == "upstream.ca_reload_failed"]
    assert [f.error for f in failures] == [  # type: ignore[attr-defined]
        f"upstream.ca_file {ca_file}: no valid PEM certificate",
        f"upstream.ca_file {ca_file}: file not found"]
