"""The reference app of ``performance-baseline.md`` on a bare HTTP server, for the bench.

A plain Starlette app that does what every webhook server must (read the body, check
``X-Hub-Signature-256`` in constant time, parse the JSON) and nothing else: no schema,
no spool, no forwarding.  Served over the sidecar's own TLS — the TLS holder's listener
context from the sidecar config given (each connection made from the current context,
the client identity checked in the handshake, the connection cap) — by stock Hypercorn
0.18 + h11 (``ref-hypercorn``: the server the sidecar runs, without the sidecar's
limits, guard or checks) or by uvicorn + httptools (``ref-uvicorn``: the server it ran
before), one process, uvloop.  The sidecar's own cost is its rate against
``ref-hypercorn`` in the same run.

    python bench/refapp.py --server hypercorn --port 8443 --config sidecar.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import signal
import ssl
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

SECRET = b"benchsecret"


async def webhook(request: Request) -> PlainTextResponse:
    body = await request.body()
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(request.headers.get("x-hub-signature-256", ""), expected):
        return PlainTextResponse("bad signature", status_code=401)
    json.loads(body)
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/webhooks/whatsapp", webhook, methods=["POST"])])


def sidecar_tls(config_path: Path) -> ssl.SSLContext:
    """The sidecar's listener context, as ``sidecar serve`` builds it."""
    from sidecar.config import load_config
    from sidecar.tls.holder import TLSHolder

    config = load_config(config_path)
    holder = TLSHolder(config.tls, max_connections=config.limits.max_connections)
    return holder.listener_context()


async def serve_hypercorn(args: argparse.Namespace, stop: asyncio.Event) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    context = sidecar_tls(args.config)

    class SidecarTLSConfig(Config):
        certfile = keyfile = "unused"  # ssl_enabled; the context below is what serves

        def create_ssl_context(self) -> ssl.SSLContext:
            return context

    config = SidecarTLSConfig()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.accesslog = None
    await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


async def serve_uvicorn(args: argparse.Namespace, stop: asyncio.Event) -> None:
    import uvicorn

    context = sidecar_tls(args.config)

    class SidecarTLSConfig(uvicorn.Config):
        def load(self) -> None:
            super().load()
            self.ssl = context  # what uvicorn's server listens with

    config = SidecarTLSConfig(app, host="127.0.0.1", port=args.port, http="httptools",
                              lifespan="off", access_log=False, log_level="warning")
    server = uvicorn.Server(config)
    server.capture_signals = lambda: _nothing()  # type: ignore[method-assign]

    async def watch() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(watch())
    await server.serve()
    watcher.cancel()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await (serve_hypercorn if args.server == "hypercorn" else serve_uvicorn)(args, stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("hypercorn", "uvicorn"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", type=Path, required=True,
                        help="a sidecar config: its tls section is served")
    import uvloop

    uvloop.run(main(parser.parse_args()))
