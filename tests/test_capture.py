"""Live capture on a veth pair whose far end sits in a network namespace the test creates.

The capture runs in the root namespace on ``otsA…``; traffic comes from inside the namespace on
``otsB…`` (10.213.0.1/24, a static neighbour 10.213.0.2 at a MAC nobody owns, so frames arrive as
PACKET_OTHERHOST like on a SPAN port and nothing routes anywhere).  Needs root.

Throughput benchmark (not part of the test run): ``python3 -m tests.test_capture [seconds]``.
"""

from __future__ import annotations

import ast
import itertools
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sensor.capture import Capture, CaptureUnavailable, prepare_passive_interface

ROOT = Path(__file__).resolve().parent.parent
PEER_IP, GHOST_IP, GHOST_MAC = "10.213.0.1", "10.213.0.2", "02:00:00:00:00:99"
_names = itertools.count()

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs root (netns, veth, packet sockets)")

# Run inside the namespace: argv = destination ip, first port, count, payload prefix, new socket per datagram.
SEND_UDP = """
import socket, sys
ip, port, count, prefix, per_flow = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(count):
    if per_flow:
        sock.close()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.sendto(b"%s-%06d" % (prefix.encode(), i), (ip, port))
"""

# Run inside the namespace: one ICMP echo request to argv[1] (ping may not be installed).
SEND_PING = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sock.sendto(bytes.fromhex("0800f7fe00000001"), (sys.argv[1], 0))
"""

# Run inside the namespace: one hex-encoded frame per stdin line, sent as is on argv[1].
SEND_FRAMES = """
import socket, sys
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((sys.argv[1], 0))
for line in sys.stdin:
    sock.send(bytes.fromhex(line))
