"""Beckhoff ADS/AMS analyzer: AMS/TCP (48898, 6-byte prefix) and AMS/UDP (48899) command names.

Owns the command-id table and the Read Device Info reply parser; never touches flows or storage.
"""

from __future__ import annotations

import struct

import numpy as np

from . import READ, START, STOP, WRITE, Analyzer, Malformed, Operation, ads_discovery, merge_identity

# Command names as the contract spells them (Wireshark packet-ams.c, AMS_CMDID_*).
COMMAND_NAMES = {
    1: "AMS Read Device Info",
    2: "AMS Read",
    3: "AMS Write",
    4: "AMS Read State",
    5: "AMS Write Control",
    6: "AMS Add Device Notification",
    7: "AMS Delete Device Notification",
    8: "AMS Device Notification",
    9: "AMS Read Write",
}

COMMAND_CATEGORIES = {1: READ, 2: READ, 3: WRITE, 4: READ, 9: WRITE}
WRITE_CONTROL = 5

# ADS states (packet-ams.c: AdsStates / ams.adsstate) and which requested state is an operational
# command: RUN (and RESET, TwinCAT's "restart in run mode") starts; STOP, CONFIG and RECONFIG stop.
ADS_STATES = {
    0: "INVALID", 1: "IDLE", 2: "RESET", 3: "INIT", 4: "START", 5: "RUN", 6: "STOP", 7: "SAVECFG",
    8: "LOADCFG", 9: "POWERFAILURE", 10: "POWERGOOD", 11: "ERROR", 12: "SHUTDOWN", 13: "SUSPEND",
    14: "RESUME", 15: "CONFIG", 16: "RECONFIG",
}  # fmt: skip
ADS_STATE_CATEGORIES = {2: START, 5: START, 6: STOP, 15: STOP, 16: STOP}
WRITE_CONTROL_REQUEST = struct.Struct("<HHI")  # ADS state, device state, data length

AMS_TCP = struct.Struct("<HI")  # reserved (0), length of the AMS packet that follows
# AMS header: target net id, target port, source net id, source port, command id, state flags,
# data length, error code, invoke id (packet-ams.c: ams.targetnetid ... ams.invokeid).
AMS_HEADER = struct.Struct("<6sH6sHHHIII")
AMS_HEADER_SIZE = 32
STATE_RESPONSE = 0x0001
MAX_AMS_LENGTH = 1 << 22


def _command_name(command_id: int) -> str:
    return COMMAND_NAMES.get(command_id) or f"AMS Command {command_id}"


def _device_info(data: memoryview) -> dict[str, str]:
    """Read Device Info reply: result, major, minor, build, 16-byte device name (ADS spec)."""
    if len(data) < 24:
        return {}
    result, major, minor, build = struct.unpack_from("<IBBH", data)
    if result != 0:
        return {}
    name = bytes(data[8:24]).split(b"\x00", 1)[0].decode("latin-1").strip()
    identity = {"vendor": "Beckhoff", "firmware": f"{major}.{minor}.{build}"}
    if name:
        identity["name"] = name
    return identity


def _ams_packet(view: memoryview, pos: int, size: int):
    """Name one AMS packet of ``size`` bytes at ``pos``; returns (command, identity)."""
    if size < AMS_HEADER_SIZE:
        raise Malformed(f"AMS packet of {size} bytes is shorter than its header")
    (_, _, _, _, command_id, state, data_length, _, _) = AMS_HEADER.unpack_from(view, pos)
    identity = {}
    if command_id == WRITE_CONTROL and not state & STATE_RESPONSE and size >= AMS_HEADER_SIZE + 8:
        ads_state, device_state, _ = WRITE_CONTROL_REQUEST.unpack_from(view, pos + AMS_HEADER_SIZE)
        category = ADS_STATE_CATEGORIES.get(ads_state)
        if category is not None:
            detail = f"ADS state {ADS_STATES[ads_state]} ({ads_state}), device state {device_state}"
            return Operation("ams", _command_name(command_id), category, detail), identity
    if command_id == 1 and state & STATE_RESPONSE:
        data = view[pos + AMS_HEADER_SIZE : pos + AMS_HEADER_SIZE + min(data_length, size - AMS_HEADER_SIZE)]
        identity = _device_info(data)
    return ("ams", _command_name(command_id)), identity


