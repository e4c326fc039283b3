"""Deterministic synthetic OT traffic mix for the ingest benchmark.

``make_mix(path, packets=1_000_000, seed=1)`` writes a classic pcap (little-endian,
microsecond timestamps, LINKTYPE_ETHERNET, snaplen 65535) of exactly ``packets``
frames, byte-identical for the same arguments (and the same ``MIX_VERSION``).
Nothing here is ever sent on a network; every address is in 10.0.0.0/8.

Composition (share of *frames*, exact to within rounding; TCP shares include each
connection's handshake, FIN exchange and pure ACKs):

=========  =====  ==============================================================
kind       share  what
=========  =====  ==============================================================
modbus      25 %  Modbus/TCP, server port 502: per connection a poll program of
                  3-8 request/response pairs drawn from Read Holding Registers
                  (most), Read Input Registers, Read Coils, Read Discrete Inputs,
                  Write Single Register, Write Single Coil, Write Multiple
                  Registers/Coils, Read Write Register, Diagnostics, Read Device
                  Identification (FC 43/14) and exception replies; transaction
                  ids increase per request and are echoed by the response
s7comm      15 %  S7comm on TCP 102 over TPKT/COTP: per connection one COTP CR/CC
                  and one Setup communication job/ack-data, a Read SZL (0x0011,
                  module identification) user-data exchange on ~1/3 of the
                  connections, then Read Var / Write Var jobs and their ack-data
                  (PDU references increase and are echoed)
ams         10 %  ADS/AMS over TCP 48898: Read, Write, Read State, Read Write
                  and Read Device Info requests and responses (invoke ids echoed)
http        10 %  HTTP/1.1 on 80 (3/4 of the connections) and 8080: keep-alive
                  GETs (and ~10 % POSTs) with User-Agent; 200 responses with
                  headers and bodies up to ~9 kB (multi-segment), 304s and 404s
tls         25 %  TLS 1.3 on 443: ClientHello (SNI) / ServerHello + CCS +
                  encrypted flight, then application-data records, the server
                  side in bursts of full 1460-byte segments (1514-byte frames
                  untagged, records spanning up to 12 segments)
dns         10 %  DNS over UDP 53: A queries answered with an A record, AAAA
                  queries answered with no record (UDP checksum 0)
icmp         3 %  ICMP echo request / reply ("other IP")
arp        1.5 %  ARP who-has (broadcast) / is-at                 } non-IP
lldp       0.5 %  LLDP from a few switches                         } 2 %
=========  =====  ==============================================================

Around 20 % of the frames carry an 802.1Q tag (chosen per TCP connection, or
per frame for the stateless kinds); ~15 % of those are QinQ (outer 0x88a8 S-tag
then 0x8100 C-tag). Frames shorter than 60 bytes are zero-padded to 60 as they
are on a SPAN port (the IP total length stays exact).

Topology: ``devices`` hosts (default 2,000; ~0.2 % DNS servers, 8 % Modbus
PLCs, 5 % S7 PLCs, 4 % Beckhoff ADS controllers, 3 % web servers, 2 % TLS
servers, the rest clients) with role-typical MAC OUIs, and ``connections`` TCP
connections (default 10,000, split between the TCP kinds in proportion to their
frame share; at most one per 40 TCP frames) each with a unique 4-tuple, a full
SYN / SYN-ACK / ACK handshake, consistent per-direction sequence and
acknowledgement numbers and IP ids, correct IPv4 and TCP checksums and a
FIN / FIN / ACK close (FIN / ACK / FIN / ACK where that makes the frame count
exact). ``concurrency`` connections (default min(connections, 1000)) are open
at any one time, after a ramp-up over the first ~10 % of the TCP frames so
that the file does not start with a wall of handshakes. They are interleaved
at random, a picked connection sending a run of 1-4 frames (request and
response travel close together); a finished one is replaced by the next.
DNS, ICMP and ARP run between fixed sets of device pairs (connections/5,
connections/20 and connections/10 pairs). Doubling ``packets`` with the same
``connections`` therefore doubles every connection's length and keeps the TCP
flows, their concurrency and the set of talking device pairs the same: that is
what the ingest benchmark's memory-boundedness check uses.

Timestamps start at 2024-01-01T00:00:00Z and increase by 12-28 us (20 us on
average) per frame.

The generator never builds per-packet objects: a few hundred payload
templates are built once, and each frame is a prebuilt Ethernet(/VLAN) prefix
plus one ``struct.pack`` of the IPv4+TCP/UDP header plus the payload.

Command line: ``python bench/mix.py OUT.pcap [--packets N] [--seed S]
[--connections C] [--devices D]`` prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import sys
import time

MIX_VERSION = 3

# (kind, share of frames). TCP kinds first.
SHARES = (
    ("modbus", 0.25),
    ("s7comm", 0.15),
    ("ams", 0.10),
    ("http", 0.10),
    ("tls", 0.25),
    ("dns", 0.10),
    ("icmp", 0.03),
    ("arp", 0.015),
    ("lldp", 0.005),
)
TCP_KINDS = ("modbus", "s7comm", "ams", "http", "tls")
VLAN_SHARE = 0.20
QINQ_SHARE_OF_TAGGED = 0.15
MIN_FLOW_FRAMES = 16  # smallest TCP connection (handshake + FIN = 6)
FRAMES_PER_FLOW_CAP = 40  # connections <= TCP frames / 40
START_US = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z
MSS = 1460

_M32 = 0xFFFFFFFF
_IPTCP = struct.Struct("!BBHHHBBH4s4sHHIIBBHHH")
_iptcp_pack = _IPTCP.pack
_IPUDP = struct.Struct("!BBHHHBBH4s4sHHHH")
_IPICMP = struct.Struct("!BBHHHBBH4s4sBBHHH")
_REC = struct.Struct("<IIII")
_PCAP_HDR = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
_PAD = bytes(60)

# TCP flags
_SYN, _ACK, _PSH, _FIN = 0x02, 0x10, 0x08, 0x01


def _ps(b: bytes) -> int:
    """Ones'-complement 16-bit sum of b (as if at an even offset), mod 0xffff."""
    n = int.from_bytes(b, "big")
    if len(b) & 1:
        n <<= 8
    return n % 0xFFFF


def _csum(total: int) -> int:
    """Internet checksum from a (non-folded) sum of 16-bit words of nonzero data."""
    s = total % 0xFFFF
    return 0xFFFF - s if s else 0


