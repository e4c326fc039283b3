"""Fleet: each flush's delta shipped to ClickHouse through a bounded on-disk spool (contract section 6).

Owns the fleet tables (their SQL, for ClickHouse 18.16 and current alike), the HTTP client, the spool
beside the DB and the shipping thread; never slows capture or the local flush (a flush only hands the
delta over) and never reads the sensor's DuckDB.

Exactly once where it matters. Sets (ports, protocols, commands, MACs, roles), min (discovered) and
max (lastSeen, identity strings) are idempotent: AggregatingMergeTree merges their partial states in any
order, any number of times. Sums (packets, bytes) are not, so every delta carries (sensor_id, delta_id)
— delta_id a sequence persisted in the spool — and the counts land in a ReplacingMergeTree keyed by
(site, sensor_id, client, server, delta_id); queries read one row per key (GROUP BY the key, then
sum), so a delta shipped twice (a retry after a timeout whose insert did land) counts once even before
the background merge removes the copy. ClickHouse's own insert deduplication would not do: it needs
Replicated tables (ZooKeeper), and 18.16's plain MergeTree keeps every copy of a retried block.

Alerts travel in the same spool files, in the same order: every alert the store opens or changes
(a repeat counted on it, handled) is handed over after its commit (``Shipper.submit_alerts``, a sink of
the detector's ``on_change``) and lands, whole, in ``alerts`` (ReplacingMergeTree(version)), whose
``version`` is the alert's own state (``alert_version``): it only grows, so the newest state wins
whatever order or how often rows arrive.

Device classes (contract section 3: engineeringStation, scanner, authorized, and per-protocol addresses)
travel the same way, schema version 2. A device's addresses come with the delta's devices; its three flags
are decided in the sensor's DB at the merge and only ever turn on (sensor.detect), so the devices whose
flags may have changed are handed over after the commit (``Shipper.submit_classes``, a sink of the
detector's ``on_classes``; at ``attach``, every flagged device whose flags never reached the spool). Both
land as rows of ``delta_device_classes`` in the same spool file, and a view folds them into
``device_classes``: ``maxState`` of each flag and ``groupUniqArrayArrayState`` of "protocol\x1faddress" —
idempotent, so a file shipped twice changes nothing; the console ORs the flags and joins the addresses
over a site's sensors.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from contextlib import contextmanager
from pathlib import Path

from .connections import ConnectionTable, ip_text

log = logging.getLogger("otsensor.fleet")

SCHEMA_VERSION = 2  # 2: device classes (delta_device_classes, device_classes)
DEFAULT_DATABASE = "otsensor"
ID_BITS = 53  # fleet-wide device ids: every JSON client reads integers up to 2**53 exactly
ID_MASK = (1 << ID_BITS) - 1
COMMAND_SEPARATOR = "\x1f"  # "modbus\x1fRead Coils": one set of (protocol, command) pairs
BACKOFF_SECONDS = (0.5, 1, 2, 5, 10, 30)
SEND_ROWS = 50_000  # rows per INSERT: big enough for throughput, small enough for a slow server's timeout


def device_id_sql(site: str, ip: str) -> str:
    """A device's fleet-wide id in ClickHouse: the low 53 bits of cityHash64(site, ip) (stable across versions)."""
    return f"bitAnd(cityHash64({site}, {ip}), {ID_MASK})"


# --- the tables ---------------------------------------------------------------------------------------
# Deltas are inserted as plain rows into Null tables; materialized views turn them into aggregate states
# (AggregatingMergeTree, 18.16 has no SimpleAggregateFunction and no input() function) and per-delta
# counts (ReplacingMergeTree). With a cluster, each of these is a "_local" table on every shard and the
# plain name is a Distributed table over them, sharded by sensor (a sensor's deltas on one shard).

DELTA_CONNECTIONS = """(
    site String, sensor_id String, delta_id UInt64, client String, server String,
    ports Array(UInt16), protocols Array(String), commands Array(String),
    discovered Int64, last_seen Int64, packets UInt64, bytes UInt64, user_agent String)"""
DELTA_DEVICES = """(
    site String, sensor_id String, delta_id UInt64, ip String, macs Array(String), roles Array(String),
    vendor String, name String, model String, firmware String, serial String, user_agent String, server String,
    first_seen Int64, last_seen Int64)"""
CONNECTIONS_STATE = """(
    site String, client String, server String, sensor_id String, first_id UInt64, second_id UInt64,
    ports AggregateFunction(groupUniqArrayArray, Array(UInt16)),
    protocols AggregateFunction(groupUniqArrayArray, Array(String)),
    commands AggregateFunction(groupUniqArrayArray, Array(String)),
    discovered AggregateFunction(min, Int64), last_seen AggregateFunction(max, Int64),
    user_agent AggregateFunction(max, String))"""
