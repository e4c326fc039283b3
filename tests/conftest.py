"""Shared fixtures: where the real captures live, and helpers to run frames through the engine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT.parent / "shared" / "pcaps" / "real"
PCAPS = ROOT / "pcaps"


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
