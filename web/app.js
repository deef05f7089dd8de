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
  if ((m = hash.match(/^#\/e\/([a-z0-9-]+)\/edit$/))) return endpointFormPage(m[1]);
  if (hash === "#/new") return endpointFormPage(null);
  if (hash === "#/usage") return usagePage();
  if (hash === "#/images") return imagesPage();
  if (hash === "#/registry") return registryPage();
  if (hash === "#/keys") return keysPage();
  if (hash === "#/secrets") return secretsPage();
  if (hash === "#/volumes") return volumesPage();
  return endpointsPage();
}

// The endpoint's state word as sgpud computes it (status.state: serving,
// starting, scaled_to_zero, crash_loop, image_pull_failed, unschedulable),
// as a CSS-friendly class suffix.
function endpointState(ep) {
  const s = ep.status || {};
  return (s.state || "unknown").replace(/_/g, "-");
}

// The state in words, as the API's status.state says it; "updating" while a
// rolling replacement runs (live workers of an older version remain).
function stateWords(ep) {
  const s = ep.status || {};
  const words = (s.state || "unknown").replace(/_/g, " ");
  return s.workers && s.workers.outdated > 0 ? words + ", updating" : words;
}

function endpointsPage() {
  setNav("endpoints");
  document.title = "Endpoints · sgpu";
  const r = mount("tpl-endpoints");
  r.flash.textContent = flash;
  flash = "";
  every(2000, async () => {
    const body = await apiJSON("/v1/endpoints");
    const rows = body.endpoints.map((ep) => {
      const s = ep.status || {};
      const w = s.workers || {};
      const state = endpointState(ep);
      const gpu = ep.gpu && ep.gpu.count ? ep.gpu.count + " × " + ep.gpu.type : "none";
      return el("tr", { "data-name": ep.name },
        el("td", {}, el("a", { href: "#/e/" + ep.name, text: ep.name })),
        el("td", { class: "state-" + state, text: stateWords(ep) }),
        el("td", { class: "num", text: `${w.ready || 0} ready, ${w.starting || 0} starting` + (w.draining ? `, ${w.draining} draining` : "") }),
        el("td", { class: "num", text: s.desired }),
        el("td", { text: gpu }),
        el("td", { class: "num", text: s.in_flight }),
        el("td", { class: "num", text: s.queued }),
        el("td", { class: "num", text: fmtNum(s.served) }),
        el("td", { class: "num", text: ep.version }));
    });
    r.rows.replaceChildren(...rows);
    r.summary.textContent = body.endpoints.length ? `${body.endpoints.length} endpoint(s)` : "No endpoints yet: create one with New endpoint (or `sgpu endpoint create`).";
  });
}

/* A line chart of series (arrays of numbers over t) on canvas, over the
 * last rangeS seconds. */
function fmtAgo(sec) {
  if (sec >= 86400) return "-" + Math.round(sec / 86400) + "d";
  if (sec >= 3600) return "-" + Math.round(sec / 3600) + "h";
  return "-" + Math.round(sec / 60) + "m";
}

function drawChart(canvas, t, series, rangeS = 3600) {
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
  const now = Date.now(), t0 = now - rangeS * 1000;
  let max = 1;
  for (const s of series) s.values.forEach((v, i) => { if (t[i] >= t0 && v > max) max = v; });
  max = max <= 1 ? 1 : Math.ceil(max * 1.1);
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
  g.fillText(fmtAgo(rangeS), padL, h - 4);
  g.fillText(fmtAgo(rangeS / 2), x(now - rangeS * 500) - 12, h - 4);
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

let flash = ""; /* a message for the next page (after a save or a delete) */

/* A field error from the API: {"error": {"code", "message", "field"}}. */
async function errorBody(resp) {
  const body = await resp.json().catch(() => null);
  const e = (body && body.error) || {};
  return { status: resp.status, code: e.code || String(resp.status), message: e.message || resp.statusText, field: e.field || null };
}

/* Shows an API error beside the control whose data-field names error.field
 * (or, for none, in the form's own error line). */
function showFieldError(form, err, general) {
  form.querySelectorAll("[aria-invalid]").forEach((n) => n.removeAttribute("aria-invalid"));
  form.querySelectorAll(".field-error").forEach((n) => { n.textContent = ""; });
  general.textContent = "";
  if (!err) return;
  const target = err.field ? [...form.querySelectorAll("[data-field]")].find((n) => n.dataset.field === err.field) : null;
  if (target) {
    target.setAttribute("aria-invalid", "true");
    const slot = document.getElementById(target.getAttribute("aria-describedby"));
    if (slot) slot.textContent = err.message;
    target.focus();
  } else {
    general.textContent = "Error: " + err.message;
  }
}

let fieldSeq = 0;
/* A labelled control with its error slot; the label's text finds it. */
function field(labelText, control, fieldName) {
  const n = ++fieldSeq;
  const errId = "ferr-" + n;
  if (fieldName) control.dataset.field = fieldName;
  if (!control.id) control.id = "f-" + n;
  control.setAttribute("aria-describedby", errId);
  return el("div", { class: "field" }, el("label", { for: control.id, text: labelText }), control,
    el("span", { class: "error field-error", id: errId, "aria-live": "polite" }));
}

function select(options, value) {
  const s = el("select");
  for (const [v, text] of options) s.append(el("option", { value: v, text }));
  if (value !== undefined && value !== null) s.value = String(value);
  return s;
}

function input(type, value, extra = {}) {
  const i = el("input", Object.assign({ type }, extra));
  if (value !== undefined && value !== null) i.value = String(value);
  return i;
}

/* Spec fields that running workers follow; a change of any other field
 * replaces the workers (see docs/API.md, Updates). */
const LIVE_FIELDS = new Set(["workers", "scale", "health", "async"]);
const NOT_SPEC = ["status", "version", "created_at", "updated_at", "workers_restart"];

function endpointFormPage(name) {
  setNav("endpoints");
  document.title = (name ? "Edit " + name : "New endpoint") + " · sgpu";
  const view = $("#view");
  view.replaceChildren(el("p", {}, el("a", { href: name ? "#/e/" + name : "#/", text: "← " + (name ? name : "Endpoints") })),
    el("h1", { text: name ? "Edit " + name : "New endpoint" }), el("p", { class: "muted", text: "Loading…" }));
  const build = (base) => {
    const b = base || {};
    const pick = (obj, k) => (obj && obj[k] !== undefined ? obj[k] : null);
    const f = {
      name: input("text", b.name, { required: "", spellcheck: "false", autocomplete: "off" }),
      type: select([["sync", "sync (requests on /e/NAME/...)"], ["async", "async (jobs on /v2/NAME/...)"]], b.type || "sync"),
      protocol: select([["http", "http (jobs POSTed to the worker)"], ["runpod", "runpod (workers take jobs, RunPod SDK)"]], pick(b.async, "protocol") || "http"),
      runtime: select([["", "default (oci with an image, else process)"], ["process", "process"], ["oci", "oci"], ["slurm", "slurm"]], b.runtime || ""),
      image: input("text", b.image, { spellcheck: "false", placeholder: "e.g. ghcr.io/org/model:tag" }),
      command: el("textarea", { rows: "3", spellcheck: "false", placeholder: "/path/to/worker\n--port\n$PORT" }),
      gpuCount: input("number", b.gpu ? b.gpu.count : 0, { min: "0", max: "16", step: "1" }),
      gpuType: input("text", pick(b.gpu, "type"), { spellcheck: "false", placeholder: "e.g. a100" }),
      wMin: input("number", pick(b.workers, "min"), { min: "0", step: "1" }),
      wMax: input("number", pick(b.workers, "max"), { min: "1", step: "1" }),
      wIdle: input("number", pick(b.workers, "idle_timeout_s"), { min: "0", step: "any" }),
      wConc: input("number", pick(b.workers, "max_concurrency"), { min: "1", step: "1" }),
      policy: select([["concurrency", "concurrency (requests per worker)"], ["queue_delay", "queue delay (seconds)"]], pick(b.scale, "policy") || "concurrency"),
      scaleValue: input("number", pick(b.scale, "value"), { min: "0", step: "any" }),
      health: input("text", pick(b.health, "path"), { spellcheck: "false", placeholder: "/health" }),
    };
    f.command.value = (b.command || []).join("\n");
    if (name) f.name.readOnly = true;
    const envRows = el("div", { class: "env-rows" });
    let envSeq = 0;
    const addEnv = (k = "", v = "") => {
      const n = ++envSeq;
      const isSecret = v && typeof v === "object";
      const kIn = input("text", k, { spellcheck: "false", class: "env-name" });
      const kind = select([["value", "plain value"], ["secret", "secret reference"]], isSecret ? "secret" : "value");
      kind.className = "env-kind";
      const vIn = input("text", isSecret ? v.secret : v, { spellcheck: "false", class: "env-value" });
      const row = el("div", { class: "env-row" }, field(`Variable ${n} name`, kIn), field(`Variable ${n} kind`, kind),
        field(`Variable ${n} value or secret name`, vIn));
      const rm = el("button", { type: "button", class: "secondary", text: `Remove variable ${n}` });
      rm.addEventListener("click", () => { row.remove(); updateDiff(); });
      row.append(rm);
      envRows.append(row);
    };
    for (const [k, v] of Object.entries(b.env || {})) addEnv(k, v);
    const volRows = el("div", { class: "env-rows" });
    let volSeq = 0;
    const addVol = (v = {}) => {
      const n = ++volSeq;
      const kind = select([["name", "named volume"], ["host_path", "host path"]], v.host_path ? "host_path" : "name");
      kind.className = "vol-kind";
      const src = input("text", v.host_path || v.name, { spellcheck: "false", class: "vol-source" });
      const at = input("text", v.path, { spellcheck: "false", class: "vol-path", placeholder: "/data" });
      const ro = input("checkbox", null, { class: "vol-ro" });
      ro.checked = !!v.read_only;
      const row = el("div", { class: "env-row vol-row" }, field(`Volume ${n} kind`, kind),
        field(`Volume ${n} name or host path`, src), field(`Volume ${n} path`, at), field(`Volume ${n} read only`, ro));
      const rm = el("button", { type: "button", class: "secondary", text: `Remove volume ${n}` });
      rm.addEventListener("click", () => { row.remove(); updateDiff(); });
      row.append(rm);
      volRows.append(row);
    };
    for (const v of b.volumes || []) addVol(v);
    const addVolBtn = el("button", { type: "button", class: "secondary", text: "Add volume" });
    addVolBtn.addEventListener("click", () => { addVol(); volRows.lastElementChild.querySelector("input").focus(); });
    const addBtn = el("button", { type: "button", class: "secondary", text: "Add variable" });
    addBtn.addEventListener("click", () => { addEnv(); envRows.lastElementChild.querySelector("input").focus(); });
    const general = el("p", { class: "error", role: "alert" });
    const diff = el("div", { class: "diff", id: "restart-note", role: "status" });
    const asyncBox = el("div", { class: "row" }, field("Async protocol", f.protocol, "async.protocol"));
    const submit = el("button", { type: "submit", id: "ep-save", text: name ? "Save changes" : "Create endpoint" });
    const form = el("form", { class: "card form", id: "endpoint-form", novalidate: "" },
      el("fieldset", {}, el("legend", { text: "Endpoint" }),
        el("div", { class: "row" }, field("Name", f.name, "name"), field("Type", f.type, "type")), asyncBox),
      el("fieldset", {}, el("legend", { text: "What runs" }),
        el("div", { class: "row" }, field("Runtime", f.runtime, "runtime"), field("Image", f.image, "image")),
        field("Command (one argument a line)", f.command, "command"),
        field("Health check path", f.health, "health.path")),
      el("fieldset", {}, el("legend", { text: "GPUs" }),
        el("div", { class: "row" }, field("GPU count", f.gpuCount, "gpu.count"), field("GPU type", f.gpuType, "gpu.type"))),
      el("fieldset", {}, el("legend", { text: "Workers and scaling" }),
        el("div", { class: "row" }, field("Minimum workers", f.wMin, "workers.min"), field("Maximum workers", f.wMax, "workers.max"),
          field("Idle timeout (s)", f.wIdle, "workers.idle_timeout_s"), field("Max concurrency", f.wConc, "workers.max_concurrency")),
        el("div", { class: "row" }, field("Scale policy", f.policy, "scale.policy"), field("Scale value", f.scaleValue, "scale.value"))),
      el("fieldset", {}, el("legend", { text: "Environment" }), envRows, addBtn),
      el("fieldset", {}, el("legend", { text: "Volumes" }), volRows, addVolBtn),
      diff, general, submit);
    const showAsync = () => { asyncBox.hidden = f.type.value !== "async"; };
    f.type.addEventListener("change", showAsync);
    showAsync();

    const num = (i) => (i.value === "" ? undefined : Number(i.value));
    const setIn = (obj, k, v) => { if (v === undefined) delete obj[k]; else obj[k] = v; };
    const read = () => {
      const spec = base ? JSON.parse(JSON.stringify(base)) : {};
      for (const k of NOT_SPEC) delete spec[k];
      spec.name = f.name.value.trim();
      spec.type = f.type.value;
      setIn(spec, "runtime", f.runtime.value || undefined);
      setIn(spec, "image", f.image.value.trim() || undefined);
      const cmd = f.command.value.split("\n").map((x) => x.trim()).filter((x) => x);
      setIn(spec, "command", cmd.length ? cmd : undefined);
      const gpu = Object.assign({}, spec.gpu || {});
      setIn(gpu, "count", num(f.gpuCount));
      const gt = f.gpuType.value.trim();
      if (gt) gpu.type = gt; else if (gpu.type !== undefined) gpu.type = null; /* as GET shows "no type" */
      setIn(spec, "gpu", Object.keys(gpu).length ? gpu : undefined);
      const w = Object.assign({}, spec.workers || {});
      setIn(w, "min", num(f.wMin));
      setIn(w, "max", num(f.wMax));
      setIn(w, "idle_timeout_s", num(f.wIdle));
      setIn(w, "max_concurrency", num(f.wConc));
      setIn(spec, "workers", Object.keys(w).length ? w : undefined);
      const sc = Object.assign({}, spec.scale || {});
      sc.policy = f.policy.value;
      setIn(sc, "value", num(f.scaleValue));
      spec.scale = sc;
      const h = Object.assign({}, spec.health || {});
      const hp = f.health.value.trim();
      if (hp) h.path = hp; else if (base) h.path = null; else delete h.path;
      setIn(spec, "health", Object.keys(h).length ? h : undefined);
      const env = {};
      envRows.querySelectorAll(".env-row").forEach((row) => {
        const k = row.querySelector(".env-name").value.trim();
        const v = row.querySelector(".env-value");
        v.dataset.field = "env." + k;
        if (!k) return;
        env[k] = row.querySelector(".env-kind").value === "secret" ? { secret: v.value.trim() } : v.value;
      });
      setIn(spec, "env", Object.keys(env).length || base ? env : undefined);
      const vols = [];
      volRows.querySelectorAll(".vol-row").forEach((row) => {
        const kind = row.querySelector(".vol-kind").value;
        const src = row.querySelector(".vol-source"), at = row.querySelector(".vol-path"), ro = row.querySelector(".vol-ro");
        if (!src.value.trim() && !at.value.trim()) return;
        const i = vols.length;
        src.dataset.field = `volumes[${i}].${kind}`;
        at.dataset.field = `volumes[${i}].path`;
        ro.dataset.field = `volumes[${i}].read_only`;
        vols.push({ [kind]: src.value.trim(), path: at.value.trim(), read_only: ro.checked });
      });
      setIn(spec, "volumes", vols.length ? vols : undefined);
      if (spec.type === "async") spec.async = Object.assign({}, spec.async || {}, { protocol: f.protocol.value });
      else delete spec.async;
      return spec;
    };
    const updateDiff = () => {
      if (!base) { diff.textContent = ""; return; }
      const now = read(), was = JSON.parse(JSON.stringify(base));
      for (const k of NOT_SPEC) delete was[k];
      const keys = new Set([...Object.keys(now), ...Object.keys(was)]);
      const live = [], restart = [];
      for (const k of keys) {
        if (JSON.stringify(now[k] === undefined ? null : now[k]) === JSON.stringify(was[k] === undefined ? null : was[k])) continue;
        (LIVE_FIELDS.has(k) ? live : restart).push(k);
      }
      if (!live.length && !restart.length) diff.textContent = "No changes yet. Changes of workers, scale, health and async apply live; any other change restarts the workers (one by one).";
      else diff.textContent = (restart.length ? `Restarts the workers (rolling replacement): ${restart.join(", ")}. ` : "No worker restarts. ") +
        (live.length ? `Applies live: ${live.join(", ")}.` : "");
    };
    form.addEventListener("input", updateDiff);
    form.addEventListener("change", updateDiff);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      showFieldError(form, null, general);
      const spec = read();
      submit.disabled = true;
      try {
        const resp = await api(name ? `/v1/endpoints/${name}` : "/v1/endpoints", {
          method: name ? "PUT" : "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(spec) });
        if (!resp.ok) { showFieldError(form, await errorBody(resp), general); return; }
        const ep = await resp.json();
        flash = name ? `Saved as version ${ep.version}; ` + (ep.workers_restart ? "the workers are being replaced one by one." : "the running workers keep running (applied live).")
          : `Created ${ep.name}.`;
        location.hash = "#/e/" + ep.name;
      } catch (err) {
        handleError(err, general);
      } finally {
        submit.disabled = false;
      }
    });
    updateDiff();
    view.replaceChildren(view.firstChild, view.children[1], form);
    if (!name) f.name.focus();
  };
  if (!name) return build(null);
  apiJSON(`/v1/endpoints/${name}`).then(build).catch((err) => handleError(err, view.lastChild));
}

/* ---- an endpoint's page ------------------------------------------------------ */

function copyBlock(label, text) {
  const pre = el("pre", { class: "code", tabindex: "0", "aria-label": label, text });
  const btn = el("button", { type: "button", class: "secondary", text: "Copy " + label });
  const done = el("span", { class: "muted", role: "status" });
  btn.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      done.textContent = "copied";
    } catch (e) {
      const range = document.createRange();
      range.selectNodeContents(pre);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      done.textContent = "selected: press Ctrl+C";
    }
  });
  return el("div", { class: "copy" }, el("h3", { text: label }), pre, btn, done);
}

