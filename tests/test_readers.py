"""Capture readers against tshark: every real capture, its gzip/byte-order/precision variants, and damage.

The real captures live outside the repo (read-only); OTSENSOR_REAL_PCAPS points elsewhere if needed.
"""

from __future__ import annotations

import gzip
import os
import random
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sensor import readers
from sensor.readers import CaptureError, CaptureReader, is_capture, iter_capture_files

from .conftest import REAL

MODBUS_PCAP = REAL / "iti" / "ModbusTCP_Modbus_modbus_test.pcap"  # little-endian µs pcap, Ethernet
PCAPNG = REAL / "plc4x" / "modbus-manual-test-capture.pcapng"
NETMON = REAL / "dsian-adsviewer" / "Demo.cap"
REAL_FILES = sorted(iter_capture_files([REAL])) if REAL.is_dir() else []


# --- helpers -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        pytest.skip("tshark is not installed")
    return path


def tshark_frames(tshark: str, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epoch ns, wire length, captured length) of every frame as tshark reads path."""
    # TZ=UTC: Wireshark reads a NetMon start time (a SYSTEMTIME) in the reader's zone; we read UTC.
    out = subprocess.run(
        [tshark, "-r", str(path), "-T", "fields", "-e", "frame.time_epoch", "-e", "frame.len", "-e", "frame.cap_len"],
        capture_output=True,
        text=True,
        env={**os.environ, "TZ": "UTC"},
        check=False,
    ).stdout
    ts, wire, cap = [], [], []
    for line in out.splitlines():
        epoch, wirelen, caplen = line.split("\t")
        secs, _, frac = epoch.partition(".")
        ts.append(int(secs) * 10**9 + int((frac + "000000000")[:9]))
        wire.append(int(wirelen))
        cap.append(int(caplen))
    return np.array(ts, dtype=np.int64), np.array(wire, dtype=np.int64), np.array(cap, dtype=np.int64)


def read_all(path, batch_size: int = 65536):
    """(reader, batches, ts_ns, wirelens, caplens, frame bytes) of a whole file, flattened."""
    reader = CaptureReader(path, batch_size)
    batches = list(reader.batches())
    frames = [
        bytes(b.data[o : o + c]) for b in batches for o, c in zip(b.offsets.tolist(), b.caplens.tolist(), strict=True)
    ]

    def cat(name):
        arrays = [getattr(b, name) for b in batches]
        return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)

    return reader, batches, cat("ts_ns"), cat("wirelens"), cat("caplens"), frames


def pcap_records(data: bytes) -> list[tuple[int, int, int, int, bytes]]:
    """(sec, frac, caplen, wirelen, frame) of a little-endian pcap."""
    records, pos = [], 24
    while pos + 16 <= len(data):
        sec, frac, caplen, wirelen = struct.unpack_from("<IIII", data, pos)
        records.append((sec, frac, caplen, wirelen, data[pos + 16 : pos + 16 + caplen]))
        pos += 16 + caplen
    return records


def write_pcap(path: Path, header: bytes, records, order: str = "<", magic: int = 0xA1B2C3D4) -> None:
    """A pcap in the given byte order from (sec, frac, caplen, wirelen, frame) records."""
    _magic, major, minor, zone, sigfigs, snaplen, linktype = struct.unpack_from("<IHHiIII", header)
    out = [struct.pack(order + "IHHiIII", magic, major, minor, zone, sigfigs, snaplen, linktype)]
    for sec, frac, caplen, wirelen, frame in records:
        out.append(struct.pack(order + "IIII", sec, frac, caplen, wirelen) + frame)
    path.write_bytes(b"".join(out))


# pcapng blocks, byte by byte (pcapng draft §3.1: type, total length, body padded to 32 bits, length).
def block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack(order + "II", btype, 12 + len(body)) + body + struct.pack(order + "I", 12 + len(body))


def shb(order: str) -> bytes:
    return block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def idb(order: str, linktype: int, snaplen: int = 0, options: bytes = b"") -> bytes:
    if options:
        options += option(order, 0, b"")
    return block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + options)


def epb(order: str, iface: int, ticks: int, frame: bytes, wirelen: int | None = None) -> bytes:
    head = struct.pack(order + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), wirelen or len(frame))
    return block(order, 6, head + frame)


def spb(order: str, frame: bytes) -> bytes:
    return block(order, 3, struct.pack(order + "I", len(frame)) + frame)


ETH_FRAME = bytes(range(60))
IP_FRAME = b"\x45" + bytes(range(39))


# --- every real capture equals tshark ----------------------------------------------------------------


def test_real_captures_are_there():
    assert len(REAL_FILES) > 50, f"expected the real captures under {REAL}"
    assert not any(p.name == "SOURCES.md" for p in REAL_FILES)


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: str(p.relative_to(REAL)))
def test_real_capture_matches_tshark(tshark, path):
    ts, wire, cap = tshark_frames(tshark, path)
    reader, batches, our_ts, our_wire, our_cap, _frames = read_all(path)
    assert len(our_ts) == len(ts), reader.problems
    assert our_ts[0] == ts[0] and our_ts[-1] == ts[-1]
    assert (our_ts == ts).all() and (our_wire == wire).all() and (our_cap == cap).all()
    assert reader.problems == []
    assert reader.bytes_read == reader.size == path.stat().st_size


def test_small_batches_equal_one_big_batch():
    _r, batches, ts, wire, cap, frames = read_all(PCAPNG)
    _r, small, ts7, wire7, cap7, frames7 = read_all(PCAPNG, batch_size=7)
    assert len(batches) == 1 and len(small) == -(-len(ts) // 7)
    assert all(len(b.offsets) == 7 for b in small[:-1])
    assert (ts7 == ts).all() and (wire7 == wire).all() and (cap7 == cap).all() and frames7 == frames


def test_netmon_timestamps_follow_wireshark(tshark):
    # Demo.cap is NetMon 2.0 whose per-frame offsets are really FILETIMEs; Wireshark's arithmetic
    # (start + offset * 1000 ns, 64-bit) puts the frames in 2129.  We agree with tshark, not with sense.
    reader, batches, ts, _wire, _cap, _frames = read_all(NETMON)
    assert reader.format == "netmon" and {b.linktype for b in batches} == {1}
    assert len(ts) == 710 and ts[0] == 5023261754676515688 and ts[-1] == 5023262010431652688


# --- variants built from real captures ----------------------------------------------------------------


@pytest.mark.parametrize("path", [MODBUS_PCAP, PCAPNG, NETMON], ids=["pcap", "pcapng", "netmon"])
def test_gzip_equals_plain(tmp_path, monkeypatch, path):
    packed = tmp_path / "capture.bin"  # no .gz: gzip is recognised by its magic, not its name
    with open(path, "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain = read_all(path, batch_size=100)
    # A tiny read-ahead makes the stream window slide under records and batches many times.
    monkeypatch.setattr(readers, "_STREAM_CHUNK", 997)
    reader, batches, ts, wire, cap, frames = read_all(packed, batch_size=100)
    assert reader.format == plain[0].format and reader.problems == []
    assert [len(b.offsets) for b in batches] == [len(b.offsets) for b in plain[1]]
    assert (ts == plain[2]).all() and (wire == plain[3]).all() and (cap == plain[4]).all()
    assert frames == plain[5]
    assert reader.bytes_read == reader.size == packed.stat().st_size


def test_big_endian_pcap_reads_the_same(tmp_path):
    data = MODBUS_PCAP.read_bytes()
    swapped = tmp_path / "big-endian.pcap"
    write_pcap(swapped, data[:24], pcap_records(data), order=">")
    assert swapped.read_bytes()[:4] == b"\xa1\xb2\xc3\xd4"
    _r, _b, ts, wire, cap, frames = read_all(MODBUS_PCAP)
    reader, _b, be_ts, be_wire, be_cap, be_frames = read_all(swapped)
    assert reader.problems == [] and len(be_ts) == 2257
    assert (be_ts == ts).all() and (be_wire == wire).all() and (be_cap == cap).all() and be_frames == frames


@pytest.mark.parametrize("order", ["<", ">"])
def test_nanosecond_pcap_reads_the_same(tmp_path, order):
    data = MODBUS_PCAP.read_bytes()
    records = pcap_records(data)
    # Same instants in nanoseconds, plus 1..999 ns that a microsecond file cannot hold.
    ns_records = [(s, f * 1000 + i % 1000, c, w, fr) for i, (s, f, c, w, fr) in enumerate(records)]
    path = tmp_path / "nano.pcap"
    write_pcap(path, data[:24], ns_records, order=order, magic=0xA1B23C4D)
    _r, _b, ts_us, wire, cap, frames = read_all(MODBUS_PCAP)
    reader, _b, ts_ns, wire_ns, cap_ns, frames_ns = read_all(path)
    assert reader.problems == []
    assert (ts_ns == ts_us + np.arange(len(ts_us)) % 1000).all()
    assert (wire_ns == wire).all() and (cap_ns == cap).all() and frames_ns == frames


@pytest.mark.parametrize("fmt", ["netmon1", "netmon2", "modpcap", "pcapng"])
def test_editcap_conversions_match_tshark(tshark, tmp_path, fmt):
    editcap = shutil.which("editcap")
    if editcap is None:
        pytest.skip("editcap (shipped with tshark) is not installed")
    out = tmp_path / f"converted.{fmt}"
    subprocess.run([editcap, "-F", fmt, str(MODBUS_PCAP), str(out)], check=True, capture_output=True)
    ts, wire, cap = tshark_frames(tshark, out)
    reader, _b, our_ts, our_wire, our_cap, frames = read_all(out)
    assert reader.problems == [] and len(our_ts) == len(ts) == 2257
    assert (our_ts == ts).all() and (our_wire == wire).all() and (our_cap == cap).all()
    assert frames == read_all(MODBUS_PCAP)[5]


# --- damage ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_truncated_pcap_keeps_complete_frames(tmp_path, seed):
    data = MODBUS_PCAP.read_bytes()
    records = pcap_records(data)
    starts = np.cumsum([24] + [16 + r[2] for r in records])  # record k starts at starts[k]
    cut = random.Random(seed).randrange(25, len(data) - 1)
    k = int(np.searchsorted(starts, cut, side="right")) - 1  # the record the cut falls into
    if cut == starts[k]:
        cut += 1
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[:cut])
    reader, _b, ts, _w, _c, frames = read_all(path)
    assert frames == [r[4] for r in records[:k]]
    assert len(reader.problems) == 1
    assert f"truncated record {k + 1} at byte {starts[k]}" in reader.problems[0]


def test_truncated_pcap_names_sizes(tmp_path):
    data = MODBUS_PCAP.read_bytes()
    first = pcap_records(data)[0]
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[: 24 + 16 + 10])
    reader, _b, ts, *_ = read_all(path)
    assert len(ts) == 0
    assert reader.problems == [f"truncated record 1 at byte 24: header says {first[2]} bytes, 10 left"]


def test_corrupt_caplen_stops_with_problem(tmp_path):
    data = bytearray(MODBUS_PCAP.read_bytes())
    records = pcap_records(bytes(data))
    at = 24 + sum(16 + r[2] for r in records[:4])  # record 5
    struct.pack_into("<I", data, at + 8, 0x7FFFFFFF)
    path = tmp_path / "corrupt.pcap"
    path.write_bytes(bytes(data))
    reader, _b, ts, *_ = read_all(path)
    assert len(ts) == 4
    assert reader.problems and reader.problems[0].startswith(f"corrupt record 5 at byte {at}:")


def test_truncated_pcapng_and_gzip(tmp_path):
    data = PCAPNG.read_bytes()
    full = read_all(PCAPNG)
    cut = len(data) // 2 + 3
    plain, packed = tmp_path / "cut.pcapng", tmp_path / "cut.pcapng.gz"
    plain.write_bytes(data[:cut])
    with gzip.open(packed, "wb") as gz:
        gz.write(data[:cut])
    for path in (plain, packed):
        reader, _b, ts, _w, _c, frames = read_all(path)
        assert 0 < len(ts) < len(full[2]) and frames == full[5][: len(ts)]
        assert len(reader.problems) == 1 and reader.problems[0].startswith("truncated block")


@pytest.mark.parametrize(
    "damage, why",
    [
        ("leading", "block length 94 is not a multiple of 4 of at least 32"),
        ("trailing", "trailing length 999 differs from block length 92"),
        ("interface", "interface 3 not described (section has 1)"),
    ],
)
def test_corrupt_pcapng_block_stops_with_problem(tmp_path, damage, why):
    blocks = [shb("<"), idb("<", 1)] + [epb("<", 0, 1_000_000 * i, ETH_FRAME) for i in range(5)]
    bad = bytearray(blocks[4])  # the third EPB is block 5: 28 + 60 + 4 = 92 bytes
    if damage == "leading":
        struct.pack_into("<I", bad, 4, len(bad) + 2)
    elif damage == "trailing":
        struct.pack_into("<I", bad, len(bad) - 4, 999)
    else:
        struct.pack_into("<I", bad, 8, 3)
    blocks[4] = bytes(bad)
    path = tmp_path / "corrupt.pcapng"
    path.write_bytes(b"".join(blocks))
    reader, _b, ts, *_ = read_all(path)
    at = sum(map(len, blocks[:4]))
    assert len(ts) == 2
    assert reader.problems == [f"corrupt block 5 at byte {at}: {why}; stopped reading"]


@pytest.mark.parametrize(
    "content", [b"", b"\x00" * 100, b"hello, this is not a capture", b"\x1f\x8b\x08garbage", b"\xd4\xc3"]
)
def test_not_a_capture_raises(tmp_path, content):
    path = tmp_path / "file.pcap"
    path.write_bytes(content)
    assert not is_capture(path)
    with pytest.raises(CaptureError):
        CaptureReader(path)


def test_gzip_of_garbage_and_missing_file_raise(tmp_path):
    path = tmp_path / "junk.gz"
    with gzip.open(path, "wb") as gz:
        gz.write(b"MZ this is an executable, not a capture")
    with pytest.raises(CaptureError, match="not a pcap"):
        CaptureReader(path)
    with pytest.raises(CaptureError, match="cannot read"):
        CaptureReader(tmp_path / "missing.pcap")


def test_header_only_files_are_problems_not_errors(tmp_path):
    for name, content in (("short.pcap", MODBUS_PCAP.read_bytes()[:10]), ("short.cap", b"GMBU\x00\x02")):
        path = tmp_path / name
        path.write_bytes(content)
        reader, batches, *_ = read_all(path)
        assert batches == [] and reader.problems[0].startswith("truncated file header")


# --- pcapng built byte by byte ------------------------------------------------------------------------


def test_pcapng_two_interfaces_with_two_link_types(tmp_path):
    o = "<"
    tsresol_ns = option(o, 9, b"\x09")  # 10^-9 s
    tsresol_pow2 = option(o, 9, b"\x8a")  # 2^-10 s, the power-of-two form
    tsoffset = option(o, 14, struct.pack("<q", 1_000_000_000))  # seconds added to every timestamp
    blocks = [
        shb(o),
        idb(o, 1, 0, tsresol_ns),  # interface 0: Ethernet
        idb(o, 101, 0, tsresol_pow2 + tsoffset),  # interface 1: raw IP
        block(o, 4, b"\x00\x00\x00\x00"),  # name resolution block: skipped
        epb(o, 0, 1_600_000_000_123_456_789, ETH_FRAME),
        epb(o, 0, 1_600_000_000_223_456_789, ETH_FRAME, wirelen=1514),
        epb(o, 1, 1024 * 10 + 512, IP_FRAME),  # 10.5 s after the offset
        epb(o, 0, 1_600_000_001_000_000_000, ETH_FRAME),
        block(o, 0x0BAD, b"\x00\x00\x7f\x00data"),  # custom block: skipped
        spb(o, ETH_FRAME[:20]),  # interface 0, no timestamp: the last one seen
        block(o, 5, struct.pack("<III", 0, 0, 0)),  # interface statistics: skipped
    ]
    path = tmp_path / "two-interfaces.pcapng"
    path.write_bytes(b"".join(blocks))
    reader, batches, ts, wire, cap, frames = read_all(path)
    assert reader.problems == [] and reader.format == "pcapng"
    assert [(b.linktype, len(b.offsets)) for b in batches] == [(1, 2), (101, 1), (1, 2)]
    ip_ts = (1_000_000_000 + 10) * 10**9 + 500_000_000
    assert ts.tolist() == [
        1_600_000_000_123_456_789,
        1_600_000_000_223_456_789,
        ip_ts,
        1_600_000_001_000_000_000,
        1_600_000_001_000_000_000,
    ]
    assert frames == [ETH_FRAME, ETH_FRAME, IP_FRAME, ETH_FRAME, ETH_FRAME[:20]]
    assert wire.tolist() == [60, 1514, 40, 60, 20] and cap.tolist() == [60, 60, 40, 60, 20]


def test_pcapng_sections_reset_interfaces_and_byte_order(tmp_path):
    blocks = [
        shb(">"),
        idb(">", 1),
        epb(">", 0, 5_000_000, ETH_FRAME),  # default resolution: microseconds
        shb("<"),
        idb("<", 228),  # a new section: interface 0 is now raw IPv4
        epb("<", 0, 7_000_000, IP_FRAME),
        block("<", 2, struct.pack("<HHIIII", 0, 0, 0, 8_000_000, 40, 40) + IP_FRAME),  # obsolete PB
    ]
    path = tmp_path / "sections.pcapng"
    path.write_bytes(b"".join(blocks))
    reader, batches, ts, _w, _c, frames = read_all(path)
    assert reader.problems == []
    assert [(b.linktype, len(b.offsets)) for b in batches] == [(1, 1), (228, 2)]
    assert ts.tolist() == [5 * 10**9, 7 * 10**9, 8 * 10**9]
    assert frames == [ETH_FRAME, IP_FRAME, IP_FRAME]


def test_pcapng_with_two_interfaces_matches_tshark(tshark, tmp_path):
    o = "<"
    blocks = [shb(o), idb(o, 1), idb(o, 101, 0, option(o, 9, b"\x8a"))]
    for i in range(40):
        if i % 3:
            blocks.append(epb(o, 0, 1_700_000_000_000_000 + i * 1234, ETH_FRAME))
        else:
            blocks.append(epb(o, 1, (1_700_000_000 << 10) + i * 77, IP_FRAME))
    path = tmp_path / "interleaved.pcapng"
    path.write_bytes(b"".join(blocks))
    ts, wire, _cap = tshark_frames(tshark, path)
    reader, batches, our_ts, our_wire, *_ = read_all(path)
    assert (our_ts == ts).all() and (our_wire == wire).all() and reader.problems == []
    assert {b.linktype for b in batches} == {1, 101}
    assert all(len(set(b.caplens.tolist())) == 1 for b in batches)  # no batch mixes the two


# --- picking files --------------------------------------------------------------------------------------


def test_iter_capture_files_picks_by_magic(tmp_path):
    (tmp_path / "sub").mkdir()
    shutil.copy(MODBUS_PCAP, tmp_path / "sub" / "b.pcap")
    shutil.copy(PCAPNG, tmp_path / "a.dat")  # any name
    with gzip.open(tmp_path / "sub" / "c.pcap.gz", "wb") as gz:
        gz.write(MODBUS_PCAP.read_bytes())
    (tmp_path / "SOURCES.md").write_text("# sources\n")
    (tmp_path / "empty.pcap").write_bytes(b"")
    found = iter_capture_files([tmp_path])
    assert found == [tmp_path / "a.dat", tmp_path / "sub" / "b.pcap", tmp_path / "sub" / "c.pcap.gz"]
    # A file named explicitly is kept, so the caller can report it; duplicates are dropped.
    assert iter_capture_files([tmp_path / "SOURCES.md", tmp_path / "a.dat", tmp_path]) == [
        tmp_path / "SOURCES.md",
        *found,
    ]


@pytest.mark.parametrize("path", [MODBUS_PCAP, PCAPNG, NETMON], ids=["pcap", "pcapng", "netmon"])
@pytest.mark.parametrize("packed", [False, True], ids=["plain", "gzip"])
def test_batches_bounded_in_bytes_hold_the_same_frames(tmp_path, path, packed):
    if packed:
        path = shutil.copyfile(path, tmp_path / "capture")
        with open(path, "rb") as src:
            data = src.read()
        path.write_bytes(gzip.compress(data, mtime=0))
    _r, whole, ts, wire, cap, frames = read_all(path)
    reader = CaptureReader(path, batch_size=65536, max_batch_bytes=1000)
    small = list(reader.batches())
    assert reader.problems == [] and len(small) > len(whole)
    for b in small:  # each batch's frames span at most 1000 bytes of the capture, or it is one frame
        span = int((b.offsets + b.caplens).max() - b.offsets.min())
        assert span <= 1000 or len(b.offsets) == 1
    got = [bytes(b.data[o : o + c]) for b in small for o, c in zip(b.offsets.tolist(), b.caplens.tolist())]
    assert got == frames and (np.concatenate([b.ts_ns for b in small]) == ts).all()


# --- hypothesis over every header, block and option field of every format (and gzip around each) ----------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sensor.engine import Engine  # noqa: E402

FIELDS = settings(
    max_examples=int(os.environ.get("OTSENSOR_FIELD_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
U16, U32, U64 = st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)


def _or_true(true_value: int, lie: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly the field's true value (so the file goes on past it), sometimes any value of its width."""
    return st.one_of(st.just(true_value), st.just(true_value), lie)