def _ipw(ip: int) -> int:
    return (ip >> 16) + (ip & 0xFFFF)


def _ip_str(ip: int) -> str:
    return "%d.%d.%d.%d" % (ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255)


# --------------------------------------------------------------------------
# L2 / L3 framing
# --------------------------------------------------------------------------


def _tags(rng: random.Random, vid: int) -> bytes:
    """802.1Q / QinQ tag bytes (without the final ethertype) or b''."""
    r = rng.random()
    if r >= VLAN_SHARE:
        return b""
    pcp = 0 if rng.random() < 0.7 else 5
    if r < VLAN_SHARE * QINQ_SHARE_OF_TAGGED:
        return struct.pack("!HHHH", 0x88A8, 100 + vid % 8, 0x8100, (pcp << 13) | vid)
    return struct.pack("!HH", 0x8100, (pcp << 13) | vid)


def _dir(prefix: bytes, src_ip: int, dst_ip: int, sport: int, dport: int, ttl: int, win: int) -> tuple:
    """Everything constant about one direction of a TCP connection (a tuple, for speed)."""
    w = _ipw(src_ip) + _ipw(dst_ip)
    ipbase = 0x4500 + 0x4000 + ((ttl << 8) | 6) + w + 40  # + payload length + ip id
    tcpbase = w + 6 + sport + dport + 0x5000 + win + 20  # + payload length + seq/ack/flags/payload
    return (prefix, src_ip.to_bytes(4, "big"), dst_ip.to_bytes(4, "big"), sport, dport, ttl, win, ipbase, tcpbase)


def _tcp_frame(d: tuple, flags: int, seq: int, ack: int, payload: bytes, psum: int, ipid: int) -> bytes:
    prefix, src, dst, sport, dport, ttl, win, ipbase, tcpbase = d
    plen = len(payload)
    s = (ipbase + plen + ipid) % 0xFFFF
    t = (tcpbase + plen + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF) + flags + psum) % 0xFFFF
    return (
        prefix
        + _iptcp_pack(
            0x45,
            0,
            40 + plen,
            ipid,
            0x4000,
            ttl,
            6,
            0xFFFF - s if s else 0,
            src,
            dst,
            sport,
            dport,
            seq,
            ack,
            0x50,
            flags,
            win,
            0xFFFF - t if t else 0,
            0,
        )
        + payload
    )


def _udp_frame(
    prefix: bytes, src_ip: int, dst_ip: int, ttl: int, sport: int, dport: int, payload: bytes, ipid: int
) -> bytes:
    tot = 28 + len(payload)
    ipc = _csum(0x4500 + ((ttl << 8) | 17) + _ipw(src_ip) + _ipw(dst_ip) + tot + ipid)
    return (
        prefix
        + _IPUDP.pack(
            0x45,
            0,
            tot,
            ipid,
            0,
            ttl,
            17,
            ipc,
            src_ip.to_bytes(4, "big"),
            dst_ip.to_bytes(4, "big"),
            sport,
            dport,
            8 + len(payload),
            0,
        )
        + payload
    )


def _tcp_flow(c2s: tuple, s2c: tuple, isn_c: int, isn_s: int, budget: int, exchanges, box):
    """Yield exactly ``budget`` frames of one TCP connection.

    ``exchanges`` yields tuples of (direction, payload, payload_sum) with
    direction 0 = client->server, 1 = server->client; ``box[0]`` tells it how
    many data frames are left so that it can pick an exchange that fits.
    """
    f = _tcp_frame
    pack = _iptcp_pack
    c_prefix, c_src, c_dst, c_sport, c_dport, c_ttl, c_win, c_ipbase, c_tcpbase = c2s
    s_prefix, s_src, s_dst, s_sport, s_dport, s_ttl, s_win, s_ipbase, s_tcpbase = s2c
    cs, ss = isn_c, isn_s
    cid, sid = isn_c & 0xFFFF, isn_s & 0xFFFF
    yield f(c2s, _SYN, cs, 0, b"", 0, cid)
    cs = (cs + 1) & _M32
    yield f(s2c, _SYN | _ACK, ss, cs, b"", 0, sid)
    ss = (ss + 1) & _M32
    yield f(c2s, _ACK, cs, ss, b"", 0, (cid + 1) & 0xFFFF)
    cid += 2
    sid += 1
    left = budget - 6
    box[0] = left
    for ex in exchanges:
        n = len(ex)
        while n > left and n and not ex[-1][1]:  # drop trailing pure ACKs (the FIN acks instead)
            ex = ex[:-1]
            n -= 1
        if n > left:
            break
        left -= n
        for d, p, ps in ex:  # _tcp_frame inlined: this is the hot path
            plen = len(p)
            fl = 0x18 if plen else 0x10
            if d:
                ipid = sid & 0xFFFF
                s = (s_ipbase + plen + ipid) % 0xFFFF
                t = (s_tcpbase + plen + (ss >> 16) + (ss & 0xFFFF) + (cs >> 16) + (cs & 0xFFFF) + fl + ps) % 0xFFFF
                yield (
                    s_prefix
                    + pack(
                        0x45,
                        0,
                        40 + plen,
                        ipid,
                        0x4000,
                        s_ttl,
                        6,
                        0xFFFF - s if s else 0,
                        s_src,
                        s_dst,
                        s_sport,
                        s_dport,
                        ss,
                        cs,
                        0x50,
                        fl,
                        s_win,
                        0xFFFF - t if t else 0,
                        0,
                    )
                    + p
                )
                sid += 1
                ss = (ss + plen) & _M32
            else:
                ipid = cid & 0xFFFF
                s = (c_ipbase + plen + ipid) % 0xFFFF
                t = (c_tcpbase + plen + (cs >> 16) + (cs & 0xFFFF) + (ss >> 16) + (ss & 0xFFFF) + fl + ps) % 0xFFFF
                yield (
                    c_prefix
                    + pack(
                        0x45,
                        0,
                        40 + plen,
                        ipid,
                        0x4000,
                        c_ttl,
                        6,
                        0xFFFF - s if s else 0,
                        c_src,
                        c_dst,
                        c_sport,
                        c_dport,
                        cs,
                        ss,
                        0x50,
                        fl,
                        c_win,
                        0xFFFF - t if t else 0,
                        0,
                    )
                    + p
                )
                cid += 1
                cs = (cs + plen) & _M32
        if not left:
            break
        box[0] = left
    slow_close = left == 1  # one frame left over: close in four frames instead of three
    if slow_close:
        left = 0
    while left > 0:  # filler (rare): pure ACKs
        yield f(c2s, _ACK, cs, ss, b"", 0, cid & 0xFFFF)
        cid += 1
        left -= 1
    yield f(c2s, _FIN | _ACK, cs, ss, b"", 0, cid & 0xFFFF)
    cs = (cs + 1) & _M32
    if slow_close:
        yield f(s2c, _ACK, ss, cs, b"", 0, sid & 0xFFFF)
        sid += 1
    yield f(s2c, _FIN | _ACK, ss, cs, b"", 0, sid & 0xFFFF)
    ss = (ss + 1) & _M32
    yield f(c2s, _ACK, cs, ss, b"", 0, (cid + 1) & 0xFFFF)


