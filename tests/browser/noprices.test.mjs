// The usage page of an sgpud without prices (see run.py): the chart per day
// plots GPU-seconds, which grow while a GPU worker runs, instead of a cost
// that would stay 0. Each check prints "ok - ..." or throws.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import path from "node:path";
import { waitText } from "./wait.mjs";

const SCALE = Number(process.env.SGPU_TEST_TIMEOUT_SCALE || "1");
const URL = process.env.SGPU_URL, KEY = process.env.SGPU_KEY, EP = process.env.SGPU_ENDPOINT;
const ms = (x) => Math.round(x * SCALE);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM, headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(URL + "/#/usage");
  await page.getByLabel("API key").fill(KEY);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForSelector(`#usage-endpoints tr[data-endpoint="${EP}"]`, { timeout: ms(10000) });
  await waitText(page, "[data-ref=prices]", /No prices set/);
  assert.equal(await page.textContent("#usage-chart-caption"), "GPU-seconds per day (no prices set)");
  assert.equal(await page.getAttribute("[data-ref=chart]", "aria-label"), "GPU-seconds per day");
  await page.waitForFunction(() => Number((document.querySelector("#usage-total-gpu")?.textContent ?? "").replace(/[^0-9.]/g, "")) > 0,
    null, { timeout: ms(12000) });
  const day = await page.textContent("#usage-days tbody tr");
  assert.match(day, new RegExp(EP));
  await page.screenshot({ path: path.join(process.env.SHOTS_DIR, "usage-no-prices.png"), fullPage: true });
  assert.deepEqual(errors, []);
  console.log("ok - without prices the usage chart plots GPU-seconds per day");
} finally {
  await browser.close();
}
