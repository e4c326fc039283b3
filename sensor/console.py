"""The fleet console's store: every sensor's data in ClickHouse, read through sensor.store.Store's read interface.

Owns the fleet-wide queries (states merged across sensors and shards) and the `fleet init` and `console`
commands; the API is the same create_app as on a sensor (one API, two stores). Tokens live in the
console's own small DuckDB. Never writes to ClickHouse but through `fleet init`.

Fleet-wide ids: a device is (site, ip) and its id the low 53 bits of cityHash64(site, ip), computed by
ClickHouse when deltas arrive, so it is stable, the same on every shard and every console, and exact in
any JSON client. Two sensors of one site seeing one address see one device; one address in two sites is
two devices. A connection is (site, initiator, responder) merged over the site's sensors. An alert is
(site, sensor, the sensor's alert id), its id the low 53 bits of cityHash64 of those three; its devices
are given by their fleet ids, found from the addresses the sensor named. Handling an alert, its pcap and
events stay on the sensor that raised them (NotServed: the API answers 501). A device's classes merge over
its site's sensors: engineeringStation, scanner and authorized if any sensor says so, addresses the union;
unknown, a sensor's defaults for a device with nothing known (false, {}) — null only on a fleet whose
schema predates them (version 1: `fleet init` adds them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import serialize
from .fleet import COMMAND_SEPARATOR, FLAGS, ID_MASK, IDENTITY, ClickHouse, FleetError, device_id_sql, init
from .oui import vendor as oui_vendor
from .serialize import AlertFilter, ConnectionFilter, rfc3339
from .store import NotServed, Store, StoreError


def quote(text: str) -> str:
    """A ClickHouse string literal (backslash escapes, as every version reads them)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


ALERT_V2_ONLY = ("sourceDeviceAddress", "destinationDeviceAddress", "remediationSteps")
ON_THE_SENSOR = "on the sensor that raised them (sensorId; its own id is sensorAlertId)"


def _scope(where: ConnectionFilter) -> list[str]:
    clauses = []
    if where.site is not None:
        clauses.append(f"site = {quote(where.site)}")
    if where.sensor_id is not None:
        clauses.append(f"sensor_id = {quote(where.sensor_id)}")
    return clauses


def _addresses(values: list[str]) -> dict[str, list[str]]:
    """The "protocol\x1faddress" strings as a sensor serves a device's addresses: protocols and their
    addresses sorted (sensor.detect.addresses_json)."""
    by_protocol: dict[str, list[str]] = {}
    for value in sorted(values):
        protocol, _, address = value.partition(COMMAND_SEPARATOR)
        by_protocol.setdefault(protocol, []).append(address)
    return dict(sorted(by_protocol.items()))


