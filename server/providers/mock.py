"""The built-in `mock` provider: deterministic answers with no network.

Every model on it echoes the last user message, streamed one chunk per word
(a word keeps the whitespace that follows it) for the first `PER_WORD` words,
then the rest in one chunk; in one chunk when the caller does not stream.
Usage counts words. A chunk per word costs a door ~100-200 bytes of framing:
for a 1 MB prompt of short words that was 106 MB of SSE, where the rest in one
chunk keeps a long answer's wire bytes within a few times its text. An answer
is at most `max_answer_bytes` over all its choices (`server.max_body_bytes`):
`n` copies of a prompt would otherwise turn one request into 128 times its size.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import struct
from collections.abc import AsyncGenerator
from itertools import islice

from tandem.v1 import chat_pb2, embeddings_pb2

from server.chunks import Batch, Item
from server.config import ProviderConfig
from server.context import CallContext
from server.errors import InvalidRequestError
from server.messages import count_words, last_user_text, prompt_words
from server.providers.base import ChatRequest, Route
from server.translate.common import max_tokens_asked
from server.translate.extra import leave_out_extra_body

__all__ = ["EMBEDDING_DIMENSIONS", "MockProvider", "mock_embedding"]

EMBEDDING_DIMENSIONS = 64
PER_WORD = 1024  # words streamed one chunk each (the contract's); the rest is one chunk
BATCH_CHUNKS = 64  # those chunks leave in batches of at most this many
_WORD = re.compile(r"\s*\S+\s*")


class MockProvider:
    def __init__(self, config: ProviderConfig, *, max_answer_bytes: int) -> None:
        self.name = config.name
        self.kind: str = config.kind
        self.max_retries = 0  # it never fails
        self._delay_s = config.chunk_delay_ms / 1000
        self._max_answer_bytes = max_answer_bytes

    async def stream(
        self, request: ChatRequest, route: Route, ctx: CallContext, *, chunked: bool
    ) -> AsyncGenerator[Batch, None]:
        """Without a `chunk_delay_ms` the answer is ready at once: batches of
        `BATCH_CHUNKS`; with one, each piece is its own batch, after a delay
        for each of its words. It takes no extra field: each is named."""
        leave_out_extra_body(request, ctx.trace)
        answer, count, finish_reason = _answer(
            last_user_text(request.messages), _max_tokens(request)
        )
        choices = request.n if request.HasField("n") else 1
        if choices > 1:  # one choice is never larger than the request that asked for it
            self._check_size(len(answer.encode()), choices)
        usage = chat_pb2.Usage(
            prompt_tokens=prompt_words(request.messages), completion_tokens=count * choices
        )
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        pieces = _pieces(answer) if chunked else [answer]

        last = len(pieces) - 1
        batch: list[Item] = []
        for position, piece in enumerate(pieces):
            if self._delay_s:  # the rest, past `PER_WORD`, waits as long as its words would
                words = 1 if chunked and position < PER_WORD else count - position
                await asyncio.sleep(self._delay_s * words)
            if choices == 1 and 0 < position < last:  # a word, nothing else: its text
                batch.append(piece)
            else:
                chunk = chat_pb2.ChatCompletionChunk()
                for index in range(choices):
                    choice = chunk.choices.add(index=index)
                    if position == 0:
                        choice.delta.role = "assistant"
                    choice.delta.content = piece
                    if position == last:
                        choice.finish_reason = finish_reason
                if position == last:
                    chunk.usage.CopyFrom(usage)
                batch.append(chunk)
            if self._delay_s or len(batch) == BATCH_CHUNKS:
                yield batch
                batch = []
        if batch:
            yield batch

    def _check_size(self, choice_bytes: int, choices: int) -> None:
        if choice_bytes * choices > self._max_answer_bytes:
            raise InvalidRequestError(
                f"n: {choices} choices of {choice_bytes} bytes exceed the answer limit of "
                f"{self._max_answer_bytes} bytes",
                param="n",
            )

    async def embed(
        self, request: embeddings_pb2.EmbeddingRequest, route: Route, ctx: CallContext
    ) -> embeddings_pb2.EmbeddingResponse:
        response = embeddings_pb2.EmbeddingResponse()
        for index, text in enumerate(request.input):
            response.data.add(index=index, embedding=mock_embedding(text))
        tokens = sum(count_words(text) for text in request.input)
        response.usage.prompt_tokens = tokens
        response.usage.total_tokens = tokens
        return response

    async def aclose(self) -> None:
        return None


def _answer(text: str, limit: int | None) -> tuple[str, int, str]:
    """(the answer, its words, its finish reason): the text, or its first `limit`
    words, as the words rebuild it ("" for no word)."""
    count = count_words(text)
    if limit is None or count <= limit:
        return (text if count else ""), count, "stop"
    end = 0
    for word in islice(_WORD.finditer(text), limit):
        end = word.end()
    return text[:end], limit, "length"


def _pieces(answer: str) -> list[str]:
    """The streamed pieces: a chunk per word for the first `PER_WORD`, then the rest."""
    words = [match.group() for match in islice(_WORD.finditer(answer), PER_WORD)]
    if not words:
        return [""]
    rest = answer[sum(map(len, words)) :]
    return [*words, rest] if rest else words


def _max_tokens(request: ChatRequest) -> int | None:
    asked = max_tokens_asked(request)
    return None if asked is None else asked[1]


def mock_embedding(text: str) -> list[float]:
    """A unit vector of 64 floats derived from the text alone."""
    digest = hashlib.shake_256(text.encode()).digest(2 * EMBEDDING_DIMENSIONS)
    raw = [v / 32767.5 - 1.0 for v in struct.unpack(f"<{EMBEDDING_DIMENSIONS}H", digest)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]
