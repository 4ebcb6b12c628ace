"""Every dialect package has the same modules and, in them, each job it does under the
job's one name (server/translate/protocols.py); mypy checks each against its protocol
where the module states it (`_: ChatParser = parse_chat`)."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

from server.translate import protocols

DIALECTS = ("openai", "anthropic", "ollama", "responses")
# module -> the job's name, the protocol it keeps to
JOBS: dict[str, dict[str, object]] = {
    "inbound": {"parse_chat": protocols.ChatParser, "parse_embedding": protocols.EmbeddingParser},
    "replies": {"encode_completion": None, "StreamEncoder": protocols.ItemEncoder},
    "to_provider": {
        "encode_chat_request": protocols.ChatRequestEncoder,
        "encode_embedding_request": protocols.EmbeddingRequestEncoder,
    },
    "from_provider": {
        "StreamDecoder": protocols.ItemDecoder,
        "decode_completion": protocols.CompletionDecoder,
        "decode_embeddings": protocols.EmbeddingsDecoder,
    },
}
# what a dialect does not do: Anthropic makes no embeddings, Ollama's whole answer is
# its stream's one line (its StreamDecoder reads it)
LACKS: dict[str, set[str]] = {
    "anthropic": {"parse_embedding", "encode_embedding_request", "decode_embeddings"},
    "ollama": {"decode_completion"},
    # a caller's side only: no provider kind speaks it (yet)
    "responses": {
        "parse_embedding",
        *JOBS["to_provider"],
        *JOBS["from_provider"],
    },
}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("module", JOBS)
def test_each_dialect_does_each_job_under_its_name(dialect: str, module: str) -> None:
    expected = set(JOBS[module]) - LACKS.get(dialect, set())
    if not expected:  # a module of no job is no module
        assert importlib.util.find_spec(f"server.translate.{dialect}.{module}") is None
        return
    found = importlib.import_module(f"server.translate.{dialect}.{module}")
    assert {name for name in JOBS[module] if hasattr(found, name)} == expected
    assert expected <= set(found.__all__)


def test_a_lacking_job_is_named_in_jobs() -> None:
    every = {name for names in JOBS.values() for name in names}
    assert set().union(*LACKS.values()) <= every
