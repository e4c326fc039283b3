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

    __slots__ = ("macs", "first_seen_ns", "last_seen_ns", "roles", "identity", "addresses")

    def __init__(self) -> None:
        self.macs: set[str] = set()
        self.first_seen_ns = 1 << 62
        self.last_seen_ns = -1
        self.roles: set[str] = set()  # "modbus:server", "http:client" ...
        self.identity: dict[str, str] = {}
        self.addresses: dict[str, set[str]] = {}  # protocol -> its addresses ("modbus" -> unit ids ...)

    def merge(self, other: Device) -> None:
        self.macs |= other.macs
        self.first_seen_ns = min(self.first_seen_ns, other.first_seen_ns)
        self.last_seen_ns = max(self.last_seen_ns, other.last_seen_ns)
        self.roles |= other.roles
        merge_identity(self.identity, other.identity)  # the greater value wins: merge order is irrelevant
        for protocol, addresses in other.addresses.items():
            self.addresses.setdefault(protocol, set()).update(addresses)

    def saw(self, first_ns: int, last_ns: int) -> None:
        if first_ns < self.first_seen_ns:
            self.first_seen_ns = first_ns
        if last_ns > self.last_seen_ns:
            self.last_seen_ns = last_ns


MAX_MACS = 16  # a router's address behind many MACs is still one device; keep the list readable
MAX_ADDRESSES = 16  # per protocol and device (a gateway's Modbus unit ids)
# Operational command occurrences kept per delta: rare by nature (a stop, a download's blocks); a
# flood beyond this is counted in ``operations_dropped``, and the alerts it would raise are open already.
MAX_OPERATIONS = 512

# An occurrence, as the delta carries it (plain tuples cross the worker pipe cheaply):
# (time ns, initiator address, responder address, protocol, command, category, detail, link type,
#  ((frame time ns, frame bytes), ...))
Occurrence = tuple


def ip_text(address: bytes) -> str:
    return str(ipaddress.ip_address(address))


def mac_text(mac: bytes) -> str:
    return mac.hex(":")


class ConnectionTable:
    """Connections keyed by (initiator ip, responder ip) and devices keyed by ip, as bytes."""

    def __init__(self) -> None:
        self.connections: dict[tuple[bytes, bytes], Connection] = {}
        self.devices: dict[bytes, Device] = {}
        self.operations: list[Occurrence] = []  # operational commands, each occurrence once
        self.operations_dropped = 0

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

    def add_addresses(self, client: bytes, server: bytes, protocol: str, found) -> None:
        """A flow's protocol addresses, ``(side, value)``: side 0 the client's, 1 the server's."""
        for side, value in found:
            addresses = self.device(server if side else client).addresses
            values = addresses.get(protocol)
            if values is None:
                values = addresses[protocol] = set()
            if len(values) < MAX_ADDRESSES:
                values.add(value)

    def add_operation(self, occurrence: Occurrence) -> None:
        if len(self.operations) < MAX_OPERATIONS:
            self.operations.append(occurrence)
        else:
            self.operations_dropped += 1

    def merge(self, other: ConnectionTable) -> None:
        """Join another delta.  Occurrences are disjoint (each packet is read by one worker, once), so
        they are concatenated; the store keys each by its time, pair and command, so a delta merged
        twice (a flush retried) still raises each alert once."""
        for key, record in other.connections.items():
            self.connection(*key).merge(record)
        for key, record in other.devices.items():
            self.device(key).merge(record)
        for occurrence in other.operations:
            self.add_operation(occurrence)
        self.operations_dropped += other.operations_dropped

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
