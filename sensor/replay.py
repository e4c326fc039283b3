"""Replay of capture files through the engine into the store, with a progress bar and a summary.

Owns which files are read, in which order, and what is committed when: each file in one transaction
with its SHA-256, so a file is stored whole or not at all and the same file twice is read once.
Never parses bytes itself.
"""

from __future__ import annotations

import gc
import hashlib
import os
import stat
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from .engine import CHUNK, Engine
from .flows import BUFFER_BUDGET, MAX_FLOWS
from .readers import CaptureError, CaptureReader, is_capture
from .store import Store, StoreError

FLUSH_CONNECTIONS = 200_000  # flush a delta this large mid-replay so memory stays bounded by flows


class Progress:
    """A one-line bar on stderr, only when it is a terminal."""

    def __init__(self, total_bytes: int, stream=sys.stderr) -> None:
        self.total, self.stream = max(total_bytes, 1), stream
        self.enabled = stream.isatty()
        self.started = time.monotonic()
        self.last = 0.0

    def update(self, done_bytes: int, packets: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and not final):
            return
        self.last = now
        fraction = min(done_bytes / self.total, 1.0)
        rate = packets / max(now - self.started, 1e-9)
        bar = "#" * int(fraction * 30)
        self.stream.write(f"\r[{bar:<30}] {fraction:6.1%} {packets:,} packets {rate:,.0f}/s")
        if final:
            self.stream.write("\n")
        self.stream.flush()


