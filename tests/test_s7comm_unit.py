"""Unit checks of the S7comm / S7comm-plus analyzer over hand-built TPKT + COTP + S7 bytes."""

from __future__ import annotations

import struct

import pytest

from sensor.protocols import Malformed, s7comm
from sensor.protocols.s7comm_plus import pdu_names

# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------


def tpkt(cotp: bytes) -> bytes:
    return struct.pack(">BBH", 3, 0, 4 + len(cotp)) + cotp


def cotp_cr() -> bytes:
    # LI 17: CR, dst-ref 0, src-ref 1, class 0, TPDU size 1024, calling TSAP 0x0100, called 0x0102
    return tpkt(bytes.fromhex("11e00000000100c0010ac1020100c2020102"))


def cotp_cc() -> bytes:
    return tpkt(bytes.fromhex("11d00001000100c0010ac1020100c2020102"))


def cotp_dt(payload: bytes, eot: bool = True) -> bytes:
    return tpkt(bytes([2, 0xF0, 0x80 if eot else 0x00]) + payload)


def s7(rosctr: int, param: bytes, data: bytes = b"", pduref: int = 1) -> bytes:
    header = struct.pack(">BBHHHH", 0x32, rosctr, 0, pduref, len(param), len(data))
    if rosctr in (2, 3):
        header += b"\x00\x00"  # error class, error code
    return header + param + data


def userdata_param(type_group: int, subfunc: int, method: int = 0x11) -> bytes:
    return bytes([0x00, 0x01, 0x12, 0x04, method, type_group, subfunc, 0x00])


def szl_response(szl_id: int, record_len: int, records: list[bytes]) -> bytes:
    """Userdata Read SZL response (Response, CPU functions) carrying the given SZL records."""
    param = bytes([0x00, 0x01, 0x12, 0x08, 0x12, 0x84, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00])
    szl = struct.pack(">HHHH", szl_id, 0, record_len, len(records)) + b"".join(records)
    data = struct.pack(">BBH", 0xFF, 0x09, len(szl)) + szl
    return s7(7, param, data)


def record_0011(index: int, mlfb: str, ausbg: int, ausbe: int) -> bytes:
    return struct.pack(">H20sHHH", index, mlfb.encode().ljust(20), 0x00C0, ausbg, ausbe)


def record_001c(index: int, text: str) -> bytes:
    return struct.pack(">H32s", index, text.encode())


READ_VAR_JOB = s7(1, bytes.fromhex("0401120a10020001000184000000"))
SETUP_COMMUNICATION_JOB = s7(1, bytes.fromhex("f0000001000101e0"))
READ_SZL_REQUEST = s7(7, userdata_param(0x44, 0x01), bytes.fromhex("ff09000400110000"))

# S7comm-plus V1 CreateObject request, as TIA opens a session (start of a real one, shortened)
# header 72 01 0016 | Request, reserved, CreateObject, reserved, seq 1, session... | trailer
CREATE_OBJECT_REQUEST = bytes.fromhex("72010016" + "31000004ca00000001" + "00000120360000011d00040000" + "72010000")
TLS_CLIENT_HELLO = bytes.fromhex("160301007a0100007603035f")
MMS_INITIATE = bytes.fromhex("0dc90506130100160102140200023302000134020001c1b3")


def parsed(buf: bytes) -> tuple[int, list[tuple[str, str]], dict[str, str]]:
    return s7comm.parse(buf, True)


# ---------------------------------------------------------------------------------------------
# probe
# ---------------------------------------------------------------------------------------------


def test_probe_waits_while_only_connection_setup_is_seen():
    assert s7comm.probe(cotp_cr(), True) is None
    assert s7comm.probe(cotp_cc(), False) is None
    assert s7comm.probe(cotp_cr()[:10], True) is None
    assert s7comm.probe(b"\x03\x00", True) is None
    assert s7comm.probe(b"", True) is None


def test_probe_claims_s7comm_and_s7comm_plus():
    assert s7comm.probe(cotp_cr() + cotp_dt(SETUP_COMMUNICATION_JOB), True) is True
    assert s7comm.probe(cotp_dt(READ_VAR_JOB), True) is True
    assert s7comm.probe(cotp_cr() + cotp_dt(CREATE_OBJECT_REQUEST), True) is True
    # decided as soon as the first data byte is visible, even in a partial TPKT
    assert s7comm.probe(cotp_cr() + cotp_dt(READ_VAR_JOB)[:9], True) is True


