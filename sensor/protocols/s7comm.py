"""S7comm on ISO-on-TCP: TPKT (RFC 1006) + COTP (ISO 8073) on TCP 102, S7 names and SZL identity.

Owns: port-102 framing for S7comm (0x32) and S7comm-plus (0x72, named by ``s7comm_plus``).
Never: keeps state between calls, touches storage, or raises anything but ``Malformed`` (framing).

Names follow Wireshark's packet-s7comm.c.  Where Wireshark 4.0 (installed here) and the current
dissector differ, 4.0's names win and entries only the newer dissector knows are added (marked).
"""

from __future__ import annotations

import struct

import numpy as np

from sensor.protocols import (
    MODE,
    PROGRAM,
    READ,
    START,
    STOP,
    UPLOAD,
    WRITE,
    Analyzer,
    Malformed,
    Operation,
    ParseResult,
    merge_identity,
)
from sensor.protocols.s7comm_plus import S7COMM_PLUS_PROT_ID, pdu_names

S7COMM_PROT_ID = 0x32

# --------------------------------------------------------------------------------------------
# Name tables (value_string tables of packet-s7comm.c)
# --------------------------------------------------------------------------------------------

# param_functionnames: the function of a Job / Ack_Data parameter part (hf_s7comm_param_service)
FUNCTION_NAMES = {
    0x00: "CPU services",
    0xF0: "Setup communication",
    0x04: "Read Var",
    0x05: "Write Var",
    0x1A: "Request download",
    0x1B: "Download block",
    0x1C: "Download ended",
    0x1D: "Start upload",
    0x1E: "Upload",
    0x1F: "End upload",
    0x28: "PI-Service",
    0x29: "PLC Stop",
}

# What each Job function does (READ/WRITE, or an operational category).  PI-Service (0x28) is
# categorised by the service it invokes (PI_SERVICE_CATEGORIES); the rest of it is neither.
FUNCTION_CATEGORIES = {
    0x04: READ,
    0x05: WRITE,
    0x1A: PROGRAM,
    0x1B: PROGRAM,
    0x1D: UPLOAD,
    0x1E: UPLOAD,
    0x29: STOP,
}
PI_SERVICE = 0x28
# pi_service_names of packet-s7comm.c: P_PROGRAM is "PLC Start / Stop"; as a PI-Service (0x28) it
# starts the CPU — hot start with an empty parameter block, cold start with "C " (snap7's
# PlcHotStart / PlcColdStart) — the stop being function 0x29 with the same service name.
PI_SERVICE_CATEGORIES = {"P_PROGRAM": START}
# Functions the fast path leaves to parse, which marks their Jobs (batch's table lookup cannot).
NOT_NAMED_FROM_TABLE = np.zeros(256, bool)
NOT_NAMED_FROM_TABLE[[*FUNCTION_CATEGORIES, PI_SERVICE]] = True
NOT_NAMED_FROM_TABLE[[0x04, 0x05]] = False
MARKED_FUNCTIONS = frozenset(np.flatnonzero(NOT_NAMED_FROM_TABLE).tolist())  # the same, for parse

# Block types of the file names in download/upload parameters ("_0A00001P": type 0A, number 00001),
# blocktype_names of packet-s7comm.c.
BLOCK_TYPES = {"08": "OB", "0A": "DB", "0B": "SDB", "0C": "FC", "0D": "SFC", "0E": "FB", "0F": "SFB"}

# userdata_tis_subfunc_names (4.0: userdata_prog_subfunc_names), group 1 "Programmer commands"
USERDATA_TIS_SUBFUNC_NAMES = {
    0x01: "Block status",
    0x02: "Variable status",
    0x03: "Output ISTACK",
    0x04: "Output BSTACK",
    0x05: "Output LSTACK",
    0x06: "Time measurement from to",
    0x07: "Force selection",
    0x08: "Modify variable",
    0x09: "Force",
    0x0A: "Breakpoint",
    0x0B: "Exit HOLD",
    0x0C: "Memory reset",
    0x0D: "Disable job",
    0x0E: "Enable job",
    0x0F: "Delete job",
    0x10: "Read job list",
    0x11: "Read job",
    0x12: "Replace job",
    0x13: "Block status v2",
    0x16: "Flash LED",
}

