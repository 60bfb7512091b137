"""The picture reads top-down: the composition root (the command line, `vitalab up`, the single-service
runners) imports the services; the services import the contract; the contract imports nothing else of ours.
Checked on the source (AST): nothing is run."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

OURS = ("vitalab", "ingest", "api", "analytics", "gateway", "simulators")
SERVICES = ("ingest", "api", "analytics", "gateway", "simulators")
CONTRACT = ("vitalab.wire", "vitalab.db", "vitalab.settings", "vitalab.errors", "vitalab.logs")
ROOT = (
    "vitalab.cli",
    "vitalab.platform",
    "vitalab.runners",
    "vitalab.embedded",
    "vitalab.progress",
    "vitalab.failures",
    "vitalab.__main__",
    "vitalab.cli_keys",
    "vitalab.cli_conform",
    "vitalab.conform",
    "vitalab.cli_export",
    "vitalab.cli_participants",
    "vitalab.cli_admin",
)
LIBRARIES = ("vitalab.broker",)
"""Shared libraries that are neither contract nor root: they import only the contract and themselves (the
broker's account store serves the API, `vitalab up` and the deploy image alike)."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """The modules of ours that ``path`` imports (absolute names; at any depth, deferred ones included)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found |= {f"{base}.{alias.name}" for alias in node.names} | {base}
    return {name for name in found if name.split(".")[0] in OURS}


def modules(*packages: str) -> dict[str, set[str]]:
    return {
        module_name(path): imports(path) for package in packages for path in (REPO / package).rglob("*.py")
    }


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_every_module_of_the_vitalab_package_is_contract_root_or_library() -> None:
    assert {
        m for m in modules("vitalab") if not (within(m, CONTRACT + ROOT + LIBRARIES) or m == "vitalab")
    } == set()


def test_libraries_import_only_the_contract_and_themselves() -> None:
    breaches = {
        (m, dep)
        for m, deps in modules("vitalab").items()
        if within(m, LIBRARIES)
        for dep in deps
        if not within(dep, CONTRACT + LIBRARIES) and dep != "vitalab"
    }
    assert breaches == set()


def test_the_contract_imports_nothing_of_ours_outside_it() -> None:
    breaches = {
        (m, dep)
        for m, deps in modules("vitalab").items()
        if within(m, CONTRACT)
        for dep in deps
        if not within(dep, CONTRACT) and dep != "vitalab"
    }
    assert breaches == set()


def test_no_service_imports_the_composition_root() -> None:
    breaches = {(m, dep) for m, deps in modules(*SERVICES).items() for dep in deps if within(dep, ROOT)}
    assert breaches == set()


def test_the_root_is_what_wires_the_services_together() -> None:
    """Together the root's modules reach every service; the runners import none at module level (a command
    loads only what it runs: `vitalab api` neither the analytics nor the simulators)."""
    root = {m: deps for m, deps in modules("vitalab").items() if within(m, ROOT)}
    assert set(SERVICES) <= {dep.split(".")[0] for deps in root.values() for dep in deps}
    tree = ast.parse((REPO / "vitalab" / "runners.py").read_text())
    top_level = {
        node.module.split(".")[0]
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module is not None
    }
    assert top_level & set(SERVICES) == set()
