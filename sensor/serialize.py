"""The one JSON shape of connections and devices, for the API and the CLI alike.

Owns the list/detail SQL that builds JSON inside DuckDB (no nested Python objects per row); never
decides HTTP status codes or reads request objects.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime

OT_PROTOCOLS = ("modbus", "s7comm", "s7comm-plus", "ams")
MAX_INTEGER = 2**53  # the largest integer a query parameter may be (every JSON client reads it exactly)


def dumps(value) -> str:
    """The encoder every JSON body and CLI print goes through: UTF-8 text, compact, stable key order."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class ConnectionFilter:
    device_id: int | None = None
    last_active_in_minutes: int | None = None
    discovered_before: int | None = None
    discovered_after: int | None = None
    site: str | None = None  # the fleet console's filters (sensor.console); a sensor ignores them
    sensor_id: str | None = None

    def where(self, now_ms: int | None = None) -> tuple[str, list]:
        clauses, params = [], []
        if self.device_id is not None:
            clauses.append("(first_device_id = ? OR second_device_id = ?)")
            params += [self.device_id, self.device_id]
        if self.last_active_in_minutes is not None:
            now_ms = int(time.time() * 1000) if now_ms is None else now_ms
            minutes = min(self.last_active_in_minutes, MAX_INTEGER // 60_000)  # BIGINT never overflows
            clauses.append("last_seen >= ?")
            params.append(now_ms - minutes * 60_000)
        if self.discovered_before is not None:
            clauses.append("discovered < ?")
            params.append(self.discovered_before)
        if self.discovered_after is not None:
            clauses.append("discovered > ?")
            params.append(self.discovered_after)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


CONNECTION_OBJECT = """{'id': first_device_id::VARCHAR || '-' || second_device_id::VARCHAR,
    'firstDeviceId': first_device_id, 'secondDeviceId': second_device_id, 'lastSeen': last_seen,
    'discovered': discovered, 'ports': ports, 'protocols': protocols}"""


def connections_json(cursor, where: ConnectionFilter = ConnectionFilter(), now_ms: int | None = None) -> str:
    """GET /api/v1/devices/connections: ordered by (firstDeviceId, secondDeviceId), built by DuckDB."""
    if where.device_id is None:
        clause, params = where.where(now_ms)
        source = f"connections{clause}"
    else:  # either side: two index lookups instead of a scan for an OR
        rest, rest_params = replace(where, device_id=None).where(now_ms)
        rest = rest.replace(" WHERE ", " AND ", 1)
        source = (
            f"(SELECT * FROM connections WHERE first_device_id = ?{rest} UNION ALL "
            f"SELECT * FROM connections WHERE second_device_id = ? AND first_device_id <> ?{rest})"
        )
        params = [where.device_id, *rest_params, where.device_id, where.device_id, *rest_params]
    sql = (
        f"SELECT coalesce(to_json(list({CONNECTION_OBJECT} ORDER BY first_device_id, second_device_id))::VARCHAR,"
        f" '[]') FROM {source}"
    )
    return cursor.execute(sql, params).fetchone()[0]


class DeviceConnections:
    """Every known device's connections list, from one query: each connection's JSON object is built by
    DuckDB once and shared by both its devices; ``body(id)`` joins a device's objects as DuckDB's list
    would (``connections_json`` with that deviceId alone gives the same bytes), None for an unknown id."""

    OBJECT_BYTES = 60  # what a Python str costs beyond its text, and its two references

    def __init__(self, objects: dict[int, list[str]], size: int) -> None:
        self.objects = objects
        self.size = size  # about the bytes held, for a render cache's budget

    def body(self, device_id: int) -> str | None:
        objects = self.objects.get(device_id)
        return None if objects is None else "[" + ",".join(objects) + "]"


def device_connections(cursor) -> DeviceConnections:
    """Every device's connections (either side), ordered as ``connections_json``: one snapshot, one scan."""
    rows = cursor.execute(
        f"""SELECT to_json({CONNECTION_OBJECT})::VARCHAR, first_device_id, second_device_id FROM connections
        UNION ALL SELECT NULL, id, NULL FROM devices
        ORDER BY first_device_id, second_device_id NULLS FIRST"""
    ).fetchall()
    objects: dict[int, list[str]] = {}
    size = 0
    for text, first, second in rows:  # by (first, second): each device's list comes out in its order
        own = objects.setdefault(first, [])
        if text is None:  # a device row: known, maybe without connections
            continue
        own.append(text)
        if second != first:
            objects.setdefault(second, []).append(text)
        size += len(text) + DeviceConnections.OBJECT_BYTES
    return DeviceConnections(objects, size + 100 * len(objects))


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def connection_detail(cursor, first_id: int, second_id: int) -> dict | None:
    """GET /api/v1/connections/<id>: the list fields plus identity, RFC 3339 times, packets and bytes."""
    row = cursor.execute(
        f"""SELECT to_json({CONNECTION_OBJECT})::VARCHAR, packets, bytes, user_agent,
            (SELECT ip FROM devices WHERE id = first_device_id)
            FROM connections WHERE first_device_id = ? AND second_device_id = ?""",
        [first_id, second_id],
    ).fetchone()
    if row is None:
        return None
    detail = json.loads(row[0])
    detail["identity"] = {"sourceIp": row[4], "userAgent": row[3]}
    detail["connectedAt"] = rfc3339(detail["discovered"])
    detail["lastActiveAt"] = rfc3339(detail["lastSeen"])
    detail["packets"], detail["bytes"] = row[1], row[2]
    return detail


DEVICE_COLUMNS = (
    "id, ip, macs, roles, vendor, mac_vendor, name, model, firmware, serial, user_agent, server, first_seen, last_seen, "
    "engineering_station, scanner, authorized, addresses"
)


def _device(row) -> dict:
    (device_id, ip, macs, roles, vendor, mac_vendor, name, model, firmware, serial, user_agent, server,
     first_seen, last_seen, engineering_station, scanner, authorized, addresses) = row  # fmt: skip
    by_protocol: dict[str, list[str]] = {}
    for role in roles:
        protocol, _, side = role.partition(":")
        by_protocol.setdefault(protocol, []).append(side)
    served = any(by_protocol.get(p) and "server" in by_protocol[p] for p in OT_PROTOCOLS)
    used = any(p in by_protocol for p in OT_PROTOCOLS)
    firmware_info = {"model": model, "firmwareVersion": firmware, "serial": serial}
    identity = {"httpServer": server, "userAgent": user_agent}
    return {
        "id": device_id,
        "ipAddresses": [ip],
        "macAddresses": macs,
        "name": name,
        "vendor": vendor or mac_vendor,
        "type": "PLC" if served else "HMI" if used else None,
        "protocols": [{"name": p, "roles": sorted(sides)} for p, sides in sorted(by_protocol.items())],
        "firmware": [{k: v for k, v in firmware_info.items() if v}] if any(firmware_info.values()) else [],
        "identity": {k: v for k, v in identity.items() if v},
        "firstSeen": first_seen,
        "lastSeen": last_seen,
        "engineeringStation": engineering_station,
        "scanner": scanner,
        "authorized": authorized,
        "addresses": json.loads(addresses),
    }


def devices(cursor) -> list[dict]:
    """GET /api/v1/devices: ordered by id."""
    return [_device(row) for row in cursor.execute(f"SELECT {DEVICE_COLUMNS} FROM devices ORDER BY id").fetchall()]


def device(cursor, device_id: int) -> dict | None:
    row = cursor.execute(f"SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?", [device_id]).fetchone()
    return None if row is None else _device(row)


# -- alerts and events (CONTRACT section 4) --------------------------------------------------------

ALERT_STATES = {"handled": True, "unhandled": False}
MAX_EVENTS = 1000  # GET /api/v1/events without minutesTimeFrame: the latest this many
MAX_EVENT_MINUTES = 4320  # three days, as Defender for IoT bounds minutesTimeFrame


@dataclass(frozen=True)
class AlertFilter:
    state: str | None = None  # "handled" / "unhandled"
    from_time: int | None = None  # epoch ms, inclusive
    to_time: int | None = None
    type: str | None = None  # an alert title

    def where(self) -> tuple[str, list]:
        clauses, params = [], []
        if self.state is not None:
            clauses.append("a.handled = ?")
            params.append(ALERT_STATES[self.state])
        if self.from_time is not None:
            clauses.append("a.time >= ?")
            params.append(self.from_time)
        if self.to_time is not None:
            clauses.append("a.time <= ?")
            params.append(self.to_time)
        if self.type is not None:
            clauses.append("a.title = ?")
            params.append(self.type)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def alerts(cursor, version: int = 1, where: AlertFilter = AlertFilter(), ids: list[int] | None = None) -> list[dict]:
    """GET /api/v1/alerts (and v2, which adds the devices' addresses and remediation steps), by id."""
    clause, params = where.where()
    if ids is not None:
        clause = " WHERE a.id IN (SELECT unnest(?))"
        params = [ids]
    rows = cursor.execute(
        "SELECT a.id, a.time, a.title, a.message, a.severity, a.engine, a.source_device, a.destination_device, "
        "a.description, a.information, a.handled, a.count, a.last_time, a.remediation, s.ip, d.ip "
        "FROM alerts a LEFT JOIN devices s ON s.id = a.source_device LEFT JOIN devices d ON d.id = a.destination_device"
        f"{clause} ORDER BY a.id",
        params,
    ).fetchall()
    out = []
    for (alert_id, time_ms, title, message, severity, engine, source, destination, description, information,
         handled, count, last_time, remediation, source_ip, destination_ip) in rows:  # fmt: skip
        alert = {
            "id": alert_id,
            "time": time_ms,
            "title": title,
            "message": message,
            "severity": severity,
            "engine": engine,
            "sourceDevice": source,
            "destinationDevice": destination,
            "additionalInformation": {"description": description, "information": information},
            "handled": handled,
            "count": count,
            "lastTime": last_time,
        }
        if version >= 2:
            alert["sourceDeviceAddress"] = source_ip
            alert["destinationDeviceAddress"] = destination_ip
            alert["remediationSteps"] = remediation
        out.append(alert)
    return out


def alert_pcap(cursor, alert_id: int) -> bytes | None:
    """The evidence of an alert as a pcap file; None if the alert is unknown, b"" if it has none."""
    row = cursor.execute("SELECT pcap FROM alerts WHERE id = ?", [alert_id]).fetchone()
    if row is None:
        return None
    return bytes(row[0]) if row[0] is not None else b""


def events(cursor, minutes: int | None = None, type: str | None = None, now_ms: int | None = None) -> list[dict]:
    """GET /api/v1/events: newest first; those of the last ``minutes`` of wall-clock time (as Defender
    for IoT reads minutesTimeFrame), else the latest MAX_EVENTS."""
    clauses, params = [], []
    if minutes is not None:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        clauses.append("timestamp >= ?")
        params.append(now_ms - minutes * 60_000)
    if type is not None:
        clauses.append("type = ?")
        params.append(type)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    limit = "" if minutes is not None else f" LIMIT {MAX_EVENTS}"
    rows = cursor.execute(
        f"SELECT timestamp, type, title, severity, owner, content FROM events{where} ORDER BY timestamp DESC, id DESC"
        f"{limit}",
        params,
    ).fetchall()
    names = ("timestamp", "type", "title", "severity", "owner", "content")
    return [dict(zip(names, row)) for row in rows]
