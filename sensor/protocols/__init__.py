"""Registry of the application protocols the sensor recognises, and the per-flow probing decision.

Owns: which analyzer may claim a flow (by port first, then by probing the first payload bytes).
Never: touches storage, HTTP serving or capture; analyzers are pure functions over bytes.

An analyzer module exposes a module-level ``ANALYZER`` (see :class:`Analyzer`):

* ``probe(data, to_server) -> True | False | None`` looks at the first bytes a direction carried
  (``to_server`` is True for initiator -> responder); True claims the flow, False rejects it,
  None asks for more bytes (e.g. only a COTP connection request was seen yet).
* ``parse(buf, to_server) -> (consumed, commands, identity)`` reads as many *complete* PDUs as
  ``buf`` holds from its start and returns how many bytes it consumed (0 when the first PDU is
  still incomplete), the ``(protocol name, command name)`` pairs seen, and a dict of identity facts
  about the *sender* of ``buf`` (keys: ``vendor``, ``name``, ``type``, ``firmware``, ``serial``,
  ``userAgent``, ``server``).  It raises :class:`Malformed` when the bytes cannot be this
  protocol; the flow then counts a decode error and resynchronises at the next segment.
  A command of CONTRACT section 4's operational table is reported as an :class:`Operation` (it is
  still the same ``(protocol, command)`` pair), so that the flow table can keep its occurrence.
* ``addresses(data) -> [(side, address)]`` (optional) reads the protocol's own addresses from the
  bytes that decided the flow (the initiator's first bytes): side 0 the initiator's, 1 the
  responder's (Modbus unit ids, S7 rack/slot, AMS Net Ids).  Read once per flow, by the one path
  that decides flows, so both packet paths agree on them by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


def merge_identity(into: dict[str, str], facts: dict[str, str]) -> None:
    """Identity facts of several PDUs: of two values of a field the greater wins, as everywhere in the
    sensor, so that the result does not depend on how PDUs are grouped into calls or ordered."""
    for key, value in facts.items():
        keep_greater(into, key, value)


def keep_greater(into: dict[str, str], key: str, value: str) -> None:
    """One identity fact, as :func:`merge_identity` merges it."""
    if key not in into or value > into[key]:
        into[key] = value


# Categories of commands, kept beside each protocol's name tables.  The last five are operational:
# each occurrence is kept with its frames and raises an alert (sensor/detect.py names them).
READ, WRITE = "read", "write"
STOP, START, PROGRAM, UPLOAD, MODE = "stop", "start", "program", "upload", "mode"
OPERATIONAL = frozenset({STOP, START, PROGRAM, UPLOAD, MODE})


class Operation(tuple):
    """A ``(protocol, command)`` pair that is also an operational command: it counts as that command
    everywhere a pair does, and carries its ``category`` (STOP, START, PROGRAM, UPLOAD, MODE) and a
    ``detail`` read from the PDU (the PI service, the ADS state, the mode, the UMAS function)."""

    def __new__(cls, protocol: str, command: str, category: str, detail: str = "") -> Operation:
        pair = super().__new__(cls, (protocol, command))
        pair.category, pair.detail = category, detail
        return pair


class Malformed(ValueError):
    """A PDU that violates its protocol's framing; counted per protocol, never raised further."""


ParseResult = tuple[int, list[tuple[str, str]], dict[str, str]]


@dataclass(frozen=True)
class Analyzer:
    name: str  # the protocol name counted for decode errors (``modbus``, ``s7comm``, ...)
    probe: Callable[[bytes, bool], bool | None]
    parse: Callable[[bytes, bool], ParseResult]
    tcp_ports: frozenset[int] = field(default_factory=frozenset)
    udp_ports: frozenset[int] = field(default_factory=frozenset)
    any_tcp_port: bool = False  # probed on every TCP flow (HTTP)
    datagram: bool = False  # UDP: every datagram is parsed on its own
    # Optional vectorised framing for the batch fast path: ``batch(data, starts, lengths, to_server)``
    # returns (whole, named, code) arrays — whole where a segment holds exactly one complete PDU as
    # parse frames it; named where, besides, parse would name it from a table alone (no identity to
    # read, no state), by ``code`` — and ``command(code)`` the (protocol, command) pair or None.
    batch: Callable | None = None
    command: Callable[[int], tuple[str, str] | None] | None = None
    # The parse for several in-order segments at once (the fast path's runs); it must raise
    # Malformed wherever its result would depend on where the segments were cut.  None: ``parse``
    # itself, which holds for protocols framed by their own length fields.
    parse_run: Callable[[bytes, bool], ParseResult] | None = None
    addresses: Callable[[bytes], list[tuple[int, str]]] | None = None
