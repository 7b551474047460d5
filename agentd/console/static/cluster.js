// Cluster (admin): every live instance and worker (GET /v1/admin/instances), polled; the
// counters are totals, so the charts show the increase between two polls per second.
import { api, h, errorText, when, age, notAvailable } from "./api.js";
import { Chart, increase } from "./chart.js";

const POLL_MS = 1500;
const BREAKER_RANK = { closed: 0, half_open: 1, open: 2 };

export function mount(root) {
  const error = h("p", { class: "error", role: "alert" });
  const charts = {
    requests: new Chart("Requests", ["per second"], "/s"),
    latency: new Chart("Latency (slowest worker)", ["p50", "p99"], "ms"),
    errors: new Chart("Errors", ["per second"], "/s"),
    cache: new Chart("Cache hit ratio", ["L1", "L2"], "%"),
    jobs: new Chart("Jobs done", ["per second"], "/s"),
    sockets: new Chart("WebSocket connections", ["open"], ""),
  };
  const workers = h("tbody");
  const backends = h("tbody");
  const summary = h("p", { role: "status" }, "Loading…");
  const content = h("div", {},
    summary,
    h("div", { class: "cards" }, Object.values(charts).map((c) => c.element)),
    h("h2", {}, "Instances and workers"),
    h("table", { "aria-label": "Workers" },
      h("thead", {}, h("tr", {}, ["Worker", "Address", "Pid", "Version", "Partitions", "Started", "Last seen", "Requests", "Errors", "WebSockets"]
        .map((t, i) => h("th", { class: i >= 7 ? "num" : "" }, t)))),
      workers),
    h("h2", {}, "Backend nodes"),
    h("table", { "aria-label": "Backend nodes" },
      h("thead", {}, h("tr", {}, ["Backend", "Node", "Latency estimate", "In flight", "Breaker", "Workers"].map((t) => h("th", {}, t)))),
      backends));
  root.append(h("h1", {}, "Cluster"), error, content);

  let previous = null; // {at, byId}
  let timer = null;
  let stopped = false;

  async function poll() {
    const res = await api("/v1/admin/instances");
    if (stopped) return;
    if (res.status === 404) { content.replaceChildren(notAvailable("The cluster view")); return; }
    if (!res.ok) error.textContent = errorText(res);
    else { error.textContent = ""; render(res.data.data); }
    timer = setTimeout(poll, POLL_MS);
  }

  function render(list) {
    const at = performance.now();
    const byId = new Map(list.map((w) => [w.id, w]));
    const instances = new Set(list.map((w) => w.instance));
    summary.textContent = `${instances.size} instance(s), ${list.length} worker(s)`;
    const now = Date.now() / 1000;
    workers.replaceChildren(...list.map((w) => h("tr", { dataset: { worker: w.id } },
      h("td", { class: "mono" }, w.id), h("td", { class: "mono" }, w.address), h("td", {}, String(w.pid)),
      h("td", {}, w.version), h("td", {}, (w.partitions || []).join(", ") || "all"),
      h("td", {}, when(w.started_at)), h("td", {}, age(Math.max(0, now - w.last_seen)) + " ago"),
      h("td", { class: "num" }, String(w.stats.requests)), h("td", { class: "num" }, String(w.stats.errors)),
      h("td", { class: "num" }, String(w.stats.ws_connections)))));
    renderBackends(list);
    charts.latency.push([slowest(list, "p50"), slowest(list, "p99")]);
    charts.sockets.push([list.reduce((n, w) => n + (w.stats.ws_connections || 0), 0)]);
    if (previous) {
      const seconds = Math.max(0.001, (at - previous.at) / 1000);
      const sum = { requests: 0, errors: 0, jobs: 0, l1: 0, l2: 0, misses: 0 };
      for (const w of list) {
        const before = previous.byId.get(w.id);
        if (!before) continue; // a new worker: its rate starts with the next poll
        sum.requests += increase(w.stats.requests, before.stats.requests);
        sum.errors += increase(w.stats.errors, before.stats.errors);
        sum.jobs += increase(w.stats.jobs_done, before.stats.jobs_done);
        sum.l1 += increase(w.stats.cache?.l1_hits, before.stats.cache?.l1_hits) || 0;
        sum.l2 += increase(w.stats.cache?.l2_hits, before.stats.cache?.l2_hits) || 0;
        sum.misses += increase(w.stats.cache?.misses, before.stats.cache?.misses) || 0;
      }
      const lookups = sum.l1 + sum.l2 + sum.misses;
      charts.requests.push([sum.requests / seconds]);
      charts.errors.push([sum.errors / seconds]);
      charts.jobs.push([sum.jobs / seconds]);
      charts.cache.push(lookups ? [(100 * sum.l1) / lookups, (100 * sum.l2) / lookups] : [null, null]);
    }
    previous = { at, byId };
  }

  // The slowest worker's percentile; null (a gap, "—") when every worker is idle, since
  // an idle worker reports null rather than a latency.
  function slowest(list, which) {
    const values = list.map((w) => w.stats.latency_ms?.[which]).filter((v) => typeof v === "number");
    return values.length ? Math.max(...values) : null;
  }

  function renderBackends(list) {
    const nodes = new Map();
    for (const w of list) {
      for (const b of w.stats.backends || []) {
        const id = `${b.backend} ${b.node}`;
        const node = nodes.get(id) || { backend: b.backend, node: b.node, latency: [], in_flight: 0, breaker: "closed", workers: 0 };
        if (typeof b.latency_ms === "number") node.latency.push(b.latency_ms);
        node.in_flight += b.in_flight || 0;
        if ((BREAKER_RANK[b.breaker] ?? 0) > BREAKER_RANK[node.breaker]) node.breaker = b.breaker;
        node.workers += 1;
        nodes.set(id, node);
      }
    }
    backends.replaceChildren(...[...nodes.values()].map((n) => h("tr", {},
      h("td", {}, n.backend), h("td", { class: "mono" }, n.node),
      h("td", {}, n.latency.length ? `${(n.latency.reduce((a, b) => a + b, 0) / n.latency.length).toFixed(1)} ms` : "—"),
      h("td", {}, String(n.in_flight)),
      h("td", { class: "breaker-" + n.breaker }, n.breaker.replace("_", " ")),
      h("td", {}, String(n.workers)))));
    if (!nodes.size) backends.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No backend reported.")));
  }

  poll();
  return () => { stopped = true; clearTimeout(timer); };
}
