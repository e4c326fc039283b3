"""Live capture benchmark: the bench mix replayed into a veth at rising rates; the highest rate with no drop.

    sudo python bench/live.py [--workers 1,2] [--rates 25000,50000,...] [--seconds 10] [--packets N]
                              [--ring-mb 64] [--json]

For each worker count, one `otsensor run` (``python -m sensor run``) captures on one end of a veth
pair; tcpreplay, in a network namespace of its own, sends the synthetic OT mix of ``bench/mix.py``
(cached in $TMPDIR/otsensor-bench/ like bench/ingest.py's) into the other end at each ``--pps`` rate
for ``--seconds``, looping over the file (with ``--timer=nano``: the default timer spins, and on a
2-core machine a spinning sender takes a core from the sensor). Between steps the kernel drops are read
from the daemon's /healthz (PACKET_STATISTICS, summed over workers), and so are the frames its engines
have decoded:
``lag`` is how long after tcpreplay finished the workers took to catch up with what was sent (the ring,
``--ring-mb`` per worker, absorbs a rate the workers do not sustain only for a while: a lag near
``--seconds`` means the run was carried by the ring). The rise stops at the first rate with drops, or
where tcpreplay itself no longer reaches 90 % of the rate asked for.

The result for a worker count is the highest rate tcpreplay *achieved* (not asked for) with zero
kernel drops. Needs root, tcpreplay and ethtool (apt). Nothing is asserted: timings on a shared 2-core
machine vary, so the machine's load average is printed with them. Exit 1 if a tool failed, 2 on a
usage error. Nothing leaves the namespace: the veth's far end is in it, and the frames' addresses are
the mix's 10.0.0.0/8 ones, which no route leads to.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import mix  # noqa: E402  (bench/mix.py)

DEFAULT_RATES = (
    20_000,
    30_000,
    40_000,
    50_000,
    60_000,
    75_000,
    100_000,
    125_000,
    150_000,
    175_000,
    200_000,
    250_000,
    300_000,
)
MTU = 1600  # the mix has 1514-byte frames with up to two VLAN tags (1522 bytes)


def log(message: str) -> None:
    print("[live] " + message, file=sys.stderr, flush=True)


def run(*argv: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def ensure_mix(packets: int, seed: int = 1, connections: int = 10_000) -> Path:
    folder = Path(tempfile.gettempdir()) / "otsensor-bench"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"mix-v{mix.MIX_VERSION}-{packets}p-{connections}c-s{seed}.pcap"
    if not (path.exists() and path.stat().st_size > 24):
        log(f"generating {path} ({packets:,} packets) ...")
        mix.make_mix(str(path), packets=packets, seed=seed, connections=connections)
    return path


class Wire:
    """A veth pair: ``sensor_end`` in the root namespace (captured), ``sender_end`` in a namespace of its own."""

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.ns, self.sensor_end, self.sender_end = f"otsbench{tag}", f"otsbA{tag}", f"otsbB{tag}"

    def up(self) -> None:
        run("ip", "netns", "add", self.ns)
        run("ip", "netns", "exec", self.ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1")  # fmt: skip
        run("ip", "link", "add", self.sensor_end, "mtu", str(MTU), "type", "veth", "peer", "name", self.sender_end,
            "mtu", str(MTU), "netns", self.ns)  # fmt: skip
        Path(f"/proc/sys/net/ipv6/conf/{self.sensor_end}/disable_ipv6").write_text("1\n")
        run("ip", "-n", self.ns, "link", "set", self.sender_end, "up")
        run("ip", "netns", "exec", self.ns, "ethtool", "-K", self.sender_end, "tso", "off", "gso", "off", "gro", "off",
            check=False)  # fmt: skip

    def down(self) -> None:
        run("ip", "link", "del", self.sensor_end, check=False)
        run("ip", "netns", "del", self.ns, check=False)

    def tx_packets(self) -> int:
        return int(Path(f"/sys/class/net/{self.sensor_end}/statistics/tx_packets").read_text())

    def replay(self, pcap: Path, pps: int, count: int) -> dict:
        """tcpreplay ``count`` frames at ``pps`` (looping over the file); its own figures."""
        timeout = 600 + 2 * count / pps  # bench/soak.py replays for hours
        result = run("ip", "netns", "exec", self.ns, "tcpreplay", "-i", self.sender_end, f"--pps={pps}",
                     f"--limit={count}", "--loop=0", "--preload-pcap", "--no-flow-stats", "--timer=nano", str(pcap), check=False, timeout=timeout)  # fmt: skip
        text = result.stdout + result.stderr
        actual = re.search(r"Actual: (\d+) packets .*? sent in ([\d.]+) seconds", text)
        rated = re.search(r"Rated: .*?, ([\d.]+) pps", text)
        failed = re.search(r"Failed packets:\s+(\d+)", text)
        if result.returncode != 0 or not actual:
            raise RuntimeError(f"tcpreplay failed: {text.strip()[-600:]}")
        return {
            "sent": int(actual.group(1)),
            "seconds": float(actual.group(2)),
            "pps": round(float(rated.group(1))) if rated else round(int(actual.group(1)) / float(actual.group(2))),
            "failed": int(failed.group(1)) if failed else 0,
        }


class Daemon:
    """`otsensor run` (``python -m sensor run``) on the wire's sensor end; /healthz read over HTTP."""

    def __init__(self, interface: str, workers: int, ring_mb: int, db: Path, *flags: str) -> None:
        argv = [sys.executable, "-m", "sensor", "run", "--interface", interface, "--workers", str(workers),
                "--db", str(db), "--listen", "127.0.0.1:0", "--flush-interval", "5", "--ring-mb", str(ring_mb),
                "--prepare-interfaces", *flags]  # fmt: skip
        self.process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.url, self.lines, ready = None, [], threading.Event()

        def read() -> None:
            for line in self.process.stderr:
                self.lines.append(line)
                found = re.search(r"API on (http\S+);", line)
                if found:
                    self.url = found.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        ready.wait(120)
        if self.url is None:
            raise RuntimeError("the daemon did not start: " + "".join(self.lines)[-800:])

    def health(self) -> dict:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=10) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as error:  # 503 still carries the figures, in details
            return json.loads(error.read())["details"]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(120)


