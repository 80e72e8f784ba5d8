// The annotation page: open a session on an image (/v1/sessions), then each click, brush or eraser stroke
// and undo goes to the server, which answers every structure's corrected mask (a PNG at the image's size);
// the page draws the image, the chosen structure's mask and the clicks. A volume (with a volume model) is
// shown a slice at a time: the slider (or Page Up / Page Down) moves through the model's slices, and each
// click or stroke lands on the slice shown. Save writes the image and its mask (a volume and its label map)
// into the server's --annotations folder, where `lesionseg train` reads them. With --unlabelled, the page
// lists those images the least confident first (/v1/next); one click opens the next.
"use strict";
const COLORS = [[230, 40, 40], [40, 160, 230], [60, 200, 80], [230, 180, 30], [180, 80, 220]];
const state = { session: null, photo: null, slices: {}, slice: 0, masks: {}, result: null, stroke: null };

async function call(path, options = {}) {
  const started = performance.now();
  const resp = await fetch(path, { method: "POST", ...options, headers: authHeaders(options.headers || {}) });
  if (!resp.ok) { setStatus(await errorText(resp), true); return null; }
  const body = await resp.json();
  $("timing").textContent = `${(performance.now() - started).toFixed(0)} ms`;
  return body;
}

async function decodeMasks(result) {
  const masks = {};
  for (const [name, b64] of Object.entries(result.masks)) {
    const bitmap = await createImageBitmap(await (await fetch("data:image/png;base64," + b64)).blob());
    const scratch = document.createElement("canvas");
    scratch.width = result.width; scratch.height = result.height;
    const ctx = scratch.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    const rgba = ctx.getImageData(0, 0, result.width, result.height).data;
    const mask = new Uint8Array(result.width * result.height);
    for (let i = 0; i < mask.length; i++) mask[i] = rgba[4 * i] > 127 ? 1 : 0;
    masks[name] = mask;
  }
  return masks;
}

async function sliceImage(session, index) {
  // the slice as the server decoded it, so the page shows what the model saw (TIFF, DICOM, NIfTI too)
  if (!(index in state.slices)) {
    const resp = await fetch(`/v1/sessions/${session}/image?slice=${index}`, { headers: authHeaders() });
    state.slices[index] = resp.ok ? await createImageBitmap(await resp.blob()) : null;
  }
  return state.slices[index];
}

async function show(result) {
  if (!result) return;
  state.photo = await sliceImage(result.session, result.slice);
  state.masks = await decodeMasks(result);
  state.result = result;
  state.session = result.session;
  state.slice = result.slice;
  $("undo").disabled = result.all_clicks + result.strokes === 0;
  $("save").disabled = false;
  $("clicks").textContent = String(result.all_clicks);
  $("slice-picker").hidden = result.slices < 2;
  $("slice").max = String(result.slices - 1);
  $("slice").value = String(result.slice);
  $("slice-value").textContent = `${result.slice + 1} / ${result.slices}`;
  render();
}

async function goToSlice(index) {
  if (!state.result) return;
  index = Math.min(Math.max(index, 0), state.result.slices - 1);
  const resp = await fetch(`/v1/sessions/${state.session}?slice=${index}`, { headers: authHeaders() });
  if (!resp.ok) { setStatus(await errorText(resp), true); return; }
  await show(await resp.json());
}

function structure() {
  return state.result && state.result.structures.length > 1 ? $("structure").value : null;
}

function render() {
  if (!state.result) return;
  const { width: w, height: h } = state.result;
  const ctx = drawPhoto(state.photo, w, h);
  const img = ctx.getImageData(0, 0, w, h), px = img.data;
  const areas = [];
  state.result.structures.forEach((name, k) => {
    const mask = state.masks[name], [r, g, b] = COLORS[k % COLORS.length];
    const a = structure() === null || structure() === name ? 0.45 : 0.15;
    let n = 0;
    for (let i = 0; i < mask.length; i++) {
      if (!mask[i]) continue;
      n++;
      const p = 4 * i;
      px[p] = (1 - a) * px[p] + a * r; px[p + 1] = (1 - a) * px[p + 1] + a * g; px[p + 2] = (1 - a) * px[p + 2] + a * b;
    }
    areas.push(`${name} ${(100 * n / mask.length).toFixed(1)} %`);
  });
  ctx.putImageData(img, 0, 0);
  for (const c of state.result.clicks) {
    ctx.beginPath();
    ctx.arc(c.col + 0.5, c.row + 0.5, Math.max(3, w / 150), 0, 2 * Math.PI);
    ctx.fillStyle = c.positive ? "#1c1" : "#c11";
    ctx.fill(); ctx.strokeStyle = "#fff"; ctx.stroke();
  }
  $("area").textContent = areas.join(", ");
}

