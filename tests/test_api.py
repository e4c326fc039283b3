"""The REST API as SOC dashboards and scripts use it: every row of the contract's API table, every error
status in the one shape, bad input never a 500, tokens, rate limits, ETags, and the real WSGI server."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

import api.auth
from api import create_app
from api.auth import TokenError, create_token, list_tokens, revoke_token
from api.server import ApiServer, ServeError, free_port, parse_listen, serve
from sensor import serialize
from sensor.connections import ConnectionTable
from sensor.store import Store

MS = 1_000_000  # ns per ms
ERROR_KEYS = {"status", "identifier", "message", "details"}
NOW_MS = int(time.time() * 1000)

# (initiator, responder, ports, protocols, discovered ms, lastSeen ms, packets, bytes, user agent)
TRAFFIC = [
    (
        "10.0.0.1",
        "10.0.0.2",
        {502},
        {"modbus": {"Read Coils", "Write Single Register"}},
        1_511_281_457_933,
        1_511_872_830_000,
        40,
        4_000,
        None,
    ),
    (
        "10.0.0.1",
        "10.0.0.3",
        {102},
        {"s7comm": {"Read Var", "Setup communication"}},
        1_511_281_460_000,
        1_511_281_470_000,
        12,
        1_500,
        None,
    ),
    (
        "10.0.0.4",
        "10.0.0.2",
        {80, 8080},
        {"http": {"GET"}},
        1_511_300_000_000,
        1_511_400_000_000,
        8,
        9_000,
        "Mozilla/5.0 (X11) SCADA-HMI",
    ),
    (
        "fe80::1",
        "fe80::2",
        {48898},
        {"ams": {"AMS Read Device Info"}},
        1_600_000_000_000,
        1_600_000_100_000,
        4,
        400,
        None,
    ),
    ("10.0.0.5", "10.0.0.6", {443}, {}, NOW_MS - 3_600_000, NOW_MS - 60_000, 100, 100_000, None),
]


def fill(store: Store, traffic=TRAFFIC) -> None:
    import ipaddress

    table = ConnectionTable()
    for client, server, ports, protocols, discovered, last_seen, packets, size, user_agent in traffic:
        record = table.connection(ipaddress.ip_address(client).packed, ipaddress.ip_address(server).packed)
        record.ports |= ports
        record.protocols = {name: set(commands) for name, commands in protocols.items()}
        record.discovered_ns, record.last_seen_ns = discovered * MS, last_seen * MS
        record.packets, record.bytes, record.user_agent = packets, size, user_agent
    table.derive_devices()
    store.merge(table)


def make_store(path) -> Store:
    store = Store(path)
    fill(store)
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One filled DB for the tests that only read (most of them): building one per test is the slow part."""
    store = make_store(tmp_path_factory.mktemp("api") / "api.duckdb")
    yield store
    store.close()


@pytest.fixture
def fresh(tmp_path):
    """A filled DB of this test's own, for tests that write tokens, merge or close it."""
    store = make_store(tmp_path / "fresh.duckdb")
    yield store
    store.close()


@pytest.fixture(scope="module")
def ids(store) -> dict[str, int]:
    """Device id by IP address, as the store assigned them."""
    return {device["ipAddresses"][0]: device["id"] for device in serialize.devices(store.cursor())}


@pytest.fixture(scope="module")
def token(store) -> str:
    return create_token(store, "soc-dashboard")


@pytest.fixture(scope="module")
def app(store, token):
    return create_app(store, {"rate_limit": 0})


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def get(client, token):
    """GET with a valid token, as a dashboard does."""

    def get(path, headers=None, **kwargs):
        return client.get(path, headers={"Authorization": token, **(headers or {})}, **kwargs)

    return get


def assert_error(response, status: int, message: str | None = None) -> dict:
    assert response.status_code == status, response.data
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == ERROR_KEYS
    assert body["status"] == status
    assert isinstance(body["identifier"], str) and body["identifier"]
    assert isinstance(body["message"], str) and body["message"]
    if message is not None:
        assert body["message"] == message
    return body


def conn_id(ids, client_ip, server_ip) -> str:
    return f"{ids[client_ip]}-{ids[server_ip]}"


# -- the contract's API table, row by row ---------------------------------------------------------


def test_connections_list_is_the_contract_shape_in_order(get, ids):
    response = get("/api/v1/devices/connections")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["ETag"]
    connections = response.get_json()
    assert len(connections) == len(TRAFFIC)
    keys = [(c["firstDeviceId"], c["secondDeviceId"]) for c in connections]
    assert keys == sorted(keys)
    modbus = next(c for c in connections if c["id"] == conn_id(ids, "10.0.0.1", "10.0.0.2"))
    assert modbus == {
        "id": conn_id(ids, "10.0.0.1", "10.0.0.2"),
        "firstDeviceId": ids["10.0.0.1"],
        "secondDeviceId": ids["10.0.0.2"],
        "lastSeen": 1511872830000,
        "discovered": 1511281457933,
        "ports": [502],
        "protocols": [{"name": "modbus", "commands": ["Read Coils", "Write Single Register"]}],
    }
    http = next(c for c in connections if c["id"] == conn_id(ids, "10.0.0.4", "10.0.0.2"))
    assert http["ports"] == [80, 8080]
    tls = next(c for c in connections if c["id"] == conn_id(ids, "10.0.0.5", "10.0.0.6"))
    assert tls["protocols"] == []


def test_connections_list_is_byte_for_byte_what_the_cli_prints(get, store, ids):
    """One serializer: `otsensor connections` prints serialize.connections_json, and so does the API."""
    for query, where in [
        ("", serialize.ConnectionFilter()),
        (f"?deviceId={ids['10.0.0.2']}", serialize.ConnectionFilter(device_id=ids["10.0.0.2"])),
        ("?discoveredAfter=1511281457933", serialize.ConnectionFilter(discovered_after=1511281457933)),
    ]:
        assert get("/api/v1/devices/connections" + query).get_data(as_text=True) == serialize.connections_json(
            store.cursor(), where
        )


def ids_of(response) -> set[str]:
    assert response.status_code == 200, response.data
    return {c["id"] for c in response.get_json()}


