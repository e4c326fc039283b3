"""Capture files (pcap, pcapng, NetMon 1.x/2.x; plain or gzip) in, FrameBatch arrays of frames out.

Owns the formats and their damage; never decodes link/IP, copies a plain file, or raises once a magic is known."""

from __future__ import annotations

import calendar
import gzip
import mmap
import os
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import repeat
from pathlib import Path
from typing import NamedTuple

import numpy as np

# How a batch is built: a tight Python loop only walks the record chain (each record's length says where
# the next one starts) and remembers where each record begins; numpy then gathers every header field of
# the batch at once through a view of the buffer with an item at every byte offset (see ``_rows``) and
# validates them vectorised.  The first bad record ends the file: everything before it is kept and a
# line naming the record number (1-based, as Wireshark numbers frames) and byte offset goes to
# ``problems``.  We stop rather than resynchronise, as libpcap and Wireshark do, so that frame counts
# agree with tshark's and a corrupt length never invents frames.
#
# Progress: ``bytes_read`` / ``size`` count bytes of the file on disk; for a gzip file these are
# *compressed* bytes (the uncompressed size is not known up front).  Offsets in ``problems`` are offsets
# in the (uncompressed) capture stream.

# --- Link-layer header types (tcpdump.org "LINKTYPE_* values"; shared by pcap and pcapng) -----------
LINKTYPE_NULL = 0  # BSD loopback, host-byte-order AF_ value
LINKTYPE_ETHERNET = 1
LINKTYPE_IEEE802_5 = 6  # Token Ring
LINKTYPE_RAW = 101  # raw IPv4/IPv6 (DLT_RAW is 12 or 14 on some platforms; files may carry those too)
LINKTYPE_LOOP = 108  # OpenBSD loopback, network-byte-order AF_ value
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

# --- Magic numbers ---------------------------------------------------------------------------------
GZIP_MAGIC = b"\x1f\x8b"
# draft-ietf-opsawg-pcap §4: 0xA1B2C3D4 = seconds + microseconds, 0xA1B23C4D = seconds + nanoseconds;
# read in the writer's byte order, so the bytes on disk tell the order.  0xA1B2CD34 is Alexey
# Kuznetzov's "modified" pcap (libpcap sf-pcap.c): 8 more bytes of per-record header.
_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000, 16),
    b"\xa1\xb2\xc3\xd4": (">", 1000, 16),
    b"\x4d\x3c\xb2\xa1": ("<", 1, 16),
    b"\xa1\xb2\x3c\x4d": (">", 1, 16),
    b"\x34\xcd\xb2\xa1": ("<", 1000, 24),
    b"\xa1\xb2\xcd\x34": (">", 1000, 24),
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"  # Section Header Block type, a palindrome (pcapng draft §4.1)
NETMON2_MAGIC = b"GMBU"
NETMON1_MAGIC = b"RTSS"

# --- Limits -----------------------------------------------------------------------------------------
# Wireshark's WTAP_MAX_PACKET_SIZE_STANDARD (libpcap's MAXIMUM_SNAPLEN): a larger captured length
# means the length field is garbage, not a jumbo frame.
MAX_CAPLEN = 262144
# libpcap sf-pcapng.c MAX_BLOCKSIZE: a longer pcapng block is corrupt (also bounds gzip read-ahead).
MAX_PCAPNG_BLOCK = 16 * 1024 * 1024
_STREAM_CHUNK = 1 << 20  # gzip read granularity
# A batch ends once its frames span this many bytes of the capture (or at batch_size frames, or at a
# link-type change), whichever comes first: what the reader holds at once (a gzip window, the pages of
# a mapped file) is then bounded by this, the longest block (MAX_PCAPNG_BLOCK) and the frame count,
# whatever the file.  64 MiB keeps replay's 2**18-frame batches whole for frames up to 256 bytes on
# average and puts peak RSS at ~350 MB for a gzip file of 256 KiB frames (README "Bad input").
MAX_BATCH_BYTES = 64 * 1024 * 1024
# NetMon's frame table sits at the end of the file: a gzip'd NetMon capture is read whole into memory,
# up to this much (its offsets are 32-bit, so the format itself reaches 4 GiB); more is a problem.
MAX_NETMON_GZIP = 256 * 1024 * 1024

# --- Layouts, declared once ------------------------------------------------------------------------
_U16 = {"<": struct.Struct("<H"), ">": struct.Struct(">H")}
_U32 = {"<": struct.Struct("<I"), ">": struct.Struct(">I")}
_U32_DT = {"<": np.dtype("<u4"), ">": np.dtype(">u4")}
# pcap file header after the magic (draft-ietf-opsawg-pcap §4): major, minor, thiszone, sigfigs,
# snaplen, LinkType-and-additional-information.
_PCAP_FILE_HDR = {"<": struct.Struct("<HHiIII"), ">": struct.Struct(">HHiIII")}
# pcapng generic block header: type, total length (pcapng draft §3.1).
_BLOCK_HDR = {"<": struct.Struct("<II"), ">": struct.Struct(">II")}
# SHB body: byte-order magic, major, minor, section length (pcapng draft §4.1).
_SHB_BODY = {"<": struct.Struct("<IHHq"), ">": struct.Struct(">IHHq")}
# IDB body: LinkType, reserved, SnapLen (pcapng draft §4.2).
_IDB_BODY = {"<": struct.Struct("<HHI"), ">": struct.Struct(">HHI")}
_OPT_HDR = {"<": struct.Struct("<HH"), ">": struct.Struct(">HH")}
_I64 = {"<": struct.Struct("<q"), ">": struct.Struct(">q")}
# Obsolete Packet Block body: interface id (16 bits), drops count, ts high, ts low, caplen, len
# (pcapng draft appendix A).
_PB_BODY = {"<": struct.Struct("<HHIIII"), ">": struct.Struct(">HHIIII")}
# Simple Packet Block body: original packet length (pcapng draft §4.4).
_SPB_BODY = _U32
# NetMon header after the magic (Wireshark wiretap/netmon.c struct netmon_hdr): version minor and
# major, media type, the capture start as a SYSTEMTIME (year, month, day of week, day, hour, minute,
# second, millisecond), then frame table offset/length and six more offset/length words.
_NETMON_HDR = struct.Struct("<BBH8H10I")
_NETMON1_REC = struct.Struct("<IHH")  # ms since start, original length, captured length
_NETMON2_REC = struct.Struct("<qII")  # µs since start (see _netmon_frames), original length, captured
_NETMON_FILETIME = struct.Struct("<Q")  # 2.3+ trailer: 100 ns units since 1601-01-01 UTC

