"""The `otsensor` command line: argument parsing and exit statuses, nothing else.

Owns the contract's commands and their exit codes (0 ok, 2 usage or unusable input, never a traceback).
"""

from __future__ import annotations

import argparse
import sys

from api import cli as api_commands

from . import console as fleet_commands
from . import serialize
from .readers import CaptureError
from .settings import add_arguments as add_run_arguments
from .store import Store, StoreError

DEFAULT_DB = "otsensor.duckdb"


class UsageError(Exception):
    pass


def _non_negative(text: str) -> int:
    """The API's rule for integer parameters: ASCII digits, at most 2**53."""
    if not (text.isascii() and text.isdigit()) or len(text) > 16 or int(text) > serialize.MAX_INTEGER:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer up to 2**53")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otsensor", description="Passive OT network sensor.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    replay = commands.add_parser("replay", help="ingest pcap/pcapng files or folders into the DB")
    replay.add_argument("paths", nargs="+", metavar="PATH")
    replay.add_argument("--db", default=DEFAULT_DB)
    replay.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    replay.add_argument("--config", metavar="FILE", help="settings file: with [fleet], ship to ClickHouse too")

    connections = commands.add_parser("connections", help="print the connections JSON the API serves")
    connections.add_argument("--db", default=DEFAULT_DB)
    connections.add_argument("--device-id", type=_non_negative)
    connections.add_argument("--last-active-in-minutes", type=_non_negative)
    connections.add_argument("--discovered-before", type=_non_negative)
    connections.add_argument("--discovered-after", type=_non_negative)

    devices = commands.add_parser("devices", help="print the devices JSON the API serves")
    devices.add_argument("--db", default=DEFAULT_DB)

    run = commands.add_parser("run", help="the live daemon: capture, scheduled flushes and the API")
    add_run_arguments(run)

    api_commands.add_commands(commands)  # serve, demo, token (Flask is imported only when they run)
    fleet_commands.add_commands(commands)  # fleet init, console
    return parser


def cmd_replay(args) -> int:
    from .replay import existing_paths, format_summary, replay

    existing_paths(args.paths)
    shipper = _fleet_shipper(args)
    store = Store(args.db)
    try:
        summary = replay(args.paths, store, progress=not args.json or sys.stderr.isatty(), fleet=shipper)
    finally:
        store.close()
        if shipper is not None:  # ship what it can now; the rest waits in the spool for the next run
            shipper.close(timeout=120)
            summary_fleet = shipper.stats()
    if shipper is not None:
        summary["fleet"] = summary_fleet
    print(serialize.dumps(summary) if args.json else format_summary(summary))
    if not summary["files"] or summary["notCaptures"]:  # the captures among them are stored all the same
        raise CaptureError("; ".join(summary["notCaptures"]) or "no capture files found")
    return 0


def _fleet_shipper(args):
    """`replay --config FILE` with [fleet]: a shipper whose spool is beside --db (sensor.fleet)."""
    if not args.config:
        return None
    from . import fleet
    from .settings import SettingsError, load

    try:
        settings = load(args.config)
    except SettingsError as error:
        raise UsageError(str(error)) from None
    return fleet.start(settings.fleet, args.db)


def cmd_connections(args) -> int:
    store = Store(args.db)
    try:
        where = serialize.ConnectionFilter(
            args.device_id, args.last_active_in_minutes, args.discovered_before, args.discovered_after
        )
        print(serialize.connections_json(store.cursor(), where))
    finally:
        store.close()
    return 0


def cmd_devices(args) -> int:
    store = Store(args.db)
    try:
        print(serialize.dumps(serialize.devices(store.cursor())))
    finally:
        store.close()
    return 0


def cmd_run(args) -> int:
    from .daemon import run
    from .settings import SettingsError, load, overrides_from_args

    try:
        settings = load(args.config, overrides_from_args(args))
    except SettingsError as error:
        raise UsageError(str(error)) from None
    return run(settings)


COMMANDS = {
    "replay": cmd_replay,
    "connections": cmd_connections,
    "devices": cmd_devices,
    "run": cmd_run,
    **api_commands.COMMANDS,
    **fleet_commands.COMMANDS,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (CaptureError, StoreError, UsageError, api_commands.CommandError) as error:
        print(f"otsensor: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("otsensor: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
