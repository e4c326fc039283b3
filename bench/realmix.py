"""The real-traffic benchmark mix: every readable capture of ../shared/pcaps/real, repeated as new flows.

    python bench/realmix.py [OUT] [--packets N | --copies K] [--source DIR]

Builds one pcapng from every file the project's own reader reads in the folder ($OTSENSOR_REAL_PCAPS,
else ../shared/pcaps/real beside the clone; pcap, pcapng, NetMon, .gz), in path order, repeated K times
(default: enough copies to reach ``--packets``, 1,000,000), so that the speed of ``otsensor replay`` can
be measured on traffic no one in this project crafted, next to the synthetic mix of ``bench/mix.py``.
Without OUT the file is cached in $TMPDIR/otsensor-bench/, keyed by the mix version, K and the contents
of the inputs. Prints a JSON summary. Same inputs, same bytes.

Time: within a copy the files follow one another, each keeping its own relative timing, one second
apart; copy k starts after copy k-1 ends (a whole number of seconds later), so the mix is in time order
wherever its files are. Gaps of more than an hour inside a file (two files here jump by days and years)
are cut to one hour: idle flows still expire, and 20 copies stay inside the int64 nanosecond range.

Addresses: copy 0 is the captures as they are; copy k >= 1 gives every unicast address a new one, so
its flows are new flows and its devices new devices (nothing merges across copies). The mapping is a
bijection per copy, and the copies' images are disjoint from each other and from the originals:
IPv4 addresses keep their last octet and move to an unused /24 of the same class (10/8, 172.16/12 and
192.168/16 are one class, private; loopback, link-local, 100.64/10 and each public /8 keep to
themselves), IPv6 addresses keep their first 16 bits and interface id and move to an unused /64,
MAC addresses keep their OUI. Group addresses (IPv4 224/4, 255.255.255.255, 0.0.0.0; IPv6 ff00::/8,
::; MAC with the group bit) stay as they are. Rewritten: the IPv4/IPv6 headers found where
sensor/decode.py finds them (Ethernet, 802.1Q/QinQ, MPLS, PPPoE, Linux cooked v1/v2, BSD loopback,
raw IP), Ethernet and Linux-cooked link addresses and ARP's. The IPv4 header checksum and the TCP, UDP
and ICMPv6 checksums (their pseudo-header holds the addresses) are updated incrementally (RFC 1624), so
a checksum that was right stays right and one that was wrong stays wrong; neither otsensor nor tshark
(by default) checks them. Addresses inside payloads (ICMP errors, AMS Net Ids, HTTP Host) are left.

Output: pcapng, one Interface Description Block per link type (nanosecond stamps), every frame keeps
its link type, captured bytes and original length.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import struct
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
from sensor.readers import CaptureError, CaptureReader  # noqa: E402

MIX_VERSION = 1
START_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z: copy 0's first file starts here
FILE_GAP_NS = 10**9  # between files of a copy
MAX_GAP_NS = 3600 * 10**9  # a longer gap between two frames of a file is cut to this
DEFAULT_PACKETS = 1_000_000

# --- where sensor/decode.py finds the IP header -----------------------------------------------------
ETH_IPV4, ETH_IPV6, ETH_ARP = 0x0800, 0x86DD, 0x0806
ETH_TAGS = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad, the old QinQ type
ETH_MPLS = (0x8847, 0x8848)
ETH_PPPOE_SESSION = 0x8864
PPP_IPV4, PPP_IPV6 = 0x0021, 0x0057
IPV6_EXTENSIONS = {0, 43, 60, 51, 135, 139, 140}
IPV6_FRAGMENT = 44
# checksum offset in the transport header, for the protocols whose checksum covers a pseudo-header
# holding the IP addresses (RFC 793, RFC 768, RFC 4443 §2.3)
L4_CHECKSUM = {6: 16, 17: 6, 58: 2}
UDP = 17

U16 = struct.Struct(">H")

# --- pcapng (draft-ietf-opsawg-pcapng): little-endian blocks --------------------------------------
_SHB = struct.Struct("<IIIHHq I")  # type, length, byte-order magic, major, minor, section length, length
_IDB = struct.Struct("<IIHHI HHB3x HH I")  # ... linktype, reserved, snaplen, if_tsresol=9 (ns), end, length
_EPB_HEAD = struct.Struct("<IIIIIII")  # type, length, interface, ts high, ts low, caplen, original length
_U32 = struct.Struct("<I")
SNAPLEN = 262144


class Frame(NamedTuple):
    """One input frame and where its addresses and checksums are."""

    linktype: int
    data: bytes
    wirelen: int
    macs: tuple  # offsets of 6-byte MAC addresses
    addresses: tuple  # (offset, width) of IPv4 / IPv6 address fields
    checksums: tuple  # (offset, indices into addresses it covers, is UDP over IPv4)


class _Sites:
    __slots__ = ("macs", "addresses", "checksums")

    def __init__(self) -> None:
        self.macs: list[int] = []
        self.addresses: list[tuple[int, int]] = []
        self.checksums: list[tuple[int, tuple[int, ...], bool]] = []

    def mac(self, frame: bytes, offset: int) -> None:
        if len(frame) >= offset + 6:
            self.macs.append(offset)

    def pair(self, src: int, width: int) -> tuple[int, int]:
        self.addresses += [(src, width), (src + width, width)]
        n = len(self.addresses)
        return n - 2, n - 1

    def checksum(self, frame: bytes, offset: int, covers: tuple[int, ...], udp4: bool = False) -> None:
        if len(frame) >= offset + 2:
            self.checksums.append((offset, covers, udp4))


def locate(linktype: int, frame: bytes) -> _Sites:
    """The link addresses, IP addresses and checksums of one frame, as sensor/decode.py walks it."""
    sites = _Sites()
    n = len(frame)
    if linktype == 1:  # Ethernet
        if n >= 14:
            sites.mac(frame, 0)
            sites.mac(frame, 6)
            _ethertype(frame, U16.unpack_from(frame, 12)[0], 14, sites)
    elif linktype == 113:  # Linux cooked v1: type, ARPHRD, address length, 8 address bytes, protocol
        if n >= 16:
            if U16.unpack_from(frame, 4)[0] == 6:
                sites.mac(frame, 6)
            _ethertype(frame, U16.unpack_from(frame, 14)[0], 16, sites)
    elif linktype == 276:  # Linux cooked v2: protocol, reserved, ifindex, ARPHRD, type, address length, address
        if n >= 20:
            if frame[11] == 6:
                sites.mac(frame, 12)
            _ethertype(frame, U16.unpack_from(frame, 0)[0], 20, sites)
    elif linktype in (0, 108):  # BSD loopback: a 4-byte address family, either byte order for NULL
        if n >= 4:
            family = int.from_bytes(frame[:4], "big")
            if linktype == 0 and family > 0xFFFF:
                family = int.from_bytes(frame[:4], "little")
            if family == 2:
                _ipv4(frame, 4, sites)
            elif family in (10, 24, 28, 30):
                _ipv6(frame, 4, sites)
    elif linktype in (12, 14, 101, 228, 229):  # raw IP
        _ip_by_version(frame, 0, sites)
    return sites


def _ip_by_version(frame: bytes, pos: int, sites: _Sites) -> None:
    if len(frame) > pos:
        if frame[pos] >> 4 == 4:
            _ipv4(frame, pos, sites)
        elif frame[pos] >> 4 == 6:
            _ipv6(frame, pos, sites)


def _ethertype(frame: bytes, ethertype: int, pos: int, sites: _Sites) -> None:
    n = len(frame)
    while ethertype in ETH_TAGS:
        if n < pos + 4:
            return
        ethertype = U16.unpack_from(frame, pos + 2)[0]
        pos += 4
    if ethertype == ETH_IPV4:
        _ipv4(frame, pos, sites)
    elif ethertype == ETH_IPV6:
        _ipv6(frame, pos, sites)
    elif ethertype == ETH_ARP:  # Ethernet/IPv4 ARP: htype 1, ptype 0x0800, hlen 6, plen 4 (RFC 826)
        if n >= pos + 28 and frame[pos : pos + 6] == b"\x00\x01\x08\x00\x06\x04":
            sites.mac(frame, pos + 8)
            sites.mac(frame, pos + 18)
            sites.addresses += [(pos + 14, 4), (pos + 24, 4)]
    elif ethertype in ETH_MPLS:
        while n >= pos + 4:
            bottom = frame[pos + 2] & 0x01
            pos += 4
            if bottom:
                _ip_by_version(frame, pos, sites)
                return
    elif ethertype == ETH_PPPOE_SESSION and n >= pos + 8:
        if frame[pos + 6] & 0x01:
            ppp, pos = frame[pos + 6], pos + 7
        else:
            ppp, pos = U16.unpack_from(frame, pos + 6)[0], pos + 8
        if ppp == PPP_IPV4:
            _ipv4(frame, pos, sites)
        elif ppp == PPP_IPV6:
            _ipv6(frame, pos, sites)


def _ipv4(frame: bytes, pos: int, sites: _Sites) -> None:
    if len(frame) < pos + 20 or frame[pos] >> 4 != 4:
        return
    header = (frame[pos] & 0x0F) * 4
    pair = sites.pair(pos + 12, 4)
    if header < 20 or len(frame) < pos + header:
        return
    sites.checksum(frame, pos + 10, pair)
    proto, fragment_offset = frame[pos + 9], U16.unpack_from(frame, pos + 6)[0] & 0x1FFF
    if not fragment_offset and proto in (6, UDP):
        sites.checksum(frame, pos + header + L4_CHECKSUM[proto], pair, proto == UDP)


def _ipv6(frame: bytes, pos: int, sites: _Sites) -> None:
    n = len(frame)
    if n < pos + 40:
        return
    pair = sites.pair(pos + 8, 16)
    proto, pos = frame[pos + 6], pos + 40
    while proto in IPV6_EXTENSIONS or proto == IPV6_FRAGMENT:
        if n < pos + 8:
            return
        next_proto = frame[pos]
        if proto == IPV6_FRAGMENT:
            if U16.unpack_from(frame, pos + 2)[0] & 0xFFF8:  # not the first fragment: no transport header
                return
            pos += 8
        elif proto == 51:
            pos += (frame[pos + 1] + 2) * 4
        else:
            pos += (frame[pos + 1] + 1) * 8
        proto = next_proto
    if proto in L4_CHECKSUM:
        sites.checksum(frame, pos + L4_CHECKSUM[proto], pair)


# --- the address mappings ---------------------------------------------------------------------------


def is_group(address: bytes) -> bool:
    """As sensor/flows.is_group_address: never a device, so never moved."""
    if len(address) == 4:
        return 224 <= address[0] <= 239 or address in (b"\xff\xff\xff\xff", b"\x00\x00\x00\x00")
    return address[0] == 0xFF or address == bytes(16)


# IPv4 ranges whose class a copy keeps, most specific first, in /24 blocks: (class, first block, blocks)
_V4_RANGES = (
    ("private", 10 << 16, 1 << 16),
    ("private", (172 << 16) | (16 << 8), 1 << 12),
    ("private", (192 << 16) | (168 << 8), 1 << 8),
    ("loopback", 127 << 16, 1 << 16),
    ("link-local", (169 << 16) | (254 << 8), 1 << 8),
    ("shared", (100 << 16) | (64 << 8), 1 << 14),
)


def _v4_range(block: int) -> tuple[str, int, int]:
    for name, first, count in _V4_RANGES:
        if first <= block < first + count:
            return name, first, count
    return "/8 %d" % (block >> 16), block >> 16 << 16, 1 << 16  # any other /8 keeps its first octet


class _Allocator:
    """Hands out unused units (IPv4 /24 blocks, IPv6 /64 prefixes, MAC low halves) per range, in order,
    never one the originals use or one handed out before."""

    def __init__(self, used: Iterable[int]) -> None:
        self.used = set(used)
        self.cursor: dict[tuple, int] = {}

    def take(self, ranges: list[tuple[int, int]], fits) -> int:
        for first, count in ranges:
            at = self.cursor.get((first, count), 0)
            while at < count:
                unit = first + at
                at += 1
                if unit not in self.used and fits(unit):
                    self.cursor[(first, count)] = at
                    self.used.add(unit)
                    return unit
            self.cursor[(first, count)] = at
        raise ValueError("no unused address range left for another copy (%d ranges full)" % len(ranges))


class AddressPlan:
    """Per copy, the mapping of every unicast IP and MAC address of the inputs (copy 0: identity).
    Copy k's mapping depends on the inputs and copies 1..k-1 only, never on how many copies follow."""

    def __init__(self, ips: set[bytes], macs: set[bytes]) -> None:
        self.v4 = sorted(a for a in ips if len(a) == 4 and not is_group(a))
        self.v6 = sorted(a for a in ips if len(a) == 16 and not is_group(a))
        self.macs = sorted(m for m in macs if not m[0] & 1 and m != bytes(6))
        self.v4_blocks = sorted({int.from_bytes(a[:3], "big") for a in self.v4})
        self.v6_prefixes = sorted({a[:8] for a in self.v6})
        self.ouis = sorted({m[:3] for m in self.macs})
        self._v4 = _Allocator(self.v4_blocks)
        self._v6 = _Allocator(int.from_bytes(p, "big") for p in self.v6_prefixes)
        self._mac = {
            oui: _Allocator(int.from_bytes(m[3:], "big") for m in self.macs if m[:3] == oui) for oui in self.ouis
        }
        self._ips: list[dict[bytes, bytes]] = [{}]
        self._links: list[dict[bytes, bytes]] = [{}]

    def ips(self, copy: int) -> dict[bytes, bytes]:
        """Original -> copy's address, for every unicast IPv4 and IPv6 address ({} for copy 0)."""
        self._extend(copy)
        return self._ips[copy]

    def link(self, copy: int) -> dict[bytes, bytes]:
        """Original -> copy's MAC address, for every unicast MAC ({} for copy 0)."""
        self._extend(copy)
        return self._links[copy]

    def _extend(self, copy: int) -> None:
        while len(self._ips) <= copy:
            ips: dict[bytes, bytes] = {}
            blocks = {}
            for block in self.v4_blocks:
                name, first, count = _v4_range(block)
                ranges = [(first, count)] + [(f, c) for n, f, c in _V4_RANGES if n == name and f != first]
                blocks[block] = self._v4.take(ranges, lambda unit, name=name: _v4_fits(unit, name)).to_bytes(3, "big")
            for a in self.v4:
                ips[a] = blocks[int.from_bytes(a[:3], "big")] + a[3:]
            prefixes = {}
            for prefix in self.v6_prefixes:
                head = int.from_bytes(prefix[:2], "big") << 48  # the first 16 bits say the class
                prefixes[prefix] = self._v6.take([(head + 1, (1 << 48) - 1)], lambda unit: True).to_bytes(8, "big")
            for a in self.v6:
                ips[a] = prefixes[a[:8]] + a[8:]
            links = {}
            for m in self.macs:
                low = self._mac[m[:3]].take([(1, (1 << 24) - 2)], lambda unit: True)
                links[m] = m[:3] + low.to_bytes(3, "big")
            self._ips.append(ips)
            self._links.append(links)


