"""`Tandem`: the synchronous client, and `ChatStream`, a streamed chat's events."""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from tandem.client._channel import DEFAULT_TARGET, Connection, key_from_env
from tandem.client._errors import TandemError, TimeoutError, error_from
from tandem.client._events import ChatEvent, UsageEvent, events_of
from tandem.client._requests import (
    NOT_GIVEN,
    Messages,
    NotGiven,
    Usd,
    chat_request,
    embedding_request,
    key_for_create,
    key_update,
    spend_request,
    usage_request,
)
from tandem.client._retry import Deadline, retry_delay
from tandem.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    chat_pb2,
    chat_pb2_grpc,
    embeddings_pb2,
    embeddings_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

__all__ = ["ChatStream", "Tandem"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def failure(exc: grpc.RpcError) -> TandemError:
    """The typed error of a failed sync call (its RpcError is also its `grpc.Call`)."""
    if isinstance(exc, grpc.Call):
        return error_from(exc, exc.initial_metadata(), exc.trailing_metadata())
    return TandemError(str(exc))


def deadline_passed() -> TimeoutError:
    return TimeoutError("the call's deadline passed", code=grpc.StatusCode.DEADLINE_EXCEEDED)


class Tandem:
    """A client of the gateway's gRPC API over one channel, reused by every call.

    `target`: `host:port`; `key`: the API key (None: $TANDEM_API_KEY, else none);
    `max_retries`: how many times a call that failed with UNAVAILABLE, or with a rate
    limit that says when to come back, is asked again (tandem.client._retry says when);
    `timeout`: each call's deadline in seconds over all its attempts (None: none), which
    a call's own `timeout` overrides; `ca_file`: TLS, trusting the CA in this PEM file
    (None: plaintext); `keepalive_time_s`, `keepalive_timeout_s`, `max_message_bytes`,
    `channel_options`, `metadata`: as in `Connection`. Use it in a `with`, or `close()`.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        key: str | None = None,
        max_retries: int = 2,
        timeout: float | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        *,
        keepalive_time_s: float | None = None,
        keepalive_timeout_s: float | None = None,
        max_message_bytes: int | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.connection = Connection(
            target,
            key_from_env(key),
            ca_file,
            keepalive_time_s,
            keepalive_timeout_s,
            max_message_bytes,
            tuple(channel_options),
            tuple(metadata),
        )
        self.max_retries = max_retries
        self.timeout = timeout
        self._metadata = self.connection.call_metadata()
        self._channel = self.connection.channel()
        self._chat = chat_pb2_grpc.ChatServiceStub(self._channel)
        self._models = models_pb2_grpc.ModelServiceStub(self._channel)
        self._embeddings = embeddings_pb2_grpc.EmbeddingServiceStub(self._channel)
        self._usage = usage_pb2_grpc.UsageServiceStub(self._channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)

    def close(self) -> None:
        """Close the channel: calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- chat ---------------------------------------------------------------------

    def chat(
        self, messages: Messages, model: str = "", timeout: float | None = None, **options: Any
    ) -> chat_pb2.ChatCompletion:
        """The whole completion of `messages` (OpenAI-style dicts, or ChatMessages);
        `model` "" is the tier's default; `options`: the request's other fields
        (`temperature`, `max_tokens`, `tools`, `response_format`, ...)."""
        request = chat_request(messages, model, options)
        return self._unary(self._chat.CreateChatCompletion, request, timeout)

    def stream(
        self, messages: Messages, model: str = "", timeout: float | None = None, **options: Any
    ) -> ChatStream:
        """The completion as it is generated: an iterator of events (TextDelta, ...,
        UsageEvent last), as `chat` takes its arguments. The call starts on the first
        `next()`; leaving a `with` block, `close()`, or dropping the stream cancels it."""
        return ChatStream(self, chat_request(messages, model, options), self._deadline(timeout))

    # --- models, embeddings, usage --------------------------------------------------

    def models(self, timeout: float | None = None) -> list[models_pb2.Model]:
        """The models this key may use, with their prices."""
        listed = self._unary(self._models.ListModels, models_pb2.ListModelsRequest(), timeout)
        return list(listed.data)

    def model(self, model_id: str, timeout: float | None = None) -> models_pb2.Model:
        return self._unary(self._models.GetModel, models_pb2.GetModelRequest(id=model_id), timeout)

    def embed(
        self,
        input: str | Sequence[str],
        model: str = "",
        timeout: float | None = None,
        **options: Any,
    ) -> embeddings_pb2.EmbeddingResponse:
        """The embeddings of `input`, one text or several (`options`: `dimensions`, ...)."""
        request = embedding_request(input, model, options)
        return self._unary(self._embeddings.CreateEmbeddings, request, timeout)

    def usage(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        user: str = "",
        model: str = "",
        limit: int = 0,
        timeout: float | None = None,
    ) -> usage_pb2.GetUsageResponse:
        """The key's own usage records and totals (an admin key: any user's, `user`)."""
        request = usage_request(since, until, user, model, limit)
        return self._unary(self._usage.GetUsage, request, timeout)

    # --- admin (an admin key) ---------------------------------------------------------

    def create_key(
        self,
        user: str,
        tier: str = "",
        *,
        models: Sequence[str] | None = None,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        max_concurrent_requests: int | None = None,
        budget_usd: Usd | None = None,
        budget_period: str = "",
        expires_at: datetime | None = None,
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> admin_pb2.Key:
        """A new API key of `user` (`tier` "": `free`), narrowed as given; its secret,
        `key`, is in this answer only."""
        fields = {
            "models": models,
            "requests_per_minute": requests_per_minute,
            "tokens_per_minute": tokens_per_minute,
            "max_concurrent_requests": max_concurrent_requests,
            "budget": budget_usd,
            "expires_at": expires_at,
            "labels": labels,
        }
        request = admin_pb2.CreateKeyRequest(key=key_for_create(user, tier, fields, budget_period))
        return self._unary(self._admin.CreateKey, request, timeout)

    def get_key(self, key_id: str, timeout: float | None = None) -> admin_pb2.Key:
        return self._unary(self._admin.GetKey, admin_pb2.GetKeyRequest(id=key_id), timeout)

    def list_keys(
        self,
        user: str = "",
        tier: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> admin_pb2.ListKeysResponse:
        """One page of keys, oldest first; the next from `next_page_token`."""
        request = admin_pb2.ListKeysRequest(
            user=user, tier=tier, page_size=page_size, page_token=page_token
        )
        return self._unary(self._admin.ListKeys, request, timeout)

    def update_key(
        self,
        key_id: str,
        *,
        models: Sequence[str] | NotGiven | None = NOT_GIVEN,
        requests_per_minute: int | NotGiven | None = NOT_GIVEN,
        tokens_per_minute: int | NotGiven | None = NOT_GIVEN,
        max_concurrent_requests: int | NotGiven | None = NOT_GIVEN,
        budget_usd: Usd | NotGiven | None = NOT_GIVEN,
        budget_period: str = "",
        expires_at: datetime | NotGiven | None = NOT_GIVEN,
        labels: Mapping[str, str] | NotGiven | None = NOT_GIVEN,
        timeout: float | None = None,
    ) -> admin_pb2.Key:
        """Change the fields given; None clears one (no limit, no budget, ...)."""
        fields = {
            "models": models,
            "requests_per_minute": requests_per_minute,
            "tokens_per_minute": tokens_per_minute,
            "max_concurrent_requests": max_concurrent_requests,
            "budget": budget_usd,
            "expires_at": expires_at,
            "labels": labels,
        }
        request = key_update(key_id, fields, budget_period)
        return self._unary(self._admin.UpdateKey, request, timeout)

    def revoke_key(self, key_id: str, timeout: float | None = None) -> admin_pb2.Key:
        return self._unary(self._admin.RevokeKey, admin_pb2.RevokeKeyRequest(id=key_id), timeout)

    def spend(
        self,
        user: str = "",
        key_id: str = "",
        model: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
        group_by: str = "",
        timeout: float | None = None,
    ) -> admin_pb2.GetSpendResponse:
        """Cost and tokens from the ledger, grouped by `day`, `model`, `user` or `key`."""
        request = spend_request(user, key_id, model, since, until, group_by)
        return self._unary(self._admin.GetSpend, request, timeout)

    # --- calls ------------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> Deadline:
        return Deadline(self.timeout if timeout is None else timeout)

    def _unary(
        self,
        rpc: grpc.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float | None,
    ) -> Resp:
        deadline = self._deadline(timeout)
        retries = 0
        while True:
            if deadline.passed:
                raise deadline_passed()
            try:
                return rpc(request, timeout=deadline.remaining(), metadata=self._metadata)
            except grpc.RpcError as exc:
                error = failure(exc)
                delay = retry_delay(error, retries, self.max_retries, deadline)
                if delay is None:
                    raise error from exc
            time.sleep(delay)
            retries += 1

    def _open_stream(
        self, request: chat_pb2.ChatCompletionRequest, deadline: Deadline
    ) -> tuple[grpc.Call, Iterator[chat_pb2.ChatCompletionChunk]]:
        """The streaming call (to cancel it, to read its metadata) and its chunks."""
        if deadline.passed:
            raise deadline_passed()
        call = self._chat.StreamChatCompletion(
            request, timeout=deadline.remaining(), metadata=self._metadata
        )
        return call, iter(call)


class ChatStream:
    """A streamed chat's events, in order, `UsageEvent` last: iterate it (in a `with`
    to be sure it ends). A failure before anything arrived is retried as `Tandem`
    retries; once anything arrived, never. `close()` cancels the call; so do leaving
    the `with`, a KeyboardInterrupt while it waits, and dropping the stream."""

    def __init__(
        self,
        client: Tandem,
        request: chat_pb2.ChatCompletionRequest,
        deadline: Deadline,
    ) -> None:
        self._client = client
        self._request = request
        self._deadline = deadline
        self._call: grpc.Call | None = None
        self._chunks: Iterator[chat_pb2.ChatCompletionChunk] = iter(())
        self._pending: deque[ChatEvent] = deque()
        self._received = False
        self._done = False
        self._closed = False
        self._retries = 0
        self._request_id: str | None = None
        self.usage: chat_pb2.Usage | None = None
        """The call's usage, once its last event has arrived."""

    @property
    def request_id(self) -> str | None:
        """The gateway's id of the call (`x-request-id`), once its answer has begun."""
        if self._request_id is None and self._call is not None and self._received:
            for key, value in self._call.initial_metadata() or ():
                if key == "x-request-id" and isinstance(value, str):
                    self._request_id = value
        return self._request_id

    def __iter__(self) -> Iterator[ChatEvent]:
        return self

    def __next__(self) -> ChatEvent:
        while not self._pending:
            if self._done:
                raise StopIteration
            try:
                self._read()
            except TandemError:
                raise
            except BaseException:  # KeyboardInterrupt: the caller stops the answer
                self.close()
                raise
        return self._pending.popleft()

    def _read(self) -> None:
        if self._call is None:
            self._call, self._chunks = self._client._open_stream(self._request, self._deadline)
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._done = True
            return
        except grpc.RpcError as exc:
            if self._closed:
                return
            error = failure(exc)
            self._request_id = error.request_id or self._request_id
            delay = None
            if not self._received:
                max_retries = self._client.max_retries
                delay = retry_delay(error, self._retries, max_retries, self._deadline)
            if delay is None:
                self._done = True
                raise error from exc
            self._call = None
            time.sleep(delay)
            self._retries += 1
            return
        self._received = True
        for event in events_of(chunk):
            if isinstance(event, UsageEvent):
                self.usage = event.usage
            self._pending.append(event)

    def close(self) -> None:
        """Stop: the call is cancelled if it is still going (the gateway stops its
        upstream and charges what was generated)."""
        self._closed = self._done = True
        self._pending.clear()
        if self._call is not None:
            self._call.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_call", None) is not None and not self._done:
            with contextlib.suppress(Exception):  # at exit, its channel or loop may be gone
                self.close()
