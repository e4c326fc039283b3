"""The one error shape of the API, for every status: ``{"status", "identifier", "message", "details"}``.

Owns the single error handler (HTTP errors, API errors, unexpected exceptions → 500); never reads the DB.
"""

from __future__ import annotations

import duckdb
from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from sensor.serialize import dumps

from . import JSON_CONTENT_TYPE

IDENTIFIERS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    429: "too_many_requests",
    500: "internal_error",
    501: "not_implemented",
    503: "unavailable",
}
MAX_ECHO = 200  # a path echoed in a message is cut here, so an over-long URL cannot bloat the answer


class ApiError(Exception):
    """Raised anywhere in a request to answer ``status`` in the error shape."""

    def __init__(self, status: int, message: str, details=None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.details = status, message, details
        self.headers = headers or {}


def bad_parameter(name: str, message: str) -> ApiError:
    """400 naming the parameter, in ``message`` and in ``details.parameter``."""
    return ApiError(400, f"{name} {message}", {"parameter": name})


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


def error_body(status: int, message: str, details=None, identifier: str | None = None) -> str:
    identifier = identifier or IDENTIFIERS.get(status) or f"http_{status}"
    return dumps({"status": status, "identifier": identifier, "message": message, "details": details})


def error_response(status: int, message: str, details=None, headers: dict | None = None) -> Response:
    response = Response(error_body(status, message, details), status=status, content_type=JSON_CONTENT_TYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _echo(path: str) -> str:
    return path if len(path) <= MAX_ECHO else path[:MAX_ECHO] + "…"


def handle(error: Exception) -> Response:
    """The one handler: every status the API answers with an error goes through here."""
    if isinstance(error, ApiError):
        return error_response(error.status, error.message, error.details, error.headers)
    if isinstance(error, HTTPException):
        if error.code is not None and error.code < 400:  # a routing redirect is not an error
            return error.get_response()
        status = error.code or 500
        if isinstance(error, NotFound):
            return error_response(404, f"Cannot find {_echo(request.path)}")
        if isinstance(error, MethodNotAllowed):
            allowed = sorted(error.valid_methods or [])
            return error_response(
                405,
                f"Method {_echo(request.method)} is not allowed on {_echo(request.path)}",
                {"allowed": allowed},
                {"Allow": ", ".join(allowed)},
            )
        return error_response(status, error.description or error.name)
    if isinstance(error, (duckdb.ConnectionException, duckdb.IOException)):
        return error_response(503, "Storage is unavailable", {"error": type(error).__name__})
    current_app.logger.exception("unexpected error answering %s %s", request.method, _echo(request.path))
    return error_response(500, "Internal error; the sensor's log has the details")


def register(app: Flask) -> None:
    app.register_error_handler(Exception, handle)
