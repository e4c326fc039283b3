// The detail pane: one device, one connection, or the connections an aggregated edge stands for.
// Each is read fresh from the API (GET /api/v1/devices/<id>, .../<id>/connections, /api/v1/connections/<id>).

import { get } from "./api.js";
import { h, number, utc } from "./dom.js";
import { KINDS, OPERATIONAL_COMMANDS, address, firmwareOf } from "./model.js";

function field(term, value) {
  if (value === null || value === undefined || value === "" || (Array.isArray(value) && !value.length)) return null;
  return [h("dt", {}, term), h("dd", {}, Array.isArray(value) ? value.join(", ") : value)];
}

function commands(list) {
  return list.map((cmd, i) => [
    i ? ", " : "",
    OPERATIONAL_COMMANDS.has(cmd) ? h("span", { class: "op" }, cmd) : cmd,
  ]);
}

function protocolList(protocols) {
  if (!protocols.length) return h("p", { class: "commands" }, "no recognised industrial protocol");
  return h(
    "ul",
    { class: "protocols" },
    protocols.map((p) => h("li", {}, h("strong", {}, p.name), ": ", h("span", { class: "commands" }, commands(p.commands)))),
  );
}

export class DetailPane {
  constructor(element, { plant, onDevice, onConnection, onError }) {
    this.element = element;
    this.plant = plant; // a function returning the current Plant
    this.onDevice = onDevice;
    this.onConnection = onConnection;
    this.onError = onError;
    this.shown = null; // what is on show: {kind, id}
    this.ticket = 0; // a later click wins over an earlier answer still on its way
  }

  _show(...children) {
    this.element.replaceChildren(...children.flat().filter(Boolean));
  }

  _deviceLink(id) {
    const device = this.plant().device.get(id);
    const text = device ? `${address(device)}${device.name ? ` (${device.name})` : ""}` : `device ${id}`;
    return h("button", { type: "button", class: "linkish", onclick: () => this.onDevice(id) }, text);
  }

  async device(id) {
    const ticket = ++this.ticket;
    this.shown = { kind: "device", id };
    this._show(h("p", { class: "placeholder" }, "Loading device…"));
    let device;
    let connections;
    try {
      [device, connections] = await Promise.all([get(`api/v1/devices/${id}`), get(`api/v1/devices/${id}/connections`)]);
    } catch (error) {
      if (ticket === this.ticket) this._failed(error);
      return;
    }
    if (ticket !== this.ticket) return;
    device = device.data;
    connections = connections.data;
    const plant = this.plant();
    const kind = plant.kind(device);
    const fw = firmwareOf(device);
    const identity = device.identity || {};
    const alerts = plant.alerted.get(id) || [];
    this._show(
      h("h3", { "data-testid": "detail-title" }, device.name || address(device)),
      h("p", { class: "kind" }, `${KINDS[kind]}${device.vendor ? ` · ${device.vendor}` : ""} · device ${device.id}`),
      h(
        "dl",
        { class: "identity", "data-testid": "device-identity" },
        field("address", device.ipAddresses),
        field("name", device.name),
        field("vendor", device.vendor),
        field("model", fw.model),
        field("firmware", fw.firmwareVersion),
        field("serial", fw.serial),
        field("MAC", device.macAddresses),
        field("type", device.type || "–"),
        kind === "eng" ? field("role", "engineering station (sent programming or stop/start commands)") : null,
        field("HTTP server", identity.httpServer),
        field("User-Agent", identity.userAgent),
        field("first seen", utc(device.firstSeen)),
        field("last seen", utc(device.lastSeen)),
      ),
      h("h2", {}, "Protocols and roles"),
      device.protocols.length
        ? h("ul", {}, device.protocols.map((p) => h("li", {}, h("strong", {}, p.name), ` — ${p.roles.join(" and ")}`)))
        : h("p", { class: "commands" }, "none recognised"),
      alerts.length ? h("h2", {}, `Unhandled alerts (${alerts.length})`) : null,
      alerts.length
        ? h("ul", { class: "alerts" }, alerts.map((a) => h("li", {}, `${utc(a.time)} ${a.severity}: ${a.title}${a.message ? ` — ${a.message}` : ""}`)))
        : null,
      h("h2", {}, `Connections (${connections.length})`),
      connections.length
        ? h(
            "ul",
            { class: "connections" },
            connections.map((c) => {
              const outgoing = c.firstDeviceId === id;
              const peer = outgoing ? c.secondDeviceId : c.firstDeviceId;
              return h(
                "li",
                {},
                outgoing ? "→ " : "← ",
                this._deviceLink(peer),
                ` ports ${c.ports.join(", ") || "–"} `,
                h("button", { type: "button", class: "linkish", onclick: () => this.onConnection(c.id) }, "details"),
                protocolList(c.protocols),
              );
            }),
          )
        : h("p", { class: "commands" }, "none"),
    );
  }