"""


class Plant:
    """A namespace with one end of a veth pair; the other end (``a``) stays in the root namespace."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}{next(_names)}"
        self.ns, self.a, self.b = f"otsns{tag}", f"otsA{tag}", f"otsB{tag}"

    def up(self) -> None:
        ip = ["ip", "-n", self.ns]
        for command in (
            ["ip", "netns", "add", self.ns],
            ["ip", "link", "add", self.a, "type", "veth", "peer", "name", self.b, "netns", self.ns],
            # A quiet plant: no IPv6 router/MLD chatter from the peer to blur exact counts.
            [*ip, "link", "set", self.b, "down"],
            ["ip", "netns", "exec", self.ns, "sysctl", "-qw", f"net.ipv6.conf.{self.b}.disable_ipv6=1"],
            [*ip, "link", "set", "lo", "up"],
            [*ip, "link", "set", self.b, "up"],
            [*ip, "address", "add", f"{PEER_IP}/24", "dev", self.b],
            [*ip, "neigh", "add", GHOST_IP, "lladdr", GHOST_MAC, "dev", self.b, "nud", "permanent"],
        ):
            subprocess.run(command, check=True, capture_output=True)

    def down(self) -> None:
        subprocess.run(["ip", "link", "del", self.a], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def run(self, code: str, *args, stdin: str | None = None) -> None:
        command = ["ip", "netns", "exec", self.ns, sys.executable, "-c", code, *map(str, args)]
        subprocess.run(command, check=True, input=stdin, text=True, capture_output=True, timeout=60)

    def send_udp(self, count: int, port: int = 9999, prefix: str = "ots", per_flow: bool = False) -> None:
        self.run(SEND_UDP, GHOST_IP, port, count, prefix, int(per_flow))

    def send_frames(self, frames: list[bytes]) -> None:
        self.run(SEND_FRAMES, self.b, stdin="".join(frame.hex() + "\n" for frame in frames))

    def tx_packets(self) -> int:
        return int(Path(f"/sys/class/net/{self.a}/statistics/tx_packets").read_text())


@pytest.fixture
def plant():
    if os.geteuid() != 0:
        pytest.skip("live capture needs root (netns, veth, packet sockets)")
    plant = Plant()
    try:
        plant.up()
        yield plant
    finally:
        plant.down()


class Recorder:
    """Runs ``capture.batches`` in a thread; ``stop()`` sets the event and returns every frame seen."""

    def __init__(self, capture: Capture) -> None:
        self.capture, self.batches, self.error = capture, [], None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for batch in self.capture.batches(self._stop, poll_timeout=0.05):
                self.batches.append(batch)
        except Exception as error:  # handed to the test thread
            self.error = error

    def stop(self) -> list[tuple[bytes, int]]:
        """(frame bytes, ts_ns) of every captured frame, in capture order."""
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "batches() did not return after stop"
        if self.error is not None:
            raise self.error
        return [
            (bytes(b.data[o : o + c]), t)
            for b in self.batches
            for o, c, t in zip(b.offsets.tolist(), b.caplens.tolist(), b.ts_ns.tolist(), strict=True)
        ]


def udp_payloads(frames, prefix: bytes = b"ots-") -> list[bytes]:
    """Payloads of the UDP/IPv4 datagrams among ``frames`` (untagged Ethernet) that start with prefix."""
    found = []
    for frame, _ts in frames:
        if frame[12:14] == b"\x08\x00" and frame[23] == 17:
            payload = frame[14 + (frame[14] & 15) * 4 + 8 :]
            if payload.startswith(prefix):
                found.append(payload)
    return found


def expected(count: int, prefix: str = "ots") -> list[bytes]:
    return [b"%s-%06d" % (prefix.encode(), i) for i in range(count)]


def ethernet(dst: str, src: str, *tags_and_type: int, payload: bytes) -> bytes:
    """An Ethernet frame; ``tags_and_type`` are 16-bit words after the MACs (TPID, TCI, ..., EtherType)."""
    words = struct.pack(f">{len(tags_and_type)}H", *tags_and_type)
    return bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", "")) + words + payload


# --- the tests ------------------------------------------------------------------------------------
@needs_root
def test_every_frame_is_captured_once_with_sane_timestamps(plant):
    prepare_passive_interface(plant.a)
    with Capture(plant.a) as capture:
        recorder = Recorder(capture)
        before = time.time_ns()
        plant.send_udp(500)
        after = time.time_ns()
        stopping = time.monotonic()
        frames = recorder.stop()  # right away: the last frames are still in the kernel's open block
        stop_took = time.monotonic() - stopping
        stats = capture.stats()
    payloads = udp_payloads(frames)
    assert sorted(payloads) == expected(500)  # each one, exactly once
    stamps = [ts for frame, ts in frames if frame[42:46] == b"ots-"]
    assert all(before <= ts <= after for ts in stamps)
    assert stop_took < 1.0
    assert stats["drops"] == 0 and stats["frames"] == stats["packets"] == len(frames)


@needs_root
def test_bpf_filter_keeps_only_matching_frames(plant):
    prepare_passive_interface(plant.a)
    with Capture(plant.a, bpf="udp port 9999") as capture:
        recorder = Recorder(capture)
        plant.send_udp(100, port=8888, prefix="other")
        plant.send_udp(100, port=9999)
        plant.run(SEND_PING, GHOST_IP)
        frames = recorder.stop()
    assert sorted(udp_payloads(frames)) == expected(100)
    assert len(frames) == 100  # no "other-", no ICMP, no ARP


@needs_root
def test_fanout_group_splits_flows_and_sees_everything_once(plant):
    group = random.randrange(1, 0xFFFF)
    prepare_passive_interface(plant.a)
    with Capture(plant.a, fanout_group=group) as first, Capture(plant.a, fanout_group=group) as second:
        recorders = [Recorder(first), Recorder(second)]
        plant.send_udp(300, per_flow=True)  # 300 source ports: 300 flows for the hash to spread
        seen = [udp_payloads(recorder.stop()) for recorder in recorders]
    assert sorted(seen[0] + seen[1]) == expected(300)
    assert seen[0] and seen[1]


@needs_root
def test_fanout_keeps_a_flow_on_one_socket(plant):
    group = random.randrange(1, 0xFFFF)
    prepare_passive_interface(plant.a)
    with Capture(plant.a, fanout_group=group) as first, Capture(plant.a, fanout_group=group) as second:
        recorders = [Recorder(first), Recorder(second)]
        plant.send_udp(200)  # one socket, one flow
        seen = [udp_payloads(recorder.stop()) for recorder in recorders]
    assert sorted(seen[0] + seen[1]) == expected(200)
    assert not seen[0] or not seen[1]


@needs_root
def test_fanout_hands_over_fragmented_datagrams_reassembled(plant):
    """PACKET_FANOUT_FLAG_DEFRAG: in a group the kernel reassembles IPv4 fragments before hashing."""
    send_big = (
        "import socket\n"
        "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'ots-' + bytes(3996), ('10.213.0.2', 9999))"
    )
    prepare_passive_interface(plant.a)
    lengths = {}
    for group in (None, random.randrange(1, 0xFFFF)):
        with Capture(plant.a, fanout_group=group) as capture:
            recorder = Recorder(capture)
            plant.run(send_big)
            lengths[group is not None] = [len(frame) for frame, _ts in recorder.stop()]
    assert lengths == {False: [1514, 1514, 1082], True: [14 + 20 + 8 + 4000]}


@needs_root
def test_capture_port_transmits_nothing(plant):
    prepare_passive_interface(plant.a)
    assert Path(f"/proc/sys/net/ipv6/conf/{plant.a}/disable_ipv6").read_text().strip() == "1"
    assert "NOARP" in subprocess.run(["ip", "link", "show", plant.a], capture_output=True, text=True).stdout
    tx_before = plant.tx_packets()
    with Capture(plant.a) as capture:
        recorder = Recorder(capture)
        plant.send_udp(200)
        # Bait: ARP requests (no neighbour for .3), broadcast and a ping — a host that talks would answer.
        plant.run(
            "import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n"
            "s.sendto(b'x', ('10.213.0.255', 9999)); s.sendto(b'x', ('10.213.0.3', 9999))\n"
        )
        plant.run(SEND_PING, GHOST_IP)
        time.sleep(0.5)
        frames = recorder.stop()
    assert len(udp_payloads(frames)) == 200
    assert any(frame[12:14] == b"\x08\x06" for frame, _ts in frames)  # the ARP bait was on the wire
    assert plant.tx_packets() == tx_before


@needs_root
def test_frames_this_host_sends_are_not_captured(plant):
    prepare_passive_interface(plant.a)
    with Capture(plant.a) as capture:
        assert capture.ignores_outgoing  # Linux >= 4.20
        recorder = Recorder(capture)
        own = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)  # the test talks, never the capture
        own.bind((plant.a, 0))
        for i in range(50):
            own.send(ethernet(GHOST_MAC, "02:00:00:00:00:01", 0x88B5, payload=b"host-%06d" % i + bytes(40)))
        own.close()
        plant.send_udp(50)
        frames = recorder.stop()
    assert len(udp_payloads(frames)) == 50
    assert not [frame for frame, _ts in frames if frame[12:14] == b"\x88\xb5"]