const FINAL_JOB = new Set(["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"]);

function syncTester(name, box) {
  const method = select(["GET", "POST", "PUT", "DELETE", "PATCH"].map((m) => [m, m]), "POST");
  const path = input("text", "/", { spellcheck: "false" });
  const body = el("textarea", { rows: "4", spellcheck: "false" });
  body.value = '{"prompt": "hello"}';
  const general = el("p", { class: "error", role: "alert" });
  const status = el("p", { id: "test-status", role: "status" });
  const out = el("pre", { class: "code", id: "test-body", tabindex: "0", "aria-label": "answer body" });
  const form = el("form", { class: "card form", id: "test-form" },
    el("div", { class: "row" }, field("Method", method), field("Path", path)),
    field("Request body", body), el("button", { type: "submit", text: "Send request" }), general, status, out);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    general.textContent = "";
    status.textContent = "sending…";
    out.textContent = "";
    const p = path.value.startsWith("/") ? path.value : "/" + path.value;
    const t0 = performance.now();
    try {
      const hasBody = !["GET", "HEAD"].includes(method.value) && body.value !== "";
      const resp = await api(`/e/${name}${p}`, { method: method.value, body: hasBody ? body.value : undefined,
        headers: hasBody ? { "Content-Type": "application/json" } : {} });
      const text = await resp.text();
      const ms = Math.round(performance.now() - t0);
      const wk = resp.headers.get("X-Sgpu-Worker");
      status.textContent = `${resp.status} ${resp.statusText} in ${ms} ms` + (wk ? ` from ${wk}` : "");
      out.textContent = text;
    } catch (err) {
      status.textContent = "";
      handleError(err, general);
    }
  });
  box.replaceChildren(form);
}

