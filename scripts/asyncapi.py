#!/usr/bin/env python3
"""Writes docs/asyncapi.yaml, hookrelay's broker interface as AsyncAPI 3.0.

The envelope schema is src/event/envelope.schema.json, the file the binary serves; its limits are
the worker's (src/event.rs; unit tests hold the file to the parser and the config defaults): ids of
1..128 characters from fixed sets, a body of at most x-max-bytes, `data` an object nested at most
x-max-depth levels (`{}` is one level). JSON Schema has no keyword for a document's size or nesting depth: they are the extension keywords
`x-max-bytes` and `x-max-depth`. (A chain of one definition per level would say the depth in plain
JSON Schema, but the AsyncAPI validator resolves it in time exponential in the depth: 12 levels
took over 5 minutes.) The 27 labels are read from src/event.rs so the two cannot drift apart.

Run: python3 scripts/asyncapi.py  (then `git diff docs/asyncapi.yaml`).
"""
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The envelope's JSON Schema: `hookrelay schema envelope` and GET /v1/schemas/envelope.json
# serve this same file (include_str!), so the three cannot drift.
ENVELOPE = ROOT / "src/event/envelope.schema.json"

def labels():
    text = (ROOT / "src/event.rs").read_text()
    found = re.findall(r'^\s+\w+ => "([a-z.]+)", "([^"]+)";', text, re.M)
    assert len(found) == 27, f"expected 27 labels in src/event.rs, found {len(found)}"
    return found

def envelope(names):
    """The envelope schema, read from the one file the worker's binary serves too."""
    schema = json.loads(ENVELOPE.read_text())
    assert schema["properties"]["type"]["enum"] == names, \
        f"{ENVELOPE.relative_to(ROOT)}: the type enum is not the 27 labels of src/event.rs"
    # A standalone document's keywords, not a schema object's inside AsyncAPI.
    for key in ("$schema", "title"):
        schema.pop(key, None)
    return schema

def dead_letter_headers():
    text = {"type": "string", "maxLength": 1024}
    stamp = {"type": "string", "format": "date-time"}
    return {
        "type": "object",
        "required": ["hookrelay-reason"],
        "properties": {
            "hookrelay-reason": {"type": "string", "enum": [
                "exhausted", "gone", "target_refused", "webhook_deleted", "webhook_disabled",
                "delivery_limit", "body_too_large", "webhook_unreadable", "invalid_job",
                "invalid_json", "missing_field", "invalid_field", "unknown_type",
                "routing_key_mismatch", "too_large", "too_deep", "invalid_properties"]},
            "hookrelay-event-id": text, "hookrelay-event-type": text,
            "hookrelay-account-id": text, "hookrelay-webhook-id": text, "hookrelay-url": text,
            "hookrelay-attempts": {"type": "integer", "minimum": 1},
            "hookrelay-last-status": {"type": "integer"},
            "hookrelay-last-error": text,
            "hookrelay-first-attempt-at": stamp, "hookrelay-last-attempt-at": stamp,
        },
    }

