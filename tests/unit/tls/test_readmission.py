"""``TLSHolder.readmit``: the policy in force judges connections a reload found open, with
in-memory TLS connections (``ssl.MemoryBIO``) through the holder's own listener context."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme

from sidecar.config import TLSConfig
from sidecar.tls.holder import TLSHolder

META_CN = "client.webhooks.fbclientcerts.com"


class Pair:
    """A server end made by the holder's listener context and a client end; the
    handshake is driven by hand so a reload can land in the middle of it."""

    def __init__(self, holder: TLSHolder, client: ssl.SSLContext) -> None:
        self._to_server, self._from_server = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._to_client, self._from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.server = holder.listener_context().wrap_bio(self._to_server, self._from_server,
                                                        server_side=True)
        self.client = client.wrap_bio(self._to_client, self._from_client,
                                      server_hostname="127.0.0.1")

    def step(self) -> bool:
        """One round trip; True once the server's side of the handshake is done."""
        done = False
        for end in (self.client, self.server):
            try:
                end.do_handshake()
                done = end is self.server
            except ssl.SSLWantReadError:
                pass
            self._to_server.write(self._from_client.read())
            self._to_client.write(self._from_server.read())
        return done

    def finish(self) -> None:
        for _ in range(10):
            if self.step():
                return
        raise AssertionError("handshake did not finish")


def _setup(tmp_path: Path, client_ca: trustme.CA) -> tuple[TLSConfig, ssl.SSLContext]:
    server_ca = trustme.CA()
    leaf = server_ca.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "s.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "s.key"))
    (tmp_path / "ca.pem").write_bytes(client_ca.cert_pem.bytes())
    config = TLSConfig(cert_file=tmp_path / "s.pem", key_file=tmp_path / "s.key",
                       client_ca_files=(tmp_path / "ca.pem",),
                       allowed_client_names=(META_CN,))
    client = ssl.create_default_context()
    server_ca.configure_trust(client)
    client_ca.issue_cert(common_name=META_CN).configure_cert(client)
    return config, client


def test_an_unchanged_policy_admits_at_once(tmp_path: Path) -> None:
    config, client = _setup(tmp_path, trustme.CA())
    holder = TLSHolder(config)
    pair = Pair(holder, client)
    pair.finish()
    assert pair.server.readmit() is None  # type: ignore[attr-defined]


def test_a_handshake_that_straddles_the_removal_of_its_ca_is_not_admitted_for_good(
        tmp_path: Path) -> None:
    # The chain was verified against the old CAs (the connection's context was made
    # before the reload); the handshake ends after it.  Its first request decides.
    old_ca = trustme.CA()
    config, client = _setup(tmp_path, old_ca)
    holder = TLSHolder(config)
    pair = Pair(holder, client)
    assert not pair.step()
    (tmp_path / "ca.pem").write_bytes(trustme.CA().cert_pem.bytes())
    assert holder.reload(config)
    pair.finish()
    assert pair.server.readmit() == (421, "client_ca_removed")  # type: ignore[attr-defined]


def test_a_ca_added_or_reordered_changes_nothing(tmp_path: Path) -> None:
    ca = trustme.CA()
    config, client = _setup(tmp_path, ca)
    holder = TLSHolder(config)
    pair = Pair(holder, client)
    pair.finish()
    (tmp_path / "ca.pem").write_bytes(trustme.CA().cert_pem.bytes() + ca.cert_pem.bytes())
    assert holder.reload(config)
    assert pair.server.readmit() is None  # type: ignore[attr-defined]
