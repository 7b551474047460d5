// Shared state: browse the tenant's namespaces and a namespace's documents a page at a
// time (GET /v1/state, GET /v1/state/{ns}), or open a document by namespace and key; edit
// its JSON and save it as a compare-and-set on the version read (If-Match). A concurrent
// change is a 412 that carries the current document: shown beside the edit to merge against.
import { api, h, field, errorText } from "./api.js";

const PAGE = 20;

export function mount(root, ctx) {
  const ns = h("input", { name: "namespace", autocomplete: "off", required: true, value: "app" });
  const key = h("input", { name: "key", autocomplete: "off", required: true });
  const editor = h("textarea", { rows: 14, class: "mono", spellcheck: false, disabled: true });
  const version = h("span", { role: "status", "aria-label": "Version" }, "—");
  const error = h("p", { class: "error", role: "alert" });
  const save = h("button", { type: "button", disabled: true, onclick: () => write(expected) }, "Save");
  const reload = h("button", { type: "button", class: "secondary", disabled: true, onclick: openDoc }, "Reload");
  const del = h("button", { type: "button", class: "danger", disabled: true, onclick: removeDoc }, "Delete document");
  const conflict = h("section", { class: "panel", hidden: true, role: "region", "aria-label": "Conflict" });
  let expected = null; // the version the editor's text replaces; 0: the document is new
  let opened = null;

  const spaces = pagedTable("Namespaces", ["Namespace", "Documents"], (after) => {
    const query = new URLSearchParams({ limit: PAGE });
    if (after) query.set("after", after);
    return "/v1/state?" + query;
  }, (n) => h("tr", { dataset: { namespace: n.name }, "aria-current": n.name === browsing ? "true" : null },
    h("td", {}, h("button", { type: "button", class: "link mono", "aria-label": `Browse ${n.name}`, onclick: () => browse(n.name) }, n.name)),
    h("td", { class: "num" }, String(n.documents))),
  "No documents in any namespace yet.");

  let browsing = null; // the namespace whose documents are listed
  const prefix = h("input", { name: "prefix", autocomplete: "off", class: "mono", placeholder: "user:" });
  const docsTitle = h("h2", { id: "documents-title" }, "Documents");
  const docs = pagedTable("Documents", ["Key", "Version", "Size"], (after) => {
    const query = new URLSearchParams({ limit: PAGE });
    if (after) query.set("after", after);
    if (prefix.value.trim()) query.set("prefix", prefix.value.trim());
    return `/v1/state/${encodeURIComponent(browsing)}?` + query;
  }, (d) => h("tr", { dataset: { key: d.key }, "aria-current": opened && opened[0] === browsing && opened[1] === d.key ? "true" : null },
    h("td", {}, h("button", { type: "button", class: "link mono", "aria-label": `Open ${browsing}/${d.key}`, onclick: () => openKey(browsing, d.key) }, d.key)),
    h("td", { class: "num" }, String(d.version)),
    h("td", { class: "num" }, bytes(d.size))),
  "No documents.");
  const docsPanel = h("section", { "aria-labelledby": "documents-title", hidden: true },
    docsTitle,
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); docs.load(null); } },
      field("Key prefix", prefix), h("button", { type: "submit", class: "secondary" }, "Filter")),
    docs.table, docs.pager);

  root.append(
    h("h1", {}, "Shared state"),
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); openDoc(); } },
      field("Namespace", ns), field("Key", key), h("button", { type: "submit" }, "Open")),
    h("div", { class: "split" },
      h("div", {},
        h("section", { "aria-labelledby": "namespaces-title" },
          h("h2", { id: "namespaces-title" }, "Namespaces"), spaces.table, spaces.pager),
        docsPanel),
      h("section", { "aria-label": "Document" },
        h("p", {}, "Version ", version),
        field("Document (JSON)", editor),
        h("div", { class: "row" }, save, reload, del),
        error, conflict)),
  );
  spaces.load(null);
  if (ctx.param) {
    const [n, k] = ctx.param.split("/");
    ns.value = n || "";
    key.value = k || "";
    if (n) browse(n, !k);
    if (n && k) openDoc();
  }

  // A table of one listing with its pager: "Next page" follows next_after, "First page"
  // starts again. Each table's buttons are named after it, for screen readers and tests.
  function pagedTable(name, headings, url, row, empty) {
    const body = h("tbody");
    const info = h("span", { class: "muted", role: "status", "aria-label": `${name} page` });
    let cursor = null;
    let number = 0;
    const next = h("button", { type: "button", class: "secondary", hidden: true, "aria-label": `Next page of ${name.toLowerCase()}`, onclick: () => load(cursor) }, "Next page");
    const first = h("button", { type: "button", class: "secondary", "aria-label": `First page of ${name.toLowerCase()}`, onclick: () => load(null) }, "First page");
    const table = h("table", { "aria-label": name },
      h("thead", {}, h("tr", {}, headings.map((t, i) => h("th", { class: i ? "num" : null }, t)))), body);
    async function load(after) {
      const res = await api(url(after));
      if (!res.ok) { error.textContent = errorText(res); return; }
      number = after ? number + 1 : 1;
      cursor = res.data.next_after;
      next.hidden = !res.data.has_more;
      info.textContent = `page ${number}, ${res.data.data.length} shown`;
      body.replaceChildren(...res.data.data.map(row));
      if (!res.data.data.length) body.append(h("tr", {}, h("td", { colspan: headings.length, class: "muted" }, empty)));
    }
    return { table, pager: h("div", { class: "pager" }, first, next, info), load };
  }

  function browse(name, focus = true) {
    if (browsing !== name) prefix.value = "";
    browsing = name;
    docsTitle.textContent = `Documents in ${name}`;
    docsPanel.hidden = false;
    for (const tr of spaces.table.querySelectorAll("tr[data-namespace]")) {
      tr.setAttribute("aria-current", tr.dataset.namespace === name ? "true" : "false");
    }
    if (!opened) history.replaceState(null, "", `#state/${encodeURIComponent(name)}`);
    docs.load(null).then(() => {
      if (focus) (docs.table.querySelector("tbody button") || prefix).focus();
    });
  }

  function openKey(n, k) {
    ns.value = n;
    key.value = k;
    openDoc().then(() => editor.focus());
  }

  function path() { return `/v1/state/${encodeURIComponent(opened[0])}/${encodeURIComponent(opened[1])}`; }

  function bytes(size) {
    return size < 1024 ? `${size} B` : size < 1048576 ? `${(size / 1024).toFixed(1)} KiB` : `${(size / 1048576).toFixed(1)} MiB`;
  }

  function show(value, v) {
    editor.value = JSON.stringify(value, null, 2);
    expected = v;
    version.textContent = v ? String(v) : "new document";
    editor.disabled = save.disabled = reload.disabled = false;
    del.disabled = !v;
  }

  // The listings after a write that created or removed a document, or changed a version.
  function refreshLists() {
    spaces.load(null);
    if (opened && browsing === opened[0]) docs.load(null);
  }

  async function openDoc() {
    error.textContent = "";
    conflict.hidden = true;
    if (!ns.value || !key.value) { error.textContent = "Give a namespace and a key."; return; }
    opened = [ns.value, key.value];
    history.replaceState(null, "", `#state/${encodeURIComponent(ns.value)}/${encodeURIComponent(key.value)}`);
    for (const tr of docs.table.querySelectorAll("tr[data-key]")) {
      tr.setAttribute("aria-current", browsing === opened[0] && tr.dataset.key === opened[1] ? "true" : "false");
    }
    const res = await api(path());
    if (res.ok) show(res.data.value, res.data.version);
    else if (res.status === 404) show({}, 0);
    else error.textContent = errorText(res);
  }

  async function write(asVersion) {
    error.textContent = "";
    let value;
    try { value = JSON.parse(editor.value); } catch (err) { error.textContent = `Not valid JSON: ${err.message}`; return; }
    // The envelope form takes any JSON value, even one shaped like {"value", "version"}.
    const body = { value };
    if (asVersion) body.version = asVersion;
    const headers = { "Content-Type": "application/vnd.agentd.state+json" };
    if (!asVersion) headers["If-None-Match"] = "*";
    const res = await api(path(), { method: "PUT", body, headers });
    if (res.ok) { conflict.hidden = true; show(res.data.value, res.data.version); refreshLists(); return; }
    if (res.status === 412) { showConflict(res.data.error.current); return; }
    error.textContent = errorText(res);
  }

  function showConflict(current) {
    const now = current ? current.version : null;
    conflict.hidden = false;
    conflict.replaceChildren(
      h("h2", {}, "Conflict: the document changed meanwhile"),
      h("p", {}, now ? `Someone saved version ${now} after the version ${expected || "(none)"} you edited. ` : "The document was deleted meanwhile. ",
        "Merge your edit (still in the editor) with the current value, then save again."),
      h("pre", { class: "secret", "aria-label": "Current value" }, current ? JSON.stringify(current.value, null, 2) : "(no document)"),
      h("div", { class: "row" },
        h("button", { type: "button", class: "secondary", onclick: () => { conflict.hidden = true; show(current ? current.value : {}, now || 0); } }, "Take the current value"),
        h("button", { type: "button", onclick: () => write(now || 0) }, "Save mine over it")),
    );
    error.textContent = "412 version_conflict: the document changed since you opened it.";
  }

  async function removeDoc() {
    if (!confirm(`Delete ${opened.join("/")}?`)) return;
    const res = await api(path(), { method: "DELETE", headers: { "If-Match": `"${expected}"` } });
    if (res.ok || res.status === 404) { show({}, 0); refreshLists(); return; }
    if (res.status === 412) { showConflict(res.data.error.current); return; }
    error.textContent = errorText(res);
  }
}
