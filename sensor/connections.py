"""The connection table: device-pair facts as a join-semilattice (sets union, discovered min, lastSeen max).

Owns the in-memory delta between flushes and how two deltas merge; never decodes packets or does I/O.
"""

from __future__ import annotations

import ipaddress

from .protocols import merge_identity


class Connection:
    """Facts about one ordered (initiator, responder) pair since the last flush."""

    __slots__ = ("ports", "protocols", "discovered_ns", "last_seen_ns", "packets", "bytes", "user_agent")

    def __init__(self) -> None:
        self.ports: set[int] = set()
        self.protocols: dict[str, set[str]] = {}
        self.discovered_ns = 1 << 62
        self.last_seen_ns = -1
        self.packets = 0
        self.bytes = 0
        self.user_agent: str | None = None

    def merge(self, other: Connection) -> None:
        """Join: commutative, associative; idempotent on every field but the packet/byte counters."""
        self.ports |= other.ports
        for name, commands in other.protocols.items():
            self.protocols.setdefault(name, set()).update(commands)
        self.discovered_ns = min(self.discovered_ns, other.discovered_ns)
        self.last_seen_ns = max(self.last_seen_ns, other.last_seen_ns)
        self.packets += other.packets
        self.bytes += other.bytes
        if other.user_agent and (self.user_agent is None or other.user_agent > self.user_agent):
            self.user_agent = other.user_agent  # a deterministic choice keeps the merge order-free


class Device:
    """Facts about one IP address since the last flush."""

    __slots__ = ("macs", "first_seen_ns", "last_seen_ns", "roles", "identity")

    def __init__(self) -> None:
        self.macs: set[str] = set()
        self.first_seen_ns = 1 << 62
        self.last_seen_ns = -1
        self.roles: set[str] = set()  # "modbus:server", "http:client" ...
        self.identity: dict[str, str] = {}

    def merge(self, other: Device) -> None:
        self.macs |= other.macs
        self.first_seen_ns = min(self.first_seen_ns, other.first_seen_ns)
        self.last_seen_ns = max(self.last_seen_ns, other.last_seen_ns)
        self.roles |= other.roles
        merge_identity(self.identity, other.identity)  # the greater value wins: merge order is irrelevant

    def saw(self, first_ns: int, last_ns: int) -> None:
        if first_ns < self.first_seen_ns:
            self.first_seen_ns = first_ns
        if last_ns > self.last_seen_ns:
            self.last_seen_ns = last_ns


MAX_MACS = 16  # a router's address behind many MACs is still one device; keep the list readable


def ip_text(address: bytes) -> str:
    return str(ipaddress.ip_address(address))


def mac_text(mac: bytes) -> str:
    return mac.hex(":")


class ConnectionTable:
    """Connections keyed by (initiator ip, responder ip) and devices keyed by ip, as bytes."""

    def __init__(self) -> None:
        self.connections: dict[tuple[bytes, bytes], Connection] = {}
        self.devices: dict[bytes, Device] = {}

    def connection(self, client: bytes, server: bytes) -> Connection:
        key = (client, server)
        record = self.connections.get(key)
        if record is None:
            record = self.connections[key] = Connection()
        return record

    def device(self, address: bytes) -> Device:
        record = self.devices.get(address)
        if record is None:
            record = self.devices[address] = Device()
        return record

    def add_mac(self, address: bytes, mac: bytes) -> None:
        macs = self.device(address).macs
        if len(macs) < MAX_MACS:
            macs.add(mac_text(mac))

    def merge(self, other: ConnectionTable) -> None:
        for key, record in other.connections.items():
            self.connection(*key).merge(record)
        for key, record in other.devices.items():
            self.device(key).merge(record)

    def derive_devices(self) -> None:
        """Each endpoint of a connection is a device seen then, in the role its protocols show."""
        for (client, server), record in self.connections.items():
            first, last = record.discovered_ns, record.last_seen_ns
            initiator, responder = self.device(client), self.device(server)
            initiator.saw(first, last)
            responder.saw(first, last)
            for name in record.protocols:
                initiator.roles.add(f"{name}:client")
                responder.roles.add(f"{name}:server")

    def __len__(self) -> int:
        return len(self.connections)