# userdata_cyclic_subfunc_names, function group 2 "Cyclic services"
USERDATA_CYCLIC_SUBFUNC_NAMES = {
    0x01: "Cyclic transfer",
    0x04: "Unsubscribe",
    0x05: "Change driven transfer",
    0x07: "Change driven transfer modify",
    0x08: "RDREC",
}

# userdata_block_subfunc_names, function group 3 "Block functions"
USERDATA_BLOCK_SUBFUNC_NAMES = {
    0x01: "List blocks",
    0x02: "List blocks of type",
    0x03: "Get block info",
}

# userdata_cpu_subfunc_names, function group 4 "CPU functions"
USERDATA_CPU_SUBFUNC_NAMES = {
    0x01: "Read SZL",
    0x02: "Message service",
    0x03: "Diagnostic message",
    0x05: "ALARM_8 indication",
    0x06: "NOTIFY indication",
    0x07: "ALARM_8 lock",
    0x08: "ALARM_8 unlock",
    0x09: "SCAN indication",
    0x0B: "ALARM ack",
    0x0C: "ALARM ack indication",
    0x0D: "ALARM lock indication",
    0x0E: "ALARM unlock indication",
    0x10: "AR_SEND indication",  # newer dissector only
    0x11: "ALARM_SQ indication",
    0x12: "ALARM_S indication",
    0x13: "ALARM query",
    0x16: "NOTIFY_8 indication",
}

# userdata_sec_subfunc_names, function group 5 "Security"
USERDATA_SEC_SUBFUNC_NAMES = {
    0x01: "PLC password",
}

# userdata_time_subfunc_names, function group 7 "Time functions"
USERDATA_TIME_SUBFUNC_NAMES = {
    0x01: "Read clock",
    0x02: "Set clock",
    0x03: "Read clock (following)",
    0x04: "Set clock",
}

# userdata_ncprg_subfunc_names, function group "NC programming" (Sinumerik file transfer)
USERDATA_NCPRG_SUBFUNC_NAMES = {
    0x01: "Request download",
    0x02: "Download block",
    0x03: "Continue download",
    0x04: "Download ended",
    0x06: "Start upload",
    0x07: "Upload",
    0x08: "Continue upload",
}

# userdata_drr_subfunc_names, function group 0x20 "DR Routing" (newer dissector only)
USERDATA_DRR_SUBFUNC_NAMES = {
    0x01: "DRR Init",
    0x02: "DRR Finish",
    0x03: "DRR Data",
}

# modetrans_param_subfunc_names (4.0: group 0 "Mode-transition"; newer: modetrans_param_mode_names
# of the "Mode transition indication", userdata function 0x01).  The CPU pushes its new mode.
MODE_TRANSITION_NAMES = {
    0x00: "STOP",
    0x01: "Warm Restart",
    0x02: "RUN",
    0x03: "Hot Restart",
    0x04: "HOLD",
    0x06: "Cold Restart",
    0x09: "RUN_R (H-System redundant)",
    0x0B: "LINK-UP",
    0x0C: "UPDATE",
}

# Function group (hf_s7comm_userdata_param_funcgroup) -> its subfunction table.  4.0 reads the
# group from the low nibble, the newer dissector from the low 6 bits; NC programming is 0xf in the
# one and 0x3f in the other, both kept.
USERDATA_SUBFUNC_TABLES = {
    0x01: USERDATA_TIS_SUBFUNC_NAMES,
    0x02: USERDATA_CYCLIC_SUBFUNC_NAMES,
    0x03: USERDATA_BLOCK_SUBFUNC_NAMES,
    0x04: USERDATA_CPU_SUBFUNC_NAMES,
    0x05: USERDATA_SEC_SUBFUNC_NAMES,
    0x07: USERDATA_TIME_SUBFUNC_NAMES,
    0x0F: USERDATA_NCPRG_SUBFUNC_NAMES,
    0x3F: USERDATA_NCPRG_SUBFUNC_NAMES,
    0x20: USERDATA_DRR_SUBFUNC_NAMES,
}

# Function groups that Wireshark names but whose subfunction it never names (the switch in
# s7comm_decode_ud falls to ``default``): the group name is the most specific name there is.
USERDATA_GROUP_ONLY_NAMES = {
    0x06: "PBC BSEND/BRECV",  # userdata_functiongroup_names, 4.0 spelling (newer: "PBC BSEND")
}

# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------