def test_connection_filters_are_strict_and_combine_with_and(get, ids):
    every = ids_of(get("/api/v1/devices/connections"))
    modbus, s7 = conn_id(ids, "10.0.0.1", "10.0.0.2"), conn_id(ids, "10.0.0.1", "10.0.0.3")
    http, recent = conn_id(ids, "10.0.0.4", "10.0.0.2"), conn_id(ids, "10.0.0.5", "10.0.0.6")
    ams = conn_id(ids, "fe80::1", "fe80::2")
    # lastActiveInMinutes: lastSeen within the last M minutes of wall-clock now
    assert ids_of(get("/api/v1/devices/connections?lastActiveInMinutes=5")) == {recent}
    assert ids_of(get("/api/v1/devices/connections?lastActiveInMinutes=0")) == set()
    assert ids_of(get(f"/api/v1/devices/connections?lastActiveInMinutes={2**53}")) == every
    # discoveredBefore / discoveredAfter: epoch ms, strict
    assert ids_of(get("/api/v1/devices/connections?discoveredBefore=1511281457933")) == set()
    assert ids_of(get("/api/v1/devices/connections?discoveredBefore=1511281457934")) == {modbus}
    assert ids_of(get("/api/v1/devices/connections?discoveredAfter=1511281457933")) == every - {modbus}
    # deviceId: either side
    assert ids_of(get(f"/api/v1/devices/connections?deviceId={ids['10.0.0.2']}")) == {modbus, http}
    assert ids_of(get(f"/api/v1/devices/connections?deviceId={ids['10.0.0.1']}")) == {modbus, s7}
    assert ids_of(get("/api/v1/devices/connections?deviceId=999999")) == set()
    # AND
    both = f"deviceId={ids['10.0.0.2']}&discoveredAfter=1511281457933&discoveredBefore=1600000000001"
    assert ids_of(get("/api/v1/devices/connections?" + both)) == {http}
    assert ids_of(get("/api/v1/devices/connections?discoveredAfter=1511300000000&discoveredBefore=1700000000000")) == {
        ams
    }


def test_unknown_query_parameters_are_ignored(get):
    plain = get("/api/v1/devices/connections").get_data()
    assert get("/api/v1/devices/connections?colour=blue&deviceid=1&sort=desc").get_data() == plain


def test_one_devices_connections_by_path(get, ids):
    plc = ids["10.0.0.2"]
    assert ids_of(get(f"/api/v1/devices/{plc}/connections")) == {
        conn_id(ids, "10.0.0.1", "10.0.0.2"),
        conn_id(ids, "10.0.0.4", "10.0.0.2"),
    }
    by_path = get(f"/api/v1/devices/{plc}/connections").get_data()
    assert by_path == get(f"/api/v1/devices/connections?deviceId={plc}").get_data()
    assert ids_of(get(f"/api/v1/devices/{plc}/connections?discoveredAfter=1511281457933")) == {
        conn_id(ids, "10.0.0.4", "10.0.0.2")
    }
    assert ids_of(get(f"/api/v1/devices/{ids['10.0.0.5']}/connections?lastActiveInMinutes=5")) == {
        conn_id(ids, "10.0.0.5", "10.0.0.6")
    }
    assert_error(get("/api/v1/devices/424242/connections"), 404, "Cannot find device 424242")


def test_one_connection_with_detail(get, ids):
    http = conn_id(ids, "10.0.0.4", "10.0.0.2")
    response = get(f"/api/v1/connections/{http}")
    assert response.status_code == 200
    detail = response.get_json()
    listed = next(c for c in get("/api/v1/devices/connections").get_json() if c["id"] == http)
    assert {k: detail[k] for k in listed} == listed
    assert detail["identity"] == {"sourceIp": "10.0.0.4", "userAgent": "Mozilla/5.0 (X11) SCADA-HMI"}
    assert detail["connectedAt"] == "2017-11-21T21:33:20.000Z"
    assert detail["lastActiveAt"] == "2017-11-23T01:20:00.000Z"
    assert datetime.fromisoformat(detail["connectedAt"].replace("Z", "+00:00")).tzinfo == UTC
    assert (detail["packets"], detail["bytes"]) == (8, 9_000)
    ams = get(f"/api/v1/connections/{conn_id(ids, 'fe80::1', 'fe80::2')}").get_json()
    assert ams["identity"] == {"sourceIp": "fe80::1", "userAgent": None}
    reverse = f"{ids['10.0.0.2']}-{ids['10.0.0.4']}"  # pairs are ordered: the responder is not the initiator
    assert_error(get(f"/api/v1/connections/{reverse}"), 404, f"Cannot find connection {reverse}")


def test_devices_list_and_one_device(get, ids):
    response = get("/api/v1/devices")
    assert response.status_code == 200 and response.headers["ETag"]
    devices = response.get_json()
    assert [d["id"] for d in devices] == sorted(ids.values())
    for device in devices:
        assert {
            "id",
            "ipAddresses",
            "macAddresses",
            "name",
            "vendor",
            "type",
            "protocols",
            "firmware",
            "firstSeen",
            "lastSeen",
        } <= set(device)
    plc = get(f"/api/v1/devices/{ids['10.0.0.2']}").get_json()
    assert plc["ipAddresses"] == ["10.0.0.2"]
    assert plc["type"] == "PLC"
    assert plc["protocols"] == [{"name": "http", "roles": ["server"]}, {"name": "modbus", "roles": ["server"]}]
    assert plc["firstSeen"] == 1511281457933 and plc["lastSeen"] == 1511872830000
    assert get(f"/api/v1/devices/{ids['fe80::2']}").get_json()["ipAddresses"] == ["fe80::2"]
    assert_error(get("/api/v1/devices/7000"), 404, "Cannot find device 7000")


def test_openapi_document_needs_no_token_and_is_valid_openapi_3(client):
    from openapi_spec_validator import validate

    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    validate(document)
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {
        "/api/v1/devices/connections",
        "/api/v1/devices/{deviceId}/connections",
        "/api/v1/connections/{connectionId}",
        "/api/v1/devices",
        "/api/v1/devices/{deviceId}",
        "/api/v1/alerts",
        "/api/v2/alerts",
        "/api/v1/alerts/{alertId}",
        "/api/v2/alerts/pcap/{alertId}",
        "/api/v1/events",
        "/api/v1/openapi.json",
        "/healthz",
        "/metrics",
    }


def test_routes_and_document_agree(app):
    """Every route the app serves is in the OpenAPI document, and nothing else is."""
    from api.openapi import DOCUMENT

    as_openapi = {"<device_id>": "{deviceId}", "<connection_id>": "{connectionId}", "<alert_id>": "{alertId}"}
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("page."):  # the map page (api/page.py) is HTML for browsers, not API
            continue
        path = rule.rule
        for flask_name, openapi_name in as_openapi.items():
            path = path.replace(flask_name, openapi_name)
        routes.add(path)
    assert routes == set(DOCUMENT["paths"])


def test_healthz_needs_no_token_and_reports_capture_and_storage(client, store):
    response = client.get("/healthz")
    assert response.status_code == 200
    health = response.get_json()
    assert health["status"] == "ok"
    assert health["mode"] == "replay"
    assert health["interfaces"] == [] and health["packets"] == 0 and health["kernelDrops"] == 0
    assert health["lastFlush"].endswith("Z")  # replay mode: when the DB file was last written
    assert health["storage"] == {"ok": True, "devices": 8, "connections": 5}