def check_reads_cleanly(path: Path) -> None:
    """What every file must give: CaptureError (not a capture) or batches + problems, never another
    exception; frames inside their buffer; stamps int64 in range; problems naming a record say where."""
    try:
        reader = CaptureReader(path, batch_size=3, max_batch_bytes=200)
    except CaptureError:
        return
    engine = Engine()
    for batch in reader.batches():
        n = len(batch.data)
        assert batch.offsets.dtype == batch.caplens.dtype == batch.ts_ns.dtype == np.int64
        assert (batch.offsets >= 0).all() and (batch.offsets + batch.caplens <= n).all()
        assert ((batch.ts_ns >= readers.STAMP_MIN_NS) & (batch.ts_ns <= readers.STAMP_MAX_NS)).all()
        engine.process_batch(batch)
    engine.take_delta()
    for problem in reader.problems:
        if re.search(r"\b(record|block) \d+", problem):
            assert "at byte " in problem, problem


def write_maybe_gzipped(tmp_path: Path, content: bytes, packed: bool, cut: int | None) -> Path:
    if cut is not None:
        content = content[: cut % (len(content) + 1)]
    path = tmp_path / "capture"
    path.write_bytes(gzip.compress(content, mtime=0) if packed else content)
    return path


class Fields:
    """A capture written field by field, remembering where each header/option field sits, so that a
    test can overwrite any of them afterwards (``edit``) while the rest of the file stays well formed."""

    def __init__(self, order: str) -> None:
        self.order, self.out, self.fields = order, bytearray(), []

    def put(self, fmt: str, *values, field: bool = True) -> None:
        layout = struct.Struct(self.order + fmt)
        at = len(self.out)
        self.out += layout.pack(*values)
        if field:
            for code, offset in _field_offsets(fmt):
                self.fields.append((at + offset, code))

    def raw(self, data: bytes) -> None:
        self.out += data

    def edit(self, edits) -> bytes:
        out = bytearray(self.out)
        for index, value in edits:
            if self.fields:
                at, code = self.fields[index % len(self.fields)]
                width = struct.calcsize(code)
                out[at : at + width] = (value % 2 ** (8 * width)).to_bytes(
                    width, "little" if self.order == "<" else "big"
                )
        return bytes(out)


