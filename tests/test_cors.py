"""Browser origins on a live gateway (`server.cors_origins`): a page from an origin not
listed is refused before anything reads its request, listed ones get CORS headers
and answered preflights, the gateway's own loopback pages always work, and requests
without `Origin` (every SDK, curl) are as before."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson

from tests.eventually import eventually
from tests.servers import TandemProcess, run_serve

CONFIG = """
server: {cors_origins: %(origins)s}
tiers: {free: {default_model: echo, requests_per_minute: 100}}
usage: {store: "sqlite:///%(db)s", flush_interval_ms: 50}
"""
CHAT = orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi there"}]})
ANTHROPIC = orjson.dumps(
    {"model": "echo", "max_tokens": 10, "messages": [{"role": "user", "content": "hi there"}]}
)
# what a page's fetch() may send without a preflight: a "simple" request
SIMPLE = {"content-type": "text/plain;charset=UTF-8"}
EVIL = "https://evil.example"
APP = "https://app.example"
DEADLINE_S = 30.0


def start(tandem: Callable[..., TandemProcess], tmp_path: Path, origins: str) -> TandemProcess:
    return tandem(CONFIG % {"origins": origins, "db": tmp_path / "usage.db"})


def ledger(tmp_path: Path) -> set[str]:
    with sqlite3.connect(tmp_path / "usage.db") as db:
        return {row[0] for row in db.execute("SELECT request_id FROM usage_records")}


def post(server: TandemProcess, path: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", content=body, headers=headers, timeout=10)


def test_a_page_from_an_unlisted_origin_is_refused_before_the_core(
    tandem: Callable[..., TandemProcess], tmp_path: Path
) -> None:
    server = start(tandem, tmp_path, "[]")  # the default: no page may call
    refused = {
        "/v1/chat/completions": CHAT,
        "/native/v1/chat/completions": CHAT,
        "/api/chat": CHAT,
        "/v1/messages": ANTHROPIC,
    }
    answers = {}
    for n, (path, body) in enumerate(refused.items()):
        answer = post(server, path, body, origin=EVIL, **SIMPLE, **{"x-request-id": f"evil-{n}"})
        assert answer.status_code == 403, (path, answer.text)
        assert "access-control-allow-origin" not in answer.headers
        assert answer.headers["x-request-id"] == f"evil-{n}"
        answers[path] = answer.json()
    openai_error = answers["/v1/chat/completions"]["error"]
    assert (openai_error["type"], openai_error["code"]) == (
        "permission_error",
        "origin_not_allowed",
    )
    assert EVIL in openai_error["message"]
    assert answers["/native/v1/chat/completions"] == answers["/v1/chat/completions"]
    assert set(answers["/api/chat"]) == {"error"}  # Ollama's spelling
    assert EVIL in answers["/api/chat"]["error"]
    assert answers["/v1/messages"]["type"] == "error"  # Anthropic's
    assert answers["/v1/messages"]["error"]["type"] == "permission_error"
    # a preflight from it is refused too, and a listing
    preflight = httpx.options(
        f"{server.base_url}/v1/chat/completions",
        headers={"origin": EVIL, "access-control-request-method": "POST"},
    )
    assert preflight.status_code == 403
    assert httpx.get(f"{server.base_url}/v1/models", headers={"origin": EVIL}).status_code == 403

    # nothing reached the core: once a later call's record is in, none of theirs is
    served = post(server, "/v1/chat/completions", CHAT, **SIMPLE, **{"x-request-id": "sdk"})
    assert served.status_code == 200
    eventually(lambda: "sdk" in ledger(tmp_path), DEADLINE_S, what="the served call recorded")
    assert ledger(tmp_path) == {"sdk"}
    logged = [orjson.loads(line) for line in server.settled_stderr().splitlines()]
    refusals = [line for line in logged if line.get("request_id", "").startswith("evil-")]
    assert [(line["event"], line["status"]) for line in refusals] == [("request", 403)] * 4


def test_requests_without_origin_are_unaffected(
    tandem: Callable[..., TandemProcess], tmp_path: Path
) -> None:
    server = start(tandem, tmp_path, "[]")
    answer = post(server, "/v1/chat/completions", CHAT, **SIMPLE)
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "hi there"
    assert not [name for name in answer.headers if name.startswith("access-control-")]


def test_a_listed_origin_gets_cors_headers_and_its_preflights_answered(
    tandem: Callable[..., TandemProcess], tmp_path: Path
) -> None:
    server = start(tandem, tmp_path, f'["{APP}", "http://localhost:3000"]')
    asked = "authorization, content-type, x-stainless-os"
    for _ in range(3):  # preflights count no request (rate limits)
        preflight = httpx.options(
            f"{server.base_url}/v1/chat/completions",
            headers={
                "origin": APP,
                "access-control-request-method": "POST",
                "access-control-request-headers": asked,
            },
        )
        assert preflight.status_code == 204
    headers = preflight.headers
    assert headers["access-control-allow-origin"] == APP
    assert {"GET", "POST", "DELETE"} <= set(headers["access-control-allow-methods"].split(", "))
    assert headers["access-control-allow-headers"] == asked
    assert int(headers["access-control-max-age"]) > 0
    assert "origin" in headers["vary"]
    assert not [name for name in headers if name.startswith("x-ratelimit-")]
    logged = [orjson.loads(line) for line in server.settled_stderr().splitlines()]
    preflights = [line for line in logged if line.get("status") == 204]
    assert [line["route"] for line in preflights] == ["/v1/chat/completions"] * 3

    answer = post(server, "/v1/chat/completions", CHAT, origin=APP, **SIMPLE)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == APP
    assert "origin" in answer.headers["vary"]
    exposed = answer.headers["access-control-expose-headers"].split(", ")
    assert {"x-request-id", "retry-after", "x-ratelimit-remaining-requests"} <= set(exposed)
    assert answer.headers["x-ratelimit-remaining-requests"] == "99"  # this call alone

    stream = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "a b"}]}
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/chat/completions",
        content=orjson.dumps(stream),
        headers={"origin": APP, **SIMPLE},
    ) as streamed:
        assert streamed.status_code == 200
        assert streamed.headers["access-control-allow-origin"] == APP
        assert streamed.read().endswith(b"data: [DONE]\n\n")
    with httpx.stream(
        "POST",
        f"{server.base_url}/api/chat",
        content=orjson.dumps(stream),
        headers={"origin": "http://localhost:3000"},
    ) as streamed:
        assert streamed.status_code == 200
        assert streamed.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert b'"done":true' in streamed.read().replace(b" ", b"")
    assert (
        post(server, "/v1/chat/completions", CHAT, origin="http://localhost:3001").status_code
        == 403
    )


def test_star_allows_every_origin(tandem: Callable[..., TandemProcess], tmp_path: Path) -> None:
    server = start(tandem, tmp_path, '["*"]')
    answer = post(server, "/v1/chat/completions", CHAT, origin=EVIL, **SIMPLE)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == "*"
    preflight = httpx.options(
        f"{server.base_url}/api/chat",
        headers={"origin": "null", "access-control-request-method": "POST"},
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"


def test_the_gateways_own_loopback_pages_are_allowed_and_dns_rebinding_is_not(
    tandem: Callable[..., TandemProcess], tmp_path: Path
) -> None:
    server = start(tandem, tmp_path, "[]")
    port = server.http.rsplit(":", 1)[1]
    cases = [  # (Origin, Host, allowed)
        (f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", True),  # /docs opened as 127.0.0.1
        (f"http://localhost:{port}", f"localhost:{port}", True),
        (f"http://[::1]:{port}", f"[::1]:{port}", True),
        (f"http://localhost:{port}", f"evil.example:{port}", False),
        (f"http://evil.example:{port}", f"evil.example:{port}", False),  # rebound to 127.0.0.1
        (f"http://127.0.0.1:{port}", f"127.0.0.1:{int(port) + 1}", False),  # another port
        (f"http://127.0.0.1:{int(port) + 1}", f"127.0.0.1:{port}", False),  # another server
        (f"http://10.0.0.1:{port}", f"10.0.0.1:{port}", False),  # not loopback
        ("null", f"127.0.0.1:{port}", False),  # a sandboxed frame, a file:// page
    ]
    for origin, host, allowed in cases:
        answer = post(server, "/v1/chat/completions", CHAT, origin=origin, host=host, **SIMPLE)
        assert answer.status_code == (200 if allowed else 403), (origin, host, answer.text)
    docs_page = {"origin": f"http://127.0.0.1:{port}"}
    assert httpx.get(f"{server.base_url}/openapi.json", headers=docs_page).status_code == 200


def test_serve_refuses_to_start_with_a_malformed_origin(tmp_path: Path) -> None:
    done = run_serve(tmp_path, "server: {cors_origins: ['https://app.example/path']}\n")
    assert done.returncode != 0
    assert "server.cors_origins[0]: expected scheme://host[:port]" in done.stderr
