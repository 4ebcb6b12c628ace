"""Tandem's Python client: `Tandem` (sync) and `AsyncTandem` (asyncio) over gRPC.

    from tandem.client import Tandem, TextDelta

    with Tandem("127.0.0.1:50051") as client:  # key: $TANDEM_API_KEY
        completion = client.chat([{"role": "user", "content": "Hi"}], model="echo")
        for event in client.stream([{"role": "user", "content": "Hi"}]):
            if isinstance(event, TextDelta):
                print(event.text, end="")

Answers are the `tandem.v1` protos (`ChatCompletion`, `Model`, `Key`, ...); a stream
yields the events below, `UsageEvent` last; failures raise the typed errors below,
`TandemError` their base.
"""

from tandem.client._async import AsyncChatStream, AsyncTandem
from tandem.client._channel import DEFAULT_TARGET, ENV_KEY, Connection
from tandem.client._errors import (
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    TandemError,
    TimeoutError,
    UnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
)
from tandem.client._events import (
    ChatEvent,
    Finished,
    ReasoningDelta,
    RefusalDelta,
    TextDelta,
    ToolCallDelta,
    UsageEvent,
)
from tandem.client._requests import NOT_GIVEN, NotGiven
from tandem.client._sync import ChatStream, Tandem

__all__ = [
    "DEFAULT_TARGET",
    "ENV_KEY",
    "NOT_GIVEN",
    "AsyncChatStream",
    "AsyncTandem",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "ChatEvent",
    "ChatStream",
    "Connection",
    "Finished",
    "InternalServerError",
    "NotFoundError",
    "NotGiven",
    "PermissionDeniedError",
    "RateLimitError",
    "ReasoningDelta",
    "RefusalDelta",
    "Tandem",
    "TandemError",
    "TextDelta",
    "TimeoutError",
    "ToolCallDelta",
    "UnavailableError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "UsageEvent",
]
