"""The admin socket (CONTRACT.md section 7): the DB holder's Unix socket, the CLI's client, and the
operator commands both run — so `otsensor token|connections|devices|status|export` print the same bytes
whether they open the file themselves or ask the daemon (`run`, `serve`, `demo`) that holds it.

Owns the socket (path, mode, peer check, protocol) and the COMMANDS table; never captures, never serves
HTTP, and never holds a lock that a flush or a capture worker waits on (each request runs in a thread of
its own, on a DuckDB cursor of its own).

Protocol, one request per connection:
    client → server   one line of JSON, at most MAX_REQUEST_BYTES: {"command": NAME, "args": {...}}
    server → client   one line of JSON, {"ok": true, "bytes": N} followed by N bytes of UTF-8 output
                      (exactly what the command prints), or {"ok": false, "error": ONE LINE}
"""

from __future__ import annotations

import errno
import importlib.metadata
import json
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import serialize

MAX_REQUEST_BYTES = 64 * 1024  # a request is a command name and a few arguments
REQUEST_SECONDS = 5.0  # a peer has this long to send its request line
REPLY_SECONDS = 120.0  # and the reply's sending may take this long (a big connections list)
MAX_CONCURRENT = 4  # requests answered at once; more are refused with "busy", never queued
SOCKET_MODE = 0o660
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class AdminError(Exception):
    """A command cannot do what was asked (one line; the CLI prints it and exits 2)."""


def version() -> str:
    """This otsensor's version, from the installed package's metadata."""
    try:
        return importlib.metadata.version("otsensor")
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def default_socket(db: str | os.PathLike) -> str:
    """The admin socket of the daemon holding ``db``: the DB's path with ``.sock`` appended."""
    return os.fspath(db) + ".sock"


# --- what the process holding the DB offers ----------------------------------------------------------
@dataclass
class Holder:
    """The process that holds the DB, as admin commands see it; ``role`` None: the CLI opened the file."""

    store: object
    role: str | None = None  # "run", "serve", "demo"
    stats: Callable[[], dict] | None = None  # the daemon's snapshot (the /healthz figures)
    settings: Callable[[], dict] | None = None  # the settings in effect now (after any SIGHUP)
    tokens_changed: Callable[[], None] = lambda: None  # the API's token cache must re-read the table
    api_url: str | None = None
    started: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Command:
    """An admin command: ``run(holder, args)`` returns exactly what the CLI prints (AdminError: exit 2)."""

    run: Callable[[Holder, dict], str]
    daemon_only: bool = False  # answered only by a running daemon (status): no file fallback
    seconds: float = 120.0  # how long the client waits for the reply


# --- the commands ---------------------------------------------------------------------------------------
def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def token_create(holder: Holder, args: dict) -> str:
    from api.auth import TokenError, create_token

    name, days = args.get("name"), args.get("expires_in_days")
    try:
        secret = create_token(holder.store, name, days)
    except TokenError as error:
        raise AdminError(str(error)) from None
    holder.tokens_changed()
    expiry = "never expires" if days is None else f"expires in {days} days"
    return f"token {name!r} created ({expiry}); it is shown only now:\n{secret}\n"


def token_list(holder: Holder, args: dict) -> str:
    from api.auth import list_tokens

    tokens = list_tokens(holder.store)
    if args.get("json"):
        return serialize.dumps(tokens) + "\n"
    lines = [f"{'NAME':<24} {'CREATED':<21} {'EXPIRES':<21} {'REVOKED':<21} STATUS"]
    for t in tokens:
        lines.append(
            f"{t['name']:<24} {_when(t['created']):<21} {_when(t['expires']):<21} {_when(t['revoked']):<21} "
            f"{t['status']}"
        )
    return "\n".join(lines) + "\n"


def token_revoke(holder: Holder, args: dict) -> str:
    from api.auth import revoke_token

    name = args.get("name")
    if not revoke_token(holder.store, name):
        raise AdminError(f"no token named {name!r} is left to revoke")
    holder.tokens_changed()
    return f"token {name!r} revoked\n"


def connections(holder: Holder, args: dict) -> str:
    where = serialize.ConnectionFilter(
        args.get("device_id"),
        args.get("last_active_in_minutes"),
        args.get("discovered_before"),
        args.get("discovered_after"),
    )
    return holder.store.connections_json(where) + "\n"  # the store's read interface: a sensor's or the console's


def devices(holder: Holder, _args: dict) -> str:
    return serialize.dumps(holder.store.devices()) + "\n"


def alerts(holder: Holder, args: dict) -> str:
    state = args.get("state")
    if state is not None and state not in serialize.ALERT_STATES:
        raise AdminError(f"--state must be handled or unhandled, not {state!r}")
    return serialize.dumps(holder.store.alerts(1, serialize.AlertFilter(state=state))) + "\n"


