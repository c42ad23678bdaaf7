// DOM helpers of the console: nodes are built with `el()` and text is always set as text, never
// parsed as HTML (the Content-Security-Policy forbids inline scripts and styles; data never
// becomes markup).

/** Properties set on the element itself rather than as attributes. */
const PROPERTIES = new Set(["value", "checked", "disabled", "selected", "hidden", "open", "indeterminate", "multiple"]);

let nextId = 0;

/** A document-unique id with this prefix (for `<label for>` and `aria-describedby`). */
export function uid(prefix = "id") {
  nextId += 1;
  return `${prefix}-${nextId}`;
}

/**
 * `el(tag, props, ...children)`: a new element. `props` holds attributes (`true` sets an empty
 * attribute, `false`/`null`/`undefined` leaves it out), `class` (a string or an array),
 * `text` (its text content), `on` (`{click: fn, ...}`) and the properties `value`, `checked`,
 * `disabled`, `selected`, `hidden`, `open`. Children are nodes, strings (as text), arrays of
 * them, or `null`/`false` (skipped).
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") {
      const names = Array.isArray(value) ? value.filter(Boolean) : String(value).split(/\s+/).filter(Boolean);
      node.classList.add(...names);
    } else if (key === "text") {
      node.textContent = String(value);
    } else if (key === "on") {
      for (const [event, fn] of Object.entries(value)) node.addEventListener(event, fn);
    } else if (PROPERTIES.has(key)) {
      node[key] = value;
    } else if (value === true) {
      node.setAttribute(key, "");
    } else if (value !== false) {
      node.setAttribute(key, String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else if (child instanceof Node) node.appendChild(child);
    else node.appendChild(document.createTextNode(String(child)));
  }
}

/** Removes every child of `node`; returns it. */
export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

/** Replaces the children of `node` with `children`; returns it. */
export function replace(node, ...children) {
  clear(node);
  append(node, children);
  return node;
}

/**
 * A visible error (`role="alert"`) with the HTTP status, the error code and the message of an
 * `ApiError` (or the message of any other error).
 */
export function errorBox(err) {
  const status = typeof err?.status === "number" ? err.status : null;
  const code = err?.code ?? null;
  const message = err?.message || String(err);
  const head = status === 0 ? "Network error" : status ? `Error ${status}` : "Error";
  return el(
    "div",
    { class: "error-box", role: "alert", "data-testid": "error", "data-status": status ?? "", "data-code": code ?? "" },
    el("strong", { text: code ? `${head} (${code})` : head }),
    " ",
    el("span", { class: "error-message", text: message }),
  );
}

/**
 * A labelled `<progress>` with a text beside it: `{node, set(fraction, text)}`. A fraction of
 * `null` makes it indeterminate. The text is announced politely to screen readers.
 */
export function progressBar(label) {
  const id = uid("progress");
  const bar = el("progress", { id, max: "1" });
  const text = el("span", { class: "progress-text", "aria-live": "polite" });
  const node = el(
    "div",
    { class: "progress" },
    el("label", { for: id, text: label }),
    bar,
    text,
  );
  return {
    node,
    bar,
    set(fraction, message) {
      if (fraction === null || fraction === undefined || Number.isNaN(fraction)) {
        bar.removeAttribute("value");
        node.dataset.fraction = "";
      } else {
        const f = Math.min(1, Math.max(0, fraction));
        bar.value = f;
        node.dataset.fraction = String(f);
      }
      text.textContent = message ?? (fraction === null || fraction === undefined ? "" : `${Math.round(fraction * 100)} %`);
    },
  };
}

/** `1536` → `1.5 KiB`. */
export function formatBytes(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

/** Unix seconds (or an RFC 3339 string) → a local date and time; `—` when absent. */
export function formatTime(t) {
  if (t === null || t === undefined || t === "") return "—";
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleString();
}

/** Seconds → `2d 3h 4m 5s`. */
export function formatDuration(seconds) {
  let s = Math.max(0, Math.floor(Number(seconds) || 0));
  const parts = [];
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (s >= size) {
      parts.push(`${Math.floor(s / size)}${unit}`);
      s %= size;
    }
  }
  parts.push(`${s}s`);
  return parts.join(" ");
}

/**
 * Any JSON value as nested nodes: objects as definition lists, arrays of scalars as a comma
 * list, scalars as text (for sandbox protection, provenance receipts and job details).
 */
export function jsonView(value) {
  if (value === null || value === undefined) return el("span", { class: "muted", text: "none" });
  if (Array.isArray(value)) {
    if (value.every((v) => v === null || typeof v !== "object")) {
      return el("span", { text: value.length ? value.map(String).join(", ") : "none" });
    }
    return el("ol", { class: "json-list" }, value.map((v) => el("li", {}, jsonView(v))));
  }
  if (typeof value === "object") {
    const entries = Object.entries(value);
    if (!entries.length) return el("span", { class: "muted", text: "none" });
    return el("dl", { class: "json" }, entries.map(([k, v]) => [el("dt", { text: k }), el("dd", {}, jsonView(v))]));
  }
  if (typeof value === "boolean") return el("span", { class: value ? "yes" : "no", text: value ? "yes" : "no" });
  return el("span", { text: String(value) });
}

/** A labelled form field: `{node, input}`; `input` is an element made by `el()`. */
export function field(label, input, hint) {
  if (!input.id) input.id = uid("field");
  const hintNode = hint ? el("small", { id: uid("hint"), class: "hint", text: hint }) : null;
  if (hintNode) input.setAttribute("aria-describedby", hintNode.id);
  return { node: el("div", { class: "field" }, el("label", { for: input.id, text: label }), input, hintNode), input };
}

/**
 * A table with a header row; `rows` are `<tr>` nodes or arrays of cells (nodes or text). Each
 * cell gets its column's name as `data-label`, so narrow windows show rows as labelled cards.
 */
export function table(caption, headers, rows, props = {}) {
  const body = el("tbody", {}, rows.map((r) => (r instanceof Node ? r : el("tr", {}, r.map((c) => el("td", {}, c))))));
  for (const tr of body.rows) {
    [...tr.cells].forEach((cell, i) => {
      if (headers[i] && !cell.hasAttribute("data-label")) cell.setAttribute("data-label", headers[i]);
    });
  }
  const t = el(
    "table",
    props,
    caption ? el("caption", { text: caption }) : null,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col", text: h })))),
    body,
  );
  t.classList.add("cards");
  return el("div", { class: "table-wrap" }, t);
}
