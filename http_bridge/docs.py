"""`GET /docs`: Swagger UI with its JS, CSS and icon served by the gateway itself.

FastAPI's own `/docs` page loads them from a CDN, so it is blank where the
gateway has no internet (most internal deployments). The files are the
Swagger UI dist that the pinned `fastapi-offline` ships in its `static/`
folder, served as they are (none of its code runs) under `/docs/assets/`,
which /openapi.json does not list. The URLs carry no version, so a client
keeps a file for a day and then revalidates it (ETag, 304). A missing file
is the app's contract 404 (`not_found_error`), like any unknown route.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

__all__ = ["ASSETS_PATH", "CACHE_CONTROL", "serve_docs"]

ASSETS_PATH = "/docs/assets"
CACHE_CONTROL = "public, max-age=86400"


class _Assets(StaticFiles):
    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["cache-control"] = CACHE_CONTROL
        return response


def serve_docs(app: FastAPI) -> None:
    """Mount the assets on `app` and answer `GET /docs` with a page that loads
    only them; `app` is built with `docs_url=None`, so FastAPI adds no CDN page."""
    openapi_url = app.openapi_url
    if openapi_url is None:
        raise ValueError("/docs reads the app's OpenAPI schema: keep openapi_url")
    app.mount(ASSETS_PATH, _Assets(packages=[("fastapi_offline", "static")]), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy's prefix
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
        )
