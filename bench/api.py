"""API latency and throughput on a large DB: 100,000 connections among 10,000 devices, served on loopback.

    python bench/api.py [--connections 100000] [--devices 10000] [--pollers 32] [--seconds 10] [--json]

Builds the DB with SQL inserts into the store's own schema (deterministic), runs ``api.server.serve``
in this process exactly as ``otsensor serve`` does (api.server, 8 workers, one data generation), and
measures from a child process — so the client's Python does not share the server's GIL — with
keep-alive ``http.client`` connections:

- p50/p99 latency of the full list, a filtered list (lastActiveInMinutes=60, ~1 % of the connections),
  one device's list, and a 304 poll (one device's list with the If-None-Match of its last answer);
- requests/s that 32 concurrent pollers get polling random devices' lists: unconditional (200s) over all
  devices (measured first, so it pays for rendering every device's list in one query) and over a
  dashboard's 500 devices (answers rendered once per data generation, then served from memory), and
  conditional (304s); and how long that one rendering of every device's list took;
- p50/p99 of one device's list (a dashboard's 500 devices) with and without 500 slow connections open
  alongside, each trickling a request head a byte at a time (a slowloris), and a few idle ones.

Prints the table and whether each target is met; never used by the tests.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api import create_app  # noqa: E402
from api.auth import create_token  # noqa: E402
from api.server import ApiServer  # noqa: E402
from sensor.store import Store  # noqa: E402

TARGETS = {  # metric -> (target, "max" for latency ceilings / "min" for throughput floors)
    "full list p99 ms": (1000.0, "max"),
    "filtered list p99 ms": (50.0, "max"),
    "device list p99 ms": (50.0, "max"),
    "304 poll p99 ms": (10.0, "max"),
    "device polls/s (304)": (500.0, "min"),
    "device polls/s (200)": (500.0, "min"),
    "dashboard polls/s (200)": (500.0, "min"),
    "slowloris poll p99 ms": (50.0, "max"),
}
SLOW_CONNECTIONS = 500
PROTOCOLS = [  # (port, protocols) cycled over the connections
    (502, [{"name": "modbus", "commands": ["Read Coils", "Read Holding Registers"]}]),
    (102, [{"name": "s7comm", "commands": ["Read Var", "Setup communication", "Write Var"]}]),
    (48898, [{"name": "ams", "commands": ["AMS Read", "AMS Read Device Info"]}]),
    (80, [{"name": "http", "commands": ["GET", "POST"]}]),
    (443, []),
]


def build_db(path: Path, connections: int, devices: int) -> None:
    """Each device initiates connections/devices pairs (distinct responders), so ~20 per device overall."""
    per_device = connections // devices
    store = Store(path)
    db = store.db
    now_ms = int(time.time() * 1000)
    base = now_ms - 30 * 86_400_000
    with store.transaction():
        db.execute(
            """INSERT INTO devices (id, ip, macs, roles, vendor, mac_vendor, name, model, firmware, serial,
                                    user_agent, server, first_seen, last_seen)
            SELECT i + 1, '10.' || ((i >> 16) & 255) || '.' || ((i >> 8) & 255) || '.' || (i & 255),
                   ['00:1d:9c:' || printf('%02x:%02x:%02x', (i >> 16) & 255, (i >> 8) & 255, i & 255)],
                   CASE WHEN i % 5 = 0 THEN ['modbus:server'] ELSE ['modbus:client'] END,
                   NULL, 'Rockwell Automation', NULL, NULL, NULL, NULL, NULL, NULL, ?, ?
            FROM range(?) t(i)""",
            [base, now_ms, devices],
        )
        literal = lambda value: "'" + json.dumps(value).replace("'", "''") + "'"  # noqa: E731
        choices = (
            "["
            + ", ".join(f"struct_pack(p := {port}, v := {literal(protocols)})" for port, protocols in PROTOCOLS)
            + "]"
        )
        db.execute(
            f"""INSERT INTO connections (first_device_id, second_device_id, ports, protocols, discovered, last_seen,
                                        packets, bytes, user_agent)
            SELECT first, (first - 1 + 1 + (k * 997) % ?) % ? + 1 AS second, [c.p], from_json(c.v,
                   '[{{"name":"VARCHAR","commands":["VARCHAR"]}}]'), discovered,
                   CASE WHEN i % 100 = 0 THEN ? - (i % 50) * 60000 ELSE discovered + (i % 7919) * 1000 END,
                   10 + i % 1000, 1000 + i % 100000, NULL
            FROM (SELECT i, i // ? + 1 AS first, i % ? AS k, ? + i * 20 AS discovered,
                         ({choices})[i % {len(PROTOCOLS)} + 1] AS c FROM range(?) t(i))""",
            [devices - 1, devices, now_ms, per_device, per_device, base, connections],
        )
    store.close()


class Client:
    """One keep-alive connection; get() returns (status, etag, seconds)."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.headers = port, {"Authorization": token}
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(self, path: str, etag: str | None = None) -> tuple[int, str | None, float]:
        headers = dict(self.headers, **({"If-None-Match": etag} if etag else {}))
        for attempt in (0, 1):
            started = time.perf_counter()
            try:
                self.connection.request("GET", path, headers=headers)
                response = self.connection.getresponse()
                response.read()
                return response.status, response.getheader("ETag"), time.perf_counter() - started
            except (http.client.HTTPException, ConnectionError):
                self.connection.close()  # the server closed an idle keep-alive connection: reconnect once
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return statistics.median(ordered) * 1000, p99 * 1000


