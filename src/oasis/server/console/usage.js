// Usage: requests, tokens and cost per UTC day stacked by model or key, totals, and the
// request log with filters and "Older" pages. The log's times are in the browser's local time.

import { api, query } from "./api.js";
import { h, clear, field, errorBox, num, usd, when, ms } from "./dom.js";
import { stackedBars, COLORS } from "./chart.js";

const METRICS = {
  requests: { label: "Requests", value: (r) => r.requests, format: null },
  tokens: { label: "Tokens", value: (r) => r.tokens, format: null },
  cost: { label: "Cost", value: (r) => r.cost_usd, format: (v) => usd(v) },
};
const ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"];
const PAGE = 50;
const LOG_SLICES = 10; // log calls per page at most (each reads a bounded slice)

let view = { days: 7, groupBy: "model", metric: "requests" }; // kept across visits

export function forget() {
  view = { days: 7, groupBy: "model", metric: "requests" };
}

export function mount(root, { me }) {
  const select = (id, options, value, onchange) => {
    const el = h("select", { id, onchange: () => onchange(el.value) },
      options.map(([v, label]) => h("option", { value: v }, label)));
    el.value = String(value);
    return el;
  };
  const controls = h("div.controls", null,
    field("Period", select("days", [["7", "7 days"], ["30", "30 days"], ["90", "90 days"]],
      view.days, (v) => { view.days = Number(v); loadUsage(); })),
    field("Group by", select("group-by", [["model", "Model"], ["key", "Key"]], view.groupBy,
      (v) => { view.groupBy = v; loadUsage(); })),
    h("div.field", null, h("span.field-label", null, "Show"), metricSwitch()),
    h("span.grow"),
    h("button", { type: "button", id: "refresh", onclick: () => { loadUsage(); loadLog(); } },
      "Refresh"));
  const totals = h("div.totals", { id: "totals" });
  const chart = h("div.chart-wrap", { id: "chart" });
  const legend = h("div.legend", { id: "legend" });
  const usageStatus = h("div.form-status");

  const filters = {
    key: me.admin ? h("select", { id: "filter-key" }, h("option", { value: "" }, "All keys")) : null,
    model: h("input", { id: "filter-model", placeholder: "any model", list: "model-names" }),
    endpoint: h("select", { id: "filter-endpoint" }, h("option", { value: "" }, "Any endpoint"),
      ENDPOINTS.map((e) => h("option", { value: e }, e))),
    status: h("select", { id: "filter-status" },
      [["", "Any status"], ["ok", "OK"], ["error", "Errors"], ["400", "400"], ["401", "401"],
        ["403", "403"], ["404", "404"], ["429", "429"], ["500", "500"], ["503", "503"]]
        .map(([v, t]) => h("option", { value: v }, t))),
  };
  const modelNames = h("datalist", { id: "model-names" });
  const logBody = h("tbody");
  const older = h("button", { type: "button", id: "older", hidden: true }, "Older");
  const logStatus = h("div.form-status");
  const filterForm = h("form.controls", { id: "log-filters" },
    filters.key ? field("Key", filters.key) : null,
    field("Model", filters.model), field("Endpoint", filters.endpoint),
    field("Status", filters.status), modelNames,
    h("button", { type: "submit" }, "Filter"));
  filterForm.addEventListener("submit", (event) => {
    event.preventDefault();
    loadLog();
  });
  for (const el of [filters.key, filters.endpoint, filters.status]) {
    el?.addEventListener("change", () => loadLog());
  }

  root.append(h("section.page", null,
    h("div.page-head", null, h("h1", null, me.admin ? "Usage" : "Your usage")),
    controls, usageStatus, totals,
    h("div.card", null, h("h2", { id: "chart-title" }), chart, legend),
    h("div.card", null, h("h2", null, "Requests"), filterForm, logStatus,
      h("div.table-wrap", null, h("table.data.log", { id: "log" },
        h("thead", null, h("tr", null, ["Time", "Key", "Model", "Endpoint", "Status", "Prompt",
          "Cached", "Completion", "Cost", "TTFT", "Latency", "Finish"].map((t) =>
          h("th", null, t)))),
        logBody)),
      older)));

  let usage = null;
  let generation = 0; // a newer load wins over an older one still under way
  let logGeneration = 0; // the same for the log
  let drawnWidth = 0;
  // the chart is drawn at its box's width (text stays its size): again when that changes
  const resized = new ResizeObserver(() => {
    if (Math.abs(chart.clientWidth - drawnWidth) > 8) drawChart();
  });
  resized.observe(chart);

  function metricSwitch() {
    const box = h("div.switch", { role: "radiogroup", id: "metric" });
    for (const [name, m] of Object.entries(METRICS)) {
      const b = h("button", { type: "button", value: name, role: "radio",
        "aria-checked": String(view.metric === name),
        onclick: () => {
          view.metric = name;
          for (const other of box.children) {
            other.setAttribute("aria-checked", String(other.value === name));
          }
          drawChart();
        } }, m.label);
      box.append(b);
    }
    return box;
  }

  async function loadUsage() {
    const mine = ++generation;
    clear(usageStatus);
    try {
      const data = await api(`/console/api/usage${query({ days: view.days, group_by: view.groupBy })}`);
      if (mine !== generation) return;
      usage = data;
      drawTotals();
      drawChart();
      if (view.groupBy === "model") {
        clear(modelNames).append(...data.groups.map((g) => h("option", { value: g })));
      }
    } catch (e) {
      if (mine === generation) usageStatus.append(errorBox(e.message));
    }
  }

  function label(group) {
    return (usage.labels && usage.labels[group]) || group;
  }

  function drawTotals() {
    const t = usage.totals;
    const card = (name, value, sub) => h("div.card.total", null,
      h("div.total-name", null, name), h("div.total-value", null, value),
      sub ? h("div.total-sub", null, sub) : null);
    clear(totals).append(
      card("Requests", num(t.requests), `${num(t.errors)} errors`),
      card("Tokens", num(t.tokens),
        `${num(t.prompt_tokens)} prompt (${num(t.cached_tokens)} cached) · ${num(t.completion_tokens)} completion`),
      card("Cost", usd(t.cost_usd), `last ${view.days} days`));
  }

  function drawChart() {
    if (!usage) return;
    const metric = METRICS[view.metric];
    document.getElementById("chart-title").textContent =
      `${metric.label} per UTC day, by ${view.groupBy}`;
    const series = usage.groups.map((g, i) => ({ name: label(g), color: COLORS[i % COLORS.length] }));
    const index = new Map(usage.groups.map((g, i) => [g, i]));
    const days = usage.days.map((d) => {
      const values = usage.groups.map(() => 0);
      for (const row of d.rows) values[index.get(row.group)] += metric.value(row) || 0;
      return { label: dayLabel(d.date), title: `${dayLabel(d.date, true)} (UTC)`, values };
    });
    const width = Math.max(280, Math.round(chart.clientWidth) || 720);
    drawnWidth = width;
    clear(chart).append(stackedBars(days, series, {
      format: metric.format, width, height: width < 500 ? 200 : 260,
    }));
    clear(legend).append(...series.map((s) =>
      h("span.legend-item", null, swatch(s.color), s.name)));
    if (!series.length) legend.append(h("span.muted", null, "No requests in this period."));
  }

  async function loadKeys() {
    try {
      const list = await api("/admin/keys");
      for (const k of list.data) {
        filters.key.append(h("option", { value: k.id }, `${k.name} (${k.prefix}…)`));
      }
    } catch {
      // the filter still works without names
    }
  }

  /** The first page of the log for the filters as they are now; an older page goes on with
   * the filters of the pages before it. The newest load wins. */
  async function loadLog(params = null, before = undefined) {
    const mine = ++logGeneration;
    params ??= {
      key: filters.key?.value, model: filters.model.value.trim(),
      endpoint: filters.endpoint.value, status: filters.status.value,
    };
    clear(logStatus);
    older.disabled = true;
    if (!before) older.hidden = true; // the next page of these filters, not of earlier ones
    try {
      // The server reads a bounded slice of the log per call, so a rare filter's page can come
      // back short, even empty, with a cursor: an empty one is followed up at once (a few
      // slices per click at most); a short one is shown, and Older goes on.
      const rows = [];
      let cursor = before;
      for (let slice = 0; slice < LOG_SLICES; slice++) {
        const page = await api(
          `/console/api/requests${query({ ...params, limit: PAGE, before: cursor })}`);
        if (mine !== logGeneration) return;
        rows.push(...page.data);
        cursor = page.next_before ?? null;
        if (rows.length || cursor === null) break;
      }
      if (!before) clear(logBody);
      for (const r of rows) logBody.append(logRow(r));
      if (!rows.length && cursor === null && !before) {
        logBody.append(h("tr", null, h("td.muted", { colspan: 12 }, "No requests match.")));
      } else if (!rows.length && cursor !== null) {
        logBody.append(h("tr", null, h("td.muted", { colspan: 12 },
          "No matches among the requests searched so far; Older searches further back.")));
      }
      older.hidden = cursor === null;
      older.onclick = () => loadLog(params, cursor);
    } catch (e) {
      if (mine === logGeneration) logStatus.append(errorBox(e.message));
    } finally {
      if (mine === logGeneration) older.disabled = false;
    }
  }

  loadUsage();
  loadLog();
  if (filters.key) loadKeys();
  return () => resized.disconnect();
}

