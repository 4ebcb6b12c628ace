"""What the README promises, run as written against a live server; `tandem chat`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from tests.fake_upstream import FakeUpstream
from tests.servers import TandemProcess, run_cli

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


@pytest.mark.parametrize(
    ("before_code", "before_output"),
    [
        ("`AsyncTandem` is the same with `await`", "It prints the answer, then the models"),
        ("Failures raise typed exceptions", "It prints the error, then its type"),
    ],
)
def test_readme_client_examples_print_what_they_say(
    tandem: Callable[..., TandemProcess], tmp_path: Path, before_code: str, before_output: str
) -> None:
    server = tandem()
    code = readme_block("python", before_code)
    assert "127.0.0.1:50051" in code
    script = tmp_path / "client_example.py"
    script.write_text(code.replace("127.0.0.1:50051", server.grpc))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout == readme_block("", before_output)


def test_readme_client_admin_example_runs(
    tandem: Callable[..., TandemProcess], tmp_path: Path
) -> None:
    admin_key = "readme-admin-key-0123456789abcdef"
    config = 'auth: {admin_keys: ["${TANDEM_ADMIN_KEY}"]}\nusage: {store: "sqlite:///admin.db"}\n'
    server = tandem(config, env={"TANDEM_ADMIN_KEY": admin_key})
    code = readme_block("python", "The admin calls take an admin key")
    script = tmp_path / "admin_example.py"
    script.write_text(code.replace("127.0.0.1:50051", server.grpc))
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, "TANDEM_ADMIN_KEY": admin_key},
    )
    created, spent = done.stdout.splitlines()
    key_id, secret = created.split()  # two words: both there
    assert secret != key_id
    assert spent == "0"


def test_tandem_chat_streams_the_answer_over_grpc(
    tandem: Callable[..., TandemProcess], tmp_path: Path
) -> None:
    server = tandem()
    done = run_cli("chat", "--grpc", server.grpc, "stream this please", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, "stream this please\n")


def test_tandem_chat_reports_an_error_status(
    tandem: Callable[..., TandemProcess], tmp_path: Path
) -> None:
    server = tandem()
    done = run_cli("chat", "--grpc", server.grpc, "--model", "ghost", "hi", cwd=tmp_path)
    assert done.returncode == 2
    assert "NOT_FOUND: model 'ghost' not found" in done.stderr


def test_readme_curl_commands_work_as_written(
    tandem: Callable[..., TandemProcess], tmp_path: Path
) -> None:
    server = tandem()
    commands = readme_block("sh", "## Use it over HTTP").replace("127.0.0.1:8080", server.http)
    script = tmp_path / "curl.sh"
    script.write_text("set -e\n" + commands)
    done = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=30, check=True
    )
    completion, _, events = done.stdout.partition("}data: ")
    assert '"content":"Hello over HTTP"' in completion
    assert events.endswith("data: [DONE]\n\n")
    assert ("data: " + events).count("data: ") == 4  # 3 words, then [DONE]


@pytest.mark.parametrize(
    ("sdk", "before_code", "before_output"),
    [
        (
            "openai",
            "The official `openai` SDK works unchanged",
            "It prints the answer twice, whole and streamed:",
        ),
        ("anthropic", "official `anthropic` SDK works unchanged", "It prints the message twice"),
    ],
)
def test_readme_sdk_example_prints_the_answer_twice(
    tandem: Callable[..., TandemProcess],
    tmp_path: Path,
    sdk: str,
    before_code: str,
    before_output: str,
) -> None:
    server = tandem()
    code = readme_block("python", before_code)
    script = tmp_path / f"{sdk}_example.py"
    script.write_text(code.replace("127.0.0.1:8080", server.http))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout == readme_block("", before_output)


# The recipes' upstreams, each pointed at the fake upstream for the test.
RECIPES = {
    "vllm": "http://127.0.0.1:8000/v1",
    "ollama": "http://127.0.0.1:11434",
    "openai": "https://api.openai.com/v1",
}


def recipes() -> list[str]:
    text = README.read_text()
    start = text.index("## Put Tandem in front of your models")
    section = text[start : text.index("\n## ", start + 1)]
    return re.findall(r"```yaml\n(.*?)```", section, re.S)


@pytest.mark.parametrize(("index", "provider"), list(enumerate(RECIPES)))
def test_readme_recipes_serve_their_models(
    tandem: Callable[..., TandemProcess], fake: FakeUpstream, index: int, provider: str
) -> None:
    """Each recipe, as written but for its upstream's address, serves its models: the
    first one by default, under its upstream name, with the key from the environment."""
    found = recipes()
    assert len(found) == len(RECIPES)
    recipe = found[index]
    address = RECIPES[provider]
    assert recipe.count(f'base_url: "{address}"') == 1
    fake_address = fake.root if provider == "ollama" else fake.base_url
    server = tandem(recipe.replace(address, fake_address), env={"OPENAI_API_KEY": "sk-recipe"})
    models = yaml.safe_load(recipe)["models"]
    assert [p["name"] for p in yaml.safe_load(recipe)["providers"]] == [provider]
    fake.reset()
    for model in (None, *(m["name"] for m in models)):
        body = {"messages": [{"role": "user", "content": "hello recipe"}]}
        answer = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json=body if model is None else {**body, "model": model},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "hello recipe"
    upstream_names = [m.get("upstream", m["name"]) for m in models]
    assert [r.body["model"] for r in fake.requests] == [upstream_names[0], *upstream_names]
    if provider == "openai":
        assert {r.headers.get("Authorization") for r in fake.requests} == {"Bearer sk-recipe"}