def latency(port: int, token: str, devices: int, repeat: dict) -> dict:
    client, rng = Client(port, token), random.Random(7)
    results = {}

    def run(name: str, count: int, path_of, etag_of=lambda path: None) -> None:
        times = []
        for _ in range(count):
            path = path_of()
            status, _, seconds = client.get(path, etag_of(path))
            assert status in (200, 304), (path, status)
            times.append(seconds)
        p50, p99 = percentiles(times)
        results[f"{name} p50 ms"], results[f"{name} p99 ms"] = round(p50, 2), round(p99, 2)

    # the first full list of a data generation is rendered (DuckDB builds the JSON); later ones are kept
    status, _, seconds = client.get("/api/v1/devices/connections")
    results["full list first render ms"] = round(seconds * 1000, 1)
    run("full list", repeat["full"], lambda: "/api/v1/devices/connections")
    run("filtered list", repeat["small"], lambda: "/api/v1/devices/connections?lastActiveInMinutes=60")
    run("device list", repeat["small"], lambda: f"/api/v1/devices/{rng.randrange(1, devices + 1)}/connections")
    tags = {}
    device_paths = [f"/api/v1/devices/{d}/connections" for d in rng.sample(range(1, devices + 1), 200)]
    for path in device_paths:
        tags[path] = client.get(path)[1]
    run("304 poll", repeat["small"], lambda: rng.choice(device_paths), tags.get)
    return results