def _segments(data: bytes, direction: int, ack_every: int = 2):
    """Split a server (or client) burst into MSS segments, with the peer's ACKs."""
    out = []
    other = 1 - direction
    k = 0
    for i in range(0, len(data), MSS):
        seg = data[i : i + MSS]
        out.append((direction, seg, _ps(seg)))
        k += 1
        if k % ack_every == 0:
            out.append((other, b"", 0))
    if k % ack_every:
        out.append((other, b"", 0))
    return tuple(out)


# --------------------------------------------------------------------------
# Modbus/TCP
# --------------------------------------------------------------------------


def _modbus_templates(rng: random.Random):
    """(weight, unitless request PDU, response PDU) list; MBAP added per packet."""
    t = []
    rb = rng.randbytes

    for _ in range(60):  # Read Holding Registers
        a, q = rng.randrange(0, 40000), rng.choice((1, 2, 4, 8, 10, 16, 20, 32, 50, 64, 100, 125))
        t.append((struct.pack(">BHH", 3, a, q), struct.pack(">BB", 3, 2 * q) + rb(2 * q)))
    for _ in range(15):  # Read Input Registers
        a, q = rng.randrange(0, 10000), rng.choice((1, 2, 4, 8, 16, 24))
        t.append((struct.pack(">BHH", 4, a, q), struct.pack(">BB", 4, 2 * q) + rb(2 * q)))
    for fc in (1, 2):  # Read Coils / Discrete Inputs
        for _ in range(8):
            a, q = rng.randrange(0, 10000), rng.choice((1, 8, 16, 20, 64, 200))
            bc = (q + 7) // 8
            t.append((struct.pack(">BHH", fc, a, q), struct.pack(">BB", fc, bc) + rb(bc)))
    for _ in range(18):  # Write Single Register
        p = struct.pack(">BHH", 6, rng.randrange(0, 40000), rng.randrange(65536))
        t.append((p, p))
    for _ in range(6):  # Write Single Coil
        p = struct.pack(">BHH", 5, rng.randrange(0, 10000), rng.choice((0xFF00, 0x0000)))
        t.append((p, p))
    for _ in range(10):  # Write Multiple Registers
        a, q = rng.randrange(0, 40000), rng.choice((1, 2, 4, 10, 20))
        t.append((struct.pack(">BHHB", 16, a, q, 2 * q) + rb(2 * q), struct.pack(">BHH", 16, a, q)))
    for _ in range(3):  # Write Multiple Coils
        a, q = rng.randrange(0, 10000), rng.choice((8, 16, 40))
        bc = (q + 7) // 8
        t.append((struct.pack(">BHHB", 15, a, q, bc) + rb(bc), struct.pack(">BHH", 15, a, q)))
    for _ in range(4):  # Read Write Register (FC 23)
        ra, rq, wa, wq = rng.randrange(0, 40000), rng.choice((2, 8, 16)), rng.randrange(0, 40000), rng.choice((1, 2, 4))
        t.append(
            (
                struct.pack(">BHHHHB", 23, ra, rq, wa, wq, 2 * wq) + rb(2 * wq),
                struct.pack(">BB", 23, 2 * rq) + rb(2 * rq),
            )
        )
    for _ in range(2):  # Diagnostics, return query data
        p = struct.pack(">BHH", 8, 0, rng.randrange(65536))
        t.append((p, p))
    for vendor, product, rev in (
        (b"Schneider Electric", b"BMX P34 2020", b"v3.10"),
        (b"Schneider Electric", b"TM241CE40R", b"v5.1.9.12"),
        (b"Wago", b"750-8212", b"03.10.08"),
    ):
        objs = b"".join(struct.pack(">BB", i, len(v)) + v for i, v in enumerate((vendor, product, rev)))
        t.append((b"\x2b\x0e\x01\x00", b"\x2b\x0e\x01\x01\x00\x00\x03" + objs))
    for _ in range(5):  # exception replies (illegal data address / value)
        fc = rng.choice((3, 3, 6, 16))
        req = {
            3: struct.pack(">BHH", 3, 60000 + rng.randrange(5000), 10),
            6: struct.pack(">BHH", 6, 60000 + rng.randrange(5000), 1),
            16: struct.pack(">BHHBH", 16, 60000, 1, 2, 7),
        }[fc]
        t.append((req, struct.pack(">BB", fc | 0x80, rng.choice((2, 3)))))
    return t


def _modbus_exchanges(rng: random.Random, templates, box):
    unit = rng.choice((1, 1, 1, 0, 255, 17))
    prog = [templates[int(rng.random() * len(templates))] for _ in range(rng.randint(3, 8))]
    prog = [
        (struct.pack(">HHB", 0, len(a) + 1, unit) + a, struct.pack(">HHB", 0, len(b) + 1, unit) + b) for a, b in prog
    ]
    tid = rng.randrange(65536)
    rnd = rng.random
    while True:
        for req, resp in prog:
            tid = (tid + 1) & 0xFFFF
            tb = tid.to_bytes(2, "big")
            q, r = tb + req, tb + resp
            if rnd() < 0.1:
                yield ((0, q, _ps(q)), (1, r, _ps(r)), (0, b"", 0))
            else:
                yield ((0, q, _ps(q)), (1, r, _ps(r)))


# --------------------------------------------------------------------------
# S7comm (TPKT / COTP / S7)
# --------------------------------------------------------------------------


