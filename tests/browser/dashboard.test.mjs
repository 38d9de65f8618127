// The dashboard in a real browser: Debian's headless Chromium driven by playwright-core,
// against a running vmpool (the debug binary, embedded defaults, simulated ARM with 1 s
// latencies, an API key) that holds a few VMs. Run by scripts/test.sh with `node --test`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const KEY = "dashboard-test-key";
const STATES = ["Creating", "Running", "MarkedForDeallocation", "Deallocating", "Deallocated", "Standby", "Failed"];

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function until(what, fn, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn().catch(() => undefined);
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function startVmpool() {
  const port = await freePort();
  const child = spawn(process.env.VMPOOL_BIN || join(root, "target", "debug", "vmpool"), [], {
    env: {
      PATH: process.env.PATH,
      VMPOOL_PORT: String(port),
      VMPOOL_BIND: "127.0.0.1",
      VMPOOL_API_KEY: KEY,
      VMPOOL_RECONCILE_SECS: "0",
      VMPOOL_SIM_CREATE_SECS: "1",
      VMPOOL_SIM_START_SECS: "1",
      VMPOOL_SIM_DEALLOCATE_SECS: "1",
      RUST_LOG: "warn",
    },
    stdio: ["ignore", "inherit", "inherit"],
  });
  const base = `http://127.0.0.1:${port}`;
  await until("vmpool to listen", async () => (await fetch(`${base}/`)).ok);
  return { child, base };
}

async function api(base, method, path, body) {
  const sep = path.includes("?") ? "&" : "?";
  const res = await fetch(`${base}${path}${sep}code=${KEY}`, {
    method,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, json: await res.json() };
}

test("the dashboard shows the pool's VMs, counts, buffer, breaker and passes", async (t) => {
  const { child, base } = await startVmpool();
  t.after(() => child.kill("SIGTERM"));

  // Three VMs created; once ARM has them, one pass makes them Running.
  for (let i = 0; i < 3; i++) {
    assert.equal((await api(base, "POST", "/api/CreateVM")).status, 202);
  }
  await until("three Running VMs", async () => {
    await fetch(`${base}/ReconcilePool?code=${KEY}`, { method: "POST", body: "{}" });
    const s = await api(base, "GET", "/api/GetPoolStatus");
    return s.json.counts.Running === 3;
  });
  const [a, b] = (await api(base, "GET", "/api/GetAvailableVMs")).json.vms.map((v) => v.vmId);
  assert.equal((await api(base, "POST", "/api/MarkVMForDeallocation", { vmId: a })).status, 200);
  assert.equal((await api(base, "POST", "/api/ReportGameRoomsNumber", { vmId: b, rooms: 4 })).status, 200);
  // The counts are the pool's record's: the next pass counts the mark.
  await fetch(`${base}/ReconcilePool?code=${KEY}`, { method: "POST", body: "{}" });
  const status = (await api(base, "GET", "/api/GetPoolStatus")).json;
  assert.equal(status.countsFrom, "record");
  assert.equal(status.counts.Running, 2);
  assert.equal(status.counts.MarkedForDeallocation, 1);

  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const problems = [];
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  const requested = [];
  page.on("request", (r) => requested.push(r.url()));

  await page.goto(`${base}/api/Dashboard?code=${KEY}`);
  await page.waitForSelector("body[data-loaded=true]", { timeout: 10000 });

  for (const s of STATES) {
    const shown = await page.textContent(`[data-count="${s}"]`);
    assert.equal(Number(shown), status.counts[s], `count of ${s}`);
  }
  assert.equal(await page.locator("#bar > div").count(), STATES.filter((s) => status.counts[s] > 0).length);
  assert.equal(await page.locator("#vms tr").count(), status.vms.length);
  const rowB = page.locator(`tr[data-vm="${b}"]`);
  assert.match(await rowB.textContent(), /Running/);
  assert.equal((await rowB.locator("td.num").textContent()).trim(), "4");
  assert.match(await rowB.locator("td.age").textContent(), /^\d+ (s|min|h|d)$/);
  assert.match(await page.locator(`tr[data-vm="${a}"]`).textContent(), /MarkedForDeallocation/);
  assert.equal(await page.textContent("#buffer-target"), String(status.buffer.target));
  // Each pool on a row of its own: its build, counts by state, buffer, breaker, rollout.
  assert.equal(await page.locator("#pools tr").count(), status.pools.length);
  const pool = status.pools[0];
  const poolRow = page.locator(`tr[data-pool="${pool.name}"]`);
  assert.equal(await poolRow.locator("td.build").textContent(), pool.build);
  assert.match(await poolRow.locator("td.states").textContent(), /Running 2/);
  assert.match(await poolRow.locator("td.states").textContent(), /MarkedForDeallocation 1/);
  assert.equal(await poolRow.locator("td.target").textContent(), String(pool.buffer.target));
  assert.equal(await poolRow.locator("td.breaker").textContent(), "closed");
  assert.equal(await poolRow.locator("td.rollout").textContent(), "done");
  assert.equal(await rowB.locator("td.pool").textContent(), `${pool.name} / ${pool.build}`);
  assert.equal(await page.textContent("#breaker"), "closed");
  assert.equal(await page.textContent("#observation"), "ARM listing trusted");
  assert.equal(await page.textContent("#max"), String(status.maxVms));
  assert.ok((await page.locator("#passes li").count()) >= 1, "the last pass is listed");
  assert.match(await page.textContent("#last-pass-result"), /^ok, began /);
  assert.match(await page.textContent("#counted-at"), /^counted by the last pass, /);
  assert.ok(
    requested.some((u) => u.includes("/api/GetPoolStatus?code=" + KEY)),
    "the page forwards its ?code= to GetPoolStatus",
  );

  // The page refreshes by itself: CreateVM reclaims the marked VM, and once a pass has
  // counted it the page shows it Running again without a reload.
  const reclaimed = await api(base, "POST", "/api/CreateVM");
  assert.equal(reclaimed.json.action, "reclaimed");
  await fetch(`${base}/ReconcilePool?code=${KEY}`, { method: "POST", body: "{}" });
  await page.waitForFunction(
    () =>
      document.querySelector('[data-count="Running"]')?.textContent === "3" &&
      document.querySelector('[data-count="MarkedForDeallocation"]')?.textContent === "0",
    undefined,
    { timeout: 10000 },
  );

  mkdirSync(join(root, "target"), { recursive: true });
  await page.screenshot({ path: join(root, "target", "dashboard.png"), fullPage: true });
  assert.deepEqual(problems, [], "no console error");
});
