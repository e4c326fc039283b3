"""Soak test of the live daemon: a steady rate of the bench mix for a long time; does anything keep growing?

    sudo python bench/soak.py [--minutes 30] [--pps 40000] [--workers 2] [--sample 10] [--packets N]
                              [--ring-mb 64] [--flush-interval 5] [--json]

One `otsensor run` captures on a veth (bench/live.py's ``Wire`` and ``Daemon``: a network namespace of
its own, tcpreplay with ``--timer=nano``) while tcpreplay loops over the bench mix (``bench/mix.py``:
the same 10,000 connections all along) at ``--pps`` for ``--minutes``. Every ``--sample`` seconds it
records the resident memory of every process of the daemon (the main process, which owns DuckDB and the
API, and each capture worker), the sizes of the DB file and of its ``.wal``, and the packets decoded
and kernel drops from /healthz. At the end: the growth per hour of each figure in the first half and in
the second half of the run (least-squares slope over that half's samples), then the restart — the daemon
is stopped (SIGTERM), the DB opened alone (the WAL replay a restart pays), and the daemon started again on
the same DB: the seconds until /healthz answers, and that it holds the same devices and connections.

The target is a plateau: no growth in the second half beyond noise. Needs root, tcpreplay and ethtool
(apt). Nothing is asserted; the machine's load average is printed (other work on a 2-core machine takes
cores from the sensor). Exit 1 if a tool failed, 2 on a usage error. Nothing leaves the namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import live  # noqa: E402  (bench/live.py: the veth, tcpreplay and the daemon under test)

PAGE = os.sysconf("SC_PAGE_SIZE")


def log(message: str) -> None:
    print("[soak] " + message, file=sys.stderr, flush=True)


def processes(root: int) -> dict[str, int]:
    """The daemon's processes by role: ``main`` (``root``), ``worker N`` (capture workers, in pid order)
    and ``other N`` (multiprocessing's helpers), each with its resident memory in bytes."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    tree, queue = [], [root]
    while queue:
        pid = queue.pop()
        tree.append(pid)
        queue += children.get(pid, [])
    roles, workers, others = {}, 0, 0
    for pid in sorted(tree):
        try:
            rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if pid == root:
            roles["main"] = rss
        elif b"spawn_main" in command:
            workers += 1
            roles[f"worker {workers}"] = rss
        else:
            others += 1
            roles[f"other {others}"] = rss
    return roles


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def sample(daemon: live.Daemon, db: Path, started: float) -> dict:
    health = daemon.health()
    row = {f"rss {role}": rss for role, rss in processes(daemon.process.pid).items()}
    row.update({"t": time.monotonic() - started, "db": size(db), "wal": size(db.with_name(db.name + ".wal")),
                "packets": health["packets"], "drops": health["kernelDrops"]})  # fmt: skip
    return row


def slope_per_hour(rows: list[dict], key: str) -> float | None:
    points = [(row["t"], row[key]) for row in rows if key in row]
    if len(points) < 2:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if not spread:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread * 3600


def healthz_answers(url: str, limit: float = 300.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=5):
                return True
        except urllib.error.HTTPError:  # 503 is an answer too
            return True
        except OSError:
            time.sleep(0.05)
    return False


def storage(daemon: live.Daemon) -> tuple[int, int]:
    found = daemon.health().get("storage") or {}
    return found.get("devices", -1), found.get("connections", -1)


def open_seconds(db: Path) -> float:
    """How long opening the DB alone takes in a fresh interpreter (the WAL replay a restart pays)."""
    code = ("import sys, time; from sensor.store import Store; t = time.perf_counter(); Store(sys.argv[1]).close(); "
            "print(time.perf_counter() - t)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code, str(db)], cwd=live.REPO, capture_output=True, text=True,
                            timeout=600, check=True)  # fmt: skip
    return float(result.stdout.strip())


def soak(args, wire: live.Wire, pcap: Path, folder: Path) -> dict:
    db = folder / "soak.duckdb"
    flags = ("--flush-interval", str(args.flush_interval))
    daemon = live.Daemon(wire.sensor_end, args.workers, args.ring_mb, db, *flags)
    rows: list[dict] = []
    try:
        count = int(args.pps * args.minutes * 60)
        replayed: dict = {}
        sender = threading.Thread(target=lambda: replayed.update(wire.replay(pcap, args.pps, count)), daemon=True)
        started = time.monotonic()
        sender.start()
        while sender.is_alive():
            rows.append(sample(daemon, db, started))
            last = rows[-1]
            log(f"{last['t'] / 60:5.1f} min  packets {last['packets']:>11,}  drops {last['drops']:>7,}  "
                f"db {last['db'] / 1e6:7.1f} MB  wal {last['wal'] / 1e6:7.1f} MB  "
                + "  ".join(f"{k[4:]} {v / 1e6:.0f} MB" for k, v in last.items() if k.startswith("rss ")))  # fmt: skip
            sender.join(args.sample)
        if not replayed:
            raise RuntimeError("tcpreplay ended without its figures")
        live.caught_up(daemon, rows[0]["packets"] + replayed["sent"] - replayed["failed"])
        rows.append(sample(daemon, db, started))
        devices, connections = storage(daemon)
        stop_started = time.monotonic()
    finally:
        status = daemon.stop()
    stop_seconds = time.monotonic() - stop_started
    wal_after_stop = size(db.with_name(db.name + ".wal"))
    db_open = open_seconds(db)
    restart_started = time.monotonic()
    again = live.Daemon(wire.sensor_end, args.workers, args.ring_mb, db, *flags)
    try:
        answered = healthz_answers(again.url)
        restart_seconds = time.monotonic() - restart_started
        stored_again = storage(again)
    finally:
        status_again = again.stop()
    half = rows[-1]["t"] / 2
    first, second = [r for r in rows if r["t"] <= half], [r for r in rows if r["t"] >= half]
    keys = [k for k in rows[-1] if k.startswith("rss ")] + ["db", "wal"]
    return {
        "replayed": replayed,
        "samples": len(rows),
        "seconds": round(rows[-1]["t"], 1),
        "packets": rows[-1]["packets"] - rows[0]["packets"],
        "kernelDrops": rows[-1]["drops"] - rows[0]["drops"],
        "figures": {
            key: {
                "start": rows[0].get(key),
                "half": min(second, key=lambda r: abs(r["t"] - half)).get(key),
                "end": rows[-1].get(key),
                "firstHalfPerHour": slope_per_hour(first, key),
                "secondHalfPerHour": slope_per_hour(second, key),
                "max": max(r.get(key, 0) for r in rows),
            }
            for key in keys
        },
        "stored": {"devices": devices, "connections": connections},
        "stopSeconds": round(stop_seconds, 2),
        "walAfterStop": wal_after_stop,
        "dbOpenSeconds": round(db_open, 3),
        "restartSeconds": round(restart_seconds, 2) if answered else None,
        "storedAfterRestart": {"devices": stored_again[0], "connections": stored_again[1]},
        "daemonExit": [status, status_again],
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the steady replay (default 30)")
    parser.add_argument("--pps", type=int, default=40_000, help="packets per second (default 40,000)")
    parser.add_argument("--workers", type=int, default=2, help="capture workers (default 2)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--packets", type=int, default=1_000_000, help="mix size (default 1,000,000)")
    parser.add_argument("--ring-mb", type=int, default=64, help="ring per worker, MiB (default 64, as shipped)")
    parser.add_argument("--flush-interval", type=float, default=5.0, help="the daemon's (default 5, as shipped)")
    parser.add_argument("--json", action="store_true", help="print the report (with every sample) as JSON")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.pps <= 0 or args.workers < 1 or args.sample <= 0:
        parser.error("--minutes, --pps, --workers and --sample must be positive")
    problem = live.cannot_run("soak.py")
    if problem:
        print(problem, file=sys.stderr)
        return 2

    pcap = live.ensure_mix(args.packets)
    load = os.getloadavg()
    log(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    log(f"{args.minutes:g} min at {args.pps:,} packets/s of {pcap.name}, {args.workers} workers, "
        f"flush every {args.flush_interval:g} s, a sample every {args.sample:g} s")  # fmt: skip
    wire = live.Wire()
    try:
        wire.up()
        with tempfile.TemporaryDirectory(prefix="otsensor-soak-") as folder:
            report = soak(args, wire, pcap, Path(folder))
    except (RuntimeError, subprocess.SubprocessError) as error:
        print(f"soak.py: {error}", file=sys.stderr)
        return 1
    finally:
        wire.down()
    report["loadAverage"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report, args)
    return 0 if report["daemonExit"] == [0, 0] and report["restartSeconds"] is not None else 1


def print_report(report: dict, args) -> None:
    sent = report["replayed"]
    print(f"{report['seconds'] / 60:.1f} min, tcpreplay {sent['pps']:,} packets/s ({sent['sent']:,} sent, "
          f"{sent['failed']} failed); decoded {report['packets']:,}; kernel drops {report['kernelDrops']:,}")  # fmt: skip
    print(f"{'MB':<14}{'start':>9}{'half':>9}{'end':>9}{'max':>9}   growth per hour: first half  second half")
    for key, figure in report["figures"].items():
        rate = ["      n/a" if r is None else f"{r / 1e6:+9.1f}" for r in
                (figure["firstHalfPerHour"], figure["secondHalfPerHour"])]  # fmt: skip
        values = "".join(f"{(figure[k] or 0) / 1e6:9.1f}" for k in ("start", "half", "end", "max"))
        print(f"{key:<14}{values}   {rate[0]:>22}  {rate[1]:>11}")
    stored, again = report["stored"], report["storedAfterRestart"]
    print(f"stop {report['stopSeconds']:.1f} s; WAL after stop {report['walAfterStop'] / 1e6:.1f} MB; the DB opens in "
          f"{report['dbOpenSeconds']:.2f} s; restart until /healthz answers {report['restartSeconds']} s")  # fmt: skip
    print(f"stored: {stored['devices']:,} devices, {stored['connections']:,} connections; after the restart "
          f"{again['devices']:,} and {again['connections']:,}; daemon exits {report['daemonExit']}; "
          f"load average at the end {report['loadAverage']}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