_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_IDB = 0x00000001
_PCAPNG_PB = 0x00000002
_PCAPNG_SPB = 0x00000003
_PCAPNG_EPB = 0x00000006
_PCAPNG_BOM = 0x1A2B3C4D
_OPT_ENDOFOPT, _IF_TSRESOL, _IF_TSOFFSET = 0, 9, 14
_EPB_FIXED = 28  # type, length, interface, ts high, ts low, caplen, original length
_EPB_MIN = 32  # ... plus the trailing length

# NetMon media types (wiretap/netmon.c netmon_encap[]); 2.x reuses NDIS values 7..9 for raw IP.
_NETMON_MEDIA = {0: LINKTYPE_ETHERNET, 1: LINKTYPE_ETHERNET, 2: LINKTYPE_IEEE802_5}
_NETMON_MEDIA.update({7: LINKTYPE_RAW, 8: LINKTYPE_RAW, 9: LINKTYPE_RAW})
_NETMON_PCAP_BASE = 0xE000  # "converted pcap": LINKTYPE = media & 0x0FFF
# NetMon 3 metadata records that Wireshark also skips silently (payload header, network info, DNS cache).
_NETMON_SILENT = frozenset((0xFFFC, 0xFFFD, 0xFFFE))
_NETMON_MEDIA_NAMES = {
    3: "FDDI",
    4: "ATM/NDIS WAN",
    5: "IEEE 1394",
    6: "802.11 NetMon",
    0xFFE0: "ETW event",
    0xFFFB: "network info",
    0xFFFF: "NetMon filter",
}
_FILETIME_UNIX_EPOCH = 116444736000000000  # 1970-01-01 in 100 ns units since 1601-01-01
_MASK64 = (1 << 64) - 1


class CaptureError(Exception):
    """Not a capture at all (unknown magic, empty file, unreadable) -> the CLI exits 2.

    The message does not repeat the path: callers print ``f"{path}: {error}"``.
    """


class FrameBatch(NamedTuple):
    """Frames of one link type; frame i is ``data[offsets[i] : offsets[i] + caplens[i]]``."""

    linktype: int  # LINKTYPE_* value
    data: bytes | memoryview  # one buffer holding the frames (the whole mmap'ed file for plain files)
    offsets: np.ndarray  # int64, start of frame i in data
    caplens: np.ndarray  # int64, captured length of frame i
    wirelens: np.ndarray  # int64, original length on the wire
    ts_ns: np.ndarray  # int64, epoch nanoseconds UTC


def _rows(u8: np.ndarray, positions: np.ndarray, width: int) -> np.ndarray:
    """Bytes p .. p+width-1 of ``u8`` for every p in ``positions``, as a (len(positions), width) matrix;
    ``.view(dtype)`` then splits the rows into fields.

    One fancy index over a view whose items are width-byte voids at every byte offset: numpy copies
    each item whole (a (len, width) byte view's gather copies byte by byte, about twice as slow)."""
    items = np.ndarray((max(len(u8) - width + 1, 0),), np.dtype((np.void, width)), u8, strides=(1,))
    return items[positions].view(np.uint8).reshape(-1, width)


def _first_true(mask: np.ndarray) -> int:
    """Index of the first True in ``mask``, or len(mask)."""
    return int(mask.argmax()) if mask.any() else len(mask)


# Epoch nanoseconds are int64 from here on (numpy, the flow table, DuckDB BIGINT), so a stamp must lie
# within [STAMP_MIN_NS, STAMP_MAX_NS] (1677-09-21 .. 2262-04-11 UTC): whole seconds in [-_SEC_LIMIT,
# _SEC_LIMIT) plus their fraction always fit.  A file may state any 64-bit time (pcapng ticks and
# if_tsoffset, NetMon's SYSTEMTIME and FILETIME): one outside is clamped to the nearest end and counted
# under ``problems`` with the first such record's number and byte offset (see ``_Stamps``).
_SEC_LIMIT = 2**63 // 10**9
STAMP_MIN_NS = -_SEC_LIMIT * 10**9
STAMP_MAX_NS = _SEC_LIMIT * 10**9 - 1
_U64_MAX = (1 << 64) - 1


