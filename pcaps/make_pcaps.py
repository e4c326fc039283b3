#!/usr/bin/env python3
"""Regenerates otsensor's own small test captures in this folder, byte for byte.

Owns: every capture under pcaps/ (see README.md for what each one holds and what a sensor should
report).  Never: reads the network or the clock; all times start at 2026-01-05T08:00:00Z and every
"random" byte comes from a seeded generator, so two runs write identical files.

    python pcaps/make_pcaps.py            # (re)write all captures
    python pcaps/make_pcaps.py --report   # also run tshark over them and print the README table

Frames are built with scapy (headers, checksums); the capture files themselves (pcap in every
flavour, pcapng, gzip) are written with struct so that link types, timestamp resolution and byte
order are exactly what the file claims.
"""

from __future__ import annotations

import argparse
import gzip
import random
import re
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from scapy.contrib.mpls import MPLS
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, PadN, RouterAlert
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.packet import Packet, Raw

HERE = Path(__file__).resolve().parent
EPOCH_NS = 1_767_600_000 * 10**9  # 2026-01-05T08:00:00Z

# Link types (https://www.tcpdump.org/linktypes.html)
LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW = 0, 1, 101
LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2 = 113, 276
LINKTYPE_NFLOG = 239


# --------------------------------------------------------------------------------------------
# Capture files
# --------------------------------------------------------------------------------------------


def pcap_bytes(records, linktype, *, nano=False, big_endian=False, snaplen=262144) -> bytes:
    """Classic libpcap file: records are (timestamp_ns, frame_bytes[, iface])."""
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for rec in records:
        ts, data = rec[0], rec[1]
        sec, frac = divmod(ts, 10**9)
        frac = frac if nano else frac // 1000
        out.append(struct.pack(e + "IIII", sec, frac, len(data), len(data)))
        out.append(data)
    return b"".join(out)


def _pcapng_block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def _pcapng_opt(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def pcapng_bytes(interfaces, records) -> bytes:
    """pcapng with one Interface Description Block per (linktype, name); µs timestamps."""
    shb_opts = _pcapng_opt(4, b"otsensor pcaps/make_pcaps.py") + _pcapng_opt(0, b"")
    out = [_pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + shb_opts)]
    for linktype, name in interfaces:
        opts = _pcapng_opt(2, name.encode()) + _pcapng_opt(9, b"\x06") + _pcapng_opt(0, b"")
        out.append(_pcapng_block(1, struct.pack("<HHI", linktype, 0, 262144) + opts))
    for ts, data, iface in records:
        usec = ts // 1000
        body = struct.pack("<IIIII", iface, usec >> 32, usec & 0xFFFFFFFF, len(data), len(data))
        out.append(_pcapng_block(6, body + data))
    return b"".join(out)


def gzip_bytes(raw: bytes) -> bytes:
    # mtime=0 and no file name in the header: the .gz is as reproducible as the pcap inside.
    return gzip.compress(raw, compresslevel=9, mtime=0)


WRITTEN: list[Path] = []


def write(name: str, data: bytes) -> None:
    path = HERE / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    WRITTEN.append(path)


# --------------------------------------------------------------------------------------------
# Hosts, clock, link layers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    name: str
    mac: str
    ip: str
    ttl: int = 64
    windows: bool = False  # Windows TCP stack: MSS+WS+SACK in the SYN, TTL 128, DF set

    @property
    def v6(self) -> bool:
        return ":" in self.ip


class Capture:
    """Frames in time order plus the state a real network would keep (clock, IP ids)."""

    def __init__(self, seed: int, start_ns: int = EPOCH_NS):
        self.t = start_ns
        self.rng = random.Random(seed)
        self.records: list[tuple[int, bytes, int]] = []
        self._ip_id: dict[str, int] = {}

    def wait(self, ms: float) -> None:
        # a few ns of jitter so that nanosecond captures carry real sub-µs digits
        self.t += int(ms * 1_000_000) + self.rng.randrange(0, 1000)

    def at(self, offset_ms: float) -> None:
        """Set the clock to an offset from the capture start; concurrent conversations may make
        it go back, so a capture built this way is sorted (`in_time_order`) before writing."""
        self.t = EPOCH_NS + int(offset_ms * 1_000_000)

    def in_time_order(self) -> None:
        """Sort the frames by time, then renumber the IPv4 ids of each sender in that order (a
        host has one id counter, whichever conversation the datagram belongs to)."""
        self.records.sort(key=lambda r: r[0])
        next_id: dict[bytes, int] = {}
        for i, (ts, frame, iface) in enumerate(self.records):
            if frame[12:14] != b"\x08\x00":
                continue
            ip = bytearray(frame[14:34])
            src = bytes(ip[12:16])
            if src not in next_id:
                next_id[src] = struct.unpack(">H", ip[4:6])[0]
            ip[4:6] = be16(next_id[src])
            next_id[src] = (next_id[src] + 1) & 0xFFFF
            ip[10:12] = b"\0\0"
            words = sum(struct.unpack(">10H", bytes(ip)))
            while words >> 16:
                words = (words & 0xFFFF) + (words >> 16)
            ip[10:12] = be16(~words & 0xFFFF)
            self.records[i] = (ts, frame[:14] + bytes(ip) + frame[34:], iface)

    def add(self, frame: bytes, iface: int = 0) -> None:
        self.records.append((self.t, frame, iface))

    def ip_id(self, host: Host) -> int:
        if host.ip not in self._ip_id:
            self._ip_id[host.ip] = self.rng.randrange(0x0400, 0xF000)
        self._ip_id[host.ip] = (self._ip_id[host.ip] + 1) & 0xFFFF
        return self._ip_id[host.ip]

    def pcap(self, linktype=LINKTYPE_ETHERNET, **kw) -> bytes:
        return pcap_bytes(self.records, linktype, **kw)


def l3_default(cap: Capture, src: Host, dst: Host, proto: int) -> Packet:
    if src.v6:
        return IPv6(src=src.ip, dst=dst.ip, hlim=src.ttl, fl=0)
    flags = "DF" if src.windows or proto == 6 else 0
    return IP(src=src.ip, dst=dst.ip, ttl=src.ttl, id=cap.ip_id(src), flags=flags)


def ethernet(src: Host, dst: Host, pkt: Packet) -> list[bytes]:
    return [bytes(Ether(src=src.mac, dst=dst.mac) / pkt)]


def _ethertype(pkt: Packet) -> int:
    return 0x86DD if isinstance(pkt, IPv6) else 0x0800


def linux_sll(capturing: Host):
    """Linux cooked v1 header as seen by a capture on `capturing` (pkttype 0 = to us, 4 = ours)."""

    def link(src: Host, dst: Host, pkt: Packet) -> list[bytes]:
        pkttype = 4 if src is capturing else 0
        addr = bytes.fromhex(src.mac.replace(":", "")) + b"\0\0"
        hdr = struct.pack(">HHH8sH", pkttype, 1, 6, addr, _ethertype(pkt))
        return [hdr + bytes(pkt)]

    return link


def linux_sll2(capturing: Host, ifindex: int = 2):
    def link(src: Host, dst: Host, pkt: Packet) -> list[bytes]:
        pkttype = 4 if src is capturing else 0
        addr = bytes.fromhex(src.mac.replace(":", "")) + b"\0\0"
        hdr = struct.pack(">HHIHBB8s", _ethertype(pkt), 0, ifindex, 1, pkttype, 6, addr)
        return [hdr + bytes(pkt)]

    return link


