"""The one way the sidecar reads a file the config names (the config itself, secret
files, certificates, keys and CAs): a regular file (symlinks followed), of bounded size.

A FIFO given by mistake would block the reader until something writes to it (a
``config check`` that never ends, a reload thread that never returns), and a device such
as ``/dev/zero`` would be read until memory runs out; both are refused at once, without
a blocking open, as is a file larger than the caller's bound.  (So are ``/dev/stdin`` and
a shell's ``<(…)``: a config or secret is a file.)"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["read_file", "why_unreadable", "CONFIG_MAX_BYTES", "SECRET_MAX_BYTES",
           "PEM_MAX_BYTES"]

CONFIG_MAX_BYTES = 1 << 20  # a config file: far more than any real one
SECRET_MAX_BYTES = 64 << 10  # a secret file (a token, a key, a URL)
PEM_MAX_BYTES = 16 << 20  # a PEM bundle (a system CA bundle is ~200 KB)


def read_file(path: Path, max_bytes: int) -> bytes:
    """The content of ``path``; ``OSError`` (``strerror`` says why) when it cannot be
    read, is not a regular file, or is larger than ``max_bytes``."""
    _require_regular(os.stat(path).st_mode, path)  # a device is never even opened
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        _require_regular(os.fstat(fd).st_mode, path)  # what was opened, if it was swapped
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(1 << 16, max_bytes + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def _require_regular(mode: int, path: Path) -> None:
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))


def why_unreadable(exc: OSError) -> str:
    """The short reason an error message gives for ``exc`` (``not a regular file``)."""
    return exc.strerror or type(exc).__name__