def _v4_fits(block: int, name: str) -> bool:
    """A block of the class named, not inside a more specific range, holding no group address."""
    return _v4_range(block)[0] == name and block not in (0, 0xFFFFFF)


# --- checksums (RFC 1624: HC' = ~(~HC + ~m + m')) ---------------------------------------------------


def _words(address: bytes) -> int:
    return sum(U16.unpack_from(address, i)[0] for i in range(0, len(address), 2))


def _inverse_words(address: bytes) -> int:
    return sum(0xFFFF - U16.unpack_from(address, i)[0] for i in range(0, len(address), 2))


def _fold(x: int) -> int:
    while x >> 16:
        x = (x & 0xFFFF) + (x >> 16)
    return x


# --- the mix ----------------------------------------------------------------------------------------


def source_folder() -> Path:
    return Path(os.environ.get("OTSENSOR_REAL_PCAPS", REPO.parent / "shared" / "pcaps" / "real"))


def capture_paths(folder: Path) -> list[Path]:
    """Every regular file under the folder, in path order (the reader decides which are captures)."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


class RealMix:
    """The frames of the inputs (read once), their layout in time, and the per-copy address plan."""

    def __init__(self, paths: Iterable[Path], root: Path | None = None) -> None:
        self.frames: list[Frame] = []
        self.stamps: list[int] = []  # ns since the start of a copy
        self.files: list[dict] = []
        self.skipped: list[str] = []
        ips: set[bytes] = set()
        macs: set[bytes] = set()
        offset = 0
        for path in paths:
            name = str(path.relative_to(root)) if root else str(path)
            try:
                reader = CaptureReader(path)
            except CaptureError as error:
                self.skipped.append("%s: %s" % (name, error))
                continue
            with reader:
                stamps: list[int] = []
                for batch in reader.batches():
                    data = memoryview(batch.data)
                    for start, caplen, wirelen, ts in zip(
                        batch.offsets.tolist(), batch.caplens.tolist(), batch.wirelens.tolist(), batch.ts_ns.tolist()
                    ):
                        frame = bytes(data[start : start + caplen])
                        sites = locate(batch.linktype, frame)
                        macs.update(frame[o : o + 6] for o in sites.macs)
                        ips.update(frame[o : o + w] for o, w in sites.addresses)
                        self.frames.append(
                            Frame(
                                batch.linktype,
                                frame,
                                wirelen,
                                tuple(sites.macs),
                                tuple(sites.addresses),
                                tuple(sites.checksums),
                            )
                        )
                        stamps.append(ts)
                problems = list(reader.problems)
            if not stamps:
                self.skipped.append("%s: no frames" % name)
                continue
            relative, low = [0], 0
            for before, after in zip(stamps, stamps[1:]):
                relative.append(relative[-1] + min(after - before, MAX_GAP_NS))
                low = min(low, relative[-1])
            self.stamps += [offset + r - low for r in relative]
            span = max(relative) - low
            self.files.append({"file": name, "packets": len(stamps), "spanSeconds": span / 1e9, "problems": problems})
            offset += span + FILE_GAP_NS
        # a whole number of seconds per copy: copy k's stamps are copy 0's plus k * period exactly
        self.period_ns = math.ceil(offset / 10**9) * 10**9
        self.plan = AddressPlan(ips, macs)

    def __len__(self) -> int:
        return len(self.frames)

    def copy_frames(self, copy: int) -> Iterable[tuple[int, bytes, int]]:
        """(linktype, bytes, wirelen) of copy k's frames, in order."""
        if copy == 0:
            for f in self.frames:
                yield f.linktype, f.data, f.wirelen
            return
        ips, links = self.plan.ips(copy), self.plan.link(copy)
        for f in self.frames:
            if not (f.macs or f.addresses):
                yield f.linktype, f.data, f.wirelen
                continue
            data, out = f.data, bytearray(f.data)
            for o in f.macs:
                new = links.get(data[o : o + 6])
                if new is not None:
                    out[o : o + 6] = new
            old_new = []
            for o, w in f.addresses:
                old = data[o : o + w]
                new = ips.get(old, old)
                out[o : o + w] = new
                old_new.append((old, new))
            for o, covers, udp4 in f.checksums:
                if all(old_new[i][0] == old_new[i][1] for i in covers):
                    continue
                checksum = U16.unpack_from(data, o)[0]
                if udp4 and checksum == 0:  # no checksum sent (RFC 768)
                    continue
                x = 0xFFFF - checksum
                for i in covers:
                    x += _inverse_words(old_new[i][0]) + _words(old_new[i][1])
                checksum = 0xFFFF - _fold(x)
                if udp4 and checksum == 0:
                    checksum = 0xFFFF
                out[o : o + 2] = U16.pack(checksum)
            yield f.linktype, bytes(out), f.wirelen

    def write(self, out: str | os.PathLike, copies: int) -> dict:
        """Write the mix of ``copies`` copies to ``out`` (atomically); return its summary."""
        if copies < 1:
            raise ValueError("copies must be at least 1")
        if not self.frames:
            raise ValueError("no frames to mix")
        t0 = time.perf_counter()
        linktypes = sorted({f.linktype for f in self.frames})
        interface = {lt: i for i, lt in enumerate(linktypes)}
        tmp = "%s.tmp%d" % (out, os.getpid())
        packets = frame_bytes = wire_bytes = 0
        epb, u32 = _EPB_HEAD.pack, _U32.pack
        pads = [b"", b"\0\0\0", b"\0\0", b"\0"]
        with open(tmp, "wb") as fh:
            fh.write(_SHB.pack(0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28))
            for lt in linktypes:
                fh.write(_IDB.pack(1, 32, lt, 0, SNAPLEN, 9, 1, 9, 0, 0, 32))
            chunk: list[bytes] = []
            for copy in range(copies):
                shift = START_NS + copy * self.period_ns
                for (lt, data, wirelen), stamp in zip(self.copy_frames(copy), self.stamps):
                    ts = shift + stamp
                    caplen = len(data)
                    length = 32 + caplen + (-caplen & 3)
                    chunk.append(epb(6, length, interface[lt], ts >> 32, ts & 0xFFFFFFFF, caplen, wirelen))
                    chunk.append(data)
                    chunk.append(pads[caplen & 3])
                    chunk.append(u32(length))
                    frame_bytes += caplen
                    wire_bytes += wirelen
                    packets += 1
                    if len(chunk) >= 1 << 16:
                        fh.write(b"".join(chunk))
                        chunk.clear()
            fh.write(b"".join(chunk))
        os.replace(tmp, out)
        counts: dict[int, int] = {}
        for f in self.frames:
            counts[f.linktype] = counts.get(f.linktype, 0) + copies
        return {
            "path": str(out),
            "version": MIX_VERSION,
            "copies": copies,
            "packets": packets,
            "packetsPerCopy": len(self.frames),
            "frameBytes": frame_bytes,
            "wireBytes": wire_bytes,
            "fileBytes": os.path.getsize(out),
            "linktypes": {str(lt): n for lt, n in sorted(counts.items())},
            "files": len(self.files),
            "notRead": self.skipped,
            "problems": ["%s: %s" % (f["file"], p) for f in self.files for p in f["problems"]],
            "copySeconds": self.period_ns // 10**9,
            "firstTimestampNs": START_NS + min(self.stamps),
            "lastTimestampNs": START_NS + (copies - 1) * self.period_ns + max(self.stamps),
            "addresses": {
                "ipv4": len(self.plan.v4),
                "ipv6": len(self.plan.v6),
                "mac": len(self.plan.macs),
            },
            "seconds": round(time.perf_counter() - t0, 3),
        }


