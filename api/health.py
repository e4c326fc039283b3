"""GET /healthz and GET /metrics: capture and storage health, and Prometheus counters — no token needed.

Owns how the capture's statistics (the ``stats`` the daemon hands to create_app) and the API's own
request counts are shown; never changes them. ``stats`` is a callable (or an object with
``snapshot()``) returning a dict with any of these keys; missing keys take replay-mode values:

    mode               "replay" | "live"
    interfaces         [{"name": "eth1", "packets": int, "drops": int}] (or names)
    packets, bytes     totals since start
    kernel_drops       packets the kernel dropped before capture saw them
    decode_errors      {"modbus": int, ...} per protocol
    last_flush_ms      epoch ms of the last flush to the DB (default: the DB file's modification time)
    flush_count, flush_seconds_total, last_flush_seconds   flush latency
    problems           ["interface eth1 is down", ...]: any makes /healthz answer 503
"""

from __future__ import annotations

import os
import time

from flask import Blueprint, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

from sensor.serialize import dumps, rfc3339

from . import JSON_CONTENT_TYPE
from .errors import ApiError

blueprint = Blueprint("health", __name__)
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
REPLAY_STATS = {
    "mode": "replay",
    "interfaces": [],
    "packets": 0,
    "bytes": 0,
    "kernel_drops": 0,
    "decode_errors": {},
    "last_flush_ms": None,
    "flush_count": 0,
    "flush_seconds_total": 0.0,
    "last_flush_seconds": None,
    "problems": [],
    "fleet": None,  # sensor.fleet.Shipper.stats() when the sensor ships to ClickHouse
}


def db_modified_ms(path: str) -> int | None:
    """When the DB (or its write-ahead log) was last written: the last flush, for a DB nobody captures into."""
    times = [os.stat(p).st_mtime_ns for p in (path, path + ".wal") if os.path.exists(p)]
    return max(times) // 1_000_000 if times else None


def read_stats(stats, store) -> dict:
    try:
        snapshot = {} if stats is None else (stats() if callable(stats) else stats.snapshot())
    except Exception as error:  # noqa: BLE001 — health must say the statistics are broken, not fail
        snapshot = {"problems": [f"capture statistics are unavailable: {type(error).__name__}"]}
    merged = {**REPLAY_STATS, **snapshot}
    if merged["last_flush_ms"] is None and getattr(store, "path", ":memory:") != ":memory:":
        merged["last_flush_ms"] = db_modified_ms(store.path)
    merged["interfaces"] = [{"name": i} if isinstance(i, str) else dict(i) for i in merged["interfaces"]]
    return merged


@blueprint.get("/healthz")
def healthz():
    context = current_app.extensions["otsensor"]
    stats = read_stats(context.stats, context.store)
    body = {
        "status": "ok",
        "mode": stats["mode"],
        "interfaces": stats["interfaces"],
        "packets": stats["packets"],
        "bytes": stats["bytes"],
        "kernelDrops": stats["kernel_drops"],
        "decodeErrors": dict(sorted(stats["decode_errors"].items())),
        "lastFlush": None if stats["last_flush_ms"] is None else rfc3339(stats["last_flush_ms"]),
        "lastFlushMs": stats["last_flush_ms"],
        "problems": list(stats["problems"]),
    }
    if stats["fleet"]:
        body["fleet"] = stats["fleet"]  # spooled, dropped (over the spool's bound), shipped, last error
    try:
        devices, connections = context.store.counts()
        body["storage"] = {"ok": True, "devices": devices, "connections": connections}
    except Exception as error:  # noqa: BLE001 — any storage failure is what health must report, not raise
        body["storage"] = {"ok": False, "error": f"{type(error).__name__}: {error}"[:300]}
        body["problems"].append("storage is unavailable")
    if body["problems"]:
        body["status"] = "unavailable"
        raise ApiError(503, "; ".join(body["problems"]), body)
    response = Response(dumps(body), content_type=JSON_CONTENT_TYPE)
    response.headers["Cache-Control"] = "no-store"
    return response


