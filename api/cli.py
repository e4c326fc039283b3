"""The API's commands of `otsensor` — serve, demo, token — for sensor.cli to mount.

Owns these commands' flags, output and exit statuses; never parses the whole command line (sensor.cli
does: ``add_commands(subparsers)`` adds them, ``COMMANDS`` maps each name to its handler, and a
``CommandError`` is a usage error, exit 2).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

from sensor.serialize import dumps
from sensor.store import Store

from . import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_SETTINGS

# Flask, the server and prometheus-client are imported by the handlers that need them, not on every `otsensor`

DEMO_DB = "otsensor-demo.duckdb"
DEMO_TOKEN = "demo"
DEFAULT_THREADS = 8
ROOT = Path(__file__).resolve().parent.parent
BUNDLED_PCAPS = (ROOT / "pcaps", ROOT / "sensor" / "data" / "pcaps")  # a source tree's, then a package's


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
        help=f"address to serve on (default {DEFAULT_HOST}:{DEFAULT_PORT})",
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="PEM certificate: with --tls-key, serve HTTPS only")
    parser.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    parser.add_argument(
        "--threads",
        type=_non_negative,
        default=DEFAULT_THREADS,
        help=f"requests answered at once (default {DEFAULT_THREADS})",
    )
    parser.add_argument(
        "--rate-limit",
        type=_non_negative,
        default=DEFAULT_SETTINGS["rate_limit"],
        help="requests per token per --rate-window; 0 turns it off (default %(default)s)",
    )
    parser.add_argument(
        "--rate-window",
        type=_non_negative,
        default=int(DEFAULT_SETTINGS["rate_window"]),
        help="seconds (default %(default)s)",
    )


def add_commands(commands) -> None:
    """Add serve, demo and token to sensor.cli's subparsers."""
    serve = commands.add_parser("serve", help="serve the API over an existing DB (no capture)")
    serve.add_argument("--db", default="otsensor.duckdb", help="the DuckDB file (default %(default)s)")
    _serving_flags(serve)

    demo = commands.add_parser("demo", help="replay the bundled captures, make a token and serve the API")
    _serving_flags(demo)
    demo.add_argument("--pcaps", metavar="DIR", help="captures to replay instead of the bundled ones")

    token = commands.add_parser("token", help="create, list or revoke API tokens")
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a token and print it, alone, on the last line")
    create.add_argument("--db", default="otsensor.duckdb")
    create.add_argument("--name", required=True)
    create.add_argument("--expires-in-days", type=_non_negative, help="default: never expires")
    listing = actions.add_parser("list", help="every token's name, dates and status (never the token)")
    listing.add_argument("--db", default="otsensor.duckdb")
    listing.add_argument("--json", action="store_true", help="print one JSON array")
    revoke = actions.add_parser("revoke", help="revoke the token with this name")
    revoke.add_argument("--db", default="otsensor.duckdb")
    revoke.add_argument("name", metavar="NAME")


# -- serving ----------------------------------------------------------------------------------


def _settings(args, **extra) -> dict:
    return {"rate_limit": args.rate_limit, "rate_window": max(args.rate_window, 1), **extra}


def _server(app, args):
    from .server import ApiServer, ServeError, parse_listen

    if args.threads < 1:
        raise CommandError("--threads must be at least 1")
    try:
        host, port = parse_listen(args.listen)
        for path in filter(None, (args.tls_cert, args.tls_key)):
            if not Path(path).is_file():
                raise ServeError(f"no such file: {path}")
        server = ApiServer(app, host, port, args.tls_cert, args.tls_key, args.threads)
        server.prepare()
    except ServeError as error:
        raise CommandError(str(error)) from None
    return server


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

    if not Path(args.db).is_file():
        raise CommandError(f"no such DB: {args.db} (make one with `otsensor replay PATH --db {args.db}`)")
    store = Store(args.db)
    try:
        # nothing else writes this DB while it is served here, so its data has one generation
        app = create_app(store, _settings(args, generation=lambda: 0))
        server = _server(app, args)
        print(f"otsensor: serving {args.db} at {server.url} (Ctrl-C stops)", file=sys.stderr, flush=True)
        run_until_stopped(server)
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
    trust = f"--cacert {shlex.quote(tls_cert)} " if tls_cert else ""
    return f"curl {trust}-H {shlex.quote('Authorization: ' + token)} {url}/api/v1/devices/connections"


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
        server = _server(app, args)
        print(
            f"replayed {len(summary['files'])} captures from {captures[0].parent}: {summary['packets']:,} packets, "
            f"{summary['devices']:,} devices, {summary['connections']:,} connections into {db}"
        )
        print(f"API:   {server.url}/api/v1/  (OpenAPI: {server.url}/api/v1/openapi.json)")
        print(f"token: {token}")
        print(curl_line(server.url, token, args.tls_cert), flush=True)
        run_until_stopped(server)
    finally:
        store.close()
    return 0


# -- tokens -----------------------------------------------------------------------------------


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_token(args) -> int:
    from .auth import TokenError, create_token, list_tokens, revoke_token

    if args.token_command != "create" and not Path(args.db).is_file():
        raise CommandError(f"no such DB: {args.db}")
    store = Store(args.db)
    try:
        if args.token_command == "create":
            try:
                secret = create_token(store, args.name, args.expires_in_days)
            except TokenError as error:
                raise CommandError(str(error)) from None
            expiry = "never expires" if args.expires_in_days is None else f"expires in {args.expires_in_days} days"
            print(f"token {args.name!r} created ({expiry}); it is shown only now:")
            print(secret)
        elif args.token_command == "list":
            tokens = list_tokens(store)
            if args.json:
                print(dumps(tokens))
            else:
                print(f"{'NAME':<24} {'CREATED':<21} {'EXPIRES':<21} {'REVOKED':<21} STATUS")
                for t in tokens:
                    print(
                        f"{t['name']:<24} {_when(t['created']):<21} {_when(t['expires']):<21} "
                        f"{_when(t['revoked']):<21} {t['status']}"
                    )
        else:
            if not revoke_token(store, args.name):
                raise CommandError(f"no token named {args.name!r} is left to revoke")
            print(f"token {args.name!r} revoked")
    finally:
        store.close()
    return 0


COMMANDS = {"serve": cmd_serve, "demo": cmd_demo, "token": cmd_token}
