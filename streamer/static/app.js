// crowdwatch live page: polls /api/results every second and fills in the tiles.
// No framework, no network access beyond this server; text is set with
// textContent only, never parsed as HTML.
"use strict";

const POLL_MS = 1000;
const TIMEOUT_MS = 2500;
const STREAM_RETRY_MS = 3000;

const tiles = new Map();
for (const el of document.querySelectorAll(".tile[data-camera]")) {
  const fields = {};
  for (const f of el.querySelectorAll("[data-f]")) fields[f.dataset.f] = f;
  tiles.set(el.dataset.camera, { el, fields, img: el.querySelector("img") });
}

function fmtCount(v) {
  if (v === null || v === undefined) return "\u2013";
  return v >= 10 ? v.toFixed(0) : v.toFixed(1);
}

function fmtAge(s) {
  if (s === null || s === undefined) return "\u2013";
  if (s < 10) return s.toFixed(1) + " s ago";
  if (s < 120) return s.toFixed(0) + " s ago";
  if (s < 7200) return (s / 60).toFixed(0) + " min ago";
  return (s / 3600).toFixed(0) + " h ago";
}

function over(value, limit) {
  return value !== null && value !== undefined && limit !== null && value > limit;
}

function setClass(el, name, on) {
  el.classList.toggle(name, Boolean(on));
}

function updateTile(tile, cam) {
  const f = tile.fields;
  const stateClass = cam.state === "no data" ? "nodata" : cam.state;
  for (const c of ["live", "stale", "nodata"]) setClass(tile.el, c, c === stateClass);
  f.state.textContent = cam.state === "stale" ? "stale \u00b7 " + fmtAge(cam.age_s) : cam.state;

  const th = cam.thresholds;
  f.count.textContent = fmtCount(cam.count);
  setClass(f.count, "alert", over(cam.count, th.people));
  f.uncertainty.textContent = cam.uncertainty === null ? "" : "\u00b1 " + fmtCount(cam.uncertainty);
  setClass(f.uncertainty, "warn", over(cam.uncertainty, th.uncertainty));
  f.close_pairs.textContent = fmtCount(cam.close_pairs);
  setClass(f.close_pairs, "alert", over(cam.close_pairs, th.close_pairs));
  // Uncalibrated cameras measure density per input pixel squared: not comparable to the threshold.
  const peak = cam.density_peak_per_m2;
  f.density_label.textContent = cam.calibrated === false ? "peak density /px\u00b2" : "peak density /m\u00b2";
  f.density_peak.textContent = peak === null ? "\u2013" : (cam.calibrated ? peak.toFixed(2) : peak.toExponential(1));
  setClass(f.density_peak, "alert", cam.calibrated && over(peak, th.density_per_m2));
  f.age.textContent = fmtAge(cam.age_s);

  for (const li of tile.el.querySelectorAll(".zones li[data-zone]")) {
    li.querySelector(".zval").textContent = fmtCount(cam.zones[li.dataset.zone]);
  }
  if (cam.state === "no data") {
    f.meta.textContent = "waiting for the first result";
  } else {
    const parts = ["model " + cam.model_version, "seq " + cam.seq, "latency " + cam.latency_s.toFixed(2) + " s"];
    if (cam.truth !== null) parts.push("truth " + fmtCount(cam.truth));
    if (!cam.has_image) parts.push("no video in results");
    f.meta.textContent = parts.join(" \u00b7 ");
  }
}

function updatePage(data) {
  let total = 0;
  let live = 0;
  for (const cam of data.cameras) {
    const tile = tiles.get(cam.camera);
    if (tile) updateTile(tile, cam);
    if (cam.state === "live") {
      live += 1;
      total += cam.count;
    }
  }
  document.getElementById("total").textContent = (live ? fmtCount(total) : "\u2013") + " people";
  document.getElementById("live").textContent = live + " / " + data.cameras.length + " live";
  const dropped = Object.values(data.dropped).reduce((a, b) => a + b, 0);
  document.getElementById("dropped").textContent = String(dropped);
  document.getElementById("updated").textContent = "updated " + new Date(data.generated_at * 1000).toLocaleTimeString();
}

let connected = null;

function setConnected(ok) {
  const el = document.getElementById("conn");
  el.dataset.ok = ok ? "yes" : "no";
  el.textContent = ok ? "connected" : "connection lost";
  // Streams die with the connection; reopen them when it comes back.
  if (ok && connected === false) for (const t of tiles.values()) restartStream(t.img);
  connected = ok;
}

function restartStream(img) {
  img.src = img.dataset.src + "?t=" + Date.now();
}

for (const t of tiles.values()) {
  t.img.addEventListener("error", () => setTimeout(() => restartStream(t.img), STREAM_RETRY_MS));
}

async function poll() {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), TIMEOUT_MS);
  try {
    const resp = await fetch("/api/results", { cache: "no-store", signal: ctrl.signal });
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    updatePage(await resp.json());
    setConnected(true);
  } catch (err) {
    setConnected(false);
  } finally {
    clearTimeout(timer);
    setTimeout(poll, POLL_MS);
  }
}

poll();
