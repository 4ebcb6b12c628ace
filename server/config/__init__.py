"""The gateway's configuration: one frozen, strict model, loaded from YAML.

`${VAR}` and `${VAR:-default}` are expanded from the environment before the
model validates, so every error names the key it came from. Any problem is a
`ConfigError` whose message is one line naming the key.

Here: the model (`Config`) with the sections of the core (server, providers,
models, tiers) and the loading; the sections around the core are in
`sections.py`, what they all build on in `base.py`. Import from `server.config`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from server.config.base import (
    ConfigError,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Usd,
    parse_host_port,
)
from server.config.base import Strict as _Strict
from server.config.sections import (
    MAX_BUDGET_NANOS,
    MAX_BUDGET_USD,
    AuthConfig,
    BudgetConfig,
    BudgetsConfig,
    JwtConfig,
    Period,
    RateLimitConfig,
    ResponsesConfig,
    TelemetryConfig,
    UsageConfig,
    whole_nanos,
)

__all__ = [
    "MAX_BUDGET_NANOS",
    "MAX_BUDGET_USD",
    "AuthConfig",
    "BudgetConfig",
    "BudgetsConfig",
    "Config",
    "ConfigError",
    "JwtConfig",
    "ModelConfig",
    "ModelPrice",
    "Period",
    "ProviderConfig",
    "ProviderKind",
    "RateLimitConfig",
    "ResponsesConfig",
    "ServerConfig",
    "TelemetryConfig",
    "TierConfig",
    "UsageConfig",
    "load_config",
    "parse_host_port",
    "whole_nanos",
]

# the provider kinds: each is built by its entry in `server/providers/__init__.py`'s
# `KINDS` (a test ties the two)
ProviderKind = Literal["openai", "anthropic", "ollama", "mock"]
DEFAULT_BASE_URLS: dict[ProviderKind, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "ollama": "http://127.0.0.1:11434",
}
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


_ORIGIN = re.compile(r"([a-z][a-z0-9+.-]*)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(\d{1,5}))?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(value: str) -> str:
    """`*`, or an origin as a browser sends it: lowercase, no default port."""
    match = _ORIGIN.fullmatch(value.lower())
    if value != "*" and (match is None or not 0 < int(match[3] or 1) < 65536):
        raise ValueError(f"expected scheme://host[:port] with no path, or *, got {value!r}")
    if match is None:
        return value
    scheme, host, port = match.groups()
    if port is None or int(port) == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{int(port)}"


class ModelPrice(_Strict):
    """A model's own price in US dollars per million tokens, which wins over genai-prices'.
    Absent cache prices are the input price (as genai-prices prices unpriced cache tokens);
    reasoning tokens are output tokens."""

    input_per_mtok: Usd
    output_per_mtok: Usd
    cached_input_per_mtok: Usd | None = None
    cache_write_per_mtok: Usd | None = None


def _price_provider(value: str | None) -> str | None:
    """A genai-prices provider id, checked against its bundled data (imported only here, when
    one is set: server/usage/prices.py)."""
    if value is None:
        return None
    from genai_prices.data_snapshot import find_provider_by_id, get_snapshot

    if find_provider_by_id(get_snapshot().providers, value) is None:
        raise ValueError(f"unknown genai-prices provider {value!r}")
    return value


class ServerConfig(_Strict):
    http: str = "127.0.0.1:8080"
    grpc: str = "127.0.0.1:50051"
    workers: PositiveInt = 1
    max_body_bytes: PositiveInt = 8 * 1024 * 1024
    shutdown_grace_s: NonNegativeFloat = 30.0
    shutdown_delay_s: NonNegativeFloat = 0.0
    # HTTP transport bounds, enforced per connection by http_bridge/transport.py
    max_header_bytes: PositiveInt = 64 * 1024  # request line and headers together
    header_timeout_s: PositiveFloat = 10.0  # a request's first byte to the end of its headers
    body_timeout_s: PositiveFloat = 30.0  # the end of the headers to the last body byte
    keep_alive_timeout_s: PositiveFloat = 75.0  # an idle connection, before and between requests
    max_connections: PositiveInt = 4096  # open HTTP connections per worker process
    write_timeout_s: PositiveFloat = 30.0  # an answer whose bytes stop leaving: the connection goes
    # browser origins allowed to call the gateway, "*" all: http_bridge/cors.py
    cors_origins: tuple[Annotated[str, AfterValidator(_origin)], ...] = ()

    @field_validator("http", "grpc")
    @classmethod
    def _host_port(cls, value: str) -> str:
        parse_host_port(value)
        return value


class ProviderConfig(_Strict):
    name: Annotated[str, Field(min_length=1)]
    kind: ProviderKind
    base_url: str | None = None
    api_key: str | None = None
    timeout_s: Annotated[float, Field(gt=0)] = 120.0
    connect_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    max_retries: Annotated[int, Field(ge=0)] = 2
    # connections open to the upstream at once (each carries one request): as many as a
    # worker accepts (server.max_connections), so the pool is never the first bound
    max_connections: Annotated[int, Field(ge=1, le=65536)] = 4096
    chunk_delay_ms: Annotated[float, Field(ge=0)] = 0.0
    # what of a request's `extra_body` may reach an `openai`-kind upstream (or, of the
    # fields `/v1/messages` kept, an `anthropic`-kind one): all, none, or the fields named
    extra_fields: Literal["allow", "deny"] | tuple[Annotated[str, Field(min_length=1)], ...] = (
        "allow"
    )
    # a message's `reasoning_content` sent back goes to an `openai`-kind upstream (some
    # refuse it, so by default it is left out and named in `x-tandem-ignored-fields`)
    send_reasoning: bool = False
    # `/v1/responses` for this provider's models: translated to chat completions, or
    # (`native`, an `openai`-kind server that speaks the Responses API) sent as it is
    responses: Literal["translate", "native"] = "translate"
    # the genai-prices provider whose prices its models have; unset: the one genai-prices
    # matches to `url`, else the kind's (server/usage/prices.py)
    price_provider: Annotated[str | None, AfterValidator(_price_provider)] = None

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> ProviderConfig:
        if self.kind == "mock":
            for key in ("base_url", "api_key"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} does not apply to kind mock")
            if "max_connections" in self.model_fields_set:
                raise ValueError("max_connections does not apply to kind mock")
        elif "chunk_delay_ms" in self.model_fields_set:
            raise ValueError("chunk_delay_ms applies only to kind mock")
        # other kinds take no extra field, and only openai takes unsigned reasoning back
        if self.kind not in ("openai", "anthropic") and "extra_fields" in self.model_fields_set:
            raise ValueError("extra_fields applies only to kinds openai and anthropic")
        if self.kind != "openai" and "send_reasoning" in self.model_fields_set:
            raise ValueError("send_reasoning applies only to kind openai")
        if self.kind != "openai" and self.responses == "native":
            raise ValueError("responses: native applies only to kind openai")
        return self

    @property
    def url(self) -> str:
        """The base URL, or the kind's public default."""
        return self.base_url or DEFAULT_BASE_URLS.get(self.kind, "")


