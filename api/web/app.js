// The page's wiring: sign-in, polling, filters, tabs, and the read-only hook tests and benchmarks read.

import { ApiError, Poller, get, session } from "./api.js";
import { DetailPane } from "./detail.js";
import { download, stamp, utc } from "./dom.js";
import { NetworkMap, OPEN_ALL_LIMIT } from "./map.js";
import { Filters, KINDS, Plant, address, addressOrder, firmwareOf } from "./model.js";
import { DataTable } from "./tables.js";

const $ = (id) => document.getElementById(id);
const violations = []; // Content-Security-Policy violations this page caused (there should be none)
document.addEventListener("securitypolicyviolation", (event) =>
  violations.push({ directive: event.violatedDirective, blocked: event.blockedURI }),
);

const state = {
  plant: new Plant([], [], null),
  filters: new Filters(),
  view: null,
  poller: null,
  timer: null,
  polls: 0,
  changes: 0,
  lastChange: null,
  timeline: null,
  signedIn: false,
  error: null,
};

const map = new NetworkMap($("map"), {
  onDevice: (id) => detail.device(id),
  onConnection: (id) => detail.connection(id),
  onAggregate: (ids) => detail.aggregate(ids),
});
const detail = new DetailPane($("detail"), {
  plant: () => state.plant,
  onDevice: (id) => showDevice(id),
  onConnection: (id) => showConnection(id),
  onError: (error) => error instanceof ApiError && error.status === 401 && signOut(error.message),
});

// -- tables -----------------------------------------------------------------------------------

const name = (id) => {
  const device = state.plant.device.get(id);
  return device ? address(device) : `device ${id}`;
};
const tables = {
  devices: new DataTable(
    $("view-devices"),
    [
      { key: "id", label: "id", text: (d) => d.id, sort: (d) => d.id, num: true },
      { key: "address", label: "address", text: (d) => d.ipAddresses.join(" "), sort: (d) => addressOrder(address(d)) },
      { key: "name", label: "name", text: (d) => d.name || "" },
      { key: "vendor", label: "vendor", text: (d) => d.vendor || "" },
      { key: "kind", label: "type", text: (d) => KINDS[state.plant.kind(d)] },
      { key: "model", label: "model", text: (d) => firmwareOf(d).model || "" },
      { key: "firmware", label: "firmware", text: (d) => firmwareOf(d).firmwareVersion || "" },
      { key: "serial", label: "serial", text: (d) => firmwareOf(d).serial || "" },
      { key: "macs", label: "MAC", text: (d) => d.macAddresses.join(" ") },
      { key: "protocols", label: "protocols", text: (d) => d.protocols.map((p) => `${p.name} (${p.roles.join("/")})`).join(", ") },
      { key: "firstSeen", label: "first seen (UTC)", text: (d) => utc(d.firstSeen), sort: (d) => d.firstSeen },
      { key: "lastSeen", label: "last seen (UTC)", text: (d) => utc(d.lastSeen), sort: (d) => d.lastSeen },
      { key: "alerts", label: "alerts", text: (d) => (state.plant.alerted.get(d.id) || []).length || "", sort: (d) => (state.plant.alerted.get(d.id) || []).length, num: true },
    ],
    {
      name: "devices",
      rowKey: (d) => d.id,
      onRow: (d) => showDevice(d.id),
      rowClass: (d) => (state.plant.alerted.has(d.id) ? "alert" : null),
    },
  ),
  connections: new DataTable(
    $("view-connections"),
    [
      { key: "id", label: "id", text: (c) => c.id, sort: (c) => [c.firstDeviceId, c.secondDeviceId] },
      { key: "initiator", label: "initiator", text: (c) => name(c.firstDeviceId), sort: (c) => addressOrder(name(c.firstDeviceId)) },
      { key: "responder", label: "responder", text: (c) => name(c.secondDeviceId), sort: (c) => addressOrder(name(c.secondDeviceId)) },
      { key: "ports", label: "ports", text: (c) => c.ports.join(" "), sort: (c) => c.ports },
      { key: "protocols", label: "protocols", text: (c) => c.protocols.map((p) => p.name).join(", ") },
      { key: "commands", label: "commands", text: (c) => c.protocols.flatMap((p) => p.commands).join(", ") },
      { key: "discovered", label: "discovered (UTC)", text: (c) => utc(c.discovered), sort: (c) => c.discovered },
      { key: "lastSeen", label: "last seen (UTC)", text: (c) => utc(c.lastSeen), sort: (c) => c.lastSeen },
    ],
    { name: "connections", rowKey: (c) => c.id, onRow: (c) => showConnection(c.id) },
  ),
  alerts: new DataTable(
    $("view-alerts"),
    [
      { key: "id", label: "id", text: (a) => a.id, sort: (a) => a.id, num: true },
      { key: "time", label: "time (UTC)", text: (a) => utc(a.time), sort: (a) => a.time },
      { key: "severity", label: "severity", text: (a) => a.severity, sort: (a) => ["Warning", "Minor", "Major", "Critical"].indexOf(a.severity) },
      { key: "title", label: "title", text: (a) => a.title },
      { key: "message", label: "message", text: (a) => a.message },
      { key: "engine", label: "engine", text: (a) => a.engine },
      { key: "source", label: "source", text: (a) => (a.sourceDevice == null ? "" : name(a.sourceDevice)) },
      { key: "destination", label: "destination", text: (a) => (a.destinationDevice == null ? "" : name(a.destinationDevice)) },
      { key: "handled", label: "handled", text: (a) => (a.handled ? "yes" : "no") },
    ],
    {
      name: "alerts",
      rowKey: (a) => a.id,
      onRow: (a) => a.sourceDevice != null && showDevice(a.sourceDevice),
      rowClass: (a) => (a.handled ? null : "alert"),
      empty: "no alerts",
    },
  ),
};

