// Small live charts on a canvas: a few series of recent values, redrawn on each sample.
// The card's text (and the canvas's label) carries the latest values for screen readers.
import { h } from "./api.js";

const POINTS = 90; // samples kept: 2-3 minutes at one poll every 1.5 s
const COLORS = ["--accent", "--warn", "--ok", "--error"];

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

function format(value, unit) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  // A count (WebSocket connections) reads as one: "open 3", not "open 3.00".
  const digits = Number.isInteger(value) || Math.abs(value) >= 100 ? 0 : Math.abs(value) >= 10 ? 1 : 2;
  return value.toFixed(digits) + (unit ? " " + unit : "");
}

export class Chart {
  // names: the series' names; unit: shown after values ("/s", "ms", "%").
  constructor(title, names, unit = "") {
    this.title = title;
    this.names = names;
    this.unit = unit;
    this.series = names.map(() => []);
    this.samples = 0; // all samples pushed (data-samples: a live chart's count goes on)
    this.canvas = h("canvas", { role: "img", "aria-label": `${title}: no data yet`, width: 300, height: 80 });
    this.legend = h("p", { class: "legend" }, "waiting for a second sample…");
    this.element = h("div", { class: "card", dataset: { chart: title } }, h("h3", {}, title), this.canvas, this.legend);
  }

  push(values) {
    values.forEach((v, i) => {
      this.series[i].push(v);
      if (this.series[i].length > POINTS) this.series[i].shift();
    });
    this.element.dataset.samples = String(++this.samples);
    const text = this.names.map((n, i) => `${n} ${format(values[i], this.unit)}`).join(" · ");
    this.legend.textContent = text;
    this.canvas.setAttribute("aria-label", `${this.title}: ${text}`);
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 300;
    const height = canvas.clientHeight || 80;
    if (canvas.width !== Math.round(width * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const all = this.series.flat().filter((v) => v !== null && !Number.isNaN(v));
    const top = Math.max(1e-9, ...all) * 1.1;
    g.strokeStyle = css("--line");
    g.lineWidth = 1;
    g.beginPath();
    g.moveTo(0, height - 0.5);
    g.lineTo(width, height - 0.5);
    g.stroke();
    g.fillStyle = css("--muted");
    g.font = "10px system-ui, sans-serif";
    g.fillText(format(top / 1.1, this.unit), 2, 10);
    this.series.forEach((points, i) => {
      g.strokeStyle = css(COLORS[i % COLORS.length]);
      g.lineWidth = 1.5;
      g.beginPath();
      let started = false;
      points.forEach((v, j) => {
        if (v === null || Number.isNaN(v)) { started = false; return; }
        const x = (width * (j + POINTS - points.length)) / (POINTS - 1);
        const y = height - 2 - ((height - 14) * v) / top;
        if (started) g.lineTo(x, y); else g.moveTo(x, y);
        started = true;
      });
      g.stroke();
    });
  }
}

// Rates from monotonic counters: the increase per second between two polls. A counter
// that went down belongs to a restarted worker: its new value is its increase.
export function increase(now, before) {
  if (before === undefined || before === null || now === undefined || now === null) return null;
  return now >= before ? now - before : now;
}
