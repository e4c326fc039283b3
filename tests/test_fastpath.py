"""The vectorised fast path changes speed, never results: every capture gives the same table both ways."""

from __future__ import annotations

import pytest

from sensor.engine import Engine
from sensor.readers import CaptureReader

from .conftest import PCAPS, ROOT, real_captures


def bench_mix(path, **options) -> None:
    """bench/mix.py's synthetic OT mix, written to ``path``."""
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from mix import make_mix
    finally:
        sys.path.remove(str(ROOT / "bench"))
    make_mix(path, **options)


def table(path, vectorised: bool):
    engine = Engine(vectorised=vectorised)
    for batch in CaptureReader(path).batches():
        engine.process_batch(batch)
    delta = engine.take_delta()
    connections = {
        key: (
            sorted(c.ports),
            {p: sorted(v) for p, v in c.protocols.items()},
            c.discovered_ns,
            c.last_seen_ns,
            c.packets,
            c.bytes,
            c.user_agent,
        )
        for key, c in delta.connections.items()
    }
    devices = {
        key: (sorted(d.macs), d.first_seen_ns, d.last_seen_ns, sorted(d.roles), d.identity, d.addresses)
        for key, d in delta.devices.items()
    }
    return connections, devices, engine.errors, sorted(delta.operations)


BIG = [p for p in real_captures() if p.stat().st_size > 100_000] + [PCAPS / "plant.pcap.gz", PCAPS / "modbus.pcap"]


@pytest.mark.parametrize("capture", BIG, ids=lambda p: p.name)
def test_fast_path_gives_the_scalar_result(capture):
    scalar = table(capture, vectorised=False)
    assert scalar[0], f"{capture} yields no connections: the comparison would prove nothing"
    assert table(capture, vectorised=True) == scalar


def test_fast_path_gives_the_scalar_result_on_the_bench_mix(tmp_path):
    """The benchmark's mix (all four protocols, QinQ, ARP/LLDP, TLS bulk, chunk-spanning flows)."""
    path = tmp_path / "mix.pcap"
    bench_mix(path, packets=200_000, seed=7, connections=2_000, devices=400)
    scalar = table(path, vectorised=False)
    assert {"modbus", "s7comm", "ams", "http"} <= {p for c in scalar[0].values() for p in c[1]}
    assert table(path, vectorised=True) == scalar


def test_fast_path_takes_packets(monkeypatch):
    """On the plant capture most packets avoid the per-packet path (else the test above is moot)."""
    engine = Engine()
    taken = []
    split = engine.fast.split

    def counting(batch, done=None):
        leftover, deferred = split(batch, done=done)
        taken.append(len(batch.offsets) - len(leftover) - (0 if done is None else len(done)))
        return leftover, deferred

    monkeypatch.setattr(engine.fast, "split", counting)
    for batch in CaptureReader(PCAPS / "plant.pcap.gz").batches():
        engine.process_batch(batch)
    assert sum(taken) > engine.packets / 2


# --- random conversations: the fast path against the scalar path on crafted frame sequences ----------

import struct  # noqa: E402

import numpy as np  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sensor import batch as batch_module  # noqa: E402
from sensor import engine as engine_module  # noqa: E402
from sensor.decode import DecodeError, Decoder  # noqa: E402
from sensor.readers import FrameBatch  # noqa: E402

