"""The operator's day on a running sensor: tokens, queries, status, export and reload through the admin
socket (CONTRACT.md section 7) while `otsensor run` captures on a veth — without stopping the capture.

The daemon captures on the root end of a veth pair whose other end sits in a namespace of the test's own
(tests/test_capture.py's Plant); the CLI runs as a user would run it, `python -m sensor ...`, as root, as
`nobody` (refused) and as `nobody` in the socket's group (let in).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import duckdb
import pytest

from sensor.admin import MAX_REQUEST_BYTES, AdminError, AdminServer, Holder, default_socket
from sensor.store import Store

from .conftest import NOBODY, run_as
from .test_capture import GHOST_IP, PEER_IP, SEND_UDP, Plant

ROOT = Path(__file__).resolve().parent.parent

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, veth, packet sockets, setuid)")

# Run inside the namespace: argv = destination ip, port. A datagram every 0.5 ms until stdin is closed;
# then prints how many were sent.
SEND_STREAM = """
import socket, sys, threading, time
ip, port = sys.argv[1], int(sys.argv[2])
closed = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = 0
while not closed.is_set():
    sock.sendto(b"stream-%06d" % sent, (ip, port))
    sent += 1
    time.sleep(0.0005)
print(sent)
"""


def otsensor(
    *args: str, as_user: tuple[int, int] | None = None, groups: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    """`otsensor ARGS`; ``as_user`` (uid, gid) runs it as that user, with ``groups`` as its only supplementary ones."""
    command = [sys.executable, "-m", "sensor", *args]
    if as_user is not None:
        command = [*run_as(*as_user, groups=groups), *command]  # reads the code wherever it is, writes as uid
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0] and "Traceback" not in result.stderr, result.stderr


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def workdir():
    """A folder `nobody` may enter (pytest's tmp_path is root's alone), so the socket's own mode is what refuses."""
    folder = Path(tempfile.mkdtemp(prefix="otsadmin"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def plant():
    if os.geteuid() != 0:
        pytest.skip("live capture needs root (netns, veth, packet sockets)")
    plant = Plant()
    try:
        plant.up()
        yield plant
    finally:
        plant.down()


class Daemon:
    """`otsensor run --config FILE` on the plant's capture end."""

    def __init__(self, plant: Plant, folder: Path, **settings) -> None:
        self.db = folder / "otsensor.duckdb"
        self.config = folder / "otsensor.toml"
        self.write_config(plant, **settings)
        self.lines: list[str] = []
        self.url = None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sensor", "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        assert self._ready.wait(60) and self.url, f"the daemon did not start: {self.stderr()}"

    def write_config(self, plant: Plant, **settings) -> None:
        values = {"interfaces": [plant.a], "db": str(self.db), "listen": "127.0.0.1:0", "flush_interval": 1,
                  "workers": 2, "prepare_interfaces": True, **settings}  # fmt: skip
        self.config.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))

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

    def api(self, path: str, token: str) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, headers={"Authorization": token})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def status(self) -> dict:
        return json.loads(ok(otsensor("status", "--db", str(self.db), "--json")))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


def new_token(db: Path, name: str) -> str:
    return ok(otsensor("token", "create", "--db", str(db), "--name", name)).splitlines()[-1]