def probe(data: bytes, to_server: bool) -> bool | None:
    if len(data) < 6 + AMS_HEADER_SIZE:
        return None if len(data) < 6 or AMS_TCP.unpack_from(data)[0] == 0 else False
    reserved, length = AMS_TCP.unpack_from(data)
    if reserved != 0 or not AMS_HEADER_SIZE <= length <= MAX_AMS_LENGTH:
        return False
    data_length = AMS_HEADER.unpack_from(data, 6)[6]
    return data_length <= length - AMS_HEADER_SIZE


def parse(buf: bytes, to_server: bool):
    view = memoryview(buf)
    pos, end = 0, len(buf)
    commands, identity = [], {}
    while end - pos >= 6:
        reserved, length = AMS_TCP.unpack_from(view, pos)
        if reserved != 0 or not AMS_HEADER_SIZE <= length <= MAX_AMS_LENGTH:
            if commands:
                break
            raise Malformed(f"AMS/TCP reserved {reserved:#x}, length {length}")
        if end - pos < 6 + length:
            break
        command, facts = _ams_packet(view, pos + 6, length)
        commands.append(command)
        merge_identity(identity, facts)
        pos += 6 + length
    return pos, commands, identity


def probe_udp(data: bytes, to_server: bool) -> bool:
    """AMS/UDP carries the bare AMS header (no AMS/TCP prefix); the header's data length must fit.
    TwinCAT's discovery/route datagrams share the port but are not AMS (ads_discovery.py)."""
    if len(data) < AMS_HEADER_SIZE or ads_discovery.is_discovery(data):
        return False
    data_length = AMS_HEADER.unpack_from(data)[6]
    return AMS_HEADER_SIZE + data_length <= len(data)


def parse_udp(buf: bytes, to_server: bool):
    if ads_discovery.is_discovery(buf):  # on a flow that also carries AMS/UDP (48899 to 48899)
        return ads_discovery.parse(buf, to_server)
    if not probe_udp(buf, to_server):
        raise Malformed("AMS/UDP datagram shorter than its header")
    command, identity = _ams_packet(memoryview(buf), 0, len(buf))
    return len(buf), [command], identity


def batch(data, starts: np.ndarray, lengths: np.ndarray, to_server: np.ndarray):
    """Segments holding exactly one AMS/TCP packet; all but Read Device Info replies (identity) and
    Write Control (parse reads the requested ADS state) are named by their command id."""
    buf = np.frombuffer(data, dtype=np.uint8)
    last = len(buf) - 1

    def byte(k: int) -> np.ndarray:
        return buf[np.minimum(starts + k, last)].astype(np.int64)

    length = byte(2) | byte(3) << 8 | byte(4) << 16 | byte(5) << 24
    command_id = byte(22) | byte(23) << 8
    response = (byte(24) & STATE_RESPONSE) != 0
    whole = (lengths >= 6 + AMS_HEADER_SIZE) & (byte(0) == 0) & (byte(1) == 0) & (length + 6 == lengths)
    whole &= length <= MAX_AMS_LENGTH
    return whole, whole & ~((command_id == 1) & response) & (command_id != WRITE_CONTROL), command_id


def command(code: int) -> tuple[str, str]:
    return ("ams", _command_name(code))


def _net_id(raw: bytes) -> str:
    return "{}.{}.{}.{}.{}.{}".format(*raw)  # six bytes (AMS_HEADER's 6s)


def addresses(data: bytes) -> list[tuple[int, str]]:
    """The AMS Net Ids of the initiator's first AMS packet: its source (the initiator's) and target."""
    if len(data) < 6 + AMS_HEADER_SIZE:
        return []
    target, _, source, _, *_ = AMS_HEADER.unpack_from(data, 6)
    return [(0, _net_id(source)), (1, _net_id(target))]


ANALYZER = Analyzer(
    name="ams", probe=probe, parse=parse, tcp_ports=frozenset({48898}), batch=batch, command=command,
    addresses=addresses,
)  # fmt: skip
UDP_ANALYZER = Analyzer(name="ams", probe=probe_udp, parse=parse_udp, udp_ports=frozenset({48899}), datagram=True)
