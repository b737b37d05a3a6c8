// prism's page: plain JS, no dependencies. Every piece of model output (tokens, labels, task
// names) is put into the page with textContent or drawn on a canvas, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let MODEL = null;

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function showError(msg) {
  const e = $("error");
  e.textContent = msg;
  e.hidden = !msg;
}

function setBusy(busy, what) {
  for (const b of ["predict", "explain", "faith"]) $(b).disabled = busy;
  document.body.dataset.state = busy ? "busy" : "idle";
  if (!busy) { $("status").textContent = what || ""; return; }
  const t0 = performance.now();
  const tick = () => {
    if (document.body.dataset.state !== "busy") return;
    $("status").textContent = `${what} ${((performance.now() - t0) / 1000).toFixed(1)} s`;
    setTimeout(tick, 100);
  };
  tick();
}

async function api(path, body) {
  let resp;
  try {
    resp = await fetch(path, body === undefined ? {} : {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
    });
  } catch (e) {
    throw new Error(`the server did not answer (${e.message})`);
  }
  let data = null;
  try { data = await resp.json(); } catch (_) { /* not JSON */ }
  if (!resp.ok) throw new Error((data && data.error) || `${resp.status} ${resp.statusText}`);
  return data;
}

function currentTask() {
  return MODEL.tasks.find((t) => t.name === $("task").value) || MODEL.tasks[0];
}

// A one-task model's classifier may have been fine-tuned on pairs (a transformers MNLI model):
// its second text is optional, as `prism predict --text2` reads it.
function acceptsPair(t) {
  return MODEL.tasks.length === 1 && ["classification", "multi_label", "regression"].includes(t.kind);
}

function fillTargets() {
  const t = currentTask();
  const sel = $("target");
  sel.replaceChildren(el("option", { value: "" }, "the prediction"));
  // Contrastive explanations: F = output(target) − output(foil), for another class.
  const foil = $("foil");
  foil.replaceChildren(el("option", { value: "" }, "nothing (no foil)"));
  if (t.kind === "classification" || t.kind === "pair_classification" || t.kind === "multi_label") {
    for (const l of t.labels) sel.append(el("option", { value: l }, `${t.kind === "multi_label" ? "label" : "class"} ${l}`));
    for (const l of t.labels) foil.append(el("option", { value: l }, `${t.kind === "multi_label" ? "label" : "class"} ${l}`));
  } else if (t.kind === "regression") {
    sel.append(el("option", { value: "value" }, "the value"));
  }
  const pair = t.pair || acceptsPair(t);
  $("text2-wrap").hidden = !pair;
  $("textB2-wrap").hidden = !pair;
}

async function init() {
  try {
    MODEL = await api("/api/model");
  } catch (e) {
    showError(`Could not load the model: ${e.message}`);
    return;
  }
  $("model-info").textContent =
    `${MODEL.architecture} · ${MODEL.layers} layers × ${MODEL.heads} heads · ` +
    `${(MODEL.parameters / 1e6).toFixed(1)}M parameters · ${MODEL.tasks.length} task(s)`;
  for (const t of MODEL.tasks) $("task").append(el("option", { value: t.name }, `${t.name} (${t.kind})`));
  const defaults = new Set(["ig", "saliency", "rollout"]);
  for (const m of MODEL.methods) {
    const lab = el("label");
    const cb = el("input", { type: "checkbox", value: m, name: "method" });
    cb.checked = defaults.has(m);
    lab.append(cb, document.createTextNode(" " + m));
    $("methods").append(lab);
  }
  $("steps").max = MODEL.limits.max_steps;
  fillTargets();
  $("task").addEventListener("change", fillTargets);
  $("compare").addEventListener("change", () => { $("compare-wrap").hidden = !$("compare").checked; });
  $("predict").addEventListener("click", onPredict);
  $("explain").addEventListener("click", onExplain);
  $("faith").addEventListener("click", onFaithfulness);
  $("zoom-close").addEventListener("click", () => { $("overlay").hidden = true; });
  $("overlay").addEventListener("click", (e) => { if (e.target === $("overlay")) $("overlay").hidden = true; });
  document.body.dataset.state = "idle";
}

