"""Schema upgrades: a DB written by every earlier released schema opens under this code with its data and ids."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from sensor.migrations import SCHEMA_VERSION, STEPS
from sensor.store import Store, StoreError

DATA = Path(__file__).parent / "data"
# Made by commit 2675fa4 (schema 1): `otsensor replay pcaps/*.pcap* --db schema_v1.duckdb` and one token
# `otsensor token create --name v1-token` (kept in schema_v1.token so the test can use it).  Version 2 the
# same way by commit a646dc3 (main before alerts), with the token v2-token (schema_v2.token).
V1_FILES = {1: "schema_v1.duckdb.gz", 2: "schema_v2.duckdb.gz"}


def unpacked(tmp_path: Path, version: int) -> Path:
    target = tmp_path / f"schema_v{version}.duckdb"
    with gzip.open(DATA / V1_FILES[version]) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out)
    return target


def snapshot(path: Path) -> dict:
    db = duckdb.connect(str(path), read_only=True)
    try:
        return {
            "devices": db.execute(
                "SELECT id, ip, macs, vendor, name, first_seen, last_seen FROM devices ORDER BY id"
            ).fetchall(),
            "connections": db.execute(
                "SELECT first_device_id, second_device_id, ports, to_json(protocols)::VARCHAR, discovered, last_seen, "
                "packets, bytes FROM connections ORDER BY 1, 2"
            ).fetchall(),
            "tokens": db.execute("SELECT name, hash FROM tokens ORDER BY name").fetchall(),
        }
    finally:
        db.close()


def test_every_released_schema_has_a_file_to_upgrade_from():
    assert set(V1_FILES) == {version for version, _ in STEPS[:-1]} | {1}


@pytest.mark.parametrize("version", sorted(V1_FILES))
def test_an_older_db_is_upgraded_in_place_keeping_data_and_ids(tmp_path, version):
    path = unpacked(tmp_path, version)
    before = snapshot(path)
    assert before["devices"] and before["connections"] and before["tokens"]
    store = Store(path)
    try:  # the token made under the old schema still opens the API
        from api import create_app

        token = (DATA / f"schema_v{version}.token").read_text().strip()
        client = create_app(store, {"rate_limit": 0}).test_client()
        assert client.get("/api/v1/devices", headers={"Authorization": token}).status_code == 200
        assert client.get("/api/v1/devices", headers={"Authorization": token + "x"}).status_code == 401
    finally:
        store.close()
    after = snapshot(path)
    assert after == before
    db = duckdb.connect(str(path), read_only=True)
    assert db.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
    # the new device ids continue after the old ones
    out = subprocess.run(
        [sys.executable, "-m", "sensor.cli", "devices", "--db", str(path)], capture_output=True, text=True, check=True
    )
    ids = [device["id"] for device in json.loads(out.stdout)]
    assert ids == [row[0] for row in before["devices"]]


def test_a_newer_schema_is_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "future.duckdb"
    Store(path).close()
    db = duckdb.connect(str(path))
    db.execute("UPDATE schema_version SET version = ?", [SCHEMA_VERSION + 1])
    db.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        Store(path)