# --- the operator's day, while the daemon captures ----------------------------------------------------------
@needs_root
def test_tokens_queries_status_and_export_while_capturing(plant, workdir):
    daemon = Daemon(plant, workdir)
    db = str(daemon.db)
    try:
        plant.run(SEND_UDP, GHOST_IP, 9999, 200, "ots", 0)

        # a token made through the CLI while the daemon holds the DB works on the API at once
        secret = new_token(daemon.db, "dashboard")
        assert daemon.api("/api/v1/devices", secret)[0] == 200
        [listed] = json.loads(ok(otsensor("token", "list", "--db", db, "--json")))
        assert listed["name"] == "dashboard" and listed["status"] == "active"
        assert "dashboard" in ok(otsensor("token", "list", "--db", db))  # the table, as without a daemon

        # the CLI's JSON is the API's, byte for byte, once the traffic is in the DB
        def flushed() -> bool:
            status = daemon.status()
            return status["packets"] == 200 and status["pendingConnections"] == 0 and status["flushCount"] > 0

        wait_for(flushed, 30, "the traffic to be flushed")
        devices_code, devices_body = daemon.api("/api/v1/devices", secret)
        assert devices_code == 200 and {d["ipAddresses"][0] for d in json.loads(devices_body)} == {PEER_IP, GHOST_IP}
        assert ok(otsensor("devices", "--db", db)) == devices_body + "\n"
        connections_code, connections_body = daemon.api("/api/v1/devices/connections", secret)
        [connection] = json.loads(connections_body)
        assert connection["ports"] == [9999]
        assert ok(otsensor("connections", "--db", db)) == connections_body + "\n"
        device = connection["secondDeviceId"]
        _, filtered = daemon.api(f"/api/v1/devices/connections?deviceId={device}&discoveredAfter=0", secret)
        printed = otsensor("connections", "--db", db, "--device-id", str(device), "--discovered-after", "0")
        assert ok(printed) == filtered + "\n"

        # status: interfaces, packets, drops, last flush, DB size, uptime, version
        status = daemon.status()
        assert status["role"] == "run" and status["version"] == importlib.metadata.version("otsensor")
        assert status["interfaces"] == [{"name": plant.a, "packets": 200, "drops": 0}]
        assert status["kernelDrops"] == 0 and status["lastFlushMs"] > 0 and status["uptimeSeconds"] > 0
        assert status["db"] == {"path": db, "bytes": status["db"]["bytes"]} and status["db"]["bytes"] > 0
        human = ok(otsensor("status", "--db", db))
        assert f"{plant.a}: 200 packets, 0 dropped by the kernel" in human and "last flush:" in human

        # export: DuckDB's COPY in the daemon, files another tool reads
        for kind, reader in (("parquet", "read_parquet"), ("csv", "read_csv"), ("jsonl", "read_json")):
            out = workdir / f"export-{kind}"
            printed = ok(otsensor("export", "--db", db, "--format", kind, "--out", str(out)))
            assert f"devices: 2 rows -> {out}/devices.{kind}" in printed
            exported = duckdb.sql(f"SELECT ip, id FROM {reader}('{out}/devices.{kind}') ORDER BY id").fetchall()
            assert exported == sorted(((d["ipAddresses"][0], d["id"]) for d in json.loads(devices_body)), key=lambda r: r[1])  # fmt: skip
            [row] = duckdb.sql(f"SELECT id, first_ip, second_ip FROM {reader}('{out}/connections.{kind}')").fetchall()
            assert row == (connection["id"], PEER_IP, GHOST_IP)

        # a user outside the socket's group is refused; one inside it is let in
        refused = otsensor("token", "list", "--db", db, as_user=(NOBODY, NOBODY))
        one_line_error(refused, "permission denied")
        group = os.stat(db + ".sock").st_gid
        assert "dashboard" in ok(otsensor("token", "list", "--db", db, as_user=(NOBODY, group)))
        assert "dashboard" in ok(otsensor("token", "list", "--db", db, as_user=(NOBODY, NOBODY), groups=str(group)))

        # revoked through the CLI: refused by the API at once
        assert "revoked" in ok(otsensor("token", "revoke", "--db", db, "dashboard"))
        code, body = daemon.api("/api/v1/devices", secret)
        assert code == 401 and json.loads(body)["details"] == {"reason": "revoked"}
        one_line_error(otsensor("token", "revoke", "--db", db, "dashboard"), "no token named 'dashboard'")

        assert daemon.status()["kernelDrops"] == 0
        assert daemon.stop() == 0, daemon.stderr()
        assert not os.path.exists(db + ".sock")  # a clean exit takes its socket along
    finally:
        daemon.stop()
    # with no daemon the same commands open the file and print the same
    assert ok(otsensor("devices", "--db", db)) == devices_body + "\n"
    one_line_error(otsensor("status", "--db", db), "no otsensor daemon holds")
    [written] = re.findall(r"devices: 2 rows -> (\S+)", ok(otsensor("export", "--db", db, "--format", "csv")))
    assert Path(written).parent.parent == workdir and Path(written).parent.name.startswith("otsensor-export-")
    assert duckdb.sql(f"SELECT count(*) FROM read_csv('{written}')").fetchall() == [(2,)]