function inputs() {
  const list = [{ name: "A", text: $("text").value, text2: $("text2").value || null }];
  if ($("compare").checked) list.push({ name: "B", text: $("textB").value, text2: $("textB2").value || null });
  for (const i of list) {
    if (!i.text.trim()) throw new Error(`Input ${i.name} is empty: type a sentence first.`);
    if (!currentTask().pair && !acceptsPair(currentTask())) i.text2 = null;
  }
  return list;
}

async function onPredict() {
  showError("");
  let list;
  try { list = inputs(); } catch (e) { showError(e.message); return; }
  setBusy(true, "Predicting…");
  const out = $("predictions");
  out.replaceChildren(el("h2", {}, "Predictions"));
  try {
    for (const i of list) {
      const r = await api("/api/predict", { text: i.text, text2: i.text2 });
      const box = el("div", { class: "pred" });
      box.append(el("div", { class: "muted" }, `input ${i.name}`));
      for (const p of r.predictions) box.append(renderPrediction(p));
      out.append(box);
    }
    setBusy(false, "");
  } catch (e) {
    setBusy(false, "");
    showError(e.message);
  }
}

function renderPrediction(p) {
  const d = el("div");
  d.append(el("strong", {}, `${p.task}: `));
  if (p.skipped) { d.append(document.createTextNode(p.skipped)); return d; }
  const pr = p.prediction;
  if (pr.probabilities) {
    // Multi-label predictions name every label at or above the threshold (maybe none).
    d.append(document.createTextNode(pr.labels ? (pr.labels.length ? pr.labels.join(", ") : "(no label)") : pr.label));
    for (const [name, prob] of Object.entries(pr.probabilities)) {
      const bar = el("div", { class: "bar" });
      const fill = el("div", { class: "fill" });
      fill.style.width = `${Math.round(prob * 200)}px`;
      bar.append(el("span", { class: "name" }, name), fill, el("span", {}, prob.toFixed(3)));
      d.append(bar);
    }
  } else if (pr.value !== undefined) {
    d.append(document.createTextNode(pr.value.toFixed(4)));
  } else if (pr.answer !== undefined) {
    d.append(document.createTextNode(`“${pr.answer}” (score ${pr.score.toFixed(3)})`));
  } else if (pr.tags) {
    d.append(document.createTextNode(pr.tags.join(" ")));
  }
  return d;
}

function color(v, max) {
  const a = max > 0 ? Math.min(1, Math.abs(v) / max) : 0;
  return v >= 0 ? `rgba(22, 163, 74, ${a.toFixed(3)})` : `rgba(220, 38, 38, ${a.toFixed(3)})`;
}

function renderHeatmap(a) {
  const row = el("div", { class: "heatmap-row" });
  const delta = a.delta !== undefined && a.delta !== null ? ` · delta ${a.delta.toExponential(1)}` : "";
  row.append(el("div", { class: "method" }, `${a.method}${delta}`));
  const map = el("div", { class: "heatmap", "data-method": a.method });
  const max = Math.max(...a.scores.map(Math.abs), 1e-12);
  a.tokens.forEach((t, i) => {
    const s = el("span", { class: "tok", title: `${t}: ${a.scores[i].toFixed(4)}` }, t);
    s.style.background = color(a.scores[i], max);
    map.append(s);
  });
  row.append(map);
  return row;
}

