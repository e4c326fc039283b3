"""Cases Wireshark handles that the sensor now handles too (issue 10): HTTP methods beyond the common
set, and TwinCAT's UDP discovery/route service on 48899, which is not AMS.

The captures come from pcaps/make_pcaps.py; tests/test_accuracy.py holds their rows to tshark's.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensor import serialize
from sensor.protocols import ads_discovery, ams, http
from sensor.replay import replay
from sensor.store import Store

from .conftest import PCAPS


def replayed(capture: Path, tmp_path: Path) -> tuple[dict[str, dict], list[dict]]:
    """Devices by IP address and the connections (with IPs) after replaying ``capture``."""
    store = Store(tmp_path / "sensor.duckdb")
    try:
        replay([str(capture)], store, progress=False)
        cursor = store.cursor()
        devices = serialize.devices(cursor)
        connections = json.loads(serialize.connections_json(cursor))
    finally:
        store.close()
    ips = {d["id"]: d["ipAddresses"][0] for d in devices}
    for c in connections:
        c["pair"] = (ips[c["firstDeviceId"]], ips[c["secondDeviceId"]])
    return {d["ipAddresses"][0]: d for d in devices}, connections


# ---- HTTP methods ----------------------------------------------------------------------------------

# The methods of Wireshark's packet-http.c is_http_request_or_reply, grouped by length as it checks them
WIRESHARK_METHODS = {
    3: "GET PUT", 4: "COPY HEAD LOCK MOVE POLL POST", 5: "BCOPY BMOVE MKCOL TRACE PATCH LABEL MERGE",
    6: "DELETE SEARCH UNLOCK REPORT UPDATE NOTIFY", 7: "BDELETE CONNECT OPTIONS CHECKIN",
    8: "PROPFIND CHECKOUT CCM_POST", 9: "SUBSCRIBE PROPPATCH BPROPFIND", 10: "BPROPPATCH UNCHECKOUT MKACTIVITY",
    11: "MKWORKSPACE RPC_CONNECT RPC_IN_DATA UNSUBSCRIBE", 12: "RPC_OUT_DATA", 15: "VERSION-CONTROL",
    16: "BASELINE-CONTROL SSTP_DUPLEX_POST",
}  # fmt: skip
ALL_METHODS = [m for names in WIRESHARK_METHODS.values() for m in names.split()]


def request(method: str) -> bytes:
    return f"{method} /x HTTP/1.1\r\nHost: plc\r\nUser-Agent: t\r\n\r\n".encode()


@pytest.mark.parametrize("method", ALL_METHODS + ["M-" + m for m in ALL_METHODS])
def test_every_method_wireshark_knows_is_a_request(method):
    data = request(method)
    assert http.probe(data, True) is True
    assert http.probe(data[: len(method) - 1], True) is None  # the method still arriving: wait
    consumed, commands, identity = http.parse(data + data, True)
    assert (consumed, commands, identity) == (2 * len(data), [("http", method)] * 2, {"userAgent": "t"})


@pytest.mark.parametrize("line", ["PURGE", "get", "M-M-GET", "CCM-POST", "SSTP_DUPLEX_POSTX", "M-"])
def test_other_words_are_not_requests(line):
    assert http.probe(request(line), True) is False


def test_a_body_of_unknown_length_resynchronises_on_a_new_method():
    chunked = b"CCM_POST /ccm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    _, commands, _ = http.parse(chunked + request("RPC_IN_DATA"), True)
    assert commands == [("http", "CCM_POST"), ("http", "RPC_IN_DATA")]


def test_the_capture_reports_each_method_once_on_its_pair(tmp_path):
    _, connections = replayed(PCAPS / "http_methods.pcap", tmp_path)
    commands = {c["pair"]: {p["name"]: p["commands"] for p in c["protocols"]} for c in connections}
    dav = set(commands[("192.168.60.21", "192.168.60.80")]["http"])
    assert dav == set(ALL_METHODS) - {"CONNECT", "CCM_POST"} | {"M-POST"}  # not PURGE, not "get"
    assert commands[("192.168.60.22", "192.168.60.80")] == {"http": ["CCM_POST", "CONNECT"]}


# ---- TwinCAT UDP discovery / route service (UDP 48899) ---------------------------------------------


def twincat(service: int, net_id: bytes, tags: list[tuple[int, bytes]]) -> bytes:
    head = ads_discovery.MAGIC + struct.pack("<II6sHI", 0, service, net_id, 10000, len(tags))
    return head + b"".join(struct.pack("<HH", tag, len(value)) + value for tag, value in tags)


SEARCH = twincat(1, bytes([192, 168, 40, 12, 1, 1]), [])
ANSWER = twincat(
    0x80000001,
    bytes([5, 44, 98, 65, 1, 1]),
    [(5, b"CX-2C6241\x00"), (4, bytes(276)), (3, bytes([3, 1]) + struct.pack("<H", 4024))],
)


def test_a_discovery_answer_is_identity_and_no_command():
    consumed, commands, identity = ads_discovery.parse(ANSWER, False)
    assert (consumed, commands) == (len(ANSWER), [])
    assert identity == {"vendor": "Beckhoff", "name": "CX-2C6241", "firmware": "3.1.4024", "amsNetId": "5.44.98.65.1.1"}
    assert ads_discovery.parse(SEARCH, True) == (len(SEARCH), [], {"amsNetId": "192.168.40.12.1.1"})


def test_ams_udp_does_not_take_discovery_datagrams():
    assert not ams.probe_udp(ANSWER, False) and not ams.probe_udp(SEARCH, True)
    assert ams.parse_udp(ANSWER, False)[1] == []  # on a flow AMS/UDP claimed first: still no command
    read_state = bytes(6) + struct.pack("<H", 851) + bytes(6) + struct.pack("<HHHIII", 32905, 4, 0x44, 0, 0, 7)
    assert ads_discovery.parse(read_state, True)[1] == [("ams", "AMS Read State")]  # and the other way round


def test_a_cut_or_odd_discovery_datagram_is_a_counted_error_or_partial_identity():
    with pytest.raises(ams.Malformed):
        ads_discovery.parse(ads_discovery.MAGIC + bytes(10), False)
    cut = ANSWER[:40]  # the host name tag cut short: what is there is read, nothing raises
    assert ads_discovery.parse(cut, False)[1] == []
    password_only = twincat(6, bytes(6), [(2, b"secret\x00")])
    assert "secret" not in json.dumps(ads_discovery.parse(password_only, True)[2])


@given(st.binary(max_size=400), st.booleans())
def test_any_datagram_with_the_magic_names_no_command_and_only_strings(tail, to_server):
    try:
        consumed, commands, identity = ads_discovery.parse(ads_discovery.MAGIC + tail, to_server)
    except ams.Malformed:
        assert len(tail) < ads_discovery.HEADER.size - 4
        return
    assert commands == [] and consumed == 4 + len(tail)
    assert all(isinstance(v, str) and len(v) <= 256 for v in identity.values())


def test_the_capture_records_identity_and_no_ams_command_for_discovery(tmp_path):
    devices, connections = replayed(PCAPS / "ads_discovery.pcap", tmp_path)
    cx1, cx2, es = devices["192.168.40.62"], devices["192.168.40.63"], devices["192.168.40.12"]
    assert (cx1["name"], cx1["vendor"], cx1["firmware"]) == ("CX-2C6241", "Beckhoff", [{"firmwareVersion": "3.1.4024"}])
    assert (cx2["name"], cx2["firmware"]) == ("C6015-0010", [{"firmwareVersion": "3.1.4026"}])
    assert es["name"] == "TWINCAT-XAE"  # named by its own add-route request
    protocols = {c["pair"]: c["protocols"] for c in connections}
    # only the AMS/UDP Read State that follows is AMS; discovery and the route request are not
    assert protocols[("192.168.40.12", "192.168.40.62")] == [{"name": "ams", "commands": ["AMS Read State"]}]
    assert protocols[("192.168.40.12", "192.168.40.63")] == []
