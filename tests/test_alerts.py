"""Alerts and events (CONTRACT section 4): real captures raise the expected alerts with their evidence, once.

Captures are replayed through the whole path (reader → engine → store merge with detection) and read back
through the API and the CLI as a user would; each operational alert's pcap is read by tshark.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from api import create_app
from api.auth import create_token
from sensor import serialize
from sensor.connections import ConnectionTable
from sensor.decode import Decoder
from sensor.detect import Detector
from sensor.engine import Engine
from sensor.readers import CaptureReader
from sensor.replay import replay
from sensor.store import Store

from .conftest import REAL, REAL_ABSENT, ROOT, real_captures

ITI = REAL / "iti"
HOUR_NS = 3600 * 10**9


def ingest(paths, db: Path, detector: Detector | None = None) -> Store:
    store = Store(db, detector=detector)
    replay([str(p) for p in paths], store, progress=False)
    return store


def api(store: Store):
    token = create_token(store, f"t{time.monotonic_ns()}")
    client = create_app(store, {"rate_limit": 0}).test_client()
    return client, {"Authorization": token}


def summary(alerts: list[dict]) -> set[tuple]:
    return {
        (a["title"], a["severity"], a["engine"], a["sourceDeviceAddress"], a["destinationDeviceAddress"], a["count"])
        for a in alerts
    }


# capture -> (alerts as (title, severity, engine, source, destination, count), what tshark shows in each pcap)
EXPECTED = {
    ITI / "s7_step7_s300_stop.pcapng": (
        {
            ("PLC Stop command", "Major", "Operational", "134.249.62.199", "134.249.61.163", 1),
            ("PLC mode change", "Warning", "Operational", "134.249.62.199", "134.249.61.163", 1),
        },
        {"PLC Stop command": "Function:[PLC Stop]", "PLC mode change": "[Mode-transition] -> [STOP]"},
    ),
    ITI / "s7_step7_s300_download.pcapng": (
        {("Program download", "Major", "Operational", "134.249.53.130", "134.249.61.182", 2)},
        {"Program download": "Function:[Request download] -> Block:[DB1]"},
    ),
    ITI / "s7_s7comm_downloading_block_db1.pcap": (
        # the station's Request download, then the PLC's three Download block Jobs: one alert, count 4
        {("Program download", "Major", "Operational", "192.168.1.10", "192.168.1.40", 4)},
        {"Program download": "Function:[Request download] -> Block:[DB1]"},
    ),
    REAL / "icsnpp-s7comm" / "s7ident.pcap": (
        {("Program upload", "Warning", "Operational", "172.17.0.2", "172.17.0.2", 4)},
        {"Program upload": "Function:[Start upload] -> Block:[SDB0]"},
    ),
    ITI / "modicon_modicon_test.pcap": (
        # UMAS 0x33 (read the program out), 53 blocks (0x34) and its end (0x35)
        {("Program upload", "Warning", "Operational", "192.168.63.100", "192.168.63.253", 55)},
        {"Program upload": "Func:  90: Unity (Schneider)"},
    ),
}


@pytest.mark.parametrize("capture", list(EXPECTED), ids=lambda p: p.name)
def test_real_captures_raise_the_expected_alerts_with_their_evidence(capture, tmp_path, tshark):
    if not capture.exists():
        pytest.skip(f"{capture} is not here")
    expected, shown = EXPECTED[capture]
    store = ingest([capture], tmp_path / "a.duckdb")
    try:
        client, headers = api(store)
        alerts = client.get("/api/v2/alerts", headers=headers).get_json()
        assert summary(alerts) == expected
        devices = {d["ipAddresses"][0]: d for d in client.get("/api/v1/devices", headers=headers).get_json()}
        for alert in alerts:
            source = devices[alert["sourceDeviceAddress"]]
            assert source["id"] == alert["sourceDevice"]
            if alert["title"] != "PLC mode change":
                assert source["engineeringStation"] is True
            assert alert["remediationSteps"]
            response = client.get(f"/api/v2/alerts/pcap/{alert['id']}", headers=headers)
            assert response.status_code == 200
            assert response.content_type == "application/vnd.tcpdump.pcap"
            pcap = tmp_path / f"{alert['id']}.pcap"
            pcap.write_bytes(response.data)
            info = subprocess.run(
                [tshark, "-r", str(pcap), "-d", "tcp.port==102,tpkt", "-T", "fields", "-e", "_ws.col.Info"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            assert shown[alert["title"]] in info, info
        plcs = {alert["destinationDeviceAddress"] for alert in alerts} - {a["sourceDeviceAddress"] for a in alerts}
        assert all(not devices[ip]["engineeringStation"] for ip in plcs)
    finally:
        store.close()


def test_no_device_of_ordinary_operation_is_a_scanner_and_operational_alerts_are_exactly_these(tmp_path):
    captures = real_captures()
    if not captures:
        pytest.skip("no real captures here")
    store = ingest(captures, tmp_path / "all.duckdb")
    try:
        devices = serialize.devices(store.cursor())
        assert devices and not [d["ipAddresses"] for d in devices if d["scanner"]]
        alerts = serialize.alerts(store.cursor(), 2)
        assert "Network scan detected" not in {a["title"] for a in alerts}
        operational = {a for a in summary(alerts) if a[2] == "Operational"}
        # ndpi/s7comm.pcap is the same download as iti's downloading_block_db1, a second occurrence (its
        # own times) of the same commands between the same devices, years before: a second alert
        expected = set().union(*(alerts for alerts, _ in EXPECTED.values()))
        expected.add(("Program download", "Major", "Operational", "192.168.1.10", "192.168.1.40", 4))
        assert operational == expected
    finally:
        store.close()


def test_the_same_captures_twice_raise_nothing_new(tmp_path):
    captures = [p for p in EXPECTED if p.exists()]
    store = ingest(captures, tmp_path / "twice.duckdb")
    try:
        alerts = serialize.alerts(store.cursor(), 2)
        events = serialize.events(store.cursor())
        replay([str(p) for p in captures], store, progress=False)
        assert serialize.alerts(store.cursor(), 2) == alerts
        assert serialize.events(store.cursor()) == events
    finally:
        store.close()


def _worker_batches(path: Path, workers: int):
    """Each worker's frames, as PACKET_FANOUT by flow hash would give them (both directions together)."""
    decoder = Decoder()
    for batch in CaptureReader(path).batches():
        owner = []
        for offset, caplen in zip(batch.offsets.tolist(), batch.caplens.tolist()):
            packet = decoder.decode(batch.linktype, memoryview(batch.data)[offset : offset + caplen])
            owner.append(hash(frozenset((packet[0], packet[1]))) % workers if packet else 0)
        owner = np.array(owner)
        yield [
            batch._replace(offsets=batch.offsets[owner == w], caplens=batch.caplens[owner == w],
                           wirelens=batch.wirelens[owner == w], ts_ns=batch.ts_ns[owner == w])
            for w in range(workers)
        ]  # fmt: skip