def _tpkt_dt(s7: bytes) -> bytes:
    return struct.pack(">BBH", 3, 0, 7 + len(s7)) + b"\x02\xf0\x80" + s7


def _s7_job(param: bytes, data: bytes = b"") -> bytes:
    return _tpkt_dt(struct.pack(">BBHHHH", 0x32, 1, 0, 0, len(param), len(data)) + param + data)


def _s7_ack(param: bytes, data: bytes = b"") -> bytes:
    return _tpkt_dt(struct.pack(">BBHHHHBB", 0x32, 3, 0, 0, len(param), len(data), 0, 0) + param + data)


def _s7_ud(param: bytes, data: bytes) -> bytes:
    return _tpkt_dt(struct.pack(">BBHHHH", 0x32, 7, 0, 0, len(param), len(data)) + param + data)


_COTP_CR = bytes.fromhex("0300001611e00000000100c1020100c2020102c0010a")
_COTP_CC = bytes.fromhex("0300001611d00001443100c0010ac1020100c2020102")
_S7_SETUP_JOB = _s7_job(struct.pack(">BBHHH", 0xF0, 0, 1, 1, 480))
_S7_SETUP_ACK = _s7_ack(struct.pack(">BBHHH", 0xF0, 0, 1, 1, 240))
_S7_SZL_REQ = _s7_ud(bytes.fromhex("0001120411440100"), b"\xff\x09" + struct.pack(">HHH", 4, 0x0011, 0))


def _s7_szl_resp(mlfb: str) -> bytes:
    recs = b"".join(
        struct.pack(">H20sHHH", idx, m.encode().ljust(20), 0, v, 0)
        for idx, m, v in ((1, mlfb, 0x0004), (6, mlfb, 0x0004), (7, "Boot Loader", 0x2020))
    )
    szl = struct.pack(">HHHH", 0x0011, 0, 28, 3) + recs
    return _s7_ud(bytes.fromhex("000112081284010100000000"), b"\xff\x09" + struct.pack(">H", len(szl)) + szl)


def _s7_item(length: int, area: int, db: int, byte_off: int) -> bytes:
    return struct.pack(">BBBBHHB", 0x12, 0x0A, 0x10, 0x02, length, db, area) + (byte_off * 8).to_bytes(3, "big")


def _s7_templates(rng: random.Random):
    """List of (job, ack-data) with PDU reference 0 (set per packet)."""
    t = []
    rb = rng.randbytes
    areas = ((0x84, None), (0x84, None), (0x84, None), (0x83, 0), (0x81, 0), (0x82, 0))
    for _ in range(60):  # Read Var
        items = []
        for _ in range(rng.choice((1, 1, 2, 3, 4))):
            area, db = rng.choice(areas)
            items.append(
                (
                    rng.choice((1, 2, 4, 4, 8, 16, 32, 64)),
                    area,
                    rng.randrange(1, 200) if db is None else 0,
                    rng.randrange(0, 2000),
                )
            )
        param = struct.pack(">BB", 4, len(items)) + b"".join(_s7_item(*i) for i in items)
        data = b""
        for k, (ln, *_r) in enumerate(items):
            data += b"\xff\x04" + struct.pack(">H", ln * 8) + rb(ln)
            if ln & 1 and k < len(items) - 1:
                data += b"\x00"
        t.append((_s7_job(param), _s7_ack(struct.pack(">BB", 4, len(items)), data)))
    for _ in range(20):  # Write Var
        items = []
        for _ in range(rng.choice((1, 1, 2))):
            area, db = rng.choice(areas)
            items.append(
                (rng.choice((1, 2, 4, 8)), area, rng.randrange(1, 200) if db is None else 0, rng.randrange(0, 2000))
            )
        param = struct.pack(">BB", 5, len(items)) + b"".join(_s7_item(*i) for i in items)
        data = b""
        for k, (ln, *_r) in enumerate(items):
            data += b"\x00\x04" + struct.pack(">H", ln * 8) + rb(ln)
            if ln & 1 and k < len(items) - 1:
                data += b"\x00"
        t.append((_s7_job(param, data), _s7_ack(struct.pack(">BB", 5, len(items)), b"\xff" * len(items))))
    return t


_MLFBS = ("6ES7 315-2EH14-0AB0", "6ES7 516-3AN01-0AB0", "6ES7 214-1AG40-0XB0", "6ES7 412-5HK06-0AB0")


def _s7_exchanges(rng: random.Random, templates, box, server_idx: int):
    pdu = rng.randrange(1, 60000)

    def ref(t: bytes) -> bytes:
        return t[:11] + pdu.to_bytes(2, "big") + t[13:]

    def pair(j, a):
        j, a = ref(j), ref(a)
        return (0, j, _ps(j)), (1, a, _ps(a))

    yield ((0, _COTP_CR, _ps(_COTP_CR)), (1, _COTP_CC, _ps(_COTP_CC))) + pair(_S7_SETUP_JOB, _S7_SETUP_ACK)
    if rng.random() < 0.34:
        pdu += 1
        yield pair(_S7_SZL_REQ, _s7_szl_resp(_MLFBS[server_idx % len(_MLFBS)]))
    prog = [templates[int(rng.random() * len(templates))] for _ in range(rng.randint(2, 6))]
    rnd = rng.random
    while True:
        for j, a in prog:
            pdu = pdu + 1 if pdu < 65535 else 1
            ex = pair(j, a)
            yield ex + ((0, b"", 0),) if rnd() < 0.1 else ex


# --------------------------------------------------------------------------
# ADS / AMS over TCP
# --------------------------------------------------------------------------

_AMS_HDR = struct.Struct("<HI6sH6sHHHIII")


def _ams_templates(rng: random.Random):
    """(weight-expanded) list of (cmd, request data, response data)."""
    t = []
    rb = rng.randbytes
    for _ in range(9):  # Read
        ln = rng.choice((1, 2, 4, 8, 16, 64, 256))
        ig, io = rng.choice((0x4020, 0x4040, 0xF005, 0xF030)), rng.randrange(0, 4096)
        t.append((2, struct.pack("<III", ig, io, ln), struct.pack("<II", 0, ln) + rb(ln)))
    for _ in range(4):  # Write
        ln = rng.choice((1, 2, 4, 8))
        t.append((3, struct.pack("<III", 0x4020, rng.randrange(0, 4096), ln) + rb(ln), struct.pack("<I", 0)))
    for _ in range(4):  # Read State
        t.append((4, b"", struct.pack("<IHH", 0, 5, 0)))
    for name in (b"MAIN.counter", b"GVL.bStart", b"MAIN.fbAxis.Status"):  # Read Write (symbol handle)
        t.append((9, struct.pack("<IIII", 0xF003, 0, 4, len(name)) + name, struct.pack("<II", 0, 4) + rb(4)))
    t.append((1, b"", struct.pack("<IBBH16s", 0, 3, 1, 4024, b"TwinCAT System")))  # Read Device Info
    return t