CONNECTION_COUNTS = """(
    site String, sensor_id String, client String, server String, delta_id UInt64, first_id UInt64,
    second_id UInt64, packets UInt64, bytes UInt64)"""
IDENTITY = ("vendor", "name", "model", "firmware", "serial", "user_agent", "server")
DEVICES_STATE = (
    """(
    site String, ip String, sensor_id String, device_id UInt64,
    macs AggregateFunction(groupUniqArrayArray, Array(String)),
    roles AggregateFunction(groupUniqArrayArray, Array(String)), """
    + ", ".join(f"{name} AggregateFunction(max, String)" for name in IDENTITY)
    + """,
    first_seen AggregateFunction(min, Int64), last_seen AggregateFunction(max, Int64))"""
)
# Device classes (schema version 2): flags as 0/1 (a row says what is on; max over rows and sensors), addresses
# as "protocol\x1faddress" (their union). A row per device in a delta with addresses or flags turned on.
FLAGS = ("engineering_station", "scanner", "authorized")
DELTA_CLASSES = (
    "(site String, sensor_id String, ip String, "
    + ", ".join(f"{flag} UInt8" for flag in FLAGS)
    + ", addresses Array(String))"
)
DEVICE_CLASSES = (
    "(site String, ip String, sensor_id String, device_id UInt64, "
    + ", ".join(f"{flag} AggregateFunction(max, UInt8)" for flag in FLAGS)
    + ", addresses AggregateFunction(groupUniqArrayArray, Array(String)))"
)
# Alerts (contract section 4): one row per state of (site, sensor, alert id); the greatest version wins
# (alert_version). body: the alert as the sensor's GET /api/v2/alerts serves it.
ALERTS = """(
    site String, sensor_id String, alert_id UInt64, time Int64, title String, severity String,
    source_ip String, destination_ip String, handled UInt8, body String, version UInt64)"""

CONNECTIONS_VIEW = f"""SELECT site, client, server, sensor_id,
    {device_id_sql("site", "client")} AS first_id, {device_id_sql("site", "server")} AS second_id,
    groupUniqArrayArrayState(ports) AS ports, groupUniqArrayArrayState(protocols) AS protocols,
    groupUniqArrayArrayState(commands) AS commands, minState(discovered) AS discovered,
    maxState(last_seen) AS last_seen, maxState(user_agent) AS user_agent
    FROM {{source}} GROUP BY site, client, server, sensor_id"""
COUNTS_VIEW = f"""SELECT site, sensor_id, client, server, delta_id,
    {device_id_sql("site", "client")} AS first_id, {device_id_sql("site", "server")} AS second_id,
    sum(packets) AS packets, sum(bytes) AS bytes
    FROM {{source}} GROUP BY site, sensor_id, client, server, delta_id"""
DEVICES_VIEW = (
    f"""SELECT site, ip, sensor_id, {device_id_sql("site", "ip")} AS device_id,
    groupUniqArrayArrayState(macs) AS macs, groupUniqArrayArrayState(roles) AS roles, """
    + ", ".join(f"maxState({name}) AS {name}" for name in IDENTITY)
    + """, minState(first_seen) AS first_seen, maxState(last_seen) AS last_seen
    FROM {source} GROUP BY site, ip, sensor_id"""
)
CLASSES_VIEW = (
    f"""SELECT site, ip, sensor_id, {device_id_sql("site", "ip")} AS device_id, """
    + ", ".join(f"maxState({flag}) AS {flag}" for flag in FLAGS)
    + """, groupUniqArrayArrayState(addresses) AS addresses
    FROM {source} GROUP BY site, ip, sensor_id"""
)

# Each connection under both its devices' ids: one device's connections fleet-wide are an index lookup
# here, then a primary-key read of connections_state (site, first_id), instead of a scan of every pair.
DEVICE_PAIRS = "(device_id UInt64, site String, first_id UInt64, second_id UInt64, sensor_id String)"
DEVICE_PAIRS_VIEW = f"""SELECT {device_id_sql("site", "arrayJoin([client, server])")} AS device_id, site,
    {device_id_sql("site", "client")} AS first_id, {device_id_sql("site", "server")} AS second_id, sensor_id
    FROM {{source}}"""

# Lookups read whole granules: 1,024 rows instead of 8,192 make one device's read ~8x smaller (marks: 2 KB
# of memory per million rows more).
FINE = "SETTINGS index_granularity = 1024"