def test_healthz_and_metrics_show_the_daemons_stats(store):
    stats = {
        "mode": "live",
        "interfaces": [{"name": "eth1", "packets": 900, "drops": 3}],
        "packets": 1000,
        "bytes": 64_000,
        "kernel_drops": 3,
        "decode_errors": {"modbus": 2, "s7comm": 1},
        "last_flush_ms": 1_700_000_000_000,
        "flush_count": 4,
        "flush_seconds_total": 0.5,
        "last_flush_seconds": 0.1,
    }
    client = create_app(store, {"stats": lambda: stats}).test_client()
    health = client.get("/healthz").get_json()
    assert health["interfaces"] == [{"name": "eth1", "packets": 900, "drops": 3}]
    assert (health["packets"], health["kernelDrops"]) == (1000, 3)
    assert health["lastFlush"] == "2023-11-14T22:13:20.000Z"
    samples = metric_samples(client.get("/metrics").get_data(as_text=True))
    assert samples[("otsensor_packets_total", ())] == 1000
    assert samples[("otsensor_bytes_total", ())] == 64_000
    assert samples[("otsensor_kernel_drops_total", ())] == 3
    assert samples[("otsensor_decode_errors_total", (("protocol", "modbus"),))] == 2
    assert samples[("otsensor_interface_drops_total", (("interface", "eth1"),))] == 3
    assert samples[("otsensor_flush_duration_seconds_count", ())] == 4
    assert samples[("otsensor_flush_duration_seconds_sum", ())] == 0.5


def metric_samples(text: str) -> dict:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_are_prometheus_text_with_api_requests(store, token):
    client = create_app(store).test_client()
    client.get("/api/v1/devices", headers={"Authorization": token})
    client.get("/api/v1/devices/999", headers={"Authorization": token})
    client.get("/api/v1/devices")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    samples = metric_samples(response.get_data(as_text=True))
    requests = {k[1]: v for k, v in samples.items() if k[0] == "otsensor_api_requests_total"}
    assert requests[(("endpoint", "devices.all_devices"), ("method", "GET"), ("status", "200"))] == 1
    assert requests[(("endpoint", "devices.all_devices"), ("method", "GET"), ("status", "401"))] == 1
    assert requests[(("endpoint", "devices.one_device"), ("method", "GET"), ("status", "404"))] == 1
    for name in (
        "otsensor_packets_total",
        "otsensor_bytes_total",
        "otsensor_kernel_drops_total",
        "otsensor_flush_duration_seconds_count",
        "otsensor_devices",
        "otsensor_connections",
    ):
        assert (name, ()) in samples
    assert samples[("otsensor_connections", ())] == 5
    assert any(k[0] == "otsensor_api_request_duration_seconds_count" for k in samples)


def test_two_apps_in_one_process_keep_their_own_metrics(store):
    first, second = create_app(store).test_client(), create_app(store).test_client()
    first.get("/healthz")
    assert "health.healthz" not in second.get("/metrics").get_data(as_text=True)


# -- every error status, in the one shape -------------------------------------------------------


def test_400_names_the_parameter(get):
    body = assert_error(get("/api/v1/devices/connections?deviceId=abc"), 400)
    assert "deviceId" in body["message"] and body["details"] == {"parameter": "deviceId"}
    body = assert_error(get("/api/v1/connections/" + "1" * 51), 400)
    assert "connectionId" in body["message"] and "50" in body["message"]


def test_401_says_missing_invalid_or_expired(fresh):
    expired = create_token(fresh, "expired", expires_in_days=0)
    client = create_app(fresh).test_client()
    assert_error(client.get("/api/v1/devices"), 401, "Missing token")
    assert_error(client.get("/api/v1/devices", headers={"Authorization": ""}), 401, "Missing token")
    assert_error(client.get("/api/v1/devices", headers={"Authorization": "Bearer "}), 401, "Missing token")
    response = client.get("/api/v1/devices", headers={"Authorization": "not-a-token"})
    assert_error(response, 401, "Invalid token")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(client.get("/api/v1/devices", headers={"Authorization": expired}), 401, "Expired token")


def test_404_for_unknown_paths_and_ids(get, client):
    for path in (
        "/index.html",  # "/" is the map page (api/page.py); its files are under /web/ only
        "/web/",
        "/api",
        "/api/v1",
        "/api/v1/",
        "/api/v2/devices",
        "/api/v1/device",
        "/api/v1/devices/",
        "/api/v1//devices",
        "/api/v1/connections",
        "/api/v1/connections/1-2/x",
        "/healthz/",
        "/api/v1/devices/1/connections/1",
        "/static/x.js",
    ):
        assert_error(get(path), 404)
        assert_error(client.get(path), 404)  # an unknown path says so, token or not


def test_405_for_wrong_methods_with_allow(get, client, token):
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for path in (
            "/api/v1/devices",
            "/api/v1/devices/connections",
            "/api/v1/devices/1",
            "/api/v1/connections/1-2",
            "/healthz",
            "/metrics",
            "/api/v1/openapi.json",
        ):
            response = client.open(path, method=method, headers={"Authorization": token})
            body = assert_error(response, 405)
            assert "GET" in response.headers["Allow"]
            assert "GET" in body["details"]["allowed"]
    head = client.head("/api/v1/devices", headers={"Authorization": token})
    assert head.status_code == 200 and head.data == b""


def test_429_with_retry_after_per_token(fresh):
    first, second = create_token(fresh, "first"), create_token(fresh, "second")
    client = create_app(fresh, {"rate_limit": 3, "rate_window": 60}).test_client()
    for _ in range(3):
        assert client.get("/api/v1/devices", headers={"Authorization": first}).status_code == 200
    response = client.get("/api/v1/devices", headers={"Authorization": first})
    body = assert_error(response, 429)
    assert 1 <= int(response.headers["Retry-After"]) <= 20  # one request comes back every 20 s
    assert body["details"] == {"retryAfter": int(response.headers["Retry-After"])}
    assert client.get("/api/v1/devices", headers={"Authorization": second}).status_code == 200
    assert client.get("/healthz").status_code == 200  # health is not rate-limited


def test_rate_limit_refills(fresh, monkeypatch):
    secret = create_token(fresh, "poller")
    clock = [1000.0]
    monkeypatch.setattr(api.auth.time, "monotonic", lambda: clock[0])
    client = create_app(fresh, {"rate_limit": 2, "rate_window": 10}).test_client()
    headers = {"Authorization": secret}
    assert [client.get("/api/v1/devices", headers=headers).status_code for _ in range(3)] == [200, 200, 429]
    clock[0] += 5.0  # 2 per 10 s: one request back after 5 s
    assert [client.get("/api/v1/devices", headers=headers).status_code for _ in range(2)] == [200, 429]