@needs_root
def test_vlan_tags_the_kernel_strips_are_put_back(plant):
    """Linux hands packet sockets VLAN frames untagged (the tag in tpacket metadata): we restore it."""
    src = "02:00:00:00:00:01"
    payload = bytes(range(46))
    prepare_passive_interface(plant.a)
    sent = [
        ethernet(GHOST_MAC, src, 0x8100, 0x2064, 0x88B5, payload=payload),  # 802.1Q, PCP 1, VID 100
        ethernet(GHOST_MAC, src, 0x88B5, payload=payload),  # untagged, in the same block
        ethernet(GHOST_MAC, src, 0x88A8, 0x00C8, 0x8100, 0x0065, 0x88B5, payload=payload),  # QinQ 200/101
        ethernet(GHOST_MAC, src, 0x8100, 0xE00A, 0x0800, payload=payload),  # VID 10 carrying "IPv4"
    ]
    with Capture(plant.a) as capture:
        recorder = Recorder(capture)
        plant.send_frames(sent)
        frames = recorder.stop()
    assert [frame for frame, _ts in frames if frame.endswith(payload)] == sent


@needs_root
def test_missing_interface_and_bad_filter_are_one_line_errors(plant):
    prepare_passive_interface(plant.a)
    for attempt in (
        lambda: Capture("otsnosuch0"),
        lambda: prepare_passive_interface("otsnosuch0"),
        lambda: Capture(plant.a, bpf="udp port"),
    ):
        with pytest.raises(CaptureUnavailable) as caught:
            attempt()
        assert str(caught.value) and "\n" not in str(caught.value)
    assert "otsnosuch0" in str(pytest.raises(CaptureUnavailable, Capture, "otsnosuch0").value)


