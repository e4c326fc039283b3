"""GET /api/v1/openapi.json: the OpenAPI 3 document of the whole API, shipped as data (no CDN, no network).

Owns the published description the tests hold the running API to; change it with the routes it describes.
"""

from __future__ import annotations

from flask import Blueprint, Response

from sensor.serialize import dumps

from . import JSON_CONTENT_TYPE
from .params import MAX_CONNECTION_ID, MAX_INTEGER, MAX_NAME

blueprint = Blueprint("openapi", __name__, url_prefix="/api/v1")

INTEGER = {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER}


def digits_at_most(limit: int) -> str:
    """A regular expression for what params.non_negative accepts: ASCII digits (leading zeros too) of
    the same count as ``limit`` at most, whose value is at most ``limit``."""
    text = str(limit)
    shorter = f"[0-9]{{1,{len(text) - 1}}}" if len(text) > 1 else None
    # as long as limit: its first i digits, then a smaller digit, then anything
    same = [
        text[:i]
        + (f"[0-{int(text[i]) - 1}]" if text[i] != "1" else "0")
        + (f"[0-9]{{{len(text) - i - 1}}}" if i < len(text) - 1 else "")
        for i in range(len(text))
        if text[i] != "0"
    ]
    return "(?:" + "|".join(filter(None, [shorter, *same, text])) + ")"


ID_PART = digits_at_most(MAX_INTEGER)
EPOCH_MS = {**INTEGER, "description": "epoch milliseconds, UTC"}
STRINGS = {"type": "array", "items": {"type": "string"}}
NULLABLE_STRING = {"type": "string", "nullable": True}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _json(description: str, schema: dict, etag: bool = False) -> dict:
    response = {"description": description, "content": {"application/json": {"schema": schema}}}
    if etag:
        response["headers"] = {"ETag": {"schema": {"type": "string"}, "description": "validator for If-None-Match"}}
    return response


CONNECTION_FIELDS = {
    "id": {"type": "string", "pattern": r"^[0-9]+-[0-9]+$", "description": "<firstDeviceId>-<secondDeviceId>"},
    "firstDeviceId": {**INTEGER, "description": "the initiator"},
    "secondDeviceId": {**INTEGER, "description": "the responder"},
    "lastSeen": EPOCH_MS,
    "discovered": EPOCH_MS,
    "ports": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 65535}},
    "protocols": {"type": "array", "items": _ref("Protocol")},
}
ALERT_FIELDS = {
    "id": INTEGER,
    "time": {**EPOCH_MS, "description": "epoch ms of the triggering packet"},
    "title": {"type": "string"},
    "message": {"type": "string"},
    "severity": {"type": "string", "enum": ["Warning", "Minor", "Major", "Critical"]},
    "engine": {"type": "string", "enum": ["Policy Violation", "Protocol Violation", "Anomaly", "Operational"]},
    "sourceDevice": {**INTEGER, "nullable": True},
    "destinationDevice": {**INTEGER, "nullable": True},
    "additionalInformation": {
        "type": "object",
        "required": ["description", "information"],
        "additionalProperties": False,
        "properties": {"description": {"type": "string"}, "information": STRINGS},
    },
    "handled": {"type": "boolean"},
    "count": {"type": "integer", "minimum": 1, "description": "occurrences counted on this alert (dedup window)"},
    "lastTime": {**EPOCH_MS, "description": "epoch ms of the latest occurrence counted"},
}
ALERT_V2_FIELDS = {
    "sourceDeviceAddress": NULLABLE_STRING,
    "destinationDeviceAddress": NULLABLE_STRING,
    "remediationSteps": STRINGS,
}
# The fleet console's alerts (`otsensor console`) also carry these; its `id` is fleet-wide (sensor.console).
ALERT_FLEET_FIELDS = {
    "site": {"type": "string", "description": "fleet console only: the site of the sensor that raised it"},
    "sensorId": {"type": "string", "description": "fleet console only: the sensor that raised it"},
    "sensorAlertId": {**INTEGER, "description": "fleet console only: the alert's id on that sensor"},
}
ALERT_SCHEMAS = {
    "Alert": {
        "type": "object",
        "required": list(ALERT_FIELDS),
        "additionalProperties": False,
        "properties": {**ALERT_FIELDS, **ALERT_FLEET_FIELDS},
    },
    "AlertV2": {
        "type": "object",
        "required": [*ALERT_FIELDS, *ALERT_V2_FIELDS],
        "additionalProperties": False,
        "properties": {**ALERT_FIELDS, **ALERT_V2_FIELDS, **ALERT_FLEET_FIELDS},
    },
    "Event": {
        "type": "object",
        "required": ["timestamp", "type", "title", "severity", "owner", "content"],
        "additionalProperties": False,
        "properties": {
            "timestamp": EPOCH_MS,
            "type": {
                "type": "string",
                "enum": [
                    "DEVICE_CREATED",
                    "DEVICE_CONNECTION_CREATED",
                    "PROTOCOL_COMMAND_CREATED",
                    "PROGRAM_DEVICE",
                    "PLC_STATE_CHANGE",
                    "FIRMWARE_CHANGE",
                    "ALERT_HANDLED",
                ],
            },  # fmt: skip
            "title": {"type": "string"},
            "severity": {"type": "string", "enum": ["INFO", "NOTICE", "ALERT"]},
            "owner": {"type": "string"},
            "content": {"type": "string"},
        },
    },
}