  async connection(connectionId) {
    const ticket = ++this.ticket;
    this.shown = { kind: "connection", id: connectionId };
    this._show(h("p", { class: "placeholder" }, "Loading connection…"));
    let answer;
    try {
      answer = await get(`api/v1/connections/${encodeURIComponent(connectionId)}`);
    } catch (error) {
      if (ticket === this.ticket) this._failed(error);
      return;
    }
    if (ticket !== this.ticket) return;
    const c = answer.data;
    const plant = this.plant();
    const name = (id) => (plant.device.has(id) ? address(plant.device.get(id)) : `device ${id}`);
    const identity = c.identity || {};
    this._show(
      h("h3", { "data-testid": "detail-title" }, `${name(c.firstDeviceId)} → ${name(c.secondDeviceId)}`),
      h("p", { class: "kind" }, `connection ${c.id}${plant.isOperational(c) ? " · stop/program commands seen" : ""}`),
      h(
        "dl",
        { class: "identity", "data-testid": "connection-detail" },
        field("initiator", this._deviceLink(c.firstDeviceId)),
        field("responder", this._deviceLink(c.secondDeviceId)),
        field("ports", c.ports.map(String)),
        field("packets", number(c.packets)),
        field("bytes", number(c.bytes)),
        field("connected at", c.connectedAt),
        field("last active at", c.lastActiveAt),
        field("source IP", identity.sourceIp),
        field("User-Agent", identity.userAgent),
      ),
      h("h2", {}, "Protocols and commands"),
      protocolList(c.protocols),
    );
  }

  aggregate(connectionIds) {
    ++this.ticket;
    this.shown = { kind: "aggregate", id: connectionIds };
    const plant = this.plant();
    const list = connectionIds.slice(0, 300).map((id) => plant.connection.get(id)).filter(Boolean);
    this._show(
      h("h3", {}, `${connectionIds.length} connection${connectionIds.length === 1 ? "" : "s"}`),
      h("p", { class: "kind" }, "between a closed group and its peers; open the group to see each one on the map"),
      h(
        "ul",
        {},
        list.map((c) =>
          h(
            "li",
            {},
            h(
              "button",
              { type: "button", class: "linkish", onclick: () => this.onConnection(c.id) },
              `${address(plant.device.get(c.firstDeviceId) || { id: c.firstDeviceId })} → ${address(plant.device.get(c.secondDeviceId) || { id: c.secondDeviceId })}`,
            ),
            ` ${c.protocols.map((p) => p.name).join(", ") || c.ports.map((p) => `:${p}`).join(" ")}`,
          ),
        ),
      ),
      connectionIds.length > list.length ? h("p", { class: "commands" }, `… and ${connectionIds.length - list.length} more (see the Connections table)`) : null,
    );
  }

  _failed(error) {
    this._show(h("p", { class: "error" }, `The sensor answered: ${error.message}`));
    this.onError?.(error);
  }
}
