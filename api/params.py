"""What a request may ask for: the contract's parameters, parsed strictly, or a 400 naming the parameter.

Owns the accepted forms of ids and filters (ASCII digits, at most 2^53, ids at most 50 characters);
never touches the DB.
"""

from __future__ import annotations

from flask import request

from sensor.serialize import MAX_INTEGER, ConnectionFilter  # one integer limit for the API and the CLI

from .errors import bad_parameter

MAX_DIGITS = len(str(MAX_INTEGER))
MAX_CONNECTION_ID = 50  # the contract: a longer connection id is a 400
MINUTES_THAT_COVER_ALL = MAX_INTEGER // 60_000  # lastSeen >= now - this covers every epoch-ms time
FILTERS = {  # query parameter -> ConnectionFilter field
    "deviceId": "device_id",
    "lastActiveInMinutes": "last_active_in_minutes",
    "discoveredBefore": "discovered_before",
    "discoveredAfter": "discovered_after",
}


def non_negative(name: str, text: str) -> int:
    """A non-negative integer written in ASCII digits, at most 2^53; anything else is a 400 naming ``name``."""
    # str.isdigit alone accepts "²" and "١٢"; int() alone accepts " 7", "+7" and "1_000"
    if not text or len(text) > MAX_DIGITS or not (text.isascii() and text.isdigit()):
        raise bad_parameter(name, f"must be a non-negative integer of at most {MAX_DIGITS} ASCII digits")
    value = int(text)
    if value > MAX_INTEGER:
        raise bad_parameter(name, f"must be at most {MAX_INTEGER}")
    return value


def query_integer(name: str) -> int | None:
    values = request.args.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise bad_parameter(name, "is given more than once")
    return non_negative(name, values[0])


def connection_filter(names=tuple(FILTERS), device_id: int | None = None) -> ConnectionFilter:
    """The filters of a connections list; unknown query parameters are ignored (as Defender for IoT does)."""
    values = {FILTERS[name]: query_integer(name) for name in names}
    if device_id is not None:
        values["device_id"] = device_id
    values.update(_fleet_values())
    minutes = values.get("last_active_in_minutes")
    if minutes is not None and minutes > MINUTES_THAT_COVER_ALL:
        # same answer (every lastSeen is within it), and now - minutes * 60000 stays inside BIGINT
        values["last_active_in_minutes"] = MINUTES_THAT_COVER_ALL
    return ConnectionFilter(**values)


MAX_NAME = 64  # a site or sensor id (the fleet console's filters)
FLEET_FILTERS = {"site": "site", "sensorId": "sensor_id"}


def _fleet_values() -> dict:
    """``site`` and ``sensorId``: the fleet console's filters (a sensor answers for its own data only)."""
    values = {}
    for name, field in FLEET_FILTERS.items():
        given = request.args.getlist(name)
        if len(given) > 1:
            raise bad_parameter(name, "is given more than once")
        if given:
            if not given[0] or len(given[0]) > MAX_NAME or any(c < " " or c == "\x7f" for c in given[0]):
                raise bad_parameter(name, f"must be 1 to {MAX_NAME} characters, no control characters")
            values[field] = given[0]
    return values


def fleet_scope() -> ConnectionFilter:
    """The devices list's filters: site and sensorId."""
    return ConnectionFilter(**_fleet_values())


def connection_id(text: str) -> tuple[int, int]:
    """``"<firstDeviceId>-<secondDeviceId>"``; over 50 characters or any other form is a 400."""
    if len(text) > MAX_CONNECTION_ID:
        raise bad_parameter("connectionId", f"must be at most {MAX_CONNECTION_ID} characters")
    first, dash, second = text.partition("-")
    if not dash:
        raise bad_parameter("connectionId", 'must be "<firstDeviceId>-<secondDeviceId>"')
    return non_negative("connectionId", first), non_negative("connectionId", second)
