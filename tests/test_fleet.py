"""Fleet (contract section 6): three sensors ship to real ClickHouse servers; the console's API over all of them
equals the merge of the sensors' own APIs — on one 18.16 server, on two shards, after a kill -9, and on chdb."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from api import create_app
from api.auth import create_token
from sensor import fleet
from sensor.cli import main
from sensor.console import ClickHouseStore
from sensor.engine import Engine
from sensor.readers import CaptureReader
from sensor.replay import replay
from sensor.serialize import ConnectionFilter
from sensor.store import Store
from tests import fleet_servers
from tests.fleet_servers import ClickHouseServer, cluster_xml

REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "pcaps" / "real"
SENSORS = {  # sensor id -> (site, captures): 1 and 2 share a site (and the S7-300's addresses)
    "sensor-1": ("plant-1", ["iti/s7_step7_s300_readDiagData.pcapng", "iti/ModbusTCP_modbus_test_data_part1.pcap"]),
    "sensor-2": ("plant-1", ["iti/s7_step7_s300_readVarTab.pcapng", "ndpi/modbus.pcap"]),
    "sensor-3": (
        "plant-2",
        ["ndpi/http.pcapng", "iti/s7_s7-1200-hmi.pcap", "icsnpp-s7comm/s7ident.pcap", "ndpi/beckhoff_ads.pcapng"],
    ),
}

pytestmark = pytest.mark.skipif(
    not fleet_servers.available() or not REAL.is_dir(), reason="needs clickhouse-server (apt) and ../shared/pcaps"
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("fleet")


@pytest.fixture(scope="module")
def server(root):
    clickhouse = ClickHouseServer(root / "single")
    clickhouse.start()
    yield clickhouse
    clickhouse.stop()


def _config(root: Path, url: str, site: str, sensor: str) -> Path:
    path = root / f"{sensor}.toml"
    path.write_text(f'[fleet]\nclickhouse_url = "{url}"\nsite = "{site}"\nsensor_id = "{sensor}"\n')
    return path


@pytest.fixture(scope="module")
def sensors(root, server):
    """Each sensor replays its captures with `otsensor replay --config` ([fleet]) into its own DB."""
    assert main(["fleet", "init", "--clickhouse", server.url]) == 0
    dbs = {}
    for sensor, (site, captures) in SENSORS.items():
        db = root / f"{sensor}.duckdb"
        paths = [str(REAL / capture) for capture in captures]
        assert (
            main(
                ["replay", *paths, "--db", str(db), "--json", "--config", str(_config(root, server.url, site, sensor))]
            )
            == 0
        )
        assert not list(Path(f"{db}.fleet-spool").glob("*.delta.gz"))  # everything shipped
        dbs[sensor] = db
    return dbs


FLAGS = ("engineeringStation", "scanner", "authorized")


def sensor_views(dbs: dict) -> dict:
    """{sensor: (site, connections JSON, devices JSON)} through each sensor's own API."""
    views = {}
    for sensor, db in dbs.items():
        store = Store(db, read_only=True)
        try:
            views[sensor] = (SENSORS[sensor][0], json.loads(store.connections_json()), store.devices())
        finally:
            store.close()
    return views


def merged(views: dict) -> tuple[dict, dict]:
    """The sensors' APIs merged as the fleet should: devices by (site, ip), connections by (site, client, server)."""
    devices, connections = {}, {}
    for sensor, (site, sensor_connections, sensor_devices) in views.items():
        ip_of = {d["id"]: d["ipAddresses"][0] for d in sensor_devices}
        for d in sensor_devices:
            key = (site, d["ipAddresses"][0])
            mine = {k: v for k, v in d.items() if k != "id"}
            mine["sensorIds"] = [sensor]
            if key in devices:  # the site's other sensor saw it too: the join of both
                other = devices[key]
                for field in ("firstSeen",):
                    mine[field] = min(mine[field], other[field])
                mine["lastSeen"] = max(mine["lastSeen"], other["lastSeen"])
                mine["macAddresses"] = sorted(set(mine["macAddresses"]) | set(other["macAddresses"]))
                roles = {p["name"]: set(p["roles"]) for p in other["protocols"]}
                for p in mine["protocols"]:
                    roles.setdefault(p["name"], set()).update(p["roles"])
                mine["protocols"] = [{"name": n, "roles": sorted(r)} for n, r in sorted(roles.items())]
                for field in ("name", "vendor"):
                    mine[field] = max(filter(None, (mine[field], other[field])), default=None)
                mine["sensorIds"] = sorted(other["sensorIds"] + [sensor])
                if mine["firmware"] != other["firmware"]:
                    mine["firmware"] = mine["firmware"] or other["firmware"]
                mine["identity"] = {**other["identity"], **mine["identity"]}
                # classes: a flag if either sensor says so, the union of the protocols' addresses
                for flag in FLAGS:
                    mine[flag] = mine[flag] or other[flag]
                addresses = {p: set(values) for p, values in other["addresses"].items()}
                for p, values in mine["addresses"].items():
                    addresses.setdefault(p, set()).update(values)
                mine["addresses"] = {p: sorted(values) for p, values in sorted(addresses.items())}
                if any(p["name"] in {"modbus", "s7comm", "s7comm-plus", "ams"} and "server" in p["roles"]
                       for p in mine["protocols"]):  # fmt: skip
                    mine["type"] = "PLC"
                elif mine["type"] is None:
                    mine["type"] = other["type"]
            devices[key] = mine
        for c in sensor_connections:
            key = (site, ip_of[c["firstDeviceId"]], ip_of[c["secondDeviceId"]])
            mine = {"lastSeen": c["lastSeen"], "discovered": c["discovered"], "ports": c["ports"],
                    "protocols": {p["name"]: set(p["commands"]) for p in c["protocols"]}, "sensorIds": [sensor]}  # fmt: skip
            if key in connections:
                other = connections[key]
                mine["lastSeen"] = max(mine["lastSeen"], other["lastSeen"])
                mine["discovered"] = min(mine["discovered"], other["discovered"])
                mine["ports"] = sorted(set(mine["ports"]) | set(other["ports"]))
                for name, commands in other["protocols"].items():
                    mine["protocols"].setdefault(name, set()).update(commands)
                mine["sensorIds"] = sorted(other["sensorIds"] + [sensor])
            connections[key] = mine
    for record in connections.values():
        record["protocols"] = [{"name": n, "commands": sorted(c)} for n, c in sorted(record["protocols"].items())]
    return devices, connections