@contextmanager
def _no_cycle_collection():
    """Python's cycle collector off while packets are replayed, as it was before afterwards.

    The packet path allocates millions of short-lived objects and keeps tens of thousands of flows
    alive; it makes no reference cycles, so the collector only re-scans live flows (measured: ~5 %
    of the engine's time on the bench mix).  Reference counting still frees everything."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def replay(paths: list[str], store: Store, progress: bool = True, force: bool = False, fleet=None, limits=None) -> dict:
    """Ingest every capture under paths; returns the summary.  ``force``: read files ingested before too.
    ``fleet`` (a sensor.fleet.Shipper) gets the deltas of each file once the file is committed.
    ``limits``: settings with ``max_flows`` and ``reassembly_mb`` (sensor.settings.Settings),
    the packet path's memory bounds; None: their defaults.

    Raises StoreError when the DB cannot be written (the files committed before stay)."""
    with _no_cycle_collection():
        return _replay(paths, store, progress, force, fleet, limits or _Limits())


class _Limits(NamedTuple):
    max_flows: int = MAX_FLOWS
    reassembly_mb: int = BUFFER_BUDGET >> 20


class _Counters(NamedTuple):
    packets: int
    bytes: int
    non_ip: int
    errors: dict[str, int]

    @classmethod
    def of(cls, engine: Engine) -> _Counters:
        return cls(engine.packets, engine.bytes, engine.decoder.non_ip, dict(engine.errors))

    def __add__(self, other: _Counters) -> _Counters:
        errors = {name: self.errors.get(name, 0) + other.errors.get(name, 0) for name in {*self.errors, *other.errors}}
        return _Counters(self.packets + other.packets, self.bytes + other.bytes, self.non_ip + other.non_ip, errors)

    def __sub__(self, other: _Counters) -> _Counters:
        errors = {name: count - other.errors.get(name, 0) for name, count in self.errors.items()}
        return _Counters(self.packets - other.packets, self.bytes - other.bytes, self.non_ip - other.non_ip,
                         {name: count for name, count in errors.items() if count})  # fmt: skip


NOTHING = _Counters(0, 0, 0, {})


def _replay(paths: list[str], store: Store, progress: bool, force: bool, fleet, limits) -> dict:
    shipping: list = []  # the deltas of the file being read: shipped once it is committed, dropped if it fails

    def merge(delta) -> None:
        store.merge(delta)
        if fleet is not None:
            shipping.append(delta)

    started = time.monotonic()
    files, problems, refused = capture_files(paths)
    files, refused_captures = _in_time_order(files)
    refused += refused_captures

    def new_engine() -> Engine:
        return Engine(max_flows=limits.max_flows, reassembly_mb=limits.reassembly_mb)

    engine, totals = new_engine(), NOTHING  # totals: what the stored files added (not the failed or skipped)
    skipped: list[str] = []
    failed: list[str] = []
    done_before = 0
    total = sum(size for _, size in files)
    bar = Progress(total) if progress else None
    digests = _Digests([path for path, _ in files])
    learning_end: int | None = None  # packet time (ns); 0 once the replay has passed it
    try:
        for index, (path, size) in enumerate(files):
            digest = digests[index]
            if not force and store.ingested_size(size):  # only then can it be a file ingested before
                known = _known(store, digest)
                if known:
                    skipped.append(f"{path}: {known}; --force reads it again")
                    done_before += size
                    continue
            before = _Counters.of(engine)
            try:
                with store.ingesting(str(path), size, digest.result) as record:
                    reader = CaptureReader(path, batch_size=CHUNK)
                    for batch in reader.batches():
                        batch, learning_end = _learning_cut(batch, engine, store, merge, learning_end)
                        engine.process_batch(batch)
                        if len(engine.table) >= FLUSH_CONNECTIONS:  # bounded memory: joins the file's transaction
                            merge(engine.take_delta())
                        if bar:
                            bar.update(
                                done_before + reader.bytes_read, totals.packets + engine.packets - before.packets
                            )
                    merge(engine.take_delta())
                    record["packets"] = engine.packets - before.packets
            except StoreError as error:
                stored = index - len(failed) - len(skipped)
                kept = f"; the {stored} file(s) read before it are stored" if stored else ""
                raise StoreError(f"{error} (while storing {path}){kept}") from None
            except Exception as error:  # a fault of the reader or the decoders costs this file, not the run
                shipping.clear()
                failed.append(str(path))
                problems.append(f"{path}: failed, nothing of it stored: {type(error).__name__}: {error}")
                engine = new_engine()  # its flows and counters hold part of the failed file
            else:
                for delta in shipping:
                    fleet.submit(delta)
                shipping.clear()
                totals += _Counters.of(engine) - before
                problems.extend(f"{path}: {problem}" for problem in reader.problems)
            done_before += size
    finally:
        digests.close()
    if bar:
        bar.update(total, totals.packets, final=True)
    seconds = time.monotonic() - started
    devices, connections = store.counts()
    return {
        "files": [str(path) for path, _ in files],
        "packets": totals.packets,
        "bytes": totals.bytes,
        "devices": devices,
        "connections": connections,
        "decodeErrors": dict(sorted(totals.errors.items())),
        "nonIpPackets": totals.non_ip,  # ARP, LLDP, STP, EtherCAT ...: counted, no devices
        "seconds": round(seconds, 3),
        "packetsPerSecond": round(totals.packets / seconds) if seconds > 0 else 0,
        "problems": problems,
        "failedFiles": failed,  # each also under problems, with the reason
        "alreadyIngested": skipped,
        "notCaptures": refused,
    }


def _known(store: Store, digest: Future) -> str | None:
    """How the file was ingested before (None: it was not, or it cannot be read: then reading it says so)."""
    try:
        found = store.ingested(digest.result())
    except OSError:
        return None
    if found is None:
        return None
    path, when = found
    stamp = datetime.fromtimestamp(when / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"already ingested at {stamp} as {path} (same SHA-256)"


# -- which files, in which order ----------------------------------------------------------------------


def capture_files(paths: list[str]) -> tuple[list[tuple[Path, int]], list[str], list[str]]:
    """(path, size) of every file to read, the problems met in folders, and the named paths refused.

    Folders are walked recursively; their files are taken by magic (so SOURCES.md and friends are
    passed over in silence) and what cannot be read there is named in the problems.  A named file is
    kept as given, so that reading it says what it is not.  Only regular files are opened: a FIFO or a
    device would block or never end.  A file reached twice is read once."""
    found: list[tuple[Path, int]] = []
    problems: list[str] = []
    refused: list[str] = []
    seen: set[str] = set()

    def keep(path: Path, size: int) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            found.append((path, size))

    for given in map(Path, paths):
        try:
            mode = given.stat().st_mode
        except OSError as error:
            refused.append(f"{given}: cannot read: {error.strerror or error}")
            continue
        if stat.S_ISDIR(mode):
            for path, size in _folder(given, problems):
                keep(path, size)
        elif stat.S_ISREG(mode):
            keep(given, given.stat().st_size)
        else:
            refused.append(f"{given}: {_not_regular(mode)}")
    return found, problems, refused


def _folder(folder: Path, problems: list[str]) -> list[tuple[Path, int]]:
    def unreadable(error: OSError) -> None:
        problems.append(f"{error.filename}: folder skipped, cannot read it: {error.strerror or error}")

    files = []
    for where, _, names in os.walk(folder, onerror=unreadable):
        for name in names:
            path = Path(where, name)
            try:
                info = path.stat()
                if not stat.S_ISREG(info.st_mode):
                    problems.append(f"{path}: skipped, {_not_regular(info.st_mode)}")
                    continue
                with open(path, "rb"):
                    pass
            except OSError as error:
                problems.append(f"{path}: skipped, cannot read it: {error.strerror or error}")
                continue
            if is_capture(path):
                files.append((path, info.st_size))
    return sorted(files)


def _not_regular(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device"}  # fmt: skip
    kind = next((name for test, name in kinds.items() if test(mode)), "not a file")
    return f"not a regular file ({kind}): not read"


def _in_time_order(files: list[tuple[Path, int]]) -> tuple[list[tuple[Path, int]], list[str]]:
    """The captures by their first packet's time (name order among equals), and the files that are not.

    TCP state is carried from one file to the next, so a conversation split over rotated files is
    followed only when they are read in the order they were written, whatever their names."""
    stamped, refused = [], []
    for index, (path, size) in enumerate(files):
        try:
            first = first_packet_ns(path)
        except CaptureError as error:
            refused.append(f"{path}: {error}")
            continue
        stamped.append(((first is None, first or 0, index), (path, size)))
    return [entry for _, entry in sorted(stamped)], refused


def first_packet_ns(path: Path) -> int | None:
    """The stamp of the file's first packet, reading no further (None: no packet, or unreadable there:
    reading the file says why).  Raises CaptureError when it is not a capture."""
    reader = CaptureReader(path, batch_size=2)
    batches = reader.batches()
    try:
        return next((int(batch.ts_ns[0]) for batch in batches if len(batch.ts_ns)), None)
    except Exception:  # a fault in the first records is met, and reported, when the file is read
        return None
    finally:
        batches.close()


class _Digests:
    """The SHA-256 of every file, computed in a thread, in reading order, ahead of the reader (hashlib
    releases the GIL, so on two cores it costs the replay nothing); ``[i]`` is file i's Future."""

    def __init__(self, paths: list[Path]) -> None:
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="otsensor-digest")
        self._futures = [self._pool.submit(self._sha256, path) for path in paths]

    def __getitem__(self, index: int) -> Future:
        return self._futures[index]

    def _sha256(self, path: Path) -> str:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                if self._stop.is_set():
                    raise OSError("replay stopped")
                digest.update(chunk)
        return digest.hexdigest()

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _learning_cut(batch, engine: Engine, store: Store, merge, learning_end: int | None):
    """Where the learning period ends inside a batch, what came before it is merged on its own: the
    detector then tells what was learnt from what is new (a replay learns the first part of a capture
    and alerts on the rest).  Returns the rest of the batch and the learning end still ahead (0 once
    passed)."""
    if learning_end == 0 or not len(batch.ts_ns):
        return batch, learning_end
    if learning_end is None:
        learning_end = store.learning_end_ns(int(batch.ts_ns.min()))
    late = batch.ts_ns >= learning_end
    if not late.any():
        return batch, learning_end
    cut = int(late.argmax())
    if cut:
        engine.process_batch(_part(batch, 0, cut))
        batch = _part(batch, cut, len(batch.ts_ns))
    merge(engine.take_delta())
    return batch, 0