TPKT = struct.Struct(">BBH")  # version (3), reserved, length incl. this header (RFC 1006)
TPKT_VERSION = 3
TPKT_MIN_LENGTH = 7  # TPKT header + the shortest COTP DT (LI, code, TPDU-NR/EOT)

# COTP TPDU codes (high nibble of the second header byte, ISO 8073 13.1)
COTP_DT = 0xF0
COTP_NON_DATA_CODES = frozenset({0x10, 0x20, 0x50, 0x60, 0x70, 0x80, 0xC0, 0xD0, 0xE0})  # ED..CR
COTP_EOT = 0x80  # top bit of the byte after the DT code (normal and extended formats)

MAX_TSDU_BYTES = 64 * 1024  # bytes of COTP DTs scanned for an EOT before giving up

S7_HEADER = struct.Struct(">BBHHHH")  # protid, rosctr, redid, pduref, parlg, datlg
ROSCTR_JOB = 0x01
ROSCTR_ACK = 0x02
ROSCTR_ACK_DATA = 0x03
ROSCTR_USERDATA = 0x07
# Ack and Ack_Data have a 12-byte header: error class and error code follow the data length
ROSCTR_WITH_ERROR_FIELD = frozenset({ROSCTR_ACK, ROSCTR_ACK_DATA})

# Userdata parameter (s7comm_decode_ud): head 0x00 0x01 0x12 (newer: function, item count,
# varspec), parameter length, method (newer: syntax id), type|group, subfunction, sequence number,
# then for 12-byte parameters data unit reference, last data unit, error code.
UD_PARAM_MIN = 7  # up to and including the subfunction
UD_FUNCTION_MODE_TRANSITION = 0x01  # param[0] (S7COMM_SERV_MODETRANS in the newer dissector)
UD_SYNTAX_ID_PBC_USEND = 0x13  # param[4]: R_ID follows, USEND indication
UD_TYPE_RESPONSE = 0x80  # top two bits of the type|group byte (4.0: type nibble 8)
UD_GROUP_MASK = 0x3F
UD_GROUP_MODE_TRANSITION = 0x00
UD_GROUP_CPU = 0x04
UD_SUBFUNC_READ_SZL = 0x01

UD_DATA_HEAD = struct.Struct(">BBH")  # return code, transport size, length
DATA_RETURN_OK = 0xFF
SZL_HEADER = struct.Struct(">HHHH")  # SZL-ID, index, record length (LENTHDR), record count (N_DR)
SZL_0011_RECORD = struct.Struct(">H20sHHH")  # index, MlfB (order number), BGTyp, Ausbg, Ausbe
SZL_001C_NAME = struct.Struct(">H24s")  # index, name / serial (first 24 characters)
SZL_MAX_RECORDS = 64

# packet-s7comm_szl_ids.c: 0x0011 "Module identification", 0x001c "Component identification"
# (partial list extract 0x00xx all records, 0x01xx one record, same record layout).
SZL_IDS_MODULE_IDENTIFICATION = frozenset({0x0011, 0x0111})
SZL_IDS_COMPONENT_IDENTIFICATION = frozenset({0x001C, 0x011C})
SZL_0011_MODULE = 0x0001  # "Identification of the module"
SZL_0011_BASIC_HARDWARE = 0x0006
SZL_0011_BASIC_FIRMWARE = 0x0007  # "Identification of the basic firmware"
SZL_001C_PLC_NAME = 0x0001  # "Name of the automation system"
SZL_001C_MODULE_NAME = 0x0002  # "Name of the module"
SZL_001C_SERIAL = 0x0005  # "Serial number of the module"
VERSION_MARK = ord("V")  # Ausbg high byte of a version record: 'V', then the major number

SIEMENS = "Siemens"


# --------------------------------------------------------------------------------------------
# Probe
# --------------------------------------------------------------------------------------------


