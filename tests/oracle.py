"""Accuracy oracle: what tshark (Wireshark 4.0) makes of a capture, as contract rows.

A row is ``(client_ip, server_ip, protocol, command)``: client = the connection's
initiator, server = its responder (CONTRACT.md section 2), protocol and command named
as the contract names them.  Everything comes from tshark's own dissection (PDML):
every command name is the value string that tshark prints in the field's
``showname`` (``.000 0011 = Function Code: Read Holding Registers (3)`` ->
``Read Holding Registers``), never from a hand-written table, so the oracle does not
share a name table with the code under test.  The only renamings are the ones the
contract asks for: ``ADS Xxx`` -> ``AMS Xxx`` and the ``Function code N`` /
``Function 0xNN`` / ``AMS Command N`` fallbacks for codes that tshark has no name for.

Which PDUs count (see tests/ORACLE_NOTES.md for the reasoning and for the cases where
tshark's view differs from what the contract wants):

* modbus -- every ``modbus`` PDU behind an ``mbtcp`` header on TCP (tshark decodes
  Modbus/TCP on TCP 502 only by default); command = name of ``modbus.func_code``
  (tshark masks the exception bit 0x80 itself; ``Unknown (N)`` -> ``Function code N``).
* s7comm -- Job / Ack / Ack_Data: name of ``s7comm.param.func`` (``Unknown`` ->
  ``Function 0xNN``); Userdata: name of ``s7comm.param.userdata.subfunc`` within its
  function group (for group 0, Mode-transition, tshark's subfunction field is
  ``s7comm.param.modetrans.subfunc``, named after the mode, e.g. ``STOP``).  A PDU
  without a function byte (Ack without parameters) gives nothing.
* ams -- every ``ams`` PDU over IP (TCP 48898 / UDP 48899); AMS inside EtherCAT has
  no IP and gives no row.  ``ams.cmdid`` ``ADS Read`` -> ``AMS Read``; 0 (tshark:
  ``Invalid``) and codes above 9 -> ``AMS Command N``.
* http -- every request of a ``http`` PDU: the method, i.e. the request line up to
  its first space, exactly as tshark takes ``http.request.method`` from it (the PDML
  is written without the request line's children for speed, see ``_NODES``).

Who is the client (the contract's initiator), in this order:

1. TCP with the handshake seen (same addresses and ports): the sender of the first
   SYN (or, with only the SYN/ACK captured, its receiver); a SYN that also carries
   FIN or RST (fuzzed headers, zeek/modbus_fuzz-72.pcap frame 1) is no handshake;
2. else the side not on the protocol's server port (modbus 502, s7comm 102,
   ams 48898/48899) when exactly one side is on it;
3. else the message's role as tshark dissects it: Modbus query (to 502) / response
   (``modbus.request_frame``), S7 Job and Userdata (NC) Request vs Ack/Ack_Data and
   Userdata (NC) Response/Push, AMS state flag RESPONSE, HTTP request sender;
4. else the side with the higher port.

(``events(path)`` also reports the message role, so the notes can list where the
role and the TCP initiator disagree -- S7 download, where the PLC sends the Jobs.)

Both directions of a pair add their commands to it.  Frames that tshark marks as
TCP retransmissions are not handed to the protocol dissectors at all
(``tcp.no_subdissector_on_error`` is TRUE by default), so they add nothing.  PDUs in
frames that tshark flags as malformed still count with the function that tshark
decoded (the function byte comes first; a bad body does not make it unknown).
Application PDUs that tshark finds inside an ICMP error quotation are ignored.

Command line: ``python tests/oracle.py FILE...`` prints the rows, sorted, one per
line, tab-separated; ``--events`` prints every contributing PDU with its frame number.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

TSHARK = os.environ.get("TSHARK", "/usr/bin/tshark")

Row = tuple[str, str, str, str]

# PDML is written only for the frames that carry one of the four protocols or a TCP
# SYN (-Y), and within them only for the tree nodes named here (-j: the children of
# a listed node are written, their own children only if they are listed too).  The
# protocols not listed are written as one collapsed <proto> element whose showname
# still carries the addresses and ports ("Internet Protocol Version 4, Src: a, Dst: b",
# "Transmission Control Protocol, Src Port: p, Dst Port: q, Seq: 0[, Ack: 1], Len: 0";
# tshark writes ", Ack: " exactly when the ACK flag is set).  A frame that passed the
# filter without any of the four protocols in it is a SYN (or SYN/ACK).  The
# item data of S7 / Modbus / HTTP bodies is never written, which keeps the output
# several times smaller than a full PDML.
_FRAMES = (
    "(tcp.flags.syn == 1 and tcp.flags.fin == 0 and tcp.flags.reset == 0) or mbtcp or modbus or s7comm or ams or http"
)
_NODES = "mbtcp modbus s7comm s7comm.header s7comm.param ams ams.stateflags http _ws.malformed"
_APP = frozenset({"mbtcp", "modbus", "s7comm", "ams", "http"})

_SERVER_PORTS = {"modbus": {502}, "s7comm": {102}, "ams": {48898, 48899}, "http": set()}

# fields whose attributes we read; "" is an unnamed text node (the HTTP request line)
_WANTED = frozenset(
    {
        "num",
        "modbus.func_code",
        "modbus.request_frame",
        "s7comm.header.rosctr",
        "s7comm.param.func",
        "s7comm.param.userdata.type",
        "s7comm.param.userdata.funcgroup",
        "s7comm.param.userdata.subfunc",
        "s7comm.param.modetrans.subfunc",
        "ams.cmdid",
        "ams.state_response",
        "http.request",
        "",
    }
)

_ATTR = re.compile(rb'(\w+)="([^"]*)"')
_ADDR = re.compile(r"\bSrc: (\S+), Dst: (\S+?)(?:,|$)")
_PORTS = re.compile(r"\bSrc Port: (\d+), Dst Port: (\d+)")
# "... = Function Code: Read Coils (1)", "Subfunction: Read SZL (1)",
# "Function: Setup communication (0xf0)", "CmdId: ADS Read (2)"
_NAMED = re.compile(r":\s(.*)\s\((0x[0-9a-fA-F]+|\d+)\)\s*$")


@dataclass
class Event:
    """One application PDU as tshark dissected it."""

    frame: int
    protocol: str
    command: str
    src: str
    dst: str
    transport: str
    sport: int
    dport: int
    conn: tuple  # (transport, endpoint, endpoint), endpoints sorted
    role_from_client: bool | None  # the message's own role: sent by the client?
    malformed: bool
    raw: str  # tshark's showname of the field the command came from
    client: str = ""
    server: str = ""
    decided_by: str = ""  # syn | port | role | higher-port
    from_client: bool = True  # the sender is the client (as decided_by decided)

    @property
    def row(self) -> Row:
        return (self.client, self.server, self.protocol, self.command)


class _Field:
    __slots__ = ("name", "attrs")

    def __init__(self, name: str, attrs: dict[str, str]):
        self.name = name
        self.attrs = attrs

    def get(self, key: str, default: str = "") -> str:
        return self.attrs.get(key, default)


class _Proto:
    __slots__ = ("name", "showname", "fields")

    def __init__(self, name: str, showname: str):
        self.name = name
        self.showname = showname
        self.fields: list[_Field] = []

    def first(self, name: str) -> _Field | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None


def _attrs(line: bytes) -> dict[str, str]:
    return {k.decode(): html.unescape(v.decode("utf-8", "replace")) for k, v in _ATTR.findall(line)}


def _packets(path: str, options: Sequence[str] = ()) -> Iterator[list[_Proto]]:
    """The top-level protocols of each PDML packet, with the wanted fields only."""
    opts = [a for o in options for a in ("-o", o)]
    errfile = tempfile.TemporaryFile()  # not a pipe: a chatty tshark cannot block on it
    proc = subprocess.Popen(
        [TSHARK, "-n", *opts, "-r", path, "-Y", _FRAMES, "-T", "pdml", "-j", _NODES],
        stdout=subprocess.PIPE,
        stderr=errfile,
        env={**os.environ, "LC_ALL": "C"},
    )
    assert proc.stdout is not None
    protos: list[_Proto] = []
    try:
        for line in proc.stdout:
            s = line.lstrip()
            if s.startswith(b"<field "):
                if not protos:
                    continue
                i = s.find(b'name="')
                if i < 0:
                    continue
                j = s.find(b'"', i + 6)
                name = s[i + 6 : j].decode("ascii", "replace")
                if name in _WANTED:
                    proto = protos[-1]
                    if name == "" and (proto.name != "http" or proto.fields):
                        continue  # only the first line of an HTTP PDU (its request line)
                    proto.fields.append(_Field(name, _attrs(s)))
            elif s.startswith(b"<proto "):
                a = _attrs(s)
                protos.append(_Proto(a.get("name", ""), a.get("showname", "")))
            elif s.startswith(b"<packet>"):
                protos = []
            elif s.startswith(b"</packet>"):
                yield protos
                protos = []
    finally:
        proc.stdout.close()
        rc = proc.wait()
        errfile.seek(0)
        err = "\n".join(
            ln for ln in errfile.read().decode(errors="replace").splitlines() if "Running as user" not in ln
        )
        errfile.close()
    if rc != 0:
        raise RuntimeError(f"tshark failed on {path} (exit {rc}): {err.strip()}")


def _value_name(f: _Field | None) -> tuple[str | None, int]:
    """(name, number) from a field's showname; name is None when tshark has none."""
    if f is None:
        return None, 0
    m = _NAMED.search(f.get("showname"))
    number_text = m.group(2) if m else f.get("show", "0")
    try:
        number = int(number_text, 16) if number_text.lower().startswith("0x") else int(number_text)
    except ValueError:
        number = 0
    if not m:
        return None, number
    name = m.group(1).strip()
    if not name or name.lower().startswith("unknown"):
        return None, number
    return name, number