@needs_root
def test_sighup_changes_flush_interval_and_filter_without_losing_a_packet(plant, workdir):
    daemon = Daemon(plant, workdir, bpf="udp port 9999", flush_interval=3600)
    db = str(daemon.db)
    try:
        plant.run(SEND_UDP, GHOST_IP, 9998, 100, "filtered", 0)  # not through the filter
        plant.run(SEND_UDP, GHOST_IP, 9999, 300, "ots", 0)
        wait_for(lambda: daemon.status()["packets"] == 300, 20, "300 packets")
        status = daemon.status()
        assert status["pendingConnections"] == 1 and status["flushCount"] == 0  # an hour until the first flush
        assert ok(otsensor("connections", "--db", db)) == "[]\n"

        # a stream flows before, during and after the change of filter and flush interval
        stream = subprocess.Popen(
            ["ip", "netns", "exec", plant.ns, sys.executable, "-c", SEND_STREAM, GHOST_IP, "9999"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: daemon.status()["packets"] > 300, 20, "the stream")
            daemon.write_config(plant, bpf="udp", flush_interval=0.5, ring_mb=32)
            daemon.process.send_signal(signal.SIGHUP)
            wait_for(
                lambda: daemon.status()["settings"]["worker_filters"] == ["udp", "udp"], 20, "the filter in each worker"
            )
            during = daemon.status()["packets"]
            wait_for(lambda: daemon.status()["packets"] > during, 20, "the stream after the reload")
        finally:
            sent, _ = stream.communicate("", timeout=60)  # stdin closed: the stream stops and says how many
        assert stream.returncode == 0
        settings = daemon.status()["settings"]
        assert settings["bpf"] == "udp" and settings["flush_interval"] == 0.5
        reload_line = next(line for line in daemon.lines if "SIGHUP: applied" in line)
        assert "bpf 'udp port 9999' -> 'udp'" in reload_line and "flush_interval 3600.0 -> 0.5" in reload_line
        assert "need a restart: ring_mb 64 -> 32" in reload_line

        plant.run(SEND_UDP, GHOST_IP, 9998, 100, "now-seen", 0)  # through the new filter
        # the new flush interval: in the DB within seconds, not an hour
        connections = wait_for(lambda: json.loads(ok(otsensor("connections", "--db", db))), 20, "a flush")
        total = 300 + int(sent) + 100
        wait_for(lambda: daemon.status()["packets"] == total, 20, f"{total} packets")
        wait_for(lambda: json.loads(ok(otsensor("connections", "--db", db)))[0]["ports"] == [9998, 9999], 20, "9998")
        status = daemon.status()
        assert status["interfaces"] == [{"name": plant.a, "packets": total, "drops": 0}]  # every one, none twice
        assert status["kernelDrops"] == 0 and len(connections) == 1

        # a filter tcpdump cannot compile changes nothing, and the log says why
        daemon.write_config(plant, bpf="udp and and", flush_interval=0.5)
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: any("SIGHUP: bpf stays 'udp'" in line for line in daemon.lines), 20, "the refusal")
        assert daemon.status()["settings"]["worker_filters"] == ["udp", "udp"]
        assert daemon.stop() == 0, daemon.stderr()
    finally:
        daemon.stop()