def figures(health: dict) -> tuple[int, int]:
    """(frames decoded, kernel drops) so far."""
    return health["packets"], health["kernelDrops"]


def caught_up(daemon: Daemon, target: int, quiet_for: float = 2.5, limit: float = 120.0) -> tuple[int, int, float]:
    """Wait until the workers have decoded ``target`` frames (or their count stops moving); the figures
    then and how long it took."""
    started = time.monotonic()
    last, last_change = -1, started
    while True:
        packets, drops = figures(daemon.health())
        now = time.monotonic()
        if packets >= target:
            return packets, drops, now - started
        if packets != last:
            last, last_change = packets, now
        elif now - last_change > quiet_for or now - started > limit:  # reports come every second
            return packets, drops, last_change - started
        time.sleep(0.1)


def measure(wire: Wire, pcap: Path, workers: int, rates: list[int], seconds: float, ring_mb: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="otsensor-live-") as folder:
        daemon = Daemon(wire.sensor_end, workers, ring_mb, Path(folder) / "bench.duckdb")
        steps, best = [], None
        try:
            tx_before = wire.tx_packets()
            for rate in rates:
                packets_before, drops_before = figures(daemon.health())
                sent = wire.replay(pcap, rate, int(rate * seconds))
                packets, drops, lag = caught_up(daemon, packets_before + sent["sent"] - sent["failed"])
                step = {
                    "asked": rate,
                    "achieved": sent["pps"],
                    "sent": sent["sent"],
                    "failed": sent["failed"],
                    "decoded": packets - packets_before,
                    "drops": drops - drops_before,
                    "lag": round(lag, 2),
                }
                steps.append(step)
                log(f"workers {workers}  asked {rate:7d} pps  achieved {step['achieved']:7d} pps  sent {step['sent']:8d}"
                    f"  decoded {step['decoded']:8d}  drops {step['drops']:7d}  lag {lag:.1f} s")  # fmt: skip
                if step["drops"]:
                    break
                best = step["achieved"] if best is None else max(best, step["achieved"])
                if step["achieved"] < 0.9 * rate:
                    log(f"tcpreplay reached only {step['achieved']} of {rate} pps: the sender is the limit")
                    break
            tx_after = wire.tx_packets()
        finally:
            status = daemon.stop()
        return {
            "workers": workers,
            "bestZeroDropPps": best,
            "steps": steps,
            "senderLimited": bool(steps) and steps[-1]["achieved"] < 0.9 * steps[-1]["asked"],
            "daemonExit": status,
            "captureTxPackets": tx_after - tx_before,
        }


