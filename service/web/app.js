// The page's only script: send the chosen images to POST /predict and show what the model says.
"use strict";

const TOP_K = 5;
const $ = (id) => document.getElementById(id);
let keyHeader = "X-API-Key";

function apiKey() {
  return sessionStorage.getItem("apiKey");
}

async function showModel() {
  try {
    const health = await (await fetch("/health")).json();
    $("model").textContent = health.model
      ? `Model ${health.model} ${health.version}, running on ${health.provider}`
      : "The model is still loading.";
  } catch (error) {
    $("model").textContent = "The server did not answer.";
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

// What went wrong, in words, from the service's JSON error ({"error": code, "detail": text}).
function explain(response, body) {
  const detail = body && body.detail ? body.detail : response.statusText;
  switch (response.status) {
    case 413: return `Too large: ${detail}`;
    case 415: return `Not an image this service reads: ${detail}`;
    case 422: return `Not accepted: ${detail}`;
    case 503: {
      const wait = response.headers.get("Retry-After");
      return `The server is busy (${body ? body.error : "unavailable"}); retry${wait ? ` in ${wait} s` : " later"}. ${detail}`;
    }
    case 401: case 403: return `API key needed: ${detail}`;
    default: return `Error ${response.status}: ${detail}`;
  }
}

async function classify(files) {
  if (!files.length) return;
  $("error").hidden = true;
  $("results").replaceChildren();
  $("status").textContent = `Classifying ${files.length} image${files.length > 1 ? "s" : ""}…`;
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  const headers = apiKey() ? { [keyHeader]: apiKey() } : {};
  const started = performance.now();
  let response, body;
  try {
    response = await fetch(`/predict?top_k=${TOP_K}`, { method: "POST", body: form, headers });
    body = await response.json().catch(() => null);
  } catch (error) {
    $("status").textContent = "";
    showError(`The server could not be reached: ${error}`);
    return;
  }
  const elapsed = performance.now() - started;
  if (!response.ok) {
    $("status").textContent = "";
    if (response.status === 401 || response.status === 403) askForKey(response, files);
    showError(explain(response, body));
    return;
  }
  $("status").textContent = `${body.model.name} ${body.model.version} answered in ${elapsed.toFixed(0)} ms ` +
    `(request ${response.headers.get("X-Request-ID")}).`;
  body.predictions.forEach((prediction, index) => $("results").append(card(files[index], prediction)));
}

function card(file, prediction) {
  const item = document.createElement("li");
  item.className = "prediction";
  const image = document.createElement("img");
  image.src = URL.createObjectURL(file);
  image.alt = prediction.filename;
  const title = document.createElement("h2");
  title.textContent = prediction.filename;
  item.append(image, title);
  for (const { label, probability } of prediction.top_k) {
    const row = document.createElement("div");
    row.className = "bar";
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = label;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = `${(probability * 100).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.textContent = `${(probability * 100).toFixed(1)}%`;
    row.append(name, track, value);
    item.append(row);
  }
  return item;
}

// With an API key set on the server, its 401 names the header in WWW-Authenticate: ApiKey header="...".
function askForKey(response, files) {
  const challenge = response.headers.get("WWW-Authenticate") || "";
  const named = /header="([^"]+)"/.exec(challenge);
  if (named) keyHeader = named[1];
  $("key-header").textContent = keyHeader;
  $("key").hidden = false;
  $("key").onsubmit = (event) => {
    event.preventDefault();
    sessionStorage.setItem("apiKey", $("key-value").value);
    $("key").hidden = true;
    classify(files);
  };
}

function setUp() {
  const drop = $("drop");
  $("files").addEventListener("change", (event) => classify([...event.target.files]));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    classify([...event.dataTransfer.files]);
  });
  showModel();
}

setUp();
