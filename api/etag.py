"""ETags for polled responses: from the store's merge generation when it has one, else from the body.

Owns the validator a 304 is decided on; never builds a response body itself.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections import OrderedDict

from flask import Response, request

from . import JSON_CONTENT_TYPE

CACHE_CONTROL = "private, no-cache"  # a poller may keep the body but must ask again (If-None-Match) each time


class Validators:
    """How one app makes ETags.

    ``generation`` is a callable returning a number that changes whenever the data behind the lists can
    change (the store's merge counter; a constant when nothing writes while serving). With it, a poll
    whose If-None-Match matches is answered 304 without a query; without it the tag is a hash of the
    body, so a 304 saves the transfer but not the query. The per-process nonce keeps a generation
    counter that restarts at 0 from ever matching a tag handed out by an earlier process.
    """

    def __init__(self, generation=None, cache_bytes: int = 0) -> None:
        self.generation = generation
        self.nonce = secrets.token_bytes(16)
        self.bodies = RenderCache(cache_bytes)

    def body(self, key: str, render):
        """``render()``'s result for ``key``, rendered once per data generation while it fits the cache."""
        if self.generation is None:
            return render()
        return self.bodies.get(self.generation(), key, render)

    def for_request(self, key: str) -> str | None:
        """The tag of what ``key`` (the resource and its parsed parameters) reads now, or None if unknown."""
        if self.generation is None:
            return None
        digest = hashlib.blake2b(f"{self.generation()}\0{key}".encode(), key=self.nonce, digest_size=12)
        return f'"g{digest.hexdigest()}"'

    @staticmethod
    def for_body(body: str | bytes) -> str:
        data = body.encode("utf-8") if isinstance(body, str) else body
        return f'"b{hashlib.blake2b(data, digest_size=12).hexdigest()}"'


class RenderCache:
    """Rendered bodies of the current data generation, least recently used first out, at most ``budget`` bytes.

    A generation's data never changes, so its answers are rendered once and then served from memory;
    a new generation empties the cache. A body over half the budget is not kept (it would evict all).
    Two threads asking for the same missing body may both render it: no lock is held over a query.
    """

    ENTRY_BYTES = 100  # about what an entry costs beyond its text

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._bodies: OrderedDict[str, str | None] = OrderedDict()
        self._generation = None
        self._size = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._size

    def get(self, generation, key: str, render):
        with self._lock:
            if generation != self._generation:
                self._bodies.clear()
                self._generation, self._size = generation, 0
            if key in self._bodies:
                self._bodies.move_to_end(key)
                return self._bodies[key]
        body = render()
        size = len(body or "") + len(key) + self.ENTRY_BYTES
        if size > self.budget // 2:
            return body
        with self._lock:
            if generation == self._generation and key not in self._bodies:
                self._bodies[key] = body
                self._size += size
                while self._size > self.budget:
                    old_key, old = self._bodies.popitem(last=False)
                    self._size -= len(old or "") + len(old_key) + self.ENTRY_BYTES
        return body


def matches(tag: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 13.1.2): W/"x" matches "x"."""
    return request.if_none_match.contains_weak(tag.strip('"'))


def not_modified(tag: str) -> Response:
    response = Response(status=304)
    response.set_etag(tag.strip('"'))
    response.headers["Cache-Control"] = CACHE_CONTROL
    return response


def json_response(body: str, tag: str | None = None) -> Response:
    """200 with ``body`` (JSON text) and its ETag; 304 if the request's If-None-Match has that tag."""
    tag = tag or Validators.for_body(body)
    if matches(tag):
        return not_modified(tag)
    response = Response(body, content_type=JSON_CONTENT_TYPE)
    response.set_etag(tag.strip('"'))
    response.headers["Cache-Control"] = CACHE_CONTROL
    return response
