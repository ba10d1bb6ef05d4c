// The page's only script: send the chosen images to POST /predict and show what the model says.
"use strict";

const TOP_K = 5;
const CHUNK = 16; // images per request: a large selection goes in several requests, under the server's limit
const PER_FILE = new Set([413, 415, 422]); // refusals of a request for one of its files: retried file by file
const $ = (id) => document.getElementById(id);

function apiKey() {
  return sessionStorage.getItem("apiKey");
}

function keyHeader() {
  return sessionStorage.getItem("apiKeyHeader") || "X-API-Key";
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

async function post(files) {
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  const headers = apiKey() ? { [keyHeader()]: apiKey() } : {};
  const response = await fetch(`/predict?top_k=${TOP_K}`, { method: "POST", body: form, headers });
  const body = await response.json().catch(() => null);
  const answered = response.ok && body && body.model && Array.isArray(body.predictions) &&
    body.predictions.length === files.length;
  if (response.ok && !answered) throw new Error("the server answered, but not as this service does");
  return { response, body };
}

// Every file's answer, in order: a prediction, or the error of the request refused for it.
async function classifyAll(files) {
  const outcomes = [];
  let last = null;
  for (let start = 0; start < files.length; start += CHUNK) {
    const chunk = files.slice(start, start + CHUNK);
    let { response, body } = await post(chunk);
    last = { response, body };
    if (!response.ok && chunk.length > 1 && PER_FILE.has(response.status)) {
      for (const file of chunk) {
        ({ response, body } = await post([file]));
        outcomes.push(response.ok ? { prediction: body.predictions[0] } : { error: explain(response, body) });
        if (response.ok) last = { response, body };
      }
      continue;
    }
    if (!response.ok) return { failed: { response, body } };
    for (const prediction of body.predictions) outcomes.push({ prediction });
  }
  return { outcomes, last };
}

async function classify(files) {
  if (!files.length) return;
  $("error").hidden = true;
  $("results").replaceChildren();
  $("status").textContent = `Classifying ${files.length} image${files.length > 1 ? "s" : ""}…`;
  const started = performance.now();
  let result;
  try {
    result = await classifyAll(files);
  } catch (error) {
    $("status").textContent = "";
    showError(`The server could not be used: ${error.message || error}`);
    return;
  } finally {
    $("files").value = ""; // so that choosing the same files again classifies them again
  }
  const elapsed = performance.now() - started;
  if (result.failed) {
    const { response, body } = result.failed;
    $("status").textContent = "";
    if (response.status === 401 || response.status === 403) askForKey(response, files);
    showError(explain(response, body));
    return;
  }
  const failures = result.outcomes.filter((outcome) => outcome.error).length;
  const model = result.last && result.last.body ? result.last.body.model : null;
  $("status").textContent = (model ? `${model.name} ${model.version} answered` : "Answered") +
    ` in ${elapsed.toFixed(0)} ms` + (failures ? `; ${failures} of ${files.length} files were refused.` : ".") +
    (result.last && result.last.response.ok ? ` (last request ${result.last.response.headers.get("X-Request-ID")})` : "");
  result.outcomes.forEach((outcome, index) => $("results").append(
    outcome.error ? refusal(files[index], outcome.error) : card(files[index], outcome.prediction)));
}

function refusal(file, message) {
  const item = document.createElement("li");
  item.className = "refused";
  const title = document.createElement("h2");
  title.textContent = file.name;
  const text = document.createElement("p");
  text.className = "reason";
  text.textContent = message;
  item.append(title, text);
  return item;
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
  if (named) sessionStorage.setItem("apiKeyHeader", named[1]);
  $("key-header").textContent = keyHeader();
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
