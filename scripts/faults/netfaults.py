#!/usr/bin/env python3
"""Two stand-ins for scripts/backpressure.sh, standard library only.

  proxy LISTEN_PORT:TARGET_PORT...   a TCP proxy on 127.0.0.1 for each pair. SIGUSR1 makes it a
                                     black hole: it stops forwarding in both directions but
                                     closes nothing (new connections are accepted and held), as
                                     a partition looks to both ends; SIGUSR2 heals it: what was
                                     held flows on. netem is not in every kernel, and network
                                     namespaces need root; this needs neither.
  failing PORT LOG                   an HTTP server answering 500 to every request, appending
                                     one line per request to LOG: "<webhook-id header> <time>".
"""

import asyncio
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 64 * 1024


async def pipe(reader, writer, flowing):
    """Copies reader to writer while `flowing` is set; holds (without reading on) while not."""
    try:
        while True:
            await flowing.wait()
            data = await reader.read(CHUNK)
            if not data:
                break
            await flowing.wait()  # read just before the partition: held until it heals
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def serve_pair(listen_port, target_port, flowing):
    async def handle(client_reader, client_writer):
        await flowing.wait()  # a connection made during the partition reaches nothing yet
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            pipe(client_reader, up_writer, flowing), pipe(up_reader, client_writer, flowing)
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


async def proxy(pairs):
    flowing = asyncio.Event()
    flowing.set()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, flowing.clear)
    loop.add_signal_handler(signal.SIGUSR2, flowing.set)
    await asyncio.gather(*(serve_pair(int(a), int(b), flowing) for a, b in pairs))


def failing(port, log_path):
    log = open(log_path, "a", buffering=1, encoding="utf-8")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            log.write(f"{self.headers.get('webhook-id', '-')} {time.time():.3f}\n")
            self.send_response(500)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "proxy":
        asyncio.run(proxy([arg.split(":") for arg in sys.argv[2:]]))
    elif len(sys.argv) == 4 and sys.argv[1] == "failing":
        failing(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
