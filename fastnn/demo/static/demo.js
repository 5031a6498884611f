// The page only draws and displays: every number comes from the server
// (POST /api/predict runs fastnn's own kernels), none is computed here.
"use strict";

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const padCtx = pad.getContext("2d");
const input = $("input");
const inputCtx = input.getContext("2d");
const LINE_WIDTH = 22; // on the 280 px pad: about MNIST's stroke once scaled to 20 px

let model = null;       // GET /api/model
let hasInk = false;     // anything drawn since the last clear
let inFlight = false;   // one request at a time per tab ...
let dirty = false;      // ... and one more when the drawing changed meanwhile
let generation = 0;     // bumped by Clear and by a test digit: late answers are dropped
let showingSample = false;
const strokes = new Map(); // pointerId -> last point of its stroke

function setStatus(text, error) {
  $("status").textContent = text || "\u00a0";
  document.body.dataset.status = error ? "error" : (inFlight || dirty ? "busy" : "idle");
}

// ---------------------------------------------------------------- drawing

function clearPad() {
  padCtx.fillStyle = "#000"; // opaque black: the PNG has no transparency to guess about
  padCtx.fillRect(0, 0, pad.width, pad.height);
  hasInk = false;
}

function point(e) {
  const r = pad.getBoundingClientRect();
  return { x: (e.clientX - r.left) * pad.width / r.width,
           y: (e.clientY - r.top) * pad.height / r.height };
}

function segment(a, b) {
  padCtx.strokeStyle = "#fff";
  padCtx.lineWidth = LINE_WIDTH;
  padCtx.lineCap = "round";
  padCtx.lineJoin = "round";
  padCtx.beginPath();
  padCtx.moveTo(a.x, a.y);
  padCtx.lineTo(b.x, b.y);
  padCtx.stroke();
}

function dot(p) { // a stroke's start: a zero-length line would draw nothing
  padCtx.fillStyle = "#fff";
  padCtx.beginPath();
  padCtx.arc(p.x, p.y, LINE_WIDTH / 2, 0, 2 * Math.PI);
  padCtx.fill();
}

pad.addEventListener("pointerdown", (e) => {
  if (e.pointerType === "mouse" && e.button !== 0) return;
  e.preventDefault();
  if (showingSample) { // a new drawing replaces the test digit
    showingSample = false;
    generation++;
    clearPad();
    $("sample-info").textContent = "";
  }
  pad.setPointerCapture(e.pointerId);
  const p = point(e);
  strokes.set(e.pointerId, p);
  dot(p);
  hasInk = true;
  schedule();
});

pad.addEventListener("pointermove", (e) => {
  let last = strokes.get(e.pointerId);
  if (!last) return;
  e.preventDefault();
  // a fast stroke delivers several positions per event: draw through all of them
  const events = (e.getCoalescedEvents && e.getCoalescedEvents().length)
    ? e.getCoalescedEvents() : [e];
  for (const ev of events) {
    const p = point(ev);
    segment(last, p);
    last = p;
  }
  strokes.set(e.pointerId, last);
  schedule();
});

for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
  pad.addEventListener(type, (e) => strokes.delete(e.pointerId));
}

// ---------------------------------------------------------------- the server

function schedule() {
  if (!hasInk || !model) return;
  if (inFlight) { dirty = true; setStatus("thinking\u2026"); return; }
  predict();
}

async function api(url, options) {
  const r = await fetch(url, options);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

async function predict() {
  const gen = generation;
  inFlight = true;
  dirty = false;
  setStatus("thinking\u2026");
  let error = null;
  try {
    const data = await api("/api/predict", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image: pad.toDataURL("image/png") }),
    });
    if (gen === generation) render(data);
  } catch (err) {
    error = err;
  }
  inFlight = false;
  if (dirty) predict(); // the drawing changed while this one was computed
  else if (error) setStatus(`No prediction: ${error.message}`, true);
  else setStatus("");
}

async function showSample() {
  const gen = ++generation;
  try {
    const data = await api("/api/sample");
    if (gen !== generation) return;
    showingSample = true;
    drawDigit(data.input);
    render(data);
    const name = (k) => model.classes[k];
    const verdict = data.label === data.true_label ? "right" : "wrong";
    const info = $("sample-info");
    info.textContent = `Test image #${data.index}: true label ${name(data.true_label)}; ` +
      `the network says ${name(data.label)} (${verdict}). Draw to replace it.`;
    info.dataset.index = data.index;
    info.dataset.trueLabel = data.true_label;
    setStatus("");
  } catch (err) {
    setStatus(`No test digit: ${err.message}`, true);
  }
}

