"""Replay each capture → the (client ip, server ip, protocol, command) rows equal tshark's dissection.

Every real capture in ../shared/pcaps/real and every capture in pcaps/ is replayed through the whole
path (reader → engine → DuckDB → the API's JSON) and held against tshark 4.0 (tests/oracle.py).
Where we differ on purpose, the case is listed below with the reason Wireshark's view is not what a
passive OT sensor should report.  S7comm-plus, which this tshark cannot dissect, is held to
expectations derived by hand from the S7comm-plus dissector sources (tests/s7comm_plus_expected.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sensor import serialize
from sensor.replay import replay
from sensor.store import Store

from .conftest import PCAPS, REAL, REAL_ABSENT, real_captures
from .oracle import tshark_rows
from .s7comm_plus_expected import S7COMM_PLUS_EXPECTED

# The project's own S7comm-plus capture, as pcaps/make_pcaps.py builds it (function codes in pcaps/README.md).
PROJECT_S7COMM_PLUS = {
    "s7comm_plus.pcap": {
        ("192.168.20.31", "192.168.20.42", "s7comm-plus", name)
        for name in ("CreateObject", "SetVariable", "Explore", "GetMultiVariables", "DeleteObject")
    },
}

HTTP_ELSEWHERE = (
    "HTTP on a port Wireshark does not assign to HTTP (no heuristic by default); the contract wants HTTP on any port"
)
HTTP_09 = "a request line without an HTTP version (HTTP/0.9 style): Wireshark waits for headers that never come"

# file (relative to its folder) -> rows we report that tshark does not ("extra") / misses ("missed"), and why
WIRESHARK_DIFFERS: dict[str, dict] = {
    "ndpi/http_on_sip_port.pcap": {"extra": {("82.178.111.221", "45.58.148.2", "http", "GET")}, "why": HTTP_ELSEWHERE},
    "zeek/http_get-to-ssh-server.pcap": {
        "extra": {("136.216.42.40", "130.74.164.231", "http", "GET")},
        "why": HTTP_ELSEWHERE,
    },
    "zeek/http_http-to-ssh.pcap": {"extra": {("127.0.0.1", "127.0.0.1", "http", "GET")}, "why": HTTP_ELSEWHERE},
    "zeek/postgresql_http-on-port-5432.pcap": {
        "extra": {("141.142.228.5", "192.150.187.43", "http", "GET")},
        "why": HTTP_ELSEWHERE,
    },
    "zeek/http_http_09.pcap": {
        "extra": {("127.0.0.1", "127.0.0.1", "http", "GET"), ("127.0.0.1", "127.0.0.1", "http", "POST")},
        "why": HTTP_09,
    },
    "zeek/http_no-version.pcap": {"extra": {("131.243.1.23", "131.243.1.10", "http", "GET")}, "why": HTTP_09},
    "zeek/ipv6-http-atomic-frag.pcap": {"extra": {("2001:db8:1::2", "2001:db8:1::1", "http", "GET")}, "why": HTTP_09},
    # UPnP GENA's NOTIFY, SUBSCRIBE and UNSUBSCRIBE: Wireshark dissects them as HTTP *notifications*
    # (http.notification, not http.request), though the initiator sends them as requests.
    "http_methods.pcap": {
        "extra": {("192.168.60.21", "192.168.60.80", "http", m) for m in ("NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE")},
        "why": "GENA methods are requests the initiator sends; Wireshark files them as HTTP notifications",
    },
    # tshark 4.0 registers AMS on TCP 48898 only: AMS/UDP on 48899 is "data" to it.
    "ads_discovery.pcap": {
        "extra": {("192.168.40.12", "192.168.40.62", "ams", "AMS Read State")},
        "why": "AMS/UDP (UDP 48899) is not dissected by tshark 4.0; the contract names it",
    },
    # Fuzzed sequence numbers: segments jump back over bytes already delivered, and frame 14 announces
    # a 37-byte PDU that swallows what follows.  A receiving TCP stack discards such overlaps, so the
    # PLC never sees those functions; Wireshark (no reassembly across these jumps) dissects each
    # segment on its own.  The sensor follows the byte stream as the PLC would.
    "zeek/modbus_fuzz-72.pcap": {
        "extra": {("192.168.66.235", "166.161.16.230", "modbus", f"Function code {n}") for n in (28, 53)},
        "missed": {("192.168.66.235", "166.161.16.230", "modbus", "Encapsulated Interface Transport")}
        | {("192.168.66.235", "166.161.16.230", "modbus", f"Function code {n}") for n in (46, 50, 52, 54, 63)},
        "why": "fuzzed TCP sequence numbers: overlapping segments are retransmissions to a real receiver",
    },
}


def sensor_rows(capture: Path, db: Path) -> set[tuple[str, str, str, str]]:
    store = Store(db)
    try:
        replay([str(capture)], store, progress=False)
        cursor = store.cursor()
        ips = {device["id"]: device["ipAddresses"][0] for device in serialize.devices(cursor)}
        connections = json.loads(serialize.connections_json(cursor))
    finally:
        store.close()
    return {
        (ips[c["firstDeviceId"]], ips[c["secondDeviceId"]], protocol["name"], command)
        for c in connections
        for protocol in c["protocols"]
        for command in protocol["commands"]
    }


def check(capture: Path, name: str, tmp_path: Path) -> None:
    ours = sensor_rows(capture, tmp_path / "sensor.duckdb")
    plus = {row for row in ours if row[2] == "s7comm-plus"}
    ours -= plus
    expected = tshark_rows(str(capture))
    differs = WIRESHARK_DIFFERS.get(name, {})
    extra, missed = differs.get("extra", set()), differs.get("missed", set())
    assert extra <= ours and not (missed & ours), f"{name}: a listed difference no longer holds"
    assert ours - extra == expected - missed, (
        f"{name}: extra {sorted(ours - expected)}, missed {sorted(expected - ours)}"
    )
    assert plus == {**S7COMM_PLUS_EXPECTED, **PROJECT_S7COMM_PLUS}.get(name, set())


@pytest.mark.parametrize("capture", real_captures(), ids=lambda p: str(p.relative_to(REAL)))
def test_real_capture_matches_tshark(capture, tshark, tmp_path):
    check(capture, str(capture.relative_to(REAL)), tmp_path)


def project_captures() -> list[Path]:
    return sorted(p for p in PCAPS.glob("*") if p.name.endswith((".pcap", ".pcapng", ".pcap.gz")))


@pytest.mark.parametrize("capture", project_captures(), ids=lambda p: p.name)
def test_project_capture_matches_tshark(capture, tshark, tmp_path):
    check(capture, capture.name, tmp_path)


def test_every_real_capture_is_covered():
    if not REAL.is_dir():
        pytest.skip(REAL_ABSENT)
    assert len(real_captures()) >= 100, f"{REAL} holds fewer captures than the 103 it should"