PAYLOADS = {
    "none": b"",
    "modbus request": bytes.fromhex("000100000006010300000002"),
    "modbus reply": bytes.fromhex("00010000000701030400010002"),
    "two modbus requests": bytes.fromhex("000200000006010300000002000300000006010400000001"),
    "modbus head half": bytes.fromhex("0004000000"),
    "modbus tail half": bytes.fromhex("06010600010005"),
    "modbus device id": bytes.fromhex("000500000012012b0e01010000020004") + b"Acme\x01\x02X1",
    "http get": b"GET /a HTTP/1.1\r\nHost: plc\r\nUser-Agent: hmi/2\r\n\r\n",
    "http get other agent": b"GET /b HTTP/1.1\r\nUser-Agent: hmi/10\r\n\r\n",
    "http reply head": b"HTTP/1.1 200 OK\r\nServer: web/1\r\nContent-Length: 12\r\n\r\n",
    "http body": b"hello world!",
    "http chunked head": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    "tls": bytes.fromhex("160301002a0100002603035a5b"),
    "garbage": b"\x00\xff\x13\x37 garbage\n",
    # S7comm over COTP (TPKT, DT with EOT): a Job the fast path names from its table, a user-data
    # request it parses on its own, a DT whose data is no S7 (that parse fails), a connection request
    "s7 read var": bytes.fromhex("0300001f02f080320100000001000e00000401120a10020001000084000000"),
    "s7 szl request": bytes.fromhex("0300002102f080320700000002000800080001120411440100ff09000400110000"),
    "s7 not s7": bytes.fromhex("0300000b02f080abcdef01"),
    "cotp cr": bytes.fromhex("0300001611e00000000100c0010ac1020100c2020102"),
    "two s7 read vars": bytes.fromhex("0300001f02f080320100000001000e00000401120a10020001000084000000") * 2,
    "s7 head half": bytes.fromhex("0300001f02f080320100000001"),
    # operational commands (PLC Stop Job, UMAS stop, ADS Write Control to RUN): never named from a table
    "s7 plc stop": bytes.fromhex("0300002102f08032010000000100100000" + "29000000000009") + b"P_PROGRAM",
    "modbus umas stop": bytes.fromhex("000a00000004005a0041"),
    # AMS/TCP prefix, AMS header (target 10.11.12.13.1.1:851, source 5.6.7.8.1.1:32905, command 5,
    # state flags 4 = request, 8 data bytes), then ADS state 5 (RUN), device state 0, no data
    "ads write control run": bytes.fromhex("000028000000" + "0a0b0c0d01015303" + "05060708010189800500040008000000")
    + bytes.fromhex("0000000007000000" + "0500000000000000"),
    "s7 tail half": bytes.fromhex("000e00000401120a10020001000084000000"),
}
FLAGS = {"syn": 0x02, "syn-ack": 0x12, "ack": 0x10, "data": 0x18, "fin": 0x11, "rst": 0x14}
SEQ = ("next", "next", "next", "retransmit", "gap")
SERVER_PORTS = (502, 80, 8080, 4000, 53, 48899, 102)  # flows 4 and 5 are UDP
UDP_FLOWS = (4, 5)

event = st.tuples(
    st.integers(0, 6),  # flow
    st.booleans(),  # sent by the client
    st.sampled_from(sorted(FLAGS) + ["burst"]),  # a burst: nine data segments of the payload
    st.sampled_from(sorted(PAYLOADS)),
    st.sampled_from(SEQ),
)


def _frames(events, vlan: bool) -> list[bytes]:
    seqs: dict = {}
    frames = []
    expanded = [
        (f, c, "data" if k == "burst" else k, p, m) for f, c, k, p, m in events for _ in range(9 if k == "burst" else 1)
    ]
    for flow, from_client, kind, payload_name, mode in expanded:
        client, server = bytes([10, 0, 0, 1 + flow]), bytes([10, 0, 1, 1 + flow % 2])
        client_port, server_port = 40000 + flow, SERVER_PORTS[flow]
        payload = b"" if kind in ("syn", "syn-ack") else PAYLOADS[payload_name]
        key = (flow, from_client)
        seq = seqs.setdefault(key, 1000 * (flow + 1) + (0 if from_client else 500))
        if mode == "retransmit":
            seq = (seq - len(payload)) & 0xFFFFFFFF
        elif mode == "gap":
            seq = seq + 7
        seqs[key] = (seq + len(payload) + (1 if kind in ("syn", "syn-ack") else 0)) & 0xFFFFFFFF
        src, dst = (client, server) if from_client else (server, client)
        sport, dport = (client_port, server_port) if from_client else (server_port, client_port)
        if flow in UDP_FLOWS:
            transport, proto = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0), 17
        else:
            transport, proto = struct.pack(">HHIIBBHHH", sport, dport, seq, 0, 0x50, FLAGS[kind], 65535, 0, 0), 6
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(transport) + len(payload), 0, 0, 64, proto, 0, src, dst)
        mac = bytes([2, 0, 0, 0, 0, src[3]])
        link = b"\x00\x00\x5e\x00\x00\x01" + mac + (b"\x81\x00\x00\x05" if vlan else b"") + b"\x08\x00"
        frames.append(link + ip + transport + payload)
    return frames


