"""The webhook outbox in Redis: a delivery outlives the process that queued it, and any worker sends it.

A delivery is a member of one sorted set scored by when it is due. Claiming pushes its score past a
visibility window, so a sender that dies mid-delivery leaves it to be claimed again; success removes it;
failure re-schedules it with exponential backoff until its attempts run out.
"""

from __future__ import annotations

import json
import time
import uuid as uuidlib
from typing import Any

from shared.tasks import task_info
from shared.taskstore import Keys

KEY = Keys.webhooks
VISIBILITY_SECONDS = 120.0
MAX_BACKOFF = 300.0

# KEYS: outbox ; ARGV: now, visibility deadline, limit. Due deliveries, each hidden until the deadline.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], member) end
return due
"""


def enqueue(r: Any, url: str, payload: dict[str, Any], attempts: int) -> None:
    member = {
        "id": uuidlib.uuid4().hex,
        "url": url,
        "payload": payload,
        "left": max(1, attempts),
        "attempt": 0,
    }
    r.zadd(KEY, {json.dumps(member): time.time()})


def notify_task_end(r: Any, record: dict[str, str], node_webhook: str, attempts: int, images: Any) -> int:
    """Queue the task's webhook and the node-wide one with the task info plus `images`; returns how many."""
    payload = task_info(record)
    payload["images"] = images
    urls = sorted(filter(None, {record.get("webhook", ""), node_webhook}))
    for url in urls:
        enqueue(r, url, payload, attempts)
    return len(urls)


def claim(r: Any, limit: int = 10, visibility: float = VISIBILITY_SECONDS) -> list[str]:
    now = time.time()
    return list(r.eval(_CLAIM, 1, KEY, now, now + visibility, limit))


def delivered(r: Any, member: str) -> None:
    r.zrem(KEY, member)


def failed(r: Any, member: str, backoff: float = 1.0) -> bool:
    """Schedule the next attempt; False when this was the last one (the delivery is dropped)."""
    entry = json.loads(member)
    pipe = r.pipeline()
    pipe.zrem(KEY, member)
    pipe.hincrby(Keys.metrics, "webhook_failures", 1)  # shared/metrics.py shows it
    again = entry["left"] > 1
    if again:
        entry["left"] -= 1
        entry["attempt"] += 1
        delay = min(MAX_BACKOFF, backoff * 2 ** (entry["attempt"] - 1))
        pipe.zadd(KEY, {json.dumps(entry): time.time() + delay})
    pipe.execute()
    return again


def pending(r: Any) -> int:
    return int(r.zcard(KEY))
