"""clients/typescript's Node tools (buf, node_modules), which `make test` installs."""

from __future__ import annotations

from pathlib import Path

import pytest

__all__ = ["TS_DIR", "node_tool"]

TS_DIR = Path(__file__).parent.parent / "clients" / "typescript"


def node_tool(name: str) -> Path:
    """The path of `name` in clients/typescript/node_modules/.bin; fails the test, saying
    how to install it, when `make` has not."""
    path = TS_DIR / "node_modules" / ".bin" / name
    if not path.exists():
        pytest.fail(f"no {path}: `make test` (or `make codegen`) installs clients/typescript")
    return path
