"""The sidecar's request path built up one layer at a time, for the ``handshake-layers``
scenario of ``bench/run.py``: where a new connection's CPU goes.

    python bench/layers.py --layer LAYER --config sidecar.yaml --port 8443

Each layer serves on one process with uvloop, over mTLS with the config's certificates,
and answers every POST 200, adding one piece of the real path to the layer before it:

``tls``        the sidecar's TLS context (``tls.material.build_context``) on a bare
               ``asyncio.Protocol`` that reads one request and answers it: the floor;
``identity``   the listener context of ``tls.holder`` instead (each connection made from
               the current context, identity check, connection admission and gauge);
``http``       ``sidecar.server.listen.Listener`` (Hypercorn with the sidecar's limits:
               header deadline, guard, timeouts) and a trivial ASGI app that reads the body;
``checks``     the sidecar's public app: signature, strict JSON, schemas, normalize
               (the events are dropped);
``spool``      and the durable group commit into a real spool file (nothing delivers).

The full sidecar with one process (``spool`` peer) adds the delivery worker on top.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

import uvloop

from sidecar.app.public import build_public_app
from sidecar.config import load_config
from sidecar.metrics import Metrics
from sidecar.normalize import Normalized
from sidecar.server.listen import Listener, bind_socket
from sidecar.server.reload import LiveState
from sidecar.server.roles import listener_limits
from sidecar.server.compose import compose
from sidecar.spool import open_spool
from sidecar.tls.material import build_context

LAYERS = ("tls", "identity", "http", "checks", "spool")
_ANSWER = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n"
           b"connection: close\r\n\r\n{}")


class _OneRequest(asyncio.Protocol):
    """Reads one request (headers, then Content-Length bytes), answers, closes."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.data = b""

    def data_received(self, data: bytes) -> None:
        self.data += data
        end = self.data.find(b"\r\n\r\n")
        if end < 0:
            return
        length = 0
        for line in self.data[:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.data) - end - 4 >= length:
            self.transport.write(_ANSWER)
            self.transport.close()


async def _read_and_answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


class _Discard:
    async def accept(self, normalized: Normalized) -> None:
        return None


async def serve(layer: str, config_path: Path, port: int) -> None:
    config = load_config(config_path)
    metrics = Metrics()
    live = LiveState(config, metrics, max_connections=config.limits.max_connections)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if layer in ("tls", "identity"):
        ctx = (build_context(live.holder.state.material, require_client_cert=True)
               if layer == "tls" else live.holder.listener_context())
        server = await loop.create_server(_OneRequest, "127.0.0.1", port, ssl=ctx, backlog=1024)
        await stop.wait()
        server.close()
        return
    sock = bind_socket("127.0.0.1", port)
    if layer == "spool":
        # Exactly the sidecar's ingest side (every check, the budget, the bounds, the
        # durable group commit), built by the composition root; nothing delivers.
        spool = open_spool(config.delivery)
        parts = compose(config, spool=spool, metrics=metrics, ingest=True, delivery=False,
                        wake=lambda: None, max_connections=config.limits.max_connections)
        assert parts.ingest is not None
        try:
            await parts.ingest.serve(stop, sock)
        finally:
            spool.close()
        return
    app: Any = _read_and_answer
    if layer == "checks":
        app = build_public_app(path=config.listen.path, settings=live.settings,
                               ingest=_Discard(), metrics=metrics,
                               max_body_bytes=config.limits.max_body_bytes,
                               body_timeout_s=config.limits.body_timeout_s)
    listener = Listener(app, sock,
                        ssl_context=live.holder.listener_context(), backlog=1024,
                        limits=listener_limits(live, graceful_timeout_s=1.0))
    await listener.serve(stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", choices=LAYERS, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.layer, args.config, args.port))


if __name__ == "__main__":
    main()
