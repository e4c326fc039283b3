"""Vectorised fast path: numpy over whole batches of Ethernet/IPv4 frames, Python only where state changes.

Owns which packets skip the per-packet path and how their effects are applied; never changes a result
(tests hold it to the scalar path's) and never reads a frame that decode.py would read differently.
"""

from __future__ import annotations

import numpy as np

from .flows import MAX_ERRORS, NOT_RECOGNISED, SEQ_MASK, UDP_CANDIDATES, FlowTable
from .protocols.registry import SERVER_PORTS

# _rows: the gather of fixed-width rows at byte offsets that readers reads record headers with
from .readers import _rows

TCP_CONTROL = 0x07  # FIN, SYN, RST: they change flow state
TCP_SYN = 0x02
MIN_BATCH = 256  # below this the scalar path is as fast
# Rounds of packets of new or undecided flows that run through the scalar path first, after the
# handshakes: most protocols decide on the first payload packet, S7comm after COTP's CR and CC.
EARLY_ROUNDS = (1, 1, 2, 4)
# split()'s per-group rows (state, next sequence number, naming analyzer, sent by the initiator) of
# flow directions not read there: unknown to the table, or only counted, or left to the scalar path
UNKNOWN, ONLY_COUNTS, OTHER = (0, 0, 0, False), (1, 0, 0, False), (2, 0, 0, False)


class Headers:
    """Per-frame header fields of the frames the fast path can read (``good``), as int64 arrays.
    Protocols other than TCP and UDP have ports 0 and no transport header, as decode.py gives them.
    ``non_ip``: Ethernet frames whose (tagged) ethertype is no IP nor a header that may carry IP."""

    __slots__ = ("good", "non_ip", "src", "dst", "sport", "dport", "proto", "flags", "seq", "start", "length")


TAGS = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad and the pre-standard QinQ type, as decode.py reads them
CARRIERS = TAGS + (0x0800, 0x86DD, 0x8847, 0x8848, 0x8864)  # IP, tags, MPLS, PPPoE session
IS_TAG, IS_CARRIER = np.zeros(1 << 16, bool), np.zeros(1 << 16, bool)  # by ethertype
IS_TAG[list(TAGS)] = IS_CARRIER[list(CARRIERS)] = True


# Bytes 12..59 of a frame hold the ethertype, up to two tags, the IPv4 header without options and the
# TCP header up to its flags wherever the tags put them.
LINK_FIELDS = np.dtype(
    {"names": ["ethertype", "inner", "inner2"], "formats": [">u2"] * 3, "offsets": [0, 4, 8], "itemsize": 48}
)
# The 36 bytes from the IPv4 header on (IHL 5, so TCP/UDP at +20), big-endian fields at their offsets.
IP_FIELDS = np.dtype(
    {
        "names": ["version", "total", "fragment", "proto", "src", "dst", "sport", "dport", "seq", "udp_length"]
        + ["offset", "flags"],
        "formats": ["u1", ">u2", ">u2", "u1", ">u4", ">u4", ">u2", ">u2", ">u4", ">u2", "u1", "u1"],
        "offsets": [0, 2, 6, 9, 12, 16, 20, 22, 24, 24, 32, 33],
        "itemsize": 36,
    }
)


