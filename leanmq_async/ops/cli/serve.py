"""``leanmq serve``: run the admin HTTP API and dashboard (uvicorn, else aiohttp)."""

from __future__ import annotations

import argparse
import os
import signal
from typing import TYPE_CHECKING

import anyio

from leanmq_async.ops.cli.common import (
    EXIT_OK,
    Commands,
    UsageError,
    err,
)
from leanmq_async.ops.http import admin_app, aiohttp_admin_app

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


async def _cmd_serve(mq: LeanMQ, args: argparse.Namespace) -> int:
    if args.token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        err(f"warning: serving on {args.host} without --token: anyone who can connect can")
        err("         purge and clear queues")
    server = args.server
    if server == "auto":
        server = "uvicorn" if _installed("uvicorn") else "aiohttp" if _installed("aiohttp") else ""
    if not server:
        raise UsageError(
            "serve needs uvicorn or aiohttp: pip install 'leanmq-async[admin]' (uvicorn)"
        )
    if not _installed(server):
        raise UsageError(f"--server {server}: {server} is not installed (pip install {server})")
    err(f"serving the admin API on http://{args.host}:{args.port}/ with {server}")
    if server == "uvicorn":
        import uvicorn

        config = uvicorn.Config(
            admin_app(mq, args.token), host=args.host, port=args.port, lifespan="off"
        )
        await uvicorn.Server(config).serve()
        return EXIT_OK
    from aiohttp import web

    runner = web.AppRunner(aiohttp_admin_app(mq, args.token))
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port).start()
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
    finally:
        await runner.cleanup()
    return EXIT_OK


def add_parser(commands: Commands) -> None:
    """Add ``serve`` to ``leanmq``."""
    p = commands.add(
        "serve", "run the admin HTTP API and dashboard (uvicorn, else aiohttp)", _cmd_serve
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--token",
        default=os.environ.get("LEANMQ_ADMIN_TOKEN"),
        help="bearer token required by the API ($LEANMQ_ADMIN_TOKEN)",
    )
    p.add_argument("--server", choices=("auto", "uvicorn", "aiohttp"), default="auto")
