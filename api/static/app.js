// The deconv dashboard: plain JavaScript over the public HTTP API (the same routes the Python client uses).
// Every request carries the API key from sessionStorage when there is one; a 401 asks for it (once per tab).
"use strict";

const KEY_NAME = "deconv-api-key";
const REFRESH_MS = 1500;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

const state = {
  selected: null,        // id of the job shown on the right
  images: new Map(),     // element id -> {url, tag}: object URLs of the pictures shown, and what they show
  asking: null,          // the pending key dialog (one at a time)
  presets: [],
};

const $ = (id) => document.getElementById(id);

// -- HTTP ------------------------------------------------------------------------------------------------------

async function api(path, options = {}) {
  for (;;) {
    const headers = new Headers(options.headers || {});
    const key = sessionStorage.getItem(KEY_NAME);
    if (key) headers.set("X-API-Key", key);
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    await askKey(key !== null);
  }
}

function askKey(wrong) {
  if (state.asking) return state.asking;
  const dialog = $("key-dialog");
  $("key-wrong").hidden = !wrong;
  state.asking = new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const value = $("key-input").value.trim();
      if (value) sessionStorage.setItem(KEY_NAME, value);
      state.asking = null;
      resolve();
    }, { once: true });
  });
  $("key-input").value = "";
  dialog.showModal();
  return state.asking;
}

async function errorText(response) {
  let body;
  try { body = await response.json(); } catch { return `HTTP ${response.status}`; }
  const detail = body && body.detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("; ");
  }
  return typeof detail === "string" ? detail : `HTTP ${response.status}`;
}

async function getJSON(path) {
  const response = await api(path);
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

// -- small drawing helpers -------------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("data-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  node.append(...children);
  return node;
}

function percent(job) {
  if (job.status === "succeeded") return 100;
  return Math.floor(100 * job.progress.fraction);
}

function progressBar(job) {
  const bar = el("div", { class: `bar ${job.status}` }, el("div", { class: "fill" }));
  setProgress(bar, job);
  return bar;
}

function setProgress(bar, job) {
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  bar.setAttribute("aria-valuenow", String(percent(job)));
  bar.firstChild.style.width = `${percent(job)}%`;
}

// An encode job (spec.kind "encode") has no layers of its own: its progress counts the images encoded.
function isEncode(job) {
  return job.spec.kind === "encode";
}

function nLayers(job) {
  return isEncode(job) ? job.spec.layer : job.spec.layers.length;
}

function layerText(job) {
  const p = job.progress;
  if (job.status === "queued") return "queued";
  if (isEncode(job)) return `${p.iteration} of ${p.n_iter} images encoded`;
  const layer = Math.max(p.layer, 1);
  return `layer ${layer} of ${p.n_layers}, iteration ${p.iteration} of ${p.n_iter}`;
}

function number(x) {
  if (x === null || x === undefined) return "–";
  return Math.abs(x) >= 1e4 || Math.abs(x) < 1e-2 ? x.toExponential(2) : x.toPrecision(4);
}

// -- the jobs list ---------------------------------------------------------------------------------------------

async function refreshJobs() {
  const page = await getJSON("jobs?limit=20");
  const list = $("jobs");
  list.replaceChildren();
  if (page.items.length === 0) list.append(el("li", { class: "empty" }, "no jobs yet"));
  for (const job of page.items) {
    const item = el("li", { class: job.id === state.selected ? "job selected" : "job", "data-job-id": job.id },
      el("div", { class: "job-line" },
        el("code", {}, job.id.slice(0, 8)),
        el("span", { class: `status ${job.status}` }, job.status),
        el("span", { class: "progress-label" }, `${percent(job)} %`)),
      progressBar(job),
      el("div", { class: "hint" }, `${new Date(job.created_at).toLocaleTimeString()} · `
        + (isEncode(job) ? "encode · " : "") + `${nLayers(job)} layer${nLayers(job) > 1 ? "s" : ""}`));
    item.addEventListener("click", () => select(job.id));
    list.append(item);
  }
  if (state.selected === null && page.items.length > 0) select(page.items[0].id);
}

// -- one job ---------------------------------------------------------------------------------------------------

