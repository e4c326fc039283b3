// What the page knows, built from the API's answers only: devices, connections, alerts, indexed; each
// device's kind and level; subnets; the filters. No drawing here (map.js) and no fetching (api.js).

// Commands that program a controller or change its run state: the client that sends them is an
// engineering station (as the contract defines `engineeringStation`), and their edges are drawn in red.
export const OPERATIONAL_COMMANDS = new Set([
  "PLC Stop",
  "PI-Service",
  "Request download",
  "Download block",
  "Download ended",
  "Start upload",
  "Upload",
  "End upload",
  "AMS Write Control",
]);

export const KINDS = {
  plc: "PLC",
  eng: "engineering station",
  hmi: "HMI",
  other: "other",
};

// Purdue-style bands of the level layout, drawn top to bottom
export const LEVELS = [
  { key: "L3", kind: ["other"], label: "Other devices (IT, servers, unknown)" },
  { key: "L2", kind: ["hmi", "eng"], label: "HMIs and engineering stations" },
  { key: "L1", kind: ["plc"], label: "PLCs" },
];

export function address(device) {
  return (device.ipAddresses && device.ipAddresses[0]) || `device ${device.id}`;
}

export function firmwareOf(device) {
  return (device.firmware && device.firmware[0]) || {};
}

/** IPv4 address as 32-bit unsigned int, or null. */
export function ipv4(text) {
  const parts = text.split(".");
  if (parts.length !== 4) return null;
  let value = 0;
  for (const part of parts) {
    if (!/^\d{1,3}$/.test(part) || Number(part) > 255) return null;
    value = value * 256 + Number(part);
  }
  return value;
}

function ipv6Groups(text) {
  // eight 16-bit groups of an IPv6 address ("::" expanded); enough for /64 prefixes and sorting
  const [head, tail] = text.toLowerCase().split("::");
  const left = head ? head.split(":") : [];
  const right = tail !== undefined && tail ? tail.split(":") : [];
  const fill = tail !== undefined ? 8 - left.length - right.length : 0;
  return [...left, ...Array(Math.max(fill, 0)).fill("0"), ...right].map((g) => parseInt(g, 16) || 0);
}

/** The subnet a device is grouped in: IPv4 /prefix, IPv6 /64. Returns {key, label, order}. */
export function subnetOf(ip, prefix) {
  const v4 = ipv4(ip);
  if (v4 !== null) {
    const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
    const net = (v4 & mask) >>> 0;
    const label = `${net >>> 24}.${(net >>> 16) & 255}.${(net >>> 8) & 255}.${net & 255}/${prefix}`;
    return { key: label, label, order: [0, net] };
  }
  if (ip.includes(":")) {
    const groups = ipv6Groups(ip).slice(0, 4);
    const shown = groups.map((g) => g.toString(16));
    while (shown.length > 1 && shown.at(-1) === "0") shown.pop(); // fd00:20:8:0::/64 is fd00:20:8::/64
    const label = `${shown.join(":")}::/64`;
    return { key: label, label, order: [1, ...groups] };
  }
  return { key: "other", label: "other", order: [2] };
}

/** Sort key for addresses: IPv4 numerically, then IPv6 by groups. */
export function addressOrder(ip) {
  const v4 = ipv4(ip);
  return v4 !== null ? [0, v4] : [1, ...ipv6Groups(ip)];
}

export function compareOrder(a, b) {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const x = a[i] ?? -1;
    const y = b[i] ?? -1;
    if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}

