"""Ingest benchmark: otsensor replay against tshark, scapy (and dpkt, if installed).

    python bench/ingest.py [--mix synthetic|real] [--packets N] [--file F] [--keep] [--json]
                           [--seed S] [--connections C] [--scapy-packets N]
                           [--skip otsensor|tshark|scapy|dpkt|memory|perpacket] [--timeout S]
                           [--otsensor CMD] [--config FILE] [--repeat N]

Makes (or reuses: cached in $TMPDIR/otsensor-bench/, keyed by mix version, size,
connections and seed) the synthetic OT mix of ``bench/mix.py`` -- or, with ``--mix real``, the
real-traffic mix of ``bench/realmix.py`` (every capture of ../shared/pcaps/real, copied with new
addresses until ``--packets``; cached likewise) -- and, in one run, measures on the same file:

* otsensor  -- ``otsensor replay F --db TMP --json`` as a whole subprocess (the
  console script installed for the Python running the bench, else the one on PATH,
  else ``python -m sensor`` from the repository; a version manager's shim on PATH,
  such as pyenv's, would add its own start-up to every run):
  wall time, CPU time, packets/s (mix packets / wall), peak RSS, and the
  ``packetsPerSecond`` it reports itself;
* tshark    -- ``tshark -r F -T fields -e frame.number -e ip.src ... > /dev/null``;
  otsensor and tshark run ``--repeat`` times (3), taking turns, and the run with the median
  wall time of each is reported (with every run's wall time): a shared machine's slow spells
  then weigh on both alike;
* scapy     -- ``PcapReader`` + dissection (IP src/dst, TCP/UDP ports) over the
  first ``--scapy-packets`` (50,000) packets; the rate excludes scapy's import;
* dpkt      -- the same over the whole file, only if dpkt is importable;
* memory boundedness -- otsensor again on a mix twice as long with the *same*
  connections (every flow twice as long): both peak RSS figures are printed;
  bounded memory means they stay close (synthetic mix only);
* the per-packet path -- otsensor's engine once more, unmeasured, in a child process that counts the
  frames the fast path leaves to the per-packet path (``Engine._scalar``).

Peak RSS: ``ru_maxrss`` of the reaped child (the largest single process of its
tree, from wait4) and the sampled sum of VmRSS over the child's process tree
(every 0.1 s); the table shows the larger. Nothing is asserted about timings:
the script exits 1 only if a measured tool failed (non-zero exit, timeout, no
JSON summary), printing the tail of its stderr; 2 on a usage error.

Before every measured run the file is read once; otsensor and tshark are also started once,
unmeasured (``otsensor --help``, ``tshark -v``), so that the page cache holds both the file and the
tool's code (a kernel that reclaims idle pages would otherwise slow whichever tool ran after a pause;
the project's VM does). otsensor runs with Python's default bytecode cache
(PYTHONDONTWRITEBYTECODE is dropped from its environment), as an installed package does;
its first run writes the cache.
CPU seconds are shown next to wall seconds because shared machines are noisy;
the load average at the start is printed with the machine line.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import mix  # noqa: E402  (bench/mix.py)

TSHARK_FIELDS = (
    "frame.number",
    "ip.src",
    "ip.dst",
    "tcp.srcport",
    "tcp.dstport",
    "mbtcp.trans_id",
    "s7comm.param.func",
    "ams.cmdid",
    "http.request.method",
)

SCAPY_SNIPPET = r"""
import json, sys, time
t0 = time.perf_counter()
from scapy.all import PcapReader, IP, TCP, UDP
t1 = time.perf_counter()
c1 = time.process_time()
limit = int(sys.argv[2])
n = acc = 0
with PcapReader(sys.argv[1]) as reader:
    for pkt in reader:
        if IP in pkt:
            ip = pkt[IP]
            acc += len(ip.src) + len(ip.dst)
            if TCP in pkt:
                l4 = pkt[TCP]
                acc += l4.sport + l4.dport + len(l4.payload)
            elif UDP in pkt:
                l4 = pkt[UDP]
                acc += l4.sport + l4.dport
        n += 1
        if n >= limit:
            break
t2 = time.perf_counter()
print(json.dumps({"packets": n, "seconds": t2 - t1, "cpuSeconds": time.process_time() - c1,
                  "importSeconds": t1 - t0, "check": acc}))
