"""Config: built-in defaults, ${VAR} expansion, and strict validation at start."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from server.config import Config, ConfigError, ServerConfig, build_config, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tandem.yaml"
    path.write_text(text)
    return path


def test_builtin_config_is_the_documented_default() -> None:
    config = load_config(None, environ={})
    assert (config.server.http, config.server.grpc, config.server.workers) == (
        "127.0.0.1:8080",
        "127.0.0.1:50051",
        1,
    )
    assert [(p.name, p.kind) for p in config.providers] == [("mock", "mock")]
    assert [(m.name, m.provider) for m in config.models] == [("echo", "mock")]
    assert config.tiers["free"].default_model == "echo"
    assert config.tiers["free"].requests_per_minute is None
    assert config.tiers["free"].tokens_per_minute is None
    assert config.auth.required is False
    assert config.usage.store == f"sqlite:///{Path.cwd() / 'tandem.db'}"  # no file: here
    assert config.rate_limits.backend == "memory"
    assert config.server.max_body_bytes == 8388608
    assert (config.server.shutdown_grace_s, config.server.shutdown_delay_s) == (30, 0)


def test_openai_key_adds_the_openai_provider_and_its_models() -> None:
    config = load_config(
        None,
        environ={
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
            "TANDEM_OPENAI_MODELS": "gpt-4o-mini, gpt-4.1",
        },
    )
    openai = config.provider("openai")
    assert (openai.kind, openai.url, openai.api_key) == (
        "openai",
        "http://127.0.0.1:9/v1",
        "sk-test",
    )
    assert [(m.name, m.provider) for m in config.models][1:] == [
        ("gpt-4o-mini", "openai"),
        ("gpt-4.1", "openai"),
    ]
    default = load_config(None, environ={"OPENAI_API_KEY": "sk-test"})
    assert default.provider("openai").url == "https://api.openai.com/v1"
    assert [m.name for m in default.models] == ["echo", "gpt-4o-mini"]


def test_env_references_expand_with_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "providers:\n"
        "  - {name: up, kind: openai, base_url: 'http://${HOST:-127.0.0.1}:${PORT}/v1',"
        " api_key: '${KEY}'}\n"
        "models: [{name: m, provider: up}]\n",
    )
    config = load_config(path, environ={"PORT": "18080", "KEY": "secret"})
    assert config.provider("up").base_url == "http://127.0.0.1:18080/v1"
    assert config.provider("up").api_key == "secret"


def test_absent_sections_take_the_builtin_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "server: {http: '0.0.0.0:9000'}\n"), environ={})
    assert config.server.http == "0.0.0.0:9000"
    assert [m.name for m in config.models] == ["echo"]
    assert config.tiers["free"].default_model == "echo"


def test_absent_tiers_default_to_a_free_tier_on_the_first_model(tmp_path: Path) -> None:
    text = "providers: [{name: p, kind: mock}]\nmodels: [{name: a, provider: p}]\n"
    config = load_config(write(tmp_path, text), environ={})
    assert config.tiers["free"].default_model == "a"


def test_empty_file_is_the_builtin_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the store lies beside the file, or here without one
    assert load_config(write(tmp_path, ""), environ={}) == load_config(None, environ={})


@pytest.mark.parametrize(
    ("store", "opened"),
    [
        ("sqlite:///tandem.db", "conf/tandem.db"),
        ("sqlite:///../data/usage.db", "data/usage.db"),
        ("sqlite:///./x/y.db", "conf/x/y.db"),
        ("sqlite:////var/lib/tandem/usage.db", "/var/lib/tandem/usage.db"),
    ],
)
def test_a_relative_sqlite_store_is_the_config_files_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str, opened: str
) -> None:
    """Whatever the working directory: `tandem keys` run elsewhere opens what `serve` does."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    write(tmp_path / "conf", f"usage: {{store: {store!r}}}\n")
    config = load_config("../conf/tandem.yaml", environ={})
    assert config.usage.store == f"sqlite:///{tmp_path / opened}"


def test_a_linked_config_file_keeps_its_own_folder(tmp_path: Path) -> None:
    """A Kubernetes ConfigMap's file is a link into a folder renamed at each update: the
    store is beside the link, not beside what it points to."""
    (tmp_path / "..data").mkdir()
    target = write(tmp_path / "..data", "usage: {store: 'sqlite:///usage.db'}\n")
    (tmp_path / "config.yaml").symlink_to(target)
    config = load_config(tmp_path / "config.yaml", environ={})
    assert config.usage.store == f"sqlite:///{tmp_path / 'usage.db'}"


