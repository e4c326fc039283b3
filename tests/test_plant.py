"""A virtual plant with real PLC/HMI software, watched by `otsensor run` on a SPAN port (needs root).

The plant (see /work/shared/PEERS.md): a PLC namespace and an HMI namespace joined by a bridge in a
switch namespace; a tc ingress qdisc with a u32 catch-all ``mirred egress mirror`` on both bridge ports
copies every frame, exactly once, to a SPAN veth whose other end, in the root namespace, is where the
sensor and tcpdump listen. Real peers talk across it: pymodbus, python-snap7 and pyads servers and
clients, ``python -m http.server`` and urllib. The daemon's API must return every (client, server,
protocol, command) row that tshark (tests/oracle.py) finds in a tcpdump of the same port, the port must
not transmit a frame, SIGTERM must exit 0 with everything flushed, and a SIGKILL must leave a DB that
opens with the same device ids.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sensor import serialize
from sensor.store import Store

from .oracle import tshark_rows

ROOT = Path(__file__).resolve().parent.parent
PLC_IP, HMI_IP = "10.214.0.10", "10.214.0.20"
PLC_AMS, HMI_AMS = f"{PLC_IP}.1.1", f"{HMI_IP}.1.1"
SERVER_PORTS = (502, 102, 48898, 80)
_names = itertools.count()

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the virtual plant needs root (netns, veth, tc)")

# --- the peers (PEERS.md: versions pinned, quirks noted) -------------------------------------------
MODBUS_SERVER = """
import logging, sys
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import StartTcpServer
logging.disable(logging.CRITICAL)
block = lambda: ModbusSequentialDataBlock(1, [7] * 200)  # addresses start at 1; 5000 is an exception reply
device = ModbusDeviceContext(di=block(), co=block(), hr=block(), ir=block())
StartTcpServer(context=ModbusServerContext(devices={1: device}, single=False), address=(sys.argv[1], 502))
"""

S7_SERVER = """
import ctypes, logging, sys, time
import snap7
from snap7.type import SrvArea
logging.disable(logging.CRITICAL)
server = snap7.server.Server(log=False)
db1 = (ctypes.c_uint8 * 64)()
server.register_area(SrvArea.DB, 1, db1)
server.start(tcp_port=102)
while True:
    time.sleep(1)
"""

ADS_SERVER = """
import logging, sys, time
from pyads import constants
from pyads.testserver import AdsTestServer, AdvancedHandler, PLCVariable
logging.disable(logging.CRITICAL)
handler = AdvancedHandler()
# PEERS.md: variables must exist before a client names them (an unknown name drops the connection)
handler.add_variable(PLCVariable("GVL.counter", 42, constants.ADST_INT16, "INT"))
handler.add_variable(PLCVariable("GVL.speed", 1500, constants.ADST_INT32, "DINT", index_group=0x4020, index_offset=8))
server = AdsTestServer(handler=handler, ip_address=sys.argv[1], port=48898, logging=False)
server.start()
while True:
    time.sleep(1)
"""

# One HMI session per protocol. argv: PLC ip, PLC AMS net id, own AMS net id, which sessions ("all", ...).
HMI_CLIENTS = """
import logging, sys, urllib.request
logging.disable(logging.CRITICAL)
plc, plc_ams, own_ams, which = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")

def modbus():
    from pymodbus.client import ModbusTcpClient
    client = ModbusTcpClient(plc, port=502, timeout=3)
    assert client.connect()
    assert not client.read_holding_registers(1, count=4, device_id=1).isError()
    assert not client.read_input_registers(1, count=2, device_id=1).isError()
    assert not client.read_coils(1, count=8, device_id=1).isError()
    assert not client.read_discrete_inputs(1, count=8, device_id=1).isError()
    assert not client.write_register(2, 1234, device_id=1).isError()
    assert not client.write_coil(3, True, device_id=1).isError()
    assert not client.write_registers(4, [1, 2, 3], device_id=1).isError()
    assert client.read_holding_registers(5000, count=1, device_id=1).isError()  # an exception reply
    client.close()

def s7():
    import snap7
    client = snap7.client.Client()
    client.connect(plc, 0, 1, 102)
    client.db_read(1, 0, 8)
    client.db_write(1, 0, bytearray(b"\\x01\\x02\\x03\\x04"))
    client.read_szl(0x0011, 0)
    client.list_blocks()
    client.plc_stop()
    client.plc_hot_start()
    client.disconnect()

