"""What tests/test_python_client.py asks `tandem.client` to do from a venv that holds
only `clients/python` (run as `python -I client_scenarios.py SCENARIO TARGET KEY...`):
it imports nothing but the package and the standard library, and prints one JSON
object, what it saw, as its last line. `stream_cut` prints `first` once the stream's
first event arrived, for the test to cut the connection."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from tandem.client import (
    AsyncTandem,
    BudgetExceededError,
    ChatEvent,
    RateLimitError,
    Tandem,
    TandemError,
    TextDelta,
    UsageEvent,
)

Scenario = Callable[..., dict[str, Any]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(run: Scenario) -> Scenario:
    SCENARIOS[run.__name__] = run
    return run


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def event_json(event: ChatEvent) -> dict[str, Any]:
    if isinstance(event, UsageEvent):
        usage = event.usage
        fields: dict[str, Any] = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }
    else:
        fields = asdict(event)
    return {"event": type(event).__name__, **fields}


def error_json(error: TandemError, started: float | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {
        "class": type(error).__name__,
        "mro": [cls.__name__ for cls in type(error).__mro__],
        "code": error.code.name if error.code is not None else None,
        "type": error.type,
        "error_code": error.error_code,
        "param": error.param,
        "request_id": error.request_id,
        "message": error.message,
        "str": str(error),
    }
    if isinstance(error, RateLimitError):
        found.update(retry_after=error.retry_after, should_retry=error.should_retry)
    if started is not None:
        found["elapsed"] = time.monotonic() - started
    return found


def failure(call: Callable[[], object]) -> dict[str, Any]:
    started = time.monotonic()
    try:
        call()
    except TandemError as error:
        return error_json(error, started)
    return {"class": None}


@scenario
def answers(target: str, key: str) -> dict[str, Any]:
    with Tandem(target, key=key) as client:
        completion = client.chat(user("hello there"), model="echo", max_tokens=5)
        embedded = client.embed(["one", "two"], model="echo")
        return {
            "content": completion.choices[0].message.content,
            "finish_reason": completion.choices[0].finish_reason,
            "model": completion.model,
            "usage": [completion.usage.prompt_tokens, completion.usage.completion_tokens],
            "models": [model.id for model in client.models()],
            "embeddings": [len(e.embedding) for e in embedded.data],
        }


@scenario
def stream(target: str, key: str) -> dict[str, Any]:
    with Tandem(target, key=key) as client, client.stream(user("one two three")) as events:
        seen = [event_json(event) for event in events]
        return {"events": seen, "request_id": events.request_id, "usage": bool(events.usage)}


@scenario
def async_client(target: str, key: str) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async with AsyncTandem(target, key=key, timeout=20) as client:
            completion = await client.chat(user("async hello"), model="echo")
            events = client.stream(user("async stream"), model="echo")
            seen = [event_json(event) async for event in events]
            try:
                await client.chat(user("hi"), model="ghost")
                error: dict[str, Any] = {"class": None}
            except TandemError as exc:
                error = error_json(exc)
            async with client.stream(user("a b c d e f"), model="echo") as early:
                async for _ in early:
                    break  # leaving the block cancels the call
            return {
                "content": completion.choices[0].message.content,
                "events": seen,
                "request_id": events.request_id,
                "error": error,
                "models": [model.id for model in await client.models()],
            }

    return asyncio.run(run())


@scenario
def errors(target: str, key: str, budget_key: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    with Tandem(target, key="not-a-key") as stranger:
        found["401"] = failure(lambda: stranger.chat(user("hi"), model="echo"))
    with Tandem(target, key=key) as client:
        found["403"] = failure(lambda: client.chat(user("hi"), model="private"))
        found["404"] = failure(lambda: client.chat(user("hi"), model="ghost"))
        found["400"] = failure(lambda: client.chat(user("hi"), model="echo", temperature=2.5))
        found["admin"] = failure(lambda: client.list_keys())
        found["502"] = failure(lambda: client.chat(user("hi"), model="relay"))
        found["502 stream"] = failure(lambda: list(client.stream(user("hi"), model="relay")))
    with Tandem(target, key=budget_key) as spender:
        found["budget"] = failure(lambda: spender.chat(user("hi"), model="priced"))
    return found


@scenario
def rate_limits(target: str, key: str) -> dict[str, Any]:
    """The key allows 600 tokens a minute (10 a second)."""
    with Tandem(target, key=key, max_retries=0) as once, Tandem(target, key=key) as retrying:
        never = failure(lambda: retrying.chat(user("w " * 700), model="echo"))
        # 591 of the 600 tokens: a 20-token call then waits about a second
        once.chat(user("w " * 590), model="echo", max_tokens=1)
        refused = failure(lambda: once.chat(user("w " * 20), model="echo"))
        started = time.monotonic()
        answer = retrying.chat(user("w " * 20), model="echo")
        return {
            "never": never,
            "refused": refused,
            "retried_after": time.monotonic() - started,
            "answer_words": len((answer.choices[0].message.content or "").split()),
        }


@scenario
def timeouts(target: str, key: str) -> dict[str, Any]:
    with Tandem(target, key=key, timeout=30) as client:
        words: list[str] = []

        def slow_stream() -> None:
            for event in client.stream(user("a b c d e f g h"), model="slow-echo", timeout=0.5):
                if isinstance(event, TextDelta):
                    words.append(event.text)

        streamed = failure(slow_stream)
        whole = failure(lambda: client.chat(user("a b c d e f"), model="slow-echo", timeout=0.4))
        quick = client.chat(user("quick"), model="echo").choices[0].message.content
    with Tandem(target, key=key, timeout=0.4) as hasty:  # the client's own default
        default = failure(lambda: hasty.chat(user("a b c d e f"), model="slow-echo"))
    return {
        "stream": streamed,
        "words": words,
        "whole": whole,
        "default": default,
        "quick": quick,
    }


@scenario
def stream_cut(target: str, key: str) -> dict[str, Any]:
    words: list[str] = []
    with Tandem(target, key=key, max_retries=2) as client:

        def cut_stream() -> None:
            for event in client.stream(user("a b c d e f g h i j"), model="slow-echo"):
                if isinstance(event, TextDelta):
                    if not words:
                        print("first", flush=True)
                    words.append(event.text)

        error = failure(cut_stream)
    return {"error": error, "words": words}


@scenario
def admin(target: str, admin_key: str) -> dict[str, Any]:
    with Tandem(target, key=admin_key) as client:
        created = client.create_key(
            "venv-user",
            models=["echo"],
            budget_usd="2.5",
            budget_period="daily",
            labels={"team": "client"},
        )
        with Tandem(target, key=created.key) as user_client:
            answer = user_client.chat(user("from a new key"))
        got = client.get_key(created.id)
        listed = client.list_keys(user="venv-user")
        updated = client.update_key(created.id, tokens_per_minute=1000, budget_usd=None)
        revoked = client.revoke_key(created.id)
        waited = time.monotonic() + 5  # the gateway writes its records in batches
        while not (usage := client.usage(user="venv-user")).records and time.monotonic() < waited:
            time.sleep(0.05)
        spend = client.spend(user="venv-user", group_by="model")
        return {
            "secret": created.key.startswith("sk-") or bool(created.key),
            "user": got.user,
            "models": list(got.models.names),
            "budget": [got.budget.usd, got.budget.period],
            "labels": dict(got.labels),
            "listed": [k.id for k in listed.keys] == [created.id],
            "updated": [updated.tokens_per_minute, updated.HasField("budget")],
            "revoked": revoked.revoked,
            "answer": answer.choices[0].message.content,
            "spend_groups": [g.group for g in spend.groups],
            "usage_records": len(usage.records),
            "budget_class": BudgetExceededError.__name__,
        }


def main() -> None:
    name, *args = sys.argv[1:]
    print(json.dumps(SCENARIOS[name](*args)), flush=True)


if __name__ == "__main__":
    main()
