"""The webhook outbox on a real Redis: claiming hides a delivery, failures back off, attempts run out."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from shared import outbox


@pytest.fixture
def r(redis_server) -> Any:  # type: ignore[no-untyped-def]
    return redis.Redis.from_url(redis_server.url(redis_server.fresh_db()), decode_responses=True)


def test_a_claimed_delivery_is_hidden_until_its_visibility_ends(r: Any) -> None:
    outbox.enqueue(r, "http://127.0.0.1:9/hook", {"uuid": "u"}, attempts=3)
    [member] = outbox.claim(r, visibility=0.3)
    assert json.loads(member)["payload"] == {"uuid": "u"}
    assert outbox.claim(r) == [], "a delivery in flight is not handed out twice"
    time.sleep(0.4)
    assert outbox.claim(r) == [member], "a sender that died leaves it to be claimed again"
    outbox.delivered(r, member)
    assert outbox.pending(r) == 0


def test_failures_back_off_and_the_last_attempt_drops_it(r: Any) -> None:
    outbox.enqueue(r, "http://127.0.0.1:9/hook", {"uuid": "u"}, attempts=2)
    [first] = outbox.claim(r)
    assert outbox.failed(r, first, backoff=0.2) is True
    assert outbox.claim(r) == [], "not due before its backoff"
    time.sleep(0.25)
    [second] = outbox.claim(r)
    assert json.loads(second)["attempt"] == 1 and json.loads(second)["left"] == 1
    assert outbox.failed(r, second) is False
    assert outbox.pending(r) == 0


def test_task_end_queues_the_task_and_node_webhooks(r: Any) -> None:
    record = {"uuid": "u1", "name": "n", "dateCreated": "1", "status": "40", "options": "[]", "imagesCount": "2",
              "progress": "100", "webhook": "http://127.0.0.1:9/task"}
    assert outbox.notify_task_end(r, record, "http://127.0.0.1:9/node", 5, [{"filename": "a.jpg"}]) == 2
    payloads = [json.loads(m) for m in outbox.claim(r)]
    assert sorted(p["url"] for p in payloads) == ["http://127.0.0.1:9/node", "http://127.0.0.1:9/task"]
    assert payloads[0]["payload"]["status"] == {"code": 40} and payloads[0]["payload"]["images"] == [
        {"filename": "a.jpg"}]
    assert outbox.notify_task_end(r, {**record, "webhook": ""}, "", 5, []) == 0
