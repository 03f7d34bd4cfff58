"""Login tokens in Redis (shared/accounts.py): a token's record lives exactly as long as the token is valid."""

from __future__ import annotations

import time

import redis

from shared.accounts import Accounts, token_digest
from shared.settings import Settings
from shared.taskstore import Keys
from tests.support.farm import RedisServer


def test_a_token_record_is_gone_the_second_it_stops_being_valid(redis_server: RedisServer) -> None:
    r = redis.Redis.from_url(redis_server.url(redis_server.fresh_db()), decode_responses=True)
    accounts = Accounts(r, Settings.from_env({}))
    # several tries: the gap this guards against is the fraction of a second at which the token is issued
    for _ in range(5):
        token = accounts.issue_token("erin", hours=3 / 3600)
        key = Keys.auth_token(token_digest(token))
        expires = int(r.hget(key, "expires") or 0)
        deadline = time.time() + r.pttl(key) / 1000
        # Redis drops the record no later than token_caller starts refusing it (`expires`), so a revocation
        # counting live records never counts a token the API already refuses
        assert deadline <= expires + 0.01, (deadline, expires)
        time.sleep(0.21)
    r.close()
