"""Replay of capture files through the engine into the store, with a progress bar and a summary.

Owns the order files are read in and when deltas are flushed; never parses bytes itself.
"""

from __future__ import annotations

import gc
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .engine import CHUNK, Engine
from .readers import CaptureError, CaptureReader, iter_capture_files
from .store import Store

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


def replay(paths: list[str], store: Store, progress: bool = True, fleet=None) -> dict:
    """Ingest every capture under paths; returns the summary. Raises CaptureError if nothing was a capture.
    ``fleet`` (a sensor.fleet.Shipper) gets every delta merged, to ship to ClickHouse too."""
    with _no_cycle_collection():
        return _replay(paths, store, progress, fleet)


def _replay(paths: list[str], store: Store, progress: bool, fleet=None) -> dict:
    def merge(delta) -> None:
        store.merge(delta)
        if fleet is not None:
            fleet.submit(delta)

    started = time.monotonic()
    files = iter_capture_files(paths)
    engine = Engine()
    problems: list[str] = []
    unreadable: list[str] = []
    done_before = 0
    total = sum(path.stat().st_size for path in files)
    bar = Progress(total) if progress else None
    for path in files:
        try:
            reader = CaptureReader(path, batch_size=CHUNK)
        except CaptureError as error:
            unreadable.append(f"{path}: {error}")
            continue
        for batch in reader.batches():
            engine.process_batch(batch)
            if len(engine.table) >= FLUSH_CONNECTIONS:
                merge(engine.take_delta())
            if bar:
                bar.update(done_before + reader.bytes_read, engine.packets)
        problems.extend(f"{path}: {problem}" for problem in reader.problems)
        done_before += path.stat().st_size
    merge(engine.take_delta())
    if bar:
        bar.update(total, engine.packets, final=True)
    seconds = time.monotonic() - started
    devices, connections = store.counts()
    return {
        "files": [str(path) for path in files],
        "packets": engine.packets,
        "bytes": engine.bytes,
        "devices": devices,
        "connections": connections,
        "decodeErrors": dict(sorted(engine.errors.items())),
        "nonIpPackets": engine.decoder.non_ip,  # ARP, LLDP, STP, EtherCAT ...: counted, no devices
        "seconds": round(seconds, 3),
        "packetsPerSecond": round(engine.packets / seconds) if seconds > 0 else 0,
        "problems": problems,
        "notCaptures": unreadable,
    }


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
    lines += [f"not a capture: {entry}" for entry in summary["notCaptures"]]
    return "\n".join(lines)


def existing_paths(paths: list[str]) -> list[str]:
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise CaptureError(f"no such file or folder: {', '.join(missing)}")
    return paths
