"""Link, network and transport decoding of one frame, hand-written over bytes (struct, memoryview).

Owns: link types, VLAN/QinQ/MPLS/PPPoE, IPv4 (with fragment reassembly), IPv6 extension headers,
TCP and UDP headers.  Never: application protocols, flows, storage — it only says who sent what.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

# LINKTYPE_* values (tcpdump.org/linktypes.html)
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_OLD = 12  # "raw IP" on some BSDs
LINKTYPE_RAW_OLD2 = 14
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_NFLOG = 239
LINKTYPE_LINUX_SLL2 = 276

ETH_IPV4, ETH_IPV6, ETH_VLAN, ETH_QINQ, ETH_QINQ_OLD = 0x0800, 0x86DD, 0x8100, 0x88A8, 0x9100
ETH_MPLS, ETH_MPLS_MC, ETH_PPPOE_SESSION = 0x8847, 0x8848, 0x8864
PPP_IPV4, PPP_IPV6 = 0x0021, 0x0057
IPPROTO_TCP, IPPROTO_UDP = 6, 17
IPV6_EXTENSIONS = {0, 43, 60, 51, 135, 139, 140}  # hop-by-hop, routing, dest opts, AH, mobility, HIP, shim6
IPV6_FRAGMENT, IPV6_NO_NEXT = 44, 59
# BSD loopback address families: AF_INET is 2 everywhere; AF_INET6 is 24, 28 or 30 by OS.
AF_INET, AF_INET6 = 2, frozenset({10, 24, 28, 30})
# NFLOG (tcpdump.org/linktypes/LINKTYPE_NFLOG.html, Wireshark packet-nflog.c): Linux address families
# and the nfulnl_attr_type TLVs we read; the type's top bit is netlink's NLA_F_NESTED flag.
LINUX_AF_INET, LINUX_AF_INET6 = 2, 10
NFULA_HWADDR, NFULA_PAYLOAD = 8, 9
NFLOG_TLV = {"<": struct.Struct("<HH"), ">": struct.Struct(">HH")}  # length (header included), type

U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
IPV4 = struct.Struct(">BBHHHBBH4s4s")
TCP = struct.Struct(">HHIIBB")  # ports, seq, ack, data offset, flags
UDP = struct.Struct(">HHH")
TCP_SYN, TCP_RST, TCP_FIN, TCP_ACK = 0x02, 0x04, 0x01, 0x10

MAX_FRAGMENT_SETS = 1024  # pending IP datagrams; the oldest is dropped beyond this
MAX_DATAGRAM = 65535


class Packet(NamedTuple):
    src: bytes  # 4 or 16 address bytes
    dst: bytes
    proto: int  # IPPROTO_TCP, IPPROTO_UDP or another IP protocol number (ports 0)
    sport: int
    dport: int
    flags: int  # TCP flags, 0 for UDP
    seq: int
    payload: memoryview
    src_mac: bytes | None


class DecodeError(ValueError):
    """A frame too short or inconsistent for its headers; counted under its layer."""

    def __init__(self, layer: str, message: str):
        super().__init__(message)
        self.layer = layer


def _nflog_byte_order(frame: memoryview) -> str:
    """The TLVs' byte order (the capturing host's, which the file does not record), guessed as
    Wireshark does (nflog_tvb_byte_order): the first order in which a TLV before any type >= 0x100
    has a non-zero type; big-endian when neither."""
    for order in (">", "<"):
        tlv = NFLOG_TLV[order].unpack_from
        pos = 4
        while len(frame) - pos > 4:
            length, kind = tlv(frame, pos)
            kind &= 0x7FFF
            if length < 4 or kind >= 0x100:
                break
            if kind:
                return order
            pos += (length + 3) & ~3
    return ">"


class Decoder:
    """Decodes frames to :class:`Packet`; keeps the IP fragment table between calls."""

    def __init__(self) -> None:
        self.fragments: dict[tuple, list] = {}
        self.non_ip = 0  # frames that carry no IP (ARP, LLDP, STP, EtherCAT ...)

    def decode(self, linktype: int, frame: memoryview) -> Packet | None:
        """A Packet, or None for frames without IP or IP fragments still waiting for the rest."""
        mac = None
        if linktype == LINKTYPE_ETHERNET:
            if len(frame) < 14:
                raise DecodeError("ethernet", f"frame of {len(frame)} bytes")
            mac = bytes(frame[6:12])
            return self._ethertype(U16.unpack_from(frame, 12)[0], frame, 14, mac)
        if linktype == LINKTYPE_LINUX_SLL:
            # packet type, ARPHRD type, address length, 8 address bytes, protocol (ethertype)
            if len(frame) < 16:
                raise DecodeError("sll", f"frame of {len(frame)} bytes")
            if U16.unpack_from(frame, 4)[0] == 6:
                mac = bytes(frame[6:12])
            return self._ethertype(U16.unpack_from(frame, 14)[0], frame, 16, mac)
        if linktype == LINKTYPE_LINUX_SLL2:
            # protocol, reserved, interface index, ARPHRD type, packet type, address length, address
            if len(frame) < 20:
                raise DecodeError("sll2", f"frame of {len(frame)} bytes")
            if frame[11] == 6:
                mac = bytes(frame[12:18])
            return self._ethertype(U16.unpack_from(frame, 0)[0], frame, 20, mac)
        if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            if len(frame) < 4:
                raise DecodeError("loopback", f"frame of {len(frame)} bytes")
            family = int.from_bytes(frame[:4], "big")
            if linktype == LINKTYPE_NULL and family > 0xFFFF:  # host byte order of the writer
                family = int.from_bytes(frame[:4], "little")
            if family == AF_INET:
                return self._ipv4(frame, 4, mac)
            if family in AF_INET6:
                return self._ipv6(frame, 4, mac)
            self.non_ip += 1
            return None
        if linktype in (LINKTYPE_RAW, LINKTYPE_RAW_OLD, LINKTYPE_RAW_OLD2, LINKTYPE_IPV4, LINKTYPE_IPV6):
            return self._ip_by_version(frame, 0, mac)
        if linktype == LINKTYPE_NFLOG:
            return self._nflog(frame)
        raise DecodeError("link", f"unsupported link type {linktype}")

    def _nflog(self, frame: memoryview) -> Packet | None:
        """Family, version, resource id (4 bytes), then TLVs, each padded to 4 bytes; the last
        NFULA_PAYLOAD is the IP packet, NFULA_HWADDR the sender's MAC (incoming packets only)."""
        if len(frame) < 4:
            raise DecodeError("nflog", f"frame of {len(frame)} bytes")
        tlv = NFLOG_TLV[_nflog_byte_order(frame)].unpack_from
        pos, payload, mac = 4, None, None
        while len(frame) - pos >= 4:
            length, kind = tlv(frame, pos)
            if length < 4:  # Wireshark stops here and dissects no payload
                raise DecodeError("nflog", f"TLV length {length} at byte {pos}")
            kind &= 0x7FFF
            if kind == NFULA_PAYLOAD:
                payload = frame[pos + 4 : pos + length]
            elif kind == NFULA_HWADDR and length >= 14 and U16.unpack_from(frame, pos + 4)[0] == 6:
                mac = bytes(frame[pos + 8 : pos + 14])  # struct nfulnl_msg_packet_hw: be16 length, pad, addr
            pos += (length + 3) & ~3
        if payload is not None and frame[0] == LINUX_AF_INET:
            return self._ipv4(payload, 0, mac)
        if payload is not None and frame[0] == LINUX_AF_INET6:
            return self._ipv6(payload, 0, mac)
        self.non_ip += 1  # no packet copied (NFULNL_COPY_NONE), or a family without IP (bridge, ARP)
        return None

    def _ip_by_version(self, frame: memoryview, pos: int, mac: bytes | None) -> Packet | None:
        if len(frame) <= pos:
            raise DecodeError("ip", "no IP header")
        version = frame[pos] >> 4
        if version == 4:
            return self._ipv4(frame, pos, mac)
        if version == 6:
            return self._ipv6(frame, pos, mac)
        self.non_ip += 1
        return None

    def _ethertype(self, ethertype: int, frame: memoryview, pos: int, mac: bytes | None) -> Packet | None:
        while True:
            if ethertype == ETH_IPV4:
                return self._ipv4(frame, pos, mac)
            if ethertype == ETH_IPV6:
                return self._ipv6(frame, pos, mac)
            if ethertype in (ETH_VLAN, ETH_QINQ, ETH_QINQ_OLD):  # 802.1Q / 802.1ad tag: TCI, inner type
                if len(frame) < pos + 4:
                    raise DecodeError("vlan", "truncated 802.1Q tag")
                ethertype = U16.unpack_from(frame, pos + 2)[0]
                pos += 4
            elif ethertype in (ETH_MPLS, ETH_MPLS_MC):
                while True:  # label stack entries of 4 bytes until the bottom-of-stack bit (RFC 3032)
                    if len(frame) < pos + 4:
                        raise DecodeError("mpls", "truncated label stack")
                    bottom = frame[pos + 2] & 0x01
                    pos += 4
                    if bottom:
                        break
                return self._ip_by_version(frame, pos, mac)  # no ethertype after MPLS: guess by version
            elif ethertype == ETH_PPPOE_SESSION:  # RFC 2516: ver/type, code, session id, length, PPP proto
                if len(frame) < pos + 8:
                    raise DecodeError("pppoe", "truncated PPPoE session header")
                if frame[pos + 6] & 0x01:  # protocol-field compression (RFC 1661 6.5): one byte
                    ppp, pos = frame[pos + 6], pos + 7
                else:
                    ppp, pos = U16.unpack_from(frame, pos + 6)[0], pos + 8
                if ppp == PPP_IPV4:
                    return self._ipv4(frame, pos, mac)
                if ppp == PPP_IPV6:
                    return self._ipv6(frame, pos, mac)
                self.non_ip += 1
                return None
            else:
                self.non_ip += 1
                return None

    def _ipv4(self, frame: memoryview, pos: int, mac: bytes | None) -> Packet | None:
        if len(frame) < pos + 20:
            raise DecodeError("ipv4", "truncated IPv4 header")
        version_ihl, _, total, ident, frag, _, proto, _, src, dst = IPV4.unpack_from(frame, pos)
        header = (version_ihl & 0x0F) * 4
        if version_ihl >> 4 != 4 or header < 20:
            raise DecodeError("ipv4", f"version/IHL byte {version_ihl:#04x}")
        # Total length 0 is what TSO-offloaded frames captured on the sender carry: use what was captured.
        end = min(len(frame), pos + total) if total else len(frame)
        if end < pos + header:
            raise DecodeError("ipv4", f"total length {total} shorter than the header")
        offset, more = (frag & 0x1FFF) * 8, frag & 0x2000
        body = frame[pos + header : end]
        if offset or more:
            body = self._reassemble((src, dst, ident, proto), offset, more, body)
            if body is None:
                return None
        return self._transport(src, dst, proto, body, mac)

    def _ipv6(self, frame: memoryview, pos: int, mac: bytes | None) -> Packet | None:
        if len(frame) < pos + 40:
            raise DecodeError("ipv6", "truncated IPv6 header")
        payload_length = U16.unpack_from(frame, pos + 4)[0]
        proto = frame[pos + 6]
        src, dst = bytes(frame[pos + 8 : pos + 24]), bytes(frame[pos + 24 : pos + 40])
        end = min(len(frame), pos + 40 + payload_length) if payload_length else len(frame)
        pos += 40
        while proto in IPV6_EXTENSIONS or proto == IPV6_FRAGMENT:
            if end < pos + 8:
                raise DecodeError("ipv6", "truncated extension header")
            next_proto = frame[pos]
            if proto == IPV6_FRAGMENT:  # RFC 8200 4.5; an atomic fragment (offset 0, M 0) is whole
                frag, ident = U16.unpack_from(frame, pos + 2)[0], U32.unpack_from(frame, pos + 4)[0]
                offset, more = frag & 0xFFF8, frag & 0x0001
                pos += 8
                if offset or more:
                    body = self._reassemble((src, dst, ident, next_proto), offset, more, frame[pos:end])
                    if body is None:
                        return None
                    return self._transport(src, dst, next_proto, body, mac)
            elif proto == 51:  # AH: length in 4-byte units minus 2
                pos += (frame[pos + 1] + 2) * 4
            else:
                pos += (frame[pos + 1] + 1) * 8
            proto = next_proto
        if proto == IPV6_NO_NEXT or end < pos:
            return None
        return self._transport(src, dst, proto, frame[pos:end], mac)

    def _reassemble(self, key: tuple, offset: int, more: int, body: memoryview) -> memoryview | None:
        """RFC 791/8200 reassembly: pieces kept per datagram until the last one closes every hole."""
        pieces = self.fragments.get(key)
        if pieces is None:
            if len(self.fragments) >= MAX_FRAGMENT_SETS:
                del self.fragments[next(iter(self.fragments))]
            pieces = self.fragments[key] = [None]  # [total length once known, (offset, bytes) ...]
        if offset + len(body) > MAX_DATAGRAM:
            del self.fragments[key]
            raise DecodeError("ip-fragment", f"fragment beyond 64 KiB at offset {offset}")
        pieces.append((offset, bytes(body)))
        if not more:
            pieces[0] = offset + len(body)
        total = pieces[0]
        if total is None:
            return None
        datagram = bytearray(total)
        covered = 0
        for start, data in sorted(pieces[1:]):
            if start > covered:
                return None  # a hole remains
            datagram[start : start + len(data)] = data[: max(0, total - start)]
            covered = max(covered, start + len(data))
        if covered < total:
            return None
        del self.fragments[key]
        return memoryview(bytes(datagram))

    @staticmethod
    def _transport(src: bytes, dst: bytes, proto: int, body: memoryview, mac: bytes | None) -> Packet:
        if proto == IPPROTO_TCP:
            if len(body) < 20:
                raise DecodeError("tcp", f"truncated TCP header ({len(body)} bytes)")
            sport, dport, seq, _, offset, flags = TCP.unpack_from(body)
            header = (offset >> 4) * 4
            if header < 20 or header > len(body):
                raise DecodeError("tcp", f"data offset {header}")
            return Packet(bytes(src), bytes(dst), proto, sport, dport, flags, seq, body[header:], mac)
        if proto == IPPROTO_UDP:
            if len(body) < 8:
                raise DecodeError("udp", f"truncated UDP header ({len(body)} bytes)")
            sport, dport, length = UDP.unpack_from(body)
            end = min(len(body), length) if length >= 8 else len(body)
            return Packet(bytes(src), bytes(dst), proto, sport, dport, 0, 0, body[8:end], mac)
        return Packet(bytes(src), bytes(dst), proto, 0, 0, 0, 0, body[:0], mac)
