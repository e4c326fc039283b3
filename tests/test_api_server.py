"""The API's server under hostile and careless clients: slow heads, idle sockets, slow readers, odd requests.

Each test runs the real server (api.server) on loopback, over HTTP and HTTPS where TLS changes the path,
and checks what a client sees: an honest request is answered while hundreds of others stall.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import threading
import time

import pytest

from api import create_app
from api.auth import create_token
from api.openapi import DOCUMENT
from api.server import ApiServer
from sensor.store import Store

from .test_api import ERROR_KEYS, fill, make_certificate

SLOW_CLIENTS = 200
IDLE_CLIENTS = 50
PATIENCE = 5.0  # seconds an honest client waits for an answer: generous, so a loaded machine passes


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("server") / "server.duckdb")
    fill(store)
    yield store
    store.close()


@pytest.fixture(scope="module")
def token(store) -> str:
    return create_token(store, "server-tests")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def running(store):
    """Start an ApiServer in a thread (any WSGI app, any options); every one is stopped after the test."""
    servers = []

    def start(app=None, **options) -> ApiServer:
        server = ApiServer(app or create_app(store, {"rate_limit": 0}), "127.0.0.1", 0, **options)
        server.prepare()
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return server

    yield start
    for server, thread in servers:
        server.stop()
        thread.join(15)
        assert not thread.is_alive()


def connect(server: ApiServer, context: ssl.SSLContext | None = None, handshake: bool = True) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE)
    if context is not None and handshake:
        sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
    return sock


def ask(server: ApiServer, path: str, context=None, headers=None) -> tuple[int, dict, bytes]:
    """One honest request on a new connection, waiting at most PATIENCE seconds for each step."""
    kind = http.client.HTTPSConnection if context is not None else http.client.HTTPConnection
    extra = {"context": context} if context is not None else {}
    connection = kind("127.0.0.1", server.port, timeout=PATIENCE, **extra)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def read_answer(sock: socket.socket) -> tuple[int, dict, bytes]:
    """Read exactly one whole response (Content-Length framed, or up to the close).

    The head is read a byte at a time and the body no further than its length, so a pipelined answer
    that follows in the same segment stays in the socket for the next call."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            break
        head += byte
    lines = head[:-4].decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    length = int(headers.get("Content-Length", -1))
    body = bytearray()
    while length < 0 or len(body) < length:
        chunk = sock.recv(65536 if length < 0 else min(65536, length - len(body)))
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, bytes(body)


def exchange(server: ApiServer, request: bytes, context=None) -> tuple[int, dict, dict]:
    with connect(server, context) as sock:
        sock.sendall(request)
        status, headers, body = read_answer(sock)
    return status, headers, json.loads(body)


