"""HTTP/1.x analyzer on any TCP port: request methods, and the User-Agent / Server headers as identity.

Owns request/response head parsing and body skipping; never touches flows or storage.
"""

from __future__ import annotations

import re

from . import Analyzer, Malformed, keep_greater

# Every method Wireshark's packet-http.c recognises at the start of a request line
# (is_http_request_or_reply): RFC 9110, PATCH (RFC 5789), WebDAV (RFC 4918) and its Exchange variants
# (BCOPY ...), DeltaV (RFC 3253), UPnP GENA, POLL, SCCM's CCM_POST, RPC over HTTP ([MS-RPCH]) and SSTP;
# each also with the "M-" prefix of a mandatory extension (RFC 2774), which Wireshark strips before
# its check.  The method is reported as sent (``M-POST``), as tshark's http.request.method is.
BASE_METHODS = (
    b"GET PUT COPY HEAD LOCK MOVE POLL POST BCOPY BMOVE MKCOL TRACE PATCH LABEL MERGE DELETE SEARCH UNLOCK "
    b"REPORT UPDATE NOTIFY BDELETE CONNECT OPTIONS CHECKIN PROPFIND CHECKOUT CCM_POST SUBSCRIBE PROPPATCH "
    b"BPROPFIND BPROPPATCH UNCHECKOUT MKACTIVITY MKWORKSPACE RPC_CONNECT RPC_IN_DATA UNSUBSCRIBE RPC_OUT_DATA "
    b"VERSION-CONTROL BASELINE-CONTROL SSTP_DUPLEX_POST"
).split()
METHODS = frozenset(BASE_METHODS + [b"M-" + method for method in BASE_METHODS])
LONGEST_METHOD = max(map(len, METHODS))  # M-SSTP_DUPLEX_POST, M-BASELINE-CONTROL: 18
COMMANDS = {method: ("http", method.decode()) for method in METHODS}
MAX_HEAD = 64 * 1024  # a request or status line plus headers longer than this is not HTTP we follow

# "METHOD SP request-target [SP HTTP/x.y]" (no version: HTTP/0.9, RFC 1945 section 4.1)
REQUEST_LINE = re.compile(rb"([A-Z][A-Z_-]{2,%d}) +[^ \r\n]+(?: +HTTP/\d\.\d)? *\r?\n" % (LONGEST_METHOD - 1))
STATUS_LINE = re.compile(rb"HTTP/\d\.\d +\d{3}")
BLANK_LINE = re.compile(rb"\n\r?\n")  # the end of a head: a newline, then CRLF or a bare LF
NEXT_REQUEST = re.compile(rb"\n(?=(?:" + b"|".join(map(re.escape, sorted(METHODS))) + rb") )")
NEXT_RESPONSE = re.compile(rb"\n(?=HTTP/\d\.\d \d{3})")


def header_lines(*names: bytes) -> re.Pattern:
    """The lines of the headers ``names`` in a head: "name [SP/HT]* : value", from the newline before
    the line up to (not including) the newline that ends it.  A bytes pattern ignores ASCII case only,
    as bytes.lower() does."""
    return re.compile(rb"\n(" + b"|".join(map(re.escape, names)) + rb")[ \t]*:([^\n]*)", re.IGNORECASE)


# Only the headers the sensor uses are looked up (identity and body framing), not every header.
REQUEST_HEADERS = header_lines(b"user-agent", b"content-length", b"transfer-encoding")
RESPONSE_HEADERS = header_lines(b"server", b"content-length", b"transfer-encoding")


def _request_method(data: bytes) -> bytes | None:
    match = REQUEST_LINE.match(data)
    if match and match.group(1) in METHODS:
        return match.group(1)
    return None


def probe(data: bytes, to_server: bool) -> bool | None:
    """A request line from the initiator (or, mid-stream, from either side) claims the flow."""
    line_end = data.find(b"\n")
    if line_end < 0:
        if len(data) >= MAX_HEAD:
            return False
        first = data.split(b" ", 1)[0]
        if b" " not in data:
            return None if len(first) <= LONGEST_METHOD and (not first or first.isupper()) else False
        return None if first in METHODS else False
    return _request_method(data[: line_end + 1]) is not None


