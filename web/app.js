/* sgpu console: endpoints, an endpoint's workers, charts and live logs, and
 * usage. Plain DOM code, no build step. Every API call carries the key the
 * user entered, which is kept in sessionStorage (this tab only). Data from
 * the server is only ever inserted as text, never as markup. */
"use strict";

const KEY_SLOT = "sgpu.key";
const MAX_LOG_LINES = 5000;
let cleanup = []; /* timers and streams of the current page, stopped on navigation */

const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function refs(root) {
  const out = {};
  root.querySelectorAll("[data-ref]").forEach((n) => { out[n.dataset.ref] = n; });
  return out;
}

function fmtNum(v, digits = 0) {
  if (v === null || v === undefined) return "-";
  return Number(v).toLocaleString(undefined, { minimumFractionDigits: digits, maximumFractionDigits: digits });
}
function fmtCost(v) {
  if (v === null || v === undefined) return "-";
  return v >= 1 ? v.toFixed(2) : v.toPrecision(3);
}
function fmtTime(iso) {
  if (!iso) return "-";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { hour12: false });
}

/* ---- the API ------------------------------------------------------------ */

class AuthError extends Error {}

function key() { return sessionStorage.getItem(KEY_SLOT); }

async function api(path, opts = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + key() }, opts.headers || {});
  const resp = await fetch(path, Object.assign({}, opts, { headers, cache: "no-store" }));
  if (resp.status === 401) throw new AuthError("the API key was refused");
  return resp;
}

async function apiJSON(path) {
  const resp = await api(path);
  const body = await resp.json().catch(() => null);
  if (!resp.ok) throw new Error((body && body.error && body.error.message) || resp.statusText);
  return body;
}

function handleError(err, target) {
  if (err instanceof AuthError) return logout("Your API key was refused; log in again.");
  if (err && err.name === "AbortError") return;
  if (target) target.textContent = "Error: " + err.message;
  console.error(err);
}

/* ---- login ---------------------------------------------------------------- */

function showLogin(message) {
  stopPage();
  $("#login").hidden = false;
  $("#view").replaceChildren();
  $("#nav").hidden = true;
  $("#logout").hidden = true;
  $("#login-error").textContent = message || "";
  $("#login-key").focus();
}

function logout(message) {
  sessionStorage.removeItem(KEY_SLOT);
  showLogin(message);
}

async function login(ev) {
  ev.preventDefault();
  const k = $("#login-key").value.trim();
  if (!k) return;
  sessionStorage.setItem(KEY_SLOT, k);
  try {
    await apiJSON("/v1/endpoints");
  } catch (err) {
    sessionStorage.removeItem(KEY_SLOT);
    $("#login-error").textContent = err instanceof AuthError ? "That key was refused." : "Error: " + err.message;
    return;
  }
  $("#login-key").value = "";
  route();
}

/* ---- pages ---------------------------------------------------------------- */

function stopPage() {
  for (const f of cleanup) f();
  cleanup = [];
}

function every(ms, fn) {
  let stopped = false;
  let timer = null;
  const run = async () => {
    if (stopped) return;
    try { await fn(); } catch (err) { handleError(err); }
    if (!stopped) timer = setTimeout(run, ms);
  };
  run();
  cleanup.push(() => { stopped = true; clearTimeout(timer); });
}

function mount(tplId) {
  const node = document.getElementById(tplId).content.cloneNode(true);
  const view = $("#view");
  view.replaceChildren(node);
  return refs(view);
}