def _field_offsets(fmt: str) -> list[tuple[str, int]]:
    offsets, at = [], 0
    for code in re.findall(r"\d*[a-zA-Z]", fmt):
        count, letter = (int(code[:-1]), code[-1]) if len(code) > 1 else (1, code)
        if letter == "s":
            at += count
            continue
        for _ in range(count):
            offsets.append((letter, at))
            at += struct.calcsize(letter)
    return offsets


# A field's new value: the edges of every width (0, 1, max, the sign bit ...) or anything.
EDGES = [0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**40, 2**63 - 1,
         2**63, 2**64 - 1, 262144, 262145, 16 * 2**20]  # fmt: skip
edits = st.lists(st.tuples(st.integers(0, 200), st.one_of(st.sampled_from(EDGES), U64)), max_size=3)
frames = st.lists(st.binary(max_size=60), max_size=5)
wrapping = st.tuples(st.booleans(), st.one_of(st.none(), st.integers(0)))  # gzip'd, cut at


@FIELDS
@given(st.sampled_from(list(readers._PCAP_MAGICS)), frames, edits, wrapping)
def test_pcap_header_and_record_fields(tmp_path_factory, magic, payloads, changes, wrap):
    order, _mult, hdr_len = readers._PCAP_MAGICS[magic]
    f = Fields(order)
    f.raw(magic)
    f.put("HHiIII", 2, 4, 0, 0, 262144, 1)  # version, thiszone, sigfigs, snaplen, LinkType and FCS bits
    for i, frame in enumerate(payloads):
        f.put("IIII", 1_700_000_000 + i, 0, len(frame), len(frame))  # seconds, fraction, caplen, original length
        f.raw(bytes(hdr_len - 16) + frame)
    check_reads_cleanly(write_maybe_gzipped(tmp_path_factory.mktemp("pcap"), f.edit(changes), *wrap))


