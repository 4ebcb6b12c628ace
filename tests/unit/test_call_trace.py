"""The trace owns its fields: each is written by one of its methods, read by anyone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from server.context import CallContext, CallTrace

ROOT = Path(__file__).resolve().parents[2]
FIELDS = frozenset(CallTrace.__slots__)


def _writes_to_trace(tree: ast.AST) -> list[int]:
    """Lines that assign a trace field from outside: `<...trace>.<field> = ...`."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        for target in targets:
            if not isinstance(target, ast.Attribute) or target.attr not in FIELDS:
                continue
            owner = target.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if "trace" in name:
                lines.append(node.lineno)
    return lines


def test_only_the_trace_writes_its_fields() -> None:
    found = []
    for folder in ("server", "http_bridge"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "server" / "context.py":
                continue
            for line in _writes_to_trace(ast.parse(path.read_text(), str(path))):
                found.append(f"{path.relative_to(ROOT)}:{line}")
    assert not found, f"assign a trace field through a CallTrace method instead: {found}"


def test_the_check_sees_an_assignment() -> None:
    tree = ast.parse("ctx.trace.model = 'x'\nself._trace.error_status += 1\ntrace.other = 1\n")
    assert _writes_to_trace(tree) == [1, 2]


def test_an_attempt_starts_from_what_the_door_left_out() -> None:
    trace = CallTrace()
    trace.door_left_out("a")
    trace.upstream_left_out("b")
    assert trace.ignored_fields == "a,b"
    trace.attempting("p2", "openai")
    assert (trace.ignored_fields, trace.provider, trace.provider_kind) == ("a", "p2", "openai")
    trace.upstream_left_out(None)
    assert trace.ignored_fields == "a"


def test_an_upstream_alone_names_what_it_left_out() -> None:
    trace = CallTrace()
    trace.upstream_left_out("b")
    assert trace.ignored_fields == "b"
    trace.attempting("p", "mock")
    assert trace.ignored_fields is None


def test_a_first_chunk_says_the_upstream_time_and_the_end_keeps_it() -> None:
    trace = CallTrace()
    trace.answered("up-model", 5.0, 0.25)
    trace.counted(3, 4, 9.0)
    assert (trace.upstream_model, trace.first_chunk_at, trace.upstream_s) == ("up-model", 5.0, 0.25)
    assert (trace.prompt_tokens, trace.completion_tokens) == (3, 4)
    unary = CallTrace()
    unary.answered("m")
    unary.counted(1, 2, 0.5)
    assert (unary.first_chunk_at, unary.upstream_s) == (None, 0.5)


def test_the_context_is_fixed_and_its_trace_filled_in() -> None:
    ctx = CallContext(request_id="r", protocol="grpc")
    ctx.trace.add_headers([("x-ratelimit-limit-requests", "10")])
    assert ctx.response_headers == [("x-ratelimit-limit-requests", "10")]
    assert ctx.response_headers is ctx.trace.response_headers
    with pytest.raises(AttributeError):  # a context's facts are fixed at admission
        ctx.request_id = "other"  # type: ignore[misc]
