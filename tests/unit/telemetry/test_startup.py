"""What the start line says of a store: where it is, never its secrets, and never a raise
on a URL it cannot parse (the start lines of real servers: tests/test_startup_log.py)."""

from __future__ import annotations

import pytest

from server.telemetry.startup import describe_store


@pytest.mark.parametrize(
    ("url", "described"),
    [
        ("none", "none (no API keys, no usage ledger)"),
        ("sqlite:////var/lib/tandem/tandem.db", "SQLite /var/lib/tandem/tandem.db"),
        (
            "postgresql://u:p@h1:5432,h2:5432/db",
            "PostgreSQL postgresql://h1:5432,h2:5432/db",
        ),
        (
            "postgres://token-as-user@[::1]:5432,[::2]:5433/db?search_path=s&password=pw",
            "PostgreSQL postgres://[::1]:5432,[::2]:5433/db?search_path=s&password=***",
        ),
        (
            "postgresql:///db?host=/run/postgresql&user=token-as-user",
            "PostgreSQL postgresql:///db?host=/run/postgresql&user=***",
        ),
        ("postgresql://u:p@h]1/db", "PostgreSQL postgresql (details hidden)"),
        ("postgresql://u:p@h1:bad/db", "PostgreSQL postgresql://h1:bad/db"),
    ],
)
def test_a_store_is_described_without_secrets_and_without_raising(url: str, described: str) -> None:
    assert describe_store(url) == described
