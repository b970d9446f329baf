// Charts as SVG built node by node: stacked bars per day, and a sparkline. No library.

import { s } from "./dom.js";

export const COLORS = [
  "#0f766e", "#2563eb", "#d97706", "#db2777", "#7c3aed", "#65a30d", "#dc2626", "#0891b2",
  "#a16207", "#4b5563",
];

/** 0, and up to ~5 round steps covering max. */
function ticks(max) {
  if (!(max > 0)) return [0, 1];
  const rough = max / 4;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * power).find((v) => v >= rough);
  const out = [];
  for (let v = 0; v < max + step; v += step) out.push(v);
  return out;
}

function short(v, format) {
  if (format) return format(v);
  if (v >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (v >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  return `${+v.toFixed(2)}`;
}

/**
 * Stacked bars: days = [{label, title, values: [n per series]}], series = [{name, color}].
 * Each segment has a <title> (its series, day and value) for a hover tooltip.
 */
export function stackedBars(days, series, { format, width = 720, height = 240 } = {}) {
  const pad = { left: 52, right: 8, top: 10, bottom: 28 };
  const totals = days.map((d) => d.values.reduce((a, b) => a + b, 0));
  const steps = ticks(Math.max(0, ...totals));
  const top = steps[steps.length - 1];
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const y = (v) => pad.top + plotH - (v / top) * plotH;
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
    "aria-label": "stacked bar chart per day",
  });
  for (const v of steps) {
    svg.append(
      s("line", { x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v), class: "gridline" }),
      s("text", { x: pad.left - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" },
        short(v, format)),
    );
  }
  const slot = plotW / Math.max(days.length, 1);
  const barW = Math.max(2, Math.min(48, slot * 0.6));
  const every = Math.ceil(days.length / Math.max(2, Math.floor(plotW / 70))); // labels fit
  days.forEach((day, i) => {
    const x = pad.left + i * slot + (slot - barW) / 2;
    let base = 0;
    day.values.forEach((v, k) => {
      if (!(v > 0)) return;
      const rect = s("rect", {
        x, width: barW, y: y(base + v), height: Math.max(0.5, y(base) - y(base + v)),
        fill: series[k].color, class: "bar", "data-series": series[k].name,
      });
      rect.append(s("title", null, `${series[k].name} · ${day.title}: ${short(v, format)}`));
      svg.append(rect);
      base += v;
    });
    if (i % every === 0) {
      svg.append(s("text", { x: x + barW / 2, y: height - 8, class: "axis",
        "text-anchor": "middle" }, day.label));
    }
  });
  return svg;
}

/** A small line of points [{t, v}] (its own scale), for the server cards. */
export function sparkline(points, { width = 240, height = 48 } = {}) {
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "spark", role: "img",
    "aria-label": "tokens per second over time", preserveAspectRatio: "none" });
  if (points.length < 2) {
    svg.append(s("line", { x1: 0, x2: width, y1: height - 1, y2: height - 1, class: "spark-empty" }));
    return svg;
  }
  const t0 = points[0].t;
  const t1 = points[points.length - 1].t || t0 + 1;
  const max = Math.max(...points.map((p) => p.v), 1e-9);
  const xy = points.map((p) => [
    ((p.t - t0) / Math.max(t1 - t0, 1e-9)) * width,
    height - 2 - (p.v / max) * (height - 4),
  ]);
  const line = xy.map(([x, yy], i) => `${i ? "L" : "M"}${x.toFixed(1)},${yy.toFixed(1)}`).join("");
  svg.append(
    s("path", { d: `${line}L${width},${height}L0,${height}Z`, class: "spark-area" }),
    s("path", { d: line, class: "spark-line" }),
  );
  return svg;
}
