"""Real ClickHouse servers for the fleet tests and bench: Debian's clickhouse-server run as a plain process.

Owns a temp copy of /etc/clickhouse-server/config.xml with its paths and ports rewritten (and, for a
cluster, a remote_servers section naming every shard); never touches the system's own data or logs.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

SYSTEM_CONFIG = Path("/etc/clickhouse-server")
BINARY = shutil.which("clickhouse-server") or "/usr/sbin/clickhouse-server"


def available() -> bool:
    return Path(BINARY).exists() and (SYSTEM_CONFIG / "config.xml").is_file()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cluster_xml(name: str, shards: list[int]) -> str:
    """A remote_servers section: one shard per native (tcp) port, one replica each, on 127.0.0.1."""
    parts = "".join(f"<shard><replica><host>127.0.0.1</host><port>{port}</port></replica></shard>" for port in shards)
    return f"<remote_servers><{name}>{parts}</{name}></remote_servers>"


class ClickHouseServer:
    """One clickhouse-server process on 127.0.0.1 with its own config, data and log folders."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.http_port, self.tcp_port, self.interserver_port = free_port(), free_port(), free_port()
        self.process: subprocess.Popen | None = None
        self.remote_servers = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/"

    def write_config(self) -> Path:
        config = (SYSTEM_CONFIG / "config.xml").read_text()
        data, logs = self.root / "data", self.root / "log"
        for folder in (data, logs):
            folder.mkdir(parents=True, exist_ok=True)
        config = config.replace("/var/lib/clickhouse/", f"{data}/").replace("/var/log/clickhouse-server/", f"{logs}/")
        config = re.sub(r"<http_port>\d+</http_port>", f"<http_port>{self.http_port}</http_port>", config)
        config = re.sub(r"<tcp_port>\d+</tcp_port>", f"<tcp_port>{self.tcp_port}</tcp_port>", config)
        config = re.sub(
            r"<interserver_http_port>\d+</interserver_http_port>",
            f"<interserver_http_port>{self.interserver_port}</interserver_http_port>",
            config,
        )
        config = re.sub(r"<listen_host>::1</listen_host>", "", config)  # IPv4 loopback only
        config = re.sub(r"<remote_servers\b.*?</remote_servers>", self.remote_servers, config, flags=re.S)
        config = re.sub(
            r"<mark_cache_size>\d+</mark_cache_size>", "<mark_cache_size>268435456</mark_cache_size>", config
        )
        (self.root / "config.xml").write_text(config)
        shutil.copy(SYSTEM_CONFIG / "users.xml", self.root / "users.xml")
        return self.root / "config.xml"

    def start(self, wait: float = 60.0) -> None:
        config = self.write_config()
        self.process = subprocess.Popen(
            [BINARY, f"--config-file={config}"],
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "stderr.log", "ab"),  # noqa: SIM115 — the child keeps it
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"clickhouse-server exited ({self.process.returncode}); see {self.root}/log")
            try:
                with urllib.request.urlopen(self.url + "ping", timeout=1) as answer:
                    if answer.read().strip() == b"Ok.":
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"clickhouse-server did not answer on {self.url} within {wait:g} s")

    def kill(self) -> None:
        """SIGKILL: what a crash or a power cut does."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def query(self, sql: str) -> str:
        request = urllib.request.Request(self.url, data=sql.encode())
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.read().decode()


class Chdb:
    """Current ClickHouse in-process (chdb), with sensor.fleet.ClickHouse's interface: the same SQL runs on it."""

    def __init__(self, path: str | Path, database: str = "otsensor") -> None:
        from chdb import session

        self.session = session.Session(str(path))
        self.database = database
        self.base = f"chdb:{path}"

    def query(self, sql: str, body: bytes | None = None, **settings) -> str:
        if body is not None:
            sql = sql + "\n" + body.decode()
        result = self.session.query(sql, "TabSeparated")
        return result.bytes().decode() if hasattr(result, "bytes") else str(result)

    def rows(self, sql: str) -> list[list]:
        import json

        text = self.session.query(sql + " SETTINGS output_format_json_quote_64bit_integers = 0", "JSONCompact")
        text = text.bytes().decode() if hasattr(text, "bytes") else str(text)
        return json.loads(text)["data"] if text.strip() else []

    def close(self) -> None:
        self.session.close()
