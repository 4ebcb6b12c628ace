"""The `tandem` command: serve, keys, spend, chat."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import orjson
import uvloop

from server.config import Config, ConfigError, load_config, parse_host_port

if TYPE_CHECKING:
    from server import key_admin
    from server.telemetry.logs import LogSink

__all__ = ["main"]

_INT32_MAX = 2**31 - 1


def _host_port(value: str) -> str:
    try:
        parse_host_port(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tandem", description="Tandem LLM gateway")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway (gRPC and HTTP)")
    serve.add_argument("--config", help="YAML config file (default: the built-in config)")
    serve.add_argument("--http", type=_host_port, help="HTTP HOST:PORT (overrides the config)")
    serve.add_argument("--grpc", type=_host_port, help="gRPC HOST:PORT (overrides the config)")
    serve.add_argument("--workers", type=int, help="worker processes (overrides the config)")
    serve.add_argument(
        "--log-format", choices=["json", "text"], help="stderr log lines (overrides the config)"
    )
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one of N

    keys = commands.add_parser("keys", help="manage API keys (kept in the database of usage.store)")
    key_commands = keys.add_subparsers(dest="key_command", required=True)
    create = key_commands.add_parser("create", help="make a key and print it, once")
    create.add_argument("--user", required=True, type=_text)
    create.add_argument("--tier", default="free", type=_text)
    update = key_commands.add_parser("update", help="change a key's limits, models, budget, ...")
    update.add_argument("key_id", type=_text)
    for sub in (create, update):
        _key_options(sub)
    revoke = key_commands.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("key_id", type=_text)
    listing = key_commands.add_parser("list", help="list keys (never the keys themselves)")

    spend = commands.add_parser("spend", help="cost and tokens summed from the usage ledger")
    spend.add_argument("--group-by", choices=["day", "model", "user", "key"])
    spend.add_argument("--since", type=_text, help="RFC 3339 time (inclusive)")
    spend.add_argument("--until", type=_text, help="RFC 3339 time (exclusive)")
    spend.add_argument("--user", type=_text)
    for sub in (create, update, revoke, listing, spend):
        sub.add_argument("--config", help="YAML config file (default: the built-in config)")
    for sub in (create, update, listing, spend):
        sub.add_argument("--json", action="store_true", help="print JSON")

    chat = commands.add_parser(
        "chat", help="stream an answer to PROMPT, or chat interactively without one"
    )
    door = chat.add_mutually_exclusive_group()
    door.add_argument("--grpc", type=_host_port, help="gRPC HOST:PORT (default 127.0.0.1:50051)")
    door.add_argument("--http", help="HTTP base URL, e.g. http://127.0.0.1:8080")
    chat.add_argument("--model", default="", help="public model name (default: the tier's)")
    chat.add_argument("--key", help="API key or JWT (default: $TANDEM_API_KEY)")
    chat.add_argument(
        "prompt", nargs="?", type=_text, help="one prompt; none: an interactive session"
    )
    return parser


def _key_options(parser: argparse.ArgumentParser) -> None:
    """What narrows a key's tier (`tandem keys create` and `update`)."""
    parser.add_argument(
        "--models", type=_text, help="comma-separated models, a subset of the tier's"
    )
    parser.add_argument("--rpm", type=_limit, help="requests per minute")
    parser.add_argument("--tpm", type=_limit, help="tokens per minute")
    parser.add_argument("--max-concurrent", type=_limit, help="requests in flight at once")
    parser.add_argument("--budget-usd", type=_usd, help="budget in US dollars")
    parser.add_argument("--budget-period", choices=["daily", "weekly", "monthly", "total"])
    parser.add_argument("--expires-in", type=_duration, help="e.g. 30d, 12h, 90m")
    parser.add_argument(
        "--label", action="append", type=_label, default=[], help="k=v (repeatable)"
    )


