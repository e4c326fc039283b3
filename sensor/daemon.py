"""The live daemon, `otsensor run`: capture workers feed one process that owns DuckDB and serves the API.

Owns the process tree, the deltas workers send, the scheduled flush / statistics / retention jobs and a
clean stop; never decodes a packet in the main process, never sends on a capture interface.

    worker 0 ─┐  AF_PACKET + TPACKET_V3 ring per interface, one PACKET_FANOUT_HASH group per interface,
    worker 1 ─┤  an Engine each; every REPORT_SECONDS: engine.take_delta() + counters ─┐
       …      │                                                                       ▼
              └──────────── a pipe per worker ─────────────► main: pending ConnectionTable
                                                            (the semilattice join of deltas)
    main: APScheduler jobs — flush (Store.merge every flush_interval), statistics, retention —
          the API (api.server: an asyncio front and a worker pool) in threads, over the same Store, and the admin socket (sensor.admin:
          tokens, queries, status, export for the CLI while this process holds the DB).
    SIGHUP: the settings are read again; bpf, flush_interval, retention_days and rate_limit change live
          (a new filter goes down each worker's orders pipe and onto its open sockets), the rest is
          logged as needing a restart.

Workers are *spawned* (a fresh interpreter), not forked: the main process holds a DuckDB handle, a
listening socket and scheduler threads, none of which a child must inherit, and a worker imports only
capture and engine (never Flask nor DuckDB). A worker ignores SIGINT/SIGTERM (the main process decides
when to stop, so a terminal's Ctrl-C or systemd's stop reaches it once, through the main process) and
dies with its parent (PR_SET_PDEATHSIG), so a SIGKILLed daemon leaves no capture behind.

Each worker has two pipes of its own — orders (main → worker: "stop", or a new capture filter) and
reports (worker → main) — and shares no lock with any other process: a multiprocessing Queue or Event
would, and a worker killed while holding one (OOM killer, kill -9) would hang every other worker's
reports or the main process's stop. A worker ignores SIGHUP as well: a reload is the main process's.

What a SIGKILL can lose: the deltas not yet flushed — at most one flush interval plus one report
interval of traffic. The DB is never corrupt (each flush is one DuckDB transaction) and device ids live
in the DB, so a restart keeps them.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import operator
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import replace
from pathlib import Path

from . import fleet
from .capture import Capture, CaptureUnavailable, compile_bpf, prepare_passive_interface
from .connections import Connection, ConnectionTable, Device
from .engine import Engine
from .settings import Settings, SettingsError, add_arguments, changes, load, overrides_from_args

log = logging.getLogger("otsensor")

REPORT_SECONDS = 1.0  # how often a worker hands its delta over (at most; half the flush interval if shorter)
STATS_SECONDS = 10.0  # statistics job: drop and rate log lines, stale-worker check
STALE_SECONDS = 30.0  # a worker silent for this long is a /healthz problem
RETENTION_SECONDS = 3600.0  # retention job period (when retention_days > 0)
WORKER_START_SECONDS = 60.0  # a spawned worker imports numpy and opens its rings within this
WORKER_STOP_SECONDS = 20.0  # draining rings and sending the last delta takes well under this
REOPEN_SECONDS = 5.0  # a capture that failed (interface gone) is tried again this often
BLOCK_SIZE = 1 << 20  # TPACKET_V3 block: ring_mb blocks of 1 MiB per interface and worker
DAY_MS = 86_400_000
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_WORKER_IGNORES = _STOP_SIGNALS | {signal.SIGHUP}  # a reload is the main process's business too


# --- deltas on the wire ----------------------------------------------------------------------------
# A delta crosses the process boundary as plain tuples: pickling the __slots__ objects themselves goes
# through copyreg's generic path, two to three times slower than tuples of their fields.
_CONNECTION_FIELDS = Connection.__slots__
_DEVICE_FIELDS = Device.__slots__
_connection_values = operator.attrgetter(*_CONNECTION_FIELDS)
_device_values = operator.attrgetter(*_DEVICE_FIELDS)


def table_to_wire(table: ConnectionTable) -> tuple[list, list, list, int]:
    """A ConnectionTable as (connections, devices, operations, operations dropped): lists of (key,
    *field values) in __slots__ order, and the operational occurrences (tuples already)."""
    return (
        [(key, *_connection_values(record)) for key, record in table.connections.items()],
        [(key, *_device_values(record)) for key, record in table.devices.items()],
        table.operations,
        table.operations_dropped,
    )


def table_from_wire(wire: tuple[list, list]) -> ConnectionTable:
    """The inverse of :func:`table_to_wire`."""
    table = ConnectionTable()
    connections, devices, table.operations, table.operations_dropped = wire
    for key, *values in connections:
        record = table.connections[key] = Connection()
        for name, value in zip(_CONNECTION_FIELDS, values):
            setattr(record, name, value)
    for key, *values in devices:
        record = table.devices[key] = Device()
        for name, value in zip(_DEVICE_FIELDS, values):
            setattr(record, name, value)
    return table


# --- worker processes -------------------------------------------------------------------------------
class InterfaceReader(threading.Thread):
    """Reads one interface's ring in a worker and feeds the worker's engine; reopens after a failure."""

    def __init__(self, name: str, group: int, settings: Settings, engine: Engine, engine_lock, stop) -> None:
        super().__init__(name=f"capture-{name}", daemon=True)
        self.interface, self.group, self.settings = name, group, settings
        self.engine, self.engine_lock, self.stop = engine, engine_lock, stop
        self.capture: Capture | None = None
        self.problem: str | None = None
        self._carried = {"packets": 0, "drops": 0}  # counts of captures closed after a failure
        self._capture_lock = threading.Lock()  # stats() from the reporting thread vs close() here
        self._internal_errors = 0

    def open(self) -> None:
        capture = Capture(
            self.interface,
            bpf=self.settings.bpf,
            fanout_group=self.group,
            block_size=BLOCK_SIZE,
            block_count=self.settings.ring_mb,
        )
        with self._capture_lock:
            self.capture = capture
        self.problem = None

    def run(self) -> None:
        while True:
            try:
                if self.capture is None:
                    self.open()
                    log.info("capturing on %s again", self.interface)
                for batch in self.capture.batches(self.stop):
                    self._process(batch)
                return  # stopped, and the ring is drained
            except CaptureUnavailable as error:
                self.problem = f"{error}; retrying every {REOPEN_SECONDS:g} s"
                log.warning("%s", self.problem)
            except Exception as error:  # noqa: BLE001 — an unforeseen socket error: log it, reopen
                self.problem = f"capture on {self.interface} failed: {error}; retrying every {REOPEN_SECONDS:g} s"
                log.error("capture on %s failed:\n%s", self.interface, traceback.format_exc())
            self._close()
            if self.stop.wait(REOPEN_SECONDS):
                return

    def _process(self, batch) -> None:
        with self.engine_lock:
            try:
                self.engine.process_batch(batch)
            except Exception:  # noqa: BLE001 — one bad batch must not end the capture
                errors = self.engine.errors
                errors["internal"] = errors.get("internal", 0) + 1
                self._internal_errors += 1
                if self._internal_errors == 1:
                    log.error("decoding a batch from %s failed:\n%s", self.interface, traceback.format_exc())

    def set_filter(self, expression: str | None, program) -> None:
        """A reload's new capture filter: onto the open socket now, and into the settings a reopen uses."""
        with self._capture_lock:
            self.settings = replace(self.settings, bpf=expression)
            if self.capture is not None:
                self.capture.set_filter(program)

    def stats(self) -> dict:
        with self._capture_lock:
            counts = self.capture.stats() if self.capture is not None else {}
        return {key: self._carried[key] + counts.get(key, 0) for key in self._carried}

    def _close(self) -> None:
        with self._capture_lock:
            if self.capture is not None:
                try:
                    counts = self.capture.stats()
                except OSError:  # the socket broke with the interface: its last counts are gone
                    counts = {}
                for key in self._carried:
                    self._carried[key] += counts.get(key, 0)
                self.capture.close()
                self.capture = None


