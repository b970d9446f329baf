// Talking to the server. The API key lives in sessionStorage only (this tab, until it is
// closed or the person signs out): never in a URL, a cookie or a log line. Every call carries
// it as "Authorization: Bearer"; since no cookie carries any authority, a page on another
// site cannot make the browser act as the signed-in person (CSRF-safe by construction).

const STORE = "oasis.apiKey";
let onUnauthorized = () => {};

export const session = {
  key: () => sessionStorage.getItem(STORE),
  set: (key) => sessionStorage.setItem(STORE, key),
  clear: () => sessionStorage.removeItem(STORE),
};

/** Called with a message when any call gets a 401 (the key was revoked or expired). */
export function setUnauthorizedHandler(f) {
  onUnauthorized = f;
}

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(key, json) {
  const out = {};
  const k = key === undefined ? session.key() : key;
  if (k) out.Authorization = `Bearer ${k}`;
  if (json) out["Content-Type"] = "application/json";
  return out;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || null;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message, code);
}

/**
 * A JSON call. Options: method, body (sent as JSON), signal, key (this key instead of the
 * session's; null for none), quiet401 (do not sign out on a 401: the sign-in form's own check).
 */
/** fetch with the key, no cookies and no cache; an error answer becomes ApiError (a 401
 * also signs out, unless quiet401). */
async function send(path, { method = "GET", body, signal, key, quiet401 = false } = {}) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: headers(key, body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
      credentials: "omit",
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, `The server could not be reached (${e.message}).`, null);
  }
  if (!response.ok) {
    const err = await failure(response);
    if (response.status === 401 && !quiet401) onUnauthorized(err.message);
    throw err;
  }
  return response;
}

export async function api(path, options = {}) {
  const response = await send(path, options);
  return response.status === 204 ? null : response.json();
}

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== "") q.set(k, String(v));
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}

/**
 * POST /v1/chat/completions with stream: true, calling onChunks(chunks) with the parsed
 * server-sent events of each read until [DONE]. Rejects with ApiError on an error answer
 * or an error event.
 */
export async function streamChat(body, { signal, onChunks }) {
  const response = await send("/v1/chat/completions", { method: "POST", body, signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let searched = 0; // buffer[0, searched) holds no event's end
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let start = 0;
    let end;
    const batch = [];
    while ((end = buffer.indexOf("\n\n", Math.max(start, searched))) >= 0) {
      const event = buffer.slice(start, end);
      start = end + 2;
      const data = event.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (!data) continue;
      if (data === "[DONE]") {
        if (batch.length) onChunks(batch);
        return;
      }
      const chunk = JSON.parse(data);
      if (chunk.error) {
        if (batch.length) onChunks(batch);
        throw new ApiError(200, chunk.error.message || "The stream ended with an error.",
          chunk.error.code || null);
      }
      batch.push(chunk);
    }
    // the rest is kept, and searched again only from its end (a long event in many reads)
    buffer = buffer.slice(start);
    searched = Math.max(0, buffer.length - 1);
    // everything that arrived in one read is handed over at once
    if (batch.length) onChunks(batch);
  }
}
