// The endpoint page's charts of cold starts and queue delay in headless
// Chromium against a running sgpud (see run.py): an endpoint scaled to zero
// shows no cold starts; its first request waits in the queue for a worker
// that starts, and the page then tells one cold start with its mean
// duration and the queue delay, from /series' cold_starts, cold_start_ms and
// queue_delay_ms. Each check prints "ok - ..." or throws.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import path from "node:path";
import { waitText } from "./wait.mjs";

const SCALE = Number(process.env.SGPU_TEST_TIMEOUT_SCALE || "1");
const URL = process.env.SGPU_URL, KEY = process.env.SGPU_KEY, WORKER = process.env.SGPU_WORKER;
const RUN = process.env.SGPU_IT_RUN, OWNER = process.env.SGPU_IT_OWNER;
const SHOTS = process.env.SHOTS_DIR;
const ms = (x) => Math.round(x * SCALE);
const ok = (what) => console.log("ok - " + what);
const NAME = "charts-echo";

async function call(pathname, method = "GET", body) {
  const headers = { Authorization: "Bearer " + KEY };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  return fetch(URL + pathname, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
}

const created = await call("/v1/endpoints", "POST", {
  name: NAME, runtime: "process", command: [WORKER], health: { path: "/health" },
  env: { SGPU_IT_RUN: RUN, SGPU_IT_OWNER: OWNER }, workers: { min: 0, max: 1, idle_timeout_s: 600 },
});
assert.equal(created.status, 201, await created.text());
// the series samples this endpoint before its first request
for (let tries = 0; ; tries++) {
  const s = await (await call(`/v1/endpoints/${NAME}/series`)).json();
  if (s.points >= 2) break;
  assert.ok(tries < ms(200), "the series never sampled " + NAME);
  await new Promise((res) => setTimeout(res, 100));
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM, headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const failures = [];
try {
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
  page.setDefaultTimeout(ms(10000));
  page.on("pageerror", (e) => failures.push("page error: " + e.message));
  await page.goto(URL + "/");
  await page.getByLabel("API key").fill(KEY);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForSelector("#endpoints");
  await page.goto(URL + "/#/e/" + NAME);
  await waitText(page, "#chart-cold-summary", /No cold starts in the range/);
  await waitText(page, "#chart-delay-summary", /Nothing dispatched in the range/);
  assert.ok(await page.getByRole("img", { name: "cold starts and their mean duration over the chosen range" }).isVisible());
  assert.ok(await page.getByRole("img", { name: "mean queue delay over the chosen range" }).isVisible());
  ok("scaled to zero: no cold starts and nothing dispatched in the range");

  const resp = await call(`/e/${NAME}/infer`, "POST", { prompt: "cold" });
  assert.equal(resp.status, 200);
  await waitText(page, "#chart-cold-summary", /^1 cold start\(s\) in the range, mean \d/,
    { timeout: ms(15000) });
  await waitText(page, "#chart-delay-summary", /Longest step mean [\d.,]+ ms/);
  await page.getByLabel("Time range").selectOption("86400");
  await waitText(page, "#chart-note", /one every 10 min/);
  assert.match(await page.textContent("#chart-cold-summary"), /^1 cold start\(s\)/);
  await page.screenshot({ path: path.join(SHOTS, "charts.png"), fullPage: true });
  ok("the first request: one cold start with its mean duration, and its queue delay, also over 24 h");
  assert.deepEqual(failures, []);
} finally {
  await browser.close();
  await call(`/v1/endpoints/${NAME}`, "DELETE");
}
