"""Buf guards the tandem.v1 protos (protos/buf.yaml): a change that breaks generated
code against the image of the last release (protos/released.binpb) fails the build, and
so does a lint rule broken outside STYLE.md's exemptions. Each case edits a copy of
protos/ in a tmp dir; `make lint-protos` runs the same checks on the protos themselves."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.node_tools import node_tool

PROTOS = Path(__file__).parent.parent / "protos"
RELEASED = PROTOS / "released.binpb"
TOP_K = "  optional int32 top_k = 22;\n"  # a field of ChatCompletionRequest


def copy_of_protos(tmp_path: Path, file: str = "", old: str = "", new: str = "") -> Path:
    """protos/ copied into `tmp_path`, `old` (found exactly once) replaced by `new` in
    tandem/v1/`file`."""
    protos = tmp_path / "protos"
    shutil.copytree(PROTOS, protos)
    if file:
        path = protos / "tandem" / "v1" / file
        text = path.read_text()
        assert text.count(old) == 1, old
        path.write_text(text.replace(old, new))
    return protos


def buf(*args: str | Path) -> tuple[int, list[dict[str, object]]]:
    """buf's exit code and the problems it reports (its JSON lines)."""
    done = subprocess.run(
        [node_tool("buf"), *map(str, args), "--error-format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    problems = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert done.returncode == 0 or problems, done.stderr  # a failure names its problems
    return done.returncode, problems


def breaking(protos: Path) -> tuple[int, list[dict[str, object]]]:
    return buf("breaking", protos, "--against", RELEASED)


def rules(problems: list[dict[str, object]]) -> set[object]:
    return {problem["type"] for problem in problems}


def test_the_protos_as_they_are_pass_lint_and_the_breaking_check(tmp_path: Path) -> None:
    protos = copy_of_protos(tmp_path)
    assert buf("lint", protos) == (0, [])
    assert breaking(protos) == (0, [])


def test_a_renumbered_field_fails_the_breaking_check(tmp_path: Path) -> None:
    protos = copy_of_protos(tmp_path, "chat.proto", TOP_K, TOP_K.replace("22", "30"))
    code, problems = breaking(protos)
    assert code != 0
    assert "FIELD_NO_DELETE" in rules(problems), problems
    assert any('"22" with name "top_k"' in str(p["message"]) for p in problems), problems


def test_a_retyped_field_fails_the_breaking_check(tmp_path: Path) -> None:
    protos = copy_of_protos(tmp_path, "chat.proto", TOP_K, TOP_K.replace("int32", "int64"))
    code, problems = breaking(protos)
    assert code != 0
    assert rules(problems) == {"FIELD_SAME_TYPE"}, problems
    assert 'from "int32" to "int64"' in str(problems[0]["message"]), problems


def test_an_added_field_is_not_breaking(tmp_path: Path) -> None:
    added = TOP_K + "  // A field the last release lacked.\n  optional int32 top_j = 99;\n"
    protos = copy_of_protos(tmp_path, "chat.proto", TOP_K, added)
    assert buf("lint", protos) == (0, [])
    assert breaking(protos) == (0, [])


def test_lint_exempts_only_the_files_style_names(tmp_path: Path) -> None:
    """usage.proto is not exempt: an RPC there that reuses another's messages fails."""
    rpc = "  rpc GetUsage(GetUsageRequest) returns (GetUsageResponse);\n"
    reuse = rpc + "  // Again.\n  rpc GetAgain(GetUsageRequest) returns (GetUsageResponse);\n"
    protos = copy_of_protos(tmp_path, "usage.proto", rpc, reuse)
    code, problems = buf("lint", protos)
    assert code != 0
    assert rules(problems) == {
        "RPC_REQUEST_STANDARD_NAME",
        "RPC_RESPONSE_STANDARD_NAME",
        "RPC_REQUEST_RESPONSE_UNIQUE",
    }, problems
