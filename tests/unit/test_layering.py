"""The import rules of the layout (STYLE.md §2), checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sidecar"


def _modules() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        imports: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imports.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imports.add(node.module)
        found[name] = imports
    return found


MODULES = _modules()


def _imports(module: str, prefix: str) -> bool:
    return any(i == prefix or i.startswith(prefix + ".") for i in MODULES[module])


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(
    ("sidecar.tls", "sidecar.checks", "sidecar.delivery")) or m in (
    "sidecar.normalize", "sidecar.spool", "sidecar.events", "sidecar.config")))
def test_core_modules_know_no_web_framework(module):
    assert not _imports(module, "starlette") and not _imports(module, "uvicorn")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_listener_imports_the_http_server(module):
    if module != "sidecar.listener":
        assert not _imports(module, "uvicorn")
    assert not _imports(module, "hypercorn")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_nothing_below_the_cli_imports_it(module):
    if not module.startswith("sidecar.cli") and module != "sidecar.__main__":
        assert not _imports(module, "sidecar.cli")


@pytest.mark.parametrize("module", ["sidecar.errors", "sidecar.secret", "sidecar.events"])
def test_leaf_modules_import_nothing_from_sidecar(module):
    assert not _imports(module, "sidecar")


def test_identity_policy_knows_no_http():
    assert not any(_imports("sidecar.tls.identity", p) for p in ("starlette", "httpx", "sidecar.app"))
