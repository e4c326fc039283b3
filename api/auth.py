"""API tokens: made once and shown once, stored as SHA-256 hashes, checked in constant time, rate-limited.

Owns the ``tokens`` table's rows and the per-request token check of ``/api/v1/*``; never stores a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from dataclasses import dataclass

from flask import Flask, current_app, g, request

from .errors import ApiError

API_PREFIX = ("/api/v1/", "/api/v2/")  # v2: the alerts endpoints (CONTRACT section 4)
OPEN_PATHS = {"/api/v1/openapi.json"}  # the OpenAPI document needs no token
MAX_TOKEN_LENGTH = 256  # ours are 43 characters; anything far longer is not one, so no hash work for it
MAX_NAME_LENGTH = 64
DAY_MS = 86_400_000
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="otsensor"'}
_write_lock = threading.Lock()  # create and revoke read-then-write; one at a time inside this process


class TokenError(ValueError):
    """A token cannot be made or found as asked (a bad name, a name in use, a negative expiry)."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


def _status(expires: int | None, revoked: int | None, now_ms: int) -> str:
    if revoked is not None:
        return "revoked"
    if expires is not None and now_ms >= expires:
        return "expired"
    return "active"


# -- managing tokens (the `otsensor token` commands) --------------------------------------------


def create_token(store, name: str, expires_in_days: int | None = None) -> str:
    """Store the hash of a new token named ``name``; return the secret, which nothing keeps."""
    if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable() or name != name.strip():
        raise TokenError(f"a token name is 1 to {MAX_NAME_LENGTH} printable characters without outer spaces")
    if expires_in_days is not None and (isinstance(expires_in_days, bool) or expires_in_days < 0):
        raise TokenError("--expires-in-days must be a non-negative number of days")
    secret = secrets.token_urlsafe(32)
    cursor = store.cursor()
    with _write_lock:
        now = _now_ms()
        rows = cursor.execute("SELECT expires, revoked FROM tokens WHERE name = ?", [name]).fetchall()
        if any(_status(expires, revoked, now) == "active" for expires, revoked in rows):
            raise TokenError(f"a token named {name!r} is active; revoke it first")
        expires = None if expires_in_days is None else now + int(expires_in_days * DAY_MS)
        cursor.execute(
            "INSERT INTO tokens (name, hash, created, expires, revoked) VALUES (?, ?, ?, ?, NULL)",
            [name, _hash(secret), now, expires],
        )
    return secret


def list_tokens(store) -> list[dict]:
    """Every token ever made, oldest first: name, created, expires, revoked (epoch ms or null), status."""
    now = _now_ms()
    rows = (
        store.cursor().execute("SELECT name, created, expires, revoked FROM tokens ORDER BY created, name").fetchall()
    )
    return [
        {
            "name": name,
            "created": created,
            "expires": expires,
            "revoked": revoked,
            "status": _status(expires, revoked, now),
        }
        for name, created, expires, revoked in rows
    ]


def revoke_token(store, name: str) -> bool:
    """Revoke the tokens named ``name`` that are not revoked yet; False if there were none."""
    with _write_lock:
        rows = (
            store.cursor()
            .execute(
                "UPDATE tokens SET revoked = ? WHERE name = ? AND revoked IS NULL RETURNING name", [_now_ms(), name]
            )
            .fetchall()
        )
    return bool(rows)


# -- checking tokens (every /api/v1/* request) -------------------------------------------------


@dataclass(frozen=True)
class TokenRecord:
    name: str
    hash: str
    expires: int | None
    revoked: int | None


class TokenBook:
    """The tokens table as last read, re-read at most ``ttl`` seconds later: a revocation made elsewhere bites
    within ttl; one made in this process (the admin socket) calls :meth:`invalidate` and bites at once."""

    def __init__(self, store, ttl: float = 1.0) -> None:
        self.store, self.ttl = store, ttl
        self._records: tuple[TokenRecord, ...] = ()
        self._loaded = -math.inf
        self._changes = 0  # bumped by invalidate(); the records hold the table as of _seen changes
        self._seen = 0
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        """The table changed (a token was made or revoked): the next check reads it again."""
        self._changes += 1

    def _stale(self) -> bool:
        return self._seen != self._changes or time.monotonic() - self._loaded >= self.ttl

    def records(self) -> tuple[TokenRecord, ...]:
        if self._stale():
            with self._lock:
                if self._stale():
                    seen = self._changes  # read first: a change during the query makes the next check re-read
                    rows = self.store.cursor().execute("SELECT name, hash, expires, revoked FROM tokens").fetchall()
                    self._records = tuple(TokenRecord(*row) for row in rows)
                    self._loaded, self._seen = time.monotonic(), seen
        return self._records

    def verify(self, header: str | None) -> TokenRecord:
        """The record of the token in an ``Authorization`` header (bare or ``Bearer``), else a 401."""
        secret = (header or "").strip()
        scheme, _, rest = secret.partition(" ")
        if scheme.lower() == "bearer":
            secret = rest.strip()
        if not secret:
            raise ApiError(401, "Missing token", None, CHALLENGE)
        if len(secret) > MAX_TOKEN_LENGTH:
            raise ApiError(401, "Invalid token", None, CHALLENGE)
        digest = _hash(secret)
        match = None
        for record in self.records():  # no early exit: the time taken does not depend on which row matches
            if hmac.compare_digest(record.hash, digest):
                match = record
        if match is None:
            raise ApiError(401, "Invalid token", None, CHALLENGE)
        status = _status(match.expires, match.revoked, _now_ms())
        if status == "revoked":
            raise ApiError(401, "Invalid token", {"reason": "revoked"}, CHALLENGE)
        if status == "expired":
            raise ApiError(401, "Expired token", None, CHALLENGE)
        return match


class RateLimiter:
    """A token bucket per API token: ``limit`` requests per ``window`` seconds, refilled continuously."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.rate = limit / window
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def wait(self, key: str) -> float:
        """Take one request from ``key``'s bucket: 0.0 if allowed, else the seconds until one is."""
        now = time.monotonic()
        with self._lock:
            level, then = self._buckets.get(key, (float(self.limit), now))
            level = min(float(self.limit), level + (now - then) * self.rate)
            if level >= 1.0:
                self._buckets[key] = (level - 1.0, now)
                return 0.0
            self._buckets[key] = (level, now)
            return (1.0 - level) / self.rate


def check_request() -> None:
    """before_request: every /api/v1/* path the app routes (but the OpenAPI document) needs a live token."""
    if not request.path.startswith(API_PREFIX) or request.path in OPEN_PATHS:
        return
    if request.routing_exception is not None:  # unknown path or method: 404/405 say more than 401 would
        return
    context = current_app.extensions["otsensor"]
    record = context.tokens.verify(request.headers.get("Authorization"))
    g.token_name = record.name
    if context.limiter is not None:
        wait = context.limiter.wait(record.name)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            raise ApiError(
                429,
                f"Rate limit of {context.limiter.limit} requests per {context.limiter.window:g} s exceeded",
                {"retryAfter": retry_after},
                {"Retry-After": str(retry_after)},
            )


def register(app: Flask) -> None:
    app.before_request(check_request)
