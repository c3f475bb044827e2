// The operator's console: polls /console/state once a second and draws it. Read-only: it
// sends nothing but GETs, and every text it shows goes in through textContent.
"use strict";

const POLL_MS = 1000;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function num(n) {
  return el("td", Number(n).toLocaleString("en-US"), "n");
}

function when(unix) {
  if (unix === null || unix === undefined) return "never";
  return new Date(unix * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

function fill(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows);
}

function productRow(p) {
  const tr = el("tr");
  tr.dataset.product = p.product;
  tr.append(el("td", p.product), num(p.ordered), num(p.issued), num(p.remaining));
  const td = el("td");
  const [oem, product] = p.product.split("/");
  const a = el("a", "download");
  a.href = `/console/report/${encodeURIComponent(oem)}/${encodeURIComponent(product)}`;
  td.append(a);
  tr.append(td);
  tr.querySelectorAll("td")[3].classList.add("remaining");
  return tr;
}

function jobRow(j) {
  const tr = el("tr");
  tr.dataset.job = j.job;
  const bar = el("div", null, "bar");
  const fillDiv = el("div");
  const pct = j.quantity > 0 ? Math.min(100, (100 * j.good) / j.quantity) : 0;
  fillDiv.style.width = `${pct.toFixed(1)}%`;
  bar.append(fillDiv);
  const prog = el("td");
  prog.append(bar);
  const good = num(j.good);
  good.classList.add("good");
  tr.append(el("td", j.job), el("td", j.product), num(j.quantity), num(j.issued), good,
    num(j.failed), prog, el("td", j.open ? "open" : "closed"));
  return tr;
}

function stationRow(s) {
  const tr = el("tr");
  tr.dataset.station = s.station;
  tr.append(el("td", s.station), num(s.issued), num(s.good), num(s.failed),
    el("td", when(s.last_contact)), el("td", s.revoked ? "revoked" : "active", s.revoked ? "revoked" : ""));
  return tr;
}

function drawRate(canvas, series) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#dde2e8";
  ctx.strokeRect(0.5, 0.5, w - 1, h - 1);
  if (series.length < 2) return;
  const rates = [];
  for (let i = 1; i < series.length; i++) {
    const dt = series[i].t - series[i - 1].t;
    rates.push(dt > 0 ? (series[i].good - series[i - 1].good) / dt : 0);
  }
  const max = Math.max(1, ...rates);
  ctx.strokeStyle = "#2e8b57";
  ctx.lineWidth = 2;
  ctx.beginPath();
  rates.forEach((r, i) => {
    const x = (i / Math.max(1, rates.length - 1)) * (w - 10) + 5;
    const y = h - 5 - (r / max) * (h - 20);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
  ctx.fillStyle = "#6b7785";
  ctx.fillText(`${Math.round(max)} /s`, 8, 12);
  return rates[rates.length - 1];
}

function render(s) {
  document.getElementById("hsm").textContent = `HSM ${s.hsm}`;
  document.getElementById("updated").textContent = `updated ${when(s.now)}`;
  fill("products", s.products.map(productRow));
  fill("jobs", s.jobs.map(jobRow));
  fill("stations", s.stations.map(stationRow));
  fill("failures", s.failures.map((f) => {
    const tr = el("tr");
    tr.append(el("td", f.step), el("td", f.reason), num(f.count));
    return tr;
  }));
  const alarms = document.getElementById("alarms");
  alarms.replaceChildren(...(s.alarms.length
    ? s.alarms.map((a) => el("li", a.text, `alarm-${a.level}`))
    : [el("li", "none", "muted")]));
  const last = drawRate(document.getElementById("rate"), s.rate);
  document.getElementById("rate-now").textContent =
    last === undefined ? "" : `now ${Math.round(last)} devices/s`;
  const l = s.ledger;
  const ledger = document.getElementById("ledger");
  ledger.textContent = l.chain_ok
    ? `head record ${l.records}; hash chain verified at ${when(l.checked_at)} by this service`
    : `hash chain broken: ${l.problem}`;
  ledger.className = l.chain_ok ? "" : "alarm-crit";
  document.body.dataset.records = String(l.records);
}

async function poll() {
  try {
    const r = await fetch("/console/state", { cache: "no-store" });
    if (r.ok) render(await r.json());
    else document.getElementById("updated").textContent = `the service answered ${r.status}`;
  } catch (e) {
    document.getElementById("updated").textContent = `the service is unreachable: ${e}`;
  }
  setTimeout(poll, POLL_MS);
}

poll();
