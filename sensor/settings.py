"""The daemon's settings: one dataclass with every setting and its default, read from TOML and flags.

Owns the names, types and defaults of `otsensor run`'s settings (the TOML keys and the flags are the same
words); never opens a socket or a DB. A missing default file is fine; a bad file is one line of error.
"""

from __future__ import annotations

import argparse
import os

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

DEFAULT_CONFIG = "/etc/otsensor/otsensor.toml"


class SettingsError(Exception):
    """The settings cannot be used (unreadable or malformed file, unknown key, wrong type); one line."""


@dataclass(frozen=True)
class Settings:
    """Every setting of `otsensor run`. The TOML key is the field name; the flag is ``--field-name``."""

    interfaces: tuple[str, ...] = ()  # capture interfaces (SPAN / mirror ports); at least one is needed
    bpf: str | None = None  # tcpdump filter expression applied in the kernel; None captures everything
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # capture + decode processes
    db: str = "/var/lib/otsensor/otsensor.duckdb"
    listen: str = "127.0.0.1:8080"  # HOST:PORT of the API
    tls_cert: str | None = None  # with tls_key: the API speaks HTTPS only
    tls_key: str | None = None
    flush_interval: float = 5.0  # seconds between writes to the DB: what a SIGKILL can lose at most
    retention_days: float = 0  # forget connections not seen for this many days; 0 keeps them forever
    rate_limit: int = 600  # API requests per token per minute; 0 turns the limit off
    api_threads: int = 8  # API requests answered at once
    prepare_interfaces: bool = False  # bring the interfaces up listen-only (no address, ARP, IPv6) first
    ring_mb: int = 64  # kernel ring per interface and worker, in MiB (1 MiB blocks)
    db_memory_mb: int = 512  # DuckDB's memory_limit in MiB (DuckDB's own default: 80 % of the machine)
    db_threads: int = 2  # DuckDB's threads (its own default: one per core, which the workers need)

    def check(self) -> None:
        """What `run` needs beyond well-typed values; SettingsError names the setting."""
        if not self.interfaces:
            raise SettingsError("no capture interface: set interfaces in the config file or give --interface")
        if self.workers < 1:
            raise SettingsError(f"workers must be at least 1, not {self.workers}")
        if self.flush_interval <= 0:
            raise SettingsError(f"flush_interval must be a positive number of seconds, not {self.flush_interval}")
        if self.retention_days < 0:
            raise SettingsError(f"retention_days must be 0 (off) or positive, not {self.retention_days}")
        if self.rate_limit < 0:
            raise SettingsError(f"rate_limit must be 0 (off) or positive, not {self.rate_limit}")
        if self.api_threads < 1:
            raise SettingsError(f"api_threads must be at least 1, not {self.api_threads}")
        if not 1 <= self.ring_mb <= 4096:
            raise SettingsError(f"ring_mb must be within 1..4096, not {self.ring_mb}")
        if not 64 <= self.db_memory_mb <= 1 << 20:
            raise SettingsError(f"db_memory_mb must be within 64..1048576, not {self.db_memory_mb}")
        if not 1 <= self.db_threads <= 256:
            raise SettingsError(f"db_threads must be within 1..256, not {self.db_threads}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("tls_cert and tls_key go together: give both for HTTPS, neither for HTTP")


# What a TOML value may be for each setting (TOML integers are accepted where a float is expected).
_TYPES = {
    "interfaces": (list,),
    "bpf": (str,),
    "workers": (int,),
    "db": (str,),
    "listen": (str,),
    "tls_cert": (str,),
    "tls_key": (str,),
    "flush_interval": (int, float),
    "retention_days": (int, float),
    "rate_limit": (int,),
    "api_threads": (int,),
    "prepare_interfaces": (bool,),
    "ring_mb": (int,),
    "db_memory_mb": (int,),
    "db_threads": (int,),
}
_TYPE_NAMES = {list: "a list of interface names", str: "a string", int: "an integer", float: "a number",
               bool: "true or false"}  # fmt: skip


def _value(key: str, value, source: str):
    """``value`` for setting ``key``, checked and normalised; SettingsError says where it came from."""
    if key not in _TYPES:
        known = ", ".join(_TYPES)
        raise SettingsError(f"{source}: unknown setting {key!r} (known: {known})")
    kinds = _TYPES[key]
    # bool is an int in Python but not a number of workers; an int is a fine number of seconds
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise SettingsError(f"{source}: {key} must be {_TYPE_NAMES[kinds[0]]}, not {value!r}")
    if key == "interfaces":
        if not all(isinstance(name, str) and name for name in value):
            raise SettingsError(f"{source}: interfaces must be a list of interface names, not {value!r}")
        return tuple(dict.fromkeys(value))  # in order, each once
    if key in {"bpf", "tls_cert", "tls_key"} and value == "":
        return None  # an empty string in TOML means "not set" (TOML has no null)
    if key in {"flush_interval", "retention_days"}:
        return float(value)
    return value


def load(path: str | None = None, overrides: dict | None = None) -> Settings:
    """Settings from the TOML file ``path`` (default /etc/otsensor/otsensor.toml, which may be missing),
    then ``overrides`` (flag values; None means "not given"). Raises SettingsError with one line."""
    values: dict = {}
    config = Path(path or DEFAULT_CONFIG)
    try:
        text = config.read_text(encoding="utf-8")
    except FileNotFoundError:
        if path is not None:
            raise SettingsError(f"no such config file: {path}") from None
        text = ""
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"cannot read {config}: {getattr(error, 'strerror', None) or error}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"{config}: not valid TOML: {error}") from None
    for key, value in document.items():
        values[key] = _value(key, value, str(config))
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _value(key, list(value) if isinstance(value, tuple) else value, f"--{_flag(key)}")
    return replace(Settings(), **values)


def _flag(key: str) -> str:
    return key.replace("_", "-")


def _positive_number(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative number")
    return number


def _count(text: str) -> int:
    if not text.isdigit() or len(text) > 9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `otsensor run`: ``--config`` and one per setting (defaults shown are the built-in ones)."""
    default = Settings()
    add = parser.add_argument
    add("--config", metavar="FILE", help=f"TOML settings file (default {DEFAULT_CONFIG}; may be missing)")
    add(
        "--interface",
        dest="interfaces",
        action="append",
        metavar="IF",
        help="capture interface; repeat for several (replaces the file's list)",
    )
    add("--bpf", metavar="EXPR", help="capture filter, tcpdump syntax (default: everything)")
    add("--workers", type=_count, metavar="N", help=f"capture/decode processes (default: cores = {default.workers})")
    add("--db", metavar="DB", help=f"DuckDB file (default {default.db})")
    add("--listen", metavar="HOST:PORT", help=f"API address (default {default.listen})")
    add("--tls-cert", metavar="FILE", help="serve the API over HTTPS with this certificate (with --tls-key)")
    add("--tls-key", metavar="FILE", help="the certificate's private key")
    add(
        "--flush-interval",
        type=_positive_number,
        metavar="SECONDS",
        help=f"seconds between DB writes (default {default.flush_interval:g})",
    )
    add(
        "--retention-days",
        type=_positive_number,
        metavar="DAYS",
        help="forget connections not seen for DAYS days (default 0: keep forever)",
    )
    add(
        "--rate-limit",
        type=_count,
        metavar="N",
        help=f"API requests per token per minute, 0 off (default {default.rate_limit})",
    )
    add(
        "--api-threads", type=_count, metavar="N", help=f"API requests answered at once (default {default.api_threads})"
    )
    add(
        "--prepare-interfaces",
        action="store_true",
        default=None,
        help="bring the interfaces up listen-only first: no address, no ARP, no IPv6 (needs CAP_NET_ADMIN)",
    )
    add("--ring-mb", type=_count, metavar="MIB", help=f"kernel ring per interface and worker (default {default.ring_mb})")  # fmt: skip
    add("--db-memory-mb", type=_count, metavar="MIB", help=f"DuckDB's memory limit (default {default.db_memory_mb})")
    add("--db-threads", type=_count, metavar="N", help=f"DuckDB's threads (default {default.db_threads})")


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The settings given as flags (``add_arguments``'s), for :func:`load`."""
    return {f.name: getattr(args, f.name, None) for f in fields(Settings)}
