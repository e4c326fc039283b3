"""Serving the app: an asyncio front that reads (and TLS-terminates) requests, a bounded pool that runs them.

Owns listening, TLS, HTTP/1.1 framing and stopping; never the Flask development server. One event-loop
thread accepts connections, does the TLS handshakes and reads each request head (and the small bodies
the API allows) without a thread per connection: a connection costs a thread only once a whole request
has arrived, while the WSGI app answers it. So slow or idle clients hold sockets, not workers; the head
must arrive within ``head_timeout`` seconds of its first byte, an idle keep-alive connection is closed
after ``idle_timeout``. The worker hands the response back to the loop, which writes it out: a client
that reads slowly holds no thread either (for bodies given in one piece, as every Flask response here is).
``serve_forever()`` blocks until ``ApiServer.stop()`` is called from another thread.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import ssl
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from http import HTTPStatus
from io import BytesIO
from urllib.parse import unquote_to_bytes

from . import DEFAULT_HOST, DEFAULT_PORT, JSON_CONTENT_TYPE
from .errors import error_body

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024  # request line + headers; more is a 400, before the app
MAX_BODY_BYTES = 64 * 1024  # the API reads no bodies
MAX_HEADERS = 100
HEAD_TIMEOUT = 10.0  # seconds from a request's first byte to its last (head and body)
IDLE_TIMEOUT = 30.0  # seconds a connection may wait, idle, for its first or next request
WRITE_TIMEOUT = 30.0  # seconds a client may take nothing of what it is sent before it is dropped
MAX_CONNECTIONS = 1000  # open connections; at the limit the one waited on longest is closed
SPARE_FILES = 256  # file descriptors kept for everything but connections (DuckDB, logs, captures)
STOP_GRACE = 10.0  # seconds stop() lets requests in hand finish
HIGH_WATER = 1 << 20  # bytes queued for a client before a streaming worker waits for it
SMALL_WRITE = 64 * 1024  # pieces up to this size (with the head) are joined into one write
TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
TLS_HANDSHAKE = 0x16  # the first byte of every TLS ClientHello record
SERVER_NAME = "otsensor"


class ServeError(Exception):
    """The API cannot be served as asked (address in use, unreadable certificate, half a TLS pair)."""


class HttpError(Exception):
    """A request the server refuses itself, before the app: answered in the one error shape, then closed."""

    def __init__(self, status: int, message: str, headers: dict | None = None, details=None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.details = status, message, headers or {}, details


def allow_connections(wanted: int) -> int:
    """Raise this process's open-file limit (up to its hard limit) for ``wanted`` connections; how many fit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    return wanted if soft == resource.RLIM_INFINITY else max(1, min(wanted, soft - SPARE_FILES))


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (all addresses of 127.0.0.1 by default)."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ServeError(f"--listen {text!r} is not HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or DEFAULT_HOST, int(port)


def error_bytes(status: int, message: str, version: str = "HTTP/1.1", headers: dict | None = None, details=None):
    """A whole response in the error shape, closing the connection."""
    body = error_body(status, message, details).encode("utf-8")
    lines = [
        f"{version} {status} {HTTPStatus(status).phrase}",
        f"Content-Length: {len(body)}",
        f"Content-Type: {JSON_CONTENT_TYPE}",
        "Connection: close",
        f"Date: {formatdate(usegmt=True)}",
        f"Server: {SERVER_NAME}",
        "X-Content-Type-Options: nosniff",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# -- reading a request ---------------------------------------------------------------------------


class Request:
    """A whole request as read off the wire: what the app sees, and whether the connection may go on."""

    def __init__(self, method: str, target: str, version: str, headers: list[tuple[str, str]]) -> None:
        self.method, self.target, self.version, self.headers = method, target, version, headers
        self.body = b""

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name]
        return ", ".join(values) if values else None

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in (self.header("connection") or "").split(",")}
        if self.version == "HTTP/1.1":
            return "close" not in tokens
        return "keep-alive" in tokens


async def read_head(reader: asyncio.StreamReader, first: bytes) -> list[bytes]:
    """The request line and header lines (CRLF or bare LF ends them), at most MAX_HEADER_BYTES in all."""
    lines: list[bytes] = []
    size = 0
    pending = b"" if first == b"\n" else first  # the byte that told a request was coming
    while True:
        try:
            line = pending + await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise HttpError(400, f"Request line and headers exceed {MAX_HEADER_BYTES} bytes") from None
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("client closed mid-request") from None
        pending = b""
        size += len(line)
        if size > MAX_HEADER_BYTES:
            raise HttpError(400, f"Request line and headers exceed {MAX_HEADER_BYTES} bytes")
        line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        if not line:
            if lines:
                return lines
            continue  # RFC 9112 2.2: empty lines before the request line are ignored
        lines.append(line)
        if len(lines) > MAX_HEADERS + 1:
            raise HttpError(400, f"More than {MAX_HEADERS} header fields")


