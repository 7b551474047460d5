// Background work (admin): per partition, the queue (GET /v1/admin/jobs, polled); its
// dead letters, retried or discarded; a response opened, its event stream followed,
// or cancelled.
import { api, h, field, errorText, when, age, notAvailable, getCredential } from "./api.js";

const POLL_MS = 2000;
const DEAD_PAGE = 20;

export function mount(root, ctx) {
  const error = h("p", { class: "error", role: "alert" });
  const partitions = h("tbody");
  const dead = h("section", { "aria-label": "Dead letters", hidden: true });
  const responseId = h("input", { name: "response", autocomplete: "off", class: "mono", placeholder: "resp_…" });
  const response = h("section", { "aria-label": "Response" });
  const queue = h("div", {},
    h("table", { "aria-label": "Partitions" },
      h("thead", {}, h("tr", {}, ["Partition", "Queued", "Running", "Oldest", "Retries", "Dead letters"]
        .map((t, i) => h("th", { class: i ? "num" : "" }, t)))),
      partitions),
    dead);
  const note = h("p", { role: "status", "aria-label": "Last action" });
  root.append(
    h("h1", {}, "Background work"), error, note, queue,
    h("h2", {}, "A response"),
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); openResponse(responseId.value.trim()); } },
      field("Response id", responseId), h("button", { type: "submit" }, "Open response")),
    response,
  );

  let timer = null;
  let stopped = false;
  let stream = null; // the AbortController of a followed event stream
  let deadPartition = null;
  let shown = null; // the open response: {id, seq (its last event seen), status, cancel, events, text}

  // One read of the figures; false when the server has no such API (then no more polls).
  async function refresh() {
    const res = await api("/v1/admin/jobs");
    if (stopped) return false;
    if (res.status === 404) { queue.replaceChildren(notAvailable("The job queue view")); return false; }
    if (!res.ok) error.textContent = errorText(res);
    else { error.textContent = ""; renderPartitions(res.data.data); }
    return true;
  }

  async function poll() {
    if (await refresh()) timer = setTimeout(poll, POLL_MS);
  }

  function renderPartitions(list) {
    partitions.replaceChildren(...list.map((p) => h("tr", { dataset: { partition: p.partition } },
      h("td", {}, p.partition),
      h("td", { class: "num" }, String(p.depth)), h("td", { class: "num" }, String(p.running)),
      h("td", { class: "num" }, age(p.oldest_age_s)), h("td", { class: "num" }, String(p.retries)),
      h("td", { class: "num" }, p.dead
        ? h("button", { type: "button", class: "secondary", "aria-label": `Dead letters of ${p.partition}`, onclick: () => loadDead(p.partition, null) }, String(p.dead))
        : "0"))));
    if (!list.length) partitions.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No partitions.")));
  }

  async function loadDead(partition, after) {
    deadPartition = partition;
    const query = new URLSearchParams({ partition, limit: DEAD_PAGE });
    if (after) query.set("after", after);
    const res = await api("/v1/admin/jobs/dead?" + query);
    if (res.status === 404) { dead.hidden = false; dead.replaceChildren(notAvailable("The dead letter list")); return; }
    if (!res.ok) { error.textContent = errorText(res); return; }
    dead.hidden = false;
    const rows = res.data.data.map((d) => {
      const tr = h("tr", { dataset: { dead: d.id } },
        h("td", { class: "mono nowrap" }, d.id),
        h("td", {}, h("button", { type: "button", class: "secondary mono clip", title: d.response_id, "aria-label": `Open ${d.response_id}`, onclick: () => openResponse(d.response_id) }, d.response_id)),
        h("td", {}, d.tenant === "" ? "(operator)" : d.tenant),
        h("td", { class: "num" }, String(d.attempts)),
        h("td", {}, `${d.error?.code || ""}: ${d.error?.message || ""}`),
        h("td", {}, when(d.failed_at)),
        h("td", {},
          h("button", { type: "button", "aria-label": `Retry ${d.id}`, onclick: () => act("POST", d, "/retry", tr) }, "Retry"), " ",
          h("button", { type: "button", class: "danger", "aria-label": `Discard ${d.id}`, onclick: () => act("DELETE", d, "", tr) }, "Discard")));
      return tr;
    });
    dead.replaceChildren(
      h("h2", {}, `Dead letters of ${partition}`),
      h("table", { "aria-label": `Dead letters of ${partition}` },
        h("thead", {}, h("tr", {}, ["Job", "Response", "Tenant", "Attempts", "Error", "Failed", "Actions"].map((t) => h("th", {}, t)))),
        h("tbody", {}, rows.length ? rows : noDeadLetters())),
      res.data.has_more ? h("button", { type: "button", class: "secondary", onclick: () => loadDead(partition, res.data.next_after) }, "More dead letters") : "");
  }

  function noDeadLetters() {
    return h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No dead letters."));
  }

  async function act(method, letter, suffix, tr) {
    if (method === "DELETE" && !confirm(`Discard dead letter ${letter.id}? Its response stays failed.`)) return;
    const path = `/v1/admin/jobs/dead/${encodeURIComponent(letter.id)}${suffix}?partition=${encodeURIComponent(letter.partition || deadPartition)}`;
    const res = await api(path, { method });
    if (!res.ok) { error.textContent = errorText(res) + hint(res); return; }
    error.textContent = "";
    const body = tr.parentElement;
    tr.remove();
    if (body && !body.children.length) body.append(noDeadLetters());
    note.textContent = method === "POST"
      ? `Dead letter ${letter.id} retried: ${letter.response_id} is queued again.`
      : `Dead letter ${letter.id} discarded: ${letter.response_id} stays failed.`;
    refresh();
    // The open response was this one: its stream goes on after its response.failed event.
    if (method === "POST" && shown && shown.id === letter.response_id) {
      const current = shown;
      const fromStart = current.seq < 0;
      setStatus("queued");
      // Read from the start, the stream ends at the old response.failed: go on after it.
      if ((await follow()) === "response.failed" && fromStart && shown === current) follow();
    }
  }

  // What to do about a refused retry or discard (docs/admin-api.md).
  function hint(res) {
    const code = res.data?.error?.code;
    if (code === "response_expired") return " (its response has expired: discard the letter)";
    if (code === "queue_full") return ` (the queue is full: try again${res.headers.get("Retry-After") ? ` in ${res.headers.get("Retry-After")} s` : " later"})`;
    if (code === "dead_letter_not_found") return " (already retried or discarded)";
    return "";
  }

  async function openResponse(id) {
    if (!id) return;
    if (stream) stream.abort();
    responseId.value = id;
    const res = await api(`/v1/responses/${encodeURIComponent(id)}`);
    if (!res.ok) { shown = null; response.replaceChildren(h("p", { class: "error", role: "alert" }, errorText(res))); return; }
    showResponse(res.data);
  }

  function outputText(r) {
    return (r.output || []).flatMap((item) => (item.content || []).map((c) => c.text || "")).join("");
  }

  function showResponse(r) {
    const events = h("ol", { class: "transcript", "aria-label": "Response events" });
    const text = h("pre", { "aria-label": "Output" }, outputText(r));
    const status = h("span", { role: "status", "aria-label": "Response status" }, r.status);
    const cancelButton = h("button", { type: "button", class: "danger", onclick: () => cancel(r.id) }, "Cancel response");
    const failure = h("span");
    shown = { id: r.id, seq: -1, status, cancel: cancelButton, events, text, failure };
    setStatus(r.status, r.error);
    response.replaceChildren(
      h("p", {}, h("code", {}, r.id), " · ", r.model, " · ", status, failure),
      text,
      h("div", { class: "row" },
        h("button", { type: "button", class: "secondary", onclick: () => follow() }, "Follow events"),
        cancelButton),
      events);
  }

  // The status and error as the last answer or event had them (an event replayed from
  // the start carries the status of its moment).
  function setStatus(value, err = null) {
    shown.status.textContent = value;
    shown.cancel.disabled = !["queued", "in_progress"].includes(value);
    // agentd's own code when it has one (as the dead letter shows it), else OpenAI's.
    shown.failure.textContent = err ? ` · ${err.agentd_code || err.code}: ${err.message}` : "";
  }

  async function cancel(id) {
    const res = await api(`/v1/responses/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    if (!res.ok) { error.textContent = errorText(res); return; }
    if (shown && shown.id === id) setStatus(res.data.status, res.data.error);
  }

  // The open response's Server-Sent Events, read from fetch() (EventSource cannot send a
  // credential), from after the last one seen: a stream that ended on response.failed
  // goes on there once the response is retried. The last event's type when the stream
  // ended, null when it was refused or left.
  async function follow() {
    if (stream) stream.abort();
    const current = shown;
    const controller = new AbortController();
    stream = controller;
    const headers = { Accept: "text/event-stream" };
    if (getCredential()) headers.Authorization = "Bearer " + getCredential();
    const query = new URLSearchParams({ stream: "true" });
    if (current.seq >= 0) query.set("starting_after", current.seq);
    let res;
    try {
      res = await fetch(`/v1/responses/${encodeURIComponent(current.id)}?${query}`, { headers, signal: controller.signal });
    } catch { return null; }
    if (!res.ok) { error.textContent = `${res.status}: the event stream was refused`; return null; }
    let last = null;
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
          if (!data || data === "[DONE]") continue;
          let event;
          try { event = JSON.parse(data); } catch { continue; }
          if (typeof event.sequence_number === "number") current.seq = event.sequence_number;
          last = event.type;
          current.events.append(h("li", { class: "notice" }, event.type));
          // A new attempt's output starts afresh.
          if (event.type === "response.in_progress") current.text.textContent = "";
          if (event.type === "response.output_text.delta") current.text.textContent += event.delta;
          if (event.response?.status && shown === current) setStatus(event.response.status, event.response.error);
        }
      }
    } catch (err) {
      if (err.name !== "AbortError") error.textContent = `the event stream ended: ${err.message}`;
      return null;
    } finally {
      if (stream === controller) stream = null;
    }
    return last;
  }

  if (ctx.param) openResponse(ctx.param);
  poll();
  return () => { stopped = true; clearTimeout(timer); if (stream) stream.abort(); };
}