"""

DPKT_SNIPPET = r"""
import json, socket, sys, time
t0 = time.perf_counter()
import dpkt
t1 = time.perf_counter()
c1 = time.process_time()
n = acc = 0
with open(sys.argv[1], "rb") as fh:
    for ts, buf in dpkt.pcap.UniversalReader(fh) if hasattr(dpkt.pcap, "UniversalReader") else dpkt.pcap.Reader(fh):
        n += 1
        eth = dpkt.ethernet.Ethernet(buf)
        ip = eth.data
        if isinstance(ip, dpkt.ip.IP):
            acc += len(socket.inet_ntoa(ip.src)) + len(socket.inet_ntoa(ip.dst))
            l4 = ip.data
            if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)):
                acc += l4.sport + l4.dport
t2 = time.perf_counter()
print(json.dumps({"packets": n, "seconds": t2 - t1, "cpuSeconds": time.process_time() - c1,
                  "importSeconds": t1 - t0, "check": acc}))
"""


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def log(msg: str) -> None:
    print("[ingest] " + msg, file=sys.stderr, flush=True)


def cache_dir() -> Path:
    d = Path(tempfile.gettempdir()) / "otsensor-bench"
    d.mkdir(parents=True, exist_ok=True)
    return d


def ensure_mix(packets: int, seed: int, connections: int) -> dict:
    """Return {"path", "packets", "bytes", "generatedSeconds", "reused"} for a cached mix."""
    path = cache_dir() / ("mix-v%d-%dp-%dc-s%d.pcap" % (mix.MIX_VERSION, packets, connections, seed))
    if path.exists() and path.stat().st_size > 24:
        log("reusing %s" % path)
        return {
            "path": str(path),
            "packets": packets,
            "bytes": path.stat().st_size,
            "generatedSeconds": None,
            "reused": True,
        }
    log("generating %s (%d packets, %d connections, seed %d) ..." % (path, packets, connections, seed))
    # in a child process, so that this process stays small (see run_measured on ru_maxrss)
    p = subprocess.run(
        [
            sys.executable,
            str(HERE / "mix.py"),
            str(path),
            "--packets",
            str(packets),
            "--seed",
            str(seed),
            "--connections",
            str(connections),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if p.returncode != 0:
        raise SystemExit("ingest: generating the mix failed:\n%s" % p.stderr[-3000:])
    s = json.loads(p.stdout)
    log("generated in %.1f s" % s["seconds"])
    return {
        "path": str(path),
        "packets": s["packets"],
        "bytes": s["fileBytes"],
        "generatedSeconds": s["seconds"],
        "reused": False,
        "summary": s,
    }


def ensure_realmix(packets: int) -> dict | None:
    """The real-traffic mix of bench/realmix.py (built in a child process unless cached): its summary;
    None, with realmix's one line on stderr, when there is nothing to build it from."""
    log("real mix of at least %d packets ..." % packets)
    p = subprocess.run(
        [sys.executable, str(HERE / "realmix.py"), "--packets", str(packets)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if p.returncode == 2:
        print(p.stderr.strip().splitlines()[-1], file=sys.stderr)
        return None
    if p.returncode != 0:
        raise SystemExit("ingest: building the real mix failed:\n%s" % p.stderr[-3000:])
    s = json.loads(p.stdout)
    log("%s %s" % ("reusing" if s["reused"] else "built in %.1f s:" % s["seconds"], s["path"]))
    return s


PER_PACKET_SNIPPET = r"""
import json, sys
from sensor.engine import CHUNK, Engine
from sensor.readers import CaptureReader
engine = Engine()
scalar = engine._scalar
left = [0]
def counting(batch, indices, headers=None):
    left[0] += len(indices)
    return scalar(batch, indices, headers)
engine._scalar = counting
for batch in CaptureReader(sys.argv[1], batch_size=CHUNK).batches():
    engine.process_batch(batch)
engine.take_delta()
print(json.dumps({"packets": engine.packets, "perPacket": left[0]}))
"""


def per_packet_path(path: str, timeout) -> dict:
    """How many frames otsensor's engine leaves to the per-packet path (a child process, unmeasured)."""
    log("per-packet path: counting what the fast path leaves")
    try:
        p = subprocess.run(
            [sys.executable, "-c", PER_PACKET_SNIPPET, path],
            cwd=str(REPO),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        r = json.loads(p.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "timed out after %.0f s" % timeout}
    except (ValueError, IndexError):
        return {"ok": False, "error": "exit status %s: %s" % (p.returncode, p.stderr[-300:])}
    r["ok"] = True
    r["share"] = round(r["perPacket"] / r["packets"], 4) if r["packets"] else None
    return r


def count_packets(path: str) -> int | None:
    """Packets in a classic pcap (either byte order); capinfos for anything else."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
            if len(head) == 24 and head[:4] in (
                b"\xd4\xc3\xb2\xa1",
                b"\x4d\x3c\xb2\xa1",
                b"\xa1\xb2\xc3\xd4",
                b"\xa1\xb2\x3c\x4d",
            ):
                le = head[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
                fmt = struct.Struct("<I" if le else ">I")
                n = 0
                buf = b""
                off = 0
                while True:
                    chunk = fh.read(1 << 24)
                    if not chunk:
                        break
                    buf = buf[off:] + chunk
                    off = 0
                    ln = len(buf)
                    while off + 16 <= ln:
                        incl = fmt.unpack_from(buf, off + 8)[0]
                        if off + 16 + incl > ln:
                            break
                        off += 16 + incl
                        n += 1
                return n
    except OSError:
        return None
    if shutil.which("capinfos"):
        p = subprocess.run(["capinfos", "-M", "-c", "-T", "-r", path], capture_output=True, text=True)
        try:
            return int(p.stdout.strip().split("\t")[-1])
        except (ValueError, IndexError):
            return None
    return None


def frame_bytes(path: str, packets: int) -> int:
    """Captured bytes of all frames of a generated (classic pcap, untruncated) mix."""
    return os.path.getsize(path) - 24 - 16 * packets


def warm(path: str) -> None:
    with open(path, "rb") as fh:
        while fh.read(1 << 23):
            pass


def warm_before(path: str, start_cmd: list[str], env: dict | None = None) -> None:
    """Before a measured run: read the capture once and start the tool once, unmeasured, so that the
    page cache holds the file and the tool's own code. Some kernels reclaim pages idle for a minute
    (seen on the project's VM: ~24 MB of otsensor's libraries read from disk again after 30 s idle,
    and a third of the capture), which would otherwise slow whichever tool ran after a long pause."""
    warm(path)
    try:
        subprocess.run(start_cmd, env=env, capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        pass


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d, "rb") as fh:
                data = fh.read()
            ppid = int(data[data.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _tree(pid: int) -> list[int]:
    kids = _children()
    out, stack = [pid], [pid]
    while stack:
        for c in kids.get(stack.pop(), ()):
            out.append(c)
            stack.append(c)
    return out


def _rss_kb(pid: int) -> int:
    try:
        with open("/proc/%d/status" % pid, "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


GNU_TIME = "/usr/bin/time"


def _gnu_time_ok() -> bool:
    if not os.access(GNU_TIME, os.X_OK):
        return False
    try:
        p = subprocess.run([GNU_TIME, "-f", "%M", "true"], capture_output=True, text=True, timeout=10)
        return p.returncode == 0 and p.stderr.strip().splitlines()[-1].isdigit()
    except (OSError, subprocess.SubprocessError, IndexError):
        return False


USE_GNU_TIME = _gnu_time_ok()


def run_measured(
    cmd: list[str],
    *,
    cwd: str | None = None,
    stdout_path: str | None = None,
    timeout: float | None = None,
    env: dict | None = None,
) -> dict:
    """Run cmd, measuring wall time, CPU time and peak RSS of its whole process tree.

    Peak RSS of the largest process comes from GNU time's %M when /usr/bin/time
    exists (it forks the tool from a ~2 MB process), else from wait4's ru_maxrss,
    which on Linux also counts the RSS of this (small) process at vfork/exec time.
    """
    err = tempfile.TemporaryFile()
    out = open(stdout_path, "wb") if stdout_path else tempfile.TemporaryFile()
    time_file = None
    wrapped = list(cmd)
    if USE_GNU_TIME:
        fd, time_file = tempfile.mkstemp(prefix="otsensor-bench-time-")
        os.close(fd)
        wrapped = [GNU_TIME, "-f", "%M", "-o", time_file] + wrapped
    try:
        try:
            proc = subprocess.Popen(
                wrapped, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            )
        except OSError as e:
            return {
                "ok": False,
                "rc": None,
                "error": "cannot start: %s" % e,
                "stderrTail": "",
                "stdout": "",
                "command": cmd,
            }
        t0 = time.perf_counter()
        done: dict = {}

        def waiter():
            _pid, status, ru = os.wait4(proc.pid, 0)
            done["t"] = time.perf_counter()
            done["status"], done["ru"] = status, ru

        th = threading.Thread(target=waiter, daemon=True)
        th.start()
        tree_peak = 0
        pids = [proc.pid]
        k = 0
        timed_out = False
        while th.is_alive():
            if k % 5 == 0:
                pids = _tree(proc.pid)
            k += 1
            tree_peak = max(tree_peak, sum(_rss_kb(p) for p in pids if not (time_file and p == proc.pid)))
            th.join(0.1)
            if timeout and th.is_alive() and time.perf_counter() - t0 > timeout:
                timed_out = True
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.killpg(proc.pid, sig)  # the session we started for this child
                    except ProcessLookupError:
                        break
                    th.join(5)
                    if not th.is_alive():
                        break
                th.join()
        proc.returncode = os.waitstatus_to_exitcode(done["status"])
        ru = done["ru"]
        wall = done["t"] - t0
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
        stdout = ""
        if not stdout_path:
            out.seek(0)
            stdout = out.read().decode("utf-8", "replace")
        tail = "\n".join(ln for ln in stderr.splitlines() if 'Running as user "root"' not in ln)[-3000:]
        maxrss_kb = ru.ru_maxrss
        rss_source = "wait4"
        if time_file:
            try:
                with open(time_file) as fh:
                    last = fh.read().strip().splitlines()[-1]
                maxrss_kb = int(last)
                rss_source = "gnu-time"
            except (OSError, ValueError, IndexError):
                pass
        res = {
            "ok": proc.returncode == 0 and not timed_out,
            "rc": proc.returncode,
            "timedOut": timed_out,
            "wallSeconds": round(wall, 3),
            "cpuSeconds": round(ru.ru_utime + ru.ru_stime, 3),
            "maxRssMB": round(maxrss_kb / 1024, 1),  # largest single process
            "maxRssSource": rss_source,
            "treePeakRssMB": round(tree_peak / 1024, 1),  # sampled sum over the tree
            "stdout": stdout,
            "stderrTail": tail,
            "command": cmd,
        }
        res["peakRssMB"] = max(res["maxRssMB"], res["treePeakRssMB"])
        if timed_out:
            res["error"] = "timed out after %.0f s" % timeout
        elif proc.returncode != 0:
            res["error"] = "exit status %s" % proc.returncode
        return res
    finally:
        err.close()
        out.close()
        if time_file:
            try:
                os.unlink(time_file)
            except OSError:
                pass


def _rate(n, s):
    return round(n / s, 1) if n and s else None


# --------------------------------------------------------------------------
# the tools
# --------------------------------------------------------------------------

OTSENSOR_OVERRIDE: list[str] | None = None
OTSENSOR_CONFIG: str | None = None  # --config FILE for otsensor replay


def otsensor_cmd() -> tuple[list[str], str | None]:
    """The console script pip installed for the interpreter running the bench, else the one on PATH,
    else ``python -m sensor``.  (On PATH there may be a version manager's shim: pyenv's is a bash script
    that starts pyenv to find the script, ~40 ms per start on the project's VM, none of it otsensor's.)"""
    if OTSENSOR_OVERRIDE:
        return list(OTSENSOR_OVERRIDE), None
    installed = Path(sysconfig.get_path("scripts")) / "otsensor"
    if installed.is_file() and os.access(installed, os.X_OK):
        return [str(installed)], None
    exe = shutil.which("otsensor")
    if exe:
        return [exe], None
    return [sys.executable, "-m", "sensor"], str(REPO)


def bench_otsensor(
    path: str, packets: int | None, workdir: str, tag: str, timeout, frame_bytes: int | None = None
) -> dict:
    base, cwd = otsensor_cmd()
    db = os.path.join(workdir, "otsensor-%s.duckdb" % tag)
    cmd = base + ["replay", path, "--db", db, "--json"] + (["--config", OTSENSOR_CONFIG] if OTSENSOR_CONFIG else [])
    log("otsensor: %s" % " ".join(shlex.quote(c) for c in cmd))
    # Python's default: compiled modules cached in __pycache__ (some sandboxes switch that off).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    warm_before(path, base + ["--help"], env)
    r = run_measured(cmd, cwd=cwd, timeout=timeout, env=env)
    summary = None
    text = r.get("stdout", "").strip()
    if text:
        try:
            summary = json.loads(text)
        except ValueError:
            for line in reversed(text.splitlines()):
                if line.lstrip().startswith("{"):
                    try:
                        summary = json.loads(line)
                        break
                    except ValueError:
                        pass
    r.pop("stdout", None)
    r["db"] = db
    r["summary"] = summary
    if r["ok"] and not isinstance(summary, dict):
        r["ok"] = False
        r["error"] = "no JSON object on stdout"
        r["stdoutHead"] = text[:500]
    r["warnings"] = []
    if isinstance(summary, dict):
        r["reportedPacketsPerSecond"] = summary.get("packetsPerSecond")
        rp = summary.get("packets")
        if packets is not None and rp is not None and rp != packets:
            r["warnings"].append("otsensor (%s) reported %s packets, the file has %d" % (tag, rp, packets))
        rb = summary.get("bytes")
        if frame_bytes is not None and rb is not None and rb != frame_bytes:
            r["warnings"].append("otsensor (%s) reported %s bytes, the frames total %d" % (tag, rb, frame_bytes))
        if packets is None:
            packets = rp
        if summary.get("problems"):
            r["warnings"].append("otsensor (%s) problems: %s" % (tag, json.dumps(summary["problems"])[:300]))
    r["packets"] = packets
    r["packetsPerSecond"] = _rate(packets, r.get("wallSeconds")) if r["ok"] else None
    r["packetsPerCpuSecond"] = _rate(packets, r.get("cpuSeconds")) if r["ok"] else None
    return r


def bench_tshark(path: str, packets: int | None, timeout) -> dict:
    exe = shutil.which("tshark")
    if not exe:
        return {"ok": False, "error": "tshark not installed", "stderrTail": "", "packets": packets}
    cmd = [exe, "-r", path, "-T", "fields"]
    for f in TSHARK_FIELDS:
        cmd += ["-e", f]
    log("tshark: %s > /dev/null" % " ".join(shlex.quote(c) for c in cmd))
    warm_before(path, [exe, "-v"])
    r = run_measured(cmd, stdout_path=os.devnull, timeout=timeout)
    r.pop("stdout", None)
    r["packets"] = packets
    r["packetsPerSecond"] = _rate(packets, r.get("wallSeconds")) if r["ok"] else None
    r["packetsPerCpuSecond"] = _rate(packets, r.get("cpuSeconds")) if r["ok"] else None
    try:
        v = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
        first = v.splitlines()[0] if v else ""
        r["version"] = first.split(" (Git")[0].replace(" (Wireshark)", "") or None
    except (OSError, subprocess.SubprocessError):
        r["version"] = None
    return r


def bench_snippet(name: str, snippet: str, path: str, limit: int, timeout) -> dict:
    cmd = [sys.executable, "-c", snippet, path, str(limit)]
    log("%s: PcapReader + dissect, first %d packets" % (name, limit) if name == "scapy" else "%s: whole file" % name)
    warm(path)
    r = run_measured(cmd, timeout=timeout)
    out = r.pop("stdout", "")
    res = None
    if r["ok"]:
        try:
            res = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            r["ok"] = False
            r["error"] = "no result line"
    if res:
        r["packets"] = res["packets"]
        r["loopSeconds"] = round(res["seconds"], 3)
        r["importSeconds"] = round(res["importSeconds"], 3)
        r["loopCpuSeconds"] = round(res["cpuSeconds"], 3)
        r["packetsPerSecond"] = _rate(res["packets"], res["seconds"])
        r["packetsPerCpuSecond"] = _rate(res["packets"], res["cpuSeconds"])
    else:
        r["packets"] = None
        r["packetsPerSecond"] = None
    return r


# --------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------


def machine() -> dict:
    model = None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "nproc": nproc,
        "cpuCount": os.cpu_count(),
        "cpuModel": model or platform.processor() or None,
        "memGiB": mem,
        "loadAverage": load,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def fmt_int(v) -> str:
    return "{:,}".format(int(v)) if isinstance(v, (int, float)) else "-"


def fmt_f(v, nd=2) -> str:
    return ("{:,.%df}" % nd).format(v) if isinstance(v, (int, float)) else "-"


def _median(results: list) -> dict:
    """The run with the median wall time (a failed run wins: it is reported), with every run's wall."""
    failed = [r for r in results if not r.get("ok")]
    if failed:
        return failed[0]
    ordered = sorted(results, key=lambda r: r["wallSeconds"])
    median = dict(ordered[(len(ordered) - 1) // 2])
    median["runWallSeconds"] = [r["wallSeconds"] for r in results]
    return median


def table(report: dict) -> str:
    m, mx = report["machine"], report["mix"]
    lines = [
        "otsensor ingest benchmark  %s" % report["date"],
        "machine: nproc %s (cpu_count %s), %s, %s GiB RAM, load avg %s; Python %s"
        % (
            m["nproc"],
            m["cpuCount"],
            m["cpuModel"],
            m["memGiB"],
            " ".join(str(x) for x in (m["loadAverage"] or [])),
            m["python"],
        ),
        "file:    %s  (%s packets, %.1f MB%s)"
        % (
            mx["path"],
            fmt_int(mx["packets"]),
            (mx["bytes"] or 0) / 1e6,
            ""
            if mx.get("connections") is None
            else ", %s TCP connections, seed %s" % (fmt_int(mx["connections"]), mx["seed"]),
        ),
    ]
    if mx.get("copies"):
        lines.append(
            "         real mix: %d copies of %s packets (%d files of %s), each with its own addresses;"
            % (mx["copies"], fmt_int(mx["packetsPerCopy"]), mx["files"], mx["source"])
        )
        lines.append(
            "         %.1f h of packet time (the copies after otsensor's learning_hours raise new-device alerts)"
            % (mx["spanHours"])
        )
    if report.get("otsensorConfig"):
        lines.append("otsensor replay --config %s" % report["otsensorConfig"])
    if mx.get("generatedSeconds") is not None:
        lines.append("         generated in %.1f s" % mx["generatedSeconds"])
    lines.append("")
    hdr = ("tool", "packets", "wall s", "cpu s", "packets/s", "packets/cpu-s", "peak RSS MB", "note")
    rows = []
    for key, label in (
        ("otsensor", "otsensor replay"),
        ("tshark", "tshark -T fields"),
        ("scapy", "scapy PcapReader"),
        ("dpkt", "dpkt"),
        ("otsensor2x", "otsensor replay 2x"),
    ):
        r = report["results"].get(key)
        if r is None:
            continue
        if r.get("skipped"):
            rows.append((label, "-", "-", "-", "-", "-", "-", "skipped: %s" % r["skipped"]))
            continue
        if not r.get("ok"):
            note = "FAILED: %s" % r.get("error")
        elif key.startswith("otsensor"):
            note = "reports %s packets/s" % fmt_int(r.get("reportedPacketsPerSecond"))
        elif key == "scapy":
            note = "first %s packets; rate over the loop (import %.1f s)" % (
                fmt_int(r.get("packets")),
                r.get("importSeconds") or 0,
            )
        elif key == "dpkt":
            note = "rate over the loop"
        else:
            note = r.get("version") or ""
        if r.get("ok") and len(r.get("runWallSeconds") or ()) > 1:
            note = "median of walls %s s; %s" % (" ".join("%.2f" % w for w in r["runWallSeconds"]), note)
        rows.append(
            (
                label,
                fmt_int(r.get("packets")),
                fmt_f(r.get("wallSeconds")),
                fmt_f(r.get("cpuSeconds")),
                fmt_int(r.get("packetsPerSecond")),
                fmt_int(r.get("packetsPerCpuSecond")),
                fmt_f(r.get("peakRssMB"), 1),
                note,
            )
        )
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]
    align = ("<", ">", ">", ">", ">", ">", ">", "<")
    for row in [hdr] + rows:
        lines.append(
            "  ".join(
                ("{:%s%d}" % (a, w)).format(c) if i < 7 else c for i, (c, w, a) in enumerate(zip(row, widths, align))
            ).rstrip()
        )
    lines.append("")
    ra, rc = report["ratios"], report.get("ratiosCpu") or {}

    def x(v):
        return ("%.2fx" % v) if v else "-"

    lines.append(
        "otsensor / tshark: %s (per cpu-s %s)     otsensor / scapy: %s (per cpu-s %s)"
        % (
            x(ra.get("otsensorVsTshark")),
            x(rc.get("otsensorVsTshark")),
            x(ra.get("otsensorVsScapy")),
            x(rc.get("otsensorVsScapy")),
        )
    )
    mem = report.get("memory")
    if mem:
        if mem.get("skipped"):
            lines.append("memory boundedness: skipped (%s)" % mem["skipped"])
        else:
            lines.append(
                "memory boundedness (same %s connections): %s packets -> %s MB peak RSS; "
                "%s packets -> %s MB (x%s)"
                % (
                    fmt_int(mem["connections"]),
                    fmt_int(mem["packets"]),
                    fmt_f(mem["peakRssMB"], 1),
                    fmt_int(mem["packets2x"]),
                    fmt_f(mem["peakRssMB2x"], 1),
                    fmt_f(mem.get("ratio"), 2),
                )
            )
    pp = report.get("perPacketPath")
    if pp and pp.get("ok"):
        lines.append(
            "per-packet path: %s of %s packets (%.1f %%) left to it by the fast path"
            % (fmt_int(pp["perPacket"]), fmt_int(pp["packets"]), 100 * (pp["share"] or 0))
        )
    elif pp:
        lines.append("per-packet path: %s" % (pp.get("skipped") or "FAILED: %s" % pp.get("error")))
    for w in report["warnings"]:
        lines.append("WARNING: " + w)
    for f in report["failures"]:
        lines.append("FAILED: %s" % f)
    return "\n".join(lines)


# --------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--mix",
        choices=("synthetic", "real"),
        default="synthetic",
        help="synthetic: bench/mix.py (default); real: bench/realmix.py, copies of ../shared/pcaps/real",
    )
    ap.add_argument("--packets", type=int, default=1_000_000, help="mix size (default 1,000,000)")
    ap.add_argument("--file", help="benchmark this capture instead of the generated mix (no memory-boundedness check)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (otsensor DBs)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of the table")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--connections", type=int, default=10_000, help="TCP connections in the mix (default 10,000)")
    ap.add_argument("--scapy-packets", type=int, default=50_000)
    ap.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=("otsensor", "tshark", "scapy", "dpkt", "memory", "perpacket"),
        help="leave a measurement out (repeatable)",
    )
    ap.add_argument("--timeout", type=float, default=3600, help="per tool, seconds (default 3600)")
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of otsensor and tshark, interleaved; the median run of each is reported (default 3)",
    )
    ap.add_argument(
        "--config",
        metavar="FILE",
        help="passed to otsensor replay as --config (e.g. a learning_hours that covers the whole mix)",
    )
    ap.add_argument(
        "--otsensor", metavar="CMD", help="command to run instead of otsensor (shell-split), e.g. 'python -m sensor'"
    )
    a = ap.parse_args(argv)
    global OTSENSOR_OVERRIDE
    OTSENSOR_OVERRIDE = shlex.split(a.otsensor) if a.otsensor else None
    global OTSENSOR_CONFIG
    OTSENSOR_CONFIG = os.path.abspath(a.config) if a.config else None
    if a.config and not os.path.isfile(a.config):
        print("ingest: no such file: %s" % a.config, file=sys.stderr)
        return 2
    if a.packets < 1000:
        ap.error("--packets must be at least 1000")
    if a.file and not os.path.isfile(a.file):
        print("ingest: no such file: %s" % a.file, file=sys.stderr)
        return 2

    report: dict = {
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "machine": machine(),
        "results": {},
        "ratios": {},
        "warnings": [],
        "failures": [],
        "otsensorConfig": OTSENSOR_CONFIG,
    }

    # the input(s)
    mix2 = None
    if a.file:
        log("counting packets in %s ..." % a.file)
        n = count_packets(a.file)
        report["mix"] = {
            "path": os.path.abspath(a.file),
            "packets": n,
            "bytes": os.path.getsize(a.file),
            "generatedSeconds": None,
            "reused": True,
            "connections": None,
            "seed": None,
        }
    elif a.mix == "real":
        rm = ensure_realmix(a.packets)
        if rm is None:
            return 2
        report["mix"] = {
            "path": rm["path"],
            "packets": rm["packets"],
            "bytes": rm["fileBytes"],
            "generatedSeconds": None if rm["reused"] else rm["seconds"],
            "reused": rm["reused"],
            "connections": None,
            "seed": None,
            "kind": "real",
            "mixVersion": rm["version"],
            "copies": rm["copies"],
            "packetsPerCopy": rm["packetsPerCopy"],
            "files": rm["files"],
            "source": rm["source"],
            "wireBytes": rm["wireBytes"],
            "spanHours": round((rm["lastTimestampNs"] - rm["firstTimestampNs"]) / 3.6e12, 1),
        }
    else:
        _frames, per = mix.plan(a.packets, a.connections)
        conns = sum(per.values())
        m1 = ensure_mix(a.packets, a.seed, conns)
        report["mix"] = {k: m1[k] for k in ("path", "packets", "bytes", "generatedSeconds", "reused")}
        report["mix"].update({"connections": conns, "seed": a.seed, "mixVersion": mix.MIX_VERSION})
        if "memory" not in a.skip and "otsensor" not in a.skip:
            mix2 = ensure_mix(2 * a.packets, a.seed, conns)
    path = report["mix"]["path"]
    packets = report["mix"]["packets"]

    workdir = tempfile.mkdtemp(prefix="otsensor-ingest-")
    try:
        res = report["results"]
        # otsensor and tshark take turns, so that a slow spell of a shared machine hits both alike
        runs: dict[str, list] = {"otsensor": [], "tshark": []}
        for turn in range(max(a.repeat, 1)):
            if "otsensor" not in a.skip:
                runs["otsensor"].append(
                    bench_otsensor(
                        path,
                        packets,
                        workdir,
                        "1x-%d" % turn,
                        a.timeout,
                        None if a.file else report["mix"].get("wireBytes") or frame_bytes(path, packets),
                    )
                )
            if "tshark" not in a.skip:
                runs["tshark"].append(bench_tshark(path, packets, a.timeout))
        for key, measured in runs.items():
            res[key] = _median(measured) if measured else {"skipped": "--skip %s" % key}
        if mix2:
            res["otsensor2x"] = bench_otsensor(
                mix2["path"], mix2["packets"], workdir, "2x", a.timeout, frame_bytes(mix2["path"], mix2["packets"])
            )
        if "scapy" in a.skip:
            res["scapy"] = {"skipped": "--skip scapy"}
        elif importlib.util.find_spec("scapy") is None:
            res["scapy"] = {"ok": False, "error": "scapy not installed", "stderrTail": ""}
        else:
            res["scapy"] = bench_snippet(
                "scapy", SCAPY_SNIPPET, path, min(a.scapy_packets, packets or a.scapy_packets), a.timeout
            )
        if a.mix == "real" and not a.file:
            res["dpkt"] = {"skipped": "the real mix is pcapng"}
        elif "dpkt" not in a.skip and importlib.util.find_spec("dpkt") is not None:
            res["dpkt"] = bench_snippet("dpkt", DPKT_SNIPPET, path, 0, a.timeout)

        # ratios, memory, failures
        def ratios(field):
            def rate(k):
                r = res.get(k) or {}
                return r.get(field) if r.get("ok") else None

            o, t, s = rate("otsensor"), rate("tshark"), rate("scapy")
            return {
                "otsensorVsTshark": round(o / t, 3) if o and t else None,
                "otsensorVsScapy": round(o / s, 3) if o and s else None,
            }

        report["ratios"] = ratios("packetsPerSecond")
        report["ratiosCpu"] = ratios("packetsPerCpuSecond")
        report["perPacketPath"] = (
            {"skipped": "--skip perpacket"} if "perpacket" in a.skip else per_packet_path(path, a.timeout)
        )
        if a.file:
            report["memory"] = {"skipped": "--file given"}
        elif a.mix == "real":
            report["memory"] = {"skipped": "the real mix has no twice-as-long twin"}
        elif mix2 is None:
            report["memory"] = {"skipped": "--skip"}
        else:
            r1, r2 = res["otsensor"], res["otsensor2x"]
            p1 = r1.get("peakRssMB") if r1.get("ok") else None
            p2 = r2.get("peakRssMB") if r2.get("ok") else None
            report["memory"] = {
                "connections": report["mix"]["connections"],
                "packets": packets,
                "peakRssMB": p1,
                "packets2x": mix2["packets"],
                "peakRssMB2x": p2,
                "ratio": round(p2 / p1, 3) if p1 and p2 else None,
            }
        for k, r in res.items():
            report["warnings"] += r.pop("warnings", None) or []
            if r.get("skipped") or r.get("ok"):
                continue
            report["failures"].append("%s: %s" % (k, r.get("error")))
            print(
                "--- %s failed (%s); stderr tail:\n%s" % (k, r.get("error"), r.get("stderrTail") or "(empty)"),
                file=sys.stderr,
            )
    finally:
        if a.keep:
            report["workdir"] = workdir
            log("kept %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    if a.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(table(report))
        if a.keep:
            print("work directory kept: %s" % workdir)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