@FIELDS
@given(
    st.sampled_from(["<", ">"]),
    st.lists(
        st.tuples(st.sampled_from([1, 101, 113, 239]), st.binary(min_size=1, max_size=1), I64), min_size=1, max_size=2
    ),  # fmt: skip
    st.lists(
        st.tuples(st.sampled_from([6, 6, 3, 2, 4, 0x0BAD]), st.integers(0, 1), U64, st.binary(max_size=60)), max_size=5
    ),  # fmt: skip
    edits,
    wrapping,
)
def test_pcapng_block_and_option_fields(tmp_path_factory, order, interfaces, blocks, changes, wrap):
    f = Fields(order)

    def block_of(btype: int, body_fields, tail: bytes = b"") -> None:
        size = 12 + sum(struct.calcsize(fmt) for fmt, _ in body_fields) + len(tail) + (-len(tail) % 4)
        f.put("II", btype, size)
        for fmt, values in body_fields:
            f.put(fmt, *values)
        f.raw(tail + b"\0" * (-len(tail) % 4))
        f.put("I", size)

    block_of(0x0A0D0D0A, [("IHHq", (0x1A2B3C4D, 1, 0, -1))])
    for linktype, tsresol, tsoffset in interfaces:  # IDB with if_tsresol and if_tsoffset, then opt_endofopt
        block_of(1, [("HHI", (linktype, 0, 262144)), ("HH", (9, 1)), ("4s", (tsresol + b"\0\0\0",)),
                     ("HH", (14, 8)), ("q", (tsoffset,)), ("HH", (0, 0))])  # fmt: skip
    for btype, iface, ticks, frame in blocks:
        iface %= len(interfaces)
        if btype == 6:
            block_of(6, [("IIIII", (iface, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame)))], frame)
        elif btype == 2:
            block_of(2, [("HHIIII", (iface, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame)))], frame)
        elif btype == 3:
            block_of(3, [("I", (len(frame),))], frame)
        else:
            block_of(btype, [], frame)
    check_reads_cleanly(write_maybe_gzipped(tmp_path_factory.mktemp("pcapng"), f.edit(changes), *wrap))


