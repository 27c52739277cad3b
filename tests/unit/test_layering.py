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
    ("sidecar.tls", "sidecar.checks", "sidecar.delivery", "sidecar.spool", "sidecar.config"))
    or m in ("sidecar.normalize", "sidecar.events", "sidecar.clock")))
def test_core_modules_know_no_web_framework(module):
    assert not any(_imports(module, f) for f in ("starlette", "hypercorn", "uvicorn"))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_server_package_imports_the_http_server(module):
    """Hypercorn serves, from ``sidecar.server`` only; uvicorn is gone."""
    if not module.startswith("sidecar.server"):
        assert not _imports(module, "hypercorn")
    assert not _imports(module, "uvicorn") and not _imports(module, "httptools")


RUNTIME = sorted(m for m in MODULES if not m.startswith(("sidecar.cli", "sidecar.tools"))
                 and m != "sidecar.__main__")


@pytest.mark.parametrize("module", RUNTIME)
def test_the_runtime_never_imports_the_operator_tools(module):
    assert not _imports(module, "sidecar.tools")


def test_the_top_level_reads_as_the_data_path():
    """The package root holds the data path's modules and packages, and nothing else:
    operator tools live under ``sidecar.tools``, serving under ``sidecar.server``."""
    top = sorted(p.name for p in PACKAGE.iterdir()
                 if p.name != "__pycache__" and (p.suffix == ".py" or p.is_dir()))
    assert top == sorted([
        "__init__.py", "__main__.py", "errors.py", "secret.py", "clock.py", "config",
        "logs.py", "metrics.py", "tls", "checks", "events.py", "normalize.py", "spool",
        "delivery", "app", "graph.py", "server", "cli", "tools"])


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_a_grab_bag(path):
    """Small modules with one job each: none grows past ~450 lines."""
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 460


@pytest.mark.parametrize("module", sorted(MODULES))
def test_nothing_below_the_cli_imports_it(module):
    if not module.startswith("sidecar.cli") and module != "sidecar.__main__":
        assert not _imports(module, "sidecar.cli")


@pytest.mark.parametrize("module", ["sidecar.errors", "sidecar.secret", "sidecar.events"])
def test_leaf_modules_import_nothing_from_sidecar(module):
    assert not _imports(module, "sidecar")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("sidecar.spool")))
def test_the_spool_stores_and_knows_nothing_of_what_comes_after_or_before(module):
    """Storage is below the data path's other steps: replay gets its re-normalizer
    passed in, so no backend imports normalize, the checks, delivery or the server."""
    for above in ("sidecar.normalize", "sidecar.checks", "sidecar.delivery", "sidecar.app",
                  "sidecar.server", "sidecar.metrics"):
        assert not _imports(module, above), above


def test_identity_policy_knows_no_http():
    assert not any(_imports("sidecar.tls.identity", p) for p in ("starlette", "httpx", "sidecar.app"))