def _die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGKILL when the parent goes (the thread that spawned us: the main thread)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the request was in place
        os._exit(1)


class _Reports:
    """A worker's end of its reports pipe, shared by its reporting loop and its listener thread."""

    def __init__(self, pipe) -> None:
        self.pipe, self._lock = pipe, threading.Lock()

    def send(self, message) -> None:
        with self._lock:
            self.pipe.send(message)

    def close(self) -> None:
        self.pipe.close()


def _listen_to_main(index: int, stop_pipe, stop: threading.Event, readers, reports: _Reports) -> None:
    """A worker's listener thread. "stop", or the end of the pipe (the main process is gone), sets ``stop``;
    ("filter", expression, {interface: program}) replaces the capture filter of every ring and is
    acknowledged with ("filter", index, expression, problem or None)."""
    while True:
        try:
            message = stop_pipe.recv()
        except (EOFError, OSError):
            break
        if not (isinstance(message, tuple) and message[0] == "filter"):
            break
        _kind, expression, programs = message
        problem = None
        for reader in readers:
            try:
                reader.set_filter(expression, programs.get(reader.interface))
            except (CaptureUnavailable, OSError) as error:
                problem = f"{reader.interface}: {error}"
        try:
            reports.send(("filter", index, expression, problem))
        except OSError:
            break
    stop.set()


