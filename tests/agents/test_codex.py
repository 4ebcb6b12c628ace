"""OpenAI's Codex CLI through the Responses door: `codex exec`, the binary `make
test-agents` installs (TANDEM_CODEX names it), runs non-interactively against a
Tandem whose model is an OpenAI-compatible chat upstream, so every turn takes the
translated path. The upstream answers a first run with text, and a second with a
reasoning text and a call of the shell tool Codex offered, then, once the command's
output comes back (with the reasoning, which Codex keeps), with text reporting it.
The shell run is made twice: as `codex-test`, a name Codex does not know (its
fallback metadata: function tools only, no reasoning effort), and as `gpt-5.5`, one
it does (a freeform `custom` apply_patch, `tool_search`, a reasoning effort and a
verbosity). Not part of `make test` (tests/conftest.py leaves this directory out):
it needs Codex from npm."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest

from tests.agents.chat_upstream import Answer, ChatUpstream, ToolCall
from tests.eventually import eventually
from tests.servers import TandemProcess, start_tandem, usage_records

CODEX = os.environ.get("TANDEM_CODEX", "")
if not CODEX:
    pytest.skip("needs Codex: run `make test-agents`", allow_module_level=True)

SECRET = "codex-agent-secret-0123456789abcdef"
ADMIN_KEY = "codex-agent-admin-key"
CONFIG = f"""
providers:
  - {{name: up, kind: openai, base_url: "%s", api_key: "sk-fake", max_retries: 0,
      send_reasoning: true}}
models:
  - {{name: codex-test, provider: up, upstream: fake-chat-model}}
  - {{name: gpt-5.5, provider: up, upstream: fake-chat-model}}
tiers:
  free: {{default_model: codex-test}}
auth: {{required: true, admin_keys: ["{ADMIN_KEY}"], jwt: {{secret: "{SECRET}"}}}}
usage: {{store: "sqlite:///usage.db", flush_interval_ms: 20}}
"""
# CODEX_HOME/config.toml; %s is Tandem's /v1. No sandbox: CI containers have no
# landlock. No retries, so a broken turn fails the run instead of repeating.
CODEX_CONFIG = """\
model = "codex-test"
model_provider = "tandem"
approval_policy = "never"
sandbox_mode = "danger-full-access"
check_for_update_on_startup = false

[analytics]
enabled = false