function setNav(which) {
  document.querySelectorAll("#nav a").forEach((a) => {
    if (a.dataset.nav === which) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
}

function route() {
  stopPage();
  if (!key()) return showLogin();
  $("#login").hidden = true;
  $("#nav").hidden = false;
  $("#logout").hidden = false;
  const hash = location.hash || "#/";
  let m;
  if ((m = hash.match(/^#\/e\/([a-z0-9-]+)$/))) return endpointPage(m[1]);
  if (hash === "#/usage") return usagePage();
  return endpointsPage();
}

// The endpoint's state word as sgpud computes it (status.state: serving,
// starting, scaled_to_zero, crash_loop, image_pull_failed, unschedulable),
// as a CSS-friendly class suffix.
function endpointState(ep) {
  const s = ep.status || {};
  return (s.state || "unknown").replace(/_/g, "-");
}

function endpointsPage() {
  setNav("endpoints");
  document.title = "Endpoints · sgpu";
  const r = mount("tpl-endpoints");
  every(2000, async () => {
    const body = await apiJSON("/v1/endpoints");
    const rows = body.endpoints.map((ep) => {
      const s = ep.status || {};
      const w = s.workers || {};
      const state = endpointState(ep);
      const gpu = ep.gpu && ep.gpu.count ? ep.gpu.count + " × " + ep.gpu.type : "none";
      return el("tr", { "data-name": ep.name },
        el("td", {}, el("a", { href: "#/e/" + ep.name, text: ep.name })),
        el("td", { class: "state-" + state, text: s.state || "unknown" }),
        el("td", { class: "num", text: `${w.ready || 0} ready, ${w.starting || 0} starting` + (w.draining ? `, ${w.draining} draining` : "") }),
        el("td", { class: "num", text: s.desired }),
        el("td", { text: gpu }),
        el("td", { class: "num", text: s.in_flight }),
        el("td", { class: "num", text: s.queued }),
        el("td", { class: "num", text: fmtNum(s.served) }),
        el("td", { class: "num", text: ep.version }));
    });
    r.rows.replaceChildren(...rows);
    r.summary.textContent = body.endpoints.length ? `${body.endpoints.length} endpoint(s)` : "No endpoints yet: create one with `sgpu endpoint create`.";
  });
}

/* A line chart of series (arrays of numbers over t) on canvas. */
function drawChart(canvas, t, series) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  canvas.width = w * dpr;
  canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const styles = getComputedStyle(document.body);
  const fg = styles.color;
  const padL = 34, padB = 18, padT = 6, padR = 6;
  let max = 1;
  for (const s of series) for (const v of s.values) if (v > max) max = v;
  max = max <= 1 ? 1 : Math.ceil(max * 1.1);
  const now = Date.now(), t0 = now - 3600 * 1000;
  const x = (ts) => padL + ((ts - t0) / (now - t0)) * (w - padL - padR);
  const y = (v) => padT + (1 - v / max) * (h - padT - padB);
  g.strokeStyle = "rgba(128,128,128,.35)";
  g.fillStyle = fg;
  g.font = "11px system-ui, sans-serif";
  g.lineWidth = 1;
  for (const frac of [0, 0.5, 1]) {
    const v = max * frac;
    g.beginPath(); g.moveTo(padL, y(v)); g.lineTo(w - padR, y(v)); g.stroke();
    g.fillText(v >= 10 ? Math.round(v) : v.toFixed(1), 2, y(v) + 4);
  }
  g.fillText("-60m", padL, h - 4);
  g.fillText("-30m", x(now - 1800 * 1000) - 12, h - 4);
  g.fillText("now", w - padR - 22, h - 4);
  for (const s of series) {
    g.strokeStyle = s.color;
    g.lineWidth = 1.6;
    g.beginPath();
    let started = false;
    t.forEach((ts, i) => {
      if (ts < t0) return;
      const px = x(ts), py = y(s.values[i]);
      if (!started) { g.moveTo(px, py); started = true; } else g.lineTo(px, py);
    });
    g.stroke();
  }
}

function endpointPage(name) {
  setNav("endpoints");
  document.title = name + " · sgpu";
  const r = mount("tpl-endpoint");
  r.title.textContent = name;
  const workerIds = new Set();

  every(2000, async () => {
    const [ep, workers] = await Promise.all([
      apiJSON(`/v1/endpoints/${name}`), apiJSON(`/v1/endpoints/${name}/workers`)]);
    const s = ep.status || {};
    const w = s.workers || {};
    r.status.textContent = `${s.state || "unknown"} · version ${ep.version} · ${w.ready || 0} ready, ${w.starting || 0} starting · desired ${s.desired} · ` +
      `${s.in_flight} in flight, ${s.queued} queued · ${fmtNum(s.served)} served` + (s.last_error ? ` · last error: ${s.last_error}` : "");
    const spec = Object.assign({}, ep);
    delete spec.status;
    r.spec.textContent = JSON.stringify(spec, null, 2);
    r.workers.replaceChildren(...workers.workers.slice().reverse().map((wk) => el("tr", { "data-worker": wk.id },
      el("td", { text: wk.id }),
      el("td", { class: "state-" + wk.state, text: wk.state }),
      el("td", { text: wk.gpus.length ? wk.gpus.join(",") + (wk.gpu_type ? " (" + wk.gpu_type + ")" : "") : "none" }),
      el("td", { class: "num", text: wk.cold_start_ms === null ? "-" : wk.cold_start_ms + " ms" }),
      el("td", { class: "num", text: wk.in_flight }),
      el("td", { class: "num", text: fmtNum(wk.served) }),
      el("td", { text: fmtTime(wk.started_at) }),
      el("td", { text: fmtTime(wk.ended_at) }),
      el("td", { text: wk.last_error || "" }))));
    for (const wk of workers.workers) {
      if (workerIds.has(wk.id)) continue;
      workerIds.add(wk.id);
      r.worker.append(el("option", { value: wk.id, text: wk.id }));
    }
  });

  every(5000, async () => {
    const s = await apiJSON(`/v1/endpoints/${name}/series`);
    drawChart(r["chart-rps"], s.t, [{ values: s.requests_per_s, color: "#2f7de1" }]);
    drawChart(r["chart-queue"], s.t, [{ values: s.queue, color: "#d9822b" }]);
    drawChart(r["chart-workers"], s.t, [{ values: s.workers, color: "#7b5cd6" }, { values: s.ready, color: "#2e9b56" }]);
  });

  logPanel(name, r);
}

/* ---- the log panel --------------------------------------------------------- */

function logPanel(name, r) {
  let controller = null;
  let paused = false;
  let held = [];  /* lines that came while paused */
  let mode = "live";

  const lineNode = (l) => {
    const t = new Date(l.ts);
    const stamp = t.toISOString().replace("T", " ").replace("Z", "");
    return el("span", { class: "line " + l.stream, "data-ts": l.ts, "data-worker": l.worker || "", "data-stream": l.stream },
      el("span", { class: "ts", text: stamp + " " }),
      el("span", { class: "wk", text: (l.worker || "sgpud") + " " }),
      el("span", { class: "st", text: l.stream + " " }),
      el("span", { class: "text", text: l.line }));
  };

  const append = (lines) => {
    if (!lines.length) return;
    const box = r.lines;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    const frag = document.createDocumentFragment();
    for (const l of lines) frag.append(lineNode(l));
    box.append(frag);
    while (box.childElementCount > MAX_LOG_LINES) box.firstElementChild.remove();
    if (atBottom) box.scrollTop = box.scrollHeight;
  };

  const setState = (text) => { r.state.textContent = text; };

  const params = () => {
    const p = new URLSearchParams();
    if (r.worker.value) p.set("worker", r.worker.value);
    if (r.stream.value) p.set("stream", r.stream.value);
    if (r.text.value) p.set("q", r.text.value);
    return p;
  };

  const stop = () => { if (controller) controller.abort(); controller = null; };
  cleanup.push(stop);

  const follow = async () => {
    stop();
    mode = "live";
    held = [];
    r.lines.replaceChildren();
    const p = params();
    p.set("follow", "1");
    p.set("limit", "300");
    const ctrl = new AbortController();
    controller = ctrl;
    setState(paused ? "paused" : "live");
    try {
      const resp = await api(`/v1/endpoints/${name}/logs?${p}`, { signal: ctrl.signal });
      if (!resp.ok) throw new Error((await resp.json()).error.message);
      const reader = resp.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        const parts = buf.split("\n");
        buf = parts.pop();
        const lines = [];
        for (const part of parts) {
          if (!part.trim()) continue; /* keep-alive */
          try { lines.push(JSON.parse(part)); } catch (e) { /* a partial line */ }
        }
        if (paused) {
          held.push(...lines);
          if (held.length > MAX_LOG_LINES) held.splice(0, held.length - MAX_LOG_LINES);
          setState(`paused · ${held.length} new line(s) waiting`);
        } else {
          append(lines);
        }
      }
      if (controller === ctrl) setState("stream ended; press Live to reconnect");
    } catch (err) {
      if (err.name !== "AbortError") { handleError(err, r.state); }
    }
  };

  const jump = async () => {
    if (!r.time.value) return;
    stop();
    mode = "history";
    const since = new Date(r.time.value).getTime();
    const p = params();
    p.set("since", String(since));
    p.set("order", "oldest");
    p.set("limit", "1000");
    try {
      const resp = await api(`/v1/endpoints/${name}/logs?${p}`);
      const text = await resp.text();
      if (!resp.ok) throw new Error(JSON.parse(text).error.message);
      const lines = text.split("\n").filter((x) => x.trim()).map((x) => JSON.parse(x));
      r.lines.replaceChildren();
      append(lines);
      r.lines.scrollTop = 0;
      setState(`showing ${lines.length} line(s) from ${new Date(since).toLocaleString(undefined, { hour12: false })}; press Live to follow`);
    } catch (err) {
      handleError(err, r.state);
    }
  };

  let debounce = null;
  const refilter = () => {
    clearTimeout(debounce);
    stop();
    r.lines.replaceChildren();
    setState("loading…");
    debounce = setTimeout(() => (mode === "history" ? jump() : follow()), 250);
  };
  cleanup.push(() => clearTimeout(debounce));
  r.worker.addEventListener("change", refilter);
  r.stream.addEventListener("change", refilter);
  r.text.addEventListener("input", refilter);
  r.logform.addEventListener("submit", (ev) => { ev.preventDefault(); refilter(); });
  r.jump.addEventListener("click", jump);
  r.live.addEventListener("click", () => { paused = false; r.pause.setAttribute("aria-pressed", "false"); r.pause.textContent = "Pause"; follow(); });
  r.pause.addEventListener("click", () => {
    paused = !paused;
    r.pause.setAttribute("aria-pressed", String(paused));
    r.pause.textContent = paused ? "Resume" : "Pause";
    if (!paused) {
      append(held);
      held = [];
      setState(mode === "live" ? "live" : r.state.textContent);
    } else {
      setState("paused");
    }
  });
  follow();
}

/* ---- usage ------------------------------------------------------------------ */

function usagePage() {
  setNav("usage");
  document.title = "Usage · sgpu";
  const r = mount("tpl-usage");
  const load = async () => {
    const u = await apiJSON(`/v1/usage?from=${r.range.value}&group=day`);
    const t = u.total;
    r.cost.textContent = fmtCost(t.cost);
    r.gpu.textContent = fmtNum(t.gpu_seconds, 1);
    r.requests.textContent = fmtNum(t.requests);
    r.per1k.textContent = fmtCost(t.cost_per_1k_requests);
    const prices = Object.entries(u.prices).filter(([, v]) => v > 0).map(([k, v]) => `${k}: ${v} / GPU-second`);
    r.prices.textContent = prices.length ? "Prices: " + prices.join(", ") : "No prices set (sgpud --price)";
    r.endpoints.replaceChildren(...u.endpoints.map((e) => el("tr", { "data-endpoint": e.endpoint },
      el("td", { text: e.endpoint }),
      el("td", { text: e.gpu_count ? `${e.gpu_count} × ${e.gpu_type}` : "none" }),
      el("td", { class: "num", text: fmtNum(e.gpu_seconds, 1) }),
      el("td", { class: "num", text: fmtNum(e.seconds.starting, 1) }),
      el("td", { class: "num", text: fmtNum(e.seconds.busy, 1) }),
      el("td", { class: "num", text: fmtNum(e.seconds.idle, 1) }),
      el("td", { class: "num", text: fmtNum(e.requests) }),
      el("td", { class: "num cost", text: fmtCost(e.cost) }),
      el("td", { class: "num", text: fmtCost(e.cost_per_1k_requests) }))));
    const groups = u.groups.slice().sort((a, b) => b.ts - a.ts || a.endpoint.localeCompare(b.endpoint));
    r.days.replaceChildren(...groups.map((g) => el("tr", {},
      el("td", { text: g.start.slice(0, 10) }),
      el("td", { text: g.endpoint }),
      el("td", { class: "num", text: fmtNum(g.gpu_seconds, 1) }),
      el("td", { class: "num", text: fmtNum(g.requests) }),
      el("td", { class: "num", text: fmtCost(g.cost) }))));
    drawBars(r.chart, groups);
  };
  r.range.addEventListener("change", () => load().catch(handleError));
  every(5000, load);
}

function drawBars(canvas, groups) {
  const byDay = new Map();
  for (const g of groups) byDay.set(g.ts, (byDay.get(g.ts) || 0) + g.cost);
  const days = [...byDay.keys()].sort((a, b) => a - b);
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  canvas.width = w * dpr;
  canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  g.fillStyle = getComputedStyle(document.body).color;
  g.font = "11px system-ui, sans-serif";
  if (!days.length) { g.fillText("no usage in this period", 10, h / 2); return; }
  const max = Math.max(...byDay.values()) || 1;
  const bw = Math.min(60, (w - 20) / days.length - 6);
  days.forEach((d, i) => {
    const v = byDay.get(d);
    const bh = (v / max) * (h - 36);
    const x0 = 10 + i * (bw + 6);
    g.fillStyle = "#2f7de1";
    g.fillRect(x0, h - 18 - bh, bw, bh);
    g.fillStyle = getComputedStyle(document.body).color;
    g.fillText(new Date(d).toISOString().slice(5, 10), x0, h - 4);
    g.fillText(fmtCost(v), x0, h - 22 - bh);
  });
}

/* ---- start ------------------------------------------------------------------ */

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", () => logout());
  window.addEventListener("hashchange", route);
  route();
});