def test_500_is_the_error_shape_and_hides_the_exception(get, monkeypatch):
    def broken(cursor):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(serialize, "devices", broken)
    body = assert_error(get("/api/v1/devices"), 500)
    assert body["identifier"] == "internal_error"
    assert "secret internals" not in json.dumps(body)


def test_503_when_storage_is_unavailable(tmp_path):
    store = Store(tmp_path / "gone.duckdb")
    fill(store)
    secret = create_token(store, "t")
    client = create_app(store).test_client()
    assert client.get("/api/v1/devices", headers={"Authorization": secret}).status_code == 200
    store.close()
    body = assert_error(client.get("/healthz"), 503)
    assert body["details"]["storage"]["ok"] is False
    assert_error(client.get("/api/v1/devices/connections", headers={"Authorization": secret}), 503)


def test_503_when_the_daemon_reports_a_problem(store):
    client = create_app(store, {"stats": lambda: {"mode": "live", "problems": ["eth1 is down"]}}).test_client()
    body = assert_error(client.get("/healthz"), 503, "eth1 is down")
    assert body["details"]["mode"] == "live"


# -- bad input: 400/401/404/405/429 in the error shape, never a 500 ------------------------------

BAD_NUMBERS = [
    "-1",
    "1.5",
    "1e3",
    "abc",
    "",
    " 1",
    "1 ",
    "+1",
    "0x10",
    "1_000",
    "١٢",
    "²",
    "𝟙",
    "NaN",
    "9" * 17,
    str(2**53 + 1),
    "9" * 5000,
    "1;DROP TABLE connections",
    "' OR 1=1 --",
    "1%00",
    "1\x00",
    "💥",
    "true",
    "[1]",
    "{}",
    "null",
]


@pytest.mark.parametrize("value", BAD_NUMBERS)
@pytest.mark.parametrize("name", ["deviceId", "lastActiveInMinutes", "discoveredBefore", "discoveredAfter"])
def test_bad_filter_values_are_400_naming_the_parameter(get, name, value):
    body = assert_error(get("/api/v1/devices/connections", query_string={name: value}), 400)
    assert body["message"].startswith(name + " ") and body["details"] == {"parameter": name}


def test_repeated_filter_is_400(get):
    body = assert_error(get("/api/v1/devices/connections?deviceId=1&deviceId=2"), 400)
    assert "deviceId" in body["message"]


def test_largest_accepted_numbers_do_not_overflow(get):
    for name in ("deviceId", "lastActiveInMinutes", "discoveredBefore", "discoveredAfter"):
        assert get("/api/v1/devices/connections", query_string={name: str(2**53)}).status_code == 200
    assert_error(get(f"/api/v1/devices/{2**53}"), 404)
    assert_error(get(f"/api/v1/connections/{2**53}-{2**53}"), 404)


@pytest.mark.parametrize("value", [v for v in BAD_NUMBERS if v and "/" not in v])
def test_bad_device_ids_in_paths_are_400(get, value):
    from urllib.parse import quote

    for template in ("/api/v1/devices/{}", "/api/v1/devices/{}/connections"):
        response = get(template.format(quote(value, safe="")))
        if value.strip() == "" or value == ".":
            assert response.status_code in (400, 404)
            continue
        assert assert_error(response, 400)["details"] == {"parameter": "deviceId"}


@pytest.mark.parametrize(
    "value",
    [
        "1",
        "1-",
        "-1",
        "a-b",
        "1-2-3",
        "1--2",
        "1 -2",
        "1-2;--",
        "1-2' OR '1'='1",
        "١-٢",
        "1-" + "2" * 48 + "3",
        "1" * 51,
        "9" * 17 + "-1",
        f"{2**53 + 1}-1",
        "💥-💥",
        "%00-1",
    ],
)
def test_bad_connection_ids_are_400(get, value):
    from urllib.parse import quote

    body = assert_error(get("/api/v1/connections/" + quote(value, safe="")), 400)
    assert body["details"] == {"parameter": "connectionId"}


def test_sql_meta_characters_change_nothing(get, store):
    before = store.counts()
    for value in ("1;DELETE FROM connections", "1 OR 1=1", "1'; DROP TABLE devices; --", '1"', "1\\"):
        assert_error(get("/api/v1/devices/connections", query_string={"deviceId": value}), 400)
        assert_error(get("/api/v1/connections/" + value.replace("/", "")), 400)
    assert store.counts() == before


@pytest.mark.parametrize(
    "header",
    [
        "x" * 10_000,
        "Bearer " + "x" * 300,
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer a b c",
        "\u00e9\u00e8" * 20,
        "' OR 1=1 --",
        "Bearer\ttoken",
    ],
)
def test_bad_authorization_headers_are_401(client, header):
    body = assert_error(client.get("/api/v1/devices", headers={"Authorization": header}), 401)
    assert body["message"] in {"Missing token", "Invalid token"}


def test_overlong_ids_and_unknown_everything_are_never_500(get, client):
    probes = [
        get("/api/v1/devices/" + "1" * 100_000),
        get("/api/v1/connections/" + "1-" * 50_000),
        get("/api/v1/" + "x" * 50_000),
        get("/api/v1/devices/connections?" + "a=b&" * 5_000),
        get("/api/v1/devices/connections", headers={"X-Junk": "y" * 50_000, "If-None-Match": "z" * 10_000}),
        get("/api/v1/devices/%ff%fe/connections"),
        get("/api/v1/connections/%c0%af"),
        client.open("/api/v1/devices", method="BREW"),
        client.open("/api/v1/devices", method="TRACE"),
        client.options("/api/v1/devices"),
    ]
    for response in probes:
        assert response.status_code in (200, 304, 400, 401, 404, 405), response.status_code
        if response.status_code >= 400:
            assert_error(response, response.status_code)


# -- tokens -------------------------------------------------------------------------------------


def test_token_is_shown_once_and_only_its_hash_is_stored(fresh):
    store = fresh
    secret = create_token(store, "ops")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)
    rows = store.cursor().execute("SELECT * FROM tokens").fetchall()
    assert rows and not any(secret in str(value) for row in rows for value in row)
    assert rows[0][1] == hashlib.sha256(secret.encode()).hexdigest()
    listed = list_tokens(store)
    assert listed == [
        {"name": "ops", "created": listed[0]["created"], "expires": None, "revoked": None, "status": "active"}
    ]
    assert "hash" not in listed[0]


def test_both_authorization_forms(client, token):
    for header in (token, f"Bearer {token}", f"bearer {token}", f"  Bearer   {token}  ", f"BEARER {token}"):
        assert client.get("/api/v1/devices", headers={"Authorization": header}).status_code == 200, header