def _modbus_name(fc: _Field) -> str:
    name, n = _value_name(fc)
    return name if name else f"Function code {n & 0x7F}"


def _s7_func_name(fc: _Field) -> str:
    name, n = _value_name(fc)
    return name if name else f"Function 0x{n:02x}"


def _s7_subfunc_name(sf: _Field, group: _Field | None) -> str:
    name, n = _value_name(sf)
    if name:
        return name
    # tshark has no name for this subfunction in this group: say which group it is in
    g = _value_name(group)[0]
    return f"{g} subfunction {n}" if g else f"Subfunction {n}"


def _ams_name(cmd: _Field) -> str:
    name, n = _value_name(cmd)
    if name and name.startswith("ADS ") and 1 <= n <= 9:
        return "AMS " + name[4:]
    return f"AMS Command {n}"


def _http_method(text: _Field) -> str | None:
    """The request line up to its first space (tshark's http.request.method)."""
    try:
        line = bytes.fromhex(text.get("value"))
    except ValueError:
        line = text.get("show").encode("latin-1", "replace")
    line = line.split(b"\r", 1)[0].split(b"\n", 1)[0]
    method = line.split(b" ", 1)[0]
    return method.decode("ascii", "replace") or None


def _conn(transport: str, src: str, sport: int, dst: str, dport: int) -> tuple:
    a, b = (src, sport), (dst, dport)
    return (transport, a, b) if a <= b else (transport, b, a)