def console_views(client) -> tuple[dict, dict, list, list]:
    """The console's devices and connections through its API, keyed the same way, and the raw lists."""
    tokens = Store(":memory:")
    token = create_token(tokens, "console")
    app = create_app(ClickHouseStore(client, tokens), {"rate_limit": 0})
    with app.test_client() as http:
        auth = {"Authorization": token}
        device_list = http.get("/api/v1/devices", headers=auth).get_json()
        connection_list = http.get("/api/v1/devices/connections", headers=auth).get_json()
    by_id = {d["id"]: d for d in device_list}
    devices = {(d["site"], d["ipAddresses"][0]): {k: v for k, v in d.items() if k not in {"id", "site", "sensorId"}}
               for d in device_list}  # fmt: skip
    connections = {}
    for c in connection_list:
        first, second = by_id[c["firstDeviceId"]], by_id[c["secondDeviceId"]]
        assert c["site"] == first["site"] == second["site"] and c["sensorId"] == c["sensorIds"][0]
        key = (c["site"], first["ipAddresses"][0], second["ipAddresses"][0])
        connections[key] = {k: c[k] for k in ("lastSeen", "discovered", "ports", "protocols", "sensorIds")}
    return devices, connections, device_list, connection_list


def test_console_equals_the_merge_of_the_sensors(server, sensors):
    expected_devices, expected_connections = merged(sensor_views(sensors))
    devices, connections, device_list, connection_list = console_views(fleet.ClickHouse(server.url))
    assert len(expected_connections) > 8 and any(len(c["sensorIds"]) == 2 for c in expected_connections.values())
    assert connections == expected_connections
    assert devices == expected_devices
    # the sensors' classes came along: authorized (seen in the first capture's learning day; the captures are
    # years apart), an engineering station, no scanner, the protocols' own addresses (S7 rack/slot, Modbus unit
    # ids, AMS Net Ids)
    assert {d["authorized"] for d in device_list} == {True, False} == {d["engineeringStation"] for d in device_list}
    assert not any(d["scanner"] for d in device_list)
    assert {"s7comm", "modbus", "ams"} <= {p for d in device_list for p in d["addresses"]}
    # ids: stable, JSON-safe, unique, the list ordered by them as on a sensor
    ids = [d["id"] for d in device_list]
    assert ids == sorted(set(ids)) and all(0 <= i < 2**53 for i in ids)
    pairs = [(c["firstDeviceId"], c["secondDeviceId"]) for c in connection_list]
    assert pairs == sorted(pairs) and all(c["id"] == f"{f}-{s}" for c, (f, s) in zip(connection_list, pairs))


