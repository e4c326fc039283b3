"""The flow table: who initiated each TCP/UDP flow, per-direction TCP reassembly, and which analyzer owns it.

Owns flow state and the per-flow protocol decision (made once, cached); never decodes link layers and
never does I/O.  Analyzer results land in a :class:`ConnectionTable`.
"""

from __future__ import annotations

import heapq
from operator import attrgetter

from .connections import ConnectionTable
from .decode import IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Packet
from .protocols import Analyzer, Malformed, Operation, merge_identity
from .protocols.registry import ANALYZERS, SERVER_PORTS

SEQ_MASK = 0xFFFFFFFF
PROBE_LIMIT = 8 * 1024  # bytes per direction an undecided flow may buffer before it is given up on
MAX_BUFFER = 256 * 1024  # an incomplete PDU larger than this is malformed
MAX_PENDING = 8  # out-of-order segments kept behind a partial PDU before the hole is declared lost
MAX_HOLES = 4  # skipped sequence ranges remembered per direction
MAX_ERRORS = 8  # consecutive malformed PDUs of one direction after which it is no longer parsed
# Bytes all flows together may hold in partial PDUs and out-of-order segments.  Each flow is bounded
# (MAX_BUFFER, MAX_PENDING), but not their number: 8,000 flows each holding a 250 KB AMS packet in part
# took a 3.7 MB capture.gz to 2.2 GB.  Past this budget, the stream that grows gives its partial PDU up
# (counted under "reassembly" in the decode errors); plant PDUs are small and rarely held at all.
BUFFER_BUDGET = 64 * 1024 * 1024
TCP_IDLE_NS = 300 * 10**9
UDP_IDLE_NS = 60 * 10**9
CLOSED_IDLE_NS = 10 * 10**9
# A TCP flow the responder never answered (a scan's SYN, a dead host): forgotten after this much idle
# time rather than TCP_IDLE_NS, so that a scan holds ~30 s of its flows in memory, not 5 minutes'.
UNANSWERED_IDLE_NS = 30 * 10**9
# Flows kept at once (~1.2 KB each).  Past it the least recently active quarter is forgotten, its
# counters kept on the connection (counted as "flows" in the decode errors): a flood of new flows
# (1M distinct SYNs in 10 s of a 6.4 MB .gz took replay to 2.8 GB, 1.76 GB with this) no longer grows
# the flow table without end.
MAX_FLOWS = 100_000

NOT_RECOGNISED = Analyzer(name="", probe=lambda data, to_server: False, parse=lambda buf, to_server: (0, [], {}))

TCP_CANDIDATES: dict[int, tuple[Analyzer, ...]] = {}
UDP_CANDIDATES: dict[int, tuple[Analyzer, ...]] = {}
for _analyzer in ANALYZERS:
    for _port in _analyzer.tcp_ports:
        TCP_CANDIDATES[_port] = TCP_CANDIDATES.get(_port, ()) + (_analyzer,)
    for _port in _analyzer.udp_ports:
        UDP_CANDIDATES[_port] = UDP_CANDIDATES.get(_port, ()) + (_analyzer,)
ANY_TCP_PORT = tuple(a for a in ANALYZERS if a.any_tcp_port)


def _candidates(proto: int, server_port: int, client_port: int) -> tuple[Analyzer, ...]:
    """The analyzers that may claim a flow, in probing order.  Either port may be the protocol's: a
    PLC that dials out from 502 still speaks Modbus."""
    if proto == IPPROTO_TCP:
        by_port = TCP_CANDIDATES.get(server_port, ()) + TCP_CANDIDATES.get(client_port, ()) + ANY_TCP_PORT
    elif proto == IPPROTO_UDP:
        by_port = UDP_CANDIDATES.get(server_port, ()) + UDP_CANDIDATES.get(client_port, ())
    else:
        by_port = ()
    return tuple(dict.fromkeys(by_port))


def is_group_address(address: bytes) -> bool:
    """Multicast, broadcast and the unspecified address are never a device at the other end of a flow."""
    if len(address) == 4:  # 224/4 multicast, limited broadcast, 0.0.0.0 (240/4 is reserved, not group)
        return 224 <= address[0] <= 239 or address in (b"\xff\xff\xff\xff", b"\x00\x00\x00\x00")
    return address[0] == 0xFF or address == bytes(16)