function select(jobId) {
  if (state.selected !== jobId) {
    for (const { url } of state.images.values()) URL.revokeObjectURL(url);
    state.images.clear();
    $("montages").replaceChildren();
    $("reconstructions").replaceChildren(el("p", { class: "hint" }, "once the job has succeeded"));
    $("curves").replaceChildren(el("p", { class: "hint" }, "no outer iteration yet"));
  }
  state.selected = jobId;
  history.replaceState(null, "", `#${jobId}`);
  for (const item of document.querySelectorAll("#jobs li.job")) {
    item.classList.toggle("selected", item.dataset.jobId === jobId);
  }
  refreshDetail();
}

async function refreshDetail() {
  const jobId = state.selected;
  if (jobId === null) return;
  const job = await getJSON(`jobs/${jobId}`);
  if (jobId !== state.selected) return;
  $("nothing").hidden = true;
  $("detail").hidden = false;
  $("job-id").textContent = job.id;
  const status = $("job-status");
  status.textContent = job.status;
  status.className = `status ${job.status}`;
  $("job-bar").parentElement.className = `bar large ${job.status}`;
  setProgress($("job-bar").parentElement, job);
  const p = job.progress;
  $("job-progress").textContent = `${percent(job)} % · ${layerText(job)}`
    + (p.objective !== null ? ` · objective ${number(p.objective)}` : "")
    + (p.elapsed !== null ? ` · ${p.elapsed.toFixed(1)} s` : "");
  $("job-error").hidden = !job.error;
  $("job-error").textContent = job.error || "";
  $("spec").textContent = JSON.stringify(job.spec, null, 2);
  const jobHistory = await getJSON(`jobs/${jobId}/history`);
  drawCurves(jobHistory, nLayers(job));
  if (isEncode(job)) return;  // maps only: no filters to show, no reconstructions
  await refreshMontages(job);
  if (job.status === "succeeded") await showPicture("reconstruction", `jobs/${jobId}/reconstructions?format=png`,
    $("reconstructions"), "inputs beside their reconstructions", "final");
}

async function refreshMontages(job) {
  if (job.status === "queued" || job.status === "failed" || job.status === "cancelled") return;
  const top = job.status === "succeeded" ? job.progress.n_layers : Math.max(job.progress.layer, 1);
  for (let layer = 1; layer <= top; layer++) {
    const id = `montage-L${layer}`;
    if (state.images.get(id)?.final) continue;
    let figure = $(`figure-L${layer}`);
    if (!figure) {
      figure = el("figure", { id: `figure-L${layer}` }, el("div", { class: "frame" }),
        el("figcaption", {}, `layer ${layer}: waiting for the first checkpoint`));
      $("montages").append(figure);
    }
    const response = await api(`jobs/${job.id}/filters/latest?layer=${layer}&format=png`);
    if (response.status === 409) continue;  // no checkpoint of this layer yet
    if (!response.ok) { figure.lastChild.textContent = `layer ${layer}: ${await errorText(response)}`; continue; }
    const iteration = response.headers.get("X-Deconv-Iteration");
    const final = response.headers.get("X-Deconv-Final") === "true" && job.status === "succeeded";
    const layerIters = job.spec.layers[layer - 1].n_iter || job.spec.n_iter;
    const where = response.headers.get("X-Deconv-Final") === "true" ? "learned" : "newest checkpoint";
    figure.lastChild.textContent = `layer ${layer} · iteration ${iteration} of ${layerIters} · ${where}`;
    const tag = `${iteration}-${where}`;
    if (state.images.get(id)?.tag === tag) continue;
    putImage(id, await response.blob(), tag, final, figure.firstChild, `filters of layer ${layer}`);
  }
}

async function showPicture(id, path, container, alt, tag) {
  if (state.images.has(id)) return;
  const response = await api(path);
  if (!response.ok) return;
  container.replaceChildren();
  putImage(id, await response.blob(), tag, true, container, alt);
}

function putImage(id, blob, tag, final, container, alt) {
  const old = state.images.get(id);
  const url = URL.createObjectURL(blob);
  let img = $(id);
  if (!img) {
    img = el("img", { id, alt, class: "picture" });
    container.append(img);
  }
  img.src = url;
  if (old) URL.revokeObjectURL(old.url);
  state.images.set(id, { url, tag, final });
}

// The objective of each layer on its own axes: the layers' objectives live on different scales.
function drawCurves(records, nLayers) {
  const box = $("curves");
  if (records.length === 0) return;
  box.replaceChildren();
  for (let layer = 1; layer <= nLayers; layer++) {
    const points = records.filter((r) => r.layer === layer && r.objective !== null);
    if (points.length === 0) continue;
    box.append(curve(layer, points));
  }
}

