"""The reference app of ``performance-baseline.md`` on either HTTP server, for the bench.

A plain Starlette app that does what every webhook server must (read the body, check
``X-Hub-Signature-256`` in constant time, parse the JSON) and nothing else: no schema,
no spool, no forwarding.  Served over mTLS (client certificate required) by Hypercorn
+ h11 or by uvicorn + httptools, one process, uvloop, so the two servers' own cost can
be compared in the same run (the sidecar moved from the first to the second).

    python bench/refapp.py --server uvicorn --port 8443 --cert S.pem --key S.key --ca CA.pem
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import signal
import ssl

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


def tls_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def serve_hypercorn(args: argparse.Namespace, stop: asyncio.Event) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.certfile, config.keyfile, config.ca_certs = args.cert, args.key, args.ca
    config.verify_mode = ssl.CERT_REQUIRED
    config.accesslog = None
    await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


async def serve_uvicorn(args: argparse.Namespace, stop: asyncio.Event) -> None:
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, http="httptools",
                            lifespan="off", access_log=False, log_level="warning",
                            ssl_certfile=args.cert, ssl_keyfile=args.key,
                            ssl_ca_certs=args.ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
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
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    import uvloop

    uvloop.run(main(parser.parse_args()))