class Stream:
    """One direction of a TCP flow: the next expected sequence number and the unparsed bytes."""

    __slots__ = ("next_seq", "buf", "skip", "pending", "holes", "errors", "held")

    def __init__(self) -> None:
        self.errors = 0  # consecutive malformed PDUs; at MAX_ERRORS this direction is no longer parsed
        self.next_seq: int | None = None
        self.buf = b""
        self.skip = 0  # bytes still to drop (a body the analyzer skips by its length)
        self.pending: dict[int, bytes] = {}  # out-of-order segments by sequence number
        self.holes: list[tuple[int, int]] = []  # sequence ranges skipped, for segments arriving late
        self.held = 0  # bytes of buf and pending as last counted in FlowTable.held

    def reset(self, next_seq: int) -> None:
        self.next_seq, self.buf, self.skip, self.pending, self.holes = next_seq, b"", 0, {}, []


class Flow:
    __slots__ = (
        "client", "server", "client_port", "server_port", "proto", "handshake", "analyzer", "candidates",
        "streams", "packets", "bytes", "first_ns", "last_ns", "macs", "closed",
    )  # fmt: skip

    def __init__(self, client: bytes, server: bytes, client_port: int, server_port: int, proto: int) -> None:
        self.client, self.server = client, server
        self.client_port, self.server_port, self.proto = client_port, server_port, proto
        self.handshake = False
        self.analyzer: Analyzer | None = None  # None while undecided; NOT_RECOGNISED once given up
        self.candidates: list[Analyzer] = []
        # initiator -> responder, responder -> initiator; only TCP is reassembled
        self.streams = (Stream(), Stream()) if proto == IPPROTO_TCP else ()
        self.packets = self.bytes = 0  # since the last fold
        self.first_ns = self.last_ns = 0
        self.macs = 0  # bit 0: the initiator's MAC recorded, bit 1: the responder's
        self.closed = False


def initiator_is_source(sport: int, dport: int) -> bool:
    """Without a handshake: the side not on a server port initiated; else the one with the higher port."""
    source_known, destination_known = sport in SERVER_PORTS, dport in SERVER_PORTS
    if source_known != destination_known:
        return destination_known
    return sport >= dport


