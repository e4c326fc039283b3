"""The daemon's settings: one dataclass with every setting and its default, read from TOML and flags.

Owns the names, types and defaults of `otsensor run`'s settings (the TOML keys and the flags are the same
words); never opens a socket or a DB. A missing default file is fine; a bad file is one line of error.
"""

from __future__ import annotations

import argparse
import os
import socket

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
class FleetSettings:
    """The ``[fleet]`` table: ship each flush's delta to ClickHouse as well (contract section 6, sensor.fleet)."""

    clickhouse_url: str = ""  # http[s]://host:8123/[?database=otsensor]; empty: no fleet
    site: str = ""  # the plant or SPAN point's site name: devices are (site, ip) fleet-wide
    sensor_id: str = field(default_factory=lambda: socket.gethostname())
    user: str | None = None  # ClickHouse user and password (HTTP basic authentication)
    password: str | None = None
    ca_file: str | None = None  # PEM bundle to trust for an https URL (default: the system's)
    spool_mb: float = 256.0  # the on-disk spool beside the DB; deltas beyond it are dropped and counted
    timeout: float = 30.0  # seconds for one HTTP request
    ship_interval: float = 30.0  # the flushes of this many seconds are shipped as one delta (one row per pair)


_FLEET_TYPES = {"clickhouse_url": (str,), "site": (str,), "sensor_id": (str,), "user": (str,), "password": (str,),
                "ca_file": (str,), "spool_mb": (int, float), "timeout": (int, float), "ship_interval": (int, float)}  # fmt: skip


def fleet_settings(table, source: str) -> FleetSettings:
    """``[fleet]`` from TOML, checked: one line of error naming the key."""
    if not isinstance(table, dict):
        raise SettingsError(f"{source}: fleet must be a table ([fleet]), not {table!r}")
    values = {}
    for key, value in table.items():
        kinds = _FLEET_TYPES.get(key)
        if kinds is None:
            raise SettingsError(f"{source}: unknown setting fleet.{key} (known: {', '.join(_FLEET_TYPES)})")
        if isinstance(value, str) and float in kinds and source.startswith("--"):  # from --fleet KEY=VALUE
            try:
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise SettingsError(f"{source}: fleet.{key} must be {_TYPE_NAMES[kinds[-1]]}, not {value!r}")
        values[key] = (
            float(value) if float in kinds else (value or None) if key in {"user", "password", "ca_file"} else value
        )
    fleet = FleetSettings(**values)
    if fleet.clickhouse_url:
        if not fleet.site:
            raise SettingsError(f"{source}: fleet.site is required with fleet.clickhouse_url")
        if not fleet.clickhouse_url.startswith(("http://", "https://")):
            raise SettingsError(f"{source}: fleet.clickhouse_url must be an http:// or https:// URL")
        if not fleet.sensor_id or len(fleet.sensor_id) > 64 or len(fleet.site) > 64:
            raise SettingsError(f"{source}: fleet.site and fleet.sensor_id are 1 to 64 characters")
        if fleet.spool_mb <= 0 or fleet.timeout <= 0 or fleet.ship_interval < 0:
            raise SettingsError(f"{source}: fleet.spool_mb and fleet.timeout must be positive, ship_interval >= 0")
    return fleet


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
    # the [forwarding] table (alerts to a SIEM), checked and completed by forwarding_settings; None: off
    forwarding: dict | None = None
    admin_socket: str | None = None  # the admin socket (CONTRACT.md section 7); None: the DB's path + ".sock"
    learning_hours: float = 24.0  # packet time after the DB's first packet during which nothing new alerts
    alert_dedup_minutes: float = 10.0  # a repeat of an operational command within this counts on its alert
    fleet: FleetSettings | None = None  # [fleet]: ship deltas to ClickHouse (TOML only)

    db_memory_mb: int = 512  # DuckDB's memory_limit in MiB (DuckDB's own default: 80 % of the machine)
    db_threads: int = 2  # DuckDB's threads (its own default: one per core, which the workers need)
    # The packet path's memory, whatever the traffic or the file (see README "Bad input"):
    max_flows: int = 100_000  # flows kept at once per worker (~1.2 KB each); past it the oldest quarter goes
    reassembly_mb: int = 64  # MiB all flows of a worker may hold in partial PDUs and out-of-order segments

    @property
    def admin_socket_path(self) -> str:
        return self.admin_socket or self.db + ".sock"

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
        if self.learning_hours < 0 or self.alert_dedup_minutes < 0:
            raise SettingsError("learning_hours and alert_dedup_minutes must be 0 or positive")
        if not 1 <= self.ring_mb <= 4096:
            raise SettingsError(f"ring_mb must be within 1..4096, not {self.ring_mb}")
        if not 64 <= self.db_memory_mb <= 1 << 20:
            raise SettingsError(f"db_memory_mb must be within 64..1048576, not {self.db_memory_mb}")
        if not 1 <= self.db_threads <= 256:
            raise SettingsError(f"db_threads must be within 1..256, not {self.db_threads}")
        self.check_memory()

    def check_memory(self) -> None:
        """The packet path's bounds (also read by `replay --config`)."""
        if not 1_000 <= self.max_flows <= 100_000_000:
            raise SettingsError(f"max_flows must be within 1000..100000000, not {self.max_flows}")
        if not 1 <= self.reassembly_mb <= 1 << 16:
            raise SettingsError(f"reassembly_mb must be within 1..65536, not {self.reassembly_mb}")
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
    "forwarding": (dict,),
    "admin_socket": (str,),
    "learning_hours": (int, float),
    "alert_dedup_minutes": (int, float),
    "fleet": (dict,),
    "db_memory_mb": (int,),
    "db_threads": (int,),
    "max_flows": (int,),
    "reassembly_mb": (int,),
}
_TYPE_NAMES = {list: "a list of interface names", str: "a string", int: "an integer", float: "a number",
               bool: "true or false", dict: "a table"}  # fmt: skip