function asyncTester(name, box) {
  const inputBox = el("textarea", { rows: "4", spellcheck: "false" });
  inputBox.value = '{"prompt": "hello"}';
  const general = el("p", { class: "error", role: "alert" });
  const status = el("p", { id: "test-job-status", role: "status" });
  const out = el("pre", { class: "code", id: "test-job", tabindex: "0", "aria-label": "job" });
  const form = el("form", { class: "card form", id: "test-form" },
    field("Job input (JSON)", inputBox, "input"), el("button", { type: "submit", text: "Run job" }), general, status, out);
  let watching = null;
  cleanup.push(() => clearTimeout(watching));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearTimeout(watching);
    showFieldError(form, null, general);
    let parsed;
    try { parsed = JSON.parse(inputBox.value); } catch (e) {
      showFieldError(form, { field: "input", message: "not JSON: " + e.message }, general);
      return;
    }
    try {
      const resp = await api(`/v2/${name}/run`, { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ input: parsed }) });
      if (!resp.ok) { showFieldError(form, await errorBody(resp), general); return; }
      const job = await resp.json();
      status.textContent = `job ${job.id}: ${job.status}`;
      const poll = async () => {
        try {
          const j = await apiJSON(`/v2/${name}/status/${job.id}`);
          status.textContent = `job ${j.id}: ${j.status}` + (FINAL_JOB.has(j.status) ? "" : " (watching…)");
          out.textContent = JSON.stringify(j, null, 2);
          if (!FINAL_JOB.has(j.status)) watching = setTimeout(poll, 500);
        } catch (err) { handleError(err, general); }
      };
      poll();
    } catch (err) {
      handleError(err, general);
    }
  });
  box.replaceChildren(form);
}