def test_tokens_made_and_revoked_through_the_socket_bite_at_once(tmp_path):
    """The API caches the tokens table; a change through the admin socket must not wait for the cache."""
    from sensor.admin import call
    from sensor.daemon import Daemon
    from sensor.settings import Settings

    store = Store(tmp_path / "t.duckdb")
    daemon = Daemon(Settings(interfaces=("span0",), workers=1, db=store.path, listen="127.0.0.1:0"), store)
    daemon.prepare_api()
    daemon.api_context.tokens.ttl = 3600.0  # only an invalidation can show the API a new token now
    daemon.start_admin()
    threading.Thread(target=daemon.server.serve_forever, daemon=True).start()

    def answer(token: str) -> int:
        request = urllib.request.Request(daemon.server.url + "/api/v1/devices", headers={"Authorization": token})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    try:
        assert answer("not-a-token") == 401  # the cache is filled
        secret = call(store.path, "token-create", {"name": "historian"}).splitlines()[-1]
        assert answer(secret) == 200
        call(store.path, "token-revoke", {"name": "historian"})
        assert answer(secret) == 401
    finally:
        daemon.admin.stop()
        daemon.server.stop()
        store.close()


def test_reload_applies_the_rate_limit_and_names_what_needs_a_restart(tmp_path, caplog):
    """A Daemon without workers: what SIGHUP changes in the API process."""
    from dataclasses import replace

    from sensor.daemon import Daemon
    from sensor.settings import Settings

    store = Store(tmp_path / "r.duckdb")
    settings = Settings(interfaces=("span0",), workers=1, db=store.path, listen="127.0.0.1:0")
    wanted = [replace(settings, rate_limit=5, listen="127.0.0.1:1")]
    daemon = Daemon(settings, store, lambda: wanted[0])
    daemon.prepare_api()
    try:
        with caplog.at_level("INFO", logger="otsensor"):
            daemon.reload()
        assert daemon.api_context.limiter.limit == 5 and daemon.settings.rate_limit == 5
        assert daemon.settings.listen == "127.0.0.1:0"  # a restart's business
        assert "applied rate_limit 600 -> 5; need a restart: listen '127.0.0.1:0' -> '127.0.0.1:1'" in caplog.text
        wanted[0] = replace(wanted[0], rate_limit=0)
        daemon.reload()
        assert daemon.api_context.limiter is None and daemon.settings.rate_limit == 0
    finally:
        daemon.server.stop()
        store.close()


# --- the socket itself -----------------------------------------------------------------------------------------
@pytest.fixture
def served(workdir):
    """An AdminServer over a fresh DB, as `serve` runs it."""
    store = Store(workdir / "s.duckdb")
    server = AdminServer(default_socket(store.path), Holder(store, role="serve"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
        store.close()


def ask(path: str, raw: bytes) -> tuple[dict, bytes]:
    """The reply's header line and its body."""
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(path)
        try:
            client.sendall(raw)
        except OSError:  # the server stopped reading an oversized request: its answer is still there
            pass
        stream = client.makefile("rb")
        header = json.loads(stream.readline())
        return header, stream.read(header.get("bytes", 0))


def test_the_socket_is_0660_and_answers_one_json_line(served):
    assert os.stat(served.path).st_mode & 0o777 == 0o660
    header, body = ask(served.path, b'{"command": "devices"}\n')
    assert header == {"ok": True, "bytes": 3} and body == b"[]\n"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"x" * (MAX_REQUEST_BYTES + 10), "at most"),
        (b"not json\n", "one line of JSON"),
        (b'{"command": "reboot"}\n', "unknown admin command 'reboot'"),
        (b'{"command": "token-revoke", "args": {"name": "none"}}\n', "no token named 'none'"),
    ],
)
def test_bad_requests_get_one_line_errors(served, raw, message):
    answer, _ = ask(served.path, raw)
    assert answer["ok"] is False and message in answer["error"]


