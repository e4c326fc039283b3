"""Frames/s of sensor.readers on a 1M-frame capture, against scapy's PcapReader on a 20k-frame sample.

Owns building the benchmark captures in a temp folder and timing them; never writes into the repo."""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sensor.readers import CaptureReader  # noqa: E402

# Usage: python bench/readers_bench.py [--frames N] [--source PCAP] [--workdir DIR]
#
# The big capture repeats the records of --source (default: the ITI ModbusTCP_mb2.pcap) until it holds
# N frames; a pcapng twin (one IDB, EPBs) and a gzip copy are built next to it.  The time counted is
# what a decoder waits for: iterating ``CaptureReader.batches()`` until every batch is produced.

DEFAULT_SOURCE = Path("/work/shared/pcaps/real/iti/ModbusTCP_mb2.pcap")
_REC = struct.Struct("<IIII")


def source_records(source: Path) -> tuple[bytes, list[bytes]]:
    """The pcap file header and each record (header + data) of a little-endian pcap."""
    data = source.read_bytes()
    if data[:4] != b"\xd4\xc3\xb2\xa1":
        raise SystemExit(f"{source}: need a little-endian microsecond pcap")
    records, pos = [], 24
    while pos + 16 <= len(data):
        caplen = _REC.unpack_from(data, pos)[2]
        records.append(data[pos : pos + 16 + caplen])
        pos += 16 + caplen
    return data[:24], records


def build_pcap(path: Path, source: Path, frames: int) -> None:
    header, records = source_records(source)
    with open(path, "wb") as out:
        out.write(header)
        for i in range(frames):
            out.write(records[i % len(records)])


def build_pcapng(path: Path, source: Path, frames: int) -> None:
    """The same frames as one section, one Ethernet interface (microseconds) and EPBs."""
    _header, records = source_records(source)
    linktype = struct.unpack_from("<I", source.read_bytes(), 20)[0] & 0xFFFF

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    with open(path, "wb") as out:
        out.write(block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
        out.write(block(1, struct.pack("<HHI", linktype, 0, 262144)))
        for i in range(frames):
            rec = records[i % len(records)]
            sec, usec, caplen, wirelen = _REC.unpack_from(rec)
            ticks = sec * 1_000_000 + usec
            body = struct.pack("<IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, caplen, wirelen) + rec[16:]
            out.write(block(6, body))


def time_reader(path: Path, repeats: int) -> tuple[int, float]:
    """(frames, best seconds) for producing every batch of path."""
    best, frames = float("inf"), 0
    for _ in range(repeats):
        reader = CaptureReader(path)
        start = time.perf_counter()
        frames = sum(len(batch.offsets) for batch in reader.batches())
        best = min(best, time.perf_counter() - start)
        if reader.problems:
            raise SystemExit(f"{path}: {reader.problems}")
    return frames, best


def time_scapy(path: Path, limit: int) -> tuple[int, float]:
    from scapy.utils import PcapReader

    start = time.perf_counter()
    frames = 0
    with PcapReader(str(path)) as reader:
        for _packet in reader:
            frames += 1
            if frames == limit:
                break
    return frames, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "otsensor-readers-bench")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scapy-frames", type=int, default=20_000)
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    pcap = args.workdir / f"bench-{args.frames}.pcap"
    pcapng = args.workdir / f"bench-{args.frames}.pcapng"
    pcap_gz = args.workdir / f"bench-{args.frames}.pcap.gz"
    if not pcap.exists():
        build_pcap(pcap, args.source, args.frames)
    if not pcapng.exists():
        build_pcapng(pcapng, args.source, args.frames)
    if not pcap_gz.exists():
        with open(pcap, "rb") as src, gzip.open(pcap_gz, "wb", compresslevel=1) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)

    frames, seconds = time_reader(pcap, args.repeats)
    ours = frames / seconds
    print(f"readers pcap    : {frames} frames in {seconds:.3f} s = {ours:,.0f} frames/s  ({pcap})")
    for label, path in (("pcapng", pcapng), ("pcap.gz", pcap_gz)):
        n, s = time_reader(path, 1 if path is pcap_gz else args.repeats)
        print(f"readers {label:<8}: {n} frames in {s:.3f} s = {n / s:,.0f} frames/s")
    n, s = time_scapy(pcap, args.scapy_frames)
    theirs = n / s
    print(f"scapy PcapReader: {n} frames in {s:.3f} s = {theirs:,.0f} frames/s")
    print(f"ratio readers/scapy (pcap): {ours / theirs:.0f}x")


if __name__ == "__main__":
    main()
