"""Hostile capture files: stamps no int64 can hold, frames that would fill memory, and mutated files
through `otsensor replay` as a process (no traceback, exit 0 or 2, bounded RSS, nothing stored lost)."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sensor.readers import STAMP_MAX_NS, STAMP_MIN_NS, CaptureReader

from .conftest import PCAPS
from .test_readers import ETH_FRAME, MODBUS_PCAP, epb, idb, option, shb


def _stamps(path):
    reader = CaptureReader(path)
    batches = list(reader.batches())
    ts = np.concatenate([b.ts_ns for b in batches]) if batches else np.zeros(0, np.int64)
    return reader, ts


def netmon2(minor: int, frames, year: int = 2026, media: int = 1) -> bytes:
    """A NetMon 2.x file (Wireshark wiretap/netmon.c): header, frames, frame table at the end.

    frames: (µs since start, frame bytes, FILETIME or None); 2.1+ frames get the trailer of their minor."""
    body, table = b"", []
    for delta, frame, filetime in frames:
        table.append(64 + len(body))
        rec = struct.pack("<qII", delta, len(frame), len(frame)) + frame
        if minor == 1:
            rec += struct.pack("<H", media)
        elif minor == 2:
            rec += struct.pack("<HI", media, 0)
        elif minor >= 3:
            rec += struct.pack("<HIQB", media, 0, filetime or 0, 0)
        body += rec
    table_at = 64 + len(body)
    header = b"GMBU" + struct.pack("<BBH8H10I", minor, 2, media, year, 1, 1, 5, 8, 0, 0, 0, table_at, 4 * len(table),
                                   *([0] * 8))  # fmt: skip
    return header + body + struct.pack(f"<{len(table)}I", *table)


def pcapng_with(options: bytes, ticks: int) -> bytes:
    return shb("<") + idb("<", 1, 0, options) + epb("<", 0, 1_000_000, ETH_FRAME) + epb("<", 0, ticks, ETH_FRAME)


# Every way a file can state a time that int64 epoch nanoseconds cannot hold.
OUT_OF_RANGE = {
    "pcapng if_tsoffset 2^40 s": (pcapng_with(option("<", 14, struct.pack("<q", 2**40)), 5), "block 3", STAMP_MAX_NS),
    "pcapng if_tsoffset -2^40 s": (
        pcapng_with(option("<", 14, struct.pack("<q", -(2**40))), 5),
        "block 3",
        STAMP_MIN_NS,
    ),
    "pcapng if_tsoffset -2^63 s": (
        pcapng_with(option("<", 14, struct.pack("<q", -(2**63))), 5),
        "block 3",
        STAMP_MIN_NS,
    ),
    "pcapng ticks 2^64-1 ns": (pcapng_with(option("<", 9, b"\x09"), 2**64 - 1), "block 4", STAMP_MAX_NS),
    "pcapng ticks 2^64-1 s": (pcapng_with(option("<", 9, b"\x00"), 2**64 - 1), "block 4", STAMP_MAX_NS),
    "pcapng ticks 2^64-1 2^-63 s": (pcapng_with(option("<", 9, b"\xbf"), 2**64 - 1), None, None),
    "pcapng ticks 2^64-1 µs": (pcapng_with(b"", 2**64 - 1), "block 4", STAMP_MAX_NS),
    "netmon 2.0 year 2300": (netmon2(0, [(0, ETH_FRAME, None)], year=2300), "record 1", STAMP_MAX_NS),
    "netmon 2.0 year 9999": (netmon2(0, [(0, ETH_FRAME, None)], year=9999), "record 1", STAMP_MAX_NS),
    "netmon 2.0 year 1601": (netmon2(0, [(0, ETH_FRAME, None)], year=1601), "record 1", STAMP_MIN_NS),
    "netmon 2.0 delta 2^63-1": (netmon2(0, [(2**63 - 1, ETH_FRAME, None)]), None, None),
    "netmon 2.3 FILETIME 2^64-1": (netmon2(3, [(0, ETH_FRAME, 2**64 - 1)]), "record 1", STAMP_MAX_NS),
    "netmon 2.3 FILETIME 0": (netmon2(3, [(0, ETH_FRAME, 0)]), "record 1", STAMP_MIN_NS),
}


@pytest.mark.parametrize("name", OUT_OF_RANGE)
def test_stamps_out_of_range_are_clamped_and_named(tmp_path, name):
    content, where, clamped = OUT_OF_RANGE[name]
    path = tmp_path / "capture"
    path.write_bytes(content)
    reader, ts = _stamps(path)
    assert len(ts) >= 1 and ts.dtype == np.int64
    assert ((ts >= STAMP_MIN_NS) & (ts <= STAMP_MAX_NS)).all()
    if where is None:  # in range after all (wraps as Wireshark's arithmetic does): nothing to say
        return
    assert clamped in ts.tolist()
    clamp_lines = [p for p in reader.problems if "outside" in p]
    assert len(clamp_lines) == 1, reader.problems
    assert f"first: {where} at byte " in clamp_lines[0]


def test_stamp_range_ends_are_kept_exactly(tmp_path):
    # The last representable second and the first one past it, at nanosecond resolution.
    last = STAMP_MAX_NS
    content = shb("<") + idb("<", 1, 0, option("<", 9, b"\x09")) + epb("<", 0, last, ETH_FRAME)
    content += epb("<", 0, last + 1, ETH_FRAME)
    path = tmp_path / "edge.pcapng"
    path.write_bytes(content)
    reader, ts = _stamps(path)
    assert ts.tolist() == [last, STAMP_MAX_NS]
    assert (
        len(reader.problems) == 1
        and "1 block(s)" in reader.problems[0]
        and "first: block 4 at byte" in (reader.problems[0])
    )


def replay(db, *paths, check_json=True):
    """`otsensor replay` in a child process -> (exit status, summary or None, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "sensor.cli", "replay", "--db", str(db), "--json", *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
    )
    summary = json.loads(done.stdout) if done.returncode == 0 and check_json else None
    return done.returncode, summary, done.stderr