@pytest.mark.parametrize("workers", [1, 2])
def test_fan_out_workers_raise_each_alert_once(workers, tmp_path):
    """Deltas of several workers, each merged on its own (and one merged twice, as a retried flush)."""
    captures = [p for p in EXPECTED if p.exists()]
    by_replay = ingest(captures, tmp_path / "replay.duckdb")
    store = Store(tmp_path / "workers.duckdb")
    try:
        for capture in captures:
            engines = [Engine() for _ in range(workers)]
            for parts in _worker_batches(capture, workers):
                for engine, part in zip(engines, parts):
                    if len(part.offsets):
                        engine.process_batch(part)
            for engine in engines:
                delta = engine.take_delta()
                store.merge(delta)
                store.merge(delta)
        assert summary(serialize.alerts(store.cursor(), 2)) == summary(serialize.alerts(by_replay.cursor(), 2))
    finally:
        store.close()
        by_replay.close()


# --- learning, dedup, handling, firmware: deltas made by hand ------------------------------------------

A, B, C = (ipaddress.ip_address(f"10.1.0.{n}").packed for n in (1, 2, 3))
T0 = 1_700_000_000 * 10**9


def delta(pairs=(), identity=None, operations=()) -> ConnectionTable:
    """``pairs``: (client, server, port, command, time ns); ``operations``: (time, client, server, category)."""
    table = ConnectionTable()
    for client, server, port, command, stamp in pairs:
        record = table.connection(client, server)
        record.ports.add(port)
        record.protocols.setdefault("modbus", set()).add(command)
        record.discovered_ns = min(record.discovered_ns, stamp)
        record.last_seen_ns = max(record.last_seen_ns, stamp)
        record.packets += 10
    for stamp, client, server, category in operations:
        table.connection(client, server).protocols.setdefault("s7comm", set()).add("PLC Stop")
        frame = bytes(14)
        table.add_operation((stamp, client, server, "s7comm", "PLC Stop", category, "", 1, ((stamp, frame),)))
    table.derive_devices()
    for address, facts in (identity or {}).items():
        table.device(address).identity.update(facts)
    return table


