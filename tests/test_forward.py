"""Alerts forwarded to a real syslog collector: rsyslog from the distribution, started here on loopback.

rsyslog parses each message with its own RFC 5424 parser and writes, per message, the raw bytes and the
fields it parsed; the tests read the CEF event back out of the message and check every field.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from sensor import __version__, serialize
from sensor.forward import Forwarder, cef, cef_extension_value, cef_header_field
from sensor.settings import SettingsError, forwarding_settings

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
MODULES = Path("/usr/lib/x86_64-linux-gnu/rsyslog")
pytestmark = pytest.mark.skipif(not Path(RSYSLOGD).exists(), reason="rsyslog is not installed")

# One line per message: the fields rsyslog's RFC 5424 parser found, as JSON, then the raw message.
PARSED = (
    '{"pri":"%pri%","facility":"%syslogfacility%","severity":"%syslogseverity%",'
    '"timestamp":"%timereported:::date-rfc3339%","hostname":"%hostname:::json%","app":"%app-name:::json%",'
    '"procid":"%procid:::json%","msgid":"%msgid:::json%","sd":"%structured-data:::json%","msg":"%msg:::json%",'
    '"raw":"%rawmsg:::json%"}\\n'
)


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Rsyslog:
    """rsyslogd in the foreground with a config of its own: one input on 127.0.0.1, one output file."""

    def __init__(self, tmp: Path, scheme: str, auth_mode: str = "anon"):
        self.tmp, self.scheme = tmp, scheme
        self.port = free_port(socket.SOCK_DGRAM if scheme == "udp" else socket.SOCK_STREAM)
        self.ready_port = free_port() if scheme == "udp" else self.port  # a TCP port that says "started"
        self.out = tmp / "received.jsonl"
        self.proc: subprocess.Popen | None = None
        (tmp / "work").mkdir(exist_ok=True)
        lines = [f'global(workDirectory="{tmp / "work"}")']
        if scheme == "tls":
            lines.append(
                f'global(defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="{tmp / "ca.pem"}" '
                f'defaultNetstreamDriverCertFile="{tmp / "server.pem"}" '
                f'defaultNetstreamDriverKeyFile="{tmp / "server.key"}")'
            )
            # anon: any client; x509/certvalid: only a client whose certificate the CA signed
            lines.append(f'module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="{auth_mode}")')  # fmt: skip
        else:
            lines.append('module(load="imtcp")')
        if scheme == "udp":
            lines.append('module(load="imudp")')
            lines.append(f'input(type="imudp" address="127.0.0.1" port="{self.port}")')
        lines.append(f'input(type="imtcp" address="127.0.0.1" port="{self.ready_port}")')
        quoted = PARSED.replace('"', '\\"')
        lines.append(f'template(name="parsed" type="string" string="{quoted}")')
        lines.append(f'action(type="omfile" file="{self.out}" template="parsed" flushOnTXEnd="on" asyncWriting="off")')
        (tmp / "rsyslog.conf").write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(self.tmp / "rsyslog.conf"), "-i", str(self.tmp / "rsyslog.pid")],
            stdout=subprocess.DEVNULL,
            stderr=open(self.tmp / "rsyslog.err", "ab"),  # noqa: SIM115 (the child keeps it)
        )
        for _ in range(200):  # the input is listening once a connection is accepted
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited: {(self.tmp / 'rsyslog.err').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.ready_port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("rsyslogd did not start listening")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None

    def received(self, count: int, wait: float = 20.0) -> list[dict]:
        """The first ``count`` messages written (waits for them as a collector's reader would)."""
        deadline = time.monotonic() + wait
        while True:
            lines = self.out.read_text().splitlines() if self.out.exists() else []
            if len(lines) >= count or time.monotonic() > deadline:
                return [json.loads(line) for line in lines]
            time.sleep(0.05)


@pytest.fixture
def rsyslog(request, tmp_path):
    scheme, _, auth_mode = request.param.partition("+")  # "tls+x509/certvalid": clients need a certificate
    if scheme == "tls":
        if not (MODULES / "lmnsd_gtls.so").exists():
            pytest.skip("rsyslog-gnutls (rsyslog's TLS netstream driver) is not installed")
        make_certificates(tmp_path)
    server = Rsyslog(tmp_path, scheme, auth_mode or "anon")
    server.start()
    yield server
    server.stop()


def make_certificates(tmp: Path) -> None:
    """A CA and a certificate for 127.0.0.1 that it signed (openssl from the distribution)."""

    def run(*args):
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=otsensor test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=collector.test")  # fmt: skip
    (tmp / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
        "-subj", "/CN=sensor-7")  # fmt: skip
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "client.pem", "-days", "2")  # fmt: skip