def worker_main(index: int, settings: Settings, groups: list[int], reports, stop_pipe, parent: int) -> None:
    """One capture worker: a ring per interface in one fanout group per interface, one Engine.

    Sends on ``reports``: ("ready", index), then ("report", index, wire delta or None, counters) every
    report interval and once more after the rings are drained, then ("done", index); or ("fatal", index,
    text) if a ring cannot be opened at start. Stops when "stop" arrives on ``stop_pipe`` or it ends; a
    ("filter", ...) order there swaps the capture filter of its rings (see :func:`_listen_to_main`).
    """
    _die_with_parent(parent)
    for number in _WORKER_IGNORES:
        signal.signal(number, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _WORKER_IGNORES)
    logging.basicConfig(level=logging.INFO, format=f"otsensor worker {index}: %(message)s", stream=sys.stderr)
    reports = _Reports(reports)
    stop = threading.Event()
    engine, engine_lock = Engine(max_flows=settings.max_flows, reassembly_mb=settings.reassembly_mb), threading.Lock()
    readers = [InterfaceReader(name, group, settings, engine, engine_lock, stop)
               for name, group in zip(settings.interfaces, groups)]  # fmt: skip
    threading.Thread(target=_listen_to_main, args=(index, stop_pipe, stop, readers, reports), name="main-listener",
                     daemon=True).start()  # fmt: skip
    try:
        for reader in readers:
            reader.open()
    except (CaptureUnavailable, OSError, ValueError) as error:
        for reader in readers:
            reader._close()
        reports.send(("fatal", index, str(error)))
        return
    reports.send(("ready", index, os.getpid()))
    for reader in readers:
        reader.start()

    def report() -> None:
        with engine_lock:
            delta = engine.take_delta()
            counters = {"packets": engine.packets, "bytes": engine.bytes, "errors": dict(engine.errors)}
        counters["interfaces"] = {reader.interface: reader.stats() for reader in readers}
        counters["problems"] = [reader.problem for reader in readers if reader.problem]
        wire = table_to_wire(delta) if delta.connections or delta.devices else None
        reports.send(("report", index, wire, counters))

    interval = min(REPORT_SECONDS, settings.flush_interval / 2)
    while not stop.wait(interval):
        report()
    for reader in readers:
        reader.join()  # each drains its ring: batches() returns once the last block is read
    report()
    for reader in readers:
        reader._close()
    reports.send(("done", index))
    reports.close()