function fmtMs(v) { return v === null || v === undefined ? "-" : fmtNum(v) + " ms"; }

function coldStartText(wk) {
  if (wk.cold_start_ms === null || wk.cold_start_ms === undefined) return "-";
  const c = wk.cold_start || {};
  const parts = [["pull", c.pull_ms], ["rootfs", c.rootfs_ms], ["container", c.container_ms], ["probe", c.probe_ms]]
    .filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => `${k} ${v}`);
  return wk.cold_start_ms + " ms" + (parts.length ? ` (${parts.join(", ")})` : "");
}

function endpointPage(name) {
  setNav("endpoints");
  document.title = name + " · sgpu";
  const r = mount("tpl-endpoint");
  r.title.textContent = name;
  r.flash.textContent = flash;
  flash = "";
  r.edit.href = `#/e/${name}/edit`;
  const origin = location.origin;
  r.url.textContent = `${origin}/e/${name}/`;
  const workerIds = new Set();
  let shownType = null, versionsAt = -1, jobsMissing = false, openJob = null;

  const act = async (what, path, opts) => {
    r.actionerr.textContent = "";
    const resp = await api(path, opts);
    if (!resp.ok) { const e = await errorBody(resp); r.actionerr.textContent = `${what}: ${e.message}`; return null; }
    return resp.json();
  };
  r.delete.addEventListener("click", async () => {
    if (!confirm(`Delete endpoint ${name}? Its workers are stopped and its versions deleted.`)) return;
    try {
      if (await act("Delete", `/v1/endpoints/${name}`, { method: "DELETE" })) { flash = `Deleted ${name}.`; location.hash = "#/"; }
    } catch (err) { handleError(err, r.actionerr); }
  });
  r.rollback.addEventListener("click", async () => {
    const v = Number(r.versions.value);
    if (!v || !confirm(`Roll ${name} back to version ${v}? This makes a new version with that spec.`)) return;
    try {
      const ep = await act("Roll back", `/v1/endpoints/${name}/rollback`, { method: "POST",
        headers: { "Content-Type": "application/json" }, body: JSON.stringify({ version: v }) });
      if (ep) r.flash.textContent = `Rolled back to version ${v}: now version ${ep.version}` + (ep.workers_restart ? "; the workers are being replaced." : "; applied live.");
    } catch (err) { handleError(err, r.actionerr); }
  });

  const loadVersions = async (current) => {
    if (current === versionsAt) return;
    versionsAt = current;
    const v = await apiJSON(`/v1/endpoints/${name}/versions`);
    const older = v.versions.filter((x) => x.version !== v.version).reverse();
    r.versions.replaceChildren(...older.map((x) => el("option", { value: x.version, text: `version ${x.version} (${fmtTime(x.created)})` })));
    r.rollback.disabled = !older.length;
    if (!older.length) r.versions.append(el("option", { value: "", text: "no older version" }));
  };

  const showJob = (j) => {
    openJob = j.id;
    r.jobdetail.hidden = false;
    const detail = { id: j.id, status: j.status };
    for (const k of ["input", "output", "error", "stream"]) if (j[k] !== undefined) detail[k] = j[k];
    r.jobdetail.textContent = JSON.stringify(detail, null, 2);
  };
  const loadJobs = async () => {
    if (jobsMissing) return;
    const resp = await api(`/v1/endpoints/${name}/jobs?limit=50`);
    if (resp.status === 404) {
      /* the endpoint was just read, so the route is what is missing: an
       * sgpud from before the jobs list */
      jobsMissing = true;
      r.jobs.closest(".scroll").hidden = true;
      r.jobsnote.textContent = "This sgpud does not list jobs (no /v1/endpoints/{name}/jobs route): run a job from the test panel to follow it.";
      return;
    }
    if (!resp.ok) throw new Error((await errorBody(resp)).message);
    const body = await resp.json();
    r.jobsnote.textContent = body.jobs.length ? "" : "No jobs yet.";
    r.jobs.replaceChildren(...body.jobs.map((j) => {
      const link = el("button", { type: "button", class: "link", text: j.id, "aria-label": "Show job " + j.id });
      link.addEventListener("click", () => showJob(j));
      if (openJob === j.id) showJob(j);
      return el("tr", { "data-job": j.id },
        el("td", {}, link),
        el("td", { class: "job-" + String(j.status).toLowerCase(), text: j.status }),
        el("td", { text: j.createdAt ? fmtTime(j.createdAt) : "-" }),
        el("td", { class: "num", text: fmtMs(j.delayTime) }),
        el("td", { class: "num", text: fmtMs(j.executionTime) }),
        el("td", { text: j.workerId || "-" }),
        el("td", { class: "num", text: j.retries === undefined ? "-" : j.retries }));
    }));
  };

  every(2000, async () => {
    const [ep, workers] = await Promise.all([
      apiJSON(`/v1/endpoints/${name}`), apiJSON(`/v1/endpoints/${name}/workers`)]);
    const s = ep.status || {};
    const w = s.workers || {};
    r.epstate.textContent = stateWords(ep);
    r.epstate.className = "state state-" + endpointState(ep);
    r.status.textContent = `· ${ep.type || "sync"} · version ${ep.version} · ${w.ready || 0} ready, ${w.starting || 0} starting` +
      (w.outdated ? `, ${w.outdated} of an older version` : "") + ` · desired ${s.desired} · ` +
      `${s.in_flight} in flight, ${s.queued} queued · ${fmtNum(s.served)} served` + (s.last_error ? ` · last error: ${s.last_error}` : "");
    const type = ep.type || "sync";
    if (type !== shownType) {
      shownType = type;
      const auth = '-H "Authorization: Bearer $SGPU_KEY"';
      if (type === "async") {
        r.url.textContent = `${origin}/v2/${name}/`;
        r.examples.replaceChildren(
          copyBlock("curl example", `curl -X POST ${auth} -H "Content-Type: application/json" \\\n  -d '{"input": {"prompt": "hello"}}' ${origin}/v2/${name}/run`),
          copyBlock("RunPod client example", `import os, runpod\nrunpod.api_key = os.environ["SGPU_KEY"]\nrunpod.endpoint_url_base = "${origin}/v2"\nendpoint = runpod.Endpoint("${name}")\nprint(endpoint.run_sync({"prompt": "hello"}, timeout=60))`));
        asyncTester(name, r.tester);
        r.jobsbox.hidden = false;
      } else {
        r.url.textContent = `${origin}/e/${name}/`;
        r.examples.replaceChildren(copyBlock("curl example", `curl ${auth} -H "Content-Type: application/json" \\\n  -d '{"prompt": "hello"}' ${origin}/e/${name}/`));
        syncTester(name, r.tester);
        r.jobsbox.hidden = true;
      }
    }
    r.queue.textContent = String(s.queued);
    const spec = Object.assign({}, ep);
    delete spec.status;
    r.spec.textContent = JSON.stringify(spec, null, 2);
    r.workers.replaceChildren(...workers.workers.slice().reverse().map((wk) => {
      const live = ["starting", "ready", "draining"].includes(wk.state);
      const stop = el("button", { type: "button", class: "secondary", text: "Stop", "aria-label": "Stop worker " + wk.id });
      stop.addEventListener("click", async () => {
        stop.disabled = true;
        try { await act("Stop worker", `/v1/endpoints/${name}/workers/${wk.id}`, { method: "DELETE" }); } catch (err) { handleError(err, r.actionerr); }
      });
      return el("tr", { "data-worker": wk.id },
        el("td", { text: wk.id }),
        el("td", { class: "state-" + wk.state, text: wk.state }),
        el("td", { text: wk.gpus.length ? wk.gpus.join(",") + (wk.gpu_type ? " (" + wk.gpu_type + ")" : "") : "none" }),
        el("td", { class: "num", text: coldStartText(wk) }),
        el("td", { class: "num", text: wk.in_flight }),
        el("td", { class: "num", text: fmtNum(wk.served) }),
        el("td", { text: fmtTime(wk.started_at) }),
        el("td", { text: fmtTime(wk.ended_at) }),
        el("td", { text: wk.last_error || "" }),
        el("td", {}, live ? stop : ""));
    }));
    for (const wk of workers.workers) {
      if (workerIds.has(wk.id)) continue;
      workerIds.add(wk.id);
      r.worker.append(el("option", { value: wk.id, text: wk.id }));
    }
    await loadVersions(ep.version);
    if (type === "async") await loadJobs();
  });

  let last = null;
  const draw = () => {
    if (!last) return;
    const range = Number(r.range.value);
    r.chartnote.textContent = `${last.points} point(s), one every ${last.step_s >= 60 ? last.step_s / 60 + " min" : last.step_s + " s"}`;
    drawChart(r["chart-rps"], last.t, [{ values: last.requests_per_s, color: "#2f7de1" }], range);
    drawChart(r["chart-queue"], last.t, [{ values: last.queue, color: "#d9822b" }], range);
    drawChart(r["chart-inflight"], last.t, [{ values: last.in_flight, color: "#c2185b" }], range);
    if (last.latency_p50_ms) { /* null: no answer in the step */
      const z = (col) => last[col].map((v) => (v === null ? 0 : v));
      drawChart(r["chart-latency"], last.t, [{ values: z("latency_p50_ms"), color: "#2e9b56" },
        { values: z("latency_p95_ms"), color: "#d9822b" }, { values: z("latency_p99_ms"), color: "#b3261e" }], range);
    }
    if (last.errors_5xx) /* an sgpud from before these columns has none */
      drawChart(r["chart-errors"], last.t, [{ values: last.errors_4xx, color: "#d9822b" }, { values: last.errors_5xx, color: "#b3261e" }], range);
    const workers = [{ values: last.workers, color: "#7b5cd6" }, { values: last.ready, color: "#2e9b56" }];
    if (last.starting) workers.push({ values: last.starting, color: "#d9822b" });
    drawChart(r["chart-workers"], last.t, workers, range);
    if (last.cold_starts) { /* an sgpud from before these columns has none */
      const z = (col, f = 1) => last[col].map((v) => (v === null ? 0 : v * f));
      drawChart(r["chart-delay"], last.t, [{ values: z("queue_delay_ms"), color: "#d9822b" }], range);
      drawChart(r["chart-cold"], last.t, [{ values: last.cold_starts, color: "#2f7de1" }, { values: z("cold_start_ms", 0.001), color: "#b3261e" }], range);
      /* the same in words: what was in the range, weighted by count */
      let n = 0, coldMs = 0;
      last.cold_starts.forEach((c, i) => { if (c && last.cold_start_ms[i] !== null) { n += c; coldMs += c * last.cold_start_ms[i]; } });
      r.coldsummary.textContent = n ? `${n} cold start(s) in the range, mean ` +
        (coldMs / n < 1000 ? `${fmtNum(coldMs / n, 0)} ms` : `${fmtNum(coldMs / n / 1000, 1)} s`) : "No cold starts in the range.";
      const waits = last.queue_delay_ms.filter((v) => v !== null);
      r.delaysummary.textContent = waits.length ? `Longest step mean ${fmtNum(Math.max(...waits), 1)} ms` : "Nothing dispatched in the range.";
    } else {
      r.coldsummary.textContent = r.delaysummary.textContent = "This sgpud's series has no cold start or queue delay columns.";
    }
  };
  const load = async () => {
    const range = r.range.value;
    const s = await apiJSON(`/v1/endpoints/${name}/series?range=${range}s`);
    if (range === r.range.value) { last = s; draw(); }
  };
  r.range.addEventListener("change", () => load().catch(handleError));
  every(5000, load);

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
    return el("span", { class: "line " + l.stream, "data-ts": l.ts, "data-worker": l.worker || "", "data-stream": l.stream,
      "data-request-id": l.request_id || "" },
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
    if (r.rid.value.trim()) p.set("request_id", r.rid.value.trim());
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
    setState(paused ? "paused" : "loading…");
    try {
      const resp = await api(`/v1/endpoints/${name}/logs?${p}`, { signal: ctrl.signal });
      if (!resp.ok) throw new Error((await resp.json()).error.message);
      /* The stream is open: lines from here on reach the panel. */
      if (!paused) setState("live");
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
  r.rid.addEventListener("input", refilter);
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
    const priced = Object.values(u.prices).some((v) => v > 0);
    r.chartcaption.textContent = priced ? "Cost per day" : "GPU-seconds per day (no prices set)";
    r.chart.setAttribute("aria-label", priced ? "cost per day" : "GPU-seconds per day");
    drawBars(r.chart, groups, priced ? "cost" : "gpu_seconds");
  };
  r.range.addEventListener("change", () => load().catch(handleError));
  every(5000, load);
}

function drawBars(canvas, groups, metric) {
  const byDay = new Map();
  for (const g of groups) byDay.set(g.ts, (byDay.get(g.ts) || 0) + g[metric]);
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
    g.fillText(metric === "cost" ? fmtCost(v) : fmtNum(v, 1), x0, h - 22 - bh);
  });
}

