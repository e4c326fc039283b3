"""The vectorised fast path changes speed, never results: every capture gives the same table both ways."""

from __future__ import annotations

import pytest

from sensor.engine import Engine
from sensor.readers import CaptureReader

from .conftest import PCAPS, ROOT, real_captures


def table(path, vectorised: bool):
    engine = Engine(vectorised=vectorised)
    for batch in CaptureReader(path).batches():
        engine.process_batch(batch)
    delta = engine.take_delta()
    connections = {
        key: (
            sorted(c.ports),
            {p: sorted(v) for p, v in c.protocols.items()},
            c.discovered_ns,
            c.last_seen_ns,
            c.packets,
            c.bytes,
            c.user_agent,
        )
        for key, c in delta.connections.items()
    }
    devices = {
        key: (sorted(d.macs), d.first_seen_ns, d.last_seen_ns, sorted(d.roles), d.identity)
        for key, d in delta.devices.items()
    }
    return connections, devices, engine.errors


BIG = [p for p in real_captures() if p.stat().st_size > 100_000] + [PCAPS / "plant.pcap.gz", PCAPS / "modbus.pcap"]


@pytest.mark.parametrize("capture", BIG, ids=lambda p: p.name)
def test_fast_path_gives_the_scalar_result(capture):
    scalar = table(capture, vectorised=False)
    assert scalar[0], f"{capture} yields no connections: the comparison would prove nothing"
    assert table(capture, vectorised=True) == scalar


def test_fast_path_gives_the_scalar_result_on_the_bench_mix(tmp_path):
    """The benchmark's mix (all four protocols, QinQ, ARP/LLDP, TLS bulk, chunk-spanning flows)."""
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from mix import make_mix
    finally:
        sys.path.remove(str(ROOT / "bench"))
    path = tmp_path / "mix.pcap"
    make_mix(path, packets=200_000, seed=7, connections=2_000, devices=400)
    scalar = table(path, vectorised=False)
    assert {"modbus", "s7comm", "ams", "http"} <= {p for c in scalar[0].values() for p in c[1]}
    assert table(path, vectorised=True) == scalar


def test_fast_path_takes_packets(monkeypatch):
    """On the plant capture most packets avoid the per-packet path (else the test above is moot)."""
    engine = Engine()
    taken = []
    split = engine.fast.split

    def counting(batch, done=None):
        leftover, deferred = split(batch, done=done)
        taken.append(len(batch.offsets) - len(leftover) - (0 if done is None else len(done)))
        return leftover, deferred

    monkeypatch.setattr(engine.fast, "split", counting)
    for batch in CaptureReader(PCAPS / "plant.pcap.gz").batches():
        engine.process_batch(batch)
    assert sum(taken) > engine.packets / 2
