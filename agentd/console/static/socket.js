// One session over agentd's WebSocket protocol (docs/protocol.md), kept alive across
// dropped connections: it reconnects with a growing pause and resumes with
// hello {session_id, after: the highest seq seen}, so every stored message arrives once.
import { getCredential } from "./api.js";

const MAX_PAUSE_MS = 5000;
// Sequence numbers remembered to drop a second copy of an event.
const SEEN_KEPT = 10000;
// Closes that reconnecting cannot mend: an expired or refused credential (docs/auth.md).
const FINAL_CODES = new Set([4001, 4003]);

export class SessionSocket {
  // handlers: {frame(f), status(state, detail), dropped(event)}
  constructor(handlers) {
    this.handlers = handlers;
    this.ws = null;
    this.sessionId = null;
    this.agent = null;
    this.lastSeq = 0;
    this.seen = new Set();
    this.stopped = true;
    this.attempt = 0;
    this.timer = null;
    this.connections = 0;
  }

  get ready() { return this.ws !== null && this.ws.readyState === WebSocket.OPEN && this.bound; }

  // Bind to a session (null: a new one); replays its whole history first.
  start(sessionId, agent) {
    this.stop();
    this.stopped = false;
    this.sessionId = sessionId;
    this.agent = agent;
    this.lastSeq = 0;
    this.seen = new Set();
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000, "closed by the console");
    }
  }

  // For tests and the "Drop connection" control: end the socket as a network would.
  drop() {
    if (this.ws) this.ws.close(4000, "dropped by the user");
  }

  send(frame) {
    if (!this.ready) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const protocols = ["agentd.v1"];
    const credential = getCredential();
    if (credential) protocols.push("bearer." + credential);
    this.bound = false;
    this.handlers.status(this.connections ? "reconnecting" : "connecting");
    const ws = new WebSocket(scheme + location.host + "/v1/ws", protocols);
    this.ws = ws;
    ws.onopen = () => {
      const hello = { type: "hello" };
      if (this.sessionId) {
        hello.session_id = this.sessionId;
        hello.after = this.lastSeq;
      }
      if (this.agent) hello.agent = this.agent;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws) return;
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      this.receive(frame);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return; // replaced or stopped on purpose
      this.ws = null;
      this.bound = false;
      if (this.stopped) return;
      this.handlers.dropped(event);
      if (FINAL_CODES.has(event.code)) {
        this.stopped = true;
        this.handlers.status("closed", event.reason || `closed with ${event.code}`);
        return;
      }
      const pause = Math.min(MAX_PAUSE_MS, 200 * 2 ** this.attempt++);
      this.handlers.status("reconnecting", `reconnecting in ${(pause / 1000).toFixed(1)} s`);
      this.timer = setTimeout(() => this.connect(), pause);
    };
  }

  receive(frame) {
    if (frame.type === "ready") {
      this.sessionId = frame.session_id;
      this.bound = true;
      this.attempt = 0;
      const resumed = this.connections > 0;
      this.connections += 1;
      this.handlers.status("open", resumed ? `resumed after #${this.lastSeq}` : "");
    } else if (frame.type === "event" && typeof frame.seq === "number") {
      if (this.seen.has(frame.seq)) return; // replayed and live copies meet once
      this.note(frame.seq);
    } else if (frame.type === "done" && typeof frame.seq === "number") {
      this.note(frame.seq);
    } else if (frame.type === "error" && frame.id === undefined && !this.bound) {
      // The hello itself was refused (an unknown session...): retrying cannot help.
      this.stopped = true;
      this.handlers.frame(frame);
      this.handlers.status("closed", frame.message);
      if (this.ws) this.ws.close(1000);
      return;
    }
    this.handlers.frame(frame);
  }

  note(seq) {
    this.seen.add(seq);
    if (seq > this.lastSeq) this.lastSeq = seq;
    // A long-lived busy session: forget what is far behind (no copy comes back that late).
    if (this.seen.size > SEEN_KEPT) {
      for (const old of this.seen) if (old < this.lastSeq - SEEN_KEPT / 2) this.seen.delete(old);
    }
  }
}