# Rows of the fleet console (`otsensor console`, contract section 6) also carry these; a sensor's do not.
FLEET_FIELDS = {
    "site": {"type": "string", "description": "fleet console only: the site of the sensors that saw it"},
    "sensorId": {"type": "string", "description": "fleet console only: the first of sensorIds"},
    "sensorIds": {**STRINGS, "description": "fleet console only: every sensor that saw it, ascending"},
}
SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["status", "identifier", "message", "details"],
        "additionalProperties": False,
        "properties": {
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "identifier": {"type": "string"},
            "message": {"type": "string"},
            "details": {"description": "null, or an object saying more (e.g. the parameter at fault)"},
        },
    },
    "Protocol": {
        "type": "object",
        "required": ["name", "commands"],
        "additionalProperties": False,
        "properties": {"name": {"type": "string"}, "commands": STRINGS},
    },
    "Connection": {
        "type": "object",
        "required": list(CONNECTION_FIELDS),
        "additionalProperties": False,
        "properties": {**CONNECTION_FIELDS, **FLEET_FIELDS},
    },
    "ConnectionDetail": {
        "type": "object",
        "required": [*CONNECTION_FIELDS, "identity", "connectedAt", "lastActiveAt", "packets", "bytes"],
        "additionalProperties": False,
        "properties": {
            **CONNECTION_FIELDS,
            **FLEET_FIELDS,
            "identity": {
                "type": "object",
                "required": ["sourceIp", "userAgent"],
                "additionalProperties": False,
                "properties": {"sourceIp": {"type": "string"}, "userAgent": NULLABLE_STRING},
            },
            "connectedAt": {"type": "string", "format": "date-time", "description": "RFC 3339, UTC"},
            "lastActiveAt": {"type": "string", "format": "date-time", "description": "RFC 3339, UTC"},
            "packets": {"type": "integer", "minimum": 0},
            "bytes": {"type": "integer", "minimum": 0},
        },
    },
    "Device": {
        "type": "object",
        "required": [
            "id",
            "ipAddresses",
            "macAddresses",
            "name",
            "vendor",
            "type",
            "protocols",
            "firmware",
            "firstSeen",
            "lastSeen",
        ],
        "additionalProperties": False,
        "properties": {
            **FLEET_FIELDS,
            "id": INTEGER,
            "ipAddresses": STRINGS,
            "macAddresses": STRINGS,
            "name": NULLABLE_STRING,
            "vendor": NULLABLE_STRING,
            "type": {"type": "string", "nullable": True, "enum": ["PLC", "HMI", None]},
            "protocols": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "roles"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "roles": {"type": "array", "items": {"type": "string", "enum": ["client", "server"]}},
                    },
                },
            },
            "firmware": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "model": {"type": "string"},
                        "firmwareVersion": {"type": "string"},
                        "serial": {"type": "string"},
                    },
                },
            },
            "identity": {
                "type": "object",
                "description": "what the traffic revealed passively (HTTP Server, User-Agent)",
                "additionalProperties": False,
                "properties": {"httpServer": {"type": "string"}, "userAgent": {"type": "string"}},
            },
            "firstSeen": EPOCH_MS,
            "lastSeen": EPOCH_MS,
            # null only on a console over a fleet of schema 1 (before `otsensor fleet init` added device classes)
            "engineeringStation": {
                "type": "boolean",
                "nullable": True,
                "description": "it sent programming or stop/start commands",
            },
            "scanner": {
                "type": "boolean",
                "nullable": True,
                "description": "it probed many devices or ports in a short time",
            },
            "authorized": {"type": "boolean", "nullable": True, "description": "seen during learning, or learned"},
            "addresses": {
                "type": "object",
                "nullable": True,
                "description": "per protocol: Modbus unit ids, S7 rack/slot, AMS Net Ids",
                "additionalProperties": STRINGS,
            },
        },
    },
    **ALERT_SCHEMAS,
    "Health": {
        "type": "object",
        "required": ["status", "mode", "interfaces", "packets", "kernelDrops", "lastFlush", "storage"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "mode": {"type": "string", "enum": ["replay", "live"]},
            "interfaces": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "packets": {"type": "integer", "minimum": 0},
                        "drops": {"type": "integer", "minimum": 0},
                    },
                },
            },
            "packets": {"type": "integer", "minimum": 0},
            "bytes": {"type": "integer", "minimum": 0},
            "kernelDrops": {"type": "integer", "minimum": 0},
            "decodeErrors": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
            "lastFlush": {"type": "string", "format": "date-time", "nullable": True},
            "lastFlushMs": {"type": "integer", "nullable": True},
            "problems": STRINGS,
            "storage": {
                "type": "object",
                "required": ["ok"],
                "properties": {
                    "ok": {"type": "boolean"},
                    "devices": {"type": "integer", "minimum": 0},
                    "connections": {"type": "integer", "minimum": 0},
                    "error": {"type": "string"},
                },
            },
        },
    },
}

