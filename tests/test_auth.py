"""Authentication: JWTs and admin keys, the same on gRPC and HTTP."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tandem.v1 import chat_pb2, chat_pb2_grpc

from tests.rpc_status import error_info_of
from tests.servers import TandemProcess, start_tandem

SECRET = "s" * 40
ADMIN_KEY = "admin-key-0123456789abcdef"
CONFIG = """
providers: [{name: demo, kind: mock}]
models: [{name: echo, provider: demo}, {name: premium, provider: demo}]
tiers:
  free: {default_model: echo, models: [echo]}
  standard: {default_model: premium}
auth:
  required: %(required)s
  jwt: {secret: "${TANDEM_JWT_SECRET}", algorithms: [HS256], audience: tandem, issuer: tests}
  admin_keys: ["${TANDEM_ADMIN_KEY}"]
"""


def token(**overrides: Any) -> str:
    claims = {"sub": "alice", "aud": "tandem", "iss": "tests", "exp": int(time.time()) + 300}
    claims.update(overrides)
    key = overrides.pop("_key", SECRET) if "_key" in overrides else SECRET
    claims.pop("_key", None)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm="HS256")


def start(tmp: Path, required: str) -> TandemProcess:
    env = {"TANDEM_JWT_SECRET": SECRET, "TANDEM_ADMIN_KEY": ADMIN_KEY}
    return start_tandem(tmp, CONFIG % {"required": required}, env=env)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TandemProcess]:
    process = start(tmp_path_factory.mktemp("auth"), "true")
    yield process
    assert process.terminate() == 0


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def none_alg_token() -> str:
    header = b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
    claims = b64(orjson.dumps({"sub": "mallory", "aud": "tandem", "iss": "tests"}))
    return (header + b"." + claims + b".").decode()


# made when each case runs: a time-bound token made at import would be valid by the time a
# long suite reaches its case
BAD: dict[str, Callable[[], str | None]] = {
    "missing": lambda: None,
    "not bearer": lambda: f"Basic {token()}",
    "malformed": lambda: "Bearer not.a.jwt",
    "bad signature": lambda: f"Bearer {token(_key='x' * 40)}",
    "alg none": lambda: f"Bearer {none_alg_token()}",
    "expired": lambda: f"Bearer {token(exp=int(time.time()) - 120)}",
    "not yet valid": lambda: f"Bearer {token(nbf=int(time.time()) + 120)}",
    "wrong audience": lambda: f"Bearer {token(aud='someone-else')}",
    "wrong issuer": lambda: f"Bearer {token(iss='elsewhere')}",
    "no subject": lambda: f"Bearer {token(sub=None)}",
    "no expiry": lambda: f"Bearer {token(exp=None)}",
    # the ledger could not store these: a NUL, a lone surrogate
    "control character in subject": lambda: "Bearer " + token(sub="a\x00b"),
    "lone surrogate in subject": lambda: "Bearer " + token(sub="a\ud800b"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_every_bad_credential_is_401_on_http_and_unauthenticated_on_grpc(
    secured: TandemProcess, case: str
) -> None:
    authorization = BAD[case]()
    headers = {"authorization": authorization} if authorization else {}
    response = httpx.post(
        f"{secured.base_url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x"}]},
        headers=headers,
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"]["type"] == "authentication_error"

    async def grpc_call() -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(secured.grpc) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            metadata = (("authorization", authorization),) if authorization else ()
            request = chat_pb2.ChatCompletionRequest(
                messages=[chat_pb2.ChatMessage(role="user", content="x")]
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateChatCompletion(request, metadata=metadata)
            return caught.value

    error_info_of(asyncio.run(grpc_call()), grpc.StatusCode.UNAUTHENTICATED, "authentication_error")


def test_a_valid_token_gets_its_tier(secured: TandemProcess) -> None:
    with httpx.Client(base_url=secured.base_url) as http:
        free = http.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}]},
            headers={"authorization": f"Bearer {token()}"},
        )
        assert free.status_code == 200
        assert free.json()["model"] == "echo"  # tier free's default
        denied = http.post(
            "/v1/chat/completions",
            json={"model": "premium", "messages": [{"role": "user", "content": "x"}]},
            headers={"authorization": f"Bearer {token()}"},
        )
        assert denied.status_code == 403
        standard = http.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}]},
            headers={"authorization": f"Bearer {token(tier='standard')}"},
        )
        assert standard.json()["model"] == "premium"
        unknown = http.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}]},
            headers={"authorization": f"Bearer {token(tier='platinum')}"},
        )
        assert unknown.status_code == 403
        assert unknown.json()["error"]["type"] == "permission_error"


def test_admin_keys_are_accepted_and_unrestricted(secured: TandemProcess) -> None:
    response = httpx.post(
        f"{secured.base_url}/v1/chat/completions",
        json={"model": "premium", "messages": [{"role": "user", "content": "x"}]},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert response.status_code == 200


def test_without_auth_required_an_invalid_credential_is_anonymous(tmp_path: Path) -> None:
    process = start(tmp_path, "false")
    try:
        for authorization in (None, "Bearer garbage"):
            headers = {"authorization": authorization} if authorization else {}
            response = httpx.post(
                f"{process.base_url}/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "x"}]},
                headers=headers,
            )
            assert response.status_code == 200
    finally:
        assert process.terminate() == 0


def model_answered(process: TandemProcess, credential: str) -> tuple[str, str]:
    """The model of a chat answer with no model named (the tier's default), over HTTP
    and over gRPC, or the status when the call fails."""
    response = httpx.post(
        f"{process.base_url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x"}]},
        headers={"authorization": f"Bearer {credential}"},
    )
    over_http = (
        response.json()["model"] if response.status_code == 200 else str(response.status_code)
    )

    async def grpc_call() -> str:
        async with grpc.aio.insecure_channel(process.grpc) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            request = chat_pb2.ChatCompletionRequest(
                messages=[chat_pb2.ChatMessage(role="user", content="x")]
            )
            metadata = (("authorization", f"Bearer {credential}"),)
            try:
                return (await stub.CreateChatCompletion(request, metadata=metadata)).model
            except grpc.aio.AioRpcError as error:
                return error.code().name

    return over_http, asyncio.run(grpc_call())


def test_without_auth_required_a_token_without_exp_is_anonymous(tmp_path: Path) -> None:
    process = start(tmp_path, "false")
    try:
        assert model_answered(process, token(tier="standard")) == ("premium", "premium")
        assert model_answered(process, token(tier="standard", exp=None)) == ("echo", "echo")
    finally:
        assert process.terminate() == 0


NO_AUDIENCE = """
providers: [{name: demo, kind: mock}]
models: [{name: echo, provider: demo}]
auth:
  required: true
  jwt: {secret: "%(secret)s", require_exp: %(require_exp)s}
"""


@pytest.mark.parametrize("require_exp", ["true", "false"])
def test_require_exp_decides_whether_a_token_without_exp_is_accepted(
    tmp_path: Path, require_exp: str
) -> None:
    config = NO_AUDIENCE % {"secret": SECRET, "require_exp": require_exp}
    process = start_tandem(tmp_path, config)
    try:
        no_exp = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
        expected = ("echo", "echo") if require_exp == "false" else ("401", "UNAUTHENTICATED")
        assert model_answered(process, no_exp) == expected
    finally:
        assert process.terminate() == 0


def test_with_no_audience_configured_a_token_naming_one_is_refused(tmp_path: Path) -> None:
    process = start_tandem(tmp_path, NO_AUDIENCE % {"secret": SECRET, "require_exp": "true"})
    try:
        exp = int(time.time()) + 300
        plain = jwt.encode({"sub": "alice", "exp": exp}, SECRET, algorithm="HS256")
        assert model_answered(process, plain) == ("echo", "echo")
        aimed = jwt.encode({"sub": "alice", "exp": exp, "aud": "other"}, SECRET, algorithm="HS256")
        assert model_answered(process, aimed) == ("401", "UNAUTHENTICATED")
    finally:
        assert process.terminate() == 0


def forged_hs256(claims: dict[str, Any], key: bytes) -> str:
    signing_input = (
        b64(orjson.dumps({"alg": "HS256", "typ": "JWT"})) + b"." + b64(orjson.dumps(claims))
    )
    signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(signature)).decode()


def test_rs256_with_a_public_key_file(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "public.pem").write_bytes(public_pem)
    config = f"""
auth:
  required: true
  jwt: {{public_key_file: "{tmp_path / "public.pem"}", algorithms: [RS256]}}
"""
    process = start_tandem(tmp_path, config)
    try:
        good = jwt.encode({"sub": "bob", "exp": int(time.time()) + 300}, private, algorithm="RS256")
        hs = forged_hs256(
            {"sub": "bob"}, public_pem
        )  # algorithm confusion: HMAC keyed by the public key
        for value, status in ((good, 200), (hs, 401)):
            response = httpx.post(
                f"{process.base_url}/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "x"}]},
                headers={"authorization": f"Bearer {value}"},
            )
            assert response.status_code == status
    finally:
        assert process.terminate() == 0
