"""Text items (server/chunks.py): a bare `str` in a stream is exactly the chunk it
stands for, to every door, to the fold, and from the OpenAI translator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tandem.v1 import chat_pb2

from server.chunks import Batch, Item, stamped, text_chunk, whole
from server.core.fold import fold_stream
from server.translate.anthropic.replies import StreamEncoder as AnthropicEncoder
from server.translate.ollama.replies import StreamEncoder as OllamaEncoder
from server.translate.openai.from_provider import StreamDecoder, decode_event
from server.translate.openai.replies import StreamEncoder

texts = st.text(max_size=30)


def first_chunk() -> chat_pb2.ChatCompletionChunk:
    chunk = chat_pb2.ChatCompletionChunk(id="c", created=7, model="m", system_fingerprint="fp")
    chunk.choices.add().delta.role = "assistant"
    return chunk


def last_chunk() -> chat_pb2.ChatCompletionChunk:
    chunk = chat_pb2.ChatCompletionChunk()
    chunk.choices.add(finish_reason="stop").delta.content = "."
    chunk.usage.prompt_tokens, chunk.usage.completion_tokens = 1, 2
    return chunk


@given(texts, st.sampled_from(["none", "separate", "inline"]), st.booleans())
def test_the_openai_and_native_doors_write_a_text_as_its_chunk(
    text: str, usage: str, with_object: bool
) -> None:
    encoder = StreamEncoder(
        first_chunk(), with_object=with_object, usage=usage, prefix=b"data: ", suffix=b"\n\n"
    )
    assert encoder.encode(text) == encoder.encode(text_chunk(text))


@given(texts, st.booleans())
def test_the_ollama_door_writes_a_text_as_its_chunk(text: str, generate: bool) -> None:
    encoder = OllamaEncoder(first_chunk(), generate=generate, started=0.0, prefix=b"", suffix=b"\n")
    assert encoder.encode(text) == encoder.encode(text_chunk(text))


@given(st.lists(texts, min_size=1, max_size=4), st.booleans())
def test_the_anthropic_door_writes_texts_as_their_chunks(
    pieces: list[str], after_thinking: bool
) -> None:
    as_text, as_chunks = AnthropicEncoder(1), AnthropicEncoder(1)
    opening: list[chat_pb2.ChatCompletionChunk] = [first_chunk()]
    if after_thinking:  # a text after a thinking block opens a block of its own
        thought = chat_pb2.ChatCompletionChunk()
        thought.choices.add().delta.reasoning_content = "hmm"
        opening.append(thought)
    for chunk in opening:
        assert as_text.encode(chunk) == as_chunks.encode(chunk)
    for piece in pieces:
        assert as_text.encode(piece) == as_chunks.encode(text_chunk(piece))
    assert as_text.encode(last_chunk()) == as_chunks.encode(last_chunk())


async def _batches(*batches: Batch) -> AsyncIterator[Batch]:
    for batch in batches:
        yield batch


@given(st.lists(texts, max_size=5))
async def test_the_fold_reads_a_text_as_its_chunk(pieces: list[str]) -> None:
    items: Sequence[Item] = [first_chunk(), *pieces, last_chunk()]
    folded = await fold_stream(_batches(items))
    assert folded == await fold_stream(_batches([whole(item) for item in items]))
    assert folded.choices[0].message.content == "".join(pieces) + "."


def test_a_stamped_text_carries_the_head_of_its_stream() -> None:
    chunk = stamped("word ", first_chunk())
    assert (chunk.id, chunk.created, chunk.model, chunk.system_fingerprint) == ("c", 7, "m", "fp")
    assert list(chunk.choices) == list(text_chunk("word ").choices)


def _event(**choice: Any) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion.chunk", "created": 1, "choices": [choice]}


@given(texts)
def test_an_upstream_event_of_content_alone_is_its_text(text: str) -> None:
    assert decode_event(_event(index=0, delta={"content": text})) == text
    plain = _event(index=0, delta={"content": text}, finish_reason=None, logprobs=None)
    assert decode_event({**plain, "system_fingerprint": "fp"}) == text


@pytest.mark.parametrize(
    "event",
    [
        _event(index=0, delta={"content": "a", "role": "assistant"}),
        _event(index=1, delta={"content": "a"}),
        _event(index=0, delta={"content": "a"}, finish_reason="stop"),
        _event(index=0, delta={"reasoning_content": "a"}),
        {**_event(index=0, delta={"content": "a"}), "usage": {"prompt_tokens": 1}},
        {"choices": [{"delta": {"content": "a"}}, {"index": 1, "delta": {"content": "b"}}]},
    ],
)
def test_an_upstream_event_with_more_is_a_whole_chunk(event: dict[str, Any]) -> None:
    chunk = decode_event(event)
    assert isinstance(chunk, chat_pb2.ChatCompletionChunk)
    assert [c.index for c in chunk.choices] == [c.get("index", 0) for c in event["choices"]]


def test_a_streams_first_event_is_a_whole_chunk_for_its_head() -> None:
    """The doors write the head (id, model, fingerprint) from the first item: an
    upstream that opens with text alone keeps its fingerprint on every event."""
    decode = StreamDecoder().feed
    event = {**_event(index=0, delta={"content": "Hi"}), "system_fingerprint": "fp_up"}
    first = decode(event)
    assert isinstance(first, chat_pb2.ChatCompletionChunk)
    assert (first.system_fingerprint, first.choices[0].delta.content) == ("fp_up", "Hi")
    assert decode({**event, "choices": [{"index": 0, "delta": {"content": " there"}}]}) == " there"


def test_a_fingerprint_that_is_not_text_is_refused_as_before() -> None:
    from server.errors import UpstreamError
    from server.providers.reads import decode

    bad = b'{"system_fingerprint": 5, "choices": [{"index": 0, "delta": {"content": "a"}}]}'
    with pytest.raises(UpstreamError):
        decode(bad, decode_event)


def test_an_upstream_error_event_is_never_taken_for_text() -> None:
    from server.errors import UpstreamError

    with pytest.raises(UpstreamError):
        decode_event({**_event(index=0, delta={"content": "a"}), "error": {"type": "x"}})


def test_ollama_lines_of_content_alone_are_their_text_after_the_first() -> None:
    from server.translate.ollama.from_provider import StreamDecoder

    translator = StreamDecoder()
    line = {"model": "m", "message": {"role": "assistant", "content": "Hi"}, "done": False}
    first = translator.feed(line)  # the role opens the stream: a whole chunk
    assert isinstance(first, chat_pb2.ChatCompletionChunk)
    assert (first.choices[0].delta.role, first.choices[0].delta.content) == ("assistant", "Hi")
    assert translator.feed({**line, "message": {"role": "assistant", "content": " there"}}) == (
        " there"
    )
    for message in ({"content": ""}, {"content": "a", "thinking": "b"}, {"content": 5}):
        with_more = {**line, "message": message}
        try:
            item = translator.feed(with_more)
        except TypeError:
            continue  # a content that is not text is refused, as it always was
        assert isinstance(item, chat_pb2.ChatCompletionChunk), message
    done = translator.feed({**line, "done": True, "prompt_eval_count": 1, "eval_count": 2})
    assert isinstance(done, chat_pb2.ChatCompletionChunk)
    assert done.choices[0].finish_reason == "stop"


def test_anthropic_text_deltas_are_their_text() -> None:
    from server.translate.anthropic.from_provider import StreamDecoder

    translator = StreamDecoder()
    delta = {"type": "content_block_delta", "index": 0}
    assert translator.feed({**delta, "delta": {"type": "text_delta", "text": "Hi"}}) == "Hi"
    assert translator.feed({**delta, "delta": {"type": "text_delta"}}) == ""
    thinking = translator.feed({**delta, "delta": {"type": "thinking_delta", "thinking": "t"}})
    assert isinstance(thinking, chat_pb2.ChatCompletionChunk)