def probe(data: bytes, to_server: bool) -> bool | None:
    """True when the first COTP data of this direction is S7comm (0x32) or S7comm-plus (0x72).

    Connection request/confirm TPDUs and empty data TPDUs ask for more bytes; anything that is not
    TPKT version 3 with COTP inside (TLS, garbage) or whose data starts otherwise (IEC 61850 MMS:
    an ISO 8327 session SPDU such as 0x0d CONNECT or 0x01 GIVE TOKENS) is rejected.
    """
    offset = 0
    size = len(data)
    while True:
        if size - offset < TPKT.size:
            if offset < size and data[offset] != TPKT_VERSION:
                return False
            if offset + 1 < size and data[offset + 1] != 0:
                return False
            return None
        version, reserved, length = TPKT.unpack_from(data, offset)
        if version != TPKT_VERSION or reserved != 0 or length < TPKT_MIN_LENGTH:
            return False
        if size - offset < TPKT.size + 2:
            return None
        li = data[offset + 4]
        code = data[offset + 5] & 0xF0
        if li + 1 > length - TPKT.size:
            return False
        end = offset + length
        if code == COTP_DT:
            if li < 2:
                return False
            start = offset + TPKT.size + 1 + li
            if start < min(end, size):
                first = data[start]
                if first == S7COMM_PROT_ID:
                    # Wireshark's heuristic: ROSCTR between 0x01 and 0x07
                    if start + 1 < min(end, size) and not 0x01 <= data[start + 1] <= 0x07:
                        return False
                    return True
                return first == S7COMM_PLUS_PROT_ID
        elif code not in COTP_NON_DATA_CODES:
            return False
        if end > size:
            return None
        offset = end  # CR, CC, ... or an empty DT (TIA sends DTs with EOT=0 and no data)


# --------------------------------------------------------------------------------------------
# Parse
# --------------------------------------------------------------------------------------------


def parse(buf: bytes, to_server: bool) -> ParseResult:
    """Consume complete TPKTs; name each COTP TSDU (DTs up to the one with EOT set) they complete.

    A framing error after at least one consumed TPKT ends this call early instead of raising, so
    the names already found are kept; the next call then starts at the bad bytes and raises.
    """
    commands: list[tuple[str, str]] = []
    identity: dict[str, str] = {}
    consumed = 0
    size = len(buf)
    while True:
        try:
            tsdu_end, payload = _next_tsdu(buf, consumed, size)
        except Malformed:
            if consumed:
                break
            raise
        if tsdu_end == consumed:
            break  # the first TPKT or the TSDU is still incomplete
        if payload:
            try:
                _name_tsdu(payload, commands, identity)
            except Malformed:
                if consumed:
                    break
                raise
        consumed = tsdu_end
    return consumed, commands, identity


def _next_tsdu(buf: bytes, start: int, size: int) -> tuple[int, bytes]:
    """Where the next TSDU ends and its data; (start, b"") while it is incomplete.

    Non-data TPDUs (CR, CC, DR, ...) are taken silently.  An S7 PDU split over several DTs (EOT=0,
    possibly in several TPKTs) is only taken once the DT with EOT=1 is there, because parse keeps
    no state between calls.
    """
    offset = start
    parts: list[bytes] = []
    while True:
        if size - offset < TPKT.size:
            return start, b""
        version, _, length = TPKT.unpack_from(buf, offset)
        if version != TPKT_VERSION or length < TPKT_MIN_LENGTH:
            raise Malformed(f"TPKT version {version}, length {length}")
        end = offset + length
        if end > size:
            if end - start > MAX_TSDU_BYTES:
                raise Malformed("COTP data without end of TSDU")
            return start, b""
        li = buf[offset + 4]
        code = buf[offset + 5] & 0xF0
        if li + 1 > length - TPKT.size:
            raise Malformed(f"COTP length indicator {li} beyond the TPKT")
        if code == COTP_DT:
            if li < 2:
                raise Malformed(f"COTP DT length indicator {li}")
            data = buf[offset + TPKT.size + 1 + li : end]
            if buf[offset + 6] & COTP_EOT:
                return end, b"".join(parts + [data]) if parts else data
            parts.append(data)
            if end - start > MAX_TSDU_BYTES:
                raise Malformed("COTP data without end of TSDU")
        elif code not in COTP_NON_DATA_CODES:
            raise Malformed(f"COTP TPDU code 0x{code:02x}")
        elif not parts:
            return end, b""
        offset = end


def _name_tsdu(payload: bytes, commands: list[tuple[str, str]], identity: dict[str, str]) -> None:
    first = payload[0]
    if first == S7COMM_PROT_ID:
        name = _s7comm_name(payload, identity)
        if name.__class__ is str:
            commands.append(("s7comm", name))
        elif name is not None:
            commands.append(name)  # an Operation
    elif first == S7COMM_PLUS_PROT_ID:
        commands.extend(("s7comm-plus", name) for name in pdu_names(payload))
    elif _is_tls_record(payload):
        pass  # S7comm-plus after InitSSL: TLS records inside COTP (dissect_s7commp_ssl)
    else:
        raise Malformed(f"COTP data starts with 0x{first:02x}, not S7comm")


