"""The API's commands of `otsensor` — serve, demo, token — for sensor.cli to mount.

Owns these commands' flags, output and exit statuses; never parses the whole command line (sensor.cli
does: ``add_commands(subparsers)`` adds them, ``COMMANDS`` maps each name to its handler, and a
``CommandError`` is a usage error, exit 2).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import socket
import sys
import threading
from importlib import resources
from pathlib import Path

from sensor.store import Store, existing_db

from . import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_SETTINGS

# Flask, the server and prometheus-client are imported by the handlers that need them, not on every `otsensor`

DEFAULT_DB = "otsensor.duckdb"
DEMO_DB = "otsensor-demo.duckdb"
DEMO_TOKEN = "demo"
DEFAULT_THREADS = 8
ROOT = Path(__file__).resolve().parent.parent
# a source tree's pcaps/, then the installed package's copy (sensor/data/pcaps, a link to pcaps/ in the tree;
# MANIFEST.in puts the captures, not pcaps/bad/, in the wheel)
BUNDLED_PCAPS = (ROOT / "pcaps", Path(str(resources.files("sensor") / "data" / "pcaps")))


class CommandError(Exception):
    """A usage error or unusable input: sensor.cli prints it on one line and exits 2."""


def _non_negative(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return int(text)


def _serving_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        default=f"{DEFAULT_HOST}:{DEFAULT_PORT}",
        metavar="HOST:PORT",
        help=f"address to serve on (default {DEFAULT_HOST}:{DEFAULT_PORT}; 0.0.0.0:PORT for every address)",
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="PEM certificate: with --tls-key, serve HTTPS only")
    parser.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    parser.add_argument(
        "--api-threads",
        type=_non_negative,
        default=DEFAULT_THREADS,
        metavar="N",
        help=f"API requests answered at once (default {DEFAULT_THREADS}; as `otsensor run --api-threads`)",
    )
    # the spelling of earlier releases, kept working but no longer shown
    parser.add_argument(
        "--threads", dest="api_threads", type=_non_negative, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--rate-limit",
        type=_non_negative,
        default=DEFAULT_SETTINGS["rate_limit"],
        metavar="N",
        help="API requests per token per --rate-window; 0 turns it off (default %(default)s)",
    )
    parser.add_argument(
        "--rate-window",
        type=_non_negative,
        default=int(DEFAULT_SETTINGS["rate_window"]),
        metavar="SECONDS",
        help="the rate limit's window in seconds (default %(default)s)",
    )
    parser.add_argument(
        "--admin-socket",
        metavar="PATH",
        help="the admin socket that token, connections, devices, status and export use (default: DB + .sock)",
    )


def add_commands(commands) -> None:
    """Add serve, demo and token to sensor.cli's subparsers."""
    serve = commands.add_parser("serve", help="serve the API over an existing DB (no capture)")
    serve.add_argument("--db", default=DEFAULT_DB, help="the DuckDB file (default %(default)s; must exist)")
    _serving_flags(serve)

    demo = commands.add_parser("demo", help="replay the bundled captures, make a token and serve the API")
    _serving_flags(demo)
    demo.add_argument("--pcaps", metavar="DIR", help="captures to replay instead of the bundled ones")

    token = commands.add_parser(
        "token", help="create, list or revoke API tokens (through the admin socket while a daemon holds the DB)"
    )
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a token and print it, alone, on the last line")
    create.add_argument("--name", required=True, help="one per integration (grafana, prometheus ...)")
    create.add_argument("--expires-in-days", type=_non_negative, metavar="DAYS", help="default: never expires")
    listing = actions.add_parser("list", help="every token's name, dates and status (never the token)")
    listing.add_argument("--json", action="store_true", help="print one JSON array")
    revoke = actions.add_parser("revoke", help="revoke the token with this name (refused by the API at once)")
    revoke.add_argument("name", metavar="NAME")
    for action in (create, listing, revoke):
        action.add_argument("--db", default=DEFAULT_DB, help="the DuckDB file (default %(default)s; must exist)")
        action.add_argument(
            "--admin-socket", metavar="PATH", help="the admin socket of the daemon holding the DB (default: DB + .sock)"
        )


# -- serving ----------------------------------------------------------------------------------


def _settings(args, **extra) -> dict:
    return {"rate_limit": args.rate_limit, "rate_window": max(args.rate_window, 1), **extra}


def _server(app, args):
    from .server import ApiServer, ServeError, parse_listen

    if args.api_threads < 1:
        raise CommandError("--api-threads must be at least 1")
    try:
        host, port = parse_listen(args.listen)
        for path in filter(None, (args.tls_cert, args.tls_key)):
            if not Path(path).is_file():
                raise ServeError(f"no such file: {path}")
        server = ApiServer(app, host, port, args.tls_cert, args.tls_key, args.api_threads)
        server.prepare()
    except ServeError as error:
        raise CommandError(str(error)) from None
    return server


