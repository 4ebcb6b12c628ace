"""Config errors at start: `tandem serve` with a bad config exits 2 with one line naming
the key (the in-process checks of the config are tests/unit/test_config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.servers import run_serve

BAD_CONFIGS = [
    ("bogus: 1\n", "bogus: unknown key"),
    ("server: {htp: '127.0.0.1:1'}\n", "server.htp: unknown key"),
    ("providers: [{name: p, kind: mock, colour: red}]\n", "providers[0].colour: unknown key"),
    (
        "auth: {jwt: {secret: 'x', algoritms: [HS256]}}\n",
        "auth.jwt.algoritms: unknown key",
    ),
    ("tiers: {free: {rpm: 5}}\n", "tiers.free.rpm: unknown key"),
    ("models: [{name: m, provider: nope}]\n", "models[0].provider: unknown provider 'nope'"),
    (
        "models: [{name: echo, provider: mock, fallbacks: [ghost]}]\n",
        "models[0].fallbacks: unknown model 'ghost'",
    ),
    ("tiers: {free: {default_model: ghost}}\n", "tiers.free.default_model: unknown model"),
    ("tiers: {free: {models: [echo, ghost]}}\n", "tiers.free.models: unknown model 'ghost'"),
    (
        "providers: [{name: a, kind: mock}, {name: a, kind: mock}]\n",
        "providers[1].name: duplicate name 'a'",
    ),
    ("server: {workers: 0}\n", "server.workers: Input should be greater than 0"),
    ("server: {http: 'localhost'}\n", "server.http: expected HOST:PORT"),
    ("server: {max_body_bytes: lots}\n", "server.max_body_bytes: Input should be a valid integer"),
    ("providers: [{name: p, kind: bogus}]\n", "providers[0].kind: Input should be"),
    (
        "providers: [{name: p, kind: openai, chunk_delay_ms: 5}]\n",
        "providers[0]: chunk_delay_ms applies only to kind mock",
    ),
    (
        "providers: [{name: p, kind: ollama, extra_fields: deny}]\n",
        "providers[0]: extra_fields applies only to kinds openai and anthropic",
    ),
    (
        "providers: [{name: p, kind: ollama, send_reasoning: true}]\n",
        "providers[0]: send_reasoning applies only to kind openai",
    ),
    ("providers: [{name: p, kind: mock, timeout_s: -1}]\n", "providers[0].timeout_s:"),
    ("tiers: {free: {requests_per_minute: -5}}\n", "tiers.free.requests_per_minute:"),
    ("rate_limits: {backend: redis}\n", "rate_limits: backend redis needs url"),
    ("rate_limits: {backend: memcached}\n", "rate_limits.backend: Input should be"),
    ("usage: {store: 'mysql://x'}\n", "usage.store: expected sqlite:///PATH"),
    ("auth: {required: maybe}\n", "auth.required: Input should be a valid boolean"),
    ("auth: {jwt: {algorithms: [HS256]}}\n", "auth.jwt: set exactly one of secret"),
    ("auth: {jwt: {secret: ''}}\n", "auth.jwt.secret: must not be empty"),
    ("auth: {jwt: {secret: '${TANDEM_TEST_UNSET_VAR:-}'}}\n", "auth.jwt.secret: must not be"),
    ("auth: {jwt: {secret: s, require_exp: sometimes}}\n", "auth.jwt.require_exp: Input should"),
    ("auth: {jwt: {secret: s, algorithms: [none]}}\n", "auth.jwt: algorithm 'none'"),
    ("auth: {jwt: {secret: s, algorithms: [HS256, RS256]}}\n", "'RS256' does not fit a secret"),
    (
        "auth: {jwt: {public_key_file: k.pem, algorithms: [HS256]}}\n",
        "'HS256' does not fit a public_key_file",
    ),
    (
        "usage: {store: 'postgresql://u@h/db?search_path=a,b'}\n",
        "search_path must be one plain schema",
    ),
    (
        "providers: [{name: p, kind: openai, api_key: '${TANDEM_TEST_UNSET_VAR}'}]\n",
        "providers[0].api_key: environment variable TANDEM_TEST_UNSET_VAR is not set",
    ),
    (
        "models: [{name: m, provider: mock, price: {input_per_mtok: -1, output_per_mtok: 1}}]\n",
        "models[0].price.input_per_mtok: expected a finite, non-negative number of US dollars",
    ),
    (  # its nanos would not fit a BIGINT (was a decimal.InvalidOperation traceback)
        "tiers: {free: {budget: {usd: 1e30}}}\n",
        "tiers.free.budget.usd: at most 9223372036.854775807 US dollars",
    ),
    ("tiers: {free: {budget: {usd: 9223372037}}}\n", "tiers.free.budget.usd: at most"),
    (
        "providers: [{name: p, kind: openai, price_provider: opneai}]\n",
        "providers[0].price_provider: unknown genai-prices provider 'opneai'",
    ),
    ("server: [1, 2\n", "is not valid YAML at line"),
    ("- just\n- a list\n", "must hold a mapping of sections"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS)
def test_bad_config_fails_the_start_with_one_line_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    result = run_serve(tmp_path, text)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tandem: config error: ")
    assert message in lines[0]


def test_missing_config_file_fails_the_start(tmp_path: Path) -> None:
    result = run_serve(tmp_path, None, config_path=tmp_path / "absent.yaml")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("tandem: config error: cannot read config file ")
    assert "absent.yaml" in result.stderr
