"""Write a local config, start a real ``sidecar serve`` on it, wait until it is ready,
stop it by its PID.

One way to do it, for ``sidecar demo`` and for the integration tests: free ports on
127.0.0.1, one config template (``write_config``), the process started as
``python -m sidecar serve -c FILE``, readiness polled on ``/readyz`` with growing sleeps
and a deadline (never a fixed sleep), and a stop that sends SIGTERM, waits, and kills
only if the drain does not end in time.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx

from sidecar.config import META_CLIENT_NAME

__all__ = ["free_port", "write_config", "ServeProcess", "NotReady"]


class NotReady(RuntimeError):
    """The process exited, or did not become ready before the deadline."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(folder: Path, *, port: int, admin_port: int, upstream_url: str,
                 app_secrets: Sequence[str], verify_token: str, signing_secret: str,
                 client_ca: str = "certs/ca.pem", spool_path: Path | str = "var/spool.db",
                 mode: str = "spool", client_auth: str = "required",
                 backoff_initial_s: float = 1.0, logging: str = "{level: info, format: json}",
                 tls_extra: str = "", upstream_extra: str = "", delivery_extra: str = "",
                 extra: str = "") -> Path:
    """``folder/sidecar.yaml`` for a sidecar on 127.0.0.1 with the server pair in
    ``folder/certs/server.{pem,key}``, and return its path.  The ``*_extra`` strings hold
    more keys of their section, one ``key: value`` a line (a second block of a section
    would replace the first); ``extra`` is appended at the top level."""
    config = folder / "sidecar.yaml"
    secrets = ", ".join(f'"{s}"' for s in app_secrets)
    config.write_text(f"""\
listen: {{host: 127.0.0.1, port: {port}, path: /webhooks/whatsapp}}
tls:
  cert_file: certs/server.pem
  key_file: certs/server.key
  client_ca_files: [{client_ca}]
  allowed_client_names: [{META_CLIENT_NAME}]
  client_auth: {client_auth}
{_indent(tls_extra)}meta:
  app_secrets: [{secrets}]
  verify_token: "{verify_token}"
upstream:
  url: {upstream_url}
  signing_secret: "{signing_secret}"
{_indent(upstream_extra)}delivery:
  mode: {mode}
  spool_path: {spool_path}
  backoff_initial_s: {backoff_initial_s}
{_indent(delivery_extra)}admin: {{host: 127.0.0.1, port: {admin_port}}}
logging: {logging}
{extra}""", encoding="utf-8")
    return config


def _indent(lines: str) -> str:
    return "".join(f"  {line.strip()}\n" for line in lines.splitlines() if line.strip())


class ServeProcess:
    def __init__(self, config_path: Path, *, admin_port: int, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, output: IO[bytes] | None = None,
                 nofile: tuple[int, int] | None = None) -> None:
        """``args``: more ``serve`` flags (``--workers 2``); ``output``: where the process's
        stdout and stderr go (default: inherited); ``nofile``: the (soft, hard)
        ``RLIMIT_NOFILE`` to start it with (default: this process's)."""
        self.config_path = config_path
        self.admin_port = admin_port
        self.args = list(args)
        self.env = dict(os.environ if env is None else env)
        self.output = output
        self.nofile = nofile
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> ServeProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "-c", str(self.config_path), *self.args],
            stdout=self.output, stderr=subprocess.STDOUT if self.output else None, env=self.env,
            preexec_fn=self._set_limits if self.nofile is not None else None)
        return self

    def _set_limits(self) -> None:  # in the child, before exec
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, self.nofile)

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        assert self.proc is not None, "not started"
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NotReady(f"the sidecar exited with code {self.proc.returncode}")
            try:
                if httpx.get(self.admin_url + "/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(delay)
            delay = min(delay * 2, 0.3)
        raise NotReady(f"the sidecar was not ready within {timeout_s:g} s")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        """Signal, wait up to ``timeout_s``, then kill; the exit code (0 if never started)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)
