// Sortable, filterable tables with CSV export: devices, connections, alerts. Rows are plain objects;
// columns say how to read, sort and print each cell. Long lists are shown a page at a time.

import { download, h, stamp } from "./dom.js";

const PAGE = 250;

function csvCell(value) {
  let text = value === null || value === undefined ? "" : String(value);
  // a cell that a spreadsheet would run as a formula (names come from the network) is kept as text
  if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return /[",\n\r]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

export function toCsv(columns, rows) {
  const lines = [columns.map((c) => csvCell(c.label)).join(",")];
  for (const row of rows) lines.push(columns.map((c) => csvCell(c.text(row))).join(","));
  return `${lines.join("\r\n")}\r\n`;
}

export class DataTable {
  /**
   * columns: [{key, label, text(row) -> string, sort?(row) -> number|string, num?}]
   * options: {name, rowKey(row), onRow(row), rowClass(row), empty}
   */
  constructor(container, columns, options) {
    this.columns = columns;
    this.options = options;
    this.rows = [];
    this.shownRows = [];
    this.sortKey = null;
    this.sortDir = 1;
    this.page = 0;
    this.query = "";
    this.note = h("span", { class: "note" });
    this.search = h("input", {
      type: "search",
      placeholder: `filter ${options.name}…`,
      "aria-label": `filter ${options.name}`,
      oninput: () => {
        this.query = this.search.value.trim().toLowerCase();
        this.page = 0;
        this.shownRows = null;
        this.render();
      },
    });
    this.csv = h("button", { type: "button", onclick: () => this.exportCsv() }, "Export CSV");
    this.visible = false;
    this.table = h("table", { class: "data", "data-table": options.name });
    this.pager = h("div", { class: "pager" });
    container.replaceChildren(
      h("div", { class: "table-tools" }, this.search, this.csv, this.note),
      h("div", { class: "table-wrap" }, this.table, this.pager),
    );
  }

  setRows(rows, message = null) {
    this.rows = rows;
    this.message = message;
    this.shownRows = null; // worked out when asked for, or when the table is on show
    if (this.visible) this.render();
  }

  /** The tab shows or hides the table: a hidden table is not rendered (a big plant's 100,000 rows). */
  setVisible(visible) {
    this.visible = visible;
    if (visible) this.render();
  }

  /** The rows the table shows, in its order (all pages). */
  rowsShown() {
    if (this.shownRows === null) this.shownRows = this._filtered();
    return this.shownRows;
  }

  sortBy(key) {
    this.sortDir = this.sortKey === key ? -this.sortDir : 1;
    this.sortKey = key;
    this.shownRows = null;
    this.render();
  }

  _filtered() {
    let rows = this.rows;
    if (this.query) {
      rows = rows.filter((row) => this.columns.some((c) => String(c.text(row) ?? "").toLowerCase().includes(this.query)));
    }
    if (this.sortKey) {
      const column = this.columns.find((c) => c.key === this.sortKey);
      const value = column.sort || column.text;
      const dir = this.sortDir;
      rows = rows
        .map((row) => [value(row), row])
        .sort(([a], [b]) => {
          if (a === b) return 0;
          if (a === null || a === undefined || a === "") return 1; // blanks last either way
          if (b === null || b === undefined || b === "") return -1;
          if (Array.isArray(a)) {
            for (let i = 0; i < Math.max(a.length, b.length); i++) {
              if (a[i] !== b[i]) return ((a[i] ?? -1) < (b[i] ?? -1) ? -1 : 1) * dir;
            }
            return 0;
          }
          return (a < b ? -1 : 1) * dir;
        })
        .map(([, row]) => row);
    }
    return rows;
  }

  render() {
    const rows = this.rowsShown();
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    this.page = Math.min(this.page, pages - 1);
    const head = h(
      "tr",
      {},
      this.columns.map((c) =>
        h(
          "th",
          {
            scope: "col",
            "data-key": c.key,
            "aria-sort": this.sortKey === c.key ? (this.sortDir > 0 ? "ascending" : "descending") : null,
            onclick: () => this.sortBy(c.key),
          },
          c.label,
        ),
      ),
    );
    const body = rows.slice(this.page * PAGE, (this.page + 1) * PAGE).map((row) =>
      h(
        "tr",
        {
          "data-key": this.options.rowKey(row),
          class: this.options.rowClass?.(row) || null,
          onclick: () => this.options.onRow?.(row),
        },
        this.columns.map((c) => h("td", { class: c.num ? "num" : null }, c.text(row) ?? "")),
      ),
    );
    this.table.replaceChildren(h("thead", {}, head), h("tbody", {}, body));
    const total = this.rows.length;
    this.note.textContent = this.message || (rows.length === total ? `${total} rows` : `${rows.length} of ${total} rows`);
    this.pager.replaceChildren(
      ...(pages > 1
        ? [
            h("button", { type: "button", disabled: this.page === 0, onclick: () => this._go(-1) }, "‹ previous"),
            `page ${this.page + 1} of ${pages}`,
            h("button", { type: "button", disabled: this.page >= pages - 1, onclick: () => this._go(1) }, "next ›"),
          ]
        : []),
    );
    if (!rows.length) this.pager.replaceChildren(h("p", { class: "empty" }, this.message || this.options.empty || "nothing to show"));
  }

  _go(step) {
    this.page += step;
    this.render();
  }

  exportCsv() {
    const blob = new Blob([toCsv(this.columns, this.rowsShown())], { type: "text/csv;charset=utf-8" });
    download(blob, `otsensor-${this.options.name}-${stamp()}.csv`);
  }
}
