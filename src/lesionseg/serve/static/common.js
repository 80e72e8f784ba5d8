// What both pages share: the token header, the status line, a server error's text, the canvas drawn with
// the photo (or grey where the browser cannot show it, e.g. a TIFF), and the drop zone.
"use strict";
const $ = (id) => document.getElementById(id);

function authHeaders(extra = {}) {
  const token = $("token").value.trim();
  return token ? { Authorization: "Bearer " + token, ...extra } : extra;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function errorText(resp) {
  try { return (await resp.json()).error; } catch (e) { return resp.status + " " + resp.statusText; }
}

function drawPhoto(photo, w, h) {
  const canvas = $("view");
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  if (photo) ctx.drawImage(photo, 0, 0, w, h);
  else { ctx.fillStyle = "#888"; ctx.fillRect(0, 0, w, h); }
  return ctx;
}

function onDrop(open) {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files[0]) open(e.dataTransfer.files[0]);
  });
}
