"""The `tandem` command: serve, keys, chat."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import orjson
import uvloop

from server.config import Config, ConfigError, load_config, parse_host_port

if TYPE_CHECKING:
    from server.telemetry.logs import LogSink

__all__ = ["main"]


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
    create.add_argument("--user", required=True)
    create.add_argument("--tier", default="free")
    revoke = key_commands.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("key_id")
    listing = key_commands.add_parser("list", help="list keys (never the keys themselves)")
    for sub in (create, revoke, listing):
        sub.add_argument("--config", help="YAML config file (default: the built-in config)")
    for sub in (create, listing):
        sub.add_argument("--json", action="store_true", help="print JSON")

    chat = commands.add_parser("chat", help="stream an answer to stdout")
    door = chat.add_mutually_exclusive_group()
    door.add_argument("--grpc", type=_host_port, help="gRPC HOST:PORT (default 127.0.0.1:50051)")
    door.add_argument("--http", help="HTTP base URL, e.g. http://127.0.0.1:8080")
    chat.add_argument("--model", default="", help="public model name (default: the tier's)")
    chat.add_argument("--key", help="API key or JWT")
    chat.add_argument("prompt")
    return parser


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
    except OSError as exc:
        return fail(str(exc))
    return 0


def _chat(args: argparse.Namespace) -> int:
    from tandem.client import TandemError, stream_chat

    try:
        for text in stream_chat(
            args.prompt,
            model=args.model,
            key=args.key,
            grpc_target=args.grpc,
            http_base_url=args.http,
        ):
            sys.stdout.write(text)
            sys.stdout.flush()
    except TandemError as exc:
        sys.stdout.write("\n")
        return _fail(str(exc))
    sys.stdout.write("\n")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from server import key_admin
    from server.telemetry.startup import describe_store

    try:
        config = load_config(args.config)
        if config.usage.store != "none":  # which database, wherever the command runs
            sys.stderr.write(f"store: {describe_store(config.usage.store)}\n")
        if args.key_command == "create":
            created = asyncio.run(key_admin.create_key(config, args.user, args.tier))
            if args.json:
                print(orjson.dumps(created).decode())
            else:
                print(created["key"])
                sys.stderr.write(
                    f"key {created['id']} for user {args.user} (tier {args.tier}); "
                    "it is shown only this once\n"
                )
        elif args.key_command == "list":
            keys = asyncio.run(key_admin.list_keys(config))
            if args.json:
                print(orjson.dumps(keys).decode())
            for key in [] if args.json else keys:
                state = "revoked" if key["revoked"] else "active"
                print(f"{key['id']}  {key['user']}  {key['tier']}  {key['created_at']}  {state}")
        elif not asyncio.run(key_admin.revoke_key(config, args.key_id)):
            return _fail(f"no active key {args.key_id}")
        else:
            print(f"revoked {args.key_id}")
    except ConfigError as exc:
        return _fail(f"config error: {exc}")
    except OSError as exc:  # refused, timed out, no such socket: said in one line
        return _fail(f"cannot open the store: {exc}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "keys":
        return _keys(args)
    return _chat(args)


if __name__ == "__main__":
    sys.exit(main())