def _head(buf: bytes, pos: int, names: re.Pattern) -> tuple[int, dict[bytes, bytes]] | None:
    """End of the head starting at pos and its headers (names lower-case), or None if incomplete.

    The head ends at the first empty line: a newline followed by CRLF or by a bare LF."""
    blank_line = BLANK_LINE.search(buf, pos, pos + MAX_HEAD)
    if blank_line is None:
        if len(buf) - pos >= MAX_HEAD:
            raise Malformed("HTTP head longer than 64 KiB")
        return None
    blank, end = blank_line.span()
    first_line_end = buf.index(b"\n", pos) + 1
    return end, _headers(buf, first_line_end, blank, names) if first_line_end < blank else {}


def _headers(buf: bytes, begin: int, stop: int, names: re.Pattern) -> dict[bytes, bytes]:
    """The headers ``names`` matches among the header lines buf[begin:stop]: ``name [SP/HT]* : value``,
    the value without surrounding spaces/tabs and its CR; of a repeated header the last one counts."""
    found = {}
    for name, value in names.findall(buf, begin - 1, stop):  # buf[begin - 1] ends the line before
        found[name.lower()] = (value[:-1] if value.endswith(b"\r") else value).strip(b" \t")
    return found


def _body_length(headers: dict[bytes, bytes]) -> int | None:
    """Content-Length when the body is delimited by it; None means 'resynchronise on the next head'."""
    coding = headers.get(b"transfer-encoding")
    if coding is not None and b"chunked" in coding.lower():
        return None
    length = headers.get(b"content-length")
    if length is None:
        return 0
    length = length.strip()
    return int(length) if length.isdigit() and len(length) < 16 else None


def _text(value: bytes) -> str:
    return value.decode("latin-1")[:256]


def parse(buf: bytes, to_server: bool, strict: bool = False):
    """Heads at the start of buf; bodies skipped by Content-Length (consumed may exceed len(buf)).

    Where no head starts, or a body's length is unknown, the next head is searched for; where that
    search ends depends on where segments were cut.  ``strict`` raises Malformed there instead (the
    fast path then hands the segments over one by one)."""
    commands: list[tuple[str, str]] = []
    identity: dict[str, str] = {}
    pos, end = 0, len(buf)
    while pos < end:
        if to_server:
            line = REQUEST_LINE.match(buf, pos, pos + 4096)
            if line is None or (method := line.group(1)) not in METHODS:
                if buf.find(b"\n", pos, pos + 4096) < 0 and end - pos < 4096:
                    break  # a request line still arriving
                if strict:
                    raise Malformed("no request line")
                if (pos := _resync(buf, pos, NEXT_REQUEST)) >= end - 16:
                    break
                continue
            if not line.group(0).rstrip().endswith((b"HTTP/1.0", b"HTTP/1.1")):
                commands.append(COMMANDS[method])  # HTTP/0.9 and HTTP/2-less lines: no headers
                pos = buf.index(b"\n", pos) + 1
                continue
        elif not STATUS_LINE.match(buf, pos):
            if end - pos < 12:
                break
            if strict:
                raise Malformed("no status line")
            if (pos := _resync(buf, pos, NEXT_RESPONSE)) >= end - 16:
                break
            continue
        head = _head(buf, pos, REQUEST_HEADERS if to_server else RESPONSE_HEADERS)
        if head is None:
            break
        head_end, headers = head
        if to_server:
            commands.append(COMMANDS[method])
            sender = headers.get(b"user-agent")
            key = "userAgent"
        else:
            sender = headers.get(b"server")
            key = "server"
        if sender is not None:  # of several heads' values the greater wins
            keep_greater(identity, key, _text(sender))
        body = _body_length(headers)
        if body is None:
            if strict:
                raise Malformed("body of unknown length")
            pos = _resync(buf, head_end, NEXT_REQUEST if to_server else NEXT_RESPONSE)
        else:
            pos = head_end + body
    return pos, commands, identity


def _resync(buf: bytes, pos: int, pattern: re.Pattern) -> int:
    """Skip a body of unknown length (chunked, close-delimited) up to the next line that starts a head."""
    match = pattern.search(buf, pos)
    if match:
        return match.end()
    return max(pos, len(buf) - 16)  # keep a tail that may hold the start of the next head


def parse_run(buf: bytes, to_server: bool):
    return parse(buf, to_server, strict=True)


ANALYZER = Analyzer(name="http", probe=probe, parse=parse, parse_run=parse_run, any_tcp_port=True)