class ModelConfig(_Strict):
    name: Annotated[str, Field(min_length=1)]
    provider: str
    upstream: str | None = None
    fallbacks: tuple[str, ...] = ()
    max_tokens_default: PositiveInt = 4096
    # what the model can do, as Ollama's `/api/show` says it (`completion`, `embedding`,
    # `tools`, `thinking`, `vision`, ...); unset: `[completion]`, or for an `ollama`-kind
    # model what its upstream's `/api/show` says
    capabilities: tuple[Annotated[str, Field(min_length=1)], ...] | None = None
    price: ModelPrice | None = None  # unset: genai-prices' price of `upstream`, if it has one

    @property
    def upstream_name(self) -> str:
        return self.upstream or self.name


class TierConfig(_Strict):
    default_model: str | None = None
    models: tuple[str, ...] | None = None
    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    max_concurrent_requests: PositiveInt | None = None  # a caller's calls in flight at once
    budget: BudgetConfig | None = None  # each caller of the tier has its own


class Config(_Strict):
    server: ServerConfig = ServerConfig()
    providers: tuple[ProviderConfig, ...]
    models: tuple[ModelConfig, ...]
    tiers: dict[str, TierConfig]
    auth: AuthConfig = AuthConfig()
    rate_limits: RateLimitConfig = RateLimitConfig()
    usage: UsageConfig = UsageConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    responses: ResponsesConfig = ResponsesConfig()
    budgets: BudgetsConfig = BudgetsConfig()

    @model_validator(mode="after")
    def _responses_have_a_store(self) -> Config:
        if self.responses.store_default and self.usage.store == "none":
            raise ValueError(
                "responses.store_default: true needs a store to keep responses in "
                "(usage.store is none)"
            )
        return self

    @model_validator(mode="after")
    def _budgets_have_a_store(self) -> Config:
        for name, tier in self.tiers.items():
            if tier.budget is not None and self.usage.store == "none":
                raise ValueError(
                    f"tiers.{name}.budget needs a store to keep spend in (usage.store is none)"
                )
        return self

    @model_validator(mode="after")
    def _references_resolve(self) -> Config:
        providers = _unique_names("providers", [p.name for p in self.providers])
        models = _unique_names("models", [m.name for m in self.models])
        for i, model in enumerate(self.models):
            if model.provider not in providers:
                raise ValueError(f"models[{i}].provider: unknown provider {model.provider!r}")
            for fallback in model.fallbacks:
                if fallback not in models or fallback == model.name:
                    raise ValueError(f"models[{i}].fallbacks: unknown model {fallback!r}")
        for tier_name, tier in self.tiers.items():
            if tier.default_model is not None and tier.default_model not in models:
                raise ValueError(
                    f"tiers.{tier_name}.default_model: unknown model {tier.default_model!r}"
                )
            for name in tier.models or ():
                if name not in models:
                    raise ValueError(f"tiers.{tier_name}.models: unknown model {name!r}")
        return self

    def provider(self, name: str) -> ProviderConfig:
        return next(p for p in self.providers if p.name == name)