def test_tokens_are_compared_in_constant_time(client, token, monkeypatch):
    calls = []
    real = api.auth.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api.auth.hmac, "compare_digest", spy)
    assert client.get("/api/v1/devices", headers={"Authorization": token}).status_code == 200
    assert client.get("/api/v1/devices", headers={"Authorization": "wrong"}).status_code == 401
    assert calls and all(len(a) == len(b) == 64 for a, b in calls)


def test_revocation_takes_effect_within_a_second(fresh):
    store, token = fresh, create_token(fresh, "soc-dashboard")
    client = create_app(store).test_client()
    assert client.get("/api/v1/devices", headers={"Authorization": token}).status_code == 200
    assert revoke_token(store, "soc-dashboard") is True
    assert revoke_token(store, "soc-dashboard") is False
    time.sleep(1.05)
    body = assert_error(client.get("/api/v1/devices", headers={"Authorization": token}), 401, "Invalid token")
    assert body["details"] == {"reason": "revoked"}
    assert list_tokens(store)[0]["status"] == "revoked"
    again = create_token(store, "soc-dashboard")  # a revoked name may be reused, with a new secret
    assert again != token
    time.sleep(1.05)
    assert client.get("/api/v1/devices", headers={"Authorization": again}).status_code == 200


def test_expiry(fresh, monkeypatch):
    store, day = fresh, create_token(fresh, "one-day", expires_in_days=1)
    client = create_app(store).test_client()
    assert client.get("/api/v1/devices", headers={"Authorization": day}).status_code == 200
    later = api.auth._now_ms() + 86_400_000 + 1
    monkeypatch.setattr(api.auth, "_now_ms", lambda: later)
    assert_error(client.get("/api/v1/devices", headers={"Authorization": day}), 401, "Expired token")
    assert [t["status"] for t in list_tokens(store)] == ["expired"]


def test_token_names_and_expiry_are_checked(fresh):
    store = fresh
    create_token(store, "ops")
    with pytest.raises(TokenError, match="active"):
        create_token(store, "ops")
    for name in ("", " ops", "x" * 65, "tab\there"):
        with pytest.raises(TokenError):
            create_token(store, name)
    with pytest.raises(TokenError):
        create_token(store, "negative", expires_in_days=-1)


def test_tokens_of_another_db_are_not_valid(tmp_path, client):
    other = Store(tmp_path / "other.duckdb")
    stranger = create_token(other, "stranger")
    other.close()
    assert_error(client.get("/api/v1/devices", headers={"Authorization": stranger}), 401, "Invalid token")