def test_replay_of_out_of_range_stamps_stores_and_serves(tmp_path):
    paths = []
    for i, name in enumerate(OUT_OF_RANGE):
        paths.append(tmp_path / f"{i}.bin")
        paths[-1].write_bytes(OUT_OF_RANGE[name][0])
    code, summary, stderr = replay(tmp_path / "db.duckdb", *paths)
    assert code == 0 and "Traceback" not in stderr, stderr
    assert any("outside" in problem for problem in summary["problems"])
    listed = subprocess.run(
        [sys.executable, "-m", "sensor.cli", "connections", "--db", str(tmp_path / "db.duckdb")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert listed.returncode == 0 and "Traceback" not in listed.stderr
    assert MODBUS_PCAP  # the module's real-capture constants stay importable for the campaign below


# --- memory: a bound set by the configuration, whatever the file ------------------------------------------

RSS_BOUND_MB = 512  # what the README promises for any input, with the default settings
BIG_FRAME = bytes(262144)  # the longest frame a capture may hold (MAX_CAPLEN); zeros compress ~1000:1


def _gzip_member(data: bytes) -> bytes:
    """One gzip member; gzip readers read concatenated members as one stream (RFC 1952 §2.2)."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def _huge_gzip_files(tmp_path, frames: int) -> list:
    """Gzip'd captures whose uncompressed size grows with ``frames`` while the file stays a few MB."""
    pcap_record = _gzip_member(struct.pack("<IIII", 1, 0, len(BIG_FRAME), len(BIG_FRAME)) + BIG_FRAME)
    # Snaplens claiming 4 GiB, as hostile files may: nothing is sized by them.
    pcap_head = _gzip_member(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 2**32 - 1, 1))
    ng_head = _gzip_member(shb("<") + idb("<", 1, 2**32 - 1))
    ng_record = _gzip_member(epb("<", 0, 1_000_000, BIG_FRAME))
    # Blocks as long as pcapng allows (16 MiB) that hold a short frame and padding, or nothing at all.
    long_epb = bytearray(epb("<", 0, 1_000_000, ETH_FRAME + bytes(16 * 2**20 - 32 - len(ETH_FRAME))))
    struct.pack_into("<I", long_epb, 20, len(ETH_FRAME))  # captured length: only the frame
    ng_long = _gzip_member(bytes(long_epb))
    ng_custom = _gzip_member(struct.pack("<II", 0x0BAD, 16 * 2**20) + bytes(16 * 2**20 - 12) +
                             struct.pack("<I", 16 * 2**20))  # fmt: skip
    files = {
        "frames.pcap.gz": pcap_head + pcap_record * frames,
        "frames.pcapng.gz": ng_head + ng_record * frames,
        "long-blocks.pcapng.gz": ng_head + ng_long * (frames // 64),
        "one-frame-then-custom-blocks.pcapng.gz": ng_head + ng_record + ng_custom * (frames // 64),
        "netmon.cap.gz": _netmon_gzip(frames),
    }
    paths = []
    for name, content in files.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(content)
    return paths


def _netmon_gzip(frames: int) -> bytes:
    """A gzip'd NetMon 2.2 file of ``frames`` big frames, its frame table at the end, made member by member."""
    record = struct.pack("<qII", 0, len(BIG_FRAME), len(BIG_FRAME)) + BIG_FRAME + struct.pack("<HI", 1, 0)
    head = netmon2(2, [])[:64]
    table_at = 64 + frames * len(record)
    head = head[:4] + struct.pack("<BBH8H2I", 2, 2, 1, 2026, 1, 1, 5, 8, 0, 0, 0, table_at, 4 * frames) + head[32:]
    table = struct.pack(f"<{frames}I", *(64 + i * len(record) for i in range(frames)))
    return _gzip_member(head) + _gzip_member(record) * frames + _gzip_member(table)


def _peak_rss_mb(*args) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``python -m sensor.cli ARGS`` in a child process; its peak RSS in MB (Linux: ru_maxrss in KiB)."""
    script = (
        "import resource, subprocess, sys; "
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
        "print(done.returncode, peak); sys.stderr.write(done.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, sys.executable, "-m", "sensor.cli", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )
    code, peak = done.stdout.split()
    return subprocess.CompletedProcess(args, int(code), "", done.stderr), int(peak) / 1024


@pytest.mark.parametrize("index", range(5), ids=["pcap", "pcapng", "long-blocks", "custom-blocks", "netmon"])
def test_peak_rss_is_bounded_whatever_the_file(tmp_path, index):
    # 2048 frames of 256 KiB: 512 MiB of frames in a ~1 MB file (the report's 4,096 reached 2.2 GB).
    path = _huge_gzip_files(tmp_path, 2048)[index]
    assert path.stat().st_size < 8 * 2**20
    done, peak = _peak_rss_mb("replay", "--db", tmp_path / "db.duckdb", path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert peak < RSS_BOUND_MB, f"{path.name}: peak RSS {peak:.0f} MB"


def _tcp_record(src: bytes, dst: bytes, sport: int, dport: int, seq: int, head: bytes, tail: int) -> bytes:
    """A pcap record of an Ethernet/IPv4/TCP (PSH|ACK) frame whose payload is ``head`` then ``tail`` zeros,
    without the zeros (the caller appends them: one shared gzip member)."""
    size = 40 + len(head) + tail
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 0, 0, 64, 6, 0, src, dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 1, 5 << 4, 0x18, 65535, 0, 0)
    frame = b"\x00\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip + tcp + head
    return struct.pack("<IIII", 1_700_000_000, 0, len(frame) + tail, len(frame) + tail) + frame


def _held_pdus(path: Path, flows: int) -> Path:
    """``flows`` flows each holding most of a 250 KB AMS packet (four 60 KB segments: one gzip member of
    zeros shared by all), then a Modbus exchange between other hosts."""
    segments, zeros = 4, 60_000
    ams = struct.pack("<HI", 0, 250_000) + bytes(6) + struct.pack("<H", 851) + bytes(6)
    ams += struct.pack("<HHHIII", 32905, 3, 4, 250_000 - 32, 0, 1)  # ADS Write, 250 KB: most of it held
    shared = _gzip_member(bytes(zeros))
    parts = [_gzip_member(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262_144, 1))]
    for f in range(flows):
        src, sport, seq = bytes([10, 1, f >> 8, f & 255]), 1024 + f, 1000
        for k in range(segments):
            head = ams if k == 0 else b""
            parts += [_gzip_member(_tcp_record(src, b"\x0a\x02\x00\x01", sport, 48898, seq, head, zeros)), shared]
            seq += len(head) + zeros
    request = bytes.fromhex("000100000006010300000002")  # Modbus Read Holding Registers, then its answer
    answer = bytes.fromhex("00010000000701030400010002")
    plc, hmi = b"\x0a\x09\x09\x09", b"\x0a\x09\x09\x01"
    parts += [_gzip_member(_tcp_record(hmi, plc, 40000, 502, 1, request, 0)),
              _gzip_member(_tcp_record(plc, hmi, 502, 40000, 1, answer, 0))]  # fmt: skip
    path.write_bytes(b"".join(parts))
    return path


def _modbus_pair(db: Path) -> list[dict]:
    listed = subprocess.run([sys.executable, "-m", "sensor.cli", "connections", "--db", str(db)],
                            capture_output=True, text=True, check=True)  # fmt: skip
    return [row for row in json.loads(listed.stdout) if row["ports"] == [502]]


def test_many_flows_holding_partial_pdus_stay_within_the_bound(tmp_path):
    """Each flow's buffer is bounded, their number is not: 2,500 flows each holding most of a 250 KB AMS
    packet (600 MB in a ~2 MB file) took replay to ~0.9 GB. The budget for all flows holds it, and a
    Modbus exchange after them is still read."""
    path = _held_pdus(tmp_path / "held.pcap.gz", 2_500)
    assert path.stat().st_size < 4 * 2**20
    db = tmp_path / "db.duckdb"
    done, peak = _peak_rss_mb("replay", "--db", db, "--json", path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert peak < RSS_BOUND_MB, f"peak RSS {peak:.0f} MB"
    modbus = _modbus_pair(db)
    assert len(modbus) == 1 and "Read Holding Registers" in json.dumps(modbus[0])


def _syn_sources(path: Path, count: int) -> Path:
    """``count`` hosts 10.1.x.x each sending one SYN to 10.0.0.1:502 (a scan's or a flood's shape), 10,000 a
    second: every packet a new device and a new pair."""
    records = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i in range(count):
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xFFFF, 0, 64, 6, 0, struct.pack("!I", 0x0A010000 + i),
                         b"\x0a\x00\x00\x01")  # fmt: skip
        tcp = struct.pack("!HHIIBBHHH", 40000 + i % 20000, 502, i, 0, 0x50, 0x02, 1024, 0, 0)
        frame = b"\x00\x0e\x8c\x00\x00\x01\x00\x0e\x8c\x00\x00\x02\x08\x00" + ip + tcp
        records.append(struct.pack("<IIII", 1_700_000_000 + i // 10_000, i % 10_000 * 100, len(frame), len(frame)))
        records.append(frame)
    path.write_bytes(gzip.compress(b"".join(records), compresslevel=1))
    return path


def test_many_new_devices_past_learning_stay_within_the_bound(tmp_path):
    """40,000 new hosts in one 0.6 MB file, past learning: 40,000 devices, 40,000 pairs and an alert for
    each. Inserted at once, the merge's lists took replay to 689 MB (100,000 hosts: 1.56 GB); in slices,
    ~400 MB — and everything is stored."""
    path = _syn_sources(tmp_path / "syn.pcap.gz", 40_000)
    assert path.stat().st_size < 2**20
    config = tmp_path / "past-learning.toml"
    config.write_text("learning_hours = 0\n")
    db = tmp_path / "db.duckdb"
    done, peak = _peak_rss_mb("replay", "--db", db, "--json", "--config", config, path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert peak < RSS_BOUND_MB, f"peak RSS {peak:.0f} MB"
    from sensor.store import Store

    store = Store(str(db), read_only=True)
    try:
        assert store.counts() == (40_001, 40_000)
        titles = [alert["title"] for alert in store.alerts(1)]
        assert titles.count("New device detected") == 40_001 and titles.count("New connection detected") == 40_000
    finally:
        store.close()


def test_a_merge_in_slices_stores_what_one_insert_stores(tmp_path, monkeypatch):
    """Devices, connections, alerts and events inserted 7 rows at a time are those of one insert each:
    ids, order and content (new hosts past learning, then a Modbus and an S7 capture over them)."""
    from sensor import detect
    from sensor import store as store_module
    from sensor.detect import Detector
    from sensor.replay import replay

    files = [str(_syn_sources(tmp_path / "syn.pcap.gz", 100)), str(PCAPS / "modbus.pcap"), str(PCAPS / "s7comm.pcap")]

    def stored(name: str, rows: int) -> tuple:
        monkeypatch.setattr(detect, "INSERT_ROWS", rows)
        store = store_module.Store(str(tmp_path / name), detector=Detector(learning_hours=0))
        try:
            replay(files, store, progress=False)
            return (store.devices(), json.loads(store.connections_json()), store.alerts(2), store.events(),
                    store.counts())  # fmt: skip
        finally:
            store.close()

    whole, sliced = stored("whole.duckdb", 1 << 30), stored("sliced.duckdb", 7)
    assert whole[4][0] > 100 and len(whole[2]) > 200 and len(whole[3]) > 200
    for one, other in zip(whole, sliced):
        assert one == other


def test_the_packet_paths_bounds_are_settings(tmp_path):
    """`replay --config`: max_flows and reassembly_mb bound what the flows hold (what they gave up is
    counted); a value out of range is one line and exit 2."""
    path = _held_pdus(tmp_path / "held.pcap.gz", 1_200)
    config = tmp_path / "small.toml"
    config.write_text("max_flows = 1000\nreassembly_mb = 8\n")
    db = tmp_path / "db.duckdb"
    done = subprocess.run([sys.executable, "-m", "sensor.cli", "replay", str(path), "--db", str(db), "--json",
                           "--config", str(config)], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    errors = json.loads(done.stdout)["decodeErrors"]
    assert errors["flows"] >= 200 and errors["reassembly"] >= 1_000, errors  # 8 MiB: ~33 of 1,200 held
    assert "Read Holding Registers" in json.dumps(_modbus_pair(db))
    config.write_text("max_flows = 5\n")
    bad = subprocess.run([sys.executable, "-m", "sensor.cli", "replay", str(path), "--db", str(db),
                          "--config", str(config)], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "max_flows" in bad.stderr, bad.stderr


# --- the bad-input campaign, small: mutated captures of every format through replay processes ------------


def test_mutated_captures_never_crash_replay_nor_lose_stored_rows():
    # ~200 mutated files (field edits, flips, cuts, splices; a quarter gzip'd, some with the gzip
    # stream damaged) in processes of 25, each into a DB already holding modbus.pcap and s7comm.pcap.
    done = subprocess.run(
        [sys.executable, "bench/badinput.py", "--files", "200", "--per-process", "25", "--seed", "7", "--json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    result = json.loads(done.stdout)
    assert result["files"] == 200 and result["processes"] == 8
    assert result["tracebacks"] == 0, (result["tracebackFiles"], result["tracebackTails"])
    assert set(result["exitCodes"]) <= {"0", "2"}
    assert result["peakRssMb"] < RSS_BOUND_MB
    assert result["storedBefore"] >= 3 and result["storedKept"]
    assert result["problems"] > 0 and result["packets"] > 0  # the damage was read up to, and reported
