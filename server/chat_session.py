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

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TextIO

from server.chat_doors import ChatError, Door, Message

__all__ = ["ChatSession", "answer_once"]

PROMPT = "> "
POKE_EVERY_S = 0.05  # after a Ctrl-C: how often, and how long, the main thread is woken
POKE_FOR_S = 1.0
HELP = "/model NAME switches model, /exit or Ctrl-D leaves, Ctrl-C stops an answer"


@contextmanager
def _interrupts_reach_the_main_thread() -> Iterator[None]:
    """Ctrl-C at the prompt gives a fresh prompt at once. Python runs its SIGINT handler
    in the main thread, but readline's wait for a key checks for it only when the
    signal interrupts that wait: not when gRPC's own threads take the signal, nor when
    it lands between the prompt being drawn and the wait starting; the prompt would then
    hang until Enter. Python writes each signal's number to its wakeup fd: a watcher
    reads them and, for SIGINT, sends the main thread SIGUSR1 (a no-op) every
    POKE_EVERY_S for POKE_FOR_S, whose interruption raises the pending
    KeyboardInterrupt."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    ):
        yield
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    main = threading.main_thread().ident
    assert main is not None

    closing = threading.Event()

    def forward() -> None:
        while data := os.read(read_end, 64):
            if signal.SIGINT in data:
                for _ in range(round(POKE_FOR_S / POKE_EVERY_S)):
                    if closing.is_set():
                        return
                    signal.pthread_kill(main, signal.SIGUSR1)
                    closing.wait(POKE_EVERY_S)

    previous_usr1 = signal.signal(signal.SIGUSR1, lambda number, frame: None)
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    watcher = threading.Thread(target=forward, name="sigint-forward", daemon=True)
    watcher.start()
    try:
        yield
    finally:  # no poke may outlive the no-op handler (SIGUSR1's default ends the process)
        signal.set_wakeup_fd(previous_fd)
        closing.set()
        os.close(write_end)  # the watcher reads the end and stops
        watcher.join()
        signal.signal(signal.SIGUSR1, previous_usr1)
        os.close(read_end)


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
        with _interrupts_reach_the_main_thread():
            return self._loop()

    def _loop(self) -> int:
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
