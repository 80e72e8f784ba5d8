// The lesionseg page: upload an image, show the model's probability map as an overlay, and re-threshold it
// here, without another request. The server returns the probability map (8-bit PNG, at most MAX_SIDE px on a
// side); area figures are scaled to the original image size. A model of several structures answers in JSON
// (each structure's contours and colour): the page draws them with a legend, one toggle per structure.
"use strict";
const MAX_SIDE = 1024;
const state = { file: null, photo: null, prob: null, width: 0, height: 0, origW: 0, origH: 0,
                structures: null, labelMode: null, shown: {}, result: null };

async function post(file, query) {
  const headers = { ...authHeaders(), "Content-Type": file.type || "application/octet-stream" };
  return fetch("/v1/segment?" + new URLSearchParams(query), { method: "POST", body: file, headers });
}

async function uploadStructures(file) {
  const started = performance.now();
  const resp = await post(file, { format: "json", threshold: $("threshold").value });
  if (!resp.ok) { setStatus(await errorText(resp), true); return; }
  const result = await resp.json();
  let photo = null;
  try { photo = await createImageBitmap(file); } catch (e) { photo = null; }
  const scale = Math.min(1, MAX_SIDE / Math.max(result.image.width, result.image.height));
  Object.assign(state, { photo, result, origW: result.image.width, origH: result.image.height,
                         width: Math.round(result.image.width * scale), height: Math.round(result.image.height * scale) });
  $("timing").textContent = `${(performance.now() - started).toFixed(0)} ms`;
  $("size").textContent = `${state.origW} × ${state.origH}`;
  $("download").disabled = false;
  setStatus(file.name);
  renderStructures();
}

function legend() {
  const box = $("legend");
  box.innerHTML = "";
  for (const s of state.structures) {
    if (!(s.name in state.shown)) state.shown[s.name] = true;
    const label = document.createElement("label");
    const check = document.createElement("input");
    check.type = "checkbox"; check.checked = state.shown[s.name]; check.dataset.structure = s.name;
    check.addEventListener("change", () => { state.shown[s.name] = check.checked; renderStructures(); });
    const swatch = document.createElement("span");
    swatch.className = "swatch"; swatch.style.background = `rgb(${s.color.join(",")})`;
    label.append(check, swatch, document.createTextNode(" " + s.name));
    box.append(label);
  }
  box.hidden = false;
}

function renderStructures() {
  if (!state.result) return;
  const opacity = Number($("opacity").value);
  $("opacity-value").textContent = opacity.toFixed(2);
  const { width: w, height: h } = state, f = w / state.origW;
  const ctx = drawPhoto(state.photo, w, h);
  const areas = [];
  for (const [name, s] of Object.entries(state.result.structures)) {
    if (!state.shown[name]) continue;
    ctx.beginPath();
    for (const contour of s.contours) {
      contour.forEach(([x, y], i) => (i ? ctx.lineTo(x * f, y * f) : ctx.moveTo(x * f, y * f)));
      ctx.closePath();
    }
    ctx.fillStyle = `rgba(${s.color.join(",")},${opacity})`;
    ctx.strokeStyle = `rgb(${s.color.join(",")})`;
    ctx.fill("evenodd"); ctx.stroke();
    areas.push(`${name} ${(100 * s.area_fraction).toFixed(1)} %`);
  }
  $("area").textContent = areas.join(", ") || "–";
}

async function upload(file) {
  if (state.structures) return uploadStructures(file);
  state.file = file;
  $("download").disabled = true;
  setStatus("segmenting " + file.name + " …");
  const started = performance.now();
  const resp = await post(file, { format: "prob", max_side: MAX_SIDE });
  if (!resp.ok) { setStatus(await errorText(resp), true); return; }
  const [origW, origH] = (resp.headers.get("X-Image-Size") || "0x0").split("x").map(Number);
  const server = resp.headers.get("Server-Timing") || "";
  const probBitmap = await createImageBitmap(await resp.blob());
  let photo = null;
  try { photo = await createImageBitmap(file); } catch (e) { photo = null; }  // e.g. TIFF: no preview
  Object.assign(state, { photo, origW, origH, width: probBitmap.width, height: probBitmap.height });
  const scratch = document.createElement("canvas");
  scratch.width = state.width; scratch.height = state.height;
  const ctx = scratch.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(probBitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, state.width, state.height).data;
  state.prob = new Uint8Array(state.width * state.height);
  for (let i = 0; i < state.prob.length; i++) state.prob[i] = rgba[4 * i];
  const total = performance.now() - started;
  const serverMs = server.split(",").reduce((sum, part) => sum + Number((part.split("dur=")[1] || 0)), 0);
  $("timing").textContent = `${total.toFixed(0)} ms (server ${serverMs.toFixed(0)} ms)`;
  $("size").textContent = `${origW} × ${origH}`;
  $("download").disabled = false;
  setStatus(file.name);
  render();
}

function render() {
  if (!state.prob) return;
  const threshold = Number($("threshold").value), opacity = Number($("opacity").value);
  $("threshold-value").textContent = threshold.toFixed(2);
  $("opacity-value").textContent = opacity.toFixed(2);
  const { width: w, height: h, prob } = state;
  const ctx = drawPhoto(state.photo, w, h);
  const img = ctx.getImageData(0, 0, w, h), px = img.data;
  const cut = threshold * 255;  // the server's rule: probability > threshold
  const inside = (i) => prob[i] > cut;
  let count = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      if (!inside(i)) continue;
      count++;
      const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
        !inside(i - 1) || !inside(i + 1) || !inside(i - w) || !inside(i + w);
      const a = edge ? 1 : opacity, p = 4 * i;
      px[p] = (1 - a) * px[p] + a * 230; px[p + 1] = (1 - a) * px[p + 1] + a * 40; px[p + 2] = (1 - a) * px[p + 2] + a * 40;
    }
  }
  ctx.putImageData(img, 0, 0);
  const fraction = count / (w * h);
  const areaPx = Math.round(fraction * state.origW * state.origH);
  $("area").textContent = `${(100 * fraction).toFixed(1)} % (≈ ${areaPx.toLocaleString("en")} px)`;
}

async function download() {
  if (!state.file) return;
  // overlapping structures have no single mask: their JSON (areas, boxes, contours) instead
  const format = state.labelMode === "overlapping" ? "json" : "mask";
  const resp = await post(state.file, { format, threshold: $("threshold").value });
  if (!resp.ok) { setStatus(await errorText(resp), true); return; }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await resp.blob());
  link.download = state.file.name.replace(/\.[^.]+$/, "") + (format === "json" ? ".json" : "_mask.png");
  link.click();
  URL.revokeObjectURL(link.href);
}

async function showModel() {
  const resp = await fetch("/v1/model", { headers: authHeaders() });
  if (!resp.ok) { $("model").textContent = "model: (token needed)"; return; }
  const model = await resp.json();
  $("model").textContent = "model: " + model.name;
  if (model.structures && model.structures.length > 1) {
    state.structures = model.structures; state.labelMode = model.label_mode;
    legend();
  }
}

$("file").addEventListener("change", (e) => e.target.files[0] && (state.file = e.target.files[0]) && upload(e.target.files[0]));
$("threshold").addEventListener("input", () => (state.structures ? state.file && uploadStructures(state.file) : render()));
$("opacity").addEventListener("input", () => (state.structures ? renderStructures() : render()));
$("download").addEventListener("click", download);
$("token").addEventListener("change", showModel);
onDrop((file) => { state.file = file; upload(file); });
showModel();
