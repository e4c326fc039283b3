"""Analyzer properties the fast path relies on, and the HTTP head reader against a regex reading."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.connections import ConnectionTable
from sensor.engine import Engine
from sensor.flows import Flow, FlowTable
from sensor.protocols import http
from sensor.readers import CaptureReader

from .conftest import PCAPS

# The reading http._headers must equal: a header line is "name [SP/HT]* : [SP/HT]* value [SP/HT]* [CR]".
REFERENCE = re.compile(
    rb"^(user-agent|server|content-length|transfer-encoding)[ \t]*:[ \t]*(.*?)[ \t]*\r?$", re.M | re.I
)
PIECES = [
    b"Server", b"server", b"SERVER", b"User-Agent", b"Content-Length", b"Transfer-Encoding", b"Server-Timing",
    b"X-Server", b":", b" ", b"\t", b"\r", b"\n", b"\r\n", b"abc", b"1234", b"chunked", b"\xff",
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40))
def test_header_lines_read_as_the_regex_reads_them(pieces):
    block = b"".join(pieces).replace(b"\n\n", b"\n")
    expected = {m.group(1).lower(): m.group(2) for m in REFERENCE.finditer(block)}
    names = http.header_lines(b"user-agent", b"server", b"content-length", b"transfer-encoding")
    assert http._headers(b"GET / HTTP/1.1\r\n" + block, 16, 16 + len(block), names) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES + [b"\n\n", b"\r\n\r\n", b"\n\r\n"]), max_size=40))
def test_head_ends_at_the_first_empty_line(pieces):
    buf = b"HTTP/1.1 200 OK\r\n" + b"".join(pieces)
    match = re.compile(rb"\r?\n\r?\n").search(buf, 0)
    head = http._head(buf, 0, http.RESPONSE_HEADERS)
    assert (head is None) == (match is None)
    if head is not None:
        assert head[0] == match.end()


def _streams() -> list[tuple]:
    """(analyzer, to_server, segments) of every reassembled stream direction in the project's captures."""
    recorded: dict[tuple, list] = {}
    original = FlowTable._deliver

    def record(self, flow, stream, data):
        if flow.analyzer is not None:
            key = (id(flow), flow.streams[0] is stream)
            recorded.setdefault(key, [flow.analyzer, key[1], []])[2].append(bytes(data))
        return original(self, flow, stream, data)

    FlowTable._deliver = record
    try:
        for path in sorted(PCAPS.glob("*.pcap*")):
            engine = Engine(vectorised=False)
            for batch in CaptureReader(path).batches():
                engine.process_batch(batch)
    finally:
        FlowTable._deliver = original
    return [tuple(v) for v in recorded.values() if len(v[2]) > 1]


STREAMS = _streams()


def _outcome(analyzer, to_server, pieces, run: bool):
    table = FlowTable(ConnectionTable(), {})
    flow = Flow(b"\x0a\0\0\1", b"\x0a\0\0\2", 40000, 502, 6)
    flow.analyzer = analyzer
    stream = flow.streams[0 if to_server else 1]
    stream.next_seq = 0
    if run:
        if not table.deliver_run(flow, stream, b"".join(pieces)):  # a malformed PDU: left to per packet,
            assert not table.table.connections and not stream.buf and not stream.skip  # nothing changed
            return None
    else:
        for piece in pieces:
            table._deliver(flow, stream, memoryview(piece))
    device = table.table.devices
    return (
        {k: c.protocols for k, c in table.table.connections.items()},
        {k: d.identity for k, d in device.items()},
        stream.buf,
        stream.skip,
    )


def test_the_project_captures_give_streams_of_every_protocol():
    assert {a.name for a, _, _ in STREAMS} >= {"modbus", "s7comm", "http", "ams"}


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_one_parse_of_a_run_equals_parses_segment_by_segment(data):
    """What FlowTable.deliver_run assumes: an analyzer reads the same PDUs from a stream however its
    bytes are cut into segments (the fast path hands over several segments as one piece)."""
    analyzer, to_server, segments = data.draw(st.sampled_from(STREAMS))
    whole = b"".join(segments)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(whole) - 1)), max_size=12)))
    pieces = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)]) if b > a]
    run = _outcome(analyzer, to_server, pieces, run=True)
    if run is not None:
        assert run == _outcome(analyzer, to_server, pieces, run=False)
