#!/usr/bin/env python3
"""The fault-injection run's webhook receiver (scripts/faults.sh).

Verifies each POST the way a merchant's receiver does (Standard Webhooks: webhook-id,
webhook-timestamp within 5 minutes, webhook-signature v1 HMAC-SHA256 with the secret of the
webhook whose URL path was hit), appends one JSON line per request to --out, and answers 204 when
the signature verifies, 401 otherwise.

Why not `hookrelay listen`: this receiver is taken down and brought back on purpose, and the
harness must not count a delivery as lost when the receiver itself dropped it. Here a receipt is
written (and flushed) BEFORE the 204 is sent, and SIGTERM is a clean stop: the listening socket is
closed first (new connections are refused, as for a receiver that is down), requests already read
are answered, idle keep-alive connections are closed, and only then does the process exit. So
every 204 a worker saw is in --out, and a request that is not in --out got no 204.

Usage: receiver.py --port PORT --secrets FILE --out FILE
  FILE of secrets: a JSON object {"/url/path": "whsec_...", ...}
  each line of --out: {"t": unix seconds, "path": ..., "id": webhook-id, "ok": bool, "problem": ...}
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_S = 300


def verify(secret, headers, body):
    """None when the request is signed with `secret`, else what is wrong."""
    if secret is None:
        return "no webhook registered at this path"
    msg_id = headers.get("webhook-id")
    ts = headers.get("webhook-timestamp")
    sigs = headers.get("webhook-signature")
    if not msg_id or not ts or not sigs:
        return "missing webhook-id, webhook-timestamp or webhook-signature"
    try:
        ts_i = int(ts)
    except ValueError:
        return "webhook-timestamp is not an integer"
    if abs(time.time() - ts_i) > TOLERANCE_S:
        return f"webhook-timestamp {ts} is more than 5 minutes off"
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = msg_id.encode() + b"." + ts.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for sig in sigs.split():
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return None
    return "webhook-signature does not match"


class Receiver:
    def __init__(self, port, secrets, out_path):
        self.secrets = secrets
        self.out = open(out_path, "a", encoding="utf-8")
        self.lock = threading.Lock()
        self.stopping = False
        # handler -> True while it is answering a request it has read (busy), False when idle.
        self.conns = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                with receiver.lock:
                    receiver.conns[self] = False
                    if receiver.stopping:
                        self.close_connection = True

            def finish(self):
                with receiver.lock:
                    receiver.conns.pop(self, None)
                try:
                    super().finish()
                except OSError:
                    pass

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                with receiver.lock:
                    if receiver.stopping:
                        # Read after the stop began: not recorded and no 2xx, so it is retried.
                        self.close_connection = True
                        refuse = True
                    else:
                        receiver.conns[self] = True
                        refuse = False
                if refuse:
                    self._answer(503)
                    return
                path = self.path.split("?", 1)[0]
                problem = verify(receiver.secrets.get(path), self.headers, body)
                receipt = {
                    "t": time.time(),
                    "path": path,
                    "id": self.headers.get("webhook-id"),
                    "ok": problem is None,
                    "problem": problem,
                }
                with receiver.lock:
                    receiver.out.write(json.dumps(receipt) + "\n")
                    receiver.out.flush()
                self._answer(204 if problem is None else 401)
                with receiver.lock:
                    receiver.conns[self] = False
                    if receiver.stopping:
                        self.close_connection = True

            def _answer(self, status):
                self.send_response(status)
                self.send_header("content-length", "0")
                if self.close_connection:
                    self.send_header("connection", "close")
                self.end_headers()

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True

    def serve(self):
        thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1})
        thread.start()
        return thread

    def stop(self):
        """Refuse new connections, let busy requests finish, close idle ones."""
        self.server.shutdown()  # no more accept()
        self.server.socket.close()  # new connections are refused from here on
        with self.lock:
            self.stopping = True
            for handler, busy in list(self.conns.items()):
                if not busy:
                    try:
                        handler.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        deadline = time.time() + 10
        while time.time() < deadline:
            with self.lock:
                if not any(self.conns.values()):
                    break
            time.sleep(0.02)
        with self.lock:
            self.out.flush()
            os.fsync(self.out.fileno())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secrets", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.secrets, encoding="utf-8") as f:
        secrets = json.load(f)
    receiver = Receiver(args.port, secrets, args.out)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    receiver.serve()
    print(f"receiver listening on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    stop.wait()
    receiver.stop()
    print("receiver stopped", file=sys.stderr, flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
