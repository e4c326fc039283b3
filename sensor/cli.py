"""The `otsensor` command line: argument parsing and exit statuses, nothing else.

Owns the contract's commands and their exit codes (0 ok, 2 usage or unusable input, never a traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from api import cli as api_commands

from . import admin, serialize
from .readers import CaptureError
from .settings import add_arguments as add_run_arguments
from .store import Store, StoreError

DEFAULT_DB = "otsensor.duckdb"
DB_HELP = "the DuckDB file (default %(default)s)"
DEFAULT_CONSOLE_DB = "otsensor-console.duckdb"


class UsageError(Exception):
    pass


def _non_negative(text: str) -> int:
    """The API's rule for integer parameters: ASCII digits, at most 2**53."""
    if not (text.isascii() and text.isdigit()) or len(text) > 16 or int(text) > serialize.MAX_INTEGER:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer up to 2**53")
    return int(text)


def add_admin_socket(parser: argparse.ArgumentParser) -> None:
    """``--admin-socket``, for the commands that ask a running daemon when it holds the DB."""
    parser.add_argument(
        "--admin-socket",
        metavar="PATH",
        help="the admin socket of the daemon holding the DB, used when it holds it (default: DB + .sock)",
    )


def add_fleet_commands(commands) -> None:
    """`otsensor fleet init` and `otsensor console` (sensor.console runs them; imported only then: it brings
    the ClickHouse client, ssl and urllib, which no other command needs)."""
    fleet = commands.add_parser("fleet", help="fleet tables in ClickHouse")
    actions = fleet.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    create = actions.add_parser("init", help="create or migrate the fleet tables")
    create.add_argument(
        "--clickhouse",
        action="append",
        required=True,
        metavar="URL",
        help="ClickHouse HTTP URL (http[s]://[user:password@]host:8123/[?database=otsensor]); with --cluster, "
        "repeat it for every shard (distributed DDL needs ZooKeeper, which a plain install has not)",
    )
    create.add_argument("--cluster", metavar="NAME", help="a remote_servers cluster: Distributed tables over it")
    create.add_argument("--ca-file", metavar="FILE", help="PEM bundle to trust for https URLs")

    from api.cli import _serving_flags

    console = commands.add_parser("console", help="serve the API over every sensor's data in ClickHouse")
    console.add_argument("--clickhouse", required=True, metavar="URL", help="ClickHouse HTTP URL (as fleet init)")
    console.add_argument("--ca-file", metavar="FILE", help="PEM bundle to trust for an https URL")
    console.add_argument("--db", default=DEFAULT_CONSOLE_DB, help="the console's token DB (default %(default)s)")
    _serving_flags(console)


