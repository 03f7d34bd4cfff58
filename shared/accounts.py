"""User accounts: users, passwords, login tokens, login rate limits, per-user limits, and who a caller is.

Off unless ODM_FARM_ACCOUNTS is set: the node token (or no token) then sees everything, as before. With
accounts, each user logs in at /auth/login and passes the token it gets as `?token=`, like the node token;
the node token stays the administrator's (and the workers') credential.

Passwords are hashed with argon2id (argon2-cffi). Login tokens are random (secrets.token_urlsafe) and only
their sha256 is stored: a token has 256 bits of entropy, so a fast hash is enough and lets a request find its
token with one key lookup. Every secret comparison goes through hmac.compare_digest.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from shared.errors import InvalidRequest
from shared.settings import Settings
from shared.taskstore import Keys

USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MAX_PASSWORD = 1024  # argon2 hashes any length; refusing megabytes keeps a login request cheap
TOKEN_BYTES = 32
_hasher = PasswordHasher()
# verified when the user does not exist, so that an unknown name costs as long as a wrong password
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

BAD_LOGIN = "Invalid username or password."
# a failure counter that expires with its window, set in one step (EXPIRE NX needs Redis 7)
_COUNT_FAILURE = (
    "local n = redis.call('INCR', KEYS[1]) if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end return n"
)


@dataclass(frozen=True)
class Caller:
    """Who makes a request: a user, or the node itself (node token, or a farm without a token)."""

    user: str | None = None
    admin: bool = True
    # a submodel that ODM's split-merge sends back through a worker's proxy: created for the parent
    # task's user, and part of that task's run (so it does not count against the user's running limit)
    submodel: bool = False

    def sees(self, owner: str | None) -> bool:
        if self.admin:
            return True
        return bool(owner) and hmac.compare_digest(str(owner).encode(), str(self.user or "").encode())


NODE = Caller()
ANONYMOUS = Caller(admin=False)  # no valid token, on a route that answers without one


@dataclass(frozen=True)
class Limits:
    max_images: int | None = None
    max_running: int | None = None
    max_bytes: int | None = None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Accounts:
    """Users and their tokens in Redis (keys from shared.taskstore.Keys)."""

    def __init__(self, r: Any, settings: Settings) -> None:
        self.r = r
        self.settings = settings

    # --- users ----------------------------------------------------------------------------
    def add_user(
        self,
        name: str,
        password: str,
        *,
        admin: bool = False,
        max_images: int | None = None,
        max_running: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        check_username(name)
        check_password(password)
        record = {
            "name": name,
            "password": _hasher.hash(password),
            "admin": "1" if admin else "0",
            "createdAt": str(int(time.time() * 1000)),
        }
        for field, value in (("maxImages", max_images), ("maxRunning", max_running), ("maxBytes", max_bytes)):
            if value is not None:
                record[field] = str(int(value))
        if not self.r.hsetnx(Keys.user(name), "name", name):
            raise InvalidRequest(f"User {name} already exists.", no_retry=True)
        self.r.hset(Keys.user(name), mapping=record)
        self.r.sadd(Keys.users, name)

    def user(self, name: str) -> dict[str, str] | None:
        if not USERNAME.match(name or ""):
            return None
        return self.r.hgetall(Keys.user(name)) or None

    def users(self) -> list[dict[str, str]]:
        found = [self.user(name) for name in sorted(self.r.smembers(Keys.users))]
        return [{k: v for k, v in u.items() if k != "password"} for u in found if u]

    def remove_user(self, name: str) -> bool:
        """Delete a user and revoke every token; their tasks stay (the node token still sees them)."""
        if not self.user(name):
            return False
        self.revoke_tokens(name)
        self.r.delete(Keys.user(name))
        self.r.srem(Keys.users, name)
        return True

    def limits(self, name: str | None) -> Limits:
        """The user's limits: their own, else the node's defaults for users (ODM_FARM_USER_MAX_*)."""
        if not name:
            return Limits(max_images=self.settings.max_images)
        stored = self.r.hmget(Keys.user(name), "maxImages", "maxRunning", "maxBytes") or [None] * 3

        def pick(value: str | None, default: int | None) -> int | None:
            if value in (None, ""):
                return default
            return int(value) or None  # 0 = unlimited

        images = pick(stored[0], self.settings.user_max_images)
        node_images = self.settings.max_images
        if node_images is not None:
            images = node_images if images is None else min(images, node_images)
        return Limits(
            max_images=images,
            max_running=pick(stored[1], self.settings.user_max_running),
            max_bytes=pick(stored[2], self.settings.user_max_bytes),
        )

    # --- passwords and tokens -------------------------------------------------------------
    def verify_password(self, name: str, password: str) -> bool:
        record = self.user(name)
        stored = record.get("password", "") if record else ""
        try:
            # argon2 compares in constant time; an unknown user verifies against a dummy hash
            ok: bool = _hasher.verify(stored or _DUMMY_HASH, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
        return ok and bool(record)

    def issue_token(self, name: str, hours: float | None = None) -> str:
        hours = self.settings.token_hours if hours is None else hours
        token = secrets.token_urlsafe(TOKEN_BYTES)
        digest = token_digest(token)
        ttl = max(1, int(hours * 3600))
        expires = int(time.time()) + ttl
        pipe = self.r.pipeline()
        pipe.hset(Keys.auth_token(digest), mapping={"user": name, "digest": digest, "expires": str(expires)})
        pipe.expireat(Keys.auth_token(digest), expires)  # gone the second token_caller refuses it
        pipe.sadd(Keys.user_tokens(name), digest)
        pipe.execute()
        return token

    def token_caller(self, token: str) -> Caller | None:
        """The user a login token belongs to, or None (unknown, expired, revoked, user removed)."""
        if not token or len(token) > 256:
            return None
        digest = token_digest(token)
        entry = self.r.hgetall(Keys.auth_token(digest))
        if not entry or not hmac.compare_digest(entry.get("digest", "").encode(), digest.encode()):
            return None
        if int(entry.get("expires") or 0) <= time.time():
            return None
        name = entry.get("user", "")
        record = self.user(name)
        if not record:
            return None
        return Caller(user=name, admin=record.get("admin") == "1")

    def revoke_token(self, token: str) -> bool:
        digest = token_digest(token)
        name = self.r.hget(Keys.auth_token(digest), "user")
        if name:
            self.r.srem(Keys.user_tokens(name), digest)
        return bool(self.r.delete(Keys.auth_token(digest)))

    def revoke_tokens(self, name: str) -> int:
        digests = list(self.r.smembers(Keys.user_tokens(name)))
        pipe = self.r.pipeline()
        for digest in digests:
            pipe.delete(Keys.auth_token(digest))
        pipe.delete(Keys.user_tokens(name))
        return sum(pipe.execute()[:-1])  # tokens still valid (expired ones are gone already)

    # --- login ----------------------------------------------------------------------------
    def login(self, name: str, password: str, address: str) -> str:
        """A new token for a right username and password; failed attempts are limited per user and address."""
        limit, window = self.settings.login_attempts, int(self.settings.login_window_seconds)
        counters = [Keys.login_failures("user", name[:64]), Keys.login_failures("addr", address)]
        if any(int(self.r.get(key) or 0) >= limit for key in counters):
            raise InvalidRequest(
                f"Too many failed login attempts: try again in {window} seconds.", no_retry=True
            )
        if len(password) > MAX_PASSWORD or not self.verify_password(name, password):
            for key in counters:
                self.r.eval(_COUNT_FAILURE, 1, key, window)
            raise InvalidRequest(BAD_LOGIN)
        return self.issue_token(name)


def check_username(name: str) -> None:
    if not USERNAME.match(name or ""):
        raise InvalidRequest("Invalid username: use 1 to 64 letters, digits or . _ @ -", no_retry=True)


def check_password(password: str) -> None:
    if not (8 <= len(password or "") <= MAX_PASSWORD):
        raise InvalidRequest(f"Invalid password: use 8 to {MAX_PASSWORD} characters.", no_retry=True)