def _raw_events(path: str, syn: dict[tuple, tuple[str, int]], options: Sequence[str]) -> Iterator[Event]:
    for protos in _packets(path, options):
        frame = 0
        src = dst = None
        transport = ""
        sport = dport = 0
        conn: tuple = ()
        in_icmp = False
        malformed = any(p.name == "_ws.malformed" for p in protos)
        has_app = any(p.name in _APP for p in protos)
        after_mbtcp = False
        prev = ""
        for p in protos:
            name, prev_name, prev = p.name, prev, p.name
            if name == "geninfo":
                f = p.first("num")
                frame = int(f.get("show", "0")) if f else 0
            elif name in ("ip", "ipv6"):
                m = _ADDR.search(p.showname)
                if m:
                    src, dst = m.group(1), m.group(2)
            elif name in ("icmp", "icmpv6"):
                in_icmp = True
            elif name in ("tcp", "udp"):
                transport = name
                m = _PORTS.search(p.showname)
                sport, dport = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
                conn = _conn(name, src or "", sport, dst or "", dport)
                if name == "tcp" and not in_icmp and src is not None and not has_app:
                    # only a SYN or SYN/ACK passes the filter without an application PDU
                    if conn not in syn:
                        # SYN: its sender initiates; SYN/ACK: its receiver did
                        syn[conn] = (dst, dport) if ", Ack: " in p.showname else (src, sport)
            elif src is None or in_icmp:
                continue  # no IP layer (AMS in EtherCAT), or an ICMP quotation
            elif name == "mbtcp":
                after_mbtcp = transport == "tcp"
            elif name == "modbus":
                fc = p.first("modbus.func_code")
                if not after_mbtcp or fc is None:
                    continue
                after_mbtcp = False
                if dport == 502 and sport != 502:
                    role = True
                elif sport == 502 and dport != 502:
                    role = False
                else:
                    role = False if p.first("modbus.request_frame") else None
                yield Event(
                    frame,
                    "modbus",
                    _modbus_name(fc),
                    src,
                    dst,
                    transport,
                    sport,
                    dport,
                    conn,
                    role,
                    malformed,
                    fc.get("showname"),
                )
            elif name == "s7comm":
                r = p.first("s7comm.header.rosctr")
                if r is None:
                    continue
                rosctr = _value_name(r)[1]
                if rosctr in (1, 2, 3):
                    fc = p.first("s7comm.param.func")
                    if fc is None:
                        continue
                    yield Event(
                        frame,
                        "s7comm",
                        _s7_func_name(fc),
                        src,
                        dst,
                        transport,
                        sport,
                        dport,
                        conn,
                        rosctr == 1,
                        malformed,
                        fc.get("showname"),
                    )
                elif rosctr == 7:
                    # group 0 (Mode-transition) has its own subfunction field, named
                    # after the mode: "Current mode: STOP (0)" -> "STOP"
                    sf = p.first("s7comm.param.userdata.subfunc") or p.first("s7comm.param.modetrans.subfunc")
                    if sf is None:
                        continue
                    typ = _value_name(p.first("s7comm.param.userdata.type"))[1]
                    # Request / NC Request come from the client; Push, Response and
                    # their NC variants from the server
                    role = True if typ in (4, 7) else False if typ in (0, 3, 8, 11) else None
                    yield Event(
                        frame,
                        "s7comm",
                        _s7_subfunc_name(sf, p.first("s7comm.param.userdata.funcgroup")),
                        src,
                        dst,
                        transport,
                        sport,
                        dport,
                        conn,
                        role,
                        malformed,
                        sf.get("showname"),
                    )
            elif name == "ams":
                cmd = p.first("ams.cmdid")
                if cmd is None or prev_name not in ("tcp", "udp", "ams"):
                    continue  # AMS/TCP or AMS/UDP only (not AMS in EtherCAT over UDP)
                resp = p.first("ams.state_response")
                role = None if resp is None else resp.get("show") != "1"
                yield Event(
                    frame,
                    "ams",
                    _ams_name(cmd),
                    src,
                    dst,
                    transport,
                    sport,
                    dport,
                    conn,
                    role,
                    malformed,
                    cmd.get("showname"),
                )
            elif name == "http":
                if p.first("http.request") is None:
                    continue
                text = p.first("")
                method = _http_method(text) if text else None
                if method:
                    yield Event(
                        frame,
                        "http",
                        method,
                        src,
                        dst,
                        transport,
                        sport,
                        dport,
                        conn,
                        True,
                        malformed,
                        text.get("show").strip(),
                    )


