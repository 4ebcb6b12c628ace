"""`/docs` on a live server loads Swagger UI from the gateway alone, never a CDN."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser

import httpx
import pytest

from tests.servers import TandemProcess

JS_TYPES = {"text/javascript", "application/javascript"}


class _Assets(HTMLParser):
    """The URLs a page makes the browser fetch: (what it is, URL)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script" and values.get("src"):
            self.found.append(("script", values["src"] or ""))
        elif tag == "link" and values.get("href"):
            self.found.append((values.get("rel") or "", values["href"] or ""))


@pytest.fixture(scope="module")
def http(shared_server: TandemProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_server.base_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def page(http: httpx.Client) -> str:
    response = http.get("/docs")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    return response.text


def assets(page: str) -> dict[str, str]:
    """What the page loads, each URL checked to be a path on this gateway before
    any test fetches it: a regression must fail here, not reach out to a CDN."""
    parser = _Assets()
    parser.feed(page)
    found = dict(parser.found)
    assert all(url.startswith("/") and not url.startswith("//") for url in found.values()), found
    return found


def media_type(response: httpx.Response) -> str:
    return response.headers["content-type"].partition(";")[0].strip()


def test_docs_page_names_no_url_off_the_gateway(page: str) -> None:
    found = assets(page)
    assert set(found) == {"script", "stylesheet", "shortcut icon"}, found
    assert "//" not in page, "an absolute or protocol-relative URL would need the internet"
    assert "http" not in page.lower()
    assert re.search(r"url: '/openapi\.json'", page), "the page reads this gateway's schema"


def test_every_asset_the_docs_page_loads_is_served_by_the_gateway(
    http: httpx.Client, page: str
) -> None:
    found = assets(page)
    script = http.get(found["script"])
    assert script.status_code == 200
    assert media_type(script) in JS_TYPES
    assert len(script.content) > 100_000
    assert b"SwaggerUIBundle" in script.content  # what the page's inline script calls
    css = http.get(found["stylesheet"])
    assert (css.status_code, media_type(css)) == (200, "text/css")
    assert len(css.content) > 10_000
    assert b".swagger-ui" in css.content
    icon = http.get(found["shortcut icon"])
    assert (icon.status_code, media_type(icon)) == (200, "image/png")
    assert icon.content.startswith(b"\x89PNG")
    for response in (script, css, icon):
        assert response.headers["cache-control"] == "public, max-age=86400"
        assert response.headers["x-request-id"]


def test_an_unchanged_asset_revalidates_as_304(http: httpx.Client, page: str) -> None:
    url = assets(page)["stylesheet"]
    etag = http.get(url).headers["etag"]
    again = http.get(url, headers={"if-none-match": etag})
    assert (again.status_code, again.content) == (304, b"")
    assert again.headers["cache-control"] == "public, max-age=86400"


@pytest.mark.parametrize(
    "path", ["/docs/assets/nope.js", "/docs/assets/", "/docs/assets/static/swagger-ui.css"]
)
def test_an_unknown_docs_asset_is_the_contracts_404(http: httpx.Client, path: str) -> None:
    response = http.get(path, follow_redirects=True)
    assert response.status_code == 404, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert (error["type"], error["code"], error["param"]) == ("not_found_error", None, None)


def test_a_docs_asset_refuses_other_methods_in_the_contracts_shape(http: httpx.Client) -> None:
    response = http.post("/docs/assets/swagger-ui.css")
    assert response.status_code == 405, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_openapi_lists_neither_the_docs_page_nor_its_assets(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    assert paths, "the schema lists the API's routes"
    assert [path for path in paths if path.startswith("/docs")] == []


def test_redoc_which_would_load_from_a_cdn_is_not_served(http: httpx.Client) -> None:
    assert http.get("/redoc").status_code == 404
