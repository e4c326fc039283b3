// The map: cytoscape.js over the Plant. Devices are nodes in groups (subnets, or levels); a group is a
// box of its devices when expanded and a single node when collapsed; edges are connections, or, where
// one end is a collapsed group, one edge per pair of ends standing for all connections between them.
//
// Positions are computed here (a grid per group, groups packed in rows), never by a force layout, and
// kept per node: a poll that brings new data adds and removes elements in place, so nothing jumps.

import { KINDS, LEVELS, address, addressOrder, compareOrder, subnetOf } from "./model.js";

const SLOT_W = 150; // a device's cell in its group's grid: wide enough for an IPv4 address and a vendor
const SLOT_H = 92;
const GROUP_W = 210; // a collapsed group's node: its three lines readable when 40 groups fill the window
const GROUP_H = 78;
const GAP = 70; // between groups
const BAND_GAP = 110; // between level bands
export const EXPAND_LIMIT = 300; // a plant with more devices starts with its groups collapsed
const SPLIT_LIMIT = 300; // a level band with more devices is split into subnet groups
export const OPEN_ALL_LIMIT = 2000; // "Expand all" opens at most this many devices' groups

const STYLE = [
  {
    selector: "node.device",
    style: {
      width: 30,
      height: 30,
      label: "data(label)",
      "font-size": 11,
      "text-valign": "bottom",
      "text-halign": "center",
      "text-margin-y": 4,
      "text-wrap": "wrap",
      "text-max-width": 140,
      "min-zoomed-font-size": 6,
      color: "#1d2630",
      "border-width": 1,
      "border-color": "#ffffff",
    },
  },
  { selector: "node.plc", style: { shape: "round-rectangle", "background-color": "#1f6fb2" } },
  { selector: "node.eng", style: { shape: "diamond", "background-color": "#d9822b", width: 34, height: 34 } },
  { selector: "node.hmi", style: { shape: "rectangle", "background-color": "#2f9e6e", height: 24 } },
  { selector: "node.other", style: { shape: "ellipse", "background-color": "#8a96a3", width: 24, height: 24 } },
  {
    selector: "node.group",
    style: {
      label: "data(label)",
      "font-size": 13,
      "font-weight": 600,
      color: "#33414f",
      "background-color": "#eef2f6",
      "background-opacity": 0.75,
      "border-width": 1,
      "border-style": "dashed",
      "border-color": "#8795a3",
      "text-valign": "top",
      "text-halign": "center",
      "text-margin-y": -4,
      "min-zoomed-font-size": 5,
      padding: 14,
      shape: "round-rectangle",
    },
  },
  {
    selector: "node.group.collapsed",
    style: {
      width: GROUP_W,
      height: GROUP_H,
      "text-valign": "center",
      "text-margin-y": 0,
      "text-wrap": "wrap",
      "text-max-width": GROUP_W - 12,
      "font-size": 15,
      "background-color": "#dde5ed",
      "background-opacity": 1,
      "border-style": "solid",
      "border-width": 2,
      "border-color": "#6f7f8f",
    },
  },
  {
    selector: "node.band",
    style: {
      label: "data(label)",
      "font-size": 16,
      "font-weight": 700,
      color: "#5d6b78",
      "text-valign": "top",
      "text-halign": "center",
      "background-color": "#f4f6f8",
      "background-opacity": 0.6,
      "border-width": 0,
      padding: 24,
      shape: "rectangle",
    },
  },
  { selector: "node.new", style: { "underlay-color": "#7b1fa2", "underlay-padding": 6, "underlay-opacity": 0.35 } },
  { selector: "node.match", style: { "text-background-color": "#ffe082", "text-background-opacity": 1, "text-background-padding": 2 } },
  { selector: "node.alert", style: { "border-width": 4, "border-color": "#e53935", "border-style": "solid" } },
  { selector: "node.group.alert", style: { "border-width": 3, "border-color": "#e53935", "border-style": "solid" } },
  {
    selector: "edge",
    style: {
      width: "data(width)",
      "line-color": "#8ea2b5",
      "curve-style": "bezier",
      label: "data(label)",
      "font-size": 9,
      color: "#44525f",
      "text-rotation": "autorotate",
      "text-background-color": "#fbfcfd",
      "text-background-opacity": 0.85,
      "text-background-padding": 1,
      "min-zoomed-font-size": 7,
    },
  },
  {
    selector: "edge.connection",
    style: { "target-arrow-shape": "triangle", "target-arrow-color": "#8ea2b5", "arrow-scale": 0.8 },
  },
  { selector: "edge.aggregate", style: { "curve-style": "straight", "line-color": "#a7b5c2" } },
  { selector: "edge.op", style: { "line-color": "#c62828", "target-arrow-color": "#c62828", color: "#c62828" } },
  { selector: "edge.new", style: { "line-color": "#7b1fa2", "target-arrow-color": "#7b1fa2" } },
  { selector: "edge.op.new", style: { "line-color": "#c62828", "line-style": "dashed" } },
  { selector: "node:selected", style: { "overlay-color": "#1f6fb2", "overlay-opacity": 0.25, "overlay-padding": 6 } },
  { selector: "edge:selected", style: { "line-color": "#1f6fb2", "target-arrow-color": "#1f6fb2", width: 4 } },
];

