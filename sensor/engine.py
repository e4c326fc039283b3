"""The packet path shared by replay and live capture: frame batches in, a connection-table delta out.

Owns decoding order, counters and when flows are folded; never does I/O (readers and the store do).
"""

from __future__ import annotations

import struct
from itertools import repeat

import numpy as np

from .batch import EARLY_ROUNDS, MIN_BATCH, FastPath, address_bytes
from .connections import ConnectionTable
from .decode import IPPROTO_TCP, LINKTYPE_ETHERNET, DecodeError, Decoder, Packet
from .flows import BUFFER_BUDGET, MAX_FLOWS, FlowTable
from .protocols.registry import ANALYZERS
from .readers import FrameBatch

# Frames per fast-path step.  Flow lookups and per-flow Python work are per flow direction per chunk, so
# larger chunks do less of it; 2**18 frames took the bench mix's engine time from ~1.4 to ~1.25 s, for
# ~150 MB more peak RSS than 2**16 (2**19 was no faster).  Replay reads batches of this size.
CHUNK = 1 << 18
FOLD_EVERY = 1 << 18  # packets between folds of flow counters into the table (and flow eviction)


def _read_tcp(headers, indices) -> list:
    """Per index: the TCP/IPv4 header fields the fast path read (as decode.py gives them), else None."""
    index = np.asarray(indices, np.int64)
    tcp = (headers.good[index] & (headers.proto[index] == IPPROTO_TCP)).tolist()
    columns = (headers.sport, headers.dport, headers.flags, headers.seq, headers.start, headers.length)
    addresses = (address_bytes(headers.src[index]), address_bytes(headers.dst[index]))
    rows = zip(*addresses, *(column[index].tolist() for column in columns))
    return [row if read else None for row, read in zip(rows, tcp)]


class Engine:
    def __init__(self, vectorised: bool = True, max_flows: int = MAX_FLOWS, reassembly_mb: int = BUFFER_BUDGET >> 20):
        self.table = ConnectionTable()
        self.errors: dict[str, int] = {}  # decode errors per layer / protocol
        self.decoder = Decoder()
        self.flows = FlowTable(self.table, self.errors)
        self.flows.max_flows, self.flows.budget = max_flows, reassembly_mb << 20
        self.fast = FastPath(self.flows, ANALYZERS) if vectorised else None
        self.packets = 0
        self.bytes = 0
        self._since_fold = 0

    def process_batch(self, batch) -> None:
        """Decode every frame of a :class:`sensor.readers.FrameBatch` and feed the flow table."""
        if self.fast is not None and len(batch.offsets) > CHUNK:
            # Flows started in one chunk take the fast path in the next: the chunk is the unit in
            # which flow state may lag behind the packets.
            for start in range(0, len(batch.offsets), CHUNK):
                end = start + CHUNK
                self._process(
                    batch._replace(
                        offsets=batch.offsets[start:end],
                        caplens=batch.caplens[start:end],
                        wirelens=batch.wirelens[start:end],
                        ts_ns=batch.ts_ns[start:end],
                    )
                )
        else:
            self._process(batch)

    def _process(self, batch) -> None:
        linktype = batch.linktype
        count = len(batch.offsets)
        deferred = None
        if self.fast is not None and linktype == LINKTYPE_ETHERNET and count >= MIN_BATCH:
            self.decoder.non_ip += self.fast.non_ip(batch)
            self.fast.stateless(batch)
            headers = self.fast.headers(batch)
            early = [self.fast.handshakes(batch)]
            for limit in EARLY_ROUNDS:
                frames = self.fast.early(batch, limit)
                if not len(frames):
                    break
                self._scalar(batch, frames, headers)
                early.append(frames)
            early = np.concatenate(early)
            self.flows.may_forget = False  # split hands flows to finish: none may be forgotten in between
            try:
                scalar, deferred = self.fast.split(batch, done=early)
                self._scalar(batch, scalar, headers)
                self.fast.finish(deferred)
            finally:
                self.flows.may_forget = True
        else:
            self._scalar(batch, np.arange(count))
        self.packets += count
        self.bytes += int(batch.wirelens.sum())
        self._since_fold += count
        if self._since_fold >= FOLD_EVERY:
            self.fold()

    def _scalar(self, batch, indices: np.ndarray, headers=None) -> None:
        """The per-packet path, in capture order, for the frames ``indices`` of the batch that the fast
        path left.  ``headers``: the fast path's header arrays of this batch; TCP/IPv4 frames it could
        read are not decoded again."""
        if not len(indices):
            return
        decode = self.decoder.decode
        process = self.flows.process
        errors = self.errors
        linktype, data = batch.linktype, memoryview(batch.data)
        rows = zip(
            batch.offsets[indices].tolist(),
            batch.caplens[indices].tolist(),
            batch.ts_ns[indices].tolist(),
            batch.wirelens[indices].tolist(),
            _read_tcp(headers, indices) if headers is not None else repeat(None),
        )
        flows = self.flows
        flows.linktype, flows.frames = linktype, data
        try:
            for row in rows:
                flows.frame = row  # evidence of an operational command, if one is read: no tuple of its own
                offset, caplen, stamp, wirelen, fields = row
                if fields is not None:
                    src, dst, sport, dport, flags, seq, start, length = fields
                    packet = Packet(
                        src, dst, IPPROTO_TCP, sport, dport, flags, seq, data[start : start + length],
                        bytes(data[offset + 6 : offset + 12]),
                    )  # fmt: skip
                else:
                    try:
                        packet = decode(linktype, data[offset : offset + caplen])
                    except DecodeError as error:
                        errors[error.layer] = errors.get(error.layer, 0) + 1
                        continue
                    except (struct.error, ValueError, IndexError):  # a header the checks above did not foresee
                        errors["decode"] = errors.get("decode", 0) + 1
                        continue
                    if packet is None:
                        continue
                process(packet, stamp, wirelen)
        finally:
            flows.frame = flows.frames = None  # no view of the batch outlives it (replay unmaps its pages)

    def process_frame(self, linktype: int, frame: bytes, ts_ns: int, wirelen: int | None = None) -> None:
        """One frame through the per-packet path (tests and callers without batches)."""
        wirelen = wirelen or len(frame)
        self.packets += 1
        self.bytes += wirelen
        one = np.zeros(1, np.int64)
        self._scalar(FrameBatch(linktype, frame, one, one + len(frame), one + wirelen, one + ts_ns), one)

    def fold(self, evict: bool = True) -> None:
        self.flows.fold(evict)
        self._since_fold = 0

    def take_delta(self) -> ConnectionTable:
        """Everything learnt since the last call, with device facts derived; the engine starts a new delta."""
        self.fold(evict=True)
        delta = self.table
        delta.derive_devices()
        self.table = self.flows.table = ConnectionTable()
        return delta