def _header_window(data, base: np.ndarray) -> np.ndarray:
    """Bytes 12..59 from every base as an (n, 48) uint8 matrix, zeros past the end of the data (one
    gather, where a gather per field would read each frame from memory some thirty times)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    start = base + 12
    last = len(raw) - 48  # the last row that lies wholly inside the data
    window = _rows(raw, np.minimum(start, last), 48) if last >= 0 else np.zeros((len(base), 48), np.uint8)
    tail = np.flatnonzero(start > last)
    if len(tail):  # the data's last frames: read them from a zero-padded copy of the end
        begin = min(int(start[tail].min()), len(raw))
        padded = np.concatenate([raw[begin:], np.zeros(64, np.uint8)])
        window[tail] = _rows(padded, start[tail] - begin, 48)
    return window


def ipv4_headers(data, offsets: np.ndarray, caplens: np.ndarray) -> Headers:
    base = np.where(caplens >= 14, offsets, 0)
    window = _header_window(data, base)
    # Up to two tags (QinQ); a third is left to decode.py.
    link = window.view(LINK_FIELDS)[:, 0]
    ethertype = link["ethertype"].astype(np.int64)
    tag1 = IS_TAG[ethertype] & (caplens >= 18)
    ethertype = np.where(tag1, link["inner"], ethertype)
    tag2 = tag1 & IS_TAG[ethertype] & (caplens >= 22)
    ethertype = np.where(tag2, link["inner2"], ethertype)
    h = Headers()
    h.non_ip = (caplens >= 14) & ~IS_CARRIER[ethertype]
    tagged = 4 * tag1 + 4 * tag2  # bytes of tags before the IP header
    # Each frame's IP header: window row i from column 2 + tags (column k is frame byte 12 + k).
    flat = window.reshape(-1)
    fields = _rows(flat, np.arange(0, len(flat), 48) + 2 + tagged, 36).view(IP_FIELDS)[:, 0]
    l3 = base + 14 + tagged
    usable = caplens >= l3 - base + 20
    l3 = np.where(usable, l3, 0)
    total = fields["total"].astype(np.int64)
    proto = fields["proto"].astype(np.int64)
    tcp, udp = proto == 6, proto == 17
    other = ~tcp & ~udp  # ICMP and the rest: a flow with ports 0, as decode.py makes it
    header = np.where(tcp, (fields["offset"] >> 4) << 2, udp * np.uint8(8))  # uint8: at most 60
    end = np.minimum(l3 + total, base + caplens)
    start = l3 + 20 + header
    udp_length = fields["udp_length"].astype(np.int64)
    end = np.where(udp & (udp_length >= 8), np.minimum(end, l3 + 20 + udp_length), end)  # as decode.py bounds it
    h.good = (
        usable
        & (ethertype == 0x0800)
        & (fields["version"] == 0x45)  # version 4, no options
        & (fields["fragment"] & 0x3FFF == 0)  # MF flag and fragment offset
        & (total >= 20 + header)
        & (~tcp | (header >= 20))
        & (start <= end)
    )
    h.src, h.dst = fields["src"].astype(np.int64), fields["dst"].astype(np.int64)
    h.sport, h.dport = fields["sport"].astype(np.int64), fields["dport"].astype(np.int64)
    h.flags, h.seq = fields["flags"].astype(np.int64), fields["seq"].astype(np.int64)
    h.length = end - start
    h.sport[other] = h.dport[other] = h.length[other] = 0  # no ports nor payload beyond TCP/UDP, as decode.py
    h.flags[~tcp] = h.seq[~tcp] = 0
    h.proto, h.start = proto, start
    return h


def address_bytes(addresses: np.ndarray) -> list[bytes]:
    """IPv4 addresses as the 4-byte strings the flow table keys on."""
    return addresses.astype(">u4").view("V4").tolist()


def _unique_pairs(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (first, second) pairs of two non-negative integer arrays (second < 2**32), as two
    arrays, and each element's pair number (np.unique over rows is much slower)."""
    values, inverse = np.unique(first, return_inverse=True)
    keys, pair_of = np.unique(inverse.astype(np.int64) << 32 | second, return_inverse=True)
    return values[keys >> 32], keys & 0xFFFFFFFF, pair_of.ravel()


def _distinct(values: np.ndarray) -> list[int]:
    """The distinct values, ascending, as a list.  (Plain np.unique asks numpy.ma whether the array is
    masked, and importing numpy.ma costs a replay ~15 ms.)"""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]].tolist() if len(values) else []


