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
from pathlib import Path

from .connections import ConnectionTable, ip_text

log = logging.getLogger("otsensor.fleet")

SCHEMA_VERSION = 1
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
}
VIEWS = {  # view -> (target, source, select)
    "connections_state_mv": ("connections_state", "delta_connections", CONNECTIONS_VIEW),
    "connection_counts_mv": ("connection_counts", "delta_connections", COUNTS_VIEW),
    "devices_state_mv": ("devices_state", "delta_devices", DEVICES_VIEW),
    "device_pairs_mv": ("device_pairs", "delta_connections", DEVICE_PAIRS_VIEW),
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
    """`otsensor fleet init`: every table and view on every server given (each shard of ``cluster``)."""
    done = []
    for client in clients:
        for statement in schema_statements(client.database, cluster):
            client.query(statement)
        version_rows = client.rows(f"SELECT max(version) FROM {client.database}.fleet_schema")
        if not version_rows or not version_rows[0][0]:
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
    over only the alerts whose state never reached the spool.
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
        for stale in self.folder.glob("*.tmp"):  # a crash mid-write: never renamed, never counted
            stale.unlink(missing_ok=True)
        self.versions_file = self.folder / "alerts-spooled"
        self.spooled_versions: dict[int, int] = self._read_versions()

    def pending(self) -> list[Path]:
        return sorted(self.folder.glob("*.delta.gz"))

    def add(self, delta: ConnectionTable, site: str, sensor_id: str, alerts: list[dict] = ()) -> int | None:
        """Write ``delta`` and ``alerts`` (their JSON) as the next delta id; None (and counted) if the spool
        is full."""
        with self.lock:
            delta_id = self.sequence + 1
            connections, devices = delta_rows(delta, site, sensor_id, delta_id)
            alert_body = alert_rows(alerts, site, sensor_id)
            # one file: the lengths of the bodies, then each (gzip: JSON rows shrink ~10x)
            header = f"{len(connections)} {len(devices)} {len(alert_body)}\n".encode()
            data = gzip.compress(header + connections + devices + alert_body, compresslevel=1)
            if self.size + len(data) > self.limit:
                self.dropped_deltas += 1
                self.dropped_rows += len(delta.connections) + len(delta.devices)
                self.dropped_alerts += len(alerts)  # never noted as spooled: a restart hands them over again
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
                self._note_versions(alerts)
            return delta_id

    def _read_versions(self) -> dict[int, int]:
        versions: dict[int, int] = {}
        lines = 0
        try:
            with open(self.versions_file) as source:
                for line in source:
                    parts = line.split()
                    if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():  # a torn last line: skipped
                        versions[int(parts[0])] = int(parts[1])
                        lines += 1
        except FileNotFoundError:
            return versions
        if lines > 2 * len(versions) + 1000:  # mostly superseded lines: written again, one per alert
            temporary = self.versions_file.with_suffix(".tmp")
            temporary.write_text("".join(f"{key} {value}\n" for key, value in versions.items()))
            os.replace(temporary, self.versions_file)
        return versions

    def _note_versions(self, alerts: list[dict]) -> None:
        try:
            with open(self.versions_file, "a") as out:
                out.write("".join(f"{alert['id']} {alert_version(alert)}\n" for alert in alerts))
        except OSError:  # only costs a resend at the next start
            pass
        for alert in alerts:
            self.spooled_versions[alert["id"]] = alert_version(alert)

    def _save_sequence(self) -> None:
        temporary = self.sequence_file.with_suffix(".tmp")
        temporary.write_text(str(self.sequence))
        os.replace(temporary, self.sequence_file)

    @staticmethod
    def read(path: Path) -> tuple[bytes, bytes, bytes]:
        """(connections, devices, alerts) rows; a file spooled before alerts were shipped has no alerts."""
        data = gzip.decompress(path.read_bytes())
        header, _, rest = data.partition(b"\n")
        first, second, third = ([int(n) for n in header.split()] + [0])[:3]
        return rest[:first], rest[first : first + second], rest[first + second : first + second + third]

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


class Shipper:
    """The sensor's side of the fleet: ``submit(delta)`` from a flush and ``submit_alerts(alerts)`` after a
    commit return at once; a thread spools the join of the deltas of each ``interval`` with the latest
    state of each alert changed in it, and ships the spool, oldest first, retrying with backoff while
    ClickHouse is away."""

    def __init__(self, client: ClickHouse, site: str, sensor_id: str, spool: Spool, queue_limit: int = 64,
                 interval: float = 0.0) -> None:  # fmt: skip
        self.client, self.site, self.sensor_id, self.spool = client, site, sensor_id, spool
        self.queue: deque[ConnectionTable] = deque()
        self.alert_queue: dict[int, dict] = {}  # alert id -> its latest state, not spooled yet
        self.queue_limit = queue_limit
        self.wake = threading.Condition()
        self.stopping = False
        self.shipped_deltas = 0
        self.shipped_rows = 0
        self.shipped_alerts = 0
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

    def attach(self, store) -> Shipper:
        """Ship ``store``'s alerts: every change from now on (the detector's change sinks), and now each alert
        whose state never reached the spool (handled while no shipper ran, raised before [fleet] was set,
        dropped by a full spool)."""
        store.detector.on_change.append(self.submit_alerts)
        self.submit_alerts(store.alerts(2))
        return self

    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.stopping and not self._due() and not self._spool_due():
                    self.wake.wait(self._wait_seconds())
                stopping = self.stopping
                taken, alerts = [], []
                if stopping or self._spool_due():
                    taken, alerts = list(self.queue), list(self.alert_queue.values())
                    self.queue.clear()
                    self.alert_queue = {}
                    self._next_spool = time.monotonic() + self.interval
            if taken or alerts:
                # the deltas of one interval as one: their join (sums add), so an active pair is one row
                # per interval however often the sensor flushes
                delta = taken[0] if taken else ConnectionTable()
                if len(taken) > 1:
                    delta = ConnectionTable()
                    for part in taken:
                        delta.merge(part)
                try:
                    self.spool.add(delta, self.site, self.sensor_id, alerts)
                except OSError as error:  # disk full: counted like an overflow, the DB has the data
                    self.spool.dropped_deltas += 1
                    self.spool.dropped_rows += len(delta.connections) + len(delta.devices)
                    self.spool.dropped_alerts += len(alerts)
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
        return bool(self.queue or self.alert_queue) and time.monotonic() >= self._next_spool

    def _wait_seconds(self) -> float:
        now, waits = time.monotonic(), [1.0]
        if self.spool.size:
            waits.append(self._next_try - now)
        if self.queue or self.alert_queue:
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
        connections, devices, alerts = self.spool.read(path)
        database = self.client.database
        rows = 0
        for table, body in (("delta_connections", connections), ("delta_devices", devices), ("alerts", alerts)):
            for chunk in _chunks(body, SEND_ROWS):
                self.client.query(f"INSERT INTO {database}.{table} FORMAT JSONEachRow", chunk, **self.insert_settings)
                rows += chunk.count(b"\n") + 1
        self.spool.remove(path)
        self.shipped_deltas += 1
        self.shipped_rows += rows
        self.shipped_alerts += alerts.count(b"\n") + 1 if alerts else 0
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
