// The HTTP API: JSON calls with the API key, the key dialog on 401, and SSE streams.

const KEY = "trimtab.apiKey";

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

export function getKey() {
  try {
    return localStorage.getItem(KEY) || "";
  } catch {
    return "";
  }
}

export function setKey(key) {
  try {
    if (key) localStorage.setItem(KEY, key);
    else localStorage.removeItem(KEY);
  } catch {
    /* storage refused: the key lives for this call only */
  }
}

let asking = null; // one dialog for every call that got a 401 at once

/** Open the key dialog; resolves true once a key was saved, false when cancelled. */
export function askKey(reason) {
  if (asking) return asking;
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  const why = document.getElementById("key-why");
  const cancel = document.getElementById("key-cancel");
  why.textContent = reason || "Enter the server's API key. It is kept in this browser (localStorage) and sent as a Bearer token.";
  input.value = getKey();
  asking = new Promise((resolve) => {
    const done = (saved) => {
      form.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("close", onClose);
      cancel.removeEventListener("click", onCancel);
      asking = null;
      resolve(saved);
    };
    const onSubmit = (e) => {
      e.preventDefault();
      setKey(input.value.trim());
      dialog.close();
      done(true);
    };
    const onClose = () => done(false);
    const onCancel = () => dialog.close();
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("close", onClose);
    cancel.addEventListener("click", onCancel);
  });
  dialog.showModal();
  input.focus();
  return asking;
}

function headers(extra) {
  const h = { ...extra };
  const key = getKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function failure(response) {
  let body = null;
  let message = `${response.status} ${response.statusText}`;
  try {
    body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
    else if (body && body.detail) message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    /* not JSON */
  }
  return new ApiError(response.status, message, body);
}

/** fetch with the key; a 401 asks for the key and tries again once it is given. */
export async function send(path, init = {}) {
  for (let attempt = 0; ; attempt++) {
    const response = await fetch(path, { ...init, headers: headers(init.headers) });
    if (response.status === 401 && attempt < 3) {
      const error = await failure(response);
      if (await askKey(`${error.message} Enter the server's API key.`)) continue;
      throw error;
    }
    if (!response.ok) throw await failure(response);
    return response;
  }
}

export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { "Content-Type": "application/json" };
  }
  const response = await send(path, init);
  return response.json();
}

export async function text(path, { signal } = {}) {
  return (await send(path, { signal })).text();
}

/** POST a streaming request; calls onChunk(object) for each data event until [DONE]. */
export async function stream(path, body, onChunk, signal) {
  const response = await send(path, {
    method: "POST",
    body: JSON.stringify({ ...body, stream: true }),
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    signal,
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event
        .split("\n")
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart())
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk.error.message || "stream error", chunk);
      onChunk(chunk);
    }
  }
}

/** Every page of a list endpoint (OpenAI's cursor pages). */
export async function all(path, { limit = 100, signal } = {}) {
  const items = [];
  let after = null;
  for (let i = 0; i < 100; i++) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${sep}limit=${limit}${after ? `&after=${encodeURIComponent(after)}` : ""}`, { signal });
    items.push(...page.data);
    if (!page.has_more || !page.data.length) break;
    after = page.last_id || page.data[page.data.length - 1].id;
  }
  return items;
}

export const enc = encodeURIComponent;
