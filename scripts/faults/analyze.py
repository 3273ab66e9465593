#!/usr/bin/env python3
"""Counting for scripts/faults.sh: what was published, what the receivers got, what is missing.

Why Python and not bash: a scenario is judged on thousands of JSON lines (one per delivery, from
the `hookrelay listen` receivers), matched per (event id, webhook) pair, with sub-second times
for the recovery; bash has neither a JSON reader nor floating point, and jq is not a given.
Everything that talks to hookrelay, the broker or Redis stays in faults.sh.

Files it reads (all in the run's temporary directory):
  published file  one line per publish attempt: "<event id> <account> <t start> <t end> <exit code>"
                  (exit code 0 = the broker confirmed it; anything else = not published)
  webhooks file   one line per webhook: "<n> <url path> <account> <webhook id> <port>"
  receipts dir    receipts-<n>.jsonl: `hookrelay listen --json` lines (received_at, path,
                  webhook_id, verified, problem, ...)
  scenarios file  JSON lines, one per scenario, written by this script when its settle ended
  dlq files       `hookrelay dlq list --json` arrays ({"queue", "event_id", "reason", ...})

Commands (--prefix P: the scenario's event ids start with P):
  missing  --prefix P --published F --webhooks W --receipts R
           prints "<expected> <missing> <whole seconds since the last receipt>"
  scenario --prefix P --published F --webhooks W --receipts R --fault-end T --name N --title T
           --dlq-delta D --dups-allowed 0|1 [--problem TEXT]... --record S
           prints the scenario's line, appends it to S, exits 1 if it failed
  table    --scenarios S --webhooks W --receipts R [--dlq D]...
           prints the final table (recounted now, so late receipts count), exits 1 if any
           scenario failed
"""

import argparse
import glob
import json
import os
import sys
import time
from collections import Counter
from datetime import datetime


def read_published(path):
    """(confirmed: {id: (account, t_start)}, failed ids)"""
    confirmed, failed = {}, set()
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) != 5:
                    continue
                event_id, account, t_start, _t_end, code = parts
                if code == "0":
                    confirmed[event_id] = (account, float(t_start))
                else:
                    failed.add(event_id)
    except FileNotFoundError:
        pass
    return confirmed, failed - confirmed.keys()


def read_webhooks(path):
    by_account = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 5:
                _n, url_path, account, _id, _port = parts
                by_account.setdefault(account, []).append(url_path)
    return by_account