def cannot_run(script: str) -> str | None:
    """Why ``script`` (this bench or bench/soak.py) cannot run here — not root, a tool missing — or None."""
    if os.geteuid() != 0:
        return f"{script}: needs root (a network namespace, a veth pair, packet sockets)"
    missing = [tool for tool in ("tcpreplay", "ethtool", "ip") if shutil.which(tool) is None]
    return f"{script}: install {' '.join(missing)} (apt)" if missing else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to measure (default 1,2)")
    parser.add_argument("--rates", default=",".join(map(str, DEFAULT_RATES)), help="pps steps, rising")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each step (default 10)")
    parser.add_argument("--packets", type=int, default=1_000_000, help="mix size (default 1,000,000)")
    parser.add_argument("--ring-mb", type=int, default=64, help="ring per worker, MiB (default 64, as shipped)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)
    try:
        worker_counts = [int(n) for n in args.workers.split(",")]
        rates = sorted(int(n) for n in args.rates.split(","))
    except ValueError:
        parser.error("--workers and --rates are comma-separated integers")
    problem = cannot_run("live.py")
    if problem:
        print(problem, file=sys.stderr)
        return 2

    pcap = ensure_mix(args.packets)
    load = os.getloadavg()
    answer = run("tcpreplay", "--version", check=False)
    version = (answer.stdout + answer.stderr).strip().splitlines()[0]  # it prints on stderr
    log(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {version}")
    log(
        f"mix: {pcap} ({pcap.stat().st_size / 1e6:.0f} MB); steps of {args.seconds:g} s; ring {args.ring_mb} MiB/worker"
    )
    wire = Wire()
    results = []
    try:
        wire.up()
        for workers in worker_counts:
            results.append(measure(wire, pcap, workers, rates, args.seconds, args.ring_mb))
    except (RuntimeError, subprocess.SubprocessError) as error:
        print(f"live.py: {error}", file=sys.stderr)
        return 1
    finally:
        wire.down()

    report = {
        "machine": {"cores": os.cpu_count(), "loadAverage": [round(x, 2) for x in load], "tcpreplay": version},
        "mix": {"path": str(pcap), "packets": args.packets},
        "seconds": args.seconds,
        "ringMb": args.ring_mb,
        "results": results,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for result in results:
            best = result["bestZeroDropPps"]
            last = result["steps"][-1] if result["steps"] else {"drops": 0}
            if result["senderLimited"]:
                note = " (tcpreplay could not send faster)"
            elif not last["drops"]:
                note = " (the highest rate asked for: give higher --rates)"
            else:
                note = f"; drops from {last['achieved']:,} pps"
            print(f"{result['workers']} worker{'s' if result['workers'] > 1 else ''}: "
                  f"highest rate with zero kernel drops {best or 0:,} pps{note}; "
                  f"capture port transmitted {result['captureTxPackets']} frames; daemon exit {result['daemonExit']}")  # fmt: skip
    return 0 if all(r["daemonExit"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