def _table_of(frames, vectorised: bool, jitter=(0,), batches: int = 1):
    engine = Engine(vectorised=vectorised)
    lengths = np.array([len(f) for f in frames], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    stamps = 1_700_000_000 * 10**9 + np.arange(len(frames), dtype=np.int64) * 1000
    stamps += np.resize(np.array(jitter, np.int64), len(frames))  # some frames stamped out of order
    data = b"".join(frames)
    for part in np.array_split(np.arange(len(frames)), batches):
        if len(part):
            chosen = (offsets[part], lengths[part], lengths[part].copy(), stamps[part])
            engine.process_batch(FrameBatch(1, data, *chosen))
    delta = engine.take_delta()
    connections = {
        k: (sorted(c.ports), {p: sorted(v) for p, v in c.protocols.items()}, c.discovered_ns, c.last_seen_ns)
        + (c.packets, c.bytes, c.user_agent)
        for k, c in delta.connections.items()
    }
    devices = {
        k: (sorted(d.macs), d.first_seen_ns, d.last_seen_ns, sorted(d.roles), d.identity, d.addresses)
        for k, d in delta.devices.items()
    }
    # operational commands: each occurrence with its frame, whichever path read it
    return connections, devices, engine.errors, sorted(delta.operations)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(event, min_size=1, max_size=60),
    st.sets(st.sampled_from([0, 1, 2, 3, 6])),  # the TCP flows
    st.booleans(),
    st.sampled_from([4, 16, 65536]),
    st.lists(st.integers(-3000, 0), min_size=1, max_size=5),
    st.integers(1, 3),
)
def test_random_conversations_give_the_scalar_result(events, handshakes, vlan, chunk, jitter, batches):
    """SYNs, SYN-ACKs, FIN/RST, retransmissions, gaps, split and doubled PDUs, identity, HTTP bodies,
    garbage and UDP, in any order over a few flows (some opened by a proper handshake), timestamps
    partly out of order, batches and chunks cut anywhere: the fast path's table equals the scalar one."""
    opening = [(f, True, "syn", "none", "next") for f in sorted(handshakes)]
    opening += [(f, False, "syn-ack", "none", "next") for f in sorted(handshakes)]
    frames = _frames(opening + events, vlan)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_module, "MIN_BATCH", 1)
        patch.setattr(engine_module, "CHUNK", chunk)
        fast = _table_of(frames, True, jitter, batches)
        assert fast == _table_of(frames, False, jitter, batches)


S7_PAYLOADS = ["s7 read var", "s7 szl request", "s7 not s7", "cotp cr", "two s7 read vars", "s7 head half"]
S7_PAYLOADS += ["s7 tail half", "modbus request", "none", "s7 plc stop"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.just(6),
            st.booleans(),
            st.sampled_from(["data", "burst", "fin"]),
            st.sampled_from(S7_PAYLOADS),
            st.sampled_from(SEQ),
        ),
        min_size=1,
        max_size=30,
    ),
    st.sampled_from([4, 16, 65536]),
)
def test_s7_conversations_give_the_scalar_result(events, chunk):
    """An S7comm flow opened by a handshake and a COTP connection request, then Jobs (named from a
    table), user data (each segment parsed on its own), DTs whose data is not S7 (that parse fails:
    the rest of the chunk goes packet by packet), PDUs doubled or split over segments (runs),
    retransmissions and gaps, chunks cut anywhere: the fast path's table equals the scalar one."""
    opening = [(6, True, "syn", "none", "next"), (6, False, "syn-ack", "none", "next")]
    opening += [(6, True, "data", "cotp cr", "next"), (6, False, "data", "cotp cr", "next")]
    frames = _frames(opening + events, False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_module, "MIN_BATCH", 1)
        patch.setattr(engine_module, "CHUNK", chunk)
        fast = _table_of(frames, True)
        assert fast == _table_of(frames, False)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(event, min_size=1, max_size=12),
    st.integers(0, 2),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 70), st.integers(0, 255)), max_size=12),
)
def test_fast_header_fields_are_the_decoders(events, tags, mutations):
    """Frames with bytes changed and cut short, packed back to back up to the end of the data: every
    frame the fast path reads has the addresses, ports, flags, sequence number and payload decode.py
    gives it, and every frame it counts as non-IP, decode.py counts as non-IP too."""
    frames = [bytearray(f) for f in _frames(events, tags > 0)]
    if tags == 2:  # QinQ: an 802.1ad service tag outside the 802.1Q one
        frames = [f[:12] + b"\x88\xa8\x00\x07" + f[12:] for f in frames]
    changed = set()
    for frame_no, position, value in mutations:
        frame = frames[frame_no % len(frames)]
        changed.add(frame_no % len(frames))
        if position < len(frame):
            frame[position] = value
        elif value < 64:
            del frame[value:]  # cut short
    data = b"".join(frames)
    lengths = np.array([len(f) for f in frames], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    h = batch_module.ipv4_headers(data, offsets, lengths)
    for i, frame in enumerate(frames):
        decoder = Decoder()
        try:
            packet = decoder.decode(1, memoryview(bytes(frame)))
        except DecodeError:
            packet = None
        assert not h.non_ip[i] or decoder.non_ip == 1  # the rest is left to decode.py
        assert h.good[i] or i in changed  # every frame as made (IPv4 without options, TCP/UDP) is read
        if h.good[i]:
            assert packet is not None
            start = int(h.start[i] - offsets[i])
            fields = (h.src[i], h.dst[i], h.proto[i], h.sport[i], h.dport[i], h.flags[i], h.seq[i])
            assert tuple(int(v) for v in fields) == (
                int.from_bytes(packet.src, "big"),
                int.from_bytes(packet.dst, "big"),
                packet.proto,
                packet.sport,
                packet.dport,
                packet.flags,
                packet.seq,
            )
            assert bytes(frame[start : start + int(h.length[i])]) == bytes(packet.payload)


def _groups(order: np.ndarray, low: np.ndarray, high: np.ndarray) -> list[list[int]]:
    """The positions of each (low, high) pair, in the order ``order`` lists them (pairs must be contiguous)."""
    groups: list[list[int]] = []
    seen = set()
    for position in order.tolist():
        pair = (int(low[position]), int(high[position]))
        if not groups or pair != (int(low[groups[-1][0]]), int(high[groups[-1][0]])):
            assert pair not in seen, f"pair {pair} is split over two groups"
            seen.add(pair)
            groups.append([])
        groups[-1].append(position)
    return groups


def _grouped(low: np.ndarray, high: np.ndarray) -> list[list[int]]:
    """batch._grouped's groups, its group starts checked against them."""
    order, first = batch_module._grouped(low, high)
    groups = _groups(order, low, high)
    assert np.flatnonzero(first).tolist() == np.cumsum([0] + [len(g) for g in groups])[:-1].tolist()
    return groups


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 7), max_size=300), st.integers(0, 2**32))
def test_flow_grouping_is_a_stable_grouping(pairs, seed):
    """_flows_of groups frames by flow with one hashed sort: every flow's positions together, in
    capture order, as the lexsort it replaces gives them."""
    rng = np.random.default_rng(seed)
    lows, highs = rng.integers(0, 2**48, 8, dtype=np.uint64), rng.integers(0, 2**56, 8, dtype=np.uint64)
    low, high = lows[pairs], highs[pairs]
    groups = _grouped(low, high)
    assert sorted(map(tuple, groups)) == sorted(map(tuple, _groups(np.lexsort((high, low)), low, high)))


