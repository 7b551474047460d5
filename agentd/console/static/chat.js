// Chat: pick an agent, start or reopen a session, stream replies token by token, show
// tool calls as they run and what other connections add, and resume after a drop.
import { api, h, field, errorText } from "./api.js";
import { SessionSocket } from "./socket.js";

// Messages kept on the page; older ones stay in the session (the Sessions view reads them).
const MAX_SHOWN = 500;

function textOf(message) {
  const content = message.content;
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((p) => p.text || "").join("");
  if (message.tool_calls) {
    return message.tool_calls.map((c) => `${c.function.name}(${c.function.arguments})`).join("\n");
  }
  return "";
}

export function mount(root, ctx) {
  const agentSelect = h("select", { name: "agent" });
  const sessionInput = h("input", { name: "session", placeholder: "a session id", autocomplete: "off", class: "mono" });
  const status = h("span", { class: "status", role: "status", "aria-label": "Connection", dataset: { state: "closed" } }, "not connected");
  const sessionShown = h("code", { id: "session-id", "aria-label": "Session id" }, "—");
  const transcript = h("ol", { class: "transcript", role: "log", "aria-label": "Conversation", "aria-live": "polite" });
  const box = h("textarea", { rows: 3, name: "message", placeholder: "Write a message; Enter sends, Shift+Enter starts a new line" });
  const send = h("button", { type: "submit", disabled: true }, "Send");
  const stop = h("button", { type: "button", class: "secondary", disabled: true, onclick: cancelTurn }, "Stop");
  const error = h("p", { class: "error", role: "alert" });
  const form = h("form", { onsubmit: onSend }, field("Message", box), h("div", { class: "row" }, send, stop));

  const turns = new Map(); // frame id → the local turn
  const byTurnId = new Map(); // stored "turn" id → the local turn (while resuming)
  let counter = 0;
  const prefix = Math.random().toString(36).slice(2, 8);

  const socket = new SessionSocket({ frame: onFrame, status: onStatus, dropped: onDropped });

  root.append(
    h("h1", {}, "Chat"),
    h("div", { class: "row" },
      field("Agent", agentSelect),
      h("button", { type: "button", onclick: () => open(null) }, "New session"),
      field("Session", sessionInput),
      h("button", { type: "button", class: "secondary", onclick: () => open(sessionInput.value.trim()) }, "Open session"),
    ),
    h("p", {}, "Session ", sessionShown, " · ", status),
    transcript, error, form,
  );

  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  // New items are added once per frame, however many arrive in it (a busy session sends
  // hundreds a second): one layout and one scroll per frame, not one per message.
  let pending = [];
  let scheduled = false;
  // Whether to follow the end: true unless the reader scrolled up to read.
  let stick = true;
  transcript.addEventListener("scroll", () => {
    stick = transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 48;
  });

  function add(li) {
    pending.push(li);
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(flush);
    setTimeout(flush, 100); // rAF waits while the tab is hidden; the page still keeps up
  }

  function flush() {
    if (!scheduled) return;
    scheduled = false;
    transcript.append(...pending);
    pending = [];
    // The page keeps the last MAX_SHOWN messages; older ones stay in the session.
    let extra = transcript.childElementCount - MAX_SHOWN;
    const live = new Set([...turns.values()].flatMap((t) => [t.user.li, t.reply.li]));
    while (extra-- > 0 && !live.has(transcript.firstElementChild)) transcript.firstElementChild.remove();
    if (stick) transcript.scrollTop = transcript.scrollHeight;
  }

  function item(role, who, text, extra = {}) {
    const textEl = h("pre", { class: "text" }, text);
    const li = h("li", { class: "msg", dataset: { role, ...extra } }, h("span", { class: "who" }, who), textEl);
    add(li);
    return { li, textEl };
  }

  function notice(text) {
    add(h("li", { class: "notice" }, text));
  }

  function open(sessionId) {
    if (sessionId === "") { error.textContent = "Type a session id to open."; return; }
    error.textContent = "";
    transcript.replaceChildren();
    pending = [];
    stick = true;
    turns.clear();
    byTurnId.clear();
    sessionShown.textContent = sessionId || "(new)";
    socket.start(sessionId, agentSelect.value || null);
  }

  function onStatus(state, detail = "") {
    status.dataset.state = state;
    const words = { open: "connected", connecting: "connecting…", reconnecting: "reconnecting…", closed: "disconnected" };
    status.textContent = words[state] + (detail ? ` (${detail})` : "");
    send.disabled = state !== "open";
    if (state === "open") {
      sessionShown.textContent = socket.sessionId;
      sessionInput.value = socket.sessionId;
      const hash = "#chat/" + encodeURIComponent(socket.sessionId);
      // Only while the address still names this view: a socket that opens after the
      // user went to another view must not take the address (and the view) back.
      const [name] = location.hash.replace(/^#/, "").split("/");
      if ((name === "" || name === "chat") && location.hash !== hash) history.replaceState(null, "", hash);
      if (detail) notice(`Connection resumed after message #${socket.lastSeq}.`);
    }
  }

  function onDropped(event) {
    let waiting = 0;
    for (const turn of turns.values()) {
      if (turn.state === "streaming") {
        turn.state = "interrupted";
        turn.reply.li.dataset.streaming = "false";
        turn.reply.li.dataset.state = "interrupted";
        waiting += 1;
      }
    }
    notice(`Connection lost (${event.code}). ${waiting ? "The reply keeps running on the server; " : ""}resuming from message #${socket.lastSeq}…`);
    updateStop();
  }

  function onSend(event) {
    event.preventDefault();
    const text = box.value;
    if (!text.trim()) return;
    const id = `${prefix}-${++counter}`;
    const frame = { type: "message", id, content: text };
    if (agentSelect.value) frame.agent = agentSelect.value;
    if (!socket.send(frame)) { error.textContent = "Not connected: the message was not sent."; return; }
    error.textContent = "";
    box.value = "";
    const user = item("user", "you", text);
    const reply = item("assistant", agentSelect.value || "agent", "", { streaming: "true", state: "streaming" });
    turns.set(id, { id, content: text, user, reply, text: "", state: "streaming", turnId: null });
    updateStop();
  }

  function cancelTurn() {
    for (const turn of turns.values()) {
      if (turn.state === "streaming") socket.send({ type: "cancel", id: turn.id });
    }
  }

  function updateStop() {
    stop.disabled = ![...turns.values()].some((t) => t.state === "streaming");
  }

  function finish(turn, text, state = "done") {
    turn.state = state;
    turn.text = text;
    turn.reply.textEl.textContent = text;
    turn.reply.li.dataset.streaming = "false";
    turn.reply.li.dataset.state = state;
    turns.delete(turn.id); // over: no frame names it again
    if (turn.turnId) byTurnId.delete(turn.turnId);
    updateStop();
  }

  function toolItem(turn, label, text) {
    const textEl = h("pre", { class: "text" }, text);
    const li = h("li", { class: "msg tool", dataset: { role: "tool" } }, h("span", { class: "who" }, label), textEl);
    const waiting = turn ? pending.indexOf(turn.reply.li) : -1;
    if (waiting >= 0) pending.splice(waiting, 0, li); // the reply waits in this frame's batch
    else if (turn && turn.reply.li.parentNode) turn.reply.li.before(li);
    else add(li);
    return textEl;
  }

  function onFrame(frame) {
    const turn = frame.id !== undefined ? turns.get(frame.id) : undefined;
    switch (frame.type) {
      case "delta":
        if (turn && turn.state === "streaming") {
          turn.text += frame.content;
          turn.reply.textEl.textContent = turn.text;
          if (!scheduled) { scheduled = true; requestAnimationFrame(flush); setTimeout(flush, 100); }
        }
        break;
      case "done":
        if (turn) finish(turn, frame.message ? textOf(frame.message) : turn.text);
        break;
      case "tool_call":
        toolItem(turn, `tool call · ${frame.server}/${frame.name}`, frame.arguments || "");
        break;
      case "tool_result":
        toolItem(turn, `tool result · ${frame.name} · ${frame.outcome}${frame.is_error ? " (error)" : ""}`, frame.output || "");
        break;
      case "cancelled":
        if (turn) finish(turn, turn.text + " [stopped]", "cancelled");
        break;
      case "error":
        if (turn) finish(turn, turn.text, "error");
        error.textContent = `${frame.code}: ${frame.message}`;
        break;
      case "event":
        if (frame.message) onStored(frame.seq, frame.message);
        else notice(`event ${frame.event}: ${JSON.stringify(frame.data)}`);
        break;
      case "auth_expired":
        notice(`The credential expired; the connection closes in ${frame.closes_in_s} s. Sign in again.`);
        break;
      default:
        break;
    }
  }

  // A stored message from the replay or from another connection. After a drop, the
  // messages of this page's own interrupted turns come back this way: they complete
  // those turns rather than appear twice.
  function onStored(seq, message) {
    const interrupted = [...turns.values()].filter((t) => t.state === "interrupted");
    if (message.role === "user") {
      const mine = interrupted.find((t) => t.turnId === null && t.content === textOf(message));
      if (mine) {
        mine.turnId = message.turn;
        byTurnId.set(message.turn, mine);
        mine.user.li.dataset.seq = seq;
        return;
      }
    } else if (message.turn && byTurnId.has(message.turn)) {
      const mine = byTurnId.get(message.turn);
      if (message.role === "assistant" && !message.tool_calls) {
        finish(mine, textOf(message), message.status === "cancelled" ? "cancelled" : "done");
        mine.reply.li.dataset.seq = seq;
      } else {
        toolItem(mine, message.role === "tool" ? "tool result" : "tool call", textOf(message));
      }
      return;
    }
    const who = message.role === "user" ? "user (another connection)" : message.agent || message.role;
    const { li } = item(message.role, who, textOf(message));
    li.dataset.seq = seq;
  }

  (async () => {
    const res = await api("/v1/models");
    if (!res.ok) { error.textContent = errorText(res); return; }
    const allowed = ctx.me.agents;
    for (const model of res.data.data) {
      if (allowed && !allowed.includes(model.id)) continue;
      agentSelect.append(h("option", { value: model.id }, model.id));
    }
    open(ctx.param || null);
  })();

  return () => socket.stop();
}