def _is_tls_record(payload: bytes) -> bool:
    # content type 20..23 (change_cipher_spec .. application_data), record version 3.x
    return len(payload) >= 5 and 0x14 <= payload[0] <= 0x17 and payload[1] == 0x03


def _s7comm_name(pdu: bytes, identity: dict[str, str]) -> str | Operation | None:
    """The command name of one S7comm PDU (dissect_s7comm), or None when Wireshark shows none; an
    :class:`Operation` for the Jobs and mode transitions of the operational categories."""
    if len(pdu) < S7_HEADER.size:
        raise Malformed("S7comm header truncated")
    _, rosctr, _, _, parlg, datlg = S7_HEADER.unpack_from(pdu)
    if not 0x01 <= rosctr <= 0x07:
        raise Malformed(f"S7comm ROSCTR 0x{rosctr:02x}")
    header_len = S7_HEADER.size + (2 if rosctr in ROSCTR_WITH_ERROR_FIELD else 0)
    if len(pdu) < header_len:
        raise Malformed("S7comm header truncated")
    if rosctr in (ROSCTR_JOB, ROSCTR_ACK_DATA):
        if parlg == 0:
            return None  # no parameter part, so no function (s7comm_decode_req_resp)
        if len(pdu) <= header_len:
            raise Malformed("S7comm parameter truncated")
        function = pdu[header_len]
        name = FUNCTION_NAMES.get(function, f"Function 0x{function:02x}")
        if rosctr == ROSCTR_JOB and function in MARKED_FUNCTIONS:
            return _job_operation(name, function, pdu[header_len : header_len + parlg]) or name
        return name
    if rosctr == ROSCTR_USERDATA:
        param = pdu[header_len : header_len + parlg]
        if len(param) < UD_PARAM_MIN:
            raise Malformed("S7comm userdata parameter truncated")
        name, is_szl_response = _userdata_name(param)
        if _is_mode_transition(param):
            return Operation("s7comm", name, MODE, f"mode {name}")
        if is_szl_response:
            data = pdu[header_len + parlg : header_len + parlg + datlg]
            merge_identity(identity, _szl_identity(data))
        return name
    # ROSCTR 2 (Ack) has no parameter part; Wireshark shows "ROSCTR:[Ack]" and no function, as it
    # does for the 4..6 values its heuristic lets through.
    return None


def _job_operation(name: str, function: int, param: bytes) -> Operation | None:
    """The operational Jobs: PLC Stop and PI-Service start (the service name read from the
    parameter, s7comm_decode_pi_service), downloads and uploads (the block from the file name)."""
    if function == PI_SERVICE:
        # function, 7 unknown bytes, parameter block length, parameter block, string length, service
        if len(param) < 10:
            return None
        block_length = int.from_bytes(param[8:10], "big")
        at = 10 + block_length
        if at >= len(param):
            return None
        service = _text(param[at + 1 : at + 1 + param[at]])
        category = PI_SERVICE_CATEGORIES.get(service)
        if category is None:
            return None
        block = _text(param[10:at]) if block_length else ""
        start = "cold start" if block.startswith("C") else "hot start"
        return Operation("s7comm", name, category, f"PI-Service {service}, {start}" + (f" ({block})" if block else ""))
    category = FUNCTION_CATEGORIES[function]
    if category == STOP:  # function, 5 unknown bytes, string length, PI service name
        service = _text(param[7 : 7 + param[6]]) if len(param) > 7 else ""
        return Operation("s7comm", name, category, f"PI-Service {service}" if service else "")
    # function, status, 2 unknown bytes, upload id (4), file name length, file name ("_0A00001P")
    file_name = _text(param[9 : 9 + param[8]]) if len(param) > 9 else ""
    block = ""
    if len(file_name) >= 8 and file_name[1:3] in BLOCK_TYPES and file_name[3:8].isdigit():
        block = f"block {BLOCK_TYPES[file_name[1:3]]}{int(file_name[3:8])}"
    return Operation("s7comm", name, category, block)


