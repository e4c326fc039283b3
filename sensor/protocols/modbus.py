"""Modbus/TCP (MBAP) analyzer: frames PDUs by the MBAP length and names their function codes.

Owns the function-code table and the Read Device Identification parser; never touches flows or storage.
"""

from __future__ import annotations

import struct

import numpy as np

from . import PROGRAM, READ, START, STOP, UPLOAD, WRITE, Analyzer, Malformed, Operation, merge_identity

# Function names exactly as Wireshark's packet-mbtcp.c (function_code_vals) prints them.
FUNCTION_NAMES = {
    1: "Read Coils",
    2: "Read Discrete Inputs",
    3: "Read Holding Registers",
    4: "Read Input Registers",
    5: "Write Single Coil",
    6: "Write Single Register",
    7: "Read Exception Status",
    8: "Diagnostics",
    11: "Get Comm. Event Counters",
    12: "Get Comm. Event Log",
    15: "Write Multiple Coils",
    16: "Write Multiple Registers",
    17: "Report Slave ID",
    20: "Read File Record",
    21: "Write File Record",
    22: "Mask Write Register",
    23: "Read Write Register",
    24: "Read FIFO Queue",
    43: "Encapsulated Interface Transport",
    90: "Unity (Schneider)",
}
_NAMES = {code: FUNCTION_NAMES.get(code, f"Function code {code}") for code in range(128)}

FUNCTION_CATEGORIES = {
    1: READ, 2: READ, 3: READ, 4: READ, 7: READ, 20: READ, 24: READ,
    5: WRITE, 6: WRITE, 15: WRITE, 16: WRITE, 21: WRITE, 22: WRITE, 23: WRITE,
}  # fmt: skip

# Function 90 carries Schneider's UMAS: session byte, then the UMAS function.  The operational ones
# (after the UMAS write-ups that Wireshark's and others' UMAS dissectors follow).  UMAS itself names the
# transfers from the PLC's side: its "upload" (0x30-0x32) puts a program INTO the PLC — a download in
# this table's (and the contract's) words — and its "download" (0x33-0x35) reads the program out.
UNITY = 90
UMAS_FUNCTIONS = {
    0x30: ("initialize download", PROGRAM),
    0x31: ("download block", PROGRAM),
    0x32: ("end download", PROGRAM),
    0x33: ("initialize upload", UPLOAD),
    0x34: ("upload block", UPLOAD),
    0x35: ("end upload", UPLOAD),
    0x40: ("start PLC", START),
    0x41: ("stop PLC", STOP),
}

# Read Device Identification (function 43, MEI type 14) object ids, Modbus Application Protocol
# Specification V1.1b3 section 6.21.
DEVICE_ID_OBJECTS = {0: "vendor", 1: "productCode", 2: "firmware", 4: "name", 5: "type"}

MBAP = struct.Struct(">HHHBB")  # transaction id, protocol id, length, unit id, function code
MBAP_SIZE = 7  # the function code is the first PDU byte
MAX_LENGTH = 254  # unit id + PDU of at most 253 bytes


def probe(data: bytes, to_server: bool) -> bool | None:
    """An MBAP header: protocol id 0 and a plausible length (TLS starts 16 03 .., so its "protocol id"
    is 0x03xx).  Any function code is accepted: Wireshark names unknown ones "Function code N"."""
    if len(data) < 8:
        return None
    _, protocol_id, length, _, _ = MBAP.unpack_from(data)
    return protocol_id == 0 and 2 <= length <= MAX_LENGTH


def _device_identification(pdu: memoryview) -> dict[str, str]:
    """Objects of a Read Device Identification reply: MEI type, code, conformity, more, next, count."""
    identity: dict[str, str] = {}
    if len(pdu) < 7 or pdu[1] != 14:
        return identity
    count, pos = pdu[6], 7
    for _ in range(count):
        if pos + 2 > len(pdu):
            break
        object_id, size = pdu[pos], pdu[pos + 1]
        value = bytes(pdu[pos + 2 : pos + 2 + size]).decode("latin-1").strip("\x00 ")
        pos += 2 + size
        key = DEVICE_ID_OBJECTS.get(object_id)
        if key and value:
            identity[key] = value
    if "productCode" in identity and "type" not in identity:
        identity["type"] = identity["productCode"]
    identity.pop("productCode", None)
    return identity


def parse(buf: bytes, to_server: bool):
    view = memoryview(buf)
    pos, end = 0, len(buf)
    commands: list[tuple[str, str]] = []
    identity: dict[str, str] = {}
    while end - pos >= 8:
        _, protocol_id, length, _, function = MBAP.unpack_from(view, pos)
        if protocol_id != 0 or not 2 <= length <= MAX_LENGTH:
            if commands:  # name what came before; the bad bytes raise on the next call
                break
            raise Malformed(f"MBAP protocol id {protocol_id}, length {length}")
        size = 6 + length
        if end - pos < size:
            break
        if function == UNITY and to_server and size >= 10 and view[pos + 9] in UMAS_FUNCTIONS:
            umas = view[pos + 9]
            action, category = UMAS_FUNCTIONS[umas]
            commands.append(Operation("modbus", _NAMES[UNITY], category, f"UMAS 0x{umas:02X} {action}"))
        else:
            commands.append(("modbus", _NAMES[function & 0x7F]))
        if function == 43 and not to_server:
            merge_identity(identity, _device_identification(view[pos + MBAP_SIZE : pos + size]))
        pos += size
    return pos, commands, identity


def batch(data, starts: np.ndarray, lengths: np.ndarray, to_server: np.ndarray):
    """Segments holding exactly one ADU (MBAP length + 6 == segment length); all but the replies of
    function 43 (Read Device Identification: identity to read) and function 90 (UMAS, where parse
    marks the operational requests) are named by their function code."""
    buf = np.frombuffer(data, dtype=np.uint8)
    last = len(buf) - 1

    def byte(k: int) -> np.ndarray:
        return buf[np.minimum(starts + k, last)].astype(np.int64)

    length = byte(4) << 8 | byte(5)
    function = byte(7)
    whole = (lengths >= 8) & (byte(2) == 0) & (byte(3) == 0) & (length >= 2) & (length <= MAX_LENGTH)
    whole &= length + 6 == lengths
    named = whole & (to_server | ((function & 0x7F) != 43)) & ((function & 0x7F) != UNITY)
    return whole, named, function & 0x7F


def command(code: int) -> tuple[str, str]:
    return ("modbus", _NAMES[code])


UNIT_ADDRESSES = [((1, str(unit)),) for unit in range(256)]  # what addresses() says of one ADU


def addresses(data: bytes) -> list[tuple[int, str]]:
    """The unit ids the initiator's first ADUs address (the responder's, or a gateway's devices)."""
    if len(data) < 8:
        return []
    _, protocol_id, length, unit, _ = MBAP.unpack_from(data)
    if protocol_id == 0 and 2 <= length <= MAX_LENGTH and len(data) < 14 + length:
        return UNIT_ADDRESSES[unit]  # one ADU (a flow's first segment, mostly): read once per flow
    units, pos = set(), 0
    while len(data) - pos >= 8 and len(units) < 8:
        _, protocol_id, length, unit, _ = MBAP.unpack_from(data, pos)
        if protocol_id != 0 or not 2 <= length <= MAX_LENGTH:
            break
        units.add(unit)
        pos += 6 + length
    return [(1, str(unit)) for unit in sorted(units)]


ANALYZER = Analyzer(
    name="modbus", probe=probe, parse=parse, tcp_ports=frozenset({502}), batch=batch, command=command,
    addresses=addresses,
)  # fmt: skip