function groupLabel(group, shown) {
  const kinds = {};
  for (const id of shown) kinds[group.kindOf.get(id)] = (kinds[group.kindOf.get(id)] || 0) + 1;
  const summary = Object.keys(KINDS)
    .filter((k) => kinds[k])
    .map((k) => `${kinds[k]} ${k === "eng" ? "eng." : KINDS[k]}`)
    .join(" · ");
  const count = shown.length === 1 ? "1 device" : `${shown.length} devices`;
  return `${group.label}\n${count}${summary ? `\n${summary}` : ""}`;
}

function deviceLabel(device, kind) {
  const first = device.name ? `${device.name} (${address(device)})` : address(device);
  const second = [kind === "other" ? "" : KINDS[kind], device.vendor || ""].filter(Boolean).join(" · ");
  return second ? `${first}\n${second}` : first;
}

function connectionLabel(connection) {
  if (connection.protocols.length) return connection.protocols.map((p) => p.name).join(", ");
  return connection.ports.map((port) => `:${port}`).join(" ");
}

export class NetworkMap {
  constructor(container, handlers = {}) {
    this.handlers = handlers;
    this.mode = "subnet";
    this.prefix = 24;
    this.expanded = new Map(); // group key -> true/false, kept across polls; reset when the grouping changes
    this.positions = new Map(); // leaf node id -> {x, y}
    this.plant = null;
    this.view = null; // the last filter result
    this.drawn = false;
    this.firstDrawnAt = null;
    this._openedAt = -Infinity;
    this.cy = window.cytoscape({
      container,
      style: STYLE,
      minZoom: 0.02,
      maxZoom: 4,
      boxSelectionEnabled: false,
      selectionType: "single",
      autoungrabify: false,
    });
    this.cy.on("tap", "node.device", (event) => handlers.onDevice?.(Number(event.target.data("deviceId"))));
    this.cy.on("tap", "edge.connection", (event) => handlers.onConnection?.(event.target.data("connectionId")));
    this.cy.on("tap", "edge.aggregate", (event) => handlers.onAggregate?.(event.target.data("connectionIds")));
    this.cy.on("tap", "node.group.collapsed", (event) => this.toggle(event.target.data("key"), true));
    this.cy.on("dbltap", "node.group.expanded", (event) => {
      // the second click of a double-click on a closed group lands on it opened: that is no request to close
      if (performance.now() - this._openedAt > 700) this.toggle(event.target.data("key"), false);
    });
    // cytoscape caches where its container is on the page (for hit tests) and how big it is: tell it
    // whenever the page's layout changes the container (a panel opening, the window resized)
    new ResizeObserver(() => this.cy.resize()).observe(container);
    this.cy.on("dragfree", "node", (event) => {
      // a node the user moved stays where it was put, through polls
      event.target.descendants().add(event.target).forEach((node) => {
        if (node.isChildless()) this.positions.set(node.id(), { ...node.position() });
      });
    });
  }

