// The console's shell: sign-in, the views the credential's scopes allow, hash routing
// (#chat/SESSION, #sessions, ...). Each view is a module loaded when first shown.
import { api, getCredential, setCredential, errorText } from "./api.js";

const VIEWS = {
  chat: () => import("./chat.js"),
  sessions: () => import("./sessions.js"),
  state: () => import("./state.js"),
  jobs: () => import("./jobs.js"),
  cluster: () => import("./cluster.js"),
  keys: () => import("./keys.js"),
  usage: () => import("./usage.js"),
};

const $ = (id) => document.getElementById(id);
let me = null;
let settings = { auth_mode: "keys", version: "" };
let unmount = null;
let routing = 0;

function allowed(link) {
  const scope = link.dataset.scope;
  return scope === "" || me.scopes.includes(scope);
}

function describe(identity) {
  if (identity.kind === "open") return "open server (no sign-in)";
  const tenant = identity.tenant === "" ? "operator" : `tenant ${identity.tenant}`;
  const who = identity.kind === "key" ? `key ${identity.key_id}` : identity.kind === "token" ? `user ${identity.subject}` : "admin key";
  return `${who} · ${tenant} · ${identity.scopes.join(", ")}`;
}

// focus: move the keyboard's focus to the new view's heading (a navigation the user made),
// so a screen reader announces it and Tab continues inside it.
async function route(focus = false) {
  const run = ++routing;
  if (!me) return;
  const [name, ...rest] = location.hash.replace(/^#/, "").split("/");
  const links = [...document.querySelectorAll("#nav a")].filter(allowed);
  const link = links.find((a) => a.dataset.view === name) || links[0];
  if (!link) { $("view").textContent = "This credential allows no view of the console."; return; }
  const view = link.dataset.view;
  if (view !== name) { history.replaceState(null, "", "#" + view); }
  for (const a of document.querySelectorAll("#nav a")) {
    if (a === link) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const module = await VIEWS[view]();
  if (run !== routing) return; // another navigation came first
  if (unmount) unmount();
  const root = $("view");
  root.replaceChildren();
  root.dataset.view = view;
  document.title = `${link.textContent} · agentd console`;
  unmount = module.mount(root, { me, settings, param: rest.length ? decodeURIComponent(rest.join("/")) : null }) || null;
  const heading = root.querySelector("h1");
  if (focus && heading) {
    heading.tabIndex = -1;
    heading.focus();
  }
}

function enter(identity) {
  me = identity;
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  for (const a of document.querySelectorAll("#nav a")) a.hidden = !allowed(a);
  $("who").textContent = describe(identity);
  $("sign-out").hidden = identity.kind === "open";
  route();
}

function showSignIn(message = "") {
  me = null;
  if (unmount) { unmount(); unmount = null; }
  $("view").replaceChildren();
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message;
  $("credential").focus();
}

async function signIn(credential) {
  setCredential(credential);
  const res = await api("/v1/me");
  if (res.ok) { enter(res.data); return; }
  setCredential("");
  showSignIn(res.status === 401 ? "This key or token is not valid (" + errorText(res) + ")." : errorText(res));
}

$("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("credential").value.trim();
  $("credential").value = "";
  signIn(value);
});
$("sign-out").addEventListener("click", () => { setCredential(""); showSignIn(); });
window.addEventListener("hashchange", () => {
  const [name] = location.hash.replace(/^#/, "").split("/");
  const current = $("view").dataset.view;
  // #chat/SESSION set by the chat view itself is not a new navigation.
  if (name !== current || name !== "chat") route(true);
});

(async () => {
  const res = await fetch("/console/settings.json", { cache: "no-store" });
  if (res.ok) settings = await res.json();
  $("version").textContent = settings.version;
  if (settings.auth_mode === "none") { setCredential(""); await signIn(""); return; }
  if (getCredential()) { await signIn(getCredential()); return; }
  showSignIn();
})();
