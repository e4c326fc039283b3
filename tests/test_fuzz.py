"""Random and mutated input through every decoder: nothing raises, malformed input is counted."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.decode import DecodeError, Decoder
from sensor.engine import Engine
from sensor.protocols import Malformed
from sensor.protocols.registry import ANALYZERS

from .test_flows import Session, mbap

LINKTYPES = [0, 1, 12, 101, 108, 113, 228, 229, 239, 276]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.sampled_from(LINKTYPES), st.binary(max_size=200))
def test_decoder_only_raises_decode_error(linktype, frame):
    try:
        Decoder().decode(linktype, memoryview(frame))
    except DecodeError:
        pass


def _valid_frames() -> list[bytes]:
    frames = []
    session = Session(Engine())
    for payload in (
        mbap(1, 3),
        b"GET / HTTP/1.1\r\n\r\n",
        bytes.fromhex("0300001611e00000000100c0010ac1020100c2020102"),
    ):
        frames.append(session.frame(True, payload))
    return frames


@FUZZ
@given(st.sampled_from(_valid_frames()), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=8))
def test_mutated_frames_never_raise_through_the_engine(frame, flips):
    mutated = bytearray(frame)
    for position, value in flips:
        if position < len(mutated):
            mutated[position] = value
    engine = Engine()
    engine.process_frame(1, bytes(mutated), 1)
    engine.process_frame(1, bytes(mutated[: len(mutated) // 2]), 2)
    engine.take_delta()


@FUZZ
@given(st.sampled_from(ANALYZERS), st.binary(max_size=300), st.booleans())
def test_analyzers_raise_only_malformed(analyzer, data, to_server):
    analyzer.probe(data, to_server)
    try:
        consumed, commands, identity = analyzer.parse(data, to_server)
    except Malformed:
        return
    assert consumed >= 0
    assert all(isinstance(name, str) and isinstance(command, str) for name, command in commands)


@FUZZ
@given(st.lists(st.binary(min_size=1, max_size=80), min_size=1, max_size=12))
def test_garbage_on_modbus_port_is_counted_not_raised(segments):
    engine = Engine()
    session = Session(engine)
    session.send(True, mbap(1, 3))  # the flow is Modbus ...
    for segment in segments:  # ... then anything follows
        session.send(True, segment)
        session.send(False, segment[::-1])
    delta = engine.take_delta()
    assert "Read Holding Registers" in next(iter(delta.connections.values())).protocols["modbus"]


def test_malformed_modbus_is_counted_per_protocol():
    engine = Engine()
    session = Session(engine)
    session.send(True, mbap(1, 3))
    session.send(True, struct.pack(">HHHBB", 2, 7, 6, 1, 3) + b"\x00" * 4)  # protocol id 7
    assert engine.errors == {"modbus": 1}


# --- NFLOG (LINKTYPE_NFLOG 239): the IP packet inside TLVs ----------------------------------------------


def nflog_tlv(order: str, kind: int, value: bytes) -> bytes:
    """One NFLOG TLV: length (header included) and type in the capturing host's byte order, padded to 4."""
    return struct.pack(order + "HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


@FUZZ
@given(
    st.sampled_from(["<", ">"]),
    st.sampled_from(_valid_frames()),
    st.lists(st.tuples(st.sampled_from([1, 2, 4, 10, 11, 13, 17, 0x8000 | 18]), st.binary(max_size=13)), max_size=4),
    st.integers(0, 4),
    st.booleans(),
)
def test_nflog_payload_decodes_as_the_ip_packet(order, frame, others, where, hwaddr):
    ip = frame[14:]  # the Ethernet frame's IPv4 packet
    tlvs = [nflog_tlv(order, kind, value) for kind, value in others]
    if hwaddr:  # NFULA_HWADDR: big-endian address length, 2 pad bytes, 8 address bytes
        tlvs.insert(0, nflog_tlv(order, 8, struct.pack(">HH", 6, 0) + frame[6:12] + b"\0\0"))
    tlvs.insert(min(where, len(tlvs)), nflog_tlv(order, 9, ip))  # NFULA_PAYLOAD, anywhere
    nflog = struct.pack(">BBH", 2, 0, 0) + b"".join(tlvs)  # AF_INET, version 0, resource id 0
    expected = Decoder().decode(1, memoryview(frame))
    packet = Decoder().decode(239, memoryview(nflog))
    assert packet[:7] == expected[:7] and bytes(packet.payload) == bytes(expected.payload)
    assert packet.src_mac == (frame[6:12] if hwaddr else None)


def test_nflog_without_ip_is_counted_not_decoded():
    decoder = Decoder()
    assert decoder.decode(239, memoryview(struct.pack(">BBH", 2, 0, 0) + nflog_tlv("<", 10, b"prefix"))) is None
    assert decoder.decode(239, memoryview(struct.pack(">BBH", 7, 0, 0) + nflog_tlv("<", 9, b"\x45" * 40))) is None
    assert decoder.non_ip == 2
    try:  # a TLV shorter than its own header ends the frame, as Wireshark's dissector stops
        decoder.decode(239, memoryview(struct.pack(">BBH", 2, 0, 0) + struct.pack(">HH", 2, 9)))
    except DecodeError as error:
        assert error.layer == "nflog"
    else:
        raise AssertionError("a malformed TLV must be a decode error")