def ads():
    import pyads
    pyads.open_port()
    pyads.set_local_address(own_ams)
    pyads.add_route(plc_ams, plc)
    connection = pyads.Connection(plc_ams, 851, plc)
    connection.open()
    connection.read_device_info()
    connection.read_state()
    assert connection.read_by_name("GVL.counter", pyads.PLCTYPE_INT) == 42
    connection.write_by_name("GVL.counter", 43, pyads.PLCTYPE_INT)
    handles = connection.add_device_notification((0x4020, 8), pyads.NotificationAttrib(4), lambda *a: None)
    connection.del_device_notification(*handles)  # PEERS.md: delete them before closing
    connection.close()
    pyads.close_port()

def http():
    with urllib.request.urlopen(f"http://{plc}/", timeout=5) as answer:
        answer.read()
    request = urllib.request.Request(f"http://{plc}/", method="HEAD")
    with urllib.request.urlopen(request, timeout=5) as answer:
        answer.read()

def http_post():  # http.server answers 501, but the request line is on the wire
    try:
        urllib.request.urlopen(urllib.request.Request(f"http://{plc}/", data=b"x=1", method="POST"), timeout=5)
    except urllib.error.HTTPError:
        pass

def modbus_poll():  # an HMI polling until killed
    import time
    from pymodbus.client import ModbusTcpClient
    client = ModbusTcpClient(plc, port=502, timeout=3)
    assert client.connect()
    print("polling", flush=True)
    while True:
        client.read_holding_registers(1, count=4, device_id=1)
        time.sleep(0.01)

sessions = {"modbus": modbus, "s7": s7, "ads": ads, "http": http, "http_post": http_post, "modbus_poll": modbus_poll}
for name in (list(sessions)[:4] if which == ["all"] else which):
    sessions[name]()
