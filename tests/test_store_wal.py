"""A daemon that runs for months: the DB's WAL is checkpointed under constant flushes, whatever the API's
threads have read, and DuckDB's memory and threads are the configured ones.

The checkpoint threshold is lowered to 256 KiB here (DuckDB's ``wal_autocheckpoint`` and the store's own
``CHECKPOINT_BYTES``) so that a few small flushes cross it; the daemon ships with 16 MiB.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sensor import serialize
from sensor import store as store_module
from sensor.connections import ConnectionTable
from sensor.store import Store

ROOT = Path(__file__).resolve().parent.parent
THRESHOLD = 256 << 10
CONNECTIONS = 2_000
WAL_BOUND = 4 * THRESHOLD  # the threshold, plus what the writes after the last checkpoint add


def delta(flush: int, connections: int = CONNECTIONS) -> ConnectionTable:
    """The same connections every flush (as a steady plant gives: each flush rewrites all their rows, 2
    packets each), and one new device a flush (its id is drawn from the DB's sequence)."""
    table = ConnectionTable()
    now = time.time_ns()
    for i in range(connections):
        client, server = bytes([10, 1, i >> 8, i & 255]), bytes([10, 2, 0, i % 50])
        record = table.connection(client, server)
        record.ports.add(502)
        record.protocols.setdefault("modbus", set()).add("Read Holding Registers")
        record.discovered_ns, record.last_seen_ns = now, now + flush * 1_000_000
        record.packets, record.bytes = 2, 120
    newcomer = table.connection(bytes([10, 9, flush >> 8, flush & 255]), bytes([10, 2, 0, 1]))
    newcomer.discovered_ns = newcomer.last_seen_ns = now
    newcomer.packets, newcomer.bytes = 1, 60
    table.derive_devices()
    return table


def wal_bytes(path: Path) -> int:
    wal = path.with_name(path.name + ".wal")
    return wal.stat().st_size if wal.exists() else 0


def low_threshold(store: Store, monkeypatch) -> None:
    store.db.execute(f"SET wal_autocheckpoint = '{THRESHOLD}B'")
    monkeypatch.setattr(store_module, "CHECKPOINT_BYTES", THRESHOLD, raising=False)


def test_an_idle_api_thread_does_not_stop_checkpoints(tmp_path, monkeypatch):
    """An API thread reads as a request does (serialize's fetchone, a /healthz count) and then idles, as
    the server's threads do between requests; meanwhile every flush rewrites the same rows."""
    path = tmp_path / "sensor.duckdb"
    store = Store(path)
    low_threshold(store, monkeypatch)
    store.merge(delta(0))
    read, release = threading.Event(), threading.Event()

    def api_thread() -> None:
        cursor = store.cursor()
        serialize.connections_json(cursor)  # GET /api/v1/connections
        store.counts()  # GET /healthz
        read.set()
        release.wait(60)  # idle, its cursor kept: the next request would reuse it

    thread = threading.Thread(target=api_thread)
    thread.start()
    try:
        assert read.wait(30)
        largest = 0
        for flush in range(1, 31):
            store.merge(delta(flush))
            largest = max(largest, wal_bytes(path))
            if flush % 10 == 0:  # another reader, in this thread, between flushes
                assert json_count(serialize.connections_json(store.cursor())) == CONNECTIONS + flush + 1
        assert largest < WAL_BOUND, f"the WAL reached {largest:,} bytes: it is not being checkpointed"
        assert store.checkpoint_problem is None
        # the DB file alone (what a checkpoint wrote) holds the rows of the recent flushes
        copy = tmp_path / "copy.duckdb"
        shutil.copy(path, copy)
        alone = Store(copy, read_only=True)
        try:
            packets = alone.cursor().execute("SELECT max(packets) FROM connections").fetchone()[0]
            connections = alone.counts()[1]
        finally:
            alone.close()
        assert packets >= 2 * 25, f"the DB file holds the rows of flush {packets // 2 - 1} of 30"
        assert connections >= CONNECTIONS + 25  # and the newcomers of those flushes
    finally:
        release.set()
        thread.join()
        store.close()


def json_count(text: str) -> int:
    return len(json.loads(text))


def test_a_read_leaves_no_result_open(tmp_path):
    """What the cursor gives back is read to its end: rows, then None; fetchall after fetchone the rest."""
    store = Store(tmp_path / "sensor.duckdb")
    try:
        cursor = store.cursor()
        assert cursor.execute("SELECT range FROM range(3)").fetchone() == (0,)
        assert cursor.fetchall() == [(1,), (2,)]
        assert cursor.fetchone() is None
        assert cursor.execute("SELECT ? + 1", [41]).fetchall() == [(42,)]
        assert cursor.execute("SELECT 1 WHERE false").fetchone() is None
        assert store.cursor() is cursor  # one per thread
    finally:
        store.close()


DAEMON_FLUSHES = """
import sys, time
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from sensor import store as store_module
from sensor.daemon import Daemon
from sensor.settings import Settings
from sensor.store import Store
from test_store_wal import THRESHOLD, delta

store_module.CHECKPOINT_BYTES = THRESHOLD
store = Store({db!r})
store.db.execute(f"SET wal_autocheckpoint = '{{THRESHOLD}}B'")
daemon = Daemon(Settings(interfaces=("span0",), workers=1, listen="127.0.0.1:0"), store)
daemon.prepare_api()  # the API as `otsensor run` makes it (its metrics collector counts rows once)
for flush in range({flushes}):
    daemon.pending = delta(flush)
    assert daemon.flush()
print("flushed", flush + 1, flush=True)
time.sleep(600)
"""


def test_a_daemon_killed_after_many_flushes_leaves_a_small_wal(tmp_path):
    """The daemon's own flush path and API, many flushes, then SIGKILL: what a restart replays is small,
    and the reopened DB holds every flush."""
    db, flushes = tmp_path / "sensor.duckdb", 30
    script = DAEMON_FLUSHES.format(root=str(ROOT), tests=str(ROOT / "tests"), db=str(db), flushes=flushes)
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = process.stdout.readline()
        assert line.strip() == f"flushed {flushes}", process.stderr.read() if process.poll() is not None else line
        largest = wal_bytes(db)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
        process.stdout.close()
        process.stderr.close()
    assert largest < WAL_BOUND, f"{largest:,} bytes of WAL after {flushes} flushes: a restart replays them all"
    store = Store(db, read_only=True)
    try:
        assert store.counts()[1] == CONNECTIONS + flushes
        steady = "SELECT min(packets), max(packets) FROM connections WHERE packets > 1"
        assert store.cursor().execute(steady).fetchone() == (2 * flushes, 2 * flushes)
    finally:
        store.close()


def test_duckdb_memory_and_threads_are_the_configured_ones(tmp_path):
    store = Store(tmp_path / "a.duckdb", memory_mb=100, threads=1)
    try:
        limit, threads = (
            store.cursor().execute("SELECT current_setting('memory_limit'), current_setting('threads')").fetchone()
        )
        assert (limit, threads) == ("100.0 MiB", 1)
    finally:
        store.close()
    store = Store(tmp_path / "b.duckdb")  # the defaults, documented in systemd/otsensor.toml
    try:
        limit, threads = (
            store.cursor().execute("SELECT current_setting('memory_limit'), current_setting('threads')").fetchone()
        )
        assert (limit, threads) == ("512.0 MiB", 2)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--db-memory-mb", "10", "db_memory_mb must be within"), ("--db-threads", "0", "db_threads must be within")],
)
def test_unusable_duckdb_settings_are_one_line(tmp_path, flag, value, message):
    result = subprocess.run(
        [sys.executable, "-m", "sensor.daemon", "--interface", "lo", "--db", str(tmp_path / "x.duckdb"), flag, value],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_a_checkpoint_that_cannot_run_is_reported_until_one_does(tmp_path, monkeypatch):
    """A write transaction left open elsewhere in the process blocks every checkpoint: /healthz says so
    (the daemon's problems) instead of the WAL growing in silence; once it ends, the next flush clears it."""
    from sensor.daemon import Daemon
    from sensor.settings import Settings

    path = tmp_path / "sensor.duckdb"
    store = Store(path)
    low_threshold(store, monkeypatch)
    daemon = Daemon(Settings(interfaces=("span0",), workers=1), store)
    blocker = store.db.cursor()
    blocker.execute("BEGIN TRANSACTION")
    blocker.execute("INSERT INTO tokens (name, hash, created) VALUES ('held', 'h', 0)")
    try:
        for flush in range(8):
            daemon.pending = delta(flush)
            assert daemon.flush()
        assert wal_bytes(path) > THRESHOLD
        problems = daemon.snapshot()["problems"]
        assert any(p.startswith(f"cannot checkpoint {path}") for p in problems), problems
        blocker.execute("COMMIT")
        daemon.pending = delta(8)
        assert daemon.flush()
        assert store.checkpoint_problem is None and daemon.snapshot()["problems"] == []
        assert wal_bytes(path) < WAL_BOUND
    finally:
        blocker.close()
        store.close()