def copies_for(packets: int, per_copy: int) -> int:
    return max(1, -(-packets // per_copy))


def inputs_digest(paths: list[Path], folder: Path) -> str:
    h = hashlib.sha256(b"otsensor realmix %d\n" % MIX_VERSION)
    for p in paths:
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        try:
            h.update(p.read_bytes())
        except OSError:
            h.update(b"unreadable")
    return h.hexdigest()[:16]


def cached_mix(folder: Path, copies: int | None = None, packets: int = DEFAULT_PACKETS) -> dict:
    """The mix of ``folder`` in $TMPDIR/otsensor-bench/ (built if absent); its summary, with "reused"."""
    paths = capture_paths(folder)
    cache = Path(tempfile.gettempdir()) / "otsensor-bench"
    cache.mkdir(parents=True, exist_ok=True)
    digest = inputs_digest(paths, folder)
    if copies is not None:
        key = cache / ("realmix-v%d-%s-%dx.json" % (MIX_VERSION, digest, copies))
    else:
        key = cache / ("realmix-v%d-%s-%dp.json" % (MIX_VERSION, digest, packets))
    if key.exists():
        try:
            summary = json.loads(key.read_text())
            if os.path.getsize(summary["path"]) == summary["fileBytes"]:
                return dict(summary, reused=True)
        except (OSError, ValueError, KeyError):
            pass
    mix = RealMix(paths, folder)
    if not len(mix):
        raise ValueError("no readable capture in %s" % folder)
    copies = copies or copies_for(packets, len(mix))
    out = cache / ("realmix-v%d-%s-%dx.pcapng" % (MIX_VERSION, digest, copies))
    summary = mix.write(out, copies)
    summary["source"] = str(folder)
    key.write_text(json.dumps(summary, indent=2))
    return dict(summary, reused=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="write the real-traffic benchmark mix (pcapng)")
    ap.add_argument("out", nargs="?", help="where to write it (default: cached in $TMPDIR/otsensor-bench/)")
    ap.add_argument("--source", help="folder of captures (default $OTSENSOR_REAL_PCAPS or ../shared/pcaps/real)")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--packets", type=int, default=DEFAULT_PACKETS, help="at least this many (default 1,000,000)")
    size.add_argument("--copies", type=int, help="exactly this many copies")
    a = ap.parse_args(argv)
    folder = Path(a.source) if a.source else source_folder()
    if not folder.is_dir():
        print("realmix: no folder of real captures at %s" % folder, file=sys.stderr)
        return 2
    if (a.copies is not None and a.copies < 1) or a.packets < 1:
        print("realmix: --copies and --packets must be at least 1", file=sys.stderr)
        return 2
    try:
        if a.out:
            mix = RealMix(capture_paths(folder), folder)
            if not len(mix):
                raise ValueError("no readable capture in %s" % folder)
            summary = mix.write(a.out, a.copies or copies_for(a.packets, len(mix)))
            summary["source"] = str(folder)
        else:
            summary = cached_mix(folder, a.copies, a.packets)
    except (ValueError, OSError) as e:
        print("realmix: %s" % e, file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
