"""The network map page (CONTRACT.md section 5) in a real browser: Debian's Chromium driven by Playwright.

Over a DB made from the bundled captures (as `otsensor demo` makes it), served by the real server
(api.server) on loopback: a user signs in with a token and sees the API's devices and
connections on the map, opens a device and a connection, filters on `PLC Stop`, exports tables, and
the page never talks to anything but the sensor it came from, under a Content-Security-Policy it keeps.
"""

from __future__ import annotations

import csv
import io
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from api import create_app
from api.auth import create_token
from api.cli import demo_captures
from api.server import ApiServer
from sensor.replay import replay
from sensor.store import Store

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")

playwright_api = pytest.importorskip("playwright.sync_api")


class Served:
    """A DB, the app over it and the real server, on an ephemeral loopback port."""

    def __init__(self, db: Path, captures: list[Path]) -> None:
        self.store = Store(db)
        if captures:  # none: the DB is filled already
            replay([str(p) for p in captures], self.store, progress=False)
        self.token = create_token(self.store, "page-test")
        self.generation = 0  # bumped by a test that changes the data while the page polls
        app = create_app(self.store, {"generation": lambda: self.generation, "rate_limit": 0})
        self.app = app
        self.server = ApiServer(app, "127.0.0.1", 0, threads=8)
        self.server.prepare()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = self.server.url

    def api(self, path: str, token: str | None = None):
        token = self.token if token is None else token
        request = urllib.request.Request(self.url + path, headers={"Authorization": token} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def close(self) -> None:
        self.server.stop()
        self.thread.join(10)
        self.store.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    served = Served(tmp_path_factory.mktemp("page") / "demo.duckdb", demo_captures())
    yield served
    served.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
        )
        yield browser
        browser.close()


class Visit:
    """One browser tab on the page, recording every request and console message."""

    def __init__(self, browser, served: Served) -> None:
        self.served = served
        self.context = browser.new_context(viewport={"width": 1500, "height": 900}, accept_downloads=True)
        self.page = self.context.new_page()
        self.requests = []
        self.console = []
        self.page.on("request", lambda request: self.requests.append(request))
        self.page.on("console", lambda message: self.console.append(message.text))
        self.page.goto(served.url + "/")

    def sign_in(self, token: str | None = None) -> None:
        self.page.fill("#token", token or self.served.token)
        self.page.click("#sign-in-form button[type=submit]")
        self.page.wait_for_function("() => window.otsensorPage.status().changes > 0", timeout=15000)

    def hook(self, expression: str):
        return self.page.evaluate(f"() => window.otsensorPage.{expression}")

    def click_element(self, element_id: str) -> None:
        at = self.hook(f"pagePosition({json.dumps(element_id)})")
        assert at is not None, f"{element_id} is not drawn"
        self.page.mouse.click(at["x"], at["y"])

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(browser, served):
    visit = Visit(browser, served)
    yield visit
    visit.close()


