"""Real-process fixtures: trustme certificates, free ports, a real upstream, and the
real ``python -m sidecar serve`` started per test (``sidecar.tools.launch``, as the demo
does) and stopped by PID in a finalizer."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import subprocess
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import trustme

from sidecar.checks.signature import sign
from sidecar.secret import Secret
from sidecar.tools import launch
from sidecar.tools.launch import NotReady, ServeProcess, free_port
from sidecar.tools.sink import RecordingSink

META_CN = "client.webhooks.fbclientcerts.com"
APP_SECRET = "test-app-secret-\u00e9"  # non-ASCII on purpose
APP_SECRET_2 = "second-app-secret"
VERIFY_TOKEN = "test-verify-token"
SIGNING_SECRET = "test-signing-secret"

# The event loop a test's sidecar runs on unless the test names one: run the suite with
# SIDECAR_TEST_LOOP=uvloop to run all of it on uvloop.
DEFAULT_LOOP = os.environ.get("SIDECAR_TEST_LOOP", "asyncio")


@dataclass
class PKI:
    """Server CA + server cert, Meta's client CA + client certs, and a rogue CA."""

    dir: Path
    server_ca: trustme.CA = field(default_factory=trustme.CA)
    client_ca: trustme.CA = field(default_factory=trustme.CA)
    rogue_ca: trustme.CA = field(default_factory=trustme.CA)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        server = self.server_ca.issue_cert("127.0.0.1", "localhost")
        server.cert_chain_pems[0].write_to_path(str(self.dir / "server.pem"))
        for extra in server.cert_chain_pems[1:]:
            extra.write_to_path(str(self.dir / "server.pem"), append=True)
        server.private_key_pem.write_to_path(str(self.dir / "server.key"))
        self.server_ca.cert_pem.write_to_path(str(self.dir / "server-ca.pem"))
        self.client_ca.cert_pem.write_to_path(str(self.dir / "client-ca.pem"))
        self.meta_client = self.client_pair("meta", self.client_ca, common_name=META_CN)
        self.other_name_client = self.client_pair("other", self.client_ca,
                                                  common_name="evil.example.com")
        self.rogue_client = self.client_pair("rogue", self.rogue_ca, common_name=META_CN)

    def client_pair(self, name: str, ca: trustme.CA, *identities: str, **kw: Any) -> Path:
        cert = ca.issue_cert(*identities, **kw)
        path = self.dir / f"client-{name}.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(path))
        return path

    def client_context(self, client_pem: Path | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.dir / "server-ca.pem"))
        if client_pem is not None:
            ctx.load_cert_chain(str(client_pem))
        return ctx


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path / "certs")


@contextlib.contextmanager
def running_sink(signing_secret: str) -> Iterator[RecordingSink]:
    """A real upstream on 127.0.0.1 that checks signatures made with this secret."""
    s = RecordingSink(signing_secret=Secret(signing_secret)).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def sink() -> Iterator[RecordingSink]:
    with running_sink(SIGNING_SECRET) as s:
        yield s