# --- the main process -------------------------------------------------------------------------------
class Worker:
    """The main process's view of one worker: its process and its latest cumulative counters."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process = None
        self.counters: dict = {}
        self.stop_pipe = None  # main's ends of this worker's pipes
        self.reports = None
        self.ready = threading.Event()
        self.done = threading.Event()
        self.fatal: str | None = None
        self.last_report = time.monotonic()
        self.filter: str | None = None  # the capture filter this worker's rings have (acknowledged)
        self.restarts = 0
        self.base: dict = {}  # counters of this slot's earlier (crashed) processes, carried on


class Daemon:
    def __init__(self, settings: Settings, store, reload_settings=None) -> None:
        """``reload_settings()``: the settings as they are now (file and flags), read again on SIGHUP."""
        self.settings, self.store, self.reload_settings = settings, store, reload_settings
        self.forwarder = None  # alerts to a SIEM (sensor/forward.py), set by _apply_forwarding
        self.ctx = multiprocessing.get_context("spawn")
        self.stopping = threading.Event()
        self.collecting = True  # the collector ends when this is False and every report pipe has ended
        self.readers_changed = threading.Lock()
        base = os.getpid() & 0xFFFF  # a group id per interface; another daemon's pid gives other ids
        self.groups = [(base + i) & 0xFFFF for i in range(len(settings.interfaces))]
        self.workers = [Worker(i) for i in range(settings.workers)]
        self.pending = ConnectionTable()  # deltas received, not yet in the DB
        self.pending_lock = threading.Lock()
        self.flush_lock = threading.Lock()
        self.generation = 0  # bumped around every write: the API's ETags follow it
        self.flushes = {"count": 0, "seconds_total": 0.0, "last_seconds": None, "last_ms": None}
        self.flush_problem: str | None = None
        self.retention_problem: str | None = None
        self._last_drops = 0  # kernel drops at the last statistics job
        self.scheduler = None
        self.server = None
        self.server_thread = None
        self.collector = None
        self.api_context = None  # the Flask app's context (its token cache and rate limiter)
        self.admin = None  # the admin socket (sensor.admin)
        self.wakeup = threading.Event()  # the main loop's: a signal arrived
        self.reload_requested = threading.Event()
        self.fleet = fleet.start(settings.fleet, settings.db)  # None without [fleet]; ships in its own thread
        if self.fleet is not None:
            self.fleet.attach(store)  # its alerts too: each change after its commit, and now what never left

    # -- workers ---------------------------------------------------------------------------------
    def start_worker(self, worker: Worker) -> None:
        """Spawn ``worker``'s process; only ever from the main thread (PR_SET_PDEATHSIG follows the thread)."""
        worker.ready.clear()
        worker.done.clear()
        worker.fatal = None
        if worker.stop_pipe is not None:  # an earlier process's
            worker.stop_pipe.close()
        stop_theirs, stop_ours = self.ctx.Pipe(duplex=False)
        reports_ours, reports_theirs = self.ctx.Pipe(duplex=False)
        worker.process = self.ctx.Process(
            target=worker_main,
            args=(worker.index, self.settings, self.groups, reports_theirs, stop_theirs, os.getpid()),
            name=f"otsensor-worker-{worker.index}",
            daemon=False,
        )
        # Blocked signals survive fork and exec: the child cannot be interrupted before it ignores them.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _WORKER_IGNORES)
        try:
            worker.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        # Only the worker holds its ends now: its reports pipe ends when the worker does.
        stop_theirs.close()
        reports_theirs.close()
        with self.readers_changed:
            worker.stop_pipe, worker.reports = stop_ours, reports_ours
        worker.last_report = time.monotonic()
        worker.filter = self.settings.bpf

    def start_workers(self) -> str | None:
        """Start every worker and wait until each captures; the first worker's error text, if any."""
        for worker in self.workers:
            self.start_worker(worker)
        deadline = time.monotonic() + WORKER_START_SECONDS
        while not all(w.ready.is_set() or w.fatal for w in self.workers):
            if self.stopping.is_set():
                return "stopped while starting"
            if time.monotonic() > deadline:
                return f"capture workers did not start within {WORKER_START_SECONDS:g} s"
            dead = [w for w in self.workers if not w.ready.is_set() and not w.process.is_alive()]
            if dead and not any(w.fatal for w in dead):
                time.sleep(0.2)  # its last message may still be on the way
                if not dead[0].fatal:
                    return f"capture worker {dead[0].index} exited with status {dead[0].process.exitcode}"
            time.sleep(0.05)
        return next((w.fatal for w in self.workers if w.fatal), None)

    def collect(self) -> None:
        """The collector thread: every message of every worker, until told to end and every pipe has ended."""
        open_pipes: dict = {}  # report pipe -> worker
        while True:
            with self.readers_changed:
                for worker in self.workers:
                    if worker.reports is not None:
                        open_pipes[worker.reports] = worker
                        worker.reports = None
            if not open_pipes and not self.collecting:
                return
            for pipe in multiprocessing.connection.wait(list(open_pipes), timeout=0.2):
                try:
                    message = pipe.recv()
                except (EOFError, OSError):  # the worker has ended (and everything it sent was read)
                    pipe.close()
                    del open_pipes[pipe]
                    continue
                try:
                    self.handle(message)
                except Exception:  # noqa: BLE001 — a bad message must not stop the collection
                    log.error("a worker message could not be handled:\n%s", traceback.format_exc())

    def handle(self, message: tuple) -> None:
        kind, index = message[0], message[1]
        worker = self.workers[index]
        if kind == "report":
            _kind, _index, wire, counters = message
            if wire is not None:
                delta = table_from_wire(wire)
                with self.pending_lock:
                    self.pending.merge(delta)
            worker.counters = counters
            worker.last_report = time.monotonic()
        elif kind == "ready":
            worker.ready.set()
        elif kind == "fatal":
            worker.fatal = message[2]
        elif kind == "done":
            worker.done.set()
        elif kind == "filter":
            _kind, _index, expression, problem = message
            if problem:
                log.error("capture worker %d could not take the new capture filter: %s", index, problem)
                return
            worker.filter = expression
            if all(w.filter == expression for w in self.workers if w.process is not None):
                log.info("capture filter in every worker now: %s", expression or "none (everything)")

    def supervise(self) -> None:
        """Main thread, every second: a worker that died is started again, with backoff."""
        for worker in self.workers:
            if worker.process is None or worker.process.is_alive() or self.stopping.is_set():
                continue
            wait = min(60.0, 2.0**worker.restarts)
            if time.monotonic() - worker.last_report < wait:
                continue
            log.warning(
                "capture worker %d exited with status %s; starting it again", worker.index, worker.process.exitcode
            )
            worker.base = _add_counters(worker.base, {k: v for k, v in worker.counters.items() if k != "problems"})
            worker.counters = {}
            worker.restarts += 1
            self.start_worker(worker)

    def stop_all_workers(self) -> bool:
        """Workers drain their rings and send their last deltas; True if every one finished so."""
        for worker in self.workers:
            if worker.stop_pipe is not None:
                try:
                    worker.stop_pipe.send("stop")
                except OSError:  # that worker has already ended
                    pass
        deadline = time.monotonic() + WORKER_STOP_SECONDS
        clean = True
        for worker in self.workers:
            if worker.process is None:
                continue
            worker.process.join(max(0.1, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.error("capture worker %d did not stop in time; its last delta is lost", worker.index)
                worker.process.kill()
                worker.process.join()
                clean = False
            elif worker.ready.is_set() and not worker.done.is_set():
                # "done" is the last thing a worker puts; the collector may still be reading it
                if not worker.done.wait(5.0):
                    log.error("capture worker %d ended without its last delta", worker.index)
                    clean = False
        return clean

    # -- scheduled jobs --------------------------------------------------------------------------
    def flush(self) -> bool:
        """Write the pending deltas in one transaction. On failure they stay pending for the next try."""
        with self.flush_lock:
            with self.pending_lock:
                delta, self.pending = self.pending, ConnectionTable()
            started = time.perf_counter()
            if delta.connections or delta.devices:
                try:
                    self.generation += 1  # before and after: a reader mid-write never keeps a stale tag
                    if self.fleet is None:
                        self.store.merge(delta)
                    else:
                        with self.fleet.together():  # the commit's alerts and flags spool with its delta
                            self.store.merge(delta)
                            self.fleet.submit(delta)  # returns at once: spooled and shipped by the fleet thread
                except Exception as error:  # noqa: BLE001 — disk full, I/O error: keep the data, say so
                    with self.pending_lock:
                        delta.merge(self.pending)  # the join again: nothing counted twice, nothing lost
                        self.pending = delta
                    self.flush_problem = f"flush to {self.store.path} failed: {error}"[:300]
                    log.error("%s; %d connections kept in memory for the next try", self.flush_problem, len(delta))
                    return False
                finally:
                    self.generation += 1
            seconds = time.perf_counter() - started
            self.flushes["count"] += 1
            self.flushes["seconds_total"] += seconds
            self.flushes["last_seconds"] = seconds
            self.flushes["last_ms"] = time.time_ns() // 1_000_000
            if self.flush_problem:
                log.info("flush to %s works again", self.store.path)
            self.flush_problem = None
            return True

    def statistics(self) -> None:
        """Statistics job: a log line when the kernel dropped packets; workers that stopped reporting."""
        snapshot = self.snapshot()
        drops = snapshot["kernel_drops"]
        if drops > self._last_drops:
            log.warning("the kernel dropped %d packets in the last %g s (%d in all)", drops - self._last_drops,
                        STATS_SECONDS, drops)  # fmt: skip
        self._last_drops = drops
        for problem in snapshot["problems"]:
            log.warning("%s", problem)

    def retention(self) -> None:
        """Retention job: forget connections whose last packet is older than retention_days.

        Devices stay: their ids are stable for the life of the DB, and one that talks again keeps its id.
        """
        cutoff = time.time_ns() // 1_000_000 - int(self.settings.retention_days * DAY_MS)
        store = self.store
        try:
            with store._lock:  # the store's writer lock: never inside a flush
                self.generation += 1
                try:
                    with store.transaction() as db:
                        removed = db.execute("DELETE FROM connections WHERE last_seen < ?", [cutoff]).fetchone()[0]
                finally:
                    self.generation += 1
                store.checkpoint_if_due()
        except Exception as error:  # noqa: BLE001
            self.retention_problem = f"retention failed: {error}"[:300]
            log.error("%s", self.retention_problem)
            return
        self.retention_problem = None
        if removed:
            log.info("retention: forgot %d connections not seen for %g days", removed, self.settings.retention_days)

    # -- statistics for /healthz and /metrics ----------------------------------------------------
    def snapshot(self) -> dict:
        """The API's ``stats``: contract section 3's /healthz and /metrics figures, live."""
        totals: dict = {}
        for worker in self.workers:
            totals = _add_counters(totals, _add_counters(worker.base, worker.counters))
        interfaces = [
            {"name": name, **totals.get("interfaces", {}).get(name, {"packets": 0, "drops": 0})}
            for name in self.settings.interfaces
        ]
        problems = []
        for worker in self.workers:
            if worker.process is not None and not worker.process.is_alive() and not self.stopping.is_set():
                problems.append(f"capture worker {worker.index} is not running (restarting)")
            elif time.monotonic() - worker.last_report > STALE_SECONDS:
                problems.append(f"capture worker {worker.index} has not reported for {STALE_SECONDS:g} s")
            problems += worker.counters.get("problems", [])
        checkpoint_problem = getattr(self.store, "checkpoint_problem", None)  # None: no store (the unit tests')
        problems += [p for p in (self.flush_problem, self.retention_problem, checkpoint_problem) if p]
        with self.pending_lock:
            pending = len(self.pending)
        return {
            "mode": "live",
            "interfaces": interfaces,
            "packets": totals.get("packets", 0),
            "bytes": totals.get("bytes", 0),
            "kernel_drops": sum(i["drops"] for i in interfaces),
            "decode_errors": totals.get("errors", {}),
            "last_flush_ms": self.flushes["last_ms"],
            "flush_count": self.flushes["count"],
            "flush_seconds_total": self.flushes["seconds_total"],
            "last_flush_seconds": self.flushes["last_seconds"],
            "pending_connections": pending,
            "workers": len(self.workers),
            "problems": list(dict.fromkeys(problems)),
            "fleet": None if self.fleet is None else self.fleet.stats(),
        }

    # -- the API ---------------------------------------------------------------------------------
    def prepare_api(self) -> None:
        from api import create_app  # Flask is imported here, in the main process only
        from api.server import ApiServer, parse_listen

        host, port = parse_listen(self.settings.listen)
        app = create_app(
            self.store,
            {
                "rate_limit": self.settings.rate_limit,
                "rate_window": 60.0,
                "stats": self.snapshot,
                "generation": lambda: self.generation,
            },
        )
        self.api_context = app.extensions["otsensor"]
        self.server = ApiServer(app, host, port, self.settings.tls_cert, self.settings.tls_key,
                                threads=self.settings.api_threads)  # fmt: skip
        self.server.prepare()

    def start_admin(self) -> None:
        """The admin socket beside the DB (sensor.admin): tokens, queries, status and export while capturing."""
        from api.cli import reachable_url

        from .admin import AdminServer, Holder

        holder = Holder(
            self.store,
            role="run",
            stats=self.snapshot,
            settings=self.effective_settings,
            tokens_changed=self.api_context.tokens.invalidate,
            api_url=reachable_url(self.server.url),
        )
        self.admin = AdminServer(self.settings.admin_socket_path, holder)
        self.admin.start()

    def effective_settings(self) -> dict:
        """The settings a SIGHUP can change, as in effect now; ``worker_filters``: each worker's acknowledged one."""
        settings = self.settings
        return {
            "bpf": settings.bpf,
            "flush_interval": settings.flush_interval,
            "retention_days": settings.retention_days,
            "rate_limit": settings.rate_limit,
            "worker_filters": [worker.filter for worker in self.workers],
        }

    # -- SIGHUP: reload what can change without a restart ------------------------------------------
    def reload(self) -> None:
        """Read the settings again and apply those that can change live; log what was applied and what needs a restart."""
        if self.reload_settings is None:
            log.info("SIGHUP: no settings file to read again")
            return
        try:
            new = self.reload_settings()
            new.check()
        except SettingsError as error:
            log.error("SIGHUP: %s; nothing was changed", error)
            return
        live, restart = changes(self.settings, new)
        applied = []
        for name, (old, value) in live.items():
            try:
                getattr(self, f"_apply_{name}")(value)
            except (CaptureUnavailable, ValueError) as error:
                log.error("SIGHUP: %s stays %r: %s", name, old, error)
                continue
            self.settings = replace(self.settings, **{name: value})
            applied.append(f"{name} {old!r} -> {value!r}")
        log.info(
            "SIGHUP: applied %s; need a restart: %s",
            ", ".join(applied) or "nothing (no live setting changed)",
            ", ".join(f"{name} {old!r} -> {value!r}" for name, (old, value) in restart.items()) or "nothing",
        )

    def _apply_bpf(self, expression: str | None) -> None:
        """Compile for every interface first (a bad filter changes nothing), then send to each worker."""
        programs = {name: compile_bpf(name, expression) if expression else None for name in self.settings.interfaces}
        for worker in self.workers:
            if worker.stop_pipe is not None and worker.process is not None and worker.process.is_alive():
                try:
                    worker.stop_pipe.send(("filter", expression, programs))
                except OSError:  # it has just ended: it restarts with the new settings
                    pass

    def _apply_flush_interval(self, seconds: float) -> None:
        if self.scheduler is not None:
            self.scheduler.reschedule_job("flush", trigger="interval", seconds=seconds)

    def _apply_retention_days(self, days: float) -> None:
        if self.scheduler is None:
            return
        from datetime import UTC, datetime

        job = self.scheduler.get_job("retention")
        now = datetime.now(UTC)  # the new horizon is applied at once, then every hour as at start
        if days > 0 and job is None:
            self.scheduler.add_job(self.retention, id="retention", trigger="interval", seconds=RETENTION_SECONDS,
                                   max_instances=1, coalesce=True, misfire_grace_time=None, next_run_time=now)  # fmt: skip
        elif days > 0:
            job.modify(next_run_time=now)
        elif job is not None:
            job.remove()

    def _apply_forwarding(self, section: dict | None) -> None:
        """Replace the SIEM forwarder (None: stop forwarding); the old one hands its queue to its spool,
        which the new one, spooling in the same folder, reads back."""
        from .forward import Forwarder

        old = self.forwarder
        if old is not None:
            self.store.detector.on_alert.remove(old.send)
            old.close()
        state_dir = Path(self.settings.db).resolve().parent
        self.forwarder = Forwarder.from_settings({"forwarding": section}, state_dir) if section else None
        if self.forwarder is not None:
            self.store.detector.on_alert.append(self.forwarder.send)

    def _apply_rate_limit(self, limit: int) -> None:
        from api.auth import RateLimiter

        if self.api_context is not None:
            self.api_context.limiter = RateLimiter(limit, 60.0) if limit else None

    def start_jobs(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        logging.getLogger("apscheduler").setLevel(logging.WARNING)  # not a line per job run
        scheduler = self.scheduler = BackgroundScheduler(timezone="UTC")
        every = {"trigger": "interval", "max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        scheduler.add_job(self.flush, id="flush", seconds=self.settings.flush_interval, **every)
        scheduler.add_job(self.statistics, id="statistics", seconds=STATS_SECONDS, **every)
        if self.settings.retention_days > 0:
            self.retention()  # once at start, then every hour
            scheduler.add_job(self.retention, id="retention", seconds=RETENTION_SECONDS, **every)
        scheduler.start()

    # -- the whole life ------------------------------------------------------------------------------
    def serve(self) -> int:
        """Start everything, run until SIGTERM/SIGINT, stop cleanly; SIGHUP reloads. The exit status."""
        previous = {number: signal.signal(number, self._on_signal) for number in _STOP_SIGNALS}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            return self._serve()
        finally:
            if self.admin is not None:
                self.admin.stop()  # the socket file goes with a clean exit
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _on_signal(self, number, _frame) -> None:
        if not self.stopping.is_set():
            log.info("%s: draining the capture rings, flushing and stopping", signal.Signals(number).name)
        self.stopping.set()
        self.wakeup.set()

    def _on_hangup(self, _number, _frame) -> None:
        self.reload_requested.set()  # the main loop reloads: a signal handler must not take locks
        self.wakeup.set()

    def _serve(self) -> int:
        from api.server import ServeError

        from .admin import AdminError

        try:
            self.prepare_api()
        except ServeError as error:
            print(f"otsensor: {error}", file=sys.stderr)
            return 2
        try:
            self.start_admin()
        except AdminError as error:
            self.server.stop()
            print(f"otsensor: {error}", file=sys.stderr)
            return 2
        self.collector = threading.Thread(target=self.collect, name="collector", daemon=True)
        self.collector.start()
        problem = self.start_workers()
        if problem is not None:
            self.stop_all_workers()
            self._end_collector()
            self.server.stop()  # prepared (listening) but never served
            if self.stopping.is_set():
                return 0
            print(f"otsensor: {problem}", file=sys.stderr)
            return 2
        self.start_jobs()
        self.server_thread = threading.Thread(target=self._serve_api, name="api", daemon=True)
        self.server_thread.start()
        from api.cli import curl_line, reachable_url

        names, url = ", ".join(self.settings.interfaces), reachable_url(self.server.url)
        log.info(
            "capturing on %s with %d workers; API on %s; flushing to %s every %g s; admin socket %s",
            names, len(self.workers), url, self.store.path, self.settings.flush_interval, self.admin.path,
        )  # fmt: skip
        log.info("try: %s (a token: otsensor token create --db %s --name NAME)", curl_line(url, "$TOKEN",
                 self.settings.tls_cert), self.store.path)  # fmt: skip
        while not self.stopping.is_set():
            self.wakeup.wait(1.0)
            self.wakeup.clear()
            if self.reload_requested.is_set() and not self.stopping.is_set():
                self.reload_requested.clear()
                self.reload()
            if not self.stopping.is_set():
                self.supervise()
        return self.shutdown()

    def _serve_api(self) -> None:
        try:
            self.server.serve_forever()
        except Exception:  # noqa: BLE001 — the capture goes on; /healthz cannot say it, the log does
            log.error("the API server stopped:\n%s", traceback.format_exc())

    def _end_collector(self) -> None:
        self.collecting = False  # the workers have ended: their pipes end once read to the end
        self.collector.join(timeout=30)

    def shutdown(self) -> int:
        clean = self.stop_all_workers()
        self._end_collector()  # every delta the workers sent is in self.pending now
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
        flushed = self.flush()
        if not flushed:
            log.error("the last flush failed: %d connections are lost", len(self.pending))
        if self.fleet is not None and not self.fleet.close():
            log.warning("fleet: %d deltas wait in %s for ClickHouse", len(self.fleet.spool.pending()),
                        self.fleet.spool.folder)  # fmt: skip
        if self.server is not None:
            self.server.stop()
            self.server.wait_stopped(10)
        snapshot = self.snapshot()
        log.info(
            "stopped: %d packets, %d kernel drops, %d flushes",
            snapshot["packets"], snapshot["kernel_drops"], snapshot["flush_count"],
        )  # fmt: skip
        return 0 if flushed and clean else 1


def _add_counters(a: dict, b: dict) -> dict:
    """Cumulative worker counters added key by key (numbers add, dicts recurse, lists join)."""
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict):
            out[key] = _add_counters(out.get(key, {}), value)
        elif isinstance(value, list):
            out[key] = out.get(key, []) + value
        else:
            out[key] = out.get(key, 0) + value
    return out


def run(settings: Settings, reload_settings=None) -> int:
    """`otsensor run`: 0 after a clean stop, 2 on unusable settings or input (one line on stderr).

    ``reload_settings()`` reads the settings again (the file and the same flags) when SIGHUP arrives."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="otsensor: %(message)s", stream=sys.stderr)
    try:
        settings.check()
    except SettingsError as error:
        print(f"otsensor: {error}", file=sys.stderr)
        return 2
    from .detect import Detector
    from .store import Store, StoreError  # DuckDB: the main process's alone

    try:
        if settings.prepare_interfaces:
            for name in settings.interfaces:
                prepare_passive_interface(name)
    except (CaptureUnavailable, OSError) as error:
        print(f"otsensor: cannot prepare the capture interfaces: {error}", file=sys.stderr)
        return 2
    try:
        store = Store(settings.db, detector=Detector.from_settings(settings), memory_mb=settings.db_memory_mb,
                      threads=settings.db_threads)  # fmt: skip
    except StoreError as error:
        print(f"otsensor: {error}", file=sys.stderr)
        return 2
    daemon = Daemon(settings, store, reload_settings)
    try:
        daemon._apply_forwarding(settings.forwarding)  # alerts to a SIEM as they are raised ([forwarding])
        return daemon.serve()
    finally:
        daemon._apply_forwarding(None)  # delivers what is queued, spools the rest for the next start
        store.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m sensor.daemon`` takes the flags of `otsensor run`."""
    parser = argparse.ArgumentParser(prog="otsensor run", description="Capture, decode, store and serve, live.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = load(args.config, overrides_from_args(args))
    except SettingsError as error:
        print(f"otsensor: {error}", file=sys.stderr)
        return 2
    return run(settings, lambda: load(args.config, overrides_from_args(args)))


if __name__ == "__main__":
    sys.exit(main())