def titles(store: Store) -> list[tuple]:
    return [(a["title"], a["sourceDeviceAddress"], a["count"]) for a in serialize.alerts(store.cursor(), 2)]


def test_learning_then_new_devices_pairs_and_commands_alert(tmp_path):
    store = Store(tmp_path / "l.duckdb", detector=Detector(learning_hours=24))
    try:
        store.merge(delta([(A, B, 502, "Read Coils", T0)]))
        assert titles(store) == []  # learning: events only
        assert {e["type"] for e in serialize.events(store.cursor())} == {"DEVICE_CREATED", "DEVICE_CONNECTION_CREATED"}
        later = T0 + 25 * HOUR_NS
        store.merge(delta([(A, B, 502, "Write Single Coil", later), (C, B, 502, "Read Coils", later)]))
        assert sorted(titles(store)) == [
            ("New connection detected", "10.1.0.3", 1),
            ("New device detected", "10.1.0.3", 1),
            ("New protocol command detected", "10.1.0.1", 1),
        ]
        authorized = {d["ipAddresses"][0]: d["authorized"] for d in serialize.devices(store.cursor())}
        assert authorized == {"10.1.0.1": True, "10.1.0.2": True, "10.1.0.3": False}
        new_device = next(a for a in serialize.alerts(store.cursor()) if a["title"] == "New device detected")
        client, headers = api(store)
        answer = client.put(f"/api/v1/alerts/{new_device['id']}", json={"action": "handleAndLearn"}, headers=headers)
        assert answer.status_code == 200 and answer.get_json()["handled"] is True
        authorized = {d["ipAddresses"][0]: d["authorized"] for d in serialize.devices(store.cursor())}
        assert authorized["10.1.0.3"] is True
        assert serialize.events(store.cursor(), type="ALERT_HANDLED")[0]["content"].endswith("handled and learned")
        # the same facts again: nothing is new
        store.merge(delta([(A, B, 502, "Write Single Coil", later + 10**9), (C, B, 502, "Read Coils", later)]))
        assert len(titles(store)) == 3
    finally:
        store.close()


def test_repeats_count_on_the_open_alert_until_handled_or_out_of_the_window(tmp_path):
    store = Store(tmp_path / "d.duckdb", detector=Detector(dedup_minutes=10))
    minute = 60 * 10**9
    try:
        store.merge(delta(operations=[(T0, A, B, "stop"), (T0 + minute, A, B, "stop")]))
        store.merge(delta(operations=[(T0 + 2 * minute, A, B, "stop")]))
        assert titles(store) == [("PLC Stop command", "10.1.0.1", 3)]
        store.merge(delta(operations=[(T0 + 30 * minute, A, B, "stop")]))  # outside the window: a new alert
        assert titles(store) == [("PLC Stop command", "10.1.0.1", 3), ("PLC Stop command", "10.1.0.1", 1)]
        store.merge(delta(operations=[(T0 + minute, A, B, "stop")]))  # an occurrence already counted
        assert titles(store)[0][2] == 3
        assert store.handle_alert(2)
        store.merge(delta(operations=[(T0 + 31 * minute, A, B, "stop")]))  # handled: the next one opens anew
        assert len(titles(store)) == 3
        assert store.handle_alert(3, learn=True)
        store.merge(delta(operations=[(T0 + 32 * minute, A, B, "stop"), (T0 + 90 * minute, A, B, "stop")]))
        assert len(titles(store)) == 3  # learned: authorized activity raises nothing
        assert not store.handle_alert(99)
    finally:
        store.close()


def test_a_firmware_change_alerts_once_and_sinks_get_each_new_alert(tmp_path):
    seen = []
    store = Store(tmp_path / "f.duckdb", detector=Detector(on_alert=[seen.append]))
    try:
        store.merge(delta([(A, B, 102, "Read Var", T0)], identity={B: {"firmware": "V3.2.6", "type": "6ES7 315"}}))
        changed = delta([(A, B, 102, "Read Var", T0 + 10**9)], identity={B: {"firmware": "V3.3.1", "type": "6ES7 315"}})
        store.merge(changed)
        store.merge(changed)
        assert titles(store) == [("Firmware change", "10.1.0.2", 1)]
        assert [e["type"] for e in serialize.events(store.cursor(), type="FIRMWARE_CHANGE")] == ["FIRMWARE_CHANGE"]
        assert [(a["title"], a["sourceDeviceAddress"]) for a in seen] == [("Firmware change", "10.1.0.2")]
        assert set(seen[0]) >= {"id", "time", "title", "message", "severity", "engine", "sourceDevice",
                                "destinationDevice", "additionalInformation", "handled", "destinationDeviceAddress"}  # fmt: skip
    finally:
        store.close()


