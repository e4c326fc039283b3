"""Bad-input campaign: thousands of mutated captures through `otsensor replay` as a process.

Owns mutating the real captures (../shared/pcaps/real) and the project's own (pcaps/, gzip included)
in a temp folder and counting what replay does with them; never writes into the repo.

    python bench/badinput.py                      # 5,000 mutated files, 25 per replay process
    python bench/badinput.py --files 200 --json   # what tests/test_hostile_captures.py runs

Each replay process gets several mutated files and a DB that already holds the replay of
pcaps/modbus.pcap and pcaps/s7comm.pcap; counted: exit statuses (0 or 2 allowed), tracebacks (none
allowed), peak RSS per process (os.wait4), and whether every connection stored before is still there,
with its commands, after every garbage replay into the same DB.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "pcaps" / "real"
PCAPS = ROOT / "pcaps"
SEED_CAPTURES = [PCAPS / "modbus.pcap", PCAPS / "s7comm.pcap"]
CAPTURE_NAMES = (".pcap", ".pcapng", ".cap", ".pcap.gz")
RSS_BOUND_MB = 512

# Values that break length and time arithmetic: zero, one, signs, widths, the format limits.
EDGES = [0, 1, 3, 4, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 2**31 - 1, 2**31, 2**32 - 1, 2**40,
         2**63 - 1, 2**63, 2**64 - 1, 262144, 262145, 16 * 2**20, 16 * 2**20 + 4]  # fmt: skip


def sources() -> list[Path]:
    found = sorted(p for p in REAL.rglob("*") if p.name.endswith(CAPTURE_NAMES)) if REAL.is_dir() else []
    return found + sorted(p for p in PCAPS.rglob("*") if p.name.endswith(CAPTURE_NAMES))


def plain(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def record_starts(data: bytes) -> list[int]:
    """Where each record/block header begins (pcap, pcapng), or the header and frame table (NetMon):
    the offsets whose fields a mutation aims at."""
    starts = [0]
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = "<" if magic[0] in (0xD4, 0x4D) else ">"
        pos = 24
        while pos + 16 <= len(data) and len(starts) < 4096:
            starts.append(pos)
            pos += 16 + struct.unpack_from(order + "I", data, pos + 8)[0]
    elif magic == b"\x0a\x0d\x0d\x0a" and len(data) >= 12:
        order = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        pos = 0
        while pos + 12 <= len(data) and len(starts) < 4096:
            starts.append(pos)
            length = struct.unpack_from(order + "I", data, pos + 4)[0]
            if length < 12:
                break
            pos += length
    elif magic in (b"GMBU", b"RTSS") and len(data) >= 32:
        table_at, table_len = struct.unpack_from("<II", data, 24)
        starts += [4, 8, 24]
        for i in range(min(table_len // 4, 4096)):
            at = table_at + 4 * i
            if at + 4 > len(data):
                break
            starts += [at, struct.unpack_from("<I", data, at)[0]]
    return starts


def stamp_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, width) of the fields a time is made of: pcap seconds and fractions, pcapng if_tsresol,
    if_tsoffset and EPB/PB ticks, NetMon's SYSTEMTIME start and per-frame offsets."""
    fields = []
    magic = data[:4]
    if magic == b"\x0a\x0d\x0d\x0a" and len(data) >= 12:
        order = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        pos = 0
        while pos + 12 <= len(data) and len(fields) < 4096:
            btype, length = struct.unpack_from(order + "II", data, pos)
            if length < 12:
                break
            if btype == 1:  # IDB: walk the options for if_tsresol (9) and if_tsoffset (14)
                opt = pos + 16
                while opt + 4 <= min(pos + length - 4, len(data)):
                    code, olen = struct.unpack_from(order + "HH", data, opt)
                    if code in (9, 14):
                        fields.append((opt + 4, 1 if code == 9 else 8))
                    if code == 0:
                        break
                    opt += 4 + ((olen + 3) & ~3)
            elif btype in (2, 6):
                fields += [(pos + 12, 4), (pos + 16, 4)]  # ticks high, low (PB: 2 bytes later, roughly)
            pos += length
    elif magic in (b"GMBU", b"RTSS"):
        fields += [(8, 2), (10, 2), (14, 2), (16, 2), (22, 2)]  # year, month, day, hour, milliseconds
        if len(data) >= 32:
            table_at, table_len = struct.unpack_from("<II", data, 24)
            for i in range(min(table_len // 4, 4096)):
                if table_at + 4 * i + 4 <= len(data):
                    fields.append((struct.unpack_from("<I", data, table_at + 4 * i)[0], 8))
    else:
        fields += [(at, 4) for at in record_starts(data)[1:]]
    return [(at, width) for at, width in fields if at + width <= len(data)]


def mutate(rng: random.Random, data: bytes, other: bytes) -> tuple[bytes, str]:
    """One mutation of an uncompressed capture -> (new content, what was done)."""
    out = bytearray(data)
    kind = rng.choice(["field", "field", "stamps", "stamps", "flips", "truncate", "chunk", "splice", "lengths"])
    if kind == "stamps":
        fields = stamp_fields(data)
        for _ in range(rng.randint(1, 3) if fields else 0):
            at, width = rng.choice(fields)
            value = rng.choice(EDGES + [rng.getrandbits(8 * width)] * 4)
            out[at : at + width] = (value % 2 ** (8 * width)).to_bytes(width, rng.choice(["little", "big"]))
    elif kind == "field" or kind == "lengths":
        starts = record_starts(data)
        for _ in range(rng.randint(1, 3)):
            at = rng.choice(starts) + rng.randrange(0, 40)
            width = rng.choice([1, 2, 4, 8])
            value = rng.choice(EDGES) if kind == "lengths" or rng.random() < 0.6 else rng.getrandbits(64)
            order = rng.choice(["little", "big"])
            if at + width <= len(out):
                out[at : at + width] = (value % 2 ** (8 * width)).to_bytes(width, order)
    elif kind == "flips":
        for _ in range(rng.randint(1, 16)):
            if out:
                out[rng.randrange(len(out))] = rng.randrange(256)
    elif kind == "truncate":
        del out[rng.randrange(len(out) + 1) :]
    elif kind == "chunk":  # delete, duplicate or insert random bytes somewhere
        at = rng.randrange(len(out) + 1)
        n = rng.randint(1, 64)
        how = rng.choice(["delete", "duplicate", "insert"])
        if how == "delete":
            del out[at : at + n]
        elif how == "duplicate":
            out[at:at] = out[at : at + n]
        else:
            out[at:at] = rng.randbytes(n)
    else:  # splice: the head of this file, the tail of another
        out = out[: rng.randrange(len(out) + 1)] + other[rng.randrange(len(other) + 1) :]
    return bytes(out), kind


def make_files(count: int, seed: int, folder: Path) -> list[Path]:
    rng = random.Random(seed)
    originals = [plain(path) for path in sources()]
    files = []
    for i in range(count):
        data, kind = mutate(rng, rng.choice(originals), rng.choice(originals))
        wrap = rng.random()
        if wrap < 0.25:  # gzip around the mutated capture
            data, kind = gzip.compress(data, compresslevel=1, mtime=0), kind + "+gzip"
        elif wrap < 0.30:  # the compressed stream itself damaged
            packed = bytearray(gzip.compress(data, compresslevel=1, mtime=0))
            for _ in range(rng.randint(1, 4)):
                packed[rng.randrange(10, len(packed))] = rng.randrange(256)
            data, kind = bytes(packed), kind + "+gzip-damaged"
        path = folder / f"{i:05d}-{kind}.bin"
        path.write_bytes(data)
        files.append(path)
    return files


def run(args: list[str]) -> tuple[int, str, float, dict | None]:
    """A child process -> (exit status, stderr, its own peak RSS in MB, the --json summary if any)."""
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen(args, stdout=out, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        stderr = child.stderr.read()
        child.stderr.close()
        _pid, status, usage = os.wait4(child.pid, 0)
        out.seek(0)
        try:
            summary = json.loads(out.read())
        except ValueError:
            summary = None
    return os.waitstatus_to_exitcode(status), stderr, usage.ru_maxrss / 1024, summary


def otsensor(*args) -> list[str]:
    return [sys.executable, "-m", "sensor.cli", *map(str, args)]


def stored(db: Path) -> dict:
    """(first ip, second ip) -> (ports, commands) of every stored connection, through the CLI."""
    devices = json.loads(subprocess.run(otsensor("devices", "--db", db), capture_output=True, check=True).stdout)
    ips = {d["id"]: d["ipAddresses"][0] for d in devices}
    rows = json.loads(subprocess.run(otsensor("connections", "--db", db), capture_output=True, check=True).stdout)
    return {
        (ips[r["firstDeviceId"]], ips[r["secondDeviceId"]]): (
            set(r["ports"]),
            {(p["name"], c) for p in r["protocols"] for c in p["commands"]},
        )
        for r in rows
    }


def kept(before: dict, after: dict) -> bool:
    """Every connection stored before is still there with at least its ports and commands."""
    return all(
        key in after and ports <= after[key][0] and cmds <= after[key][1] for key, (ports, cmds) in before.items()
    )


def campaign(count: int, per_process: int, seed: int, workers: int, folder: Path) -> dict:
    started = time.monotonic()
    files = make_files(count, seed, folder)
    groups = [files[i : i + per_process] for i in range(0, len(files), per_process)]
    dbs = [folder / f"worker{w}.duckdb" for w in range(workers)]
    for db in dbs:  # every DB already holds data before the garbage comes
        code, stderr, _rss, _summary = run(otsensor("replay", "--db", db, *SEED_CAPTURES))
        if code != 0:
            raise SystemExit(f"seeding {db} failed: {stderr}")
    before = stored(dbs[0])
    results = []

    def one(index: int):
        db = dbs[index % workers]
        return (index, *run(otsensor("replay", "--db", db, "--json", *groups[index])))

    # A worker's DB is used by one process at a time: group i goes to DB i % workers, in order.
    with ThreadPoolExecutor(workers) as pool:
        lanes = [pool.submit(lambda w=w: [one(i) for i in range(w, len(groups), workers)]) for w in range(workers)]
        for lane in lanes:
            results += lane.result()
    codes = Counter(code for _i, code, _err, _rss, _s in results)
    tracebacks = [(i, err) for i, code, err, _rss, _s in results if "Traceback" in err or code not in (0, 2)]
    summaries = [summary for *_x, summary in results if summary]
    after = [stored(db) for db in dbs]
    return {
        "files": len(files),
        "processes": len(groups),
        "filesPerProcess": per_process,
        "exitCodes": {str(code): n for code, n in sorted(codes.items())},
        "tracebacks": len(tracebacks),
        "tracebackFiles": [[str(p) for p in groups[i]] for i, _err in tracebacks[:5]],
        "tracebackTails": [err.strip().splitlines()[-1] if err.strip() else "" for _i, err in tracebacks[:5]],
        "peakRssMb": round(max(rss for *_x, rss, _s in results), 1),
        "packets": sum(summary["packets"] for summary in summaries),
        "problems": sum(len(summary["problems"]) for summary in summaries),
        "notCaptures": sum(len(summary["notCaptures"]) for summary in summaries),
        "rssBoundMb": RSS_BOUND_MB,
        "storedBefore": len(before),
        "storedKept": all(kept(before, rows) for rows in after),
        "mutations": dict(sorted(Counter(p.name.split("-", 1)[1][:-4] for p in files).items())),
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--per-process", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", metavar="DIR", help="write the mutated files here (kept) instead of a temp folder")
    parser.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="otsensor-badinput-") as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        result = campaign(args.files, args.per_process, args.seed, args.workers, folder)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:16} {value}")
    ok = result["tracebacks"] == 0 and result["storedKept"] and result["peakRssMb"] < RSS_BOUND_MB
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
