"""`tandem chat` with no prompt: an interactive session in a terminal, over gRPC (the
Python client) and the native HTTP door, against a live gateway whose `relay` model is
a fake upstream that records what it was sent."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.eventually import eventually
from tests.fake_upstream import FakeUpstream
from tests.servers import TandemProcess, run_cli
from tests.terminal import Terminal

CONFIG = """
providers:
  - {name: demo, kind: mock}
  - {name: up, kind: openai, base_url: "%(url)s", api_key: "%(key)s", max_retries: 0}
models:
  - {name: echo, provider: demo}
  - {name: relay, provider: up, upstream: relay-upstream}
tiers:
  free: {default_model: echo}
usage: {store: none}
"""
PROMPT = "> "


@pytest.fixture(params=["grpc", "http"])
def door(request: pytest.FixtureRequest, gateway: TandemProcess) -> list[str]:
    """The options that pick the door."""
    return ["--grpc", gateway.grpc] if request.param == "grpc" else ["--http", gateway.base_url]


@pytest.fixture
def chat(door: list[str], fake: FakeUpstream, tmp_path: Path) -> Iterator[Callable[..., Terminal]]:
    """`tandem chat` on the door with more options, in a terminal, the fake reset."""
    fake.reset()
    started: list[Terminal] = []

    def start(*options: str) -> Terminal:
        command = [sys.executable, "-m", "server.cli", "chat", *door, *options]
        started.append(Terminal(command, cwd=tmp_path))
        started[-1].expect("Ctrl-C stops an answer")
        started[-1].expect(PROMPT)
        return started[-1]

    yield start
    for terminal in started:
        terminal.__exit__()


def sent(fake: FakeUpstream) -> list[list[tuple[str, str]]]:
    """The conversations the upstream was sent, as (role, content)."""
    return [[(m["role"], m["content"]) for m in r.body["messages"]] for r in fake.requests]


def test_two_turns_keep_the_conversation_and_eof_leaves(
    chat: Callable[..., Terminal], fake: FakeUpstream
) -> None:
    terminal = chat("--model", "relay")
    terminal.type("first question\n")
    assert terminal.expect(PROMPT) == "first question\nfirst question\n"  # typed, answered
    terminal.type("and a second\n")
    assert terminal.expect(PROMPT) == "and a second\nand a second\n"
    terminal.type("never sent\x03")  # Ctrl-C at the prompt: a fresh prompt
    terminal.expect(PROMPT)
    terminal.type("\x04")
    assert terminal.exit_code() == 0
    assert sent(fake) == [
        [("user", "first question")],
        [("user", "first question"), ("assistant", "first question"), ("user", "and a second")],
    ]


def test_ctrl_c_stops_the_answer_not_the_session(
    chat: Callable[..., Terminal], fake: FakeUpstream
) -> None:
    terminal = chat("--model", "relay")
    fake.reset("drip")  # a word every 100 ms, for 10 s
    terminal.type("count for me\n")
    terminal.expect("count for me\n")
    terminal.expect("w2 ")
    terminal.type("\x03")
    shown = "w0 w1 w2 " + terminal.expect("(stopped)")
    terminal.expect(PROMPT)
    eventually(lambda: fake.gone, what="the upstream call cancelled")
    terminal.type("go on\n")
    assert terminal.expect(PROMPT) == "go on\ngo on\n"
    terminal.type("/exit\n")
    assert terminal.exit_code() == 0
    first, second = sent(fake)
    assert first == [("user", "count for me")]
    user, (role, partial), last = second
    assert (user, role, last) == (("user", "count for me"), "assistant", ("user", "go on"))
    assert partial.startswith("w0 w1 w2 ")
    assert "w99" not in partial
    assert shown.replace("^C", "").strip() == partial.strip()  # what was shown is kept


def test_model_switches_and_an_error_is_one_line(
    chat: Callable[..., Terminal], fake: FakeUpstream
) -> None:
    terminal = chat()  # the tier's default, echo: the mock
    terminal.type("hi\n")
    assert terminal.expect(PROMPT) == "hi\nhi\n"
    terminal.type("/model ghost\n")
    terminal.expect("model ghost\n")
    terminal.expect(PROMPT)
    terminal.type("lost\n")
    shown = terminal.expect(PROMPT)
    assert shown.startswith("lost\ntandem: "), shown
    assert shown.count("\n") == 2, shown
    assert "ghost" in shown
    terminal.type("/model relay\n")
    terminal.expect("model relay\n")
    terminal.expect(PROMPT)
    terminal.type("again\n")
    assert terminal.expect(PROMPT) == "again\nagain\n"
    terminal.type("/exit\n")
    assert terminal.exit_code() == 0
    # only the turn after `/model relay` went upstream; the failed turn was dropped
    assert sent(fake) == [[("user", "hi"), ("assistant", "hi"), ("user", "again")]]


def test_a_prompt_is_answered_once(door: list[str], tmp_path: Path) -> None:
    done = run_cli("chat", *door, "just this", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, "just this\n")
    done = run_cli("chat", *door, "--model", "ghost", "just this", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("tandem: ")
    assert done.stderr.count("\n") == 1
    assert "ghost" in done.stderr