def _value(key: str, value, source: str):
    """``value`` for setting ``key``, checked and normalised; SettingsError says where it came from."""
    if key not in _TYPES:
        known = ", ".join(_TYPES)
        raise SettingsError(f"{source}: unknown setting {key!r} (known: {known})")
    kinds = _TYPES[key]
    # bool is an int in Python but not a number of workers; an int is a fine number of seconds
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise SettingsError(f"{source}: {key} must be {_TYPE_NAMES[kinds[0]]}, not {value!r}")
    if key == "fleet":
        return fleet_settings(value, source)
    if key == "interfaces":
        if not all(isinstance(name, str) and name for name in value):
            raise SettingsError(f"{source}: interfaces must be a list of interface names, not {value!r}")
        return tuple(dict.fromkeys(value))  # in order, each once
    if key in {"bpf", "tls_cert", "tls_key", "admin_socket"} and value == "":
        return None  # an empty string in TOML means "not set" (TOML has no null)
    if key in {"learning_hours", "alert_dedup_minutes"} and value < 0:
        raise SettingsError(f"{source}: {key} must be 0 or positive, not {value!r}")
    if key in {"flush_interval", "retention_days", "learning_hours", "alert_dedup_minutes"}:
        return float(value)
    if key == "forwarding":
        return forwarding_settings(value, f"{source}: [forwarding]") if value.get("target") else None
    return value


# ---- [forwarding]: alerts to a SIEM as CEF over syslog (sensor/forward.py) ---------------------------

# syslog facilities by name (RFC 5424 section 6.2.1)
FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7, "uucp": 8,
    "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13, "console": 14, "solaris-cron": 15,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip
FORWARDING_DEFAULTS = {
    "target": "",  # udp://HOST:514, tcp://HOST:601 or tls://HOST:6514; "" turns forwarding off
    "ca_file": "",  # TLS: the CA bundle that signed the collector's certificate ("" = the system's)
    "cert_file": "",  # TLS: a client certificate, for collectors that ask for one (with key_file)
    "key_file": "",
    "facility": "local4",  # a name of FACILITIES or its number 0..23
    "app_name": "otsensor",  # RFC 5424 APP-NAME
    "hostname": "",  # RFC 5424 HOSTNAME; "" = this machine's name
    "queue_limit": 10_000,  # alerts held (memory and spool) while the collector is away; beyond: oldest dropped
    "retry_max_seconds": 30.0,  # the longest wait between two attempts to reach the collector
}
_DEFAULT_PORTS = {"udp": 514, "tcp": 601, "tls": 6514}  # RFC 5426, RFC 6587 (IANA syslog-conn), RFC 5425


