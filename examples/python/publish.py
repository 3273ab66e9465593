#!/usr/bin/env python3
"""Publish hookrelay events from Python (DESIGN §2): publisher confirms, persistent, mandatory.

The event id is the idempotency key: a retry after a nack or a lost confirm republishes the SAME
id, and merchants see one webhook-id. Usage: publish.py AMQP_URL PREFIX ACCOUNT COUNT
"""
import json, sys, time, uuid
from datetime import datetime, timezone
import pika

def envelope(event_type, account, data):
    return {"id": "evt_" + uuid.uuid4().hex, "type": event_type, "account_id": account,
            "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "data": data}

def publish(channel, exchange, event, attempts=5):
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                 message_id=event["id"])
    body = json.dumps(event).encode()
    for attempt in range(1, attempts + 1):
        try:
            # With confirm_delivery, this returns once the broker confirmed; it raises on a nack
            # (NackError) or when no queue is bound (UnroutableError, because mandatory=True).
            channel.basic_publish(exchange, event["type"], body, props, mandatory=True)
            return
        except (pika.exceptions.NackError, pika.exceptions.UnroutableError) as e:
            if attempt == attempts:
                raise
            print(f"retrying {event['id']} after {type(e).__name__}", file=sys.stderr)
            time.sleep(0.2 * 2 ** attempt)

def main():
    url, prefix, account, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    for n in range(count):
        event = envelope("payment.card.success", account, {"n": n, "amount": "10.00"})
        publish(channel, prefix + ".events", event)
        print(event["id"])
    connection.close()

if __name__ == "__main__":
    main()