def test_a_stale_socket_is_replaced_and_a_live_one_is_not(tmp_path):
    path = str(tmp_path / "s.duckdb.sock")
    killed = socket.socket(socket.AF_UNIX)
    killed.bind(path)  # a daemon killed by SIGKILL leaves its socket file behind
    killed.close()
    store = Store(tmp_path / "s.duckdb")
    first = AdminServer(path, Holder(store, role="serve"))
    first.start()
    try:
        with pytest.raises(AdminError, match="another process listens"):
            AdminServer(path, Holder(store, role="serve")).start()
    finally:
        first.stop()
        store.close()
    assert not os.path.exists(path)
    Path(path).write_text("not a socket")
    with pytest.raises(AdminError, match="not a socket"):
        AdminServer(path, Holder(None)).start()
    assert Path(path).read_text() == "not a socket"


@needs_root
def test_the_peer_check_refuses_users_outside_the_group_even_past_the_mode(served):
    """The file mode keeps `nobody` out; SO_PEERCRED would too if the mode were ever widened."""
    os.chmod(served.path, 0o666)
    code = f"""
import socket
c = socket.socket(socket.AF_UNIX); c.connect({served.path!r}); c.sendall(b'{{"command": "devices"}}\\n')
print(c.makefile().readline())
"""
    as_nobody = run_as(NOBODY, NOBODY)
    result = subprocess.run([*as_nobody, sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    answer = json.loads(result.stdout or "{}")
    assert answer.get("ok") is False and f"uid {NOBODY} may not use" in answer["error"], result.stderr


def test_serve_holds_the_db_and_the_cli_still_makes_tokens(tmp_path):
    db = tmp_path / "s.duckdb"
    Store(db).close()
    serve = subprocess.Popen(
        [sys.executable, "-m", "sensor", "serve", "--db", str(db), "--listen", "0.0.0.0:0"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        lines = [serve.stderr.readline(), serve.stderr.readline()]
        curl = lines[1]
        assert "0.0.0.0" not in curl and "$TOKEN" in curl, lines
        url = re.search(r"(http://\S+)/api/v1/devices/connections", curl).group(1)
        secret = new_token(db, "grafana")  # the DB is held: through the socket
        request = urllib.request.Request(url + "/api/v1/devices", headers={"Authorization": secret})
        with urllib.request.urlopen(request, timeout=10) as answer:  # the printed address is reachable
            assert answer.status == 200 and json.loads(answer.read()) == []
        status = json.loads(ok(otsensor("status", "--db", str(db), "--json")))
        assert status["role"] == "serve" and status["mode"] == "replay"
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0
    assert not os.path.exists(default_socket(db))


def test_version_comes_from_the_package_metadata():
    assert ok(otsensor("--version")).strip() == f"otsensor {importlib.metadata.version('otsensor')}"


def test_commands_on_a_missing_db_exit_2(tmp_path):
    for args in (("devices",), ("connections",), ("token", "list"), ("status",), ("export", "--format", "csv")):
        one_line_error(otsensor(*args, "--db", str(tmp_path / "none.duckdb")), "no such DB")
    assert not (tmp_path / "none.duckdb").exists()


def test_help_names_every_default_and_unit(capsys):
    from sensor.cli import main

    def help_of(*command: str) -> str:
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        return capsys.readouterr().out

    def db_help(*command: str) -> str:
        options = help_of(*command).split("options:", 1)[1]
        return " ".join(re.search(r"--db DB\s+(.*?)(?=\n  -)", options, re.DOTALL).group(1).split())

    for command in ("connections", "devices", "status", "export", "serve", "replay", "run"):
        assert "(default " in db_help(command), command
    for action in ("create", "list", "revoke"):
        assert "(default otsensor.duckdb" in db_help("token", action)
    connections = help_of("connections")
    assert "MINUTES" in connections and "epoch milliseconds" in connections
    serve = help_of("serve")
    assert "--api-threads" in serve and "--threads" not in serve.replace("--api-threads", "")
    assert "--api-threads" in help_of("run")
    from sensor.cli import build_parser

    assert build_parser().parse_args(["serve", "--threads", "3"]).api_threads == 3  # the old spelling still works
    assert build_parser().parse_args(["serve"]).api_threads == 8
