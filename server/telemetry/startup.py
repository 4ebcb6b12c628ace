"""What `tandem serve` logs once at start (the parent alone, with N workers).

One line each for the store, the providers, the models and their prices (the price
data's version, and each model's source of prices or `unpriced`), then a warning for
each weak setting: a short JWT secret or admin key, the example Secret's
placeholder, the memory rate-limit backend split over workers. Never a secret:
a key is named by its config path, and a URL is logged without its user name and
password.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit

from server.config import Config
from server.usage.prices import Prices

__all__ = ["PLACEHOLDER", "describe_store", "log_start"]

logger = logging.getLogger("tandem")

# what every value of deploy/k8s-examples/secret.yaml holds until it is filled in
PLACEHOLDER = "REPLACE-ME"
MIN_JWT_SECRET_BYTES = 32  # an HS256 key shorter than its hash is guessable (RFC 7518 3.2)
MIN_ADMIN_KEY_CHARS = 20
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]{0,19}", re.IGNORECASE)
_SECRET_PARAMETER = re.compile(r"pass|key|token|secret|sig|user", re.IGNORECASE)


def public_url(url: str) -> str:
    """`url` without its user info (a user name can be a token too) and with the values
    of secret-looking parameters hidden. The host part is kept as written, never parsed:
    a multi-host PostgreSQL URL (`h1:5432,h2:5432`) has no one port. Never raises."""
    try:
        parts = urlsplit(url)
        query = urlencode(
            [
                (name, "***" if _SECRET_PARAMETER.search(name) else value)
                for name, value in parse_qsl(parts.query, keep_blank_values=True)
            ],
            safe="*/:,",
        )
    except ValueError:  # not even split: only a plain scheme is shown
        scheme = url.partition(":")[0]
        return f"{scheme if _SCHEME.fullmatch(scheme) else 'URL'} (details hidden)"
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}{'?' if query else ''}{query}"


def describe_store(url: str) -> str:
    """The database of a `usage.store` URL (made absolute by `load_config`), for a log."""
    if url == "none":
        return "none (no API keys, no usage ledger)"
    if url.startswith("sqlite:///"):
        return f"SQLite {url.removeprefix('sqlite:///')}"
    return f"PostgreSQL {public_url(url)}"


def _password(url: str) -> str:
    try:
        return urlsplit(url).password or ""
    except ValueError:
        return ""


def _summary(config: Config, prices: Prices) -> Iterator[str]:
    yield f"store: {describe_store(config.usage.store)}"
    providers = ", ".join(
        f"{p.name} ({p.kind}{', ' + public_url(p.url) if p.kind != 'mock' else ''})"
        for p in config.providers
    )
    yield f"providers: {providers}"
    models = ", ".join(
        f"{m.name} ({m.provider}{'' if m.upstream_name == m.name else ': ' + m.upstream_name})"
        for m in config.models
    )
    yield f"models: {models}"
    yield f"prices: {prices.describe()}"


def _secrets(config: Config) -> Iterator[tuple[str, str]]:
    """(config path, value) of every setting that holds a secret."""
    jwt = config.auth.jwt
    if jwt is not None and jwt.secret is not None:
        yield "auth.jwt.secret", jwt.secret
    for i, key in enumerate(config.auth.admin_keys):
        yield f"auth.admin_keys[{i}]", key
    for i, provider in enumerate(config.providers):
        if provider.api_key:
            yield f"providers[{i}].api_key", provider.api_key
    yield "usage.store", _password(config.usage.store)
    yield "rate_limits.url", _password(config.rate_limits.url or "")


def _warnings(config: Config, workers: int) -> Iterator[str]:
    for where, value in _secrets(config):
        if PLACEHOLDER in value:
            yield (
                f"{where}: still the placeholder of the example Secret "
                "(deploy/k8s-examples/secret.yaml); set a secret of your own"
            )
    secret = config.auth.jwt.secret if config.auth.jwt is not None else None
    if secret is not None and len(secret.encode()) < MIN_JWT_SECRET_BYTES:
        yield (
            f"auth.jwt.secret: shorter than {MIN_JWT_SECRET_BYTES} bytes, so tokens can be "
            "forged by guessing it; use a long random secret"
        )
    for i, key in enumerate(config.auth.admin_keys):
        if len(key) < MIN_ADMIN_KEY_CHARS:
            yield (
                f"auth.admin_keys[{i}]: shorter than {MIN_ADMIN_KEY_CHARS} characters; "
                "use a long random key"
            )
    if workers > 1 and config.rate_limits.backend == "memory":
        yield (
            f"rate limits: memory backend with {workers} workers gives each worker 1/{workers} "
            "of every budget; use the redis backend for exact shared budgets"
        )
        for name, tier in config.tiers.items():
            limit = tier.max_concurrent_requests
            if limit is not None:
                yield (
                    f"tiers.{name}.max_concurrent_requests: with the memory backend each of "
                    f"the {workers} workers allows {-(-limit // workers)} (ceil({limit} / "
                    f"{workers})); use the redis backend for one limit across workers"
                )


def log_start(config: Config, workers: int, prices: Prices) -> None:
    """The start-up lines (formatted here: a log argument would be cut to 256 characters)."""
    for line in _summary(config, prices):
        logger.info(line)
    for line in _warnings(config, workers):
        logger.warning(line)