def test_a_postgresql_store_is_left_as_written(tmp_path: Path) -> None:
    url = "postgresql://u:p@db.example:5432/tandem?search_path=gw"
    config = load_config(write(tmp_path, f"usage: {{store: {url!r}}}\n"), environ={})
    assert config.usage.store == url


def test_contract_example_config_validates(tmp_path: Path) -> None:
    text = """
server: {http: "127.0.0.1:8080", grpc: "127.0.0.1:50051", workers: 1}
providers:
  - {name: local, kind: openai, base_url: "http://127.0.0.1:18080/v1", api_key: "${OPENAI_API_KEY}"}
  - {name: claude, kind: anthropic, base_url: "https://api.anthropic.com", api_key: "${ANTHROPIC_API_KEY}"}
  - {name: lab, kind: ollama, base_url: "http://127.0.0.1:11434"}
  - {name: demo, kind: mock}
models:
  - {name: gpt-4o-mini, provider: local, upstream: gpt-4o-mini, fallbacks: [claude-haiku]}
  - {name: claude-haiku, provider: claude, upstream: claude-haiku-4-5}
  - {name: echo, provider: demo}
tiers:
  free:     {default_model: echo, models: [echo], requests_per_minute: 60, tokens_per_minute: 20000}
  standard: {default_model: gpt-4o-mini, requests_per_minute: 600, tokens_per_minute: 200000}
auth:
  required: true
  key_cache_s: 1
  jwt: {secret: "${TANDEM_JWT_SECRET}", algorithms: [HS256], audience: tandem, issuer: null, tier_claim: tier}
  admin_keys: ["${TANDEM_ADMIN_KEY}"]
rate_limits: {backend: memory}
usage: {store: "sqlite:///tandem.db", flush_interval_ms: 500, batch_size: 200}
"""
    environ = {
        "OPENAI_API_KEY": "a",
        "ANTHROPIC_API_KEY": "b",
        "TANDEM_JWT_SECRET": "c" * 32,
        "TANDEM_ADMIN_KEY": "d",
    }
    config = load_config(write(tmp_path, text), environ=environ)
    assert isinstance(config, Config)
    assert config.models[0].fallbacks == ("claude-haiku",)
    assert config.tiers["standard"].tokens_per_minute == 200000
    assert config.auth.jwt is not None
    assert config.auth.jwt.audience == "tandem"


@pytest.mark.parametrize("store", ["none", None])
def test_usage_store_none_turns_recording_off(tmp_path: Path, store: str | None) -> None:
    text = f"usage: {{store: {'null' if store is None else store}}}\n"
    assert load_config(write(tmp_path, text), environ={}).usage.store == "none"


@pytest.mark.parametrize(
    ("origins", "expected"),
    [
        (
            ["https://App.Example:443", "http://a.example:80"],
            ("https://app.example", "http://a.example"),
        ),
        (
            ["http://localhost:8080", "http://[::1]:3000"],
            ("http://localhost:8080", "http://[::1]:3000"),
        ),
        (["*", "chrome-extension://abcdef"], ("*", "chrome-extension://abcdef")),
    ],
)
def test_listed_origins_are_kept_as_browsers_send_them(
    origins: list[str], expected: tuple[str, ...]
) -> None:
    assert build_config({"server": {"cors_origins": origins}}, {}).server.cors_origins == expected


@pytest.mark.parametrize(
    "origin",
    ["https://app.example/", "app.example", "https://*.example.com", "http://a:0", "null", ""],
)
def test_an_origin_must_be_scheme_host_and_port(origin: str) -> None:
    with pytest.raises(ConfigError, match=r"^server\.cors_origins\[1\]: expected scheme://host"):
        build_config({"server": {"cors_origins": ["https://ok.example", origin]}}, {})


def test_transport_bounds_have_their_documented_defaults() -> None:
    server = ServerConfig()
    assert server.max_header_bytes == 65536
    assert server.header_timeout_s == 10
    assert server.keep_alive_timeout_s == 75
    assert server.body_timeout_s == 30
    assert server.max_connections == 4096


def test_write_timeout_has_its_documented_default() -> None:
    assert ServerConfig().write_timeout_s == 30


def test_stored_responses_by_default_need_a_store() -> None:
    with pytest.raises(ConfigError, match=r"^responses\.store_default: true needs a store"):
        build_config({"usage": {"store": "none"}, "responses": {"store_default": True}}, {})
    config = build_config({"usage": {"store": "none"}, "responses": {"store_default": False}}, {})
    assert config.responses.store_default is False
    assert build_config({"usage": {"store": "none"}}, {}).responses.store_default is None


