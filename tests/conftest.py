"""Shared fixtures: where the real captures live, and helpers to run frames through the engine.

The real captures are read by path from ../shared/pcaps/real beside the clone (OTSENSOR_REAL_PCAPS points
elsewhere).  CI always has them; where they are absent, every test that needs them is skipped with a reason
that names the folder (see pytest_collection_modifyitems), and every other test runs.
"""

from __future__ import annotations

import os
import shutil
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REAL = Path(os.environ.get("OTSENSOR_REAL_PCAPS", ROOT.parent / "shared" / "pcaps" / "real"))
PCAPS = ROOT / "pcaps"
REAL_ABSENT = f"the real captures are not there: {REAL} (../shared/pcaps/real beside the clone) is absent"


def real_captures() -> list[Path]:
    if not REAL.is_dir():
        return []
    return sorted(p for p in REAL.rglob("*") if p.suffix in {".pcap", ".pcapng", ".cap"})


@pytest.fixture
def tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        pytest.skip("tshark is not installed (CI installs it)")
    return path


NOBODY = 65534
# What lets a user other than root read and search every folder (to import the code and its venv, which a
# clone in a root-only folder such as `mktemp -d`'s would deny) and nothing more: writing, and so
# connecting to a Unix socket, stays as that user's own permissions say.
READ_ANYWHERE = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]


def run_as(uid: int, gid: int, groups: str | None = None, read_anywhere: bool = True) -> list[str]:
    """The setpriv prefix that runs a command as ``uid``:``gid`` with only ``groups`` (root's tests)."""
    extra = f"--groups={groups}" if groups else "--clear-groups"
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", extra, *(READ_ANYWHERE if read_anywhere else [])]


def nobody_cannot_run_the_code() -> str | None:
    """Why `nobody`, with its own permissions only, cannot run this checkout's Python (None if it can)."""
    import subprocess
    import sys

    probe = subprocess.run([*run_as(NOBODY, NOBODY, read_anywhere=False), sys.executable, "-c", "import sensor"],
                           capture_output=True, text=True, cwd="/", timeout=60)  # fmt: skip
    if probe.returncode == 0:
        return None
    return (f"the user nobody cannot run this checkout ({ROOT}) or its Python ({sys.executable}): a folder above "
            f"one of them is root's alone (as `mktemp -d` makes them; CI's is 0755): {probe.stderr.strip().splitlines()[-1:]}")  # fmt: skip


def _under_real(value) -> bool:
    if isinstance(value, Path):
        return value == REAL or REAL in value.parents
    if isinstance(value, list | tuple):
        return any(map(_under_real, value))
    return False


def _names(code: types.CodeType) -> set[str]:
    """The global names a test function's code (and the lambdas and comprehensions in it) looks up."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _names(constant)
    return names


def pytest_collection_modifyitems(config, items) -> None:
    """Without the real captures, the tests that read them skip and say which folder is missing: those
    given one of its files as a parameter, those whose code names a module-level path under it, and the
    parametrisations over its files that came out empty."""
    if REAL.is_dir():
        return
    for item in items:
        function = getattr(item, "function", None)
        module = getattr(item, "module", None)
        if function is None or module is None:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        needs = any(map(_under_real, params.values())) or any(
            _under_real(module.__dict__.get(name)) for name in _names(function.__code__)
        )
        empty = any("got empty parameter set" in str(mark.kwargs.get("reason")) for mark in item.iter_markers("skip"))
        if needs or (empty and "REAL" in module.__dict__):
            item.add_marker(pytest.mark.skip(reason=REAL_ABSENT), append=False)
