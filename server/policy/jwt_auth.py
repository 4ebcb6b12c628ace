"""Verifying JWTs (pyjwt): HS* secrets or RS*/ES* public keys, from an allowlist of algorithms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt

from server.config import ConfigError, JwtConfig
from server.errors import AuthenticationError

__all__ = ["LEEWAY_S", "JwtVerifier"]

LEEWAY_S = 30  # clock skew tolerated on exp and nbf

# what a client is told of a token pyjwt refuses; anything else is "malformed"
_REASONS: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not valid yet"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidSignatureError, "bad signature"),
)


class JwtVerifier:
    def __init__(self, config: JwtConfig) -> None:
        if config.secret is not None:
            self._key: str = config.secret
        else:
            assert config.public_key_file is not None
            try:
                self._key = Path(config.public_key_file).read_text()
            except OSError as exc:
                raise ConfigError(
                    f"auth.jwt.public_key_file: cannot read it: {exc.strerror}"
                ) from None
        self._algorithms = [a for a in config.algorithms if a.lower() != "none"]
        self._audience = config.audience
        self._issuer = config.issuer
        self._required = ["sub", "exp"] if config.require_exp else ["sub"]
        self.tier_claim = config.tier_claim

    def claims(self, token: str) -> dict[str, Any]:
        """The token's claims, or AuthenticationError saying what is wrong with it."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_S,
                # with no audience configured, pyjwt refuses a token that names one
                options={"require": self._required},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError(f"invalid token: no {exc.claim!r} claim") from None
        except (jwt.PyJWTError, ValueError) as exc:  # whatever pyjwt refuses is the token's fault
            reason = next((text for kind, text in _REASONS if isinstance(exc, kind)), "malformed")
            raise AuthenticationError(f"invalid token: {reason}") from None
        sub = claims.get("sub")
        # the caller's name goes into the usage ledger: no control characters or
        # lone surrogates, which a database would refuse
        if not isinstance(sub, str) or not sub or len(sub) > 256 or not sub.isprintable():
            raise AuthenticationError(
                "invalid token: 'sub' must be a printable string of 1 to 256 characters"
            )
        return claims