def reachable_url(url: str) -> str:
    """``url`` with a wildcard host (0.0.0.0, ::) replaced by an address another machine can use: this one's
    primary address (the source address of its default route), else the loopback address."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if host not in {"0.0.0.0", "::", ""}:
        return url
    family = socket.AF_INET6 if host == "::" else socket.AF_INET
    probe_address = "2001:db8::1" if family == socket.AF_INET6 else "192.0.2.1"  # documentation ranges
    try:
        # connect() on a UDP socket picks the route and source address; it sends nothing
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((probe_address, 9))
            address = probe.getsockname()[0]
    except OSError:  # no route at all (an isolated appliance)
        address = ""
    if not address or address in {"0.0.0.0", "::"} or address.startswith("127.") or address == "::1":
        address = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    shown = f"[{address}]" if ":" in address else address
    return f"{parts.scheme}://{shown}:{parts.port}"


def _admin_server(args, db: str, role: str, app, server):
    """The admin socket beside ``db`` for `serve` and `demo`: token, connections, devices, status, export."""
    from sensor.admin import AdminError, AdminServer, Holder, default_socket

    context = app.extensions["otsensor"]
    holder = Holder(
        context.store,
        role=role,
        stats=lambda: context.stats() if callable(context.stats) else {},
        tokens_changed=context.tokens.invalidate,
        api_url=reachable_url(server.url),
    )
    admin = AdminServer(getattr(args, "admin_socket", None) or default_socket(db), holder)
    try:
        admin.start()
    except AdminError as error:
        raise CommandError(str(error)) from None
    return admin


def serve_holding(args, db: str, role: str, app, announce) -> None:
    """Serve ``app`` with the admin socket beside ``db`` (`serve`, `demo`, `console`) until SIGTERM or SIGINT;
    ``announce(url)`` prints what the user needs, with an address they can reach."""
    server = _server(app, args)
    admin = _admin_server(args, db, role, app, server)
    try:
        announce(reachable_url(server.url))
        run_until_stopped(server)
    finally:
        admin.stop()


def run_until_stopped(server) -> None:
    """Serve in a thread; SIGTERM or SIGINT (in the main thread) stops it cleanly."""
    thread = threading.Thread(target=server.serve_forever, name="otsensor-api", daemon=True)
    thread.start()
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        while thread.is_alive() and not stop.wait(0.5):
            pass
    finally:
        server.stop()
        thread.join(10)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def cmd_serve(args) -> int:
    from . import create_app

    store = Store(existing_db(args.db))  # a missing DB, or one in a folder this user cannot enter: one line
    try:
        # nothing else writes this DB while it is served here (tokens are not data), so its data has one generation
        app = create_app(store, _settings(args, generation=lambda: 0))

        def announce(url: str) -> None:
            print(f"otsensor: serving {args.db} at {url} (Ctrl-C stops)", file=sys.stderr, flush=True)
            print(f"otsensor: {curl_line(url, '$TOKEN', args.tls_cert)}", file=sys.stderr, flush=True)

        serve_holding(args, args.db, "serve", app, announce)
    finally:
        store.close()
    return 0


def demo_captures(folder: Path | None = None) -> list[Path]:
    """The captures the demo replays: the bundled ones (or ``folder``'s), never those under a ``bad/`` folder."""
    from sensor.readers import iter_capture_files

    folders = [folder] if folder is not None else [f for f in BUNDLED_PCAPS if f.is_dir()]
    for candidate in folders:
        if not candidate.is_dir():
            raise CommandError(f"no such folder: {candidate}")
        # pcaps/bad/ holds deliberately broken files for `otsensor replay`'s own tests
        files = [p for p in iter_capture_files([candidate]) if "bad" not in p.relative_to(candidate).parts[:-1]]
        if files:
            return files
    raise CommandError("no captures to replay in " + ", ".join(map(str, folders or BUNDLED_PCAPS)))


def _fresh(db: Path) -> None:
    """Start the demo's own DB anew (so counters are not doubled), unless a running demo holds it."""
    if db.exists():
        Store(db).close()  # StoreBusy (exit 2) if another process has it open
    for path in (db, db.with_name(db.name + ".wal")):
        if path.exists():
            path.unlink()


def curl_line(url: str, token: str, tls_cert: str | None = None) -> str:
    """A ready curl line; the token ``$TOKEN`` stays a shell variable (double quotes)."""
    trust = f"--cacert {shlex.quote(tls_cert)} " if tls_cert else ""
    header = f'"Authorization: {token}"' if token == "$TOKEN" else shlex.quote("Authorization: " + token)
    return f"curl {trust}-H {header} {url}/api/v1/devices/connections"


def cmd_demo(args) -> int:
    from sensor.replay import replay

    from . import create_app
    from .auth import create_token

    captures = demo_captures(Path(args.pcaps) if args.pcaps else None)
    db = Path(DEMO_DB)  # in the working directory, as the contract has it
    _fresh(db)
    store = Store(db)
    try:
        summary = replay([str(path) for path in captures], store, progress=sys.stderr.isatty())
        token = create_token(store, DEMO_TOKEN)
        stats = {
            "mode": "replay",
            "packets": summary["packets"],
            "bytes": summary["bytes"],
            "decode_errors": summary["decodeErrors"],
        }
        app = create_app(store, _settings(args, stats=lambda: stats, generation=lambda: 0))

        def announce(url: str) -> None:
            print(
                f"replayed {len(summary['files'])} captures from {captures[0].parent}: {summary['packets']:,} packets, "
                f"{summary['devices']:,} devices, {summary['connections']:,} connections into {db}"
            )
            print(f"map:   {url}/  (open it in a browser and paste the token below)")
            print(f"API:   {url}/api/v1/  (OpenAPI: {url}/api/v1/openapi.json)")
            print(f"token: {token}")
            print(curl_line(url, token, args.tls_cert), flush=True)

        serve_holding(args, str(db), "demo", app, announce)
    finally:
        store.close()
    return 0


# -- tokens -----------------------------------------------------------------------------------


def cmd_token(args) -> int:
    """`token create|list|revoke`: sensor.admin runs them, on the file or through the daemon's socket."""
    from sensor.admin import call

    if args.token_command == "create":
        values = {"name": args.name, "expires_in_days": args.expires_in_days}
    elif args.token_command == "list":
        values = {"json": args.json}
    else:
        values = {"name": args.name}
    sys.stdout.write(call(args.db, f"token-{args.token_command}", values, args.admin_socket))
    sys.stdout.flush()
    return 0


COMMANDS = {"serve": cmd_serve, "demo": cmd_demo, "token": cmd_token}