def dashboard(devices: int) -> list[str]:
    """The 500 devices a dashboard polls."""
    return [f"/api/v1/devices/{device}/connections" for device in range(1, devices + 1, max(1, devices // 500))]


def throughput(port: int, token: str, paths: list[str], pollers: int, seconds: float, conditional: bool) -> float:
    """Requests/s of ``pollers`` threads, each polling random ``paths`` on its own connection."""
    tags: dict[str, str | None] = {}
    if conditional:
        warm = Client(port, token)
        for path in paths:
            tags[path] = warm.get(path)[1]
    counts = [0] * pollers
    start = threading.Barrier(pollers + 1)
    deadline = [0.0]

    def poll(index: int) -> None:
        client, rng = Client(port, token), random.Random(index)
        start.wait()
        while time.perf_counter() < deadline[0]:
            path = rng.choice(paths)
            status, _, _ = client.get(path, tags.get(path))
            assert status in (200, 304), status
            counts[index] += 1

    threads = [threading.Thread(target=poll, args=(i,)) for i in range(pollers)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - began)


class Slowloris:
    """``count`` connections sending a request head a byte a second, reopened when the server drops them,
    and a few that connect and send nothing."""

    HEAD = b"GET /api/v1/devices HTTP/1.1\r\nHost: bench\r\n" + b"X-Slow: " + b"x" * 4000

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.sockets: list[tuple[socket.socket, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.reopened = 0

    def open(self) -> tuple[socket.socket, int]:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10), 0

    def run(self) -> None:
        while not self.stop.wait(1.0):
            for index, (sock, sent) in enumerate(self.sockets):
                try:
                    sock.sendall(self.HEAD[sent % len(self.HEAD) : sent % len(self.HEAD) + 1])
                    self.sockets[index] = (sock, sent + 1)
                except OSError:  # dropped at the head deadline: come back, as an attacker would
                    sock.close()
                    self.sockets[index] = self.open()
                    self.reopened += 1

    def __enter__(self):
        self.sockets = [self.open() for _ in range(self.count)]
        self.idle = [self.open()[0] for _ in range(min(self.count, 20))]  # connected, never sending
        self.thread.start()
        time.sleep(2.0)  # every slow connection has sent its first bytes
        return self

    def __exit__(self, *_):
        self.stop.set()
        self.thread.join(10)
        for sock in [sock for sock, _ in self.sockets] + self.idle:
            sock.close()


def under_slowloris(port: int, token: str, paths: list[str], count: int) -> dict:
    """p50/p99 of dashboard polls (200s), then the same polls with ``count`` slow connections open."""
    rng, results = random.Random(11), {}
    for label, slow in (("normal poll", 0), ("slowloris poll", count)):
        client, times = Client(port, token), []
        with Slowloris(port, slow):
            for _ in range(500):
                status, _, seconds = client.get(rng.choice(paths))
                assert status == 200, status
                times.append(seconds)
        p50, p99 = percentiles(times)
        results[f"{label} p50 ms"], results[f"{label} p99 ms"] = round(p50, 2), round(p99, 2)
    return results


def measure(port: int, token: str, devices: int, pollers: int, seconds: float, repeat: dict, queue) -> None:
    # first, while nothing is rendered yet: the run pays for rendering every device's list (api.etag)
    everyone = [f"/api/v1/devices/{d}/connections" for d in range(1, devices + 1)]
    results = {"device polls/s (200)": round(throughput(port, token, everyone, pollers, seconds, False))}
    results.update(latency(port, token, devices, repeat))
    results["dashboard polls/s (200)"] = round(throughput(port, token, dashboard(devices), pollers, seconds, False))
    results["device polls/s (304)"] = round(throughput(port, token, dashboard(devices), pollers, seconds, True))
    results.update(under_slowloris(port, token, dashboard(devices), SLOW_CONNECTIONS))
    queue.put(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--pollers", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each throughput run")
    parser.add_argument("--threads", type=int, default=8, help="server threads (otsensor serve's default)")
    parser.add_argument("--full-repeats", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=500, help="requests per small-list latency row")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="otsensor-api-bench-") as folder:
        path = Path(folder) / "bench.duckdb"
        began = time.perf_counter()
        build_db(path, args.connections, args.devices)
        built = time.perf_counter() - began
        store = Store(path)
        token = create_token(store, "bench")
        # as `otsensor serve` runs it, but with the per-token rate limit off: 32 pollers share one token
        app = create_app(store, {"rate_limit": 0, "generation": lambda: 0})
        server = ApiServer(app, "127.0.0.1", 0, threads=args.threads)
        server.prepare()
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            context = multiprocessing.get_context("spawn")
            queue = context.Queue()
            repeat = {"full": args.full_repeats, "small": args.repeats}
            child = context.Process(
                target=measure, args=(server.port, token, args.devices, args.pollers, args.seconds, repeat, queue)
            )
            child.start()
            results = queue.get()
            child.join()
            costs = app.extensions["otsensor"].validators.bodies.table_costs
            results["device lists render ms"] = round(costs.get("device-connections", 0.0) * 1000, 1)
        finally:
            server.stop()
            thread.join(10)
            store.close()
    results = {
        "connections": args.connections,
        "devices": args.devices,
        "db build s": round(built, 1),
        "cpus": os.cpu_count(),
        "load average": round(os.getloadavg()[0], 2),
        **results,
    }
    if args.json:
        print(json.dumps(results))
        return 0
    print(
        f"otsensor API on loopback: {args.connections:,} connections among {args.devices:,} devices "
        f"({os.cpu_count()} CPUs, load average {results['load average']}, DB built in {built:.1f} s)"
    )
    print(f"{'metric':<24} {'p50':>10} {'p99 / value':>12} {'target':>10}  met")
    names = ["full list", "filtered list", "device list", "304 poll", "normal poll", "slowloris poll"]
    for name in names:
        target, _ = TARGETS.get(f"{name} p99 ms", (None, None))
        p50, p99 = results[f"{name} p50 ms"], results[f"{name} p99 ms"]
        verdict = "" if target is None else ("yes" if p99 <= target else "NO")
        print(
            f"{name + ' (ms)':<24} {p50:>10.1f} {p99:>12.1f} {'<= ' + str(int(target)) if target else '':>10}  {verdict}"
        )
    print(f"{'full list, first render (ms)':<35} {results['full list first render ms']:>12.1f}")
    print(f"{'every device list, one render (ms)':<35} {results['device lists render ms']:>12.1f}")
    for name in ("device polls/s (200)", "dashboard polls/s (200)", "device polls/s (304)"):
        target = TARGETS.get(name)
        verdict = "" if target is None else ("yes" if results[name] >= target[0] else "NO")
        print(
            f"{name:<24} {'':>10} {results[name]:>12,} {'>= ' + str(int(target[0])) if target else '':>10}  {verdict}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