def _text(value: str) -> str:
    """An argument that is UTF-8 (a non-UTF-8 argv byte arrives as a lone surrogate,
    which no proto string, and no store, can hold)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("expected UTF-8 text") from None
    return value


def _limit(value: str) -> int:
    """A key's limit: a proto int32, 1 or more."""
    if not (value.isascii() and value.isdigit() and len(value) <= 10) or not (
        1 <= int(value) <= _INT32_MAX
    ):
        raise argparse.ArgumentTypeError(f"expected an integer 1 to {_INT32_MAX}, not {value!r}")
    return int(value)


def _usd(value: str) -> Decimal:
    """Dollars as written (the server checks the places and the range): no `1_0`,
    which Decimal takes."""
    try:
        if not value.isascii() or "_" in value:
            raise InvalidOperation
        return Decimal(value)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"expected a number of dollars, not {value!r}") from None


def _duration(value: str) -> int:
    from server.key_admin import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _label(value: str) -> tuple[str, str]:
    name, equals, text = _text(value).partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected k=v, not {value!r}")
    return name, text


def _fail(message: str) -> int:
    sys.stderr.write(f"tandem: {message}\n")
    return 2


def _serve(args: argparse.Namespace) -> int:
    from server.telemetry.logs import configure_logging

    try:
        config: Config = load_config(args.config)
    except ConfigError as exc:
        return _fail(f"config error: {exc}")
    workers = args.workers if args.workers is not None else config.server.workers
    if workers < 1:
        return _fail("--workers: must be at least 1")
    logs = configure_logging(args.log_format or config.telemetry.log_format)
    try:
        return _serve_with(args, config, workers, logs)
    finally:
        logs.close()


def _serve_with(args: argparse.Namespace, config: Config, workers: int, logs: LogSink) -> int:
    logger = logging.getLogger("tandem")

    def fail(message: str) -> int:  # logging is set up: a log line like the rest
        logger.error("tandem: %s", message)
        return 2

    http = args.http or config.server.http
    grpc = args.grpc or config.server.grpc
    prices = None  # each worker builds its own
    if not args.worker:  # the parent of N workers, or the one process: say it once
        from server.telemetry.metrics import empty_multiprocess_directory
        from server.telemetry.startup import log_start
        from server.usage.prices import Prices

        if workers > 1 and 0 in (parse_host_port(http)[1], parse_host_port(grpc)[1]):
            return fail("--workers: port 0 needs a single worker")
        prices = Prices.from_config(config)
        log_start(config, workers, prices)
        if workers > 1:
            from server.workers import run_workers

            return run_workers(args.config, http, grpc, workers, log_format=logs.format)
        empty_multiprocess_directory(make=False)  # an operator's metrics start empty too
    from server.lifecycle import Gateway, serve
    from server.store.versions import StoreTooNewError

    config = config.model_copy(
        update={"server": config.server.model_copy(update={"workers": workers})}
    )
    try:
        gateway = Gateway(
            config, http=http, grpc=grpc, reuse_port=args.worker, logs=logs, prices=prices
        )
        uvloop.run(serve(gateway))
    except ConfigError as exc:
        return fail(f"config error: {exc}")
    except (OSError, StoreTooNewError) as exc:  # the operator's to mend: one line, no traceback
        return fail(str(exc))
    return 0


def _chat(args: argparse.Namespace) -> int:
    from server.chat_doors import DEFAULT_GRPC, Door, GrpcDoor, HttpDoor
    from server.chat_session import ChatSession, answer_once

    door: Door
    if args.http:
        door, where = HttpDoor(args.http, args.key), f"HTTP at {args.http}"
    else:
        door, where = GrpcDoor(args.grpc, args.key), f"gRPC at {args.grpc or DEFAULT_GRPC}"
    try:
        if args.prompt is not None:
            return answer_once(door, args.prompt, args.model, sys.stdout, sys.stderr)
        return ChatSession(door, args.model, where=where).run()
    finally:
        door.close()