def test_probe_skips_empty_data_tpdus():
    empty_dt = cotp_dt(b"", eot=False)  # TIA sends these between requests
    assert s7comm.probe(empty_dt, True) is None
    assert s7comm.probe(empty_dt + cotp_dt(READ_VAR_JOB), True) is True


def test_probe_rejects_what_is_not_s7():
    assert s7comm.probe(TLS_CLIENT_HELLO, True) is False
    assert s7comm.probe(cotp_cr() + cotp_dt(MMS_INITIATE), True) is False
    assert s7comm.probe(b"GET / HTTP/1.1\r\n", True) is False
    assert s7comm.probe(tpkt(bytes([2, 0x30, 0x80])), True) is False  # no such COTP TPDU code
    assert s7comm.probe(cotp_dt(b"\x32\x09" + READ_VAR_JOB[2:]), True) is False  # ROSCTR 9


# ---------------------------------------------------------------------------------------------
# parse: S7comm names
# ---------------------------------------------------------------------------------------------


def test_read_var_job():
    buf = cotp_dt(READ_VAR_JOB)
    assert parsed(buf) == (len(buf), [("s7comm", "Read Var")], {})


def test_ack_data_names_its_function_and_ack_names_none():
    ack_data = s7(3, bytes.fromhex("0401"), bytes.fromhex("ff040010002a"))
    ack = s7(2, b"")
    buf = cotp_dt(ack_data) + cotp_dt(ack)
    assert parsed(buf) == (len(buf), [("s7comm", "Read Var")], {})


def test_unknown_job_function():
    assert parsed(cotp_dt(s7(1, b"\x99\x00")))[1] == [("s7comm", "Function 0x99")]


def test_userdata_read_szl_request_reveals_no_identity():
    buf = cotp_dt(READ_SZL_REQUEST)
    assert parsed(buf) == (len(buf), [("s7comm", "Read SZL")], {})


def test_userdata_subfunctions_by_group():
    def name(type_group: int, subfunc: int) -> str:
        return parsed(cotp_dt(s7(7, userdata_param(type_group, subfunc))))[1][0][1]

    assert name(0x43, 0x01) == "List blocks"
    assert name(0x83, 0x03) == "Get block info"
    assert name(0x47, 0x01) == "Read clock"
    assert name(0x45, 0x01) == "PLC password"
    assert name(0x41, 0x02) == "Variable status"
    assert name(0x04, 0x02) == "Message service"
    assert name(0x46, 0x01) == "PBC BSEND/BRECV"  # Wireshark names no PBC subfunction
    assert name(0x44, 0x7F) == "Function 0x7f"  # unknown subfunction of a known group


def test_mode_transition_push():
    param = bytes.fromhex("0100101000000000")  # from a CPU going to STOP
    assert parsed(cotp_dt(s7(7, param)))[1] == [("s7comm", "STOP")]


def test_setup_communication_and_cr_are_consumed_together():
    buf = cotp_cr() + cotp_dt(SETUP_COMMUNICATION_JOB)
    assert parsed(buf) == (len(buf), [("s7comm", "Setup communication")], {})


# ---------------------------------------------------------------------------------------------
# parse: SZL identity
# ---------------------------------------------------------------------------------------------


def test_szl_0011_response_identifies_the_module():
    pdu = szl_response(
        0x0011,
        28,
        [
            record_0011(0x0001, "6ES7 315-2EH14-0AB0", 0x0004, 0x0001),
            record_0011(0x0006, "6ES7 315-2EH14-0AB0", 0x0004, 0x0001),
            record_0011(0x0007, "", 0x5603, 0x0206),
        ],
    )
    buf = cotp_dt(pdu)
    consumed, commands, identity = parsed(buf)
    assert (consumed, commands) == (len(buf), [("s7comm", "Read SZL")])
    assert identity == {"vendor": "Siemens", "type": "6ES7 315-2EH14-0AB0", "firmware": "V3.2.6"}


def test_szl_001c_response_names_the_plc():
    pdu = szl_response(
        0x001C,
        34,
        [
            record_001c(0x0001, "SNAP7-SERVER"),
            record_001c(0x0002, "CPU 315-2 PN/DP"),
            record_001c(0x0005, "S C-C2UR28922012"),
        ],
    )
    assert parsed(cotp_dt(pdu))[2] == {
        "vendor": "Siemens",
        "name": "SNAP7-SERVER",
        "serial": "S C-C2UR28922012",
    }