def test_page_and_assets_are_served_without_a_token_with_a_strict_policy(served):
    with urllib.request.urlopen(served.url + "/", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/html")
        policy = response.headers["Content-Security-Policy"]
        page = response.read().decode()
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "<script>" not in page and "style=" not in page  # no inline script or style to allow
    with urllib.request.urlopen(served.url + "/web/vendor/cytoscape.min.js", timeout=10) as response:
        assert "javascript" in response.headers["Content-Type"]
        assert response.headers["Content-Security-Policy"] == policy
        assert b"Cytoscape Consortium" in response.read(400)
    for escape in ("/web/../page.py", "/web/%2e%2e/page.py", "/web/nothing.js"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(served.url + escape, timeout=10)
        assert refused.value.code == 404
    assert served.api("/api/v1/devices", token="")[0] == 401  # the page is open; the data is not


def test_sign_in_shows_the_apis_devices_and_connections_and_talks_only_to_the_sensor(visit, served):
    visit.sign_in()
    _, devices = served.api("/api/v1/devices")
    _, connections = served.api("/api/v1/devices/connections")
    assert len(devices) > 40 and len(connections) > 30  # the bundled captures: a plant, not a toy
    assert visit.hook("drawnDevices()") == sorted(d["id"] for d in devices)
    assert visit.hook("drawnConnections()") == sorted(c["id"] for c in connections)

    # polls ask with the ETag of the last answer and get 304s while nothing changes
    visit.page.select_option("#poll", "2")
    visit.page.wait_for_function("() => window.otsensorPage.status().polls >= 2", timeout=10000)
    polls = [r for r in visit.requests if r.url.endswith("/api/v1/devices/connections")]
    assert polls[-1].headers.get("if-none-match") and polls[-1].response().status == 304

    origin = urlsplit(served.url)
    for request in visit.requests:
        url = request.url.removeprefix("blob:")
        assert (urlsplit(url).scheme, urlsplit(url).netloc) == (origin.scheme, origin.netloc), request.url
        assert served.token not in request.url  # the token travels in a header only
        if "/api/" in request.url:
            assert request.headers.get("authorization") == served.token
    storage = visit.page.evaluate("() => [sessionStorage.getItem('otsensor.token'), localStorage.length]")
    assert storage == [served.token, 0]  # this tab only; nothing kept for later visits
    assert visit.hook("status()")["violations"] == []
    assert not [m for m in visit.console if "Content Security Policy" in m or "Content-Security-Policy" in m]


def test_a_click_on_a_device_shows_its_identity_and_on_an_edge_its_connection(visit, served):
    visit.sign_in()
    _, devices = served.api("/api/v1/devices")
    plc = next(d for d in devices if d["firmware"] and d["firmware"][0].get("model", "").startswith("6ES7"))
    visit.click_element(f"d:{plc['id']}")
    identity = visit.page.locator("[data-testid=device-identity]")
    identity.wait_for()
    text = identity.inner_text()
    for value in (
        plc["ipAddresses"][0],
        plc["vendor"],
        plc["firmware"][0]["model"],
        plc["firmware"][0]["firmwareVersion"],
    ):
        assert value in text
    assert plc["macAddresses"][0] in text
    assert "s7comm" in visit.page.locator("#detail").inner_text()

    _, connections = served.api(f"/api/v1/devices/{plc['id']}/connections")
    chosen = connections[0]
    visit.click_element(f"c:{chosen['id']}")
    shown = visit.page.locator("[data-testid=connection-detail]")
    shown.wait_for()
    _, detail = served.api(f"/api/v1/connections/{chosen['id']}")
    text = shown.inner_text()
    assert f"{detail['packets']:,}" in text and f"{detail['bytes']:,}" in text
    assert detail["connectedAt"] in text and detail["lastActiveAt"] in text
    pane = visit.page.locator("#detail").inner_text()
    assert all(command in pane for p in detail["protocols"] for command in p["commands"])


def test_the_plc_stop_filter_leaves_exactly_the_pairs_the_api_lists_with_it(visit, served):
    _, connections = served.api("/api/v1/devices/connections")
    stops = sorted(c["id"] for c in connections if any("PLC Stop" in p["commands"] for p in c["protocols"]))
    assert stops  # pcaps/s7comm.pcap has an engineering station stopping a CPU
    visit.sign_in()
    visit.page.select_option("#f-command", "PLC Stop")
    visit.page.wait_for_function(f"() => window.otsensorPage.drawnConnections().length === {len(stops)}")
    assert visit.hook("drawnConnections()") == stops
    ends = {c[k] for c in connections if c["id"] in stops for k in ("firstDeviceId", "secondDeviceId")}
    assert visit.hook("drawnDevices()") == sorted(ends)
    assert visit.hook("tableKeys('connections')") == stops

    visit.page.click("#f-clear")
    visit.page.fill("#f-text", "Siemens")  # text search: the Siemens devices and who talks to them
    visit.page.wait_for_function(f"() => window.otsensorPage.drawnConnections().length < {len(connections)}")
    _, devices = served.api("/api/v1/devices")
    siemens = {d["id"] for d in devices if "siemens" in (d["vendor"] or "").lower()}
    drawn = set(visit.hook("drawnDevices()"))
    assert siemens <= drawn
    assert all(
        c["firstDeviceId"] in siemens or c["secondDeviceId"] in siemens
        for c in connections
        if c["id"] in visit.hook("drawnConnections()")
    )


@pytest.mark.parametrize("kind", ["wrong", "expired"])
def test_a_wrong_or_expired_token_shows_the_apis_message(visit, served, kind):
    token = "not-a-token" if kind == "wrong" else create_token(served.store, "page-expired", expires_in_days=0)
    served.app.extensions["otsensor"].tokens.invalidate()  # as the admin socket does: the API sees it at once
    status, body = served.api("/api/v1/devices", token=token)
    assert status == 401
    visit.page.fill("#token", token)
    visit.page.click("#sign-in-form button[type=submit]")
    error = visit.page.locator("#sign-in-error")
    error.filter(has_text=body["message"]).wait_for(timeout=5000)
    assert body["message"] in error.inner_text() and "401" in error.inner_text()
    assert visit.page.evaluate("() => sessionStorage.getItem('otsensor.token')") is None
    assert visit.hook("drawnDevices()") == []
    if kind == "expired":
        from api.auth import revoke_token

        revoke_token(served.store, "page-expired")


def test_tables_sort_and_export_csv_and_the_map_exports_png(visit, served):
    visit.sign_in()
    _, devices = served.api("/api/v1/devices")
    visit.page.click("[data-tab=devices]")
    visit.page.click("[data-table=devices] th[data-key=vendor]")
    keys = visit.hook("tableKeys('devices')")
    by_id = {str(d["id"]): d for d in devices}
    vendors = [by_id[k]["vendor"] or "" for k in keys]
    assert sorted(keys, key=int) == sorted(by_id, key=int)
    assert [v for v in vendors if v] == sorted(v for v in vendors if v)
    with visit.page.expect_download() as download:
        visit.page.click("#view-devices button:has-text('Export CSV')")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text("utf-8"))))
    assert [row["id"] for row in rows] == keys
    assert {row["address"] for row in rows} == {d["ipAddresses"][0] for d in devices}

    visit.page.click("[data-tab=map]")
    with visit.page.expect_download() as download:
        visit.page.click("#map-png")
    assert Path(download.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert visit.hook("status()")["violations"] == []  # exports need nothing the policy forbids


def _alerts(*alerts):
    return lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(list(alerts)))


