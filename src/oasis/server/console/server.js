// Server (admin): a card per model with its state, slots, queue, speed and cache use,
// refreshed every 5 seconds while the page is shown (and the tab visible).

import { api } from "./api.js";
import { h, clear, errorBox, num } from "./dom.js";
import { sparkline } from "./chart.js";

const EVERY_MS = 5000;

export function mount(root) {
  const uptime = h("span.muted", { id: "uptime" });
  const status = h("div.form-status");
  const cards = h("div.cards", { id: "models" });
  root.append(h("section.page", null,
    h("div.page-head", null, h("h1", null, "Server"), uptime), status, cards));

  let timer = null;
  let stopped = false;

  async function refresh() {
    if (stopped) return;
    if (!document.hidden) {
      try {
        const data = await api("/console/api/server");
        if (stopped) return;
        clear(status);
        uptime.textContent = `up ${since(data.uptime_s)} · rates over the last ${since(data.window_s)}`;
        clear(cards).append(...data.models.map(card));
        if (!data.models.length) cards.append(h("p.muted", null, "No models."));
      } catch (e) {
        clear(status).append(errorBox(e.message));
      }
    }
    if (!stopped) timer = setTimeout(refresh, EVERY_MS);
  }
  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function since(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.round(seconds);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} days`;
}

function pct(v) {
  return v === null || v === undefined ? "—" : `${(v * 100).toFixed(v < 0.1 && v > 0 ? 1 : 0)}%`;
}

function fixed(v, digits = 1) {
  return v === null || v === undefined ? "—" : v.toFixed(digits);
}

function card(m) {
  const stat = (name, value, id) => h("div.stat", null,
    h("div.stat-name", null, name), h("div.stat-value", id ? { "data-stat": id } : null, value));
  const busy = m.slots ? `${num(m.slots_busy)} / ${num(m.slots)}` : "—";
  const kv = m.kv_used === null || m.kv_used === undefined ? "—"
    : m.kv_used <= 1 ? pct(m.kv_used) : num(m.kv_used);
  const el = h("div.card.model", { "data-model": m.id },
    h("div.model-head", null, h("h2", null, m.id),
      h("span.kind", null, m.kind || ""),
      h(`span.status.${stateClass(m.state)}`, null, m.state || "unknown")),
    h("div.stats-grid", null,
      stat("Slots busy", busy, "slots"),
      stat("Queue", num(m.queue), "queue"),
      stat("Tokens/s", fixed(m.tokens_per_s), "tokens_per_s"),
      stat("Prompt tokens/s", fixed(m.prompt_tokens_per_s), "prompt_tokens_per_s"),
      stat("Requests/min", fixed(m.requests_per_min), "requests_per_min"),
      stat("Prefix-cache hits", pct(m.prefix_cache_hit_rate), "prefix_cache_hit_rate"),
      stat("KV used", kv, "kv_used")),
    h("div.spark-wrap", null, h("div.stat-name", null, "Tokens/s, recent"),
      sparkline((m.series || []).map((p) => ({ t: p.t, v: p.tokens_per_s || 0 })))));
  if (m.replicas && m.replicas.length) {
    el.append(h("div.table-wrap", null, h("table.data.replicas", null,
      h("thead", null, h("tr", null, ["Replica", "State", "In flight", "Errors", "Latency"]
        .map((t) => h("th", null, t)))),
      h("tbody", null, m.replicas.map((r) => h("tr", null,
        h("td", null, r.url || r.name || r.id || "—"),
        h("td", null, r.state ?? (r.healthy === false ? "down" : "up")),
        h("td.num", null, num(r.in_flight ?? r.inflight)),
        h("td.num", null, r.error_rate === undefined ? "—" : pct(r.error_rate)),
        h("td.num", null, r.latency_ms === undefined ? "—" : `${Math.round(r.latency_ms)} ms`)))))));
  }
  return el;
}

function stateClass(state) {
  if (["loaded", "ready", "ok", "up", "healthy", "serving"].includes(state)) return "active";
  if (["loading", "draining", "degraded", "idle", "unloaded"].includes(state)) return "warn";
  return "error";
}