def _ams_exchanges(rng: random.Random, templates, box, cip: int, sip: int):
    cnet = cip.to_bytes(4, "big") + b"\x01\x01"
    snet = sip.to_bytes(4, "big") + b"\x01\x01"
    tport = rng.choice((851, 851, 801))
    cport = 32768 + rng.randrange(2000)
    prog = [templates[int(rng.random() * len(templates))] for _ in range(rng.randint(3, 7))]
    inv = rng.randrange(1, 1 << 20)
    pack = _AMS_HDR.pack
    rnd = rng.random
    while True:
        for cmd, rq, rs in prog:
            inv = (inv + 1) & _M32
            q = pack(0, 32 + len(rq), snet, tport, cnet, cport, cmd, 4, len(rq), 0, inv) + rq
            r = pack(0, 32 + len(rs), cnet, cport, snet, tport, cmd, 5, len(rs), 0, inv) + rs
            if rnd() < 0.1:
                yield ((0, q, _ps(q)), (1, r, _ps(r)), (0, b"", 0))
            else:
                yield ((0, q, _ps(q)), (1, r, _ps(r)))


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------

_UAS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "curl/7.88.1",
    "python-requests/2.31.0",
    "Wget/1.21.3",
    "WinCC-Runtime/7.5",
)
_SERVERS = (
    "Apache/2.4.57 (Debian)",
    "nginx/1.24.0",
    "lighttpd/1.4.69",
    "GoAhead-Webs",
    "Boa/0.94.13",
    "Microsoft-IIS/10.0",
)
_PATHS = (
    ("/", 1800),
    ("/index.html", 1800),
    ("/api/v1/status", 300),
    ("/scada/overview.htm", 9000),
    ("/favicon.ico", 0),
    ("/images/logo.png", 4200),
    ("/cgi-bin/status.cgi?id=7", 600),
    ("/trend/data.json", 5000),
    ("/missing.html", -404),
)


