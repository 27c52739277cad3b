"""A fast stand-in upstream for the benchmark: raw HTTP/1.1 on asyncio, answers 200.

Why not ``sidecar.tools.sink.RecordingSink``: that one is a thread-per-connection stdlib
server that keeps every request; under load it would be the bottleneck and would
compete with the sidecar for the GIL-free CPU the box has.  This one parses just
enough HTTP/1.1 (request line, Content-Length, keep-alive), counts requests and
distinct event ids, and answers ``GET /stats`` with those counts as JSON.  Only bodies
POSTed to ``/events`` (the sidecar's deliveries) are parsed for event ids; any other
path (nginx proxying the raw webhook in the bench) is only counted, so a peer that
forwards 100 KB bodies does not pay for a JSON parse it does not need.

    python bench/upstream.py --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

_OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class Counter:
    def __init__(self) -> None:
        self.requests = 0
        self.bad = 0
        self.ids: set[str] = set()

    def record(self, body: bytes) -> None:
        self.requests += 1
        try:
            doc = json.loads(body)
            for event in doc if isinstance(doc, list) else [doc]:
                self.ids.add(event["id"])
        except (ValueError, KeyError, TypeError):
            self.bad += 1

    def stats(self) -> bytes:
        return json.dumps({"requests": self.requests, "events": len(self.ids),
                           "unparsable": self.bad}).encode()


async def handle(counter: Counter, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, target = lines[0].split(b" ")[:2]
            length = 0
            close = False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            body = await reader.readexactly(length) if length else b""
            if method == b"GET" and target == b"/stats":
                payload = counter.stats()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(payload), payload))
            elif target.startswith(b"/events"):  # the sidecar's deliveries
                counter.record(body)
                writer.write(_OK)
            else:  # anything else (nginx proxying the raw webhook): count, don't parse
                counter.requests += 1
                writer.write(_OK)
            if close:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
            ValueError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    counter = Counter()
    server = await asyncio.start_server(lambda r, w: handle(counter, r, w), "127.0.0.1", port,
                                        backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(args.port))
    else:
        uvloop.run(main(args.port))