def events(path: str, options: Sequence[str] = ()) -> list[Event]:
    """Every application PDU of the four protocols that tshark dissects in the file,
    with client / server assigned as the contract defines the initiator.  ``options``
    are tshark preferences ("tcp.no_subdissector_on_error:FALSE"), for experiments;
    the oracle itself uses tshark's defaults."""
    syn: dict[tuple, tuple[str, int]] = {}
    evs = list(_raw_events(path, syn, options))
    for e in evs:
        a, b = (e.src, e.sport), (e.dst, e.dport)
        init = syn.get(e.conn)
        ports = _SERVER_PORTS[e.protocol]
        if init in (a, b):
            from_client, how = init == a, "syn"
        elif (e.dport in ports) != (e.sport in ports):
            from_client, how = e.dport in ports, "port"
        elif e.role_from_client is not None:
            from_client, how = e.role_from_client, "role"
        else:
            from_client, how = e.sport > e.dport, "higher-port"
        e.client, e.server = (e.src, e.dst) if from_client else (e.dst, e.src)
        e.decided_by, e.from_client = how, from_client
    return evs


_ROWS_CACHE: dict[tuple, frozenset[Row]] = {}


def tshark_rows(path: str, options: Sequence[str] = ()) -> set[Row]:
    """(client_ip, server_ip, protocol, command) as tshark dissects the file, named with the contract's names."""
    try:
        st = os.stat(path)
        key: tuple | None = (os.path.abspath(path), st.st_mtime_ns, st.st_size, tuple(options))
    except OSError:
        key = None  # let tshark report the error
    if key is not None and key in _ROWS_CACHE:
        return set(_ROWS_CACHE[key])
    rows = {e.row for e in events(path, options)}
    if key is not None:
        _ROWS_CACHE[key] = frozenset(rows)
    return rows


