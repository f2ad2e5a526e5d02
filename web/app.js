// The corruption detector's page: send one image to TorchServe's explanations API and show the answer.
// The page is static; TorchServe must allow its origin (`make serve` allows `make web`'s with the same PORT, or ORIGIN=).
"use strict";

const DEFAULT_SERVER = "http://127.0.0.1:8080";
const MODEL = "corruption";
const TIMEOUT_MS = 60000;

const $ = (id) => document.getElementById(id);

// The server's URL without a trailing slash; http:// when none is given (127.0.0.1:8080), as the Python client.
function serverUrl() {
  const url = $("server").value.trim().replace(/\/+$/, "");
  return url.includes("://") ? url : `http://${url}`;
}

// What to do when the server cannot be reached: start it, or let it allow this page's origin.
function unreachableMessage(server) {
  const origin = window.location.origin;
  let port = "8080";
  try {
    port = new URL(server).port || port;
  } catch {
    // not a URL: keep the default port in the advice
  }
  return (
    `Cannot reach TorchServe at ${server}. Is it running (make serve)? If it is, it must allow this page's ` +
    `origin, ${origin}: start both with the same PORT (make serve PORT=${port}, then make web PORT=${port}), ` +
    `or the server with make serve ORIGIN=${origin}.`
  );
}

function showStatus(text) {
  $("status").textContent = text;
}

function showError(text) {
  showStatus("");
  $("error").textContent = text;
  $("error").hidden = false;
}

function reset() {
  $("error").hidden = true;
  $("error").textContent = "";
  $("result").hidden = true;
}

function percent(probability) {
  return `${(probability * 100).toFixed(1)}%`;
}

// Browsers name a file's type from its extension; an empty type is left for the server to judge.
function isImageFile(file) {
  return file.type === "" || file.type.startsWith("image/");
}

// A sentence for a refused request, from TorchServe's JSON error body when there is one.
function failureMessage(status, body) {
  const detail = body && body.message ? body.message : "no details";
  if (status === 400) {
    return `The server refused this file (${body && body.type ? body.type : "bad request"}): ${detail}.`;
  }
  if (status === 404) {
    return `The server has no model "${MODEL}" (404): ${detail}.`;
  }
  if (status === 413) {
    return "The file is too large for the server (413): the limit is 16 MiB.";
  }
  if (status >= 400 && status < 500) {
    return `The server refused the request (${status}): ${detail}.`;
  }
  return `The server failed (${status}): ${detail}. Try again in a moment.`;
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

function render(file, body) {
  const probs = body.probs;
  $("label").textContent = body.label;
  $("label").className = `label-${body.label}`;
  $("confidence").textContent = percent(body.confidence);
  for (const name of ["clean", "corrupted"]) {
    $(`bar-${name}`).style.width = percent(probs[name]);
    $(`prob-${name}`).textContent = percent(probs[name]);
  }
  $("preview").src = URL.createObjectURL(file);
  showExplanation(body.explanation);
  $("result").hidden = false;
  showStatus(`${file.name}: ${body.label}`);
}

// The overlay and how to read it: heat only where the verdict is corrupted (a clean verdict's map, scaled to
// peak at 1 like every map, would paint a hot spot on an image the model finds clean).
function showExplanation(explanation) {
  $("overlay").src = `data:image/png;base64,${explanation.overlay_png}`;
  if (explanation.evidence) {
    $("overlay").alt = "Grad-CAM heatmap over the image as the model sees it, with its colour scale";
    $("overlay-caption").textContent =
      "Where the model sees corruption (Grad-CAM on the image as the model sees it; scale: 0 none, 1 strongest).";
  } else {
    $("overlay").alt = "the image as the model sees it, without a heatmap";
    $("overlay-caption").textContent =
      "Clean verdict: no corruption to locate, so no heatmap is shown (the image as the model sees it).";
  }
}

async function score(file) {
  reset();
  if (!isImageFile(file)) {
    showError(`"${file.name}" is not an image (${file.type}). Choose a JPEG, PNG, GIF, BMP, TIFF or WebP file.`);
    return;
  }
  const server = serverUrl();
  const form = new FormData();
  form.append("data", file, file.name);  // multipart: a CORS "simple" request, no preflight needed
  showStatus(`Scoring ${file.name}…`);
  let response;
  try {
    response = await fetch(`${server}/explanations/${MODEL}`, {
      method: "POST",
      body: form,
      signal: AbortSignal.timeout(TIMEOUT_MS),
    });
  } catch (error) {
    if (error.name === "TimeoutError") {
      showError(`TorchServe at ${server} did not answer within ${TIMEOUT_MS / 1000} s.`);
    } else {
      showError(unreachableMessage(server));
    }
    return;
  }
  const body = await readJson(response);
  if (!response.ok) {
    showError(failureMessage(response.status, body));
  } else if (!body || !body.probs || !body.explanation) {
    showError(`TorchServe at ${server} answered, but not with a prediction: is it the corruption detector?`);
  } else {
    render(file, body);
  }
}

function setUp() {
  const params = new URLSearchParams(window.location.search);
  $("server").value = params.get("server") || DEFAULT_SERVER;
  const dropzone = $("dropzone");
  $("file").addEventListener("change", (event) => {
    if (event.target.files.length) score(event.target.files[0]);
    event.target.value = "";  // choosing the same file again still scores it
  });
  dropzone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") $("file").click();
  });
  dropzone.addEventListener("dragover", (event) => {
    event.preventDefault();
    dropzone.classList.add("dragging");
  });
  dropzone.addEventListener("dragleave", () => dropzone.classList.remove("dragging"));
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropzone.classList.remove("dragging");
    const files = event.dataTransfer.files;
    if (files.length) score(files[0]);
  });
  // A file dropped beside the zone would make the browser navigate away to it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

setUp();