print("ok", flush=True)
"""


def run(*argv, check=True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60, **kwargs)


class Plant:
    """PLC and HMI namespaces on a bridge (in a switch namespace), both ports mirrored to ``span``."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}{next(_names)}"
        self.plc, self.hmi, self.switch = f"otsplc{tag}", f"otshmi{tag}", f"otssw{tag}"
        self.span = f"otspan{tag}"  # root namespace: where the sensor and tcpdump listen
        self.servers: list[subprocess.Popen] = []

    def up(self) -> None:
        sw = ["ip", "-n", self.switch]
        for ns in (self.plc, self.hmi, self.switch):
            run("ip", "netns", "add", ns)
            # a quiet plant: no IPv6 (no DAD, router or MLD solicitations) anywhere
            run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1")  # fmt: skip
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run(*sw, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
        for ns, port, address in ((self.plc, "plcport", PLC_IP), (self.hmi, "hmiport", HMI_IP)):
            run(*sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            run(*sw, "link", "set", port, "master", "br0", "up")
            run("ip", "-n", ns, "address", "add", f"{address}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            # PEERS.md: veth does TSO/GSO; without this the SPAN port shows "frames" of ~53 KB
            run("ip", "netns", "exec", ns, "ethtool", "-K", "eth0", "tso", "off", "gso", "off", "gro", "off")
            run("ip", "netns", "exec", self.switch, "ethtool", "-K", port, "gro", "off")
        run("ip", "link", "add", self.span, "type", "veth", "peer", "name", "spanp", "netns", self.switch)
        Path(f"/proc/sys/net/ipv6/conf/{self.span}/disable_ipv6").write_text("1\n")
        run(*sw, "link", "set", "spanp", "up")
        run(*sw, "link", "set", "br0", "up")
        for port in ("plcport", "hmiport"):  # no matchall on this kernel: u32 matching everything
            run("tc", "-n", self.switch, "qdisc", "add", "dev", port, "handle", "ffff:", "ingress")
            run("tc", "-n", self.switch, "filter", "add", "dev", port, "parent", "ffff:", "protocol", "all",
                "prio", "1", "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", "spanp")  # fmt: skip

    def start_servers(self) -> None:
        for code in (MODBUS_SERVER, S7_SERVER, ADS_SERVER):
            self.servers.append(self.popen(self.plc, sys.executable, "-c", code, PLC_IP))
        self.servers.append(self.popen(self.plc, sys.executable, "-m", "http.server", "80", "--bind", PLC_IP))
        deadline = time.monotonic() + 20
        while not set(SERVER_PORTS) <= self.listening(self.plc):
            dead = [s for s in self.servers if s.poll() is not None]
            assert not dead, f"a PLC server died: {dead[0].args[-2:]} {dead[0].stderr.read()[-800:]}"
            assert time.monotonic() < deadline, f"PLC servers not listening: {self.listening(self.plc)}"
            time.sleep(0.1)

    def popen(self, ns: str, *argv: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            **kwargs,
        )

    def listening(self, ns: str) -> set[int]:
        """TCP ports in LISTEN in ``ns`` (read from its /proc/net/tcp: no packet on the wire)."""
        text = run("ip", "netns", "exec", ns, "cat", "/proc/net/tcp").stdout
        return {int(f[1].split(":")[1], 16) for f in (line.split() for line in text.splitlines()[1:]) if f[3] == "0A"}

    def hmi_session(self, *sessions: str) -> None:
        result = run("ip", "netns", "exec", self.hmi, sys.executable, "-c", HMI_CLIENTS, PLC_IP, PLC_AMS, HMI_AMS,
                     ",".join(sessions) or "all", check=False, cwd=ROOT)  # fmt: skip
        assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]

    def tx_packets(self) -> int:
        return int(Path(f"/sys/class/net/{self.span}/statistics/tx_packets").read_text())

    def down(self) -> None:
        for server in self.servers:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", self.span], capture_output=True)
        for ns in (self.plc, self.hmi, self.switch):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture(scope="module")
def plant():
    plant = Plant()
    try:
        plant.up()
        plant.start_servers()
        yield plant
    finally:
        plant.down()


class Daemon:
    """`otsensor run` (as ``python -m sensor run``) on the SPAN port, with a token made beforehand."""

    def __init__(self, plant: Plant, tmp_path: Path, db: Path, token: str, workers: int = 2) -> None:
        self.config = tmp_path / "otsensor.toml"
        self.config.write_text(
            f'interfaces = ["{plant.span}"]\ndb = "{db}"\nlisten = "127.0.0.1:0"\nflush_interval = 1\n'
            f"workers = {workers}\nprepare_interfaces = true\n"
        )
        self.token, self.url, self.lines = token, None, []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sensor", "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        assert self._ready.wait(60), f"the daemon did not start: {self.stderr()}"
        assert self.url, f"the daemon did not start: {self.stderr()}"

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)
            found = re.search(r"API on (http\S+);", line)
            if found:
                self.url = found.group(1)
                self._ready.set()
        self._ready.set()

    def stderr(self) -> str:
        return "".join(self.lines)[-3000:]

    def get(self, path: str):
        request = urllib.request.Request(self.url + path, headers={"Authorization": self.token})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def rows(self) -> set[tuple[str, str, str, str]]:
        """The API's connections as (client ip, server ip, protocol, command)."""
        # connections first: a flush between the two calls only adds devices, never removes one
        connections = self.get("/api/v1/devices/connections")
        ips = {device["id"]: device["ipAddresses"][0] for device in self.get("/api/v1/devices")}
        return connection_rows(ips, connections)

    def children(self) -> set[int]:
        found = set()
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            found.update(int(pid) for pid in (task / "children").read_text().split())
        return found

    def workers(self) -> list[int]:
        """The capture workers' pids (spawned interpreters; not multiprocessing's resource tracker)."""
        pids = [pid for pid in self.children() if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        return sorted(pids)

    def health(self) -> dict:
        try:
            return self.get("/healthz")
        except urllib.error.HTTPError as error:  # 503: the health is in the error's details
            return json.loads(error.read())["details"]

    def terminate(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def connection_rows(ips: dict[int, str], connections: list[dict]) -> set[tuple[str, str, str, str]]:
    return {
        (ips[c["firstDeviceId"]], ips[c["secondDeviceId"]], protocol["name"], command)
        for c in connections
        for protocol in c["protocols"]
        for command in protocol["commands"]
    }


def db_state(db: Path) -> tuple[dict[str, int], set[tuple[str, str, str, str]]]:
    """(ip -> device id, connection rows) of a DB no one holds."""
    ids, rows, _connections = db_contents(db)
    return ids, rows


def db_contents(db: Path) -> tuple[dict[str, int], set[tuple[str, str, str, str]], list[dict]]:
    store = Store(db)
    try:
        cursor = store.cursor()
        devices = serialize.devices(cursor)
        connections = json.loads(serialize.connections_json(cursor))
    finally:
        store.close()
    ids = {device["ipAddresses"][0]: device["id"] for device in devices}
    return ids, connection_rows({v: k for k, v in ids.items()}, connections), connections


def new_token(db: Path) -> str:
    from api.auth import create_token

    store = Store(db)
    try:
        return create_token(store, "plant-test")
    finally:
        store.close()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


# --- the tests --------------------------------------------------------------------------------------
def test_api_matches_tshark_and_sigterm_flushes_everything(plant, tmp_path):
    db = tmp_path / "otsensor.duckdb"
    daemon = Daemon(plant, tmp_path, db, new_token(db))
    try:
        tx_before = plant.tx_packets()
        pcap = tmp_path / "span.pcap"
        # PEERS.md: -U lost frames to the TPACKET_V3 block timeout on SIGINT; --immediate-mode keeps all
        tcpdump = subprocess.Popen(["tcpdump", "-i", plant.span, "--immediate-mode", "-n", "-w", str(pcap)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert "listening on" in tcpdump.stderr.readline()
        plant.hmi_session("modbus", "s7", "ads", "http")
        time.sleep(0.5)
        tcpdump.send_signal(signal.SIGINT)
        tcpdump.wait(10)
        expected = tshark_rows(str(pcap))
        assert {row[2] for row in expected} == {"modbus", "s7comm", "ams", "http"}
        assert all(row[:2] == (HMI_IP, PLC_IP) for row in expected)

        # the API, while the daemon runs: every row within a few flush intervals
        deadline = time.monotonic() + 10
        while (rows := daemon.rows()) != expected and time.monotonic() < deadline:
            time.sleep(0.3)
        assert rows == expected, f"extra {sorted(rows - expected)}, missed {sorted(expected - rows)}"
        # one connection, HMI -> PLC, on every server port the peers used
        ids = {device["ipAddresses"][0]: device["id"] for device in daemon.get("/api/v1/devices")}
        pairs = {
            (c["firstDeviceId"], c["secondDeviceId"]): c["ports"] for c in daemon.get("/api/v1/devices/connections")
        }
        assert pairs == {(ids[HMI_IP], ids[PLC_IP]): sorted(SERVER_PORTS)}
        health = daemon.get("/healthz")
        assert health["status"] == "ok" and health["kernelDrops"] == 0, health
        assert health["interfaces"][0]["name"] == plant.span and health["packets"] > 0

        assert daemon.terminate() == 0, daemon.stderr()
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
    assert plant.tx_packets() == tx_before, "the sensor transmitted on the capture port"
    ids, rows = db_state(db)
    assert rows == expected
    assert {PLC_IP, HMI_IP} <= set(ids)


def test_sigkill_during_traffic_keeps_the_db_and_device_ids(plant, tmp_path):
    db = tmp_path / "otsensor.duckdb"
    token = new_token(db)
    daemon = Daemon(plant, tmp_path, db, token)
    poller = plant.popen(plant.hmi, sys.executable, "-c", HMI_CLIENTS, PLC_IP, PLC_AMS, HMI_AMS, "modbus_poll")
    try:
        assert poller.stdout.readline().strip() == "polling", poller.stderr.read()[-2000:]
        polled = (HMI_IP, PLC_IP, "modbus", "Read Holding Registers")
        wait_for(lambda: polled in daemon.rows(), 10, "the first flush of the polls")
        ids_before = {d["ipAddresses"][0]: d["id"] for d in daemon.get("/api/v1/devices")}
        children = daemon.children()
        assert len(children) >= 2  # the capture workers (and multiprocessing's resource tracker)
        killed_ms = time.time_ns() // 1_000_000
        daemon.process.send_signal(signal.SIGKILL)  # mid-traffic: the poller is still polling
        daemon.process.wait(10)
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 10, "the workers to die")
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
        poller.kill()
        poller.wait()

    ids, rows, connections = db_contents(db)  # opens: neither corrupt nor locked
    assert {ip: ids[ip] for ip in ids_before} == ids_before
    assert polled in rows
    # lost: at most the last flush interval (1 s) and a worker's report interval (0.5 s), plus slack
    # for a loaded machine
    (last_seen,) = [c["lastSeen"] for c in connections if c["firstDeviceId"] == ids[HMI_IP]]
    assert killed_ms - last_seen < 3000

    daemon = Daemon(plant, tmp_path, db, token)  # a restart on the same DB
    try:
        plant.hmi_session("http_post")
        wait_for(lambda: (HMI_IP, PLC_IP, "http", "POST") in daemon.rows(), 10, "the POST after the restart")
        assert daemon.terminate() == 0, daemon.stderr()
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
    ids, rows = db_state(db)
    assert {ip: ids[ip] for ip in ids_before} == ids_before
    assert (HMI_IP, PLC_IP, "http", "POST") in rows


def test_a_killed_worker_is_started_again_and_the_stop_stays_clean(plant, tmp_path):
    db = tmp_path / "otsensor.duckdb"
    daemon = Daemon(plant, tmp_path, db, new_token(db))
    poller = plant.popen(plant.hmi, sys.executable, "-c", HMI_CLIENTS, PLC_IP, PLC_AMS, HMI_AMS, "modbus_poll")
    try:
        assert poller.stdout.readline().strip() == "polling", poller.stderr.read()[-2000:]
        wait_for(lambda: (HMI_IP, PLC_IP, "modbus", "Read Holding Registers") in daemon.rows(), 10, "a flush")
        workers = daemon.workers()
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)  # as the OOM killer would, in mid-traffic
        wait_for(lambda: len(daemon.workers()) == 2 and workers[0] not in daemon.workers(), 10, "a new worker")
        wait_for(lambda: daemon.health()["status"] == "ok", 10, "/healthz to be ok again")
        plant.hmi_session("http_post")
        wait_for(lambda: (HMI_IP, PLC_IP, "http", "POST") in daemon.rows(), 10, "the POST after the restart")
        assert daemon.terminate() == 0, daemon.stderr()
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
        poller.kill()
        poller.wait()
    assert re.search(r"capture worker \d exited with status -9; starting it again", daemon.stderr())


@pytest.mark.parametrize("workers", [1, 2])
def test_snap7_stop_and_start_raise_one_alert_each_live(plant, tmp_path, workers):
    """The HMI's snap7 client stops and hot-starts the PLC: one PLC Stop and one PLC Start alert, from
    the HMI to the PLC, however many workers capture; the HMI is an engineering station; the pcap is the Job."""
    db = tmp_path / "otsensor.duckdb"
    daemon = Daemon(plant, tmp_path, db, new_token(db), workers=workers)
    try:
        plant.hmi_session("s7")

        def operational():
            alerts = daemon.get("/api/v2/alerts")
            found = [a for a in alerts if a["engine"] == "Operational"]
            return found if {a["title"] for a in found} >= {"PLC Stop command", "PLC Start command"} else None

        alerts = wait_for(operational, 15, "the stop and start alerts")
        time.sleep(2.5)  # two more flushes: nothing else may come
        alerts = [a for a in daemon.get("/api/v2/alerts") if a["engine"] == "Operational"]
        assert sorted(
            (a["title"], a["sourceDeviceAddress"], a["destinationDeviceAddress"], a["count"]) for a in alerts
        ) == [
            ("PLC Start command", HMI_IP, PLC_IP, 1),
            ("PLC Stop command", HMI_IP, PLC_IP, 1),
        ]
        hmi = next(d for d in daemon.get("/api/v1/devices") if d["ipAddresses"] == [HMI_IP])
        assert hmi["engineeringStation"] is True
        stop = next(a for a in alerts if a["title"] == "PLC Stop command")
        request = urllib.request.Request(
            f"{daemon.url}/api/v2/alerts/pcap/{stop['id']}", headers={"Authorization": daemon.token}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            (tmp_path / "stop.pcap").write_bytes(answer.read())
        info = run("tshark", "-r", str(tmp_path / "stop.pcap"), "-T", "fields", "-e", "_ws.col.Info").stdout
        assert "Function:[PLC Stop]" in info, info
        assert daemon.terminate() == 0, daemon.stderr()
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