# name -> (columns, local engine); the views below read the delta tables
TABLES = {
    "delta_connections": (DELTA_CONNECTIONS, "Null"),
    "delta_devices": (DELTA_DEVICES, "Null"),
    "connections_state": (
        CONNECTIONS_STATE,
        "AggregatingMergeTree() ORDER BY (site, first_id, second_id, sensor_id, client, server) " + FINE,
    ),
    "connection_counts": (
        CONNECTION_COUNTS,
        "ReplacingMergeTree() ORDER BY (site, sensor_id, first_id, second_id, delta_id, client, server)",
    ),
    "devices_state": (DEVICES_STATE, "AggregatingMergeTree() ORDER BY (site, device_id, sensor_id, ip)"),
    "device_pairs": (
        DEVICE_PAIRS,
        "ReplacingMergeTree() ORDER BY (device_id, site, first_id, second_id, sensor_id) " + FINE,
    ),
    "alerts": (ALERTS, "ReplacingMergeTree(version) ORDER BY (site, sensor_id, alert_id)"),
    # schema version 2: new tables rather than new columns, so `fleet init` completes a version-1 fleet
    # with CREATE ... IF NOT EXISTS alone
    "delta_device_classes": (DELTA_CLASSES, "Null"),
    "device_classes": (DEVICE_CLASSES, "AggregatingMergeTree() ORDER BY (site, device_id, sensor_id, ip)"),
}
VIEWS = {  # view -> (target, source, select)
    "connections_state_mv": ("connections_state", "delta_connections", CONNECTIONS_VIEW),
    "connection_counts_mv": ("connection_counts", "delta_connections", COUNTS_VIEW),
    "devices_state_mv": ("devices_state", "delta_devices", DEVICES_VIEW),
    "device_pairs_mv": ("device_pairs", "delta_connections", DEVICE_PAIRS_VIEW),
    "device_classes_mv": ("device_classes", "delta_device_classes", CLASSES_VIEW),
}


def schema_statements(database: str, cluster: str | None = None) -> list[str]:
    """CREATE ... IF NOT EXISTS for every table and view; run on every server (each shard with a cluster).

    Distributed DDL (ON CLUSTER) needs ZooKeeper, which a plain install has not, so `fleet init` runs
    these on each shard's URL itself.
    """
    local = "_local" if cluster else ""
    statements = [f"CREATE DATABASE IF NOT EXISTS {database}"]
    for name, (columns, engine) in TABLES.items():
        statements.append(f"CREATE TABLE IF NOT EXISTS {database}.{name}{local} {columns} ENGINE = {engine}")
    for view, (target, source, select) in VIEWS.items():
        statements.append(
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{view} TO {database}.{target}{local} AS "
            + select.format(source=f"{database}.{source}{local}")
        )
    if cluster:
        for name in TABLES:
            shard_key = "cityHash64(sensor_id)"  # a sensor's deltas, and so their retries, on one shard
            statements.append(
                f"CREATE TABLE IF NOT EXISTS {database}.{name} AS {database}.{name}_local "
                f"ENGINE = Distributed({cluster}, {database}, {name}_local, {shard_key})"
            )
    statements.append(f"CREATE TABLE IF NOT EXISTS {database}.fleet_schema (version UInt32) ENGINE = TinyLog")
    return statements


# --- the HTTP client ----------------------------------------------------------------------------------
class FleetError(Exception):
    """ClickHouse cannot be reached or refused a statement; one line."""