def test_console_api_filters_detail_and_etags(server, sensors):
    tokens = Store(":memory:")
    token = create_token(tokens, "console")
    auth = {"Authorization": token}
    app = create_app(ClickHouseStore(fleet.ClickHouse(server.url), tokens), {"rate_limit": 0})
    with app.test_client() as http:
        everything = http.get("/api/v1/devices/connections", headers=auth).get_json()
        plant2 = http.get("/api/v1/devices/connections?site=plant-2", headers=auth).get_json()
        assert plant2 and plant2 == [c for c in everything if c["site"] == "plant-2"]
        middle = sorted(c["discovered"] for c in everything)[len(everything) // 2]
        newer = http.get(f"/api/v1/devices/connections?discoveredAfter={middle}", headers=auth).get_json()
        assert newer and newer == [c for c in everything if c["discovered"] > middle]
        older = http.get(f"/api/v1/devices/connections?discoveredBefore={middle}&site=plant-1", headers=auth)
        assert older.get_json() == [c for c in everything if c["discovered"] < middle and c["site"] == "plant-1"]
        only_b = http.get("/api/v1/devices/connections?sensorId=sensor-2", headers=auth).get_json()
        assert only_b and all(c["sensorIds"] == ["sensor-2"] for c in only_b)  # that sensor's own view
        devices_c = http.get("/api/v1/devices?sensorId=sensor-3", headers=auth).get_json()
        assert devices_c and {d["site"] for d in devices_c} == {"plant-2"}
        one = everything[0]
        mine = http.get(f"/api/v1/devices/{one['firstDeviceId']}/connections", headers=auth).get_json()
        assert one in mine and all(one["firstDeviceId"] in (c["firstDeviceId"], c["secondDeviceId"]) for c in mine)
        detail = http.get(f"/api/v1/connections/{one['id']}", headers=auth).get_json()
        assert detail["packets"] > 0 and detail["bytes"] > 0 and detail["identity"]["sourceIp"]
        assert http.get("/api/v1/connections/1-2", headers=auth).get_json()["identifier"] == "not_found"
        assert http.get("/api/v1/devices/connections").status_code == 401
        first = http.get("/api/v1/devices", headers=auth)
        again = http.get("/api/v1/devices", headers={**auth, "If-None-Match": first.headers["ETag"]})
        assert again.status_code == 304
        assert http.get("/api/v1/devices/connections?site=", headers=auth).status_code == 400
    # packets and bytes fleet-wide: the sensors' own sums
    views = {}
    for sensor, db in sensors.items():
        store = Store(db, read_only=True)
        try:
            for c in json.loads(store.connections_json()):
                views.setdefault(sensor, []).append(store.connection_detail(c["firstDeviceId"], c["secondDeviceId"]))
        finally:
            store.close()
    total = sum(d["packets"] for details in views.values() for d in details)
    with app.test_client() as http:
        console_total = sum(
            http.get(f"/api/v1/connections/{c['id']}", headers=auth).get_json()["packets"] for c in everything
        )
    assert console_total == total


def _deltas(captures: list[str], frames: int = 40) -> list:
    """A capture's traffic as many small deltas, as a daemon's flushes would hand them over."""
    engine, deltas = Engine(), []
    for capture in captures:
        for batch in CaptureReader(REAL / capture, batch_size=frames).batches():
            engine.process_batch(batch)
            delta = engine.take_delta()
            if delta.connections or delta.devices:
                deltas.append(delta)
    last = engine.take_delta()
    if last.connections or last.devices:
        deltas.append(last)
    return deltas


def test_clickhouse_killed_mid_stream_loses_nothing_and_doubles_nothing(root, server, tmp_path):
    """kill -9 while the shipper ships; deltas spool; after a restart all are shipped once (and a retried
    delta whose insert had landed counts once)."""
    url = server.url + "?database=killed"
    client = fleet.ClickHouse(url, timeout=5)
    fleet.init([client])
    deltas = _deltas(["iti/s7_step7_s300_readVarTab.pcapng", "iti/ModbusTCP_modbus_test_data_part2.pcap"])
    assert len(deltas) > 10
    local = Store(tmp_path / "local.duckdb")
    shipper = fleet.Shipper(client, "plant-9", "sensor-k", fleet.Spool(tmp_path / "spool", 1 << 30)).start()
    half = len(deltas) // 2
    for delta in deltas[:half]:
        local.merge(delta)
        shipper.submit(delta)
    server.kill()  # mid-stream: some of the first half may be in flight
    for delta in deltas[half:]:
        local.merge(delta)
        shipper.submit(delta)
    _wait(lambda: shipper.stats()["failures"] > 0 and not shipper.queue)
    assert shipper.stats()["spooledDeltas"] > 0
    # a delta shipped twice: its insert landed but the answer was lost (the file is shipped again)
    duplicate = sorted(shipper.spool.pending())[0]
    connections, _devices, _alerts, _classes = fleet.Spool.read(duplicate)
    server.start()
    client.query("INSERT INTO killed.delta_connections FORMAT JSONEachRow", connections)
    _wait(lambda: not shipper.spool.pending())
    assert shipper.close()
    stats = shipper.stats()
    assert stats["droppedDeltas"] == 0 and stats["shippedDeltas"] + 0 <= len(deltas)
    tokens = Store(":memory:")
    console = ClickHouseStore(client, tokens)
    expected = json.loads(local.connections_json())
    ip_of = {d["id"]: d["ipAddresses"][0] for d in local.devices()}
    console_ips = {d["id"]: d["ipAddresses"][0] for d in console.devices()}
    got = json.loads(console.connections_json())
    assert len(got) == len(expected)
    by_pair = {(console_ips[c["firstDeviceId"]], console_ips[c["secondDeviceId"]]): c for c in got}
    for c in expected:
        mine = by_pair[(ip_of[c["firstDeviceId"]], ip_of[c["secondDeviceId"]])]
        assert {k: mine[k] for k in ("lastSeen", "discovered", "ports", "protocols")} == {
            k: c[k] for k in ("lastSeen", "discovered", "ports", "protocols")}  # fmt: skip
        want = local.connection_detail(c["firstDeviceId"], c["secondDeviceId"])
        have = console.connection_detail(mine["firstDeviceId"], mine["secondDeviceId"])
        assert (have["packets"], have["bytes"]) == (want["packets"], want["bytes"])
    local.close()


def by_address(store) -> dict:
    """A store's connections (through its read interface) keyed by (initiator ip, responder ip)."""
    ip_of = {d["id"]: d["ipAddresses"][0] for d in store.devices()}
    return {
        (ip_of[c["firstDeviceId"]], ip_of[c["secondDeviceId"]]): {
            k: c[k] for k in ("lastSeen", "discovered", "ports", "protocols")
        }
        for c in json.loads(store.connections_json())
    }


def _wait(condition, seconds: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_two_shards_answer_as_one_server(root, server, sensors):
    """Two clickhouse-server processes, a remote_servers cluster and Distributed tables: the same answers."""
    shards = [ClickHouseServer(root / f"shard{i}") for i in (1, 2)]
    ports = [shard.tcp_port for shard in shards]
    try:
        for shard in shards:
            shard.remote_servers = cluster_xml("fleet_two", ports)
            shard.start()
        urls = [shard.url for shard in shards]
        assert main(["fleet", "init", "--cluster", "fleet_two", *(a for u in urls for a in ("--clickhouse", u))]) == 0
        for sensor, (site, captures) in SENSORS.items():
            db = root / f"sharded-{sensor}.duckdb"
            config = _config(root, urls[0], site, sensor)
            assert (
                main(["replay", *(str(REAL / c) for c in captures), "--db", str(db), "--json", "--config", str(config)])
                == 0
            )
        local_rows = [int(s.query("SELECT count() FROM otsensor.connections_state_local")) for s in shards]
        assert all(local_rows), local_rows  # both shards hold part of the fleet
        one = console_views(fleet.ClickHouse(server.url))
        single = ClickHouseStore(fleet.ClickHouse(server.url), Store(":memory:"))
        for url in urls:  # either shard's Distributed tables answer for the whole fleet
            assert console_views(fleet.ClickHouse(url))[2:] == one[2:]
            sharded = ClickHouseStore(fleet.ClickHouse(url), Store(":memory:"))
            middle = sorted(c["discovered"] for c in one[3])[len(one[3]) // 2]
            for c in one[3][:5]:  # one device's list (PREWHERE on the ids), a detail with its summed counts
                for where in (ConnectionFilter(device_id=c["secondDeviceId"]), ConnectionFilter(discovered_after=middle),
                              ConnectionFilter(device_id=c["firstDeviceId"], discovered_before=middle + 1)):  # fmt: skip
                    assert sharded.connections_json(where) == single.connections_json(where)
                assert sharded.connection_detail(c["firstDeviceId"], c["secondDeviceId"]) == single.connection_detail(
                    c["firstDeviceId"], c["secondDeviceId"]
                )
            assert sharded.counts() == single.counts()
            assert sharded.alerts(2) == single.alerts(2) != []  # each alert's states on its sensor's shard
    finally:
        for shard in shards:
            shard.stop()


def test_the_same_sql_on_chdb(root, server, sensors, tmp_path):
    """Current ClickHouse (chdb, in-process): the same tables, the same inserted rows, the same answers."""
    pytest.importorskip("chdb")
    chdb = fleet_servers.Chdb(tmp_path / "chdb")
    try:
        fleet.init([chdb])
        for sensor, (site, captures) in SENSORS.items():
            spool = fleet.Spool(tmp_path / f"spool-{sensor}", 1 << 30)
            engine = Engine()
            store = Store(":memory:")
            replay([str(REAL / c) for c in captures], store, progress=False, fleet=_Direct(spool, site, sensor))
            # as Shipper.attach hands them over
            spool.add(fleet.ConnectionTable(), site, sensor, store.alerts(2), store.device_flags())
            store.close()
            del engine
            for path in spool.pending():
                tables = ("delta_connections", "delta_devices", "alerts", "delta_device_classes")
                bodies = zip(tables, fleet.Spool.read(path), strict=True)
                for table, body in bodies:
                    if body:  # a delta of devices alone (as Shipper.ship_file, which sends no empty insert)
                        chdb.query(f"INSERT INTO otsensor.{table} FORMAT JSONEachRow", body)
        assert console_views(chdb)[2:] == console_views(fleet.ClickHouse(server.url))[2:]
        # alerts: the same latest states, fleet ids and device ids (sensor-3's S7 upload)
        alerts = ClickHouseStore(chdb, Store(":memory:")).alerts(2)
        assert any(a["title"] == "Program upload" for a in alerts)
        assert alerts == ClickHouseStore(fleet.ClickHouse(server.url), Store(":memory:")).alerts(2)
    finally:
        chdb.close()


class _Direct:
    """A shipper that only spools (its files are inserted by hand)."""

    def __init__(self, spool, site, sensor) -> None:
        self.spool, self.site, self.sensor = spool, site, sensor

    def submit(self, delta) -> None:
        self.spool.add(delta, self.site, self.sensor)


def test_a_full_spool_is_counted_in_healthz_and_metrics(tmp_path):
    """ClickHouse unreachable: deltas spool up to the bound; what overflows is counted, visible to monitoring."""
    client = fleet.ClickHouse(f"http://127.0.0.1:{fleet_servers.free_port()}/", timeout=1)
    spool = fleet.Spool(tmp_path / "spool", 3000)
    shipper = fleet.Shipper(client, "plant-1", "sensor-x", spool).start()
    for delta in _deltas(["iti/ModbusTCP_modbus_test_data_part2.pcap"], frames=10)[:20]:
        shipper.submit(delta)
        _wait(lambda: not shipper.queue)  # one flush after another, each spooled on its own
    _wait(lambda: not shipper.queue and shipper.stats()["failures"] > 0)
    stats = shipper.stats()
    assert stats["droppedDeltas"] > 0 and stats["droppedRows"] > 0 and 0 < stats["spooledBytes"] <= 3000
    app = create_app(Store(":memory:"), {"stats": lambda: {"fleet": shipper.stats()}})
    with app.test_client() as http:
        health = http.get("/healthz").get_json()
        assert (
            health["fleet"]["droppedDeltas"] == stats["droppedDeltas"]
            and "cannot be reached" in health["fleet"]["lastError"]
        )
        metrics = http.get("/metrics").get_data(as_text=True)
        assert f"otsensor_fleet_dropped_deltas_total {float(stats['droppedDeltas'])}" in metrics
        assert (
            "otsensor_fleet_dropped_classes_total 0.0" in metrics and "otsensor_fleet_shipped_classes_total" in metrics
        )
    shipper.close(timeout=2)
    # the sequence survives: a new spool in the same folder goes on from the last delta id
    assert fleet.Spool(tmp_path / "spool", 3000).sequence == spool.sequence


def test_a_commit_and_its_delta_spool_as_one_file_and_hold_no_lock(tmp_path):
    """A flush: the merge's sinks (alerts, flags) and then the delta, inside together() — one spool file, not
    two; while one is held another thread (the API handling an alert) still hands its changes over."""
    import threading
    import time

    down = fleet.ClickHouse(f"http://127.0.0.1:{fleet_servers.free_port()}/", timeout=1)  # the files stay
    shipper = fleet.Shipper(down, "plant-t", "together-1", fleet.Spool(tmp_path / "spool", 1 << 30)).start()
    deltas = _deltas(["ndpi/modbus.pcap"], frames=20)[:3]
    for delta in deltas:
        with shipper.together():
            shipper.submit_classes({"10.0.0.9": (False, False, True)} if delta is deltas[0] else {})
            time.sleep(0.3)  # a merge that takes a while: the thread must not spool the flags alone
            other = threading.Thread(target=shipper.submit_alerts, args=([],))
            other.start()
            other.join(timeout=5)
            assert not other.is_alive()  # the shipper's lock is free while together() is held
            shipper.submit(delta)
        _wait(lambda: not shipper.queue and not shipper.class_queue)
    files = shipper.spool.pending()
    assert len(files) == 3
    assert b"10.0.0.9" in fleet.Spool.read(files[0])[3] and fleet.Spool.read(files[0])[0]
    shipper.close(timeout=2)


def test_bad_fleet_settings_are_one_line(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text('[fleet]\nclickhouse_url = "http://127.0.0.1:1/"\n')
    assert (
        main(["replay", str(REAL / "ndpi/http.pcapng"), "--db", str(tmp_path / "x.duckdb"), "--config", str(config)])
        == 2
    )
    assert "fleet.site is required" in capsys.readouterr().err
    assert main(["fleet", "init", "--clickhouse", "ftp://nowhere"]) == 2
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_daemon_ships_each_flush(server, tmp_path):
    """`otsensor run` with [fleet]: a flush hands its delta over, the shipper sends it; /healthz's stats show it."""
    from sensor.daemon import Daemon, table_to_wire
    from sensor.settings import FleetSettings, Settings

    client = fleet.ClickHouse(server.url + "?database=daemon")
    fleet.init([client])
    db = tmp_path / "live.duckdb"
    store = Store(db)
    settings = Settings(interfaces=("span0",), workers=1, db=str(db),
                        fleet=FleetSettings(clickhouse_url=client.base + "?database=daemon", site="plant-7",
                                            sensor_id="live-1",
                                            ship_interval=0))  # fmt: skip
    daemon = Daemon(settings, store)
    try:
        for shipped, delta in enumerate(_deltas(["ndpi/modbus.pcap"], frames=20)[:3], 1):
            daemon.handle(("report", 0, table_to_wire(delta), {"packets": 1}))
            assert daemon.flush() is True
            # each flush's delta ships before the next flush (deltas queued together would ship as their join)
            _wait(lambda shipped=shipped: daemon.snapshot()["fleet"]["shippedDeltas"] == shipped)
        assert daemon.snapshot()["fleet"]["spooledDeltas"] == 0
        console = ClickHouseStore(client, Store(":memory:"))
        assert by_address(console) == by_address(store) and by_address(store)
        assert Path(f"{db}.fleet-spool/sequence").read_text() == "3"
    finally:
        daemon.fleet.close()
        store.close()


def test_otsensor_console_serves_the_fleet(server, sensors, tmp_path):
    """`otsensor console` as a user runs it: its own token DB (`otsensor token create --db`), the fleet's rows."""
    import subprocess
    import sys
    import time
    import urllib.request

    db = tmp_path / "otsensor-console.duckdb"
    token_create = [sys.executable, "-m", "sensor", "token", "create", "--db", str(db), "--name", "ops"]
    refused = subprocess.run(token_create, capture_output=True, text=True)  # only a daemon makes a DB
    assert refused.returncode == 2 and "no such DB" in refused.stderr and not db.exists()
    port = fleet_servers.free_port()
    console = subprocess.Popen(
        [sys.executable, "-m", "sensor", "console", "--clickhouse", server.url, "--db", str(db),
         "--listen", f"127.0.0.1:{port}"],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not Path(f"{db}.sock").exists():  # the console made its token DB and listens beside it
            assert time.monotonic() < deadline and console.poll() is None, "the console did not start"
            time.sleep(0.2)
        made = subprocess.run(token_create, capture_output=True, text=True, check=True)  # through its admin socket
        token = made.stdout.strip().splitlines()[-1]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/devices", headers={"Authorization": token})
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    served = json.loads(answer.read())
                break
            except OSError:
                assert time.monotonic() < deadline and console.poll() is None, "the console did not start"
                time.sleep(0.2)
        assert served == console_views(fleet.ClickHouse(server.url))[2]
        # `otsensor alerts --db` the console's file: the fleet's alerts, through its admin socket; handling refused
        listed = subprocess.run([*token_create[:3], "alerts", "--db", str(db)], capture_output=True, text=True)
        assert listed.returncode == 0
        fleet_alerts = ClickHouseStore(fleet.ClickHouse(server.url), Store(":memory:")).alerts(1)
        assert json.loads(listed.stdout) == fleet_alerts != []
        handle = [*token_create[:3], "alerts", "handle", str(fleet_alerts[0]["id"]), "--db", str(db)]
        refused = subprocess.run(handle, capture_output=True, text=True)
        assert refused.returncode == 2 and "on the sensor that raised them" in refused.stderr
    finally:
        console.terminate()
        console.wait(20)


def test_the_flushes_of_one_interval_ship_as_one_delta(server, tmp_path):
    """ship_interval: many flushes, one delta (their join) — same lists and sums, a row per pair instead of per flush."""
    client = fleet.ClickHouse(server.url + "?database=joined")
    fleet.init([client])
    local = Store(tmp_path / "local.duckdb")
    shipper = fleet.Shipper(client, "plant-8", "sensor-j", fleet.Spool(tmp_path / "spool", 1 << 30), interval=3600)
    shipper.start()
    deltas = _deltas(["ndpi/modbus.pcap", "iti/ModbusTCP_modbus_test_data_part2.pcap"], frames=20)
    for delta in deltas:
        local.merge(delta)
        shipper.submit(delta)
    # the first spool comes at once (nothing waited before it), the rest wait for the interval (or close)
    assert shipper.close() and 1 <= shipper.stats()["shippedDeltas"] <= 2 < len(deltas)
    console = ClickHouseStore(client, Store(":memory:"))
    assert by_address(console) == by_address(local)
    total = sum(local.connection_detail(c["firstDeviceId"], c["secondDeviceId"])["packets"]
                for c in json.loads(local.connections_json()))  # fmt: skip
    assert total == sum(console.connection_detail(c["firstDeviceId"], c["secondDeviceId"])["packets"]
                        for c in json.loads(console.connections_json()))  # fmt: skip
    local.close()


def test_fleet_settings_from_the_file_and_flags(tmp_path):
    import argparse

    from sensor.settings import SettingsError, add_arguments, load, overrides_from_args

    config = _config(tmp_path, "http://127.0.0.1:8123/", "plant-1", "span-a")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    alone = load(str(config), overrides_from_args(parser.parse_args([])))
    assert (alone.fleet.clickhouse_url, alone.fleet.site, alone.fleet.sensor_id) == (
        "http://127.0.0.1:8123/",
        "plant-1",
        "span-a",
    )
    flagged = load(
        str(config), overrides_from_args(parser.parse_args(["--fleet", "site=plant-2", "--fleet", "ship_interval=5"]))
    )
    assert (flagged.fleet.clickhouse_url, flagged.fleet.site, flagged.fleet.ship_interval) == (
        "http://127.0.0.1:8123/",
        "plant-2",
        5.0,
    )
    with pytest.raises(SettingsError, match="fleet.spool_mb must be a number"):
        load(str(config), {"fleet": {"spool_mb": "lots"}})
    with pytest.raises(SystemExit):
        parser.parse_args(["--fleet", "colour=blue"])


# -- alerts (contract section 4) over the fleet ------------------------------------------------------------
ALERT_CAPTURES = [  # a PLC stopped (and its mode push), a program downloaded twice over
    "iti/s7_step7_s300_stop.pcapng",
    "iti/s7_step7_s300_download.pcapng",
    "iti/s7_s7comm_downloading_block_db1.pcap",
]
SAME_ON_BOTH = ("time", "title", "message", "severity", "engine", "additionalInformation", "handled", "count",
                "lastTime", "sourceDeviceAddress", "destinationDeviceAddress", "remediationSteps")  # fmt: skip


def _alert_config(root: Path, url: str, site: str, sensor: str) -> Path:
    path = _config(root, url, site, sensor)
    path.write_text("learning_hours = 0\n" + path.read_text())  # policy alerts too: new devices, pairs
    return path


@pytest.fixture(scope="module")
def alerting(root, server):
    """A sensor that sees a PLC stopped and programs downloaded ships them with `otsensor replay --config`."""
    url = server.url + "?database=alerting"
    assert main(["fleet", "init", "--clickhouse", url]) == 0
    db = root / "eng-1.duckdb"
    config = _alert_config(root, url, "plant-a", "eng-1")
    assert main(["replay", *(str(REAL / c) for c in ALERT_CAPTURES), "--db", str(db), "--config", str(config)]) == 0
    assert not list(Path(f"{db}.fleet-spool").glob("*.delta.gz"))  # everything shipped
    return db, config, fleet.ClickHouse(url)


def _sensor_alerts(db: Path) -> list[dict]:
    store = Store(db, read_only=True)
    try:
        return store.alerts(2)
    finally:
        store.close()


def _console(client):
    tokens = Store(":memory:")
    token = create_token(tokens, "console")
    return create_app(ClickHouseStore(client, tokens), {"rate_limit": 0}).test_client(), {"Authorization": token}


def test_the_console_serves_the_sensors_alerts(alerting):
    db, _config_file, client = alerting
    mine = _sensor_alerts(db)
    titles = {a["title"] for a in mine}
    assert {"PLC Stop command", "PLC mode change", "Program download", "New device detected"} <= titles
    http, auth = _console(client)
    served = http.get("/api/v2/alerts", headers=auth).get_json()
    devices = {d["id"]: d for d in http.get("/api/v1/devices", headers=auth).get_json()}
    # the sensor's alerts, each once, with the sensor's fields, its id kept as sensorAlertId
    assert sorted(a["sensorAlertId"] for a in served) == [a["id"] for a in mine]
    by_id = {a["sensorAlertId"]: a for a in served}
    for alert in mine:
        theirs = by_id[alert["id"]]
        assert {k: theirs[k] for k in SAME_ON_BOTH} == {k: alert[k] for k in SAME_ON_BOTH}
        assert (theirs["site"], theirs["sensorId"]) == ("plant-a", "eng-1")
        # the devices are the console's own (fleet ids), the ones with the sensor's addresses
        assert devices[theirs["sourceDevice"]]["ipAddresses"] == [alert["sourceDeviceAddress"]]
        if alert["destinationDeviceAddress"] is None:
            assert theirs["destinationDevice"] is None
        else:
            assert devices[theirs["destinationDevice"]]["ipAddresses"] == [alert["destinationDeviceAddress"]]
    ids = [a["id"] for a in served]
    assert len(set(ids)) == len(ids) and all(0 <= i < 2**53 for i in ids)
    assert [a["time"] for a in served] == sorted(a["time"] for a in served)
    # v1: the same alerts without the v2 fields; the sensor's filters, and the console's site / sensorId
    v1 = http.get("/api/v1/alerts", headers=auth).get_json()
    assert [a["id"] for a in v1] == ids and not {"sourceDeviceAddress", "remediationSteps"} & set(v1[0])
    stop = http.get("/api/v2/alerts?type=PLC Stop command", headers=auth).get_json()
    assert [a["sensorAlertId"] for a in stop] == [a["id"] for a in mine if a["title"] == "PLC Stop command"] != []
    middle = sorted(a["time"] for a in mine)[len(mine) // 2]
    later = http.get(f"/api/v2/alerts?fromTime={middle}", headers=auth).get_json()
    assert later and [a["sensorAlertId"] for a in later] == [a["sensorAlertId"] for a in served if a["time"] >= middle]
    assert http.get("/api/v2/alerts?sensorId=eng-1&site=plant-a", headers=auth).get_json() == served
    assert http.get("/api/v2/alerts?site=plant-b", headers=auth).get_json() == []
    assert http.get("/api/v2/alerts?state=handled", headers=auth).get_json() == []
    assert http.get("/api/v2/alerts?state=nope", headers=auth).status_code == 400
    # what stays on the sensor: a clear error in the API's shape, never an empty list that looks true
    for answer in (
        http.put(f"/api/v1/alerts/{ids[0]}", json={"action": "handle"}, headers=auth),
        http.get(f"/api/v2/alerts/pcap/{ids[0]}", headers=auth),
        http.get("/api/v1/events", headers=auth),
    ):
        error = answer.get_json()
        assert answer.status_code == 501 and error["status"] == 501 and error["identifier"] == "not_implemented"
        assert "sensor" in error["message"]


# -- device classes (contract section 3: engineeringStation, scanner, authorized, addresses) over the fleet ------
CLASSES = (*FLAGS, "addresses")


def _classes(devices: list[dict]) -> dict:
    """{ip: the four class fields} of a device list (a sensor's or the console's)."""
    return {d["ipAddresses"][0]: {k: d[k] for k in CLASSES} for d in devices}


def _class_file(tmp_path: Path, store: Store, site: str, sensor: str) -> bytes:
    """A spool file's device classes holding everything ``store`` knows of them: each device's addresses
    (as a delta brings them) and flags (as the store hands them over), read back from the file."""
    import ipaddress

    table = fleet.ConnectionTable()
    for device in store.devices():
        if device["addresses"]:
            address = ipaddress.ip_address(device["ipAddresses"][0]).packed
            table.device(address).addresses = {p: set(values) for p, values in device["addresses"].items()}
    spool = fleet.Spool(tmp_path / f"classes-{sensor}", 1 << 30)
    spool.add(table, site, sensor, classes=store.device_flags())
    (path,) = spool.pending()
    return fleet.Spool.read(path)[3]


def test_the_console_carries_the_sensors_classes(alerting, tmp_path):
    """After the S7 stop and downloads, the console's devices carry the sensor's engineeringStation, scanner,
    authorized and addresses for the same address; a classes file shipped twice changes nothing."""
    db, _config_file, client = alerting
    store = Store(db, read_only=True)
    try:
        mine = store.devices()
        body = _class_file(tmp_path, store, "plant-a", "eng-1")
    finally:
        store.close()
    http, auth = _console(client)
    served = http.get("/api/v1/devices", headers=auth).get_json()
    assert _classes(served) == _classes(mine)
    by_ip = {d["ipAddresses"][0]: d for d in served}
    # the station that stopped the PLC is one, the PLC is not; a PLC downloaded to has its rack/slot
    stop = next(a for a in _sensor_alerts(db) if a["title"] == "PLC Stop command")
    station = by_ip[stop["sourceDeviceAddress"]]
    assert (
        station["engineeringStation"] is True and by_ip[stop["destinationDeviceAddress"]]["engineeringStation"] is False
    )
    plc = next(d for d in served if "s7comm" in d["addresses"])
    assert all(d["authorized"] is False for d in served)  # learning 0
    assert http.get(f"/api/v1/devices/{station['id']}", headers=auth).get_json() == station
    # the same rows shipped twice more (an INSERT that landed, its answer lost): nothing changes
    for _ in range(2):
        client.query(f"INSERT INTO {client.database}.delta_device_classes FORMAT JSONEachRow", body)
    assert http.get("/api/v1/devices", headers=auth).get_json() == served
    # a second sensor of the site says the PLC scanned and knows another rack/slot of it: fleet-wide the PLC
    # is a scanner and has both addresses; the first sensor's own view (sensorId) is unchanged
    row = {"site": "plant-a", "sensor_id": "eng-2", "ip": plc["ipAddresses"][0], "engineering_station": 0,
           "scanner": 1, "authorized": 0, "addresses": ["s7comm\x1frack 0, slot 9"]}  # fmt: skip
    client.query(f"INSERT INTO {client.database}.delta_device_classes FORMAT JSONEachRow", json.dumps(row).encode())
    merged_plc = http.get(f"/api/v1/devices/{plc['id']}", headers=auth).get_json()
    assert merged_plc["scanner"] is True and merged_plc["engineeringStation"] is False
    assert merged_plc["addresses"]["s7comm"] == sorted({*plc["addresses"]["s7comm"], "rack 0, slot 9"})
    assert http.get("/api/v1/devices?sensorId=eng-1", headers=auth).get_json() == served


def test_a_sensor_attached_after_the_fact_hands_over_its_flags(server, tmp_path):
    """A device learned (handleAndLearn: authorized) while no shipper ran reaches the console when the next
    shipper is attached to the store — that device alone, the flags already spooled are not sent again."""
    from sensor.detect import Detector

    client = fleet.ClickHouse(server.url + "?database=late_classes")
    fleet.init([client])
    store = Store(tmp_path / "late.duckdb", detector=Detector(learning_hours=0))
    spool_folder = tmp_path / "late.duckdb.fleet-spool"
    shipper = fleet.Shipper(client, "plant-l", "late-2", fleet.Spool(spool_folder, 1 << 30)).start().attach(store)
    replay([str(REAL / ALERT_CAPTURES[0])], store, progress=False, fleet=shipper)
    assert shipper.close() and shipper.stats()["shippedClasses"] > 0
    console = ClickHouseStore(client, Store(":memory:"))
    assert _classes(console.devices()) == _classes(store.devices())
    assert any(d["engineeringStation"] for d in store.devices())
    new_device = next(a for a in store.alerts(2) if a["title"] == "New device detected")
    assert store.handle_alert(new_device["id"], learn=True)  # no shipper now
    learned = new_device["sourceDeviceAddress"]
    assert _classes(console.devices())[learned]["authorized"] is False
    again = fleet.Shipper(client, "plant-l", "late-2", fleet.Spool(spool_folder, 1 << 30)).start().attach(store)
    assert again.close() and again.stats()["shippedClasses"] == 1  # only the learned device's flags
    assert _classes(console.devices())[learned]["authorized"] is True
    assert _classes(console.devices()) == _classes(store.devices())
    store.close()


def test_fleet_init_completes_a_version_1_fleet(server, tmp_path, monkeypatch):
    """A fleet made by version 1 (no device classes): its console shows them unknown (null) and a sensor's
    classes wait in the spool with a clear error; `otsensor fleet init` again adds the tables, the spool
    ships, and the same console shows the sensor's classes."""
    from sensor.detect import Detector

    url = server.url + "?database=upgraded"
    client = fleet.ClickHouse(url)
    with monkeypatch.context() as version_1:
        version_1.setattr(fleet, "TABLES", {k: v for k, v in fleet.TABLES.items() if "classes" not in k})
        version_1.setattr(fleet, "VIEWS", {k: v for k, v in fleet.VIEWS.items() if "classes" not in k})
        version_1.setattr(fleet, "SCHEMA_VERSION", 1)
        fleet.init([client])
    assert client.rows("SELECT max(version) FROM upgraded.fleet_schema") == [[1]]
    # its console serves devices (as shipped by a version-1 sensor) with their classes unknown
    devices = fleet.delta_rows(_deltas([ALERT_CAPTURES[0]], frames=10_000)[0], "plant-u", "up-1", 1)[1]
    client.query("INSERT INTO upgraded.delta_devices FORMAT JSONEachRow", devices)
    console = ClickHouseStore(client, Store(":memory:"))
    before = console.devices()
    assert before and all(d[k] is None for d in before for k in CLASSES)
    # a version-2 sensor: its classes are refused, its spool waits and says why
    store = Store(":memory:", detector=Detector(learning_hours=0))
    shipper = fleet.Shipper(client, "plant-u", "up-1", fleet.Spool(tmp_path / "spool", 1 << 30)).start()
    shipper.attach(store)
    replay([str(REAL / ALERT_CAPTURES[0])], store, progress=False, fleet=shipper)
    _wait(lambda: "otsensor fleet init" in (shipper.stats()["lastError"] or ""))
    assert shipper.stats()["spooledDeltas"] > 0
    assert main(["fleet", "init", "--clickhouse", url]) == 0
    assert client.rows("SELECT max(version) FROM upgraded.fleet_schema") == [[fleet.SCHEMA_VERSION]] == [[2]]
    assert shipper.close()  # its last try ships the spool
    assert _classes(console.devices()) == _classes(store.devices())
    assert any(d["engineeringStation"] for d in console.devices())
    store.close()


def test_alerts_that_overflow_the_spool_are_counted_and_handed_over_at_the_next_start(server, tmp_path):
    """A full spool drops alert states (counted in /healthz and /metrics, never noted as spooled); the next
    start hands them over again, and they arrive."""
    from sensor.detect import Detector

    store = Store(":memory:", detector=Detector(learning_hours=0))
    replay([str(REAL / ALERT_CAPTURES[0])], store, progress=False)
    mine = store.alerts(2)
    down = fleet.ClickHouse(f"http://127.0.0.1:{fleet_servers.free_port()}/", timeout=1)
    full = fleet.Shipper(down, "plant-o", "over-1", fleet.Spool(tmp_path / "spool", 200)).start().attach(store)
    _wait(lambda: full.stats()["droppedAlerts"] == len(mine) and not full.alert_queue)
    app = create_app(Store(":memory:"), {"stats": lambda: {"fleet": full.stats()}})
    with app.test_client() as http:
        assert http.get("/healthz").get_json()["fleet"]["droppedAlerts"] == len(mine)
        assert f"otsensor_fleet_dropped_alerts_total {float(len(mine))}" in http.get("/metrics").get_data(as_text=True)
    full.close(timeout=2)
    client = fleet.ClickHouse(server.url + "?database=overflow")
    fleet.init([client])
    again = fleet.Shipper(client, "plant-o", "over-1", fleet.Spool(tmp_path / "spool", 1 << 30)).start()
    again.attach(store)  # the next start: none of them was spooled, all are handed over
    assert again.close() and again.stats()["shippedAlerts"] == len(mine)
    served = ClickHouseStore(client, Store(":memory:")).alerts(2)
    assert sorted(a["sensorAlertId"] for a in served) == [a["id"] for a in mine]
    store.close()


def test_handling_on_the_sensor_shows_on_the_console(alerting, tmp_path):
    """Handled live (a shipper attached to the store), handled offline (`otsensor alerts handle` on the file,
    shipped at the next start); replaying again or shipping a spool file twice doubles nothing."""
    db, config, client = alerting
    mine = _sensor_alerts(db)
    live, offline = mine[0]["id"], mine[1]["id"]
    store = Store(db)
    spool = fleet.Spool(f"{db}.fleet-spool", 1 << 30)
    shipper = fleet.Shipper(client, "plant-a", "eng-1", spool).start().attach(store)
    try:
        assert shipper.stats()["droppedAlerts"] == 0 and not shipper.alert_queue  # nothing new to hand over
        assert store.handle_alert(live)
        _wait(lambda: shipper.stats()["shippedAlerts"] == 1 and not spool.pending())
    finally:
        shipper.close()
        store.close()
    http, auth = _console(client)
    handled = http.get("/api/v2/alerts?state=handled", headers=auth).get_json()
    assert [a["sensorAlertId"] for a in handled] == [live] and handled[0]["handled"] is True
    assert main(["alerts", "handle", str(offline), "--db", str(db)]) == 0  # no shipper runs now
    # the next replay (its files already ingested, then again with --force) ships the offline change
    paths = [str(REAL / c) for c in ALERT_CAPTURES]
    for force in ([], ["--force"]):
        assert main(["replay", *paths, "--db", str(db), "--config", str(config), *force]) == 0
    assert not spool.pending()
    mine = _sensor_alerts(db)
    served = http.get("/api/v2/alerts", headers=auth).get_json()
    assert len(served) == len(mine) and {a["sensorAlertId"] for a in served if a["handled"]} == {live, offline}
    assert [(a["sensorAlertId"], a["count"]) for a in sorted(served, key=lambda a: a["sensorAlertId"])] == [
        (a["id"], a["count"]) for a in mine
    ]
    # a spool file shipped twice (its INSERT landed, the answer was lost): still one alert each
    again = fleet.Spool(tmp_path / "again", 1 << 30)
    again.add(fleet.ConnectionTable(), "plant-a", "eng-1", mine)
    (path,) = again.pending()
    _connections, _devices, rows, _classes = fleet.Spool.read(path)
    for _ in range(2):
        client.query(f"INSERT INTO {client.database}.alerts FORMAT JSONEachRow", rows)
    assert http.get("/api/v2/alerts", headers=auth).get_json() == served


def test_alerts_wait_in_the_spool_while_clickhouse_is_down(server, tmp_path):
    """ClickHouse unreachable: the alerts a replay raises wait in the spool (with its deltas), survive the
    sensor's restart, and arrive, once, when ClickHouse is back."""
    from sensor.detect import Detector

    client = fleet.ClickHouse(server.url + "?database=waiting")
    fleet.init([client])
    down = fleet.ClickHouse(f"http://127.0.0.1:{fleet_servers.free_port()}/?database=waiting", timeout=1)
    db = tmp_path / "late.duckdb"
    store = Store(db, detector=Detector(learning_hours=0))
    shipper = fleet.Shipper(down, "plant-w", "late-1", fleet.Spool(f"{db}.fleet-spool", 1 << 30)).start()
    shipper.attach(store)
    replay([str(REAL / ALERT_CAPTURES[0])], store, progress=False, fleet=shipper)
    mine = store.alerts(2)
    assert mine and not shipper.close(timeout=3)  # the spool keeps them
    assert shipper.stats()["failures"] > 0 and shipper.stats()["shippedAlerts"] == 0
    waiting = [fleet.Spool.read(path)[2] for path in shipper.spool.pending()]
    assert sum(body.count(b"\n") + 1 for body in waiting if body) == len(mine)
    # the sensor starts again, ClickHouse is back: the spool ships; the start hands over nothing twice
    back = fleet.Shipper(client, "plant-w", "late-1", fleet.Spool(f"{db}.fleet-spool", 1 << 30)).start()
    back.attach(store)
    assert not back.alert_queue
    _wait(lambda: not back.spool.pending())
    assert back.close() and back.stats()["shippedAlerts"] == len(mine)
    store.close()
    console = ClickHouseStore(client, Store(":memory:"))
    served = console.alerts(2)
    assert [a["sensorAlertId"] for a in sorted(served, key=lambda a: a["sensorAlertId"])] == [a["id"] for a in mine]
    assert "PLC Stop command" in {a["title"] for a in served} == {a["title"] for a in mine}
    assert all(a["site"] == "plant-w" and a["sensorId"] == "late-1" for a in served)


def test_the_daemon_ships_its_alerts_and_their_handling(server, tmp_path):
    """`otsensor run` with [fleet]: the alerts its flushes open reach the console; one handled through the
    daemon's API shows handled there after the next ship."""
    from sensor.daemon import Daemon, table_to_wire
    from sensor.detect import Detector
    from sensor.settings import FleetSettings, Settings

    client = fleet.ClickHouse(server.url + "?database=live_alerts")
    fleet.init([client])
    db = tmp_path / "live.duckdb"
    store = Store(db, detector=Detector(learning_hours=0))
    settings = Settings(interfaces=("span0",), workers=1, db=str(db), learning_hours=0,
                        fleet=FleetSettings(clickhouse_url=client.base + "?database=live_alerts", site="plant-6",
                                            sensor_id="live-2", ship_interval=0))  # fmt: skip
    daemon = Daemon(settings, store)
    try:
        for delta in _deltas([ALERT_CAPTURES[0]], frames=50):
            daemon.handle(("report", 0, table_to_wire(delta), {"packets": 1}))
            assert daemon.flush() is True
        mine = store.alerts(2)
        assert "PLC Stop command" in {a["title"] for a in mine}
        _wait(lambda: daemon.snapshot()["fleet"]["shippedAlerts"] >= len(mine) and not daemon.fleet.spool.pending())
        http, auth = _console(client)
        # the flags its merges set (the engineering station that stopped the PLC) shipped after each commit
        _wait(lambda: _classes(http.get("/api/v1/devices", headers=auth).get_json()) == _classes(store.devices()))
        assert any(d["engineeringStation"] for d in store.devices())
        served = http.get("/api/v2/alerts", headers=auth).get_json()
        assert sorted((a["sensorAlertId"], a["title"], a["time"]) for a in served) == [
            (a["id"], a["title"], a["time"]) for a in mine
        ]
        token = create_token(store, "soc")
        sensor_api = create_app(store, {"rate_limit": 0}).test_client()
        stop = next(a for a in mine if a["title"] == "PLC Stop command")
        answer = sensor_api.put(f"/api/v1/alerts/{stop['id']}", json={"action": "handle"},
                                headers={"Authorization": token})  # fmt: skip
        assert answer.status_code == 200 and answer.get_json()["handled"] is True
        _wait(lambda: http.get("/api/v2/alerts?state=handled", headers=auth).get_json() != [])
        handled = http.get("/api/v2/alerts?state=handled", headers=auth).get_json()
        assert [(a["sensorAlertId"], a["handled"]) for a in handled] == [(stop["id"], True)]
        assert len(http.get("/api/v2/alerts?state=unhandled", headers=auth).get_json()) == len(mine) - 1
    finally:
        daemon.fleet.close()
        store.close()
