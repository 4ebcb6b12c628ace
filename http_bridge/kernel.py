"""What the transport asks of a connection's socket, below asyncio: the bytes the kernel
still holds unsent, and a reset that drops them."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import termios

__all__ = ["reset", "unsent_in_kernel"]


def unsent_in_kernel(transport: asyncio.Transport) -> int:
    """Bytes the kernel holds for this socket that the client has not acknowledged
    (Linux's SIOCOUTQ); 0 where that cannot be asked."""
    sock = transport.get_extra_info("socket")
    try:
        buffer = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (AttributeError, OSError):
        return 0
    return int.from_bytes(buffer, "little", signed=True)


def reset(transport: asyncio.Transport) -> None:
    """Close now, dropping what waits: `close()` would wait for a reader that does not
    read, and a plain close leaves the kernel holding (and resending) its buffer."""
    sock = transport.get_extra_info("socket")
    with contextlib.suppress(AttributeError, OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
