// gptlab's page: a chat over the OpenAI chat API, and a browser of run folders (/runs/api).
// Everything from the server (model replies, file contents, settings) is put in the page as
// text (textContent); only the runs API's rendered report, escaped by the server, is HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const LIST_MS = 2000; // how often the runs list is read again
const RUN_MS = 1000; // how often a running run's metrics are read again
const COLORS = ["#2f6fdb", "#d9480f", "#2b8a3e", "#ae3ec9", "#e67700", "#0b7285"];

const state = {
  key: sessionStorage.getItem("gptlab-key") || "",
  messages: [], // the conversation: {role, content}
  controller: null, // aborts the reply being streamed
  run: null, // the run shown
  metrics: {}, // run id -> {records, offset}
  listTimer: null,
  runTimer: null,
  reportOf: null,
};

function headers(extra = {}) {
  return state.key ? { ...extra, Authorization: `Bearer ${state.key}` } : extra;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function errorText(resp) {
  let text = await resp.text();
  try {
    const e = JSON.parse(text).error;
    text = typeof e === "string" ? e : (e && e.message) || text;
  } catch (_) {
    // not JSON: the text as it came
  }
  return `${resp.status}: ${text}`;
}

async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: headers(options.headers) });
  if (!resp.ok) throw new Error(await errorText(resp));
  return resp;
}

const getJSON = async (path) => (await api(path)).json();
const encodePath = (id) => id.split("/").map(encodeURIComponent).join("/");

function fmt(v) {
  if (typeof v === "number" && !Number.isInteger(v)) return Number(v.toPrecision(4)).toString();
  if (v !== null && typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function flatten(obj, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(obj || {})) {
    if (v !== null && typeof v === "object" && !Array.isArray(v)) flatten(v, `${prefix}${k}.`, out);
    else out[prefix + k] = v;
  }
  return out;
}

function table(rows, head) {
  const t = document.createElement("table");
  if (head) {
    const tr = t.createTHead().insertRow();
    for (const h of head) tr.appendChild(document.createElement("th")).textContent = h;
  }
  const body = t.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    for (const cell of row) {
      const td = tr.insertCell();
      if (cell instanceof Node) td.append(cell);
      else td.textContent = cell === undefined || cell === null ? "" : fmt(cell);
    }
  }
  return t;
}

// ---- start: the key, the tabs ------------------------------------------------------------

async function start() {
  const info = await (await fetch("/web/info", { headers: headers() })).json();
  $("key-form").hidden = info.authorized;
  if (!info.authorized) {
    showError(state.key ? "wrong API key" : "this server needs an API key: enter it above");
    return;
  }
  showError("");
  $("tab-chat").hidden = !info.chat;
  $("tab-runs").hidden = !info.runs;
  if (info.chat) await loadModels();
  show(info.runs && (location.hash === "#runs" || !info.chat) ? "runs" : "chat");
}

function show(name) {
  for (const tab of ["chat", "runs"]) {
    $(tab).hidden = tab !== name;
    $(`tab-${tab}`).classList.toggle("active", tab === name);
  }
  history.replaceState(null, "", `#${name}`);
  if (name === "runs" && state.listTimer === null) refreshList();
}

// ---- chat ----------------------------------------------------------------------------------

async function loadModels() {
  const models = (await getJSON("/v1/models")).data;
  const select = $("model");
  select.replaceChildren();
  for (const m of models) {
    const option = select.appendChild(document.createElement("option"));
    option.value = option.textContent = m.id;
  }
  $("model-label").hidden = models.length < 2;
}

function addMessage(role, text) {
  const div = $("messages").appendChild(document.createElement("div"));
  div.className = `msg ${role}`;
  div.textContent = text;
  div.parentElement.scrollTop = div.parentElement.scrollHeight;
  return div;
}

// The data objects of an OpenAI server-sent event stream, up to [DONE].
async function* events(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        if (line === "data: [DONE]") return;
        yield JSON.parse(line.slice(6));
      }
    }
  }
}

function chatRequest() {
  const system = $("system").value.trim();
  return {
    model: $("model").value,
    messages: [...(system ? [{ role: "system", content: system }] : []), ...state.messages],
    stream: true,
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    max_tokens: Number($("max-tokens").value),
  };
}

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
}

