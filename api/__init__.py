"""The REST API: a Flask app over the store, served by api.server — contract section 3.

Owns the application factory and the settings it takes; never captures packets or writes connections.
Every route reads through ``store.cursor()``, a cursor of its own thread, so the WSGI server's threads
query DuckDB side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Flask is imported when an app is made, so `otsensor replay` does not pay for it
    from flask import Flask

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080  # the contract's default --listen
# every JSON body: the charset is spelled out for clients (PowerShell 5's Invoke-RestMethod) that guess Latin-1
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
DEFAULT_SETTINGS: dict[str, Any] = {
    "rate_limit": 600,  # requests per token per rate_window; 0 or None turns the limit off
    "rate_window": 60.0,  # seconds
    "token_cache_seconds": 1.0,  # how stale the token table may be: a revocation bites within this
    "stats": None,  # callable (or object with snapshot()) giving capture statistics; None: replay values
    "generation": None,  # callable: changes whenever the data may change (see api.etag); None: store's
    "render_cache_bytes": 64 << 20,  # rendered bodies kept per data generation (api.etag.RenderCache); 0: none
}


@dataclass
class ApiContext:
    """What every request needs, kept in ``app.extensions["otsensor"]``."""

    store: Any
    settings: dict
    tokens: Any = None
    limiter: Any = None
    validators: Any = None
    metrics: Any = None
    stats: Any = None


def create_app(store, settings: dict | None = None) -> Flask:
    """The API over ``store`` (a sensor.store.Store); ``settings`` override DEFAULT_SETTINGS."""
    from flask import Flask

    from . import alerts, auth, connections, devices, errors, health, openapi
    from .etag import Validators

    unknown = set(settings or {}) - set(DEFAULT_SETTINGS)
    if unknown:
        raise ValueError(f"unknown API settings: {', '.join(sorted(unknown))}")
    settings = {**DEFAULT_SETTINGS, **(settings or {})}

    app = Flask(__name__, static_folder=None)  # no files are served; /static/* is a 404 like any unknown path
    app.url_map.merge_slashes = False  # "//" is a 404 like any unknown path, not a redirect

    generation = settings["generation"]
    if generation is None and hasattr(store, "generation"):
        generation = lambda: store.generation  # noqa: E731 — read at each request, not once
    if generation is not None and hasattr(store, "edits"):  # writes outside merges (handling an alert) count too
        merges = generation
        generation = lambda: (merges(), store.edits)  # noqa: E731
    context = ApiContext(store=store, settings=settings, stats=settings["stats"])
    context.tokens = auth.TokenBook(store, settings["token_cache_seconds"])
    if settings["rate_limit"]:
        context.limiter = auth.RateLimiter(int(settings["rate_limit"]), float(settings["rate_window"]))
    context.validators = Validators(generation, int(settings["render_cache_bytes"] or 0))
    context.metrics = health.ApiMetrics(context)
    app.extensions["otsensor"] = context

    app.before_request(context.metrics.start)  # first, so the time includes the token check
    auth.register(app)
    app.after_request(_headers)
    app.after_request(context.metrics.finish)
    from .page import blueprint as page  # the map page: GET / and /web/* (no token; its data calls carry one)

    app.register_blueprint(page)
    errors.register(app)
    for module in (connections, devices, openapi, health, alerts):
        app.register_blueprint(module.blueprint)
    return app


def _headers(response):
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