function drawMatrix(canvas, m, tokens, labels) {
  const n = m.length;
  const ctx = canvas.getContext("2d");
  const pad = labels ? 90 : 0;
  const cell = (canvas.width - pad) / n;
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  let max = 1e-12;
  for (const r of m) for (const v of r) max = Math.max(max, v);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const a = m[i][j] / max;
      ctx.fillStyle = `rgba(37, 99, 235, ${a.toFixed(3)})`;
      ctx.fillRect(pad + j * cell, pad + i * cell, Math.ceil(cell), Math.ceil(cell));
    }
  }
  if (labels) {
    ctx.fillStyle = "#222";
    ctx.font = `${Math.max(8, Math.min(12, cell * 0.8))}px monospace`;
    for (let i = 0; i < n; i++) {
      ctx.fillText(tokens[i].slice(0, 10), 2, pad + (i + 0.75) * cell);
      ctx.save();
      ctx.translate(pad + (i + 0.75) * cell, pad - 4);
      ctx.rotate(-Math.PI / 2);
      ctx.fillText(tokens[i].slice(0, 10), 0, 0);
      ctx.restore();
    }
  }
}

function zoom(title, m, tokens) {
  $("zoom-title").textContent = title;
  drawMatrix($("zoom-canvas"), m, tokens, true);
  $("overlay").hidden = false;
}

function renderExplained(name, text, r) {
  const box = el("div", { class: "explained", "data-input": name });
  box.append(el("h3", {}, `Input ${name}`));
  box.append(el("div", { class: "muted" }, text));
  box.append(el("div", {}, `${r.task}: explaining ${r.target} (F = ${r.output === null ? "?" : r.output.toFixed(4)})` +
    (r.windows > 1 ? ` — read in ${r.windows} overlapping windows, scores averaged over the windows that contain each token` : "")));
  for (const a of r.attributions) box.append(renderHeatmap(a));
  const secs = Object.entries(r.seconds).map(([k, v]) => `${k} ${v.toFixed(2)} s`).join(", ");
  box.append(el("div", { class: "muted" }, `time: ${secs}`));
  if (r.rollout) {
    box.append(el("h4", {}, "Attention rollout (click to enlarge)"));
    const c = el("canvas", { width: "200", height: "200", class: "rollout" });
    const at = r.attention_tokens || r.tokens;
    drawMatrix(c, r.rollout, at, false);
    c.addEventListener("click", () => zoom(`Input ${name}: attention rollout`, r.rollout, at));
    box.append(c);
  }
  if (r.attention) {
    const layers = r.attention.length, heads = r.attention[0].length;
    box.append(el("h4", {}, `Attention: ${layers} layers × ${heads} heads (click a map to enlarge)`));
    const grid = el("div", { class: "grid" });
    grid.style.gridTemplateColumns = `3em repeat(${heads}, 64px)`;
    grid.append(el("span"));
    for (let h = 0; h < heads; h++) grid.append(el("span", { class: "lbl" }, `head ${h}`));
    for (let l = 0; l < layers; l++) {
      grid.append(el("span", { class: "lbl" }, `layer ${l}`));
      for (let h = 0; h < heads; h++) {
        const c = el("canvas", { width: "64", height: "64", "data-layer": l, "data-head": h });
        const at = r.attention_tokens || r.tokens;
        drawMatrix(c, r.attention[l][h], at, false);
        c.addEventListener("click", () => zoom(`Input ${name}: layer ${l}, head ${h}`, r.attention[l][h], at));
        grid.append(c);
      }
    }
    box.append(grid);
  }
  if (r.layer_maps) box.append(renderLayerMaps(r.layer_maps));
  return box;
}

function layerChoice() {
  const v = $("layer").value.trim();
  return v === "" ? null : parseInt(v, 10);
}

