"""What the README promises, run as written against a live server; `tandem chat`."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.servers import TandemProcess

README = Path(__file__).parent.parent / "README.md"


def readme_block(language: str, after: str) -> str:
    text = README.read_text()
    start = text.index(after)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(text, start)
    assert match is not None
    return match.group(1)


def test_readme_python_example_prints_the_answer_twice(
    tandem: Callable[..., TandemProcess], tmp_path: Path
) -> None:
    server = tandem()
    code = readme_block("python", "## Use it from Python")
    assert "127.0.0.1:50051" in code
    script = tmp_path / "example.py"
    script.write_text(code.replace("127.0.0.1:50051", server.grpc))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30, check=True
    )
    expected = readme_block("", "Save it as `example.py`")
    assert done.stdout == expected


def test_tandem_chat_streams_the_answer_over_grpc(tandem: Callable[..., TandemProcess]) -> None:
    server = tandem()
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "chat", "--grpc", server.grpc, "stream this please"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "stream this please\n")


def test_tandem_chat_reports_an_error_status(tandem: Callable[..., TandemProcess]) -> None:
    server = tandem()
    command = [sys.executable, "-m", "server.cli", "chat", "--grpc", server.grpc]
    done = subprocess.run(
        [*command, "--model", "ghost", "hi"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "NOT_FOUND: model 'ghost' not found" in done.stderr