  /** Group by "subnet" or "level"; prefix is the IPv4 subnet length. Rearranges the map. */
  setGrouping(mode, prefix) {
    this.mode = mode;
    this.prefix = prefix;
    this.expanded.clear();
    this.positions.clear();
    this._grouped = null;
    this.draw({ arrange: true, fit: true });
  }

  toggle(key, open) {
    if (open) this._openedAt = performance.now();
    this.cy.elements().unselect();
    this.expanded.set(key, open);
    this.draw({ arrange: true, focus: key });
  }

  /**
   * Open or close every group. Opening is refused (false) when more than OPEN_ALL_LIMIT devices are
   * shown: drawing 10,000 devices and 100,000 edges at once takes minutes in a browser; filter first.
   */
  setAll(open) {
    if (open && this.view && this.view.devices.size > OPEN_ALL_LIMIT) return false;
    for (const key of this.groups.keys()) this.expanded.set(key, open);
    this.draw({ arrange: true, fit: true });
    return true;
  }

  /** New data (from a poll) or new filters: redraw in place. */
  update(plant, view, filters) {
    const first = !this.drawn;
    const grew = this.plant && plant.devices.some((d) => !this.plant.device.has(d.id));
    this.plant = plant;
    this.view = view;
    this.filters = filters;
    this.draw({ arrange: first, fit: first, place: grew });
  }

  // -- grouping and arrangement --------------------------------------------------------------

  _group(device) {
    const ip = address(device);
    const subnet = subnetOf(ip, this.prefix);
    if (this.mode === "subnet") return { key: `s:${subnet.key}`, label: subnet.label, band: null, order: subnet.order };
    const level = this.plant.level(device);
    if (this.levelSizes.get(level.key) <= SPLIT_LIMIT) {
      return { key: level.key, label: level.label, band: null, order: [LEVELS.indexOf(level)] };
    }
    return { key: `${level.key}|${subnet.key}`, label: subnet.label, band: level, order: subnet.order };
  }

  _buildGroups() {
    const plant = this.plant;
    this.levelSizes = new Map(LEVELS.map((level) => [level.key, 0]));
    if (this.mode === "level") {
      for (const d of plant.devices) {
        const key = plant.level(d).key;
        this.levelSizes.set(key, this.levelSizes.get(key) + 1);
      }
    }
    const groups = new Map();
    this.groupOf = new Map(); // device id -> group key
    for (const d of plant.devices) {
      const g = this._group(d);
      if (!groups.has(g.key)) groups.set(g.key, { ...g, index: groups.size, members: [], kindOf: new Map() });
      const group = groups.get(g.key);
      group.members.push(d);
      group.kindOf.set(d.id, plant.kind(d));
      this.groupOf.set(d.id, g.key);
    }
    const kindRank = { plc: 0, eng: 1, hmi: 2, other: 3 };
    for (const group of groups.values()) {
      const rank = new Map(group.members.map((d) => [d.id, [kindRank[group.kindOf.get(d.id)], ...addressOrder(address(d)), d.id]]));
      group.members.sort((a, b) => compareOrder(rank.get(a.id), rank.get(b.id)));
      if (!this.expanded.has(group.key)) this.expanded.set(group.key, plant.devices.length <= EXPAND_LIMIT);
    }
    this.groups = groups;
  }

  /** An open group's grid: one block of rows per level, the rest on top and PLCs at the bottom (Purdue). */
  _rows(group) {
    const blocks = LEVELS.map((level) => group.members.filter((d) => level.kind.includes(group.kindOf.get(d.id))));
    const n = group.members.length;
    const widest = Math.max(...blocks.map((b) => b.length));
    const cols = Math.max(1, Math.min(widest, Math.ceil(Math.sqrt(n * 2))));
    const rows = [];
    for (const block of blocks) {
      for (let i = 0; i < block.length; i += cols) rows.push(block.slice(i, i + cols));
    }
    return { rows, cols };
  }