FLEET_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME, "pattern": "^[^\\x00-\\x1f\\x7f]+$"}
PARAMETERS = {
    "deviceIdPath": {"name": "deviceId", "in": "path", "required": True, "schema": INTEGER},
    "connectionId": {
        "name": "connectionId",
        "in": "path",
        "required": True,
        "description": "<firstDeviceId>-<secondDeviceId>, each part at most 2^53",
        "schema": {"type": "string", "maxLength": MAX_CONNECTION_ID, "pattern": f"^{ID_PART}-{ID_PART}$"},
    },
    "deviceId": {
        "name": "deviceId",
        "in": "query",
        "description": "only connections with this device on either side",
        "schema": INTEGER,
    },
    "lastActiveInMinutes": {
        "name": "lastActiveInMinutes",
        "in": "query",
        "description": "only connections whose lastSeen is within the last M minutes of the sensor's clock",
        "schema": INTEGER,
    },
    "discoveredBefore": {
        "name": "discoveredBefore",
        "in": "query",
        "description": "only connections discovered strictly before this epoch ms",
        "schema": EPOCH_MS,
    },
    "discoveredAfter": {
        "name": "discoveredAfter",
        "in": "query",
        "description": "only connections discovered strictly after this epoch ms",
        "schema": EPOCH_MS,
    },
    "alertId": {"name": "alertId", "in": "path", "required": True, "schema": INTEGER},
    "state": {
        "name": "state",
        "in": "query",
        "description": "handled or unhandled alerts only",
        "schema": {"type": "string", "enum": ["handled", "unhandled"]},
    },
    "fromTime": {
        "name": "fromTime",
        "in": "query",
        "description": "alerts at or after this epoch ms",
        "schema": EPOCH_MS,
    },
    "toTime": {"name": "toTime", "in": "query", "description": "alerts at or before this epoch ms", "schema": EPOCH_MS},
    "alertType": {"name": "type", "in": "query", "description": "alerts of this title", "schema": {"type": "string"}},
    "minutesTimeFrame": {
        "name": "minutesTimeFrame",
        "in": "query",
        "description": "events of the last M minutes (at most 4320); without it, the latest 1,000",
        "schema": {"type": "integer", "minimum": 0, "maximum": 4320},
    },
    "eventType": {"name": "type", "in": "query", "description": "events of this type", "schema": {"type": "string"}},
    "site": {
        "name": "site",
        "in": "query",
        "description": "fleet console only: rows of this site (a sensor ignores it)",
        "schema": FLEET_NAME,
    },
    "sensorId": {
        "name": "sensorId",
        "in": "query",
        "description": "fleet console only: what this sensor saw (a sensor ignores it)",
        "schema": FLEET_NAME,
    },
    "ifNoneMatch": {
        "name": "If-None-Match",
        "in": "header",
        "description": "an ETag from an earlier answer: 304 with no body if nothing changed",
        "schema": {"type": "string"},
    },
}