# -- ETag and 304 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/api/v1/devices/connections", "/api/v1/devices", "/api/v1/devices/connections?deviceId=2"]
)
def test_lists_carry_an_etag_and_a_matching_poll_gets_304(get, path):
    first = get(path)
    tag = first.headers["ETag"]
    assert first.status_code == 200 and tag.startswith('"')
    assert first.headers["Cache-Control"] == "private, no-cache"
    again = get(path, headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.data == b""
    assert again.headers["ETag"] == tag
    assert get(path, headers={"If-None-Match": "W/" + tag}).status_code == 304  # weak comparison
    assert get(path, headers={"If-None-Match": f'"other", {tag}'}).status_code == 304
    assert get(path, headers={"If-None-Match": '"other"'}).status_code == 200
    assert get(path, headers={"If-None-Match": "*"}).status_code == 304


def test_etag_changes_when_a_merge_changes_the_list(fresh):
    store, token = fresh, create_token(fresh, "t")
    client = create_app(store).test_client()

    def get(path, headers=None):
        return client.get(path, headers={"Authorization": token, **(headers or {})})

    tag = get("/api/v1/devices/connections").headers["ETag"]
    fill(store, [("10.0.0.1", "10.0.0.2", {503}, {}, 1_511_281_457_933, 1_511_872_830_000, 1, 1, None)])
    response = get("/api/v1/devices/connections", headers={"If-None-Match": tag})
    assert response.status_code == 200 and response.headers["ETag"] != tag


def test_generation_etags_answer_304_without_a_query(store, token, monkeypatch):
    generation = [0]
    client = create_app(store, {"generation": lambda: generation[0]}).test_client()
    headers = {"Authorization": token}
    tag = client.get("/api/v1/devices/connections", headers=headers).headers["ETag"]

    def no_query(*args, **kwargs):
        raise AssertionError("a matching poll must not build the list")

    monkeypatch.setattr(serialize, "connections_json", no_query)
    assert client.get("/api/v1/devices/connections", headers={**headers, "If-None-Match": tag}).status_code == 304
    monkeypatch.undo()
    generation[0] += 1  # a merge happened
    response = client.get("/api/v1/devices/connections", headers={**headers, "If-None-Match": tag})
    assert response.status_code == 200 and response.headers["ETag"] != tag
    # a wall-clock window changes without a merge, so its tag is the body's
    window = client.get("/api/v1/devices/connections?lastActiveInMinutes=5", headers=headers)
    assert window.headers["ETag"].startswith('"b')


def test_answers_are_rendered_once_per_generation(store, token, ids, monkeypatch):
    """A poll of what was already answered in this data generation is served without a query."""
    generation, renders = [0], []
    original, bulk = serialize.connections_json, serialize.device_connections
    monkeypatch.setattr(serialize, "connections_json", lambda *a, **k: renders.append("one") or original(*a, **k))
    monkeypatch.setattr(serialize, "device_connections", lambda *a, **k: renders.append("all") or bulk(*a, **k))
    client = create_app(store, {"generation": lambda: generation[0]}).test_client()
    headers = {"Authorization": token}
    device = f"/api/v1/devices/{ids['10.0.0.1']}/connections"
    first = client.get(device, headers=headers)
    assert first.status_code == 200 and client.get(device, headers=headers).data == first.data
    assert renders == ["all"]  # the first device poll of a generation renders every device's list
    assert client.get(f"/api/v1/devices/connections?deviceId={ids['10.0.0.2']}", headers=headers).status_code == 200
    assert client.get("/api/v1/devices/999999/connections", headers=headers).status_code == 404
    assert renders == ["all"]  # other devices, and an unknown one, come from that one rendering
    assert client.get("/api/v1/devices/connections", headers=headers).status_code == 200
    assert client.get("/api/v1/devices/connections", headers=headers).status_code == 200
    assert renders == ["all", "one"]  # one per distinct answer
    for _ in range(2):  # a wall-clock window is never kept
        client.get("/api/v1/devices/connections?lastActiveInMinutes=5", headers=headers)
    assert len(renders) == 4
    generation[0] += 1  # a merge: everything is rendered anew, one device alone until many polls make the whole pay
    assert client.get(device, headers=headers).data == first.data and renders[4:] == ["one"]
    # (the next polls render every device's list once they took as long as that did last time)
    del renders[:]
    uncached = create_app(store, {"generation": lambda: 0, "render_cache_bytes": 0}).test_client()
    uncached.get(device, headers=headers)
    uncached.get(device, headers=headers)
    assert renders == ["one", "one"]


# both sides, several per device, a device talking to itself, IPv6, and devices without any connection
MANY = [
    (f"10.1.{a}.{b}", f"10.1.{c}.{d}", {502 + (a + d) % 3}, {"modbus": {"Read Coils"}} if b % 2 else {},
     1_700_000_000_000 + 1000 * (a + b + c + d), 1_700_000_500_000 + 1000 * (a * b + c), 1, 60, None)
    for a, b, c, d in [(0, 1, 0, 2), (0, 1, 0, 3), (0, 2, 0, 3), (0, 3, 0, 1), (0, 4, 0, 1), (0, 5, 0, 5),
                       (0, 2, 0, 6), (0, 7, 0, 2), (0, 8, 0, 9), (0, 9, 0, 8), (0, 1, 0, 9)]
]  # fmt: skip


def fill_many(store: Store) -> None:
    """TRAFFIC and MANY, plus two devices known only by their MAC (no connection)."""
    import ipaddress

    fill(store)
    fill(store, MANY)
    table = ConnectionTable()
    table.add_mac(ipaddress.ip_address("10.1.0.50").packed, b"\x00\x1d\x9c\x00\x00\x32")
    table.add_mac(ipaddress.ip_address("fe80::50").packed, b"\x00\x1d\x9c\x00\x00\x33")
    store.merge(table)


def device_answers(client, headers, device_ids) -> dict:
    """(status, body) of both ways of asking for each device's connections."""
    answers = {}
    for device in device_ids:
        for path in (f"/api/v1/devices/{device}/connections", f"/api/v1/devices/connections?deviceId={device}"):
            response = client.get(path, headers=headers)
            answers[path] = (response.status_code, response.data)
    return answers


def test_every_devices_list_rendered_at_once_is_byte_for_byte_its_own_query(fresh, monkeypatch):
    fill_many(fresh)
    headers = {"Authorization": create_token(fresh, "t")}
    known = [device["id"] for device in serialize.devices(fresh.cursor())]
    asked = [*known, 0, max(known) + 1, 2**53]  # and unknown ids
    bulk, calls = serialize.device_connections, []
    monkeypatch.setattr(serialize, "device_connections", lambda *a, **k: calls.append(1) or bulk(*a, **k))
    at_once = device_answers(create_app(fresh, {"generation": lambda: 0}).test_client(), headers, asked)
    assert calls == [1]  # every answer came from the one rendering
    alone = device_answers(create_app(fresh, {"generation": lambda: 0, "render_cache_bytes": 0}).test_client(),
                           headers, asked)  # fmt: skip
    assert calls == [1]  # no cache, no table: each device's own query
    assert at_once == alone
    # what the per-device query says, so the comparison covers every case
    lists = {path: json.loads(body) for path, (status, body) in alone.items() if status == 200}
    assert {status for status, _ in alone.values()} == {200, 404}
    assert any(not v for p, v in lists.items() if "/connections?" not in p)  # known devices without connections
    both = [d for d in known if any(c["secondDeviceId"] == d for c in lists[f"/api/v1/devices/{d}/connections"])
            and any(c["firstDeviceId"] == d for c in lists[f"/api/v1/devices/{d}/connections"])]  # fmt: skip
    assert both and any(len(v) >= 4 for v in lists.values())
    assert alone["/api/v1/devices/0/connections"][0] == 404
    assert alone["/api/v1/devices/connections?deviceId=0"] == (200, b"[]")
    everything = json.loads(fresh.connections_json())
    for device in known:  # and each list is the full list's rows of that device, in its order
        mine = [c for c in everything if device in (c["firstDeviceId"], c["secondDeviceId"])]
        assert lists[f"/api/v1/devices/{device}/connections"] == mine


def test_a_merge_changes_the_answers_rendered_at_once(fresh):
    headers = {"Authorization": create_token(fresh, "t")}
    generation = [0]
    client = create_app(fresh, {"generation": lambda: generation[0]}).test_client()
    known = {device["ipAddresses"][0]: device["id"] for device in serialize.devices(fresh.cursor())}
    asked = [*known.values(), max(known.values()) + 1, max(known.values()) + 40]
    before = device_answers(client, headers, asked)
    fill_many(fresh)  # new connections of known devices, new devices
    generation[0] += 1
    after = device_answers(client, headers, asked)
    changed = {path for path in after if after[path] != before[path]}
    device_path = f"/api/v1/devices/{known['10.0.0.1']}/connections"
    assert f"/api/v1/devices/{max(known.values()) + 1}/connections" in changed  # 404 before, now known
    assert device_path not in changed  # nothing new for 10.0.0.1
    reference = create_app(fresh, {"generation": lambda: 0, "render_cache_bytes": 0}).test_client()
    assert after == device_answers(reference, headers, asked)
    # an id not yet known is still 404 under the new generation
    assert after[f"/api/v1/devices/{max(known.values()) + 40}/connections"][0] == 404


def test_a_table_over_the_budget_falls_back_to_each_devices_query(fresh, monkeypatch):
    fill_many(fresh)
    headers = {"Authorization": create_token(fresh, "t")}
    known = [device["id"] for device in serialize.devices(fresh.cursor())]
    bulk, calls = serialize.device_connections, []
    monkeypatch.setattr(serialize, "device_connections", lambda *a, **k: calls.append(1) or bulk(*a, **k))
    small = create_app(fresh, {"generation": lambda: 0, "render_cache_bytes": 2000}).test_client()
    reference = create_app(fresh, {"generation": lambda: 0, "render_cache_bytes": 0}).test_client()
    assert device_answers(small, headers, [*known, 0]) == device_answers(reference, headers, [*known, 0])
    assert calls == [1]  # tried once, did not fit (a few KB over a budget of 2,000 bytes), never again


class StoreWithoutBulk:
    """A store with only the read interface (as the fleet console's ClickHouseStore has)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name):
        if name == "device_connections":
            raise AttributeError(name)
        return getattr(self._store, name)


def test_a_store_without_the_bulk_read_answers_each_device_alone(fresh):
    fill_many(fresh)
    headers = {"Authorization": create_token(fresh, "t")}
    asked = [device["id"] for device in serialize.devices(fresh.cursor())] + [0]
    plain = create_app(StoreWithoutBulk(fresh), {"generation": lambda: 0}).test_client()
    reference = create_app(fresh, {"generation": lambda: 0}).test_client()
    assert device_answers(plain, headers, asked) == device_answers(reference, headers, asked)


def test_the_render_cache_is_bounded_in_bytes():
    from api.etag import RenderCache

    entry = 1000 + 2 + RenderCache.ENTRY_BYTES  # a body of 1,000 characters under a 2-character key
    cache, renders = RenderCache(4 * entry), []

    def render(key):
        return lambda: renders.append(key) or "x" * 1000

    for key in ("k1", "k2", "k3", "k4", "k5", "k1"):
        cache.get(0, key, render(key))
        assert cache.size <= 4 * entry
    assert renders == ["k1", "k2", "k3", "k4", "k5", "k1"]  # k1 was the least recently used, so it went
    cache.get(0, "k5", render("k5"))
    assert renders[-1] == "k1"  # k5 stayed
    cache.get(0, "big", lambda: "x" * (3 * entry))  # over half the budget: answered, never kept
    assert cache.size <= 4 * entry and cache.get(0, "k5", render("k5")) and renders[-1] == "k1"


def test_etags_of_a_restarted_server_never_match(store, token):
    headers = {"Authorization": token}
    tag = create_app(store, {"generation": lambda: 0}).test_client().get("/api/v1/devices", headers=headers)
    restarted = create_app(store, {"generation": lambda: 0}).test_client()
    response = restarted.get("/api/v1/devices", headers={**headers, "If-None-Match": tag.headers["ETag"]})
    assert response.status_code == 200


def test_create_app_refuses_unknown_settings(store):
    with pytest.raises(ValueError, match="rate_limt"):
        create_app(store, {"rate_limt": 5})


# -- the real server (api.server) on loopback, HTTP and HTTPS -----------------------------------


def fetch(url: str, token: str | None = None, context=None, headers=None):
    request = urllib.request.Request(url, headers={**({"Authorization": token} if token else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture
def running(store):
    """serve() in a thread on a free loopback port; yields a function that starts one (TLS or not)."""
    servers = []

    def start(**tls):
        app = create_app(store, {"rate_limit": 0})
        ready = threading.Event()
        holder = {}

        def keep(server):
            holder["server"] = server
            ready.set()

        thread = threading.Thread(target=serve, args=(app, "127.0.0.1", 0), kwargs={**tls, "ready": keep, "threads": 4})
        thread.start()
        assert ready.wait(10)
        servers.append((holder["server"], thread))
        return holder["server"], thread

    yield start
    for server, thread in servers:
        server.stop()
        thread.join(10)


def test_serve_answers_over_http_and_stops(running, token, ids):
    server, thread = running()
    assert server.url.startswith("http://127.0.0.1:")
    status, headers, body = fetch(server.url + "/api/v1/devices/connections", token)
    assert status == 200 and len(json.loads(body)) == len(TRAFFIC)
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    status, _, body = fetch(
        server.url + "/api/v1/devices/connections", token, headers={"If-None-Match": headers["ETag"]}
    )
    assert status == 304 and body == b""
    status, _, body = fetch(server.url + "/api/v1/devices")
    assert status == 401 and json.loads(body)["message"] == "Missing token"
    assert fetch(server.url + "/healthz")[0] == 200
    status, _, body = fetch(server.url + "/nowhere")
    assert status == 404 and set(json.loads(body)) == ERROR_KEYS
    server.stop()
    thread.join(10)
    assert not thread.is_alive()  # serve() returned


def test_serve_threads_read_side_by_side(running, token, ids):
    server, _ = running()
    results, failures = [], []

    def poll(device_id):
        try:
            for _ in range(10):
                results.append(fetch(f"{server.url}/api/v1/devices/{device_id}/connections", token)[0])
        except Exception as error:  # noqa: BLE001
            failures.append(error)

    pollers = [threading.Thread(target=poll, args=(device_id,)) for device_id in list(ids.values())[:8]]
    for thread in pollers:
        thread.start()
    for thread in pollers:
        thread.join(30)
    assert not failures and results == [200] * 80


def raw_exchange(port: int, request: bytes) -> tuple[int, dict]:
    """Send bytes no well-behaved client would and read the answer to the end: (status, JSON body)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


CLOSE = b"Host: x\r\nConnection: close\r\n"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /api/v1/devices HTTP/1.1\r\n" + CLOSE + b"Authorization: " + b"x" * 50_000 + b"\r\n\r\n",
        b"GET /api/v1/devices HTTP/1.1\r\n" + CLOSE + b"X-Junk: " + b"x" * 70_000 + b"\r\n\r\n",
        b"GET /api/v1/" + b"x" * 70_000 + b" HTTP/1.1\r\n" + CLOSE + b"\r\n",
        b"GET /api/v1/devices/\xff\xfe HTTP/1.1\r\n" + CLOSE + b"\r\n",
        b"GET /api/v1/devices?deviceId=\xc3\xa9 HTTP/1.1\r\n" + CLOSE + b"\r\n",
        b"garbage\r\n\r\n",
        b"BREW /api/v1/devices HTTP/1.1\r\n" + CLOSE + b"\r\n",
        b"GET /api/v1/devices HTTP/1.1\r\n" + CLOSE + b"Authorization: \xc3\xa9\xff\r\n\r\n",
    ],
    ids=["auth-50k", "header-70k", "uri-70k", "raw-bytes-path", "raw-utf8-query", "garbage", "brew", "latin1-auth"],
)
def test_the_server_answers_malformed_requests_in_the_error_shape(running, request_bytes):
    """What the server refuses before the app (oversized, malformed) is in the one shape too, as a 400."""
    server, _ = running()
    status, body = raw_exchange(server.port, request_bytes)
    assert status in (400, 401, 405)
    assert set(body) == ERROR_KEYS and body["status"] == status