function drawDigit(pixels) { // a 28x28 test image, shown large with its square pixels
  clearPad();
  const small = document.createElement("canvas");
  small.width = small.height = 28;
  small.getContext("2d").putImageData(grayImage(pixels), 0, 0);
  padCtx.imageSmoothingEnabled = false;
  padCtx.drawImage(small, 0, 0, pad.width, pad.height);
}

// ---------------------------------------------------------------- display

function grayImage(pixels) {
  const img = new ImageData(28, 28);
  pixels.forEach((v, i) => img.data.set([v, v, v, 255], 4 * i));
  return img;
}

function render(data) {
  inputCtx.putImageData(grayImage(data.input), 0, 0);
  const rows = $("bars").children;
  data.probabilities.forEach((p, k) => {
    const row = rows[k];
    row.dataset.probability = String(p);
    row.querySelector(".fill").style.width = `${100 * p}%`;
    row.querySelector(".pct").textContent = `${(100 * p).toFixed(1)}%`;
    row.classList.toggle("top", k === data.label);
  });
  $("label").textContent = model.classes[data.label];
  renderHidden(data.hidden);
  document.body.dataset.updates = Number(document.body.dataset.updates) + 1;
}

function renderHidden(hidden) {
  const cards = $("units").children;
  const peak = Math.max(1e-9, ...hidden.map((h) => h.activation));
  hidden.forEach((h, i) => {
    const card = cards[i];
    const src = weightsUrl(h.unit);
    const img = card.querySelector("img");
    if (img.getAttribute("src") !== src) img.src = src;
    card.dataset.unit = h.unit;
    card.dataset.activation = String(h.activation);
    card.querySelector(".fill").style.width = `${100 * h.activation / peak}%`;
    card.querySelector("figcaption").textContent =
      `unit ${h.unit}: ${h.activation.toFixed(2)}`;
    card.classList.toggle("off", h.activation <= 0);
  });
}

function resetDisplay() {
  inputCtx.fillStyle = "#000";
  inputCtx.fillRect(0, 0, 28, 28);
  for (const row of $("bars").children) {
    row.classList.remove("top");
    row.querySelector(".fill").style.width = "0";
    row.querySelector(".pct").textContent = "";
    delete row.dataset.probability;
  }
  $("label").textContent = "\u2013";
  for (const card of $("units").children) {
    card.querySelector(".fill").style.width = "0";
    card.classList.remove("off");
    if (model.hidden_shown === "top") card.querySelector("img").removeAttribute("src");
    card.querySelector("figcaption").textContent =
      model.hidden_shown === "top" ? "" : `unit ${card.dataset.unit}`;
  }
}

const weightsUrl = (unit) => `/api/weights/${unit}.png?model=${model.token}`;

function element(tag, className, parent) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (parent) parent.appendChild(el);
  return el;
}

function build() {
  const about = model.about;
  const acc = about.test_accuracy == null ? ""
    : ` \u00b7 ${(100 * about.test_accuracy).toFixed(2)}% on the test set`;
  $("about").textContent = `${model.sizes.join("-")} network (${model.dtype}) \u00b7 ` +
    `${about.source}${acc} \u00b7 computed by fastnn's numba kernels`;

  for (let k = 0; k < model.classes.length; k++) {
    const row = element("div", "row", $("bars"));
    row.dataset.class = k;
    element("span", "name", row).textContent = model.classes[k];
    element("div", "fill", element("div", "track", row));
    element("span", "pct", row);
  }

  const n = model.hidden_units;
  const shown = model.units_shown;
  $("hidden-what").textContent = n === 0 ? "(this network has no hidden layer)"
    : model.hidden_shown === "all" ? `(all ${n} of the first hidden layer)`
    : `(the ${shown} most active of ${n}, most active first)`;
  if (n === 0) $("hidden-note").hidden = true;
  for (let i = 0; i < shown; i++) {
    const card = element("figure", "unit", $("units"));
    const img = element("img", "", card);
    img.alt = "first-layer weights";
    element("div", "fill", element("div", "track", card));
    element("figcaption", "", card);
    if (model.hidden_shown === "all") { card.dataset.unit = i; img.src = weightsUrl(i); }
  }
  if (!model.test_set) {
    $("sample").disabled = true;
    $("sample").title = "the demo started without the test set";
  }
}

$("clear").addEventListener("click", () => {
  generation++;
  dirty = false;
  showingSample = false;
  clearPad();
  resetDisplay();
  $("sample-info").textContent = "Draw with a mouse, a finger or a pen.";
  setStatus("");
});
$("sample").addEventListener("click", showSample);

(async function start() {
  clearPad();
  try {
    model = await api("/api/model");
  } catch (err) {
    setStatus(`Cannot reach the fastnn demo server: ${err.message}`, true);
    return;
  }
  build();
  resetDisplay();
  setStatus("");
})();