/** The data of one moment, indexed. Built anew whenever the API's answer changes. */
export class Plant {
  constructor(devices, connections, alerts) {
    this.devices = devices || [];
    this.connections = connections || [];
    this.alerts = alerts; // null: the sensor has no alerts endpoint
    this.device = new Map(this.devices.map((d) => [d.id, d]));
    this.connection = new Map(this.connections.map((c) => [c.id, c]));
    this.byDevice = new Map(); // device id -> its connections (either side)
    for (const c of this.connections) {
      for (const id of [c.firstDeviceId, c.secondDeviceId]) {
        if (!this.byDevice.has(id)) this.byDevice.set(id, []);
        this.byDevice.get(id).push(c);
      }
    }
    // connections with programming or run-state commands, and the devices that sent them: engineering stations
    this.operational = new Set();
    this.programmers = new Set();
    for (const c of this.connections) {
      if (c.protocols.some((p) => p.commands.some((cmd) => OPERATIONAL_COMMANDS.has(cmd)))) {
        this.operational.add(c.id);
        this.programmers.add(c.firstDeviceId);
      }
    }
    this.alerted = new Map(); // device id -> its unhandled alerts
    for (const alert of this.alerts || []) {
      if (alert.handled) continue;
      for (const id of [alert.sourceDevice, alert.destinationDevice]) {
        if (id === null || id === undefined) continue;
        if (!this.alerted.has(id)) this.alerted.set(id, []);
        this.alerted.get(id).push(alert);
      }
    }
    this.protocols = [...new Set(this.connections.flatMap((c) => c.protocols.map((p) => p.name)))].sort();
    const commands = new Map(); // protocol -> sorted commands
    for (const c of this.connections) {
      for (const p of c.protocols) {
        if (!commands.has(p.name)) commands.set(p.name, new Set());
        for (const cmd of p.commands) commands.get(p.name).add(cmd);
      }
    }
    this.commands = new Map([...commands].sort().map(([name, set]) => [name, [...set].sort()]));
  }

  /** PLC, engineering station, HMI or other: the API's `type`, and `engineeringStation` (or its definition). */
  kind(device) {
    if (device.type === "PLC") return "plc";
    if (device.engineeringStation === true) return "eng";
    if (device.engineeringStation === undefined && this.programmers.has(device.id)) return "eng";
    if (device.type === "HMI") return "hmi";
    return "other";
  }

  level(device) {
    const kind = this.kind(device);
    return LEVELS.find((level) => level.kind.includes(kind));
  }

  isOperational(connection) {
    return this.operational.has(connection.id);
  }
}

/** The filters of the side bar, as values. `now` is fixed per evaluation so a whole redraw agrees. */
export class Filters {
  constructor({ text = "", protocol = "", command = "", activeMinutes = null, newSince = null, onlyNew = false } = {}) {
    Object.assign(this, { text: text.trim().toLowerCase(), protocol, command, activeMinutes, newSince, onlyNew });
  }

  get selectsConnections() {
    return Boolean(this.protocol || this.command);
  }

  get any() {
    return Boolean(this.text || this.protocol || this.command || this.activeMinutes || (this.onlyNew && this.newSince));
  }

  textMatches(device) {
    if (!this.text) return true;
    const fw = firmwareOf(device);
    const fields = [...(device.ipAddresses || []), ...(device.macAddresses || []), device.name, device.vendor, fw.model];
    return fields.some((field) => field && String(field).toLowerCase().includes(this.text));
  }

  /**
   * The connections and devices the filters leave:
   * - a connection is kept when one of its protocols matches protocol and command, it was active in
   *   the window, it is new (with "only new"), and (with a search) one of its ends matches the search;
   * - a device is kept when it is an end of a kept connection or — unless a protocol or command is
   *   chosen, which is about connections — it matches the search and the time filters on its own.
   */
  apply(plant, now = Date.now()) {
    const cutoff = this.activeMinutes ? now - this.activeMinutes * 60000 : null;
    const onlyNew = this.onlyNew && this.newSince !== null;
    const textOk = new Map();
    const matches = (id) => {
      if (!textOk.has(id)) textOk.set(id, plant.device.has(id) && this.textMatches(plant.device.get(id)));
      return textOk.get(id);
    };
    const connections = [];
    const devices = new Set();
    for (const c of plant.connections) {
      if (this.selectsConnections) {
        const hit = c.protocols.some(
          (p) => (!this.protocol || p.name === this.protocol) && (!this.command || p.commands.includes(this.command)),
        );
        if (!hit) continue;
      }
      if (cutoff !== null && c.lastSeen < cutoff) continue;
      if (onlyNew && !(c.discovered > this.newSince)) continue;
      if (this.text && !matches(c.firstDeviceId) && !matches(c.secondDeviceId)) continue;
      connections.push(c);
      devices.add(c.firstDeviceId);
      devices.add(c.secondDeviceId);
    }
    if (!this.selectsConnections) {
      for (const d of plant.devices) {
        if (devices.has(d.id)) continue;
        if (cutoff !== null && d.lastSeen < cutoff) continue;
        if (onlyNew && !(d.firstSeen > this.newSince)) continue;
        if (this.text && !matches(d.id)) continue;
        devices.add(d.id);
      }
    }
    return { connections, devices, textMatch: this.text ? matches : null };
  }

  isNew(ms) {
    return this.newSince !== null && ms > this.newSince;
  }
}
