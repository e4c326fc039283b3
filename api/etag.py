"""ETags for polled responses: from the store's merge generation when it has one, else from the body.

Owns the validator a 304 is decided on; never builds a response body itself.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
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

    def table(self, name: str, render_all):
        """``render_all()``'s table (one body per member, e.g. each device's list) if this data generation
        has it, rendering it now if that pays; None when a caller should render its member alone."""
        if self.generation is None:
            return None
        return self.bodies.table(self.generation(), name, render_all)

    def member_body(self, name: str, key: str, render):
        """``body(key, render)`` for a member of table ``name`` rendered alone: its time counts toward
        rendering the whole table instead."""
        if self.generation is None:
            return render()
        return self.bodies.get(self.generation(), key, render, spent_on=name)

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

    A table (every device's connections list from one query) is rendered whole once its members
    rendered one by one in this generation took as long as the last whole rendering (never rendered
    yet: at the first), so a generation that sees few polls costs at most twice what they would; one
    thread renders it while the others wait. A table over half the budget is not kept, nor tried again
    in this process: its members are then rendered one by one as any body.
    """

    ENTRY_BYTES = 100  # about what an entry costs beyond its text

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._bodies: OrderedDict[str, str | None] = OrderedDict()
        self._generation = None
        self._size = 0
        self._lock = threading.Lock()
        self._tables: dict[str, object] = {}  # name -> table of this generation
        self._spent: dict[str, float] = {}  # name -> seconds its members took alone in this generation
        self._cost: dict[str, float] = {}  # name -> seconds its last whole rendering took
        self._too_big: set[str] = set()
        self._table_lock = threading.Lock()  # one whole rendering at a time

    @property
    def size(self) -> int:
        return self._size

    @property
    def table_costs(self) -> dict[str, float]:
        """Seconds the last whole rendering of each table took."""
        with self._lock:
            return dict(self._cost)

    def _start(self, generation) -> None:
        """Forget the last generation's bodies once ``generation`` is asked for (the lock held)."""
        if generation != self._generation:
            self._bodies.clear()
            self._tables.clear()
            self._spent.clear()
            self._generation, self._size = generation, 0

    def get(self, generation, key: str, render, spent_on: str | None = None):
        with self._lock:
            self._start(generation)
            if key in self._bodies:
                self._bodies.move_to_end(key)
                return self._bodies[key]
        started = time.perf_counter()
        body = render()
        if spent_on is not None:
            with self._lock:
                if generation == self._generation:
                    self._spent[spent_on] = self._spent.get(spent_on, 0.0) + time.perf_counter() - started
        size = len(body or "") + len(key) + self.ENTRY_BYTES
        if size > self.budget // 2:
            return body
        with self._lock:
            if generation == self._generation and key not in self._bodies:
                self._bodies[key] = body
                self._size += size
                self._evict()
        return body

    def _evict(self) -> None:
        while self._size > self.budget and self._bodies:  # tables stay for their generation
            old_key, old = self._bodies.popitem(last=False)
            self._size -= len(old or "") + len(old_key) + self.ENTRY_BYTES

    def table(self, generation, name: str, render_all):
        """The table ``name`` of ``generation`` (``render_all()``: an object with ``size`` in bytes), or
        None while rendering it whole would not pay yet, would not fit, or the generation has passed."""
        with self._lock:
            self._start(generation)
            if name in self._tables:
                return self._tables[name]
            if self.budget <= 0 or name in self._too_big or self._spent.get(name, 0.0) < self._cost.get(name, 0.0):
                return None
        with self._table_lock:
            with self._lock:  # another thread may have rendered it while this one waited
                if generation != self._generation or name in self._too_big:
                    return None
                if name in self._tables:
                    return self._tables[name]
            started = time.perf_counter()
            table = render_all()
            with self._lock:
                self._cost[name] = time.perf_counter() - started
                if table.size > self.budget // 2:
                    self._too_big.add(name)
                    return table  # answers this request; later ones render their member alone
                if generation == self._generation:
                    self._tables[name] = table
                    self._size += table.size
                    self._evict()
            return table


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