def alert(n: int, **fields) -> dict:
    """An alert as sensor/detect.py raises it (Defender for IoT's v1 fields plus the device addresses)."""
    return {
        "id": n,
        "time": 1767600000123 + n * 1000,
        "title": "PLC Stop command",
        "message": f"192.168.20.30 stopped the PLC 192.168.20.42 ({n})",
        "severity": "Major",
        "engine": "Operational",
        "sourceDevice": 3,
        "destinationDevice": 7,
        "additionalInformation": {"description": "S7 PLC Stop", "information": ["function PLC Stop"]},
        "handled": False,
        "sourceDeviceAddress": "192.168.20.30",
        "destinationDeviceAddress": "192.168.20.42",
        **fields,
    }


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """A CEF event read as a SIEM's parser reads it: 7 header fields split on unescaped pipes, then
    extension keys ``key=`` with the values unescaped."""
    header, pos, field = [], 0, []
    while len(header) < 7:
        c = line[pos]
        if c == "\\":
            field.append(line[pos + 1])
            pos += 2
            continue
        if c == "|":
            header.append("".join(field))
            field = []
        else:
            field.append(c)
        pos += 1
    extension, key, value, rest = {}, None, [], line[pos:]
    i = 0
    while i < len(rest):  # a key is a word followed by an unescaped '=' after a space or the start
        if rest[i] == "\\":
            value.append({"n": "\n", "r": "\r"}.get(rest[i + 1], rest[i + 1]))
            i += 2
            continue
        j = rest.find("=", i)
        if (i == 0 or rest[i] == " ") and j > 0 and rest[i:j].strip().isalnum() and " " not in rest[i:j].strip():
            if key is not None:
                extension[key] = "".join(value)
            key, value, i = rest[i:j].strip(), [], j + 1
            continue
        value.append(rest[i])
        i += 1
    if key is not None:
        extension[key] = "".join(value)
    return header, extension


def settings(server: Rsyslog, **more) -> dict:
    config = {"target": f"{server.scheme}://127.0.0.1:{server.port}", "hostname": "sensor-7", **more}
    if server.scheme == "tls":
        config["ca_file"] = str(server.tmp / "ca.pem")
    return config


