"""Alerts and events (CONTRACT section 4): the lists, handling an alert, and an alert's evidence as a pcap.

Owns these routes and their parameters; the JSON and the writes come from the store (a sensor's, or the
fleet console's, which serves the lists and refuses the rest with 501: sensor.store.NotServed).
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from sensor import serialize
from sensor.store import NotServed

from . import etag, params
from .errors import ApiError, bad_parameter, not_found

blueprint = Blueprint("alerts", __name__, url_prefix="/api")
ACTIONS = {"handle": False, "handleAndLearn": True}  # action -> learn
PCAP_TYPE = "application/vnd.tcpdump.pcap"


def _text(name: str) -> str | None:
    values = request.args.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise bad_parameter(name, "is given more than once")
    return values[0]


def _alert_filter() -> serialize.AlertFilter:
    state = _text("state")
    if state is not None and state not in serialize.ALERT_STATES:
        raise bad_parameter("state", 'must be "handled" or "unhandled"')
    return serialize.AlertFilter(
        state=state, from_time=params.query_integer("fromTime"), to_time=params.query_integer("toTime"),
        type=_text("type"),
    )  # fmt: skip


def _not_served(error: NotServed) -> ApiError:
    return ApiError(501, str(error))


def _alerts(version: int):
    context = current_app.extensions["otsensor"]
    body = serialize.dumps(context.store.alerts(version, _alert_filter(), scope=params.fleet_scope()))
    return etag.json_response(body)  # tagged by its body: handling an alert changes it without a merge


@blueprint.get("/v1/alerts")
def alerts_v1():
    return _alerts(1)


@blueprint.get("/v2/alerts")
def alerts_v2():
    return _alerts(2)


@blueprint.put("/v1/alerts/<alert_id>")
def handle_alert(alert_id: str):
    number = params.non_negative("alertId", alert_id)
    body = request.get_json(silent=True)
    action = body.get("action") if isinstance(body, dict) else None
    if action not in ACTIONS:
        raise ApiError(
            400, 'The body must be {"action": "handle"} or {"action": "handleAndLearn"}', {"field": "action"}
        )
    store = current_app.extensions["otsensor"].store
    try:
        if not store.handle_alert(number, learn=ACTIONS[action]):
            raise not_found(f"Cannot find alert {number}")
    except NotServed as error:
        raise _not_served(error) from None
    found = store.alerts(1, ids=[number])
    return etag.json_response(serialize.dumps(found[0]))


@blueprint.get("/v2/alerts/pcap/<alert_id>")
def alert_pcap(alert_id: str):
    number = params.non_negative("alertId", alert_id)
    try:
        data = current_app.extensions["otsensor"].store.alert_pcap(number)
    except NotServed as error:
        raise _not_served(error) from None
    if data is None:
        raise not_found(f"Cannot find alert {number}")
    if not data:
        raise not_found(f"Alert {number} has no packet evidence")
    response = Response(data, content_type=PCAP_TYPE)
    response.headers["Content-Disposition"] = f'attachment; filename="alert-{number}.pcap"'
    return response


@blueprint.get("/v1/events")
def events():
    minutes = params.query_integer("minutesTimeFrame")
    if minutes is not None and minutes > serialize.MAX_EVENT_MINUTES:
        raise bad_parameter("minutesTimeFrame", f"must be at most {serialize.MAX_EVENT_MINUTES}")
    try:
        found = current_app.extensions["otsensor"].store.events(minutes, _text("type"))
    except NotServed as error:
        raise _not_served(error) from None
    return etag.json_response(serialize.dumps(found))