# --- the API and the CLI ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stop_db(tmp_path_factory):
    if not REAL.is_dir():
        pytest.skip(REAL_ABSENT)
    db = tmp_path_factory.mktemp("stop") / "stop.duckdb"
    ingest([ITI / "s7_step7_s300_stop.pcapng"], db).close()
    return db


def test_alerts_api_filters_errors_and_tokens(stop_db):
    store = Store(stop_db)
    try:
        client, headers = api(store)
        everything = client.get("/api/v1/alerts", headers=headers)
        assert everything.status_code == 200 and everything.headers["ETag"]
        alerts = everything.get_json()
        assert [a["title"] for a in alerts] == ["PLC Stop command", "PLC mode change"]
        assert "remediationSteps" not in alerts[0]
        assert (
            client.get("/api/v1/alerts", headers={**headers, "If-None-Match": everything.headers["ETag"]}).status_code
            == 304
        )
        stop = alerts[0]["time"]

        def ids(query: str) -> list[int]:
            return [a["id"] for a in client.get(f"/api/v1/alerts?{query}", headers=headers).get_json()]

        assert ids("type=PLC%20Stop%20command") == [alerts[0]["id"]]
        assert ids(f"fromTime={stop + 1}") == [alerts[1]["id"]]
        assert ids(f"toTime={stop}") == [alerts[0]["id"]]
        assert ids("state=handled") == [] and len(ids("state=unhandled")) == 2
        for bad in ("state=open", "fromTime=-1", "toTime=x"):
            answer = client.get(f"/api/v1/alerts?{bad}", headers=headers)
            assert answer.status_code == 400 and set(answer.get_json()) == {
                "status",
                "identifier",
                "message",
                "details",
            }
        assert client.get("/api/v2/alerts").status_code == 401
        assert client.get("/api/v2/alerts/pcap/1").status_code == 401
        assert client.get("/api/v2/alerts/pcap/999", headers=headers).status_code == 404
        assert client.put("/api/v1/alerts/1", json={"action": "close"}, headers=headers).status_code == 400
        assert client.put("/api/v1/alerts/999", json={"action": "handle"}, headers=headers).status_code == 404
        assert client.get("/api/v1/events?minutesTimeFrame=4321", headers=headers).status_code == 400
        events = client.get("/api/v1/events", headers=headers).get_json()
        assert [e["timestamp"] for e in events] == sorted((e["timestamp"] for e in events), reverse=True)
        assert {e["type"] for e in events} >= {"DEVICE_CREATED", "PLC_STATE_CHANGE"}
        assert client.get("/api/v1/events?type=PLC_STATE_CHANGE", headers=headers).get_json() == [
            e for e in events if e["type"] == "PLC_STATE_CHANGE"
        ]
        # minutesTimeFrame counts wall-clock minutes: the capture is from 2014
        assert client.get("/api/v1/events?minutesTimeFrame=60", headers=headers).get_json() == []
    finally:
        store.close()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sensor.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_prints_the_api_json_and_handles(stop_db, tmp_path):
    db = tmp_path / "copy.duckdb"
    shutil.copy(stop_db, db)
    store = Store(db)
    try:
        client, headers = api(store)
        body = client.get("/api/v1/alerts", headers=headers).get_data(as_text=True)
    finally:
        store.close()
    out = cli("alerts", "--db", str(db))
    assert out.returncode == 0 and out.stdout.strip() == body
    handled = cli("alerts", "handle", "1", "--learn", "--db", str(db))
    assert handled.returncode == 0 and json.loads(handled.stdout)["handled"] is True
    assert [a["id"] for a in json.loads(cli("alerts", "--db", str(db), "--state", "handled").stdout)] == [1]
    assert [a["id"] for a in json.loads(cli("alerts", "--db", str(db), "--state", "unhandled").stdout)] == [2]
    missing = cli("alerts", "handle", "7", "--db", str(db))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
    assert cli("alerts", "--db", str(tmp_path / "nope.duckdb")).returncode == 2


