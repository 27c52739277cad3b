"""The server SSLContext built from validated material: the TLS policy, as options."""

from __future__ import annotations

import ssl
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from sidecar.config import TLSConfig
from sidecar.errors import TLSMaterialError
from sidecar.tls.holder import TLSHolder
from sidecar.tls.material import SERVER_CIPHERS, build_context, load_material


@pytest.fixture
def tls_config(tmp_path: Path) -> TLSConfig:
    server_ca, client_ca = trustme.CA(), trustme.CA()
    leaf = server_ca.issue_cert("localhost")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    client_ca.cert_pem.write_to_path(str(tmp_path / "client-ca.pem"))
    return TLSConfig(cert_file=tmp_path / "server.pem", key_file=tmp_path / "server.key",
                     client_ca_files=(tmp_path / "client-ca.pem",))


def _contexts(tls_config: TLSConfig) -> dict[str, ssl.SSLContext]:
    material = load_material(tls_config)
    return {
        "required": build_context(material, require_client_cert=True),
        "optional": build_context(material, require_client_cert=False),
        "listener": TLSHolder(tls_config).listener_context(),
    }


@pytest.mark.parametrize("which", ["required", "optional", "listener"])
def test_policy_options(tls_config: TLSConfig, which: str) -> None:
    ctx = _contexts(tls_config)[which]
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    for flag in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_NO_TICKET,
                 ssl.OP_CIPHER_SERVER_PREFERENCE):
        assert ctx.options & flag == flag, flag.name
    assert ctx.num_tickets == 0  # no TLS 1.3 resumption either
    # The listener's own verify mode is never used (see the test below); it fails closed.
    assert ctx.verify_mode == (ssl.CERT_OPTIONAL if which == "optional" else ssl.CERT_REQUIRED)


def test_listener_makes_each_connection_from_the_current_context(
        tls_config: TLSConfig, tmp_path: Path) -> None:
    holder = TLSHolder(tls_config)
    listener = holder.listener_context()
    first = listener.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    assert first.context is holder.state.context
    # A swap (here: new client CA) gives new connections a new context, with its own
    # session cache; the one already made keeps the context it started with.
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "client-ca.pem"))
    assert holder.reload(tls_config)
    second = listener.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    assert second.context is holder.state.context
    assert second.context is not first.context
    assert type(first) is type(second) is not ssl.SSLObject  # the identity-checking class


def test_tls_1_2_suites_are_forward_secret_aead_only(tls_config: TLSConfig) -> None:
    ctx = _contexts(tls_config)["listener"]
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12, SERVER_CIPHERS
    for cipher in tls12:
        assert cipher["kea"] == "kx-ecdhe", cipher["name"]
        assert cipher["aead"], cipher["name"]
    names = {c["name"] for c in ctx.get_ciphers()}
    assert not names & {"AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA", "DES-CBC3-SHA"}


def test_only_the_configured_client_cas_are_trusted(tls_config: TLSConfig) -> None:
    ctx = _contexts(tls_config)["required"]
    assert ctx.cert_store_stats()["x509_ca"] == 1  # never the system roots
    assert len(ctx.get_ca_certs()) == len(load_material(tls_config).client_cas) == 1


def test_ca_bundle_with_non_ascii_comments_loads(tls_config: TLSConfig) -> None:
    # CA bundles (e.g. from distributions) carry comments such as issuer names.
    (ca_file,) = tls_config.client_ca_files
    ca_file.write_bytes("# Issuer: CN=Főtanúsítvány\n".encode() + ca_file.read_bytes())
    material = load_material(tls_config)
    build_context(material, require_client_cert=True)
    assert len(material.client_cas) == 1


@pytest.mark.parametrize("which", ["cert_file", "client_ca_files"])
def test_a_file_caught_half_written_is_refused_naming_it(tls_config: TLSConfig,
                                                        which: str) -> None:
    # A complete certificate, then the first half of the next block (a renewal being
    # written, a truncated bundle): the parser skipped the half block and the check
    # passed, while OpenSSL refuses the file at start (serve exited, config check had
    # said OK) and a CA would have been dropped without a word.
    path = tls_config.cert_file if which == "cert_file" else tls_config.client_ca_files[0]
    other = trustme.CA().cert_pem.bytes()
    path.write_bytes(path.read_bytes() + other[:len(other) // 2])
    with pytest.raises(TLSMaterialError) as refused:
        load_material(tls_config)
    assert str(refused.value) == (f"tls.{which} {path}: 1 of its 2 certificate blocks are "
                                  "incomplete or unreadable")


def test_what_openssl_refuses_is_named_with_the_files_key(tls_config: TLSConfig) -> None:
    material = load_material(tls_config)
    broken = replace(material, cert_pem=material.cert_pem.replace(b"-----END", b"-----XND"))
    with pytest.raises(TLSMaterialError) as refused:
        build_context(broken, require_client_cert=True)
    assert str(refused.value).startswith(
        f"tls.cert_file {tls_config.cert_file}: refused by OpenSSL with tls.key_file (")


def test_connection_count_survives_collector_reentrance(tls_config: TLSConfig) -> None:
    # The release runs from the garbage collector, possibly while an admission is in
    # progress on the same thread; it must never wait for a lock.
    import gc

    counts: list[int] = []
    holder = TLSHolder(tls_config, max_connections=100, on_connections=counts.append)

    class Conn:
        pass

    conns = [Conn() for _ in range(50)]
    for conn in conns:
        holder.admit_connection(conn)  # type: ignore[arg-type]
        conn.cycle = conn  # type: ignore[attr-defined]  (freed only by the collector)
    del conns, conn
    gc.collect()
    assert holder.active_connections == 0 and counts[-1] == 0


def test_release_never_waits_for_the_admission_lock(tls_config: TLSConfig) -> None:
    import threading

    holder = TLSHolder(tls_config, max_connections=10)

    class Conn:
        pass

    conn = Conn()
    holder.admit_connection(conn)  # type: ignore[arg-type]
    done = threading.Event()

    def release_inside_admission() -> None:
        with holder._admit_lock:  # what a collection during admit_connection looks like
            holder._release_connection()
        done.set()

    t = threading.Thread(target=release_inside_admission, daemon=True)
    t.start()
    assert done.wait(2), "release blocked on the admission lock"
    assert holder.active_connections == 0


def test_a_failing_refusal_report_does_not_change_the_refusal(
        tls_config: TLSConfig, caplog: pytest.LogCaptureFixture) -> None:
    # The report runs inside the handshake, where the loop only handles ssl.SSLError:
    # a broken metric or log call must still leave the connection refused, not escape.
    from sidecar.tls.holder import HandshakeRefused

    def broken(reason: str, facts: dict[str, object]) -> None:
        raise OSError("metrics file gone")

    holder = TLSHolder(tls_config, max_connections=1, on_refused=broken)

    class Conn:
        pass

    kept = Conn()
    holder.admit_connection(kept)  # type: ignore[arg-type]
    with pytest.raises(HandshakeRefused):
        holder.check_capacity()
    with pytest.raises(HandshakeRefused):
        holder.admit_connection(Conn())  # type: ignore[arg-type]
    assert holder.active_connections == 1
    assert [r.getMessage() for r in caplog.records].count("tls.refusal_report_failed") == 2