def _grouped(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions grouped by their (low, high) pair, ascending within each group (what a stable sort
    by the pair gives, groups in another order), and where in that order each group starts.  One sort
    of uint64 values, each a hash of the pair with the position in its low bits: several times faster
    than np.lexsort over the two keys.  Two pairs with the same hash bits would share a group: then
    the lexsort is done after all."""
    n = len(low)
    bits = max(n - 1, 1).bit_length()
    mixed = low * np.uint64(0x9E3779B97F4A7C15) ^ high * np.uint64(0xC2B2AE3D27D4EB4F)
    keys = np.sort(mixed >> np.uint64(bits) << np.uint64(bits) | np.arange(n, dtype=np.uint64))
    order = (keys & np.uint64((1 << bits) - 1)).astype(np.int64)
    first = _pair_starts(low[order], high[order])
    hashes = keys >> np.uint64(bits)
    if (first[1:] & (hashes[1:] == hashes[:-1])).any():
        order = np.lexsort((high, low))
        first = _pair_starts(low[order], high[order])
    return order, first


def _pair_starts(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """True where the (low, high) pair differs from the one before (and at the first position)."""
    first = np.ones(len(low), bool)
    first[1:] = (low[1:] != low[:-1]) | (high[1:] != high[:-1])
    return first


def _prefix(ok: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """Within each group (contiguous, starting at group_start), True up to the first False."""
    bad = np.cumsum(~ok)
    return (bad - bad[group_start] + (~ok)[group_start]) == 0


class _Early:
    """Per batch: readable frames grouped by flow (``ordered``: frame indices, flow by flow, capture
    order within; ``group``: each position's flow; ``starts``/``sizes``: each flow's slice; ``keys``:
    each flow's first 5-tuple as sent), which positions ran already and the flows still to look at."""

    __slots__ = (
        "batch", "ordered", "backward", "group", "starts", "sizes", "keys", "pure_ack", "consumed", "candidates",
    )  # fmt: skip


def _group_address(address: np.ndarray) -> np.ndarray:
    """Multicast, limited broadcast and 0.0.0.0, as flows.is_group_address (IPv4)."""
    first_octet = address >> 24
    return ((first_octet >= 224) & (first_octet <= 239)) | (address == 0xFFFFFFFF) | (address == 0)


class FastPath:
    """Per batch, in this order: header fields of every Ethernet (up to two VLAN tags) / IPv4 frame as
    arrays; non-IP frames and UDP no analyzer wants become counts and connection facts without a flow;
    new TCP flows that start with SYN + SYN-ACK are opened at once; the first payload packets of
    undecided flows run through the scalar path (rounds); then, per flow direction, pure ACKs, FIN/RST
    and unrecognised flows become counter sums; from the stream's head, in-order segments that each hold
    one whole PDU (the analyzers' ``batch`` checks) are named from a table or parsed one by one; the
    rest of each in-order prefix is parsed as one run.
    Everything else — gaps, retransmissions, SYNs inside a flow, runs whose parse fails — is left to
    the scalar path, in capture order."""

    def __init__(self, flows: FlowTable, analyzers) -> None:
        self.flows = flows
        self._batch = self._headers = self._taken = self._early = None
        self._macs_table, self._macs = None, set()
        self.analyzer_udp_port = np.zeros(65536, bool)  # lookup tables indexed by port number
        self.analyzer_udp_port[list(UDP_CANDIDATES)] = True
        self.server_port = np.zeros(65536, bool)
        self.server_port[list(SERVER_PORTS)] = True
        self.analyzers = [a for a in analyzers if a.batch is not None]
        self.analyzer_index = {id(a): i + 1 for i, a in enumerate(self.analyzers)}
        self._names: dict[int, tuple[str, str] | None] = {}  # analyzer index << 16 | code -> command

    def headers(self, batch) -> Headers:
        if self._batch is not batch:
            self._batch, self._headers = batch, ipv4_headers(batch.data, batch.offsets, batch.caplens)
            self._taken = np.zeros(len(batch.offsets), bool)  # frames fully handled by stateless()
        return self._headers

    def non_ip(self, batch) -> int:
        """Frames without IP (ARP, LLDP, STP ...): counted, as decode.py counts them, and taken."""
        frames = self.headers(batch).non_ip
        self._taken |= frames
        return int(np.count_nonzero(frames))

    def stateless(self, batch) -> None:
        """UDP that no analyzer wants and whose flow the table does not hold (DNS, syslog, NTP ...):
        straight into the connection table, no flow.  The initiator is the port rule's
        (flows.initiator_is_source, vectorised; equal ports are left to the flow table), which is
        what the flow table would decide for a flow without a handshake."""
        h = self.headers(batch)
        src, dst, sport, dport = h.src, h.dst, h.sport, h.dport
        group = _group_address(src) | _group_address(dst)
        wanted = h.good & (h.proto == 17) & (sport != dport) & ~group
        wanted &= ~self.analyzer_udp_port[sport & 0xFFFF] & ~self.analyzer_udp_port[dport & 0xFFFF]
        frames = np.flatnonzero(wanted)
        if len(frames) == 0:
            return
        if self.flows.plain_udp:  # the flow table holds such flows (made by the per-packet path)
            entries = self.flows.entries
            addresses = src[frames].astype(np.uint64) << np.uint64(32) | dst[frames].astype(np.uint64)
            ports = sport[frames] << 16 | dport[frames]
            addresses, ports, group_of = _unique_pairs(addresses, ports)
            keys = zip(
                address_bytes(addresses >> np.uint64(32)),
                address_bytes(addresses & np.uint64(0xFFFFFFFF)),
                (ports >> 16).tolist(),
                (ports & 0xFFFF).tolist(),
            )
            known = np.array([(*key, 17) in entries for key in keys], bool)
            frames = frames[~known[group_of]]
            if len(frames) == 0:
                return
        self._taken[frames] = True
        h.good[frames] = False  # nothing else looks at these frames again
        s_port, d_port = sport[frames], dport[frames]
        source_known, destination_known = self.server_port[s_port], self.server_port[d_port]
        from_initiator = np.where(source_known != destination_known, destination_known, s_port >= d_port)
        client = np.where(from_initiator, src[frames], dst[frames])
        server = np.where(from_initiator, dst[frames], src[frames])
        server_port = np.where(from_initiator, d_port, s_port)
        stamps, sizes = batch.ts_ns[frames], batch.wirelens[frames]
        clients, servers, pair_of = _unique_pairs(client, server)
        count = len(clients)
        packets = np.bincount(pair_of, minlength=count)
        size = np.bincount(pair_of, weights=sizes, minlength=count)
        order = np.argsort(pair_of, kind="stable")
        cuts = np.flatnonzero(np.r_[True, pair_of[order][1:] != pair_of[order][:-1]])
        low = np.minimum.reduceat(stamps[order], cuts)
        high = np.maximum.reduceat(stamps[order], cuts)
        ports: list[list[int]] = [[] for _ in range(len(clients))]
        for key in _distinct(pair_of * 65536 + server_port):
            ports[key >> 16].append(key & 0xFFFF)
        self.flows.flowless(
            zip(
                address_bytes(clients), address_bytes(servers), ports, packets.tolist(),
                size.astype(np.int64).tolist(), low.tolist(), high.tolist(),
            )
        )  # fmt: skip
        table = self.flows.table
        # each sender's MAC, as the flow table records the first MAC of each direction
        raw = np.frombuffer(batch.data, dtype=np.uint8)
        words = _rows(raw, batch.offsets[frames] + 4, 8).view(">u8")[:, 0]  # frames are >= 42 bytes
        macs = (words & 0xFFFFFFFFFFFF).astype(np.int64)  # bytes 6..11
        senders = np.stack([src[frames], macs], axis=1)
        order = np.lexsort((senders[:, 1], senders[:, 0]))
        senders = senders[order]
        first = np.r_[True, (senders[1:] != senders[:-1]).any(axis=1)]
        senders = senders[first]
        recorded = self._recorded_macs(table)
        for address, mac in zip(address_bytes(senders[:, 0]), senders[:, 1].tolist()):
            if (address, mac) not in recorded:  # the same DNS clients and servers, chunk after chunk
                recorded.add((address, mac))
                table.add_mac(address, mac.to_bytes(6, "big"))

    def _recorded_macs(self, table) -> set:
        """(address, MAC) pairs stateless() gave ``table`` already (a new table, after a delta was
        taken, starts empty)."""
        if self._macs_table is not table:
            self._macs_table, self._macs = table, set()
        return self._macs

    def _flows_of(self, batch) -> _Early:
        """The batch's readable frames grouped by flow (both directions), for handshakes and early."""
        if self._early is not None and self._early.batch is batch:
            return self._early
        h = self.headers(batch)
        frames = np.flatnonzero(h.good)
        one = (h.src[frames].astype(np.uint64) << np.uint64(16)) | h.sport[frames].astype(np.uint64)
        other = (h.dst[frames].astype(np.uint64) << np.uint64(16)) | h.dport[frames].astype(np.uint64)
        low, high = np.minimum(one, other), (np.maximum(one, other) << np.uint64(8)) | h.proto[frames].astype(np.uint64)
        order, first = _grouped(low, high)
        e = self._early = _Early()
        e.batch, e.ordered = batch, frames[order]
        e.backward = (one > other)[order]  # sent by the flow's higher endpoint (address, port)
        e.starts = np.flatnonzero(first)
        e.group = np.cumsum(first) - 1
        e.sizes = np.diff(np.r_[e.starts, len(order)])
        at = e.ordered[e.starts]
        e.keys = list(
            zip(
                address_bytes(h.src[at]),
                address_bytes(h.dst[at]),
                h.sport[at].tolist(),
                h.dport[at].tolist(),
                h.proto[at].tolist(),
            )
        )
        flags, length = h.flags[e.ordered], h.length[e.ordered]
        e.pure_ack = (h.proto[e.ordered] == 6) & ((flags & TCP_CONTROL) == 0) & (length == 0)
        e.consumed = np.zeros(len(order), bool)
        e.candidates = range(len(e.keys))
        return e

    def handshakes(self, batch) -> np.ndarray:
        """New TCP flows whose first two packets are a SYN and its SYN-ACK, neither with payload:
        opened here, as the per-packet path would open them.  Returns the frames taken."""
        h = self.headers(batch)
        e = self._flows_of(batch)
        starts = e.starts[e.sizes >= 2]
        syn, reply = e.ordered[starts], e.ordered[starts + 1]
        src, dst = h.src[syn], h.dst[syn]
        chosen = (
            (h.proto[syn] == 6)
            & ((h.flags[syn] & 0x17) == TCP_SYN)  # SYN alone (no ACK, FIN, RST)
            & ((h.flags[reply] & 0x17) == TCP_SYN | 0x10)  # SYN-ACK
            & (h.length[syn] == 0)
            & (h.length[reply] == 0)
            & (h.src[reply] == dst)
            & (h.sport[reply] == h.dport[syn])
            & ~_group_address(src)
            & ~_group_address(dst)
        )
        if not chosen.any():
            return np.zeros(0, np.int64)
        starts, syn, reply = starts[chosen], syn[chosen], reply[chosen]
        raw = np.frombuffer(batch.data, dtype=np.uint8)
        macs = _rows(raw, batch.offsets[np.r_[syn, reply]] + 6, 6).view("V6").ravel().tolist()  # sources
        entries, flows = self.flows.entries, self.flows
        taken = []
        rows = zip(
            e.group[starts].tolist(),
            h.sport[syn].tolist(),
            h.dport[syn].tolist(),
            h.seq[syn].tolist(),
            h.seq[reply].tolist(),
            batch.ts_ns[syn].tolist(),
            batch.ts_ns[reply].tolist(),
            (batch.wirelens[syn] + batch.wirelens[reply]).tolist(),
            macs[: len(syn)],
            macs[len(syn) :],
        )
        for position, (g, sport, dport, seq, ack_seq, first, last, size, mac, reply_mac) in enumerate(rows):
            key = e.keys[g]
            if key in entries:
                continue
            flows.open_handshake(
                key[0], key[1], sport, dport, (seq, ack_seq), (mac, reply_mac), min(first, last), max(first, last), size
            )
            taken.append(position)
        taken = np.array(taken, np.int64)
        e.consumed[starts[taken]] = True
        e.consumed[starts[taken] + 1] = True
        return np.sort(np.r_[syn[taken], reply[taken]])

    def early(self, batch, limit: int) -> np.ndarray:
        """The next ``limit`` packets, in capture order, of each flow the table does not know yet or
        whose protocol is still undecided; each call (a round) continues where the last one stopped.
        Pure ACKs of a flow whose both MACs are recorded only count: they are left to split().

        Flows are independent of each other, so running these through the scalar path first (it
        creates the flow, sees the handshake, decides the protocol) lets the rest of the flow's
        packets in the same chunk take the fast path without changing any result."""
        e = self._flows_of(batch)
        entries = self.flows.entries
        wanted, quiet = [], []  # flows to take packets of; of those, the ones whose pure ACKs wait
        for g in e.candidates:
            entry = entries.get(e.keys[g])
            if entry is None:
                wanted.append(g)
            elif entry[0].analyzer is None:
                wanted.append(g)
                if entry[0].macs == 3:
                    quiet.append(g)
        want = np.zeros(len(e.keys), bool)
        want[wanted] = True
        wait = np.zeros(len(e.keys), bool)
        wait[quiet] = True
        eligible = ~e.consumed & want[e.group] & ~(e.pure_ack & wait[e.group])
        before = np.cumsum(eligible) - eligible  # eligible packets before each position
        pick = eligible & (before - before[e.starts][e.group] < limit)
        e.consumed |= pick
        e.candidates = wanted
        return np.sort(e.ordered[pick])

    def _directions(self, batch, good: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The positions in ``frames`` (the batch's frames where ``good``) grouped by flow direction,
        capture order within each, and where each group starts: the flows of :meth:`_flows_of`, each
        cut in two (packets from its lower endpoint first) without sorting again."""
        e = self._flows_of(batch)
        keep = good[e.ordered]
        ordered, flow, backward = e.ordered[keep], e.group[keep], e.backward[keep]
        n = len(ordered)
        flow_start = np.ones(n, bool)
        flow_start[1:] = flow[1:] != flow[:-1]
        first = np.flatnonzero(flow_start)  # each flow's first position
        flow_of = np.cumsum(flow_start) - 1
        forward = ~backward
        before = np.cumsum(forward) - forward  # forward packets before each position
        forward_rank = before - before[first][flow_of]
        forward_count = np.add.reduceat(forward, first) if n else np.zeros(0, np.int64)
        backward_rank = np.arange(n) - first[flow_of] - forward_rank
        target = first[flow_of] + np.where(forward, forward_rank, forward_count[flow_of] + backward_rank)
        position = np.empty(len(good), np.int64)
        position[frames] = np.arange(len(frames))
        by_group = np.empty(n, np.int64)
        by_group[target] = position[ordered]
        starts = np.zeros(n, bool)
        starts[first] = True
        middle = first + forward_count  # where a flow's backward packets start, if it has both
        starts[middle[(forward_count > 0) & (middle < np.r_[first[1:], n])]] = True
        return by_group, starts

    def split(self, batch, done: np.ndarray | None = None) -> tuple[np.ndarray, list]:
        """Handle what the fast path can; returns the frame indices left for the scalar path (in
        capture order) and a deferred update to apply after them.  ``done``: frames already run."""
        h = self.headers(batch)
        good = h.good
        if done is not None and len(done):
            good = good.copy()
            good[done] = False
        frames = np.flatnonzero(good)
        if len(frames) == 0:
            leftover = ~self._taken
            if done is not None:
                leftover[done] = False
            return np.flatnonzero(leftover), []
        src, dst = h.src[frames], h.dst[frames]
        sport, dport, proto = h.sport[frames], h.dport[frames], h.proto[frames]
        # Group packets by 5-tuple as sent: each flow's packets (grouped already) split by direction.
        by_group, starts = self._directions(batch, good, frames)
        group = np.empty(len(by_group), np.int64)
        group[by_group] = np.cumsum(starts) - 1
        at = by_group[starts]  # each group's first packet
        keys = zip(
            address_bytes(src[at]), address_bytes(dst[at]), sport[at].tolist(), dport[at].tolist(), proto[at].tolist()
        )

        # One dictionary lookup per flow direction, not per packet; results in lists, then arrays.
        entries = self.flows.entries
        analyzer_index = self.analyzer_index
        # per group: state (0 unknown or this direction's MAC not recorded yet, 1 only counts, 2 other,
        # 3 runs), next sequence number, analyzer index for single-PDU naming (empty buffer, nothing to
        # skip; else 0), sent by the initiator
        rows: list = []
        add = rows.append
        streams: list = []
        owners: list = []
        flows: list = []  # the flows behind the groups, each once; flow_index: each group's
        flow_index: list = []
        previous = None  # a flow's two directions are neighbouring groups (see _directions)
        for key in keys:  # the 5-tuple as sent
            entry = entries.get(key)
            if entry is None:
                flow_index.append(-1)
                owners.append(None)
                streams.append(None)
                add(UNKNOWN)
                continue
            flow, to_server = entry
            if flow is not previous:
                flows.append(flow)
                previous = flow
            flow_index.append(len(flows) - 1)
            if not flow.macs & (1 if to_server else 2):  # this direction's MAC not yet recorded
                owners.append(None)
                streams.append(None)
                add(UNKNOWN)
                continue
            owners.append(flow)
            analyzer = flow.analyzer
            if analyzer is NOT_RECOGNISED or analyzer is None or not flow.streams:
                streams.append(None)
                add(ONLY_COUNTS if analyzer is NOT_RECOGNISED else OTHER)
                continue
            stream = flow.streams[0 if to_server else 1]
            streams.append(stream)
            if stream.errors >= MAX_ERRORS:  # this direction gave up parsing: it only counts
                add((1, 0, 0, to_server))
            elif stream.next_seq is None or stream.pending:
                add((2, 0, 0, to_server))
            else:
                kind = analyzer_index.get(id(analyzer), 0) if not stream.buf and not stream.skip else 0
                add((3, stream.next_seq, kind, to_server))
        state_of, next_seq, kind, to_server_of = (np.fromiter(column, np.int64, len(rows)) for column in zip(*rows))
        to_server_of = to_server_of.astype(bool)
        known = state_of > 0
        unrecognised = state_of == 1
        runs = state_of == 3

        flags, seq = h.flags[frames], h.seq[frames]
        length, start = h.length[frames], h.start[frames]
        control = (flags & TCP_CONTROL) != 0
        # FIN and RST only mark a flow closed; a SYN (re)starts it: where a flow has a SYN in this
        # chunk, all its SYN/FIN/RST go through the per-packet path in capture order.
        flow_of_group = np.array(flow_index, np.int64)
        syn_flow = np.zeros(len(flows) + 1, bool)  # the last slot takes the groups of unknown flows
        syn_flow[flow_of_group[group[(flags & TCP_SYN) != 0]]] = True
        barrier = control & (((flags & TCP_SYN) != 0) | syn_flow[flow_of_group[group]])
        payload = length > 0
        bulk = known[group] & ~barrier & (~payload | unrecognised[group])

        # Segments of recognised flows that continue their direction's data in order, up to the first
        # that does not (a gap, a retransmission, a SYN): single-PDU segments at the head of
        # that prefix are named from a table; the rest of it is parsed as one run per direction.
        fast = np.zeros(len(frames), bool)
        commands: list = []
        # A SYN inside a flow may swap its initiator: commands before and after it belong to different
        # connections, so such a flow's segments all go through the per-packet path in capture order.
        steady = ~syn_flow[flow_of_group[group]]
        positions = by_group[(payload & runs[group] & steady)[by_group]]  # grouped, capture order within
        if len(positions):
            g = group[positions]
            lengths = length[positions]
            first = np.ones(len(g), bool)
            first[1:] = g[1:] != g[:-1]
            group_start = np.maximum.accumulate(np.where(first, np.arange(len(g)), 0))
            before = np.cumsum(lengths) - lengths
            expected = (next_seq[g] + before - before[group_start]) & SEQ_MASK
            in_order = _prefix((expected == seq[positions]) & ~barrier[positions], group_start)
            whole = np.zeros(len(positions), bool)
            named = np.zeros(len(positions), bool)
            codes = np.zeros(len(positions), np.int64)
            g_kind = kind[g]
            for index, analyzer in enumerate(self.analyzers, start=1):
                mine = np.flatnonzero(g_kind == index)
                if len(mine):
                    whole[mine], named[mine], codes[mine] = analyzer.batch(
                        batch.data, start[positions[mine]], lengths[mine], to_server_of[g[mine]]
                    )
            # From the head of each stream, segments holding one whole PDU each: every one starts where
            # a PDU starts, so each is read on its own, from a table where the analyzer can name it.
            whole = in_order & _prefix(whole, group_start)
            limit = self._singles(batch, start[positions], lengths, g, whole & ~named, owners, streams)
            before_limit = np.arange(len(positions)) < limit[g]
            taken = whole & before_limit
            named &= taken
            run = in_order & ~whole & before_limit
            ends = (seq[positions] + lengths) & SEQ_MASK
            # Each stream continues after its fast prefix: single PDUs first, then the run.
            last_taken = taken & ~np.r_[taken[1:] & (g[1:] == g[:-1]), False]
            self.flows.took([(streams[j], end) for j, end in zip(g[last_taken].tolist(), ends[last_taken].tolist())])
            fast[positions[taken]] = True
            if named.any():
                # one (flow, command) per flow, both directions together: flow index, analyzer, code
                flow_of = flow_of_group[g[named]]
                names = self._names
                for key in _distinct(flow_of << 24 | g_kind[named] << 16 | codes[named]):
                    code = key & 0xFFFFFF
                    if code not in names:
                        names[code] = self.analyzers[(code >> 16) - 1].command(code & 0xFFFF)
                    name = names[code]
                    if name is not None:
                        commands.append((flows[key >> 24], name))
            if run.any():
                self._runs(
                    batch, start[positions[run]], lengths[run], ends[run], g[run], owners, streams, fast, positions[run]
                )

        handled = bulk | fast
        self.flows.close([owners[j] for j in _distinct(group[handled & control])])
        leftover = ~self._taken
        leftover[frames[handled]] = False
        if done is not None:
            leftover[done] = False
        update = ()
        if handled.any():
            sel = by_group[handled[by_group]]
            sel_group = group[sel]
            cuts = np.flatnonzero(np.r_[True, sel_group[1:] != sel_group[:-1]])
            stamps = batch.ts_ns[frames[sel]]
            sizes = batch.wirelens[frames[sel]]
            update = zip(
                [owners[j] for j in sel_group[cuts].tolist()],
                np.diff(np.r_[cuts, len(sel)]).tolist(),
                np.add.reduceat(sizes, cuts).tolist(),
                np.minimum.reduceat(stamps, cuts).tolist(),
                np.maximum.reduceat(stamps, cuts).tolist(),
            )
        return np.flatnonzero(leftover), (update, commands)

    def _singles(self, batch, starts, lengths, groups, single, owners, streams) -> np.ndarray:
        """Parse the whole-PDU segments where ``single`` that no table names, one by one in capture
        order within each group.  Returns per group the index (into these arrays) where its fast part
        ends: at a segment whose parse failed (nothing changed; the per-packet path resynchronises on
        it), after one that left bytes over, else len(starts)."""
        limit = np.full(len(streams), len(starts), np.int64)
        single = np.flatnonzero(single)
        data = memoryview(batch.data)
        deliver = self.flows.deliver_run
        rows = zip(single.tolist(), groups[single].tolist(), starts[single].tolist(), lengths[single].tolist())
        for i, j, begin, size in rows:
            if limit[j] < len(starts):
                continue  # this group stopped at an earlier segment
            stream = streams[j]
            ok = deliver(owners[j], stream, data[begin : begin + size])
            if not ok or stream.buf or stream.skip:
                limit[j] = i + 1 if ok else i
        return limit

    def _runs(self, batch, starts, lengths, ends, groups, owners, streams, fast, positions) -> None:
        """Deliver each direction's run of in-order segments as one piece; a run whose parse fails is
        left to the per-packet path (which resynchronises per segment) with nothing changed."""
        data = memoryview(batch.data)
        cuts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]]).tolist() + [len(groups)]
        starts, lengths, ends, groups = starts.tolist(), lengths.tolist(), ends.tolist(), groups.tolist()
        deliver = self.flows.deliver_run
        for low, high in zip(cuts[:-1], cuts[1:]):
            j = groups[low]
            if high - low == 1:
                piece = data[starts[low] : starts[low] + lengths[low]]
            else:
                piece = b"".join([data[s : s + n] for s, n in zip(starts[low:high], lengths[low:high])])
            if deliver(owners[j], streams[j], piece, ends[high - 1]):
                fast[positions[low:high]] = True

    def finish(self, deferred) -> None:
        """Apply the counters and commands of the fast packets (after the scalar path ran)."""
        if not deferred:
            return
        update, commands = deferred
        self.flows.count(update)
        self.flows.name(commands)  # flow by flow (split() lists them by flow index)