def test_alerts_table_and_marks_follow_the_alerts_contract(visit, served):
    _, devices = served.api("/api/v1/devices")
    has_endpoint = any(rule.rule == "/api/v1/alerts" for rule in served.app.url_map.iter_rules())
    if not has_endpoint:  # this sensor has no alerts yet: the page says so instead of failing
        visit.sign_in()
        visit.page.click("[data-tab=alerts]")
        assert "no alerts endpoint" in visit.page.locator("#view-alerts").inner_text()
        assert visit.hook("status()")["alertsEndpoint"] is False

    # an endpoint answering in section 4's fields: unhandled alerts mark their devices
    source, target, other = devices[-1]["id"], devices[-2]["id"], devices[0]["id"]
    alert = {
        "id": 1, "time": 1767600001000, "title": "PLC Stop command", "message": "PLC Stop sent",
        "severity": "Major", "engine": "Operational", "sourceDevice": source, "destinationDevice": target,
        "additionalInformation": {"description": "", "information": []}, "handled": False,
    }  # fmt: skip
    handled = dict(alert, id=2, sourceDevice=other, destinationDevice=None, handled=True)
    tab = Visit(visit.context.browser, served)
    try:
        tab.page.route("**/api/v1/alerts", _alerts(alert, handled))
        tab.page.reload()
        tab.sign_in()
        marked = tab.page.evaluate("() => window.otsensorPage.markedDevices()")
        assert marked == sorted([source, target])
        tab.page.click("[data-tab=alerts]")
        assert tab.hook("tableKeys('alerts')") == ["1", "2"]
        assert "PLC Stop command" in tab.page.locator("#view-alerts").inner_text()
    finally:
        tab.close()


