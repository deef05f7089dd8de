// The console's management flows in headless Chromium against a running
// sgpud (see run.py): empty states, secrets, creating an endpoint through the
// form (with the API's validation errors shown beside their fields), invoking
// it from the test panel, editing it, rolling it back, stopping a worker, an
// async endpoint's job, deleting, and creating and revoking an API key; then
// the pages at 420 px wide. Every control is found by its label text.
// Each check prints "ok - ..." or throws; a failure exits with status 1.
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
const shot = (page, name) => page.screenshot({ path: path.join(SHOTS, name + ".png"), fullPage: true });

async function call(pathname, { key = KEY, method = "GET", body } = {}) {
  const headers = key === null ? {} : { Authorization: "Bearer " + key };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  return fetch(URL + pathname, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
}
async function getJSON(pathname) {
  const r = await call(pathname);
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
    // failed API calls the flows provoke (422, 404 of a missing route, 409) are logged by Chromium as errors
    if (m.type() === "error" && !/status of (401|404|409|422|500)/.test(m.text())) failures.push("console error: " + m.text());
  });

  await page.goto(URL + "/");
  await page.getByLabel("API key").fill(KEY);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForSelector("#endpoints");

  // ---- empty states
  await page.goto(URL + "/#/keys");
  await waitText(page, "#api-keys-empty", /No keys/);
  await page.goto(URL + "/#/secrets");
  await waitText(page, "#secrets-empty", /No secrets/);
  await page.goto(URL + "/#/images");
  await waitText(page, "#images-empty", /No cached images/);
  await page.goto(URL + "/#/registry");
  await waitText(page, "#registry-auths-empty", /No registry credentials/);
  await shot(page, "registry-empty");
  ok("empty states: no keys, secrets, images or registry credentials");

  // ---- secrets: a bad name is shown beside its field; a good one is listed by name only
  await page.goto(URL + "/#/secrets");
  await page.getByLabel("Secret name").fill("Bad_Name");
  await page.getByLabel("Secret value").fill("v1");
  await page.getByRole("button", { name: "Save secret" }).click();
  await page.waitForSelector("[data-field=name][aria-invalid=true]");
  const nameErr = await page.getByLabel("Secret name").evaluate((n) => document.getElementById(n.getAttribute("aria-describedby")).textContent);
  assert.match(nameErr, /DNS label/);
  await page.getByLabel("Secret name").fill("form-secret");
  await page.getByLabel("Secret value").fill("s3cret-value");
  await page.getByRole("button", { name: "Save secret" }).click();
  await page.waitForSelector('#secrets tr[data-id="form-secret"]');
  assert.equal((await page.textContent("#view")).includes("s3cret-value"), false);
  await shot(page, "secrets");
  ok("secrets: the API's 422 beside the name field; a saved secret is listed without its value");

  // ---- create an endpoint through the form
  await page.goto(URL + "/#/");
  await page.getByRole("link", { name: "New endpoint" }).click();
  await page.getByLabel("Name", { exact: true }).fill("form-echo");
  assert.equal(await page.getByLabel("Async protocol").isVisible(), false, "no protocol for a sync endpoint");
  await page.getByLabel("Command (one argument a line)").fill(WORKER);
  await page.getByLabel("Health check path").fill("/health");
  await page.getByLabel("Maximum workers").fill("5000");
  await page.getByLabel("Idle timeout (s)").fill("600");
  const envRow = async (n, name, kind, value) => {
    await page.getByRole("button", { name: "Add variable" }).click();
    await page.getByLabel(`Variable ${n} name`, { exact: true }).fill(name);
    await page.getByLabel(`Variable ${n} kind`, { exact: true }).selectOption(kind);
    await page.getByLabel(`Variable ${n} value or secret name`, { exact: true }).fill(value);
  };
  await envRow(1, "SGPU_IT_RUN", "value", RUN);
  await envRow(2, "SGPU_IT_OWNER", "value", OWNER);
  await envRow(3, "TOKEN", "secret", "nosuch");
  await page.getByRole("button", { name: "Create endpoint" }).click();
  await page.waitForSelector("[data-field='workers.max'][aria-invalid=true]");
  const maxErr = await page.getByLabel("Maximum workers").evaluate((n) => document.getElementById(n.getAttribute("aria-describedby")).textContent);
  assert.match(maxErr, /1000/);
  await shot(page, "endpoint-form-error");
  await page.getByLabel("Maximum workers").fill("1");
  await page.getByRole("button", { name: "Create endpoint" }).click();
  await page.waitForSelector("[data-field='env.TOKEN'][aria-invalid=true]");
  const envErr = await page.getByLabel("Variable 3 value or secret name").evaluate((n) => document.getElementById(n.getAttribute("aria-describedby")).textContent);
  assert.match(envErr, /nosuch|secret/);
  assert.equal((await call("/v1/endpoints/form-echo")).status, 404, "nothing stored on a 422");
  await page.getByLabel("Variable 3 value or secret name").fill("form-secret");
  await page.getByRole("button", { name: "Create endpoint" }).click();
  await page.waitForFunction(() => location.hash === "#/e/form-echo");
  await waitText(page, "#ep-state", /scaled to zero/);
  const created = await getJSON("/v1/endpoints/form-echo");
  assert.equal(created.workers.max, 1);
  assert.equal(created.workers.idle_timeout_s, 600);
  assert.deepEqual(created.env.TOKEN, { secret: "form-secret" });
  assert.equal(created.command[0], WORKER);
  ok("create through the form: 422s beside workers.max and env.TOKEN, then created; state 'scaled to zero'");

  // ---- invoke it from the test panel
  assert.match(await page.textContent("#ep-url"), /\/e\/form-echo\/$/);
  assert.match(await page.getByLabel("curl example", { exact: true }).textContent(), /curl .*Authorization: Bearer/);
  await page.getByLabel("Method").selectOption("POST");
  await page.getByLabel("Path").fill("/infer");
  await page.getByLabel("Request body").fill('{"prompt": "from-the-panel"}');
  await page.getByRole("button", { name: "Send request" }).click();
  await waitText(page, "#test-status", /^200/, { timeout: ms(20000) });
  assert.match(await page.textContent("#test-body"), /from-the-panel/);
  await waitText(page, "#ep-state", /serving/);
  await shot(page, "endpoint-test-request");
  ok("the test panel invokes /e/form-echo/infer: 200 with the echoed body; state 'serving'");

  // ---- edit: a live change, then one that restarts
  await page.getByRole("link", { name: "Edit" }).click();
  await page.waitForSelector("#endpoint-form");
  assert.equal(await page.getByLabel("Name", { exact: true }).inputValue(), "form-echo");
  assert.equal(await page.getByLabel("Maximum workers").inputValue(), "1");
  await page.getByLabel("Maximum workers").fill("2");
  await waitText(page, "#restart-note", /No worker restarts.*Applies live: workers/);
  await envRow(4, "FOO", "value", "bar");
  await waitText(page, "#restart-note", /Restarts the workers.*env/);
  await shot(page, "endpoint-edit");
  await page.getByRole("button", { name: "Save changes" }).click();
  await page.waitForFunction(() => location.hash === "#/e/form-echo");
  await waitText(page, "[data-ref=flash]", /version 2; the workers are being replaced/);
  const edited = await getJSON("/v1/endpoints/form-echo");
  assert.equal(edited.version, 2);
  assert.equal(edited.workers.max, 2);
  assert.equal(edited.env.FOO, "bar");
  assert.deepEqual(edited.env.TOKEN, { secret: "form-secret" });
  ok("edit: the form is pre-filled, says what applies live and what restarts; PUT stored version 2");

  // ---- roll back to version 1
  await page.waitForSelector('#ep-rollback-version option[value="1"]', { state: "attached" });
  await page.getByLabel("Version to roll back to").selectOption("1");
  await page.getByRole("button", { name: "Roll back" }).click();
  await waitText(page, "[data-ref=flash]", /Rolled back to version 1: now version 3/);
  const rolled = await getJSON("/v1/endpoints/form-echo");
  assert.equal(rolled.version, 3);
  assert.equal(rolled.env.FOO, undefined);
  assert.equal(rolled.workers.max, 1);
  ok("roll back to version 1 makes version 3 with version 1's spec");

  // ---- stop a worker
  await page.getByRole("button", { name: "Send request" }).click();
  await waitText(page, "#test-status", /^200/, { timeout: ms(20000) });
  const live = (await getJSON("/v1/endpoints/form-echo/workers")).workers.filter((w) => w.state === "ready");
  assert.ok(live.length >= 1, "a ready worker");
  const wid = live[0].id;
  await page.getByRole("button", { name: "Stop worker " + wid }).click();
  await page.waitForFunction(async (id) => {
    const r = await fetch(`/v1/endpoints/form-echo/workers`, { headers: { Authorization: "Bearer " + sessionStorage.getItem("sgpu.key") } });
    const w = (await r.json()).workers.find((x) => x.id === id);
    return !w || ["stopped", "failed"].includes(w.state);
  }, wid, { timeout: ms(15000) });
  ok(`the stop button stopped worker ${wid}`);

  // ---- an async endpoint: run a job from the panel and see it
  await page.goto(URL + "/#/new");
  await page.getByLabel("Name", { exact: true }).fill("form-jobs");
  await page.getByLabel("Type", { exact: true }).selectOption("async");
  assert.equal(await page.getByLabel("Async protocol").isVisible(), true);
  await page.getByLabel("Command (one argument a line)").fill(WORKER);
  await page.getByLabel("Health check path").fill("/health");
  await envRow(1, "SGPU_IT_RUN", "value", RUN);
  await envRow(2, "SGPU_IT_OWNER", "value", OWNER);
  await page.getByRole("button", { name: "Create endpoint" }).click();
  await page.waitForFunction(() => location.hash === "#/e/form-jobs");
  await page.waitForSelector("[data-ref=jobsbox]:not([hidden])");
  assert.match(await page.getByLabel("curl example", { exact: true }).textContent(), /\/v2\/form-jobs\/run/);
  assert.match(await page.getByLabel("RunPod client example", { exact: true }).textContent(), /endpoint_url_base = ".*\/v2"[\s\S]*Endpoint\("form-jobs"\)/);
  await page.getByLabel("Job input (JSON)").fill("{not json");
  await page.getByRole("button", { name: "Run job" }).click();
  await page.waitForSelector("[data-field=input][aria-invalid=true]");
  await page.getByLabel("Job input (JSON)").fill('{"output": "job-output-42"}');
  await page.getByRole("button", { name: "Run job" }).click();
  await waitText(page, "#test-job-status", /COMPLETED/, { timeout: ms(30000) });
  assert.match(await page.textContent("#test-job"), /job-output-42/);
  const jobId = (await page.textContent("#test-job-status")).match(/job (\S+):/)[1];
  const listed = await call("/v1/endpoints/form-jobs/jobs?limit=10");
  if (listed.status === 404) {
    await waitText(page, "#jobs-note", /does not list jobs/);
    ok(`async: job ${jobId} run from the panel completed; this sgpud has no jobs list, the page says so`);
  } else {
    assert.equal(listed.status, 200);
    await page.waitForSelector(`#jobs tr[data-job="${jobId}"]`, { timeout: ms(10000) });
    assert.match(await page.textContent(`#jobs tr[data-job="${jobId}"]`), /COMPLETED/);
    await page.getByRole("button", { name: "Show job " + jobId }).click();
    await waitText(page, "#job-detail", /job-output-42/);
    ok(`async: job ${jobId} run from the panel completed and is listed in the jobs table with its output`);
  }
  await shot(page, "async-endpoint");

  // ---- the chart range picker
  await page.getByLabel("Time range").selectOption("604800");
  await waitText(page, "#chart-note", /one every 10 min/);
  await page.getByLabel("Time range").selectOption("900");
  await waitText(page, "#chart-note", /one every 5 s/);
  ok("the chart range picker asks /series for the range: 7 d in 10 min steps, 15 min in 5 s steps");

  // ---- delete with confirmation
  await page.getByRole("button", { name: "Delete endpoint" }).click();
  await page.waitForFunction(() => location.hash === "#/" || location.hash === "");
  await waitText(page, "[data-ref=flash]", /Deleted form-jobs/);
  await page.waitForSelector("#endpoints tr[data-name]");
  assert.equal(await page.$('#endpoints tr[data-name="form-jobs"]'), null);
  assert.equal((await call("/v1/endpoints/form-jobs")).status, 404);
  ok("delete (confirmed) removes the endpoint");

  // ---- API keys: create shows the secret once; revoke
  await page.goto(URL + "/#/keys");
  await page.getByLabel("Key name").fill("form-key");
  await page.getByLabel("read", { exact: true }).check();
  await page.getByRole("button", { name: "Create key" }).click();
  await page.waitForSelector("#new-key-secret");
  const secret = (await page.textContent("#new-key-secret")).trim();
  assert.match(secret, /^sgpu_[0-9a-f]{64}$/);
  await page.waitForSelector('#api-keys tr[data-id="form-key"]');
  assert.match(await page.textContent('#api-keys tr[data-id="form-key"]'), /invoke, read|read, invoke/);
  assert.equal((await call("/v1/endpoints", { key: secret })).status, 200);
  await shot(page, "keys");
  // the same name again: the API's 409 is shown
  await page.getByLabel("Key name").fill("form-key");
  await page.getByRole("button", { name: "Create key" }).click();
  await page.waitForFunction(() => [...document.querySelectorAll("#api-keys-form .error")].some((e) => /form-key|exists|taken/.test(e.textContent)));
  await page.goto(URL + "/#/");
  await page.goto(URL + "/#/keys");
  await page.waitForSelector('#api-keys tr[data-id="form-key"]');
  assert.equal((await page.textContent("#view")).includes(secret), false, "the secret is not shown again");
  await page.getByRole("button", { name: "Revoke key form-key" }).click();
  await page.waitForFunction(() => !document.querySelector('#api-keys tr[data-id="form-key"]'));
  assert.equal((await call("/v1/endpoints", { key: secret })).status, 401);
  ok("create a key shows its secret once; a duplicate name shows the 409; revoke makes the key fail");

  // ---- registry credentials: saved (the password never shown), then deleted
  await page.goto(URL + "/#/registry");
  await page.getByLabel("Name", { exact: true }).fill("form-reg");
  await page.getByLabel("Registry", { exact: true }).fill("localhost:5000");
  await page.getByLabel("Username").fill("robot");
  await page.getByLabel("Password").fill("pa55-word");
  await page.getByRole("button", { name: "Save credentials" }).click();
  await page.waitForSelector('#registry-auths tr[data-id="form-reg"]');
  assert.match(await page.textContent('#registry-auths tr[data-id="form-reg"]'), /localhost:5000.*robot/);
  assert.equal((await page.textContent("#view")).includes("pa55-word"), false);
  await page.getByRole("button", { name: "Delete credentials form-reg" }).click();
  await page.waitForFunction(() => !document.querySelector('#registry-auths tr[data-id="form-reg"]'));
  assert.equal((await call("/v1/registry-auths/form-reg")).status, 404);
  ok("registry credentials: saved without showing the password, then deleted");

  // ---- images: a preheat that cannot pull shows its failure in the pulls
  await page.goto(URL + "/#/images");
  await page.getByLabel("Image reference").fill("localhost:1/nothing:tag");
  await page.getByRole("button", { name: "Pull image" }).click();
  await waitText(page, "[role=status].result", /localhost:1\/nothing:tag: pulling/);
  await page.waitForFunction(() => /localhost:1\/nothing:tag: failed/.test(document.querySelector("#pulls")?.textContent ?? ""),
    null, { timeout: ms(20000) });
  ok("images: a preheat is pulling, then its failure is listed with the error");

  // ---- error state: the API down
  await page.route("**/v1/secrets", (route) => route.fulfill({ status: 500, contentType: "application/json",
    body: JSON.stringify({ error: { code: "internal", message: "store unavailable" } }) }));
  await page.goto(URL + "/#/secrets");
  await waitText(page, "#secrets-error", /store unavailable/);
  await page.unroute("**/v1/secrets");
  ok("an API error is shown on the page");

  // ---- 420 px wide: no horizontal scroll of the page; tables scroll inside their box
  await page.setViewportSize({ width: 420, height: 900 });
  for (const [hash, sel] of [["#/", "#endpoints"], ["#/e/form-echo", "#workers tbody tr"], ["#/e/form-echo/edit", "#endpoint-form"],
    ["#/keys", "#api-keys"], ["#/usage", "#usage-endpoints"]]) {
    await page.goto(URL + "/" + hash);
    await page.waitForSelector(sel);
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(wide <= 420, `${hash} is ${wide} px wide at 420`);
    await shot(page, "narrow-" + (hash.replace(/[^a-z]/g, "") || "endpoints"));
  }
  ok("every page fits 420 px; tables scroll inside their box");

  assert.deepEqual(failures, []);
} finally {
  await browser.close();
}