def _is_mode_transition(param: bytes) -> bool:
    """A mode-transition push (the CPU announcing its new mode), as _userdata_name reads it."""
    if param[0] == UD_FUNCTION_MODE_TRANSITION:
        return True
    return param[4] != UD_SYNTAX_ID_PBC_USEND and param[5] & UD_GROUP_MASK == UD_GROUP_MODE_TRANSITION


def _userdata_name(param: bytes) -> tuple[str, bool]:
    """(subfunction name, is a Read SZL response) of a userdata parameter part.

    Unknown subfunction of a known group: Wireshark prints ``Unknown subfunc: 0xNN``; here it is
    ``Function 0xNN`` (the contract's spelling for an unknown code), NN being the subfunction.
    """
    subfunc = param[6]
    if param[0] == UD_FUNCTION_MODE_TRANSITION:
        return MODE_TRANSITION_NAMES.get(subfunc, f"Function 0x{subfunc:02x}"), False
    if param[4] == UD_SYNTAX_ID_PBC_USEND:
        return "USEND", False  # newer dissector: "Function:[Indication] -> [USEND]"
    type_group = param[5]
    group = type_group & UD_GROUP_MASK
    if group == UD_GROUP_MODE_TRANSITION:
        return MODE_TRANSITION_NAMES.get(subfunc, f"Function 0x{subfunc:02x}"), False
    table = USERDATA_SUBFUNC_TABLES.get(group)
    if table is None:
        table = USERDATA_SUBFUNC_TABLES.get(group & 0x0F)  # 4.0 reads a nibble
        if table is None:
            group_name = USERDATA_GROUP_ONLY_NAMES.get(group & 0x0F)
            return group_name or f"Function 0x{subfunc:02x}", False
    name = table.get(subfunc, f"Function 0x{subfunc:02x}")
    is_szl_response = group == UD_GROUP_CPU and subfunc == UD_SUBFUNC_READ_SZL and type_group & 0xC0 == UD_TYPE_RESPONSE
    return name, is_szl_response


# --------------------------------------------------------------------------------------------
# SZL identity
# --------------------------------------------------------------------------------------------


def _szl_identity(data: bytes) -> dict[str, str]:
    """Identity facts from the data part of a Read SZL response; {} for anything unexpected.

    Only the first fragment of a fragmented response starts with the SZL header; the complete
    records it holds are read, continuation fragments fail the header checks and are ignored.
    """
    if len(data) < UD_DATA_HEAD.size + SZL_HEADER.size:
        return {}
    return_code, _, length = UD_DATA_HEAD.unpack_from(data)
    if return_code != DATA_RETURN_OK:
        return {}
    szl = data[UD_DATA_HEAD.size : UD_DATA_HEAD.size + length]
    if len(szl) < SZL_HEADER.size:
        return {}
    szl_id, _, record_len, record_count = SZL_HEADER.unpack_from(szl)
    if record_count > SZL_MAX_RECORDS:
        return {}
    if szl_id in SZL_IDS_MODULE_IDENTIFICATION:
        facts = _module_identification(szl, record_len, record_count)
    elif szl_id in SZL_IDS_COMPONENT_IDENTIFICATION:
        facts = _component_identification(szl, record_len, record_count)
    else:
        return {}
    if facts:
        facts["vendor"] = SIEMENS
    return facts


def _records(szl: bytes, record_len: int, record_count: int, layout: struct.Struct):
    offset = SZL_HEADER.size
    for _ in range(record_count):
        if offset + layout.size > len(szl):
            return
        yield layout.unpack_from(szl, offset)
        offset += record_len


def _module_identification(szl: bytes, record_len: int, record_count: int) -> dict[str, str]:
    """SZL 0x0011: order number (MlfB) of the module, version of the basic firmware."""
    if record_len < SZL_0011_RECORD.size:
        return {}
    order_numbers: dict[int, str] = {}
    versions: dict[int, str] = {}
    for index, mlfb, _, ausbg, ausbe in _records(szl, record_len, record_count, SZL_0011_RECORD):
        text = _text(mlfb)
        if text:
            order_numbers[index] = text
        # a version record: Ausbg = 'V', major; Ausbe = minor, patch (e.g. 0x5603 0x0206: V3.2.6)
        if ausbg >> 8 == VERSION_MARK:
            versions[index] = f"V{ausbg & 0xFF}.{ausbe >> 8}.{ausbe & 0xFF}"
    facts = {}
    order_number = order_numbers.get(SZL_0011_MODULE) or order_numbers.get(SZL_0011_BASIC_HARDWARE)
    if order_number:
        facts["type"] = order_number
    firmware = versions.get(SZL_0011_BASIC_FIRMWARE) or versions.get(SZL_0011_MODULE)
    if firmware:
        facts["firmware"] = firmware
    return facts


