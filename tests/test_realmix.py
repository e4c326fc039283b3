"""The real-traffic benchmark mix (bench/realmix.py): each copy of the real captures is new traffic.

Two copies of a few real captures (every link type and file format the folder has: Ethernet with QinQ
and PPPoE, BSD loopback, Linux cooked, IPv6, NetMon's EtherCAT) replayed by otsensor give exactly
twice the devices and connections of one copy; the second copy, mapped back to the original addresses,
holds the same facts as the first (ports, protocols and commands, counts, identity), one copy period
later; tshark reads the mix and finds its frames and its checksum verdicts, copy for copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
import subprocess
import sys

from sensor.replay import replay
from sensor.store import Store

from .conftest import REAL, ROOT
from .test_replay_files import facts as stored_facts

FEW = [
    REAL / "dsian-adsviewer" / "Demo.cap",  # NetMon, AMS in EtherCAT (no IP)
    REAL / "icsnpp-s7comm" / "s7comm_plus.pcap",  # Linux cooked
    REAL / "iti" / "s7_s7comm_reading_plc_status.pcap",
    REAL / "ndpi" / "beckhoff_ads.pcapng",
    REAL / "suricata-verify" / "pppoe-session-http.pcap",
    REAL / "zeek" / "http-qinq-0.pcap",
    REAL / "zeek" / "http_connect-with-header.pcap",  # BSD loopback
    REAL / "zeek" / "ipv6-http-atomic-frag.pcap",
    REAL / "zeek" / "modbus_modbus-and-non-modbus-p502.pcap",  # gaps of years between frames
    REAL / "zeek" / "modbus_modbusSmall.pcap",
]


def realmix():
    spec = importlib.util.spec_from_file_location("realmix", ROOT / "bench" / "realmix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def facts(path, db) -> tuple[dict, dict]:
    """Replay one file into a new DB: devices by address, connections by address pair."""
    store = Store(db)
    try:
        replay([str(path)], store, progress=False)
    finally:
        store.close()
    stored = stored_facts(db)
    return ({d[0]: d[1:] for d in stored["devices"]},
            {(c[0], c[1]): c[2:] for c in stored["connections"]})  # fmt: skip


def text_map(mapping: dict[bytes, bytes]) -> dict[str, str]:
    """Copy address -> original address, as the DB writes them."""
    out = {}
    for old, new in mapping.items():
        if len(old) == 6:
            out[new.hex(":")] = old.hex(":")
        else:
            out[str(ipaddress.ip_address(new))] = str(ipaddress.ip_address(old))
    return out


def test_two_copies_are_twice_the_traffic_of_one(tmp_path, tshark):
    rm = realmix()
    mix = rm.RealMix(FEW, REAL)
    assert not mix.skipped and len(mix.files) == len(FEW)
    one, two = tmp_path / "one.pcapng", tmp_path / "two.pcapng"
    s1, s2 = mix.write(one, 1), mix.write(two, 2)
    assert s2["packets"] == 2 * s1["packets"] == 2 * len(mix)
    assert set(s1["linktypes"]) == {"0", "1", "113"}

    devices1, connections1 = facts(one, tmp_path / "one.duckdb")
    devices2, connections2 = facts(two, tmp_path / "two.duckdb")
    assert len(devices1) > 20 and len(connections1) > 10
    assert any(":" in ip for ip in devices1), "no IPv6 device: the IPv6 rewrite is not exercised"
    assert len(devices2) == 2 * len(devices1)
    assert len(connections2) == 2 * len(connections1)

    # copy 0 is the captures as they are, at the same times
    assert {ip: devices2[ip] for ip in devices1} == devices1
    assert {pair: connections2[pair] for pair in connections1} == connections1

    # copy 1, its addresses mapped back, is copy 0 one period later
    back = text_map(mix.plan.ips(1))
    macs_back = text_map(mix.plan.link(1))
    shift = mix.period_ns // 10**6
    assert shift > 0 and mix.period_ns % 10**6 == 0
    copy1 = {}
    for ip, (macs, *rest, first, last) in devices2.items():
        if ip not in devices1:
            copy1[back[ip]] = (sorted(macs_back.get(m, m) for m in macs), *rest, first - shift, last - shift)
    assert copy1 == {ip: (sorted(macs), *rest) for ip, (macs, *rest) in devices1.items()}
    copy1 = {}
    for (a, b), (ports, protocols, discovered, last, *rest) in connections2.items():
        if (a, b) not in connections1:
            copy1[(back[a], back[b])] = (ports, protocols, discovered - shift, last - shift, *rest)
    assert copy1 == connections1
    protocols = " ".join(c[1] for c in connections1.values())
    assert all(f'"{name}"' in protocols for name in ("s7comm", "s7comm-plus", "modbus", "ams", "http")), protocols

    # tshark reads the mix: every frame, and per copy the same IP/TCP/UDP checksum verdicts
    def frames(path, *options):
        result = subprocess.run(
            [tshark, "-r", str(path), "-T", "fields", "-e", "frame.number", *options],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert all("Running as user" in line for line in result.stderr.splitlines()), result.stderr
        return len(result.stdout.splitlines())

    assert frames(one) == s1["packets"] and frames(two) == s2["packets"]
    for proto in ("ip", "tcp", "udp"):
        check = ("-o", f"{proto}.check_checksum:TRUE")
        bad = ("-Y", f"{proto}.checksum.status == 0")
        good = ("-Y", f"{proto}.checksum.status == 1")
        assert proto == "udp" or frames(one, *check, *good) > 0  # (no valid UDP checksum in these files)
        assert frames(two, *check, *good) == 2 * frames(one, *check, *good), proto
        assert frames(two, *check, *bad) == 2 * frames(one, *check, *bad), proto


def test_the_mix_is_deterministic_and_copy_k_does_not_depend_on_how_many_follow(tmp_path):
    rm = realmix()
    paths = [REAL / "zeek" / "http-qinq-0.pcap", REAL / "zeek" / "modbus_modbusSmall.pcap"]
    a, b, c = tmp_path / "a.pcapng", tmp_path / "b.pcapng", tmp_path / "c.pcapng"
    rm.RealMix(paths, REAL).write(a, 3)
    rm.RealMix(paths, REAL).write(b, 3)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    rm.RealMix(paths, REAL).write(c, 2)
    assert a.read_bytes().startswith(c.read_bytes())

    mix = rm.RealMix(FEW, REAL)
    seen = set(mix.plan.v4) | set(mix.plan.v6)
    for k in (1, 2, 3):
        mapping = mix.plan.ips(k)
        assert set(mapping) == set(mix.plan.v4) | set(mix.plan.v6)
        image = set(mapping.values())
        assert len(image) == len(mapping), "not one-to-one"
        assert not image & seen, f"copy {k} reuses an address of an earlier copy"
        seen |= image
        for old, new in mapping.items():
            assert rfc1918(new) == rfc1918(old) and old[-1] == new[-1], (old, new)
            if len(old) == 16 or not rfc1918(old):  # IPv6 keeps its first 16 bits, public IPv4 its /8
                assert new[: 2 if len(old) == 16 else 1] == old[: 2 if len(old) == 16 else 1]
            assert not rm.is_group(new)


def rfc1918(address: bytes) -> bool:
    return len(address) == 4 and any(
        ipaddress.ip_address(address) in ipaddress.ip_network(n)
        for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
    )


def test_the_cli_says_in_one_line_when_the_folder_is_missing(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "realmix.py"), "--source", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "nowhere" in result.stderr and "Traceback" not in result.stderr
