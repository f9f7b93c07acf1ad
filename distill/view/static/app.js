// distill view: the front end. Plain JavaScript, no build step. Every string from the run goes
// into the page as text (textContent), never as HTML.
"use strict";

const PAGE = 48;
const state = { meta: null, offset: 0, total: 0, query: {}, refresh: null, order: [] };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

async function api(path) {
  const res = await fetch(path);
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %");
const num = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
const enc = (s) => encodeURIComponent(s);

// ---------------------------------------------------------------------------------- grid

function readFilters() {
  const q = {};
  const group = $("f-group").value;
  if (group) { q.group = group; q.min_share = (Number($("f-share").value) || 0) / 100; }
  if (Number($("f-text").value) > 0) q.text_min = Number($("f-text").value) / 100;
  if (Number($("f-people").value) > 0) q.people_min = Number($("f-people").value);
  if ($("f-word").value.trim()) q.word = $("f-word").value.trim();
  if ($("f-missing").value) q.missing = $("f-missing").value;
  if ($("f-quarantine").value) q.quarantined = $("f-quarantine").value;
  if ($("f-reason").value.trim()) q.reason = $("f-reason").value.trim();
  if ($("f-sort").value) { q.sort = $("f-sort").value; q.order = $("f-order").value; }
  return q;
}

function card(row) {
  const badges = el("div", { class: "badges" });
  badges.append(el("span", { class: "badge", text: `${row.people} ${row.people === 1 ? "person" : "people"}` }));
  if (row.text_share !== null) badges.append(el("span", { class: "badge", text: `text ${pct(row.text_share)}` }));
  for (const [role, present] of Object.entries(row.teachers)) {
    badges.append(el("span", { class: "badge" + (present ? "" : " off"), title: present ? `${role} teacher ran` : `no ${role} label`, text: role }));
  }
  if (row.random_weights.length) {
    badges.append(el("span", { class: "badge warn", title: "teachers with random weights: labels are plumbing only", text: "random: " + row.random_weights.join(", ") }));
  }
  if (row.sort_value !== undefined && row.sort_value !== null && state.query.sort) {
    badges.append(el("span", { class: "badge sort", text: `${state.query.sort} ${num(row.sort_value)}` }));
  }
  const thumb = el("img", { class: "thumb", loading: "lazy", alt: row.file_name, src: `/thumb/${enc(row.shard)}/${row.row}.jpg` });
  const body = el("div", { class: "body" },
    el("span", { class: "id", text: `${row.image_id} · ${row.file_name}` }),
    el("span", { class: "caption", title: row.caption_source, text: row.caption || "(no caption)" }),
    el("span", { class: "caption muted", text: row.tokens.length ? row.tokens.join(" · ") : "(no tokens)" }),
    badges);
  return el("div", { class: "card", "data-key": row.key, onclick: () => { location.hash = `#/sample/${enc(row.shard)}/${row.row}`; } }, thumb, body);
}

async function loadGrid() {
  clearTimeout(state.refresh);
  const params = new URLSearchParams({ ...state.query, offset: state.offset, limit: PAGE });
  let data;
  try { data = await api(`/api/rows?${params}`); }
  catch (err) {  // e.g. 410: the run folder is gone — say so instead of showing stale cards
    $("grid").replaceChildren();
    $("grid-status").textContent = "error: " + err.message; $("grid-status").className = "error"; return;
  }
  state.total = data.total;
  state.order = data.rows.map((r) => [r.shard, r.row]);
  const grid = $("grid");
  grid.replaceChildren(...data.rows.map(card));
  const idx = data.index;
  let status = `${data.total.toLocaleString()} ${Object.keys(state.query).length ? "matching " : ""}rows`;
  if (!data.complete) status += ` so far — statistics for ${idx.indexed} of ${idx.shards} shards (${idx.indexed_rows.toLocaleString()} of ${idx.rows.toLocaleString()} rows)`;
  $("grid-status").textContent = status;
  $("grid-status").className = "";
  const pages = Math.max(1, Math.ceil(data.total / PAGE));
  $("page-no").textContent = `page ${Math.floor(state.offset / PAGE) + 1} of ${pages}`;
  $("prev").disabled = state.offset === 0;
  $("next").disabled = state.offset + PAGE >= data.total;
  if (!data.complete) state.refresh = setTimeout(loadGrid, 2000);
}

// -------------------------------------------------------------------------------- sample

function layerRow(source, name, url, checked, opacity) {
  const id = `layer-${source}-${name.replace(/[^A-Za-z0-9]/g, "_")}`;
  const img = el("img", { class: "layer", id: id + "-img", alt: "", src: url });
  img.style.opacity = checked ? opacity : 0;
  img.hidden = !checked;
  $("stack").append(img);
  const box = el("input", { type: "checkbox", id });
  box.checked = checked;
  const range = el("input", { type: "range", min: "0", max: "1", step: "0.05", value: String(opacity), id: id + "-opacity", title: "opacity" });
  const sync = () => { img.hidden = !box.checked; img.style.opacity = box.checked ? range.value : 0; };
  box.addEventListener("change", sync);
  range.addEventListener("input", sync);
  return el("div", { class: "layer-row" }, box, el("label", { for: id, text: name }), range);
}

function table(headers, rows, numeric = []) {
  const head = el("tr", {}, ...headers.map((h, i) => el("th", { class: numeric.includes(i) ? "num" : "", text: h })));
  const body = rows.map((r) => el("tr", {}, ...r.map((c, i) => el("td", { class: numeric.includes(i) ? "num" : "", text: String(c) }))));
  return el("table", {}, head, ...body);
}

// a JSON value as readable text: "a, b" for a list, "key value, …" for an object
function plain(x) {
  if (x === null || x === undefined) return "";
  if (Array.isArray(x)) return x.map(plain).join(", ");
  if (typeof x === "object") return Object.entries(x).map(([k, v]) => `${k} ${plain(v)}`).join(", ");
  return String(x);
}

function section(title, ...content) {
  return el("section", {}, el("h2", { text: title }), ...content);
}

async function loadSample(shard, row) {
  const stack = $("stack");
  stack.replaceChildren(el("img", { id: "base", alt: "image" }));
  $("layers").replaceChildren();
  $("sample-info").replaceChildren();
  let s;
  try { s = await api(`/api/sample/${enc(shard)}/${row}`); }
  catch (err) { $("sample-title").textContent = "error: " + err.message; $("sample-title").className = "error"; return; }
  $("sample-title").className = "";
  $("sample-title").textContent = `${s.image_id} · ${s.file_name} · ${s.shard} row ${s.row} · ${s.width}×${s.height}`;
  $("base").src = `/image/${enc(shard)}/${row}.jpg`;
  $("base").width = s.display[0];
  $("s-prev").onclick = () => { location.hash = `#/sample/${enc(shard)}/${row - 1}`; };
  $("s-next").onclick = () => { location.hash = `#/sample/${enc(shard)}/${row + 1}`; };
  $("s-prev").disabled = row === 0;
  const panel = $("layers");
  panel.append(el("h3", { text: "teachers" }));
  for (const name of s.layers) {
    panel.append(layerRow("teacher", name, `/layer/teacher/${enc(shard)}/${row}/${enc(name)}.png`, false, name === "people" ? 1 : 0.6));
  }
  if (s.student) {
    panel.append(el("h3", { text: "student" }));
    for (const name of s.student.layers) {
      panel.append(layerRow("student", name, `/layer/student/${enc(shard)}/${row}/${enc(name)}.png`, false, name === "people" ? 1 : 0.6));
    }
  }
  const info = $("sample-info");
  const caps = (s.teacher_captions || []).map((c) => el("div", { text: c || "(empty)" }));
  info.append(section("captions",
    el("div", { class: "muted", text: s.teacher_captions === null ? "no caption teacher ran" : "teacher" }), ...caps,
    el("div", { class: "muted", text: "COCO" }), ...(s.coco_captions || []).map((c) => el("div", { text: c })),
    el("div", { class: "muted", text: "tokens" }), el("div", { text: s.tokens === null ? "(no caption teacher)" : (s.tokens.join(" · ") || "(none)") })));
  info.append(section(`panoptic segments (${s.segments.length})`,
    table(["category", "thing", "score", "area"], s.segments.map((g) => [g.category, g.isthing ? "yes" : "", num(g.score, 2), g.area]), [2, 3])));
  const prov = Object.entries(s.provenance || {}).map(([role, p]) => {
    const one = Array.isArray(p) ? p[p.length - 1] : p;
    return [role, one.backend || "", one.variant || "", one.checkpoint || one.weights || "", s.random_weights.includes(role) ? "RANDOM" : "pretrained"];
  });
  const provSection = section("provenance", table(["teacher", "backend", "variant", "weights", ""], prov));
  provSection.classList.add("wide");  // long checkpoint paths: the last column stays in view
  info.append(provSection);
  info.append(section("people and text", el("div", { text: `${s.people} COCO people · ${s.text_regions} text regions` }),
    ...(s.quarantine.length ? [el("div", { class: "error", text: "also quarantined: " + s.quarantine.map((q) => `${q.stage}: ${q.reason}`).join("; ") })] : [])));
  if (s.student) {
    const st = s.student;
    const hdm = Object.entries(st.scores["hdm@0.1"]).map(([m, v]) => [m, num(v), num(st.scores.mse[m], 4)]);
    info.append(section("student",
      el("div", { text: `words: ${st.words.map((w) => w.word).join(" · ") || "(none)"}` }),
      el("div", { text: `${st.people} people decoded · token cosine (mean over words) ${num(st.scores.token_cosine_mean)}` }),
      table(["modality", "HDM@0.1", "MSE"], hdm, [1, 2])));
  }
}

// ----------------------------------------------------------------------------------- run

function stageTable(stages) {
  return table(["stage", "images", "seconds", "images/s"],
    Object.entries(stages || {}).map(([k, v]) => [k, v.images, num(v.seconds, 1), num(v.images_per_second, 1)]), [1, 2, 3]);
}

async function loadRun() {
  clearTimeout(state.refresh);
  let r;
  try { r = await api("/api/run"); }
  catch (err) { $("run-status").textContent = "error: " + err.message; return; }
  const info = $("run-info");
  info.replaceChildren();
  const p = r.progress;
  const s = r.summary;
  let status = `${r.rows.toLocaleString()} rows in ${r.shards.length} shards`;
  if (p) status += ` · ${p.done} of ${p.planned} planned shards done`;
  if (r.running) status += " · a run is writing (refreshing)";
  $("run-status").textContent = status;
  if (s) {
    info.append(section("summary", table(["", ""], [
      ["images planned", s.images.planned], ["images written", s.images.written],
      ["quarantined", s.images.quarantined], ["finished", s.finished || "–"],
      ["this invocation", `${num(s.this_invocation.seconds, 1)} s, ${num(s.this_invocation.images_per_second, 2)} images/s`]])));
    info.append(section("per-stage images/s", stageTable(s.stages)));
  } else {
    info.append(section("summary", el("div", { class: "muted", text: r.is_run ? "no summary.json yet (a run is going, or it was interrupted)" : "a shards folder, not a run folder" })));
  }
  const q = r.quarantine;
  const stageSel = el("select", { id: "q-stage" }, el("option", { value: "", text: "any stage" }),
    ...Object.keys(q.by_stage_type).map((k) => el("option", { value: k.split("/")[0], text: `${k} (${q.by_stage_type[k]})` })));
  const reason = el("input", { id: "q-reason", type: "search", placeholder: "reason contains" });
  const body = el("div");
  const draw = () => {
    const rows = q.entries.filter((e) => (!stageSel.value || e.stage === stageSel.value)
      && (!reason.value || `${e.error_type}: ${e.message}`.toLowerCase().includes(reason.value.toLowerCase())));
    body.replaceChildren(table(["image", "file", "shard", "stage", "reason"], rows.map((e) => [e.image_id, e.file_name, e.shard, e.stage, `${e.error_type}: ${e.message}`])));
  };
  stageSel.addEventListener("change", draw);
  reason.addEventListener("input", draw);
  draw();
  const qs = section(`quarantine (${q.total})`, el("div", { class: "status" }, stageSel, reason), body);
  qs.classList.add("wide");
  info.append(qs);
  if (p) {
    const sh = section(`shards (${p.done} done of ${p.planned})`,
      table(["shard", "status", "rows", "why"], p.shards.map((x) => [x.name, x.status, x.rows ?? "–", x.reason]), [2]));
    sh.classList.add("wide");
    info.append(sh);
  }
  // the inspect report's provenance as key/value tables: the labels', then one per teacher
  const pv = r.provenance || {};
  const random = pv.random_weights || [];
  const labels = section("labels", table(["", ""], [
    ["label fingerprints", plain(pv.label_fingerprints)], ["schema versions", plain(pv.schema_versions)],
    ["library versions", plain((pv.library_versions || [])[0])],
    ["random weights", random.length ? random.join(", ") + " (labels for plumbing tests only)" : "none"],
    ["shards without provenance", plain(pv.shards_without_provenance) || "none"]]));
  labels.classList.add("provenance");
  info.append(labels);
  for (const [role, entries] of Object.entries(pv.teachers || {})) {
    entries.forEach((e, i) => {
      const rows = Object.entries(e.provenance || {}).filter(([, x]) => x !== null && x !== "")
        .map(([k, x]) => [k, plain(x)]);
      rows.push(["shards", e.shards.length > 3 ? `${e.shards.length} shards` : e.shards.join(", ")]);
      rows.push(["weights", random.includes(role) ? "RANDOM" : "pretrained"]);
      const sec = section(`teacher: ${role}` + (entries.length > 1 ? ` (${i + 1} of ${entries.length})` : ""), table(["", ""], rows));
      sec.classList.add("provenance");
      info.append(sec);
    });
  }
  if (r.running || (p && p.done < p.planned)) state.refresh = setTimeout(loadRun, 5000);
}

// -------------------------------------------------------------------------------- router

function show(page) {
  for (const id of ["page-grid", "page-sample", "page-run"]) $(id).hidden = id !== page;
}

function route() {
  clearTimeout(state.refresh);
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "sample" && parts.length === 3) { show("page-sample"); loadSample(parts[1], Number(parts[2])); }
  else if (parts[0] === "run") { show("page-run"); loadRun(); }
  else { show("page-grid"); loadGrid(); }
}

async function init() {
  state.meta = await api("/api/meta");
  $("run-path").textContent = state.meta.path + (state.meta.student ? ` · student ${state.meta.student.checkpoint}` : "");
  for (const g of state.meta.groups) $("f-group").append(el("option", { value: g, text: g }));
  for (const t of state.meta.teachers) $("f-missing").append(el("option", { value: t, text: t }));
  for (const s of state.meta.stages) $("f-quarantine").append(el("option", { value: s, text: s }));
  for (const k of state.meta.sort_keys) $("f-sort").append(el("option", { value: k, text: k }));
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); state.query = readFilters(); state.offset = 0; location.hash = "#/"; loadGrid(); });
  $("reset").addEventListener("click", () => { $("filters").reset(); state.query = {}; state.offset = 0; loadGrid(); });
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadGrid(); });
  $("next").addEventListener("click", () => { state.offset += PAGE; loadGrid(); });
  window.addEventListener("hashchange", route);
  route();
}

init();