def test_szl_with_bad_lengths_yields_no_identity():
    too_short = szl_response(0x0011, 10, [record_0011(0x0001, "6ES7 315-2EH14-0AB0", 4, 1)])
    assert parsed(cotp_dt(too_short))[1:] == ([("s7comm", "Read SZL")], {})
    truncated = cotp_dt(szl_response(0x0011, 28, [record_0011(1, "6ES7", 4, 1)])[:-20])
    assert parsed(truncated)[1:] == ([("s7comm", "Read SZL")], {})


# ---------------------------------------------------------------------------------------------
# parse: framing
# ---------------------------------------------------------------------------------------------


def test_pdu_split_across_two_cotp_data_tpdus():
    first = cotp_dt(READ_VAR_JOB[:7], eot=False)
    second = cotp_dt(READ_VAR_JOB[7:], eot=True)
    assert parsed(first) == (0, [], {})  # waits for the end of the TSDU
    assert parsed(first + second[:5]) == (0, [], {})
    assert parsed(first + second) == (len(first) + len(second), [("s7comm", "Read Var")], {})


def test_two_tpkts_in_one_buffer():
    buf = cotp_dt(READ_VAR_JOB) + cotp_dt(READ_SZL_REQUEST)
    assert parsed(buf) == (len(buf), [("s7comm", "Read Var"), ("s7comm", "Read SZL")], {})


def test_incomplete_tpkt_consumes_nothing():
    buf = cotp_dt(READ_VAR_JOB)
    for cut in (1, 3, 4, 10, len(buf) - 1):
        assert parsed(buf[:cut]) == (0, [], {})


def test_complete_tpkt_then_partial_one():
    first = cotp_dt(READ_VAR_JOB)
    partial = cotp_dt(READ_SZL_REQUEST)[:12]
    assert parsed(first + partial) == (len(first), [("s7comm", "Read Var")], {})


def test_bad_tpkt_version_or_length_is_malformed():
    with pytest.raises(Malformed):
        parsed(b"\x04" + cotp_dt(READ_VAR_JOB)[1:])
    with pytest.raises(Malformed):
        parsed(bytes.fromhex("0300000602f0"))
    with pytest.raises(Malformed):
        parsed(TLS_CLIENT_HELLO)


def test_data_that_is_not_s7_is_malformed_but_earlier_names_are_kept():
    good = cotp_dt(READ_VAR_JOB)
    bad = cotp_dt(MMS_INITIATE)
    with pytest.raises(Malformed):
        parsed(bad)
    assert parsed(good + bad) == (len(good), [("s7comm", "Read Var")], {})


def test_data_without_end_of_tsdu_is_bounded():
    chunk = cotp_dt(b"\x32" + bytes(1000), eot=False)
    with pytest.raises(Malformed):
        parsed(chunk * 70)


# ---------------------------------------------------------------------------------------------
# S7comm-plus
# ---------------------------------------------------------------------------------------------


def test_s7comm_plus_create_object_request():
    buf = cotp_dt(CREATE_OBJECT_REQUEST)
    assert parsed(buf) == (len(buf), [("s7comm-plus", "CreateObject")], {})


def test_s7comm_plus_v3_skips_the_integrity_digest():
    digest = bytes(range(32))
    body = b"\x20" + digest + bytes.fromhex("320000054c0000831d3400")
    pdu = struct.pack(">BBH", 0x72, 3, len(body)) + body + bytes.fromhex("72030000")
    assert pdu_names(pdu) == ["GetMultiVariables"]
    notification = b"\x20" + digest + bytes.fromhex("3370000e5104000000")
    pdu = struct.pack(">BBH", 0x72, 3, len(notification)) + notification + b"\x72\x03\x00\x00"
    assert pdu_names(pdu) == ["Notification"]


def test_s7comm_plus_frames_that_name_nothing():
    assert pdu_names(bytes.fromhex("72020000")) == []  # trailer only
    assert pdu_names(bytes.fromhex("72ff0100")) == []  # keep alive
    assert pdu_names(bytes.fromhex("720203f100823f98000002787d66")) == []  # continuation fragment
    assert pdu_names(bytes.fromhex("7202001602000004f20000000574000000")) == ["SetVariable"]
    assert pdu_names(bytes.fromhex("7202001031000009990000000174000000")) == ["Function 0x0999"]