function curve(layer, points) {
  const W = 300, H = 160, L = 58, R = 10, T = 22, B = 26;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "curve");
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  const ys = points.map((p) => p.objective);
  const lo = Math.min(...ys), hi = Math.max(...ys);
  const first = points[0].iteration, last = points[points.length - 1].iteration;
  const x = (it) => L + (W - L - R) * (last === first ? 0.5 : (it - first) / (last - first));
  const y = (v) => T + (H - T - B) * (hi === lo ? 0.5 : (hi - v) / (hi - lo));
  add("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "plot" });
  add("text", { x: L, y: 14, class: "title" }, `layer ${layer}: objective`);
  add("text", { x: L - 6, y: T + 4, class: "tick end" }, number(hi));
  add("text", { x: L - 6, y: H - B, class: "tick end" }, number(lo));
  add("text", { x: L, y: H - 8, class: "tick" }, String(first));
  add("text", { x: W - R, y: H - 8, class: "tick end" }, String(last));
  add("text", { x: (L + W - R) / 2, y: H - 8, class: "tick middle" }, "outer iteration");
  add("polyline", { points: points.map((p) => `${x(p.iteration)},${y(p.objective)}`).join(" "),
                    class: `line l${layer}` });
  return svg;
}

// -- submitting a job ------------------------------------------------------------------------------------------

async function loadPresets() {
  state.presets = await getJSON("presets");
  const select = $("preset");
  select.replaceChildren(...state.presets.map((p) => el("option", { value: p.name }, p.name)));
  const demo = state.presets.find((p) => p.name === "demo");
  if (demo) select.value = "demo";
  describePreset();
}

function describePreset() {
  const preset = state.presets.find((p) => p.name === $("preset").value);
  if (!preset) return;
  const layers = preset.spec.layers.map((l, i) => `layer ${i + 1}: ${l.n_filters} filters `
    + `${l.filter_size}×${l.filter_size}, ${l.n_iter || preset.spec.n_iter || 50} iterations`);
  $("preset-description").replaceChildren(preset.description, ...layers.map((t) => el("span", { class: "layer" }, t)));
}

async function submit(event) {
  event.preventDefault();
  const message = $("submit-message");
  const button = $("submit");
  const preset = state.presets.find((p) => p.name === $("preset").value);
  button.disabled = true;
  message.className = "message";
  try {
    message.textContent = "uploading images…";
    const form = new FormData();
    for (const file of $("files").files) form.append("files", file, file.name);
    const uploaded = await api("datasets", { method: "POST", body: form });
    if (!uploaded.ok) throw new Error(`images refused: ${await errorText(uploaded)}`);
    const dataset = await uploaded.json();
    message.textContent = `${dataset.n_images} images uploaded; submitting…`;
    const created = await api("jobs", { method: "POST", headers: { "Content-Type": "application/json" },
                                        body: JSON.stringify({ ...preset.spec, dataset_id: dataset.id }) });
    if (!created.ok) throw new Error(`job refused: ${await errorText(created)}`);
    const job = await created.json();
    message.textContent = `job ${job.id.slice(0, 8)} submitted (${preset.name} on ${dataset.n_images} images)`;
    select(job.id);
    await refreshJobs();
  } catch (error) {
    message.className = "message error";
    message.textContent = error.message;
  } finally {
    button.disabled = false;
  }
}

// -- start -----------------------------------------------------------------------------------------------------

async function tick() {
  try {
    await refreshJobs();
    await refreshDetail();
  } catch (error) {
    $("service").textContent = `error: ${error.message}`;
  } finally {
    setTimeout(tick, REFRESH_MS);
  }
}

async function start() {
  $("submit-form").addEventListener("submit", submit);
  $("preset").addEventListener("change", describePreset);
  $("key-button").addEventListener("click", () => askKey(false));
  const health = await (await fetch("health")).json();
  $("service").textContent = `service ${health.version} · runner ${health.runner}`;
  if (location.hash.length > 1) state.selected = location.hash.slice(1);
  try { await loadPresets(); } catch (error) { $("submit-message").textContent = error.message; }
  tick();
}

document.addEventListener("DOMContentLoaded", start);