function swatch(color) {
  const el = h("span.swatch");
  el.style.background = color;
  return el;
}

function dayLabel(date, long = false) {
  const [y, m, d] = date.split("-").map(Number);
  const local = new Date(y, m - 1, d);
  return local.toLocaleDateString(undefined, long
    ? { weekday: "short", month: "short", day: "numeric", year: "numeric" }
    : { month: "short", day: "numeric" });
}

function logRow(r) {
  const ok = typeof r.status === "number" ? r.status < 400 : r.status === "ok";
  const key = r.key_name ?? r.key ?? "--api-key";
  const keyTitle = r.key_name ? `${r.key_name} (${r.key_prefix}…, ${r.key})` : null;
  const tokens = (n) => (r.estimated && n !== null ? `~${num(n)}` : num(n));
  const flags = [];
  if (r.disconnected) flags.push("disconnected");
  if (r.batch_id) flags.push("batch");
  return h("tr", { "data-request": r.request_id || r.id },
    h("td.time", null, when(r.created_at)),
    h("td.key", { title: keyTitle }, key),
    h("td", null, r.model ?? "—"),
    h("td", { title: r.endpoint }, (r.endpoint ?? "—").replace(/^\/v1\//, "")),
    h("td", null, h(`span.status.${ok ? "active" : "error"}`, null, String(r.status))),
    h("td.num", null, tokens(r.prompt_tokens)),
    h("td.num", null, tokens(r.cached_tokens)),
    h("td.num", null, tokens(r.completion_tokens)),
    h("td.num", null, usd(r.cost_usd)),
    h("td.num", null, ms(r.ttft_ms)),
    h("td.num", null, ms(r.latency_ms)),
    h("td", null, [r.finish_reason ?? "—", ...flags].join(" · ")));
}