class ClickHouseStore:
    """sensor.store.Store's read interface over the fleet tables; ``cursor()`` is the token DB's."""

    def __init__(self, client: ClickHouse, tokens: Store) -> None:
        self.client, self.tokens = client, tokens
        self.path = tokens.path  # /healthz reads the token DB's age; the fleet's own is in ClickHouse
        self.db = client.database
        self._classes = False  # whether the fleet has device_classes (schema 2); once it has, always

    def has_classes(self) -> bool:
        """Whether the fleet's schema has the device classes (asked until it has: `fleet init` may add them)."""
        if not self._classes:
            found = self.client.rows(
                f"SELECT count() FROM system.tables WHERE database = {quote(self.db)} AND name = 'device_classes'"
            )
            self._classes = bool(found and int(found[0][0]))
        return self._classes

    def cursor(self):
        return self.tokens.cursor()

    def close(self) -> None:
        self.tokens.close()

    def counts(self) -> tuple[int, int]:
        try:
            devices = self.client.rows(f"SELECT uniqExact(device_id) FROM {self.db}.devices_state")[0][0]
            connections = self.client.rows(f"SELECT uniqExact(first_id, second_id) FROM {self.db}.connections_state")
        except FleetError as error:
            raise StoreError(str(error)) from None
        return int(devices), int(connections[0][0])

    # -- connections ------------------------------------------------------------------------------
    def _connections(self, where: ConnectionFilter, now_ms: int | None = None, pair: tuple | None = None) -> list:
        clauses, ids = _scope(where), None
        # PREWHERE: the id columns are read first, the aggregate states only where they match
        if where.device_id is not None:
            ids = self._device_pairs(int(where.device_id))
            if ids is None:
                return []
        if pair is not None:
            ids = f"first_id = {int(pair[0])} AND second_id = {int(pair[1])}"
        having = []
        if where.last_active_in_minutes is not None:
            now_ms = int(time.time() * 1000) if now_ms is None else now_ms
            minutes = min(where.last_active_in_minutes, serialize.MAX_INTEGER // 60_000)
            having.append(f"seen >= {now_ms - minutes * 60_000}")
        if where.discovered_before is not None:
            having.append(f"disc < {int(where.discovered_before)}")
        if where.discovered_after is not None:
            having.append(f"disc > {int(where.discovered_after)}")
        scope = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        if having:
            # Time filters hold for the merged pair, so they are a HAVING; the pairs that pass are found
            # first from the ids and the min/max states alone (merging every pair's sets fleet-wide would
            # read them all), then only those are read whole. GLOBAL: with Distributed tables the list is
            # made once and sent to every shard.
            times = "minMerge(discovered) AS d0, maxMerge(last_seen) AS l0, if(l0 < 0, 0, d0) AS disc, if(l0 < 0, 0, l0) AS seen"
            keep = f"""(first_id, second_id) GLOBAL IN (SELECT first_id, second_id FROM (SELECT first_id,
                second_id, {times} FROM {self.db}.connections_state {"PREWHERE " + ids if ids else ""} {scope}
                GROUP BY first_id, second_id HAVING {" AND ".join(having)}))"""
            ids = f"({ids}) AND {keep}" if ids else keep
        # a pair whose times are not known yet (lastSeen -1) shows 0 and 0, as a sensor's store does
        # sets come sorted, commands grouped by protocol: the JSON is then one dict per row in Python
        sql = f"""SELECT first_id, second_id, any(site), arraySort(groupUniqArray(sensor_id)),
            arraySort(groupUniqArrayArrayMerge(ports)), arraySort(groupUniqArrayArrayMerge(protocols)) AS names,
            arrayMap(p -> arraySort(arrayMap(c -> substring(c, length(p) + 2),
                arrayFilter(c -> position(c, concat(p, '{COMMAND_SEPARATOR}')) = 1, cmds))), names),
            minMerge(discovered) AS d0, maxMerge(last_seen) AS l0,
            if(l0 < 0, 0, d0) AS disc, if(l0 < 0, 0, l0) AS seen, maxMerge(user_agent), any(client),
            groupUniqArrayArrayMerge(commands) AS cmds
            FROM {self.db}.connections_state {"PREWHERE " + ids if ids else ""} {scope}
            GROUP BY first_id, second_id ORDER BY first_id, second_id"""
        try:
            return self.client.rows(sql)
        except FleetError as error:
            raise StoreError(str(error)) from None

    def _device_pairs(self, device_id: int) -> str | None:
        """A PREWHERE that reads only ``device_id``'s pairs, found in device_pairs (keyed by device id); the
        site and first ids hit connections_state's primary key. None: the device has no connection."""
        try:
            rows = self.client.rows(
                f"SELECT DISTINCT site, first_id, second_id FROM {self.db}.device_pairs WHERE device_id = {device_id}"
            )
        except FleetError as error:
            raise StoreError(str(error)) from None
        if not rows:
            return None
        sites = ", ".join(sorted({quote(site) for site, _, _ in rows}))
        firsts = ", ".join(sorted({str(int(first)) for _, first, _ in rows}))
        pairs = ", ".join(sorted({f"({int(first)}, {int(second)})" for _, first, second in rows}))
        return f"site IN ({sites}) AND first_id IN ({firsts}) AND (first_id, second_id) IN ({pairs})"

    @staticmethod
    def _connection(row) -> dict:
        first, second, site, sensors, ports, names, commands, _d0, _l0, discovered, seen = row[:11]
        return {
            "id": f"{first}-{second}",
            "firstDeviceId": first,
            "secondDeviceId": second,
            "lastSeen": seen,
            "discovered": discovered,
            "ports": ports,
            "protocols": [{"name": n, "commands": c} for n, c in zip(names, commands)],
            "site": site,
            "sensorId": sensors[0],
            "sensorIds": sensors,
        }

    def connections_json(self, where: ConnectionFilter | None = None, now_ms: int | None = None) -> str:
        rows = self._connections(where or ConnectionFilter(), now_ms)
        return serialize.dumps([self._connection(row) for row in rows])

    def connection_detail(self, first_id: int, second_id: int) -> dict | None:
        rows = self._connections(ConnectionFilter(), pair=(first_id, second_id))
        if not rows:
            return None
        detail = self._connection(rows[0])
        user_agent, client_ip = rows[0][11], rows[0][12]
        # one row per delta (ReplacingMergeTree's key), whether or not its copies are merged away yet
        counts = self.client.rows(
            f"""SELECT sum(p), sum(b) FROM (SELECT any(packets) AS p, any(bytes) AS b
            FROM {self.db}.connection_counts WHERE first_id = {int(first_id)} AND second_id = {int(second_id)}
            GROUP BY site, sensor_id, first_id, second_id, delta_id, client, server)"""
        )
        detail["identity"] = {"sourceIp": client_ip, "userAgent": user_agent or None}
        detail["connectedAt"] = rfc3339(detail["discovered"])
        detail["lastActiveAt"] = rfc3339(detail["lastSeen"])
        detail["packets"], detail["bytes"] = int(counts[0][0] or 0), int(counts[0][1] or 0)
        return detail

    # -- devices ----------------------------------------------------------------------------------
    def _devices(self, clauses: list[str]) -> list[dict]:
        identity = ", ".join(f"maxMerge({name}) AS {name}" for name in IDENTITY)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"""SELECT device_id, any(site) AS s, any(ip) AS i, groupUniqArray(sensor_id) AS sensors,
            groupUniqArrayArrayMerge(macs) AS m, groupUniqArrayArrayMerge(roles) AS r, {identity},
            minMerge(first_seen) AS f, maxMerge(last_seen) AS l
            FROM {self.db}.devices_state {where} GROUP BY device_id"""
        try:
            if self.has_classes():
                # the classes of the same devices (the same scope), merged over sensors: max of each flag,
                # the union of the addresses; a device without a row gets the column defaults (0, [])
                flags = ", ".join(f"maxMerge({flag}) AS {flag}" for flag in FLAGS)
                columns = ", ".join(("device_id, s, i, sensors, m, r", *IDENTITY, "f, l", *FLAGS, "addresses"))
                sql = f"""SELECT {columns} FROM ({sql}) AS devices ANY LEFT JOIN (SELECT device_id, {flags},
                    groupUniqArrayArrayMerge(addresses) AS addresses
                    FROM {self.db}.device_classes {where} GROUP BY device_id) AS classes USING device_id
                    ORDER BY device_id"""
            else:
                sql += " ORDER BY device_id"
            rows = self.client.rows(sql)
        except FleetError as error:
            raise StoreError(str(error)) from None
        found = []
        for row in rows:
            device_id, site, ip, sensors, macs, roles = row[:6]
            vendor, name, model, firmware, serial, user_agent, server = (v or None for v in row[6:13])
            macs = sorted(macs)
            mac_vendor = next(filter(None, map(oui_vendor, macs)), None)
            if len(row) > 15:
                classes = (*(bool(flag) for flag in row[15:18]), "{}")
            else:  # a fleet of schema version 1: the sensors' detection is not there, unknown rather than false
                classes = (None, None, None, "null")
            device = serialize._device((int(device_id), ip, macs, sorted(roles), vendor, mac_vendor, name, model,
                                        firmware, serial, user_agent, server, int(row[13]), int(row[14]),
                                        *classes))  # fmt: skip
            if len(row) > 15 and row[18]:
                device["addresses"] = _addresses(row[18])
            sensors = sorted(sensors)
            device.update(site=site, sensorId=sensors[0], sensorIds=sensors)
            found.append(device)
        return found

    def devices(self, where: ConnectionFilter | None = None) -> list[dict]:
        return self._devices(_scope(where or ConnectionFilter()))

    def device(self, device_id: int) -> dict | None:
        found = self._devices([f"device_id = {int(device_id)}"])  # the second key column: a few granules
        return found[0] if found else None

    # -- alerts -----------------------------------------------------------------------------------
    def alerts(self, version: int = 1, where: AlertFilter | None = None, ids: list[int] | None = None,
               scope: ConnectionFilter | None = None) -> list[dict]:  # fmt: skip
        """Every sensor's alerts, each in its latest state (the greatest version of (site, sensor, alert id);
        its copies may not be merged away yet), ordered by time, then site, sensor and the sensor's id."""
        where = where or AlertFilter()
        clauses = _scope(scope or ConnectionFilter())
        if where.type is not None:
            clauses.append(f"title = {quote(where.type)}")
        having = []  # on the latest state: an alert handled since is not unhandled
        if where.state is not None:
            having.append(f"h = {1 if where.state == 'handled' else 0}")
        if where.from_time is not None:
            having.append(f"t >= {int(where.from_time)}")
        if where.to_time is not None:
            having.append(f"t <= {int(where.to_time)}")
        chosen = f"WHERE fleet_id IN ({', '.join(str(int(i)) for i in ids)})" if ids else ""
        if ids is not None and not ids:
            return []
        sql = f"""SELECT fleet_id, site, sensor_id, alert_id, b,
            {device_id_sql("site", "s")}, {device_id_sql("site", "d")}, s, d
            FROM (SELECT bitAnd(cityHash64(site, sensor_id, alert_id), {ID_MASK}) AS fleet_id, site, sensor_id,
                alert_id, argMax(body, version) AS b, argMax(handled, version) AS h, argMax(time, version) AS t,
                any(source_ip) AS s, any(destination_ip) AS d
                FROM {self.db}.alerts {"WHERE " + " AND ".join(clauses) if clauses else ""}
                GROUP BY site, sensor_id, alert_id {"HAVING " + " AND ".join(having) if having else ""})
            {chosen} ORDER BY t, site, sensor_id, alert_id"""
        try:
            rows = self.client.rows(sql)
        except FleetError as error:
            raise StoreError(str(error)) from None
        found = []
        for fleet_id, site, sensor, sensor_alert_id, body, source, destination, source_ip, destination_ip in rows:
            alert = json.loads(body)
            alert.update(id=int(fleet_id), sourceDevice=int(source) if source_ip else None,
                         destinationDevice=int(destination) if destination_ip else None,
                         site=site, sensorId=sensor, sensorAlertId=int(sensor_alert_id))  # fmt: skip
            if version < 2:
                for key in ALERT_V2_ONLY:
                    alert.pop(key, None)
            found.append(alert)
        return found

    def handle_alert(self, alert_id: int, learn: bool = False) -> bool:
        raise NotServed(f"Handle alerts {ON_THE_SENSOR}: the console only shows them")

    def alert_pcap(self, alert_id: int) -> bytes | None:
        raise NotServed(f"An alert's pcap is kept {ON_THE_SENSOR}")

    def events(self, minutes: int | None = None, type: str | None = None) -> list[dict]:
        raise NotServed("Events are kept on each sensor (GET /api/v1/events there); the console serves alerts")


# -- commands -------------------------------------------------------------------------------------------
def _client(url: str, ca_file: str | None):
    from api.cli import CommandError

    try:
        return ClickHouse(url, ca_file=ca_file)
    except FleetError as error:
        raise CommandError(str(error)) from None


def cmd_fleet(args) -> int:
    from api.cli import CommandError

    clients = [_client(url, args.ca_file) for url in args.clickhouse]
    try:
        done = init(clients, args.cluster)
    except FleetError as error:
        raise CommandError(str(error)) from None
    for base in done:
        print(
            f"fleet tables ready in {clients[0].database} at {base}"
            + (f" (cluster {args.cluster})" if args.cluster else "")
        )
    return 0


def cmd_console(args) -> int:
    import sys

    from api import create_app
    from api.cli import _settings, serve_holding

    client = _client(args.clickhouse, args.ca_file)
    # made at the first start; while the console holds it, `otsensor token … --db` the same file goes through
    # the console's admin socket (DB + .sock), as with a sensor
    tokens = Store(Path(args.db))
    store = ClickHouseStore(client, tokens)
    try:
        app = create_app(store, _settings(args, stats=lambda: {"mode": "console"}))
        serve_holding(
            args, args.db, "console", app,
            lambda url: print(f"otsensor: console over {client.base} ({client.database}) at {url}; tokens in {args.db}",
                              file=sys.stderr, flush=True),
        )  # fmt: skip
    finally:
        store.close()
    return 0


COMMANDS = {"fleet": cmd_fleet, "console": cmd_console}