class Trickle:
    """Connections that send a request head one byte at a time, and never finish it while trickling."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        self.sockets = sockets
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.dropped: set[socket.socket] = set()  # closed by the server

    def run(self) -> None:
        for sock in self.sockets:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        while not self.stop.wait(0.1):
            for sock in set(self.sockets) - self.dropped:
                try:
                    sock.sendall(b"X")  # one more byte of a header name that never ends
                except OSError:
                    self.dropped.add(sock)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        self.thread.join(10)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_slow_and_idle_clients_do_not_stall_honest_ones(running, token, certificate, tls):
    """200 connections trickling a request head and 50 idle ones hold no worker: /healthz and the API answer."""
    cert, key = certificate
    server = running(**({"tls_cert": cert, "tls_key": key} if tls else {}), threads=4)
    context = ssl.create_default_context(cafile=cert) if tls else None
    slow = [connect(server, context) for _ in range(SLOW_CLIENTS)]
    idle = [connect(server, context, handshake=False) for _ in range(IDLE_CLIENTS // 2)]
    idle += [connect(server, context) for _ in range(IDLE_CLIENTS - IDLE_CLIENTS // 2)]
    try:
        with Trickle(slow):
            time.sleep(0.5)  # every slow client has sent part of its head, and goes on sending
            status, _, body = ask(server, "/healthz", context)
            assert status == 200 and json.loads(body)["status"] == "ok"
            status, _, body = ask(server, "/api/v1/devices", context, {"Authorization": token})
            assert status == 200 and json.loads(body)
        # the slow clients were held, not dropped: one that finally ends its head is answered
        slow[0].sendall(b"-Done: 1\r\n\r\n")
        status, _, body = read_answer(slow[0])
        assert status == 200 and json.loads(body)["status"] == "ok"
    finally:
        for sock in slow + idle:
            sock.close()


def test_at_the_connection_limit_the_longest_waiting_connection_makes_room(running):
    """More slow clients than the server keeps open: the oldest are closed, so a new honest one gets in."""
    server = running(max_connections=20, threads=2)
    slow = [connect(server) for _ in range(40)]
    try:
        with Trickle(slow) as trickle:
            time.sleep(0.5)
            status, _, body = ask(server, "/healthz")
            assert status == 200 and json.loads(body)["status"] == "ok"
            time.sleep(0.3)
        assert trickle.dropped  # slow ones were closed to make room
    finally:
        for sock in slow:
            sock.close()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_request_head_has_a_deadline(running, certificate, tls):
    """A head still incomplete when head_timeout has passed is answered 408 in the error shape and closed."""
    cert, key = certificate
    server = running(**({"tls_cert": cert, "tls_key": key} if tls else {}), head_timeout=1.0)
    context = ssl.create_default_context(cafile=cert) if tls else None
    with connect(server, context) as sock:
        if tls:  # one partial head, then silence: an SSL socket must not be read and written from two threads
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            status, headers, body = read_answer(sock)
        else:
            with Trickle([sock]):
                status, headers, body = read_answer(sock)  # the server answers while the client is still sending
    assert status == 408 and headers["Connection"] == "close"
    assert set(json.loads(body)) == ERROR_KEYS and json.loads(body)["status"] == 408


def big_app(size: int):
    """A plain WSGI app with a body of ``size`` bytes in one piece, and one of unknown length at /stream."""

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/stream":
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            return (b"x" * 65536 for _ in range(size // 65536))
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
        return [b"x" * size]

    return app


def test_a_client_that_does_not_read_holds_no_worker(running):
    """With one worker, a client that asks for 32 MiB and reads none of it does not stop the next one."""
    size = 32 << 20
    server = running(big_app(size), threads=1)
    with connect(server) as stalled:
        stalled.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        status, headers, body = ask(server, "/big")
        assert status == 200 and len(body) == size and headers["Content-Length"] == str(size)
        status, headers, body = ask(server, "/stream")  # unknown length: never chunked, the close ends it
        assert status == 200 and len(body) == size and headers["Connection"] == "close"
        assert "Transfer-Encoding" not in headers
        status, headers, body = read_answer(stalled)  # and the stalled client still gets all of it
        assert status == 200 and len(body) == size


def test_a_slow_reader_gets_all_of_a_big_answer_and_one_that_stops_is_dropped(running, monkeypatch):
    """The write deadline is for taking nothing: a big answer to a slow link goes on as long as data moves."""
    import api.server

    monkeypatch.setattr(api.server, "WRITE_TIMEOUT", 0.5)
    size = 24 << 20
    server = running(big_app(size))
    with connect(server) as slow, connect(server) as stopped:
        slow.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        stopped.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        received = 0
        while chunk := slow.recv(1 << 20):  # a megabyte every 0.2 s: far longer than 0.5 s in all
            received += len(chunk)
            if received >= size:
                break
            time.sleep(0.2 * len(chunk) / (1 << 20))
        assert received >= size  # head and the whole body
        time.sleep(1.0)  # the stopped client has taken nothing for twice the deadline: it was dropped
        with pytest.raises((ConnectionError, OSError, AssertionError)):
            assert len(read_answer(stopped)[2]) == size


def test_a_wsgi_generator_may_start_its_response_when_first_iterated(running):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])  # PEP 3333 allows this inside the generator
        yield b"late"
        yield b" start"

    status, headers, body = ask(running(app), "/")
    assert status == 200 and body == b"late start" and headers["Connection"] == "close"


def test_keep_alive_pipelining_head_and_304(running, token):
    server = running()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=PATIENCE)
    auth = {"Authorization": token}
    connection.request("GET", "/api/v1/devices", headers=auth)
    first = connection.getresponse()
    body, tag = first.read(), first.getheader("ETag")
    assert first.status == 200 and tag and int(first.getheader("Content-Length")) == len(body)
    assert first.getheader("Transfer-Encoding") is None
    connection.request("HEAD", "/api/v1/devices", headers=auth)
    head = connection.getresponse()
    assert head.status == 200 and head.read() == b"" and head.getheader("ETag") == tag
    connection.request("GET", "/api/v1/devices", headers={**auth, "If-None-Match": tag})
    again = connection.getresponse()
    assert again.status == 304 and again.read() == b""
    connection.request("GET", "/healthz")  # still the same connection: nothing was closed
    assert connection.getresponse().status == 200
    connection.close()
    with connect(server) as sock:  # two requests in one send are answered in order
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(sock)[0] == 200
        assert read_answer(sock)[0] == 404


# -- what api/README.md promises of the server itself ---------------------------------------------------


@pytest.mark.parametrize(
    "request_line", [b"CONNECT /api/v1/devices HTTP/1.1", b"CONNECT 127.0.0.1:443 HTTP/1.1"], ids=["path", "authority"]
)
def test_connect_is_405_with_allow(running, request_line):
    status, headers, body = exchange(running(), request_line + b"\r\nHost: x\r\n\r\n")
    assert status == 405 and body["status"] == 405 and set(body) == ERROR_KEYS
    assert "GET" in headers["Allow"].split(", ") and body["details"]["allowed"] == headers["Allow"].split(", ")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET /healthz HTTP/3.0\r\n\r\n",
    ],
    ids=["http2-line", "http2-preface", "http3"],
)
def test_other_http_versions_are_400(running, request_bytes):
    status, _, body = exchange(running(), request_bytes)
    assert status == 400 and set(body) == ERROR_KEYS and "HTTP/1.1" in body["message"]


def test_plain_http_to_the_https_port_is_400(running, certificate):
    cert, key = certificate
    server = running(tls_cert=cert, tls_key=key)
    status, headers, body = exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400 and set(body) == ERROR_KEYS and "https://" in body["message"]
    # and the port still speaks TLS to the next client
    assert ask(server, "/healthz", ssl.create_default_context(cafile=cert))[0] == 200


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: 100000\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz\r\n\r\n",
        b"GET  /healthz HTTP/1.1\r\n\r\n",
    ],
    ids=[
        "obs-fold",
        "space-before-colon",
        "cl-and-te",
        "body-too-big",
        "negative-length",
        "gzip-te",
        "no-slash",
        "http-0.9",
        "double-space",
    ],  # fmt: skip
)
def test_malformed_framing_is_400(running, request_bytes):
    status, headers, body = exchange(running(), request_bytes)
    assert status == 400 and set(body) == ERROR_KEYS and headers["Connection"] == "close"


def test_small_bodies_are_read_and_the_connection_goes_on(running):
    server = running()
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert [read_answer(sock)[0] for _ in range(3)] == [200, 200, 200]


def test_connection_id_pattern_is_what_the_server_accepts(store, token):
    """The OpenAPI pattern of connectionId matches exactly the ids the server does not refuse with a 400."""
    pattern = DOCUMENT["components"]["parameters"]["connectionId"]["schema"]["pattern"]
    client = create_app(store, {"rate_limit": 0}).test_client()
    limit = 2**53
    parts = ["0", "7", "0007", str(limit), str(limit - 1), str(limit + 1), "9" * 16, "9" * 15, "0" * 16,
             "1" * 17, "9007199254740993", "9007199254740989", "8999999999999999", "9100000000000000", ""]  # fmt: skip
    for first in parts:
        for second in ("1", str(limit), str(limit + 1)):
            text = f"{first}-{second}"
            status = client.get(f"/api/v1/connections/{text}", headers={"Authorization": token}).status_code
            assert (status != 400) == bool(re.fullmatch(pattern, text)), (text, status)


# -- the HTTP layer fuzzed: whatever bytes arrive, an answer in the one shape (or a silent close), never a 500

SEEDS = [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/v1/devices/1/connections?discoveredAfter=5 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n",
    b"HEAD /api/v1/devices HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"OPTIONS /api/v1/connections/1-2 HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
]


def answers(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """Every response in ``data`` (status, head, body), Content-Length framed; the rest up to the close."""
    found = []
    while data:
        head, separator, rest = data.partition(b"\r\n\r\n")
        assert separator and head.startswith(b"HTTP/1.1 "), data[:200]
        status = int(head.split()[1])
        lengths = re.findall(rb"\r\nContent-Length: (\d+)", head)
        length = int(lengths[0]) if lengths else len(rest)
        if not rest or rest.startswith(b"HTTP/1.1 "):
            length = 0  # the answer to a HEAD (or a 304): no body, whatever its Content-Length says
        found.append((status, head, rest[:length]))
        data = rest[length:]
    return found


@pytest.fixture(scope="module")
def fuzzed_server(store):
    server = ApiServer(create_app(store, {"rate_limit": 0}), "127.0.0.1", 0, head_timeout=2.0)
    server.prepare()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.stop()
    thread.join(15)


def test_mutated_requests_get_an_answer_in_the_one_shape_or_a_close(fuzzed_server):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @st.composite
    def mutated(draw):
        data = bytearray(draw(st.sampled_from(SEEDS)))
        for _ in range(draw(st.integers(1, 4))):
            where = draw(st.integers(0, len(data)))
            kind = draw(st.sampled_from(["flip", "insert", "delete", "repeat"]))
            if kind == "flip" and where < len(data):
                data[where] = draw(st.integers(0, 255))
            elif kind == "insert":
                data[where:where] = draw(st.sampled_from([b"\r\n", b"\n", b" ", b":", b"\x00", b"\xff", b"HTTP/2.0"]))
            elif kind == "delete":
                del data[where : where + draw(st.integers(1, 8))]
            else:
                data[where:where] = data[where : where + 16] * draw(st.integers(2, 50))
        return bytes(data)

    @given(request=mutated())
    @settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def answered(request):
        with connect(fuzzed_server) as sock:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)  # the request is all there is: the server must answer or close
            data = bytearray()
            while chunk := sock.recv(65536):
                data += chunk
        for status, head, body in answers(bytes(data)):
            assert status != 500 and status < 600, (request, head)
            if status >= 400 and body:  # (a HEAD's error has none)
                assert set(json.loads(body)) == ERROR_KEYS, (request, body)

    answered()
    assert ask(fuzzed_server, "/healthz")[0] == 200  # and it still serves
