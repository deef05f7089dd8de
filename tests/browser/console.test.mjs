// The console in headless Chromium against a running sgpud (see run.py).
// Each check prints "ok - ..." or throws; a failure exits with status 1.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import path from "node:path";
import { waitText } from "./wait.mjs";

const SCALE = Number(process.env.SGPU_TEST_TIMEOUT_SCALE || "1");
const launchOpts = {
  executablePath: process.env.CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
};

if (process.argv.includes("--probe")) {
  const b = await chromium.launch(launchOpts);
  const p = await b.newPage();
  await p.setContent("<p>ok</p>");
  await b.close();
  process.exit(0);
}

const URL = process.env.SGPU_URL, KEY = process.env.SGPU_KEY, EP = process.env.SGPU_ENDPOINT;
const SHOTS = process.env.SHOTS_DIR;
const ms = (x) => Math.round(x * SCALE);
const ok = (what) => console.log("ok - " + what);
// The log panel has opened its stream with the filters now set (a filter change
// shows "loading…" until then).
const waitLive = (page) => waitText(page, "#log-state", /^live$/, { timeout: ms(5000) });

async function call(pathname, { key = KEY, method = "GET", body, headers: extra = {} } = {}) {
  const headers = Object.assign(key === null ? {} : { Authorization: "Bearer " + key }, extra);
  return fetch(URL + pathname, { method, headers, body });
}

// ---- the API the console uses refuses requests without a valid key
{
  const pub = await call("/", { key: null });
  assert.equal(pub.status, 200);
  assert.match(await pub.text(), /sgpu console/);
  for (const p of ["/console/app.js", "/console/style.css"]) assert.equal((await call(p, { key: null })).status, 200);
  const used = ["/v1/endpoints", `/v1/endpoints/${EP}`, `/v1/endpoints/${EP}/workers`, `/v1/endpoints/${EP}/series`,
    `/v1/endpoints/${EP}/logs?follow=1&limit=300`, `/v1/endpoints/${EP}/logs?since=0&order=oldest`,
    "/v1/usage?from=30d&group=day", `/e/${EP}/infer`];
  for (const p of used) {
    for (const key of [null, "sg_wrong_key_0000000000000000", ""]) {
      const r = await call(p, { key });
      assert.equal(r.status, 401, `${p} with key ${JSON.stringify(key)} answered ${r.status}`);
      const body = await r.json();
      assert.equal(body.error.code, "unauthorized");
    }
  }
  assert.equal((await call("/console/nope.js", { key: null })).status, 404);
  ok("the console's files are public; every API it uses refuses a missing or wrong key");
}

