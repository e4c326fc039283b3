"""The DB schema as ordered steps: version 1 is the schema as first released, each later step upgrades the one before.

Owns every CREATE/ALTER; a file of any earlier version is upgraded in place, step by step, each step in one
transaction with its new version number (a crash between steps leaves a consistent, older version). A file of
a newer version than this code knows is refused. Add a step at the end; never edit a released step.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

# Version 1 (2026-11): devices, connections, tokens.
V1 = [
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "CREATE SEQUENCE device_ids START 1",
    """CREATE TABLE devices (
        id BIGINT NOT NULL, ip VARCHAR NOT NULL, macs VARCHAR[] NOT NULL, roles VARCHAR[] NOT NULL,
        vendor VARCHAR, mac_vendor VARCHAR, name VARCHAR, model VARCHAR, firmware VARCHAR, serial VARCHAR,
        user_agent VARCHAR, server VARCHAR, first_seen BIGINT NOT NULL, last_seen BIGINT NOT NULL)""",
    """CREATE TABLE connections (
        first_device_id BIGINT NOT NULL, second_device_id BIGINT NOT NULL, ports INTEGER[] NOT NULL,
        protocols STRUCT(name VARCHAR, commands VARCHAR[])[] NOT NULL,
        discovered BIGINT NOT NULL, last_seen BIGINT NOT NULL, packets BIGINT NOT NULL,
        bytes BIGINT NOT NULL, user_agent VARCHAR)""",
    """CREATE TABLE tokens (
        name VARCHAR NOT NULL, hash VARCHAR NOT NULL, created BIGINT NOT NULL, expires BIGINT,
        revoked BIGINT)""",
    # per-device lookups filter on either side (the API's /devices/<id>/connections)
    "CREATE INDEX connections_first ON connections (first_device_id)",
    "CREATE INDEX connections_second ON connections (second_device_id)",
    "CREATE INDEX devices_id ON devices (id)",
    "INSERT INTO schema_version VALUES (1)",
]

# (version, statements): applied in order to a file whose version is lower.
STEPS: list[tuple[int, list[str]]] = [
    (1, V1),
    # 2: what `replay` has ingested (a content digest per file), so the same file twice changes nothing.
    (
        2,
        [
            """CREATE TABLE ingested_files (
        digest VARCHAR NOT NULL PRIMARY KEY, path VARCHAR NOT NULL, size BIGINT NOT NULL, packets BIGINT NOT NULL,
        ingested BIGINT NOT NULL)"""
        ],
    ),
    # 3: alerts and events (CONTRACT section 4), the device classification and the learning state.
    (
        3,
        [
            "CREATE SEQUENCE alert_ids START 1",
            """CREATE TABLE alerts (
        id BIGINT NOT NULL PRIMARY KEY, time BIGINT NOT NULL, last_time BIGINT NOT NULL, title VARCHAR NOT NULL,
        message VARCHAR NOT NULL, severity VARCHAR NOT NULL, engine VARCHAR NOT NULL,
        source_device BIGINT, destination_device BIGINT, description VARCHAR NOT NULL,
        information VARCHAR[] NOT NULL, remediation VARCHAR[] NOT NULL, handled BOOLEAN NOT NULL,
        count BIGINT NOT NULL, dedup_key VARCHAR NOT NULL, pcap BLOB)""",
            "CREATE INDEX alerts_dedup ON alerts (dedup_key)",
            # every occurrence counted on an alert, by a key of its own: a delta merged twice, or the
            # same capture replayed again, counts nothing twice
            "CREATE TABLE alert_occurrences (key VARCHAR NOT NULL PRIMARY KEY, alert_id BIGINT NOT NULL)",
            """CREATE TABLE events (
        id BIGINT NOT NULL, timestamp BIGINT NOT NULL, type VARCHAR NOT NULL, title VARCHAR NOT NULL,
        severity VARCHAR NOT NULL, owner VARCHAR NOT NULL, content VARCHAR NOT NULL)""",
            # no index: a first merge writes thousands of events, reads scan (zone maps on timestamp)
            # what handleAndLearn made authorized: (alert title, source, destination, command)
            """CREATE TABLE learned (
        title VARCHAR NOT NULL, source_device BIGINT, destination_device BIGINT, command VARCHAR NOT NULL)""",
            # the first packet time (ms) the DB ever saw: learning lasts learning_hours from it
            "CREATE TABLE learning (first_packet BIGINT NOT NULL)",
            "DROP INDEX devices_id",  # DuckDB alters no table an index depends on
            "ALTER TABLE devices ADD COLUMN engineering_station BOOLEAN NOT NULL DEFAULT false",
            "ALTER TABLE devices ADD COLUMN scanner BOOLEAN NOT NULL DEFAULT false",
            "ALTER TABLE devices ADD COLUMN authorized BOOLEAN NOT NULL DEFAULT false",
            "ALTER TABLE devices ADD COLUMN addresses VARCHAR NOT NULL DEFAULT '{}'",  # JSON: protocol -> [..]
            # A DB from before alerts: what it holds is the baseline, and learning runs from its first packet.
            "UPDATE devices SET authorized = true",
            "INSERT INTO learning SELECT min(first_seen) FROM devices WHERE first_seen > 0 HAVING count(*) > 0",
            "CREATE INDEX devices_id ON devices (id)",
        ],
    ),
]
SCHEMA_VERSION = STEPS[-1][0]


class SchemaTooNew(Exception):
    """The file was written by a newer otsensor."""


def version_of(db: duckdb.DuckDBPyConnection) -> int:
    """The file's schema version; 0 for a file without otsensor's tables."""
    tables = {row[0] for row in db.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if "schema_version" not in tables:
        return 0
    return db.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0


def upgrade(db: duckdb.DuckDBPyConnection, transaction: Callable, path: str) -> int:
    """Bring the file to SCHEMA_VERSION; returns the version it had (0: new)."""
    found = version_of(db)
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(f"{path} has schema version {found}; this otsensor knows up to {SCHEMA_VERSION}")
    for version, statements in STEPS:
        if version <= found:
            continue
        with transaction():
            for statement in statements:
                db.execute(statement)
            if version > 1:
                db.execute("UPDATE schema_version SET version = ?", [version])
    return found