class FlowTable:
    def __init__(self, table: ConnectionTable, errors: dict[str, int]) -> None:
        self.table = table
        self.errors = errors  # decode errors per protocol, shared with the engine
        self.entries: dict[tuple, tuple[Flow, bool]] = {}  # 5-tuple as sent -> (flow, sent by initiator)
        self.plain_udp = 0  # UDP flows on no analyzer's port (the fast path's stateless UDP checks these)
        self.held = 0  # bytes held by all streams (partial PDUs, out-of-order segments): BUFFER_BUDGET bounds it
        self.budget = BUFFER_BUDGET
        self.max_flows = MAX_FLOWS
        # False while the fast path holds flows between its split and its finish: no flow may be forgotten then
        self.may_forget = True
        self.now_ns = 0
        self._candidates: dict[tuple[int, int, int], tuple[Analyzer, ...]] = {}
        # The frame the per-packet path is reading — the engine's row (offset, length, timestamp ns, ...)
        # in ``frames``, the batch's buffer — and its link type, set by the engine around process(): an
        # operational command's occurrence keeps a copy of it as evidence.
        self.frame: tuple | None = None
        self.frames: memoryview | None = None
        self.linktype = 1

    def __len__(self) -> int:
        return len(self.entries) // 2

    # -- per packet -------------------------------------------------------------------------------

    def process(self, packet: Packet, ts_ns: int, wirelen: int) -> None:
        src, dst, proto, sport, dport, flags = packet[:6]
        entry = self.entries.get((src, dst, sport, dport, proto))
        if entry is None:
            if is_group_address(dst) or is_group_address(src):
                if not is_group_address(src):
                    self.table.device(src).saw(ts_ns, ts_ns)
                    if packet.src_mac:
                        self.table.add_mac(src, packet.src_mac)
                return
            flow, to_server = self._new_flow(packet)
        else:
            flow, to_server = entry
        if not flow.packets or ts_ns < flow.first_ns:  # the earliest time: stamps may go backwards
            flow.first_ns = ts_ns
        flow.packets += 1
        flow.bytes += wirelen
        if ts_ns > flow.last_ns:  # the latest time, also where the fast path took packets out of order
            flow.last_ns = ts_ns
        if ts_ns > self.now_ns:
            self.now_ns = ts_ns
        if proto == IPPROTO_TCP:
            if flags & (TCP_SYN | TCP_FIN | TCP_RST):
                to_server = self._control(flow, to_server, packet)
                self._settle(flow)  # a handshake resets its stream
            if flow.macs != 3 and packet.src_mac:
                self._record_mac(flow, to_server, packet.src_mac)
            if flow.analyzer is not NOT_RECOGNISED and packet.payload and not flags & TCP_SYN:
                self._segment(flow, to_server, packet)
                self._settle(flow)
        else:
            if flow.macs != 3 and packet.src_mac:
                self._record_mac(flow, to_server, packet.src_mac)
            if flow.analyzer is not NOT_RECOGNISED and packet.payload:
                self._datagram(flow, to_server, bytes(packet.payload))

    def _new_flow(self, packet: Packet) -> tuple[Flow, bool]:
        src, dst, proto, sport, dport, flags = packet[:6]
        if proto == IPPROTO_TCP and flags & (TCP_SYN | TCP_FIN | TCP_RST) == TCP_SYN:
            from_initiator = not flags & TCP_ACK
        else:
            from_initiator = initiator_is_source(sport, dport)
        if from_initiator:
            return self._create(src, dst, sport, dport, proto), True
        return self._create(dst, src, dport, sport, proto), False

    def open_handshake(self, client, server, client_port, server_port, seqs, macs, first_ns, last_ns, size):
        """A new TCP flow whose first two packets are a SYN and its SYN-ACK (no payload): what
        :meth:`process` makes of the two (the fast path hands them over together)."""
        flow = self._create(client, server, client_port, server_port, IPPROTO_TCP)
        flow.handshake = True
        flow.streams[0].next_seq = (seqs[0] + 1) & SEQ_MASK  # new streams: nothing else to reset
        flow.streams[1].next_seq = (seqs[1] + 1) & SEQ_MASK
        flow.packets, flow.bytes, flow.first_ns, flow.last_ns = 2, size, first_ns, last_ns
        self._record_mac(flow, True, macs[0])
        self._record_mac(flow, False, macs[1])
        if last_ns > self.now_ns:
            self.now_ns = last_ns

    def _create(self, client: bytes, server: bytes, client_port: int, server_port: int, proto: int) -> Flow:
        if len(self.entries) >= 2 * self.max_flows and self.may_forget:
            self.make_room()
        flow = Flow(client, server, client_port, server_port, proto)
        candidates = self._candidates_of(flow)
        flow.candidates = list(candidates)
        if not candidates:
            flow.analyzer = NOT_RECOGNISED
            self.plain_udp += proto == IPPROTO_UDP
        self._index(flow)
        return flow

    def _candidates_of(self, flow: Flow) -> tuple[Analyzer, ...]:
        """:func:`_candidates` for the flow's protocol and ports, cached by the ports that matter (an
        analyzer's port, else -1), so the cache stays small."""
        by_port = TCP_CANDIDATES if flow.proto == IPPROTO_TCP else UDP_CANDIDATES
        server, client = flow.server_port, flow.client_port
        ports = (flow.proto, server if server in by_port else -1, client if client in by_port else -1)
        candidates = self._candidates.get(ports)
        if candidates is None:
            candidates = self._candidates[ports] = _candidates(*ports)
        return candidates

    def _index(self, flow: Flow) -> None:
        self.entries[(flow.client, flow.server, flow.client_port, flow.server_port, flow.proto)] = (flow, True)
        self.entries[(flow.server, flow.client, flow.server_port, flow.client_port, flow.proto)] = (flow, False)

    def _flip(self, flow: Flow) -> None:
        """The other side turned out to be the initiator (a SYN, or a request, says so)."""
        flow.client, flow.server = flow.server, flow.client
        flow.client_port, flow.server_port = flow.server_port, flow.client_port
        flow.streams = flow.streams[::-1]
        flow.macs = ((flow.macs & 1) << 1) | (flow.macs >> 1)
        self._index(flow)

    def _record_mac(self, flow: Flow, to_server: bool, mac: bytes) -> None:
        bit = 1 if to_server else 2
        if not flow.macs & bit:
            flow.macs |= bit
            self.table.add_mac(flow.client if to_server else flow.server, mac)

    def _control(self, flow: Flow, to_server: bool, packet: Packet) -> bool:
        flags = packet.flags
        if flags & (TCP_SYN | TCP_FIN | TCP_RST) == TCP_SYN:  # SYN+FIN/RST is no handshake (scans, fuzzers)
            if not flags & TCP_ACK:  # the SYN's sender is the initiator
                if not to_server:
                    self._flip(flow)
                    to_server = True
                flow.handshake, flow.closed = True, False
                flow.streams[0].reset((packet.seq + 1) & SEQ_MASK)
            else:  # SYN-ACK from the responder
                if to_server and not flow.handshake:
                    self._flip(flow)
                    to_server = False
                flow.handshake = True
                flow.streams[1].reset((packet.seq + 1) & SEQ_MASK)
        if flags & (TCP_FIN | TCP_RST):
            flow.closed = True
        return to_server

    # -- TCP reassembly ---------------------------------------------------------------------------

    def _segment(self, flow: Flow, to_server: bool, packet: Packet) -> None:
        stream = flow.streams[0 if to_server else 1]
        if stream.errors >= MAX_ERRORS:
            return  # this direction gave up
        payload, seq = packet.payload, packet.seq
        if stream.next_seq is None:  # the capture started mid-stream: take this segment as the start
            if len(payload) == 1:
                return  # most likely a keep-alive (one byte below the next sequence number): no start
            stream.next_seq = seq
        offset = (seq - stream.next_seq) & SEQ_MASK
        if offset >= 0x80000000:  # starts before what was already delivered
            offset -= 0x100000000
            if offset + len(payload) <= 0:
                if stream.holes and self._fills_hole(stream, seq, len(payload)):
                    self._parse_late(flow, stream, payload)
                return  # else a retransmission of delivered bytes
            payload = payload[-offset:]
        elif offset:  # a hole before this segment
            if not stream.buf and not stream.skip:
                # No PDU is waiting for the missing bytes: as Wireshark does by default, read this
                # segment on its own (PDUs start at segment boundaries in practice); a late copy of
                # what the hole held is then taken for a retransmission.
                if len(stream.holes) < MAX_HOLES:
                    stream.holes.append((stream.next_seq, seq))
                stream.next_seq = seq
            else:  # keep it until the hole fills, or give the partial PDU up as lost in capture
                stream.pending[seq] = bytes(payload)
                if len(stream.pending) > MAX_PENDING:
                    stream.next_seq = min(stream.pending, key=lambda s: (s - stream.next_seq) & SEQ_MASK)
                    stream.buf, stream.skip = b"", 0
                    self._drain_pending(flow, stream)
                return
        stream.next_seq = (stream.next_seq + len(payload)) & SEQ_MASK
        self._deliver(flow, stream, payload)
        if stream.pending:
            self._drain_pending(flow, stream)

    @staticmethod
    def _fills_hole(stream: Stream, seq: int, length: int) -> bool:
        for i, (start, end) in enumerate(stream.holes):
            if (seq - start) & SEQ_MASK < 0x80000000 and (end - seq - length) & SEQ_MASK < 0x80000000:
                del stream.holes[i]
                return True
        return False

    def _parse_late(self, flow: Flow, stream: Stream, payload: memoryview) -> None:
        """A segment that arrived after the bytes behind it: its PDUs are read on their own."""
        if flow.analyzer is None or flow.analyzer is NOT_RECOGNISED:
            return
        self._parse_piece(flow, flow.streams[0] is stream, bytes(payload))

    def _parse_piece(self, flow: Flow, to_server: bool, piece: bytes) -> None:
        """Name the PDUs of a piece read on its own (a datagram, a late segment); nothing is kept."""
        try:
            _, commands, identity = flow.analyzer.parse(piece, to_server)
        except (Malformed, ValueError, IndexError, KeyError, UnicodeError):  # an analyzer bug must not stop capture
            self.errors[flow.analyzer.name] = self.errors.get(flow.analyzer.name, 0) + 1
            return
        if commands or identity:
            self._record(flow, to_server, commands, identity)

    def _drain_pending(self, flow: Flow, stream: Stream) -> None:
        while stream.pending:
            data = stream.pending.pop(stream.next_seq, None)
            if data is None:
                return
            stream.next_seq = (stream.next_seq + len(data)) & SEQ_MASK
            self._deliver(flow, stream, memoryview(data))
            if flow.analyzer is NOT_RECOGNISED:
                return

    def _deliver(self, flow: Flow, stream: Stream, data: memoryview) -> None:
        if stream.skip:
            if len(data) <= stream.skip:
                stream.skip -= len(data)
                return
            data, stream.skip = data[stream.skip :], 0
        stream.buf = stream.buf + data if stream.buf else bytes(data)
        if flow.analyzer is None:
            self._probe(flow)  # may flip the flow: directions are read from flow.streams afterwards
            if flow.analyzer is None or flow.analyzer is NOT_RECOGNISED:
                return
            for direction, buffered in enumerate(flow.streams):  # what waited for the decision
                if buffered.buf:
                    self._parse(flow, direction == 0, buffered)
            return
        self._parse(flow, flow.streams[0] is stream, stream)

    def deliver_run(self, flow: Flow, stream: Stream, data: memoryview | bytes, next_seq: int | None = None) -> bool:
        """The bytes of several in-order segments of a decided flow at once (the fast path's runs);
        ``next_seq``: where the stream continues after them.

        Analyzers frame PDUs by their own lengths and read only complete ones, so one parse of the
        whole gives what parses segment by segment give.  Only their resynchronisation after a
        malformed PDU is per segment, and an operational command's occurrence keeps the frame that
        carried it: if the parse fails or holds such a command, nothing is changed and False is
        returned — the segments then go through :meth:`process` one by one."""
        skip = stream.skip
        if skip >= len(data):
            stream.skip = skip - len(data)
            if next_seq is not None:
                stream.next_seq = next_seq
            return True
        if skip:
            data = data[skip:]
        buf = stream.buf + data if stream.buf else bytes(data)
        if len(buf) > MAX_BUFFER:
            return False
        to_server = flow.streams[0] is stream
        parse = flow.analyzer.parse_run or flow.analyzer.parse
        try:
            consumed, commands, identity = parse(buf, to_server)
            # An analyzer may stop before bad bytes and raise on them at its next call; segment by
            # segment, that call would come with the next segment and resynchronise there.
            rest = consumed
            while 0 < rest < len(buf):
                rest, more, facts = parse(buf[consumed:], to_server)
                consumed += rest
                commands += more
                merge_identity(identity, facts)
        except (Malformed, ValueError, IndexError, KeyError, UnicodeError):
            return False
        for command in commands:
            if command.__class__ is Operation:
                return False  # its occurrence needs its frame: the per-packet path reads it
        if consumed >= len(buf):
            stream.buf, stream.skip = b"", consumed - len(buf)
        else:
            stream.buf, stream.skip = buf[consumed:], 0
        if consumed:
            stream.errors = 0
        if next_seq is not None:
            stream.next_seq = next_seq
        if stream.buf or stream.held:
            self._settle(flow)
        if commands or identity:
            self._record(flow, to_server, commands, identity)
        return True

    def _settle(self, flow: Flow) -> None:
        """Count what the flow's streams hold now; past the budget, a stream that grew gives it up."""
        for stream in flow.streams:
            size = len(stream.buf)
            if stream.pending:
                size += sum(map(len, stream.pending.values()))
            grown = size - stream.held
            if grown:
                self.held += grown
                stream.held = size
                if grown > 0 and self.held > self.budget:
                    self.held -= size
                    stream.held = 0
                    stream.buf, stream.skip, stream.pending = b"", 0, {}  # resynchronise at the next segment
                    self.errors["reassembly"] = self.errors.get("reassembly", 0) + 1

    def _probe(self, flow: Flow) -> None:
        forward, backward = flow.streams[0].buf, flow.streams[1].buf
        for analyzer in list(flow.candidates):
            verdict = analyzer.probe(forward, True) if forward else None
            if verdict:
                self._decide(flow, analyzer)
                return
            if analyzer.any_tcp_port and not flow.handshake and backward:
                reverse = analyzer.probe(backward, True)
                if reverse:  # the responder by ports sends the requests: it is the initiator
                    self._flip(flow)
                    self._decide(flow, analyzer)
                    return
                if verdict is False and reverse is False:
                    flow.candidates.remove(analyzer)
            elif verdict is False:
                flow.candidates.remove(analyzer)
        if not flow.candidates or len(forward) > PROBE_LIMIT or len(backward) > PROBE_LIMIT:
            self._decide(flow, NOT_RECOGNISED)

    def _decide(self, flow: Flow, analyzer: Analyzer, first: bytes = b"") -> None:
        flow.analyzer, flow.candidates = analyzer, []
        if analyzer is NOT_RECOGNISED:
            for stream in flow.streams:
                stream.buf, stream.pending = b"", {}
            return
        # The protocol's own addresses, from the initiator's bytes that decided the flow: only this
        # (per-packet) path decides flows, so the fast path never has to read them.
        read = analyzer.addresses
        data = flow.streams[0].buf if flow.streams else first
        if read is not None and data:
            try:
                found = read(data)
            except (ValueError, IndexError):
                return
            if found:
                self.table.add_addresses(flow.client, flow.server, analyzer.name, found)

    def _parse(self, flow: Flow, to_server: bool, stream: Stream) -> None:
        buf = stream.buf
        analyzer = flow.analyzer
        try:
            consumed, commands, identity = analyzer.parse(buf, to_server)
        except Malformed:
            self._malformed(flow, stream)
            return
        except (ValueError, IndexError, KeyError, UnicodeError):  # an analyzer's own bug must not stop capture
            self._malformed(flow, stream)
            return
        if consumed >= len(buf):
            stream.buf, stream.skip = b"", consumed - len(buf)
        else:
            stream.buf = buf[consumed:]
            if len(stream.buf) > MAX_BUFFER:
                self._malformed(flow, stream)
                return
        if consumed:
            stream.errors = 0
        if commands or identity:
            self._record(flow, to_server, commands, identity)

    def _malformed(self, flow: Flow, stream: Stream) -> None:
        name = flow.analyzer.name
        self.errors[name] = self.errors.get(name, 0) + 1
        stream.buf, stream.skip = b"", 0  # resynchronise at the next segment
        stream.errors += 1
        # Counted per direction, so that what one direction does never depends on how its packets
        # interleave with the other's; the flow is given up when both directions are.
        if all(s.errors >= MAX_ERRORS for s in flow.streams):
            self._decide(flow, NOT_RECOGNISED)
        elif stream.errors >= MAX_ERRORS:
            stream.pending = {}

    def _record(self, flow: Flow, to_server: bool, commands: list, identity: dict) -> None:
        connection = self.table.connection(flow.client, flow.server)
        protocols = connection.protocols
        for pair in commands:
            name, command = pair
            names = protocols.get(name)
            if names is None:
                names = protocols[name] = set()
            names.add(command)
            if pair.__class__ is Operation:
                self._occurred(flow, pair)
        if identity:
            # The greater value wins, as in Device.merge: the result does not depend on the order
            # in which flows (or the fast path's runs) report.
            merge_identity(self.table.device(flow.client if to_server else flow.server).identity, identity)
            agent = identity.get("userAgent")
            if agent and (connection.user_agent is None or agent > connection.user_agent):
                connection.user_agent = agent

    def _occurred(self, flow: Flow, operation: Operation) -> None:
        """An operational command: its occurrence, with the frame that completed its PDU."""
        if self.frame is None:  # not the per-packet path (deliver_run refuses these): no frame to keep
            stamp, frames = self.now_ns, ()
        else:
            offset, length, stamp = self.frame[:3]
            frames = ((stamp, bytes(self.frames[offset : offset + length])),)
        self.table.add_operation(
            (stamp, flow.client, flow.server, *operation, operation.category, operation.detail, self.linktype, frames)
        )

    # -- the fast path's writes: what process() does to flows, for packets the fast path took ----------
    # Each takes a whole chunk's worth at once (one call per chunk, not per flow: ~65,000 calls on the
    # bench mix cost more than the loops themselves).

    def count(self, rows) -> None:
        """(flow, packets, bytes, first ns, last ns) per flow: its packets, as process() counts them."""
        now = self.now_ns
        for flow, packets, size, first_ns, last_ns in rows:
            if flow.packets:
                if first_ns < flow.first_ns:
                    flow.first_ns = first_ns
                if last_ns > flow.last_ns:
                    flow.last_ns = last_ns
            else:
                flow.first_ns, flow.last_ns = first_ns, last_ns
            flow.packets += packets
            flow.bytes += size
            if last_ns > now:
                now = last_ns
        self.now_ns = now

    def name(self, commands) -> None:
        """(flow, (protocol, command)) pairs, named from an analyzer's table: what _record does with them
        (no identity, never an Operation — batch() leaves operational PDUs to parse)."""
        connection = self.table.connection
        previous = protocols = None
        for flow, (protocol, command) in commands:
            if flow is not previous:
                previous, protocols = flow, connection(flow.client, flow.server).protocols
            names = protocols.get(protocol)
            if names is None:
                names = protocols[protocol] = set()
            names.add(command)

    @staticmethod
    def close(flows) -> None:
        """Flows that saw a FIN or RST, as _control marks them."""
        for flow in flows:
            flow.closed = True

    @staticmethod
    def took(rows) -> None:
        """(stream, next_seq): whole PDUs read up to next_seq (the fast path's single-PDU segments)."""
        for stream, next_seq in rows:
            stream.next_seq = next_seq
            stream.errors = 0

    def flowless(self, rows) -> None:
        """(client, server, ports, packets, bytes, first ns, last ns) per pair: datagrams that need no
        flow (UDP no analyzer wants), counted on the connection."""
        connection_of, now = self.table.connection, self.now_ns
        for client, server, ports, packets, size, first_ns, last_ns in rows:
            connection = connection_of(client, server)
            connection.packets += packets
            connection.bytes += size
            if first_ns < connection.discovered_ns:
                connection.discovered_ns = first_ns
            if last_ns > connection.last_seen_ns:
                connection.last_seen_ns = last_ns
            connection.ports.update(ports)
            if last_ns > now:
                now = last_ns
        self.now_ns = now

    # -- UDP --------------------------------------------------------------------------------------

    def _datagram(self, flow: Flow, to_server: bool, payload: bytes) -> None:
        if flow.analyzer is None:
            for analyzer in flow.candidates:
                if analyzer.probe(payload, to_server):
                    self._decide(flow, analyzer, payload if to_server else b"")
                    break
            else:
                self._decide(flow, NOT_RECOGNISED)
                return
        self._parse_piece(flow, to_server, payload)

    # -- folding into the connection table ---------------------------------------------------------

    def fold(self, evict: bool = True) -> None:
        """Move every flow's counters into its connection; forget idle and closed flows."""
        table, now = self.table, self.now_ns
        stale = []
        for flow, forward in self.entries.values():
            if not forward:
                continue
            if flow.packets:
                connection = table.connection(flow.client, flow.server)
                connection.ports.add(flow.server_port)
                if flow.first_ns < connection.discovered_ns:
                    connection.discovered_ns = flow.first_ns
                if flow.last_ns > connection.last_seen_ns:
                    connection.last_seen_ns = flow.last_ns
                connection.packets += flow.packets
                connection.bytes += flow.bytes
                flow.packets = flow.bytes = 0
            if evict:
                idle = now - flow.last_ns
                if (
                    idle > (TCP_IDLE_NS if flow.proto == IPPROTO_TCP else UDP_IDLE_NS)
                    or (flow.closed and idle > CLOSED_IDLE_NS)
                    or (idle > UNANSWERED_IDLE_NS and flow.streams and flow.streams[1].next_seq is None)
                ):
                    stale.append(flow)
        for flow in stale:
            self._forget(flow)

    def make_room(self) -> None:
        """The flow table is full: forget the least recently active quarter, their counters kept."""
        flows = [flow for flow, forward in self.entries.values() if forward]
        if len(flows) < self.max_flows:
            return
        oldest = heapq.nsmallest(len(flows) - self.max_flows * 3 // 4, flows, key=attrgetter("last_ns"))
        table = self.table
        for flow in oldest:
            if flow.packets:
                connection = table.connection(flow.client, flow.server)
                connection.ports.add(flow.server_port)
                connection.discovered_ns = min(connection.discovered_ns, flow.first_ns)
                connection.last_seen_ns = max(connection.last_seen_ns, flow.last_ns)
                connection.packets += flow.packets
                connection.bytes += flow.bytes
                flow.packets = flow.bytes = 0
            self._forget(flow)
        self.errors["flows"] = self.errors.get("flows", 0) + len(oldest)

    def _forget(self, flow: Flow) -> None:
        if flow.proto == IPPROTO_UDP and not self._candidates_of(flow):  # as _create counted it
            self.plain_udp -= 1
        for stream in flow.streams:
            self.held -= stream.held
        self.entries.pop((flow.client, flow.server, flow.client_port, flow.server_port, flow.proto), None)
        self.entries.pop((flow.server, flow.client, flow.server_port, flow.client_port, flow.proto), None)
