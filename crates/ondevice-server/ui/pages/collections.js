// Collections page: list, create, add documents (files read in the browser and upserted, or
// paths on the daemon's machine indexed by an `index` job), search, delete. Everything goes
// through `/api/v1/collections` (queries need `read`; writes need `models`).

import { errorBox, progressBar, clear, field as domField, formatBytes, formatTime, table } from "../lib/dom.js";
import { hasScope, seg } from "../lib/api.js";

export const title = "Collections";
export const scope = "read";

/** Documents sent per upsert request (the API takes 1 to 1000). */
const BATCH_FILES = 1;

/** The upsert `format` a file name suggests. */
export function formatFor(name) {
  const ext = (name.split(".").pop() || "").toLowerCase();
  if (ext === "md" || ext === "markdown") return "markdown";
  if (ext === "html" || ext === "htm") return "html";
  const code = ["rs", "py", "js", "ts", "c", "h", "cc", "cpp", "hpp", "go", "java", "kt", "rb", "sh", "toml", "json", "yaml", "yml", "css", "sql"];
  return code.includes(ext) ? "code" : "text";
}

function readText(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(String(r.result));
    r.onerror = () => reject(r.error || new Error(`cannot read ${file.name}`));
    r.readAsText(file);
  });
}

const enc = seg;

