"""TCP reassembly and initiator decisions, on frames crafted with scapy and fed to the engine."""

from __future__ import annotations

import struct

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from sensor.connections import ip_text
from sensor.engine import Engine

PLC, HMI = "10.0.0.10", "10.0.0.20"
T0 = 1_767_600_000 * 10**9


def mbap(transaction: int, function: int, body: bytes = b"\x00\x00\x00\x01") -> bytes:
    pdu = bytes([function]) + body
    return struct.pack(">HHHB", transaction, 0, len(pdu) + 1, 1) + pdu


class Session:
    """A TCP session between two hosts, frames built with scapy, fed to one engine in order."""

    def __init__(self, engine: Engine, client=HMI, server=PLC, cport=40001, sport=502, handshake=True):
        self.engine, self.client, self.server, self.cport, self.sport = engine, client, server, cport, sport
        self.seq = {True: 1000, False: 9000}
        self.t = T0
        if handshake:
            self.send(True, b"", "S")
            self.send(False, b"", "SA")
            self.send(True, b"", "A")

    def frame(self, to_server: bool, payload: bytes, flags: str = "PA", seq: int | None = None) -> bytes:
        src, dst = (self.client, self.server) if to_server else (self.server, self.client)
        sp, dp = (self.cport, self.sport) if to_server else (self.sport, self.cport)
        seq = self.seq[to_server] if seq is None else seq
        return bytes(Ether() / IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags=flags, seq=seq) / payload)

    def send(self, to_server: bool, payload: bytes, flags: str = "PA", seq: int | None = None) -> None:
        self.t += 1_000_000
        self.engine.process_frame(1, self.frame(to_server, payload, flags, seq), self.t)
        if seq is None:
            self.seq[to_server] += len(payload) + (1 if "S" in flags or "F" in flags else 0)


def rows(engine: Engine) -> set[tuple[str, str, str, str]]:
    delta = engine.take_delta()
    return {
        (ip_text(c), ip_text(s), name, command)
        for (c, s), connection in delta.connections.items()
        for name, commands in connection.protocols.items()
        for command in commands
    }


def test_several_pdus_in_one_segment_are_all_named():
    engine = Engine()
    session = Session(engine)
    session.send(True, mbap(1, 3) + mbap(2, 6) + mbap(3, 16, b"\x00\x01\x00\x01\x02\x00\x07"))
    assert rows(engine) == {
        (HMI, PLC, "modbus", "Read Holding Registers"),
        (HMI, PLC, "modbus", "Write Single Register"),
        (HMI, PLC, "modbus", "Write Multiple Registers"),
    }


def test_a_pdu_split_over_segments_is_named_once_complete():
    engine = Engine()
    session = Session(engine)
    pdu = mbap(7, 4)
    session.send(True, pdu[:5])
    assert rows(engine) == set()
    session.send(True, pdu[5:])
    assert rows(engine) == {(HMI, PLC, "modbus", "Read Input Registers")}


def test_retransmission_and_out_of_order_segments():
    engine = Engine()
    session = Session(engine)
    first, second = mbap(1, 1), mbap(2, 2)
    start = session.seq[True]
    session.send(True, second, seq=start + len(first))  # arrives before the hole is filled
    session.send(True, first, seq=start)
    session.send(True, first, seq=start)  # retransmission of delivered bytes
    session.seq[True] = start + len(first) + len(second)
    session.send(True, mbap(3, 5, b"\x00\x01\xff\x00"))
    delta = engine.take_delta()
    connection = delta.connections[(bytes([10, 0, 0, 20]), bytes([10, 0, 0, 10]))]
    assert connection.protocols == {"modbus": {"Read Coils", "Read Discrete Inputs", "Write Single Coil"}}
    assert engine.errors == {}


def test_capture_starting_mid_stream_takes_the_non_server_port_as_initiator():
    engine = Engine()
    session = Session(engine, handshake=False)
    session.send(False, mbap(1, 0x83, b"\x02"))  # an exception reply seen first
    session.send(True, mbap(2, 3))
    assert rows(engine) == {(HMI, PLC, "modbus", "Read Holding Registers")}


