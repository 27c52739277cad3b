"""Reading one YAML mapping into typed values, each error naming its key.

``Section`` reads the keys of one mapping (and refuses the ones nobody asked for);
``Reader`` interpolates ``${ENV_VAR}``, resolves relative paths and reads secret files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sidecar.config.files import SECRET_MAX_BYTES, read_file, why_unreadable
from sidecar.errors import ConfigError
from sidecar.secret import Secret

__all__ = ["Section", "Reader"]

_MAX_NUMBER = 2**53  # no setting needs more; keeps every value a safe int/float
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Section:
    """Reads one mapping, tracking which keys were used so unknown keys are errors."""

    def __init__(self, raw: Any, name: str, reader: Reader) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            if not name:  # the whole file
                raise ConfigError("the config file must be a YAML mapping of sections "
                                  "(listen:, tls:, meta:, ...)")
            raise ConfigError(f"config key '{name}': must be a mapping")
        self.raw = raw
        self.name = name
        self.reader = reader

    def key(self, k: str) -> str:
        return f"{self.name}.{k}" if self.name else k

    def has(self, k: str) -> bool:
        return k in self.raw and self.raw[k] is not None

    def check_unknown(self, known: set[str]) -> None:
        for k in self.raw:
            if k not in known:
                raise ConfigError(f"config key '{self.key(str(k))}': unknown key")

    def string(self, k: str, default: str | None = None, *, required: bool = False,
               choices: tuple[str, ...] | None = None) -> str:
        if not self.has(k):
            if required or default is None:
                raise ConfigError(f"config key '{self.key(k)}': required")
            return default
        value = self.reader.string(self.raw[k], self.key(k))
        if choices is not None and value not in choices:
            raise ConfigError(f"config key '{self.key(k)}': must be one of {', '.join(choices)}")
        return value

    def _scalar(self, k: str, parse: type[int] | type[float], what: str) -> int | float:
        """A YAML number, or a string (e.g. from ``${ENV}``) that parses as one."""
        value = self.raw[k]
        if isinstance(value, str):
            try:
                value = parse(self.reader.string(value, self.key(k)))
            except ValueError:
                raise ConfigError(f"config key '{self.key(k)}': must be {what}") from None
        allowed = (int,) if parse is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise ConfigError(f"config key '{self.key(k)}': must be {what}")
        if isinstance(value, float) and not math.isfinite(value) or abs(value) > _MAX_NUMBER:
            raise ConfigError(f"config key '{self.key(k)}': must be {what} below {_MAX_NUMBER}")
        return value

    def integer(self, k: str, default: int, *, minimum: int = 0) -> int:
        if not self.has(k):
            return default
        value = int(self._scalar(k, int, "an integer"))
        if value < minimum:
            raise ConfigError(f"config key '{self.key(k)}': must be >= {minimum}")
        return value

    def number(self, k: str, default: float, *, minimum: float = 0.0,
               exclusive: bool = False) -> float:
        if not self.has(k):
            return default
        value = float(self._scalar(k, float, "a number"))
        if value < minimum or (exclusive and value == minimum):
            op = ">" if exclusive else ">="
            raise ConfigError(f"config key '{self.key(k)}': must be {op} {minimum}")
        return float(value)

    def string_list(self, k: str, default: tuple[str, ...] | None = None) -> tuple[str, ...]:
        if not self.has(k):
            if default is None:
                raise ConfigError(f"config key '{self.key(k)}': required")
            return default
        value = self.raw[k]
        # A lone string is refused too (a wrong type: docs/configuration.md), not read as a list of one:
        # e.g. `app_secrets: "a, b"` would otherwise become one secret with a comma in it.
        if not isinstance(value, list):
            raise ConfigError(f"config key '{self.key(k)}': must be a list of strings "
                              "(write [\"...\"] even for one)")
        return tuple(self.reader.string(v, f"{self.key(k)}[{i}]") for i, v in enumerate(value))

    def path(self, k: str, default: str | None = None) -> Path:
        return self.reader.resolve(self.string(k, default))

    def path_list(self, k: str) -> tuple[Path, ...]:
        return tuple(self.reader.resolve(p) for p in self.string_list(k))

    def secret(self, k: str, *, required: bool) -> Secret | None:
        """``k`` or ``k_file`` (a path to a file holding the secret), never both."""
        file_key = f"{k}_file"
        if self.has(k) and self.has(file_key):
            raise ConfigError(f"config key '{self.key(k)}': give either {k} or {file_key}, not both")
        if self.has(file_key):
            return Secret(self.reader.read_secret_file(self.path(file_key), self.key(file_key)))
        if self.has(k):
            value = self.string(k)
            if not value:
                raise ConfigError(f"config key '{self.key(k)}': must not be empty")
            return Secret(value)
        if required:
            raise ConfigError(f"config key '{self.key(k)}': required (or {file_key})")
        return None

    def secret_list(self, k: str, file_key: str) -> tuple[Secret, ...]:
        if self.has(k) and self.has(file_key):
            raise ConfigError(f"config key '{self.key(k)}': give either {k} or {file_key}, not both")
        if self.has(file_key):
            paths = self.path_list(file_key)
            values = [self.reader.read_secret_file(p, f"{self.key(file_key)}[{i}]")
                      for i, p in enumerate(paths)]
        else:
            values = list(self.string_list(k))
            for i, v in enumerate(values):
                if not v:
                    raise ConfigError(f"config key '{self.key(k)}[{i}]': must not be empty")
        if not values:
            raise ConfigError(f"config key '{self.key(k)}': at least one app secret is required")
        return tuple(Secret(v) for v in values)

    def section(self, k: str) -> Section:
        return Section(self.raw.get(k), self.key(k), self.reader)


class Reader:
    def __init__(self, base_dir: Path, env: Mapping[str, str]) -> None:
        self.base_dir = base_dir
        self.env = env

    def string(self, value: Any, key: str) -> str:
        if isinstance(value, (int, float)):  # bool too
            # YAML 1.1 reads 012345 as octal 5349, 0x1F as 31, 1:30 as 90, 1.10 as 1.1:
            # taken as the text, a secret or a host would silently not be what was typed.
            raise ConfigError(f"config key '{key}': must be a string; YAML read "
                              f"{type(value).__name__} here: put the value in quotes")
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': must be a string")
        text = value

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.env:
                raise ConfigError(f"config key '{key}': environment variable {name} is not set")
            return self.env[name]

        return _ENV_REF.sub(substitute, text)

    def resolve(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def read_secret_file(self, path: Path, key: str) -> str:
        try:
            value = read_file(path, SECRET_MAX_BYTES).decode("utf-8")
        except OSError as exc:
            raise ConfigError(f"config key '{key}': cannot read file {path} "
                              f"({why_unreadable(exc)})") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config key '{key}': cannot read file {path} (not UTF-8)"
                              ) from exc
        value = value.rstrip("\r\n")
        if not value:
            raise ConfigError(f"config key '{key}': file {path} is empty")
        return value