  _size(group) {
    if (!this.expanded.get(group.key)) return { w: GROUP_W, h: GROUP_H, grid: null };
    const grid = this._rows(group);
    return { w: grid.cols * SLOT_W, h: grid.rows.length * SLOT_H + 10, grid };
  }

  /** Every leaf's position: groups packed in rows (shelves), bands stacked top to bottom. */
  _arrange() {
    this.positions.clear();
    const bands =
      this.mode === "level"
        ? LEVELS.map((level) => [...this.groups.values()].filter((g) => g.key.split("|")[0] === level.key))
        : [[...this.groups.values()]];
    const sized = bands.map((band) =>
      band.sort((a, b) => compareOrder(a.order, b.order)).map((group) => ({ group, ...this._size(group) })),
    );
    const area = sized.flat().reduce((sum, s) => sum + (s.w + GAP) * (s.h + GAP), 0);
    const widest = Math.max(...sized.flat().map((s) => s.w));
    // the row width whose packing fits the window at the largest zoom
    const cw = Math.max(1, this.cy.width() || 1200);
    const ch = Math.max(1, this.cy.height() || 800);
    let best = null;
    for (const factor of [0.6, 0.8, 1, 1.25, 1.6, 2, 2.6, 3.4]) {
      const width = Math.max(widest, SLOT_W * 3, Math.sqrt((area * cw) / ch) * factor);
      const packing = this._pack(sized, width);
      const zoom = Math.min(cw / packing.width, ch / packing.height);
      if (!best || zoom > best.zoom) best = { ...packing, zoom };
    }
    for (const [item, left, top] of best.placements) this._place(item, left, top);
  }

  /** Shelf packing: left to right, a new row when the next group would pass `width`; rows centred. */
  _pack(bands, width) {
    const placements = [];
    let top = 0;
    let used = 0;
    for (const band of bands) {
      if (!band.length) continue;
      const rows = [[]];
      let x = 0;
      for (const item of band) {
        if (x > 0 && x + item.w > width) {
          rows.push([]);
          x = 0;
        }
        rows.at(-1).push(item);
        x += item.w + GAP;
      }
      for (const row of rows) {
        const rowWidth = row.reduce((sum, s) => sum + s.w, 0) + GAP * (row.length - 1);
        const rowHeight = Math.max(...row.map((s) => s.h));
        used = Math.max(used, rowWidth);
        let left = (width - rowWidth) / 2;
        for (const item of row) {
          placements.push([item, left, top + 30]);
          left += item.w + GAP;
        }
        top += rowHeight + GAP + 30;
      }
      top += BAND_GAP;
    }
    return { placements, width: used, height: top };
  }

  _place(item, left, top) {
    const group = item.group;
    if (!item.grid) {
      this.positions.set(`g:${group.key}`, { x: left + item.w / 2, y: top + item.h / 2 });
      return;
    }
    item.grid.rows.forEach((row, r) => {
      const indent = ((item.grid.cols - row.length) * SLOT_W) / 2; // a short row is centred
      row.forEach((device, c) => {
        this.positions.set(`d:${device.id}`, { x: left + indent + c * SLOT_W + SLOT_W / 2, y: top + r * SLOT_H + SLOT_H / 2 });
      });
    });
  }

  /** A device that appeared in a poll: the next free cell of a row under its group's placed members. */
  _placeNew(device) {
    const group = this.groups.get(this.groupOf.get(device.id));
    const placed = group.members.filter((d) => d.id !== device.id && this.positions.has(`d:${d.id}`));
    if (!placed.length) return false;
    const at = placed.map((d) => this.positions.get(`d:${d.id}`));
    const left = Math.min(...at.map((p) => p.x));
    const cols = Math.max(1, Math.round((Math.max(...at.map((p) => p.x)) - left) / SLOT_W) + 1);
    const bottom = Math.max(...at.map((p) => p.y));
    const taken = (x, y) => at.some((p) => Math.abs(p.x - x) < SLOT_W / 2 && Math.abs(p.y - y) < SLOT_H / 2);
    for (let i = 0; ; i++) {
      const x = left + (i % cols) * SLOT_W;
      const y = bottom + (Math.floor(i / cols) + 1) * SLOT_H;
      if (!taken(x, y)) {
        this.positions.set(`d:${device.id}`, { x, y });
        return true;
      }
    }
  }