const browser = await chromium.launch(launchOpts);
const failures = [];
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => failures.push("page error: " + e.message));
  page.on("console", (m) => { if (m.type() === "error" && !/401/.test(m.text())) failures.push("console error: " + m.text()); });

  // ---- log in
  await page.goto(URL + "/");
  await page.waitForSelector("#login:not([hidden])");
  await page.fill("#login-key", "sg_wrong_key_0000000000000000");
  await page.click("#login-submit");
  await waitText(page, "#login-error", /refused/);
  assert.equal(await page.evaluate(() => sessionStorage.getItem("sgpu.key")), null);
  ok("a wrong key is refused");
  await page.fill("#login-key", KEY);
  await page.click("#login-submit");
  await page.waitForSelector(`#endpoints tr[data-name="${EP}"]`, { timeout: ms(5000) });
  const row = await page.textContent(`#endpoints tr[data-name="${EP}"]`);
  assert.match(row, /1 ready/);
  assert.match(row, /serving/); // status.state
  assert.equal(await page.evaluate(() => sessionStorage.getItem("sgpu.key")), KEY);
  assert.equal(await page.evaluate(() => localStorage.length), 0);
  await page.screenshot({ path: path.join(SHOTS, "endpoints.png"), fullPage: true });
  ok("logged in; the endpoint is listed with its ready worker");

  // a new tab of another session starts at the login form
  const other = await (await browser.newContext()).newPage();
  await other.goto(URL + "/#/usage");
  await other.waitForSelector("#login:not([hidden])");
  assert.equal(await other.isVisible("#usage-total-cost"), false);
  ok("the key is kept per session only");

  // ---- endpoint page
  await page.click(`#endpoints tr[data-name="${EP}"] a`);
  await page.waitForSelector("#workers tbody tr td.state-ready", { timeout: ms(5000) });
  const wrow = await page.textContent("#workers tbody tr");
  assert.match(wrow, /w-[0-9a-f]{12}/);
  assert.match(wrow, /ms/); // cold start
  await waitText(page, "#log-state", /live/, { timeout: ms(5000) });
  ok("endpoint page: worker ready with its cold start; log panel live");

  // ---- a line written by the worker appears within a second
  const token = "tok" + Date.now();
  const t0 = Date.now();
  const inv = await call(`/e/${EP}/${token}`, { method: "POST", body: "x" });
  assert.equal(inv.status, 200);
  await page.waitForFunction((t) => [...document.querySelectorAll("#log-lines .line")].some((l) => l.textContent.includes(t)),
    token, { timeout: ms(1000), polling: 10 });
  const seenAfter = Date.now() - t0;
  ok(`a worker's log line appeared in the panel ${seenAfter} ms after the request`);
  await page.screenshot({ path: path.join(SHOTS, "endpoint.png"), fullPage: true });

  // ---- filter
  const keep = "keep" + Date.now(), skip = "skip" + Date.now();
  await page.fill("#log-text", keep);
  await waitLive(page);
  await call(`/e/${EP}/${skip}`, { method: "POST", body: "x" });
  await call(`/e/${EP}/${keep}`, { method: "POST", body: "x" });
  await page.waitForFunction((t) => [...document.querySelectorAll("#log-lines .line")].some((l) => l.textContent.includes(t)),
    keep, { timeout: ms(2000) });
  const texts = await page.$$eval("#log-lines .line", (ls) => ls.map((l) => l.textContent));
  assert.ok(texts.length >= 1 && texts.every((t) => t.includes(keep)), "only filtered lines: " + texts.join(" | "));
  await page.getByLabel("Level").selectOption("event"); /* the stream, sent as ?stream= */
  await page.fill("#log-text", "");
  await page.waitForFunction(() => document.querySelectorAll("#log-lines .line").length > 0, null, { timeout: ms(3000) });
  const streams = await page.$$eval("#log-lines .line", (ls) => ls.map((l) => l.dataset.stream));
  assert.ok(streams.every((s) => s === "event"), streams.join(","));
  await page.getByLabel("Level").selectOption("");
  ok("text and level (stream) filters show only matching lines");

  // ---- filter by request id: only the lines stored with that request's id
  const rid = "rid-" + Date.now();
  await page.getByLabel("Request id").fill(rid);
  await waitLive(page);
  await call(`/e/${EP}/trace`, { method: "POST", body: "x", headers: { "X-Request-Id": "other-" + rid } });
  await call(`/e/${EP}/trace`, { method: "POST", body: "x", headers: { "X-Request-Id": rid } });
  await page.waitForFunction((t) => [...document.querySelectorAll("#log-lines .line")].some((l) => l.textContent.includes("trace " + t)),
    rid, { timeout: ms(3000) });
  const rids = await page.$$eval("#log-lines .line", (ls) => ls.map((l) => l.dataset.requestId));
  assert.ok(rids.length >= 1 && rids.every((x) => x === rid), "only the request's lines: " + rids.join(","));
  await page.getByLabel("Request id").fill("");
  await waitLive(page);
  ok("the request id filter shows only that request's lines");

  // ---- pause and resume
  await page.click("#log-pause");
  const held = "held" + Date.now();
  await call(`/e/${EP}/${held}`, { method: "POST", body: "x" });
  await waitText(page, "#log-state", /new line/, { timeout: ms(2000) });
  assert.equal((await page.textContent("#log-lines")).includes(held), false);
  await page.click("#log-pause");
  await page.waitForFunction((t) => (document.querySelector("#log-lines")?.textContent ?? "").includes(t), held, { timeout: ms(1000) });
  ok("pause holds new lines; resume shows them");

  // ---- jump to a time
  const d = new Date(t0 - 2000);
  const pad = (n) => String(n).padStart(2, "0");
  const local = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  await page.fill("#log-time", local);
  await page.click("#log-jump");
  await waitText(page, "#log-state", /showing/, { timeout: ms(3000) });
  const first = await page.$eval("#log-lines .line", (l) => Number(l.dataset.ts));
  assert.ok(first >= t0 - 3000, "history starts at the time asked (to the second)");
  assert.ok((await page.textContent("#log-lines")).includes(token));
  await page.click("#log-live");
  ok("jump to a time shows the lines from then on");

  // ---- usage grows
  await page.goto(URL + "/#/usage");
  await waitText(page, "#usage-total-gpu", /./, { timeout: ms(5000) });
  const gpu0 = Number((await page.textContent("#usage-total-gpu")).replace(/[^0-9.]/g, ""));
  await page.waitForSelector(`#usage-endpoints tr[data-endpoint="${EP}"]`);
  await page.waitForFunction((g0) => Number((document.querySelector("#usage-total-gpu")?.textContent ?? "").replace(/[^0-9.]/g, "")) > g0 + 1,
    gpu0, { timeout: ms(12000) });
  const cost = await page.textContent(`#usage-endpoints tr[data-endpoint="${EP}"] td.cost`);
  assert.ok(Number(cost) > 0, "cost " + cost);
  assert.ok((await page.$$("#usage-days tbody tr")).length >= 1);
  assert.equal(await page.textContent("#usage-chart-caption"), "Cost per day");
  await page.screenshot({ path: path.join(SHOTS, "usage.png"), fullPage: true });
  ok(`usage grows (GPU-seconds from ${gpu0}); cost per endpoint and per day shown`);

  // ---- log out
  await page.click("#logout");
  await page.waitForSelector("#login:not([hidden])");
  assert.equal(await page.evaluate(() => sessionStorage.getItem("sgpu.key")), null);
  ok("log out forgets the key");
  assert.deepEqual(failures, []);
} finally {
  await browser.close();
}
