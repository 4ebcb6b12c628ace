"""Ids: a stored response's id (`resp_…`) is all that keeps one anonymous caller's
answers from another's, so no number of ids seen says what the next one is."""

from __future__ import annotations

import os
import random

from server.context import new_id


def _undo(y: int, shift: int, mask: int = 0xFFFFFFFF) -> int:
    """Invert `y ^= (y >> shift)` (negative: `<<`) `& mask`, a bit at a time."""
    x = y
    for _ in range(32):
        x = y ^ (((x >> shift) if shift > 0 else (x << -shift)) & mask)
    return x & 0xFFFFFFFF


def _untemper(y: int) -> int:
    """A Mersenne Twister output word back to the state word it came from."""
    y = _undo(y, 18)
    y = _undo(y, -15, 0xEFC60000)
    y = _undo(y, -7, 0x9D2C5680)
    return _undo(y, 11)


def test_ids_seen_do_not_predict_the_next() -> None:
    # the attack a reviewer ran on `x-request-id`s: 156 ids (624 words) are a Mersenne
    # Twister's whole state, from which its next outputs follow
    words: list[int] = []
    for _ in range(156):
        value = int(new_id(), 16)
        words += [(value >> (32 * i)) & 0xFFFFFFFF for i in range(4)]  # low word first
    twister = random.Random()
    twister.setstate((3, (*[_untemper(w) for w in words], 624), None))
    predicted = {f"{twister.getrandbits(128):032x}" for _ in range(4)}
    assert not predicted & {new_id() for _ in range(4)}


def test_ids_are_128_bits_and_distinct() -> None:
    ids = {new_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert sum(bin(int(i, 16)).count("1") for i in ids) / len(ids) > 60  # ~64 bits set


def test_a_forked_child_makes_ids_of_its_own() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child
    assert child != new_id()
