"""Reasoning sealed into a `reasoning` item's `encrypted_content`, and opened again.

Codex keeps no state (`store: false`) and sends a reasoning item back with its
`encrypted_content` only, never its text; an Anthropic upstream refuses a tool
loop whose thinking signature is lost. So the text and its signature travel
inside the item, sealed with AES-256-GCM (authenticated: a token changed by one
bit, or sealed under another key, does not open) under one key every replica
shares: `responses.seal_key` hashed to 32 bytes, else a key made once and kept
in the usage store (`shared_sealer`), else, with no store, one per process (the
workers of `tandem serve --workers N` share one their parent made).

A token is base64 of: a version byte, a 12-byte random nonce, then the sealed
JSON `{"t": text, "s": signature}`.

`cryptography` (and OpenSSL with it, ~7 MiB) is loaded by the first seal or
open, so a gateway whose answers carry no reasoning never pays for it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from typing import TYPE_CHECKING, Protocol

import orjson

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["SEAL_SECRET", "WORKERS_SEAL_ENV", "SealBroken", "Sealer", "Secrets", "shared_sealer"]

SEAL_SECRET = "responses.seal_key"  # its name in the store's secrets
# in a worker of `--workers N`: a key its parent made for all its workers (server/workers.py)
WORKERS_SEAL_ENV = "TANDEM_WORKERS_SEAL_KEY"
_VERSION = b"\x01"
_NONCE_BYTES = 12
_KEY_BYTES = 32  # AES-256
# bound to what it seals: a token of another kind under the same key does not open
_CONTEXT = b"tandem responses reasoning v1"


class SealBroken(ValueError):
    """A token that does not open: changed, cut, or sealed under another key."""


class Sealer:
    __slots__ = ("_aead", "_key")

    def __init__(self, key: bytes) -> None:
        if len(key) != _KEY_BYTES:
            raise ValueError(f"a seal key is {_KEY_BYTES} bytes")
        self._key = key
        self._aead: AESGCM | None = None

    def _cipher(self) -> AESGCM:
        if self._aead is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._aead = AESGCM(self._key)
        return self._aead

    @classmethod
    def from_secret(cls, secret: str) -> Sealer:
        """A key of any length (an operator's `seal_key`) as AES-256's 32 bytes."""
        return cls(hashlib.sha256(secret.encode()).digest())

    @classmethod
    def ephemeral(cls) -> Sealer:
        """A key of this process only: its tokens open nowhere else, nor after a restart."""
        return cls(os.urandom(_KEY_BYTES))

    def seal(self, text: str, signature: str | None) -> str:
        plain = orjson.dumps({"t": text, "s": signature})
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._cipher().encrypt(nonce, plain, _CONTEXT)
        return base64.b64encode(_VERSION + nonce + sealed).decode()

    def open(self, token: str) -> tuple[str, str | None]:
        """(the text, its signature or None); SealBroken if the token does not open."""
        try:
            raw = base64.b64decode(token, validate=True)
        except (binascii.Error, ValueError):
            raise SealBroken("is not base64") from None
        if raw[:1] != _VERSION or len(raw) < 1 + _NONCE_BYTES + 16:
            raise SealBroken("is not a token of this gateway")
        from cryptography.exceptions import InvalidTag

        nonce, sealed = raw[1 : 1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES :]
        try:
            plain = self._cipher().decrypt(nonce, sealed, _CONTEXT)
        except InvalidTag:
            raise SealBroken("does not open: changed, or sealed under another key") from None
        value = orjson.loads(plain)
        return value["t"], value["s"]


class Secrets(Protocol):
    """The store's secrets (server/store): made once, shared by every replica."""

    async def get_or_create_secret(self, name: str, value: str) -> str:
        """The secret `name`, set to `value` first if it has none."""


async def shared_sealer(
    seal_key: str | None, secrets: Secrets | None, workers_key: str | None = None
) -> Sealer:
    """The sealer every replica shares: the configured key, else the store's (made by
    the first replica to ask), else, with no store, the key of this worker's fellows
    (`workers_key`), else a key of this process only."""
    if seal_key is not None:
        return Sealer.from_secret(seal_key)
    if secrets is None:
        return Sealer.from_secret(workers_key) if workers_key else Sealer.ephemeral()
    candidate = base64.b64encode(os.urandom(_KEY_BYTES)).decode()
    return Sealer(base64.b64decode(await secrets.get_or_create_secret(SEAL_SECRET, candidate)))