/// Layer conductance (layers × tokens) and head importance (layers × heads) as coloured grids.
function renderLayerMaps(maps) {
  const box = el("div", { class: "layer-maps" });
  const cond = maps.conductance;
  box.append(el("h4", {}, `Layer conductance: ${cond.length} layers × ${maps.tokens.length} tokens`));
  const g = el("div", { class: "grid lmap", "data-map": "conductance" });
  g.style.gridTemplateColumns = `4em repeat(${maps.tokens.length}, minmax(1.6em, auto))`;
  g.append(el("span"));
  for (const t of maps.tokens) g.append(el("span", { class: "lbl" }, t));
  let max = 1e-12;
  for (const r of cond) for (const v of r) max = Math.max(max, Math.abs(v));
  cond.forEach((r, l) => {
    g.append(el("span", { class: "lbl" }, `layer ${l}`));
    r.forEach((v, j) => {
      const c = el("span", { class: "cell", title: `layer ${l}, ${maps.tokens[j]}: ${v.toFixed(4)}` });
      c.style.background = color(v, max);
      g.append(c);
    });
  });
  box.append(g);
  const hi = maps.head_importance.scores;
  box.append(el("h4", {}, `Head importance (Michel et al. 2019, normalised per layer): ${hi.length} layers × ${hi[0].length} heads`));
  const h = el("div", { class: "grid lmap", "data-map": "heads" });
  h.style.gridTemplateColumns = `4em repeat(${hi[0].length}, 3em)`;
  h.append(el("span"));
  hi[0].forEach((_, k) => h.append(el("span", { class: "lbl" }, `head ${k}`)));
  hi.forEach((r, l) => {
    h.append(el("span", { class: "lbl" }, `layer ${l}`));
    r.forEach((v, k) => {
      const c = el("span", { class: "cell", title: `layer ${l}, head ${k}: ${v.toFixed(3)}` }, v.toFixed(2));
      c.style.background = color(v, 1);
      h.append(c);
    });
  });
  box.append(h);
  return box;
}

function methods() {
  const m = [...document.querySelectorAll("input[name=method]:checked")].map((c) => c.value);
  if (!m.length) throw new Error("Choose at least one method.");
  return m;
}

async function onExplain() {
  showError("");
  let list, ms;
  try { list = inputs(); ms = methods(); } catch (e) { showError(e.message); return; }
  const steps = parseInt($("steps").value, 10) || 50;
  setBusy(true, `Explaining with ${ms.join(", ")}…`);
  const out = $("results");
  out.replaceChildren(el("h2", {}, "Explanations"));
  const row = el("div", { class: "inputs" });
  out.append(row);
  try {
    for (const i of list) {
      const r = await api("/api/explain", {
        text: i.text, text2: i.text2, task: currentTask().name, methods: ms, steps,
        target: $("target").value || null, words: $("words").checked,
        output: $("output").value, foil: $("foil").value || null,
        layer: layerChoice(), layer_maps: $("layer-maps").checked, attention: true,
      });
      row.append(renderExplained(i.name, i.text, r));
    }
    setBusy(false, "done");
  } catch (e) {
    setBusy(false, "");
    showError(e.message);
  }
}

async function onFaithfulness() {
  showError("");
  let list, ms;
  try { list = inputs(); ms = methods(); } catch (e) { showError(e.message); return; }
  setBusy(true, "Scoring faithfulness…");
  try {
    const r = await api("/api/faithfulness", {
      examples: list.map((i) => ({ text: i.text, text2: i.text2 })), task: currentTask().name,
      methods: ms, steps: parseInt($("steps").value, 10) || 50, layer: layerChoice(),
    });
    const t = el("table");
    const head = el("tr");
    for (const h of ["method", "comprehensiveness ↑", "sufficiency ↓", "deletion AUC ↓", "insertion AUC ↑"]) head.append(el("th", {}, h));
    t.append(head);
    for (const row of r.table) {
      const tr = el("tr");
      tr.append(el("td", {}, row.method));
      for (const k of ["comprehensiveness", "sufficiency", "deletion_auc", "insertion_auc"]) tr.append(el("td", {}, row[k].toFixed(4)));
      t.append(tr);
    }
    $("faithfulness").replaceChildren(el("h2", {}, `Faithfulness over ${r.examples} input(s)`), t);
    setBusy(false, "done");
  } catch (e) {
    setBusy(false, "");
    showError(e.message);
  }
}

init();
