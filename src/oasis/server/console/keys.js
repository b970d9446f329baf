// Keys (admin): the list, create (the secret shown once), rotate, revoke, edit limits.

import { api } from "./api.js";
import { h, clear, field, errorBox, num, usd, day, duration, copyText } from "./dom.js";

export function mount(root) {
  const secretSlot = h("div");
  const status = h("div.form-status");
  const body = h("tbody");
  const table = h("div.table-wrap", null, h("table.data", { id: "keys-table" },
    h("thead", null, h("tr", null, ["Prefix", "Name", "Limits", "Spend / budget", "Models",
      "Status", "Created", "Last used", ""].map((t) =>
      h("th", null, t)))),
    body));

  root.append(h("section.page", null,
    h("div.page-head", null, h("h1", null, "API keys")),
    secretSlot,
    h("div.card", null, h("h2", null, "Keys"), status, table),
    createForm()));

  async function load() {
    try {
      const list = await api("/admin/keys");
      clear(body);
      for (const k of list.data) body.append(...rows(k));
      if (!list.data.length) body.append(h("tr", null, h("td.muted", { colspan: 9 }, "No keys yet.")));
    } catch (e) {
      clear(status).append(errorBox(e.message));
    }
  }

  function showSecret(title, key) {
    const value = h("code.secret-value", { id: "secret-value" }, key.value);
    const copy = h("button.primary", { type: "button", id: "copy-secret" }, "Copy");
    copy.addEventListener("click", async () => {
      copy.textContent = (await copyText(key.value, value)) ? "Copied" : "Selected: press Ctrl+C";
    });
    clear(secretSlot).append(h("div.card.secret", { id: "secret", role: "status" },
      h("h2", null, title),
      h("p", null, "Copy it now: it is shown only this once and cannot be read again."),
      h("div.secret-row", null, value, copy),
      h("button.link", { type: "button", onclick: () => clear(secretSlot) }, "Done")));
  }

  function createForm() {
    const f = {
      name: h("input", { name: "name", id: "new-name", required: true, maxlength: 200 }),
      admin: h("input", { type: "checkbox", name: "admin", id: "new-admin" }),
      rpm: h("input", { type: "number", name: "rpm", id: "new-rpm", min: 1 }),
      tpm: h("input", { type: "number", name: "tpm", id: "new-tpm", min: 1 }),
      budget: h("input", { type: "number", name: "budget", id: "new-budget", min: 0, step: "any" }),
      period: h("input", { name: "period", id: "new-period", value: "30d" }),
      models: h("input", { name: "models", id: "new-models", placeholder: "all, or a, b, …" }),
      expires: h("input", { name: "expires", id: "new-expires", placeholder: "never (e.g. 30d)" }),
    };
    const problem = h("div.form-status");
    const form = h("form.card.create", { id: "create-key" },
      h("h2", null, "Create a key"),
      h("div.grid", null,
        field("Name", f.name), field("Requests / minute", f.rpm), field("Tokens / minute", f.tpm),
        field("Budget (USD)", f.budget), field("Budget period", f.period),
        field("Models", f.models),
        field("Expires in", f.expires)),
      h("div.row", null, h("label.check", null, f.admin, " Admin key"), h("span.grow"),
        h("button.primary", { type: "submit", id: "create" }, "Create key")),
      problem);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      clear(problem);
      const request = { name: f.name.value.trim(), admin: f.admin.checked };
      if (!request.name) {
        problem.append(errorBox("A key needs a name."));
        return;
      }
      Object.assign(request, limits(f));
      for (const k of Object.keys(request)) if (request[k] === null) delete request[k];
      if (f.expires.value.trim()) request.expires = f.expires.value.trim();
      try {
        const key = await api("/admin/keys", { method: "POST", body: request });
        showSecret(`New key “${key.name}” (${key.prefix}…)`, key);
        form.reset();
        f.period.value = "30d";
        await load();
      } catch (e) {
        problem.append(errorBox(e.message));
      }
    });
    return form;
  }

  function rows(k) {
    const revoked = k.status !== "active";
    const actions = h("td.actions");
    const row = h("tr", { "data-key": k.id, class: revoked ? "inactive" : "" },
      h("td", null, h("code", null, k.prefix)),
      h("td.name", null, k.name, k.is_admin ? [" ", h("span.badge", null, "admin")] : null),
      h("td", null, k.rpm === null && k.tpm === null ? "none"
        : [k.rpm === null ? null : `${num(k.rpm)} rpm`, k.tpm === null ? null : `${num(k.tpm)} tpm`]
          .filter(Boolean).join(" · ")),
      h("td.num", null, k.budget_usd === null ? "no budget"
        : `${usd(k.spend_usd ?? 0)} / ${usd(k.budget_usd)} per ${duration(k.budget_period_seconds)}`),
      h("td", null, k.models ? k.models.join(", ") : "all"),
      h("td", null, h(`span.status.${k.status}`, null, k.status)),
      h("td.time", null, day(k.created_at)),
      h("td.time", null, day(k.last_used_at)),
      actions);
    const editRow = h("tr.edit-row", { hidden: true });
    if (!revoked) {
      actions.append(
        h("button.small", { type: "button", onclick: () => {
          editRow.hidden = !editRow.hidden;
          if (!editRow.hidden) editRow.replaceChildren(h("td", { colspan: 9 }, editForm(k)));
        } }, "Edit"),
        h("button.small", { type: "button", onclick: () => rotate(k) }, "Rotate"),
        h("button.small.danger", { type: "button", onclick: () => revoke(k) }, "Revoke"));
    }
    return [row, editRow];
  }

  function editForm(k) {
    const f = {
      name: h("input", { name: "name", value: k.name }),
      rpm: h("input", { type: "number", name: "rpm", min: 1, value: k.rpm ?? "" }),
      tpm: h("input", { type: "number", name: "tpm", min: 1, value: k.tpm ?? "" }),
      budget: h("input", { type: "number", name: "budget", min: 0, step: "any",
        value: k.budget_usd ?? "" }),
      period: h("input", { name: "period", value: duration(k.budget_period_seconds ?? 2592000) }),
      models: h("input", { name: "models", value: (k.models || []).join(", "),
        placeholder: "all models" }),
    };
    const problem = h("div.form-status");
    const form = h("form.edit", null,
      h("div.grid", null, field("Name", f.name), field("Requests / minute", f.rpm),
        field("Tokens / minute", f.tpm), field("Budget (USD)", f.budget),
        field("Budget period", f.period), field("Models", f.models, "empty for all")),
      h("div.row", null, h("span.grow"), h("button.primary", { type: "submit" }, "Save")),
      problem);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      clear(problem);
      const changes = limits(f); // an empty field clears its limit (null)
      if (f.name.value.trim() && f.name.value.trim() !== k.name) changes.name = f.name.value.trim();
      if (changes.budget_period === null) delete changes.budget_period;
      try {
        await api(`/admin/keys/${encodeURIComponent(k.id)}`, { method: "PATCH", body: changes });
        await load();
      } catch (e) {
        problem.append(errorBox(e.message));
      }
    });
    return form;
  }

  async function rotate(k) {
    if (!window.confirm(`Rotate “${k.name}”? Its current secret stops working now.`)) return;
    try {
      const key = await api(`/admin/keys/${encodeURIComponent(k.id)}/rotate`, { method: "POST" });
      showSecret(`New secret for “${key.name}” (${key.prefix}…)`, key);
      await load();
    } catch (e) {
      clear(status).append(errorBox(e.message));
    }
  }

  async function revoke(k) {
    if (!window.confirm(`Revoke “${k.name}” (${k.prefix}…)? This cannot be undone.`)) return;
    try {
      await api(`/admin/keys/${encodeURIComponent(k.id)}`, { method: "DELETE" });
      await load();
    } catch (e) {
      clear(status).append(errorBox(e.message));
    }
  }

  load();
}

/** The limit fields of a form as the admin API takes them (empty -> null). */
function limits(f) {
  const int = (input) => (input.value.trim() ? Number(input.value) : null);
  const models = f.models.value.split(",").map((m) => m.trim()).filter(Boolean);
  return {
    rpm: int(f.rpm),
    tpm: int(f.tpm),
    budget_usd: f.budget.value.trim() ? Number(f.budget.value) : null,
    budget_period: f.period.value.trim() || null,
    models: models.length ? models : null,
  };
}
