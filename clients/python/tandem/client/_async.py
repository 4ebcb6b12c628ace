"""`AsyncTandem`: the asyncio client, and `AsyncChatStream`, a streamed chat's events."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Mapping, Sequence
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

__all__ = ["AsyncChatStream", "AsyncTandem"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")
StreamCall = grpc.aio.UnaryStreamCall[chat_pb2.ChatCompletionRequest, chat_pb2.ChatCompletionChunk]


def failure(exc: grpc.aio.AioRpcError) -> TandemError:
    return error_from(exc, exc.initial_metadata(), exc.trailing_metadata())


def deadline_passed() -> TimeoutError:
    return TimeoutError("the call's deadline passed", code=grpc.StatusCode.DEADLINE_EXCEEDED)


class _Stubs:
    """The services' stubs over one grpc.aio channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.chat = chat_pb2_grpc.ChatServiceStub(channel)
        self.models = models_pb2_grpc.ModelServiceStub(channel)
        self.embeddings = embeddings_pb2_grpc.EmbeddingServiceStub(channel)
        self.usage = usage_pb2_grpc.UsageServiceStub(channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(channel)


class AsyncTandem:
    """`Tandem` for asyncio: the same arguments, its calls awaited, `stream` an async
    iterator. The channel is made on the first call (in the running event loop) and
    reused by every later one; `async with`, or `await close()`."""

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
        self._made: _Stubs | None = None

    @property
    def _stubs(self) -> _Stubs:
        if self._made is None:
            self._made = _Stubs(self.connection.aio_channel())
        return self._made

    async def close(self) -> None:
        """Close the channel: calls in flight are cancelled."""
        if self._made is not None:
            await self._made.channel.close()
            self._made = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- chat ---------------------------------------------------------------------

    async def chat(
        self, messages: Messages, model: str = "", timeout: float | None = None, **options: Any
    ) -> chat_pb2.ChatCompletion:
        """As `Tandem.chat`."""
        request = chat_request(messages, model, options)
        return await self._unary(lambda: self._stubs.chat.CreateChatCompletion, request, timeout)

    def stream(
        self, messages: Messages, model: str = "", timeout: float | None = None, **options: Any
    ) -> AsyncChatStream:
        """As `Tandem.stream`: `async for event in client.stream(...)` (or `async with
        client.stream(...) as events`, which cancels the call on leaving)."""
        return AsyncChatStream(
            self, chat_request(messages, model, options), self._deadline(timeout)
        )

    # --- models, embeddings, usage --------------------------------------------------

    async def models(self, timeout: float | None = None) -> list[models_pb2.Model]:
        request = models_pb2.ListModelsRequest()
        return list(
            (await self._unary(lambda: self._stubs.models.ListModels, request, timeout)).data
        )

    async def model(self, model_id: str, timeout: float | None = None) -> models_pb2.Model:
        request = models_pb2.GetModelRequest(id=model_id)
        return await self._unary(lambda: self._stubs.models.GetModel, request, timeout)

    async def embed(
        self,
        input: str | Sequence[str],
        model: str = "",
        timeout: float | None = None,
        **options: Any,
    ) -> embeddings_pb2.EmbeddingResponse:
        request = embedding_request(input, model, options)
        return await self._unary(lambda: self._stubs.embeddings.CreateEmbeddings, request, timeout)

    async def usage(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        user: str = "",
        model: str = "",
        limit: int = 0,
        timeout: float | None = None,
    ) -> usage_pb2.GetUsageResponse:
        request = usage_request(since, until, user, model, limit)
        return await self._unary(lambda: self._stubs.usage.GetUsage, request, timeout)

    # --- admin (an admin key) ---------------------------------------------------------

    async def create_key(
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
        return await self._unary(lambda: self._stubs.admin.CreateKey, request, timeout)

    async def get_key(self, key_id: str, timeout: float | None = None) -> admin_pb2.Key:
        request = admin_pb2.GetKeyRequest(id=key_id)
        return await self._unary(lambda: self._stubs.admin.GetKey, request, timeout)

    async def list_keys(
        self,
        user: str = "",
        tier: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> admin_pb2.ListKeysResponse:
        request = admin_pb2.ListKeysRequest(
            user=user, tier=tier, page_size=page_size, page_token=page_token
        )
        return await self._unary(lambda: self._stubs.admin.ListKeys, request, timeout)

    async def update_key(
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
        return await self._unary(lambda: self._stubs.admin.UpdateKey, request, timeout)

    async def revoke_key(self, key_id: str, timeout: float | None = None) -> admin_pb2.Key:
        request = admin_pb2.RevokeKeyRequest(id=key_id)
        return await self._unary(lambda: self._stubs.admin.RevokeKey, request, timeout)

    async def spend(
        self,
        user: str = "",
        key_id: str = "",
        model: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
        group_by: str = "",
        timeout: float | None = None,
    ) -> admin_pb2.GetSpendResponse:
        request = spend_request(user, key_id, model, since, until, group_by)
        return await self._unary(lambda: self._stubs.admin.GetSpend, request, timeout)

    # --- calls ------------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> Deadline:
        return Deadline(self.timeout if timeout is None else timeout)

    async def _unary(
        self,
        rpc: Callable[[], grpc.aio.UnaryUnaryMultiCallable[Req, Resp]],
        request: Req,
        timeout: float | None,
    ) -> Resp:
        """`rpc()` (a stub's method, looked up once the channel exists) of `request`."""
        deadline = self._deadline(timeout)
        retries = 0
        while True:
            if deadline.passed:
                raise deadline_passed()
            try:
                return await rpc()(request, timeout=deadline.remaining(), metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                error = failure(exc)
                delay = retry_delay(error, retries, self.max_retries, deadline)
                if delay is None:
                    raise error from exc
            await asyncio.sleep(delay)
            retries += 1

    def _open_stream(
        self, request: chat_pb2.ChatCompletionRequest, deadline: Deadline
    ) -> StreamCall:
        if deadline.passed:
            raise deadline_passed()
        return self._stubs.chat.StreamChatCompletion(
            request, timeout=deadline.remaining(), metadata=self._metadata
        )


class AsyncChatStream:
    """`ChatStream` for asyncio: an async iterator of the events, `UsageEvent` last, and
    an async context manager that cancels the call on leaving. A cancelled task cancels
    its call too; `close()` does it at any time. (`await client.stream(...)` gives the
    stream too, as the `openai` library's spelling.)"""

    def __init__(
        self,
        client: AsyncTandem,
        request: chat_pb2.ChatCompletionRequest,
        deadline: Deadline,
    ) -> None:
        self._client = client
        self._request = request
        self._deadline = deadline
        self._call: StreamCall | None = None
        self._pending: deque[ChatEvent] = deque()
        self._received = False
        self._done = False
        self._closed = False
        self._retries = 0
        self.request_id: str | None = None
        """The gateway's id of the call (`x-request-id`), once its answer has begun."""
        self.usage: chat_pb2.Usage | None = None
        """The call's usage, once its last event has arrived."""

    def __aiter__(self) -> AsyncIterator[ChatEvent]:
        return self

    async def __anext__(self) -> ChatEvent:
        while not self._pending:
            if self._done:
                raise StopAsyncIteration
            try:
                await self._read()
            except TandemError:
                raise
            except BaseException:  # the task cancelled: the caller stops the answer
                self.close()
                raise
        return self._pending.popleft()

    async def _read(self) -> None:
        if self._call is None:
            self._call = self._client._open_stream(self._request, self._deadline)
        call = self._call
        try:
            chunk = await call.read()
            if not self._received and self.request_id is None:
                self.request_id = _request_id(await call.initial_metadata())
        except grpc.aio.AioRpcError as exc:
            if self._closed:
                return
            error = failure(exc)
            self.request_id = error.request_id or self.request_id
            delay = None
            if not self._received:
                max_retries = self._client.max_retries
                delay = retry_delay(error, self._retries, max_retries, self._deadline)
            if delay is None:
                self._done = True
                raise error from exc
            self._call = None
            await asyncio.sleep(delay)
            self._retries += 1
            return
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and (task is None or not task.cancelling()):
                return  # closed from elsewhere: the stream ends
            raise
        if not isinstance(chunk, chat_pb2.ChatCompletionChunk):  # grpc.aio.EOF: the end
            self._done = True
            return
        self._received = True
        for event in events_of(chunk):
            if isinstance(event, UsageEvent):
                self.usage = event.usage
            self._pending.append(event)

    def close(self) -> None:
        """Stop: the call is cancelled if it is still going."""
        self._closed = self._done = True
        self._pending.clear()
        if self._call is not None:
            self._call.cancel()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __await__(self) -> Generator[Any, None, Self]:
        async def itself() -> Self:
            return self

        return itself().__await__()

    def __del__(self) -> None:
        if getattr(self, "_call", None) is not None and not self._done:
            with contextlib.suppress(Exception):  # at exit, its channel or loop may be gone
                self.close()


def _request_id(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "x-request-id":
            return value if isinstance(value, str) else None
    return None