def _http_body(size: int, json_body: bool) -> bytes:
    if json_body:
        line = '{"tag":"PT-%04d","value":%d.%d,"quality":"good"},'
        s = "[" + "".join(line % (i, i * 7 % 1000, i % 10) for i in range(size // 48 + 1))
        return (s[: max(size - 1, 1)].rstrip(",") + "]").encode()
    line = "<tr><td>Tag %04d</td><td>%d.%d</td><td>OK</td></tr>\n"
    s = "<html><head><title>HMI</title></head><body><table>\n" + "".join(
        line % (i, i * 7 % 1000, i % 10) for i in range(size // 40 + 1)
    )
    return s[:size].encode()


class _HttpCache:
    def __init__(self):
        self.req = {}
        self.resp = {}

    def request(self, method: str, path: str, host: str, ua: str):
        key = (method, path, host, ua)
        r = self.req.get(key)
        if r is None:
            if method == "POST":
                body = b'{"setpoint": 42.5, "unit": "degC"}'
                p = (
                    "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\nAccept: */*\r\n"
                    "Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n"
                    % (path, host, ua, len(body))
                ).encode() + body
            else:
                p = (
                    "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\nAccept: */*\r\n"
                    "Accept-Encoding: identity\r\nConnection: keep-alive\r\n\r\n" % (path, host, ua)
                ).encode()
            r = self.req[key] = (0, p, _ps(p))
        return r

    def response(self, server: str, size: int, kind: str):
        key = (server, size, kind)
        r = self.resp.get(key)
        if r is None:
            date = "Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
            if kind == "304":
                p = ('HTTP/1.1 304 Not Modified\r\n%sServer: %s\r\nETag: "5f-1a2b"\r\n\r\n' % (date, server)).encode()
            elif kind == "404":
                body = b"<html><body><h1>404 Not Found</h1></body></html>"
                p = (
                    "HTTP/1.1 404 Not Found\r\n%sServer: %s\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n"
                    % (date, server, len(body))
                ).encode() + body
            else:
                json_body = kind == "json"
                body = _http_body(size, json_body)
                ctype = (
                    "application/json" if json_body else "application/octet-stream" if kind == "png" else "text/html"
                )
                p = (
                    "HTTP/1.1 200 OK\r\n%sServer: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                    "Cache-Control: no-cache\r\nConnection: keep-alive\r\n\r\n" % (date, server, ctype, len(body))
                ).encode() + body
            r = self.resp[key] = _segments(p, 1)
        return r


def _http_exchanges(rng: random.Random, cache: _HttpCache, box, client_idx: int, server_idx: int, sip: int, port: int):
    ua = _UAS[client_idx % len(_UAS)]
    server = _SERVERS[server_idx % len(_SERVERS)]
    host = _ip_str(sip) + ("" if port == 80 else ":%d" % port)
    prog = [_PATHS[int(rng.random() * len(_PATHS))] for _ in range(rng.randint(2, 6))]
    rnd = rng.random
    while True:
        for path, size in prog:
            if rnd() < 0.1:
                req = cache.request("POST", "/api/v1/setpoint", host, ua)
                resp = cache.response(server, 60, "json")
            else:
                req = cache.request("GET", path, host, ua)
                if size == -404:
                    kind = "404"
                elif size == 0 or rnd() < 0.15:
                    kind = "304"
                else:
                    kind = (
                        "json"
                        if path.endswith("json") or path.startswith("/api")
                        else ("png" if path.endswith(".png") else "html")
                    )
                resp = cache.response(server, max(size, 0), kind)
            ex = (req,) + resp
            if len(ex) > box[0]:  # does not fit: a small answer instead
                ex = (req,) + cache.response(server, 0, "304")
            yield ex


# --------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------


class _TlsCache:
    def __init__(self, rng: random.Random):
        self.blob = rng.randbytes(1 << 15)
        self.hello = {}
        b = self.blob
        # server bursts of application data: concatenated records, cut into segments
        self.bursts = []
        for sizes in (
            (400,),
            (1455,),
            (1455, 1455),
            (2900,),
            (4096, 4096),
            (8000,),
            (16401,),
            (1455,) * 4,
            (700, 3000),
        ):
            data = b"".join(
                b"\x17\x03\x03" + struct.pack(">H", n) + b[i * 97 : i * 97 + n] for i, n in enumerate(sizes)
            )
            self.bursts.append(_segments(data, 1))
        self.requests = []
        for n in (80, 150, 300, 700):
            p = b"\x17\x03\x03" + struct.pack(">H", n) + b[5000 + n : 5000 + 2 * n]
            self.requests.append((0, p, _ps(p)))
        fin = b"\x14\x03\x03\x00\x01\x01\x17\x03\x03\x00\x35" + b[100:153]
        self.client_fin = (0, fin, _ps(fin))

    def handshake(self, sni: str, server_idx: int):
        r = self.hello.get(server_idx)
        if r is not None:
            return r
        b = self.blob
        o = (server_idx * 131) % 20000
        rnd, sid, ks = b[o : o + 32], b[o + 32 : o + 64], b[o + 64 : o + 96]
        name = sni.encode()
        exts = (
            struct.pack(">HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name))
            + name
            + struct.pack(">HHHHH", 0x000A, 6, 4, 0x001D, 0x0017)
            + struct.pack(">HHHHHH", 0x000D, 8, 6, 0x0403, 0x0804, 0x0401)
            + struct.pack(">HHBHH", 0x002B, 5, 4, 0x0304, 0x0303)
            + struct.pack(">HHHHH", 0x0033, 38, 36, 0x001D, 32)
            + ks
        )
        body = (
            b"\x03\x03"
            + rnd
            + b"\x20"
            + sid
            + struct.pack(">HHHH", 6, 0x1301, 0x1302, 0xC02F)
            + b"\x01\x00"
            + struct.pack(">H", len(exts))
            + exts
        )
        hs = b"\x01" + len(body).to_bytes(3, "big") + body
        ch = b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs
        sexts = struct.pack(">HHH", 0x002B, 2, 0x0304) + struct.pack(">HHHH", 0x0033, 36, 0x001D, 32) + ks[::-1]
        sbody = (
            b"\x03\x03"
            + rnd[::-1]
            + b"\x20"
            + sid
            + struct.pack(">H", 0x1301)
            + b"\x00"
            + struct.pack(">H", len(sexts))
            + sexts
        )
        shs = b"\x02" + len(sbody).to_bytes(3, "big") + sbody
        enc = 2400 + (server_idx % 7) * 100
        flight = (
            b"\x16\x03\x03"
            + struct.pack(">H", len(shs))
            + shs
            + b"\x14\x03\x03\x00\x01\x01"
            + b"\x17\x03\x03"
            + struct.pack(">H", enc)
            + b[o + 200 : o + 200 + enc]
        )
        r = ((0, ch, _ps(ch)),) + _segments(flight, 1)[:-1] + (self.client_fin,)
        self.hello[server_idx] = r
        return r


def _tls_exchanges(rng: random.Random, cache: _TlsCache, box, server_idx: int):
    yield cache.handshake("svc%04d.corp.example" % server_idx, server_idx)
    bursts, reqs = cache.bursts, cache.requests
    rnd = rng.random
    while True:
        req = reqs[int(rnd() * len(reqs))]
        burst = bursts[int(rnd() * len(bursts))]
        ex = (req,) + burst
        if len(ex) > box[0]:
            ex = (req,) + bursts[0]
        yield ex


# --------------------------------------------------------------------------
# stateless kinds: DNS, ICMP, ARP, LLDP
# --------------------------------------------------------------------------


def _l2_prefix(dst_mac: bytes, src_mac: bytes, rng: random.Random, vid: int, ethertype: int = 0x0800) -> bytes:
    return dst_mac + src_mac + _tags(rng, vid) + struct.pack("!H", ethertype)


def _pairs(rng: random.Random, a, b, n: int):
    """n (a, b) device pairs, a != b: the fixed set a stateless kind draws from."""
    out = []
    while len(out) < n:
        x, y = a[int(rng.random() * len(a))], b[int(rng.random() * len(b))]
        if x != y:
            out.append((x, y))
    return out


def _dns_gen(rng: random.Random, devs, pairs):
    rnd = rng.random
    ipid = rng.randrange(65536)
    while True:
        ci, si = pairs[int(rnd() * len(pairs))]
        ti = int(rnd() * len(devs))
        cip, cmac = devs[ci][0], devs[ci][1]
        sip, smac = devs[si][0], devs[si][1]
        tid = int(rnd() * 65536)
        sport = 49152 + int(rnd() * 16384)
        qname = b"".join(bytes((len(x),)) + x for x in (b"dev%04d" % ti, b"plant", b"example")) + b"\x00"
        aaaa = rnd() < 0.3
        q = qname + struct.pack(">HH", 28 if aaaa else 1, 1)
        query = struct.pack(">HHHHHH", tid, 0x0100, 1, 0, 0, 0) + q
        if aaaa:
            resp = struct.pack(">HHHHHH", tid, 0x8180, 1, 0, 0, 0) + q
        else:
            resp = (
                struct.pack(">HHHHHH", tid, 0x8180, 1, 1, 0, 0)
                + q
                + struct.pack(">HHHIH", 0xC00C, 1, 1, 300, 4)
                + devs[ti][0].to_bytes(4, "big")
            )
        vid = 10 + ci % 40
        ipid = (ipid + 1) & 0xFFFF
        yield _udp_frame(_l2_prefix(smac, cmac, rng, vid), cip, sip, 128, sport, 53, query, ipid)
        yield _udp_frame(_l2_prefix(cmac, smac, rng, vid), sip, cip, 64, 53, sport, resp, (ipid * 7) & 0xFFFF)


def _icmp_gen(rng: random.Random, devs, pairs):
    rnd = rng.random
    data = b"abcdefghijklmnopqrstuvwabcdefghi"
    dsum = _ps(data)
    ident, seq = rng.randrange(65536), 0
    while True:
        ci, si = pairs[int(rnd() * len(pairs))]
        (cip, cmac), (sip, smac) = devs[ci][:2], devs[si][:2]
        seq = (seq + 1) & 0xFFFF
        for typ, a, amac, b, bmac, ttl in ((8, cip, cmac, sip, smac, 128), (0, sip, smac, cip, cmac, 64)):
            tot = 28 + len(data)
            ipc = _csum(0x4500 + ((ttl << 8) | 1) + _ipw(a) + _ipw(b) + tot + seq)
            ic = _csum((typ << 8) + ident + seq + dsum)
            yield (
                _l2_prefix(bmac, amac, rng, 10 + ci % 40)
                + _IPICMP.pack(
                    0x45,
                    0,
                    tot,
                    seq,
                    0,
                    ttl,
                    1,
                    ipc,
                    a.to_bytes(4, "big"),
                    b.to_bytes(4, "big"),
                    typ,
                    0,
                    ic,
                    ident,
                    seq,
                )
                + data
            )


def _arp_gen(rng: random.Random, devs, pairs):
    rnd = rng.random
    bcast = b"\xff" * 6
    while True:
        ai, bi = pairs[int(rnd() * len(pairs))]
        a, b = devs[ai], devs[bi]
        vid = 10 + (a[0] & 0xFF) % 40
        yield (
            _l2_prefix(bcast, a[1], rng, vid, 0x0806)
            + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, a[1], a[2], bytes(6), b[2])
        )
        yield (
            _l2_prefix(a[1], b[1], rng, vid, 0x0806)
            + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, b[1], b[2], a[1], a[2])
        )


def _lldp_gen(rng: random.Random):
    frames = []
    for sw in range(4):
        mac = bytes.fromhex("001aa1") + bytes((0xF0, 0, sw))
        name = b"sw-plant-%d" % sw
        for port in range(1, 9):
            pid = b"\x05" + b"GigabitEthernet1/0/%d" % port
            tlvs = (
                struct.pack("!HB", (1 << 9) | 7, 4)
                + mac
                + struct.pack("!H", (2 << 9) | len(pid))
                + pid
                + struct.pack("!HH", (3 << 9) | 2, 120)
                + struct.pack("!H", (5 << 9) | len(name))
                + name
                + b"\x00\x00"
            )
            src = mac[:5] + bytes((port,))
            frames.append((src, tlvs))
    dst = bytes.fromhex("0180c200000e")
    while True:
        src, tlvs = frames[int(rng.random() * len(frames))]
        yield _l2_prefix(dst, src, rng, 1, 0x88CC) + tlvs


# --------------------------------------------------------------------------
# topology and the generator
# --------------------------------------------------------------------------

_OUIS = {
    "dns": "001aa1",
    "modbus": "0080f4",
    "s7comm": "001b1b",
    "ams": "000105",
    "http": "00215a",
    "tls": "005056",
    "client": ("001422", "3cd92b", "f8b156", "000c29"),
}


def _devices(n: int):
    roles = [
        ("dns", max(1, n * 2 // 1000)),
        ("modbus", max(1, n * 8 // 100)),
        ("s7comm", max(1, n * 5 // 100)),
        ("ams", max(1, n * 4 // 100)),
        ("http", max(1, n * 3 // 100)),
        ("tls", max(1, n * 2 // 100)),
    ]
    nclients = n - sum(k for _, k in roles)
    if nclients < 1:
        raise ValueError("devices too small: %d" % n)
    devs, by_role = [], {}
    i = 0
    for role, k in roles + [("client", nclients)]:
        idxs = by_role[role] = []
        for _ in range(k):
            ip = (10 << 24) | ((1 + i // 64516) << 16) | ((((i // 254) % 254) + 1) << 8) | (i % 254 + 1)
            oui = _OUIS[role]
            if isinstance(oui, tuple):
                oui = oui[i % len(oui)]
            mac = bytes.fromhex(oui) + (i + 1).to_bytes(3, "big")
            devs.append((ip, mac, ip.to_bytes(4, "big")))
            idxs.append(i)
            i += 1
    return devs, by_role


_PORTS = {"modbus": (502,), "s7comm": (102,), "ams": (48898,), "http": (80, 80, 80, 8080), "tls": (443,)}
_SERVER_TTL = {"modbus": 64, "s7comm": 30, "ams": 128, "http": 64, "tls": 64}


def _split(total: int, parts: int, rng: random.Random, minimum: int):
    """Split total into parts >= minimum, varying 0.5x..1.5x around the mean."""
    extra = total - minimum * parts
    w = [0.5 + rng.random() for _ in range(parts)]
    sw = sum(w)
    out = [minimum + int(extra * x / sw) for x in w]
    for k in range(total - sum(out)):
        out[k % parts] += 1
    return out


def plan(packets: int, connections: int = 10_000):
    """Frames per kind and TCP connections per TCP kind (deterministic, no I/O)."""
    if packets < 1000:
        raise ValueError("packets must be >= 1000")
    frames = {k: int(packets * s) for k, s in SHARES}
    frames["modbus"] += packets - sum(frames.values())
    tcp_total = sum(frames[k] for k in TCP_KINDS)
    conns = max(len(TCP_KINDS), min(connections, tcp_total // FRAMES_PER_FLOW_CAP))
    per = {k: max(1, int(conns * frames[k] / tcp_total)) for k in TCP_KINDS}
    per["modbus"] += conns - sum(per.values())
    return frames, per


def make_mix(
    path,
    packets: int = 1_000_000,
    seed: int = 1,
    connections: int = 10_000,
    devices: int = 2_000,
    concurrency: int | None = None,
) -> dict:
    """Write the mix to ``path`` (atomically) and return a summary dict."""
    t0 = time.perf_counter()
    rng = random.Random(seed)
    frames, per = plan(packets, connections)
    devs, roles = _devices(devices)
    clients = roles["client"]

    mb_t, s7_t, ams_t = _modbus_templates(rng), _s7_templates(rng), _ams_templates(rng)
    http_cache, tls_cache = _HttpCache(), _TlsCache(rng)

    # connection specs
    specs = []
    used = set()
    for kind in TCP_KINDS:
        servers = roles[kind]
        for budget in _split(frames[kind], per[kind], rng, MIN_FLOW_FRAMES):
            while True:
                ci = clients[int(rng.random() * len(clients))]
                si = servers[int(rng.random() * len(servers))]
                port = rng.choice(_PORTS[kind])
                sport = 49152 + rng.randrange(16384)
                key = (ci, si, sport, port)
                if key not in used:
                    used.add(key)
                    break
            specs.append((kind, ci, si, sport, port, budget, rng.random(), rng.getrandbits(32), rng.getrandbits(32)))
    rng.shuffle(specs)
    nconn = len(specs)

    def start(spec):
        kind, ci, si, sport, port, budget, vr, isn_c, isn_s = spec
        (cip, cmac, _), (sip, smac, _) = devs[ci], devs[si]
        vid = 10 + si % 40
        if vr < VLAN_SHARE * QINQ_SHARE_OF_TAGGED:
            tag = struct.pack("!HHHH", 0x88A8, 100 + vid % 8, 0x8100, vid)
        elif vr < VLAN_SHARE:
            tag = struct.pack("!HH", 0x8100, vid)
        else:
            tag = b""
        c2s = _dir(smac + cmac + tag + b"\x08\x00", cip, sip, sport, port, 128, 64240)
        s2c = _dir(
            cmac + smac + tag + b"\x08\x00",
            sip,
            cip,
            port,
            sport,
            _SERVER_TTL[kind],
            65535 if kind in ("http", "tls") else 8192,
        )
        box = [0]
        if kind == "modbus":
            ex = _modbus_exchanges(rng, mb_t, box)
        elif kind == "s7comm":
            ex = _s7_exchanges(rng, s7_t, box, si)
        elif kind == "ams":
            ex = _ams_exchanges(rng, ams_t, box, cip, sip)
        elif kind == "http":
            ex = _http_exchanges(rng, http_cache, box, ci, si, sip, port)
        else:
            ex = _tls_exchanges(rng, tls_cache, box, si)
        return [_tcp_flow(c2s, s2c, isn_c, isn_s, budget, ex, box), budget]

    # the stateless kinds talk between fixed sets of device pairs whose size depends on
    # `connections` only, so a longer mix with the same connections has the same pairs
    plcs = [i for r in ("modbus", "s7comm", "ams", "http") for i in roles[r]]
    everyone = list(range(len(devs)))
    others = {
        1: _dns_gen(rng, devs, _pairs(rng, clients, roles["dns"], max(1, nconn // 5))),
        2: _icmp_gen(rng, devs, _pairs(rng, clients, plcs, max(1, nconn // 20))),
        3: _arp_gen(rng, devs, _pairs(rng, everyone, everyone, max(1, nconn // 10))),
        4: _lldp_gen(rng),
    }
    # which kind each frame slot is: 0 = some TCP connection, else a stateless kind
    order = bytearray(packets)
    slots = rng.sample(range(packets), packets - sum(frames[k] for k in TCP_KINDS))  # random order
    k = 0
    for code, kind in ((1, "dns"), (2, "icmp"), (3, "arp"), (4, "lldp")):
        for pos in slots[k : k + frames[kind]]:
            order[pos] = code
        k += frames[kind]

    width = min(nconn, concurrency or 1000)
    pending = iter(specs)
    # ramp up: start with few connections and open one more every `ramp` TCP frames until
    # `width` are open (after ~10 % of the TCP frames), so the file does not begin with a
    # wall of handshakes
    pool = [start(next(pending)) for _ in range(min(width, 64))]
    ramp = max(1, sum(frames[k] for k in TCP_KINDS) // (10 * width))
    grow_at = ramp
    tcp_slot = 0
    deltas = [12 + int(rng.random() * 17) for _ in range(1024)]

    tmp = "%s.tmp%d" % (path, os.getpid())
    rec = _REC.pack
    rnd = rng.random
    pad = _PAD
    sec, usec = divmod(START_US, 1_000_000)
    burst, ent, i = 0, None, 0
    nbytes = 0
    tagged = qinq = 0
    written = 0
    with open(tmp, "wb") as fh:
        fh.write(_PCAP_HDR)
        out = []
        app = out.append
        for code in order:
            if code:
                fr = next(others[code])
            else:
                if burst:
                    burst -= 1
                else:  # a new random connection, for 1-4 frames (locality, as in real traffic)
                    if tcp_slot >= grow_at and len(pool) < width:
                        grow_at += ramp
                        spec = next(pending, None)
                        if spec is not None:
                            pool.append(start(spec))
                    i = int(rnd() * len(pool))
                    ent = pool[i]
                    burst = (i ^ written) & 3
                fr = next(ent[0])
                tcp_slot += 1
                ent[1] -= 1
                if not ent[1]:
                    spec = next(pending, None)
                    if spec is not None:
                        pool[i] = start(spec)
                    else:
                        pool[i] = pool[-1]
                        pool.pop()
                    burst = 0
            ln = len(fr)
            if ln < 60:
                fr += pad[ln:]
                ln = 60
            b12 = fr[12]
            if b12 == 0x81:
                tagged += 1
            elif b12 == 0x88 and fr[13] == 0xA8:
                tagged += 1
                qinq += 1
            usec += deltas[written & 1023]
            if usec >= 1_000_000:
                sec += 1
                usec -= 1_000_000
            app(rec(sec, usec, ln, ln))
            app(fr)
            nbytes += ln
            written += 1
            if not written & 0x3FFF:
                fh.write(b"".join(out))
                out.clear()
        fh.write(b"".join(out))
    ts = sec * 1_000_000 + usec
    if pool:
        raise AssertionError("internal: %d connections left unfinished" % len(pool))
    os.replace(tmp, path)
    return {
        "path": str(path),
        "version": MIX_VERSION,
        "seed": seed,
        "packets": written,
        "frameBytes": nbytes,
        "fileBytes": os.path.getsize(path),
        "frames": frames,
        "connections": nconn,
        "connectionsByKind": per,
        "concurrency": width,
        "devices": len(devs),
        "vlanTaggedFrames": tagged,
        "qinqFrames": qinq,
        "firstTimestampUs": START_US + deltas[0],
        "lastTimestampUs": ts,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="write the synthetic OT benchmark pcap")
    ap.add_argument("out")
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--devices", type=int, default=2_000)
    ap.add_argument("--concurrency", type=int, default=None)
    a = ap.parse_args(argv)
    try:
        s = make_mix(a.out, a.packets, a.seed, a.connections, a.devices, a.concurrency)
    except (ValueError, OSError) as e:
        print("mix: %s" % e, file=sys.stderr)
        return 2
    print(json.dumps(s, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