def parse_head(lines: list[bytes]) -> Request:
    """RFC 9112 request line and fields, strictly: anything malformed is a 400."""
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise HttpError(400, "Malformed request line")
    method, target, version = parts
    if not set(method) <= TOKEN:
        raise HttpError(400, "Malformed request method")
    if not (version.startswith(b"HTTP/") and len(version) == 8 and version[5:6].isdigit() and version[6:7] == b"."):
        raise HttpError(400, "Malformed HTTP version")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HttpError(400, f"{version.decode('latin-1')} is not supported: this server speaks HTTP/1.1")
    if any(byte <= 0x20 or byte == 0x7F for byte in target):
        raise HttpError(400, "Malformed request target")
    headers = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise HttpError(400, "Obsolete line folding in a header field")  # RFC 9112 5.2
        name, colon, value = line.partition(b":")
        if not colon or not name or not set(name) <= TOKEN:
            raise HttpError(400, "Malformed header field")
        headers.append((name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")))
    return Request(method.decode("ascii"), target.decode("latin-1"), version.decode("ascii"), headers)


async def read_body(reader: asyncio.StreamReader, request: Request, writer: asyncio.StreamWriter) -> None:
    """Read a body of at most MAX_BODY_BYTES (Content-Length or chunked); the app never needs one."""
    lengths = [v for k, v in request.headers if k == "content-length"]
    coding = request.header("transfer-encoding")
    if coding is not None and lengths:
        raise HttpError(400, "Both Transfer-Encoding and Content-Length")  # RFC 9112 6.1: a smuggling attempt
    if coding is None and not lengths:
        return
    if coding is not None and coding.strip().lower() != "chunked":
        raise HttpError(400, f"Transfer-Encoding {coding[:50]!r} is not supported")
    if lengths and (len(set(lengths)) != 1 or not (lengths[0].isascii() and lengths[0].isdigit())):
        raise HttpError(400, "Malformed Content-Length")
    if lengths and int(lengths[0]) > MAX_BODY_BYTES:
        raise HttpError(400, f"Request bodies are limited to {MAX_BODY_BYTES} bytes")
    if (request.header("expect") or "").lower() == "100-continue" and request.version == "HTTP/1.1":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    try:
        if lengths:
            request.body = await reader.readexactly(int(lengths[0]))
            return
        chunks, size = [], 0
        while True:
            line = (await reader.readuntil(b"\n")).split(b";")[0].strip()
            try:
                length = int(line, 16)
            except ValueError:
                raise HttpError(400, "Malformed chunk size") from None
            size += length
            if length < 0 or size > MAX_BODY_BYTES:
                raise HttpError(400, f"Request bodies are limited to {MAX_BODY_BYTES} bytes")
            if length == 0:
                while (await reader.readuntil(b"\n")).strip():  # trailer fields, ignored
                    pass
                request.body = b"".join(chunks)
                return
            chunks.append(await reader.readexactly(length))
            await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise HttpError(400, "Malformed chunked body") from None
    except asyncio.IncompleteReadError:
        raise ConnectionResetError("client closed mid-body") from None


# -- answering it ----------------------------------------------------------------------------------


class Exchange:
    """One request's answer, written by a worker thread through the event loop that owns the socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, writer: asyncio.StreamWriter, request: Request) -> None:
        self.loop, self.writer, self.request = loop, writer, request
        self.close_after = not request.keep_alive
        self.head_sent = False

    def send(self, data: bytes, wait: bool) -> None:
        """Queue ``data`` on the socket; with ``wait``, until the client has taken all but HIGH_WATER of it."""
        if wait:
            future = asyncio.run_coroutine_threadsafe(self._write_and_drain(data), self.loop)
            future.result(WRITE_TIMEOUT)
        else:
            self.loop.call_soon_threadsafe(self.writer.write, data)  # in order: the loop runs callbacks FIFO

    async def _write_and_drain(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


def _status_code(status: str) -> int:
    code = status.split(" ", 1)[0]
    return int(code) if code.isdigit() else 500


def run_app(app, environ: dict, exchange: Exchange) -> None:
    """In a worker thread: call the WSGI app and hand its answer to the loop, never chunked.

    A body of known length (Content-Length, or a list of pieces, as every Flask response is) keeps the
    connection alive; one of unknown length is sent until the connection closes (HTTP/1.0 framing).
    """
    request = exchange.request
    started: list = []

    def start_response(status, headers, exc_info=None):
        if exc_info and exchange.head_sent:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return lambda data: None  # the legacy write() callable: nothing here uses it

    try:
        result = app(environ, start_response)
    except Exception:  # noqa: BLE001 — the app's own handler answers its errors; this is a last resort
        log.exception("the app failed on %s %s", request.method, request.target[:200])
        exchange.close_after = True
        exchange.send(error_bytes(500, "Internal error; the sensor's log has the details"), False)
        return
    try:
        pieces_in = iter(result)
        if not started:  # a generator may call start_response only when first iterated (PEP 3333)
            pieces_in = itertools.chain([next(pieces_in, b"")], pieces_in)
        status, headers = started
        code = _status_code(status)
        bodyless = request.method == "HEAD" or code in (204, 304) or code < 200
        names = {name.lower() for name, _ in headers}
        pieces = None
        if "content-length" not in names and not bodyless:
            if isinstance(result, (list, tuple)):
                pieces = list(pieces_in)
                headers = [*headers, ("Content-Length", str(sum(len(p) for p in pieces)))]
            else:
                exchange.close_after = True  # unknown length, and no chunked coding: the close ends the body
        head = [f"HTTP/1.1 {status}"]
        head += [f"{name}: {value}" for name, value in headers if name.lower() != "connection"]
        if "date" not in names:
            head.append(f"Date: {formatdate(usegmt=True)}")
        if "server" not in names:
            head.append(f"Server: {SERVER_NAME}")
        if exchange.close_after:
            head.append("Connection: close")
        elif request.version == "HTTP/1.0":
            head.append("Connection: keep-alive")
        head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        # one piece of lookahead: only the last piece is queued without waiting for the client; small
        # pieces go with the head (one hand-over to the loop for a typical answer)
        previous = head_bytes
        exchange.head_sent = True
        for piece in pieces if pieces is not None else pieces_in:
            if bodyless or not piece:
                continue
            if len(previous) + len(piece) <= SMALL_WRITE:
                previous += bytes(piece)
                continue
            exchange.send(previous, True)
            previous = bytes(piece)
        exchange.send(previous, False)
    except Exception:  # noqa: BLE001 — a failure while streaming: the answer cannot be finished
        log.exception("failed answering %s %s", request.method, request.target[:200])
        exchange.close_after = True
        if not exchange.head_sent:
            exchange.send(error_bytes(500, "Internal error; the sensor's log has the details"), False)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()  # Flask's teardown runs here


# -- the server --------------------------------------------------------------------------------------


class ApiServer:
    """One listening socket, one event-loop thread for all connections, ``threads`` workers for the app."""

    def __init__(
        self,
        app,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        threads: int = 8,
        *,
        head_timeout: float = HEAD_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if bool(tls_cert) != bool(tls_key):
            raise ServeError("--tls-cert and --tls-key go together: give both for HTTPS, neither for HTTP")
        self.app, self.host, self._port, self.threads = app, host, port, max(1, threads)
        self.head_timeout, self.idle_timeout, self.max_connections = head_timeout, idle_timeout, max_connections
        self.tls: ssl.SSLContext | None = None
        if tls_cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                context.load_cert_chain(tls_cert, tls_key)
            except (OSError, ssl.SSLError) as error:
                raise ServeError(f"cannot use --tls-cert {tls_cert} / --tls-key {tls_key}: {error}") from None
            self.tls = context
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()
        # task -> since when it waits on its client (monotonic), or None while a request of it is in the app
        self._connections: dict[asyncio.Task, float | None] = {}

    def prepare(self) -> None:
        """Bind and listen; after this ``port`` is the real port (useful with port 0)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            self._listener = socket.create_server((self.host, self._port), family=family, backlog=1024)
        except OSError as error:
            raise ServeError(f"cannot listen on {self.host}:{self._port}: {error}") from None
        self._listener.setblocking(False)
        self._port = self._listener.getsockname()[1]
        self.max_connections = allow_connections(self.max_connections)

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def serve_forever(self) -> None:
        """Answer requests until stop(); prepares first if prepare() was not called."""
        if self._listener is None:
            self.prepare()
        try:
            if not self._stop_requested.is_set():
                asyncio.run(self._main())
        finally:
            self._listener.close()
            self._stopped.set()

    def stop(self) -> None:
        """Stop accepting, finish the requests in hand, and let serve_forever() return. Any thread may call it."""
        with self._lock:
            self._stop_requested.set()
            loop, wake = self._loop, self._wake
        if loop is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop has already ended
                pass
        elif self._listener is not None and not self._stopped.is_set():
            self._listener.close()  # prepared but never served

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    # -- inside the event loop -----------------------------------------------------------------

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_exception_handler)
        with self._lock:
            self._loop, self._wake = loop, asyncio.Event()
            if self._stop_requested.is_set():
                self._wake.set()
        self._room = asyncio.Event()
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="otsensor-api")
        accepting = asyncio.create_task(self._accept())
        try:
            await self._wake.wait()
        finally:
            accepting.cancel()
            self._listener.close()
            for task, waiting in list(self._connections.items()):
                if waiting is not None:
                    task.cancel()  # idle or still reading: nothing in hand to finish
            if self._connections:
                await asyncio.wait(list(self._connections), timeout=STOP_GRACE)
            for task in list(self._connections):
                task.cancel()
            if self._connections:
                await asyncio.wait(list(self._connections), timeout=1.0)
            # off the loop: a worker streaming a body waits on the loop until its connection is closed
            ending = asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)
            try:
                await asyncio.wait_for(ending, STOP_GRACE)
            except TimeoutError:
                log.warning("API workers still busy after %g s; leaving them", STOP_GRACE)
            with self._lock:
                self._loop = None

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while len(self._connections) >= self.max_connections:
                self._room.clear()
                self._drop_longest_waiting()
                await self._room.wait()  # meanwhile the next ones wait in the kernel's backlog
            try:
                sock, address = await loop.sock_accept(self._listener)
            except OSError as error:  # out of file descriptors, or a connection reset before accept
                log.warning("accepting a connection failed: %s", error)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._connection(sock, address))
            self._connections[task] = time.monotonic()
            task.add_done_callback(self._forget)

    def _drop_longest_waiting(self) -> None:
        """At the connection limit, close the connection that has kept the server waiting longest.

        Slow and idle clients cannot keep new ones out: the oldest of them goes first, while a poller
        that was just answered (its wait starts anew) and requests in the app are never dropped.
        """
        waiting = [(since, task) for task, since in self._connections.items() if since is not None]
        waiting = [(since, task) for since, task in waiting if not task.cancelling()]
        if waiting:
            min(waiting, key=lambda pair: pair[0])[1].cancel()

    def _forget(self, task: asyncio.Task) -> None:
        self._connections.pop(task, None)
        self._room.set()

    async def _connection(self, sock: socket.socket, address) -> None:
        writer = None
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            async with asyncio.timeout(self.idle_timeout):
                first = await _peek(sock)
            if not first:
                return
            plain_to_tls = self.tls is not None and first[0] != TLS_HANDSHAKE
            reader, writer = await self._streams(sock, None if plain_to_tls or self.tls is None else self.tls)
            if plain_to_tls:
                await self._refuse(reader, writer, HttpError(400, "This port speaks HTTPS only: use https://"))
                return
            await self._requests(reader, writer, address)
        except (TimeoutError, OSError, ssl.SSLError, asyncio.IncompleteReadError):
            # the client went away, timed out, stopped reading or failed its TLS handshake: nothing to answer,
            # and nothing queued for it is worth sending any more
            if writer is not None:
                writer.transport.abort()
        except Exception:  # noqa: BLE001 — one connection's failure must never end the server
            log.exception("connection from %s failed", address)
        finally:
            if writer is not None:
                writer.close()
            else:
                sock.close()

    async def _streams(self, sock: socket.socket, context: ssl.SSLContext | None):
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_HEADER_BYTES + 2, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        extra = {"ssl": context, "ssl_handshake_timeout": self.head_timeout} if context is not None else {}
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock, **extra)
        transport.set_write_buffer_limits(high=HIGH_WATER)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address) -> None:
        """Requests one after another on a keep-alive connection, each read whole before the app sees it."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        while not self._stop_requested.is_set():
            async with asyncio.timeout(self.idle_timeout):
                first = await reader.read(1)
            if not first:
                return
            try:
                async with asyncio.timeout(self.head_timeout):  # the whole head (and body) in this time
                    request = parse_head(await read_head(reader, first))
                    await read_body(reader, request, writer)
            except TimeoutError:
                await self._refuse(
                    reader, writer, HttpError(408, f"Request not received within {self.head_timeout:g} s")
                )
                return
            except HttpError as error:
                await self._refuse(reader, writer, error)
                return
            try:
                environ = self._environ(request, address, writer)
            except HttpError as error:
                await self._refuse(reader, writer, error)
                return
            exchange = Exchange(loop, writer, request)
            self._connections[task] = None
            try:
                await loop.run_in_executor(self._pool, run_app, self.app, environ, exchange)
            finally:
                self._connections[task] = time.monotonic()
            await _drain(writer)  # the client reads its answer before its next request is read
            if exchange.close_after:
                await _close_gently(reader, writer)
                return

    def _environ(self, request: Request, address, writer: asyncio.StreamWriter) -> dict:
        target = request.target
        if request.method == "CONNECT" and not target.startswith("/"):
            # authority-form (host:port) asks for a tunnel, which this server never makes (RFC 9110 9.3.6)
            allowed = ["GET", "HEAD", "OPTIONS"]
            raise HttpError(
                405, "Method CONNECT is not allowed here", {"Allow": ", ".join(allowed)}, {"allowed": allowed}
            )
        if target.startswith(("http://", "https://")):  # absolute-form (RFC 9112 3.2.2): its path is the target
            slash = target.find("/", target.index("//") + 2)
            target = "/" if slash < 0 else target[slash:]
        if not target.startswith("/"):
            raise HttpError(400, "The request target must be a path")
        path, _, query = target.partition("?")
        environ = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "REQUEST_URI": request.target,
            "RAW_URI": request.target,
            "SERVER_NAME": self.host,
            "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": request.version,
            "REMOTE_ADDR": address[0],
            "REMOTE_PORT": str(address[1]),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if self.tls else "http",
            "wsgi.input": BytesIO(request.body),
            "wsgi.input_terminated": True,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "CONTENT_LENGTH": str(len(request.body)) if request.body else "",
        }
        for name, value in request.headers:
            if "_" in name:
                continue  # X_Forwarded_For would land on the same key as X-Forwarded-For: drop it, as nginx does
            if name == "content-type":
                environ["CONTENT_TYPE"] = value
            elif name not in ("content-length", "transfer-encoding"):
                key = "HTTP_" + name.upper().replace("-", "_")
                environ[key] = f"{environ[key]}, {value}" if key in environ else value
        return environ

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, error: HttpError) -> None:
        writer.write(error_bytes(error.status, error.message, headers=error.headers, details=error.details))
        await _close_gently(reader, writer)


async def _drain(writer: asyncio.StreamWriter) -> None:
    """Wait until the client has taken what is queued for it; TimeoutError if it takes nothing for WRITE_TIMEOUT.

    A big answer over a slow link may take minutes: only a client that stops reading is dropped.
    """
    while True:
        queued = writer.transport.get_write_buffer_size()
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
            return
        except TimeoutError:
            if writer.transport.get_write_buffer_size() >= queued:
                raise


async def _peek(sock: socket.socket) -> bytes:
    """The first byte the client sends, left in the socket (TLS or not is decided on it)."""
    loop = asyncio.get_running_loop()
    readable = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: readable.done() or readable.set_result(None))
    try:
        await readable
    finally:
        loop.remove_reader(sock.fileno())
    return sock.recv(1, socket.MSG_PEEK)


async def _close_gently(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send what is queued, then read what the client still sends for a moment before closing.

    Closing a socket with unread data makes the kernel send a reset, which can destroy the answer
    before the client reads it; so the answer goes first, then the rest of the request is discarded.
    """
    try:
        async with asyncio.timeout(2.0):
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            discarded = 0
            while discarded < 4 * MAX_HEADER_BYTES and (data := await reader.read(65536)):
                discarded += len(data)
    except (TimeoutError, OSError, ssl.SSLError):
        pass


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """Clients that reset or fail TLS are routine for a server: debug, not error, in the log."""
    if isinstance(context.get("exception"), (OSError, ssl.SSLError)):
        log.debug("%s: %s", context.get("message"), context.get("exception"))
        return
    loop.default_exception_handler(context)


def serve(
    app,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    threads: int = 8,
    ready=None,
    **options,
) -> None:
    """Serve ``app`` until stopped. ``ready(server)`` is called once listening: keep it to call ``stop()``."""
    server = ApiServer(app, host, port, tls_cert, tls_key, threads, **options)
    server.prepare()
    if ready is not None:
        ready(server)
    server.serve_forever()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for tests and the benchmark)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
