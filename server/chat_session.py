"""`tandem chat`: one answer to a prompt, or an interactive session.

The session keeps the conversation and sends all of it each turn. Ctrl-C
while an answer streams stops that answer, not the session: the call is
cancelled (the gateway then cancels upstream), and what had arrived stays in
the conversation as the assistant's turn, as it stays on the screen (nothing
arrived: the question is dropped too, so that no two user turns follow each
other). A turn that fails is one line on stderr and is dropped from the
conversation; the session goes on. `/model NAME` switches the model for the
next turns (the conversation stays), `/exit` or EOF (Ctrl-D) leaves with 0.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TextIO

from server.chat_doors import ChatError, Door, Message

__all__ = ["ChatSession", "answer_once"]

PROMPT = "> "
HELP = "/model NAME switches model, /exit or Ctrl-D leaves, Ctrl-C stops an answer"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def answer_once(door: Door, prompt: str, model: str, out: TextIO, err: TextIO) -> int:
    """Stream the answer to one prompt: 0, or 2 with the error's line on `err` (130 on
    Ctrl-C, as a shell reports SIGINT)."""
    try:
        for text in door.stream([{"role": "user", "content": prompt}], model):
            out.write(text)
            out.flush()
    except KeyboardInterrupt:
        out.write("\n")
        return 130
    except ChatError as exc:
        out.write("\n")
        out.flush()
        err.write(f"tandem: {_one_line(str(exc))}\n")
        return 2
    out.write("\n")
    return 0


class ChatSession:
    """The interactive loop over one door; `run()` returns the exit code."""

    def __init__(
        self,
        door: Door,
        model: str,
        *,
        where: str,
        stdin: TextIO = sys.stdin,
        out: TextIO = sys.stdout,
        err: TextIO = sys.stderr,
    ) -> None:
        self.door = door
        self.model = model
        self.history: list[Message] = []
        self._where = where
        self._stdin = stdin
        self._out = out
        self._err = err
        self._tty = stdin.isatty()
        self._commands: dict[str, Callable[[str], bool]] = {
            "/model": self._switch_model,
            "/exit": lambda _: True,
        }

    def run(self) -> int:
        if self._tty:
            with suppress(ImportError):  # not on every platform
                import readline  # noqa: F401  (line editing and recall for input())
            self._note(f"tandem chat: {self._where}, model {self._model_name()}; {HELP}")
        while True:
            try:
                line = self._read()
            except EOFError:
                if self._tty:
                    self._out.write("\n")
                return 0
            except KeyboardInterrupt:  # at the prompt: a fresh prompt, as a shell does
                self._out.write("\n")
                continue
            except UnicodeDecodeError:
                self._error("expected UTF-8 text")
                continue
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                name, _, argument = line.partition(" ")
                command = self._commands.get(name)
                if command is None:
                    self._error(f"unknown command {name}: {HELP}")
                elif command(argument.strip()):
                    return 0
                continue
            try:
                self.turn(line)
            except KeyboardInterrupt:  # a Ctrl-C between the answer's pieces and its end
                self._out.write("\n")
                if self.history and self.history[-1]["role"] == "user":
                    self.history.pop()  # no answer kept: the question goes too

    def _read(self) -> str:
        if self._tty and self._stdin is sys.stdin:
            return input(PROMPT)  # readline's editing when it is loaded
        if self._tty:
            self._out.write(PROMPT)
            self._out.flush()
        line = self._stdin.readline()
        if not line:
            raise EOFError
        return line

    def turn(self, text: str) -> None:
        """Send the conversation with `text` and stream the answer."""
        self.history.append({"role": "user", "content": text})
        pieces: list[str] = []
        answer = self.door.stream(self.history, self.model)
        try:
            for piece in answer:
                pieces.append(piece)
                self._out.write(piece)
                self._out.flush()
        except KeyboardInterrupt:
            with _sigint_ignored():  # the cancel runs to its end
                answer.close()
                self._out.write("\n")
                self._note("(stopped)")
            if pieces:
                self.history.append({"role": "assistant", "content": "".join(pieces)})
            else:
                self.history.pop()
            return
        except ChatError as exc:
            if pieces:
                self._out.write("\n")
            self._error(str(exc))
            self.history.pop()
            return
        self._out.write("\n")
        self._out.flush()
        self.history.append({"role": "assistant", "content": "".join(pieces)})

    def _switch_model(self, name: str) -> bool:
        if name:
            self.model = name
        self._note(f"model {self._model_name()}")
        return False

    def _model_name(self) -> str:
        return self.model or "(the key's tier default)"

    def _note(self, text: str) -> None:
        self._out.flush()
        self._err.write(text + "\n")
        self._err.flush()

    def _error(self, text: str) -> None:
        self._note(f"tandem: {_one_line(text)}")


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ctrl-C is ignored inside (the main thread's, where signals are handled)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
