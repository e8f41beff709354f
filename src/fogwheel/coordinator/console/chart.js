// Line charts drawn as SVG by hand: a few polylines with their axes, no library.
//
// A chart takes series of [time (epoch s), value] points and draws them on one time axis,
// scaled to the largest value; labels are text nodes (dom.js), never markup.

import { h, s, short, when } from "./dom.js";

const H = 170;
const PAD = { left: 56, right: 8, top: 10, bottom: 22 };

function niceMax(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/**
 * A chart element: `series` is [{name, points: [[t, v], …]}]. Options: `format` turns a
 * value into its label, `wide` draws for a whole card's width (else a grid cell's), `days`
 * labels the time axis with dates. With no points at all it says so instead of drawing.
 */
export function lineChart(title, series, { format = short, id, wide = false, days = false } = {}) {
  const W = wide ? 1200 : 480;
  const all = series.flatMap((x) => x.points);
  const box = h("figure", { class: "chart", id });
  box.append(h("figcaption", {}, title));
  if (all.length === 0) {
    box.append(h("p", { class: "empty" }, "no samples yet"));
    return box;
  }
  const t0 = Math.min(...all.map((p) => p[0]));
  const t1 = Math.max(...all.map((p) => p[0]), t0 + 1);
  const top = niceMax(Math.max(...all.map((p) => p[1])));
  const x = (t) => PAD.left + ((t - t0) / (t1 - t0)) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  const label = (t) => (days ? when(t).slice(0, 10) : when(t).slice(11, 19));
  for (const frac of [0, 0.5, 1]) {
    const v = top * frac;
    svg.append(
      s("line", { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: "grid" }),
      s("text", { x: PAD.left - 4, y: y(v) + 4, class: "axis", "text-anchor": "end" }, format(v)),
    );
  }
  svg.append(
    s("text", { x: PAD.left, y: H - 6, class: "axis" }, label(t0)),
    s("text", { x: W - PAD.right, y: H - 6, class: "axis", "text-anchor": "end" }, label(t1)),
  );
  series.forEach((ser, i) => {
    if (ser.points.length === 0) return;
    const pts = ser.points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    svg.append(s("polyline", { points: pts, class: `line line-${i}` }));
    if (ser.points.length === 1) {
      const [t, v] = ser.points[0];
      svg.append(s("circle", { cx: x(t), cy: y(v), r: 3, class: `dot line-${i}` }));
    }
  });
  box.append(svg);
  if (series.length > 1) {
    box.append(
      h(
        "p",
        { class: "legend" },
        series.map((ser, i) => h("span", { class: `key line-${i}` }, ser.name)),
      ),
    );
  }
  return box;
}

/** Rates between successive samples of a counter: [[t, per-second], …]. */
export function rates(samples, field, scale = 1) {
  const out = [];
  for (let i = 1; i < samples.length; i += 1) {
    const dt = samples[i].at - samples[i - 1].at;
    if (dt > 0) out.push([samples[i].at, Math.max(0, (samples[i][field] - samples[i - 1][field]) / dt) * scale]);
  }
  return out;
}

/** [[t, value], …] of one field of the samples. */
export function points(samples, field, scale = 1) {
  return samples.map((x) => [x.at, x[field] * scale]);
}
