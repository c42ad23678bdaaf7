// The console's HTTP client. Every call goes to the daemon's documented API with the session
// cookie (`credentials: "same-origin"`); state-changing calls carry the session's CSRF token.
// Errors come back as `ApiError` parsed from the JSON envelope `{"error": {"code", "message"}}`;
// a 401 tells the shell to show the login screen.

/** An API failure: HTTP `status` (0 for a network failure), stable `code`, readable `message`. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.message = message;
  }
}

let csrfToken = null;
let onUnauthorized = null;

/** The CSRF token of the current session (`null` when signed out). */
export function setCsrfToken(token) {
  csrfToken = token ?? null;
}

/** Called with the `ApiError` when any call answers 401 (the shell shows the login screen). */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

/** Whether a session's scopes satisfy `scope` (`admin` implies every scope, any scope `read`). */
export function hasScope(session, scope) {
  if (!scope) return true;
  const scopes = session?.scopes ?? [];
  if (scopes.includes("admin") || scopes.includes(scope)) return true;
  return scope === "read" && scopes.length > 0;
}

/** `/api/v1/models/{name}`-style path segment (`/` and `:` encoded). */
export function seg(value) {
  return encodeURIComponent(String(value));
}

function headers(method, hasBody, extra) {
  const h = { Accept: "application/json", ...extra };
  if (hasBody && !("Content-Type" in h)) h["Content-Type"] = "application/json";
  if (!["GET", "HEAD", "OPTIONS"].includes(method) && csrfToken) h["X-CSRF-Token"] = csrfToken;
  return h;
}

async function send(method, path, { body, raw, contentType, accept, signal } = {}) {
  method = method.toUpperCase();
  const hasBody = body !== undefined || raw !== undefined;
  const extra = {};
  if (accept) extra.Accept = accept;
  if (raw !== undefined) extra["Content-Type"] = contentType || "application/octet-stream";
  let resp;
  try {
    resp = await fetch(path, {
      method,
      credentials: "same-origin",
      headers: headers(method, hasBody, extra),
      body: raw !== undefined ? raw : body !== undefined ? JSON.stringify(body) : undefined,
      signal,
      cache: "no-store",
    });
  } catch (err) {
    if (err?.name === "AbortError") throw err;
    throw new ApiError(0, "network", `the daemon did not answer (${err?.message || err}); is it running?`);
  }
  if (!resp.ok) throw await errorOf(resp, path);
  return resp;
}

/** The `ApiError` of a failed response (and the 401 hook). */
async function errorOf(resp, path) {
  let code = `http_${resp.status}`;
  let message = resp.statusText || `the daemon answered ${resp.status}`;
  try {
    const text = await resp.text();
    try {
      const v = JSON.parse(text);
      if (v && v.error) {
        code = v.error.code ?? code;
        message = v.error.message ?? message;
      }
    } catch {
      if (text.trim()) message = text.trim().slice(0, 500);
    }
  } catch {
    // The body could not be read; the status says enough.
  }
  const err = new ApiError(resp.status, code, message);
  if (resp.status === 401 && onUnauthorized && !path.startsWith("/api/v1/ui/session")) onUnauthorized(err);
  return err;
}

/**
 * `api(method, path, body)`: the parsed JSON answer, or `null` for 204 (or an empty body).
 * Throws `ApiError`.
 */
export async function api(method, path, body, { signal } = {}) {
  const resp = await send(method, path, { body, signal });
  if (resp.status === 204) return null;
  const text = await resp.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** Lines of a response body as they arrive (UTF-8, `\n` or `\r\n` separated). */
async function* lines(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        let line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.endsWith("\r")) line = line.slice(0, -1);
        yield line;
      }
    }
    buf += decoder.decode();
    if (buf) yield buf;
  } finally {
    reader.releaseLock();
  }
}

function parseData(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/**
 * `sse(path, {method, body, signal})`: the Server-Sent Events of a GET or POST, as
 * `{event, data}` (`event` defaults to `message`; `data` JSON-parsed when it is JSON, so the
 * OpenAI stream's end arrives as the string `[DONE]`). Throws `ApiError` when the request fails.
 */
export async function* sse(path, { method = "GET", body, signal } = {}) {
  const resp = await send(method, path, { body, signal, accept: "text/event-stream" });
  let event = null;
  let data = [];
  for await (const line of lines(resp)) {
    if (line === "") {
      if (data.length) yield { event: event ?? "message", data: parseData(data.join("\n")) };
      event = null;
      data = [];
      continue;
    }
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "event") event = value;
    else if (name === "data") data.push(value);
  }
  if (data.length) yield { event: event ?? "message", data: parseData(data.join("\n")) };
}

/** `ndjson(path, {method, body, signal})`: one parsed object per line of the answer. */
export async function* ndjson(path, { method = "GET", body, signal } = {}) {
  const resp = await send(method, path, { body, signal, accept: "application/x-ndjson" });
  for await (const line of lines(resp)) {
    if (line.trim()) yield parseData(line);
  }
}

/** `upload(path, file, {signal, method})`: the file (a `Blob`) as the raw request body. */
export async function upload(path, file, { signal, method = "POST" } = {}) {
  const resp = await send(method, path, { raw: file, contentType: file.type, signal });
  if (resp.status === 204) return null;
  const text = await resp.text();
  return text ? parseData(text) : null;
}

/** A response as a `Blob` (for downloads such as the diagnostics bundle). */
export async function download(path, { signal } = {}) {
  const resp = await send("GET", path, { signal, accept: "*/*" });
  const name = /filename="?([^";]+)"?/.exec(resp.headers.get("Content-Disposition") || "")?.[1] ?? null;
  return { blob: await resp.blob(), name };
}
