"""Fleet ingest and console query latency on a real clickhouse-server (Debian's 18.16), started here.

    python bench/fleet.py [--sensors 100] [--devices 2000] [--per-device 10] [--senders 4] [--json]

S sensors (each its own site) x D devices x C connections per device are shipped as the shipper ships
them: JSONEachRow INSERTs of SEND_ROWS rows into delta_connections / delta_devices / delta_device_classes
(the materialized views build the aggregate states and per-delta counts), from ``--senders`` threads at
once. Prints ingest rows/s, then p50/p99 of the console's fleet-wide queries through
sensor.console.ClickHouseStore (the SQL and the JSON the API serves): one device's connections across all
sites, one site's full list, connections new since T (~1 % of them), one site's devices and one device
(with their classes). Never used by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sensor import fleet, serialize  # noqa: E402
from sensor.console import ClickHouseStore  # noqa: E402
from sensor.serialize import ConnectionFilter  # noqa: E402
from sensor.store import Store  # noqa: E402
from tests.fleet_servers import ClickHouseServer  # noqa: E402

T0 = 1_700_000_000_000  # epoch ms of the simulated traffic
COMMANDS = ["modbus\x1fRead Holding Registers", "modbus\x1fWrite Single Register"]


def sensor_bodies(sensor: int, devices: int, per_device: int) -> tuple[list[bytes], int]:
    """One sensor's first delta: its devices and their connections (device k talks to k+1..k+C), in chunks."""
    site, sensor_id = f"site-{sensor:04d}", f"sensor-{sensor:04d}"
    head = f'{{"site":"{site}","sensor_id":"{sensor_id}","delta_id":1,'
    rows = []
    for k in range(devices):
        client = f"10.{sensor // 250}.{k // 250}.{k % 250 + 1}"
        for j in range(1, per_device + 1):
            peer = (k + j) % devices
            server = f"10.{sensor // 250}.{peer // 250}.{peer % 250 + 1}"
            discovered = T0 + (k * per_device + j) * 1000
            rows.append(
                f'{head}"client":"{client}","server":"{server}","ports":[502],"protocols":["modbus"],'
                f'"commands":{json.dumps(COMMANDS)},"discovered":{discovered},"last_seen":{discovered + 60_000},'
                f'"packets":10,"bytes":1000,"user_agent":""}}'
            )
    connections = [("\n".join(rows[i : i + fleet.SEND_ROWS])).encode() for i in range(0, len(rows), fleet.SEND_ROWS)]
    device_rows = []
    for k in range(devices):
        ip = f"10.{sensor // 250}.{k // 250}.{k % 250 + 1}"
        device_rows.append(
            f'{head}"ip":"{ip}","macs":["00:0e:8c:00:{k // 256:02x}:{k % 256:02x}"],"roles":["modbus:server","modbus:client"],'
            f'"vendor":"","name":"","model":"","firmware":"","serial":"","user_agent":"","server":"",'
            f'"first_seen":{T0},"last_seen":{T0 + 3_600_000}}}'
        )
    pieces = [(b"C", body) for body in connections] + [(b"D", "\n".join(device_rows).encode())]
    if fleet.SCHEMA_VERSION >= 2:  # device classes: every device learned, one in 50 an engineering station
        class_rows = [
            f'{{"site":"{site}","sensor_id":"{sensor_id}","ip":"10.{sensor // 250}.{k // 250}.{k % 250 + 1}",'
            f'"engineering_station":{int(k % 50 == 0)},"scanner":0,"authorized":1,"addresses":["modbus\\u001f{k % 247 + 1}"]}}'
            for k in range(devices)
        ]
        pieces.append((b"K", "\n".join(class_rows).encode()))
        return pieces, len(rows) + 2 * devices
    return pieces, len(rows) + devices


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat): what the server spent, whatever the load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far, bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=100)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--per-device", type=int, default=10)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="otsensor-fleet-bench-") as folder:
        server = ClickHouseServer(Path(folder))
        server.start()
        try:
            client = fleet.ClickHouse(server.url, timeout=300)
            fleet.init([client])
            made = time.perf_counter()
            work = [sensor_bodies(s, args.devices, args.per_device) for s in range(args.sensors)]
            print(f"made {args.sensors} sensors' deltas in {time.perf_counter() - made:.1f} s", file=sys.stderr)
            total_rows = sum(rows for _, rows in work)
            queue = [piece for pieces, _ in work for piece in pieces]
            lock = threading.Lock()

            def sender() -> None:
                while True:
                    with lock:
                        if not queue:
                            return
                        kind, body = queue.pop()
                    table = {b"C": "delta_connections", b"D": "delta_devices", b"K": "delta_device_classes"}[kind]
                    client.query(f"INSERT INTO {client.database}.{table} FORMAT JSONEachRow", body)

            pid = server.process.pid
            cpu_before = cpu_seconds(pid)
            started = time.perf_counter()
            threads = [threading.Thread(target=sender) for _ in range(args.senders)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            ingest_seconds = time.perf_counter() - started
            ingest_cpu = cpu_seconds(pid) - cpu_before
            ingest_rss = peak_rss(pid)
            del work
            print(f"ingest: {total_rows:,} rows in {ingest_seconds:.2f} s: {total_rows / ingest_seconds:,.0f} rows/s",
                  file=sys.stderr, flush=True)  # fmt: skip

            store = ClickHouseStore(client, Store(":memory:"))
            k = 756 % args.devices  # 10.0.3.7 at 2,000 devices a sensor: a device of site-0007 at any size
            one_device = fleet.device_id_sql("'site-0007'", f"'10.0.{k // 250}.{k % 250 + 1}'")
            device_id = client.rows(f"SELECT {one_device}")[0][0]
            total = args.sensors * args.devices * args.per_device
            cutoff = T0 + int(args.devices * args.per_device * 1000 * 0.99)  # ~1 % of every site's connections
            site = ConnectionFilter(site="site-0007")

            def one_device() -> str:
                found = store.device(device_id)
                return serialize.dumps([found] if found else [])

            queries = {  # name -> (the query: the JSON the API serves, a list; runs)
                "one device fleet-wide": (lambda: store.connections_json(ConnectionFilter(device_id=device_id)), 50),
                "one site's full list": (lambda: store.connections_json(site), 10),
                "new since T (fleet-wide)": (
                    lambda: store.connections_json(ConnectionFilter(discovered_after=cutoff)),
                    5,
                ),
                "one site's devices": (lambda: serialize.dumps(store.devices(site)), 10),
                "one device's record": (one_device, 50),
            }
            results = {}
            for name, (query, runs) in queries.items():
                samples, size = [], 0
                cpu_before = cpu_seconds(pid)
                for _ in range(runs):
                    begun = time.perf_counter()
                    body = query()
                    samples.append(time.perf_counter() - begun)
                    size = len(json.loads(body))
                p50, p99 = percentiles(samples)
                cpu_ms = (cpu_seconds(pid) - cpu_before) / runs * 1000
                results[name] = {"rows": size, "p50_ms": round(p50 * 1000, 1), "p99_ms": round(p99 * 1000, 1),
                                 "server_cpu_ms": round(cpu_ms, 1)}  # fmt: skip
            devices, connections = store.counts()
            disk = client.rows(f"SELECT sum(bytes) FROM system.parts WHERE database = '{client.database}' AND active")[
                0
            ][0]
            memory = client.rows("SELECT value FROM system.metrics WHERE metric = 'MemoryTracking'")
            report = {
                "sensors": args.sensors,
                "devices_per_sensor": args.devices,
                "connections": total,
                "rows_shipped": total_rows,
                "ingest_seconds": round(ingest_seconds, 2),
                "ingest_rows_per_s": round(total_rows / ingest_seconds),
                "ingest_server_cpu_seconds": round(ingest_cpu, 2),
                "ingest_rows_per_server_cpu_second": round(total_rows / max(ingest_cpu, 1e-9)),
                "load_average": os.getloadavg()[0],
                "console_devices": devices,
                "console_connections": connections,
                "disk_bytes": int(disk or 0),
                "server_memory_tracked_bytes": int(memory[0][0]) if memory else None,
                "server_peak_rss_after_ingest": ingest_rss,
                "server_peak_rss_after_queries": peak_rss(pid),
                "queries": results,
            }
        finally:
            server.stop()
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{args.sensors} sensors x {args.devices} devices x {args.per_device}: {total:,} connections, "
          f"{total_rows:,} rows shipped")  # fmt: skip
    print(f"ingest: {report['ingest_rows_per_s']:,} rows/s ({report['ingest_seconds']} s, {args.senders} senders)"
          f"   target >= 200,000: {'met' if report['ingest_rows_per_s'] >= 200_000 else 'NOT met'}")  # fmt: skip
    print(f"  server CPU {report['ingest_server_cpu_seconds']} s: "
          f"{report['ingest_rows_per_server_cpu_second']:,} rows per server CPU-second; "
          f"load average {report['load_average']:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    print(f"  server peak RSS: {report['server_peak_rss_after_ingest'] / 2**20:,.0f} MiB after ingest, "
          f"{report['server_peak_rss_after_queries'] / 2**20:,.0f} MiB after the queries")  # fmt: skip
    print(
        f"console sees {devices:,} devices, {connections:,} connections; {report['disk_bytes'] / 2**20:.0f} MiB on disk"
    )
    targets = {"one device fleet-wide": ("p99_ms", 50), "one site's full list": ("p99_ms", 1000)}
    for name, figures in results.items():
        target = targets.get(name)
        verdict = ""
        if target:
            verdict = f"   target p99 <= {target[1]} ms: {'met' if figures['p99_ms'] <= target[1] else 'NOT met'}"
        print(
            f"{name:<26} {figures['rows']:>7,} rows  p50 {figures['p50_ms']:>8.1f} ms  p99 {figures['p99_ms']:>8.1f} ms"
            f"  server CPU {figures['server_cpu_ms']:>7.1f} ms/query{verdict}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