  // -- drawing ----------------------------------------------------------------------------------

  draw({ arrange = false, fit = false, place = false, focus = null } = {}) {
    if (!this.plant || !this.view) return;
    const plant = this.plant;
    const view = this.view;
    const previousGroups = this.groups;
    const t0 = performance.now();
    const grouping = `${this.mode}/${this.prefix}`;
    if (this._grouped?.plant !== plant || this._grouped?.grouping !== grouping) {
      this._buildGroups();
      this._grouped = { plant, grouping };
    }
    const t1 = performance.now();
    if (arrange || !previousGroups) {
      this._arrange();
    } else if (place) {
      let misplaced = false;
      for (const d of plant.devices) {
        const key = this.groupOf.get(d.id);
        if (this.expanded.get(key) && !this.positions.has(`d:${d.id}`)) misplaced ||= !this._placeNew(d);
        if (!this.expanded.get(key) && !this.positions.has(`g:${key}`)) misplaced = true;
      }
      if (misplaced) this._arrange(); // a new group: room is made for it
    }
    const t2 = performance.now();
    const filters = this.filters;
    const nodes = [];
    const edges = [];
    const shownByGroup = new Map();
    for (const id of view.devices) {
      const key = this.groupOf.get(id);
      if (!key) continue;
      if (!shownByGroup.has(key)) shownByGroup.set(key, []);
      shownByGroup.get(key).push(id);
    }
    const bandsUsed = new Set();
    for (const [key, group] of this.groups) {
      const shown = shownByGroup.get(key);
      if (!shown) continue;
      const open = this.expanded.get(key);
      const alerted = shown.filter((id) => plant.alerted.has(id)).length;
      const classes = ["group", open ? "expanded" : "collapsed"];
      if (alerted) classes.push("alert");
      if (view.textMatch && shown.some((id) => view.textMatch(id))) classes.push("match");
      if (!open && shown.some((id) => filters.isNew(plant.device.get(id).firstSeen))) classes.push("new");
      let label = open ? `${group.label} · ${shown.length}` : groupLabel(group, shown);
      if (alerted) label += open ? ` · ⚠ ${alerted}` : `\n⚠ ${alerted} with alerts`;
      const data = { id: `g:${key}`, key, label };
      if (group.band) {
        data.parent = `b:${group.band.key}`;
        bandsUsed.add(group.band);
      }
      nodes.push({ data, classes: classes.join(" "), position: open ? null : this.positions.get(`g:${key}`) });
      if (!open) continue;
      for (const id of shown) {
        const device = plant.device.get(id);
        const kind = group.kindOf.get(id);
        const cls = ["device", kind];
        if (filters.isNew(device.firstSeen)) cls.push("new");
        if (plant.alerted.has(id)) cls.push("alert");
        if (view.textMatch && view.textMatch(id)) cls.push("match");
        nodes.push({
          data: { id: `d:${id}`, deviceId: id, parent: `g:${key}`, label: deviceLabel(device, kind) },
          classes: cls.join(" "),
          position: this.positions.get(`d:${id}`),
        });
      }
    }
    const bandNodes = [...bandsUsed].map((level) => ({
      data: { id: `b:${level.key}`, label: level.label },
      classes: "band",
    }));
    // edges: a connection whose ends' groups are both open is itself; any other joins the two groups
    // (one edge per pair of groups, standing for all their connections; none inside a closed group)
    const aggregates = new Map();
    for (const c of view.connections) {
      const ga = this.groupOf.get(c.firstDeviceId);
      const gb = this.groupOf.get(c.secondDeviceId);
      const open = this.expanded.get(ga) && this.expanded.get(gb);
      if (!open && ga === gb) continue;
      const op = plant.operational.has(c.id);
      const fresh = filters.isNew(c.discovered);
      if (open) {
        edges.push({
          data: {
            id: `c:${c.id}`,
            connectionId: c.id,
            source: `d:${c.firstDeviceId}`,
            target: `d:${c.secondDeviceId}`,
            label: connectionLabel(c),
            width: 2,
          },
          classes: `connection${op ? " op" : ""}${fresh ? " new" : ""}`,
        });
        continue;
      }
      // keyed by the groups' numbers: no string per connection (100,000 of them on a big plant)
      const ia = this.groups.get(ga).index;
      const ib = this.groups.get(gb).index;
      const pair = ia < ib ? ia * 1048576 + ib : ib * 1048576 + ia;
      let agg = aggregates.get(pair);
      if (agg === undefined) {
        const [s, t] = ia < ib ? [`g:${ga}`, `g:${gb}`] : [`g:${gb}`, `g:${ga}`];
        agg = { s, t, ids: [], protocols: new Set(), op: false, fresh: false };
        aggregates.set(pair, agg);
      }
      agg.ids.push(c.id);
      for (const p of c.protocols) agg.protocols.add(p.name);
      agg.op ||= op;
      agg.fresh ||= fresh;
    }
    // many group-to-group edges: labels would cover the map; a click on one lists its connections
    const labelled = aggregates.size <= 80;
    for (const agg of aggregates.values()) {
      const id = `a:${agg.s}~${agg.t}`;
      const names = [...agg.protocols].sort();
      const label = !labelled
        ? ""
        : agg.ids.length === 1
          ? connectionLabel(plant.connection.get(agg.ids[0]))
          : `${agg.ids.length} connections${names.length ? `: ${names.slice(0, 3).join(", ")}${names.length > 3 ? "…" : ""}` : ""}`;
      const classes = ["aggregate"];
      if (agg.op) classes.push("op");
      if (agg.fresh) classes.push("new");
      edges.push({
        data: {
          id,
          source: agg.s,
          target: agg.t,
          label,
          connectionIds: agg.ids,
          width: Math.min(10, 1.5 + Math.log2(agg.ids.length)),
        },
        classes: classes.join(" "),
      });
    }
    const t3 = performance.now();
    this._apply([...bandNodes, ...nodes], edges, arrange);
    const t4 = performance.now();
    if (fit) this.fit();
    if (focus) this._center(focus);
    this.timings = {
      group: t1 - t0,
      arrange: t2 - t1,
      elements: t3 - t2,
      apply: t4 - t3,
      view: performance.now() - t4,
      total: performance.now() - t0,
    };
    if (!this.drawn) {
      this.drawn = true;
      this.firstDrawnAt = performance.now();
    }
    this.handlers.onDrawn?.();
  }