def _ticks_to_ns(ticks: np.ndarray, units_per_s: int, offset_s: int) -> tuple[np.ndarray, np.ndarray]:
    """pcapng timestamps (uint64 ticks of 1/units_per_s s, pcapng draft §4.2 if_tsresol, plus
    if_tsoffset seconds) -> (int64 ns clamped to the stamp range, mask of the stamps clamped).

    Exact for every uint64 tick count and int64 offset: whole seconds and the fraction are split in
    uint64 before anything is scaled.  Sub-nanosecond units are floored as Wireshark does (wiretap/pcapng.c).
    """
    u = np.uint64(units_per_s)
    secs, frac = ticks // u, ticks % u
    if 10**9 % units_per_s == 0:
        frac_ns = frac.astype(np.int64) * (10**9 // units_per_s)
    elif units_per_s % 10**9 == 0:
        frac_ns = (frac // np.uint64(units_per_s // 10**9)).astype(np.int64)
    elif units_per_s <= 1 << 34:  # frac * 1e9 still fits in uint64
        frac_ns = ((frac * np.uint64(10**9)) // u).astype(np.int64)
    else:  # e.g. 2^-40 s units: exotic, do it with Python integers
        frac_ns = np.array([f * 10**9 // units_per_s for f in frac.tolist()], dtype=np.int64)
    # secs + offset_s must lie in [-_SEC_LIMIT, _SEC_LIMIT): bounds on secs, as Python integers first.
    low = min(max(-_SEC_LIMIT - offset_s, 0), _U64_MAX)
    high = _SEC_LIMIT - 1 - offset_s  # secs <= high
    too_low = secs < np.uint64(low)
    too_high = secs > np.uint64(min(high, _U64_MAX)) if high >= 0 else np.ones(len(secs), dtype=bool)
    # In range, the uint64 sum wraps to the right int64 (two's complement).
    total_s = (secs + np.uint64(offset_s & _U64_MAX)).view(np.int64)
    ns = total_s * 10**9 + frac_ns
    outside = too_low | too_high
    if outside.any():
        ns[too_low] = STAMP_MIN_NS
        ns[too_high] = STAMP_MAX_NS
    return ns, outside


def _clamp_ns(ns: int) -> int:
    """A stamp computed with Python integers, clamped to the stamp range."""
    return STAMP_MIN_NS if ns < STAMP_MIN_NS else STAMP_MAX_NS if ns > STAMP_MAX_NS else ns


class _Stamps:
    """Counts the stamps of one file that were clamped, and where the first one was."""

    def __init__(self, unit: str) -> None:
        self.unit = unit  # "record" or "block", as the format's other problems name them
        self.count = 0
        self.first: tuple[int, int] | None = None  # (record number, byte offset)

    def clamped(self, n: int, number: int, at: int) -> None:
        if self.first is None:
            self.first = (number, at)
        self.count += n

    def problem(self) -> str | None:
        if not self.count:
            return None
        number, at = self.first
        return (
            f"{self.count} {self.unit}(s) with timestamps outside 1677-09-21..2262-04-11 UTC, clamped to the"
            f" nearest end (first: {self.unit} {number} at byte {at})"
        )


# --- Where the bytes come from ------------------------------------------------------------------------


class _MappedWindow:
    """A plain file, mmap'ed: the whole capture is one buffer and nothing is ever copied."""

    eof = True
    start = 0

    def __init__(self, fileobj) -> None:
        self._mmap = mmap.mmap(fileobj.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(self._mmap, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
            self._mmap.madvise(mmap.MADV_SEQUENTIAL)
        self.buf = memoryview(self._mmap)
        self.problem: str | None = None

    def batch_data(self) -> memoryview:
        # A view per batch: closing the reader must not invalidate batches a caller still holds.
        return memoryview(self._mmap)

    def extend(self, keep_from: int, need_end: int) -> bool:
        return False

    def read_all(self, limit: int) -> bool:
        return True

    def progress(self, pos: int) -> int:
        return pos

    def release(self, before: int) -> None:
        """Drop this process's mapping of the pages before ``before`` (MADV_DONTNEED on a read-only
        file mapping only unmaps them; a later read faults them back in from the page cache)."""
        end = before - before % mmap.PAGESIZE
        if end > 0 and hasattr(self._mmap, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self._mmap.madvise(mmap.MADV_DONTNEED, 0, end)

    def close(self) -> None:
        try:
            self.buf.release()
            self._mmap.close()
        except BufferError:  # a caller still holds a batch's view; the GC unmaps it later
            pass


class _StreamWindow:
    """A gzip (or unmappable) stream: a sliding window holding the pending batch plus read-ahead."""

    def __init__(self, stream, raw) -> None:
        self._stream = stream
        self._raw = raw
        self.buf: bytes = b""
        self.start = 0  # stream offset of buf[0]
        self.eof = False
        self.problem: str | None = None

    def batch_data(self) -> bytes:
        return self.buf

    def extend(self, keep_from: int, need_end: int) -> bool:
        """Drop bytes before stream offset keep_from and read until need_end; False if nothing came."""
        if self.eof:
            return False
        keep = keep_from - self.start
        # Read a quarter of what we keep at least, so re-copying the kept tail stays linear overall
        # while the window stays within 1.25 times what the pending batch and the next block need.
        want = max(_STREAM_CHUNK, (len(self.buf) - keep) // 4, need_end - self.start - len(self.buf))
        try:
            chunk = self._stream.read(want)
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            chunk = b""
            self.problem = f"compressed stream unreadable after byte {self.start + len(self.buf)}: {exc}"
        if len(chunk) < want:
            self.eof = True
        with memoryview(self.buf) as view:  # one copy: the kept tail and the new bytes, joined
            self.buf = b"".join((view[keep:], chunk))
        self.start = keep_from
        return bool(chunk)

    def read_all(self, limit: int) -> bool:
        """Read the rest of the stream into the window, at most ``limit`` bytes; False if there was more.

        One bytearray grown in place (no window is handed out while it grows, and none slides later)."""
        whole = bytearray(self.buf)
        self.buf = b""
        while not self.eof and len(whole) <= limit:
            try:
                chunk = self._stream.read(_STREAM_CHUNK)
            except (OSError, EOFError, zlib.error) as exc:
                chunk = b""
                self.problem = f"compressed stream unreadable after byte {self.start + len(whole)}: {exc}"
            if len(chunk) < _STREAM_CHUNK:
                self.eof = True
            whole += chunk
        self.buf = whole
        return len(whole) <= limit

    def release(self, before: int) -> None:
        pass  # the stream window keeps only what the current batch needs

    def progress(self, pos: int) -> int:
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        self._stream.close()
        self._raw.close()


# --- Batches --------------------------------------------------------------------------------------------


class _BatchBuilder:
    """Collects frames in file order and cuts a FrameBatch at batch_size or a link-type change.

    Offsets are kept as stream offsets and made relative to the window when the batch is cut, so a
    gzip window may slide underneath as long as it keeps the pending frames (see ``first_offset``).
    """

    def __init__(self, batch_size: int, max_bytes: int, window) -> None:
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self.window = window
        self.linktype = -1
        self.count = 0
        self.first_offset: int | None = None  # stream offset of the first pending frame's data
        self._pieces: list[tuple[np.ndarray, ...]] = []
        self._one: tuple[list[int], list[int], list[int], list[int]] = ([], [], [], [])

    def room(self) -> int:
        return self.batch_size - self.count

    def add(self, linktype, offsets, caplens, wirelens, ts_ns) -> list[FrameBatch]:
        """Append arrays of frames that share one link type; returns the batches this completed."""
        done = []
        if self.count and linktype != self.linktype:
            done.append(self.cut())
        self.linktype = linktype
        self._seal()
        while len(offsets):
            if self.first_offset is None:
                self.first_offset = int(offsets[0])
            take = min(len(offsets), self.batch_size - self.count)
            # Frames are in stream order, so their ends ascend: those ending within max_bytes of the
            # first pending frame's start fit; a longer frame alone is a batch of its own.
            ends = offsets[:take] + caplens[:take]
            take = int(np.searchsorted(ends, self.first_offset + self.max_bytes, side="right"))
            if not take and not self.count:
                take = 1
            if take:
                self._pieces.append((offsets[:take], caplens[:take], wirelens[:take], ts_ns[:take]))
                self.count += take
                offsets, caplens, wirelens = offsets[take:], caplens[take:], wirelens[take:]
                ts_ns = ts_ns[take:]
            if len(offsets) or self.count == self.batch_size:  # a bound was reached
                done.append(self.cut())
        return done

    def over(self, end: int) -> bool:
        """True if keeping the pending frames while the window reaches stream offset ``end`` would
        hold more than max_bytes (cut the batch first, so the window may slide past them)."""
        return self.count > 0 and end - self.first_offset > self.max_bytes

    def add_one(self, linktype: int, offset: int, caplen: int, wirelen: int, ts_ns: int):
        """Append a single frame (the slow paths: SPB, obsolete PB, NetMon); returns a batch or None."""
        done = None
        if self.count and (linktype != self.linktype or self.over(offset + caplen)):
            done = self.cut()
        self.linktype = linktype
        if self.first_offset is None:
            self.first_offset = offset
        one = self._one
        one[0].append(offset)
        one[1].append(caplen)
        one[2].append(wirelen)
        one[3].append(ts_ns)
        self.count += 1
        if self.count == self.batch_size:
            if done is not None:  # cannot happen with batch_size >= 2, but never drop a batch
                raise AssertionError("two batches cut by one frame")
            done = self.cut()
        return done

    def _seal(self) -> None:
        if self._one[0]:
            self._pieces.append(tuple(np.array(col, dtype=np.int64) for col in self._one))
            self._one = ([], [], [], [])

    def cut(self) -> FrameBatch:
        self._seal()
        if len(self._pieces) == 1:
            offsets, caplens, wirelens, ts_ns = self._pieces[0]
        else:
            offsets, caplens, wirelens, ts_ns = (np.concatenate(col) for col in zip(*self._pieces, strict=True))
        if self.window.start:
            offsets = offsets - self.window.start
        batch = FrameBatch(self.linktype, self.window.batch_data(), offsets, caplens, wirelens, ts_ns)
        self._pieces = []
        self.count = 0
        self.first_offset = None
        return batch


# --- The reader -----------------------------------------------------------------------------------------


def _sniff(head: bytes) -> str | None:
    """Format name for the first bytes of an uncompressed capture, or None."""
    magic = head[:4]
    if magic in _PCAP_MAGICS:
        return "pcap"
    if magic == PCAPNG_MAGIC:
        return "pcapng"
    if magic in (NETMON2_MAGIC, NETMON1_MAGIC):
        return "netmon"
    return None


def _read_head(path: Path) -> tuple[bytes, bool]:
    """First bytes of the capture (decompressed when gzip) and whether it is gzip; raises OSError."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] != GZIP_MAGIC:
        return head, False
    try:
        with gzip.open(path, "rb") as gz:
            return gz.read(4), True
    except (OSError, EOFError, zlib.error):
        return b"", True


class CaptureReader:
    """Reads one capture file into FrameBatches; see the module docstring for the rules."""

    def __init__(
        self, path: str | os.PathLike, batch_size: int = 65536, max_batch_bytes: int = MAX_BATCH_BYTES
    ) -> None:
        if batch_size < 2:
            raise ValueError("batch_size must be at least 2")
        if max_batch_bytes < 1:
            raise ValueError("max_batch_bytes must be positive")
        self.path = Path(path)
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.problems: list[str] = []
        self.bytes_read = 0
        try:
            self.size = self.path.stat().st_size
            head, self.compressed = _read_head(self.path)
        except OSError as exc:
            raise CaptureError(f"cannot read: {exc.strerror or exc}") from None
        if self.size == 0:
            raise CaptureError("empty file")
        fmt = _sniff(head)
        if fmt is None:
            what = "gzip data that is not a capture" if self.compressed else "unknown magic " + head.hex()
            raise CaptureError(f"not a pcap, pcapng or NetMon capture ({what})")
        self.format: str = fmt
        self._window = None

    # The file is opened per batches() call, so a reader can be iterated again from the start.
    def _open_window(self):
        raw = open(self.path, "rb")
        if self.compressed:
            return _StreamWindow(gzip.GzipFile(fileobj=raw, mode="rb"), raw)
        try:
            window = _MappedWindow(raw)
        except (OSError, ValueError):  # not mappable (a pipe, an odd filesystem): stream it
            return _StreamWindow(raw, raw)
        raw.close()  # the mapping keeps its own reference to the file
        return window

    def close(self) -> None:
        if self._window is not None:
            self._window.close()
            self._window = None

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def batches(self) -> Iterator[FrameBatch]:
        """All frames of the file, in file order, in batches sharing one link type."""
        self.close()
        self.problems = []
        self.bytes_read = 0
        try:
            self._window = self._open_window()
        except OSError as exc:
            self.problems.append(f"cannot open: {exc.strerror or exc}")
            return
        window = self._window
        builder = _BatchBuilder(self.batch_size, self.max_batch_bytes, window)
        self._stamps = _Stamps("block" if self.format == "pcapng" else "record")
        frames = {"pcap": self._pcap_frames, "pcapng": self._pcapng_frames, "netmon": self._netmon_frames}
        try:
            for batch in frames[self.format](window, builder):
                yield batch
                # The caller is done with this batch: give its pages of a mapped file back, so that
                # resident memory follows the batch, not the file (the page cache keeps them).
                if len(batch.offsets):
                    window.release(int(batch.offsets[-1]))
            if builder.count:
                yield builder.cut()
        finally:
            if window.problem:
                self.problems.append(window.problem)
            if self._stamps.problem():
                self.problems.append(self._stamps.problem())
            self.bytes_read = self.size
            self.close()  # batches already handed out keep their own view of the data

    @staticmethod
    def _left(window, at: int) -> int:
        """Bytes of the stream from offset ``at`` that the window holds (after any growing)."""
        return window.start + len(window.buf) - at

    def _need_more(self, window, builder, resume: int, need_end: int) -> bool:
        """Slide/grow a stream window so [resume, need_end) fits; False at the end of the stream."""
        keep = resume if builder.first_offset is None else min(resume, builder.first_offset)
        while window.start + len(window.buf) < need_end:
            if not window.extend(keep, need_end):
                return False
        return True

    # --- pcap (draft-ietf-opsawg-pcap) ---------------------------------------------------------------

    def _pcap_frames(self, window, builder) -> Iterator[FrameBatch]:
        if not self._need_more(window, builder, 0, 24):
            self.problems.append(f"truncated file header: {self._left(window, 0)} of 24 bytes")
            return
        order, ts_mult, hdr_len = _PCAP_MAGICS[bytes(window.buf[:4])]
        major, _minor, _thiszone, _sigfigs, snaplen, link_field = _PCAP_FILE_HDR[order].unpack_from(window.buf, 4)
        # LinkType and additional information (draft-ietf-opsawg-pcap §4; libpcap LT_LINKTYPE()): the
        # link type is the low 16 bits; bits 26..31 say whether/how long an FCS ends each frame.  FCS
        # bytes stay in the frame: decoders bound payloads by the IP length, so they are harmless.
        linktype = link_field & 0xFFFF
        if major != 2:
            self.problems.append(f"unusual pcap version {major}.{_minor} (read as 2.4)")
        u32 = _U32[order].unpack_from
        dt = _U32_DT[order]
        pos = 24  # stream offset of the next record
        record = 0  # records read so far
        over_snaplen = 0
        while True:
            buf = window.buf
            base = window.start
            nbuf = len(buf)
            # The hot loop: only follow the chain of captured lengths (at +8 in every record header).
            starts: list[int] = []
            add = starts.append
            x = pos - base + 8
            try:
                for _ in repeat(None, builder.room()):
                    add(x)
                    x += u32(buf, x)[0] + hdr_len
            except struct.error:  # ran off the end of the buffer: sorted out below
                pass
            rel = np.array(starts, dtype=np.int64)
            rel -= 8
            whole_hdr = int(np.searchsorted(rel, nbuf - hdr_len, side="right"))
            fields = _rows(np.frombuffer(buf, dtype=np.uint8), rel[:whole_hdr], 16).view(dt)
            caplens = fields[:, 2].astype(np.int64)
            corrupt = caplens > MAX_CAPLEN
            cut_short = rel[:whole_hdr] + hdr_len + caplens > nbuf
            good = _first_true(corrupt | cut_short)
            if good:
                sec_frac = fields[:good, :2].astype(np.int64)
                ts_ns = sec_frac[:, 0] * 1_000_000_000 + sec_frac[:, 1] * ts_mult
                good_caps = caplens[:good]
                if snaplen and int(good_caps.max()) > snaplen:
                    over_snaplen += int((good_caps > snaplen).sum())
                wirelens = fields[:good, 3].astype(np.int64)
                yield from builder.add(linktype, rel[:good] + (base + hdr_len), good_caps, wirelens, ts_ns)
                record += good
                self.bytes_read = window.progress(base + int(rel[good - 1] + hdr_len + good_caps[-1]))
            if good < whole_hdr:
                at = base + int(rel[good])
                caplen = int(caplens[good])
                if corrupt[good]:
                    self.problems.append(
                        f"corrupt record {record + 1} at byte {at}: captured length {caplen}"
                        f" exceeds {MAX_CAPLEN}; stopped reading"
                    )
                    break
                if self._need_more(window, builder, at, at + hdr_len + caplen):
                    pos = at
                    continue
                left = self._left(window, at) - hdr_len
                self.problems.append(
                    f"truncated record {record + 1} at byte {at}: header says {caplen} bytes, {left} left"
                )
                break
            if whole_hdr < len(rel):  # the next header is not (wholly) in the buffer
                at = base + int(rel[whole_hdr])
                if self._need_more(window, builder, at, at + hdr_len):
                    pos = at
                    continue
                if self._left(window, at) > 0:
                    self.problems.append(
                        f"truncated record {record + 1} at byte {at}: record header cut after"
                        f" {self._left(window, at)} of {hdr_len} bytes"
                    )
                break
            pos = base + x - 8  # the loop stopped because the batch is full
        if over_snaplen:
            self.problems.append(f"{over_snaplen} records captured more than the header's snaplen {snaplen} (kept)")

    # --- pcapng (draft-ietf-opsawg-pcapng) --------------------------------------------------------------

    def _pcapng_frames(self, window, builder) -> Iterator[FrameBatch]:
        # Per section: byte order and interfaces as (linktype, snaplen, units per second, offset s).
        order = "<"
        interfaces: list[tuple[int, int, int, int]] = []
        pos = 0  # stream offset of the next block
        block = 0  # blocks read so far
        last_ts = 0  # for Simple Packet Blocks, which carry no timestamp (pcapng draft §4.4)
        unknown = Counter()
        while True:
            buf = window.buf
            base = window.start
            nbuf = len(buf)
            # Fast path: a run of Enhanced Packet Blocks (pcapng draft §4.3), walked by length only.
            hdr2 = _BLOCK_HDR[order].unpack_from
            starts: list[int] = []
            add = starts.append
            b = pos - base
            try:
                for _ in repeat(None, builder.room()):
                    btype, blen = hdr2(buf, b)
                    if btype != _PCAPNG_EPB:
                        break
                    add(b)
                    b += blen
            except struct.error:
                pass
            if starts:
                ok, batches, last, end = self._epb_run(window, builder, starts, order, interfaces, block)
                yield from batches
                block += ok
                if ok:
                    last_ts = last
                    pos = base + end
                    self.bytes_read = window.progress(pos)
                if ok < len(starts):
                    if self._epb_stop(window, builder, pos, order, interfaces, block):
                        continue
                    break
                continue  # back to the fast path; what it cannot take comes down here with no starts
            # Slow path: one block of any type at pos.
            b = pos - base
            if nbuf - b < 12:
                if self._need_more(window, builder, pos, pos + 12):
                    continue
                if self._left(window, pos) > 0:
                    self.problems.append(
                        f"truncated block {block + 1} at byte {pos}: {self._left(window, pos)} bytes left,"
                        " a block header needs 12"
                    )
                break
            btype = _U32[order].unpack_from(buf, b)[0]
            if btype == _PCAPNG_SHB:
                # The byte-order magic says how to read everything in this section (§4.1).
                bom = buf[b + 8 : b + 12]
                if bytes(bom) == b"\x4d\x3c\x2b\x1a":
                    new_order = "<"
                elif bytes(bom) == b"\x1a\x2b\x3c\x4d":
                    new_order = ">"
                else:
                    self.problems.append(
                        f"corrupt block {block + 1} at byte {pos}: section header with byte-order magic"
                        f" {bytes(bom).hex()}; stopped reading"
                    )
                    break
            else:
                new_order = order
            blen = _U32[new_order].unpack_from(buf, b + 4)[0]
            why = None
            if blen < 12 or blen % 4:
                why = f"block length {blen} is not a multiple of 4 of at least 12"
            elif blen > MAX_PCAPNG_BLOCK:
                why = f"block length {blen} exceeds {MAX_PCAPNG_BLOCK}"
            elif btype == _PCAPNG_SHB and blen < 28:
                why = f"section header block length {blen} < 28"
            if why:
                self.problems.append(f"corrupt block {block + 1} at byte {pos}: {why}; stopped reading")
                break
            if b + blen > nbuf:
                if builder.over(pos + blen):  # e.g. long blocks without frames after a frame
                    yield builder.cut()
                    continue
                if self._need_more(window, builder, pos, pos + blen):
                    continue
                self.problems.append(
                    f"truncated block {block + 1} at byte {pos}: block length says {blen} bytes,"
                    f" {self._left(window, pos)} left"
                )
                break
            trailer = _U32[new_order].unpack_from(buf, b + blen - 4)[0]
            if trailer != blen:
                self.problems.append(
                    f"corrupt block {block + 1} at byte {pos}: trailing length {trailer} differs from"
                    f" block length {blen}; stopped reading"
                )
                break
            block += 1
            if btype == _PCAPNG_SHB:
                _bom, major, minor, _section_len = _SHB_BODY[new_order].unpack_from(buf, b + 8)
                if major != 1:
                    self.problems.append(
                        f"section {block} at byte {pos}: pcapng version {major}.{minor} unsupported; stopped reading"
                    )
                    break
                order = new_order
                interfaces = []  # interface ids are per section (§4.1)
            elif btype == _PCAPNG_IDB:
                interfaces.append(self._parse_idb(buf, b, blen, order, block, pos))
            elif btype in (_PCAPNG_SPB, _PCAPNG_PB):
                frame = self._packet_block(buf, b, blen, btype, order, interfaces, last_ts, block, pos)
                if isinstance(frame, str):
                    self.problems.append(f"corrupt block {block} at byte {pos}: {frame}; stopped reading")
                    break
                linktype, data_at, caplen, wirelen, last_ts = frame
                done = builder.add_one(linktype, base + data_at, caplen, wirelen, last_ts)
                if done is not None:
                    yield done
            elif btype not in (4, 5, 9, 0x0A, 0x0BAD, 0x40000BAD):
                # NRB, ISB, systemd journal, DSB and custom blocks carry no frames; skip quietly.
                unknown[btype] += 1
            pos += blen
            self.bytes_read = window.progress(pos)
        for btype, n in sorted(unknown.items()):
            self.problems.append(f"skipped {n} block(s) of unknown type 0x{btype:08x}")

    def _epb_run(self, window, builder, starts, order, interfaces, block):
        """Validate and emit a run of EPBs -> (blocks accepted, batches, last timestamp, end offset)."""
        buf = window.buf
        nbuf = len(buf)
        rel = np.array(starts, dtype=np.int64)
        u8 = np.frombuffer(buf, dtype=np.uint8)
        whole_hdr = int(np.searchsorted(rel, nbuf - _EPB_FIXED, side="right"))
        fields = _rows(u8, rel[:whole_hdr], _EPB_FIXED).view(_U32_DT[order])
        blens = fields[:, 1].astype(np.int64)
        iface = fields[:, 2]
        caplens = fields[:, 5].astype(np.int64)
        bad = (blens < _EPB_MIN) | (blens % 4 != 0) | (blens > MAX_PCAPNG_BLOCK)
        bad |= (caplens > blens - _EPB_MIN) | (caplens > MAX_CAPLEN) | (iface >= len(interfaces))
        ends = rel[:whole_hdr] + blens
        complete = ends <= nbuf
        check = complete & ~bad
        trailers = _rows(u8, np.where(check, ends - 4, 0), 4).view(_U32_DT[order])[:, 0]
        bad |= check & (trailers != blens)
        ok = _first_true(bad | ~complete)
        if not ok:
            return 0, [], 0, 0
        ids = iface[:ok]
        ticks = (fields[:ok, 3].astype(np.uint64) << np.uint64(32)) | fields[:ok, 4].astype(np.uint64)
        first = int(ids[0])
        same = len(interfaces) == 1 or bool((ids == first).all())
        if same:
            linktype, _snaplen, units, offset_s = interfaces[first]
            ts_ns, outside = _ticks_to_ns(ticks, units, offset_s)
        else:
            ts_ns, outside = np.empty(ok, dtype=np.int64), np.empty(ok, dtype=bool)
            for i in np.unique(ids).tolist():
                mask = ids == i
                ts_ns[mask], outside[mask] = _ticks_to_ns(ticks[mask], interfaces[i][2], interfaces[i][3])
        if outside.any():
            i = int(outside.argmax())
            self._stamps.clamped(int(outside.sum()), block + 1 + i, window.start + int(rel[i]))
        offsets = rel[:ok] + (window.start + _EPB_FIXED)
        wirelens = fields[:ok, 6].astype(np.int64)
        caps = caplens[:ok]
        batches = []
        if same:
            batches += builder.add(linktype, offsets, caps, wirelens, ts_ns)
        else:
            # Interfaces of different link types interleave: one builder.add per run of one type.
            lts = np.array([itf[0] for itf in interfaces], dtype=np.int64)[ids]
            cuts = [0, *(np.flatnonzero(lts[1:] != lts[:-1]) + 1).tolist(), ok]
            for s, e in zip(cuts[:-1], cuts[1:], strict=True):
                batches += builder.add(int(lts[s]), offsets[s:e], caps[s:e], wirelens[s:e], ts_ns[s:e])
        return ok, batches, int(ts_ns[-1]), int(ends[ok - 1])

    def _epb_stop(self, window, builder, at, order, interfaces, block) -> bool:
        """The EPB at stream offset ``at`` was not accepted: grow the window (True) or record why."""
        buf = window.buf
        b = at - window.start
        left = len(buf) - b
        if left < _EPB_FIXED:
            if self._need_more(window, builder, at, at + _EPB_FIXED):
                return True
            self.problems.append(
                f"truncated block {block + 1} at byte {at}: {self._left(window, at)} bytes left, a packet"
                f" block header needs {_EPB_FIXED}"
            )
            return False
        _t, blen, iface, _hi, _lo, caplen, _orig = struct.unpack_from(order + "7I", buf, b)
        if blen < _EPB_MIN or blen % 4:
            why = f"block length {blen} is not a multiple of 4 of at least {_EPB_MIN}"
        elif blen > MAX_PCAPNG_BLOCK:
            why = f"block length {blen} exceeds {MAX_PCAPNG_BLOCK}"
        elif caplen > blen - _EPB_MIN:
            why = f"captured length {caplen} does not fit in block length {blen}"
        elif caplen > MAX_CAPLEN:
            why = f"captured length {caplen} exceeds {MAX_CAPLEN}"
        elif iface >= len(interfaces):
            why = f"interface {iface} not described (section has {len(interfaces)})"
        elif blen > left:
            if self._need_more(window, builder, at, at + blen):
                return True
            self.problems.append(
                f"truncated block {block + 1} at byte {at}: block length says {blen} bytes,"
                f" {self._left(window, at)} left"
            )
            return False
        else:
            trailer = _U32[order].unpack_from(buf, b + blen - 4)[0]
            why = f"trailing length {trailer} differs from block length {blen}"
        self.problems.append(f"corrupt block {block + 1} at byte {at}: {why}; stopped reading")
        return False

    def _parse_idb(self, buf, b, blen, order, block, pos) -> tuple[int, int, int, int]:
        """Interface Description Block (pcapng draft §4.2) -> (linktype, snaplen, units/s, offset s)."""
        linktype, _reserved, snaplen = _IDB_BODY[order].unpack_from(buf, b + 8)
        units, offset_s = 1_000_000, 0  # no if_tsresol: microseconds (§4.2)
        opt = b + 16
        end = b + blen - 4
        opt_hdr = _OPT_HDR[order].unpack_from
        while opt + 4 <= end:
            code, olen = opt_hdr(buf, opt)
            if code == _OPT_ENDOFOPT:
                break
            if opt + 4 + olen > end:
                self.problems.append(f"block {block} at byte {pos}: interface option {code} overruns the block")
                break
            if code == _IF_TSRESOL and olen >= 1:
                # MSB clear: 10^-n s; MSB set: 2^-n s (§4.2 if_tsresol).
                value = buf[opt + 4]
                exp = value & 0x7F
                if (value & 0x80 and exp > 63) or (not value & 0x80 and exp > 19):
                    self.problems.append(f"block {block} at byte {pos}: if_tsresol {value} ignored")
                else:
                    units = 1 << exp if value & 0x80 else 10**exp
            elif code == _IF_TSOFFSET and olen >= 8:
                offset_s = _I64[order].unpack_from(buf, opt + 4)[0]  # seconds added to every ts
            opt += 4 + ((olen + 3) & ~3)
        return linktype, snaplen, units, offset_s

    def _packet_block(self, buf, b, blen, btype, order, interfaces, last_ts, block, pos):
        """SPB (§4.4) or obsolete PB (appendix A) -> (linktype, data offset, caplen, wirelen, ts) or why not."""
        if btype == _PCAPNG_SPB:
            # An SPB belongs to interface 0 and is cut to its snaplen; it has no timestamp.
            if not interfaces:
                return "simple packet block before any interface description"
            if blen < 16:
                return f"simple packet block length {blen} < 16"
            linktype, snaplen, _units, _offset = interfaces[0]
            wirelen = _SPB_BODY[order].unpack_from(buf, b + 8)[0]
            caplen = min(wirelen, blen - 16)
            if snaplen:
                caplen = min(caplen, snaplen)
            return linktype, b + 12, caplen, wirelen, last_ts
        if blen < _EPB_MIN:
            return f"packet block length {blen} < {_EPB_MIN}"
        iface, _drops, hi, lo, caplen, wirelen = _PB_BODY[order].unpack_from(buf, b + 8)
        if iface >= len(interfaces):
            return f"interface {iface} not described (section has {len(interfaces)})"
        if caplen > blen - _EPB_MIN or caplen > MAX_CAPLEN:
            return f"captured length {caplen} does not fit in block length {blen}"
        linktype, _snaplen, units, offset_s = interfaces[iface]
        ts, outside = _ticks_to_ns(np.array([(hi << 32) | lo], dtype=np.uint64), units, offset_s)
        if outside[0]:
            self._stamps.clamped(1, block, pos)
        ts = int(ts[0])
        return linktype, b + _EPB_FIXED, caplen, wirelen, ts

    # --- Microsoft Network Monitor (Wireshark wiretap/netmon.c) -----------------------------------------

    def _netmon_frames(self, window, builder) -> Iterator[FrameBatch]:
        # The frame table sits at the end of the file: read a gzip stream whole (NetMon files < 4 GiB).
        if not window.read_all(MAX_NETMON_GZIP):
            self.problems.append(
                f"compressed NetMon capture longer than {MAX_NETMON_GZIP >> 20} MiB uncompressed (its frame table"
                " is at the end, so it is read whole): decompress it to read it"
            )
            return
        buf = window.buf
        nbuf = len(buf)
        if nbuf < 4 + _NETMON_HDR.size:
            self.problems.append(f"truncated file header: {nbuf} of {4 + _NETMON_HDR.size} bytes")
            return
        (minor, major, media, year, month, _dow, day, hour, minute, second, msec, table_at, table_len) = (
            _NETMON_HDR.unpack_from(buf, 4)[:13]
        )
        if major not in (1, 2):
            self.problems.append(f"NetMon version {major}.{minor} unsupported")
            return
        # The start is a SYSTEMTIME in the capturing host's local time, zone unrecorded; read it as UTC
        # (Wireshark uses the *reader's* zone, so compare with tshark under TZ=UTC).
        try:
            start_ns = calendar.timegm((year, month, day, hour, minute, second)) * 10**9 + msec * 10**6
        except (ValueError, OverflowError):
            self.problems.append(f"capture start {year}-{month}-{day} {hour}:{minute}:{second} invalid; using 1970")
            start_ns = 0
        if table_len % 4 or table_len == 0:
            self.problems.append(f"frame table length {table_len} is not a positive multiple of 4")
            return
        entries = table_len // 4
        if table_at + table_len > nbuf:
            entries = max(0, (nbuf - table_at) // 4)
            self.problems.append(
                f"frame table at byte {table_at} runs past the end of the file: {entries} of"
                f" {table_len // 4} frame offsets read"
            )
        table = np.frombuffer(buf, dtype="<u4", count=entries, offset=table_at).tolist() if entries else []
        # 2.1+ frames carry a trailer with their own media type; 2.3+ also a UTC FILETIME (netmon.c).
        trailer = 0 if major == 1 or minor == 0 else {1: 2, 2: 6}.get(minor, 15)
        rec = _NETMON1_REC if major == 1 else _NETMON2_REC
        skipped = Counter()
        base = window.start
        for number, at in enumerate(table, 1):
            if at + rec.size > nbuf:
                self.problems.append(f"truncated record {number} at byte {at}: record header past end of file")
                break
            delta, wirelen, caplen = rec.unpack_from(buf, at)
            if caplen > MAX_CAPLEN:
                self.problems.append(
                    f"corrupt record {number} at byte {at}: captured length {caplen} exceeds {MAX_CAPLEN};"
                    " stopped reading"
                )
                break
            data_at = at + rec.size
            left = nbuf - data_at
            if caplen + trailer > left:
                self.problems.append(
                    f"truncated record {number} at byte {at}: header says {caplen} bytes"
                    f"{f' + {trailer}-byte trailer' if trailer else ''}, {left} left"
                )
                break
            kind = _U16["<"].unpack_from(buf, data_at + caplen)[0] if trailer else media
            if kind in _NETMON_MEDIA:
                linktype = _NETMON_MEDIA[kind]
            elif kind & 0xF000 == _NETMON_PCAP_BASE and not 0xE080 <= kind <= 0xE08A:
                linktype = kind & 0x0FFF
            else:
                if kind not in _NETMON_SILENT:
                    skipped[kind] += 1
                continue
            if trailer == 15:
                filetime = _NETMON_FILETIME.unpack_from(buf, data_at + caplen + 6)[0]
                stamp = (filetime - _FILETIME_UNIX_EPOCH) * 100
            elif major == 1:
                stamp = start_ns + delta * 1_000_000
            else:
                # Documented as µs since the start; Wireshark multiplies by 1000 in 64-bit signed
                # arithmetic (so huge values wrap negative).  Done the same way, to agree with tshark.
                ns = (delta * 1000) & _MASK64
                stamp = start_ns + (ns - (1 << 64) if ns >> 63 else ns)
            ts_ns = _clamp_ns(stamp)
            if ts_ns != stamp:
                self._stamps.clamped(1, number, at)
            done = builder.add_one(linktype, base + data_at, caplen, wirelen, ts_ns)
            if done is not None:
                self.bytes_read = window.progress(data_at + caplen)
                yield done
        for kind, n in sorted(skipped.items()):
            name = _NETMON_MEDIA_NAMES.get(kind, "unknown")
            self.problems.append(f"skipped {n} frame(s) of NetMon media type 0x{kind:04x} ({name})")


# --- Picking files ---------------------------------------------------------------------------------------


def is_capture(path: str | os.PathLike) -> bool:
    """True if the file starts with a capture magic (after gunzip when it is gzip); reads a few bytes."""
    try:
        head, _ = _read_head(Path(path))
    except OSError:
        return False
    return _sniff(head) is not None


def iter_capture_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand folders recursively into the capture files they hold (by magic, so SOURCES.md and
    friends are skipped), each folder's files sorted; files named explicitly are kept as given (so
    the caller can report one that is not a capture).  Duplicates are dropped, order is kept."""
    found: list[Path] = []
    seen: set[Path] = set()
    for path in map(Path, paths):
        if path.is_dir():
            candidates = sorted(p for p in path.rglob("*") if p.is_file() and is_capture(p))
        else:
            candidates = [path]
        for p in candidates:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                found.append(p)
    return found