// -- what is shown ----------------------------------------------------------------------------

function readFilters() {
  const active = Number.parseInt($("f-active").value, 10);
  const since = $("f-new").value ? Date.parse(`${$("f-new").value}Z`) : null; // the input is UTC, as every time shown
  return new Filters({
    text: $("f-text").value,
    protocol: $("f-protocol").value,
    command: $("f-command").value,
    activeMinutes: active > 0 ? active : null,
    newSince: Number.isFinite(since) ? since : null,
    onlyNew: $("f-only-new").checked,
  });
}

function fillChoices(select, groups) {
  // groups: [[label or null, [values]]]: options under an <optgroup> each; keeps the chosen value
  const chosen = select.value;
  const options = [new Option("any", "")];
  const offered = new Set([""]);
  for (const [label, values] of groups) {
    const parent = label ? document.createElement("optgroup") : null;
    if (parent) {
      parent.label = label;
      options.push(parent);
    }
    for (const value of values) {
      offered.add(value);
      if (parent) parent.append(new Option(value, value));
      else options.push(new Option(value, value));
    }
  }
  if (chosen && !offered.has(chosen)) options.push(new Option(`${chosen} (not seen)`, chosen));
  select.replaceChildren(...options);
  select.value = chosen;
}

function refresh() {
  const plant = state.plant;
  const t0 = performance.now();
  state.filters = readFilters();
  state.view = state.filters.apply(plant);
  const t1 = performance.now();
  map.update(plant, state.view, state.filters);
  const t2 = performance.now();
  const shownDevices = plant.devices.filter((d) => state.view.devices.has(d.id));
  tables.devices.setRows(shownDevices);
  tables.connections.setRows(state.view.connections);
  state.phases = { ...state.phases, filters: t1 - t0, map: t2 - t1, tables: performance.now() - t2 };
  for (const [phase, ms] of Object.entries(map.timings || {})) state.phases[`map: ${phase}`] = ms;
  if (plant.alerts === null) {
    tables.alerts.setRows([], "no alerts endpoint: this sensor does not serve GET /api/v1/alerts");
  } else {
    tables.alerts.setRows(plant.alerts);
  }
  $("count-devices").textContent = plant.devices.length;
  $("count-connections").textContent = plant.connections.length;
  $("count-alerts").textContent = plant.alerts === null ? "–" : plant.alerts.filter((a) => !a.handled).length;
  $("shown").textContent = state.filters.any
    ? `showing ${shownDevices.length} of ${plant.devices.length} devices, ${state.view.connections.length} of ${plant.connections.length} connections`
    : `${plant.devices.length} devices, ${plant.connections.length} connections`;
  $("map-hint").textContent =
    plant.devices.length > 0 ? "click a closed group to open it · double-click an open group to close it · scroll to zoom" : "";
}

function setPlant(data) {
  const t0 = performance.now();
  state.plant = new Plant(data.devices, data.connections, state.poller.missing.has("alerts") ? null : data.alerts || []);
  state.phases = { plant: performance.now() - t0 };
  fillChoices($("f-protocol"), [[null, state.plant.protocols]]);
  fillChoices($("f-command"), [...state.plant.commands]);
  refresh();
}

function showDevice(id) {
  const position = map.pagePosition(`d:${id}`);
  map.cy.elements().unselect();
  if (position) map.cy.getElementById(`d:${id}`).select();
  detail.device(id);
}

function showConnection(id) {
  map.cy.elements().unselect();
  map.cy.getElementById(`c:${id}`).select();
  detail.connection(id);
}

// -- polling ----------------------------------------------------------------------------------

function setStatus(text, problem = false) {
  $("status").textContent = text;
  $("status").classList.toggle("problem", problem);
}

async function poll() {
  clearTimeout(state.timer);
  try {
    const started = performance.now();
    const changed = await state.poller.poll();
    const fetched = performance.now();
    state.polls += 1;
    state.error = null;
    if (changed.length) {
      state.changes += 1;
      state.lastChange = Date.now();
      setPlant(state.poller.data);
      // where the time of the last change went (ms since navigation), for bench/map.py
      state.timeline = { pollStarted: started, fetched, shown: performance.now(), phases: { ...state.phases } };
    }
    setStatus(`updated ${utc(state.lastChange)}`);
  } catch (error) {
    state.error = error.message;
    if (error instanceof ApiError && error.status === 401) {
      signOut(error.message);
      return;
    }
    setStatus(`sensor unreachable or failing (${error.message}); retrying`, true);
  }
  schedule();
}