def _component_identification(szl: bytes, record_len: int, record_count: int) -> dict[str, str]:
    """SZL 0x001c: name of the automation system (else of the module), serial number."""
    if record_len < SZL_001C_NAME.size:
        return {}
    texts = {
        index: text for index, raw in _records(szl, record_len, record_count, SZL_001C_NAME) if (text := _text(raw))
    }
    facts = {}
    name = texts.get(SZL_001C_PLC_NAME) or texts.get(SZL_001C_MODULE_NAME)
    if name:
        facts["name"] = name
    if SZL_001C_SERIAL in texts:
        facts["serial"] = texts[SZL_001C_SERIAL]
    return facts


def _text(raw: bytes) -> str:
    """A fixed-width SZL string without its padding; "" when it is not printable ASCII."""
    text = raw.split(b"\x00", 1)[0].strip(b" ")
    if not text or any(not 0x20 <= byte <= 0x7E for byte in text):
        return ""
    return text.decode("ascii")


def batch(data, starts: np.ndarray, lengths: np.ndarray, to_server: np.ndarray):
    """Segments holding exactly one TPKT with one complete COTP DT (EOT set); of those, the Job and
    Ack_Data S7comm PDUs with a parameter part are named by their function code.  User-data (identity,
    subfunction tables), S7comm-plus and the rest are parsed."""
    buf = np.frombuffer(data, dtype=np.uint8)
    last = len(buf) - 1

    def byte(k) -> np.ndarray:
        return buf[np.minimum(starts + k, last)].astype(np.int64)

    li = byte(4)
    whole = (lengths >= 7) & (byte(0) == TPKT_VERSION) & ((byte(2) << 8 | byte(3)) == lengths)
    whole &= (li >= 2) & (li + 1 <= lengths - TPKT.size) & ((byte(5) & 0xF0) == COTP_DT) & ((byte(6) & COTP_EOT) != 0)
    rosctr = byte(8)
    header = np.where(rosctr == ROSCTR_JOB, S7_HEADER.size, S7_HEADER.size + 2)
    named = whole & (li == 2) & (lengths >= 7 + S7_HEADER.size + 3) & (byte(7) == S7COMM_PROT_ID)
    named &= ((rosctr == ROSCTR_JOB) | (rosctr == ROSCTR_ACK_DATA)) & ((byte(13) << 8 | byte(14)) > 0)
    named &= lengths > 7 + header
    function = byte(7 + header)
    named &= ~((rosctr == ROSCTR_JOB) & NOT_NAMED_FROM_TABLE[function])  # parse marks these Jobs
    return whole, named, function


def command(code: int) -> tuple[str, str]:
    return ("s7comm", FUNCTION_NAMES.get(code, f"Function 0x{code:02x}"))


COTP_CR = 0xE0
COTP_CALLED_TSAP = 0xC2


def addresses(data: bytes) -> list[tuple[int, str]]:
    """The rack and slot of the CPU the initiator's COTP connection request calls: its called TSAP
    is (connection type, rack * 32 + slot) on S7-300/400/1200 (TIA's string TSAPs carry none)."""
    if len(data) < 11 or data[0] != TPKT_VERSION or data[5] & 0xF0 != COTP_CR:
        return []
    end = min(len(data), 5 + data[4])
    at = 11  # TPKT (4), LI, code, destination and source references, class
    while at + 2 <= end:
        code, size = data[at], data[at + 1]
        if code == COTP_CALLED_TSAP and size == 2 and at + 4 <= end:
            return [(1, f"rack {data[at + 3] >> 5}, slot {data[at + 3] & 0x1F}")]
        at += 2 + size
    return []


ANALYZER = Analyzer(
    name="s7comm", probe=probe, parse=parse, tcp_ports=frozenset({102}), batch=batch, command=command,
    addresses=addresses,
)  # fmt: skip
