"""What detection costs: `otsensor replay` of the 1M bench mix, this tree against another checkout, in turns.

    python bench/alerts.py --base /path/to/checkout-of-main [--repeat 5] [--file MIX]

For detection's cost, the base should differ from this tree by detection alone: main just before the
alerts merge (b811a51).  a646dc3, from before hard-replay's merge, also lacks the SHA-256 that replay
takes of every file since (in a thread: ~0.23 s CPU on the 1M mix), which the ratio would then count.

Both run as ``python -m sensor replay MIX --db TMP --json`` with the same interpreter (the other checkout
first on PYTHONPATH), taking turns so that a shared machine's slow spells weigh on both alike; a fresh DB
each run.  As in bench/ingest.py, both run with Python's default bytecode cache (PYTHONDONTWRITEBYTECODE is
dropped from their environment, as an installed package has its .pyc files): else every run compiles every
module of its tree, and the tree with more code pays for it in each run.  Prints every run's wall and CPU seconds, the medians and their ratio, and the time this tree's
replay spent in the merge's detection step (events and alerts of 2,000 devices and 10,000 connections, all
new: the worst case, once per DB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from ingest import ensure_mix  # noqa: E402


def run_once(source: Path, mix: str, workdir: str) -> tuple[float, float]:
    db = os.path.join(workdir, f"{time.monotonic_ns()}.duckdb")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, "PYTHONPATH": str(source)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "sensor", "replay", mix, "--db", db, "--json"],
        cwd=source, env=env, check=True, capture_output=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    os.unlink(db)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def detection_seconds(mix: str, workdir: str) -> float:
    """This tree's replay in-process, timing Detector.detect alone."""
    sys.path.insert(0, str(ROOT))
    from sensor import detect
    from sensor.replay import replay
    from sensor.store import Store

    spent = [0.0]
    original = detect.Detector.detect

    def timed(self, *args):
        started = time.perf_counter()
        try:
            return original(self, *args)
        finally:
            spent[0] += time.perf_counter() - started

    detect.Detector.detect = timed
    store = Store(os.path.join(workdir, "timed.duckdb"))
    try:
        replay([mix], store, progress=False)
    finally:
        store.close()
        detect.Detector.detect = original
    return spent[0]


def _commit(tree: Path) -> str | None:
    """The checkout's commit (short), with "+" when its tracked files differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(tree), "diff", "--quiet", "HEAD"], capture_output=True).returncode
    except OSError:
        return None
    return head.stdout.strip() + ("+" if dirty else "") if head.returncode == 0 else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, type=Path, help="checkout to compare with (e.g. main's head)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--file", help="capture to replay (default: the 1M bench mix)")
    args = parser.parse_args()
    mix = args.file or ensure_mix(1_000_000, 1, 10_000)["path"]
    workdir = tempfile.mkdtemp(prefix="otsensor-alerts-bench-")
    runs: dict[str, list[tuple[float, float]]] = {"base": [], "this": []}
    for tree in (args.base, ROOT):  # unmeasured: bytecode caches and page cache
        run_once(tree, mix, workdir)
    for _ in range(args.repeat):
        runs["base"].append(run_once(args.base, mix, workdir))
        runs["this"].append(run_once(ROOT, mix, workdir))
    report = {
        name: {"walls": [round(w, 3) for w, _ in r], "cpus": [round(c, 3) for _, c in r]} for name, r in runs.items()
    }
    for name, tree in (("base", args.base), ("this", ROOT)):
        report[name]["commit"] = _commit(tree)
    for item in report.values():
        item["medianWall"] = statistics.median(item["walls"])
        item["medianCpu"] = statistics.median(item["cpus"])
    report["wallRatio"] = round(report["this"]["medianWall"] / report["base"]["medianWall"], 4)
    report["cpuRatio"] = round(report["this"]["medianCpu"] / report["base"]["medianCpu"], 4)
    report["detectSeconds"] = round(detection_seconds(mix, workdir), 3)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
