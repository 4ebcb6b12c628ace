"""The mock provider's rules, as properties over any text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from tandem.v1 import chat_pb2

from server.chunks import whole
from server.config import ModelConfig, ProviderConfig
from server.context import CallContext
from server.providers.base import Route
from server.providers.mock import BATCH_CHUNKS, PER_WORD, MockProvider, mock_embedding

PROVIDER = MockProvider(ProviderConfig(name="m", kind="mock"), max_answer_bytes=1 << 20)
ROUTE = Route(model=ModelConfig(name="echo", provider="m"), provider=PROVIDER)
CTX = CallContext(request_id="r", protocol="grpc")

texts = st.text(alphabet=st.sampled_from("ab \t\n\u00e9\u3000"), max_size=40)


async def chunks_for(
    text: str, max_tokens: int | None = None
) -> list[chat_pb2.ChatCompletionChunk]:
    request = chat_pb2.ChatCompletionRequest(
        messages=[chat_pb2.ChatMessage(role="user", content=text)], max_tokens=max_tokens
    )
    batches = [batch async for batch in PROVIDER.stream(request, ROUTE, CTX, chunked=True)]
    assert len(batches) == 1  # no delay: the whole answer is ready at once
    return [whole(item) for item in batches[0]]


@given(texts)
async def test_stream_is_one_chunk_per_word_and_rebuilds_the_text(text: str) -> None:
    chunks = await chunks_for(text)
    words = text.split()
    assert len(chunks) == max(len(words), 1)
    answer = "".join(c.choices[0].delta.content for c in chunks)
    assert answer == (text if words else "")
    assert [c.HasField("usage") for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].usage.completion_tokens == len(words)
    assert chunks[-1].usage.prompt_tokens == len(words)


@given(texts, st.integers(min_value=1, max_value=10))
async def test_max_tokens_keeps_the_first_words(text: str, limit: int) -> None:
    chunks = await chunks_for(text, max_tokens=limit)
    words = text.split()
    answer = "".join(c.choices[0].delta.content for c in chunks)
    assert answer.split() == words[:limit]
    expected = "length" if len(words) > limit else "stop"
    assert chunks[-1].choices[0].finish_reason == expected


async def test_the_first_1024_words_are_a_chunk_each_then_the_rest_is_one() -> None:
    """A chunk per word costs a door ~100-200 bytes: past the first words, the rest
    leaves whole, in bounded batches."""
    text = "".join(f"w{i} " for i in range(3000)) + "end"
    request = chat_pb2.ChatCompletionRequest(
        messages=[chat_pb2.ChatMessage(role="user", content=text)]
    )
    batches = [batch async for batch in PROVIDER.stream(request, ROUTE, CTX, chunked=True)]
    assert [len(batch) for batch in batches] == [BATCH_CHUNKS] * (PER_WORD // BATCH_CHUNKS) + [1]
    pieces = [whole(item).choices[0].delta.content for batch in batches for item in batch]
    assert pieces[:PER_WORD] == [f"w{i} " for i in range(PER_WORD)]
    assert pieces[PER_WORD:] == ["".join(f"w{i} " for i in range(PER_WORD, 3000)) + "end"]
    last = whole(batches[-1][-1])
    assert last.choices[0].finish_reason == "stop"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3001, 3001)


async def test_max_tokens_past_the_per_word_chunks_cuts_the_rest() -> None:
    request = chat_pb2.ChatCompletionRequest(
        messages=[chat_pb2.ChatMessage(role="user", content="w " * 3000)], max_tokens=2000
    )
    batches = [batch async for batch in PROVIDER.stream(request, ROUTE, CTX, chunked=True)]
    chunks = [whole(item) for batch in batches for item in batch]
    assert len(chunks) == PER_WORD + 1
    assert chunks[-1].choices[0].delta.content == "w " * (2000 - PER_WORD)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 2000


async def test_a_chunk_delay_makes_each_word_its_own_batch() -> None:
    slow = MockProvider(
        ProviderConfig(name="m", kind="mock", chunk_delay_ms=1), max_answer_bytes=1024
    )
    request = chat_pb2.ChatCompletionRequest(
        messages=[chat_pb2.ChatMessage(role="user", content="one two three")]
    )
    route = Route(model=ROUTE.model, provider=slow)
    batches = [batch async for batch in slow.stream(request, route, CTX, chunked=True)]
    assert [[whole(c).choices[0].delta.content for c in batch] for batch in batches] == [
        ["one "],
        ["two "],
        ["three"],
    ]


async def test_the_words_between_the_first_and_the_last_are_bare_text() -> None:
    request = chat_pb2.ChatCompletionRequest(
        messages=[chat_pb2.ChatMessage(role="user", content="one two three four")]
    )
    [batch] = [batch async for batch in PROVIDER.stream(request, ROUTE, CTX, chunked=True)]
    assert [type(item) for item in batch] == [
        chat_pb2.ChatCompletionChunk,
        str,
        str,
        chat_pb2.ChatCompletionChunk,
    ]
    assert batch[1:3] == ["two ", "three "]
    two = chat_pb2.ChatCompletionRequest(n=2, messages=request.messages)
    [batch] = [batch async for batch in PROVIDER.stream(two, ROUTE, CTX, chunked=True)]
    assert not any(isinstance(item, str) for item in batch)  # two choices: whole chunks


@given(st.text(max_size=30), st.text(max_size=30))
def test_embeddings_depend_on_the_text_alone(a: str, b: str) -> None:
    assert mock_embedding(a) == mock_embedding(a)
    assert (mock_embedding(a) == mock_embedding(b)) == (a == b)
    assert abs(sum(x * x for x in mock_embedding(a)) - 1.0) < 1e-9