@pytest.mark.parametrize("rsyslog", ["udp", "tcp", "tls"], indirect=True)
def test_the_collector_receives_each_alert_as_cef_with_its_fields(rsyslog, tmp_path):
    forwarder = Forwarder(settings(rsyslog), tmp_path / "state")
    tricky = alert(
        2,
        title="Firmware change",
        severity="Minor",
        engine="Anomaly",
        message="model a|b = c\\d\nnext line",
        sourceDeviceAddress="2001:db8::5",
        destinationDeviceAddress="2001:db8::9",
    )
    forwarder.send(alert(1))
    forwarder.send(tricky)
    forwarder.close(timeout=10)
    got = rsyslog.received(2)
    assert len(got) == 2, (rsyslog.tmp / "rsyslog.err").read_text()
    assert forwarder.stats()["sent"] == 2 and forwarder.stats()["queued"] == 0

    first, second = got
    # RFC 5424 header as rsyslog parsed it: local4 (20) * 8 + err (3) for Major, warning (4) for Minor
    assert (first["pri"], first["facility"], first["severity"]) == ("163", "20", "3")
    assert second["pri"] == "164"
    assert first["timestamp"] == "2026-01-05T08:00:01.123Z"  # the alert's own time
    assert (first["hostname"], first["app"], first["msgid"], first["sd"]) == ("sensor-7", "otsensor", "alert", "-")
    assert first["procid"] == str(os.getpid())
    assert first["raw"].startswith("<163>1 2026-01-05T08:00:01.123Z sensor-7 otsensor ")

    header, ext = parse_cef(first["msg"])
    assert header == ["CEF:0", "otsensor", "otsensor", __version__, "plc-stop-command", "PLC Stop command", "8"]
    assert ext["rt"] == "1767600001123" and ext["externalId"] == "1"
    assert (ext["src"], ext["dst"]) == ("192.168.20.30", "192.168.20.42")
    assert (ext["cat"], ext["cs1Label"], ext["cs1"]) == ("Operational", "engine", "Operational")
    assert (ext["cn1"], ext["cn2"]) == ("3", "7")
    assert ext["msg"] == "192.168.20.30 stopped the PLC 192.168.20.42 (1)"
    assert (ext["cs2"], ext["cs3"]) == ("S7 PLC Stop", "function PLC Stop")

    header, ext = parse_cef(second["msg"])
    assert header[4:] == ["firmware-change", "Firmware change", "5"]
    assert ext["msg"] == "model a|b = c\\d\nnext line"  # escaped on the wire, the same once unescaped
    assert "\n" not in second["raw"]  # one message, one line
    assert (ext["c6a2"], ext["c6a3"]) == ("2001:db8::5", "2001:db8::9") and "src" not in ext


@pytest.mark.parametrize("rsyslog", ["tcp"], indirect=True)
def test_alerts_sent_while_the_collector_is_down_arrive_when_it_is_back(rsyslog, tmp_path):
    forwarder = Forwarder(settings(rsyslog, retry_max_seconds=0.5), tmp_path / "state")
    forwarder.send(alert(1))
    assert len(rsyslog.received(1)) == 1
    rsyslog.stop()
    started = time.monotonic()
    for n in range(2, 7):
        forwarder.send(alert(n))
    assert time.monotonic() - started < 5  # send() only queues: it returns at once, collector or not
    time.sleep(1)  # several attempts fail meanwhile
    stats = forwarder.stats()
    assert stats["retried"] >= 1 and stats["queued"] == 5 and "refused" in stats["last_error"].lower()
    assert (tmp_path / "state" / "forward-spool.jsonl").exists()  # the queue is kept on disk meanwhile
    rsyslog.start()
    got = rsyslog.received(6)
    forwarder.close()
    assert sorted(parse_cef(m["msg"])[1]["externalId"] for m in got) == ["1", "2", "3", "4", "5", "6"]
    assert forwarder.stats()["sent"] == 6
    assert not (tmp_path / "state" / "forward-spool.jsonl").exists()  # all delivered: no spool left


@pytest.mark.parametrize("rsyslog", ["tcp"], indirect=True)
def test_alerts_queued_at_close_survive_a_restart_through_the_spool(rsyslog, tmp_path):
    state = tmp_path / "state"
    rsyslog.stop()
    forwarder = Forwarder(settings(rsyslog), state)
    for n in range(1, 4):
        forwarder.send(alert(n))
    forwarder.close(timeout=0.5)
    assert forwarder.stats()["queued"] == 3 and forwarder.stats()["sent"] == 0
    rsyslog.start()
    again = Forwarder(settings(rsyslog), state)  # the next start of the daemon
    got = rsyslog.received(3)
    again.close()
    assert [parse_cef(m["msg"])[1]["externalId"] for m in got] == ["1", "2", "3"]