async function send(ev) {
  ev.preventDefault();
  const text = $("prompt").value;
  if (!text.trim() || state.controller) return;
  showError("");
  $("prompt").value = "";
  state.messages.push({ role: "user", content: text });
  const asked = addMessage("user", text);
  const bubble = addMessage("assistant", "");
  state.controller = new AbortController();
  busy(true);
  let reply = "";
  let ok = true;
  try {
    const resp = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(chatRequest()),
      signal: state.controller.signal,
    });
    for await (const data of events(resp)) {
      if (data.error) throw new Error(data.error.message);
      reply += data.choices[0].delta.content || "";
      bubble.textContent = reply;
      $("messages").scrollTop = $("messages").scrollHeight; // the composer stays in place
    }
  } catch (err) {
    if (err.name === "AbortError") bubble.classList.add("stopped");
    else {
      ok = false;
      showError(err.message);
    }
  }
  state.controller = null;
  busy(false);
  if (ok) {
    state.messages.push({ role: "assistant", content: reply });
  } else { // the turn failed: take it back, so the text can be sent again
    state.messages.pop();
    asked.remove();
    bubble.remove();
    $("prompt").value = text;
  }
}

// ---- runs ----------------------------------------------------------------------------------

async function refreshList() {
  try {
    renderList(await getJSON("/runs/api/list"));
  } catch (err) {
    showError(err.message);
  }
  state.listTimer = setTimeout(refreshList, LIST_MS);
}

function stateLabel(run) {
  const span = document.createElement("span");
  span.className = `state-${run.state}`;
  span.textContent = run.state;
  return span;
}

function renderList(data) {
  $("runs-root").textContent = `Runs in ${data.root}`;
  const body = $("run-list").tBodies[0];
  body.replaceChildren();
  for (const run of data.runs.filter((r) => r.parent === null)) {
    const tr = body.insertRow();
    tr.dataset.id = run.id;
    tr.classList.toggle("selected", run.id === state.run);
    for (const cell of [run.id || data.root, run.task, stateLabel(run), run.progress]) {
      const td = tr.insertCell();
      if (cell instanceof Node) td.append(cell);
      else td.textContent = cell;
    }
    tr.addEventListener("click", () => openRun(run.id));
  }
  const compare = $("compare");
  const chosen = compare.value;
  compare.replaceChildren(new Option("none", ""));
  for (const run of data.runs.filter((r) => r.task !== "pipeline")) {
    compare.add(new Option(run.id || data.root, `=${run.id}`)); // "=": the root run's id is ""
  }
  compare.value = [...compare.options].some((o) => o.value === chosen) ? chosen : "";
}

function openRun(id) {
  state.run = id;
  state.reportOf = null;
  for (const tr of $("run-list").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.id === id);
  refreshRun();
}

async function loadMetrics(id) {
  const m = (state.metrics[id] ??= { records: [], offset: 0 });
  const d = await getJSON(`/runs/api/metrics/${encodePath(id)}?offset=${m.offset}`);
  m.records.push(...d.records);
  m.offset = d.offset;
  return m.records;
}

async function refreshRun() {
  clearTimeout(state.runTimer);
  const id = state.run;
  try {
    const d = await getJSON(`/runs/api/run/${encodePath(id)}`);
    if (id !== state.run) return;
    renderRun(d);
    await drawCurves(id);
    if (d.report && state.reportOf !== `${id}:${d.state}`) await loadReport(id, d.state);
    if (d.state === "running") state.runTimer = setTimeout(refreshRun, RUN_MS);
  } catch (err) {
    showError(err.message);
  }
}

function renderRun(d) {
  $("run").hidden = false;
  $("loss-figure").hidden = $("compare-label").hidden = d.task === "pipeline"; // in its stages
  $("run-title").textContent = d.id || d.name;
  const when = new Date(d.updated * 1000).toLocaleString();
  $("run-state").replaceChildren(`${d.task} · `, stateLabel(d), ` · ${d.progress} · last written ${when}`);
  $("run-children").replaceChildren();
  for (const child of d.children) {
    const b = $("run-children").appendChild(document.createElement("button"));
    b.className = "child";
    b.textContent = child;
    b.addEventListener("click", () => openRun(child));
  }
  const stages = (d.stages || []).map((s) => [s.name, s.status, s.seconds === undefined || s.seconds === null ? "" : s.seconds.toFixed(1)]);
  $("stages").replaceChildren(...(stages.length ? [table(stages, ["stage", "status", "wall seconds"])] : []));
  const results = Object.entries(flatten(d.results || {}));
  $("results-box").open = d.task !== "pipeline"; // a pipeline's report says it all
  $("results").replaceChildren(results.length ? table(results, ["metric", "value"]) : "not finished yet");
  $("settings").replaceChildren(table(Object.entries(flatten(d.config)), ["setting", "value"]));
}