function imagePoint(event) {
  const canvas = $("view"), box = canvas.getBoundingClientRect();
  const col = Math.floor((event.clientX - box.left) * canvas.width / box.width);
  const row = Math.floor((event.clientY - box.top) * canvas.height / box.height);
  return [Math.min(Math.max(row, 0), canvas.height - 1), Math.min(Math.max(col, 0), canvas.width - 1)];
}

function tool() {
  return document.querySelector("input[name=tool]:checked").value;
}

async function opened(result, name) {
  if (!result) return;
  state.slices = {};
  await show(result);
  setStatus(name + ": click where the mask is wrong");
}

async function open(file) {
  setStatus("opening " + file.name + " …");
  const form = new FormData();
  form.append("file", file, file.name);
  await opened(await call("/v1/sessions", { body: form }), file.name);
}

async function openCase(id) {
  setStatus("opening " + id + " …");
  await opened(await call("/v1/sessions?" + new URLSearchParams({ case: id })), id);
}

async function showNext() {
  const resp = await fetch("/v1/next", { headers: authHeaders() });
  if (!resp.ok) return;  // the server offers no unlabelled images
  const list = $("next-list");
  list.innerHTML = "";
  for (const c of (await resp.json()).cases) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button"; button.dataset.case = c.id;
    button.textContent = `${c.id} (${c.uncertainty.toFixed(2)})${c.saved ? " ✓" : ""}`;
    button.addEventListener("click", () => openCase(c.id));
    item.append(button);
    list.append(item);
  }
  $("next").hidden = false;
}

async function send(action, body) {
  if (!state.session) return;
  const result = await call(`/v1/sessions/${state.session}/${action}`, {
    body: JSON.stringify({ ...body, slice: state.slice, ...(structure() ? { structure: structure() } : {}) }),
    headers: { "Content-Type": "application/json" } });
  if (result) { await show(result); setStatus(`${action} done`); }
}

const canvas = $("view");
canvas.addEventListener("pointerdown", (e) => {
  if (!state.session) return;
  const t = tool();
  if (t === "brush" || t === "eraser") {
    state.stroke = { points: [imagePoint(e)], erase: t === "eraser" };
    canvas.setPointerCapture(e.pointerId);
  }
});
canvas.addEventListener("pointermove", (e) => {
  if (state.stroke) {
    const [row, col] = imagePoint(e);
    state.stroke.points.push([row, col]);
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = state.stroke.erase ? "rgba(0,0,0,0.5)" : "rgba(255,255,255,0.5)";
    ctx.beginPath(); ctx.arc(col, row, Number($("radius").value), 0, 2 * Math.PI); ctx.fill();
  }
});
canvas.addEventListener("pointerup", (e) => {
  if (state.stroke) {
    const stroke = state.stroke;
    state.stroke = null;
    send("stroke", { points: stroke.points, radius: Number($("radius").value), erase: stroke.erase });
    return;
  }
  if (!state.session) return;
  const [row, col] = imagePoint(e);
  send("click", { row, col, positive: tool() !== "remove" && !e.shiftKey });
});
$("undo").addEventListener("click", () => state.session &&
  call(`/v1/sessions/${state.session}/undo?slice=${state.slice}`).then(show).then(() => setStatus("undone")));
document.addEventListener("keydown", (e) => {
  if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); $("undo").click(); }
  if (e.key === "PageUp" || e.key === "PageDown") {
    e.preventDefault(); goToSlice(state.slice + (e.key === "PageUp" ? 1 : -1));
  }
});
$("slice").addEventListener("input", () => goToSlice(Number($("slice").value)));
$("save").addEventListener("click", async () => {
  const saved = await call(`/v1/sessions/${state.session}/save`);
  if (saved) { setStatus("saved " + saved.files.join(", ")); showNext(); }
});
$("radius").addEventListener("input", () => ($("radius-value").textContent = $("radius").value));
$("structure").addEventListener("change", render);
$("file").addEventListener("change", (e) => e.target.files[0] && open(e.target.files[0]));
onDrop(open);

async function showModel() {
  const resp = await fetch("/v1/model", { headers: authHeaders() });
  if (!resp.ok) { $("model").textContent = "model: (token needed)"; return; }
  const model = await resp.json();
  $("model").textContent = "model: " + model.name;
  const names = (model.structures || []).map((s) => s.name);
  if (names.length > 1) {
    $("structure").innerHTML = names.map((n) => `<option>${n}</option>`).join("");
    $("structure-picker").hidden = false;
  }
}
$("token").addEventListener("change", () => { showModel(); showNext(); });
showModel();
showNext();
