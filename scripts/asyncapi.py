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

def operational_types():
    """The operational event types, read from src/operational.rs (`TYPES`) so they cannot drift."""
    text = (ROOT / "src/operational.rs").read_text()
    block = text[text.index("pub const TYPES"):text.index("];", text.index("pub const TYPES"))]
    found = re.findall(r'\(\s*"([a-z_.]+)",\s*"((?:[^"\\]|\\.)*)"', block, re.S)
    assert len(found) == 4, f"expected 4 operational types in src/operational.rs, found {len(found)}"
    return [(n, re.sub(r"\\\s*", "", d)) for n, d in found]

def operational_event(types):
    """The body of an operational event: the envelope's shape with hookrelay's own types."""
    text = {"type": "string"}
    return {
        "type": "object",
        "required": ["id", "type", "account_id", "created_at", "data"],
        "properties": {
            "id": {"type": "string", "pattern": "^op_[A-Za-z0-9_-]+$",
                   "description": "the same on a republish after a crash: dedupe on it"},
            "type": {"type": "string", "enum": [n for n, _ in types]},
            "account_id": {"type": "string", "description": "the merchant"},
            "created_at": {"type": "string", "format": "date-time"},
            "data": {"type": "object", "required": ["webhook_id", "url"], "properties": {
                "webhook_id": text, "url": text,
                "threshold_percent": {"type": "integer", "enum": [25, 50, 75]},
                "reason": {"type": "string", "description":
                           "webhook.disabled: gone | failing; delivery.dead_lettered: the DLQ reason"},
                "failing_since": {"type": ["string", "null"], "format": "date-time"},
                "last_error": text, "consecutive_failures": {"type": "integer"},
                "failures": {"type": "integer"}, "disable_after_seconds": {"type": "integer"},
                "event_id": text, "event_type": text, "attempts": {"type": "integer"},
                "dead_letter_id": text}},
        },
    }

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
    ops = operational_types()
    channels = {
        "operational": {
            "address": "{prefix}.operational",
            "title": "Operational events, for the platform",
            "description": (
                "Durable topic exchange hookrelay publishes to (persistent, confirmed, not "
                "mandatory: bind a queue first, the broker drops what nothing is bound for). "
                "Routing key = the type: " + "; ".join(f"`{n}` ({d})" for n, d in ops) + ". "
                "Each webhook state change once across all workers; at least once, same `id` "
                "on a repeat."),
            "parameters": {"prefix": {"default": "hookrelay", "description": "`amqp.prefix`"}},
            "messages": {"operationalEvent": {"$ref": "#/components/messages/OperationalEvent"}},
            "bindings": {"amqp": {"is": "routingKey", "exchange": {
                "name": "{prefix}.operational", "type": "topic", "durable": True,
                "autoDelete": False, "vhost": "/"}, "bindingVersion": "0.3.0"}},
        },
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
        "OperationalEvent": {
            "name": "operationalEvent", "title": "Operational event", "contentType": "application/json",
            "payload": {"$ref": "#/components/schemas/OperationalEvent"},
            "examples": [{"name": "failing", "payload": {
                "id": "op_Xq3v9TzL0aB7cD2eF4gH-1", "type": "webhook.failing", "account_id": "68",
                "created_at": "2026-11-27T14:04:21Z",
                "data": {"webhook_id": "wh_9f2c", "url": "https://merchant.example/hooks",
                         "threshold_percent": 25, "failing_since": "2026-11-26T08:04:21Z",
                         "last_error": "HTTP 500", "consecutive_failures": 14,
                         "disable_after_seconds": 432000}}}],
        },
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
    schemas = {"Envelope": envelope(names), "DeadLetterHeaders": dead_letter_headers(),
               "OperationalEvent": operational_event(ops)}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "hookrelay broker interface",
            "version": "0.1.0",
            "description": (
                "What upstream services publish to hookrelay over RabbitMQ, and what it parks in "
                "dead-letter queues, and the operational events it publishes for the platform. "
                "Event types: " + "; ".join(f"`{n}` ({d})" for n, d in found) + "."),
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
            "consumeOperational": {"action": "receive", "channel": {"$ref": "#/channels/operational"},
                                   "summary": "The platform consumes operational events through a queue it binds",
                                   "messages": [{"$ref": "#/channels/operational/messages/operationalEvent"}]},
        },
        "components": {"schemas": schemas, "messages": messages},
    }

if __name__ == "__main__":
    out = ROOT / "docs/asyncapi.yaml"
    out.write_text("# Generated by scripts/asyncapi.py from src/event.rs and src/event/envelope.schema.json; edit the script, not this file.\n"
                   + json.dumps(document(), indent=2) + "\n")
    print(f"wrote {out}")