class SidecarProcess(ServeProcess):
    """A ``ServeProcess`` with what the tests need around it: its URL, the PKI to talk to
    it, its log, and clients that post signed deliveries."""

    def __init__(self, config_path: Path, port: int, admin_port: int, pki: PKI, path: str,
                 log_path: Path, loop: str, workers: int = 1,
                 nofile: tuple[int, int] | None = None) -> None:
        super().__init__(config_path, admin_port=admin_port,
                         args=["--loop", loop, "--workers", str(workers)],
                         env=dict(os.environ, PYTHONUNBUFFERED="1"), nofile=nofile)
        self.port = port
        self.pki = pki
        self.path = path
        self.log_path = log_path
        self.loop = loop
        self.workers = workers

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}{self.path}"

    def start(self, *, wait: bool = True) -> SidecarProcess:
        self.output = open(self.log_path, "ab")  # each (re)start appends to one log
        super().start()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        try:
            super().wait_ready(timeout_s)
        except NotReady as exc:
            raise AssertionError(f"{exc}:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        code = super().stop(sig, timeout_s)
        if self.output is not None:
            self.output.close()
        return code

    # ------------------------------------------------------------------ clients

    def client(self, client_pem: Path | None = "meta", **kw: Any) -> httpx.Client:  # type: ignore[assignment]
        pem = self.pki.meta_client if client_pem == "meta" else client_pem
        return httpx.Client(verify=self.pki.client_context(pem), timeout=10, trust_env=False, **kw)

    def post(self, body: bytes, *, secret: str = APP_SECRET, client_pem: Any = "meta",
             headers: dict[str, str] | None = None) -> httpx.Response:
        h = {"content-type": "application/json", "x-hub-signature-256": sign(Secret(secret), body)}
        h.update(headers or {})
        with self.client(client_pem) as c:
            return c.post(self.url, content=body, headers=h)

    def metrics(self) -> str:
        return httpx.get(self.admin_url + "/metrics", timeout=5).text


def write_config(folder: Path, *, port: int, admin_port: int, upstream_url: str,
                 spool_path: Path, extra: str = "", mode: str = "spool",
                 client_auth: str = "required", tls_extra: str = "",
                 secrets: tuple[str, ...] = ("${TEST_APP_SECRET}",),
                 delivery_extra: str = "", upstream_extra: str = "",
                 signing_secret: str = SIGNING_SECRET) -> Path:
    """The demo's config template (``sidecar.tools.launch.write_config``) with the tests'
    secrets, a fast reload, short timeouts and backoffs, and a small disk reserve."""
    return launch.write_config(
        folder, port=port, admin_port=admin_port, upstream_url=upstream_url,
        app_secrets=secrets, verify_token=VERIFY_TOKEN, signing_secret=signing_secret,
        client_ca="certs/client-ca.pem", spool_path=spool_path, mode=mode,
        client_auth=client_auth, backoff_initial_s=0.05,
        tls_extra="reload_interval_s: 0.5\n" + tls_extra,
        upstream_extra="timeout_s: 2\n" + upstream_extra,
        delivery_extra="backoff_max_s: 0.5\n" + _reserve(delivery_extra) + delivery_extra,
        extra=extra)


def _reserve(delivery_extra: str) -> str:
    # 1 MiB, not the default 64 MiB: a test run starts many sidecars on a shared disk.
    return "" if "spool_reserve_bytes" in delivery_extra else "spool_reserve_bytes: 1048576\n"


@pytest.fixture
def start_sidecar(tmp_path: Path, pki: PKI, sink: RecordingSink,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("TEST_APP_SECRET", APP_SECRET)
    started: list[SidecarProcess] = []

    def _start(*, loop: str = DEFAULT_LOOP, upstream_url: str | None = None, wait: bool = True,
               workers: int = 1, nofile: tuple[int, int] | None = None,
               **kw: Any) -> SidecarProcess:
        port, admin_port = free_port(), free_port()
        config = write_config(tmp_path, port=port, admin_port=admin_port,
                              upstream_url=upstream_url or sink.url,
                              spool_path=tmp_path / "var" / "spool.db", **kw)
        proc = SidecarProcess(config, port, admin_port, pki, "/webhooks/whatsapp",
                              tmp_path / "sidecar.log", loop, workers, nofile)
        started.append(proc)
        return proc.start(wait=wait)

    try:
        yield _start
    finally:
        for proc in started:
            proc.stop()


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"8m"``) on ``folder`` for the test's duration; the test is
    skipped, saying why, where mounting is not allowed."""
    folder.mkdir(exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                        str(folder)], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {exc}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True,
                          timeout=10).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=10)


def fill(folder: Path) -> Path:
    """Fill ``folder``'s filesystem to the last page with one file, and return it."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:  # unbuffered: nothing left for close()
        for block in (b"\0" * 65536, b"\0" * 4096):  # big blocks, then the last pages
            try:
                while True:
                    fh.write(block)
            except OSError:
                pass
    return filler


T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float = 10.0, what: str = "the condition",
               log: Callable[[], str] | None = None) -> T:
    """Poll ``predicate`` with growing sleeps until it returns something truthy, and return
    that; past ``timeout_s`` fail naming ``what`` (with the end of ``log()``, if given)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f"\n--- sidecar log ---\n{log()[-4000:]}" if log is not None else ""
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{detail}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


# The shared-spool fixture lives with its helpers; imported here (after everything it
# imports from this module is defined) so every test module gets it without importing it.
from replica_group import replicas  # noqa: E402, F401