def _keys(args: argparse.Namespace) -> int:
    from server import key_admin
    from server.telemetry.startup import describe_store

    try:
        config = load_config(args.config)
        if config.usage.store != "none":  # which database, wherever the command runs
            sys.stderr.write(f"store: {describe_store(config.usage.store)}\n")
        if args.key_command == "create":
            options = _options(args)
            created = asyncio.run(key_admin.create_key(config, args.user, args.tier, options))
            if args.json:
                print(orjson.dumps(created).decode())
            else:
                print(created["key"])
                sys.stderr.write(
                    f"key {created['id']} for user {args.user} (tier {args.tier}); "
                    "it is shown only this once\n"
                )
        elif args.key_command == "update":
            updated = asyncio.run(key_admin.update_key(config, args.key_id, _options(args)))
            print(orjson.dumps(updated).decode() if args.json else _key_table([updated]))
        elif args.key_command == "list":
            keys = asyncio.run(key_admin.list_keys(config))
            print(orjson.dumps(keys).decode() if args.json else _key_table(keys))
        elif not asyncio.run(key_admin.revoke_key(config, args.key_id)):
            return _fail(f"no active key {args.key_id}")
        else:
            print(f"revoked {args.key_id}")
    except ConfigError as exc:
        return _fail(f"config error: {exc}")
    except OSError as exc:  # refused, timed out, no such socket: said in one line
        return _fail(f"cannot open the store: {exc}")
    return 0


def _options(args: argparse.Namespace) -> key_admin.KeyOptions:
    from server import key_admin

    models = None
    if args.models is not None:
        models = tuple(name.strip() for name in args.models.split(",") if name.strip())
    return key_admin.KeyOptions(
        models=models,
        requests_per_minute=args.rpm,
        tokens_per_minute=args.tpm,
        max_concurrent_requests=args.max_concurrent,
        budget_usd=args.budget_usd,
        budget_period=args.budget_period,
        expires_in_s=args.expires_in,
        labels=dict(args.label),
    )


def _key_table(keys: list[dict[str, Any]]) -> str:
    from server.key_admin import table

    def limit(value: object) -> object:
        return "-" if value is None else value

    rows: list[list[object]] = [
        [
            "ID",
            "USER",
            "TIER",
            "MODELS",
            "RPM",
            "TPM",
            "CONC",
            "BUDGET",
            "EXPIRES",
            "CREATED",
            "STATE",
        ]
    ]
    for key in keys:
        budget = key["budget"]
        rows.append(
            [
                key["id"],
                key["user"],
                key["tier"],
                "-" if key["models"] is None else ",".join(key["models"]) or "(none)",
                limit(key["requests_per_minute"]),
                limit(key["tokens_per_minute"]),
                limit(key["max_concurrent_requests"]),
                "-"
                if budget is None
                else f"${orjson.dumps(budget['usd']).decode()}/{budget['period']}",
                limit(key["expires_at"]),
                key["created_at"],
                "revoked" if key["revoked"] else "active",
            ]
        )
    return table(rows)


def _spend(args: argparse.Namespace) -> int:
    from server import key_admin
    from server.telemetry.startup import describe_store

    params = {
        name: value
        for name, value in (
            ("group_by", args.group_by),
            ("since", args.since),
            ("until", args.until),
            ("user", args.user),
        )
        if value
    }
    try:
        config = load_config(args.config)
        if config.usage.store != "none":
            sys.stderr.write(f"store: {describe_store(config.usage.store)}\n")
        report = asyncio.run(key_admin.spend(config, params))
    except ConfigError as exc:
        return _fail(f"config error: {exc}")
    except OSError as exc:
        return _fail(f"cannot open the store: {exc}")
    if args.json:
        print(orjson.dumps(report).decode())
        return 0
    header = [
        (args.group_by or "").upper() or "TOTAL",
        "REQUESTS",
        "PROMPT",
        "COMPLETION",
        "TOKENS",
        "COST_USD",
    ]
    rows: list[list[object]] = [header]
    for group in [*report["groups"], {"group": "total", **report["totals"]}]:
        rows.append(
            [
                group["group"],
                group["requests"],
                group["prompt_tokens"],
                group["completion_tokens"],
                group["total_tokens"],
                orjson.dumps(group["cost_usd"]).decode(),
            ]
        )
    print(key_admin.table(rows))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "keys":
        return _keys(args)
    if args.command == "spend":
        return _spend(args)
    return _chat(args)


if __name__ == "__main__":
    sys.exit(main())