def alert_handle(holder: Holder, args: dict) -> str:
    from .store import NotServed  # (the holder's side: DuckDB is loaded there already)

    number = args.get("id")
    try:
        if not isinstance(number, int) or not holder.store.handle_alert(number, learn=bool(args.get("learn"))):
            raise AdminError(f"no alert {number} in {holder.store.path}")
    except NotServed as error:
        raise AdminError(str(error)) from None
    return serialize.dumps(holder.store.alerts(1, ids=[number])[0]) + "\n"


def _size(count: int) -> str:
    return f"{count / 1e6:,.1f} MB" if count >= 1e6 else f"{count / 1e3:,.1f} kB"


def _db_bytes(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + ".wal") if os.path.exists(p))


def status(holder: Holder, args: dict) -> str:
    """What is running: version, uptime, the DB, the interfaces and their packets and drops, the last flush."""
    stats = holder.stats() if holder.stats is not None else {}
    now = time.time()
    body = {
        "version": version(),
        "role": holder.role,
        "pid": os.getpid(),
        "uptimeSeconds": round(now - holder.started, 1),
        "api": holder.api_url,
        "db": {"path": os.path.abspath(holder.store.path), "bytes": _db_bytes(holder.store.path)},
        "mode": stats.get("mode", "replay"),
        "interfaces": stats.get("interfaces", []),
        "packets": stats.get("packets", 0),
        "bytes": stats.get("bytes", 0),
        "kernelDrops": stats.get("kernel_drops", 0),
        "decodeErrors": stats.get("decode_errors", {}),
        "lastFlushMs": stats.get("last_flush_ms"),
        "flushCount": stats.get("flush_count", 0),
        "pendingConnections": stats.get("pending_connections", 0),
        "settings": holder.settings() if holder.settings is not None else {},
        "problems": stats.get("problems", []),
    }
    if args.get("json"):
        return serialize.dumps(body) + "\n"
    uptime = int(body["uptimeSeconds"])
    lines = [
        f"otsensor {body['version']}: `otsensor {holder.role}` (pid {body['pid']}), up "
        f"{uptime // 86400}d {uptime % 86400 // 3600:02}:{uptime % 3600 // 60:02}:{uptime % 60:02}",
        f"DB:          {body['db']['path']} ({_size(body['db']['bytes'])})",
        f"API:         {body['api'] or '-'}",
    ]
    if body["mode"] == "live":
        for interface in body["interfaces"]:
            lines.append(
                f"interface:   {interface['name']}: {interface.get('packets', 0):,} packets, "
                f"{interface.get('drops', 0):,} dropped by the kernel"
            )
        lines.append(
            f"packets:     {body['packets']:,} ({body['bytes']:,} bytes), {body['kernelDrops']:,} kernel drops"
        )
        last = body["lastFlushMs"]
        ago = "never" if last is None else f"{serialize.rfc3339(last)} ({max(0.0, now - last / 1000):.0f} s ago)"
        lines.append(
            f"last flush:  {ago}, {body['flushCount']:,} flushes, {body['pendingConnections']:,} connections pending"
        )
    else:
        lines.append("capture:     none (the API over an existing DB)")
    for name, value in body["settings"].items():
        lines.append(f"setting:     {name} = {value!r}")
    lines.append("problems:    " + ("; ".join(body["problems"]) or "none"))
    return "\n".join(lines) + "\n"


EXPORT_FORMATS = {"parquet": "(FORMAT parquet)", "csv": "(FORMAT csv, HEADER true)", "jsonl": "(FORMAT json)"}
# Flat rows for other tools: the DB's own columns, the connection id as the API gives it and each side's IP.
EXPORT_QUERIES = {
    "devices": f"SELECT {serialize.DEVICE_COLUMNS} FROM devices ORDER BY id",
    "connections": """SELECT first_device_id::VARCHAR || '-' || second_device_id::VARCHAR AS id,
        first_device_id, second_device_id, (SELECT ip FROM devices WHERE id = first_device_id) AS first_ip,
        (SELECT ip FROM devices WHERE id = second_device_id) AS second_ip, ports, protocols, discovered,
        last_seen, packets, bytes, user_agent FROM connections ORDER BY first_device_id, second_device_id""",
    "alerts": "SELECT * FROM alerts ORDER BY 1",  # once the alerts table exists (schema version 3)
}