def read_receipts(directory):
    """`hookrelay listen --json` lines of every receiver, as {t, path, id, ok, problem}."""
    receipts = []
    for path in sorted(glob.glob(os.path.join(directory, "receipts-*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line being written right now
                receipts.append({
                    "t": datetime.fromisoformat(r["received_at"]).timestamp(),
                    "path": r.get("path"),
                    "id": r.get("webhook_id"),
                    "ok": r.get("verified"),
                    "problem": r.get("problem"),
                })
    return receipts


def stats(published_path, webhooks_path, receipts_path, fault_end, prefix):
    """Counts for one scenario. Delivery = (event id, webhook): an event of an account with two
    webhooks is expected twice, once at each URL."""
    confirmed, failed = read_published(published_path)
    by_account = read_webhooks(webhooks_path)
    expected = {
        (event_id, url_path): t_start
        for event_id, (account, t_start) in confirmed.items()
        for url_path in by_account.get(account, [])
    }
    first = {}  # (event id, path) -> time of the first verified receipt
    counts = Counter()
    unverified = []
    unconfirmed = set()
    unexpected = 0
    last_t = 0.0
    for r in read_receipts(receipts_path):
        event_id = r.get("id") or ""
        if not event_id.startswith(prefix):
            continue
        last_t = max(last_t, r["t"])
        if not r.get("ok"):
            unverified.append(r.get("problem"))
            continue
        key = (event_id, r["path"])
        if key in expected:
            counts[key] += 1
            first.setdefault(key, r["t"])
        elif event_id in failed:
            unconfirmed.add(event_id)  # a publish that reported failure but did reach the broker
        else:
            unexpected += 1
    delivered = len(first)
    after = [t - fault_end for key, t in first.items() if expected[key] >= fault_end]
    backlog = [t for key, t in first.items() if expected[key] < fault_end]
    return {
        "published": len(confirmed),
        "publish_failed": len(failed),
        "expected": len(expected),
        "delivered": delivered,
        "lost": len(expected) - delivered,
        "duplicates": sum(counts.values()) - delivered,
        "unverified": len(unverified),
        "unverified_examples": sorted(set(p for p in unverified if p))[:3],
        "unconfirmed_delivered": len(unconfirmed),
        "unexpected": unexpected,
        # From the end of the fault to the first receipt of an event published after it.
        "recover_s": round(min(after), 2) if after else None,
        # From the end of the fault to the last first-receipt of an event published before it.
        "backlog_s": round(max(backlog) - fault_end, 2) if backlog and len(first) == len(expected) else None,
        "missing_examples": sorted(k[0] + " " + k[1] for k in expected.keys() - first.keys())[:5],
        "last_receipt": last_t,
    }


def verdict(s, dlq, dups_allowed, problems):
    """The problems of a scenario, its own plus what the counts show; empty = PASS."""
    problems = list(problems)
    if s["published"] == 0:
        problems.append("nothing was published")
    if s["lost"]:
        problems.append(f"{s['lost']} lost (e.g. {', '.join(s['missing_examples'][:3])})")
    if dlq:
        problems.append(f"{dlq} dead-lettered")
    if s["duplicates"] and not dups_allowed:
        problems.append(f"{s['duplicates']} duplicates where none are allowed")
    if s["unverified"]:
        problems.append(f"{s['unverified']} requests failed verification ({'; '.join(s['unverified_examples'])})")
    return problems


def fmt_s(v):
    return "never" if v is None else f"{v:.1f}s"


def cmd_missing(a):
    s = stats(a.published, a.webhooks, a.receipts, time.time(), a.prefix)
    quiet = time.time() - s["last_receipt"] if s["last_receipt"] else 1e9
    print(s["expected"], s["lost"], int(quiet))


def cmd_scenario(a):
    """Prints the scenario's one line, records it in --record, exits 1 if it failed."""
    s = stats(a.published, a.webhooks, a.receipts, a.fault_end, a.prefix)
    problems = verdict(s, a.dlq_delta, a.dups_allowed, a.problem or [])
    extra = []
    if s["publish_failed"]:
        extra.append(f"{s['publish_failed']} publishes failed")
    if s["unconfirmed_delivered"]:
        extra.append(f"{s['unconfirmed_delivered']} of those delivered anyway")
    if s["backlog_s"] is not None and s["backlog_s"] > 0.05:
        extra.append(f"backlog drained {fmt_s(s['backlog_s'])} after the fault")
    print(
        f"[{a.name}] {a.title}: published {s['published']}, "
        f"delivered {s['delivered']}/{s['expected']}, lost {s['lost']}, "
        f"duplicates {s['duplicates']}{'' if a.dups_allowed else ' (none allowed)'}, "
        f"dead-lettered {a.dlq_delta}, recovered in {fmt_s(s['recover_s'])}"
        + (f" ({'; '.join(extra)})" if extra else "")
        + (" -- PASS" if not problems else " -- FAIL: " + "; ".join(problems))
    )
    with open(a.record, "a", encoding="utf-8") as f:
        f.write(json.dumps({
            "name": a.name, "title": a.title, "prefix": a.prefix, "published_file": a.published,
            "fault_end": a.fault_end, "dlq_delta": a.dlq_delta, "dups_allowed": a.dups_allowed,
            "problems": a.problem or [],
        }) + "\n")
    return 1 if problems else 0


def cmd_table(a):
    dead = []
    for path in a.dlq or []:
        try:
            with open(path, encoding="utf-8") as f:
                dead.extend(json.load(f))
        except (OSError, json.JSONDecodeError):
            pass
    with open(a.scenarios, encoding="utf-8") as f:
        scenarios = [json.loads(line) for line in f if line.strip()]
    header = ("scenario", "published", "delivered", "lost", "duplicates", "dead-lettered",
              "recovered in", "verdict")
    rows, failed_any = [], False
    for sc in scenarios:
        s = stats(sc["published_file"], a.webhooks, a.receipts, sc["fault_end"], sc["prefix"])
        dead_here = sum(1 for d in dead if (d.get("event_id") or "").startswith(sc["prefix"]))
        dlq = max(sc["dlq_delta"], dead_here)
        problems = verdict(s, dlq, sc["dups_allowed"], sc["problems"])
        failed_any |= bool(problems)
        rows.append((
            f"{sc['name']}) {sc['title']}",
            str(s["published"]),
            f"{s['delivered']}/{s['expected']}",
            str(s["lost"]),
            f"{s['duplicates']}{'' if sc['dups_allowed'] else ' (0 allowed)'}",
            str(dlq),
            fmt_s(s["recover_s"]),
            "PASS" if not problems else "FAIL: " + "; ".join(problems),
        ))
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    sep = "-+-".join("-" * w for w in widths[:-1]) + "-+-" + "-" * 7
    print(" | ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip())
    print(sep)
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + " | " + r[-1])
    if dead:
        reasons = Counter((d.get("queue"), d.get("reason")) for d in dead)
        print("dead letters by queue/reason: " + ", ".join(
            f"{q}/{r}: {n}" for (q, r), n in sorted(reasons.items(), key=str)))
    stray = [d for d in dead
             if not any((d.get("event_id") or "").startswith(sc["prefix"]) for sc in scenarios)]
    if stray:
        print(f"{len(stray)} dead letters belong to no scenario (warm-up or unknown)")
        failed_any = True
    return 1 if failed_any else 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("missing", "scenario"):
        c = sub.add_parser(name)
        c.add_argument("--prefix", required=True)
        c.add_argument("--published", required=True)
        c.add_argument("--webhooks", required=True)
        c.add_argument("--receipts", required=True)
    c = sub.choices["scenario"]
    c.add_argument("--name", required=True)
    c.add_argument("--title", required=True)
    c.add_argument("--fault-end", type=float, required=True)
    c.add_argument("--dlq-delta", type=int, required=True)
    c.add_argument("--dups-allowed", type=int, choices=(0, 1), required=True)
    c.add_argument("--problem", action="append")
    c.add_argument("--record", required=True)
    c = sub.add_parser("table")
    c.add_argument("--scenarios", required=True)
    c.add_argument("--webhooks", required=True)
    c.add_argument("--receipts", required=True)
    c.add_argument("--dlq", action="append")
    a = p.parse_args()
    if a.cmd == "missing":
        cmd_missing(a)
    elif a.cmd == "scenario":
        sys.exit(cmd_scenario(a))
    else:
        sys.exit(cmd_table(a))


if __name__ == "__main__":
    main()
