"""The packet path shared by replay and live capture: frame batches in, a connection-table delta out.

Owns decoding order, counters and when flows are folded; never does I/O (readers and the store do).
"""

from __future__ import annotations

import struct

from .connections import ConnectionTable
from .decode import DecodeError, Decoder
from .flows import FlowTable

FOLD_EVERY = 1 << 18  # packets between folds of flow counters into the table (and flow eviction)


class Engine:
    def __init__(self) -> None:
        self.table = ConnectionTable()
        self.errors: dict[str, int] = {}  # decode errors per layer / protocol
        self.decoder = Decoder()
        self.flows = FlowTable(self.table, self.errors)
        self.packets = 0
        self.bytes = 0
        self._since_fold = 0

    def process_batch(self, batch) -> None:
        """Decode every frame of a :class:`sensor.readers.FrameBatch` and feed the flow table."""
        decode = self.decoder.decode
        process = self.flows.process
        linktype, data = batch.linktype, memoryview(batch.data)
        offsets, caplens = batch.offsets.tolist(), batch.caplens.tolist()
        wirelens, stamps = batch.wirelens.tolist(), batch.ts_ns.tolist()
        errors = self.errors
        for i in range(len(offsets)):
            start = offsets[i]
            try:
                packet = decode(linktype, data[start : start + caplens[i]])
            except DecodeError as error:
                errors[error.layer] = errors.get(error.layer, 0) + 1
                continue
            except (struct.error, ValueError, IndexError):  # a header the checks above did not foresee
                errors["decode"] = errors.get("decode", 0) + 1
                continue
            if packet is not None:
                process(packet, stamps[i], wirelens[i])
        count = len(offsets)
        self.packets += count
        self.bytes += sum(wirelens)
        self._since_fold += count
        if self._since_fold >= FOLD_EVERY:
            self.fold()

    def process_frame(self, linktype: int, frame: bytes, ts_ns: int, wirelen: int | None = None) -> None:
        self.packets += 1
        self.bytes += wirelen or len(frame)
        try:
            packet = self.decoder.decode(linktype, memoryview(frame))
        except DecodeError as error:
            self.errors[error.layer] = self.errors.get(error.layer, 0) + 1
            return
        except (struct.error, ValueError, IndexError):
            self.errors["decode"] = self.errors.get("decode", 0) + 1
            return
        if packet is not None:
            self.flows.process(packet, ts_ns, wirelen or len(frame))

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
