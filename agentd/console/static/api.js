// The console's access to agentd's public API, and the small DOM helpers every view uses.
// The credential lives in this tab's sessionStorage only, never in a cookie or a URL.

const STORE_KEY = "agentd.console.credential";
let credential = sessionStorage.getItem(STORE_KEY) || "";

export function getCredential() { return credential; }

export function setCredential(value) {
  credential = value || "";
  if (credential) sessionStorage.setItem(STORE_KEY, credential);
  else sessionStorage.removeItem(STORE_KEY);
}

// One call: {status, ok, data, headers}; never throws on an HTTP error, so each view
// decides what a 404 or a 412 means for it. A network failure is status 0.
export async function api(path, { method = "GET", body, headers = {}, signal } = {}) {
  const sent = { ...headers };
  if (credential) sent.Authorization = "Bearer " + credential;
  let payload;
  if (body !== undefined) {
    payload = typeof body === "string" ? body : JSON.stringify(body);
    if (!sent["Content-Type"]) sent["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, { method, headers: sent, body: payload, signal, cache: "no-store" });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    return { status: 0, ok: false, data: { error: { message: "the server cannot be reached", code: "network" } }, headers: new Headers() };
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = text; }
  }
  return { status: response.status, ok: response.ok, data, headers: response.headers };
}

// An error answer as one line for people: "404 session_not_found: ...".
export function errorText(res) {
  const err = res.data && res.data.error;
  if (err) return `${res.status || "network"} ${err.code || err.type || ""}: ${err.message || ""}`.trim();
  return `${res.status} ${typeof res.data === "string" ? res.data : ""}`.trim();
}

// h("button", {type: "button", onclick: f}, "Send"): an element, its attributes and
// children (strings become text nodes: nothing is ever parsed as HTML).
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

// A labelled field: the label names the control for screen readers and tests alike.
let fieldCount = 0;
export function field(labelText, control) {
  if (!control.id) control.id = "f" + ++fieldCount;
  return h("div", {}, h("label", { for: control.id }, labelText), control);
}

export function when(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  return new Date(seconds * 1000).toLocaleString();
}

export function age(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

// The panel a view shows when the server does not have its API (an older agentd).
export function notAvailable(what) {
  return h("p", { class: "notfound", role: "status" }, `${what} is not available on this server.`);
}
