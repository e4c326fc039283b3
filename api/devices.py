"""GET devices: the list and one device, in Defender for IoT's field names (see sensor.serialize).

Owns these routes; never shapes device JSON itself.
"""

from __future__ import annotations

from flask import Blueprint, current_app

from sensor import serialize

from . import etag, params
from .errors import not_found

blueprint = Blueprint("devices", __name__, url_prefix="/api/v1")


@blueprint.get("/devices")
def all_devices():
    context = current_app.extensions["otsensor"]
    scope = params.fleet_scope()
    tag = context.validators.for_request(f"devices?{scope}")
    if tag is not None and etag.matches(tag):
        return etag.not_modified(tag)
    body = context.validators.body(f"devices?{scope}", lambda: serialize.dumps(context.store.devices(scope)))
    return etag.json_response(body, tag)


@blueprint.get("/devices/<device_id>")
def one_device(device_id: str):
    number = params.non_negative("deviceId", device_id)
    context = current_app.extensions["otsensor"]

    def render() -> str | None:
        found = context.store.device(number)
        return None if found is None else serialize.dumps(found)

    body = context.validators.body(f"device/{number}", render)
    if body is None:
        raise not_found(f"Cannot find device {number}")
    return etag.json_response(body)
