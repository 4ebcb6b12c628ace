"""What a non-2xx upstream answer means for the caller, as a class of the error tree.

Nothing in an error says which host or key was used: the upstream's own
words may name them, so of its body only a well-formed `param` passes.
"""

from __future__ import annotations

import contextlib
import email.utils
import re
import time
from collections.abc import Mapping
from typing import Any

import orjson

from server.errors import GatewayError, InvalidRequestError, UpstreamError

__all__ = ["status_error"]


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


def _upstream_param(body: bytes) -> str | None:
    """The field an OpenAI- or Anthropic-shaped error body names, if it looks like one."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    param = error.get("param") if isinstance(error, dict) else None
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