  /**
   * The box around the drawn leaves, from the positions this module gave them: cytoscape's own
   * fit() and center() measure every label and edge curve first, which on a big plant takes longer
   * than drawing it.
   */
  _box(ids) {
    let [x1, y1, x2, y2] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const id of ids) {
      const p = this.positions.get(id);
      if (!p) continue;
      const [w, h] = id.startsWith("g:") ? [GROUP_W, GROUP_H] : [SLOT_W, SLOT_H];
      x1 = Math.min(x1, p.x - w / 2);
      x2 = Math.max(x2, p.x + w / 2);
      y1 = Math.min(y1, p.y - h / 2);
      y2 = Math.max(y2, p.y + h / 2);
    }
    return x1 <= x2 ? { x1, y1, x2, y2 } : null;
  }

  _view(box, maxZoom) {
    if (!box) return;
    const pad = 30;
    const w = this.cy.width();
    const h = this.cy.height();
    const zoom = Math.min(maxZoom, (w - 2 * pad) / (box.x2 - box.x1 + 40), (h - 2 * pad) / (box.y2 - box.y1 + 60));
    const z = Math.max(this.cy.minZoom(), Math.min(this.cy.maxZoom(), zoom));
    this.cy.viewport({ zoom: z, pan: { x: w / 2 - ((box.x1 + box.x2) / 2) * z, y: h / 2 - ((box.y1 + box.y2) / 2) * z } });
  }

  /** The whole map in the window. */
  fit() {
    const ids = this.cy.nodes().filter((n) => n.isChildless()).map((n) => n.id());
    this._view(this._box(ids), 1.5);
  }

  /** An opened group in the middle of the window, at a zoom where its devices can be read. */
  _center(key) {
    const group = this.groups.get(key);
    if (!group) return;
    const ids = this.expanded.get(key) ? group.members.map((d) => `d:${d.id}`) : [`g:${key}`];
    this._view(this._box(ids), Math.max(this.cy.zoom(), 0.9));
  }

  _apply(nodes, edges, moved) {
    const cy = this.cy;
    const wanted = new Set([...nodes, ...edges].map((e) => e.data.id));
    const large = this.plant.devices.length > EXPAND_LIMIT || edges.length > 2000;
    cy.startBatch();
    cy.elements()
      .filter((e) => !wanted.has(e.id()))
      .remove();
    const added = [];
    for (const element of [...nodes, ...edges]) {
      const existing = cy.getElementById(element.data.id);
      if (existing.empty()) {
        const copy = { group: element.data.source ? "edges" : "nodes", data: element.data, classes: element.classes };
        if (element.position) copy.position = { ...element.position };
        added.push(copy);
        continue;
      }
      if (existing.isNode() && (existing.data("parent") || null) !== (element.data.parent || null)) {
        existing.move({ parent: element.data.parent || null });
      }
      for (const [name, value] of Object.entries(element.data)) {
        if (name === "id" || name === "source" || name === "target" || name === "parent") continue;
        if (JSON.stringify(existing.data(name)) !== JSON.stringify(value)) existing.data(name, value);
      }
      if (existing.classes().join(" ") !== element.classes) existing.classes(element.classes);
      if (moved && element.position && existing.isChildless()) existing.position({ ...element.position });
    }
    if (added.length) cy.add(added);
    cy.endBatch();
    const renderer = cy.renderer();
    if (renderer) {
      // big plants: while panning or zooming, move a snapshot of the map instead of redrawing every frame
      renderer.textureOnViewport = large;
    }
  }

  // -- read-only views for the page's test hook and exports ---------------------------------------

  drawnDevices() {
    return this.cy
      .nodes(".device")
      .map((n) => Number(n.data("deviceId")))
      .sort((a, b) => a - b);
  }

  drawnConnections() {
    return this.cy
      .edges(".connection")
      .map((e) => e.data("connectionId"))
      .sort();
  }

  markedDevices() {
    return this.cy
      .nodes(".device.alert")
      .map((n) => Number(n.data("deviceId")))
      .sort((a, b) => a - b);
  }

  /** Where a node is in the map's own coordinates (what must not move when data changes). */
  modelPosition(id) {
    const element = this.cy.getElementById(id);
    return element.empty() ? null : { ...element.position() };
  }

  drawnGroups() {
    return this.cy.nodes(".group").map((n) => ({
      key: n.data("key"),
      expanded: n.hasClass("expanded"),
      label: n.data("label"),
    }));
  }

  /** Where an element is on the page (CSS pixels), to click it as a user would; null if not drawn. */
  pagePosition(id) {
    const element = this.cy.getElementById(id);
    if (element.empty()) return null;
    const box = this.cy.container().getBoundingClientRect();
    const at = element.isNode() ? element.renderedPosition() : element.renderedMidpoint();
    return { x: box.left + at.x, y: box.top + at.y };
  }

  png() {
    return this.cy.png({ output: "blob", full: true, bg: "#ffffff", maxWidth: 8000, maxHeight: 8000 });
  }
}