@FIELDS
@given(
    st.sampled_from([(b"GMBU", 2), (b"RTSS", 1)]),
    st.integers(0, 4),
    st.sampled_from([0, 1, 2, 7, 0xE001, 0xE071, 0xFFE0, 0xFFFE]),
    st.integers(1601, 30827),  # SYSTEMTIME's year range
    st.lists(st.tuples(st.binary(max_size=60), st.sampled_from([1, 7, 0xE001, 0xFFE0]), U64), max_size=4),
    edits,
    wrapping,
)
def test_netmon_header_table_and_frame_fields(tmp_path_factory, magic_major, minor, media, year, records, changes,
                                             wrap):  # fmt: skip
    magic, major = magic_major
    trailer = 0 if major == 1 or minor == 0 else {1: 2, 2: 6}.get(minor, 15)
    rec = "IHH" if major == 1 else "qII"  # time since start, original length, captured length
    sizes = [struct.calcsize("<" + rec) + len(frame) + trailer for frame, _kind, _ft in records]
    table_at = 64 + sum(sizes)
    f = Fields("<")
    f.raw(magic)
    f.put("BBH8H", minor, major, media, year, 1, 1, 5, 8, 0, 0, 0)  # version, media, capture start
    f.put("2I", table_at, 4 * len(records))  # frame table offset and length
    f.put("8I", *([0] * 8), field=False)
    for (frame, kind, filetime), i in zip(records, range(len(records))):
        f.put(rec, i * 1000, len(frame), len(frame))
        f.raw(frame)
        if trailer:
            n = {2: 1, 6: 2, 15: 4}[trailer]  # media type; process info index; UTC FILETIME; zone index
            f.put("HIQB"[:n], *(kind, 0, filetime, 0)[:n])
    f.put(f"{len(records)}I", *(64 + sum(sizes[:i]) for i in range(len(records))))
    check_reads_cleanly(write_maybe_gzipped(tmp_path_factory.mktemp("netmon"), f.edit(changes), *wrap))
