"""What a non-2xx upstream answer means for the caller, as a class of the error tree.

Nothing in an error says which host or key was used: the upstream's own
words may name them, so of its body only a well-formed `param` passes; a relayed
Responses call (`relayed_error`, and a relayed stream's own error events:
`scrub_error`) passes the upstream's message too, its URLs, host names and keys cut
out.
"""

from __future__ import annotations

import contextlib
import email.utils
import re
import time
from collections.abc import Mapping
from typing import Any

import orjson

from server.errors import GatewayError, InvalidRequestError, NotFoundError, UpstreamError

__all__ = ["relayed_error", "scrub_error", "scrubbed", "status_error"]


def _retry_after(headers: Mapping[str, str]) -> float | None:
    if (ms := headers.get("retry-after-ms")) is not None:
        with contextlib.suppress(ValueError):
            return max(float(ms) / 1000, 0.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return max(float(value), 0.0)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value).timestamp()
        return max(when - time.time(), 0.0)
    return None


_FIELD = re.compile(r"[A-Za-z0-9_.\[\]]{1,100}")


def _upstream_error(body: bytes) -> dict[str, Any]:
    """The `error` object of an OpenAI- or Anthropic-shaped error body, else `{}`."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else {}


def _upstream_param(body: bytes) -> str | None:
    """The field an OpenAI- or Anthropic-shaped error body names, if it looks like one."""
    param = _upstream_error(body).get("param")
    return param if isinstance(param, str) and _FIELD.fullmatch(param) else None


def status_error(status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
    """What a non-2xx upstream answer means for the caller."""
    if status in (408, 429) or status >= 500:
        return UpstreamError(
            f"upstream provider answered HTTP {status}",
            retryable=True,
            retry_after_s=_retry_after(headers),
        )
    if status in (400, 413, 422):
        # the upstream's own words may name hosts, keys or internals: only its `param` passes
        param = _upstream_param(body)
        where = f" (field {param})" if param else ""
        return InvalidRequestError(f"upstream provider rejected the request{where}", param=param)
    if status in (401, 403):
        return UpstreamError("upstream provider refused the gateway's credentials")
    return UpstreamError(f"upstream provider answered HTTP {status}")


MAX_MESSAGE_CHARS = 512
# what may name where the upstream is, or hold a credential: URLs, host:port, host names
# (labels with a dot, the last a word of letters: `api.internal.corp`, also a dotted
# field name such as `text.format`, which the error's `param` still names; not one
# with `_`, `[` or a leading `.`: `input[0].content`, `reasoning.encrypted_content`),
# bearer tokens and `sk-`-style keys
_SECRET_LIKE = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]*://\S+"
    r"|\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"
    r"|\b[A-Za-z0-9.-]+\.[A-Za-z]{2,}:\d+\b"
    r"|(?<![\w.\[\]-])(?:[A-Za-z0-9-]+\.)+[A-Za-z][A-Za-z0-9-]*[A-Za-z](?![\w-])"
    r"|\b(?:sk|pk|rk|key)-[A-Za-z0-9_-]{8,}"
    r"|(?i:bearer)\s+\S+"
)


# what the patterns read of a message: they backtrack, so their time grows with the
# square of its length (a 100 KB message took 35 s of the event loop)
_WINDOW = 2 * MAX_MESSAGE_CHARS
_LAST_WORD = re.compile(r"\S+\Z")


def scrubbed(message: str, secrets: tuple[str, ...]) -> str:
    """An upstream's message with its URLs, hosts and keys (and the `secrets` given:
    the provider's own URL and key) cut out, at most `MAX_MESSAGE_CHARS` long."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, "[redacted]")
    if len(message) > _WINDOW:  # the word cut at the window's edge may be a key's start
        message = _LAST_WORD.sub("", message[:_WINDOW])
    message = _SECRET_LIKE.sub("[redacted]", message)
    return message[:MAX_MESSAGE_CHARS]


def scrub_error(error: dict[str, Any], secrets: tuple[str, ...]) -> None:
    """An error object of a relayed stream (an `error` event, or `response.failed`'s
    `error`) made fit for the caller, in place, as `relayed_error` makes a 4xx's: its
    `message` `scrubbed`, its `code` and `param` kept only if they look like names."""
    message = error.get("message")
    if message is not None:
        error["message"] = scrubbed(message, secrets) if isinstance(message, str) else None
    for key in ("code", "param"):
        value = error.get(key)
        if value is not None and not (isinstance(value, str) and _FIELD.fullmatch(value)):
            error[key] = None


def relayed_error(
    status: int, headers: Mapping[str, str], body: bytes, secrets: tuple[str, ...]
) -> GatewayError:
    """What a non-2xx answer to a relayed Responses call means for the caller: as
    `status_error`, but a 4xx the upstream explains (OpenAI's body) carries its message,
    scrubbed (`scrubbed`), and a 404 it explains (a `previous_response_id` it does not
    know) is the caller's 404."""
    error = _upstream_error(body)
    message = error.get("message")
    if not isinstance(message, str) or not message or not (400 <= status < 500):
        return status_error(status, headers, body)
    if status in (401, 403, 408, 429):  # the gateway's credentials, or worth a retry
        return status_error(status, headers, body)
    param = _upstream_param(body)
    code = error.get("code")
    code = code if isinstance(code, str) and _FIELD.fullmatch(code) else None
    text = f"upstream provider: {scrubbed(message, secrets)}"
    if status == 404:
        return NotFoundError(text, param=param, code=code)
    return InvalidRequestError(text, param=param, code=code)