def _console():
    from . import console

    return console


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otsensor",
        description="Passive OT network sensor. While a daemon (run, serve, demo) holds the DB, token, "
        "connections, devices, status and export go through its admin socket (DB + .sock).",
    )
    parser.add_argument("--version", action="version", version=f"otsensor {admin.version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    replay = commands.add_parser("replay", help="ingest pcap/pcapng files or folders into the DB")
    replay.add_argument("paths", nargs="+", metavar="PATH")
    replay.add_argument("--db", default=DEFAULT_DB, help=DB_HELP + "; made if missing")
    replay.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    replay.add_argument("--force", action="store_true", help="read files ingested before again (counters add up)")
    replay.add_argument(
        "--config",
        metavar="FILE",
        help="settings file: learning_hours, alert_dedup_minutes, max_flows, reassembly_mb; "
        "with [fleet], ship to ClickHouse too",
    )

    connections = commands.add_parser("connections", help="print the connections JSON the API serves")
    connections.add_argument("--db", default=DEFAULT_DB, help=DB_HELP)
    connections.add_argument("--device-id", type=_non_negative, metavar="ID", help="either side is this device id")
    connections.add_argument(
        "--last-active-in-minutes", type=_non_negative, metavar="MINUTES", help="last packet within MINUTES of now"
    )
    connections.add_argument(
        "--discovered-before", type=_non_negative, metavar="MS", help="first packet before MS (epoch milliseconds)"
    )
    connections.add_argument(
        "--discovered-after", type=_non_negative, metavar="MS", help="first packet after MS (epoch milliseconds)"
    )
    add_admin_socket(connections)

    devices = commands.add_parser("devices", help="print the devices JSON the API serves")
    devices.add_argument("--db", default=DEFAULT_DB, help=DB_HELP)
    add_admin_socket(devices)

    status = commands.add_parser("status", help="what the daemon holding the DB is doing (from its admin socket)")
    status.add_argument("--db", default=DEFAULT_DB, help=DB_HELP)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    add_admin_socket(status)

    export = commands.add_parser("export", help="write devices, connections (and alerts) as files for other tools")
    export.add_argument("--db", default=DEFAULT_DB, help=DB_HELP)
    export.add_argument("--format", choices=sorted(admin.EXPORT_FORMATS), required=True)
    export.add_argument(
        "--out",
        metavar="DIR",
        help="folder for devices.FORMAT, connections.FORMAT ... (default: otsensor-export-TIME beside the DB, "
        "which a daemon holding the DB can always write)",
    )
    add_admin_socket(export)

    alerts = commands.add_parser("alerts", help="print the alerts JSON the API serves; `alerts handle ID`")
    alerts.add_argument("--db", default=DEFAULT_DB, help=DB_HELP)
    alerts.add_argument("--state", choices=("handled", "unhandled"))
    add_admin_socket(alerts)
    alert_commands = alerts.add_subparsers(dest="alert_command", metavar="handle")
    handle = alert_commands.add_parser("handle", help="mark an alert handled (--learn: authorize its activity)")
    handle.add_argument("id", type=_non_negative, metavar="ID")
    handle.add_argument("--learn", action="store_true")
    handle.add_argument("--db", default=argparse.SUPPRESS, help=DB_HELP.replace("%(default)s", DEFAULT_DB))
    handle.add_argument("--admin-socket", default=argparse.SUPPRESS, metavar="PATH", help=argparse.SUPPRESS)

    run = commands.add_parser("run", help="the live daemon: capture, scheduled flushes and the API")
    add_run_arguments(run)

    api_commands.add_commands(commands)  # serve, demo, token (Flask is imported only when they run)
    add_fleet_commands(commands)
    return parser


def cmd_replay(args) -> int:
    from .detect import Detector
    from .replay import existing_paths, format_summary, replay
    from .settings import SettingsError, load

    existing_paths(args.paths)
    try:
        settings = load(args.config) if args.config else None
        if settings is not None:
            settings.check_memory()
    except SettingsError as error:
        raise UsageError(str(error)) from None
    shipper = _fleet_shipper(settings, args.db)
    store = Store(args.db, detector=Detector.from_settings(settings) if settings else None)
    if shipper is not None:
        shipper.attach(store)  # the alerts the replay opens or changes, and those that never left before
    try:
        summary = replay(
            args.paths,
            store,
            progress=not args.json or sys.stderr.isatty(),
            force=args.force,
            fleet=shipper,
            limits=settings,
        )
    except BaseException:
        try:
            store.close()
        except StoreError:
            pass  # the first failure is the one to tell
        raise
    finally:
        if shipper is not None:  # ship what it can now; the rest waits in the spool for the next run
            shipper.close(timeout=120)
    store.close()
    if shipper is not None:
        summary["fleet"] = shipper.stats()
    print(serialize.dumps(summary) if args.json else format_summary(summary))
    if not summary["files"] or summary["notCaptures"]:  # the captures among them are stored all the same
        raise CaptureError("; ".join(summary["notCaptures"]) or "no capture files found")
    if summary["failedFiles"]:
        raise CaptureError(f"{len(summary['failedFiles'])} file(s) failed, nothing of them stored (see problems)")
    return 0


def run_admin(args, command: str, **values) -> int:
    """An admin command on ``args.db``: through the daemon's socket when one holds it, else on the file."""
    sys.stdout.write(admin.call(args.db, command, values, getattr(args, "admin_socket", None)))
    sys.stdout.flush()
    return 0


def _fleet_shipper(settings, db: str):
    """`replay --config FILE` with [fleet]: a shipper whose spool is beside --db (sensor.fleet)."""
    if settings is None or settings.fleet is None:
        return None
    from . import fleet

    return fleet.start(settings.fleet, db)


def cmd_connections(args) -> int:
    return run_admin(
        args,
        "connections",
        device_id=args.device_id,
        last_active_in_minutes=args.last_active_in_minutes,
        discovered_before=args.discovered_before,
        discovered_after=args.discovered_after,
    )


def cmd_devices(args) -> int:
    return run_admin(args, "devices")


def cmd_status(args) -> int:
    return run_admin(args, "status", json=args.json)


def cmd_export(args) -> int:
    from datetime import UTC, datetime

    if args.out is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out = Path(args.db).resolve().parent / f"otsensor-export-{stamp}"
    else:
        out = Path(args.out).resolve()  # the daemon has another working directory
    return run_admin(args, "export", format=args.format, out=str(out))


def cmd_alerts(args) -> int:
    if args.alert_command == "handle":
        return run_admin(args, "alert-handle", id=args.id, learn=args.learn)
    return run_admin(args, "alerts", state=args.state)


def cmd_run(args) -> int:
    from .daemon import run
    from .settings import SettingsError, load, overrides_from_args

    try:
        settings = load(args.config, overrides_from_args(args))
    except SettingsError as error:
        raise UsageError(str(error)) from None
    return run(settings, lambda: load(args.config, overrides_from_args(args)))  # SIGHUP reads them again


COMMANDS = {
    "replay": cmd_replay,
    "connections": cmd_connections,
    "devices": cmd_devices,
    "status": cmd_status,
    "export": cmd_export,
    "alerts": cmd_alerts,
    "run": cmd_run,
    **api_commands.COMMANDS,
    "fleet": lambda args: _console().cmd_fleet(args),
    "console": lambda args: _console().cmd_console(args),
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (CaptureError, StoreError, UsageError, api_commands.CommandError, admin.AdminError) as error:
        print(f"otsensor: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("otsensor: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `otsensor connections | head`: the reader left, as for any Unix filter
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141  # 128 + SIGPIPE, as a shell reports a filter killed by it


if __name__ == "__main__":
    sys.exit(main())