def test_the_sensors_own_alerts_are_listed_and_their_devices_marked(visit, served):
    """The real alerts endpoint over the demo captures (an engineering station stops an S7-300 there)."""
    status, alerts = served.api("/api/v1/alerts")
    assert status == 200 and "PLC Stop command" in {a["title"] for a in alerts}
    unhandled = {d for a in alerts if not a["handled"] for d in (a["sourceDevice"], a["destinationDevice"]) if d}
    visit.sign_in()
    assert visit.hook("markedDevices()") == sorted(unhandled)
    visit.page.click("[data-tab=alerts]")
    assert sorted(visit.hook("tableKeys('alerts')")) == sorted(str(a["id"]) for a in alerts)
    assert "PLC Stop command" in visit.page.locator("#view-alerts").inner_text()


def test_new_data_appears_in_place_while_the_page_polls(browser, tmp_path):
    """A poll that brings a new device adds it; every device already drawn keeps its place."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    served = Served(tmp_path / "live.duckdb", [Path(__file__).resolve().parent.parent / "pcaps" / "modbus.pcap"])
    try:
        visit = Visit(browser, served)
    except BaseException:
        served.close()
        raise
    try:
        visit.sign_in()
        before = visit.hook("drawnDevices()")
        places = {i: visit.hook(f"modelPosition('d:{i}')") for i in before}
        visit.page.select_option("#poll", "2")

        hmi, plc = "10.77.0.10", "10.77.0.21"
        frames = [
            Ether() / IP(src=hmi, dst=plc) / TCP(sport=50000, dport=502, flags="S", seq=100),
            Ether() / IP(src=plc, dst=hmi) / TCP(sport=502, dport=50000, flags="SA", seq=900, ack=101),
            Ether()
            / IP(src=hmi, dst=plc)
            / TCP(sport=50000, dport=502, flags="PA", seq=101, ack=901)
            / bytes.fromhex("000100000006010300000002"),
            Ether()
            / IP(src=plc, dst=hmi)
            / TCP(sport=502, dport=50000, flags="PA", seq=901, ack=113)
            / bytes.fromhex("00010000000701030400070008"),
        ]
        for i, frame in enumerate(frames):
            frame.time = 1767700000 + i / 100
        wrpcap(str(tmp_path / "new.pcap"), frames)
        replay([str(tmp_path / "new.pcap")], served.store, progress=False)
        served.generation += 1

        visit.page.wait_for_function("() => window.otsensorPage.status().changes >= 2", timeout=15000)
        _, devices = served.api("/api/v1/devices")
        after = visit.hook("drawnDevices()")
        assert after == sorted(d["id"] for d in devices) and len(after) == len(before) + 2
        assert {i: visit.hook(f"modelPosition('d:{i}')") for i in before} == places
    finally:
        visit.close()
        served.close()


def test_demo_prints_the_page_url_and_its_token_opens_the_map(browser, tmp_path):
    import signal
    import subprocess

    from api.server import free_port
    from tests.test_api import demo_capture, otsensor_command, wait_for_line

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
        page_url = next(line.split()[1] for line in lines if line.startswith("map: "))
        token = next(line.split()[1] for line in lines if line.startswith("token: "))
        assert page_url == f"http://127.0.0.1:{port}/"
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(page_url)
            page.fill("#token", token)
            page.click("#sign-in-form button[type=submit]")
            page.wait_for_function("() => window.otsensorPage.status().changes > 0", timeout=15000)
            assert len(page.evaluate("() => window.otsensorPage.drawnDevices()")) == 2  # the capture's HMI and PLC
            assert len(page.evaluate("() => window.otsensorPage.drawnConnections()")) == 1
        finally:
            context.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        process.kill()


def test_groups_are_the_subnets_and_the_levels_stack_plcs_at_the_bottom(visit, served):
    import ipaddress

    visit.sign_in()
    _, devices = served.api("/api/v1/devices")
    subnets = set()
    for d in devices:
        address = ipaddress.ip_address(d["ipAddresses"][0])
        subnets.add(str(ipaddress.ip_network(f"{address}/{24 if address.version == 4 else 64}", strict=False)))
    groups = visit.hook("groups()")
    assert {g["label"].split(" · ")[0] for g in groups} == subnets
    assert all(g["expanded"] for g in groups)  # a small plant starts open

    visit.page.select_option("#f-layout", "level")
    visit.page.wait_for_function("() => window.otsensorPage.groups().length === 3")
    assert visit.hook("drawnDevices()") == sorted(d["id"] for d in devices)
    kinds = visit.page.evaluate("() => Object.fromEntries(window.otsensorPage.groups().map((g) => [g.key, g.label]))")
    assert set(kinds) == {"L1", "L2", "L3"}
    y = {d["id"]: visit.hook(f"modelPosition('d:{d['id']}')")["y"] for d in devices}
    plcs = [d["id"] for d in devices if d["type"] == "PLC"]
    others = [d["id"] for d in devices if d["type"] is None]
    hmis = [d["id"] for d in devices if d["type"] == "HMI"]
    assert max(y[i] for i in others) < min(y[i] for i in hmis)  # the rest on top, then HMIs and stations,
    assert max(y[i] for i in hmis) < min(y[i] for i in plcs)  # PLCs at the bottom


def test_a_big_plant_starts_with_its_groups_closed_and_a_click_opens_one(browser, tmp_path):
    """Over 300 devices (here 400 in two /24s, as bench/api.py builds them): groups first, devices on demand."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_api", Path(__file__).resolve().parent.parent / "bench" / "api.py"
    )
    bench_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_api)
    bench_api.build_db(tmp_path / "big.duckdb", connections=2000, devices=400)
    served = Served(tmp_path / "big.duckdb", [])
    try:
        visit = Visit(browser, served)
        visit.sign_in()
        groups = visit.hook("groups()")
        assert sorted(g["key"] for g in groups) == ["s:10.0.0.0/24", "s:10.0.1.0/24"]
        assert not any(g["expanded"] for g in groups)
        assert visit.hook("drawnDevices()") == [] and visit.hook("drawnConnections()") == []

        visit.click_element("g:s:10.0.1.0/24")
        visit.page.wait_for_function("() => window.otsensorPage.drawnDevices().length > 0")
        _, devices = served.api("/api/v1/devices")
        _, connections = served.api("/api/v1/devices/connections")
        inside = {d["id"] for d in devices if d["ipAddresses"][0].startswith("10.0.1.")}
        assert set(visit.hook("drawnDevices()")) == inside
        # a connection with both ends inside the open group is drawn as itself; the others join the groups
        assert visit.hook("drawnConnections()") == sorted(
            c["id"] for c in connections if c["firstDeviceId"] in inside and c["secondDeviceId"] in inside
        )

        visit.page.click("#map-expand")
        visit.page.wait_for_function("() => window.otsensorPage.groups().every((g) => g.expanded)")
        assert visit.hook("drawnDevices()") == sorted(d["id"] for d in devices)
        assert visit.hook("drawnConnections()") == sorted(c["id"] for c in connections)
        visit.close()
    finally:
        served.close()
