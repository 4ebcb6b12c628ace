"""`/admin/v1`: API keys and spend, for admin keys only (anyone else: 403), over the
same handlers as gRPC's `AdminService` (server/core/admin.py). Never published by
the deploy files' balancer: reach it from inside."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from google.protobuf.field_mask_pb2 import FieldMask
from starlette.responses import Response
from tandem.v1 import admin_pb2

from http_bridge.doors import ADMIN
from http_bridge.responses import JsonResponse, reply
from http_bridge.routing import Endpoints
from server.context import CallContext
from server.core.admin import KeyAdmin
from server.errors import InvalidRequestError, NotFoundError
from server.translate.admin import (
    encode_key,
    encode_keys,
    encode_spend,
    parse_key,
    parse_list_params,
    parse_spend_params,
)

__all__ = ["endpoints"]

endpoints = Endpoints(ADMIN)
Call = Annotated[CallContext, Depends(endpoints.open_call)]

_KEY_FIELDS = (
    "`models` (a list of the tier's models), `requests_per_minute`, `tokens_per_minute`, "
    "`max_concurrent_requests`, `budget` (`{usd: number, period: daily|weekly|monthly|"
    "total}`), `expires_at` (RFC 3339), `labels` (at most 16)"
)


def _json_body(description: str) -> dict[str, Any]:
    body = {"content": {"application/json": {"schema": {"type": "object"}}}, "required": True}
    return {"requestBody": {**body, "description": description}}


def _admin(request: Request, ctx: CallContext) -> KeyAdmin:
    """The handlers, once the caller is known to be an admin (before its body is read:
    anyone else gets the 403, whatever it sent)."""
    admin: KeyAdmin | None = request.app.state.admin
    if admin is None:  # an app built without one (tests)
        raise NotFoundError("no admin API here")
    admin.authorize(ctx)
    return admin


@endpoints.router.post(
    "/admin/v1/keys",
    summary="Create an API key (201; the answer alone carries the secret, `key`)",
    description=f"`user` (required), `tier` (default `free`), {_KEY_FIELDS}.",
    status_code=201,
    openapi_extra=_json_body("The key's fields"),
)
async def create_key(request: Request, ctx: Call) -> Response:
    admin = _admin(request, ctx)
    key, _ = parse_key(await request.body(), creating=True)
    created = await admin.create_key(admin_pb2.CreateKeyRequest(key=key), ctx)
    return JsonResponse(encode_key(created), status_code=201, headers=dict(ctx.response_headers))


@endpoints.router.get(
    "/admin/v1/keys",
    summary="List API keys, oldest first",
    description=(
        "Query parameters: `user`, `tier`, `page_size` (1-1000, default 50), `page_token` "
        "(the previous page's `next_page_token`, with the same filters)."
    ),
)
async def list_keys(request: Request, ctx: Call) -> Response:
    admin = _admin(request, ctx)  # anyone else: 403, whatever the query says
    listing = parse_list_params(request.query_params)
    return reply(ctx, encode_keys(await admin.list_keys(listing, ctx)))


@endpoints.router.get("/admin/v1/keys/{key_id}", summary="An API key")
async def get_key(request: Request, key_id: str, ctx: Call) -> Response:
    found = await _admin(request, ctx).get_key(admin_pb2.GetKeyRequest(id=key_id), ctx)
    return reply(ctx, encode_key(found))


@endpoints.router.patch(
    "/admin/v1/keys/{key_id}",
    summary="Change an API key's limits, models, budget, expiry or labels (null clears one)",
    description=f"Any of {_KEY_FIELDS}; the fields left out stay as they are.",
    openapi_extra=_json_body("The fields to change"),
)
async def update_key(request: Request, key_id: str, ctx: Call) -> Response:
    admin = _admin(request, ctx)
    key, paths = parse_key(await request.body(), creating=False)
    if not paths:  # PATCH names its fields: nothing is implied
        raise InvalidRequestError("body: names no field to change", param="body")
    key.id = key_id
    update = admin_pb2.UpdateKeyRequest(key=key, update_mask=FieldMask(paths=paths))
    return reply(ctx, encode_key(await admin.update_key(update, ctx)))


@endpoints.router.delete(
    "/admin/v1/keys/{key_id}", summary="Revoke an API key (every replica within key_cache_s)"
)
async def revoke_key(request: Request, key_id: str, ctx: Call) -> Response:
    revoked = await _admin(request, ctx).revoke_key(admin_pb2.RevokeKeyRequest(id=key_id), ctx)
    return reply(ctx, encode_key(revoked))


@endpoints.router.get(
    "/admin/v1/spend",
    summary="Cost and tokens summed from the ledger, grouped by day, model, user or key",
    description=(
        "Query parameters: `user`, `key_id`, `model`, `since` (inclusive) and `until` "
        "(exclusive) in RFC 3339, `group_by` (`day`: the UTC date, `model`, `user`, `key`). "
        "Groups by descending cost; `totals` over every matching record."
    ),
)
async def get_spend(request: Request, ctx: Call) -> Response:
    admin = _admin(request, ctx)  # anyone else: 403, whatever the query says
    query = parse_spend_params(request.query_params)
    return reply(ctx, encode_spend(await admin.get_spend(query, ctx)))