def _unique_names(section: str, names: list[str]) -> set[str]:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(f"{section}[{i}].name: duplicate name {name!r}")
        seen.add(name)
    return seen


def default_sections(environ: Mapping[str, str]) -> dict[str, Any]:
    """The built-in sections that `make run` starts on.

    With OPENAI_API_KEY set, an `openai` provider is added with the models
    named in TANDEM_OPENAI_MODELS.
    """
    providers: list[dict[str, Any]] = [{"name": "mock", "kind": "mock"}]
    models: list[dict[str, Any]] = [{"name": "echo", "provider": "mock"}]
    if environ.get("OPENAI_API_KEY"):
        providers.append(
            {
                "name": "openai",
                "kind": "openai",
                "base_url": environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URLS["openai"],
                "api_key": environ["OPENAI_API_KEY"],
            }
        )
        names = environ.get("TANDEM_OPENAI_MODELS") or "gpt-4o-mini"
        models += [{"name": n.strip(), "provider": "openai"} for n in names.split(",") if n.strip()]
    return {"providers": providers, "models": models}


def default_tiers(models: list[Any]) -> dict[str, Any]:
    """Tier `free`, no limits, defaulting to `echo` (or the first model)."""
    names = [m.get("name") for m in models if isinstance(m, dict)]
    default = "echo" if "echo" in names else next(iter(names), None)
    return {"free": {"default_model": default}}


def expand_env(value: Any, environ: Mapping[str, str], path: str = "") -> Any:
    """Expand `${VAR}` / `${VAR:-default}` in every string of a YAML tree."""
    if isinstance(value, dict):
        return {k: expand_env(v, environ, _join(path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, environ, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{path}: environment variable {name} is not set")

    return _ENV_REFERENCE.sub(substitute, value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _format_location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text = _join(text, part)
    return text


def build_config(raw: Mapping[str, Any], environ: Mapping[str, str]) -> Config:
    """Validate a parsed YAML document, filling absent sections with the defaults."""
    expanded = expand_env(dict(raw), environ)
    for section, default in default_sections(environ).items():
        expanded.setdefault(section, default)
    if "tiers" not in expanded and isinstance(expanded["models"], list):
        expanded["tiers"] = default_tiers(expanded["models"])
    try:
        return Config.model_validate(expanded)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = _format_location(tuple(error["loc"]))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        raise ConfigError(f"{where}: {message}" if where else message) from None


_SQLITE = "sqlite:///"


def _resolve_store(config: Config, base: Path) -> Config:
    """`usage.store` with a relative SQLite path made absolute from `base`: every command
    that opens the store (`serve`, `keys`) then opens the same file, wherever it runs."""
    url = config.usage.store
    if not url.startswith(_SQLITE) or url.startswith(_SQLITE + "/"):
        return config
    path = os.path.normpath(base.absolute() / url.removeprefix(_SQLITE))
    usage = config.usage.model_copy(update={"store": _SQLITE + path})
    return config.model_copy(update={"usage": usage})


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the YAML file at `path`, or the built-in config when `path` is None.

    A relative `sqlite:///` store is relative to the file's folder (not where the
    file links to: a ConfigMap's file is a link into a folder that changes), or to
    the working directory without a file.
    """
    env = os.environ if environ is None else environ
    if path is None:
        return _resolve_store(build_config({}, env), Path.cwd())
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return _resolve_store(build_config(raw, env), Path(path).parent)