def nflog(capturing: Host, group: int = 5, ifindex: int = 2):
    """LINKTYPE_NFLOG as `tcpdump -i nflog:5` writes it on `capturing` (an iptables NFLOG rule with
    prefix "otsensor", group 5): family, version 0, big-endian group, then TLVs in the host's byte
    order (little-endian here), each padded to 4 bytes, in the kernel's order (nfnetlink_log.c
    __build_packet_message).  Incoming packets carry the sender's MAC (NFULA_HWADDR) and the link
    header; outgoing ones the socket's uid/gid."""

    def tlv(kind: int, value: bytes) -> bytes:
        return struct.pack("<HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)

    def link(src: Host, dst: Host, pkt: Packet) -> list[bytes]:
        outgoing = src is capturing
        family = 10 if isinstance(pkt, IPv6) else 2
        hook = 3 if outgoing else 1  # NF_INET_LOCAL_OUT / NF_INET_LOCAL_IN
        tlvs = [tlv(1, struct.pack(">HBB", _ethertype(pkt), hook, 0)), tlv(10, b"otsensor\0")]
        tlvs.append(tlv(5 if outgoing else 4, struct.pack(">I", ifindex)))
        if outgoing:
            tlvs += [tlv(11, struct.pack(">I", 1000)), tlv(14, struct.pack(">I", 1000))]
        else:
            src_mac, dst_mac = (bytes.fromhex(h.mac.replace(":", "")) for h in (src, dst))
            tlvs.append(tlv(8, struct.pack(">HH", 6, 0) + src_mac + b"\0\0"))
            tlvs.append(tlv(15, struct.pack(">H", 1)))  # NFULA_HWTYPE: ARPHRD_ETHER
            tlvs.append(tlv(16, dst_mac + src_mac + struct.pack(">H", _ethertype(pkt))))  # NFULA_HWHEADER
            tlvs.append(tlv(17, struct.pack(">H", 14)))  # NFULA_HWLEN
        tlvs.append(tlv(9, bytes(pkt)))  # NFULA_PAYLOAD: the IP packet
        return [struct.pack(">BBH", family, 0, group) + b"".join(tlvs)]

    return link


def bsd_null(src: Host, dst: Host, pkt: Packet) -> list[bytes]:
    # DLT_NULL: the address family in the capturing host's byte order (little-endian here)
    family = 30 if isinstance(pkt, IPv6) else 2
    return [struct.pack("<I", family) + bytes(pkt)]


def raw_ip(src: Host, dst: Host, pkt: Packet) -> list[bytes]:
    return [bytes(pkt)]


# --------------------------------------------------------------------------------------------
# TCP sessions and UDP datagrams
# --------------------------------------------------------------------------------------------


class TcpFlow:
    """One TCP connection with correct sequence/acknowledgement numbers in both directions.

    `c()`/`s()` send data from the client/server; every data segment acknowledges everything
    the other side sent so far.  `l2` wraps the IP packet into frames (Ethernet by default, or a
    VLAN / MPLS / PPPoE / cooked header, or several IP fragments); `l3` builds the IP header.
    """

    def __init__(
        self,
        cap: Capture,
        client: Host,
        server: Host,
        sport: int,
        dport: int,
        *,
        l2=ethernet,
        l3=l3_default,
        isn_c: int | None = None,
        isn_s: int | None = None,
        win_c: int | None = None,
        win_s: int = 8192,
        iface: int = 0,
    ):
        self.cap, self.client, self.server = cap, client, server
        self.sport, self.dport, self.l2, self.l3, self.iface = sport, dport, l2, l3, iface
        self.nxt = {
            True: isn_c if isn_c is not None else cap.rng.getrandbits(32),
            False: isn_s if isn_s is not None else cap.rng.getrandbits(32),
        }
        self.win = {True: win_c if win_c is not None else (64240 if client.windows else 29200), False: win_s}
        self.last: tuple | None = None

    def _emit(self, from_client: bool, flags: str, payload: bytes = b"", *, seq=None, ack=None, options=None) -> None:
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        sport, dport = (self.sport, self.dport) if from_client else (self.dport, self.sport)
        seq = self.nxt[from_client] if seq is None else seq
        if ack is None:
            ack = self.nxt[not from_client] if "A" in flags else 0
        tcp = TCP(
            sport=sport,
            dport=dport,
            flags=flags,
            seq=seq & 0xFFFFFFFF,
            ack=ack & 0xFFFFFFFF,
            window=self.win[from_client],
            options=options or [],
        )
        pkt = self.l3(self.cap, src, dst, 6) / tcp
        if payload:
            pkt = pkt / Raw(payload)
        for frame in self.l2(src, dst, pkt):
            self.cap.add(frame, self.iface)
        self.last = (from_client, flags, payload, seq, ack)

    def open(self, rtt_ms: float = 0.6) -> TcpFlow:
        c = self.client
        syn_opts = (
            [("MSS", 1460), ("NOP", None), ("WScale", 8), ("NOP", None), ("NOP", None), ("SAckOK", b"")]
            if c.windows
            else [("MSS", 1460), ("SAckOK", b""), ("NOP", None), ("WScale", 7)]
        )
        self._emit(True, "S", options=syn_opts)
        self.nxt[True] += 1
        self.cap.wait(rtt_ms / 2)
        self._emit(False, "SA", options=[("MSS", 1460)])
        self.nxt[False] += 1
        self.cap.wait(rtt_ms / 2)
        self._emit(True, "A")
        return self

    def send(self, from_client: bool, payload: bytes, after_ms: float = 0.0) -> None:
        self.cap.wait(after_ms)
        self._emit(from_client, "PA", payload)
        self.nxt[from_client] += len(payload)

    def c(self, payload: bytes, after_ms: float = 1.0) -> None:
        self.send(True, payload, after_ms)

    def s(self, payload: bytes, after_ms: float = 2.0) -> None:
        self.send(False, payload, after_ms)

    def ack(self, from_client: bool = True, after_ms: float = 0.2) -> None:
        self.cap.wait(after_ms)
        self._emit(from_client, "A")

    def retransmit(self, after_ms: float = 300.0) -> None:
        """Send the last segment again: same sequence number, same bytes."""
        from_client, flags, payload, seq, ack = self.last
        self.cap.wait(after_ms)
        self._emit(from_client, flags, payload, seq=seq, ack=ack)

    def close(self, from_client: bool = True, after_ms: float = 5.0) -> None:
        self.cap.wait(after_ms)
        self._emit(from_client, "FA")
        self.nxt[from_client] += 1
        self.cap.wait(0.3)
        self._emit(not from_client, "FA")
        self.nxt[not from_client] += 1
        self.cap.wait(0.3)
        self._emit(from_client, "A")

    def reset(self, from_client: bool = False, after_ms: float = 0.5) -> None:
        self.cap.wait(after_ms)
        self._emit(from_client, "RA")


def udp(
    cap: Capture,
    src: Host,
    dst: Host,
    sport: int,
    dport: int,
    payload: bytes,
    *,
    l2=ethernet,
    l3=l3_default,
    after_ms: float = 0.0,
    iface: int = 0,
) -> None:
    cap.wait(after_ms)
    pkt = l3(cap, src, dst, 17) / UDP(sport=sport, dport=dport) / Raw(payload)
    for frame in l2(src, dst, pkt):
        cap.add(frame, iface)


# --------------------------------------------------------------------------------------------
# Protocol payloads
# --------------------------------------------------------------------------------------------

u8 = struct.Struct(">B").pack
be16 = struct.Struct(">H").pack
be32 = struct.Struct(">I").pack
le16 = struct.Struct("<H").pack
le32 = struct.Struct("<I").pack


# ---- Modbus/TCP (MBAP, Modbus Application Protocol v1.1b3) ----------------------------------


def mbap(tid: int, pdu: bytes, unit: int = 1) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def mb_regs(values) -> bytes:
    data = b"".join(be16(v & 0xFFFF) for v in values)
    return u8(len(data)) + data


def mb_dev_id_response(objects: list[tuple[int, str]], code: int = 1, conformity: int = 0x01) -> bytes:
    """FC 43 / MEI 14 Read Device Identification response PDU."""
    body = bytes([0x2B, 0x0E, code, conformity, 0x00, 0x00, len(objects)])
    for oid, value in objects:
        v = value.encode()
        body += bytes([oid, len(v)]) + v
    return body


# ---- ISO-on-TCP (RFC 1006 TPKT, ISO 8073 COTP) ----------------------------------------------


def tpkt(payload: bytes) -> bytes:
    return b"\x03\x00" + be16(len(payload) + 4) + payload


def _cotp_params(src_tsap: bytes, dst_tsap: bytes, tpdu_size: int = 0x0A) -> bytes:
    return b"\xc0\x01" + u8(tpdu_size) + b"\xc1" + u8(len(src_tsap)) + src_tsap + b"\xc2" + u8(len(dst_tsap)) + dst_tsap


def cotp_cr(src_ref: int, src_tsap: bytes, dst_tsap: bytes) -> bytes:
    body = b"\xe0" + be16(0) + be16(src_ref) + b"\x00" + _cotp_params(src_tsap, dst_tsap)
    return tpkt(u8(len(body)) + body)


def cotp_cc(dst_ref: int, src_ref: int, src_tsap: bytes, dst_tsap: bytes) -> bytes:
    body = b"\xd0" + be16(dst_ref) + be16(src_ref) + b"\x00" + _cotp_params(src_tsap, dst_tsap)
    return tpkt(u8(len(body)) + body)


def cotp_dt(data: bytes, eot: bool = True) -> bytes:
    return tpkt(b"\x02\xf0" + (b"\x80" if eot else b"\x00") + data)


# ---- S7comm (layouts after Wireshark's packet-s7comm.c) -------------------------------------


def s7_job(ref: int, param: bytes, data: bytes = b"") -> bytes:
    return b"\x32\x01\x00\x00" + struct.pack(">HHH", ref, len(param), len(data)) + param + data


def s7_ack_data(ref: int, param: bytes, data: bytes = b"", error: int = 0) -> bytes:
    return b"\x32\x03\x00\x00" + struct.pack(">HHHH", ref, len(param), len(data), error) + param + data


def s7_userdata(ref: int, param: bytes, data: bytes) -> bytes:
    return b"\x32\x07\x00\x00" + struct.pack(">HHH", ref, len(param), len(data)) + param + data


def s7_ud_request(group: int, subfunc: int, seq: int) -> bytes:
    # head 00 01 12, param length 4, syntax id 0x11, type request (0x4_) | function group
    return bytes([0x00, 0x01, 0x12, 0x04, 0x11, 0x40 | group, subfunc, seq])


def s7_ud_response(group: int, subfunc: int, seq: int) -> bytes:
    # param length 8, syntax id 0x12 (ext): + data unit ref, last data unit (0 = yes), error code
    return bytes([0x00, 0x01, 0x12, 0x08, 0x12, 0x80 | group, subfunc, seq, 0, 0, 0, 0])


def s7_ud_data(payload: bytes, ok: bool = True) -> bytes:
    if not ok:  # "object does not exist" + NULL transport size: a request without data
        return b"\x0a\x00\x00\x00"
    return b"\xff\x09" + be16(len(payload)) + payload


S7_SETUP = b"\xf0\x00\x00\x01\x00\x01\x01\xe0"  # max AmQ 1/1, PDU 480
S7_SETUP_ACK = b"\xf0\x00\x00\x01\x00\x01\x00\xf0"  # PDU 240 granted


def s7_any(area: int, db: int, start_byte: int, count: int, tsize: int = 0x02) -> bytes:
    """S7ANY item: 12 0a 10, transport size, length, DB, area, bit address (3 bytes)."""
    addr = start_byte * 8
    return b"\x12\x0a\x10" + u8(tsize) + be16(count) + be16(db) + u8(area) + addr.to_bytes(3, "big")


def s7_read_var(ref: int, items: list[bytes]) -> bytes:
    return s7_job(ref, b"\x04" + u8(len(items)) + b"".join(items))


def s7_read_var_ack(ref: int, values: list[bytes]) -> bytes:
    data = b""
    for i, v in enumerate(values):
        data += b"\xff\x04" + be16(len(v) * 8) + v
        if len(v) % 2 and i < len(values) - 1:
            data += b"\x00"
    return s7_ack_data(ref, b"\x04" + u8(len(values)), data)


def s7_write_var(ref: int, item: bytes, value: bytes) -> bytes:
    return s7_job(ref, b"\x05\x01" + item, b"\x00\x04" + be16(len(value) * 8) + value)


def s7_write_var_ack(ref: int) -> bytes:
    return s7_ack_data(ref, b"\x05\x01", b"\xff")


def s7_block_name(btype: str, number: int, fs: str) -> bytes:
    """'_' + block type ('08' OB, '0A' DB, '0C' FC, '0E' FB) + 5 digit number + filesystem."""
    return b"_" + btype.encode() + b"%05d" % number + fs.encode()


def s7_szl_0011(order_number: str, hw: tuple[int, int], fw: tuple[int, int, int]) -> bytes:
    """SZL-ID 0x0011 index 0 (all module identification records), 28 bytes per record."""
    mlfb = order_number.ljust(20).encode()
    recs = [
        be16(0x0001) + mlfb + be16(0x0000) + be16(hw[0]) + be16(hw[1]),  # module
        be16(0x0006) + mlfb + be16(0x0000) + be16(hw[0]) + be16(hw[1]),  # basic hardware
        # basic firmware: Ausbg = 'V' + major, Ausbe = minor, patch  ->  V3.2.6
        be16(0x0007) + b" " * 20 + be16(0x0000) + bytes([ord("V"), fw[0]]) + bytes(fw[1:]),
    ]
    return be16(0x0011) + be16(0x0000) + be16(28) + be16(len(recs)) + b"".join(recs)


def s7_timestamp(year, month, day, hour, minute, second, msec, weekday) -> bytes:
    def bcd(v):
        return ((v // 10) << 4) | (v % 10)

    return bytes(
        [
            0x00,
            bcd(year // 100),
            bcd(year % 100),
            bcd(month),
            bcd(day),
            bcd(hour),
            bcd(minute),
            bcd(second),
            bcd(msec // 10),
            (bcd(msec % 10) << 4) | weekday,
        ]
    )


# ---- S7comm-plus (layout after the community dissector packet-s7comm_plus.c) ----------------

S7P_EXPLORE, S7P_CREATEOBJECT, S7P_DELETEOBJECT = 0x04BB, 0x04CA, 0x04D4
S7P_SETVARIABLE, S7P_GETMULTIVARIABLES = 0x04F2, 0x054C


def vlq(n: int) -> bytes:
    """S7comm-plus variable-length quantity: 7 bits per byte, big-endian, 0x80 = more follows."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def s7p_frame(data: bytes, version: int = 0x01) -> bytes:
    """0x72, version, data length, data, trailer 0x72 version 0x0000 (no integrity part in V1)."""
    return b"\x72" + u8(version) + be16(len(data)) + data + b"\x72" + u8(version) + b"\x00\x00"


def s7p_request(func: int, seq: int, session: int, body: bytes, transport: int = 0x34) -> bytes:
    return b"\x31\x00\x00" + be16(func) + b"\x00\x00" + be16(seq) + be32(session) + u8(transport) + body


def s7p_response(func: int, seq: int, body: bytes, transport: int = 0x00) -> bytes:
    return b"\x32\x00\x00" + be16(func) + b"\x00\x00" + be16(seq) + u8(transport) + body


def s7p_wstring(s: str) -> bytes:
    b = s.encode()
    return b"\x00\x15" + vlq(len(b)) + b  # flags 0, datatype WString, length, UTF-8


# Object qualifier (ID 1256 = 0x04e8) with Parent RID, Composition AID, Key Qualifier
S7P_OBJECT_QUALIFIER = (
    b"\x00\x00\x04\xe8"
    + vlq(1257)
    + b"\x00\x12"
    + be32(0)
    + vlq(1258)
    + b"\x00\x13\x00"
    + vlq(1259)
    + b"\x00\x04\x00"
    + b"\x00"
)


# ---- MMS / ISO 8650 ACSE / ISO 8823 presentation / ISO 8327 session (BER) -------------------


def ber(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = u8(n)
    elif n < 0x100:
        length = b"\x81" + u8(n)
    else:
        length = b"\x82" + be16(n)
    return u8(tag) + length + content


def ses_param(code: int, value: bytes) -> bytes:
    return u8(code) + (u8(len(value)) if len(value) < 255 else b"\xff" + be16(len(value))) + value


MMS_OID = bytes.fromhex("28ca220203")  # 1.0.9506.2.3 MMS application context
MMS_AS_OID = bytes.fromhex("28ca220201")  # 1.0.9506.2.1 MMS abstract syntax
ACSE_AS_OID = bytes.fromhex("52010001")  # 2.2.1.0.1 ACSE abstract syntax
BER_TS_OID = bytes.fromhex("5101")  # 2.1.1 basic encoding rules


def mms_initiate_detail() -> bytes:
    return (
        ber(0x80, b"\x01")  # version 1
        + ber(0x81, bytes.fromhex("05f100"))  # parameter CBB
        + ber(0x82, bytes.fromhex("03ee1c00000408000079ef18"))
    )  # services supported


def mms_initiate_request() -> bytes:
    mms = ber(
        0xA8,
        ber(0x80, be32(65000)[1:])
        + ber(0x81, b"\x05")
        + ber(0x82, b"\x05")
        + ber(0x83, b"\x0a")
        + ber(0xA4, mms_initiate_detail()),
    )
    user_info = ber(0xBE, ber(0x28, ber(0x06, BER_TS_OID) + ber(0x02, b"\x03") + ber(0xA0, mms)))
    aarq = ber(
        0x60,
        ber(0xA1, ber(0x06, MMS_OID))
        + ber(0xA2, ber(0x06, bytes.fromhex("29018767 01".replace(" ", ""))))
        + ber(0xA3, ber(0x02, b"\x0c"))
        + ber(0xA6, ber(0x06, bytes.fromhex("29018767")))
        + ber(0xA7, ber(0x02, b"\x0c"))
        + user_info,
    )
    contexts = ber(
        0xA4,
        ber(0x30, ber(0x02, b"\x01") + ber(0x06, ACSE_AS_OID) + ber(0x30, ber(0x06, BER_TS_OID)))
        + ber(0x30, ber(0x02, b"\x03") + ber(0x06, MMS_AS_OID) + ber(0x30, ber(0x06, BER_TS_OID))),
    )
    user_data = ber(0x61, ber(0x30, ber(0x02, b"\x01") + ber(0xA0, aarq)))
    cp = ber(
        0x31,
        ber(0xA0, ber(0x80, b"\x01"))
        + ber(0xA2, ber(0x81, be32(1)) + ber(0x82, be32(1)) + contexts + ber(0x88, b"\x06\x00") + user_data),
    )
    spdu = (
        ses_param(0x05, ses_param(0x13, b"\x00") + ses_param(0x16, b"\x02"))
        + ses_param(0x14, b"\x00\x02")
        + ses_param(0x33, b"\x00\x01")
        + ses_param(0x34, b"\x00\x01")
        + ses_param(0xC1, cp)
    )
    return b"\x0d" + (u8(len(spdu)) if len(spdu) < 255 else b"\xff" + be16(len(spdu))) + spdu


def mms_initiate_response() -> bytes:
    mms = ber(
        0xA9,
        ber(0x80, be32(65000)[1:])
        + ber(0x81, b"\x05")
        + ber(0x82, b"\x05")
        + ber(0x83, b"\x0a")
        + ber(0xA4, mms_initiate_detail()),
    )
    user_info = ber(0xBE, ber(0x28, ber(0x06, BER_TS_OID) + ber(0x02, b"\x03") + ber(0xA0, mms)))
    aare = ber(
        0x61,
        ber(0xA1, ber(0x06, MMS_OID))
        + ber(0xA2, ber(0x02, b"\x00"))
        + ber(0xA3, ber(0xA1, ber(0x02, b"\x00")))
        + user_info,
    )
    results = ber(
        0xA5,
        ber(0x30, ber(0x80, b"\x00") + ber(0x81, BER_TS_OID)) + ber(0x30, ber(0x80, b"\x00") + ber(0x81, BER_TS_OID)),
    )
    user_data = ber(0x61, ber(0x30, ber(0x02, b"\x01") + ber(0xA0, aare)))
    cpa = ber(0x31, ber(0xA0, ber(0x80, b"\x01")) + ber(0xA2, ber(0x83, be32(1)) + results + user_data))
    spdu = (
        ses_param(0x05, ses_param(0x13, b"\x00") + ses_param(0x16, b"\x02"))
        + ses_param(0x14, b"\x00\x02")
        + ses_param(0xC1, cpa)
    )
    return b"\x0e" + (u8(len(spdu)) if len(spdu) < 255 else b"\xff" + be16(len(spdu))) + spdu


# ---- ADS / AMS (Beckhoff; layout after Wireshark's plugins/epan/ethercat/packet-ams.c) ------

AMS_REQUEST, AMS_RESPONSE, AMS_UDP_FLAG = 0x0004, 0x0005, 0x0040


def netid(s: str) -> bytes:
    return bytes(int(x) for x in s.split("."))


def ams(
    target: tuple[str, int], source: tuple[str, int], cmd: int, flags: int, data: bytes, invoke: int, error: int = 0
) -> bytes:
    """32-byte AMS header (little-endian) + ADS data."""
    return (
        netid(target[0])
        + le16(target[1])
        + netid(source[0])
        + le16(source[1])
        + le16(cmd)
        + le16(flags)
        + le32(len(data))
        + le32(error)
        + le32(invoke)
        + data
    )


def ams_tcp(*packets: bytes) -> bytes:
    """AMS/TCP: 2 reserved bytes + 4-byte little-endian length before each AMS packet."""
    return b"".join(b"\x00\x00" + le32(len(p)) + p for p in packets)


def filetime(offset_ms: float) -> bytes:
    # 100 ns ticks since 1601-01-01 for the capture time (ADS notification stamps)
    unix = EPOCH_NS // 100 + int(offset_ms * 10_000)
    return struct.pack("<Q", unix + 116_444_736_000_000_000)


# ---- HTTP, TLS, DNS ---------------------------------------------------------------------------


def http_request(method: str, path: str, host: str, headers: list[tuple[str, str]] = (), body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"] + [f"{k}: {v}" for k, v in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def http_response(status: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def tls_record(ctype: int, body: bytes, version: int = 0x0303) -> bytes:
    return u8(ctype) + be16(version) + be16(len(body)) + body


def tls_handshake(htype: int, body: bytes) -> bytes:
    return u8(htype) + len(body).to_bytes(3, "big") + body


def tls_ext(etype: int, body: bytes) -> bytes:
    return be16(etype) + be16(len(body)) + body


def tls_client_hello(rng: random.Random, sni: str, session_id: bytes = b"") -> bytes:
    name = sni.encode()
    suites = [0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035]
    exts = (
        tls_ext(0x0000, be16(len(name) + 3) + b"\x00" + be16(len(name)) + name)
        + tls_ext(0x0017, b"")
        + tls_ext(0xFF01, b"\x00")
        + tls_ext(0x000A, be16(6) + be16(0x001D) + be16(0x0017) + be16(0x0018))
        + tls_ext(0x000B, b"\x01\x00")
        + tls_ext(0x000D, be16(12) + b"".join(be16(x) for x in (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501)))
    )
    body = (
        be16(0x0303)
        + rng.randbytes(32)
        + u8(len(session_id))
        + session_id
        + be16(2 * len(suites))
        + b"".join(be16(s) for s in suites)
        + b"\x01\x00"
        + be16(len(exts))
        + exts
    )
    return tls_record(22, tls_handshake(1, body), version=0x0301)


def tls_server_hello(rng: random.Random, session_id: bytes, *, done: bool = False) -> bytes:
    exts = tls_ext(0xFF01, b"\x00") + tls_ext(0x0017, b"") + tls_ext(0x000B, b"\x01\x00")
    body = (
        be16(0x0303)
        + rng.randbytes(32)
        + u8(len(session_id))
        + session_id
        + be16(0xC02F)
        + b"\x00"
        + be16(len(exts))
        + exts
    )
    msgs = tls_handshake(2, body) + (tls_handshake(14, b"") if done else b"")
    return tls_record(22, msgs)


def tls_resumed_session(flow: TcpFlow, rng: random.Random, sni: str, app: list[tuple[bool, int]]):
    """An abbreviated (session-resumption) TLS 1.2 handshake, then opaque application data."""
    sid = rng.randbytes(32)
    flow.c(tls_client_hello(rng, sni, sid), after_ms=0.4)
    flow.s(tls_server_hello(rng, sid) + tls_record(20, b"\x01") + tls_record(22, rng.randbytes(40)), after_ms=3.0)
    flow.c(tls_record(20, b"\x01") + tls_record(22, rng.randbytes(40)), after_ms=0.8)
    for from_client, size in app:
        flow.send(from_client, tls_record(23, rng.randbytes(size)), after_ms=2.0 if from_client else 6.0)
    flow.c(tls_record(21, rng.randbytes(26)), after_ms=1.0)


def dns_query(qid: int, name: str) -> bytes:
    return bytes(DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype="A")))


def dns_answer(qid: int, name: str, addr: str) -> bytes:
    return bytes(
        DNS(
            id=qid,
            qr=1,
            aa=1,
            rd=1,
            ra=1,
            qd=DNSQR(qname=name, qtype="A"),
            an=DNSRR(rrname=name, type="A", ttl=1200, rdata=addr),
        )
    )


# --------------------------------------------------------------------------------------------
# 1. Modbus/TCP
# --------------------------------------------------------------------------------------------


def build_modbus() -> None:
    cap = Capture(seed=101)
    hmi = Host("hmi-1", "18:db:f2:4a:10:0a", "192.168.10.10", ttl=128, windows=True)
    scada = Host("scada-1", "3c:d9:2b:6e:11:0b", "192.168.10.11", ttl=128, windows=True)
    es = Host("eng-ws", "f8:bc:12:5e:30:1e", "192.168.10.30", ttl=128, windows=True)
    plc_a = Host("m340-a", "00:80:f4:0a:15:21", "192.168.10.21")
    plc_b = Host("m340-b", "00:80:f4:0a:16:22", "192.168.10.22")

    # HMI -> PLC A: read/write functions 1-6, 15, 16 with the TCP corner cases
    f = TcpFlow(cap, hmi, plc_a, 49817, 502).open()
    f.c(mbap(1, b"\x01" + be16(0) + be16(16)))
    f.s(mbap(1, b"\x01\x02\xcd\x01"))
    f.c(mbap(2, b"\x02" + be16(0) + be16(8)), after_ms=40)
    f.s(mbap(2, b"\x02\x01\xac"))
    f.c(mbap(3, b"\x03" + be16(0) + be16(10)), after_ms=40)
    f.s(mbap(3, b"\x03" + mb_regs(range(100, 110))))
    f.c(mbap(4, b"\x04" + be16(0) + be16(4)), after_ms=40)
    f.s(mbap(4, b"\x04" + mb_regs([2150, 2160, 187, 0])))
    f.c(mbap(5, b"\x05" + be16(12) + be16(0xFF00)), after_ms=40)
    f.s(mbap(5, b"\x05" + be16(12) + be16(0xFF00)))
    f.c(mbap(6, b"\x06" + be16(100) + be16(1234)), after_ms=40)
    f.retransmit(after_ms=310)  # same seq, same bytes: the first copy got no answer in time
    f.s(mbap(6, b"\x06" + be16(100) + be16(1234)), after_ms=1.5)
    # three requests in one segment, three answers
    f.c(
        mbap(7, b"\x03" + be16(10) + be16(2))
        + mbap(8, b"\x04" + be16(4) + be16(2))
        + mbap(9, b"\x01" + be16(16) + be16(8)),
        after_ms=40,
    )
    f.s(mbap(7, b"\x03" + mb_regs([7, 8])))
    f.s(mbap(8, b"\x04" + mb_regs([55, 56])), after_ms=0.3)
    f.s(mbap(9, b"\x01\x01\x5a"), after_ms=0.3)
    f.c(mbap(10, b"\x0f" + be16(20) + be16(10) + b"\x02\xcd\x01"), after_ms=40)
    f.s(mbap(10, b"\x0f" + be16(20) + be16(10)))
    # one request split across two segments (MBAP header + function code, then the rest)
    req = mbap(11, b"\x10" + be16(200) + be16(4) + b"\x08" + be16(1) + be16(2) + be16(3) + be16(4))
    f.c(req[:8], after_ms=40)
    f.c(req[8:], after_ms=0.5)
    f.s(mbap(11, b"\x10" + be16(200) + be16(4)))
    f.ack(True, after_ms=200)
    f.close()

    # SCADA -> PLC B: diagnostics, file records, FIFO, an exception and an unknown code
    cap.wait(120)
    f = TcpFlow(cap, scada, plc_b, 50211, 502).open()
    exchanges = [
        (b"\x07", b"\x07\x6d"),
        (b"\x08" + be16(0x0000) + be16(0xA537), b"\x08" + be16(0x0000) + be16(0xA537)),
        (b"\x0b", b"\x0b" + be16(0x0000) + be16(0x0108)),
        (b"\x0c", b"\x0c\x08" + be16(0x0000) + be16(0x0108) + be16(0x0121) + b"\x20\x00"),
        (b"\x11", b"\x11\x08\x01\xff" + b"M340-B"),
        # read file record: one sub-request (ref type 6, file 4, record 1, 2 registers)
        (b"\x14\x07\x06" + be16(4) + be16(1) + be16(2), b"\x14\x06\x05\x06" + be16(0x0DFE) + be16(0x0020)),
        # write file record: echo of the request
        (
            b"\x15\x0b\x06" + be16(4) + be16(7) + be16(2) + be16(0x06AF) + be16(0x04BE),
            b"\x15\x0b\x06" + be16(4) + be16(7) + be16(2) + be16(0x06AF) + be16(0x04BE),
        ),
        (b"\x16" + be16(4) + be16(0x00F2) + be16(0x0025), b"\x16" + be16(4) + be16(0x00F2) + be16(0x0025)),
        (
            b"\x17" + be16(3) + be16(3) + be16(14) + be16(2) + b"\x04" + be16(0x00FF) + be16(0x00FE),
            b"\x17" + mb_regs([0x00FE, 0x0ACD, 0x0001]),
        ),
        (b"\x18" + be16(0x04DE), b"\x18" + be16(6) + be16(2) + be16(0x01B8) + be16(0x1284)),
        (b"\x03" + be16(9999) + be16(4), b"\x83\x02"),  # exception: illegal data address
        (b"\x41" + be16(0x0001), b"\xc1\x01"),  # function 65: illegal function
    ]
    for i, (req_pdu, resp_pdu) in enumerate(exchanges, start=0x21):
        f.c(mbap(i, req_pdu), after_ms=60)
        f.s(mbap(i, resp_pdu))
    f.ack(True, after_ms=200)
    f.close()

    # Engineering station -> PLC A: device identification and a Unity (FC 90) request
    cap.wait(200)
    f = TcpFlow(cap, es, plc_a, 51002, 502).open()
    f.c(mbap(0x0101, b"\x2b\x0e\x01\x00", unit=0xFF))
    f.s(mbap(0x0101, mb_dev_id_response([(0, "Schneider Electric"), (1, "BMX P34 2020"), (2, "v2.1")]), unit=0xFF))
    f.c(mbap(0x0102, b"\x5a\x00\x02", unit=0xFF), after_ms=30)
    f.s(mbap(0x0102, b"\x5a\x00\xfe" + bytes.fromhex("0c0103000000250001"), unit=0xFF))
    f.ack(True, after_ms=200)
    f.close()
    write("modbus.pcap", cap.pcap())


def build_modbus_midstream() -> None:
    """Starts in the middle of a Modbus/TCP connection: no SYN, first frame is a response."""
    cap = Capture(seed=102)
    hmi = Host("hmi-2", "b8:ca:3a:71:12:0c", "192.168.10.12", ttl=128, windows=True)
    plc_b = Host("m340-b", "00:80:f4:0a:16:22", "192.168.10.22")
    f = TcpFlow(cap, hmi, plc_b, 51544, 502, isn_c=0x5E1A2B3C, isn_s=0x0F00BA12)
    tid = 0x0310
    f.s(mbap(tid, b"\x03" + mb_regs([410, 411, 412, 413])), after_ms=0)
    f.ack(True, after_ms=180)
    for i in range(1, 6):
        f.c(mbap(tid + i, b"\x03" + be16(0) + be16(4)), after_ms=820)
        f.s(mbap(tid + i, b"\x03" + mb_regs([410 + i, 411 + i, 412, 413])))
        f.ack(True, after_ms=180)
    write("modbus_midstream.pcap", cap.pcap())


# --------------------------------------------------------------------------------------------
# 2. Not Modbus on 502
# --------------------------------------------------------------------------------------------


def build_not_modbus() -> None:
    cap = Capture(seed=201)
    rng = cap.rng
    client = Host("sec-client", "00:26:55:3a:40:28", "192.168.10.40", ttl=128, windows=True)
    scanner = Host("laptop", "00:1e:c9:77:41:29", "192.168.10.41", ttl=128, windows=True)
    m580 = Host("m580", "00:80:f4:0a:17:23", "192.168.10.23")

    f = TcpFlow(cap, client, m580, 52301, 502).open()
    f.c(tls_client_hello(rng, "m580.plant.local"))
    f.s(tls_server_hello(rng, rng.randbytes(32), done=True), after_ms=4.0)
    f.reset(True, after_ms=1.0)

    cap.wait(500)
    f = TcpFlow(cap, scanner, m580, 52402, 502).open()
    junk = bytearray(rng.randbytes(48))
    junk[2:4] = b"\x7f\x3e"  # never a zero MBAP protocol identifier
    f.c(bytes(junk))
    junk = bytearray(rng.randbytes(21))
    junk[2:4] = b"\x9a\x01"
    f.s(bytes(junk), after_ms=3)
    f.close(True, after_ms=30)
    write("not_modbus_502.pcap", cap.pcap())


# --------------------------------------------------------------------------------------------
# 3. S7comm
# --------------------------------------------------------------------------------------------

S7_BLOCK_COUNTS = [("08", 4), ("0E", 12), ("0C", 31), ("0A", 18), ("0B", 9), ("0D", 74), ("0F", 28)]


def build_s7comm() -> None:
    cap = Capture(seed=301)
    hmi = Host("hmi-s7", "00:21:5a:5c:20:0a", "192.168.20.10", ttl=128, windows=True)
    es = Host("eng-ws", "f8:bc:12:5e:20:1e", "192.168.20.30", ttl=128, windows=True)
    plc = Host("s7-315", "00:1b:1b:3c:41:29", "192.168.20.41", ttl=30)

    # --- HMI session: setup, read/write var, SZL, clock, a fragmented PDU, two TPKTs/segment
    f = TcpFlow(cap, hmi, plc, 49990, 102).open()
    f.c(cotp_cr(0x0001, b"\x01\x00", b"\x01\x02"))
    f.s(cotp_cc(0x0001, 0x4431, b"\x01\x00", b"\x01\x02"))
    f.c(cotp_dt(s7_job(0x0100, S7_SETUP)))
    f.s(cotp_dt(s7_ack_data(0x0100, S7_SETUP_ACK)))
    f.c(cotp_dt(s7_read_var(0x0200, [s7_any(0x84, 1, 0, 10)])))
    f.s(cotp_dt(s7_read_var_ack(0x0200, [bytes(range(0x10, 0x1A))])))
    f.c(cotp_dt(s7_write_var(0x0300, s7_any(0x84, 1, 10, 2), b"\x01\xf4")))
    f.s(cotp_dt(s7_write_var_ack(0x0300)))
    f.c(cotp_dt(s7_userdata(0x0400, s7_ud_request(4, 0x01, 0), s7_ud_data(be16(0x0011) + be16(0x0000)))))
    f.s(
        cotp_dt(
            s7_userdata(
                0x0400, s7_ud_response(4, 0x01, 1), s7_ud_data(s7_szl_0011("6ES7 315-2EH14-0AB0", (5, 1), (3, 2, 6)))
            )
        )
    )
    f.c(cotp_dt(s7_userdata(0x0500, s7_ud_request(7, 0x01, 0), s7_ud_data(b"", ok=False))))
    f.s(cotp_dt(s7_userdata(0x0500, s7_ud_response(7, 0x01, 2), s7_ud_data(s7_timestamp(2026, 1, 5, 8, 0, 1, 253, 2)))))
    # one S7 PDU (a 3-item Read Var) split across two COTP DT fragments, EOT=0 then EOT=1
    pdu = s7_read_var(0x0600, [s7_any(0x84, 1, 0, 4), s7_any(0x84, 2, 0, 4), s7_any(0x83, 0, 0, 2)])
    f.c(cotp_dt(pdu[:20], eot=False))
    f.c(cotp_dt(pdu[20:], eot=True), after_ms=0.2)
    f.s(cotp_dt(s7_read_var_ack(0x0600, [b"\x00\x00\x01\x2c", b"\x42\x48\x00\x00", b"\x80\x01"])))
    # two TPKTs in one TCP segment (Read Var + Read clock), answered separately
    f.c(
        cotp_dt(s7_read_var(0x0700, [s7_any(0x82, 0, 0, 2)]))
        + cotp_dt(s7_userdata(0x0800, s7_ud_request(7, 0x01, 0), s7_ud_data(b"", ok=False)))
    )
    f.s(cotp_dt(s7_read_var_ack(0x0700, [b"\x00\x05"])))
    f.s(
        cotp_dt(s7_userdata(0x0800, s7_ud_response(7, 0x01, 3), s7_ud_data(s7_timestamp(2026, 1, 5, 8, 0, 2, 7, 2)))),
        after_ms=0.5,
    )
    f.ack(True, after_ms=200)
    f.close()

    # --- Engineering session: list blocks, upload OB1, stop, download DB1, insert, restart
    cap.wait(300)
    f = TcpFlow(cap, es, plc, 50312, 102).open()
    f.c(cotp_cr(0x0002, b"\x01\x00", b"\x01\x02"))
    f.s(cotp_cc(0x0002, 0x4432, b"\x01\x00", b"\x01\x02"))
    f.c(cotp_dt(s7_job(0x0001, S7_SETUP)))
    f.s(cotp_dt(s7_ack_data(0x0001, S7_SETUP_ACK)))
    f.c(cotp_dt(s7_userdata(0x0002, s7_ud_request(3, 0x01, 0), s7_ud_data(b"", ok=False))))
    blocks = b"".join(t.encode() + be16(n) for t, n in S7_BLOCK_COUNTS)
    f.s(cotp_dt(s7_userdata(0x0002, s7_ud_response(3, 0x01, 4), s7_ud_data(blocks))))
    # upload OB1 from the active filesystem
    ob1 = s7_block_name("08", 1, "A")
    upload_id = 7
    body = bytes(random.Random(7).randbytes(60))
    f.c(cotp_dt(s7_job(0x0003, b"\x1d\x00\x00\x00\x00\x00\x00\x00" + u8(len(ob1)) + ob1)))
    f.s(cotp_dt(s7_ack_data(0x0003, b"\x1d\x00\x01\x00" + be32(upload_id) + b"\x07" + b"%07d" % (len(body) + 36))))
    f.c(cotp_dt(s7_job(0x0004, b"\x1e\x00\x00\x00" + be32(upload_id))))
    f.s(cotp_dt(s7_ack_data(0x0004, b"\x1e\x01", be16(36) + b"\x00\xfb" + b"pp" + bytes(34))))
    f.c(cotp_dt(s7_job(0x0005, b"\x1e\x00\x00\x00" + be32(upload_id))))
    f.s(cotp_dt(s7_ack_data(0x0005, b"\x1e\x00", be16(len(body)) + b"\x00\xfb" + body)))
    f.c(cotp_dt(s7_job(0x0006, b"\x1f\x00\x00\x00" + be32(upload_id))))
    f.s(cotp_dt(s7_ack_data(0x0006, b"\x1f")))
    # PLC stop
    f.c(cotp_dt(s7_job(0x0007, b"\x29\x00\x00\x00\x00\x00\x09P_PROGRAM")), after_ms=800)
    f.s(cotp_dt(s7_ack_data(0x0007, b"\x29")), after_ms=40)
    # download DB1 (passive filesystem): request download, the PLC pulls the block, ended
    db1 = s7_block_name("0A", 1, "P")
    f.c(
        cotp_dt(
            s7_job(
                0x0008,
                b"\x1a\x00\x01\x00\x00\x00\x00\x00" + u8(len(db1)) + db1 + b"\x0d" + b"1" + b"000116" + b"000020",
            )
        )
    )
    f.s(cotp_dt(s7_ack_data(0x0008, b"\x1a")))
    db_body = b"pp\x01\x01\x05\x0a\x00\x01" + bytes(random.Random(8).randbytes(108))
    f.s(cotp_dt(s7_job(0x0100, b"\x1b\x00\x01\x00\x00\x00\x00\x00" + u8(len(db1)) + db1)), after_ms=1)
    f.c(cotp_dt(s7_ack_data(0x0100, b"\x1b\x00", be16(len(db_body)) + b"\x00\xfb" + db_body)))
    f.s(cotp_dt(s7_job(0x0101, b"\x1c\x00\x00\x00\x00\x00\x00\x00" + u8(len(db1)) + db1)), after_ms=3)
    f.c(cotp_dt(s7_ack_data(0x0101, b"\x1c")))
    # PI service _INSE (activate DB1 in the passive filesystem), then P_PROGRAM (warm restart)
    inse = b"\x01\x00" + b"0A00001P"
    f.c(
        cotp_dt(s7_job(0x0009, b"\x28\x00\x00\x00\x00\x00\x00\xfd" + be16(len(inse)) + inse + b"\x05_INSE")), after_ms=5
    )
    f.s(cotp_dt(s7_ack_data(0x0009, b"\x28")), after_ms=20)
    f.c(cotp_dt(s7_job(0x000A, b"\x28\x00\x00\x00\x00\x00\x00\xfd\x00\x00\x09P_PROGRAM")), after_ms=5)
    f.s(cotp_dt(s7_ack_data(0x000A, b"\x28")), after_ms=60)
    f.ack(True, after_ms=200)
    f.close()
    write("s7comm.pcap", cap.pcap())


# --------------------------------------------------------------------------------------------
# 4. S7comm-plus (V1, no integrity part)
# --------------------------------------------------------------------------------------------


def build_s7comm_plus() -> None:
    cap = Capture(seed=401)
    hmi = Host("tia-hmi", "18:db:f2:4a:20:1f", "192.168.20.31", ttl=128, windows=True)
    plc = Host("s7-1214", "28:63:36:a1:42:2a", "192.168.20.42")
    session = 0x000003A0
    version = "1;6ES7 214-1AG40-0XB0 ;V4.5"

    f = TcpFlow(cap, hmi, plc, 50533, 102).open()
    f.c(cotp_cr(0x0005, b"\x06\x00", b"SIMATIC-ROOT-HMI"))
    f.s(cotp_cc(0x0005, 0x0021, b"\x06\x00", b"SIMATIC-ROOT-HMI"))
    # CreateObject: request id 285, UDInt 0, 4 zero bytes, object (RID 0x121, class 287)
    create = (
        be32(285)
        + b"\x00\x04"
        + vlq(0)
        + be32(0)
        + b"\xa1"
        + be32(0x121)
        + vlq(287)
        + vlq(0)
        + vlq(0)
        + b"\xa3"
        + vlq(233)
        + s7p_wstring("HMI_RT_1::S7-1200 station_1")
        + b"\xa2"
        + be32(0)
    )
    f.c(cotp_dt(s7p_frame(s7p_request(S7P_CREATEOBJECT, 1, 0x120, create, transport=0x36))))
    created = (
        vlq(0)
        + b"\x01"
        + vlq(session)
        + b"\xa1"
        + be32(0x121)
        + vlq(287)
        + vlq(0)
        + vlq(0)
        + b"\xa3"
        + vlq(306)
        + s7p_wstring(version)
        + b"\xa2"
        + be32(0)
    )
    f.s(cotp_dt(s7p_frame(s7p_response(S7P_CREATEOBJECT, 1, created))))
    # SetVariable: write the ServerSessionVersion (306) back into the session object
    setvar = be32(session) + vlq(1) + vlq(306) + s7p_wstring(version) + S7P_OBJECT_QUALIFIER + b"\x00"
    f.c(cotp_dt(s7p_frame(s7p_request(S7P_SETVARIABLE, 2, session, setvar))), after_ms=3)
    f.s(cotp_dt(s7p_frame(s7p_response(S7P_SETVARIABLE, 2, vlq(0) + be32(0)))))
    # Explore the data block area DB1 (0x8a0e0001), one id
    explore = be32(0x8A0E0001) + vlq(0) + b"\x01\x01\x00" + b"\x00\x01" + vlq(2521)
    f.c(cotp_dt(s7p_frame(s7p_request(S7P_EXPLORE, 3, session, explore))), after_ms=5)
    explored = (
        vlq(0)
        + be32(0x8A0E0001)
        + b"\xa1"
        + be32(0x8A0E0001)
        + vlq(2521)
        + vlq(0)
        + vlq(0)
        + b"\xa3"
        + vlq(2521)
        + b"\x00\x03"
        + be16(1)
        + b"\xa2"
        + be32(0)
    )
    f.s(cotp_dt(s7p_frame(s7p_response(S7P_EXPLORE, 3, explored))))
    # GetMultiVariables: one symbolic address (CRC, DB1 area, LID depth 2, base 0x9f6, LID 10)
    address = vlq(0x5C1E7A33) + vlq(0x8A0E0001) + vlq(2) + vlq(0x9F6) + vlq(10)
    getmv = be32(0) + vlq(1) + vlq(5) + address + S7P_OBJECT_QUALIFIER
    f.c(cotp_dt(s7p_frame(s7p_request(S7P_GETMULTIVARIABLES, 4, session, getmv))), after_ms=50)
    values = vlq(0) + vlq(1) + b"\x00\x08" + vlq(1234) + b"\x00" + b"\x00" + be32(0)
    f.s(cotp_dt(s7p_frame(s7p_response(S7P_GETMULTIVARIABLES, 4, values))))
    # DeleteObject: end the session
    f.c(
        cotp_dt(s7p_frame(s7p_request(S7P_DELETEOBJECT, 5, session, be32(session) + S7P_OBJECT_QUALIFIER))),
        after_ms=100,
    )
    f.s(cotp_dt(s7p_frame(s7p_response(S7P_DELETEOBJECT, 5, vlq(0) + be32(session) + be32(0)))))
    f.ack(True, after_ms=200)
    f.close()
    write("s7comm_plus.pcap", cap.pcap())


# --------------------------------------------------------------------------------------------
# 5. MMS (IEC 61850) over COTP on 102
# --------------------------------------------------------------------------------------------


def build_mms() -> None:
    cap = Capture(seed=501)
    gw = Host("scada-gw", "f4:ce:46:30:10:0a", "192.168.30.10", ttl=128, windows=True)
    ied = Host("sel-751", "00:30:a7:1e:51:33", "192.168.30.51")
    f = TcpFlow(cap, gw, ied, 49321, 102).open()
    f.c(cotp_cr(0x0001, b"\x00\x01", b"\x00\x01"))
    f.s(cotp_cc(0x0001, 0x0001, b"\x00\x01", b"\x00\x01"))
    f.c(cotp_dt(mms_initiate_request()))
    f.s(cotp_dt(mms_initiate_response()), after_ms=12)
    f.ack(True, after_ms=200)
    f.close()
    write("mms_iec61850.pcap", cap.pcap())


# --------------------------------------------------------------------------------------------
# 6. ADS / AMS
# --------------------------------------------------------------------------------------------


def build_ads() -> None:
    cap = Capture(seed=601)
    hmi = Host("twincat-hmi", "18:db:f2:4a:40:0a", "192.168.40.10", ttl=128, windows=True)
    cx = Host("cx5140", "00:01:05:2c:61:3d", "192.168.40.61", ttl=128)
    me = ("192.168.40.10.1.1", 32905)
    plc = ("5.12.34.56.1.1", 851)

    def req(cmd, data, invoke):
        return ams(plc, me, cmd, AMS_REQUEST, data, invoke)

    def res(cmd, data, invoke, error=0):
        return ams(me, plc, cmd, AMS_RESPONSE, data, invoke, error)

    name = b"Plc30 App".ljust(16, b"\0")
    f = TcpFlow(cap, hmi, cx, 50612, 48898).open()
    f.c(ams_tcp(req(1, b"", 1)))
    f.s(ams_tcp(res(1, le32(0) + bytes([3, 1]) + le16(4024) + name, 1)))
    f.c(ams_tcp(req(4, b"", 2)), after_ms=10)
    f.s(ams_tcp(res(4, le32(0) + le16(5) + le16(0), 2)))  # ADSSTATE_RUN
    f.c(ams_tcp(req(2, le32(0x4020) + le32(0) + le32(4), 3)), after_ms=10)
    f.s(ams_tcp(res(2, le32(0) + le32(4) + le32(1500), 3)))
    f.c(ams_tcp(req(3, le32(0x4020) + le32(4) + le32(2) + le16(77), 4)), after_ms=10)
    f.s(ams_tcp(res(3, le32(0), 4)))
    # read/write: get a symbol handle by name
    sym = b"MAIN.bStart\0"
    f.c(ams_tcp(req(9, le32(0xF003) + le32(0) + le32(4) + le32(len(sym)) + sym, 5)), after_ms=10)
    f.s(ams_tcp(res(9, le32(0) + le32(4) + le32(0x3A000001), 5)))
    f.c(
        ams_tcp(req(6, le32(0xF005) + le32(0x3A000001) + le32(1) + le32(4) + le32(100) + le32(100) + bytes(16), 6)),
        after_ms=10,
    )
    f.s(ams_tcp(res(6, le32(0) + le32(0x0000A12F), 6)))
    # device notification: the PLC pushes a stamped sample to the client (no response)
    sample = le32(0x0000A12F) + le32(1) + b"\x01"
    stamp = filetime(180) + le32(1) + sample
    f.s(ams_tcp(ams(me, plc, 8, AMS_REQUEST, le32(len(stamp) + 4) + le32(1) + stamp, 0)), after_ms=100)
    f.c(ams_tcp(req(7, le32(0x0000A12F), 7)), after_ms=60)
    f.s(ams_tcp(res(7, le32(0), 7)))
    # write control: ADSSTATE_STOP (6)
    f.c(ams_tcp(req(5, le16(6) + le16(0) + le32(0), 8)), after_ms=10)
    f.s(ams_tcp(res(5, le32(0), 8)))
    # an unknown command id (42): the router answers "service not supported" (0x701)
    f.c(ams_tcp(req(42, le32(0xDEADBEEF), 9)), after_ms=10)
    f.s(ams_tcp(res(42, le32(0x701), 9)))
    # two AMS packets in one segment: Read State + Read, answered in one segment too
    f.c(ams_tcp(req(4, b"", 10), req(2, le32(0x4020) + le32(0) + le32(2), 11)), after_ms=10)
    f.s(ams_tcp(res(4, le32(0) + le16(6) + le16(0), 10), res(2, le32(0) + le32(2) + le16(1500), 11)))
    f.ack(True, after_ms=200)
    f.close()

    # AMS/UDP 48899: the AMS header directly (no AMS/TCP prefix), UDP flag in the state flags
    cap.wait(400)
    udp(cap, hmi, cx, 50613, 48899, ams(plc, me, 1, AMS_REQUEST | AMS_UDP_FLAG, b"", 12))
    udp(
        cap,
        cx,
        hmi,
        48899,
        50613,
        ams(me, plc, 1, AMS_RESPONSE | AMS_UDP_FLAG, le32(0) + bytes([3, 1]) + le16(4024) + name, 12),
        after_ms=1.2,
    )
    write("ads_ams.pcap", cap.pcap())


# --------------------------------------------------------------------------------------------
# 7. HTTP
# --------------------------------------------------------------------------------------------

BROWSER_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
BOA = [("Server", "Boa/0.94.14rc21"), ("Date", "Mon, 05 Jan 2026 08:00:01 GMT"), ("Connection", "keep-alive")]


def build_http() -> None:
    cap = Capture(seed=701)
    es = Host("eng-ws", "f8:bc:12:5e:50:1e", "192.168.50.30", ttl=128, windows=True)
    plc_web = Host("l32e-web", "00:1d:9c:4b:71:47", "192.168.50.71")
    gw = Host("gateway", "00:00:bc:5d:72:48", "192.168.50.72")
    hist = Host("historian", "00:26:55:3a:80:50", "192.168.50.80", ttl=128, windows=True)
    ua = [
        ("User-Agent", BROWSER_UA),
        ("Accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
        ("Accept-Language", "en-US,en;q=0.9"),
    ]

    f = TcpFlow(cap, es, plc_web, 52001, 80).open()
    f.c(http_request("GET", "/", "192.168.50.71", ua))
    page = b"<html><head><title>PLC Web Server</title></head><body>RUN</body></html>\n"
    f.s(http_response("200 OK", BOA + [("Content-Type", "text/html")], page), after_ms=8)
    form = b"user=operator&password=op%2Fplant&submit=Login"
    f.c(
        http_request(
            "POST", "/goform/login", "192.168.50.71", ua + [("Content-Type", "application/x-www-form-urlencoded")], form
        ),
        after_ms=900,
    )
    f.s(http_response("302 Found", BOA + [("Location", "/index.htm")], b""), after_ms=12)
    # a pipelined pair in one segment, answered one by one
    f.c(
        http_request("GET", "/status.json", "192.168.50.71", ua)
        + http_request("GET", "/alarms.json", "192.168.50.71", ua),
        after_ms=400,
    )
    f.s(
        http_response("200 OK", BOA + [("Content-Type", "application/json")], b'{"mode":"RUN","cpu":"L32E"}'),
        after_ms=6,
    )
    f.s(http_response("200 OK", BOA + [("Content-Type", "application/json")], b'{"alarms":[]}'), after_ms=3)
    f.ack(True, after_ms=200)
    f.close()

    # headers split across two segments (a new connection)
    cap.wait(300)
    f = TcpFlow(cap, es, plc_web, 52002, 80).open()
    req = http_request("GET", "/diag/ethernet.htm", "192.168.50.71", ua)
    cut = req.index(b"\r\nAccept:") + 5
    f.c(req[:cut])
    f.c(req[cut:], after_ms=0.4)
    f.s(
        http_response("200 OK", BOA + [("Content-Type", "text/html")], b"<html><body>Ethernet OK</body></html>\n"),
        after_ms=9,
    )
    f.ack(True, after_ms=200)
    f.close()

    # non-standard ports: a historian web API on 8000, a gateway's HTTP service on 10502
    cap.wait(300)
    f = TcpFlow(cap, es, hist, 52003, 8000).open()
    f.c(
        http_request(
            "GET",
            "/api/v1/tags?limit=10",
            "192.168.50.80:8000",
            [("User-Agent", "python-requests/2.31.0"), ("Accept", "*/*")],
        )
    )
    f.s(
        http_response(
            "200 OK", [("Server", "Werkzeug/3.0.1 Python/3.11.7"), ("Content-Type", "application/json")], b'{"tags":[]}'
        ),
        after_ms=15,
    )
    f.ack(True, after_ms=200)
    f.close()
    cap.wait(300)
    f = TcpFlow(cap, es, gw, 52004, 10502).open()
    f.c(
        http_request("GET", "/cgi-bin/status", "192.168.50.72:10502", [("User-Agent", "curl/8.4.0"), ("Accept", "*/*")])
    )
    f.s(
        http_response("200 OK", [("Server", "lighttpd/1.4.59"), ("Content-Type", "text/plain")], b"link=up\n"),
        after_ms=5,
    )
    f.ack(True, after_ms=200)
    f.close()
    write("http.pcap", cap.pcap())


# --------------------------------------------------------------------------------------------
# 8. Encapsulations
# --------------------------------------------------------------------------------------------


def ip_fragmented(first_len: int):
    """l2: Ethernet, and every IPv4 packet with TCP payload from the client split in 2 fragments."""

    def link(src: Host, dst: Host, pkt: Packet) -> list[bytes]:
        if not (pkt.haslayer(Raw) and src.ip.endswith(".10")):
            return ethernet(src, dst, pkt)
        whole = bytes(pkt)
        ihl = (whole[0] & 0x0F) * 4
        body = whole[ihl:]
        hdr = dict(src=pkt.src, dst=pkt.dst, ttl=pkt.ttl, id=pkt.id, proto=6)
        frag1 = IP(flags="MF", frag=0, **hdr) / Raw(body[:first_len])
        frag2 = IP(flags=0, frag=first_len // 8, **hdr) / Raw(body[first_len:])
        return ethernet(src, dst, frag1) + ethernet(src, dst, frag2)

    return link


def ipv6_fragmented(first_len: int, ident: int):
    def link(src: Host, dst: Host, pkt: Packet) -> list[bytes]:
        if not (pkt.haslayer(Raw) and src.ip.endswith("::10")):
            return ethernet(src, dst, pkt)
        body = bytes(pkt)[40:]  # TCP with its checksum over the IPv6 pseudo header
        frames = []
        for off, chunk, more in ((0, body[:first_len], 1), (first_len, body[first_len:], 0)):
            fh = bytes([6, 0]) + be16((off // 8) << 3 | more) + be32(ident)
            frag = IPv6(src=pkt.src, dst=pkt.dst, hlim=pkt.hlim, nh=44) / Raw(fh + chunk)
            frames += ethernet(src, dst, frag)
        return frames

    return link


def small_modbus(f: TcpFlow, tid: int, write_regs: int = 0) -> None:
    f.open()
    if write_regs:
        regs = list(range(1, write_regs + 1))
        f.c(mbap(tid, b"\x10" + be16(300) + be16(len(regs)) + u8(2 * len(regs)) + b"".join(be16(r) for r in regs)))
        f.s(mbap(tid, b"\x10" + be16(300) + be16(len(regs))))
    else:
        f.c(mbap(tid, b"\x03" + be16(0) + be16(2)))
        f.s(mbap(tid, b"\x03" + mb_regs([tid, 42])))
    f.ack(True, after_ms=200)
    f.close()


def build_encapsulations() -> None:
    cap = Capture(seed=801)

    def pair(n: int, v6_prefix: str | None = None):
        if v6_prefix:
            c = Host(f"client-{n}", f"18:db:f2:4a:8{n}:10", f"{v6_prefix}::10", ttl=64)
            s = Host(f"plc-{n}", f"00:80:f4:0a:8{n}:21", f"{v6_prefix}::21")
        else:
            c = Host(f"client-{n}", f"18:db:f2:4a:8{n}:10", f"10.20.{n}.10", ttl=128, windows=True)
            s = Host(f"plc-{n}", f"00:80:f4:0a:8{n}:21", f"10.20.{n}.21")
        return c, s

    def vlan(src, dst, pkt):
        return [bytes(Ether(src=src.mac, dst=dst.mac) / Dot1Q(vlan=10, prio=5) / pkt)]

    def qinq(src, dst, pkt):
        return [bytes(Ether(src=src.mac, dst=dst.mac) / Dot1AD(vlan=100) / Dot1Q(vlan=20) / pkt)]

    def mpls1(src, dst, pkt):
        return [bytes(Ether(src=src.mac, dst=dst.mac, type=0x8847) / MPLS(label=16001, s=1, ttl=63) / pkt)]

    def mpls2(src, dst, pkt):
        return [
            bytes(
                Ether(src=src.mac, dst=dst.mac, type=0x8847)
                / MPLS(label=16002, s=0, ttl=63)
                / MPLS(label=24001, s=1, ttl=63)
                / pkt
            )
        ]

    def pppoe(src, dst, pkt):
        return [bytes(Ether(src=src.mac, dst=dst.mac) / PPPoE(sessionid=0x1A2B) / PPP(proto=0x0021) / pkt)]

    def with_record_route(cap_, src, dst, proto):
        rr = IPOption_RR(pointer=8, routers=["10.20.6.1", "0.0.0.0", "0.0.0.0", "0.0.0.0"])
        return IP(src=src.ip, dst=dst.ip, ttl=src.ttl, id=cap_.ip_id(src), flags="DF", options=[rr])

    def v6_options(cap_, src, dst, proto):
        return (
            IPv6(src=src.ip, dst=dst.ip, hlim=src.ttl)
            / IPv6ExtHdrHopByHop(options=[RouterAlert(value=0), PadN(optdata=b"")])
            / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00\x00\x00\x00")])
        )

    c, s = pair(1)
    small_modbus(TcpFlow(cap, c, s, 49201, 502, l2=vlan), 0x101)
    cap.wait(100)
    c, s = pair(2)
    small_modbus(TcpFlow(cap, c, s, 49202, 502, l2=qinq), 0x201)
    cap.wait(100)
    c, s = pair(3)
    small_modbus(TcpFlow(cap, c, s, 49203, 502, l2=mpls1), 0x301)
    cap.wait(100)
    c, s = pair(4)
    small_modbus(TcpFlow(cap, c, s, 49204, 502, l2=mpls2), 0x401)
    cap.wait(100)
    c, s = pair(5)  # PPPoE session carrying HTTP
    f = TcpFlow(cap, c, s, 49205, 80, l2=pppoe).open()
    f.c(http_request("GET", "/index.htm", "10.20.5.21", [("User-Agent", BROWSER_UA)]))
    f.s(http_response("200 OK", BOA + [("Content-Type", "text/html")], b"<html>ok</html>\n"))
    f.ack(True, after_ms=200)
    f.close()
    cap.wait(100)
    c, s = pair(6)
    small_modbus(TcpFlow(cap, c, s, 49206, 502, l3=with_record_route), 0x601)
    cap.wait(100)
    c, s = pair(7)  # the write request (20 registers) leaves in two IPv4 fragments
    small_modbus(TcpFlow(cap, c, s, 49207, 502, l2=ip_fragmented(32)), 0x701, write_regs=20)
    cap.wait(100)
    c, s = pair(8, "fd00:20:8")
    small_modbus(TcpFlow(cap, c, s, 49208, 502, l3=v6_options), 0x801)
    cap.wait(100)
    c, s = pair(9, "2001:db8:20:9")  # the write request leaves in two IPv6 fragments
    small_modbus(TcpFlow(cap, c, s, 49209, 502, l2=ipv6_fragmented(32, 0x5EED0009)), 0x901, write_regs=20)
    write("encapsulations.pcap", cap.pcap())


# --------------------------------------------------------------------------------------------
# 9. Link types and file formats (the same small Modbus exchange each time)
# --------------------------------------------------------------------------------------------

LT_CLIENT = Host("hmi-lt", "18:db:f2:4a:90:10", "10.30.0.10")
LT_PLC = Host("plc-lt", "00:80:f4:0a:90:21", "10.30.0.21")


def linktype_exchange(l2, client=LT_CLIENT, server=LT_PLC, sport=49300, cap=None, iface=0) -> Capture:
    cap = cap or Capture(seed=901)
    f = TcpFlow(cap, client, server, sport, 502, l2=l2, iface=iface, isn_c=0x1000, isn_s=0x2000)
    small_modbus(f, 0x0901)
    return cap


def build_linktypes() -> None:
    write("linktype_sll.pcap", linktype_exchange(linux_sll(LT_CLIENT)).pcap(LINKTYPE_LINUX_SLL))
    write("linktype_sll2.pcap", linktype_exchange(linux_sll2(LT_CLIENT)).pcap(LINKTYPE_LINUX_SLL2))
    write("linktype_null.pcap", linktype_exchange(bsd_null).pcap(LINKTYPE_NULL))
    write("linktype_raw.pcap", linktype_exchange(raw_ip).pcap(LINKTYPE_RAW))
    write("linktype_nflog.pcap", linktype_exchange(nflog(LT_CLIENT)).pcap(LINKTYPE_NFLOG))
    write("nanosecond.pcap", linktype_exchange(ethernet).pcap(nano=True))
    write("big_endian.pcap", linktype_exchange(ethernet).pcap(big_endian=True))
    write("gzip_modbus.pcap.gz", gzip_bytes(linktype_exchange(ethernet).pcap()))

    # pcapng: interface 0 is Ethernet (eth0), interface 1 is Linux cooked ("any")
    cap = Capture(seed=902)
    c2 = Host("hmi-lt2", "18:db:f2:4a:90:11", "10.30.0.11")
    s2 = Host("plc-lt2", "00:80:f4:0a:90:22", "10.30.0.22")
    linktype_exchange(ethernet, cap=cap, iface=0)
    cap.wait(50)
    linktype_exchange(linux_sll(c2), client=c2, server=s2, sport=49301, cap=cap, iface=1)
    write(
        "two_interfaces.pcapng", pcapng_bytes([(LINKTYPE_ETHERNET, "eth0"), (LINKTYPE_LINUX_SLL, "any")], cap.records)
    )


# --------------------------------------------------------------------------------------------
# 10. Bad input
# --------------------------------------------------------------------------------------------


def build_bad() -> None:
    good = linktype_exchange(ethernet).pcap()
    # cut in the middle of the 6th record's data (24-byte file header, 16-byte record headers)
    offset, n = 24, 0
    while n < 5:
        caplen = struct.unpack_from("<I", good, offset + 8)[0]
        offset += 16 + caplen
        n += 1
    write("bad/truncated.pcap", good[: offset + 16 + 30])
    write(
        "bad/not-a-capture.pcap",
        b"This is not a packet capture.\n"
        b"It is a text file that happens to be named .pcap; a reader must reject it cleanly.\n",
    )


# --------------------------------------------------------------------------------------------
# 11. A small plant for the demo: ~2 minutes
# --------------------------------------------------------------------------------------------


def build_plant() -> None:
    cap = Capture(seed=1101)
    rng = cap.rng
    hmi = Host("hmi-01", "18:db:f2:4a:00:0a", "10.10.0.10", ttl=128, windows=True)
    es = Host("eng-ws-01", "f8:bc:12:5e:00:14", "10.10.0.20", ttl=128, windows=True)
    dns = Host("dc-01", "b8:ca:3a:71:00:02", "10.10.0.2", ttl=128, windows=True)
    m340 = Host("m340-line1", "00:80:f4:0a:00:65", "10.10.0.101")
    s7 = Host("s7-315-line2", "00:1b:1b:3c:00:6f", "10.10.0.111", ttl=30)
    cx = Host("cx5140-line3", "00:01:05:2c:00:79", "10.10.0.121", ttl=128)
    # the historian sits behind the plant router: its frames carry the router's MAC
    historian = Host("historian", "00:1b:54:c2:01:01", "10.10.1.50", ttl=127, windows=True)

    duration_ms = 120_000
    events: list[tuple[float, int, object]] = []  # (time ms, order, callable)

    def at(t_ms: float, fn) -> None:
        events.append((t_ms, len(events), fn))

    # persistent polling connections, opened at the start
    mb = TcpFlow(cap, hmi, m340, 49731, 502)
    s7f = TcpFlow(cap, hmi, s7, 49732, 102)
    ads = TcpFlow(cap, hmi, cx, 49733, 48898)
    me, plc_port = ("10.10.0.10.1.1", 32905), ("5.44.0.121.1.1", 851)

    def start_modbus():
        mb.open()
        mb.c(mbap(1, b"\x2b\x0e\x01\x00", unit=0xFF))
        mb.s(mbap(1, mb_dev_id_response([(0, "Schneider Electric"), (1, "BMX P34 2020"), (2, "v2.1")]), unit=0xFF))
        mb.ack(True, 200)

    def start_s7():
        s7f.open()
        s7f.c(cotp_cr(0x0001, b"\x01\x00", b"\x01\x02"))
        s7f.s(cotp_cc(0x0001, 0x4431, b"\x01\x00", b"\x01\x02"))
        s7f.c(cotp_dt(s7_job(0x0001, S7_SETUP)))
        s7f.s(cotp_dt(s7_ack_data(0x0001, S7_SETUP_ACK)))
        s7f.ack(True, 200)

    def start_ads():
        ads.open()
        ads.c(ams_tcp(ams(plc_port, me, 1, AMS_REQUEST, b"", 1)))
        ads.s(
            ams_tcp(
                ams(
                    me,
                    plc_port,
                    1,
                    AMS_RESPONSE,
                    le32(0) + bytes([3, 1]) + le16(4024) + b"Plc30 App".ljust(16, b"\0"),
                    1,
                )
            )
        )
        ads.ack(True, 200)

    at(0, start_modbus)
    at(15, start_s7)
    at(30, start_ads)

    level = [500]

    def poll_modbus(i):
        def run():
            level[0] += rng.randrange(-3, 4)
            mb.c(mbap(2 + i, b"\x03" + be16(0) + be16(8)), after_ms=0)
            mb.s(
                mbap(2 + i, b"\x03" + mb_regs([level[0], 72, 1, 0, 1500, 3, 0, i & 0xFFFF])),
                after_ms=4 + rng.random() * 3,
            )
            mb.ack(True, 200)

        return run

    def poll_s7(i):
        def run():
            ref = 0x0100 + i
            s7f.c(cotp_dt(s7_read_var(ref, [s7_any(0x84, 10, 0, 8)])), after_ms=0)
            s7f.s(
                cotp_dt(s7_read_var_ack(ref, [be16(i) + be16(2200 + rng.randrange(0, 30)) + b"\x00\x01\x00\x00"])),
                after_ms=6 + rng.random() * 4,
            )
            s7f.ack(True, 200)

        return run

    def poll_ads(i):
        def run():
            inv = 2 + i
            ads.c(ams_tcp(ams(plc_port, me, 2, AMS_REQUEST, le32(0x4020) + le32(0) + le32(4), inv)), after_ms=0)
            ads.s(
                ams_tcp(ams(me, plc_port, 2, AMS_RESPONSE, le32(0) + le32(4) + le32(1000 + rng.randrange(0, 50)), inv)),
                after_ms=1 + rng.random(),
            )
            ads.ack(True, 200)

        return run

    for i in range(1, 119):
        at(1000 * i + 3, poll_modbus(i))
        at(1000 * i + 311, poll_s7(i))
        at(1000 * i + 647, poll_ads(i))

    # engineering station: an S7 upload of OB1 (with SZL identification first) at t = 40 s
    def es_upload():
        f = TcpFlow(cap, es, s7, 50100, 102).open()
        f.c(cotp_cr(0x0002, b"\x01\x00", b"\x01\x02"))
        f.s(cotp_cc(0x0002, 0x4432, b"\x01\x00", b"\x01\x02"))
        f.c(cotp_dt(s7_job(0x0001, S7_SETUP)))
        f.s(cotp_dt(s7_ack_data(0x0001, S7_SETUP_ACK)))
        f.c(cotp_dt(s7_userdata(0x0002, s7_ud_request(4, 0x01, 0), s7_ud_data(be16(0x0011) + be16(0x0000)))))
        f.s(
            cotp_dt(
                s7_userdata(
                    0x0002,
                    s7_ud_response(4, 0x01, 1),
                    s7_ud_data(s7_szl_0011("6ES7 315-2EH14-0AB0", (5, 1), (3, 2, 6))),
                )
            )
        )
        f.c(cotp_dt(s7_userdata(0x0003, s7_ud_request(3, 0x01, 0), s7_ud_data(b"", ok=False))))
        blocks = b"".join(t.encode() + be16(n) for t, n in S7_BLOCK_COUNTS)
        f.s(cotp_dt(s7_userdata(0x0003, s7_ud_response(3, 0x01, 2), s7_ud_data(blocks))))
        ob1 = s7_block_name("08", 1, "A")
        body = rng.randbytes(60)
        f.c(cotp_dt(s7_job(0x0004, b"\x1d\x00\x00\x00\x00\x00\x00\x00" + u8(len(ob1)) + ob1)), 20)
        f.s(cotp_dt(s7_ack_data(0x0004, b"\x1d\x00\x01\x00" + be32(3) + b"\x07" + b"%07d" % len(body))))
        f.c(cotp_dt(s7_job(0x0005, b"\x1e\x00\x00\x00" + be32(3))))
        f.s(cotp_dt(s7_ack_data(0x0005, b"\x1e\x00", be16(len(body)) + b"\x00\xfb" + body)))
        f.c(cotp_dt(s7_job(0x0006, b"\x1f\x00\x00\x00" + be32(3))))
        f.s(cotp_dt(s7_ack_data(0x0006, b"\x1f")))
        f.ack(True, 200)
        f.close(True, 500)

    at(40_120, es_upload)

    # engineering station: HTTP to the S7's web server at t = 75 s
    def es_http():
        f = TcpFlow(cap, es, s7, 50101, 80).open()
        hdrs = [("User-Agent", BROWSER_UA), ("Accept", "text/html,*/*;q=0.8")]
        f.c(http_request("GET", "/Portal/Portal.mwsl", "10.10.0.111", hdrs))
        f.s(
            http_response(
                "200 OK",
                [("Server", "Boa/0.94.14rc21"), ("Content-Type", "text/html")],
                b"<html><title>S7-300 web</title><body>RUN</body></html>\n",
            ),
            25,
        )
        f.c(http_request("GET", "/Portal/Identification.mwsl", "10.10.0.111", hdrs), 800)
        f.s(
            http_response(
                "200 OK",
                [("Server", "Boa/0.94.14rc21"), ("Content-Type", "text/html")],
                b"<html><body>6ES7 315-2EH14-0AB0 V3.2.6</body></html>\n",
            ),
            25,
        )
        f.ack(True, 200)
        f.close(True, 2000)

    at(75_480, es_http)

    # background: DNS lookups of the historian, TLS sessions to it
    def dns_lookup(client: Host, qid: int, sport: int):
        def run():
            udp(cap, client, dns, sport, 53, dns_query(qid, "historian.plant.local"))
            udp(cap, dns, client, 53, sport, dns_answer(qid, "historian.plant.local", historian.ip), after_ms=0.8)

        return run

    def tls_session(n: int):
        def run():
            f = TcpFlow(cap, hmi, historian, 49800 + n, 443, win_s=65535).open(rtt_ms=1.8)
            tls_resumed_session(f, rng, "historian.plant.local", [(True, 517), (False, 120), (True, 380), (False, 120)])
            f.close(True, 50)

        return run

    for n, t in enumerate(range(5_000, duration_ms, 30_000)):
        at(t + 70, dns_lookup(hmi, 0x3A00 + n, 61000 + n))
        at(t + 200, tls_session(n))
    at(39_900, dns_lookup(es, 0x5B01, 62001))
    at(75_300, dns_lookup(es, 0x5B02, 62002))

    def finish():
        for flow in (mb, s7f, ads):
            flow.close(True, 1)

    at(119_500, finish)

    for t_ms, _, fn in sorted(events, key=lambda e: (e[0], e[1])):
        cap.at(t_ms)
        fn()
    # conversations overlap in time (an upload runs while the HMI keeps polling)
    cap.in_time_order()
    write("plant.pcap.gz", gzip_bytes(cap.pcap()))


# --------------------------------------------------------------------------------------------
# Issue 10 cases: HTTP methods beyond the common set, TwinCAT UDP discovery/route on 48899
# --------------------------------------------------------------------------------------------

# Every request method Wireshark's packet-http.c (is_http_request_or_reply) recognises, by length
WIRESHARK_HTTP_METHODS = (
    "GET PUT COPY HEAD LOCK MOVE POLL POST BCOPY BMOVE MKCOL TRACE PATCH LABEL MERGE DELETE SEARCH UNLOCK "
    "REPORT UPDATE NOTIFY BDELETE CONNECT OPTIONS CHECKIN PROPFIND CHECKOUT CCM_POST SUBSCRIBE PROPPATCH "
    "BPROPFIND BPROPPATCH UNCHECKOUT MKACTIVITY MKWORKSPACE RPC_CONNECT RPC_IN_DATA UNSUBSCRIBE RPC_OUT_DATA "
    "VERSION-CONTROL BASELINE-CONTROL SSTP_DUPLEX_POST"
).split()


def build_http_methods() -> None:
    """http_methods.pcap: one keep-alive connection per client, each request answered 200 / 207."""
    cap = Capture(seed=1001)
    dav = Host("dav-client", "3c:d9:2b:61:10:21", "192.168.60.21", ttl=128, windows=True)
    ccm = Host("sccm-client", "b8:ca:3a:61:10:22", "192.168.60.22", ttl=128, windows=True)
    server = Host("historian-web", "00:21:5a:61:10:80", "192.168.60.80", ttl=128, windows=True)
    iis = [("Server", "Microsoft-IIS/10.0")]
    ua = [("User-Agent", "Microsoft-WebDAV-MiniRedir/10.0.19045")]

    # WebDAV / DeltaV / RPC-over-HTTP / SSTP methods, in Wireshark's order; CONNECT and SSTP_DUPLEX_POST
    # (after which the connection is a tunnel) are left to the end, and CONNECT goes to its own connection
    f = TcpFlow(cap, dav, server, 53001, 80).open()
    tunnels = ("CONNECT", "SSTP_DUPLEX_POST")
    for method in [m for m in WIRESHARK_HTTP_METHODS if m not in tunnels and m != "CCM_POST"]:
        body = b'<?xml version="1.0"?><propfind xmlns="DAV:"><allprop/></propfind>' if "PROP" in method else b""
        f.c(http_request(method, "/history/trend.csv", "192.168.60.80", ua, body), after_ms=4)
        status = "207 Multi-Status" if method in ("PROPFIND", "BPROPFIND", "REPORT") else "200 OK"
        f.s(http_response(status, iis, b""), after_ms=3)
    # M- (RFC 2774 mandatory extension) prefix: Wireshark strips it before its method check
    f.c(http_request("M-POST", "/history/trend.csv", "192.168.60.80", ua + [("Man", '"urn:x"; ns=01')]), after_ms=4)
    f.s(http_response("200 OK", iis, b""), after_ms=3)
    # neither a method Wireshark knows nor one we report: PURGE (a cache's), lower-case get
    f.c(http_request("PURGE", "/history/trend.csv", "192.168.60.80", ua), after_ms=4)
    f.s(http_response("200 OK", iis, b""), after_ms=3)
    f.c(http_request("get", "/history/trend.csv", "192.168.60.80", ua), after_ms=4)
    f.s(http_response("400 Bad Request", iis, b""), after_ms=3)
    f.c(http_request("SSTP_DUPLEX_POST", "/sra_{BA195980-CD49-458b-9E23-C84EE0ADCD75}/", "192.168.60.80", ua), after_ms=4)  # fmt: skip
    f.s(http_response("200 OK", iis, b""), after_ms=3)
    f.ack(True, after_ms=50)
    f.close()

    # SCCM's client (CcmExec) posts its inventory with CCM_POST
    f = TcpFlow(cap, ccm, server, 53002, 80).open()
    body = b"<Report><ReportHeader><Identification/></ReportHeader></Report>"
    f.c(http_request("CCM_POST", "/ccm_system/request", "192.168.60.80", [("User-Agent", "ccmhttp")], body))
    f.s(http_response("200 OK", iis, b""), after_ms=5)
    f.c(http_request("CONNECT", "192.168.60.80:443", "192.168.60.80:443", [("User-Agent", "ccmhttp")]), after_ms=10)
    f.s(http_response("200 Connection established", iis, b""), after_ms=3)
    f.ack(True, after_ms=50)
    f.close()
    write("http_methods.pcap", cap.pcap())


TWINCAT_MAGIC = b"\x03\x66\x14\x71"


def twincat_udp(service: int, net_id: str, tags: list[tuple[int, bytes]], invoke: int = 0) -> bytes:
    """TwinCAT UDP discovery/route datagram: magic, invoke id, service id (| 0x80000000 in an answer),
    sender's AMS Net Id and port 10000 (system service), tag count, then (tag id, length, value) tags."""
    head = TWINCAT_MAGIC + le32(invoke) + le32(service) + netid(net_id) + le16(10000) + le32(len(tags))
    return head + b"".join(le16(tag) + le16(len(value)) + value for tag, value in tags)


def os_version_info(major: int, minor: int, build: int, platform: int = 2) -> bytes:
    """Windows OSVERSIONINFOA as TCATSysSrv sends it (276 bytes: five u32, 128-byte service pack text)."""
    return le32(276) + le32(major) + le32(minor) + le32(build) + le32(platform) + bytes(256)


def build_ads_discovery() -> None:
    """ads_discovery.pcap: an engineering PC searches for TwinCAT runtimes and adds a route to one, then
    talks AMS/UDP to it; the discovery datagrams must not read as AMS commands."""
    cap = Capture(seed=1002)
    es = Host("twincat-xae", "f4:ce:46:4a:40:12", "192.168.40.12", ttl=128, windows=True)
    cx1 = Host("cx9020", "00:01:05:2c:62:41", "192.168.40.62", ttl=128)
    cx2 = Host("c6015", "00:01:05:2c:63:42", "192.168.40.63", ttl=128)
    es_id, cx1_id, cx2_id = "192.168.40.12.1.1", "5.44.98.65.1.1", "5.51.7.9.1.1"
    search = twincat_udp(1, es_id, [])
    # "Broadcast Search" sends to each runtime; each answers with its name, OS and TwinCAT version
    udp(cap, es, cx1, 55001, 48899, search, after_ms=5)
    answer = [
        (5, b"CX-2C6241\x00"),
        (4, os_version_info(7, 0, 0, platform=3)),
        (3, bytes([3, 1]) + le16(4024)),
    ]
    udp(cap, cx1, es, 48899, 55001, twincat_udp(RESPONSE_FLAG | 1, cx1_id, answer), after_ms=1.5)
    udp(cap, es, cx2, 55001, 48899, search, after_ms=1)
    answer = [
        (5, b"C6015-0010\x00"),
        (4, os_version_info(10, 0, 17763)),
        (3, bytes([3, 1]) + le16(4026)),
        (0x12, b"4f1c" * 16 + b"\x00"),
    ]
    udp(cap, cx2, es, 48899, 55001, twincat_udp(RESPONSE_FLAG | 1, cx2_id, answer), after_ms=2.1)
    # add route: the requester names itself and its Net Id; the password travels in clear (tag 2)
    route = [
        (12, b"TWINCAT-XAE\x00"),
        (7, netid(es_id)),
        (13, b"Administrator\x00"),
        (2, b"1\x00"),
        (5, b"TWINCAT-XAE\x00"),
    ]
    udp(cap, es, cx1, 55002, 48899, twincat_udp(6, es_id, route), after_ms=400)
    udp(cap, cx1, es, 48899, 55002, twincat_udp(RESPONSE_FLAG | 6, cx1_id, [(1, le32(0))]), after_ms=30)
    # then AMS/UDP on the same port: Read State, answered RUN
    me, plc = (es_id, 32905), (cx1_id, 851)
    udp(cap, es, cx1, 55003, 48899, ams(plc, me, 4, AMS_REQUEST | AMS_UDP_FLAG, b"", 21), after_ms=200)
    state = le32(0) + le16(5) + le16(0)
    udp(cap, cx1, es, 48899, 55003, ams(me, plc, 4, AMS_RESPONSE | AMS_UDP_FLAG, state, 21), after_ms=1)
    write("ads_discovery.pcap", cap.pcap())


RESPONSE_FLAG = 0x80000000


# --------------------------------------------------------------------------------------------
# Verification with tshark (--report)
# --------------------------------------------------------------------------------------------

TSHARK_FILTER = "mbtcp || s7comm || ams || http.request"
SERVER_PORTS = {80, 102, 502, 8000, 10502, 48898, 48899}


def tshark(args: list[str]) -> str:
    return subprocess.run(["tshark", "-n", *args], capture_output=True, text=True, check=False).stdout


def tshark_names(field: str) -> dict[int, str]:
    """tshark's own value string for a field (``tshark -G values``)."""
    names = {}
    out = subprocess.run(["tshark", "-G", "values"], capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():  # -G must be tshark's first argument
        cols = line.split("\t")
        if len(cols) == 4 and cols[0] == "V" and cols[1] == field:
            names[int(cols[2])] = cols[3]
    return names


def s7_commands(info: str) -> list[str]:
    """Function (job/ack-data) or subfunction (user data) names in an S7COMM Info column."""
    names = []
    for part in info.split(" | "):  # one part per S7 PDU of the frame
        m = re.search(r"Function:\[(?:Request|Response)\] -> \[[^\]]+\] -> \[([^\]]+)\]", part)
        m = m or re.search(r"Function:\[([^\]]+)\]", part)
        if m:
            names.append(m.group(1))
    return names


def report() -> None:
    """Markdown table: per capture, what tshark shows as (client, server, protocol, commands).

    Modbus and AMS commands are tshark's names of the modbus.func_code / ams.cmdid values of
    every PDU it dissected; S7 names come from its Info column; HTTP shows the request methods.
    """
    fc_names, ams_names = tshark_names("modbus.func_code"), tshark_names("ams.cmdid")
    print("| file | tshark: malformed / expert errors | client -> server (port): protocol: commands |")
    print("|---|---|---|")
    for path in WRITTEN:
        rel = path.relative_to(HERE)
        problems = tshark(
            [
                "-r",
                str(path),
                "-Y",
                "_ws.malformed || _ws.expert.severity >= error",
                "-T",
                "fields",
                "-e",
                "frame.number",
            ]
        ).split()
        rows = tshark(
            [
                "-r",
                str(path),
                "-Y",
                TSHARK_FILTER,
                "-T",
                "fields",
                "-e",
                "ip.src",
                "-e",
                "ipv6.src",
                "-e",
                "ip.dst",
                "-e",
                "ipv6.dst",
                "-e",
                "_ws.col.Info",
                "-e",
                "tcp.srcport",
                "-e",
                "tcp.dstport",
                "-e",
                "frame.protocols",
                "-e",
                "modbus.func_code",
                "-e",
                "modbus.exception_code",
                "-e",
                "ams.cmdid",
                "-e",
                "http.request.method",
            ]
        ).splitlines()
        seen: dict[tuple, list[str]] = {}
        for row in rows:
            src4, src6, dst4, dst6, info, sport, dport, protos, fcs, exc, cmds, methods = row.split("\t")
            src, dst, sport, dport = src4 or src6, dst4 or dst6, int(sport), int(dport)
            if sport in SERVER_PORTS and dport not in SERVER_PORTS:
                src, dst, dport = dst, src, sport
            proto = next(p for p in ("mbtcp", "s7comm", "ams", "http") if p in protos.split(":"))
            if proto == "mbtcp":
                names = [
                    fc_names.get(int(fc), f"function {fc} (no name)") + (" (exception)" if exc else "")
                    for fc in fcs.split(",")
                ]
            elif proto == "ams":
                names = [ams_names.get(int(c), f"command {c} (no name)") for c in cmds.split(",")]
            elif proto == "s7comm":
                names = s7_commands(info)
            else:
                names = methods.split(",")
            known = seen.setdefault((src, dst, dport, proto), [])
            known += [n for n in names if n and n not in known]
        summary = (
            "<br>".join(f"`{c} -> {s} ({p})` {proto}: " + ", ".join(n) for (c, s, p, proto), n in seen.items())
            or "(no mbtcp/s7comm/ams/http)"
        )
        print(f"| {rel} | {', '.join(problems) or 'none'} | {summary} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="run tshark over the captures")
    args = parser.parse_args()
    build_modbus()
    build_modbus_midstream()
    build_not_modbus()
    build_s7comm()
    build_s7comm_plus()
    build_mms()
    build_ads()
    build_http()
    build_encapsulations()
    build_linktypes()
    build_bad()
    build_plant()
    build_http_methods()
    build_ads_discovery()
    total = 0
    for path in WRITTEN:
        size = path.stat().st_size
        total += size
        print(f"{size:8d}  {path.relative_to(HERE)}")
    print(f"{total:8d}  total")
    if args.report:
        report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