def test_a_models_price_is_exact_usd_per_million_tokens() -> None:
    """A YAML number or string, kept as the decimal written (a float by its shortest repr)."""
    config = build_config(
        {
            "models": [
                {
                    "name": "a",
                    "provider": "mock",
                    "price": {"input_per_mtok": 0.15, "output_per_mtok": 3},
                },
                {
                    "name": "b",
                    "provider": "mock",
                    "price": {
                        "input_per_mtok": "0.041666666666666664",
                        "output_per_mtok": "1e1",
                        "cached_input_per_mtok": 0.1,
                        "cache_write_per_mtok": "0",
                    },
                },
            ]
        },
        {},
    )
    a, b = (model.price for model in config.models)
    assert a is not None
    assert b is not None
    assert (a.input_per_mtok, a.output_per_mtok) == (Decimal("0.15"), Decimal(3))
    assert str(a.input_per_mtok) == "0.15"
    assert (a.cached_input_per_mtok, a.cache_write_per_mtok) == (None, None)
    assert b.input_per_mtok == Decimal("0.041666666666666664")
    assert (b.output_per_mtok, b.cached_input_per_mtok, b.cache_write_per_mtok) == (
        Decimal(10),
        Decimal("0.1"),
        Decimal(0),
    )
    assert build_config({}, {}).models[0].price is None


@pytest.mark.parametrize(
    ("price", "message"),
    [
        (
            {"input_per_mtok": -1, "output_per_mtok": 1},
            r"input_per_mtok: expected a finite, non-negative",
        ),
        (
            {"input_per_mtok": 1, "output_per_mtok": "NaN"},
            r"output_per_mtok: expected a finite, non-negative",
        ),
        (
            {"input_per_mtok": float("inf"), "output_per_mtok": 1},
            r"input_per_mtok: expected a finite",
        ),
        (
            {"input_per_mtok": "-Infinity", "output_per_mtok": 1},
            r"input_per_mtok: expected a finite",
        ),
        (
            {"input_per_mtok": "cheap", "output_per_mtok": 1},
            r"input_per_mtok: expected a number of US dollars, got 'cheap'",
        ),
        (
            {"input_per_mtok": True, "output_per_mtok": 1},
            r"input_per_mtok: expected a number of US dollars",
        ),
        ({"input_per_mtok": 1}, r"output_per_mtok: Field required"),
        (
            {"input_per_mtok": 1, "output_per_mtok": 1, "cached_per_mtok": 1},
            r"cached_per_mtok: unknown key",
        ),
    ],
)
def test_a_bad_price_names_its_key(price: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=r"^models\[0\]\.price\." + message):
        build_config({"models": [{"name": "m", "provider": "mock", "price": price}]}, {})


def test_price_provider_must_be_a_genai_prices_provider() -> None:
    providers = [{"name": "p", "kind": "openai", "price_provider": "groq"}]
    config = build_config({"providers": providers, "models": [{"name": "m", "provider": "p"}]}, {})
    assert config.providers[0].price_provider == "groq"
    providers = [
        {"name": "mock", "kind": "mock"},
        {"name": "p", "kind": "openai", "price_provider": "grok"},
    ]
    with pytest.raises(
        ConfigError, match=r"^providers\[1\]\.price_provider: unknown genai-prices provider 'grok'$"
    ):
        build_config({"providers": providers}, {})


def test_a_tier_budget_fits_in_nanos_up_to_the_admin_apis_bound() -> None:
    most = "9223372036.854775807"  # 2**63 - 1 nanos: a BIGINT, as a key's budget
    config = build_config({"tiers": {"free": {"budget": {"usd": most}}}}, {})
    budget = config.tiers["free"].budget
    assert budget is not None
    assert budget.nanos == 2**63 - 1
    assert build_config({"tiers": {"free": {"budget": {"usd": 0.5}}}}, {}).tiers[
        "free"
    ].budget == type(budget)(usd=Decimal("0.5"))


@pytest.mark.parametrize(
    ("usd", "message"),
    [
        ("9223372036.854775808", r"at most 9223372036\.854775807 US dollars"),
        (1e30, r"at most 9223372036\.854775807 US dollars"),  # was decimal.InvalidOperation
        ("1e999999", r"at most 9223372036\.854775807 US dollars"),
        ("0.0000000001", r"at most 9 decimal places"),
        ("1e-2000000000", r"at most 9 decimal places"),  # was $0: the context's underflow
    ],
)
def test_a_tier_budget_out_of_bounds_is_one_line_naming_its_key(usd: object, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^tiers\.free\.budget\.usd: " + message):
        build_config({"tiers": {"free": {"budget": {"usd": usd}}}}, {})
