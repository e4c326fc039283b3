"""S7comm-plus (protocol id 0x72): the command name of one PDU, from its opcode and function code.

Owns: the S7comm-plus header, the V3 integrity part and the function-code table.
Never: frames TPKT/COTP (``s7comm.py`` does and calls :func:`pdu_names`), keeps state, or raises.

Layout, after the community dissector packet-s7comm_plus.c (Thomas Wiens, "s7commwireshark"):

* header: ``0x72``, protocol version (``hf_s7commp_header_protocolversion``: 0x01 V1, 0x02 V2,
  0x03 V3, 0xfe System Event, 0xff Keep Alive), data length (``hf_s7commp_header_datlg``, 2 bytes);
* V3 only: the integrity part comes first (``s7commp_decode_integrity``): a digest length byte
  (0x20) and the digest.  V1 carries no integrity, V2 carries it at the *end* of the data part;
* data part (``s7commp_decode_data``): opcode (``hf_s7commp_data_opcode``); for a Notification
  (0x33) the subscription data follows directly, otherwise reserved (2 bytes), function code
  (``hf_s7commp_data_function``, 2 bytes), reserved (2 bytes), sequence number, ...;
* trailer: ``0x72``, version, ``0x0000``.  A PDU too long for one COTP TSDU is sent as several
  S7comm-plus fragments, each with its own header; only the last one carries the trailer.
"""

from __future__ import annotations

import struct

S7COMM_PLUS_PROT_ID = 0x72

# protocolversion_names
PROTOCOL_VERSION_V3 = 0x03
PROTOCOL_VERSION_SYSTEM_EVENT = 0xFE
PROTOCOL_VERSION_KEEP_ALIVE = 0xFF

# opcode_names
OPCODE_REQUEST = 0x31
OPCODE_RESPONSE = 0x32
OPCODE_NOTIFICATION = 0x33
OPCODE_RESPONSE2 = 0x02  # "Response2", seen with V13 HMIs on cyclic data
OPCODES_WITH_FUNCTION = frozenset({OPCODE_REQUEST, OPCODE_RESPONSE, OPCODE_RESPONSE2})

# data_functioncode_names, exactly as the dissector spells them
FUNCTION_NAMES = {
    0x04B1: "Error",
    0x04BB: "Explore",
    0x04CA: "CreateObject",
    0x04D4: "DeleteObject",
    0x04F2: "SetVariable",
    0x04FC: "GetVariable",
    0x0506: "AddLink",
    0x051A: "RemoveLink",
    0x0524: "GetLink",
    0x0542: "SetMultiVariables",
    0x054C: "GetMultiVariables",
    0x0556: "BeginSequence",
    0x0560: "EndSequence",
    0x056B: "Invoke",
    0x057C: "SetVarSubStreamed",
    0x0586: "GetVarSubStreamed",
    0x0590: "GetVariablesAddress",
    0x059A: "Abort",
    0x05A9: "Error 2",
    0x05B3: "InitSSL",
}

HEADER = struct.Struct(">BBH")  # protocol id, protocol version, data length
DATA_HEAD = struct.Struct(">BHHH")  # opcode, reserved1, function code, reserved2


def pdu_names(payload: bytes) -> list[str]:
    """The command names one S7comm-plus PDU carries (``payload`` starts at the 0x72 byte).

    * Request / Response / Response2: the function name (``Explore``, ``CreateObject``, ...); an
      unlisted function code is ``Function 0xNNNN`` (the dissector prints ``?``).
    * Notification: ``Notification`` (it has no function code).
    * Keep Alive (version 0xff) and System Event (0xfe) frames: nothing.  The dissector shows only a
      sequence number / confirmed-byte count there; they are transport housekeeping that both ends
      send on their own, not commands, just like the trailer.
    * A bare trailer (``72 VV 00 00``), an inner or last fragment of a fragmented PDU (raw
      continuation bytes where the opcode would be) and an unknown opcode: nothing.  The first
      fragment carries the opcode and function code, so a fragmented PDU is named once, as the
      dissector names it after reassembly.
    """
    if len(payload) < HEADER.size or payload[0] != S7COMM_PLUS_PROT_ID:
        return []
    version = payload[1]
    if version in (PROTOCOL_VERSION_KEEP_ALIVE, PROTOCOL_VERSION_SYSTEM_EVENT):
        return []
    offset = HEADER.size
    if version == PROTOCOL_VERSION_V3:
        # s7commp_decode_integrity before the data part: digest length byte, then the digest
        if len(payload) <= offset:
            return []
        offset += 1 + payload[offset]
    if len(payload) <= offset:
        return []  # a trailer on its own, or a header with no data
    opcode = payload[offset]
    if opcode == OPCODE_NOTIFICATION:
        return ["Notification"]
    if opcode not in OPCODES_WITH_FUNCTION or len(payload) < offset + DATA_HEAD.size:
        return []
    _, reserved1, function, reserved2 = DATA_HEAD.unpack_from(payload, offset)
    name = FUNCTION_NAMES.get(function)
    if name is not None:
        return [name]
    # An unlisted code is only believed when both reserved words are zero, as in every PDU seen:
    # continuation fragments start with arbitrary bytes that may look like an opcode.
    if reserved1 == 0 and reserved2 == 0:
        return [f"Function 0x{function:04x}"]
    return []