def export(holder: Holder, args: dict) -> str:
    """DuckDB's COPY of devices, connections (and alerts) into ``out``, one file per table."""
    kind, out = args.get("format"), args.get("out")
    if kind not in EXPORT_FORMATS:
        raise AdminError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, not {kind!r}")
    if not isinstance(out, str) or not os.path.isabs(out):
        raise AdminError(f"the export folder must be an absolute path, not {out!r}")
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AdminError(f"cannot make {folder}: {error.strerror}{_as_whom(holder)}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise AdminError(f"cannot write into {folder}{_as_whom(holder)}")
    cursor = holder.store.cursor()
    tables = {row[0] for row in cursor.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    lines = []
    for table, query in EXPORT_QUERIES.items():
        if table not in tables:
            continue
        target = folder / f"{table}.{kind}"
        try:
            cursor.execute(f"COPY ({query}) TO '{_sql_text(target)}' {EXPORT_FORMATS[kind]}")
            rows = cursor.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        except Exception as error:  # noqa: BLE001 — duckdb.IOException and kin: one line for the operator
            raise AdminError(f"cannot write {target}: {str(error).splitlines()[0]}{_as_whom(holder)}") from None
        lines.append(f"{table}: {rows:,} rows -> {target}")
    return "\n".join(lines) + "\n"


def _sql_text(path: Path) -> str:
    return str(path).replace("'", "''")


def _as_whom(holder: Holder) -> str:
    if holder.role is None:
        return ""
    import pwd

    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = str(os.geteuid())
    return f" (the daemon writes the export as user {user}: give it a folder it can write, or stop it)"


# One entry per command: the socket's dispatch and the CLI's local run read the same table.
COMMANDS: dict[str, Command] = {
    "token-create": Command(token_create),
    "token-list": Command(token_list),
    "token-revoke": Command(token_revoke),
    "connections": Command(connections),
    "devices": Command(devices),
    "alerts": Command(alerts),
    "alert-handle": Command(alert_handle),
    "status": Command(status, daemon_only=True, seconds=30.0),
    "export": Command(export, seconds=3600.0),
}


# --- the client: what the CLI calls ----------------------------------------------------------------------
def call(db: str, command: str, args: dict, socket_path: str | None = None) -> str:
    """Run ``command`` on ``db``: through the admin socket of the daemon that holds it, else on the file.

    Returns what the command prints; AdminError (one line) otherwise."""
    from .store import Store, StoreBusy, StoreError, existing_db

    entry = COMMANDS[command]
    path = socket_path or default_socket(db)
    try:
        existing_db(db)  # only replay, run and demo make a DB (the contract, section 1)
    except StoreError as error:
        raise AdminError(str(error)) from None
    reply = _ask(path, command, args, entry.seconds)
    if reply is not None:
        return reply
    if entry.daemon_only:
        raise AdminError(f"no otsensor daemon holds {db} (nothing answers on {path})")
    try:
        store = Store(db)
    except StoreBusy:
        raise AdminError(
            f"{db} is held by another process and no admin socket answers on {path}"
            " (a daemon with another admin_socket setting? give --admin-socket)"
        ) from None
    except StoreError as error:
        raise AdminError(str(error)) from None
    try:
        with store.writing():  # a full disk, a read-only file: one line, exit 2
            return entry.run(Holder(store), args)
    except StoreError as error:
        raise AdminError(str(error)) from None
    finally:
        store.close()


def _ask(path: str, command: str, args: dict, seconds: float) -> str | None:
    """The daemon's reply, or None when no daemon listens on ``path`` (missing or stale socket)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(seconds)
    try:
        try:
            client.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return None  # no socket, or one left by a daemon that was killed
        except PermissionError:
            raise AdminError(f"permission denied on {path}: {_who_may(path)}") from None
        except OSError as error:
            if error.errno in (errno.ENOTSOCK, errno.ENOENT, errno.ECONNREFUSED):
                return None
            raise AdminError(f"cannot reach the admin socket {path}: {error.strerror or error}") from None
        request = json.dumps({"command": command, "args": args}).encode() + b"\n"
        try:
            try:
                client.sendall(request)
            except BrokenPipeError:  # the daemon answered early (a refusal): its answer is still to be read
                pass
            stream = client.makefile("rb")
            header = stream.readline(MAX_REQUEST_BYTES)
            if not header.endswith(b"\n"):
                raise AdminError(f"the daemon on {path} closed the connection without an answer")
            answer = json.loads(header)
            if not answer.get("ok"):
                raise AdminError(answer.get("error") or "the daemon refused the request")
            body = stream.read(answer["bytes"])
        except TimeoutError:
            raise AdminError(f"the daemon on {path} did not answer within {seconds:g} s") from None
        except (OSError, ValueError, KeyError) as error:
            raise AdminError(f"the admin socket {path} failed: {error}") from None
        if len(body) != answer["bytes"]:
            raise AdminError(f"the daemon on {path} closed the connection mid-answer")
        return body.decode("utf-8")
    finally:
        client.close()


def _who_may(path: str) -> str:
    import grp

    try:
        group = grp.getgrgid(os.stat(path).st_gid).gr_name
    except (OSError, KeyError):
        group = "its group"
    return f"only root, the daemon's user and members of group {group} may use it"


# --- the server: in the process that holds the DB -------------------------------------------------------
class AdminServer:
    """Listens on ``path`` (mode 0660) in a thread; each request is answered in a thread of its own."""

    def __init__(self, path: str, holder: Holder, commands: dict[str, Command] | None = None) -> None:
        self.path, self.holder = path, holder
        self.commands = COMMANDS if commands is None else commands
        self._listener: socket.socket | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self._group = -1
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind (replacing a stale socket) and serve in a thread. AdminError if the path is in use."""
        self._clear_stale()
        # bind under a temporary name, set the mode, then rename into place: the socket is never
        # reachable with the umask's mode, and a replaced stale socket is swapped atomically
        temporary = f"{self.path}.{os.getpid()}.tmp"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if os.path.lexists(temporary):
                os.unlink(temporary)
            listener.bind(temporary)
            os.chmod(temporary, SOCKET_MODE)
            listener.listen(16)
            os.rename(temporary, self.path)
        except OSError as error:
            listener.close()
            if os.path.lexists(temporary):
                os.unlink(temporary)
            raise AdminError(f"cannot listen on the admin socket {self.path}: {error.strerror or error}") from None
        info = os.stat(self.path)
        self._identity, self._group = (info.st_dev, info.st_ino), info.st_gid
        listener.settimeout(0.5)  # the accept loop looks at the stop flag this often
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, name="admin-socket", daemon=True)
        self._thread.start()

    def _clear_stale(self) -> None:
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):  # connect() to a plain file is ECONNREFUSED too: never take that for stale
            raise AdminError(f"{self.path} exists and is not a socket; move it away or set admin_socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2.0)
        try:
            probe.connect(self.path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(self.path)  # left by a daemon that was killed: nobody listens
            return
        except OSError as error:
            raise AdminError(f"cannot check the admin socket {self.path}: {error.strerror or error}") from None
        finally:
            probe.close()
        raise AdminError(f"another process listens on the admin socket {self.path}")

    def stop(self) -> None:
        """Stop accepting and remove the socket file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        try:
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._identity:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.1)  # EMFILE and kin: try again, never spin
                continue
            if not self._slots.acquire(blocking=False):
                _reply_error(connection, f"busy: {MAX_CONCURRENT} admin requests are being answered; try again")
                connection.close()
                continue
            threading.Thread(target=self._answer, args=(connection,), name="admin-request", daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        try:
            connection.settimeout(REQUEST_SECONDS)
            try:
                # the request is read (bounded) before a refusal, so the peer is never cut off mid-send
                name, args = _read_request(connection)
                problem = self._refusal(connection)
                if problem:
                    raise AdminError(problem)
                entry = self.commands.get(name)
                if entry is None:
                    raise AdminError(f"unknown admin command {name!r} (known: {', '.join(self.commands)})")
                output = entry.run(self.holder, args).encode("utf-8")
            except AdminError as error:
                _reply_error(connection, str(error))
                return
            except Exception as error:  # noqa: BLE001 — a failed command answers; the daemon goes on
                _reply_error(connection, _failure(error))
                return
            connection.settimeout(REPLY_SECONDS)
            connection.sendall(json.dumps({"ok": True, "bytes": len(output)}).encode() + b"\n" + output)
        except OSError:
            pass  # the client went away
        finally:
            connection.close()
            self._slots.release()

    def _refusal(self, connection: socket.socket) -> str | None:
        """Why this peer may not use the socket (None: root, our user, or in the socket's group)."""
        pid, uid, gid = _PEERCRED.unpack(connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        if uid in (0, os.geteuid()) or gid == self._group or self._group in _groups_of(pid):
            return None
        return f"uid {uid} may not use {self.path}: {_who_may(self.path)}"


def _failure(error: Exception) -> str:
    return f"the command failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]


def _groups_of(pid: int) -> set[int]:
    """The supplementary groups of process ``pid`` (SO_PEERCRED gives only the primary one)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


def _read_request(connection: socket.socket) -> tuple[str, dict]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(MAX_REQUEST_BYTES + 1 - len(data))
        if not chunk:
            raise AdminError("the request ended before its newline")
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            raise AdminError(f"a request is at most {MAX_REQUEST_BYTES} bytes")
    try:
        request = json.loads(data)
        name, args = request["command"], request.get("args") or {}
        if not isinstance(name, str) or not isinstance(args, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise AdminError('a request is one line of JSON: {"command": NAME, "args": {...}}') from None
    return name, args


def _reply_error(connection: socket.socket, message: str) -> None:
    try:
        connection.sendall(json.dumps({"ok": False, "error": message}).encode() + b"\n")
    except OSError:
        pass