def _part(batch, start: int, end: int):
    return batch._replace(
        offsets=batch.offsets[start:end], caplens=batch.caplens[start:end], wirelens=batch.wirelens[start:end],
        ts_ns=batch.ts_ns[start:end],
    )  # fmt: skip


def format_summary(summary: dict) -> str:
    errors = ", ".join(f"{name} {count}" for name, count in summary["decodeErrors"].items()) or "none"
    lines = [
        f"files        {len(summary['files'])}",
        f"packets      {summary['packets']:,}",
        f"bytes        {summary['bytes']:,}",
        f"devices      {summary['devices']:,}",
        f"connections  {summary['connections']:,}",
        f"decode errors {errors}",
        f"non-IP       {summary['nonIpPackets']:,}",
        f"packets/s    {summary['packetsPerSecond']:,} ({summary['seconds']} s)",
    ]
    lines += [f"problem: {problem}" for problem in summary["problems"]]
    lines += [f"skipped: {entry}" for entry in summary["alreadyIngested"]]
    lines += [f"not read: {entry}" for entry in summary["notCaptures"]]
    return "\n".join(lines)


def existing_paths(paths: list[str]) -> list[str]:
    """The paths, if each can be looked at (a missing one, or one inside a folder this user may not
    enter, is a usage error before anything is read)."""
    missing, unreachable = [], []
    for path in paths:
        try:
            os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            missing.append(path)
        except OSError as error:
            unreachable.append(f"{path} ({error.strerror or error})")
    if missing:
        raise CaptureError(f"no such file or folder: {', '.join(missing)}")
    if unreachable:
        raise CaptureError(f"cannot read: {', '.join(unreachable)}")
    return paths
