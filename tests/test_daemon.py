"""The daemon's parts that need no network: settings, deltas across the process boundary, flush failures,
retention, and the one-line exit-2 errors of `otsensor run` (the live plant is tests/test_plant.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sensor.connections import ConnectionTable
from sensor.daemon import Daemon, table_from_wire, table_to_wire
from sensor.settings import Settings, SettingsError, load
from sensor.store import Store, StoreError

ROOT = Path(__file__).resolve().parent.parent
A, B, C = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), bytes([10, 0, 0, 3])
NOW_NS = time.time_ns()


def table(client: bytes, server: bytes, port: int, command: str, first_ns: int, last_ns: int) -> ConnectionTable:
    delta = ConnectionTable()
    record = delta.connection(client, server)
    record.ports.add(port)
    record.protocols.setdefault("modbus", set()).add(command)
    record.discovered_ns, record.last_seen_ns = first_ns, last_ns
    record.packets, record.bytes = 2, 120
    delta.add_mac(client, bytes.fromhex("001122334455"))
    delta.device(server).identity["vendor"] = "Schneider Electric"
    delta.derive_devices()
    return delta


def daemon_run(*flags: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sensor.daemon", *flags], capture_output=True, text=True, timeout=120, cwd=cwd
    )


# --- settings ---------------------------------------------------------------------------------------
def test_defaults_are_the_documented_ones(tmp_path):
    (tmp_path / "empty.toml").write_text("")
    settings = load(str(tmp_path / "empty.toml"))
    assert settings == Settings()
    assert settings.interfaces == () and settings.bpf is None and settings.workers == (os.cpu_count() or 1)
    assert settings.db == "/var/lib/otsensor/otsensor.duckdb" and settings.listen == "127.0.0.1:8080"
    assert settings.flush_interval == 5 and settings.retention_days == 0 and settings.rate_limit == 600
    assert settings.tls_cert is None and settings.tls_key is None and not settings.prepare_interfaces
    assert settings.db_memory_mb == 512 and settings.db_threads == 2  # DuckDB's, not 80 % of RAM and every core


def test_file_then_flags(tmp_path):
    config = tmp_path / "otsensor.toml"
    config.write_text(
        'interfaces = ["span0", "span1"]\nbpf = "tcp"\nworkers = 3\nflush_interval = 2\ndb = "a.duckdb"\n'
    )
    settings = load(str(config), {"db": "b.duckdb", "interfaces": None, "listen": "0.0.0.0:8443", "workers": None})
    assert settings.interfaces == ("span0", "span1") and settings.bpf == "tcp" and settings.workers == 3
    assert settings.flush_interval == 2.0 and settings.db == "b.duckdb" and settings.listen == "0.0.0.0:8443"
    assert load(str(config), {"interfaces": ["eth9"]}).interfaces == ("eth9",)


def test_every_setting_has_a_flag_and_a_line_in_the_example_config():
    import argparse
    from dataclasses import fields

    from sensor.settings import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {action.dest for action in parser._actions}
    example = (ROOT / "systemd" / "otsensor.toml").read_text()
    for setting in fields(Settings):
        assert setting.name in flags, f"no flag for {setting.name}"
        assert f"{setting.name} =" in example, f"{setting.name} is not in systemd/otsensor.toml"


def test_the_example_config_is_valid():
    settings = load(str(ROOT / "systemd" / "otsensor.toml"))
    assert settings.interfaces and settings.db == Settings().db
    settings.check()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("interfaces = [", "not valid TOML"),
        ("interface = ['eth1']", "unknown setting 'interface'"),
        ("workers = 'two'", "workers must be an integer"),
        ("workers = true", "workers must be an integer"),
        ("interfaces = 'eth1'", "interfaces must be a list"),
        ("prepare_interfaces = 1", "prepare_interfaces must be true or false"),
    ],
)
def test_a_bad_file_is_one_line(tmp_path, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=message) as caught:
        load(str(config))
    assert "\n" not in str(caught.value) and str(config) in str(caught.value)


def test_a_missing_default_file_is_fine_a_missing_given_one_is_not(tmp_path, monkeypatch):
    monkeypatch.setattr("sensor.settings.DEFAULT_CONFIG", str(tmp_path / "nowhere.toml"))
    assert load(None) == Settings()
    with pytest.raises(SettingsError, match="no such config file"):
        load(str(tmp_path / "nowhere.toml"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({}, "no capture interface"),
        ({"interfaces": ("eth1",), "workers": 0}, "workers must be at least 1"),
        ({"interfaces": ("eth1",), "flush_interval": 0.0}, "flush_interval"),
        ({"interfaces": ("eth1",), "tls_cert": "c.pem"}, "go together"),
    ],
)
def test_check_names_the_setting(changes, message):
    with pytest.raises(SettingsError, match=message):
        Settings(**changes).check()


# --- deltas across the process boundary -------------------------------------------------------------
def test_a_delta_survives_the_wire_and_merges_the_same():
    import pickle

    delta = table(A, B, 502, "Read Coils", 1_000_000_000, 2_000_000_000)
    delta.merge(table(C, B, 502, "Write Single Coil", 3_000_000_000, 4_000_000_000))
    copy = table_from_wire(pickle.loads(pickle.dumps(table_to_wire(delta))))
    assert table_to_wire(copy) == table_to_wire(delta)
    record = copy.connections[(A, B)]
    assert record.ports == {502} and record.protocols == {"modbus": {"Read Coils"}}
    assert (record.discovered_ns, record.last_seen_ns, record.packets) == (1_000_000_000, 2_000_000_000, 2)
    assert copy.devices[A].macs == {"00:11:22:33:44:55"}
    assert copy.devices[B].identity == {"vendor": "Schneider Electric"}
    assert copy.devices[B].roles == {"modbus:server"}


def test_worker_modules_never_import_flask_or_duckdb():
    code = "import sys, sensor.daemon; print(sorted(m for m in ('flask', 'duckdb', 'api') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"


# --- flushing and retention (a Daemon over a real store, no workers started) -------------------------
class FailingStore:
    """A store whose disk is full until ``healed``."""

    path = "/full/disk.duckdb"

    def __init__(self, store: Store) -> None:
        self.store, self.healed = store, False

    def merge(self, delta) -> None:
        if not self.healed:
            raise StoreError(f"writing to {self.path} failed: IO Error: No space left on device")
        self.store.merge(delta)


def test_a_failed_flush_keeps_the_delta_and_says_so(tmp_path):
    store = Store(tmp_path / "t.duckdb")
    failing = FailingStore(store)
    daemon = Daemon(Settings(interfaces=("span0",), workers=1), failing)
    daemon.handle(("report", 0, table_to_wire(table(A, B, 502, "Read Coils", NOW_NS, NOW_NS)), {"packets": 2}))
    assert daemon.flush() is False
    snapshot = daemon.snapshot()
    assert any("No space left on device" in problem for problem in snapshot["problems"])
    assert snapshot["pending_connections"] == 1 and snapshot["flush_count"] == 0
    # more traffic arrives while the disk is full; then the disk has room again
    daemon.handle(("report", 0, table_to_wire(table(A, B, 502, "Write Single Coil", NOW_NS, NOW_NS + 1)), {}))
    failing.healed = True
    generation = daemon.generation
    assert daemon.flush() is True
    assert daemon.generation > generation and not daemon.snapshot()["problems"]
    packets, protocols = store.db.execute("SELECT packets, to_json(protocols)::VARCHAR FROM connections").fetchone()
    assert packets == 4 and "Read Coils" in protocols and "Write Single Coil" in protocols  # each delta once
    store.close()


def test_retention_forgets_old_connections_and_keeps_device_ids(tmp_path):
    store = Store(tmp_path / "t.duckdb")
    day_ns = 86_400 * 10**9
    store.merge(table(A, B, 502, "Read Coils", NOW_NS - 10 * day_ns, NOW_NS - 9 * day_ns))
    store.merge(table(C, B, 502, "Read Coils", NOW_NS - 10 * day_ns, NOW_NS - day_ns))
    ids = dict(store.db.execute("SELECT ip, id FROM devices").fetchall())
    daemon = Daemon(Settings(interfaces=("span0",), workers=1, retention_days=7), store)
    daemon.retention()
    pairs = store.db.execute("SELECT first_device_id, second_device_id FROM connections").fetchall()
    assert pairs == [(ids["10.0.0.3"], ids["10.0.0.2"])]
    assert dict(store.db.execute("SELECT ip, id FROM devices").fetchall()) == ids
    store.merge(table(A, B, 502, "Read Coils", NOW_NS, NOW_NS))  # talks again: same ids
    assert dict(store.db.execute("SELECT ip, id FROM devices").fetchall()) == ids
    store.close()


def test_snapshot_adds_up_the_workers():
    daemon = Daemon(Settings(interfaces=("span0", "span1"), workers=2), store=None)
    for index, drops in ((0, 1), (1, 2)):
        counters = {
            "packets": 10,
            "bytes": 1000,
            "errors": {"modbus": index + 1},
            "interfaces": {"span0": {"packets": 6, "drops": drops}, "span1": {"packets": 4, "drops": 0}},
            "problems": [],
        }
        daemon.handle(("report", index, None, counters))
    snapshot = daemon.snapshot()
    assert snapshot["packets"] == 20 and snapshot["bytes"] == 2000 and snapshot["kernel_drops"] == 3
    assert snapshot["decode_errors"] == {"modbus": 3}
    assert snapshot["interfaces"] == [{"name": "span0", "packets": 12, "drops": 3}, {"name": "span1", "packets": 8, "drops": 0}]  # fmt: skip
    assert snapshot["mode"] == "live" and snapshot["problems"] == []


# --- `otsensor run`'s exit 2 (python -m sensor.daemon takes the same flags) --------------------------
def one_line_error(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0] and lines[0].startswith("otsensor: "), result.stderr


def test_no_interface_is_a_usage_error(tmp_path):
    one_line_error(daemon_run("--config", str(tmp_path / "none.toml")), "no such config file")
    (tmp_path / "empty.toml").write_text("")
    one_line_error(daemon_run("--config", str(tmp_path / "empty.toml"), "--db", str(tmp_path / "x.duckdb")),
                   "no capture interface")  # fmt: skip


def test_a_held_db_is_exit_2(tmp_path):
    db = tmp_path / "held.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, sys, time; c = duckdb.connect({str(db)!r}); print('ok', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "ok"
        one_line_error(daemon_run("--interface", "lo", "--db", str(db), "--workers", "1"), "held by another process")
    finally:
        holder.kill()
        holder.wait()


def test_a_missing_interface_is_exit_2(tmp_path):
    result = daemon_run("--interface", "nosuch0", "--db", str(tmp_path / "x.duckdb"), "--listen", "127.0.0.1:0",
                        "--workers", "2")  # fmt: skip
    one_line_error(result, "no such network interface: 'nosuch0'")