@needs_root
def test_no_permission_is_a_clear_error(plant):
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    code = (
        "from sensor.capture import Capture, CaptureUnavailable\n"
        f"try:\n    Capture({plant.a!r})\nexcept CaptureUnavailable as e:\n    print('unavailable:', e)\n"
    )
    result = subprocess.run(
        ["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw", sys.executable, "-c", code],  # root minus one cap
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert result.stdout.startswith("unavailable: no permission to capture on " + plant.a), result.stderr


@needs_root
def test_interface_removed_during_capture_raises(plant):
    prepare_passive_interface(plant.a)
    with Capture(plant.a) as capture:
        recorder = Recorder(capture)
        plant.send_udp(10)
        time.sleep(0.3)
        subprocess.run(["ip", "link", "del", plant.a], check=True)
        time.sleep(0.3)
        with pytest.raises(CaptureUnavailable, match="disappeared"):
            recorder.stop()
    before_removal = [
        (bytes(b.data[o : o + c]), 0) for b in recorder.batches for o, c in zip(b.offsets, b.caplens, strict=True)
    ]
    assert sorted(udp_payloads(before_removal)) == expected(10)


@needs_root
def test_capture_survives_a_link_flap(plant):
    prepare_passive_interface(plant.a)
    with Capture(plant.a) as capture:
        recorder = Recorder(capture)
        plant.send_udp(10, prefix="before")
        time.sleep(0.3)
        subprocess.run(["ip", "link", "set", plant.a, "down"], check=True)
        time.sleep(0.3)
        subprocess.run(["ip", "link", "set", plant.a, "up"], check=True)
        time.sleep(0.2)
        plant.send_udp(10, prefix="after")
        frames = recorder.stop()
        assert capture.stats()["link_down"] == 1
    assert sorted(udp_payloads(frames, b"before-")) == expected(10, "before")
    assert sorted(udp_payloads(frames, b"after-")) == expected(10, "after")


def test_capture_module_never_sends():
    """Passive by construction: no send call anywhere in the capture module."""
    tree = ast.parse((ROOT / "sensor" / "capture.py").read_text())
    called = {
        node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert not called & {"send", "sendto", "sendmsg", "sendall", "sendfile", "sendmmsg"}
    assert "PACKET_TX_RING" not in (ROOT / "sensor" / "capture.py").read_text()


@needs_root
def test_accounting_under_a_blast(plant):
    """As many frames as one sender can push in ~1 s: whatever the kernel accepted was delivered or
    counted as a drop — nothing vanishes between the ring and batches()."""
    prepare_passive_interface(plant.a)
    with Capture(plant.a, bpf="udp port 9999", block_count=8) as capture:
        recorder = Recorder(capture)
        blast(plant, seconds=1.0)
        frames = recorder.stop()
        stats = capture.stats()
    assert stats["frames"] == len(frames) == stats["packets"] - stats["drops"]
    assert stats["frames"] > 1000


# --- traffic generator and benchmark ---------------------------------------------------------------
BLAST = """
import socket, sys, time
frames = [bytes.fromhex(line) for line in sys.stdin]
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((sys.argv[1], 0))
send, end, sent = sock.send, time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < end:
    for frame in frames:
        try:
            send(frame)
        except BlockingIOError:  # the qdisc-less veth never blocks, but be safe
            pass
    sent += len(frames)
print(sent)
"""


def udp_frame(sport: int, payload: bytes) -> bytes:
    """A 60-byte-class Ethernet/IPv4/UDP frame from the peer to the ghost host (checksum-less UDP)."""
    total = 20 + 8 + len(payload)
    header = struct.pack(
        ">BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 17, 0, socket.inet_aton(PEER_IP), socket.inet_aton(GHOST_IP)
    )
    words = struct.unpack(">10H", header)
    checksum = sum(words)
    checksum = ~((checksum & 0xFFFF) + (checksum >> 16)) & 0xFFFF
    header = header[:10] + struct.pack(">H", checksum) + header[12:]
    return ethernet(
        GHOST_MAC,
        "02:00:00:00:00:01",
        0x0800,
        payload=header + struct.pack(">HHHH", sport, 9999, 8 + len(payload), 0) + payload,
    )


def blast(plant: Plant, seconds: float, senders: int = 1) -> int:
    """Push prebuilt 60-byte frames from the namespace as fast as ``senders`` Python processes can;
    uses tcpreplay --topspeed instead when it is installed. Returns the number of frames sent."""
    frames = [udp_frame(10000 + i, b"blast-%06d" % i) for i in range(1000)]
    prefix = ["ip", "netns", "exec", plant.ns]
    if shutil.which("tcpreplay"):
        pcap = Path(f"/tmp/{plant.ns}.pcap")
        pcap.write_bytes(
            struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
            + b"".join(struct.pack("<IIII", 0, 0, len(f), len(f)) + f for f in frames)
        )
        try:
            procs = [
                subprocess.Popen(
                    [
                        *prefix,
                        "timeout",
                        "-s",
                        "INT",
                        str(seconds),
                        "tcpreplay",
                        "-q",
                        "-t",
                        "-l",
                        "0",
                        "-i",
                        plant.b,
                        str(pcap),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                for _ in range(senders)
            ]
            outputs = [proc.communicate(timeout=seconds + 30)[0] for proc in procs]
        finally:
            pcap.unlink()
        sent = 0
        for output in outputs:
            for line in output.splitlines():
                if line.strip().startswith("Actual:"):
                    sent += int(line.split()[1])
        return sent
    stdin = "".join(f.hex() + "\n" for f in frames)
    procs = [
        subprocess.Popen(
            [*prefix, sys.executable, "-c", BLAST, plant.b, str(seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(senders)
    ]
    return sum(int(proc.communicate(stdin, timeout=seconds + 30)[0]) for proc in procs)


def benchmark(seconds: float = 5.0, senders: int = 1) -> None:
    """Two numbers for 60-byte frames blasted from the namespace at the capture port:

    * steady state — frames/s batches() delivers while the sender runs (bounded by the sender here);
    * capacity — the ring is filled while nobody reads, then batches() empties it: frames/s it can
      hand over when frames are waiting.
    """
    plant = Plant()
    try:
        plant.up()
        prepare_passive_interface(plant.a)
        with Capture(plant.a) as capture:
            stop, frames, started = threading.Event(), [0], time.monotonic()

            def consume():
                for batch in capture.batches(stop):
                    frames[0] += len(batch.offsets)

            consumer = threading.Thread(target=consume)
            consumer.start()
            sent = blast(plant, seconds, senders)
            stop.set()
            consumer.join()
            elapsed = time.monotonic() - started
            stats = capture.stats()
        print(
            f"steady: sent {sent} frames in {seconds:.1f} s ({sent / seconds:,.0f}/s, {senders} sender(s)); "
            f"batches() delivered {frames[0]} ({frames[0] / elapsed:,.0f}/s over {elapsed:.2f} s); kernel {stats}"
        )
        with Capture(plant.a) as capture:
            sent = blast(plant, seconds, senders)
            stop = threading.Event()
            stop.set()
            began, cpu, count = time.perf_counter(), time.process_time(), 0
            for batch in capture.batches(stop):
                count += len(batch.offsets)
            wall, cpu = time.perf_counter() - began, time.process_time() - cpu
            stats = capture.stats()
        print(
            f"capacity: {count} waiting frames read in {wall:.3f} s ({count / wall:,.0f} frames/s wall, "
            f"{count / cpu:,.0f} frames/s of CPU); kernel {stats} (drops: the unread ring was full)"
        )
    finally:
        plant.down()


if __name__ == "__main__":
    benchmark(float(sys.argv[1]) if len(sys.argv) > 1 else 5.0, int(sys.argv[2]) if len(sys.argv) > 2 else 1)
