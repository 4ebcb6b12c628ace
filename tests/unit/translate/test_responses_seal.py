"""Reasoning sealed and opened in process: a round trip, a token that shows nothing of
what it seals, and every token that does not open (changed, cut, another key, not
base64) refused; the key every replica shares made once by the store's secrets."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from server.translate.responses.seal import SEAL_SECRET, SealBroken, Sealer, shared_sealer

ROOT = Path(__file__).resolve().parents[3]


def test_a_sealed_text_and_signature_open_again() -> None:
    sealer = Sealer.from_secret("a key of any length at all")
    token = sealer.seal("thinking hard", "sig-1")
    assert sealer.open(token) == ("thinking hard", "sig-1")
    assert sealer.open(sealer.seal("", None)) == ("", None)
    assert "thinking" not in token
    assert b"thinking" not in base64.b64decode(token)
    assert sealer.seal("thinking hard", "sig-1") != token  # a fresh nonce each time


def test_the_same_configured_key_opens_what_another_process_sealed() -> None:
    token = Sealer.from_secret("shared key, sixteen+").seal("t", "s")
    assert Sealer.from_secret("shared key, sixteen+").open(token) == ("t", "s")


def changed(token: str) -> str:
    raw = bytearray(base64.b64decode(token))
    raw[-1] ^= 0x80
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    "spoil",
    [
        changed,
        lambda token: token[:20],
        lambda token: "not base64 at all!",
        lambda token: Sealer.ephemeral().seal("t", "s"),
        lambda token: base64.b64encode(b"\x02" + base64.b64decode(token)[1:]).decode(),
    ],
    ids=["changed", "cut", "not-base64", "another-key", "another-version"],
)
def test_a_token_that_does_not_open_is_refused(spoil: object) -> None:
    sealer = Sealer.ephemeral()
    token = sealer.seal("t", "s")
    with pytest.raises(SealBroken):
        sealer.open(spoil(token))  # type: ignore[operator]


class Secrets:
    def __init__(self) -> None:
        self.kept: dict[str, str] = {}

    async def get_or_create_secret(self, name: str, value: str) -> str:
        return self.kept.setdefault(name, value)


async def test_the_shared_sealer_comes_from_the_config_else_the_store_else_the_process() -> None:
    secrets = Secrets()
    one, two = await shared_sealer(None, secrets), await shared_sealer(None, secrets)
    assert list(secrets.kept) == [SEAL_SECRET]
    assert two.open(one.seal("t", None)) == ("t", None)
    configured = await shared_sealer("the operator's key!", secrets)
    assert Sealer.from_secret("the operator's key!").open(configured.seal("t", None))
    fellow = await shared_sealer(None, None, "the workers' key")
    assert (await shared_sealer(None, None, "the workers' key")).open(fellow.seal("t", None))
    alone = await shared_sealer(None, None)
    with pytest.raises(SealBroken):
        (await shared_sealer(None, None)).open(alone.seal("t", None))


def test_a_gateway_loads_no_cipher_until_it_seals() -> None:
    """`cryptography` and OpenSSL (~7 MiB) only for gateways whose answers reason."""
    code = (
        "import sys, server.lifecycle, http_bridge.app;"
        "from server.translate.responses.seal import shared_sealer;"
        "import asyncio; sealer = asyncio.run(shared_sealer(None, None));"
        "assert 'cryptography' not in sys.modules, 'loaded at start';"
        "sealer.seal('t', None); assert 'cryptography' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
