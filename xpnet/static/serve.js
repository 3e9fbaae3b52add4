"use strict";
// The page of `xpnet serve`: draw on #pad; after every stroke the canvas's ink (its alpha channel,
// 0..255) goes to POST /api/predict, and the ten probabilities come back as bars.
const pad = document.getElementById("pad");
const ctx = pad.getContext("2d", { willReadFrequently: true });
const seen = document.getElementById("seen");
const prediction = document.getElementById("prediction");
const statusLine = document.getElementById("status");
const bars = document.getElementById("bars");
let classes = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
let drawing = false, last = null, sequence = 0;

ctx.lineCap = "round";
ctx.lineJoin = "round";
ctx.lineWidth = 20;
ctx.strokeStyle = ctx.fillStyle = "#000";

function point(e) {
  const r = pad.getBoundingClientRect();
  return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
}

function segment(a, b) {
  ctx.beginPath();
  ctx.moveTo(a[0], a[1]);
  ctx.lineTo(b[0], b[1]);
  ctx.stroke();
}

pad.addEventListener("pointerdown", (e) => {
  e.preventDefault();
  pad.setPointerCapture(e.pointerId);
  drawing = true;
  last = point(e);
  ctx.beginPath();
  ctx.arc(last[0], last[1], ctx.lineWidth / 2, 0, 2 * Math.PI);
  ctx.fill();
});

pad.addEventListener("pointermove", (e) => {
  if (!drawing) return;
  const events = (e.getCoalescedEvents && e.getCoalescedEvents().length) ? e.getCoalescedEvents() : [e];
  for (const ev of events) {
    const p = point(ev);
    segment(last, p);
    last = p;
  }
});

function endStroke() {
  if (!drawing) return;
  drawing = false;
  predict();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function inkRows() {
  const { width, height } = pad;
  const data = ctx.getImageData(0, 0, width, height).data;
  const rows = [];
  for (let y = 0; y < height; y++) {
    const row = new Array(width);
    for (let x = 0; x < width; x++) row[x] = data[(y * width + x) * 4 + 3];
    rows.push(row);
  }
  return rows;
}

async function predict() {
  const id = ++sequence;
  statusLine.textContent = "";
  try {
    const response = await fetch("/api/predict", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ pixels: inkRows() }),
    });
    const out = await response.json();
    if (id !== sequence) return;  // a newer stroke or a clear came first
    if (!response.ok) {
      statusLine.textContent = out.error || `error ${response.status}`;
      return;
    }
    show(out);
  } catch (err) {
    if (id === sequence) statusLine.textContent = `no answer from the server (${err})`;
  }
}

function buildBars() {
  bars.replaceChildren();
  for (const name of classes) {
    const row = document.createElement("div");
    row.className = "bar";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    track.appendChild(fill);
    const value = document.createElement("span");
    value.className = "value";
    row.append(label, track, value);
    bars.appendChild(row);
  }
}

function show(out) {
  prediction.textContent = out.label;
  prediction.dataset.class = out.class;
  prediction.dataset.count = Number(prediction.dataset.count) + 1;
  out.probabilities.forEach((p, k) => {
    const row = bars.children[k];
    row.classList.toggle("best", k === out.class);
    row.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    row.querySelector(".value").textContent = `${(100 * p).toFixed(1)}%`;
  });
  const image = new ImageData(28, 28);
  out.image.flat().forEach((v, i) => {
    image.data.set([v, v, v, 255], 4 * i);
  });
  seen.getContext("2d").putImageData(image, 0, 0);
}

function clear() {
  sequence++;
  ctx.clearRect(0, 0, pad.width, pad.height);
  seen.getContext("2d").clearRect(0, 0, seen.width, seen.height);
  prediction.textContent = "-";
  delete prediction.dataset.class;
  statusLine.textContent = "";
  buildBars();
}
document.getElementById("clear").addEventListener("click", clear);

function showRun(run) {
  document.getElementById("run").hidden = false;
  document.getElementById("run-name").textContent = run.folder;
  const config = run.config || {}, result = run.result || {}, recipe = config.recipe || {};
  const rows = [
    ["model", config.model && config.description ? `${config.model}: ${config.description}` : config.model],
    ["dataset", config.dataset],
    ["epochs", result.epochs_run !== undefined ? `${result.epochs_run} of ${recipe.epochs}` : recipe.epochs],
    ["optimizer", recipe.optimizer ? `${recipe.optimizer}, lr ${recipe.lr}, batch ${recipe.batch_size}` : undefined],
    ["test error", result.test_error_percent !== undefined
      ? `${result.test_error_percent} % (${result.mistakes} of ${result.test_samples})` : undefined],
    ["device", config.device],
  ];
  const table = document.getElementById("run-summary");
  for (const [key, value] of rows) {
    if (value === undefined || value === null) continue;
    const tr = table.insertRow();
    tr.insertCell().textContent = key;
    tr.insertCell().textContent = String(value);
  }
  for (const name of ["curves", "confusion"]) {
    const url = run.files[`${name}.png`];
    const img = document.getElementById(name);
    if (url) {
      img.src = url;
      img.hidden = false;
    }
  }
  if (run.config) document.getElementById("config").textContent = JSON.stringify(run.config, null, 1);
}

async function start() {
  buildBars();
  try {
    const info = await (await fetch("/api/info")).json();
    classes = info.classes.map(String);
    buildBars();
    document.getElementById("model").textContent =
      `${info.model_file}${info.model ? ` (${info.model})` : ""}, ${info.device} backend`;
    if (info.run) showRun(info.run);
  } catch (err) {
    statusLine.textContent = `could not read /api/info (${err})`;
  }
}

// For scripts and tests: predict what is on the canvas now, or clear it.
window.xpnetServe = { predict, clear };
start();
