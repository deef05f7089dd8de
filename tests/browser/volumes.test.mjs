// The console's volumes page in headless Chromium against a running sgpud
// (see run.py): the empty state, a 422 beside the size field, creating a
// volume, mounting it in an endpoint through the endpoint form's volume rows,
// seeing it listed as mounted by that endpoint, a delete refused with the
// API's 409 while mounted, editing the mount away, then the delete. Every
// control is found by its label text. Each check prints "ok - ..." or throws.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import path from "node:path";
import { waitText } from "./wait.mjs";

const SCALE = Number(process.env.SGPU_TEST_TIMEOUT_SCALE || "1");
const URL = process.env.SGPU_URL, KEY = process.env.SGPU_KEY, WORKER = process.env.SGPU_WORKER;
const SHOTS = process.env.SHOTS_DIR;
const ms = (x) => Math.round(x * SCALE);
const ok = (what) => console.log("ok - " + what);
const shot = (page, name) => page.screenshot({ path: path.join(SHOTS, name + ".png"), fullPage: true });

async function getJSON(pathname) {
  const r = await fetch(URL + pathname, { headers: { Authorization: "Bearer " + KEY } });
  assert.equal(r.status, 200, pathname);
  return r.json();
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM, headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const failures = [];
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(ms(10000));
  page.on("pageerror", (e) => failures.push("page error: " + e.message));
  page.on("dialog", (d) => d.accept());
  page.on("console", (m) => {
    // the failed calls the flow provokes (409, 422) and 401s Chromium logs as errors, as manage.test.mjs filters them
    if (m.type() === "error" && !/status of (401|409|422)/.test(m.text())) failures.push("console error: " + m.text());
  });

  await page.goto(URL + "/");
  await page.getByLabel("API key").fill(KEY);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForSelector("#endpoints");

  // ---- empty, then a size the API refuses, then created
  await page.getByRole("link", { name: "Volumes" }).click();
  await waitText(page, "#volumes-empty", /No volumes/);
  await page.getByLabel("Volume name").fill("form-vol");
  await page.getByLabel("Size (GiB, optional)").fill("0");
  await page.getByRole("button", { name: "Create volume" }).click();
  await page.waitForSelector("[data-field=size_bytes][aria-invalid=true]");
  await page.getByLabel("Size (GiB, optional)").fill("2");
  await page.getByRole("button", { name: "Create volume" }).click();
  await page.waitForSelector('#volumes tr[data-id="form-vol"]');
  assert.match(await page.textContent('#volumes tr[data-id="form-vol"]'), /2\.0 GiB.*0 B.*none/);
  assert.equal((await getJSON("/v1/volumes/form-vol")).size_bytes, 2 * 1073741824);
  ok("volumes: empty state, the API's 422 beside the size, then created with its size, used and mounted by none");

  // ---- mount it in a new endpoint through the form; a bad path is shown beside its field
  await page.goto(URL + "/#/new");
  await page.getByLabel("Name", { exact: true }).fill("form-vol-ep");
  await page.getByLabel("Command (one argument a line)").fill(WORKER);
  await page.getByRole("button", { name: "Add volume" }).click();
  await page.getByLabel("Volume 1 kind", { exact: true }).selectOption("name");
  await page.getByLabel("Volume 1 name or host path", { exact: true }).fill("form-vol");
  await page.getByLabel("Volume 1 path", { exact: true }).fill("relative");
  await page.getByRole("button", { name: "Create endpoint" }).click();
  await page.waitForSelector("[data-field='volumes[0].path'][aria-invalid=true]");
  await page.getByLabel("Volume 1 path", { exact: true }).fill("/data");
  await page.getByLabel("Volume 1 read only", { exact: true }).check();
  await page.getByRole("button", { name: "Create endpoint" }).click();
  await page.waitForFunction(() => location.hash === "#/e/form-vol-ep");
  const ep = await getJSON("/v1/endpoints/form-vol-ep");
  assert.deepEqual(ep.volumes, [{ name: "form-vol", path: "/data", read_only: true }]);
  ok("endpoint form: a volume row (name, path, read only) is sent as spec.volumes; a bad path shown beside its field");

  // ---- listed as mounted by that endpoint; a delete is refused with the API's 409
  await page.goto(URL + "/#/volumes");
  await page.waitForFunction(() => /form-vol-ep/.test(document.querySelector('#volumes tr[data-id="form-vol"]')?.textContent ?? ""));
  await page.getByRole("button", { name: "Delete volume form-vol" }).click();
  await waitText(page, "#volumes-error", /mounted by endpoint\(s\).*form-vol-ep/);
  assert.equal((await getJSON("/v1/volumes/form-vol")).name, "form-vol");
  await shot(page, "volumes-in-use");
  ok("the volume is listed as mounted by form-vol-ep; its delete shows the API's 409 in_use and keeps it");

  // ---- edit: the form shows the mount; removing it frees the volume, which is then deleted
  await page.goto(URL + "/#/e/form-vol-ep/edit");
  await page.waitForSelector("#endpoint-form");
  assert.equal(await page.getByLabel("Volume 1 name or host path", { exact: true }).inputValue(), "form-vol");
  assert.equal(await page.getByLabel("Volume 1 path", { exact: true }).inputValue(), "/data");
  assert.equal(await page.getByLabel("Volume 1 read only", { exact: true }).isChecked(), true);
  await page.getByRole("button", { name: "Remove volume 1" }).click();
  await waitText(page, "#restart-note", /Restarts the workers.*volumes/);
  await page.getByRole("button", { name: "Save changes" }).click();
  await page.waitForFunction(() => location.hash === "#/e/form-vol-ep");
  assert.equal((await getJSON("/v1/endpoints/form-vol-ep")).volumes, undefined);
  await page.goto(URL + "/#/volumes");
  await page.waitForFunction(() => /none/.test(document.querySelector('#volumes tr[data-id="form-vol"]')?.textContent ?? ""));
  await page.getByRole("button", { name: "Delete volume form-vol" }).click();
  await page.waitForFunction(() => !document.querySelector('#volumes tr[data-id="form-vol"]'));
  const gone = await fetch(URL + "/v1/volumes/form-vol", { headers: { Authorization: "Bearer " + KEY } });
  assert.equal(gone.status, 404);
  ok("edit shows the volume row; removing it saves a spec without volumes; then the volume is deleted");

  // ---- 420 px wide
  await page.setViewportSize({ width: 420, height: 900 });
  for (const [hash, sel] of [["#/volumes", "#volumes"], ["#/e/form-vol-ep/edit", "#endpoint-form"]]) {
    await page.goto(URL + "/" + hash);
    await page.waitForSelector(sel);
    if (hash.endsWith("edit")) await page.getByRole("button", { name: "Add volume" }).click();
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(wide <= 420, `${hash} is ${wide} px wide at 420`);
    await shot(page, "narrow-" + hash.replace(/[^a-z]/g, ""));
  }
  ok("the volumes page and the form's volume rows fit 420 px");

  assert.deepEqual(failures, []);
} finally {
  await browser.close();
}