def make_certificate(folder) -> tuple[str, str]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


def test_serve_over_https_only_when_a_certificate_is_configured(running, token, tmp_path):
    cert, key = make_certificate(tmp_path)
    server, _ = running(tls_cert=cert, tls_key=key)
    assert server.url.startswith("https://127.0.0.1:")
    trusting = ssl.create_default_context(cafile=cert)
    status, _, body = fetch(server.url + "/api/v1/devices", token, context=trusting)
    assert status == 200 and json.loads(body)
    with pytest.raises(urllib.error.URLError):  # an unknown certificate is refused by a careful client
        fetch(server.url + "/api/v1/devices", token, context=ssl.create_default_context())
    plain = server.url.replace("https://", "http://")
    status, _, body = fetch(plain + "/api/v1/devices", token)
    assert status == 400 and "https://" in json.loads(body)["message"]  # never served in clear


def test_server_refuses_half_a_tls_pair_and_a_busy_port(store, tmp_path):
    app = create_app(store)
    cert, _ = make_certificate(tmp_path)
    with pytest.raises(ServeError, match="together"):
        ApiServer(app, "127.0.0.1", 0, tls_cert=cert)
    with pytest.raises(ServeError):
        ApiServer(app, "127.0.0.1", 0, tls_cert=cert, tls_key=str(tmp_path / "missing.pem"))
    first = ApiServer(app, "127.0.0.1", 0)
    first.prepare()
    try:
        with pytest.raises(ServeError, match="cannot listen"):
            ApiServer(app, "127.0.0.1", first.port).prepare()
    finally:
        first.stop()


