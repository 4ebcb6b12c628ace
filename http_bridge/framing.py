"""How a streamed answer is framed on the wire, once per format.

A dialect's encoder writes each event between `prefix` and `suffix` (it is
given them, so an event is assembled in one concatenation); the stream ends
with `end`, or, when it fails after its first event, with one error event
and no `end`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NAMED_SSE", "NDJSON", "SSE", "Framing"]


@dataclass(frozen=True, slots=True)
class Framing:
    media_type: bytes
    prefix: bytes
    suffix: bytes
    end: bytes  # after the last event; b"" where the format has no end marker

    def event(self, payload: bytes) -> bytes:
        return self.prefix + payload + self.suffix


# Server-sent events (`/native/v1`, `/v1`): `data: {...}` and a blank line; `[DONE]` ends.
SSE = Framing(
    media_type=b"text/event-stream; charset=utf-8",
    prefix=b"data: ",
    suffix=b"\n\n",
    end=b"data: [DONE]\n\n",
)

# Server-sent events with names (`/v1/messages`, Anthropic's): the encoder names each
# event itself; a failure is `event: error`; `message_stop`, an event, ends the stream.
NAMED_SSE = Framing(
    media_type=b"text/event-stream; charset=utf-8",
    prefix=b"event: error\ndata: ",
    suffix=b"\n\n",
    end=b"",
)

# Newline-delimited JSON (`/api`, Ollama's): one object a line, no end marker.
NDJSON = Framing(media_type=b"application/x-ndjson", prefix=b"", suffix=b"\n", end=b"")