def test_flow_grouping_holds_when_hashes_collide():
    """Two flows whose hashes are equal are still two groups (the lexsort is done instead)."""
    a, b = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F  # the multipliers of batch._grouped
    mask = 2**64 - 1
    low1, high1, low2 = 0x0A000001_01F6, 0x0A000002_C350_06, 0x0A000003_01F6
    high2 = ((low1 * a ^ high1 * b ^ low2 * a) * pow(b, -1, 2**64)) & mask  # same hash as the first pair
    assert (low1 * a ^ high1 * b) & mask == (low2 * a ^ high2 * b) & mask
    low = np.array([low1, low2, low1, low2, low2, low1], np.uint64)
    high = np.array([high1, high2, high1, high2, high2, high1], np.uint64)
    assert sorted(_grouped(low, high)) == [[0, 2, 5], [1, 3, 4]]


def test_a_full_flow_table_forgets_its_oldest_flows_and_keeps_their_counts(tmp_path):
    """With room for 300 flows among the bench mix's 2,000 connections, both paths keep the table within
    bounds, count what they forgot, and lose no packet or byte of any connection."""
    path = tmp_path / "mix.pcap"
    bench_mix(path, packets=100_000, seed=3, connections=2_000, devices=400)

    def counts(vectorised: bool, max_flows: int | None):
        engine = Engine(vectorised=vectorised)
        if max_flows:
            engine.flows.max_flows = max_flows
        most = 0
        for batch in CaptureReader(path, batch_size=4096).batches():
            engine.process_batch(batch)
            most = max(most, len(engine.flows))
        delta = engine.take_delta()
        pairs: dict = {}  # a flow forgotten and seen again may be oriented the other way: pairs unordered
        for key, c in delta.connections.items():
            packets, size = pairs.get(frozenset(key), (0, 0))
            pairs[frozenset(key)] = (packets + c.packets, size + c.bytes)
        return pairs, most, engine.errors.get("flows", 0)

    whole, most, forgotten = counts(True, None)
    assert forgotten == 0 and most > 1_000
    for vectorised in (True, False):
        pairs, most, forgotten = counts(vectorised, 300)
        # the fast path may not forget flows it holds between its split and finish: one batch's new ones
        assert most <= 300 + 4096 and forgotten > 1_000, (vectorised, most)
        assert pairs == whole