def test_parse_listen():
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    assert parse_listen(":8443") == ("127.0.0.1", 8443)
    for bad in ("8080", "host:", "host:http", "host:70000", "host:-1"):
        with pytest.raises(ServeError):
            parse_listen(bad)


# -- the commands: otsensor token / serve / demo ------------------------------------------------


def otsensor_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sensor", *args]


def run_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(otsensor_command(*args), capture_output=True, text=True, timeout=60)


def run_in_process(capsys, *args: str) -> tuple[int, str, str]:
    """`otsensor ARGS` in this process: (exit status, stdout, stderr)."""
    from sensor.cli import main

    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_token_commands(fresh, tmp_path, capsys):
    db = fresh.path
    fresh.close()  # the commands open the DB themselves, as another process would
    status, out, _ = run_in_process(
        capsys, "token", "create", "--db", db, "--name", "grafana", "--expires-in-days", "30"
    )
    assert status == 0
    secret = out.strip().splitlines()[-1]  # alone on the last line
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)
    status, out, _ = run_in_process(capsys, "token", "list", "--db", db, "--json")
    [entry] = json.loads(out)
    assert entry["name"] == "grafana" and entry["status"] == "active" and secret not in out
    assert entry["expires"] - entry["created"] == 30 * 86_400_000
    status, out, _ = run_in_process(capsys, "token", "list", "--db", db)
    assert "grafana" in out and "active" in out and secret not in out
    assert run_in_process(capsys, "token", "revoke", "--db", db, "grafana")[0] == 0
    status, _, err = run_in_process(capsys, "token", "revoke", "--db", db, "grafana")
    assert status == 2 and "no token named" in err
    assert run_in_process(capsys, "token", "create", "--db", db, "--name", "grafana")[0] == 0
    assert run_in_process(capsys, "token", "create", "--db", db, "--name", "grafana")[0] == 2
    status, _, err = run_in_process(capsys, "token", "list", "--db", str(tmp_path / "nope.duckdb"))
    assert status == 2 and "no such DB" in err


def test_token_command_exit_status_from_a_shell(fresh):
    db = fresh.path
    fresh.close()
    created = run_command("token", "create", "--db", db, "--name", "cron")
    assert created.returncode == 0 and re.fullmatch(r"[A-Za-z0-9_-]{43}", created.stdout.splitlines()[-1])
    revoked = run_command("token", "revoke", "--db", db, "nobody")
    assert revoked.returncode == 2 and revoked.stderr.count("\n") == 1 and "Traceback" not in revoked.stderr


def wait_for_line(stream, pattern: str, timeout: float = 60.0) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"no line matching {pattern!r} in {lines}")


def test_serve_command_serves_an_existing_db_and_exits_0_on_sigterm(fresh):
    secret = create_token(fresh, "t")
    db = fresh.path
    fresh.close()
    port = free_port()
    process = subprocess.Popen(
        otsensor_command("serve", "--db", db, "--listen", f"127.0.0.1:{port}"), stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_line(process.stderr, r"serving .* at http://127\.0\.0\.1:\d+")
        status, _, body = fetch(f"http://127.0.0.1:{port}/api/v1/devices/connections", secret)
        assert status == 200 and len(json.loads(body)) == len(TRAFFIC)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        process.kill()


def test_serve_command_usage_errors_exit_2(tmp_path, fresh, capsys):
    db = fresh.path
    fresh.close()
    for args in (
        ("serve", "--db", str(tmp_path / "missing.duckdb")),
        ("serve", "--db", db, "--listen", "nonsense"),
        ("serve", "--db", db, "--tls-cert", str(tmp_path / "c.pem")),
    ):
        status, _, err = run_in_process(capsys, *args)
        assert status == 2 and err.startswith("otsensor: ") and err.count("\n") == 1


def demo_capture(folder) -> None:
    """A few Modbus/TCP frames written with scapy: what the demo replays in this test."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    hmi, plc = "192.168.1.10", "192.168.1.20"
    request = bytes.fromhex("000100000006010100000008")  # Read Coils
    response = bytes.fromhex("00010000000401010155")
    frames = [
        Ether() / IP(src=hmi, dst=plc) / TCP(sport=40000, dport=502, flags="S", seq=100),
        Ether() / IP(src=plc, dst=hmi) / TCP(sport=502, dport=40000, flags="SA", seq=900, ack=101),
        Ether() / IP(src=hmi, dst=plc) / TCP(sport=40000, dport=502, flags="PA", seq=101, ack=901) / request,
        Ether() / IP(src=plc, dst=hmi) / TCP(sport=502, dport=40000, flags="PA", seq=901, ack=113) / response,
    ]
    for index, frame in enumerate(frames):
        frame.time = 1_700_000_000 + index
    folder.mkdir()
    wrpcap(str(folder / "modbus.pcap"), frames)


def test_demo_skips_the_deliberately_broken_captures(tmp_path):
    pytest.importorskip("sensor.readers", reason="the sensor core's capture readers are not there yet")
    from api.cli import BUNDLED_PCAPS, CommandError, demo_captures

    demo_capture(tmp_path / "pcaps")
    (tmp_path / "pcaps" / "bad").mkdir()
    (tmp_path / "pcaps" / "bad" / "truncated.pcap").write_bytes((tmp_path / "pcaps" / "modbus.pcap").read_bytes()[:40])
    assert demo_captures(tmp_path / "pcaps") == [tmp_path / "pcaps" / "modbus.pcap"]
    with pytest.raises(CommandError):
        demo_captures(tmp_path / "nowhere")
    if BUNDLED_PCAPS[0].is_dir():
        bundled = demo_captures()
        assert bundled and not any("bad" in path.parts for path in bundled)


def test_demo_replays_makes_a_token_serves_and_prints_a_curl_line(tmp_path):
    pytest.importorskip("sensor.readers", reason="the sensor core's capture readers are not there yet")
    demo_capture(tmp_path / "pcaps")
    port = free_port()
    process = subprocess.Popen(
        otsensor_command("demo", "--pcaps", str(tmp_path / "pcaps"), "--listen", f"127.0.0.1:{port}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
    )
    try:
        lines = wait_for_line(process.stdout, r"^curl ")
        curl = lines[-1].split()
        assert curl[-1] == f"http://127.0.0.1:{port}/api/v1/devices/connections"
        token = next(line.split()[1] for line in lines if line.startswith("token: "))
        status, _, body = fetch(curl[-1], token)
        assert status == 200
        [connection] = json.loads(body)
        assert connection["ports"] == [502]
        assert connection["protocols"] == [{"name": "modbus", "commands": ["Read Coils"]}]
        assert os.path.exists(tmp_path / "otsensor-demo.duckdb")
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        process.kill()