ERRORS = {
    "400": _error("a parameter is not a non-negative integer (at most 2^53), or an id is malformed or too long"),
    "401": _error("Missing token, Invalid token (unknown or revoked) or Expired token"),
    "429": _error("the token's rate limit is spent; Retry-After says when to try again"),
    "default": _error("any other error, in the same shape (405, 500, 503)"),
}
NOT_MODIFIED = {"304": {"description": "If-None-Match matched: nothing changed, no body"}}
NOT_ON_THE_CONSOLE = _error("fleet console only: kept on the sensor that raised the alert (not_implemented)")


def _parameters(*names: str) -> list[dict]:
    return [{"$ref": f"#/components/parameters/{name}"} for name in names]


def _get(summary: str, responses: dict, parameters=(), security: bool = True, operation_id: str = "") -> dict:
    operation = {"summary": summary, "operationId": operation_id, "responses": responses}
    if parameters:
        operation["parameters"] = _parameters(*parameters)
    if not security:
        operation["security"] = []
    return {"get": operation}


CONNECTION_LIST = {"type": "array", "items": _ref("Connection")}
DOCUMENT = {
    "openapi": "3.0.3",
    "info": {
        "title": "otsensor API",
        "version": "1.0.0",
        "description": "Device-pair connections and devices seen by a passive OT network sensor, after the "
        "Microsoft Defender for IoT sensor API. Send a token made with `otsensor token create` as "
        "`Authorization: <token>` or `Authorization: Bearer <token>`. Lists carry an ETag; unknown query "
        "parameters are ignored.",
    },
    "servers": [{"url": "/"}],
    "security": [{"token": []}],
    "paths": {
        "/api/v1/devices/connections": _get(
            "Connections, ordered by (firstDeviceId, secondDeviceId); filters combine with AND",
            {"200": _json("connections", CONNECTION_LIST, etag=True), **NOT_MODIFIED, **ERRORS},
            (
                "deviceId",
                "lastActiveInMinutes",
                "discoveredBefore",
                "discoveredAfter",
                "site",
                "sensorId",
                "ifNoneMatch",
            ),
            operation_id="listConnections",
        ),
        "/api/v1/devices/{deviceId}/connections": _get(
            "One device's connections (either side)",
            {
                "200": _json("connections", CONNECTION_LIST, etag=True),
                **NOT_MODIFIED,
                "404": _error("no such device"),
                **ERRORS,
            },
            (
                "deviceIdPath",
                "lastActiveInMinutes",
                "discoveredBefore",
                "discoveredAfter",
                "site",
                "sensorId",
                "ifNoneMatch",
            ),
            operation_id="listDeviceConnections",
        ),
        "/api/v1/connections/{connectionId}": _get(
            "One connection with identity, RFC 3339 times, packets and bytes",
            {
                "200": _json("the connection", _ref("ConnectionDetail"), etag=True),
                **NOT_MODIFIED,
                "404": _error("no such connection"),
                **ERRORS,
            },
            ("connectionId", "ifNoneMatch"),
            operation_id="getConnection",
        ),
        "/api/v1/devices": _get(
            "Devices, ordered by id",
            {"200": _json("devices", {"type": "array", "items": _ref("Device")}, etag=True), **NOT_MODIFIED, **ERRORS},
            ("site", "sensorId", "ifNoneMatch"),
            operation_id="listDevices",
        ),
        "/api/v1/devices/{deviceId}": _get(
            "One device",
            {
                "200": _json("the device", _ref("Device"), etag=True),
                **NOT_MODIFIED,
                "404": _error("no such device"),
                **ERRORS,
            },
            ("deviceIdPath", "ifNoneMatch"),
            operation_id="getDevice",
        ),
        "/api/v1/alerts": _get(
            "Alerts, by id; filters combine with AND",
            {"200": _json("alerts", {"type": "array", "items": _ref("Alert")}, etag=True), **NOT_MODIFIED, **ERRORS},
            ("state", "fromTime", "toTime", "alertType", "site", "sensorId", "ifNoneMatch"),
            operation_id="listAlerts",
        ),
        "/api/v2/alerts": _get(
            "Alerts with the devices' addresses and remediation steps",
            {"200": _json("alerts", {"type": "array", "items": _ref("AlertV2")}, etag=True), **NOT_MODIFIED, **ERRORS},
            ("state", "fromTime", "toTime", "alertType", "site", "sensorId", "ifNoneMatch"),
            operation_id="listAlertsV2",
        ),
        "/api/v1/alerts/{alertId}": {
            "put": {
                "summary": "Handle an alert; handleAndLearn also makes its activity authorized",
                "operationId": "handleAlert",
                "parameters": _parameters("alertId"),
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["action"],
                                "properties": {"action": {"type": "string", "enum": ["handle", "handleAndLearn"]}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json("the alert, handled", _ref("Alert"), etag=True),
                    "404": _error("no such alert"),
                    "501": NOT_ON_THE_CONSOLE,
                    **ERRORS,
                },
            }
        },
        "/api/v2/alerts/pcap/{alertId}": _get(
            "The frames that triggered the alert, as a pcap file",
            {
                "200": {
                    "description": "pcap file",
                    "content": {"application/vnd.tcpdump.pcap": {"schema": {"type": "string", "format": "binary"}}},
                },
                "404": _error("no such alert, or an alert without packet evidence"),
                "501": NOT_ON_THE_CONSOLE,
                **ERRORS,
            },
            ("alertId",),
            operation_id="getAlertPcap",
        ),
        "/api/v1/events": _get(
            "Events, newest first",
            {
                "200": _json("events", {"type": "array", "items": _ref("Event")}, etag=True),
                **NOT_MODIFIED,
                "501": NOT_ON_THE_CONSOLE,
                **ERRORS,
            },
            ("minutesTimeFrame", "eventType", "ifNoneMatch"),
            operation_id="listEvents",
        ),
        "/api/v1/openapi.json": _get(
            "This document",
            {"200": _json("OpenAPI 3 document", {"type": "object"}), "default": ERRORS["default"]},
            security=False,
            operation_id="getOpenApi",
        ),
        "/healthz": _get(
            "Capture and storage health",
            {
                "200": _json("healthy", _ref("Health")),
                "503": _error("unhealthy; details holds the health"),
                "default": ERRORS["default"],
            },
            security=False,
            operation_id="getHealth",
        ),
        "/metrics": _get(
            "Prometheus text format: packets, bytes, drops, decode errors, flush latency, API requests",
            {
                "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                "default": ERRORS["default"],
            },
            security=False,
            operation_id="getMetrics",
        ),
    },
    "components": {
        "securitySchemes": {
            "token": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "`<token>` or `Bearer <token>`",
            }
        },
        "parameters": PARAMETERS,
        "schemas": SCHEMAS,
    },
}
DOCUMENT_JSON = dumps(DOCUMENT)


@blueprint.get("/openapi.json")
def openapi_document():
    response = Response(DOCUMENT_JSON, content_type=JSON_CONTENT_TYPE)
    response.headers["Cache-Control"] = "public, max-age=300"
    return response