class CaptureCollector:
    """Reads the capture's statistics at scrape time, so /metrics never lags them."""

    def __init__(self, context) -> None:
        self.context = context

    def collect(self):
        stats = read_stats(self.context.stats, self.context.store)
        for name, key, text in (
            ("otsensor_packets", "packets", "Packets captured or replayed"),
            ("otsensor_bytes", "bytes", "Bytes captured or replayed"),
            ("otsensor_kernel_drops", "kernel_drops", "Packets the kernel dropped before capture"),
        ):
            yield CounterMetricFamily(name, text, value=stats[key])
        errors = CounterMetricFamily("otsensor_decode_errors", "Decode errors per protocol", labels=["protocol"])
        for protocol, count in sorted(stats["decode_errors"].items()):
            errors.add_metric([protocol], count)
        yield errors
        interface_packets = CounterMetricFamily(
            "otsensor_interface_packets", "Packets per capture interface", labels=["interface"]
        )
        interface_drops = CounterMetricFamily(
            "otsensor_interface_drops", "Kernel drops per capture interface", labels=["interface"]
        )
        for interface in stats["interfaces"]:
            interface_packets.add_metric([interface["name"]], interface.get("packets", 0))
            interface_drops.add_metric([interface["name"]], interface.get("drops", 0))
        yield interface_packets
        yield interface_drops
        yield SummaryMetricFamily(
            "otsensor_flush_duration_seconds",
            "Time taken by flushes of the connection table to the DB",
            count_value=stats["flush_count"],
            sum_value=stats["flush_seconds_total"],
        )
        if stats["last_flush_seconds"] is not None:
            yield GaugeMetricFamily(
                "otsensor_last_flush_duration_seconds", "Duration of the last flush", value=stats["last_flush_seconds"]
            )
        if stats["last_flush_ms"] is not None:
            yield GaugeMetricFamily(
                "otsensor_last_flush_timestamp_seconds",
                "When the last flush ended",
                value=stats["last_flush_ms"] / 1000,
            )
        fleet = stats["fleet"]
        if fleet:
            for name, key, text in (
                ("otsensor_fleet_spooled_deltas", "spooledDeltas", "Deltas waiting in the spool for ClickHouse"),
                ("otsensor_fleet_spooled_bytes", "spooledBytes", "Bytes of the spool"),
            ):
                yield GaugeMetricFamily(name, text, value=fleet[key])
            for name, key, text in (
                ("otsensor_fleet_dropped_deltas", "droppedDeltas", "Deltas dropped: the spool was full"),
                ("otsensor_fleet_dropped_rows", "droppedRows", "Connections and devices in dropped deltas"),
                ("otsensor_fleet_shipped_deltas", "shippedDeltas", "Deltas shipped to ClickHouse"),
                ("otsensor_fleet_shipped_rows", "shippedRows", "Rows shipped to ClickHouse"),
                ("otsensor_fleet_failures", "failures", "Failed attempts to ship to ClickHouse"),
                ("otsensor_fleet_dropped_alerts", "droppedAlerts", "Alert states dropped: the spool was full"),
                ("otsensor_fleet_shipped_alerts", "shippedAlerts", "Alert states shipped to ClickHouse"),
                ("otsensor_fleet_dropped_classes", "droppedClasses", "Device flags dropped: the spool was full"),
                ("otsensor_fleet_shipped_classes", "shippedClasses", "Device class rows shipped to ClickHouse"),
            ):
                yield CounterMetricFamily(name, text, value=fleet.get(key, 0))
        try:
            devices, connections = self.context.store.counts()
        except Exception:  # noqa: BLE001 — a scrape must not fail because storage does; /healthz says why
            return
        yield GaugeMetricFamily("otsensor_devices", "Devices in the DB", value=devices)
        yield GaugeMetricFamily("otsensor_connections", "Connections in the DB", value=connections)


class ApiMetrics:
    """The app's own Prometheus registry (private, so several apps in one process never collide)."""

    def __init__(self, context) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "otsensor_api_requests",
            "API requests answered, by endpoint, method and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "otsensor_api_request_duration_seconds",
            "Time to answer an API request, by endpoint",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.registry.register(CaptureCollector(context))

    def start(self) -> None:
        g.started = time.perf_counter()

    def finish(self, response: Response) -> Response:
        # the rule's endpoint, never the raw path: unknown paths must not mint new label values
        endpoint = request.url_rule.endpoint if request.url_rule is not None else "unmatched"
        method = request.method if request.method in {"GET", "HEAD", "OPTIONS"} else "other"
        self.requests.labels(endpoint, method, str(response.status_code)).inc()
        started = g.get("started")
        if started is not None:
            self.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response


@blueprint.get("/metrics")
def metrics():
    registry = current_app.extensions["otsensor"].metrics.registry
    return Response(generate_latest(registry), mimetype=None, content_type=PROMETHEUS_TEXT)
