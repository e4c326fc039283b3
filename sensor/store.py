"""The DuckDB store: versioned schema, batched semilattice merges of connection-table deltas, and queries.

Owns every SQL statement and the JSON that lists are served as (built inside DuckDB); never decodes packets.
One process owns the file: DuckDB refuses a second writer, which surfaces here as :class:`StoreBusy`.

Reads never hold a transaction: :meth:`Store.cursor` reads every result to the end at once. A DuckDB result
read with ``fetchone()`` stays open, and with it the read transaction, until the next statement on that
cursor, and a thread's cursor may idle for hours (the API's server threads, the main thread after the
metrics collector counted rows once). One such transaction pins every row version written after it began:
no checkpoint can run (the ``.wal`` grows by every flush, a restart replays all of it) and DuckDB keeps
every flush's old versions in memory. After a write the WAL is checkpointed once it passes
``CHECKPOINT_BYTES`` (DuckDB does it on commit; if that was skipped, an explicit CHECKPOINT follows, and a
failing one is reported as :attr:`Store.checkpoint_problem`).
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from json.encoder import encode_basestring_ascii as _quote  # json.dumps's own (ensure_ascii)
from pathlib import Path

import duckdb

from . import serialize
from .connections import ConnectionTable, ip_text
from .detect import Changes, Detector, addresses_json, device_flags, insert_columns
from .migrations import SchemaTooNew, upgrade
from .oui import vendor as oui_vendor

PROTOCOLS_TYPE = '[{"name":"VARCHAR","commands":["VARCHAR"]}]'
IDENTITY_COLUMNS = ("vendor", "name", "model", "firmware", "serial", "user_agent", "server")
FIRMWARE_COLUMNS = ("model", "firmware")  # a change of either is a "Firmware change"
IDENTITY_KEYS = {"vendor": "vendor", "name": "name", "type": "model", "firmware": "firmware",
                 "serial": "serial", "userAgent": "user_agent", "server": "server"}  # fmt: skip


class StoreError(Exception):
    """The DB cannot be used (held by another process, not a DuckDB file, newer schema, disk full)."""


class StoreBusy(StoreError):
    pass


class NotServed(StoreError):
    """What this store does not offer (the fleet console's: handling an alert, its pcap, events)."""


CHECKPOINT_BYTES = 16 << 20  # DuckDB's wal_autocheckpoint, set explicitly: the WAL stays near this size
DEFAULT_MEMORY_MB = 512  # DuckDB's memory_limit (its own default is 80 % of the machine's memory)
DEFAULT_THREADS = 2  # DuckDB's threads (its own default is one per core, taken from the capture workers)


def _ms(ns: int) -> int:
    return ns // 1_000_000


class Store:
    def __init__(
        self,
        path: str | Path,
        read_only: bool = False,
        detector: Detector | None = None,
        memory_mb: int = DEFAULT_MEMORY_MB,
        threads: int = DEFAULT_THREADS,
    ) -> None:
        self.path = str(path)
        new = not os.path.exists(self.path)  # (False where this user may not look, as DuckDB then fails)
        self.detector = detector or Detector()  # alerts and events of each merge (sensor/detect.py)
        self.checkpoint_problem: str | None = None  # the last explicit CHECKPOINT's failure, until one works
        config = {"memory_limit": f"{memory_mb}MiB", "threads": threads, "wal_autocheckpoint": f"{CHECKPOINT_BYTES}B"}
        try:
            self.db = duckdb.connect(self.path, read_only=read_only, config=config)
        except duckdb.Error as error:
            if new and os.path.isfile(self.path) and not os.path.getsize(self.path):
                os.unlink(self.path)  # DuckDB made it and could not write it (a full disk): not a DB
            if isinstance(error, duckdb.IOException) and "Conflicting lock" in str(error):  # not in the path
                raise StoreBusy(f"{self.path} is held by another process (DuckDB allows one writer)") from None
            raise _failure(f"cannot open {self.path}", error) from None
        self._lock = threading.Lock()  # one writer at a time inside this process
        self._local = threading.local()
        self._file_open = False  # inside ingesting(): merges join the file's transaction
        self._unpublished: list[int] = []  # alerts opened inside it, told to the sinks after its commit
        self._unpublished_changes: list[int] = []  # open alerts counted on inside it (detector.updated)
        self._unpublished_flags: list[int] = []  # devices whose flags may have turned on inside it
        self.edits = 0  # bumped by writes outside merges (handling an alert): part of the API's data generation
        if not read_only:
            self._migrate()

    def _migrate(self) -> None:
        """Create the schema in a new file, or upgrade an older one in place (one transaction per step)."""
        try:
            upgrade(self.db, self.transaction, self.path)
        except SchemaTooNew as error:
            raise StoreError(str(error)) from None
        except duckdb.Error as error:
            raise _failure(f"cannot upgrade {self.path}", error) from None

    def cursor(self) -> ReadCursor:
        """A cursor for the calling thread (DuckDB connections are not shared across threads) whose results
        are read to the end at once, so that no transaction stays open after a statement (module docstring)."""
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._local.cursor = ReadCursor(self.db.cursor())
        return cursor

    def wal_bytes(self) -> int:
        try:
            return Path(self.path + ".wal").stat().st_size
        except FileNotFoundError:
            return 0

    def checkpoint_if_due(self) -> None:
        """CHECKPOINT when the WAL has passed CHECKPOINT_BYTES (DuckDB's own checkpoint on commit was
        skipped); a failure is kept in checkpoint_problem, not raised: the data is safe in the WAL."""
        if self.wal_bytes() <= CHECKPOINT_BYTES:
            self.checkpoint_problem = None
            return
        try:
            self.db.execute("CHECKPOINT")
        except duckdb.Error as error:
            reason = " ".join(str(error).split())[:200]  # DuckDB's text may list transactions over lines
            self.checkpoint_problem = f"cannot checkpoint {self.path} ({self.wal_bytes() >> 20} MiB of WAL): {reason}"
        else:
            self.checkpoint_problem = None

    def transaction(self):
        return _Transaction(self.db)

    def close(self) -> None:
        self._local = threading.local()  # drop this thread's cursor before the connection
        try:
            self.db.close()  # a checkpoint: it writes
        except duckdb.Error as error:
            raise _failure(f"closing {self.path} failed", error) from None

    @contextmanager
    def writing(self) -> Iterator[None]:
        """DuckDB's failures inside (a full disk, a read-only file) as one StoreError line."""
        try:
            yield
        except duckdb.Error as error:
            raise _failure(f"writing to {self.path} failed", error) from None

    # -- writing ----------------------------------------------------------------------------------

    def merge(self, delta: ConnectionTable) -> None:
        """Join a delta into the DB in one transaction: nothing of it is written, or all of it — its
        events and alerts included; new alerts go to the detector's sinks once it is committed."""
        if not delta.devices and not delta.connections:
            return
        with self._lock:
            try:
                with nullcontext() if self._file_open else self.transaction():
                    changes = Changes(learning_end=self.detector.learning_end(self.db, delta))
                    ids = self._merge_devices(delta, changes)
                    self._merge_connections(delta, ids, changes)
                    opened = self.detector.detect(self.db, delta, ids, changes)
            except duckdb.Error as error:
                raise _failure(f"writing to {self.path} failed", error) from None
            if self._file_open:
                self._unpublished.extend(opened)  # told once the file's transaction has committed
                self._unpublished_changes.extend(self.detector.updated)
                self._unpublished_flags.extend(changes.flagged)
            else:
                self.detector.publish(self.db, opened, self.detector.updated, changes.flagged)
                self.checkpoint_if_due()  # (inside a file's transaction: at its end, in ingesting())

    def learning_end_ns(self, first_ns: int | None = None) -> int | None:
        """Packet time (ns) at which learning ends; None before the DB saw a packet, unless ``first_ns``
        (the first packet of a replay) starts it."""
        with self._lock:
            row = self.db.execute("SELECT first_packet FROM learning").fetchone()
            if row is None:
                if first_ns is None:
                    return None
                row = (first_ns // 1_000_000,)
                self.db.execute("INSERT INTO learning VALUES (?)", list(row))
        return (row[0] + self.detector.learning_ms) * 1_000_000

    def handle_alert(self, alert_id: int, learn: bool = False) -> bool:
        """PUT /api/v1/alerts/<id>: handled (and learned); False if there is no such alert."""
        import time

        from .detect import handle

        with self._lock:
            self.edits += 1  # before and after: a reader mid-write never keeps a stale rendering
            flagged: list[int] = []  # the device learned, if any: its flag to the class sinks
            try:
                with self.transaction():
                    found = handle(self.db, alert_id, learn, time.time_ns() // 1_000_000, flagged)
            except duckdb.Error as error:
                raise _failure(f"writing to {self.path} failed", error) from None
            finally:
                self.edits += 1
            if found:  # the change sinks: handled on the fleet too (and, learned, its device authorized)
                self.detector.publish(self.db, [], [alert_id], flagged)
            return found

    def _merge_devices(self, delta: ConnectionTable, changes: Changes) -> dict[bytes, int]:
        db = self.db
        addresses = {ip_text(address): address for address in delta.devices}
        texts = list(addresses)
        existing = {
            row[1]: row
            for row in db.execute(
                "SELECT id, ip, macs, roles, vendor, name, model, firmware, serial, user_agent, server, "
                "first_seen, last_seen, engineering_station, scanner, authorized, addresses "
                "FROM devices WHERE ip IN (SELECT unnest($1))",
                [texts],
            ).fetchall()
        }
        new = [text for text in texts if text not in existing]
        fresh_ids = []
        if new:
            fresh_ids = [r[0] for r in db.execute("SELECT nextval('device_ids') FROM range($1)", [len(new)]).fetchall()]
        new_ids = dict(zip(new, fresh_ids))
        names = ("id", "ip", "macs", "roles", "vendor", "mac_vendor", *IDENTITY_COLUMNS[1:], "first", "last",
                 "engineering", "scanner", "authorized", "addresses")  # fmt: skip
        columns: dict[str, list] = {name: [] for name in names}
        ids: dict[bytes, int] = {}
        for text, address in addresses.items():
            device = delta.devices[address]
            identity = {IDENTITY_KEYS[k]: v for k, v in device.identity.items() if k in IDENTITY_KEYS}
            first, last = _ms(device.first_seen_ns), _ms(device.last_seen_ns)
            macs, roles = set(device.macs), set(device.roles)
            row = existing.get(text)
            if row is None:
                device_id = new_ids[text]
            else:
                device_id = row[0]
                macs.update(row[2])
                roles.update(row[3])
                for column, value in zip(IDENTITY_COLUMNS, row[4:11]):
                    new = identity.get(column)
                    if column in FIRMWARE_COLUMNS and value is not None and new is not None and new != value:
                        changes.identity.append((device_id, column, value, new, max(last, row[12])))
                    if value is not None and (column not in identity or value > identity[column]):
                        identity[column] = value
                first, last = min(first, row[11]), max(last, row[12])
            if last < 0:  # known only by its MAC so far: seen when its flows are folded
                first = last = 0 if row is None else row[12]
            if row is None and last > 0:
                changes.new_devices.append((device_id, first))
            ids[address] = device_id
            changes.ip_of[device_id] = text
            columns["id"].append(device_id)
            columns["ip"].append(text)
            columns["macs"].append(sorted(macs))
            columns["roles"].append(sorted(roles))
            for column in IDENTITY_COLUMNS:
                columns[column].append(identity.get(column))
            columns["mac_vendor"].append(next(filter(None, map(oui_vendor, sorted(macs))), None))
            columns["first"].append(first)
            columns["last"].append(last)
            # a device first seen during learning is authorized (the baseline)
            flags = (False, False, first < changes.learning_end) if row is None else row[13:16]
            if row is None and flags[2]:
                changes.flagged.append(device_id)
            columns["engineering"].append(flags[0])
            columns["scanner"].append(flags[1])
            columns["authorized"].append(flags[2])
            columns["addresses"].append(addresses_json(device.addresses, None if row is None else row[16]))
        if existing:
            db.execute("DELETE FROM devices WHERE ip IN (SELECT unnest($1))", [list(existing)])
        insert_columns(
            db,
            "INSERT INTO devices SELECT * FROM (SELECT "
            + ", ".join(f"unnest(${i + 1})" for i in range(len(columns)))
            + ")",
            list(columns.values()),
        )
        return ids

    def _merge_connections(self, delta: ConnectionTable, ids: dict[bytes, int], changes: Changes) -> None:
        if not delta.connections:
            return
        db = self.db
        keys = [(ids[client], ids[server]) for client, server in delta.connections]
        firsts, seconds = [k[0] for k in keys], [k[1] for k in keys]
        db.execute(
            "CREATE OR REPLACE TEMP TABLE delta_keys AS SELECT unnest($1) AS f, unnest($2) AS s", [firsts, seconds]
        )
        existing = {
            (row[0], row[1]): row
            for row in db.execute(
                "SELECT c.first_device_id, c.second_device_id, c.ports, to_json(c.protocols)::VARCHAR, "
                "c.discovered, c.last_seen, c.packets, c.bytes, c.user_agent FROM connections c "
                "JOIN delta_keys k ON c.first_device_id = k.f AND c.second_device_id = k.s"
            ).fetchall()
        }
        columns: dict[str, list] = {n: [] for n in ("f", "s", "ports", "protocols", "d", "l", "p", "b", "ua")}
        for key, record in zip(keys, delta.connections.values()):
            row = existing.get(key)
            if row is None:
                ports, protocols = record.ports, record.protocols
                discovered, last_seen = _ms(record.discovered_ns), _ms(record.last_seen_ns)
                packets, size, user_agent = record.packets, record.bytes, record.user_agent
                if last_seen < 0:  # commands recorded before the flow's first fold: times come with it
                    discovered = last_seen = 0
                else:
                    changes.new_pairs.append((key[0], key[1], discovered))
                    changes.new_targets.append((key[0], key[1], len(ports), discovered, last_seen, packets))
            else:
                ports = set(record.ports) | set(row[2])
                protocols = {name: set(commands) for name, commands in record.protocols.items()}
                known = {entry["name"]: set(entry["commands"]) for entry in json.loads(row[3])}
                time = _ms(record.discovered_ns) if record.last_seen_ns >= 0 else row[5]
                for name, commands in protocols.items():
                    for command in sorted(commands - known.get(name, set())):
                        changes.new_commands.append((key[0], key[1], name, command, time))
                for name, commands in known.items():
                    protocols.setdefault(name, set()).update(commands)
                new_ports = len(record.ports - set(row[2]))
                if new_ports and record.last_seen_ns >= 0:
                    changes.new_targets.append(
                        (key[0], key[1], new_ports, _ms(record.discovered_ns), _ms(record.last_seen_ns), record.packets)
                    )
                discovered = min(_ms(record.discovered_ns), row[4])
                last_seen = max(_ms(record.last_seen_ns), row[5])
                packets, size, user_agent = record.packets + row[6], record.bytes + row[7], record.user_agent
                if row[8] and (user_agent is None or row[8] > user_agent):
                    user_agent = row[8]
            columns["f"].append(key[0])
            columns["s"].append(key[1])
            columns["ports"].append(sorted(ports))
            columns["protocols"].append(_protocols_json(protocols))
            columns["d"].append(discovered)
            columns["l"].append(last_seen)
            columns["p"].append(packets)
            columns["b"].append(size)
            columns["ua"].append(user_agent)
        if existing:
            db.execute(
                "DELETE FROM connections WHERE (first_device_id, second_device_id) IN (SELECT (f, s) FROM delta_keys)"
            )
        insert_columns(
            db,
            f"""INSERT INTO connections SELECT f, s, ports, from_json(protocols, '{PROTOCOLS_TYPE}'), d, l, p, b, ua
            FROM (SELECT unnest($1) f, unnest($2) s, unnest($3) ports, unnest($4) protocols, unnest($5) d,
                  unnest($6) l, unnest($7) p, unnest($8) b, unnest($9) ua)""",
            list(columns.values()),
        )
        db.execute("DROP TABLE delta_keys")

    # -- files replay has ingested (schema version 2) ---------------------------------------------

    def ingested(self, digest: str) -> tuple[str, int] | None:
        """(path, epoch ms) under which the file with this SHA-256 was ingested, or None."""
        return self.cursor().execute("SELECT path, ingested FROM ingested_files WHERE digest = ?", [digest]).fetchone()

    def ingested_size(self, size: int) -> bool:
        """Whether a file of this many bytes was ingested (if not, a file of that size is not one of them)."""
        return self.cursor().execute("SELECT 1 FROM ingested_files WHERE size = ?", [size]).fetchone() is not None

    @contextmanager
    def ingesting(self, path: str, size: int, digest) -> Iterator[dict]:
        """One transaction for one file (replay's, from one thread): every merge() inside and the file's
        digest commit together, or nothing does (an exception, a SIGKILL), so the DB holds a file's data
        exactly when it lists its digest.  ``digest()`` is called at the end (it may still be being
        computed); the caller sets the yielded dict's "packets"."""
        record = {"packets": 0}
        try:
            with self.transaction():
                self._file_open = True
                try:
                    yield record
                finally:
                    self._file_open = False
                self.db.execute(
                    "INSERT OR REPLACE INTO ingested_files VALUES (?, ?, ?, ?, ?)",
                    [digest(), path, size, record["packets"], int(time.time() * 1000)],
                )
        except duckdb.Error as error:
            raise _failure(f"writing to {self.path} failed", error) from None
        finally:
            opened, self._unpublished = self._unpublished, []
            changed, self._unpublished_changes = self._unpublished_changes, []
            flagged, self._unpublished_flags = self._unpublished_flags, []
        self.detector.publish(self.db, opened, changed, flagged)  # only alerts of a committed file reach a SIEM
        self.checkpoint_if_due()

    # -- reading: what the API calls (sensor.console.ClickHouseStore answers the same over the fleet) --

    def connections_json(self, where=None, now_ms: int | None = None) -> str:
        return serialize.connections_json(self.cursor(), where or serialize.ConnectionFilter(), now_ms)

    def device_connections(self) -> serialize.DeviceConnections:
        """Every device's connections list at once (what the API renders per data generation)."""
        return serialize.device_connections(self.cursor())

    def connection_detail(self, first_id: int, second_id: int) -> dict | None:
        return serialize.connection_detail(self.cursor(), first_id, second_id)

    def devices(self, where=None) -> list[dict]:
        return serialize.devices(self.cursor())

    def device(self, device_id: int) -> dict | None:
        return serialize.device(self.cursor(), device_id)

    def alerts(self, version: int = 1, where=None, ids: list[int] | None = None, scope=None) -> list[dict]:
        """GET /api/v1/alerts and v2 (``scope``: the console's site and sensor filters; a sensor ignores it)."""
        return serialize.alerts(self.cursor(), version, where or serialize.AlertFilter(), ids)

    def device_flags(self) -> dict[str, tuple[bool, bool, bool]]:
        """``{ip: (engineering_station, scanner, authorized)}`` of every device with a flag set (the fleet
        shipper's start hands over those that never reached its spool)."""
        return device_flags(self.cursor())

    def alert_pcap(self, alert_id: int) -> bytes | None:
        return serialize.alert_pcap(self.cursor(), alert_id)

    def events(self, minutes: int | None = None, type: str | None = None) -> list[dict]:
        return serialize.events(self.cursor(), minutes, type)

    def counts(self) -> tuple[int, int]:
        cursor = self.cursor()
        devices = cursor.execute("SELECT count(*) FROM devices").fetchone()[0]
        connections = cursor.execute("SELECT count(*) FROM connections").fetchone()[0]
        return devices, connections


def existing_db(path: str) -> str:
    """The path of a DB that exists, for the commands that read one (only replay, run and demo make one)."""
    try:
        if stat.S_ISREG(os.stat(path).st_mode):
            return path
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as error:
        raise StoreError(f"cannot open {path}: {error.strerror or error}") from None
    raise StoreError(f"no such DB: {path} (make one with `otsensor replay PATH --db {path}`)")


def _failure(doing: str, error: duckdb.Error) -> StoreError:
    """One line for the CLI, a full disk said plainly (DuckDB's message may span lines)."""
    text = " ".join(str(error).split())
    if "No space left on device" in text:
        return StoreError(f"{doing}: no space left on device ({text})")
    return StoreError(f"{doing}: {text}")


def _protocols_json(protocols: dict) -> str:
    """``[{"name": ..., "commands": [...]}, ...]`` sorted by name and command, as DuckDB reads it back:
    what ``json.dumps`` gives, written with its own string encoder (half the time for the bench mix's
    12,091 connections: ~10 ms less per first merge, which pays for part of detection's cost)."""
    if not protocols:  # TLS, DNS and the like: no protocol the sensor names
        return "[]"
    entries = (
        f'{{"name": {_quote(name)}, "commands": [{", ".join(map(_quote, sorted(protocols[name])))}]}}'
        for name in sorted(protocols)
    )
    return "[" + ", ".join(entries) + "]"


class ReadCursor:
    """A DuckDB cursor whose ``execute`` reads the whole result (``fetchall``) before it returns: the
    statement's transaction has ended by then. ``fetchone``/``fetchall`` then hand out those rows."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection) -> None:
        self._cursor = cursor
        self._rows: list = []
        self._next = 0

    def execute(self, sql: str, parameters=None) -> ReadCursor:
        result = self._cursor.execute(sql, parameters) if parameters is not None else self._cursor.execute(sql)
        self._rows, self._next = result.fetchall(), 0
        return self

    def fetchone(self):
        if self._next >= len(self._rows):
            return None
        row = self._rows[self._next]
        self._next += 1
        if self._next == len(self._rows):  # a served JSON document is not kept until the next request
            self._rows, self._next = [], 0
        return row

    def fetchall(self) -> list:
        rows, self._rows, self._next = self._rows[self._next :], [], 0
        return rows


class _Transaction:
    def __init__(self, db: duckdb.DuckDBPyConnection) -> None:
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN TRANSACTION")
        return self.db

    def __exit__(self, kind, value, traceback):
        if kind is None:
            self.db.execute("COMMIT")
        else:
            try:
                self.db.execute("ROLLBACK")
            except duckdb.Error:
                pass
        return False