def test_syn_decides_the_initiator_even_on_unusual_ports():
    engine = Engine()
    session = Session(engine, client=PLC, server=HMI, cport=502, sport=40001)  # the "PLC" dials out
    session.send(True, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    delta = engine.take_delta()
    assert list(delta.connections) == [(bytes([10, 0, 0, 10]), bytes([10, 0, 0, 20]))]
    assert delta.connections[list(delta.connections)[0]].ports == {40001}


def test_tls_on_502_is_not_modbus():
    engine = Engine()
    session = Session(engine)
    session.send(True, bytes.fromhex("160301002a0100002603035f") + b"\x00" * 40)
    session.send(False, bytes.fromhex("160303003102000031") + b"\x00" * 49)
    delta = engine.take_delta()
    (connection,) = delta.connections.values()
    assert connection.ports == {502} and connection.protocols == {}


def test_http_request_on_high_ports_without_handshake_orients_the_flow():
    engine = Engine()
    session = Session(engine, client=HMI, server=PLC, cport=50000, sport=61000, handshake=False)
    session.send(True, b"GET /status HTTP/1.1\r\nUser-Agent: scada-poller/2.0\r\n\r\n")
    session.send(False, b"HTTP/1.1 200 OK\r\nServer: Boa/0.94\r\nContent-Length: 2\r\n\r\nok")
    delta = engine.take_delta()
    (key,) = delta.connections
    assert key == (bytes([10, 0, 0, 20]), bytes([10, 0, 0, 10]))
    assert delta.connections[key].protocols == {"http": {"GET"}}
    assert delta.connections[key].user_agent == "scada-poller/2.0"
    assert delta.devices[bytes([10, 0, 0, 10])].identity["server"] == "Boa/0.94"


def test_udp_and_multicast():
    engine = Engine()
    dns = bytes(Ether() / IP(src=HMI, dst="10.0.0.53") / UDP(sport=53001, dport=53) / b"\x12\x34")
    mdns = bytes(Ether() / IP(src=HMI, dst="224.0.0.251") / UDP(sport=5353, dport=5353) / b"\x00")
    engine.process_frame(1, dns, T0)
    engine.process_frame(1, mdns, T0 + 5)
    delta = engine.take_delta()
    assert list(delta.connections) == [(bytes([10, 0, 0, 20]), bytes([10, 0, 0, 53]))]
    assert delta.connections[list(delta.connections)[0]].ports == {53}
    assert bytes([224, 0, 0, 251]) not in delta.devices
    assert delta.devices[bytes([10, 0, 0, 20])].last_seen_ns == T0 + 5


def held_by_streams(engine: Engine) -> int:
    flows = {id(flow): flow for flow, _ in engine.flows.entries.values()}.values()
    return sum(len(s.buf) + sum(map(len, s.pending.values())) for flow in flows for s in flow.streams)


def test_what_all_flows_hold_stays_within_the_budget_and_is_counted():
    """Many flows each holding part of a big PDU: past the budget the stream that grows gives its part up
    (counted under "reassembly"); the count of held bytes stays exact, and Modbus on another flow is read."""
    engine = Engine()
    engine.flows.budget = 30_000
    sessions = [Session(engine, client=f"10.0.1.{n}", cport=41000 + n, sport=48898) for n in range(1, 11)]
    ads_write = struct.pack("<HI", 0, 5_032) + bytes(6) + struct.pack("<H", 851) + bytes(6)
    ads_write += struct.pack("<HHHIII", 32905, 3, 4, 5_000, 0, 1)  # an AMS packet of 5,038 bytes, in part
    for session in sessions:
        session.send(True, ads_write + bytes(962))
    assert engine.flows.held == held_by_streams(engine) == 10 * 1_000
    for session in sessions:
        for _ in range(3):
            session.send(True, bytes(1_000))
            assert engine.flows.held == held_by_streams(engine) <= engine.flows.budget
    assert engine.errors["reassembly"] >= 1
    plain = Session(engine, client="10.0.2.1", cport=42000)
    plain.send(True, mbap(7, 3))
    assert ("10.0.2.1", PLC, "modbus", "Read Holding Registers") in rows(engine)
    engine.flows.now_ns += 3600 * 10**9
    engine.fold(evict=True)  # every flow idle for an hour is forgotten, and what it held with it
    assert engine.flows.held == 0 and not engine.flows.entries


def test_a_flow_never_answered_is_forgotten_sooner_than_an_answered_one():
    """A scan's SYNs: their flows go after 30 s of silence (their pair and port kept), not after 5 minutes
    as an answered flow does."""
    engine = Engine()
    answered = Session(engine, client="10.0.3.1", cport=43001)
    answered.send(True, mbap(1, 3))
    probe = Session(engine, client="10.0.3.2", cport=43002, handshake=False)
    probe.send(True, b"", "S")
    engine.flows.now_ns += 31 * 10**9
    engine.fold(evict=True)
    kept = {(ip_text(flow.client), flow.server_port) for flow, _ in engine.flows.entries.values()}
    assert kept == {("10.0.3.1", 502)}
    delta = engine.take_delta()
    ports = {(ip_text(c), ip_text(s)): connection.ports for (c, s), connection in delta.connections.items()}
    assert ports == {("10.0.3.1", PLC): {502}, ("10.0.3.2", PLC): {502}}
