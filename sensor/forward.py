"""Alerts to a SIEM: each alert as a CEF event in an RFC 5424 syslog message, over UDP, TCP or TLS.

Owns the bounded send queue, its spool file and the connection to the collector; never reads the DB,
never blocks the caller (``send`` only queues), never transmits on a capture interface.

Delivery is at least once over TCP/TLS: an alert leaves the queue only when the collector's socket has
taken it; while the collector is down the queue is written to ``forward-spool.jsonl`` in the state
directory (at each failed attempt and at close) and read back at the next start. When the queue is full,
the *oldest* queued alert is dropped (``dropped_overflow``): the newest alerts say the most about the
plant now. Over UDP delivery is best effort (a datagram lost on the way is not known to be lost).
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

from . import __version__
from .settings import SettingsError, forwarding_settings

log = logging.getLogger(__name__)

SPOOL_NAME = "forward-spool.jsonl"
CONNECT_TIMEOUT = 5.0
TLS_SETTLE = 0.3  # seconds a fresh TLS connection is watched for the collector refusing the client
FIRST_RETRY = 0.25  # seconds before the first retry; doubled after each failure up to retry_max_seconds
UDP_MAX = 65507  # the largest UDP payload over IPv4

# CEF severity 0..10 (0-3 low, 4-6 medium, 7-8 high, 9-10 very high) and syslog severity (RFC 5424
# section 6.2.1: 2 critical, 3 error, 4 warning, 5 notice) for Defender for IoT's alert severities.
CEF_SEVERITY = {"Warning": 3, "Minor": 5, "Major": 8, "Critical": 10}
SYSLOG_SEVERITY = {"Warning": 5, "Minor": 4, "Major": 3, "Critical": 2}


# ---- CEF (ArcSight Common Event Format, revision 25) ------------------------------------------------


def cef_header_field(value) -> str:
    """A header field: backslash and pipe escaped; a header holds no line breaks (they become spaces)."""
    text = str(value).replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def cef_extension_value(value) -> str:
    """An extension value: backslash and equals sign escaped, line breaks written as \\n and \\r."""
    text = str(value).replace("\\", "\\\\").replace("=", "\\=")
    return text.replace("\r\n", "\\n").replace("\r", "\\r").replace("\n", "\\n")


def _address_keys(address: str | None, v4_key: str, v6_key: str) -> list[tuple[str, str]]:
    # src/dst take IPv4 only; CEF's IPv6 fields are c6a2 (source) and c6a3 (destination)
    if not address:
        return []
    return [(v6_key, address)] if ":" in address else [(v4_key, address)]


def signature_id(title: str) -> str:
    """A stable id for an alert type, from its title: ``PLC Stop command`` -> ``plc-stop-command``."""
    return "-".join(str(title).lower().split()) or "alert"


def cef(alert: dict) -> str:
    """The CEF event of one alert (Defender for IoT's v1 fields plus the device addresses)."""
    severity = alert.get("severity", "")
    title = alert.get("title", "")
    info = alert.get("additionalInformation") or {}
    extension: list[tuple[str, object]] = [("rt", alert.get("time", "")), ("externalId", alert.get("id", ""))]
    extension += [("cat", alert.get("engine", "")), ("cs1Label", "engine"), ("cs1", alert.get("engine", ""))]
    extension += _address_keys(alert.get("sourceDeviceAddress"), "src", "c6a2")
    extension += _address_keys(alert.get("destinationDeviceAddress"), "dst", "c6a3")
    if alert.get("sourceDevice") is not None:
        extension += [("cn1Label", "sourceDevice"), ("cn1", alert["sourceDevice"])]
    if alert.get("destinationDevice") is not None:
        extension += [("cn2Label", "destinationDevice"), ("cn2", alert["destinationDevice"])]
    if info.get("description"):
        extension += [("cs2Label", "description"), ("cs2", info["description"])]
    if info.get("information"):
        extension += [("cs3Label", "information"), ("cs3", "\n".join(map(str, info["information"])))]
    extension += [("cs4Label", "handled"), ("cs4", "true" if alert.get("handled") else "false")]
    extension.append(("msg", alert.get("message", "")))  # last: the longest, free text
    header = ["CEF:0", "otsensor", "otsensor", __version__, signature_id(title), title, CEF_SEVERITY.get(severity, 5)]
    head = "|".join([header[0]] + [cef_header_field(field) for field in header[1:]])
    return head + "|" + " ".join(f"{key}={cef_extension_value(value)}" for key, value in extension)


# ---- RFC 5424 syslog message and RFC 6587 framing ---------------------------------------------------


def _header_token(value: str, limit: int) -> str:
    """A header field of RFC 5424 section 6: PRINTUSASCII (33..126) only, at most ``limit`` long; "-" if empty."""
    token = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return token or "-"


def syslog_message(alert: dict, *, facility: int, hostname: str, app_name: str, procid: int) -> bytes:
    """``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG``; the timestamp is the alert's own time
    (its triggering packet's), so a message re-sent after an outage reads the same."""
    pri = facility * 8 + SYSLOG_SEVERITY.get(alert.get("severity", ""), 5)
    try:
        stamp = datetime.fromtimestamp(int(alert["time"]) / 1000, UTC)
        timestamp = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        timestamp = "-"  # NILVALUE: an alert without a usable time
    host = _header_token(hostname, 255)
    head = f"<{pri}>1 {timestamp} {host} {_header_token(app_name, 48)} {procid} alert - "
    return head.encode("ascii") + cef(alert).encode("utf-8")


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 section 3.4.1 (and RFC 5425 section 4.3 for TLS): ``MSG-LEN SP SYSLOG-MSG``."""
    return b"%d %s" % (len(message), message)


# ---- the forwarder ---------------------------------------------------------------------------------


class Forwarder:
    """Sends each alert given to :meth:`send` to the collector of ``settings`` (the ``[forwarding]`` table)."""

    def __init__(self, settings: dict, state_dir: str | Path):
        config = forwarding_settings(settings, "[forwarding]")
        self.scheme, self.host, self.port = config["scheme"], config["host"], config["port"]
        self.facility = config["facility"]
        self.app_name = config["app_name"]
        self.hostname = config["hostname"] or socket.gethostname()
        self.queue_limit = config["queue_limit"]
        self.retry_max = config["retry_max_seconds"]
        self._tls = self._tls_context(config) if self.scheme == "tls" else None
        self.spool = Path(state_dir) / SPOOL_NAME
        self._queue: deque[dict] = deque()
        self._lock = threading.Condition()  # guards the queue, the counts and the flags below
        self._spool_lock = threading.Lock()
        self._counts = {"sent": 0, "retried": 0, "dropped_overflow": 0}
        self._last_error: str | None = None
        self._changed = False  # the queue differs from the spool file
        self._closing = False
        self._deadline = float("inf")
        self._sock: socket.socket | None = None
        self._load_spool()
        self._worker = threading.Thread(target=self._run, name="otsensor-forward", daemon=True)
        self._worker.start()

    @classmethod
    def from_settings(cls, settings, state_dir: str | Path) -> Forwarder | None:
        """A forwarder for the ``forwarding`` table of ``settings`` (a dict or the daemon's Settings), or
        None when there is no such table or it names no target."""
        section = settings.get("forwarding") if isinstance(settings, dict) else getattr(settings, "forwarding", None)
        if not section or not section.get("target"):
            return None
        return cls(section, state_dir)

    # -- the caller's side --------------------------------------------------------------------------

    def send(self, alert: dict) -> None:
        """Queue ``alert``; never blocks on the network. A full queue drops its oldest alert."""
        with self._lock:
            if self._closing:
                raise RuntimeError("the forwarder is closed")
            self._append(alert)
            self._lock.notify()

    def close(self, timeout: float = 5) -> None:
        """Deliver what is queued within ``timeout`` seconds, then write what is left to the spool."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._lock.notify_all()
        self._worker.join(timeout + CONNECT_TIMEOUT)
        self._persist(force=True)
        self._disconnect()

    def stats(self) -> dict:
        with self._lock:
            return {**self._counts, "queued": len(self._queue), "last_error": self._last_error}

    # -- the queue and its spool -------------------------------------------------------------------

    def _append(self, alert: dict) -> None:  # the caller holds self._lock
        if len(self._queue) >= self.queue_limit:
            self._queue.popleft()
            self._counts["dropped_overflow"] += 1
        self._queue.append(alert)
        self._changed = True

    def _load_spool(self) -> None:
        try:
            lines = self.spool.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as error:
            self._last_error = f"cannot read {self.spool}: {error}"
            return
        for line in lines:
            try:
                alert = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash while the file was written elsewhere
            if isinstance(alert, dict):
                self._append(alert)
        self._changed = False

    def _persist(self, force: bool = False) -> None:
        """Write the queue to the spool: a snapshot taken under the queue's lock, written outside it (so
        that send() never waits for the disk), atomically (a crash leaves the old file or the new one)."""
        with self._spool_lock:  # one writer at a time, so that an older snapshot never lands last
            with self._lock:
                if not (self._changed or force):
                    return
                snapshot, self._changed = list(self._queue), False
            try:
                if not snapshot:
                    self.spool.unlink(missing_ok=True)
                else:
                    self.spool.parent.mkdir(parents=True, exist_ok=True)
                    partial = self.spool.with_suffix(".tmp")
                    partial.write_text("".join(json.dumps(a, separators=(",", ":")) + "\n" for a in snapshot))
                    os.replace(partial, self.spool)
            except (OSError, TypeError, ValueError) as error:  # disk full; an alert JSON cannot hold
                with self._lock:
                    self._changed = True
                    self._last_error = f"cannot write {self.spool}: {error}"

    # -- the worker ---------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = FIRST_RETRY
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if not self._queue or time.monotonic() >= self._deadline:
                    return
                alert = self._queue[0]
            try:
                self._deliver(alert)
            except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
                self._disconnect()
                with self._lock:
                    self._counts["retried"] += 1
                    self._last_error = f"{self.scheme}://{self.host}:{self.port}: {error}"
                self._persist()  # the collector is away: what is queued is kept on disk meanwhile
                with self._lock:  # new alerts do not cut the wait short; close() does, to use its time
                    closing, until = self._closing, time.monotonic() + delay
                    while (left := min(until, self._deadline) - time.monotonic()) > 0 and self._closing == closing:
                        self._lock.wait(left)
                delay = min(delay * 2, self.retry_max)
                continue
            delay = FIRST_RETRY
            with self._lock:
                if self._queue and self._queue[0] is alert:
                    self._queue.popleft()
                self._counts["sent"] += 1
                self._changed = True
                drained = not self._queue
            if drained:
                self._persist()  # nothing left: the spool goes

    def _deliver(self, alert: dict) -> None:
        message = syslog_message(
            alert, facility=self.facility, hostname=self.hostname, app_name=self.app_name, procid=os.getpid()
        )
        sock = self._connected()
        if self.scheme == "udp":
            sock.send(message[:UDP_MAX])  # an error here is the ICMP of an earlier datagram: retried
        else:
            sock.sendall(octet_counted(message))

    def _connected(self) -> socket.socket:
        """The socket to the collector, opened when needed; a stream the collector closed is reopened."""
        if self._sock is not None and self.scheme != "udp" and self._peer_closed(self._sock):
            self._disconnect()
        if self._sock is None:
            timeout = max(0.1, min(CONNECT_TIMEOUT, self._deadline - time.monotonic()))
            if self.scheme == "udp":
                family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
                sock = socket.socket(family[0], socket.SOCK_DGRAM)
                sock.connect(family[4])
            else:
                sock = socket.create_connection((self.host, self.port), timeout=timeout)
                if self._tls is not None:
                    try:
                        sock = self._tls.wrap_socket(sock, server_hostname=self.host)
                        refused = self._refused_after_handshake(sock)
                    except BaseException:
                        sock.close()
                        raise
                    if refused:
                        sock.close()
                        raise ConnectionError("the collector closed the TLS connection after the handshake (certificate refused?)")  # fmt: skip
            sock.settimeout(CONNECT_TIMEOUT)  # a collector that stops reading does not hang us for ever
            self._sock = sock
        return self._sock

    @staticmethod
    def _peer_closed(sock: socket.socket) -> bool:
        """Whether a syslog collector (which never writes) has closed the stream: it is then readable,
        and reading gives the end of the stream. Checked before each write, because the first write
        after the peer's close succeeds locally and is lost."""
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        sock.settimeout(0)
        try:
            return sock.recv(4096) == b""
        except (ssl.SSLWantReadError, BlockingIOError):
            return False  # a TLS record with no data (a session ticket): still open
        except OSError:
            return True
        finally:
            sock.settimeout(CONNECT_TIMEOUT)

    @staticmethod
    def _refused_after_handshake(sock: ssl.SSLSocket) -> bool:
        """Whether the collector closes a fresh TLS connection. In TLS 1.3 the server checks the client's
        certificate after the client has finished its handshake, so a refusal shows only as an alert or
        a close that follows; without this wait the first alert written would be lost."""
        until = time.monotonic() + TLS_SETTLE
        while (left := until - time.monotonic()) > 0:
            readable, _, _ = select.select([sock], [], [], left)
            if not readable:
                return False
            sock.settimeout(0)
            try:
                if sock.recv(4096) == b"":
                    return True
            except (ssl.SSLWantReadError, BlockingIOError):
                continue  # a record with no data (a session ticket): keep listening
            except OSError:
                return True
            finally:
                sock.settimeout(CONNECT_TIMEOUT)
        return False

    def _disconnect(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    @staticmethod
    def _tls_context(config: dict) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=config["ca_file"])
            if config["cert_file"]:
                context.load_cert_chain(config["cert_file"], config["key_file"])
        except (OSError, ssl.SSLError) as error:
            raise SettingsError(f"[forwarding]: cannot load the TLS files: {error}") from None
        return context