[model_providers.tandem]
name = "Tandem"
base_url = "%s"
wire_api = "responses"
env_key = "TANDEM_API_KEY"
request_max_retries = 0
stream_max_retries = 0
stream_idle_timeout_ms = 30000
"""
GREETING = "Hello from the fake upstream."
COMMAND = "echo hello-from-codex"
CALL_ID = "call_codex_1"
REASONING = "The user wants a command run: call the shell."
SHELLS = ("exec_command", "shell_command", "shell")  # Codex's shell tools, newest first


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content)
    return content or ""


def _shell_call(tools: list[Any]) -> ToolCall:
    """A call of the shell tool Codex offered, its arguments shaped by the tool's schema:
    `{"cmd": "..."}` (exec_command), `{"command": [...]}` (shell) or `{"command": "..."}`."""
    offered = {t["function"]["name"]: t["function"] for t in tools if t.get("type") == "function"}
    name = next(name for name in SHELLS if name in offered)
    properties = (offered[name].get("parameters") or {}).get("properties", {})
    if "cmd" in properties:
        arguments: dict[str, Any] = {"cmd": COMMAND}
    elif properties.get("command", {}).get("type") == "array":
        arguments = {"command": ["bash", "-lc", COMMAND]}
    else:
        arguments = {"command": COMMAND}
    return ToolCall(CALL_ID, name, orjson.dumps(arguments).decode(), REASONING)


def _agent(body: Any) -> Answer:
    """A tool's output is reported (its last line: Codex puts the exit code and wall
    time first); a request to run the command is a shell call; anything else is greeted."""
    last = body["messages"][-1]
    if last["role"] == "tool":
        return f"The command printed: {_text(last['content']).strip().splitlines()[-1]}"
    if last["role"] == "user" and COMMAND in _text(last["content"]):
        return _shell_call(body.get("tools") or [])
    return GREETING


@pytest.fixture(scope="module")
def upstream() -> Iterator[ChatUpstream]:
    with ChatUpstream(_agent) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(
    upstream: ChatUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TandemProcess]:
    process = start_tandem(tmp_path_factory.mktemp("tandem"), CONFIG % upstream.base_url)
    yield process
    assert process.terminate() == 0, process.stderr()


def codex_exec(
    gateway: TandemProcess,
    tmp_path: Path,
    caller: str,
    prompt: str,
    model: str = "codex-test",
    provider: str = "",
) -> tuple[str, str]:
    """`codex exec PROMPT` with a CODEX_HOME of its own, in an empty work directory, as
    `caller` (a JWT's `sub`, so the ledger's records of each run are its own), `provider`
    more lines of its provider's config: (its last message, its JSONL events); it must
    exit 0."""
    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / "config.toml").write_text(CODEX_CONFIG % f"{gateway.base_url}/v1" + provider)
    token = jwt.encode({"sub": caller, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEX_"))}
    env |= {"CODEX_HOME": str(home), "TANDEM_API_KEY": token}
    last = tmp_path / "last.txt"
    command = [CODEX, "exec", "--strict-config", "--ephemeral", "--skip-git-repo-check"]
    command += ["--json", "-m", model, "-C", str(work), "-o", str(last), prompt]
    done = subprocess.run(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{gateway.stderr()}"
    return last.read_text(), done.stdout


def test_codex_answers_with_text(
    gateway: TandemProcess, upstream: ChatUpstream, tmp_path: Path
) -> None:
    upstream.bodies.clear()
    last, _ = codex_exec(gateway, tmp_path, "codex-text", "Say hello.")
    assert last == GREETING
    [body] = upstream.bodies
    assert body["model"] == "fake-chat-model"
    assert body["stream"] is True
    assert "Say hello." in _text(body["messages"][-1]["content"])
    [record] = usage_records(gateway, 1, ADMIN_KEY, user="codex-text")
    assert (record["protocol"], record["status"]) == ("responses", "ok")


@pytest.mark.parametrize("model", ["codex-test", "gpt-5.5"])
def test_codex_runs_a_shell_command_and_reports(
    gateway: TandemProcess, upstream: ChatUpstream, tmp_path: Path, model: str
) -> None:
    upstream.bodies.clear()
    prompt = f"Run `{COMMAND}` and report what it printed."
    last, events = codex_exec(gateway, tmp_path, f"codex-shell-{model}", prompt, model)
    assert last == "The command printed: hello-from-codex"
    first, second = upstream.bodies
    call = _shell_call(first["tools"])  # the tool the fake called
    # the second turn holds the first's call and the command's output for it
    asked, answered = second["messages"][-2:]
    assert asked["role"] == "assistant"
    assert asked["reasoning_content"] == REASONING  # Codex kept the reasoning item
    assert [c["id"] for c in asked["tool_calls"]] == [CALL_ID]
    assert asked["tool_calls"][0]["function"]["name"] == call.name
    assert answered["role"] == "tool"
    assert answered["tool_call_id"] == CALL_ID
    assert "hello-from-codex" in _text(answered["content"])
    [ran] = [
        event["item"]
        for event in map(orjson.loads, events.splitlines())
        if event["type"] == "item.completed" and event["item"]["type"] == "command_execution"
    ]
    assert (ran["exit_code"], ran["aggregated_output"].strip()) == (0, "hello-from-codex")
    records = usage_records(gateway, 2, ADMIN_KEY, user=f"codex-shell-{model}")
    assert {(r["protocol"], r["model"], r["status"]) for r in records} == {
        ("responses", model, "ok")
    }


def test_codex_falls_back_from_a_websocket_at_once(
    gateway: TandemProcess, upstream: ChatUpstream, tmp_path: Path
) -> None:
    """With WebSockets on, Codex first asks `GET /v1/responses` for an upgrade: the 426
    sends it to SSE at once, without the retries any other refusal costs."""
    upstream.bodies.clear()
    last, _ = codex_exec(
        gateway, tmp_path, "codex-ws", "Say hello.", provider="supports_websockets = true\n"
    )
    assert last == GREETING
    assert len(upstream.bodies) == 1

    def refused() -> list[Any]:
        lines = map(orjson.loads, gateway.stderr().splitlines())
        found = [r for r in lines if r.get("event") == "request" and r["status"] == 426]
        assert found
        return found

    [refusal] = eventually(refused, what="the upgrade's refusal in the access log")
    assert (refusal["route"], refusal["protocol"]) == ("/v1/responses", "responses")