function schedule() {
  clearTimeout(state.timer);
  const seconds = Number($("poll").value);
  if (state.signedIn && seconds > 0) state.timer = setTimeout(poll, seconds * 1000);
}

// -- signing in and out -------------------------------------------------------------------------

function newPoller() {
  return new Poller(
    { devices: "api/v1/devices", connections: "api/v1/devices/connections", alerts: "api/v1/alerts" },
    ["alerts"],
  );
}

async function signIn(token) {
  // one call with the pasted token: the API's own answer says whether it is good (and why not)
  $("sign-in-error").textContent = "";
  let answer;
  try {
    answer = await get("api/v1/devices", { token, etag: null });
  } catch (error) {
    $("sign-in-error").textContent =
      error instanceof ApiError ? `${error.message} (the sensor answered ${error.status})` : `Cannot reach the sensor: ${error.message}`;
    return false;
  }
  session.keep(token);
  start(answer);
  return true;
}

/** Sign-in done: poll. `devices` is the sign-in's answer, so the first poll does not fetch it again. */
function start(devices = null) {
  state.signedIn = true;
  state.poller = newPoller();
  if (devices) state.poller.seed("devices", devices);
  if ($("sign-in").open) $("sign-in").close();
  $("token").value = "";
  poll();
}

function signOut(message = "") {
  session.forget();
  state.signedIn = false;
  clearTimeout(state.timer);
  $("sign-in-error").textContent = message ? `${message} — paste a valid token` : "";
  if (!$("sign-in").open) $("sign-in").showModal();
  $("token").focus();
}

$("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (token) signIn(token);
});
$("sign-in").addEventListener("cancel", (event) => event.preventDefault()); // Esc does not skip signing in
$("sign-out").addEventListener("click", () => signOut());

// -- controls -----------------------------------------------------------------------------------

let typing = null;
$("f-text").addEventListener("input", () => {
  clearTimeout(typing);
  typing = setTimeout(refresh, 150);
});
for (const id of ["f-protocol", "f-command", "f-active", "f-new", "f-only-new"]) $(id).addEventListener("change", refresh);
$("f-active").addEventListener("input", refresh);
$("f-clear").addEventListener("click", () => {
  for (const id of ["f-text", "f-protocol", "f-command", "f-active", "f-new"]) $(id).value = "";
  $("f-only-new").checked = false;
  refresh();
});
const regroup = () => map.setGrouping($("f-layout").value, Number($("f-prefix").value));
$("f-layout").addEventListener("change", regroup);
$("f-prefix").addEventListener("change", regroup);
$("poll").addEventListener("change", schedule);
$("map-fit").addEventListener("click", () => map.fit());
$("map-expand").addEventListener("click", () => {
  if (!map.setAll(true)) {
    $("map-hint").textContent =
      `${state.view.devices.size.toLocaleString("en-US")} devices are too many to open at once ` +
      `(at most ${OPEN_ALL_LIMIT.toLocaleString("en-US")}): open groups one by one, or filter first`;
  }
});
$("map-collapse").addEventListener("click", () => map.setAll(false));
$("map-relayout").addEventListener("click", () => map.draw({ arrange: true, fit: true }));
$("map-png").addEventListener("click", () => download(map.png(), `otsensor-map-${stamp()}.png`));

for (const tab of document.querySelectorAll("[data-tab]")) {
  tab.addEventListener("click", () => {
    for (const other of document.querySelectorAll("[data-tab]")) {
      const on = other === tab;
      other.setAttribute("aria-selected", String(on));
      $(`view-${other.dataset.tab}`).hidden = !on;
      tables[other.dataset.tab]?.setVisible(on);
    }
    if (tab.dataset.tab === "map") map.cy.resize();
  });
}

// -- the read-only hook: what the page shows, for tests and the benchmark -------------------------

window.otsensorPage = Object.freeze({
  drawnDevices: () => map.drawnDevices(),
  drawnConnections: () => map.drawnConnections(),
  markedDevices: () => map.markedDevices(),
  groups: () => map.drawnGroups(),
  modelPosition: (elementId) => map.modelPosition(elementId),
  pagePosition: (elementId) => map.pagePosition(elementId),
  tableKeys: (name) => tables[name].rowsShown().map((row) => String(tables[name].options.rowKey(row))),
  status: () => ({
    signedIn: state.signedIn,
    polls: state.polls,
    changes: state.changes,
    error: state.error,
    firstDrawnMs: map.firstDrawnAt,
    drawMs: { ...map.timings }, // the last redraw's phases
    timeline: state.timeline ? JSON.parse(JSON.stringify(state.timeline)) : null,
    devices: state.plant.devices.length,
    connections: state.plant.connections.length,
    alertsEndpoint: state.plant.alerts !== null,
    violations: violations.map((v) => ({ ...v })),
  }),
});

if (session.token) start();
else signOut();
