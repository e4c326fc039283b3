"""TwinCAT UDP discovery and route service on UDP 48899 (TCATSysSrv): identity, never AMS commands.

Owns the layout of these datagrams and reading host name, AMS Net Id and TwinCAT version from them;
never touches flows or storage. The service shares UDP 48899 with AMS/UDP but is not AMS: its
datagrams start with the magic 03 66 14 71, not an AMS header, so they name no ADS command.
"""

from __future__ import annotations

import struct

from . import Analyzer, Malformed, merge_identity

MAGIC = b"\x03\x66\x14\x71"
# magic, invoke id, service id, sender's AMS Net Id and AMS port, tag count (Beckhoff ADS library,
# AdsLib/standalone/AdsLib.cpp: UdpServiceId, UdpTag; pyads.pyads_ex.adsAddRouteToPLC)
HEADER = struct.Struct("<4sII6sHI")
TAG = struct.Struct("<HH")  # tag id, length of its value

SERVICE_SERVER_INFO = 1  # "discovery": who are you (the answer carries the identity)
SERVICE_ADD_ROUTE = 6
RESPONSE = 0x80000000  # set in the service id of an answer

# Tags (Beckhoff ADS library's UdpTag; Apache PLC4X's ads-discovery.mspec names the rest): 1 status of an
# add route (u32 LE, 0 = added), 2 password (never read), 12 route name, 13 user name, 18 fingerprint.
TAG_TWINCAT_VERSION = 3  # major u8, minor u8, build u16 LE
TAG_OS_VERSION = 4  # Windows OSVERSIONINFO: size, major, minor, build, platform (u32 LE each), ...
TAG_COMPUTER_NAME = 5  # NUL-terminated
TAG_NET_ID = 7
MAX_TAGS = 64


def is_discovery(data: bytes) -> bool:
    return data[:4] == MAGIC


def probe(data: bytes, to_server: bool) -> bool:
    return len(data) >= HEADER.size and is_discovery(data)


def _net_id(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def _text(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("latin-1").strip()[:256]


def parse(buf: bytes, to_server: bool):
    """One datagram: no command; the sender's identity where the datagram carries it — the host name
    (an answer's, or the requester's own in an add-route request), its AMS Net Id, the TwinCAT version."""
    if not is_discovery(buf):  # AMS/UDP on a flow this service claimed (48899 to 48899)
        from .ams import parse_udp  # ams imports this module: imported when needed

        return parse_udp(buf, to_server)
    if len(buf) < HEADER.size:
        raise Malformed("TwinCAT UDP datagram shorter than its header")
    _, _, service, net_id, _, count = HEADER.unpack_from(buf)
    answer = bool(service & RESPONSE)
    identity = {"amsNetId": _net_id(net_id)}
    if answer:
        identity["vendor"] = "Beckhoff"  # TCATSysSrv answers; the requester is any TwinCAT engineering PC
    pos = HEADER.size
    for _ in range(min(count, MAX_TAGS)):
        if pos + TAG.size > len(buf):
            break
        tag, length = TAG.unpack_from(buf, pos)
        value = buf[pos + TAG.size : pos + TAG.size + length]
        pos += TAG.size + length
        if tag == TAG_COMPUTER_NAME and (answer or service == SERVICE_ADD_ROUTE) and _text(value):
            merge_identity(identity, {"name": _text(value)})
        elif tag == TAG_TWINCAT_VERSION and answer and len(value) >= 4:
            major, minor, build = struct.unpack_from("<BBH", value)
            identity["firmware"] = f"{major}.{minor}.{build}"  # as ADS Read Device Info spells it
    return len(buf), [], identity


ANALYZER = Analyzer(name="ads-discovery", probe=probe, parse=parse, udp_ports=frozenset({48899}), datagram=True)