@pytest.mark.parametrize("rsyslog", ["tls+x509/certvalid"], indirect=True)
def test_a_collector_that_wants_a_client_certificate_gets_cert_file(rsyslog, tmp_path):
    anonymous = Forwarder(settings(rsyslog), tmp_path / "a")
    anonymous.send(alert(1))
    anonymous.close(timeout=1)
    assert anonymous.stats()["sent"] == 0, anonymous.stats()  # refused without one, and known to be
    assert "certificate" in anonymous.stats()["last_error"] or "alert" in anonymous.stats()["last_error"].lower()
    client = {"cert_file": str(rsyslog.tmp / "client.pem"), "key_file": str(rsyslog.tmp / "client.key")}
    forwarder = Forwarder(settings(rsyslog, **client), tmp_path / "b")
    forwarder.send(alert(2))
    forwarder.close(timeout=10)
    got = rsyslog.received(1)
    assert [parse_cef(m["msg"])[1]["externalId"] for m in got] == ["2"]


def test_udp_to_a_closed_port_does_not_block(tmp_path):
    port = free_port(socket.SOCK_DGRAM)  # nothing listens: each datagram draws an ICMP port unreachable
    forwarder = Forwarder({"target": f"udp://127.0.0.1:{port}", "retry_max_seconds": 0.2}, tmp_path)
    started = time.monotonic()
    for n in range(50):
        forwarder.send(alert(n))
    sent = time.monotonic() - started
    forwarder.close(timeout=1)
    closed = time.monotonic() - started
    assert sent < 5 and closed < 15, (sent, closed)  # both return (generous bounds: a loaded machine)
    assert forwarder.stats()["sent"] + forwarder.stats()["queued"] == 50


def test_a_full_queue_drops_the_oldest_and_counts_it(tmp_path):
    port = free_port()  # a TCP port nobody listens on: every attempt is refused
    forwarder = Forwarder({"target": f"tcp://127.0.0.1:{port}", "queue_limit": 3}, tmp_path)
    for n in range(1, 6):
        forwarder.send(alert(n))
    forwarder.close(timeout=0.2)
    assert forwarder.stats()["dropped_overflow"] == 2 and forwarder.stats()["queued"] == 3
    spooled = [json.loads(line)["id"] for line in (tmp_path / "forward-spool.jsonl").read_text().splitlines()]
    assert spooled == [3, 4, 5]


def test_new_alerts_do_not_hammer_a_collector_that_is_down(tmp_path):
    port = free_port()
    forwarder = Forwarder({"target": f"tcp://127.0.0.1:{port}"}, tmp_path)
    for n in range(200):
        forwarder.send(alert(n))
        time.sleep(0.001)  # alerts trickle in, as from a capture
    retried = forwarder.stats()["retried"]
    forwarder.close(timeout=0)
    assert retried < 10  # attempts follow the backoff (0.25 s, 0.5 s, ...), not the 200 sends


def test_cef_escaping():
    assert cef_header_field("a|b\\c\nd") == "a\\|b\\\\c d"
    assert cef_extension_value("a=b\\c\r\nd|e") == "a\\=b\\\\c\\nd|e"
    event = cef(alert(9, title="odd | title", message="x=1"))
    assert "|odd \\| title|" in event and event.endswith("msg=x\\=1")


def test_from_settings_is_none_without_a_target(tmp_path):
    assert Forwarder.from_settings({}, tmp_path) is None
    assert Forwarder.from_settings({"forwarding": {"target": ""}}, tmp_path) is None
    forwarder = Forwarder.from_settings({"forwarding": {"target": "udp://127.0.0.1:9"}}, tmp_path)
    assert isinstance(forwarder, Forwarder)
    forwarder.close(timeout=0)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"target": "syslog://h:514"}, "target must be"),
        ({"target": "tcp://h:70000"}, "port must be within"),
        ({"target": "tcp://h", "facility": "local9"}, "facility must be one of"),
        ({"target": "tcp://h", "facility": 24}, "within 0..23"),
        ({"target": "tcp://h", "queue_limit": 0}, "queue_limit must be at least 1"),
        ({"target": "tcp://h", "ca_file": "/x"}, "need a tls:// target"),
        ({"target": "tls://h", "cert_file": "/x"}, "go together"),
        ({"target": "tcp://h", "bogus": 1}, "unknown key 'bogus'"),
        ({"target": "tcp://h", "app_name": 5}, "app_name must be a string"),
    ],
)
def test_bad_forwarding_settings_are_one_line(section, message):
    with pytest.raises(SettingsError, match=message):
        forwarding_settings(section)


