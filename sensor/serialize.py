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
    "id, ip, macs, roles, vendor, mac_vendor, name, model, firmware, serial, user_agent, server, first_seen, last_seen"
)


def _device(row) -> dict:
    (device_id, ip, macs, roles, vendor, mac_vendor, name, model, firmware, serial, user_agent, server,
     first_seen, last_seen) = row  # fmt: skip
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
    }


def devices(cursor) -> list[dict]:
    """GET /api/v1/devices: ordered by id."""
    return [_device(row) for row in cursor.execute(f"SELECT {DEVICE_COLUMNS} FROM devices ORDER BY id").fetchall()]


def device(cursor, device_id: int) -> dict | None:
    row = cursor.execute(f"SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?", [device_id]).fetchone()
    return None if row is None else _device(row)
