// The operator's console in a real browser: headless Debian chromium driven by playwright-core.
//
// Usage: node console.mjs CONFIG.json
// CONFIG: { url, operator: {cert, key}, station: {cert, key}, job, quantity, product,
//           remainingBefore, screenshot, timeoutMs }
// cert and key are PEM files (the key unencrypted PKCS#8). Exits 0 when every check holds,
// printing one line per check; 1 with the reason otherwise.
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const cfg = JSON.parse(readFileSync(process.argv[2], "utf8"));
const origin = new URL(cfg.url).origin;

function fail(msg) {
  console.error(`console test: ${msg}`);
  process.exit(1);
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});

async function contextAs(who) {
  // The service's certificate is from the HSM's station CA, which this browser does not know:
  // its chain is what the Rust side checks; here the page and its numbers are.
  return browser.newContext({
    ignoreHTTPSErrors: true,
    clientCertificates: who ? [{ origin, certPath: who.cert, keyPath: who.key }] : [],
  });
}

try {
  // A station's certificate gets no page.
  {
    const ctx = await contextAs(cfg.station);
    const page = await ctx.newPage();
    const resp = await page.goto(`${cfg.url}/console/`);
    if (!resp || resp.status() !== 403) fail(`a station certificate got ${resp && resp.status()}`);
    const body = await resp.text();
    if (!body.includes("operator_certificate")) fail(`a station's refusal says: ${body}`);
    console.log("station certificate: 403 operator_certificate");
    await ctx.close();
  }
  // No certificate: no TLS session, so no page.
  {
    const ctx = await contextAs(null);
    const page = await ctx.newPage();
    let got = null;
    try {
      const resp = await page.goto(`${cfg.url}/console/`, { timeout: 10000 });
      got = resp && resp.status();
    } catch (e) {
      got = "refused";
    }
    if (got !== "refused") fail(`no certificate got ${got}`);
    console.log("no certificate: handshake refused");
    await ctx.close();
  }

  const ctx = await contextAs(cfg.operator);
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  const resp = await page.goto(`${cfg.url}/console/`);
  if (!resp || resp.status() !== 200) fail(`the operator got ${resp && resp.status()}`);

  const jobRow = page.locator(`#jobs tr[data-job="${cfg.job}"]`);
  const good = jobRow.locator("td.good");
  // The job's progress rises while it runs: seen below the quantity first, then at it.
  const seen = new Set();
  const deadline = Date.now() + cfg.timeoutMs;
  for (;;) {
    if (Date.now() > deadline) fail(`the job's good count did not reach ${cfg.quantity}; saw ${[...seen]}`);
    if ((await jobRow.count()) > 0) {
      const n = Number((await good.textContent()).replace(/,/g, ""));
      seen.add(n);
      if (n === cfg.quantity) break;
      if (n > cfg.quantity) fail(`good ${n} over the quantity ${cfg.quantity}`);
    }
    await page.waitForTimeout(250);
  }
  const below = [...seen].filter((n) => n < cfg.quantity);
  if (below.length === 0) fail("the page never showed the job below its quantity: no live progress seen");
  console.log(`job ${cfg.job}: progress seen at ${[...seen].sort((a, b) => a - b).join(", ")}`);

  const remaining = Number(
    (await page.locator(`#products tr[data-product="${cfg.product}"] td.remaining`).textContent()).replace(/,/g, ""),
  );
  if (cfg.remainingBefore - remaining !== cfg.quantity) {
    fail(`remaining went from ${cfg.remainingBefore} to ${remaining}, not down by ${cfg.quantity}`);
  }
  console.log(`product ${cfg.product}: remaining ${cfg.remainingBefore} -> ${remaining}`);
  const ledger = await page.locator("#ledger").textContent();
  if (!ledger.includes("hash chain verified at")) fail(`ledger line: ${ledger}`);
  await page.waitForTimeout(1500);
  await page.screenshot({ path: cfg.screenshot, fullPage: true });
  console.log(`screenshot: ${cfg.screenshot}`);
  if (errors.length) fail(`the page logged errors: ${errors.join("; ")}`);
  await ctx.close();
} finally {
  await browser.close();
}
