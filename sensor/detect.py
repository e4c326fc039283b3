"""Alerts and events (CONTRACT section 4), found where a delta meets the DB, inside the merge's transaction.

Owns what is new (devices, pairs, commands after learning), the operational alerts from the delta's
occurrences, firmware changes, scans, dedup and learning; never reads packets (the analyzers mark the
commands, the delta carries them) and never serves HTTP.  Runs in the one process that owns the DB, so
however many workers saw the traffic, and however often a delta is merged, each alert is raised once.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _quote  # json.dumps's own (ensure_ascii)

from .connections import ConnectionTable, ip_text
from .protocols import MODE, PROGRAM, START, STOP, UPLOAD

log = logging.getLogger("otsensor")

HOUR_MS, MINUTE_MS = 3_600_000, 60_000
# A scan: one source reaching at least SCAN_TARGETS new (device, port) targets within SCAN_WINDOW_MS of
# packet time through probes — pairs that lasted no longer than the window and carried at most
# PROBE_PACKETS packets per new port (nmap -sT: SYN, SYN-ACK, ACK, RST to an open port; SYN, RST to a
# closed one; a ping: echo and reply).  A SCADA master that starts polling 57 PLCs in a capture of 21 s
# (iti/ModbusTCP_mb2.pcap) reaches them through sessions, not probes.  Checked: nmap against a namespace
# is marked, no device of ../shared/pcaps/real is (tests/test_alerts.py).
SCAN_TARGETS = 32
# Rows per INSERT of a merge (the store's devices and connections, events, alerts): DuckDB copies each list
# parameter into values of its own, ~2.5 KB a device — 100,000 new devices at once took ~250 MB on top of the
# delta; in slices, a slice's worth.
INSERT_ROWS = 8192
SCAN_WINDOW_MS = 60_000
PROBE_PACKETS = 4

# category -> (alert title, severity, event type, what the event says)
OPERATIONAL = {
    STOP: ("PLC Stop command", "Major", "PLC_STATE_CHANGE"),
    START: ("PLC Start command", "Major", "PLC_STATE_CHANGE"),
    PROGRAM: ("Program download", "Major", "PROGRAM_DEVICE"),
    UPLOAD: ("Program upload", "Warning", "PROGRAM_DEVICE"),
    MODE: ("PLC mode change", "Warning", "PLC_STATE_CHANGE"),
}
# Who sent these is an engineering station (a mode push is the PLC's own report).
ENGINEERING = frozenset({STOP, START, PROGRAM, UPLOAD})

REMEDIATION = {
    "New device detected": [
        "Identify the device and its owner.",
        "If it belongs on this network, handle the alert with learning so that it becomes authorized.",
        "Otherwise disconnect it and find out how it was connected.",
    ],
    "New connection detected": [
        "Check with the owners of both devices that they are meant to talk to each other.",
        "If so, handle the alert with learning; otherwise block the pair at the firewall.",
    ],
    "New protocol command detected": [
        "Check that the command is part of the process (a new HMI screen, a new recipe).",
        "If so, handle the alert with learning; otherwise find out who sent it.",
    ],
    "PLC Stop command": [
        "Confirm with operations that the stop was planned (maintenance window, change ticket).",
        "If not, check the source workstation for unauthorised access and put the PLC back in RUN safely.",
        "Consider the PLC's protection level or key switch against remote stops.",
    ],
    "PLC Start command": [
        "Confirm with operations that the start was planned and the process was ready for it.",
        "If not, check the source workstation for unauthorised access.",
    ],
    "Program download": [
        "Confirm that the download was an authorised change (change ticket, engineer on duty).",
        "Compare the PLC's program with the approved version; keep the evidence pcap.",
        "If unplanned, isolate the source workstation and check it for compromise.",
    ],
    "Program upload": [
        "Confirm that reading the program was authorised (backup, maintenance).",
        "An unplanned upload can be reconnaissance: check the source workstation.",
    ],
    "PLC mode change": [
        "Confirm with operations that the PLC was meant to change mode.",
        "Look for the command that caused it (a stop or start alert from the same time).",
    ],
    "Firmware change": [
        "Confirm that a firmware update was planned for this device.",
        "Check the new version against the vendor's published releases and advisories.",
    ],
    "Network scan detected": [
        "Identify the scanning device and whether the scan was authorised (an asset inventory tool).",
        "If not, isolate it and check it for compromise; scans often precede attacks.",
    ],
}


class Changes:
    """What a merge found new in the DB, gathered by the store while it merges (ids, epoch ms).  (A plain
    class, as Alert: a dataclass costs its module ~1 ms more to import, paid by every command.)"""

    __slots__ = ("learning_end", "ip_of", "new_devices", "identity", "new_pairs", "new_commands", "new_targets",
                 "flagged")  # fmt: skip

    def __init__(self, learning_end: int = 1 << 62) -> None:
        self.learning_end = learning_end  # epoch ms
        self.ip_of: dict[int, str] = {}  # the delta's devices: id -> IP address
        self.new_devices: list[tuple[int, int]] = []  # (device id, first seen)
        self.identity: list[tuple[int, str, str, str, int]] = []  # (id, field, old, new, time)
        self.new_pairs: list[tuple[int, int, int]] = []  # (first id, second id, discovered)
        self.new_commands: list[tuple[int, int, str, str, int]] = []  # (f, s, protocol, command, t)
        # (first id, second id, new ports, first, last, packets of the pair in the delta)
        self.new_targets: list[tuple[int, int, int, int, int, int]] = []
        # devices whose engineering_station, scanner or authorized may have turned on (told after the commit)
        self.flagged: list[int] = []


class Alert:
    __slots__ = ("time", "title", "message", "severity", "engine", "source", "destination", "description",
                 "information", "dedup_key", "pcap")  # fmt: skip

    def __init__(self, time: int, title: str, message: str, severity: str, engine: str, source: int | None,
                 destination: int | None, description: str, information: list[str], dedup_key: str,
                 pcap: bytes | None = None) -> None:  # fmt: skip
        self.time, self.title, self.message, self.severity, self.engine = time, title, message, severity, engine
        self.source, self.destination, self.description = source, destination, description
        self.information, self.dedup_key, self.pcap = information, dedup_key, pcap


class Detector:
    """The merge's detection step.  ``on_alert``: callables given each new alert's JSON (the v1 fields
    plus sourceDeviceAddress / destinationDeviceAddress) after its transaction committed — e.g. a
    syslog forwarder's ``send``; a sink that raises is logged and skipped.  ``on_change``: callables
    given, after each commit, the list of alerts (GET /api/v2/alerts's JSON) opened or changed by it —
    a count or lastTime grown by a repeat, handled — e.g. the fleet shipper's ``submit_alerts``.
    ``on_classes``: callables given, after each commit, ``{ip: (engineering_station, scanner, authorized)}``
    of the devices whose flags may have turned on in it (they only ever turn on) — e.g. the fleet shipper's
    ``submit_classes``."""

    def __init__(
        self, learning_hours: float = 24.0, dedup_minutes: float = 10.0, on_alert: list[Callable] | None = None
    ) -> None:
        self.learning_ms = int(learning_hours * HOUR_MS)
        self.dedup_ms = int(dedup_minutes * MINUTE_MS)
        self.on_alert: list[Callable[[dict], None]] = list(on_alert or [])
        self.on_change: list[Callable[[list[dict]], None]] = []
        self.on_classes: list[Callable[[dict[str, tuple[bool, bool, bool]]], None]] = []
        self.updated: list[int] = []  # the last detect()'s open alerts that a repeat counted on
        self._scans: dict[int, list[tuple[int, int]]] = {}  # source id -> recent (time, new targets)

    @classmethod
    def from_settings(cls, settings, on_alert: list[Callable] | None = None) -> Detector:
        """From sensor.settings.Settings (its learning_hours and alert_dedup_minutes)."""
        return cls(settings.learning_hours, settings.alert_dedup_minutes, on_alert)

    # -- in the merge's transaction -----------------------------------------------------------------

    def learning_end(self, db, delta: ConnectionTable) -> int:
        """Packet time (ms) at which learning ends: learning_hours after the first packet the DB saw."""
        row = db.execute("SELECT first_packet FROM learning").fetchone()
        if row is None:
            times = [c.discovered_ns for c in delta.connections.values() if c.last_seen_ns >= 0]
            times += [d.first_seen_ns for d in delta.devices.values() if d.last_seen_ns >= 0]
            if not times:
                return 1 << 62
            first = min(times) // 1_000_000
            db.execute("INSERT INTO learning VALUES (?)", [first])
        else:
            first = row[0]
        return first + self.learning_ms

    def detect(self, db, delta: ConnectionTable, ids: dict[bytes, int], changes: Changes) -> list[int]:
        """Events and alerts of one merge; returns the ids of the alerts it opened."""
        end = changes.learning_end
        self.updated = []
        self._learned = {
            tuple(row) for row in db.execute("SELECT title, source_device, destination_device FROM learned").fetchall()
        }
        opened: list[int] = []
        policy: list[Alert | None] = []  # opened together: thousands after learning, one insert
        events = Events()
        address = _addresses(db, changes.ip_of)
        text = changes.ip_of
        if changes.new_devices:  # thousands in a first merge: their columns are filled directly
            times, contents = events.of("DEVICE_CREATED", "Device created", "INFO")
            for device, first in changes.new_devices:
                times.append(first)
                contents.append(f"New device {text[device]}")
                if first >= end:
                    policy.append(self._policy(first, "New device detected", device, None, address, "device"))
        if changes.new_pairs:
            times, contents = events.of("DEVICE_CONNECTION_CREATED", "Connection created", "INFO")
            for first_id, second_id, discovered in changes.new_pairs:
                pair = f"{text[first_id]} -> {text[second_id]}"  # both ends are in the delta
                times.append(discovered)
                contents.append(f"New connection {pair}")
                if discovered >= end:
                    policy.append(
                        self._policy(discovered, "New connection detected", first_id, second_id, address, pair)
                    )
        for first_id, second_id, protocol, command, time in changes.new_commands:
            what = f"{protocol} {command} {address(first_id)} -> {address(second_id)}"
            events.append((time, "PROTOCOL_COMMAND_CREATED", "Protocol command created", "INFO", f"New command {what}"))
            if time >= end:
                policy.append(self._policy(time, "New protocol command detected", first_id, second_id, address, what))
        opened += _open_many(db, [alert for alert in policy if alert is not None])
        for device, name, old, new, time in changes.identity:
            opened += self._firmware(db, events, device, name, old, new, time, address)
        opened += self._operations(db, events, delta, ids, address, changes.flagged)
        opened += self._scan(db, changes, address)
        if events:
            events.write(db)
        return opened

    def _policy(self, time, title, source, destination, address, what) -> Alert | None:
        if (title, source, destination) in self._learned:
            return None
        severity = "Warning" if title == "New protocol command detected" else "Minor"
        message = f"{title.split(' detected')[0]}: {what}"
        information = [f"source: {address(source)}"] + ([f"destination: {address(destination)}"] if destination else [])
        description = "Seen for the first time after the learning period ended."
        return Alert(time, title, message, severity, "Policy Violation", source, destination, description, information,
                     f"{title}|{source}|{destination}|{what}")  # fmt: skip

    def _firmware(self, db, events, device, name, old, new, time, address) -> list[int]:
        key = f"firmware|{device}|{name}|{old}|{new}"
        if db.execute("SELECT 1 FROM alert_occurrences WHERE key = ?", [key]).fetchone():
            return []
        what = "model" if name == "model" else "firmware"
        events.append((time, "FIRMWARE_CHANGE", "Firmware change", "ALERT", f"{address(device)} {what} {old} -> {new}"))
        opened = []
        if ("Firmware change", device, None) not in self._learned:
            alert = Alert(time, "Firmware change", f"Firmware change on {address(device)}: {what} {old} -> {new}",
                          "Major", "Operational", device, None, f"The device's {what} identity changed.",
                          [f"device: {address(device)}", f"previous {what}: {old}", f"new {what}: {new}"], key)  # fmt: skip
            opened.append(_open(db, alert))
        db.execute("INSERT INTO alert_occurrences VALUES (?, ?)", [key, opened[0] if opened else 0])
        return opened

    def _operations(self, db, events, delta, ids, address, flagged: list[int]) -> list[int]:
        """Each occurrence once (keyed by time, pair, command, detail); a repeat within the dedup window
        of packet time counts on the open alert of the same title and pair."""
        opened: list[int] = []
        if not delta.operations:
            return opened
        occurrences = sorted(delta.operations, key=lambda o: (o[0], o[1], o[2], o[3], o[4], o[6]))
        keys = [f"{o[0]}|{ip_text(o[1])}|{ip_text(o[2])}|{o[3]}|{o[4]}|{o[6]}" for o in occurrences]
        known = {
            row[0]
            for row in db.execute(
                "SELECT key FROM alert_occurrences WHERE key IN (SELECT unnest($1))", [keys]
            ).fetchall()
        }
        engineering = set()
        for key, (time_ns, client, server, protocol, command, category, detail, linktype, frames) in zip(
            keys, occurrences
        ):
            if key in known:
                continue
            known.add(key)
            source, destination = ids[client], ids[server]
            time = time_ns // 1_000_000
            title, severity, event_type = OPERATIONAL[category]
            if category in ENGINEERING:
                engineering.add(source)
            what = f"{protocol} {command}" + (f" ({detail})" if detail else "")
            pair = f"{address(source)} -> {address(destination)}"
            alert_id = 0
            if (title, source, destination) not in self._learned:
                dedup_key = f"{title}|{source}|{destination}"
                row = db.execute(
                    "SELECT id FROM alerts WHERE dedup_key = ? AND NOT handled AND ? BETWEEN time - ? AND last_time + ? "
                    "ORDER BY id DESC LIMIT 1",
                    [dedup_key, time, self.dedup_ms, self.dedup_ms],
                ).fetchone()
                if row is not None:
                    alert_id = row[0]
                    db.execute(
                        "UPDATE alerts SET count = count + 1, last_time = greatest(last_time, ?), "
                        "time = least(time, ?) WHERE id = ?",
                        [time, time, alert_id],
                    )
                    self.updated.append(alert_id)
                else:
                    message = f"{title}: {what}, {pair}"
                    if category == MODE:
                        message = f"{title}: {address(destination)} reports mode {command} ({protocol}), {pair}"
                    information = [f"protocol: {protocol}", f"command: {command}"]
                    information += [f"detail: {detail}"] if detail else []
                    information += [f"source: {address(source)}", f"destination: {address(destination)}"]
                    description = f"{what} on the connection {pair}; the frame that carried it is the alert's pcap."
                    alert = Alert(time, title, message, severity, "Operational", source, destination, description,
                                  information, dedup_key, pcap_file(linktype, frames))  # fmt: skip
                    alert_id = _open(db, alert)
                    opened.append(alert_id)
                    events.append((time, event_type, title, "ALERT", f"{what}, {pair}"))
            db.execute("INSERT INTO alert_occurrences VALUES (?, ?)", [key, alert_id])
        if engineering:
            flagged.extend(engineering)
            db.execute(
                "UPDATE devices SET engineering_station = true WHERE id IN (SELECT unnest($1))", [sorted(engineering)]
            )
        return opened

    def _scan(self, db, changes: Changes, address) -> list[int]:
        """New (device, port) targets per source within the window, through short-lived pairs."""
        per_source: dict[int, list[tuple[int, int]]] = {}
        for first_id, _, new_ports, discovered, last_seen, packets in changes.new_targets:
            if last_seen - discovered <= SCAN_WINDOW_MS and packets <= PROBE_PACKETS * new_ports:
                per_source.setdefault(first_id, []).append((discovered, new_ports))
        opened = []
        for source, hits in per_source.items():
            recent = sorted(self._scans.get(source, []) + hits)
            latest = recent[-1][0]
            recent = [hit for hit in recent if hit[0] >= latest - SCAN_WINDOW_MS]
            self._scans[source] = recent
            targets = sum(n for _, n in recent)
            if targets < SCAN_TARGETS:
                continue
            db.execute("UPDATE devices SET scanner = true WHERE id = ?", [source])
            changes.flagged.append(source)
            if ("Network scan detected", source, None) in self._learned:
                continue
            dedup_key = f"Network scan detected|{source}|None"
            time = recent[0][0]
            row = db.execute(
                "SELECT id FROM alerts WHERE dedup_key = ? AND NOT handled AND ? <= last_time + ? LIMIT 1",
                [dedup_key, time, self.dedup_ms],
            ).fetchone()
            if row is not None:
                db.execute("UPDATE alerts SET last_time = greatest(last_time, ?) WHERE id = ?", [latest, row[0]])
                self.updated.append(row[0])
                continue
            message = f"Network scan detected: {address(source)} reached {targets} new device ports within a minute"
            alert = Alert(time, "Network scan detected", message, "Major", "Anomaly", source, None,
                          "One device opened connections to many devices or ports in a short time.",
                          [f"source: {address(source)}", f"new targets: {targets}"], dedup_key)  # fmt: skip
            opened.append(_open(db, alert))
            self._scans[source] = []
        return opened

    # -- after the commit ------------------------------------------------------------------------

    def publish(
        self, db, alert_ids: list[int], changed: list[int] | tuple = (), flagged: list[int] | tuple = ()
    ) -> None:
        """Hand each new alert to the sinks (forwarders), in id order; the new and the ``changed`` ones
        (counted on, handled) to the change sinks (the fleet shipper), as one list; the ``flagged`` devices'
        flags to the class sinks."""
        if flagged and self.on_classes:
            classes = device_flags(db, sorted(set(flagged)))
            for sink in self.on_classes:
                try:
                    sink(classes)
                except Exception:  # noqa: BLE001 — a sink's failure must not stop the merge
                    log.exception("a device class sink failed")
        new = alert_ids if self.on_alert else []
        changed = sorted(set(alert_ids) | set(changed)) if self.on_change else []
        if not new and not changed:
            return
        from .serialize import alerts as alert_list  # the one JSON shape

        found = alert_list(db, version=2, ids=sorted(set(new) | set(changed)))
        wanted = set(changed)
        for sink in self.on_change:
            try:
                sink([alert for alert in found if alert["id"] in wanted])
            except Exception:  # noqa: BLE001 — a sink's failure must not stop the merge
                log.exception("an alert change sink failed")
        opened = set(new)
        for alert in found:
            if alert["id"] not in opened:
                continue
            alert = {k: v for k, v in alert.items() if k != "remediationSteps"}
            for sink in self.on_alert:
                try:
                    sink(alert)
                except Exception:  # noqa: BLE001 — a sink's failure must not stop the merge
                    log.exception("an alert sink failed")


def device_flags(db, ids: list[int] | None = None) -> dict[str, tuple[bool, bool, bool]]:
    """``{ip: (engineering_station, scanner, authorized)}`` of the devices ``ids``, or (None) of every
    device with a flag set."""
    where = "id IN (SELECT unnest($1))" if ids is not None else "engineering_station OR scanner OR authorized"
    rows = db.execute(
        f"SELECT ip, engineering_station, scanner, authorized FROM devices WHERE {where}",
        [ids] if ids is not None else None,
    ).fetchall()
    return {ip: (bool(e), bool(s), bool(a)) for ip, e, s, a in rows}


def _addresses(db, text: dict[int, str]) -> Callable[[int | None], str]:
    """Device id -> its IP address, for messages: the delta's devices, else read from the DB."""

    def address(device_id: int | None) -> str:
        if device_id is None:
            return ""
        if device_id not in text:
            row = db.execute("SELECT ip FROM devices WHERE id = ?", [device_id]).fetchone()
            text[device_id] = row[0] if row else str(device_id)
        return text[device_id]

    return address


def _open(db, alert: Alert) -> int:
    alert_id = db.execute("SELECT nextval('alert_ids')").fetchone()[0]
    db.execute(
        "INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, false, 1, ?, ?)",
        [alert_id, alert.time, alert.time, alert.title, alert.message, alert.severity, alert.engine, alert.source,
         alert.destination, alert.description, alert.information, REMEDIATION.get(alert.title, []),
         alert.dedup_key, alert.pcap],
    )  # fmt: skip
    return alert_id


def _open_many(db, alerts: list[Alert]) -> list[int]:
    """Alerts opened in one insert, ids in their order (one insert of a row costs ~1.2 ms: the 5,754
    policy alerts of a replay past learning took 6.9 s one by one)."""
    if len(alerts) < 2:
        return [_open(db, alert) for alert in alerts]
    ids = sorted(row[0] for row in db.execute("SELECT nextval('alert_ids') FROM range(?)", [len(alerts)]).fetchall())
    insert_columns(
        db,
        "INSERT INTO alerts SELECT unnest($1::BIGINT[]), unnest($2::BIGINT[]), unnest($2::BIGINT[]), "
        "unnest($3::VARCHAR[]), unnest($4::VARCHAR[]), unnest($5::VARCHAR[]), unnest($6::VARCHAR[]), "
        "unnest($7::BIGINT[]), unnest($8::BIGINT[]), unnest($9::VARCHAR[]), unnest($10::VARCHAR[][]), "
        "unnest($11::VARCHAR[][]), false, 1, unnest($12::VARCHAR[]), unnest($13::BLOB[])",
        [ids, [a.time for a in alerts], [a.title for a in alerts], [a.message for a in alerts],
         [a.severity for a in alerts], [a.engine for a in alerts], [a.source for a in alerts],
         [a.destination for a in alerts], [a.description for a in alerts], [a.information for a in alerts],
         [REMEDIATION.get(a.title, []) for a in alerts], [a.dedup_key for a in alerts], [a.pcap for a in alerts]],
    )  # fmt: skip
    return ids


def insert_columns(db, statement: str, columns: list[list]) -> None:
    """``statement`` (an INSERT of unnested list parameters) once per INSERT_ROWS rows of ``columns``."""
    count = len(columns[0]) if columns else 0
    if count <= INSERT_ROWS:
        db.execute(statement, columns)
        return
    for start in range(0, count, INSERT_ROWS):
        db.execute(statement, [column[start : start + INSERT_ROWS] for column in columns])


def _next_event_id(db) -> int:
    """Event ids continue after the greatest (the merge holds the store's one writer; a DuckDB sequence
    costs ~40 µs a value, which the 12,000 events of a first merge of the bench mix would feel)."""
    return db.execute("SELECT coalesce(max(id), 0) + 1 FROM events").fetchone()[0]


class Events(dict):
    """A merge's events, ``append((time, type, title, severity, content))``, kept by kind as they come
    (kinds in the order first met, ids in that order) and written one INSERT per kind binding only times
    and contents (a first merge of the bench mix writes ~14,000 events; binding five lists of them took
    twice as long)."""

    def append(self, event: tuple) -> None:
        time_ms, kind, title, severity, content = event
        times, contents = self.of(kind, title, severity)
        times.append(time_ms)
        contents.append(content)

    def of(self, kind: str, title: str, severity: str) -> tuple[list[int], list[str]]:
        """The times and contents of one kind, to append to."""
        return self.setdefault((kind, title, severity), ([], []))

    def write(self, db) -> None:
        _insert_events(db, self)


def _insert_events(db, kinds: dict[tuple, tuple[list, list]]) -> None:
    # The lists unnested in a subquery: unnest() beside constants in an INSERT's own select list took
    # twice as long (~18 against ~8 ms for the bench mix's 12,091 connection events).
    # In slices of INSERT_ROWS: DuckDB copies each list parameter into values of its own.
    first = _next_event_id(db)
    for (kind, title, severity), (all_times, all_contents) in kinds.items():
        for start in range(0, len(all_times), INSERT_ROWS):
            times, contents = all_times[start : start + INSERT_ROWS], all_contents[start : start + INSERT_ROWS]
            db.execute(
                "INSERT INTO events SELECT i, t, $3, $4, $5, 'otsensor', c "
                "FROM (SELECT unnest(range($1, $7)) i, unnest($2) t, unnest($6) c)",
                [first, times, kind, title, severity, contents, first + len(times)],
            )
            first += len(times)


def handle(db, alert_id: int, learn: bool, now_ms: int, flagged: list[int]) -> bool:
    """Mark an alert handled (and with ``learn``, make its activity authorized; a device so authorized is
    added to ``flagged``); False if unknown."""
    row = db.execute("SELECT title, source_device, destination_device FROM alerts WHERE id = ?", [alert_id]).fetchone()
    if row is None:
        return False
    title, source, destination = row
    db.execute("UPDATE alerts SET handled = true WHERE id = ?", [alert_id])
    if learn:
        db.execute("INSERT INTO learned VALUES (?, ?, ?, '')", [title, source, destination])
        if title == "New device detected":
            db.execute("UPDATE devices SET authorized = true WHERE id = ?", [source])
            flagged.append(source)
    action = "handled and learned" if learn else "handled"
    event_id = _next_event_id(db)
    db.execute(
        "INSERT INTO events VALUES (?, ?, 'ALERT_HANDLED', 'Alert handled', 'NOTICE', 'otsensor', ?)",
        [event_id, now_ms, f"Alert {alert_id} ({title}) {action}"],
    )
    return True


# -- evidence -------------------------------------------------------------------------------------
PCAP_HEADER = struct.Struct("<IHHiIII")  # magic, version 2.4, thiszone, sigfigs, snaplen, link type
PCAP_RECORD = struct.Struct("<IIII")  # seconds, nanoseconds, captured length, original length
PCAP_MAGIC_NS = 0xA1B23C4D  # nanosecond timestamps


def pcap_file(linktype: int, frames) -> bytes | None:
    """The frames of an occurrence as a pcap file (nanosecond timestamps), as tshark and Wireshark read it;
    None without frames."""
    if not frames:
        return None
    out = [PCAP_HEADER.pack(PCAP_MAGIC_NS, 2, 4, 0, 0, 262144, linktype)]
    for stamp, frame in frames:
        seconds, nanoseconds = divmod(stamp, 1_000_000_000)
        out.append(PCAP_RECORD.pack(seconds, nanoseconds, len(frame), len(frame)))
        out.append(bytes(frame))
    return b"".join(out)


def addresses_json(addresses: dict[str, set[str]], stored: str | None) -> str:
    """A device's per-protocol addresses, the stored JSON joined with a delta's (sets, sorted): what
    ``json.dumps`` gives, written out with its own string encoder (a first merge of the bench mix writes
    1,186 of them; json.dumps took four times as long)."""
    if not addresses:
        return stored or "{}"
    merged = addresses
    if stored and stored != "{}":
        merged = {protocol: set(values) for protocol, values in json.loads(stored).items()}
        for protocol, values in addresses.items():
            merged.setdefault(protocol, set()).update(values)
    items = (f"{_quote(protocol)}: [{', '.join(map(_quote, sorted(merged[protocol])))}]" for protocol in sorted(merged))
    return "{" + ", ".join(items) + "}"
