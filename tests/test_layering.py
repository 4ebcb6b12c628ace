"""The import layers hold: a leaf of shared types, the parts beside each other, the core
over them, the doors over the core (README, Architecture). Read from the source, so a
cycle fails here by name instead of at some later import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LEAF = ("server.chunks", "server.context", "server.errors", "server.messages")
PARTS = (
    "server.policy",
    "server.usage",
    "server.providers",
    "server.store",
    "server.translate",
    "server.telemetry",
)
DOORS = ("http_bridge", "server.grpc_door")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, absolute and relative alike."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = {
    module_name(path): imports(path)
    for folder in ("server", "http_bridge")
    for path in sorted((ROOT / folder).rglob("*.py"))
}


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def offending(module: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(name for name in MODULES[module] if within(name, forbidden))


@pytest.mark.parametrize("module", [m for m in MODULES if within(m, LEAF)])
def test_the_leaf_imports_nothing_of_the_gateway(module: str) -> None:
    assert offending(module, ("server", "http_bridge")) == []


@pytest.mark.parametrize("module", [m for m in MODULES if within(m, PARTS)])
def test_the_parts_never_import_the_core_or_a_door(module: str) -> None:
    assert offending(module, ("server.core", "server.lifecycle", *DOORS)) == []


@pytest.mark.parametrize("module", [m for m in MODULES if within(m, ("server.core",))])
def test_the_core_knows_no_door_and_no_transport(module: str) -> None:
    transports = ("grpc", "fastapi", "starlette", "uvicorn", "aiohttp")
    assert offending(module, (*DOORS, "server.lifecycle", *transports)) == []


def test_every_module_is_checked() -> None:
    assert {"server.context", "server.core.dataplane", "server.policy", "http_bridge.app"} <= set(
        MODULES
    )