export async function render(root, ctx) {
  const { api, sse, el } = ctx;
  const h = el;
  const canWrite = hasScope(ctx.session, "models");
  const controller = new AbortController();

  const errors = h("div", { "data-testid": "collections-errors" });
  const showErr = (where, err) => {
    clear(where);
    where.append(errorBox(err));
  };

  // ---- list ----
  const listBox = h("div", { "data-testid": "collections-list" });
  const detail = h("section", { class: "panel", "aria-labelledby": "coll-detail-h", "data-testid": "collection-detail", hidden: true });
  let selected = null;

  async function refresh() {
    clear(errors);
    let list;
    try {
      list = (await api("GET", "/api/v1/collections")).collections || [];
    } catch (e) {
      showErr(errors, e);
      return;
    }
    clear(listBox);
    if (list.length === 0) {
      listBox.append(h("p", { "data-testid": "collections-empty", text: "No collections yet." }));
      createBox.open = true;
      return;
    }
    const rows = list.map((c) =>
      h("tr", { "data-testid": `collection-row-${c.name}` },
        h("th", { scope: "row", text: c.name }),
        h("td", { text: c.model }),
        h("td", { text: String(c.documents) }),
        h("td", { text: String(c.chunks) }),
        h("td", { text: `${c.dimension} · ${c.distance}` }),
        h("td", { text: c.backend }),
        h("td", {},
          h("button", { type: "button", "data-testid": `collection-open-${c.name}`, "aria-label": `Open collection ${c.name}`, on: { click: () => open(c.name) } }, "Open"))));
    listBox.append(table(null, ["Name", "Model", "Documents", "Chunks", "Dimension", "Backend", ""], rows));
  }

  // ---- create ----
  const createErr = h("div", {});
  const f = {
    name: h("input", { id: "coll-name", type: "text", name: "name", required: true, maxlength: "64", pattern: "[A-Za-z0-9][A-Za-z0-9_.\\-]{0,63}", autocomplete: "off", "data-testid": "collection-name" }),
    model: h("input", { id: "coll-model", type: "text", name: "model", required: true, list: "coll-models", autocomplete: "off", "data-testid": "collection-model" }),
    chunk_tokens: h("input", { id: "coll-chunk-tokens", type: "number", min: "1", placeholder: "256", "data-testid": "collection-chunk-tokens" }),
    chunk_overlap: h("input", { id: "coll-chunk-overlap", type: "number", min: "0", placeholder: "32", "data-testid": "collection-chunk-overlap" }),
    max_input_tokens: h("input", { id: "coll-max-input", type: "number", min: "1", placeholder: "512", "data-testid": "collection-max-input" }),
    token_policy: select("coll-token-policy", ["", "truncate", "error"], "collection-token-policy"),
    distance: select("coll-distance", ["", "cosine", "dot", "l2"], "collection-distance"),
    backend: select("coll-backend", ["", "embedded", "pgvector"], "collection-backend"),
  };
  const modelList = h("datalist", { id: "coll-models" });
  function select(id, options, testid) {
    return h("select", { id, "data-testid": testid }, options.map((o) => h("option", { value: o, text: o === "" ? "default" : o })));
  }
  const field = (label, input, hint) => domField(label, input, hint).node;

  async function create(ev) {
    ev.preventDefault();
    clear(createErr);
    const body = { name: f.name.value.trim(), model: f.model.value.trim() };
    for (const k of ["chunk_tokens", "chunk_overlap", "max_input_tokens"]) {
      if (f[k].value !== "") body[k] = Number(f[k].value);
    }
    for (const k of ["token_policy", "distance", "backend"]) {
      if (f[k].value !== "") body[k] = f[k].value;
    }
    createBtn.disabled = true;
    try {
      const c = await api("POST", "/api/v1/collections", body);
      ctx.notify(`Created collection ${c.name} (dimension ${c.dimension})`);
      createForm.reset();
      await refresh();
      await open(c.name);
    } catch (e) {
      showErr(createErr, e);
    } finally {
      createBtn.disabled = false;
    }
  }
  const createBtn = h("button", { type: "submit", "data-testid": "collection-create" }, "Create collection");
  const createForm = h("form", { "aria-label": "New collection", on: { submit: create } },
    field("Name", f.name, "letters, digits, _ . -"),
    field("Embedding model", f.model, "a registered model, name:tag or sha256: digest"),
    h("fieldset", {},
      h("legend", { text: "Chunking" }),
      field("Chunk size (tokens)", f.chunk_tokens),
      field("Overlap (tokens)", f.chunk_overlap),
      field("Longest input (tokens)", f.max_input_tokens),
      field("Longer texts", f.token_policy)),
    h("fieldset", {},
      h("legend", { text: "Storage" }),
      field("Distance", f.distance),
      field("Backend", f.backend)),
    modelList, createBtn, createErr);

  const createBox = h("details", { class: "card", "data-testid": "collection-new" },
    h("summary", { "data-testid": "collection-new-toggle", text: "New collection" }), createForm);

  async function loadModels() {
    try {
      const models = await api("GET", "/api/v1/models");
      const items = Array.isArray(models) ? models : models.models || [];
      clear(modelList);
      for (const m of items) {
        if (m.model) modelList.append(h("option", { value: m.model }));
      }
    } catch {
      // The list only offers suggestions; the field still takes any name.
    }
  }

  // ---- one collection ----
  const factsBox = h("dl", { class: "facts", "data-testid": "collection-facts" });

  function showFacts(c) {
    clear(factsBox);
    const facts = [
      ["Model", c.model], ["Pinned weights", c.model_digest], ["Backend", c.backend],
      ["Dimension", `${c.dimension} (${c.distance})`], ["Documents", String(c.documents)], ["Chunks", String(c.chunks)],
      ["Chunking", `${c.chunk_tokens} tokens, overlap ${c.chunk_overlap}, inputs up to ${c.max_input_tokens} (${c.token_policy})`],
      ["HNSW", `M ${c.hnsw_m}, efConstruction ${c.hnsw_ef_construction}, ef ${c.hnsw_ef_search}`],
      ["Created", formatTime(c.created_at)],
    ];
    if (c.index_bytes != null) facts.push(["Index size", formatBytes(c.index_bytes)]);
    for (const [k, v] of facts) factsBox.append(h("dt", { text: k }), h("dd", { "data-testid": `collection-fact-${k.toLowerCase().replace(/\s+/g, "-")}`, text: v }));
  }

  // After a write: the list and this collection's counts again (the forms keep their results).
  async function reload(name, where) {
    await refresh();
    try {
      if (selected === name) showFacts(await api("GET", `/api/v1/collections/${enc(name)}`));
    } catch (e) {
      where.append(errorBox(e));
    }
  }

  async function open(name) {
    selected = name;
    clear(detail);
    detail.hidden = false;
    let c;
    try {
      c = await api("GET", `/api/v1/collections/${enc(name)}`);
    } catch (e) {
      detail.append(errorBox(e));
      return;
    }
    showFacts(c);
    const heading = h("h2", { id: "coll-detail-h", tabindex: "-1", text: `Collection ${c.name}` });
    detail.append(heading, factsBox, searchForm(c));
    if (canWrite) {
      detail.append(uploadForm(c), indexForm(c), removeDocsForm(c), deleteBox(c));
    } else {
      detail.append(h("p", { text: "Adding documents and deleting need a key with the models scope." }));
    }
    heading.focus();
  }

  // Files read in the browser, upserted as documents (id and source: the file's name).
  function uploadForm(c) {
    const input = h("input", { id: "coll-files", type: "file", multiple: true, "data-testid": "collection-files" });
    const status = h("div", { "aria-live": "polite", "data-testid": "collection-upload-status" });
    const out = h("div", {});
    const bar = progressBar("Adding documents");
    bar.node.setAttribute("data-testid", "collection-upload-progress");
    bar.node.hidden = true;
    const btn = h("button", { type: "submit", "data-testid": "collection-upload" }, "Add files");
    async function submit(ev) {
      ev.preventDefault();
      clear(out);
      clear(status);
      const files = [...input.files];
      if (files.length === 0) {
        out.append(h("p", { role: "alert", text: "choose one or more files first" }));
        return;
      }
      btn.disabled = true;
      bar.node.hidden = false;
      const total = { documents: 0, chunks: 0, unchanged: 0 };
      let done = 0;
      bar.set(0, `0 of ${files.length} files`);
      try {
        for (let i = 0; i < files.length; i += BATCH_FILES) {
          const batch = files.slice(i, i + BATCH_FILES);
          const documents = [];
          for (const file of batch) {
            const name = file.webkitRelativePath || file.name;
            documents.push({ id: name, text: await readText(file), source: name, format: formatFor(file.name) });
          }
          const r = await api("POST", `/api/v1/collections/${enc(c.name)}/documents`, { documents });
          total.documents += r.documents;
          total.chunks += r.chunks;
          total.unchanged += r.unchanged;
          done += batch.length;
          bar.set(done / files.length, `${done} of ${files.length} files`);
        }
        status.append(h("p", { "data-testid": "collection-upload-result", text: `Wrote ${total.documents} documents (${total.chunks} chunks); ${total.unchanged} unchanged.` }));
        input.value = "";
        await reload(c.name, out);
      } catch (e) {
        bar.set(done / files.length, `stopped after ${done} of ${files.length} files`);
        out.append(errorBox(e));
      } finally {
        btn.disabled = false;
      }
    }
    return h("form", { class: "card", "aria-labelledby": "coll-upload-h", on: { submit } },
      h("h3", { id: "coll-upload-h", text: "Add files from this computer" }),
      h("div", { class: "field" }, h("label", { for: "coll-files", text: "Files (text, Markdown, HTML, code)" }), input),
      btn, bar.node, status, out);
  }

  // Paths on the daemon's machine, indexed by an `index` job followed over SSE.
  function indexForm(c) {
    const paths = h("textarea", { id: "coll-paths", rows: "2", "data-testid": "collection-index-paths", placeholder: "/path/to/docs" });
    const out = h("div", {});
    const bar = progressBar("Indexing");
    bar.node.setAttribute("data-testid", "collection-index-progress");
    bar.node.hidden = true;
    const status = h("p", { "aria-live": "polite", "data-testid": "collection-index-status" });
    const btn = h("button", { type: "submit", "data-testid": "collection-index-submit" }, "Index");
    async function submit(ev) {
      ev.preventDefault();
      clear(out);
      const list = paths.value.split("\n").map((s) => s.trim()).filter(Boolean);
      btn.disabled = true;
      try {
        let job = await api("POST", `/api/v1/collections/${enc(c.name)}/index`, { paths: list });
        bar.node.hidden = false;
        show(job);
        if (!finished(job.state)) {
          for await (const ev of sse(`/api/v1/jobs/${enc(job.id)}/events`, { signal: controller.signal })) {
            if (ev.data && typeof ev.data === "object" && ev.data.id) {
              job = ev.data;
              show(job);
              if (finished(job.state)) break;
            }
          }
        }
        if (job.state === "failed") out.append(h("p", { role: "alert", class: "error", text: `index job failed: ${job.error || "no reason given"}` }));
        await reload(c.name, out);
      } catch (e) {
        if (e.name !== "AbortError") out.append(errorBox(e));
      } finally {
        btn.disabled = false;
      }
    }
    function show(job) {
      const p = job.progress || {};
      const frac = p.total ? p.done / p.total : finished(job.state) ? 1 : 0;
      bar.set(frac, `${p.done ?? 0}${p.total != null ? ` of ${p.total}` : ""} ${p.unit || ""}`);
      status.textContent = `Job ${job.id}: ${job.state}${p.message ? ` — ${p.message}` : ""}`;
    }
    return h("form", { class: "card", "aria-labelledby": "coll-index-h", on: { submit } },
      h("h3", { id: "coll-index-h", text: "Index paths on the daemon's machine" }),
      h("div", { class: "field" },
        h("label", { for: "coll-paths", text: "Files or directories, one a line (inside [vector] index_roots)" }), paths),
      btn, bar.node, status, out);
  }

  function searchForm(c) {
    const q = h("input", { id: "coll-query", type: "search", required: true, "data-testid": "collection-search" });
    const k = h("input", { id: "coll-topk", type: "number", min: "1", max: "1000", value: "5", "data-testid": "collection-topk" });
    const results = h("div", { "aria-live": "polite", "data-testid": "collection-results" });
    const btn = h("button", { type: "submit", "data-testid": "collection-search-submit" }, "Search");
    async function submit(ev) {
      ev.preventDefault();
      clear(results);
      btn.disabled = true;
      try {
        const r = await api("POST", `/api/v1/collections/${enc(c.name)}/query`, { query: q.value, top_k: Number(k.value) || 5 });
        if (r.hits.length === 0) {
          results.append(h("p", { text: "No hits." }));
          return;
        }
        const list = h("ol", { class: "hits" });
        for (const hit of r.hits) {
          list.append(h("li", { "data-testid": "collection-hit" },
            h("p", {},
              h("strong", { "data-testid": "collection-hit-score", text: hit.score.toFixed(4) }),
              ` · ${hit.document_id} · chunk ${hit.chunk}`,
              hit.source && hit.source !== hit.document_id ? ` · from ${hit.source}` : null),
            h("p", { class: "hit-text", "data-testid": "collection-hit-text", text: hit.text })));
        }
        results.append(h("p", { text: `${r.hits.length} hits, closest first (score: higher is closer).` }), list);
      } catch (e) {
        results.append(errorBox(e));
      } finally {
        btn.disabled = false;
      }
    }
    const topk = field("Top k", k);
    topk.classList.add("narrow");
    return h("form", { class: "card", role: "search", "aria-labelledby": "coll-search-h", on: { submit } },
      h("h3", { id: "coll-search-h", text: "Search" }),
      h("div", { class: "row" }, field("Query", q), topk, btn),
      results);
  }

  // Documents by id (a file added from the browser has its name as id; an indexed one its path).
  function removeDocsForm(c) {
    const ids = h("textarea", { id: "coll-remove-ids", rows: "2", required: true, "data-testid": "collection-remove-ids" });
    const out = h("div", { "aria-live": "polite", "data-testid": "collection-remove-output" });
    async function submit(ev) {
      ev.preventDefault();
      clear(out);
      const list = ids.value.split("\n").map((s) => s.trim()).filter(Boolean);
      try {
        const r = await api("POST", `/api/v1/collections/${enc(c.name)}/documents/delete`, { ids: list });
        out.append(h("p", { "data-testid": "collection-remove-result", text: `Removed ${r.deleted} of ${list.length} documents.` }));
        ids.value = "";
        await reload(c.name, out);
      } catch (e) {
        out.append(errorBox(e));
      }
    }
    return h("form", { class: "card", "aria-labelledby": "coll-remove-h", on: { submit } },
      h("h3", { id: "coll-remove-h", text: "Remove documents" }),
      field("Document ids, one a line", ids, "as shown with search hits"),
      h("button", { type: "submit", "data-testid": "collection-remove-submit" }, "Remove"),
      out);
  }

  function deleteBox(c) {
    const out = h("div", {});
    const confirmRow = h("div", { hidden: true, role: "group", "aria-label": "Confirm deletion" },
      h("p", { text: `Delete collection ${c.name} with its ${c.documents} documents and index? This cannot be undone.` }),
      h("button", { type: "button", class: "danger", "data-testid": "collection-delete-confirm", on: { click: doDelete } }, "Delete for good"),
      h("button", { type: "button", on: { click: () => { confirmRow.hidden = true; ask.focus(); } } }, "Keep it"));
    const ask = h("button", { type: "button", class: "danger", "data-testid": "collection-delete", on: { click: () => { confirmRow.hidden = false; confirmRow.querySelector("button").focus(); } } }, "Delete collection");
    async function doDelete() {
      clear(out);
      try {
        await api("DELETE", `/api/v1/collections/${enc(c.name)}`);
        ctx.notify(`Deleted collection ${c.name}`);
        selected = null;
        clear(detail);
        detail.hidden = true;
        await refresh();
      } catch (e) {
        out.append(errorBox(e));
      }
    }
    return h("div", { class: "danger-zone" }, h("h3", { text: "Delete" }), ask, confirmRow, out);
  }

  clear(root);
  root.append(
    h("h1", { text: "Collections" }),
    h("p", { text: "Documents chunked and embedded into vector indexes, searchable by meaning." }),
    errors,
    h("section", { class: "panel", "aria-labelledby": "coll-list-h" },
      h("h2", { id: "coll-list-h", text: "All collections" }),
      h("button", { type: "button", "data-testid": "collections-refresh", on: { click: refresh } }, "Refresh"),
      listBox),
    detail,
    canWrite ? createBox : h("p", { text: "Creating collections needs a key with the models scope." }));
  await Promise.all([refresh(), canWrite ? loadModels() : null]);
  return () => controller.abort();
}

function finished(state) {
  return state === "succeeded" || state === "failed" || state === "cancelled";
}