def forwarding_settings(section: dict, source: str = "[forwarding]") -> dict:
    """The ``[forwarding]`` table with its defaults filled in and its target split into scheme, host and
    port; SettingsError names the key."""
    unknown = set(section) - set(FORWARDING_DEFAULTS) - {"scheme", "host", "port"}
    if unknown:
        raise SettingsError(f"{source}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(FORWARDING_DEFAULTS)})")
    config = {**FORWARDING_DEFAULTS, **{k: v for k, v in section.items() if k in FORWARDING_DEFAULTS}}
    for key, default in FORWARDING_DEFAULTS.items():
        value = config[key]
        if value is None and isinstance(default, str):
            config[key] = value = ""  # a table already completed here ("" was made None)
        if key == "facility" and isinstance(value, int) and not isinstance(value, bool):
            continue
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            config[key] = value = float(value)
        if type(value) is not type(default):
            raise SettingsError(f"{source}: {key} must be {_TYPE_NAMES[type(default)]}, not {value!r}")
    target = config["target"]
    scheme, sep, rest = target.partition("://")
    if rest.startswith("["):  # an IPv6 literal: tls://[2001:db8::1]:6514
        host, _, tail = rest[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else tail or None
    else:  # a name or an IPv4 address holds no colon
        host, _, port = rest.partition(":")
    port = port or str(_DEFAULT_PORTS.get(scheme, 514))
    if not sep or scheme not in _DEFAULT_PORTS or not host or "/" in host or (":" in host and "[" not in rest):
        raise SettingsError(f"{source}: target must be udp://HOST:PORT, tcp://HOST:PORT or tls://HOST:PORT, not {target!r}")  # fmt: skip
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SettingsError(f"{source}: target port must be within 1..65535, not {port!r}")
    facility = config["facility"]
    if isinstance(facility, str):
        if facility.lower() not in FACILITIES:
            raise SettingsError(f"{source}: facility must be one of {', '.join(FACILITIES)} or 0..23, not {facility!r}")
        facility = FACILITIES[facility.lower()]
    if not 0 <= facility <= 23:
        raise SettingsError(f"{source}: facility must be within 0..23, not {facility}")
    if config["queue_limit"] < 1:
        raise SettingsError(f"{source}: queue_limit must be at least 1, not {config['queue_limit']}")
    if not config["retry_max_seconds"] > 0:
        raise SettingsError(f"{source}: retry_max_seconds must be positive, not {config['retry_max_seconds']}")
    if bool(config["cert_file"]) != bool(config["key_file"]):
        raise SettingsError(f"{source}: cert_file and key_file go together")
    if scheme != "tls" and (config["ca_file"] or config["cert_file"]):
        raise SettingsError(f"{source}: ca_file, cert_file and key_file need a tls:// target")
    for key in ("ca_file", "cert_file", "key_file"):
        config[key] = config[key] or None
    return {**config, "scheme": scheme, "host": host, "port": int(port), "facility": facility}


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
        if key == "fleet" and value:  # --fleet KEY=VALUE: over the file's [fleet] keys, not instead of them
            table = document.get("fleet") if isinstance(document.get("fleet"), dict) else {}
            values[key] = fleet_settings({**table, **value}, "--fleet")
            continue
        if key == "forwarding" and value is not None:  # --forward-to sets the target, the file the rest
            value = {**document.get("forwarding", {}), **value}
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


def _fleet_pair(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or key not in _FLEET_TYPES:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE with KEY one of {', '.join(_FLEET_TYPES)}")
    return key, value


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
    add(
        "--forward-to",
        dest="forwarding",
        type=lambda url: {"target": url},
        metavar="URL",
        help="send alerts to this syslog collector (udp://, tcp:// or tls://HOST:PORT; the rest in [forwarding])",
    )
    add(
        "--learning-hours",
        type=_positive_number,
        metavar="HOURS",
        help=f"learning period in packet time: new devices/pairs/commands alert after it (default {default.learning_hours:g})",
    )
    add(
        "--alert-dedup-minutes",
        type=_positive_number,
        metavar="MINUTES",
        help=f"repeats of an operational command count on its open alert (default {default.alert_dedup_minutes:g})",
    )
    add(
        "--fleet",
        type=_fleet_pair,
        action="append",
        metavar="KEY=VALUE",
        help="a [fleet] setting (clickhouse_url, site, sensor_id, user, password, ca_file, spool_mb, timeout); repeat",
    )
    add("--ring-mb", type=_count, metavar="MIB", help=f"kernel ring per interface and worker (default {default.ring_mb})")  # fmt: skip
    add("--admin-socket", metavar="PATH", help="the admin socket for token, connections, devices, status, export "
        "(default: the DB's path + .sock)")  # fmt: skip
    add("--db-memory-mb", type=_count, metavar="MIB", help=f"DuckDB's memory limit (default {default.db_memory_mb})")
    add("--db-threads", type=_count, metavar="N", help=f"DuckDB's threads (default {default.db_threads})")
    add("--max-flows", type=_count, metavar="N", help=f"flows kept at once per worker (default {default.max_flows})")
    add("--reassembly-mb", type=_count, metavar="MIB",
        help=f"what a worker's flows may hold in partial PDUs (default {default.reassembly_mb})")  # fmt: skip


# What SIGHUP can change in a running daemon; every other setting needs a restart.
RELOADABLE = ("bpf", "flush_interval", "retention_days", "rate_limit", "forwarding")


def changes(old: Settings, new: Settings) -> tuple[dict, dict]:
    """(reloadable, restart-only) settings that differ between ``old`` and ``new``: name -> (old, new)."""
    differ = {f.name: (getattr(old, f.name), getattr(new, f.name)) for f in fields(Settings)
              if getattr(old, f.name) != getattr(new, f.name)}  # fmt: skip
    return ({k: v for k, v in differ.items() if k in RELOADABLE},
            {k: v for k, v in differ.items() if k not in RELOADABLE})  # fmt: skip


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The settings given as flags (``add_arguments``'s), for :func:`load`."""
    overrides = {f.name: getattr(args, f.name, None) for f in fields(Settings)}
    overrides["fleet"] = dict(overrides["fleet"]) if overrides["fleet"] else None  # None: the file's [fleet] stands
    return overrides