/* ---- images, registry credentials, API keys, secrets ----------------------- */

/* A page of one kind of resource: a form that creates, a table that lists
 * (with a delete button a row), loaded again every few seconds. */
function resourcePage(opts) {
  setNav(opts.nav);
  document.title = opts.title + " · sgpu";
  const general = el("p", { class: "error", role: "alert" });
  const result = el("div", { role: "status", class: "result" });
  const submit = el("button", { type: "submit", text: opts.submitText });
  const form = el("form", { class: "card form", id: opts.id + "-form", novalidate: "" },
    el("fieldset", {}, el("legend", { text: opts.formTitle }), ...opts.fields.map(([label, control, name]) => field(label, control, name))),
    general, submit, result);
  const note = el("p", { class: "muted", id: opts.id + "-empty" });
  const listErr = el("p", { class: "error", role: "alert", id: opts.id + "-error" });
  const thead = el("thead", {}, el("tr", {}, ...opts.columns.map((c) => el("th", { scope: "col", text: c })), el("th", { scope: "col", text: "Action" })));
  const tbody = el("tbody");
  const extra = el("div");
  let actionErr = ""; /* a refused delete, kept across reloads until the next action */
  $("#view").replaceChildren(el("h1", { text: opts.title }), opts.intro ? el("p", { class: "muted", text: opts.intro }) : "",
    form, el("h2", { text: opts.listTitle }), listErr, note, el("div", { class: "scroll" }, el("table", { class: "grid", id: opts.id }, thead, tbody)), extra);
  const load = async () => {
    let body;
    try {
      body = await opts.load();
    } catch (err) {
      if (err instanceof AuthError) throw err;
      listErr.textContent = "Error: " + err.message;
      return;
    }
    listErr.textContent = actionErr;
    const items = opts.items(body);
    note.textContent = items.length ? "" : opts.empty;
    tbody.replaceChildren(...items.map((it) => {
      const id = opts.key(it);
      const btn = el("button", { type: "button", class: "danger", text: opts.deleteText, "aria-label": `${opts.deleteText} ${id}` });
      btn.addEventListener("click", async () => {
        if (!confirm(`${opts.deleteText} ${id}?`)) return;
        actionErr = "";
        listErr.textContent = "";
        try {
          const resp = await api(opts.deletePath(id), { method: "DELETE" });
          if (!resp.ok) actionErr = `${opts.deleteText} ${id}: ` + (await errorBody(resp)).message;
          await load();
        } catch (err) { handleError(err, listErr); }
      });
      return el("tr", { "data-id": id }, ...opts.cells(it).map((c) => el("td", { text: c })), el("td", {}, btn));
    }));
    if (opts.after) opts.after(body, extra);
  };
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showFieldError(form, null, general);
    result.replaceChildren();
    actionErr = "";
    submit.disabled = true;
    try {
      const [path, method, body] = opts.create();
      const resp = await api(path, { method, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      if (!resp.ok) { showFieldError(form, await errorBody(resp), general); return; }
      const answer = await resp.json();
      form.reset();
      if (opts.created) opts.created(answer, result);
      await load();
    } catch (err) {
      handleError(err, general);
    } finally {
      submit.disabled = false;
    }
  });
  every(5000, load);
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "-";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function imagesPage() {
  const image = input("text", "", { spellcheck: "false", placeholder: "e.g. ghcr.io/org/model:tag" });
  const auth = input("text", "", { spellcheck: "false" });
  resourcePage({
    nav: "images", id: "images", title: "Images", formTitle: "Pull (preheat) an image", submitText: "Pull image",
    intro: "Images cached on this host. Preheating pulls an image before an endpoint needs it.",
    fields: [["Image reference", image, "image"], ["Registry credentials name (optional)", auth, "registry_auth"]],
    create: () => ["/v1/images", "POST", Object.assign({ image: image.value.trim() }, auth.value.trim() ? { registry_auth: auth.value.trim() } : {})],
    created: (a, out) => { out.textContent = `${a.image}: ${a.state}`; },
    listTitle: "Cached images", empty: "No cached images.", load: () => apiJSON("/v1/images"), items: (b) => b.images,
    key: (i) => i.image, columns: ["Image", "Size", "Layers", "Pulled", "Last used", "In use"],
    cells: (i) => [i.image, fmtBytes(i.size_bytes), i.layers, fmtTime(i.pulled_at), fmtTime(i.last_used_at), i.in_use ? "yes" : "no"],
    deleteText: "Delete image", deletePath: (ref) => "/v1/images/" + encodeURIComponent(ref),
    after: (b, box) => {
      box.replaceChildren(el("p", { class: "muted", text: `Cache: ${fmtBytes(b.total_bytes)}` + (b.max_bytes ? ` of ${fmtBytes(b.max_bytes)}` : "") }),
        el("h2", { text: "Pulls" }),
        b.pulls.length ? el("ul", { id: "pulls" }, ...b.pulls.map((pl) => el("li", { text: `${pl.image}: ${pl.state}` + (pl.error ? ` (${pl.error})` : "") })))
          : el("p", { class: "muted", text: "No pull running or failed." }));
    },
  });
}

function registryPage() {
  const name = input("text", "", { spellcheck: "false" });
  const registry = input("text", "", { spellcheck: "false", placeholder: "host[:port]" });
  const user = input("text", "", { spellcheck: "false", autocomplete: "off" });
  const pass = input("password", "", { autocomplete: "new-password" });
  resourcePage({
    nav: "registry", id: "registry-auths", title: "Registry credentials", formTitle: "Add or replace credentials", submitText: "Save credentials",
    intro: "Credentials endpoints name in registry_auth to pull private images. Passwords are never shown again.",
    fields: [["Name", name, "name"], ["Registry", registry, "registry"], ["Username", user, "username"], ["Password", pass, "password"]],
    create: () => [`/v1/registry-auths/${encodeURIComponent(name.value.trim())}`, "PUT",
      { name: name.value.trim(), registry: registry.value.trim(), username: user.value, password: pass.value }],
    created: (a, out) => { out.textContent = `Saved ${a.name}.`; },
    listTitle: "Stored credentials", empty: "No registry credentials.", load: () => apiJSON("/v1/registry-auths"),
    items: (b) => b.registry_auths || [], key: (a) => a.name, columns: ["Name", "Registry", "Username", "Updated"],
    cells: (a) => [a.name, a.registry, a.username, fmtTime(a.updated_at)],
    deleteText: "Delete credentials", deletePath: (n) => "/v1/registry-auths/" + encodeURIComponent(n),
  });
}

function keysPage() {
  const name = input("text", "", { spellcheck: "false", autocomplete: "off" });
  const boxes = ["invoke", "read", "deploy", "admin"].map((sc) => input("checkbox", null, { value: sc }));
  boxes[0].checked = true;
  const scopes = el("fieldset", { class: "checks", "data-field": "scopes" }, el("legend", { text: "Scopes" }),
    ...boxes.map((b) => el("label", { class: "check" }, b, el("span", { text: b.value }))));
  const endpoints = input("text", "", { spellcheck: "false", placeholder: "all (or names, comma-separated)" });
  const expires = input("text", "", { spellcheck: "false", placeholder: "e.g. 2027-01-01T00:00:00Z" });
  resourcePage({
    nav: "keys", id: "api-keys", title: "API keys", formTitle: "Create a key", submitText: "Create key",
    intro: "Keys for clients and people. The secret is shown once, when the key is created.",
    fields: [["Key name", name, "name"], ["Limit to endpoints", endpoints, "endpoints"], ["Expires at (optional)", expires, "expires_at"]],
    create: () => {
      const body = { name: name.value.trim(), scopes: boxes.filter((b) => b.checked).map((b) => b.value) };
      const eps = endpoints.value.split(",").map((x) => x.trim()).filter((x) => x);
      if (eps.length) body.endpoints = eps;
      if (expires.value.trim()) body.expires_at = expires.value.trim();
      return ["/v1/api-keys", "POST", body];
    },
    created: (a, out) => {
      boxes.forEach((b, i) => { b.checked = i === 0; });
      out.replaceChildren(el("p", { text: `Key ${a.name} created. Copy its secret now: it is not shown again.` }),
        copyBlock("new key secret", a.key));
      out.querySelector("pre").id = "new-key-secret";
    },
    listTitle: "Keys", empty: "No keys besides the admin key.", load: () => apiJSON("/v1/api-keys"),
    items: (b) => b.api_keys, key: (k) => k.name, columns: ["Name", "Prefix", "Scopes", "Endpoints", "Created", "Last used", "Expires"],
    cells: (k) => [k.name, k.prefix, k.scopes.join(", "), k.endpoints ? k.endpoints.join(", ") : "all",
      fmtTime(k.created_at), fmtTime(k.last_used_at), fmtTime(k.expires_at)],
    deleteText: "Revoke key", deletePath: (n) => "/v1/api-keys/" + encodeURIComponent(n),
  });
  /* the scope checkboxes go in the form, before its buttons */
  const form = $("#api-keys-form fieldset");
  form.append(el("div", { class: "field" }, scopes, el("span", { class: "error field-error", id: "ferr-scopes" })));
  scopes.setAttribute("aria-describedby", "ferr-scopes");
}

function secretsPage() {
  const name = input("text", "", { spellcheck: "false", autocomplete: "off" });
  const value = input("password", "", { autocomplete: "new-password" });
  resourcePage({
    nav: "secrets", id: "secrets", title: "Secrets", formTitle: "Set a secret", submitText: "Save secret",
    intro: "Values endpoints reference in env as {\"secret\": NAME}. Only names are shown; values never leave sgpud.",
    fields: [["Secret name", name, "name"], ["Secret value", value, "value"]],
    create: () => [`/v1/secrets/${encodeURIComponent(name.value.trim())}`, "PUT", { value: value.value }],
    created: (a, out) => { out.textContent = `Saved ${a.name}.`; },
    listTitle: "Stored secrets", empty: "No secrets.", load: () => apiJSON("/v1/secrets"),
    items: (b) => b.secrets, key: (x) => x.name, columns: ["Name", "Created", "Updated"],
    cells: (x) => [x.name, fmtTime(x.created_at), fmtTime(x.updated_at)],
    deleteText: "Delete secret", deletePath: (n) => "/v1/secrets/" + encodeURIComponent(n),
  });
}

function volumesPage() {
  const name = input("text", "", { spellcheck: "false", autocomplete: "off" });
  const size = input("number", "", { min: "0", step: "any", placeholder: "no limit" });
  resourcePage({
    nav: "volumes", id: "volumes", title: "Volumes", formTitle: "Create a volume", submitText: "Create volume",
    intro: "Storage that outlives workers. An endpoint mounts a volume in its spec (Volumes in the endpoint form); " +
      "a volume mounted by an endpoint cannot be deleted.",
    fields: [["Volume name", name, "name"], ["Size (GiB, optional)", size, "size_bytes"]],
    create: () => {
      const body = { name: name.value.trim() };
      if (size.value !== "") body.size_bytes = Math.round(Number(size.value) * 1073741824);
      return ["/v1/volumes", "POST", body];
    },
    created: (a, out) => { out.textContent = `Created ${a.name}.`; },
    listTitle: "Volumes", empty: "No volumes.", load: () => apiJSON("/v1/volumes"),
    items: (b) => b.volumes, key: (v) => v.name, columns: ["Name", "Size", "Used", "Mounted by", "Created"],
    cells: (v) => [v.name, v.size_bytes ? fmtBytes(v.size_bytes) : "no limit", fmtBytes(v.used_bytes),
      v.mounted_by && v.mounted_by.length ? v.mounted_by.join(", ") : "none", fmtTime(v.created)],
    deleteText: "Delete volume", deletePath: (n) => "/v1/volumes/" + encodeURIComponent(n),
  });
}

/* ---- start ------------------------------------------------------------------ */

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", () => logout());
  window.addEventListener("hashchange", route);
  route();
});