function curves(records, label, dash) {
  const pick = (kind, key) =>
    records.filter((r) => r.kind === kind && typeof r[key] === "number").map((r) => [r.step, r[key]]);
  const line = (name, points) => ({ name: label + name, points, dash });
  return {
    loss: [line("train", pick("train", "loss")), line("validation", pick("eval", "val_loss"))],
    acc: [line("train", pick("accuracy", "train_acc")), line("validation", pick("accuracy", "val_acc"))],
  };
}

async function drawCurves(id) {
  const chosen = $("compare").value;
  const other = chosen ? chosen.slice(1) : null;
  const mine = curves(await loadMetrics(id), other !== null ? `${id || "this"}: ` : "", false);
  let theirs = { loss: [], acc: [] };
  if (other !== null && other !== id) {
    theirs = curves(await loadMetrics(other), `${other || "root"}: `, true);
  }
  drawChart($("loss-chart"), [...mine.loss, ...theirs.loss]);
  const acc = [...mine.acc, ...theirs.acc];
  $("acc-figure").hidden = !acc.some((l) => l.points.length);
  drawChart($("acc-chart"), acc);
}

function range(values) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  return lo === hi ? [lo - 0.5, hi + 0.5] : [lo, hi];
}

function drawChart(canvas, lines) {
  const ctx = canvas.getContext("2d");
  const [W, H, L, R, T, B] = [canvas.width, canvas.height, 56, 10, 10, 28];
  ctx.clearRect(0, 0, W, H);
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = "#4a5368";
  const points = lines.flatMap((l) => l.points);
  canvas.dataset.points = String(points.length);
  if (!points.length) {
    ctx.fillText("no data yet", W / 2 - 30, H / 2);
    return;
  }
  const [x0, x1] = range(points.map((p) => p[0]));
  const [y0, y1] = range(points.map((p) => p[1]));
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  ctx.strokeStyle = "#8a93a6";
  ctx.setLineDash([]);
  ctx.strokeRect(L, T, W - L - R, H - T - B);
  ctx.fillText(fmt(y1), 4, T + 10);
  ctx.fillText(fmt(y0), 4, H - B);
  ctx.fillText(fmt(x0), L, H - 8);
  ctx.fillText(fmt(x1), W - R - 40, H - 8);
  lines.filter((l) => l.points.length).forEach((l, i) => {
    ctx.strokeStyle = ctx.fillStyle = COLORS[i % COLORS.length];
    ctx.setLineDash(l.dash ? [6, 4] : []);
    ctx.beginPath();
    l.points.forEach(([x, y], k) => (k ? ctx.lineTo(sx(x), sy(y)) : ctx.moveTo(sx(x), sy(y))));
    ctx.stroke();
    ctx.fillText(l.name, W - R - 190, T + 16 + 14 * i);
  });
}

async function loadReport(id, runState) {
  const { html } = await getJSON(`/runs/api/report/${encodePath(id)}`);
  if (id !== state.run) return;
  state.reportOf = `${id}:${runState}`;
  // The server escaped every text of the file; this is its own markup only.
  $("report").innerHTML = html;
  for (const img of $("report").querySelectorAll("img[data-src]")) {
    api(`/runs/api/file/${encodePath(img.dataset.src)}`)
      .then((resp) => resp.blob())
      .then((blob) => { img.src = URL.createObjectURL(blob); })
      .catch((err) => { img.replaceWith(`(${img.alt}: ${err.message})`); });
  }
}

// ---- wiring --------------------------------------------------------------------------------

function init() {
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.key = $("key").value;
    sessionStorage.setItem("gptlab-key", state.key);
    start().catch((err) => showError(err.message));
  });
  $("tab-chat").addEventListener("click", () => show("chat"));
  $("tab-runs").addEventListener("click", () => show("runs"));
  $("composer").addEventListener("submit", send);
  $("prompt").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("clear").addEventListener("click", () => {
    state.messages = [];
    $("messages").replaceChildren();
  });
  $("compare").addEventListener("change", () => state.run !== null && refreshRun());
  start().catch((err) => showError(err.message));
}

init();
