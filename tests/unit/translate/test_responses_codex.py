"""Second turns Codex CLI 0.171.0 really sent (captured for docs/design/responses-door.md
§7 Q1; long texts cut): its prompt, the reasoning and shell call the server answered,
the command's output. As `codex-test`, a model name Codex does not know, and as
`gpt-5.5`, one it does (a `custom` apply_patch, `tool_search`, a reasoning effort). The
Responses dialect reads both, so `make test` keeps Codex's shapes without npm
(`make test-agents` runs Codex itself)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from google.protobuf.json_format import MessageToDict

from server.translate.responses import inbound

CAPTURED = Path(__file__).parent / "codex"


@pytest.mark.parametrize("model", ["codex-test", "gpt-5.5"])
def test_a_codex_turn_reads_as_chat_messages(model: str) -> None:
    body = orjson.loads((CAPTURED / f"turn2-{model}.json").read_bytes())
    request = inbound.parse_chat(body)
    out = [MessageToDict(m) for m in request.messages]
    # no `instructions`: Codex's prompt is its first developer message
    assert [m["role"] for m in out] == ["system", "system", "user", "user", "assistant", "tool"]
    assert "Codex" in out[0]["content"][:60]
    assistant, tool = out[-2:]
    # the reasoning item comes back with its text (and `encrypted_content: null`)
    assert assistant["reasoningContent"] == "think"
    [call] = assistant["toolCalls"]
    assert (call["id"], call["function"]["name"]) == ("call_1", "exec_command")
    assert tool["toolCallId"] == "call_1"
    assert tool["content"].endswith("Output:\nhello-from-codex\n")
    assert "exec_command" in {t.function.name for t in request.tools}
    assert request.stream
    # it includes `reasoning.encrypted_content` only, which is always there: not named
    assert body["include"] == ["reasoning.encrypted_content"]
    assert "include" not in inbound.unread(body)


def test_codex_client_metadata_is_named_unread_and_never_sent_upstream() -> None:
    """It carries Codex's installation id, and OpenAI's chat API has no such field."""
    body = orjson.loads((CAPTURED / "turn2-codex-test.json").read_bytes())
    assert body.get("client_metadata")
    request = inbound.parse_chat(body)
    assert "client_metadata" not in orjson.loads(request.extra_body_json or "{}")
    assert "client_metadata" in inbound.unread(body)