def test_replay_config_sets_learning(tmp_path):
    config = tmp_path / "otsensor.toml"
    config.write_text("learning_hours = 0\n")
    db = tmp_path / "c.duckdb"
    out = cli("replay", str(ITI / "s7_step7_s300_stop.pcapng"), "--db", str(db), "--config", str(config))
    assert out.returncode == 0, out.stderr
    titles = [a["title"] for a in json.loads(cli("alerts", "--db", str(db)).stdout)]
    assert titles.count("New device detected") == 2 and "New connection detected" in titles
    config.write_text("learning_hours = -1\n")
    bad = cli("replay", str(ITI / "s7_step7_s300_stop.pcapng"), "--db", str(db), "--config", str(config))
    assert bad.returncode == 2 and "learning_hours" in bad.stderr


# --- a real scan: nmap against a namespace, captured with tcpdump ------------------------------------


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nmap"), reason="needs root (netns) and nmap")
def test_nmap_scan_is_detected_and_its_source_marked_scanner(tmp_path):
    tag = f"{os.getpid() % 100000}"
    target, scanner_end = f"otsnmap{tag}", f"otsnm{tag}"
    target_ip, scanner_ip = "10.254.77.2", "10.254.77.1"

    def run(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True, timeout=60)

    capture = tmp_path / "scan.pcap"
    try:
        run("ip", "netns", "add", target)
        run("ip", "link", "add", scanner_end, "type", "veth", "peer", "name", "eth0", "netns", target)
        run("ip", "address", "add", f"{scanner_ip}/24", "dev", scanner_end)
        run("ip", "link", "set", scanner_end, "up")
        run("ip", "-n", target, "address", "add", f"{target_ip}/24", "dev", "eth0")
        run("ip", "-n", target, "link", "set", "eth0", "up")
        run("ip", "-n", target, "link", "set", "lo", "up")
        listener = subprocess.Popen(
            ["ip", "netns", "exec", target, sys.executable, "-m", "http.server", "8081", "--bind", target_ip],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        tcpdump = subprocess.Popen(
            # immediate mode: frames reach the file as they come (else the last ring block is lost at
            # the stop); a 32 MiB buffer: nmap's burst is not dropped
            ["tcpdump", "-i", scanner_end, "--immediate-mode", "-B", "32768", "-w", str(capture), "-U", "-n", "tcp"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(1.0)
        run("nmap", "-sT", "-n", "-Pn", "-T4", "--top-ports", "200", target_ip)
        time.sleep(0.5)
        tcpdump.terminate()
        tcpdump.wait(10)
        listener.kill()
        listener.wait()
    finally:
        subprocess.run(["ip", "link", "del", scanner_end], capture_output=True)
        subprocess.run(["ip", "netns", "del", target], capture_output=True)
    store = ingest([capture], tmp_path / "scan.duckdb")
    try:
        scans = [a for a in serialize.alerts(store.cursor(), 2) if a["title"] == "Network scan detected"]
        assert [(a["sourceDeviceAddress"], a["engine"], a["severity"]) for a in scans] == [
            (scanner_ip, "Anomaly", "Major")
        ]
        marked = {d["ipAddresses"][0] for d in serialize.devices(store.cursor()) if d["scanner"]}
        assert marked == {scanner_ip}
    finally:
        store.close()


# --- ADS and UMAS: crafted sessions (no real capture holds them) -----------------------------------


def test_ads_write_control_and_umas_raise_stop_start_and_download(tmp_path, tshark):
    from scapy.all import IP, TCP, Ether, Raw, wrpcap

    from .test_fastpath import PAYLOADS

    station, plc = "10.9.0.1", "10.9.0.2"
    ads_stop = bytearray(PAYLOADS["ads write control run"])
    ads_stop[38] = 6  # ADS state STOP
    umas = {code: bytes.fromhex(f"000{n}00000004005a00{code:02x}") for n, code in enumerate((0x41, 0x40, 0x30, 0x31))}
    frames, stamp = [], 1_700_000_000.0

    def session(port, payloads):
        nonlocal stamp
        seq, ack = 1000, 5000
        link = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        back = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
        for packet in (
            link / IP(src=station, dst=plc) / TCP(sport=40000 + port % 1000, dport=port, flags="S", seq=seq - 1),
            back / IP(src=plc, dst=station) / TCP(sport=port, dport=40000 + port % 1000, flags="SA", seq=ack - 1),
        ):
            packet.time = stamp
            stamp += 0.001
            frames.append(packet)
        for payload in payloads:
            packet = link / IP(src=station, dst=plc) / TCP(sport=40000 + port % 1000, dport=port, flags="PA", seq=seq,
                                                            ack=ack) / Raw(payload)  # fmt: skip
            packet.time = stamp
            stamp += 1.0
            seq += len(payload)
            frames.append(packet)

    session(48898, [PAYLOADS["ads write control run"], bytes(ads_stop)])
    session(502, list(umas.values()))
    capture = tmp_path / "crafted.pcap"
    wrpcap(str(capture), frames)
    store = ingest([capture], tmp_path / "c.duckdb")
    try:
        alerts = serialize.alerts(store.cursor(), 2)
        found = sorted((a["title"], a["count"], a["additionalInformation"]["information"][2]) for a in alerts)
        assert found == [
            ("PLC Start command", 2, "detail: ADS state RUN (5), device state 0"),
            ("PLC Stop command", 2, "detail: ADS state STOP (6), device state 0"),
            ("Program download", 2, "detail: UMAS 0x30 initialize download"),
        ]
        client, headers = api(store)
        devices = {d["ipAddresses"][0]: d for d in client.get("/api/v1/devices", headers=headers).get_json()}
        assert devices[station]["engineeringStation"] and not devices[plc]["engineeringStation"]
        assert devices[plc]["addresses"] == {"ams": ["10.11.12.13.1.1"], "modbus": ["0"]}
        assert devices[station]["addresses"] == {"ams": ["5.6.7.8.1.1"]}
        start = next(a for a in alerts if a["title"] == "PLC Start command")
        pcap = tmp_path / "start.pcap"
        pcap.write_bytes(client.get(f"/api/v2/alerts/pcap/{start['id']}", headers=headers).data)
        info = subprocess.run([tshark, "-r", str(pcap), "-T", "fields", "-e", "ams.cmdid", "-e", "ams.ads_state"],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert info.split() == ["5", "0x0005"], info  # Write Control, ADS state RUN
    finally:
        store.close()


def test_handling_an_alert_is_seen_at_once_by_an_api_that_renders_once_per_generation(tmp_path):
    """`serve` and `run` render answers once per data generation (flushes); handling an alert writes outside
    a flush (learned devices become authorized), so it too must give the lists a new generation."""
    store = Store(tmp_path / "g.duckdb", detector=Detector(learning_hours=0))
    try:
        store.merge(delta([(A, B, 502, "Read Coils", T0)]))
        token = create_token(store, "g")
        client = create_app(store, {"generation": lambda: 0, "rate_limit": 0}).test_client()
        headers = {"Authorization": token}

        def authorized() -> dict:
            return {
                d["ipAddresses"][0]: d["authorized"] for d in client.get("/api/v1/devices", headers=headers).get_json()
            }

        assert authorized() == {"10.1.0.1": False, "10.1.0.2": False}
        etag = client.get("/api/v1/devices", headers=headers).headers["ETag"]
        new_device = next(a for a in serialize.alerts(store.cursor()) if a["title"] == "New device detected")
        answer = client.put(f"/api/v1/alerts/{new_device['id']}", json={"action": "handleAndLearn"}, headers=headers)
        assert answer.status_code == 200
        assert True in authorized().values()
        assert client.get("/api/v1/devices", headers={**headers, "If-None-Match": etag}).status_code == 200
    finally:
        store.close()


def test_alerts_opened_together_are_stored_as_one_by_one(tmp_path):
    """Policy alerts after learning are opened in one insert: each row equals what opening it alone gives."""
    from sensor.detect import Alert, _open, _open_many

    alerts = [
        Alert(
            1_000 + n,
            "New connection detected",
            f"New connection: {n}",
            "Minor",
            "Policy Violation",
            n,
            None if n % 2 else n + 1,
            "Seen for the first time.",
            [f"source: {n}"] + ["x"] * (n % 3),
            f"key|{n}",
            b"\x00\x01" if n == 3 else None,
        )  # fmt: skip
        for n in range(5)
    ]
    rows = []
    for name, opener in (
        ("one", lambda db: [_open(db, a) for a in alerts]),
        ("many", lambda db: _open_many(db, alerts)),
    ):
        store = Store(tmp_path / f"{name}.duckdb")
        with store.transaction():
            ids = opener(store.db)
        rows.append((ids, store.db.execute("SELECT * FROM alerts ORDER BY id").fetchall()))
        store.close()
    assert rows[0] == rows[1] and rows[0][0] == [1, 2, 3, 4, 5]
