// Shared state: open a document by namespace and key, edit its JSON, save it as a
// compare-and-set on the version read (If-Match). A concurrent change is a 412 that
// carries the current document: shown beside the edit to merge against.
import { api, h, field, errorText } from "./api.js";

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

  root.append(
    h("h1", {}, "Shared state"),
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); openDoc(); } },
      field("Namespace", ns), field("Key", key), h("button", { type: "submit" }, "Open")),
    h("p", {}, "Version ", version),
    field("Document (JSON)", editor),
    h("div", { class: "row" }, save, reload, del),
    error, conflict,
  );
  if (ctx.param) {
    const [n, k] = ctx.param.split("/");
    ns.value = n || "";
    key.value = k || "";
    if (n && k) openDoc();
  }

  function path() { return `/v1/state/${encodeURIComponent(opened[0])}/${encodeURIComponent(opened[1])}`; }

  function show(value, v) {
    editor.value = JSON.stringify(value, null, 2);
    expected = v;
    version.textContent = v ? String(v) : "new document";
    editor.disabled = save.disabled = reload.disabled = false;
    del.disabled = !v;
  }

  async function openDoc() {
    error.textContent = "";
    conflict.hidden = true;
    if (!ns.value || !key.value) { error.textContent = "Give a namespace and a key."; return; }
    opened = [ns.value, key.value];
    history.replaceState(null, "", `#state/${encodeURIComponent(ns.value)}/${encodeURIComponent(key.value)}`);
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
    if (res.ok) { conflict.hidden = true; show(res.data.value, res.data.version); return; }
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
    if (res.ok || res.status === 404) { show({}, 0); return; }
    if (res.status === 412) { showConflict(res.data.error.current); return; }
    error.textContent = errorText(res);
  }
}