# Where tshark's view and the contract part (evidence in tests/ORACLE_NOTES.md), per
# capture (path relative to shared/pcaps/real).  tshark_rows() itself never applies
# these; contract_rows() does.
#
# Rows a sensor following the contract must report although tshark does not
# (HTTP/1.1 requests on ports that tshark gives to another dissector).
CONTRACT_ADDS: dict[str, set[Row]] = {
    "ndpi/http_on_sip_port.pcap": {("82.178.111.221", "45.58.148.2", "http", "GET")},
    "zeek/postgresql_http-on-port-5432.pcap": {("141.142.228.5", "192.150.187.43", "http", "GET")},
    "zeek/http_get-to-ssh-server.pcap": {("136.216.42.40", "130.74.164.231", "http", "GET")},
    "zeek/http_http-to-ssh.pcap": {("127.0.0.1", "127.0.0.1", "http", "GET")},
}
# Rows tshark reports that a sensor following the contract must not report.
CONTRACT_DROPS: dict[str, set[Row]] = {}
# Rows the contract does not decide: a sensor may report them or not.
CONTRACT_MAYBE: dict[str, set[Row]] = {
    # HTTP/0.9-style request lines (no "HTTP/1.x"): tshark waits for headers forever
    "zeek/http_http_09.pcap": {("127.0.0.1", "127.0.0.1", "http", "GET"), ("127.0.0.1", "127.0.0.1", "http", "POST")},
    "zeek/http_no-version.pcap": {("131.243.1.23", "131.243.1.10", "http", "GET")},
    "zeek/ipv6-http-atomic-frag.pcap": {("2001:db8:1::2", "2001:db8:1::1", "http", "GET")},
    # fuzzed TCP sequence numbers.  Not dissected by tshark although valid MBAP
    # (retransmission / out-of-order / desynchronised reassembly): 28 34 51 53 58 59 64
    # 66.  Dissected by tshark but sent after a sequence gap that never fills, so a
    # receiving stack would never deliver them: 32 33 43 46 50 52 54 63 65 70 71.
    # Only 29 35 36 37 47 (frames 3, 9, 10, 11, 18) are beyond doubt.
    "zeek/modbus_fuzz-72.pcap": {
        ("192.168.66.235", "166.161.16.230", "modbus", f"Function code {n}")
        for n in (28, 34, 51, 53, 58, 59, 64, 66, 32, 33, 46, 50, 52, 54, 63, 65, 70, 71)
    }
    | {("192.168.66.235", "166.161.16.230", "modbus", "Encapsulated Interface Transport")},
    # S7 user data group 0 (Mode-transition push): tshark's "subfunction" is the mode
    "iti/s7_step7_s300_stop.pcapng": {("134.249.62.199", "134.249.61.163", "s7comm", "STOP")},
}


def _relative(path: str) -> str:
    p = os.path.abspath(path).replace(os.sep, "/")
    marker = "/pcaps/real/"
    return p.split(marker, 1)[1] if marker in p else os.path.basename(p)


def contract_rows(path: str, rows: set[Row] | None = None) -> tuple[set[Row], set[Row]]:
    """(required, allowed): the rows a contract-following sensor must report, and the
    rows it may report, for the protocols the oracle covers (modbus, s7comm, ams,
    http; never s7comm-plus, which tshark 4.0 cannot dissect).  ``rows`` defaults to
    tshark_rows(path)."""
    key = _relative(path)
    base = tshark_rows(path) if rows is None else set(rows)
    base = (base | CONTRACT_ADDS.get(key, set())) - CONTRACT_DROPS.get(key, set())
    maybe = CONTRACT_MAYBE.get(key, set())
    return base - maybe, base | maybe


def tshark_rows_by_file(paths: Iterable[str], workers: int = 2) -> dict[str, set[Row]]:
    """tshark_rows for many files, ``workers`` tshark processes at a time."""
    paths = list(paths)
    # biggest first, so that the two workers finish at about the same time
    order = sorted(paths, key=lambda p: -os.path.getsize(p) if os.path.exists(p) else 0)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        done = dict(zip(order, pool.map(tshark_rows, order), strict=True))
    return {p: done[p] for p in paths}


def _main(argv: list[str]) -> int:
    show_events = "--events" in argv
    paths = [a for a in argv if a != "--events"]
    if not paths:
        print("usage: python tests/oracle.py [--events] FILE...", file=sys.stderr)
        return 2
    for path in paths:
        if len(paths) > 1:
            print(f"# {path}")
        try:
            evs = events(path)
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 2
        if show_events:
            for e in evs:
                role = {True: "c->s", False: "s->c", None: "?"}[e.role_from_client]
                print(
                    f"{e.frame}\t{e.protocol}\t{e.command}\t{e.client}\t{e.server}\t"
                    f"{e.src}:{e.sport}->{e.dst}:{e.dport}/{e.transport}\trole={role}\t"
                    f"by={e.decided_by}\t{'malformed' if e.malformed else ''}\t{e.raw}"
                )
        else:
            for row in sorted({e.row for e in evs}):
                print("\t".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
