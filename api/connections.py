"""GET connections: all of them, one device's, one by id — as the contract's section 3 lists them.

Owns these routes and their parameters; the JSON itself comes from sensor.serialize (built inside DuckDB).
"""

from __future__ import annotations

from dataclasses import replace

from flask import Blueprint, current_app

from sensor import serialize

from . import etag, params
from .errors import not_found

blueprint = Blueprint("connections", __name__, url_prefix="/api/v1")
DEVICE_FILTERS = ("lastActiveInMinutes", "discoveredBefore", "discoveredAfter")  # the path names the device
ALL = serialize.ConnectionFilter()


def _list(resource: str, where: serialize.ConnectionFilter, device_id: int | None = None):
    """A connections list; with ``device_id`` (the path's), 404 unless that device is known."""
    context = current_app.extensions["otsensor"]
    tag = None
    if where.last_active_in_minutes is None:  # a wall-clock window changes its answer without any merge
        tag = context.validators.for_request(f"{resource}?{where}")
        if tag is not None and etag.matches(tag):
            return etag.not_modified(tag)  # the tag proves this answer was given for the same data

    def render() -> str | None:
        store = context.store
        body = store.connections_json(where)
        # a device with connections is known; only an empty list needs the second query to tell 404 from []
        if device_id is not None and body == "[]" and store.device(device_id) is None:
            return None
        return body

    # a wall-clock window is never cached: its answer changes without any merge
    if tag is None:
        body = render()
    elif where.device_id is not None and replace(where, device_id=None) == ALL and _renders_all(context.store):
        body = _device_body(context, where.device_id, resource, f"{resource}?{where}", render)
    else:
        body = context.validators.body(f"{resource}?{where}", render)
    if body is None:
        raise not_found(f"Cannot find device {device_id}")
    return etag.json_response(body, tag)


def _renders_all(store) -> bool:
    """Whether the store renders every device's list at once (the fleet console's renders each alone)."""
    return hasattr(store, "device_connections")


def _device_body(context, device_id: int, resource: str, key: str, render) -> str | None:
    """One device's whole list: from every device's lists rendered in one query per data generation
    (once polls spread over many devices make that pay), else rendered alone."""
    table = context.validators.table("device-connections", context.store.device_connections)
    if table is None:
        return context.validators.member_body("device-connections", key, render)
    body = table.body(device_id)
    if body is None and resource == "connections":  # the deviceId filter: an unknown device has none
        return "[]"
    return body


@blueprint.get("/devices/connections")
def all_connections():
    return _list("connections", params.connection_filter())


@blueprint.get("/devices/<device_id>/connections")
def device_connections(device_id: str):
    number = params.non_negative("deviceId", device_id)
    return _list("device-connections", params.connection_filter(DEVICE_FILTERS, device_id=number), number)


@blueprint.get("/connections/<connection_id>")
def connection(connection_id: str):
    first, second = params.connection_id(connection_id)
    context = current_app.extensions["otsensor"]

    def render() -> str | None:
        detail = context.store.connection_detail(first, second)
        return None if detail is None else serialize.dumps(detail)

    body = context.validators.body(f"connection/{first}-{second}", render)
    if body is None:
        raise not_found(f"Cannot find connection {first}-{second}")
    return etag.json_response(body)