def document():
    found = labels()
    names = [n for n, _ in found]
    channels = {
        "events": {
            "address": "{prefix}.events",
            "title": "The events exchange",
            "description": (
                "Durable topic exchange. Routing key = the event's `type`. Publish persistent "
                "(delivery_mode 2), with publisher confirms and `mandatory`: a nack, a returned "
                "message or a confirm timeout is a failed publish. The work queue is bound with `#`."),
            "parameters": {"prefix": {"default": "hookrelay", "description": "`amqp.prefix`"}},
            "messages": {"event": {"$ref": "#/components/messages/Event"}},
            "bindings": {"amqp": {"is": "routingKey", "exchange": {
                "name": "{prefix}.events", "type": "topic", "durable": True, "autoDelete": False,
                "vhost": "/"}, "bindingVersion": "0.3.0"}},
        },
        "deadEvents": {
            "address": "{prefix}.dlq.events",
            "title": "Events that could not be processed",
            "description": "Quorum queue; the raw body as published, with `hookrelay-reason`.",
            "parameters": {"prefix": {"default": "hookrelay"}},
            "messages": {"deadEvent": {"$ref": "#/components/messages/DeadEvent"}},
            "bindings": {"amqp": {"is": "queue", "queue": {"name": "{prefix}.dlq.events",
                "durable": True, "exclusive": False, "autoDelete": False, "vhost": "/"},
                "bindingVersion": "0.3.0"}},
        },
        "deadDeliveries": {
            "address": "{prefix}.dlq.deliveries",
            "title": "Deliveries that exhausted their retries or were refused for good",
            "description": "Quorum queue; one message per (event, webhook), facts in headers.",
            "parameters": {"prefix": {"default": "hookrelay"}},
            "messages": {"deadDelivery": {"$ref": "#/components/messages/DeadDelivery"}},
            "bindings": {"amqp": {"is": "queue", "queue": {"name": "{prefix}.dlq.deliveries",
                "durable": True, "exclusive": False, "autoDelete": False, "vhost": "/"},
                "bindingVersion": "0.3.0"}},
        },
    }
    messages = {
        "Event": {
            "name": "event", "title": "Event envelope", "contentType": "application/json",
            "payload": {"$ref": "#/components/schemas/Envelope"},
            "bindings": {"amqp": {"contentEncoding": "utf-8", "messageType": "event",
                                  "bindingVersion": "0.3.0"}},
            "examples": [{"name": "payment", "payload": {
                "id": "evt_2b1f9c3e", "type": "payment.card.success", "account_id": "68",
                "created_at": "2026-11-27T02:04:21Z",
                "data": {"amount": "10.00", "currency_iso": "EUR"}}}],
        },
        "DeadEvent": {
            "name": "deadEvent", "title": "An envelope the worker could not process",
            "headers": {"$ref": "#/components/schemas/DeadLetterHeaders"},
            "payload": {"description": "the raw body as published (any bytes)"},
        },
        "DeadDelivery": {
            "name": "deadDelivery", "title": "A delivery that finally failed",
            "headers": {"$ref": "#/components/schemas/DeadLetterHeaders"},
            "payload": {"type": "object", "description": "the event and the facts of the headers"},
        },
    }
    schemas = {"Envelope": envelope(names), "DeadLetterHeaders": dead_letter_headers()}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "hookrelay broker interface",
            "version": "0.1.0",
            "description": (
                "What upstream services publish to hookrelay over RabbitMQ, and what it parks in "
                "dead-letter queues. Event types: " + "; ".join(f"`{n}` ({d})" for n, d in found) + "."),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {"rabbitmq": {"host": "127.0.0.1:5672", "protocol": "amqp",
                                 "protocolVersion": "0.9.1",
                                 "description": "amqps:// for TLS; any node of a cluster"}},
        "channels": channels,
        "operations": {
            "publishEvent": {"action": "send", "channel": {"$ref": "#/channels/events"},
                             "summary": "Upstream publishes an event",
                             "bindings": {"amqp": {"deliveryMode": 2, "mandatory": True,
                                                   "bindingVersion": "0.3.0"}},
                             "messages": [{"$ref": "#/channels/events/messages/event"}]},
            "inspectDeadEvents": {"action": "receive", "channel": {"$ref": "#/channels/deadEvents"},
                                  "summary": "On-call reads events that could not be processed",
                                  "messages": [{"$ref": "#/channels/deadEvents/messages/deadEvent"}]},
            "inspectDeadDeliveries": {"action": "receive", "channel": {"$ref": "#/channels/deadDeliveries"},
                                      "summary": "On-call reads and replays failed deliveries",
                                      "messages": [{"$ref": "#/channels/deadDeliveries/messages/deadDelivery"}]},
        },
        "components": {"schemas": schemas, "messages": messages},
    }

if __name__ == "__main__":
    out = ROOT / "docs/asyncapi.yaml"
    out.write_text("# Generated by scripts/asyncapi.py from src/event.rs and src/event/envelope.schema.json; edit the script, not this file.\n"
                   + json.dumps(document(), indent=2) + "\n")
    print(f"wrote {out}")
