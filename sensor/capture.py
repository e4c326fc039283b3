"""Live capture from one interface: an AF_PACKET socket with a TPACKET_V3 ring, one FrameBatch per block.

Owns: the packet socket, its memory-mapped RX ring, the BPF filter, fanout and the kernel's drop counters.
Never: sends a frame — the sensor is PASSIVE (see below) — nor decodes anything past the tpacket headers.

Passive by construction:
  * no code path here calls send/sendto/sendmsg/sendall (``tests/test_capture.py`` checks the source);
    the socket object stays private to :class:`Capture` and no TX ring is ever configured;
  * PACKET_IGNORE_OUTGOING (kernel >= 4.20) is set, so a frame this host itself sends on the interface
    is not mistaken for one seen on the wire; on older kernels ``Capture.ignores_outgoing`` is False;
  * :func:`prepare_passive_interface` leaves the host nothing to say on the capture port: no addresses,
    ARP off, IPv6 disabled before the link comes up (so no DAD, router or MLD solicitations).
Promiscuous mode (a per-socket membership, dropped when the socket closes) only widens what the NIC
accepts; it sends nothing.

How a block becomes a batch: the kernel fills a block with packets and hands it over (TP_STATUS_USER)
when it is full or ``block_timeout_ms`` after it was opened.  We copy the used part of the block to
``bytes`` and give the block straight back, so a slow consumer costs copies, not ring space.  The only
per-packet Python work is following the ``tp_next_offset`` chain; numpy then gathers every header of
the block in one fancy index.  On stop, the block the kernel is still filling is waited for (at most
two block timeouts) — tcpdump lost ~30 of 139 frames by not doing that (see /work/shared/PEERS.md).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# _rows: the gather of fixed-width rows at byte offsets that readers reads record headers with
from .readers import LINKTYPE_ETHERNET, LINKTYPE_RAW, FrameBatch, _rows

# --- Kernel constants (linux/if_packet.h, linux/if_ether.h, asm-generic/socket.h) --------------------
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_IGNORE_OUTGOING = 23
TPACKET_V3 = 2
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000  # reassemble IP fragments before hashing, so they stay on one socket
SO_ATTACH_FILTER = 26  # not exported by Python's socket module
SO_DETACH_FILTER = 27

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1 << 0
TP_STATUS_VLAN_VALID = 1 << 4  # tp_vlan_tci holds a tag the kernel took out of the frame
TP_STATUS_VLAN_TPID_VALID = 1 << 6

# ARPHRD_* (/sys/class/net/IF/type) -> LINKTYPE_* of what a SOCK_RAW packet socket hands us
_LINKTYPES = {
    1: LINKTYPE_ETHERNET,  # ARPHRD_ETHER: ethernet, veth, bridges
    772: LINKTYPE_ETHERNET,  # ARPHRD_LOOPBACK: lo carries zeroed Ethernet headers
    65534: LINKTYPE_RAW,  # ARPHRD_NONE: tun, wireguard — no link header at all
}

# --- Layouts, declared once (the ring is in host byte order) ---------------------------------------
# struct tpacket_req3: block size, block count, frame size, frame count, retire timeout (ms),
# sizeof_priv, feature_req_word.
_REQ3 = struct.Struct("=7I")
# struct tpacket_block_desc is version, offset_to_priv, then tpacket_hdr_v1: block_status, num_pkts,
# offset_to_first_pkt, blk_len (bytes used, header included) ...
_BLOCK_HDR = struct.Struct("=4I")
_BLOCK_STATUS_AT = 8
_BLOCK_NUM_PKTS_AT = 12
_U32 = struct.Struct("=I")
_STATS_V3 = struct.Struct("=3I")  # struct tpacket_stats_v3: tp_packets, tp_drops, tp_freeze_q_cnt
_FPROG = struct.Struct("@HP")  # struct sock_fprog: unsigned short len; struct sock_filter *filter
_MREQ = struct.Struct("=iHH8s")  # struct packet_mreq: ifindex, type, alen, address
# struct tpacket3_hdr, the first 40 bytes: the packet chain, times, lengths, status, offsets, hv1.
_PKT_HDR = np.dtype(
    [
        ("next", "=u4"),
        ("sec", "=u4"),
        ("nsec", "=u4"),
        ("snaplen", "=u4"),
        ("len", "=u4"),
        ("status", "=u4"),
        ("mac", "=u2"),
        ("net", "=u2"),
        ("rxhash", "=u4"),
        ("vlan_tci", "=u4"),
        ("vlan_tpid", "=u2"),
        ("pad", "=u2"),
    ]
)
TPACKET3_HDRLEN = 48 + 20  # TPACKET_ALIGN(sizeof(struct tpacket3_hdr)) + sizeof(struct sockaddr_ll)
VLAN_TAG_LEN = 4
_MAC_PAIR = np.arange(12)  # destination + source MAC, moved to make room for a VLAN tag

_TCPDUMP_TIMEOUT_S = 30


class CaptureUnavailable(Exception):
    """The interface cannot be captured on (missing, gone, no permission, bad filter); one line of text."""


class Capture:
    """Frames seen on ``interface``, as one :class:`FrameBatch` per retired TPACKET_V3 block.

    ``bpf`` is a tcpdump filter expression; ``fanout_group`` (0-65535) joins a PACKET_FANOUT_HASH group,
    where the kernel splits flows between the sockets of the group (the hash is symmetric, so both
    directions of a connection reach the same socket).  The group's DEFRAG flag makes the kernel
    reassemble IPv4 fragments first: in a group, a fragmented datagram arrives as ONE frame (longer than
    the MTU), which keeps it on its flow's socket but means fewer, bigger frames than were on the wire.
    """

    def __init__(
        self,
        interface: str,
        bpf: str | None = None,
        fanout_group: int | None = None,
        block_size: int = 1 << 20,
        block_count: int = 64,
        block_timeout_ms: int = 100,
        promiscuous: bool = True,
    ) -> None:
        if block_size <= 0 or block_size % mmap.PAGESIZE:
            raise ValueError(f"block_size must be a positive multiple of the page size ({mmap.PAGESIZE})")
        if block_count <= 0 or block_timeout_ms <= 0:
            raise ValueError("block_count and block_timeout_ms must be positive")
        if fanout_group is not None and not 0 <= fanout_group <= 0xFFFF:
            raise ValueError("fanout_group must be within 0..65535")
        self.interface = interface
        self.block_size = block_size
        self.block_count = block_count
        self.block_timeout_ms = block_timeout_ms
        self.linktype = _linktype(interface)
        self.ignores_outgoing = False
        self._next_block = 0  # the oldest block not yet read; once all retired ones are read, the
        # one the kernel is filling
        self._totals = {"packets": 0, "drops": 0, "freeze_q_cnt": 0}
        self._frames = 0
        self._blocks = 0
        self._link_down = 0
        self._link_is_down = False
        self._stats_lock = threading.Lock()
        self._closed = False
        self._sock: socket.socket | None = None
        self._ring: mmap.mmap | None = None
        try:
            self._open(bpf, fanout_group, promiscuous)
        except BaseException:
            self.close()
            raise

    # --- setup --------------------------------------------------------------------------------------
    def _open(self, bpf: str | None, fanout_group: int | None, promiscuous: bool) -> None:
        name = self.interface
        try:
            # Protocol 0: nothing is queued until bind(), which comes after the filter is attached.
            self._sock = sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise CaptureUnavailable(
                f"no permission to capture on {name}: a packet socket needs root or CAP_NET_RAW"
            ) from None
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            self.ignores_outgoing = True
        except OSError as exc:  # ENOPROTOOPT before Linux 4.20
            if exc.errno != errno.ENOPROTOOPT:
                raise
        if bpf:
            _attach_filter(sock, compile_bpf(name, bpf))
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        # TPACKET_V3 packs variable-length packets into blocks, so the "frame" geometry is only a
        # formality the kernel still checks: one frame per block satisfies it.
        req = _REQ3.pack(
            self.block_size, self.block_count, self.block_size, self.block_count, self.block_timeout_ms, 0, 0
        )
        try:
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        except OSError as exc:
            raise CaptureUnavailable(
                f"cannot set up a {self.block_count} x {self.block_size} B ring on {name}: {exc.strerror}"
            ) from None
        self._ring = mmap.mmap(
            sock.fileno(), self.block_size * self.block_count, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        try:
            sock.bind((name, ETH_P_ALL))
        except OSError as exc:
            raise CaptureUnavailable(f"cannot bind to {name}: {exc.strerror}") from None
        self._ifindex = socket.if_nametoindex(name)
        if promiscuous:
            # A SPAN port delivers frames addressed to other hosts; a NIC drops them unless promiscuous.
            mreq = _MREQ.pack(self._ifindex, PACKET_MR_PROMISC, 0, b"")
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        if fanout_group is not None:
            # Joining needs a bound socket; frames arriving between bind and here reach this socket
            # outside the group (only at start-up).
            mode = PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG
            try:
                # The option is a u32 with the flags in the top bits: too big for setsockopt's C int.
                sock.setsockopt(SOL_PACKET, PACKET_FANOUT, _U32.pack((mode << 16) | fanout_group))
            except OSError as exc:
                raise CaptureUnavailable(
                    f"cannot join fanout group {fanout_group} on {name}: {exc.strerror}"
                    " (a group holds sockets of one interface and one mode)"
                ) from None
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN | select.POLLERR)

    def set_filter(self, program: list[tuple[int, int, int, int]] | None) -> None:
        """Replace the capture filter of the open socket (None: capture everything), as a reload does.

        The kernel swaps a socket's filter in one step (sk_attach_filter replaces the old program under
        RCU): every frame is checked against the old filter or the new one, the ring and what it holds
        stay, so nothing is lost. CaptureUnavailable if the kernel refuses the program.
        """
        if self._closed:
            return
        if program:
            _attach_filter(self._sock, program)
        else:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
            except OSError as exc:
                if exc.errno != errno.ENOENT:  # ENOENT: there was no filter
                    raise CaptureUnavailable(f"cannot remove the capture filter: {exc.strerror}") from None

    # --- reading ------------------------------------------------------------------------------------
    def batches(self, stop_event: threading.Event | None = None, poll_timeout: float = 0.2) -> Iterator[FrameBatch]:
        """One FrameBatch per retired block until ``stop_event`` is set (or the capture is closed).

        After the stop, every block already retired and the one the kernel was filling are read, then
        the generator returns.  Raises CaptureUnavailable if the interface disappears.
        """
        wait_ms = max(int(poll_timeout * 1000), 1)
        while not self._closed:
            yield from self._retired_batches()
            if stop_event is not None and stop_event.is_set():
                self._wait_for_current_block()
                yield from self._retired_batches()
                return
            self._wait(wait_ms)

    def _retired_batches(self) -> Iterator[FrameBatch]:
        ring = self._ring
        while not self._closed:
            base = self._next_block * self.block_size
            status, num_pkts, first, used = _BLOCK_HDR.unpack_from(ring, base + _BLOCK_STATUS_AT)
            if not status & TP_STATUS_USER:
                return
            data = ring[base : base + used]
            # Give the block back: num_pkts first (the drain reads it as "kernel is filling this"), and
            # block_status last, since the kernel may reopen the block the moment it reads KERNEL.
            _U32.pack_into(ring, base + _BLOCK_NUM_PKTS_AT, 0)
            _U32.pack_into(ring, base + _BLOCK_STATUS_AT, TP_STATUS_KERNEL)
            self._next_block = (self._next_block + 1) % self.block_count
            self._blocks += 1
            if num_pkts:
                self._frames += num_pkts
                yield self._frame_batch(data, num_pkts, first)

    def _frame_batch(self, data: bytes, num_pkts: int, first: int) -> FrameBatch:
        words = memoryview(data)[: len(data) & ~3].cast("I")
        starts = array("q", bytes(8 * num_pkts))
        pos = first
        for i in range(num_pkts):  # the chain: packet i+1 starts tp_next_offset bytes after packet i
            starts[i] = pos
            pos += words[pos >> 2]
        start = np.frombuffer(starts, np.int64)
        hdr = _rows(np.frombuffer(data, np.uint8), start, _PKT_HDR.itemsize).view(_PKT_HDR)[:, 0]
        offsets = start + hdr["mac"]
        caplens = hdr["snaplen"].astype(np.int64)
        wirelens = hdr["len"].astype(np.int64)
        ts_ns = hdr["sec"].astype(np.int64) * 1_000_000_000 + hdr["nsec"]
        if self.linktype == LINKTYPE_ETHERNET and np.bitwise_and(hdr["status"], TP_STATUS_VLAN_VALID).any():
            data = _reinsert_vlan_tags(data, hdr, start, offsets, caplens, wirelens)
        return FrameBatch(self.linktype, data, offsets, caplens, wirelens, ts_ns)

    def _wait(self, timeout_ms: int) -> None:
        for _fd, events in self._poll.poll(timeout_ms):
            if events & select.POLLNVAL:  # closed from another thread
                self._closed = True
            elif events & select.POLLERR:
                self._socket_error()
        if self._link_is_down:
            self._check_interface()
            self._link_is_down = not _is_up(self.interface)

    def _socket_error(self) -> None:
        code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code == errno.ENETDOWN:
            # The kernel says ENETDOWN once, when the link goes down — also on the way to deleting the
            # interface, so we keep checking that it still exists until it is up again (the kernel
            # then hooks the socket back in by itself).
            self._check_interface()
            self._link_down += 1
            self._link_is_down = True
        elif code:
            raise CaptureUnavailable(f"capture on {self.interface} failed: {os.strerror(code)}")

    def _check_interface(self) -> None:
        try:
            same = socket.if_nametoindex(self.interface) == self._ifindex
        except OSError:
            same = False
        if not same:
            raise CaptureUnavailable(f"interface {self.interface} disappeared during capture")

    def _wait_for_current_block(self) -> None:
        """Wait until the block the kernel is filling is retired, if it holds any packet.

        The kernel retires a partly filled block only when its timer fires, at most one block timeout
        after the block was opened; two timeouts plus scheduling slack bound the wait.
        """
        deadline = time.monotonic() + 2 * self.block_timeout_ms / 1000 + 0.05
        base = self._next_block * self.block_size
        while not self._closed:
            status, num_pkts = _BLOCK_HDR.unpack_from(self._ring, base + _BLOCK_STATUS_AT)[:2]
            remaining = deadline - time.monotonic()
            if status & TP_STATUS_USER or not num_pkts or remaining <= 0:
                return
            self._wait(max(1, min(int(remaining * 1000), 10)))

    # --- counters and teardown ---------------------------------------------------------------------
    def stats(self) -> dict:
        """Totals since open: ``packets`` the filter accepted (the kernel counts drops in it too),
        ``drops`` (ring full), ``freeze_q_cnt`` (times the ring froze), and ours: ``frames`` delivered,
        ``blocks`` read, ``link_down`` events.  The kernel resets its counters on every read."""
        with self._stats_lock:
            if not self._closed:
                raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS_V3.size)
                counts = _STATS_V3.unpack(raw.ljust(_STATS_V3.size, b"\0"))  # 8 bytes before TPACKET_V3 is set
                for key, value in zip(("packets", "drops", "freeze_q_cnt"), counts, strict=True):
                    self._totals[key] += value
            return {**self._totals, "frames": self._frames, "blocks": self._blocks, "link_down": self._link_down}

    def close(self) -> None:
        if not self._closed and self._sock is not None:
            self.stats()  # keep the kernel's last counts
        self._closed = True
        if self._ring is not None:
            try:
                self._ring.close()
            except BufferError:  # a batch still being built in another thread; the socket close ends it
                pass
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _reinsert_vlan_tags(data, hdr, start, offsets, caplens, wirelens) -> bytes:
    """Put back the 802.1Q tags the kernel moved into tp_vlan_tci, as libpcap does.

    Linux untags VLAN frames before packet sockets see them (__netif_receive_skb_core), so a trunk
    SPAN port would otherwise lose its VLAN ids.  The gap between the tpacket3 header and the frame
    (tp_mac is 82 for Ethernet) leaves room to move the two MAC addresses 4 bytes back and write the
    tag after them, all in place and for the whole block at once.
    """
    room = offsets - VLAN_TAG_LEN >= start + TPACKET3_HDRLEN  # always, unless a PACKET_RESERVE shrank it
    tagged = (hdr["status"] & TP_STATUS_VLAN_VALID).astype(bool) & room
    buf = np.frombuffer(bytearray(data), np.uint8)
    mac = offsets[tagged]
    macs = mac[:, None] + _MAC_PAIR
    buf[macs - VLAN_TAG_LEN] = buf[macs]
    tpid = np.where(hdr["status"][tagged] & TP_STATUS_VLAN_TPID_VALID, hdr["vlan_tpid"][tagged], 0x8100)
    tci = hdr["vlan_tci"][tagged]
    buf[mac + 8], buf[mac + 9] = tpid >> 8, tpid & 0xFF
    buf[mac + 10], buf[mac + 11] = (tci >> 8) & 0xFF, tci & 0xFF
    offsets[tagged] -= VLAN_TAG_LEN
    caplens[tagged] += VLAN_TAG_LEN
    wirelens[tagged] += VLAN_TAG_LEN
    return buf.tobytes()


def _is_up(interface: str) -> bool:
    try:
        return bool(int(Path(f"/sys/class/net/{interface}/flags").read_text(), 16) & 1)  # IFF_UP
    except (OSError, ValueError):
        return False


def _linktype(interface: str) -> int:
    path = Path("/sys/class/net") / interface / "type"
    if "/" in interface or not interface or not path.exists():
        raise CaptureUnavailable(f"no such network interface: {interface!r}")
    arphrd = int(path.read_text())
    if arphrd not in _LINKTYPES:
        raise CaptureUnavailable(f"{interface}: unsupported link type (ARPHRD {arphrd})")
    return _LINKTYPES[arphrd]


def compile_bpf(interface: str, expression: str) -> list[tuple[int, int, int, int]]:
    """Classic BPF for ``expression`` as (code, jt, jf, k) instructions, compiled by tcpdump.

    ``-i`` matters: on a live Linux interface libpcap tests VLAN tags through the kernel's ancillary
    data (the tag is no longer in the frame), which a compile for a dead handle would get wrong.
    """
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        raise CaptureUnavailable("a capture filter needs tcpdump to compile it; install tcpdump")
    result = subprocess.run(
        [tcpdump, "-ddd", "-i", interface, "--", expression],
        capture_output=True,
        text=True,
        timeout=_TCPDUMP_TIMEOUT_S,
    )
    lines = result.stdout.split()
    if result.returncode != 0 and "not up" in result.stderr:
        raise CaptureUnavailable(f"{interface} is down: bring it up (prepare_passive_interface) before filtering")
    if result.returncode != 0 or not lines:
        reason = result.stderr.strip().splitlines()[0] if result.stderr.strip() else f"exit {result.returncode}"
        raise CaptureUnavailable(f"bad capture filter {expression!r}: {reason.removeprefix('tcpdump: ')}")
    count, numbers = int(lines[0]), [int(n) for n in lines[1:]]
    if len(numbers) != 4 * count:
        raise CaptureUnavailable(f"tcpdump gave malformed bytecode for {expression!r}")
    return [tuple(numbers[i : i + 4]) for i in range(0, len(numbers), 4)]


class _SockFilter(ctypes.Structure):  # struct sock_filter (linux/filter.h)
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


def _attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER takes a struct sock_fprog holding a *pointer*: the instructions live in a ctypes
    array that must outlive the call (the kernel copies them during setsockopt)."""
    instructions = (_SockFilter * len(program))(*program)
    fprog = _FPROG.pack(len(program), ctypes.addressof(instructions))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as exc:
        raise CaptureUnavailable(f"the kernel refused the capture filter: {exc.strerror}") from None


def prepare_passive_interface(name: str) -> None:
    """Bring ``name`` up as a listen-only port: IPv6 off, no addresses, ARP off, then link up.

    IPv6 goes first: bringing a link up with IPv6 on sends DAD and router solicitations.  GRO/LRO are
    also switched off when ethtool is there (best effort): merged segments are not what was on the wire.
    """
    _linktype(name)  # CaptureUnavailable if it does not exist
    ipv6 = Path("/proc/sys/net/ipv6/conf") / name / "disable_ipv6"
    if ipv6.exists():  # absent when the kernel has no IPv6
        ipv6.write_text("1\n")
    for command in (["address", "flush", "dev", name], ["link", "set", "dev", name, "arp", "off", "up"]):
        result = subprocess.run(["ip", *command], capture_output=True, text=True)
        if result.returncode != 0:
            raise CaptureUnavailable(f"ip {' '.join(command)}: {result.stderr.strip() or 'failed'}")
    if shutil.which("ethtool"):
        subprocess.run(["ethtool", "-K", name, "gro", "off", "lro", "off"], capture_output=True)
