// Sessions: the tenant's sessions, most recently written first, a page at a time
// (GET /v1/sessions), or one agent's (?agent=NAME); read one's history; delete one.
import { api, h, field, errorText, when } from "./api.js";

const PAGE = 20;

// The agents to suggest: a key's own list, else the models the credential may read
// (GET /v1/models needs the chat scope; without it the name is typed).
async function agentNames(me) {
  if (me.agents) return me.agents;
  if (!me.scopes.includes("chat")) return [];
  const res = await api("/v1/models");
  return res.ok ? res.data.data.map((m) => m.id) : [];
}

export function mount(root, ctx) {
  const body = h("tbody");
  const error = h("p", { class: "error", role: "alert" });
  const more = h("button", { type: "button", class: "secondary", hidden: true, onclick: () => load(cursor) }, "Next page");
  const first = h("button", { type: "button", class: "secondary", onclick: () => load(null) }, "Refresh");
  const pageInfo = h("span", { class: "muted", role: "status" });
  const history = h("section", { "aria-label": "History", hidden: true });
  let cursor = null;
  let pageNumber = 0;
  let agent = ""; // the agent the list is narrowed to ("" = every session)
  let loading = 0; // the latest load: an earlier answer arriving later is dropped

  const agents = h("datalist", { id: "session-agents" });
  const agentInput = h("input", { name: "agent", autocomplete: "off", list: "session-agents", placeholder: "every agent" });
  const clear = h("button", { type: "button", class: "secondary", hidden: true, onclick: () => { agentInput.value = ""; search(); } }, "Show all");
  function search() {
    agent = agentInput.value.trim();
    clear.hidden = !agent;
    load(null);
  }

  const wanted = h("input", { name: "find", autocomplete: "off", class: "mono", placeholder: "s_…" });
  root.append(
    h("h1", {}, "Sessions"),
    h("form", { class: "row", role: "search", "aria-label": "Search sessions", onsubmit: (e) => { e.preventDefault(); search(); } },
      field("Agent", agentInput), agents, h("button", { type: "submit" }, "Search"), clear),
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); if (wanted.value.trim()) read(wanted.value.trim()); } },
      field("Find a session by id", wanted), h("button", { type: "submit", class: "secondary" }, "Find")),
    h("table", { "aria-label": "Sessions" },
      h("thead", {}, h("tr", {}, h("th", {}, "Session"), h("th", {}, "Agent"), h("th", {}, "Created"),
        h("th", { class: "num" }, "Messages"), h("th", {}, h("span", { class: "muted" }, "Actions")))),
      body),
    h("div", { class: "pager" }, first, more, pageInfo),
    error, history,
  );

  async function load(after) {
    error.textContent = "";
    const query = new URLSearchParams({ limit: PAGE });
    if (after) query.set("after", after);
    if (agent) query.set("agent", agent);
    const run = ++loading;
    const res = await api("/v1/sessions?" + query);
    if (run !== loading) return;
    if (!res.ok) {
      // Nothing listed rather than the rows of another search.
      error.textContent = errorText(res);
      body.replaceChildren();
      more.hidden = true;
      pageInfo.textContent = "";
      return;
    }
    pageNumber = after ? pageNumber + 1 : 1;
    cursor = res.data.next_after;
    more.hidden = !res.data.has_more;
    pageInfo.textContent = `page ${pageNumber}, ${res.data.data.length} session(s)${agent ? ` of ${agent}` : ""}`;
    body.replaceChildren(...res.data.data.map(row));
    if (!res.data.data.length) body.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, agent ? `No sessions of ${agent}.` : "No sessions.")));
  }

  function row(session) {
    const tr = h("tr", { dataset: { session: session.id } },
      h("td", { class: "mono" }, session.id),
      h("td", {}, session.agent || "—"),
      h("td", {}, when(session.created_at)),
      h("td", { class: "num" }, String(session.last_seq ?? "")),
      h("td", {},
        h("button", { type: "button", class: "secondary", "aria-label": `Read ${session.id}`, onclick: () => read(session.id) }, "Read"), " ",
        h("a", { href: "#chat/" + encodeURIComponent(session.id), "aria-label": `Open ${session.id} in chat` }, "Chat"), " ",
        h("button", { type: "button", class: "danger", "aria-label": `Delete ${session.id}`, onclick: () => remove(session.id, tr) }, "Delete")));
    return tr;
  }

  async function read(id) {
    error.textContent = "";
    const res = await api(`/v1/sessions/${encodeURIComponent(id)}/messages?limit=100`);
    if (!res.ok) { error.textContent = errorText(res); return; }
    history.hidden = false;
    history.replaceChildren(
      h("h2", {}, "History of ", h("code", {}, id), res.data.has_more ? h("span", { class: "muted" }, " (the last 100 messages)") : ""),
      h("ol", { class: "transcript" }, res.data.data.map((m) =>
        h("li", { class: "msg", dataset: { role: m.role, seq: m.seq } },
          h("span", { class: "who" }, `#${m.seq} · ${m.role}${m.agent ? " · " + m.agent : ""} · ${when(m.created_at)}`),
          h("pre", {}, typeof m.content === "string" ? m.content : JSON.stringify(m.content ?? m.tool_calls))))),
    );
  }

  async function remove(id, tr) {
    if (!confirm(`Delete session ${id} and its history?`)) return;
    const res = await api(`/v1/sessions/${encodeURIComponent(id)}`, { method: "DELETE" });
    if (!res.ok && res.status !== 404) { error.textContent = errorText(res); return; }
    tr.remove();
    if (!history.hidden && history.textContent.includes(id)) history.hidden = true;
  }

  agentNames(ctx.me).then((names) => agents.replaceChildren(...names.map((n) => h("option", { value: n }))));
  load(null);
}
