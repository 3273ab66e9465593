#!/usr/bin/env python3
"""RabbitMQ management API calls for scripts/faults.sh (its own node only, guest/guest).

Usage: mgmt.py BASE_URL PREFIX COMMAND
  idle                exit 0 when the work and delay queues hold no message (ready or unacked)
  close-workers       force-close every connection named "hookrelay worker <prefix> (...)";
                      prints how many and when (epoch seconds); fails unless all of them are
                      gone afterwards
  dlq-dump FILE       write the dead letters of both DLQs as JSON [{queue, event_id, reason}]
                      (read with ack_requeue_true: only done at the very end of the run)
"""

import base64
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()


def call(base, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", AUTH)
    req.add_header("X-Reason", "scripts/faults.sh: force-closed on purpose")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read()
    return json.loads(text) if text else None


def queues(base, prefix):
    """{queue: messages (ready + unacked)} for the run's queues."""
    out = {}
    for q in call(base, "GET", "/api/queues/%2F?columns=name,messages,messages_ready,messages_unacknowledged"):
        if q["name"].startswith(prefix + "."):
            ready = q.get("messages_ready") or 0
            unacked = q.get("messages_unacknowledged") or 0
            out[q["name"]] = max(q.get("messages") or 0, ready + unacked)
    return out


def main():
    base, prefix, cmd = sys.argv[1], sys.argv[2], sys.argv[3]
    if cmd == "idle":
        busy = {n: m for n, m in queues(base, prefix).items() if m and ".dlq." not in n}
        sys.exit(1 if busy else 0)
    elif cmd == "close-workers":
        wanted = f"hookrelay worker {prefix} ("
        targets = [
            c["name"]
            for c in call(base, "GET", "/api/connections?columns=name,client_properties")
            if ((c.get("client_properties") or {}).get("connection_name") or "").startswith(wanted)
        ]
        for name in targets:
            try:
                call(base, "DELETE", "/api/connections/" + urllib.parse.quote(name, safe=""))
            except urllib.error.HTTPError:
                # 404 or 500: it is going away already (a worker closes its other connection
                # itself once one dies). Checked below: all of them must be gone.
                pass
        closed_at = time.time()
        deadline = closed_at + 10
        while True:
            left = {c["name"] for c in call(base, "GET", "/api/connections?columns=name")} & set(targets)
            if not left:
                break
            if time.time() > deadline:
                sys.exit(f"mgmt.py: connections still open 10 s after closing them: {sorted(left)}")
            time.sleep(0.5)
        print(len(targets), f"{closed_at:.6f}")
    elif cmd == "dlq-dump":
        dead = []
        for short in ("deliveries", "events"):
            queue = f"{prefix}.dlq.{short}"
            msgs = call(base, "POST", f"/api/queues/%2F/{urllib.parse.quote(queue, safe='')}/get",
                        {"count": 5000, "ackmode": "ack_requeue_true", "encoding": "auto",
                         "truncate": 100000})
            for m in msgs or []:
                props = m.get("properties") or {}
                headers = props.get("headers") or {}
                event_id = headers.get("hookrelay-event-id")
                if not event_id:
                    try:
                        event_id = json.loads(m.get("payload") or "").get("id")
                    except (ValueError, AttributeError):
                        event_id = props.get("message_id")
                dead.append({"queue": short, "event_id": event_id,
                             "reason": headers.get("hookrelay-reason")})
        with open(sys.argv[4], "w", encoding="utf-8") as f:
            json.dump(dead, f)
        print(len(dead))
    else:
        sys.exit(f"mgmt.py: unknown command {cmd}")


if __name__ == "__main__":
    main()
