"""What `tandem serve` logs at start, on a live server: the store (its absolute path),
the providers, the models and their prices, one line each, once whatever the workers; a warning
for a weak JWT secret or admin key and for the example Secret's placeholders,
naming the key, never its value."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import yaml

from tests.balancer import free_ports
from tests.servers import TandemProcess
from tests.stores import pg_schema_url

SECRET_EXAMPLE = Path(__file__).parent.parent / "deploy" / "k8s-examples" / "secret.yaml"
JWT_SECRET = "short-jwt-secret"  # 16 bytes
ADMIN_KEYS = ("admin-short", "admin-key-long-enough-0123456789")
API_KEY = "sk-provider-key-0123456789"
CONFIG = """
providers:
  - {name: demo, kind: mock}
  - {name: up, kind: openai, base_url: "http://gw:url-password@127.0.0.1:9/v1?api_key=q-secret&v=2", api_key: "%(api_key)s"}
  - {name: lab, kind: ollama}
models:
  - {name: echo, provider: demo}
  - {name: gpt, provider: up, upstream: gpt-4o}
  - {name: llama, provider: lab, upstream: "llama3.2:1b"}
auth: {jwt: {secret: "%(jwt)s", require_exp: false}, admin_keys: %(admin)s}
usage: {store: "sqlite:///data/usage.db"}
"""


def logged(server: TandemProcess) -> list[tuple[str, str]]:
    """(level, message) of every `tandem` log line so far."""
    lines = [orjson.loads(line) for line in server.settled_stderr().splitlines()]
    return [(line["level"], line["message"]) for line in lines if line.get("logger") == "tandem"]


def config(
    jwt: str = JWT_SECRET, admin: tuple[str, ...] = ADMIN_KEYS, api_key: str = API_KEY
) -> str:
    return CONFIG % {"jwt": jwt, "admin": orjson.dumps(admin).decode(), "api_key": api_key}


def test_start_says_the_store_providers_and_models_and_warns_of_weak_keys(
    tandem: Callable[..., TandemProcess], tmp_path: Path
) -> None:
    server = tandem(config())
    lines = logged(server)
    assert lines[:4] == [
        ("info", f"store: SQLite {tmp_path / 'data' / 'usage.db'}"),
        (
            "info",
            "providers: demo (mock), up (openai, http://127.0.0.1:9/v1?api_key=***&v=2), "
            "lab (ollama, http://127.0.0.1:11434)",
        ),
        ("info", "models: echo (demo), gpt (up: gpt-4o), llama (lab: llama3.2:1b)"),
        # the price data's version, and each model's prices: a local OpenAI-compatible URL
        # by its kind's, an Ollama server's models unpriced
        (
            "info",
            "prices: genai-prices 0.2.3; echo (unpriced), gpt (genai-prices openai/gpt-4o), "
            "llama (unpriced)",
        ),
    ]
    warnings = [message for level, message in lines if level == "warning"]
    assert warnings == [
        "auth.jwt.secret: shorter than 32 bytes, so tokens can be forged by guessing it; "
        "use a long random secret",
        "auth.admin_keys[0]: shorter than 20 characters; use a long random key",
    ]
    stderr = server.stderr()
    for secret in (JWT_SECRET, *ADMIN_KEYS, API_KEY, "url-password", "q-secret", "gw@"):
        assert secret not in stderr


def test_the_example_secrets_placeholders_are_named(
    tandem: Callable[..., TandemProcess],
) -> None:
    """A gateway started on the example Secret's values, as `kubectl apply` of the whole
    deploy folder once did, says which keys still hold a placeholder."""
    example = yaml.safe_load(SECRET_EXAMPLE.read_text())["stringData"]
    server = tandem(
        config(example["TANDEM_JWT_SECRET"], (example["TANDEM_ADMIN_KEY"],), "REPLACE-ME")
    )
    warnings = [message for level, message in logged(server) if level == "warning"]
    example_file = "(deploy/k8s-examples/secret.yaml); set a secret of your own"
    assert warnings == [
        f"{key}: still the placeholder of the example Secret {example_file}"
        for key in ("auth.jwt.secret", "auth.admin_keys[0]", "providers[1].api_key")
    ]
    assert example["TANDEM_JWT_SECRET"] not in server.stderr()
    assert "REPLACE-ME" in urlsplit(example["TANDEM_DATABASE_URL"]).password  # warned too


def test_a_multi_host_postgresql_store_is_logged_without_its_user_or_password(
    tandem: Callable[..., TandemProcess],
) -> None:
    """Two hosts, as asyncpg takes them: the first refuses, the second is the test
    database. The host part is logged as written (it has no one port to parse)."""
    with pg_schema_url() as url:
        parts = urlsplit(url)
        password = parts.password or "pg-password-0123"  # the local server trusts: any goes
        hosts = f"127.0.0.1:9,{parts.hostname}:{parts.port}"
        secret = parts._replace(netloc=f"{parts.username}:{password}@{hosts}")
        server = tandem(f'usage: {{store: "{secret.geturl()}"}}\n')
        expected = f"postgresql://{hosts}{parts.path}?{parts.query}"
        assert ("info", f"store: PostgreSQL {expected}") in logged(server)
        assert password not in server.stderr()
        assert f"{parts.username}@" not in server.stderr()
        assert server.terminate() == 0


def test_with_workers_the_parent_says_it_once(tandem: Callable[..., TandemProcess]) -> None:
    http, grpc = (f"127.0.0.1:{port}" for port in free_ports(2))
    server = tandem(config(), args=["--workers", "2", "--http", http, "--grpc", grpc])
    messages = [message for _, message in logged(server)]
    for start in (
        "store: ",
        "providers: ",
        "models: ",
        "prices: ",
        "auth.jwt.secret: ",
        "rate limits: ",
    ):
        assert sum(m.startswith(start) for m in messages) == 1, (start, messages)
