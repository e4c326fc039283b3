"""Serving the app: cheroot, a production WSGI server with a thread pool and in-process TLS.

Owns listening, TLS and stopping; never the Flask development server. ``serve()`` blocks until
``ApiServer.stop()`` is called from another thread (the daemon's shutdown, a signal handler's waker).
"""

from __future__ import annotations

import socket
import ssl
import threading

from cheroot import errors as cheroot_errors
from cheroot import server as cheroot_server
from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from . import DEFAULT_HOST, DEFAULT_PORT, JSON_CONTENT_TYPE
from .errors import error_body

MAX_HEADER_BYTES = 64 * 1024  # request line + headers; more is a 400 from cheroot, before the app
MAX_BODY_BYTES = 64 * 1024  # the API reads no bodies


class ServeError(Exception):
    """The API cannot be served as asked (address in use, unreadable certificate, half a TLS pair)."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (all addresses of 127.0.0.1 by default)."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ServeError(f"--listen {text!r} is not HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or DEFAULT_HOST, int(port)


class _ShapedRequest(cheroot_server.HTTPRequest):
    """cheroot refuses malformed and oversized requests itself, before the app: in the one error shape too.

    Too-long request lines and headers (cheroot's 414/413) become 400s, as every other bad input is.
    """

    def simple_response(self, status, msg=""):
        code, _, reason = str(status).partition(" ")
        if not code.isdigit() or int(code) < 400:
            return super().simple_response(status, msg)
        if code in {"413", "414"}:
            code, reason = "400", "Bad Request"
            self.close_connection = True
        message = msg.decode("latin-1") if isinstance(msg, bytes) else (msg or reason)
        body = error_body(int(code), message).encode("utf-8")
        head = f"{self.server.protocol} {code} {reason}\r\nContent-Length: {len(body)}\r\nContent-Type: {JSON_CONTENT_TYPE}\r\n"
        if self.close_connection:
            head += "Connection: close\r\n"
        try:
            self.conn.wfile.write(head.encode("latin-1") + b"\r\n" + body)
        except OSError as error:
            if error.args and error.args[0] not in cheroot_errors.socket_errors_to_ignore:
                raise


class _ShapedConnection(cheroot_server.HTTPConnection):
    RequestHandlerClass = _ShapedRequest


class ApiServer:
    """One listening socket and its worker threads; ``threads`` requests are answered at once."""

    def __init__(
        self,
        app,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        threads: int = 8,
    ) -> None:
        if bool(tls_cert) != bool(tls_key):
            raise ServeError("--tls-cert and --tls-key go together: give both for HTTPS, neither for HTTP")
        self.host, self.tls = host, bool(tls_cert)
        self._server = wsgi.Server((host, port), app, numthreads=threads, server_name="otsensor", timeout=30)
        self._server.max_request_header_size = MAX_HEADER_BYTES
        self._server.max_request_body_size = MAX_BODY_BYTES
        self._server.keep_alive_conn_limit = max(64, threads * 8)  # pollers keep their connections open
        self._server.ConnectionClass = _ShapedConnection
        if self.tls:
            try:
                adapter = BuiltinSSLAdapter(tls_cert, tls_key)
            except (OSError, ssl.SSLError) as error:
                raise ServeError(f"cannot use --tls-cert {tls_cert} / --tls-key {tls_key}: {error}") from None
            adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
            self._server.ssl_adapter = adapter
        self._stopped = threading.Event()
        self._prepared = False

    def prepare(self) -> None:
        """Bind and listen; after this ``port`` is the real port (useful with port 0)."""
        try:
            self._server.prepare()
        except OSError as error:
            raise ServeError(f"cannot listen on {self.host}:{self._server.bind_addr[1]}: {error}") from None
        self._prepared = True

    @property
    def port(self) -> int:
        return self._server.bind_addr[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def serve_forever(self) -> None:
        """Answer requests until stop(); prepares first if prepare() was not called."""
        if not self._prepared:
            self.prepare()
        try:
            self._server.serve()
        finally:
            self._stopped.set()

    def stop(self) -> None:
        """Stop accepting, finish the requests in hand, and let serve_forever() return. Any thread may call it."""
        self._server.stop()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)


def serve(
    app,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    threads: int = 8,
    ready=None,
) -> None:
    """Serve ``app`` until stopped. ``ready(server)`` is called once listening: keep it to call ``stop()``."""
    server = ApiServer(app, host, port, tls_cert, tls_key, threads)
    server.prepare()
    if ready is not None:
        ready(server)
    server.serve_forever()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for tests and the benchmark)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
