"""Replaying files as a user meets them: many files, a bad one, the same one twice, files this user may not
read, a FIFO, a full disk, a kill mid-run — and the demo's captures in a built wheel.

Each file is stored whole, with its SHA-256, or not at all: so the DB holds exactly what a clean replay of
the files it lists would hold, whatever happened to the run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor import replay as replay_module
from sensor.cli import main
from sensor.readers import CaptureReader
from sensor.replay import replay
from sensor.store import Store

from .conftest import PCAPS, REAL, REAL_ABSENT, ROOT, nobody_cannot_run_the_code

GOOD = ("http.pcap", "modbus.pcap", "plant.pcap.gz", "s7comm.pcap")  # read in this order (equal first stamps)


def otsensor(*args: str, user: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sensor", *args]
    if user is not None:  # CI runs as root, who may read anything
        command = ["setpriv", "--reuid", user, "--regid", "nogroup", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


def facts(db: Path) -> dict:
    """Everything stored, keyed by addresses (device ids depend on the order devices were first met)."""
    with duckdb.connect(str(db), read_only=True) as c:
        devices = c.execute(
            "SELECT ip, macs, roles, vendor, name, model, firmware, serial, user_agent, server, first_seen, last_seen "
            "FROM devices ORDER BY ip"
        ).fetchall()
        connections = c.execute(
            "SELECT a.ip, b.ip, ports, to_json(protocols)::VARCHAR, discovered, c.last_seen, packets, bytes, "
            "c.user_agent FROM connections c JOIN devices a ON a.id = c.first_device_id "
            "JOIN devices b ON b.id = c.second_device_id ORDER BY 1, 2"
        ).fetchall()
    return {"devices": devices, "connections": connections}


def ingested(db: Path) -> list[str]:
    with duckdb.connect(str(db), read_only=True) as c:
        return sorted(Path(row[0]).name for row in c.execute("SELECT path FROM ingested_files").fetchall())


def clean(paths, db: Path) -> dict:
    """The facts of one undisturbed replay of these files into a new DB."""
    store = Store(db)
    try:
        replay([str(p) for p in paths], store, progress=False)
    finally:
        store.close()
    return facts(db)


@pytest.fixture
def folder(tmp_path) -> Path:
    """Four good captures."""
    folder = tmp_path / "captures"
    folder.mkdir()
    for name in GOOD:
        shutil.copy(PCAPS / name, folder / name)
    return folder


# -- a bad file costs itself, a kill costs the file in progress ------------------------------------------


class CrashingReader(CaptureReader):
    """The reader as a bug in it would behave on one file: a batch, then an exception."""

    def batches(self):
        for batch in super().batches():
            yield batch
            if self.path.name == "crash.pcap" and self.batch_size > 2:  # not while stamps are looked up
                raise RuntimeError("a fault in the reader")


def test_a_file_that_crashes_the_reader_is_named_and_the_others_are_stored(folder, tmp_path, monkeypatch, capsys):
    shutil.copy(PCAPS / "ads_ams.pcap", folder / "crash.pcap")  # read first: "crash" < "http"
    db = tmp_path / "s.duckdb"
    monkeypatch.setattr(replay_module, "CaptureReader", CrashingReader)
    assert main(["replay", str(folder), "--db", str(db), "--json"]) == 2
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["failedFiles"] == [str(folder / "crash.pcap")]
    assert any("crash.pcap" in p and "a fault in the reader" in p for p in summary["problems"]), summary["problems"]
    assert err.count("\n") == 1 and "failed" in err
    good = [PCAPS / name for name in GOOD]
    assert facts(db) == clean(good, tmp_path / "good.duckdb")  # the files after it were stored
    assert ingested(db) == sorted(GOOD)

    monkeypatch.undo()  # the reader fixed: the same command reads the failed file, and only that one
    assert main(["replay", str(folder), "--db", str(db), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert len(again["alreadyIngested"]) == len(GOOD) and again["problems"] == []
    assert facts(db) == clean([*good, PCAPS / "ads_ams.pcap"], tmp_path / "all.duckdb")


BLOCKING = """
import sys, time
from sensor import replay, cli
replay.FLUSH_CONNECTIONS = 1  # every batch into the file's open transaction before the kill

