// Usage: the caller's tenant (GET /v1/usage), and with the admin scope every tenant's
// (GET /v1/admin/usage), per day and per key.
import { api, h, field, errorText } from "./api.js";

const COLUMNS = ["requests", "prompt_tokens", "completion_tokens", "cache_hits"];

function table(label, usage) {
  const rows = [];
  for (const day of usage.days) {
    rows.push(h("tr", {}, h("td", {}, day.date), h("td", {}, "all keys"), COLUMNS.map((c) => h("td", { class: "num" }, String(day[c])))));
    for (const [key, counts] of Object.entries(day.keys || {})) {
      rows.push(h("tr", {}, h("td", {}), h("td", { class: "mono" }, key), COLUMNS.map((c) => h("td", { class: "num" }, String(counts[c])))));
    }
  }
  return h("section", {},
    h("h2", {}, label),
    h("p", {}, COLUMNS.map((c) => `${c.replace("_", " ")}: ${usage.totals[c]}`).join(" · ")),
    h("table", { "aria-label": label },
      h("thead", {}, h("tr", {}, h("th", {}, "Day"), h("th", {}, "Key"), COLUMNS.map((c) => h("th", { class: "num" }, c.replace("_", " "))))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No usage in these days.")))));
}

export function mount(root, ctx) {
  const days = h("input", { type: "number", min: 1, max: 366, value: 7, name: "days" });
  const out = h("div");
  const error = h("p", { class: "error", role: "alert" });
  root.append(h("h1", {}, "Usage"),
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); load(); } }, field("Days", days), h("button", { type: "submit" }, "Show")),
    error, out);

  async function load() {
    error.textContent = "";
    const mine = await api(`/v1/usage?days=${days.value}`);
    if (!mine.ok) { error.textContent = errorText(mine); return; }
    const parts = [table(`Your tenant (${mine.data.tenant === "" ? "operator" : mine.data.tenant})`, mine.data)];
    if (ctx.me.scopes.includes("admin")) {
      const all = await api(`/v1/admin/usage?days=${days.value}`);
      if (!all.ok) error.textContent = errorText(all);
      else for (const usage of all.data.data) parts.push(table(`Tenant ${usage.tenant === "" ? "(operator)" : usage.tenant}`, usage));
    }
    out.replaceChildren(...parts);
  }
  load();
}