class ClickHouse:
    """ClickHouse's HTTP interface through urllib: a statement, an optional body (rows), the answer's text.

    ``url`` is ``http[s]://[user:password@]host:port/[?database=NAME]``; ``ca_file`` a PEM bundle to trust.
    """

    def __init__(self, url: str, user: str | None = None, password: str | None = None, ca_file: str | None = None,
                 timeout: float = 30.0) -> None:  # fmt: skip
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise FleetError(f"not a ClickHouse HTTP URL: {url!r} (http[s]://host:port/)")
        query = dict(urllib.parse.parse_qsl(parts.query))
        self.database = query.pop("database", DEFAULT_DATABASE)
        if not self.database.replace("_", "").isalnum():
            raise FleetError(f"not a database name: {self.database!r}")
        port = f":{parts.port}" if parts.port else ""
        self.base = f"{parts.scheme}://{parts.hostname}{port}/"
        self.params = query  # e.g. insert_distributed_sync=1 passed on by the user
        user = user or (urllib.parse.unquote(parts.username) if parts.username else None)
        password = password or (urllib.parse.unquote(parts.password) if parts.password else "")
        self.headers = {}
        if user:
            credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {credentials}"
        self.context = ssl.create_default_context(cafile=ca_file) if parts.scheme == "https" else None
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"ClickHouse({self.base})"

    def query(self, sql: str, body: bytes | None = None, **settings) -> str:
        """Run ``sql``; with ``body``, the statement goes in the URL and the rows in the POST body."""
        params = {**self.params, **{k: str(v) for k, v in settings.items()}}
        if body is None:
            data = sql.encode()
        else:
            params["query"] = sql
            data = body
        url = self.base + ("?" + urllib.parse.urlencode(params) if params else "")
        request = urllib.request.Request(url, data=data, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as answer:
                return answer.read().decode("utf-8")
        except urllib.error.HTTPError as error:
            text = error.read().decode("utf-8", "replace").strip().splitlines()
            raise FleetError(f"ClickHouse at {self.base} answered {error.code}: {(text or [''])[0][:300]}") from None
        except (OSError, ValueError, http.client.HTTPException) as error:  # refused, reset, cut short, TLS
            reason = getattr(error, "reason", None) or error
            raise FleetError(f"ClickHouse at {self.base} cannot be reached: {reason}") from None

    def rows(self, sql: str) -> list[list]:
        """A SELECT's rows (JSONCompact; 64-bit integers as numbers, which 18.16 quotes by default)."""
        text = self.query(sql + " FORMAT JSONCompact", output_format_json_quote_64bit_integers=0)
        return json.loads(text)["data"]


def init(clients: list[ClickHouse], cluster: str | None = None) -> list[str]:
    """`otsensor fleet init`: every table and view on every server given (each shard of ``cluster``); on an
    older fleet, what its version lacks (every step so far only adds tables and views), then its version."""
    done = []
    for client in clients:
        for statement in schema_statements(client.database, cluster):
            client.query(statement)
        version_rows = client.rows(f"SELECT max(version) FROM {client.database}.fleet_schema")
        if not version_rows or not version_rows[0][0] or int(version_rows[0][0]) < SCHEMA_VERSION:
            client.query(f"INSERT INTO {client.database}.fleet_schema VALUES ({SCHEMA_VERSION})")
        done.append(client.base)
    return done


# --- deltas as rows -------------------------------------------------------------------------------------
def _ms(ns: int) -> int:
    return ns // 1_000_000


def delta_rows(delta: ConnectionTable, site: str, sensor_id: str, delta_id: int) -> tuple[bytes, bytes]:
    """(connections, devices) as JSONEachRow bodies, with the times the sensor's own store would keep.

    A record whose last time is unknown (commands seen before its flow's first fold) carries neutral
    times: discovered far in the future and lastSeen -1 (the console shows 0 while nothing better is
    known, as a sensor does).
    """
    base = {"site": site, "sensor_id": sensor_id, "delta_id": delta_id}
    lines = []
    for (client, server), record in delta.connections.items():
        protocols = sorted(record.protocols)
        commands = [f"{name}{COMMAND_SEPARATOR}{command}" for name in protocols for command in record.protocols[name]]
        known = record.last_seen_ns >= 0
        row = {
            **base,
            "client": ip_text(client),
            "server": ip_text(server),
            "ports": sorted(record.ports),
            "protocols": protocols,
            "commands": sorted(commands),
            "discovered": _ms(record.discovered_ns) if known else 1 << 62,
            "last_seen": _ms(record.last_seen_ns) if known else -1,
            "packets": record.packets,
            "bytes": record.bytes,
            "user_agent": record.user_agent or "",
        }
        lines.append(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
    connections = "\n".join(lines).encode()
    lines = []
    for address, device in delta.devices.items():
        identity = device.identity
        known = device.last_seen_ns >= 0
        row = {
            **base,
            "ip": ip_text(address),
            "macs": sorted(device.macs),
            "roles": sorted(device.roles),
            **{column: identity.get(key) or "" for key, column in IDENTITY_KEYS.items()},
            # a sensor stores 0 for a device known only by its MAC so far (sensor.store): the same here
            "first_seen": _ms(device.first_seen_ns) if known else 0,
            "last_seen": _ms(device.last_seen_ns) if known else 0,
        }
        lines.append(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
    return connections, "\n".join(lines).encode()


def class_rows(delta: ConnectionTable, classes: dict[str, tuple], site: str, sensor_id: str) -> bytes:
    """``delta_device_classes`` rows: the delta's devices that have protocol addresses, and the devices of
    ``classes`` (``{ip: (engineering_station, scanner, authorized)}``) with their flags."""
    rows: dict[str, dict] = {}
    for address, device in delta.devices.items():
        if device.addresses:
            values = [f"{name}{COMMAND_SEPARATOR}{value}" for name in sorted(device.addresses)
                      for value in sorted(device.addresses[name])]  # fmt: skip
            rows[ip_text(address)] = {"addresses": values}
    for ip, flags in classes.items():
        rows.setdefault(ip, {}).update(zip(FLAGS, map(int, flags)))
    lines = [
        json.dumps(
            {"site": site, "sensor_id": sensor_id, "ip": ip, **dict.fromkeys(FLAGS, 0), "addresses": [], **row},
            ensure_ascii=False,
            separators=(",", ":"),
        )  # fmt: skip
        for ip, row in rows.items()
    ]
    return "\n".join(lines).encode()


def class_bits(flags: tuple) -> int:
    """(engineering_station, scanner, authorized) as bits 1, 2, 4 (what the spool notes as spooled)."""
    return sum(1 << i for i, flag in enumerate(flags) if flag)


IDENTITY_KEYS = {"vendor": "vendor", "name": "name", "type": "model", "firmware": "firmware",
                 "serial": "serial", "userAgent": "user_agent", "server": "server"}  # fmt: skip

# An alert's state only moves forward: `handled` goes false -> true once, and only an unhandled alert is
# counted on (count + 1, lastTime up) — sensor.detect. So (handled, count, lastTime) ordered that way
# is a version that grows with every change and is the same for the same state (a file shipped twice,
# a replay of the same captures), with no counter to keep: bit 63 handled, 21 bits of count
# (saturating), 42 bits of lastTime in ms (until the year 2109).
COUNT_BITS, TIME_BITS = 21, 42


def alert_version(alert: dict) -> int:
    count = min(max(int(alert.get("count") or 1), 0), (1 << COUNT_BITS) - 1)
    last = min(max(int(alert.get("lastTime") or alert.get("time") or 0), 0), (1 << TIME_BITS) - 1)
    return (int(bool(alert.get("handled"))) << 63) | (count << TIME_BITS) | last


def alert_rows(alerts, site: str, sensor_id: str) -> bytes:
    """Alerts (GET /api/v2/alerts's JSON) as JSONEachRow rows of the ``alerts`` table."""
    lines = []
    for alert in alerts:
        row = {
            "site": site,
            "sensor_id": sensor_id,
            "alert_id": alert["id"],
            "time": alert["time"],
            "title": alert["title"],
            "severity": alert["severity"],
            "source_ip": alert.get("sourceDeviceAddress") or "",
            "destination_ip": alert.get("destinationDeviceAddress") or "",
            "handled": int(bool(alert["handled"])),
            "body": json.dumps(alert, ensure_ascii=False, separators=(",", ":")),
            "version": alert_version(alert),
        }
        lines.append(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
    return "\n".join(lines).encode()


# --- the spool and the shipper -------------------------------------------------------------------------
class Spool:
    """Deltas waiting for ClickHouse: one gzip file per delta (with the alert states of its interval), named
    by its delta id, in a folder beside the DB.

    ``limit_bytes`` bounds the folder: a delta that would pass it is dropped and counted (the sensor's own
    DB still has it). The sequence file keeps the last delta id, so ids never repeat across restarts.
    ``alerts-spooled`` keeps each alert's last spooled version (a line per spooling), so a start hands
    over only the alerts whose state never reached the spool. ``classes-spooled`` does the same for the
    devices' flags (ip and the bits spooled; flags only turn on, so the bits only grow).
    """

    def __init__(self, folder: str | Path, limit_bytes: int) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.limit = limit_bytes
        self.sequence_file = self.folder / "sequence"
        self.lock = threading.Lock()
        files = self.pending()
        last_file = int(files[-1].name.split(".")[0]) if files else 0
        try:
            last_saved = int(self.sequence_file.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            last_saved = 0
        self.sequence = max(last_file, last_saved)
        self.size = sum(f.stat().st_size for f in files)
        self.dropped_deltas = 0
        self.dropped_rows = 0
        self.dropped_alerts = 0
        self.dropped_classes = 0
        for stale in self.folder.glob("*.tmp"):  # a crash mid-write: never renamed, never counted
            stale.unlink(missing_ok=True)
        self.versions_file = self.folder / "alerts-spooled"
        self.spooled_versions: dict[int, int] = self._read_versions(self.versions_file, int)
        self.classes_file = self.folder / "classes-spooled"
        self.spooled_classes: dict[str, int] = self._read_versions(self.classes_file, str)

    def pending(self) -> list[Path]:
        return sorted(self.folder.glob("*.delta.gz"))

    def add(self, delta: ConnectionTable, site: str, sensor_id: str, alerts: list[dict] = (),
            classes: dict[str, tuple] | None = None) -> int | None:  # fmt: skip
        """Write ``delta``, ``alerts`` (their JSON) and the devices' ``classes`` (``{ip: flags}``) as the next
        delta id; None (and counted) if the spool is full."""
        classes = classes or {}
        with self.lock:
            delta_id = self.sequence + 1
            connections, devices = delta_rows(delta, site, sensor_id, delta_id)
            alert_body = alert_rows(alerts, site, sensor_id)
            class_body = class_rows(delta, classes, site, sensor_id)
            # one file: the lengths of the bodies, then each (gzip: JSON rows shrink ~10x)
            header = f"{len(connections)} {len(devices)} {len(alert_body)} {len(class_body)}\n".encode()
            data = gzip.compress(header + connections + devices + alert_body + class_body, compresslevel=1)
            if self.size + len(data) > self.limit:
                self.dropped_deltas += 1
                self.dropped_rows += len(delta.connections) + len(delta.devices)
                self.dropped_alerts += len(alerts)  # never noted as spooled: a restart hands them over again
                self.dropped_classes += len(classes)  # the same
                return None
            self.sequence = delta_id
            final = self.folder / f"{delta_id:016d}.delta.gz"
            temporary = final.with_suffix(".tmp")
            with open(temporary, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, final)
            self._save_sequence()
            self.size += len(data)
            if alerts:
                self._note(self.versions_file, self.spooled_versions,
                           {alert["id"]: alert_version(alert) for alert in alerts})  # fmt: skip
            if classes:
                spooled = self.spooled_classes
                self._note(self.classes_file, spooled,
                           {ip: spooled.get(ip, 0) | class_bits(flags) for ip, flags in classes.items()})  # fmt: skip
            return delta_id

    @staticmethod
    def _read_versions(path: Path, key) -> dict:
        """``key value`` lines, the last per key (an alert id and its version; an IP and its flag bits)."""
        versions: dict = {}
        lines = 0
        try:
            with open(path) as source:
                for line in source:
                    parts = line.split()
                    if len(parts) == 2 and parts[1].isdigit() and (key is str or parts[0].isdigit()):
                        versions[key(parts[0])] = int(parts[1])  # (a torn last line: skipped)
                        lines += 1
        except FileNotFoundError:
            return versions
        if lines > 2 * len(versions) + 1000:  # mostly superseded lines: written again, one per key
            temporary = path.with_suffix(".tmp")
            temporary.write_text("".join(f"{k} {value}\n" for k, value in versions.items()))
            os.replace(temporary, path)
        return versions

    @staticmethod
    def _note(path: Path, spooled: dict, versions: dict) -> None:
        try:
            with open(path, "a") as out:
                out.write("".join(f"{key} {value}\n" for key, value in versions.items()))
        except OSError:  # only costs a resend at the next start
            pass
        spooled.update(versions)

    def _save_sequence(self) -> None:
        temporary = self.sequence_file.with_suffix(".tmp")
        temporary.write_text(str(self.sequence))
        os.replace(temporary, self.sequence_file)

    @staticmethod
    def read(path: Path) -> tuple[bytes, bytes, bytes, bytes]:
        """(connections, devices, alerts, device classes) rows; a file spooled before alerts (or classes)
        were shipped has none."""
        data = gzip.decompress(path.read_bytes())
        header, _, rest = data.partition(b"\n")
        lengths = ([int(n) for n in header.split()] + [0, 0])[:4]
        bodies, start = [], 0
        for length in lengths:
            bodies.append(rest[start : start + length])
            start += length
        return tuple(bodies)

    def remove(self, path: Path) -> None:
        with self.lock:
            size = path.stat().st_size
            path.unlink()
            self.size -= size


def _chunks(body: bytes, rows: int):
    """``body`` (rows separated by newlines) in pieces of at most ``rows`` rows."""
    if not body:
        return
    lines = body.split(b"\n")
    for start in range(0, len(lines), rows):
        yield b"\n".join(lines[start : start + rows])


ALERT_QUEUE_LIMIT = 100_000  # alerts waiting in memory for the spool's writer (one entry per alert id)
CLASS_QUEUE_LIMIT = 100_000  # devices' flags waiting in memory for it (one entry per address)


class Shipper:
    """The sensor's side of the fleet: ``submit(delta)`` from a flush, ``submit_alerts(alerts)`` and
    ``submit_classes(flags)`` after a commit return at once; a thread spools the join of the deltas of each
    ``interval`` with the latest state of each alert and each device's flags changed in it, and ships the
    spool, oldest first, retrying with backoff while ClickHouse is away."""

    def __init__(self, client: ClickHouse, site: str, sensor_id: str, spool: Spool, queue_limit: int = 64,
                 interval: float = 0.0) -> None:  # fmt: skip
        self.client, self.site, self.sensor_id, self.spool = client, site, sensor_id, spool
        self.queue: deque[ConnectionTable] = deque()
        self.alert_queue: dict[int, dict] = {}  # alert id -> its latest state, not spooled yet
        self.class_queue: dict[str, tuple] = {}  # ip -> its flags, not spooled yet
        self.queue_limit = queue_limit
        self.wake = threading.Condition()
        self._held = 0  # together() blocks in progress: the queues wait for them
        self.stopping = False
        self.shipped_deltas = 0
        self.shipped_rows = 0
        self.shipped_alerts = 0
        self.shipped_classes = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_shipped_ms: int | None = None
        self.thread = threading.Thread(target=self._run, name="fleet-shipper", daemon=True)
        self.insert_settings = {"insert_distributed_sync": 1}  # a Distributed table acks once shards have rows
        self._backoff = 0
        self._next_try = 0.0
        self.interval = interval  # seconds: the deltas submitted within one are spooled (and shipped) as one
        self._next_spool = 0.0

    def start(self) -> Shipper:
        self.thread.start()
        return self

    @contextmanager
    def together(self):
        """``with shipper.together(): store.merge(delta); shipper.submit(delta)``: the alerts and flags a
        commit hands over (its sinks run inside the merge) and its delta reach the same spool file, as the
        thread takes no queue while one is held (a flush is one file, not its delta and its classes apart).
        No lock is held meanwhile: the store's lock is taken before the shipper's by the API's writes."""
        with self.wake:
            self._held += 1
        try:
            yield self
        finally:
            with self.wake:
                self._held -= 1
                self.wake.notify()

    def submit(self, delta: ConnectionTable) -> None:
        """From the flush: never blocks on ClickHouse or on the disk."""
        if not delta.connections and not delta.devices:
            return
        with self.wake:
            if len(self.queue) >= self.queue_limit:  # the spool's writer is far behind: the bound in memory too
                self.spool.dropped_deltas += 1
                self.spool.dropped_rows += len(delta.connections) + len(delta.devices)
                return
            self.queue.append(delta)
            self.wake.notify()

    def submit_alerts(self, alerts: list[dict]) -> None:
        """After a commit (the detector's ``on_change``): alerts opened or changed, as GET /api/v2/alerts
        gives them. Never blocks; a state already spooled is skipped, a newer one replaces a queued one."""
        with self.wake:
            for alert in alerts:
                queued = alert["id"] in self.alert_queue
                if not queued and self.spool.spooled_versions.get(alert["id"]) == alert_version(alert):
                    continue
                if not queued and len(self.alert_queue) >= ALERT_QUEUE_LIMIT:
                    self.spool.dropped_alerts += 1  # handed over again at the next start (never spooled)
                    continue
                self.alert_queue[alert["id"]] = alert
            if self.alert_queue:
                self.wake.notify()

    def submit_classes(self, classes: dict[str, tuple]) -> None:
        """After a commit (the detector's ``on_classes``): ``{ip: (engineering_station, scanner, authorized)}``
        of devices whose flags may have turned on. Never blocks; flags already spooled are skipped."""
        with self.wake:
            spooled = self.spool.spooled_classes
            for ip, flags in classes.items():
                bits = class_bits(flags)
                queued = self.class_queue.get(ip)
                if queued is None and spooled.get(ip, 0) | bits == spooled.get(ip, 0):
                    continue  # nothing the spool has not had (flags only turn on)
                if queued is None and len(self.class_queue) >= CLASS_QUEUE_LIMIT:
                    self.spool.dropped_classes += 1  # handed over again at the next start (never spooled)
                    continue
                self.class_queue[ip] = tuple(map(bool, flags)) if queued is None else tuple(
                    a or b for a, b in zip(queued, flags))  # fmt: skip
            if self.class_queue:
                self.wake.notify()

    def attach(self, store) -> Shipper:
        """Ship ``store``'s alerts and devices' flags: every change from now on (the detector's change and
        class sinks), and now each alert whose state and each flag that never reached the spool (handled
        or learned while no shipper ran, raised before [fleet] was set, dropped by a full spool, set by
        the DB's upgrade)."""
        store.detector.on_change.append(self.submit_alerts)
        store.detector.on_classes.append(self.submit_classes)
        self.submit_alerts(store.alerts(2))
        self.submit_classes(store.device_flags())
        return self

    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.stopping and not self._due() and not self._spool_due():
                    self.wake.wait(self._wait_seconds())
                stopping = self.stopping
                taken, alerts, classes = [], [], {}
                if stopping or self._spool_due():
                    taken, alerts, classes = list(self.queue), list(self.alert_queue.values()), self.class_queue
                    self.queue.clear()
                    self.alert_queue, self.class_queue = {}, {}
                    self._next_spool = time.monotonic() + self.interval
            if taken or alerts or classes:
                # the deltas of one interval as one: their join (sums add), so an active pair is one row
                # per interval however often the sensor flushes
                delta = taken[0] if taken else ConnectionTable()
                if len(taken) > 1:
                    delta = ConnectionTable()
                    for part in taken:
                        delta.merge(part)
                try:
                    self.spool.add(delta, self.site, self.sensor_id, alerts, classes)
                except OSError as error:  # disk full: counted like an overflow, the DB has the data
                    self.spool.dropped_deltas += 1
                    self.spool.dropped_rows += len(delta.connections) + len(delta.devices)
                    self.spool.dropped_alerts += len(alerts)
                    self.spool.dropped_classes += len(classes)
                    self.last_error = f"spool write failed: {error}"
            if stopping:
                self._next_try = 0.0  # one last try, whatever the backoff
            try:
                self.ship_pending()
            except Exception as error:  # noqa: BLE001 — a broken spool file: say so, keep the thread alive
                self.failures += 1
                self.last_error = f"shipping failed: {type(error).__name__}: {error}"[:300]
                log.error("fleet: %s", self.last_error)
                self._next_try = time.monotonic() + BACKOFF_SECONDS[-1]
            if stopping:
                return

    def _due(self) -> bool:
        return bool(self.spool.size) and time.monotonic() >= self._next_try

    def _spool_due(self) -> bool:
        queued = self.queue or self.alert_queue or self.class_queue
        return bool(queued) and not self._held and time.monotonic() >= self._next_spool

    def _wait_seconds(self) -> float:
        now, waits = time.monotonic(), [1.0]
        if self.spool.size:
            waits.append(self._next_try - now)
        if self.queue or self.alert_queue or self.class_queue:
            waits.append(self._next_spool - now)
        return max(0.05, min(waits))

    def ship_pending(self) -> bool:
        """Ship every spooled delta in order; False at the first failure (they wait for the next try)."""
        for path in self.spool.pending():
            if time.monotonic() < self._next_try:
                return False
            try:
                self.ship_file(path)
            except FleetError as error:
                self.failures += 1
                if self.last_error != str(error):
                    log.warning("fleet: %s; deltas wait in %s", error, self.spool.folder)
                self.last_error = str(error)
                self._next_try = time.monotonic() + BACKOFF_SECONDS[min(self._backoff, len(BACKOFF_SECONDS) - 1)]
                self._backoff += 1
                return False
            if self.last_error:
                log.info("fleet: ClickHouse at %s takes deltas again", self.client.base)
            self.last_error, self._backoff, self._next_try = None, 0, 0.0
        return True

    def ship_file(self, path: Path) -> None:
        connections, devices, alerts, classes = self.spool.read(path)
        database = self.client.database
        rows = 0
        bodies = (("delta_connections", connections), ("delta_devices", devices), ("alerts", alerts),
                  ("delta_device_classes", classes))  # fmt: skip
        for table, body in bodies:
            for chunk in _chunks(body, SEND_ROWS):
                try:
                    self.client.query(f"INSERT INTO {database}.{table} FORMAT JSONEachRow", chunk,
                                      **self.insert_settings)  # fmt: skip
                except FleetError as error:
                    if table == "delta_device_classes" and table in str(error):  # a fleet of schema version 1
                        raise FleetError(f"{error} (run `otsensor fleet init` on it: fleet schema "
                                         f"{SCHEMA_VERSION} ships device classes)") from None  # fmt: skip
                    raise
                rows += chunk.count(b"\n") + 1
        self.spool.remove(path)
        self.shipped_deltas += 1
        self.shipped_rows += rows
        self.shipped_alerts += alerts.count(b"\n") + 1 if alerts else 0
        self.shipped_classes += classes.count(b"\n") + 1 if classes else 0
        self.last_shipped_ms = time.time_ns() // 1_000_000

    def close(self, timeout: float = 10.0) -> bool:
        """Spool what is queued and try to ship it within ``timeout``; True if the spool is empty after."""
        with self.wake:
            self.stopping = True
            self.wake.notify()
        self.thread.join(timeout)
        return not self.spool.pending()

    def stats(self) -> dict:
        """For /healthz and /metrics."""
        return {
            "clickhouse": self.client.base,
            "site": self.site,
            "sensorId": self.sensor_id,
            "spooledDeltas": len(self.spool.pending()),
            "spooledBytes": self.spool.size,
            "spoolLimitBytes": self.spool.limit,
            "droppedDeltas": self.spool.dropped_deltas,
            "droppedRows": self.spool.dropped_rows,
            "droppedAlerts": self.spool.dropped_alerts,
            "shippedDeltas": self.shipped_deltas,
            "shippedRows": self.shipped_rows,
            "shippedAlerts": self.shipped_alerts,
            "droppedClasses": self.spool.dropped_classes,
            "shippedClasses": self.shipped_classes,
            "failures": self.failures,
            "lastError": self.last_error,
            "lastShippedMs": self.last_shipped_ms,
        }


def start(fleet, db_path: str) -> Shipper | None:
    """The shipper for a sensor's ``[fleet]`` settings (sensor.settings.FleetSettings), or None without them.
    The spool lives beside the DB: ``<db>.fleet-spool/``."""
    if fleet is None or not fleet.clickhouse_url:
        return None
    client = ClickHouse(fleet.clickhouse_url, fleet.user, fleet.password, fleet.ca_file, fleet.timeout)
    spool = Spool(f"{db_path}.fleet-spool", int(fleet.spool_mb * 1024 * 1024))
    return Shipper(client, fleet.site, fleet.sensor_id, spool, interval=fleet.ship_interval).start()