class Blocking(replay.CaptureReader):
    def batches(self):
        yield from super().batches()
        if self.path.name == "plant.pcap.gz" and self.batch_size > 2:
            print("blocked", flush=True)
            time.sleep(600)

replay.CaptureReader = Blocking
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigkill_loses_at_most_the_file_in_progress(folder, tmp_path):
    db = tmp_path / "s.duckdb"
    process = subprocess.Popen(
        [sys.executable, "-c", BLOCKING, "replay", str(folder), "--db", str(db)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout.readline() == "blocked\n"  # in plant.pcap.gz, its data merged, not committed
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert ingested(db) == ["http.pcap", "modbus.pcap"]
    assert facts(db) == clean([PCAPS / "http.pcap", PCAPS / "modbus.pcap"], tmp_path / "before.duckdb")

    result = otsensor("replay", str(folder), "--db", str(db), "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["alreadyIngested"]) == 2
    assert facts(db) == clean([PCAPS / name for name in GOOD], tmp_path / "all.duckdb")


POOL = ("ads_ams.pcap", "http.pcap", "modbus.pcap", "s7comm.pcap", "s7comm_plus.pcap")  # no flow in two of them


class SometimesCrashing(CaptureReader):
    crash: frozenset = frozenset()

    def batches(self):
        for batch in super().batches():
            yield batch
            if self.path.name in self.crash and self.batch_size > 2:
                raise RuntimeError("a fault in the reader")


@settings(max_examples=12, deadline=None)
@given(
    st.lists(st.sampled_from(POOL), min_size=1, max_size=6),  # the same content may come twice, by other names
    st.sets(st.integers(0, 5)),  # which of them the reader fails on
    st.booleans(),  # one run with all the files, or one per file
)
def test_whatever_fails_the_db_holds_exactly_the_files_it_lists(names, crashing, per_file):
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        tmp = Path(tmp)
        folder = tmp / "captures"
        folder.mkdir()
        for index, name in enumerate(names):
            shutil.copy(PCAPS / name, folder / f"{index}-{name}")
        SometimesCrashing.crash = frozenset(f"{index}-{name}" for index, name in enumerate(names) if index in crashing)
        patch.setattr(replay_module, "CaptureReader", SometimesCrashing)
        db = tmp / "s.duckdb"
        store = Store(db)
        try:
            runs = [[p] for p in sorted(folder.iterdir())] if per_file else [[folder]]
            summaries = [replay([str(p) for p in run], store, progress=False) for run in runs]
        finally:
            store.close()
        stored, failed = {}, set()  # by content: the first copy read is stored, the others are skipped
        for index, name in enumerate(names):  # the reading order: equal first stamps, so by file name
            if name not in stored:
                if index in crashing:
                    failed.add(f"{index}-{name}")
                else:
                    stored[name] = f"{index}-{name}"
        assert {Path(f).name for summary in summaries for f in summary["failedFiles"]} == failed
        assert ingested(db) == sorted(stored.values())
        assert facts(db) == clean([PCAPS / name for name in stored], tmp / "stored.duckdb")

        patch.undo()  # the same command again, the reader mended: what is missing is read, nothing twice
        store = Store(db)
        try:
            replay([str(folder)], store, progress=False)
        finally:
            store.close()
        assert facts(db) == clean([PCAPS / name for name in set(names)], tmp / "all.duckdb")


# -- order ---------------------------------------------------------------------------------------------

ROTATED = ("rwVarTab", "readVarTab", "readDiagData")  # one S7 session, in the order it was captured


def test_rotated_files_are_read_in_the_order_they_were_captured(tmp_path, tshark):
    if not REAL.is_dir():
        pytest.skip(REAL_ABSENT)
    files = [REAL / "iti" / f"s7_step7_s300_{name}.pcapng" for name in ROTATED]
    assert sorted(files) == files[::-1]  # by name, the last part comes first
    results = []
    for order in (files, sorted(files), files[::-1]):
        db = tmp_path / f"{len(results)}.duckdb"
        result = otsensor("replay", *map(str, order), "--db", str(db), "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["files"] == [str(f) for f in files]
        results.append(facts(db))
    assert results[0] == results[1] == results[2]

    from .oracle import tshark_rows

    merged = tmp_path / "merged.pcapng"
    subprocess.run(["mergecap", "-w", str(merged), *map(str, files)], check=True)
    rows = {
        (client, server, protocol["name"], command)
        for client, server, _ports, protocols, *_ in results[0]["connections"]
        for protocol in json.loads(protocols)
        for command in protocol["commands"]
    }
    assert rows == tshark_rows(str(merged))
    assert {"Disable job", "Modify variable", "Variable status"} <= {row[3] for row in rows}  # name order lost them


# -- the same file twice ---------------------------------------------------------------------------------


def test_the_same_traffic_twice_changes_nothing_and_force_reads_it_again(folder, tmp_path):
    db = tmp_path / "s.duckdb"
    first = otsensor("replay", str(folder), "--db", str(db), "--json")
    assert first.returncode == 0, first.stderr
    once = facts(db)
    shutil.copy(folder / "modbus.pcap", tmp_path / "renamed.pcap")  # the content decides, not the name
    second = otsensor("replay", str(folder), str(tmp_path / "renamed.pcap"), "--db", str(db))
    assert second.returncode == 0, second.stderr
    assert "packets      0\n" in second.stdout
    skipped = [line for line in second.stdout.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == len(GOOD) + 1 and all("--force" in line for line in skipped)
    assert any("renamed.pcap" in line and "modbus.pcap" in line for line in skipped)  # says as what
    assert facts(db) == once

    forced = otsensor("replay", str(folder / "modbus.pcap"), "--db", str(db), "--force", "--json")
    assert json.loads(forced.stdout)["packets"] > 0
    modbus = {row[:2]: row[6] for row in clean([PCAPS / "modbus.pcap"], tmp_path / "m.duckdb")["connections"]}
    packets = {row[:2]: row[6] for row in facts(db)["connections"]}
    assert packets == {key: count + modbus.get(key, 0) for key, count in ((r[:2], r[6]) for r in once["connections"])}


def test_one_file_named_twice_in_one_run_is_read_once(tmp_path):
    db = tmp_path / "s.duckdb"
    shutil.copy(PCAPS / "modbus.pcap", tmp_path / "copy.pcap")
    summary = json.loads(otsensor("replay", str(PCAPS / "modbus.pcap"), str(tmp_path / "copy.pcap"),
                                  "--db", str(db), "--json").stdout)  # fmt: skip
    assert len(summary["alreadyIngested"]) == 1
    assert facts(db) == clean([PCAPS / "modbus.pcap"], tmp_path / "once.duckdb")


def test_demo_started_twice_serves_the_same_data(tmp_path):
    outputs = []
    for _ in range(2):
        process = subprocess.Popen(
            [sys.executable, "-m", "sensor", "demo", "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            lines = [process.stdout.readline()]
            while lines[-1] and not lines[-1].startswith("curl "):
                lines.append(process.stdout.readline())
            token = next(line.split()[1] for line in lines if line.startswith("token: "))
            request = urllib.request.Request(lines[-1].split()[-1], headers={"Authorization": token})
            with urllib.request.urlopen(request, timeout=30) as response:
                served = json.load(response)
        finally:
            process.terminate()
            process.wait(30)
        assert lines[0].startswith("replayed ") and served
        outputs.append((lines[0], served, facts(tmp_path / "otsensor-demo.duckdb")))
    assert outputs[0] == outputs[1]
    assert " 0 packets" not in outputs[1][0]


# -- files this user may not read, and what is not a file -----------------------------------------------


@pytest.fixture
def shared_dir():
    """A folder the user nobody can enter (pytest's tmp_path is root's alone), removed afterwards."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run otsensor as another user (CI is root)")
    cannot = nobody_cannot_run_the_code()  # these tests need nobody's own read permissions, nothing more
    if cannot:
        pytest.skip(cannot)
    path = Path(tempfile.mkdtemp(prefix="otsensor-perm-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_a_path_inside_a_folder_this_user_may_not_enter_is_one_line(shared_dir):
    locked = shared_dir / "locked"
    locked.mkdir(mode=0o700)
    shutil.copy(PCAPS / "modbus.pcap", locked / "a.pcap")
    out = shared_dir / "out"
    out.mkdir()
    os.chown(out, 65534, 65534)
    result = otsensor("replay", str(locked / "a.pcap"), "--db", str(out / "s.duckdb"), user="nobody")
    assert "Permission denied" in one_line_error(result)
    for command in (["replay", str(PCAPS / "modbus.pcap")], ["connections"], ["token", "list"]):
        assert "Permission denied" in one_line_error(
            otsensor(*command, "--db", str(locked / "s.duckdb"), user="nobody")
        )


def test_unreadable_files_and_folders_in_a_folder_are_named_under_problems(shared_dir):
    folder = shared_dir / "captures"
    (folder / "sub").mkdir(parents=True)
    folder.chmod(0o755)
    shutil.copy(PCAPS / "modbus.pcap", folder / "good.pcap")
    shutil.copy(PCAPS / "s7comm.pcap", folder / "secret.pcap")
    shutil.copy(PCAPS / "http.pcap", folder / "sub" / "hidden.pcap")
    for path in (folder / "good.pcap", folder / "secret.pcap", folder / "sub"):
        path.chmod(0o644 if path.name == "good.pcap" else 0o600 if path.is_file() else 0o700)
    out = shared_dir / "out"
    out.mkdir()
    os.chown(out, 65534, 65534)
    result = otsensor("replay", str(folder), "--db", str(out / "s.duckdb"), "--json", user="nobody")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["files"] == [str(folder / "good.pcap")]
    problems = " ".join(summary["problems"])
    assert "secret.pcap" in problems and str(folder / "sub") in problems and "Permission denied" in problems


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "fifo.pcap"
    os.mkfifo(fifo)
    named = otsensor("replay", str(fifo), "--db", str(tmp_path / "s.duckdb"), timeout=60)
    assert "FIFO" in one_line_error(named)
    shutil.copy(PCAPS / "modbus.pcap", tmp_path / "good.pcap")
    walked = otsensor("replay", str(tmp_path), "--db", str(tmp_path / "s.duckdb"), "--json", timeout=60)
    assert walked.returncode == 0, walked.stderr
    summary = json.loads(walked.stdout)
    assert summary["files"] == [str(tmp_path / "good.pcap")] and "fifo.pcap" in " ".join(summary["problems"])


# -- the commands that need a DB, and a full disk ------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["connections"], ["devices"], ["token", "create", "--name", "x"], ["token", "list"], ["token", "revoke", "x"]],
    ids=" ".join,
)
def test_commands_that_read_a_db_do_not_make_one(tmp_path, command):
    db = tmp_path / "nothing.duckdb"
    if command[0] == "token":
        command = [*command[:2], "--db", str(db), *command[2:]]
    else:
        command = [*command, "--db", str(db)]
    assert "no such DB" in one_line_error(otsensor(*command))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs of this test's own, filled up by fill()."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root (CI is root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """A file taking all the room but ``leave`` bytes (tmpfs counts whole 4 KiB pages)."""
    filler = disk / "filler"
    stats = os.statvfs(disk)
    room = stats.f_bavail * stats.f_frsize - leave
    with open(filler, "wb", buffering=0) as f:
        try:
            while room > 0 or not leave:
                room -= f.write(b"\0" * min(max(room, 4096), 1 << 16))
        except OSError:
            pass
    return filler


def test_a_full_disk_is_one_line_and_loses_nothing_stored(small_disk, tmp_path):
    db = small_disk / "s.duckdb"
    assert otsensor("replay", str(PCAPS / "modbus.pcap"), "--db", str(db)).returncode == 0
    assert otsensor("token", "create", "--db", str(db), "--name", "before").returncode == 0
    stored = facts(db)
    filler = fill(small_disk)

    created = otsensor("token", "create", "--db", str(db), "--name", "x")
    assert "no space left on device" in one_line_error(created) and created.stdout == ""
    assert "no space left on device" in one_line_error(otsensor("replay", str(PCAPS / "s7comm.pcap"), "--db", str(db)))
    assert "no space left" in one_line_error(otsensor("replay", str(PCAPS), "--db", str(small_disk / "new.duckdb")))
    assert not (small_disk / "new.duckdb").exists()  # no empty file left to be taken for a DB

    filler.unlink()
    assert facts(db) == stored
    assert otsensor("token", "create", "--db", str(db), "--name", "x").returncode == 0
    tokens = json.loads(otsensor("token", "list", "--db", str(db), "--json").stdout)
    assert [t["name"] for t in tokens] == ["before", "x"]
    assert otsensor("replay", str(PCAPS / "s7comm.pcap"), "--db", str(db)).returncode == 0  # not taken as read


def test_a_disk_filling_up_mid_replay_keeps_the_files_stored_before(small_disk, folder, tmp_path):
    db = small_disk / "s.duckdb"
    assert otsensor("replay", str(PCAPS / "ads_ams.pcap"), "--db", str(db)).returncode == 0
    filler = fill(small_disk, leave=8192)  # room for the first files' WAL, not for all (~13 KB)
    assert "no space left on device" in one_line_error(otsensor("replay", str(folder), "--db", str(db)))
    filler.unlink()
    names = ingested(db)
    assert "ads_ams.pcap" in names and len(names) < 1 + len(GOOD)
    assert facts(db) == clean([PCAPS / name for name in names], tmp_path / "same.duckdb")
    assert otsensor("replay", str(folder), "--db", str(db)).returncode == 0
    assert facts(db) == clean([PCAPS / name for name in ("ads_ams.pcap", *GOOD)], tmp_path / "all.duckdb")


# -- the demo's captures ship in the wheel -------------------------------------------------------------


def test_the_wheel_holds_the_demo_captures_and_the_installed_demo_finds_them(tmp_path):
    source = tmp_path / "source"  # pip builds in the tree it is given: not in the checkout
    ignore = shutil.ignore_patterns(".git", "build", "*.egg-info", ".hypothesis", "*_cache", "__pycache__", "*.duckdb*")
    shutil.copytree(ROOT, source, symlinks=True, ignore=ignore)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("otsensor-*.whl")
    demo = sorted(p.name for p in PCAPS.iterdir() if p.name.endswith((".pcap", ".pcapng", ".pcap.gz")))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")  # what installing a pure-Python wheel amounts to
    shipped = sorted(
        n.removeprefix("sensor/data/pcaps/")
        for n in names
        if n.startswith("sensor/data/pcaps/") and n.endswith((".pcap", ".pcapng", ".pcap.gz"))
    )
    assert shipped == demo  # and nothing of pcaps/bad/
    site = tmp_path / "site"
    found = subprocess.run(
        [sys.executable, "-c",
         "import json, sys; sys.path.insert(0, sys.argv[1]); import sensor; from api.cli import demo_captures; "
         "print(json.dumps([sensor.__file__, *map(str, demo_captures())]))", str(site)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    module, *captures = json.loads(found.stdout)
    assert Path(module).is_relative_to(site)
    assert sorted(Path(c).name for c in captures) == demo
    assert all(Path(c).parent == site / "sensor" / "data" / "pcaps" for c in captures)
