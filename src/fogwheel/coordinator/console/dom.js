// Building the page from data without ever parsing data as HTML.
//
// Every name on the page (a device's, a job's, a customer's) was chosen by someone the
// coordinator does not trust. `h` makes elements with createElement and puts every string
// in as a text node, so a name like <img onerror=…> shows as those characters and runs
// nothing. No module of the console assigns innerHTML; the page's Content-Security-Policy
// (coordinator/console_pages.py) refuses inline script as a second wall.

const SVG = "http://www.w3.org/2000/svg";

function fill(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** An HTML element: h("td", {class: "num"}, "text", child, …). */
export function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

/** An SVG element, the same way. */
export function s(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG, tag), attrs, children);
}

/** A table: columns are [heading, cell(row) -> text or node, class?]. */
export function table(columns, rows, opts = {}) {
  const head = h("tr", {}, columns.map(([title, , cls]) => h("th", { class: cls }, title)));
  const body = rows.map((row) =>
    h(
      "tr",
      opts.rowAttrs ? opts.rowAttrs(row) : {},
      columns.map(([, cell, cls]) => h("td", { class: cls }, cell(row))),
    ),
  );
  const empty = rows.length
    ? []
    : [h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, opts.empty || "none"))];
  return h("table", { id: opts.id, class: opts.class }, h("thead", {}, head), h("tbody", {}, body, empty));
}

export function card(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

/** Figures in a row: [[label, value], …]. */
export function figures(pairs, id) {
  return h(
    "dl",
    { class: "figures", id },
    pairs.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v))),
  );
}

const MICRO = 1e6;

export function credits(micro) {
  if (micro === null || micro === undefined) return "–";
  const c = micro / MICRO;
  return `${c.toLocaleString("en", { maximumFractionDigits: 6 })} cr`;
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB", "PB"];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1000 && i < units.length - 1) {
    v /= 1000;
    i += 1;
  }
  return `${v.toLocaleString("en", { maximumFractionDigits: i ? 1 : 0 })} ${units[i]}`;
}

export function duration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "–";
  const a = Math.abs(s);
  if (a < 60) return `${Math.round(a)} s`;
  if (a < 3600) return `${Math.round(a / 60)} min`;
  if (a < 86400) return `${(a / 3600).toFixed(1)} h`;
  return `${(a / 86400).toFixed(1)} d`;
}

export function ago(t) {
  if (!t) return "–";
  return `${duration(Date.now() / 1000 - t)} ago`;
}

export function when(t) {
  if (!t) return "–";
  return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z";
}

/** A number in few characters: 0, 12, 3.5, 0.0012, 12k, 3.4M. */
export function short(v) {
  if (!Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 1e6) return `${(v / 1e6).toPrecision(3)}M`;
  if (a >= 1e4) return `${(v / 1e3).toPrecision(3)}k`;
  if (a >= 1) return String(Math.round(v * 100) / 100);
  return v.toPrecision(2);
}

export function pct(x) {
  if (x === null || x === undefined) return "–";
  return `${(100 * x).toFixed(1)} %`;
}

/** A progress bar with its text beside it. */
export function bar(done, total, text) {
  const share = total ? Math.min(1, done / total) : 0;
  return h(
    "span",
    { class: "bar" },
    h("meter", { min: 0, max: 1, value: share.toFixed(4) }),
    h("span", { class: "progress-text" }, text ?? `${done} / ${total}`),
  );
}
