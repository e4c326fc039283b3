"""The command line as a user runs it: replay summaries, exit statuses, and the JSON it prints."""

from __future__ import annotations

import json
import subprocess
import sys

from sensor import serialize
from sensor.store import Store

from .conftest import PCAPS, ROOT


def otsensor(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "sensor", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_replay_prints_a_json_summary_and_the_db_serves_it(tmp_path):
    db = tmp_path / "s.duckdb"
    summary = json.loads(otsensor("replay", str(PCAPS / "modbus.pcap"), "--db", str(db), "--json", check=True).stdout)
    assert summary["packets"] > 0 and summary["bytes"] > 0
    assert summary["devices"] == 5 and summary["connections"] >= 3
    assert summary["decodeErrors"] == {} and summary["problems"] == []
    printed = otsensor("connections", "--db", str(db), check=True).stdout.strip()
    devices = json.loads(otsensor("devices", "--db", str(db), check=True).stdout)
    store = Store(db)  # after the CLI exits: one process owns the file
    try:
        assert printed == serialize.connections_json(store.cursor())
        assert devices == serialize.devices(store.cursor())
    finally:
        store.close()
    plc = next(d for d in devices if d["vendor"] == "Schneider Electric")
    assert plc["type"] == "PLC" and {"name": "modbus", "roles": ["server"]} in plc["protocols"]


def test_filters_select_by_device_and_time(tmp_path):
    db = tmp_path / "s.duckdb"
    otsensor("replay", str(PCAPS / "modbus.pcap"), "--db", str(db), check=True)
    everything = json.loads(otsensor("connections", "--db", str(db), check=True).stdout)
    first = everything[0]
    mine = json.loads(
        otsensor("connections", "--db", str(db), "--device-id", str(first["secondDeviceId"]), check=True).stdout
    )
    assert first in mine and all(first["secondDeviceId"] in (c["firstDeviceId"], c["secondDeviceId"]) for c in mine)
    later = json.loads(
        otsensor("connections", "--db", str(db), "--discovered-after", str(first["discovered"]), check=True).stdout
    )
    assert all(c["discovered"] > first["discovered"] for c in later)
    assert (
        json.loads(otsensor("connections", "--db", str(db), "--last-active-in-minutes", "5", check=True).stdout) == []
    )


def test_replaying_twice_changes_nothing(tmp_path):
    db = tmp_path / "s.duckdb"
    otsensor("replay", str(PCAPS / "plant.pcap.gz"), "--db", str(db), check=True)
    once = json.loads(otsensor("connections", "--db", str(db), check=True).stdout)
    ids_once = {
        d["ipAddresses"][0]: d["id"] for d in json.loads(otsensor("devices", "--db", str(db), check=True).stdout)
    }
    again = json.loads(otsensor("replay", str(PCAPS / "plant.pcap.gz"), "--db", str(db), "--json", check=True).stdout)
    assert again["packets"] == 0 and len(again["alreadyIngested"]) == 1  # counters too (tests/test_replay_files.py)
    assert json.loads(otsensor("connections", "--db", str(db), check=True).stdout) == once
    ids_twice = {
        d["ipAddresses"][0]: d["id"] for d in json.loads(otsensor("devices", "--db", str(db), check=True).stdout)
    }
    assert ids_twice == ids_once


def test_not_a_capture_exits_2_with_one_line(tmp_path):
    result = otsensor("replay", str(PCAPS / "bad" / "not-a-capture.pcap"), "--db", str(tmp_path / "s.duckdb"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    missing = otsensor("replay", str(tmp_path / "nothing.pcap"), "--db", str(tmp_path / "s.duckdb"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_truncated_capture_keeps_what_is_readable_and_says_where(tmp_path):
    result = otsensor("replay", str(PCAPS / "bad" / "truncated.pcap"), "--db", str(tmp_path / "s.duckdb"), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["packets"] == 5  # tshark reads 5 packets before the cut
    assert any("record 6" in problem for problem in summary["problems"]), summary["problems"]


def test_a_db_held_by_another_process_is_exit_2(tmp_path):
    db = tmp_path / "held.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(db)!r}); print('ok', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ok"
        result = otsensor("replay", str(PCAPS / "modbus.pcap"), "--db", str(db))
        assert result.returncode == 2 and "another process" in result.stderr
    finally:
        holder.kill()
        holder.wait()


def test_bad_filter_values_are_usage_errors(tmp_path):
    for value in ("-1", "abc", "1e3", str(2**60)):
        result = otsensor("connections", "--db", str(tmp_path / "s.duckdb"), "--device-id", value)
        assert result.returncode == 2 and "Traceback" not in result.stderr


def test_output_into_a_closed_pipe_is_no_traceback(tmp_path):
    """`otsensor connections | true`: the reader is gone before the answer is written; the command ends quietly,
    as a Unix filter does (before: a BrokenPipeError traceback)."""
    import subprocess
    import sys

    db = tmp_path / "pipe.duckdb"
    subprocess.run([sys.executable, "-m", "sensor.cli", "replay", *map(str, sorted(PCAPS.glob("*.pcap"))), "--db", str(db),
                    "--json"], capture_output=True, check=True)  # fmt: skip
    shell = f"{sys.executable} -m sensor.cli connections --db {db} | true; echo ${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr
    assert done.stdout.strip() == "141"  # 128 + SIGPIPE, as a shell reports a filter the pipe killed