def test_the_example_config_forwards_nothing_and_a_target_turns_it_on(tmp_path):
    from sensor.settings import load

    config = tmp_path / "otsensor.toml"
    config.write_text('[forwarding]\ntarget = "tls://siem.example"\nca_file = "/etc/ssl/siem.pem"\n')
    loaded = load(str(config)).forwarding
    assert (loaded["scheme"], loaded["host"], loaded["port"], loaded["facility"]) == ("tls", "siem.example", 6514, 20)
    flagged = load(str(config), {"forwarding": {"target": "tls://other:7000"}}).forwarding
    assert (flagged["host"], flagged["port"], flagged["ca_file"]) == ("other", 7000, "/etc/ssl/siem.pem")

    config.write_text('interfaces = ["eth1"]\n[forwarding]\ntarget = "udp://127.0.0.1:9"\nfacility = 3\n')
    forwarder = Forwarder.from_settings(load(str(config)), tmp_path)  # the daemon's Settings as they are
    assert (forwarder.scheme, forwarder.port, forwarder.facility) == ("udp", 9, 3)
    forwarder.close(timeout=0)
    config.write_text('[forwarding]\ntarget = ""\n')
    assert load(str(config)).forwarding is None and Forwarder.from_settings(load(str(config)), tmp_path) is None


@pytest.mark.parametrize("rsyslog", ["tcp"], indirect=True)
def test_the_daemon_forwards_the_alerts_its_merges_raise_and_a_reload_changes_the_target(rsyslog, tmp_path):
    """The whole way: a capture with a PLC stop merged into the daemon's store -> detection -> the
    forwarder the daemon made from [forwarding] -> rsyslog; SIGHUP's reload to no target stops it."""
    from sensor.daemon import Daemon
    from sensor.detect import Detector
    from sensor.replay import replay
    from sensor.settings import Settings, forwarding_settings
    from sensor.store import Store

    from .conftest import REAL

    capture = REAL / "iti" / "s7_step7_s300_stop.pcapng"
    if not capture.exists():
        pytest.skip(f"needs {REAL} (../shared/pcaps/real beside the clone)")
    db = tmp_path / "sensor.duckdb"
    config = Settings(interfaces=("lo",), db=str(db), forwarding=forwarding_settings(settings(rsyslog)))
    store = Store(db, detector=Detector.from_settings(config))
    daemon = Daemon(config, store)
    try:
        daemon._apply_forwarding(config.forwarding)
        replay([str(capture)], store, progress=False)
        raised = serialize.alerts(store.cursor(), 1)
        daemon._apply_forwarding(None)  # a reload without [forwarding]: the forwarder closes, delivering its queue
        assert daemon.forwarder is None and not store.detector.on_alert
        got = rsyslog.received(len(raised))
        titles = sorted(parse_cef(message["msg"])[0][5] for message in got)
        assert titles == sorted(alert["title"] for alert in raised) and "PLC Stop command" in titles
        ids = sorted(int(parse_cef(message["msg"])[1]["externalId"]) for message in got)
        assert ids == sorted(alert["id"] for alert in raised)
        # merged again (a second worker, a replay of the same traffic): no alert is raised or forwarded twice
        replay([str(capture)], store, progress=False, force=True)
        assert len(serialize.alerts(store.cursor(), 1)) == len(raised)
    finally:
        daemon._apply_forwarding(None)
        store.close()
    time.sleep(0.5)
    assert len(rsyslog.received(len(raised) + 1, wait=1.0)) == len(raised)
