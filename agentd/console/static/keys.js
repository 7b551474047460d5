// Keys (admin): create, edit, disable and revoke API keys (/v1/admin/keys). A new key is
// shown once, as the API answers it only once.
import { api, h, field, errorText, when } from "./api.js";

const SCOPES = ["chat", "responses", "sessions", "state", "admin"];
const PAGE = 50;

function scopeBoxes(prefix, chosen) {
  return h("fieldset", {}, h("legend", {}, "Scopes"),
    SCOPES.map((s) => h("label", { class: "inline" },
      h("input", { type: "checkbox", name: `${prefix}-scope`, value: s, checked: chosen.includes(s) }), " ", s)));
}

function checked(container, prefix) {
  return [...container.querySelectorAll(`input[name="${prefix}-scope"]:checked`)].map((i) => i.value);
}

function agentsOf(text) {
  const list = text.split(",").map((a) => a.trim()).filter(Boolean);
  return list.length ? list : null;
}

export function mount(root) {
  const body = h("tbody");
  const error = h("p", { class: "error", role: "alert" });
  const created = h("div", { role: "status" });
  const tenant = h("input", { name: "tenant", autocomplete: "off", placeholder: "acme (empty: the operator's)" });
  const name = h("input", { name: "name", autocomplete: "off" });
  const agents = h("input", { name: "agents", autocomplete: "off", placeholder: "every agent" });
  const rpm = h("input", { name: "rpm", type: "number", min: 0, placeholder: "0 = no limit" });
  const form = h("form", { class: "panel", onsubmit: create },
    h("h2", {}, "Create a key"),
    h("div", { class: "row" }, field("Tenant", tenant), field("Name", name), field("Agents (comma-separated)", agents),
      field("Requests per minute", rpm)),
    scopeBoxes("new", ["chat", "responses", "sessions", "state"]),
    h("button", { type: "submit" }, "Create key"));
  const filter = h("input", { name: "filter", autocomplete: "off", placeholder: "every tenant" });
  const more = h("button", { type: "button", class: "secondary", hidden: true, onclick: () => load(cursor, true) }, "More keys");
  let cursor = null;

  root.append(
    h("h1", {}, "Keys"), form, created,
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); load(null, false); } },
      field("Tenant filter", filter), h("button", { type: "submit", class: "secondary" }, "List keys")),
    h("table", { "aria-label": "Keys" },
      h("thead", {}, h("tr", {}, ["Key id", "Tenant", "Name", "Scopes", "Agents", "Created", "State", "Actions"].map((t) => h("th", {}, t)))),
      body),
    more, error,
  );

  async function load(after, append) {
    error.textContent = "";
    const query = new URLSearchParams({ limit: PAGE });
    if (filter.value.trim()) query.set("tenant", filter.value.trim());
    if (after) query.set("after", after);
    const res = await api("/v1/admin/keys?" + query);
    if (!res.ok) { error.textContent = errorText(res); return; }
    cursor = res.data.next_after;
    more.hidden = !res.data.has_more;
    const rows = res.data.data.map(row);
    if (append) body.append(...rows); else body.replaceChildren(...rows);
  }

  function row(record) {
    const tr = h("tr", { dataset: { key: record.id } },
      h("td", { class: "mono" }, record.id),
      h("td", {}, record.tenant === "" ? "(operator)" : record.tenant),
      h("td", {}, record.name),
      h("td", {}, record.scopes.join(", ")),
      h("td", {}, record.agents ? record.agents.join(", ") : "all"),
      h("td", {}, when(record.created_at)),
      h("td", {}, record.disabled ? "disabled" : record.expires_at && record.expires_at * 1000 < Date.now() ? "expired" : "active"),
      h("td", {},
        h("button", { type: "button", class: "secondary", "aria-label": `Edit ${record.id}`, onclick: () => edit(record, tr) }, "Edit"), " ",
        h("button", { type: "button", class: "secondary", "aria-label": `${record.disabled ? "Enable" : "Disable"} ${record.id}`,
          onclick: () => patch(record.id, { disabled: !record.disabled }, tr) }, record.disabled ? "Enable" : "Disable"), " ",
        h("button", { type: "button", class: "danger", "aria-label": `Revoke ${record.id}`, onclick: () => revoke(record.id, tr) }, "Revoke")));
    return tr;
  }

  async function create(event) {
    event.preventDefault();
    error.textContent = "";
    const body = { tenant: tenant.value.trim(), name: name.value, scopes: checked(form, "new"), agents: agentsOf(agents.value) };
    if (rpm.value) body.limits = { requests_per_minute: Number(rpm.value) };
    const res = await api("/v1/admin/keys", { method: "POST", body });
    if (!res.ok) { error.textContent = errorText(res); return; }
    created.replaceChildren(h("p", {}, `Key ${res.data.id} created. Copy it now: it is never shown again.`),
      h("p", { class: "secret mono", "aria-label": "New key" }, res.data.key));
    load(null, false);
  }

  function edit(record, tr) {
    const editName = h("input", { value: record.name });
    const editAgents = h("input", { value: record.agents ? record.agents.join(", ") : "", placeholder: "every agent" });
    const cell = h("td", { colspan: 8 });
    const box = h("form", { class: "panel", "aria-label": `Edit key ${record.id}`, onsubmit: async (e) => {
      e.preventDefault();
      await patch(record.id, { name: editName.value, scopes: checked(box, "edit"), agents: agentsOf(editAgents.value) }, tr);
      editRow.remove();
    } },
    h("div", { class: "row" }, field("Name", editName), field("Agents (comma-separated)", editAgents)),
    scopeBoxes("edit", record.scopes),
    h("button", { type: "submit" }, "Save key"), " ",
    h("button", { type: "button", class: "secondary", onclick: () => editRow.remove() }, "Cancel"));
    cell.append(box);
    const editRow = h("tr", {}, cell);
    tr.after(editRow);
    editName.focus();
  }

  async function patch(id, changes, tr) {
    error.textContent = "";
    const res = await api(`/v1/admin/keys/${id}`, { method: "PATCH", body: changes });
    if (!res.ok) { error.textContent = errorText(res); return; }
    tr.replaceWith(row(res.data));
  }

  async function revoke(id, tr) {
    if (!confirm(`Revoke key ${id}? Every request with it is refused from now on.`)) return;
    const res = await api(`/v1/admin/keys/${id}`, { method: "DELETE" });
    if (!res.ok) { error.textContent = errorText(res); return; }
    tr.remove();
  }

  load(null, false);
}
