"""A command in a pseudo-terminal of its own, as a person at a keyboard runs it: what
it shows is read back as the screen, keys are typed into it (`\\x03` is Ctrl-C, which
the terminal turns into SIGINT for the command, `\\x04` Ctrl-D)."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

__all__ = ["Terminal"]

# The child makes the terminal its controlling one (it leads a new session), then runs
# the command: only then does Ctrl-C reach it as SIGINT. It also gives SIGINT back its
# default: a test run started as a background job (no job control, as CI may run it)
# ignores SIGINT, every process it starts inherits that through exec, and Python then
# never raises KeyboardInterrupt, as a person's terminal would. Done by exec, not
# preexec_fn, which is unsafe in a process with threads (the fake upstreams').
_TAKE_TERMINAL = (
    "import fcntl, os, signal, sys, termios; "
    "signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execv(sys.argv[1], sys.argv[1:])"
)
_ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[=>])")


class Terminal:
    def __init__(
        self, command: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None
    ) -> None:
        primary, secondary = os.openpty()
        environ = {k: v for k, v in os.environ.items() if k != "TANDEM_API_KEY"}
        environ.update({"TERM": "dumb", **(env or {})})
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _TAKE_TERMINAL, *command],
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            start_new_session=True,
            cwd=cwd,
            env=environ,
        )
        os.close(secondary)
        self._fd = primary
        self._raw = b""
        self._read_to = 0  # how far `expect` has read the screen

    @property
    def screen(self) -> str:
        """Everything shown so far, its line ends `\\n`, terminal escapes left out."""
        text = self._raw.decode(errors="replace").replace("\r\n", "\n")
        return _ESCAPES.sub("", text)

    def expect(self, text: str, timeout_s: float = 10.0) -> str:
        """Wait for `text` past what earlier calls read; return what came before it."""
        deadline = time.monotonic() + timeout_s
        while True:
            screen = self.screen
            at = screen.find(text, self._read_to)
            if at >= 0:
                before = screen[self._read_to : at]
                self._read_to = at + len(text)
                return before
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"{text!r} not shown; the screen:\n{screen}")

    def _read(self, timeout_s: float) -> bool:
        ready, _, _ = select.select([self._fd], [], [], timeout_s)
        if not ready:
            return False
        try:
            data = os.read(self._fd, 65536)
        except OSError:  # EIO: the command has exited, the terminal is closed
            return False
        self._raw += data
        return bool(data)

    def type(self, keys: str) -> None:
        os.write(self._fd, keys.encode())

    def exit_code(self, timeout_s: float = 10.0) -> int:
        code = self.proc.wait(timeout_s)
        while self._read(0.05):
            pass
        return code

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self._fd)
