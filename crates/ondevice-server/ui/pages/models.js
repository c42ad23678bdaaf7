// Models page: the registry's models (`GET /api/v1/models`), a pull by catalog name or URL with
// a live progress bar over the pull job's Server-Sent Events (`/api/v1/jobs/{id}/events`), an
// import of a path on the daemon's machine, remove, pin/unpin, and one model's details with its
// provenance. Writes need the `models` scope (the forms say so when the session lacks it).

import { seg } from "../lib/api.js";
import { clear, el, errorBox, field, formatBytes, formatTime, jsonView, progressBar, replace, table } from "../lib/dom.js";

export const title = "Models";
export const scope = "read";

/** Bytes per second → `1.2 MiB/s`. */
function rate(bps) {
  return bps ? `${formatBytes(bps)}/s` : "";
}

/** A JobView's fraction done, or `null` while the total is unknown. */
function fractionOf(job) {
  const { done, total } = job.progress ?? {};
  if (job.state === "succeeded") return 1;
  return total ? done / total : null;
}

function progressText(job) {
  const p = job.progress ?? {};
  const pct = p.total ? `${Math.floor((p.done / p.total) * 100)} %` : "";
  if (job.state === "succeeded") return `100 % · pulled ${job.detail?.model ?? ""} (${formatBytes(p.total ?? p.done)})`;
  if (job.state === "failed") return `failed: ${job.error ?? "unknown error"}`;
  if (job.state === "cancelled") return "cancelled";
  const bytes = p.unit === "bytes" ? `${formatBytes(p.done)}${p.total ? ` of ${formatBytes(p.total)}` : ""}` : `${p.done} ${p.unit ?? ""}`;
  return [pct, bytes, rate(job.detail?.bytes_per_second), job.state === "queued" ? "queued" : p.message].filter(Boolean).join(" · ");
}

function modelDetails(m) {
  const facts = [
    ["Name", m.model],
    ["Digest", el("code", { text: m.digest })],
    ["Format", m.format],
    ["Size", formatBytes(m.size)],
    ["Architecture", m.architecture ?? "—"],
    ["Parameters", m.parameter_count ? m.parameter_count.toLocaleString() : "—"],
    ["Quantization", m.quantization ?? "—"],
    ["Context length", m.context_length ? String(m.context_length) : "—"],
    ["License", m.license ?? "—"],
    ["Source", m.source],
    ["Added", formatTime(m.created_at)],
    ["Last used", formatTime(m.last_used_at)],
    ["Pinned", m.pinned ? "yes" : "no"],
  ];
  const prov = m.provenance;
  return el(
    "div",
    { "data-testid": "model-details" },
    el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)])),
    el("h3", { text: "Provenance" }),
    prov
      ? el(
          "div",
          { "data-testid": "model-provenance" },
          el(
            "dl",
            { class: "facts" },
            el("dt", { text: "Made from" }),
            el("dd", { text: prov.parent ? `${prov.parent}${prov.parent_digest ? ` (${prov.parent_digest})` : ""}` : "—" }),
            el("dt", { text: "Recorded" }),
            el("dd", { text: formatTime(prov.recorded_at) }),
            el("dt", { text: "Receipt" }),
            el("dd", {}, jsonView(prov.receipt)),
          ),
        )
      : el("p", { class: "muted", "data-testid": "model-provenance", text: `No provenance recorded; the model came from ${m.source}.` }),
  );
}

export async function render(root, ctx) {
  const canWrite = ctx.hasScope("models");
  const controllers = new Set();
  const listErrors = el("div");
  const listBox = el("div", { "data-testid": "models-list" });
  const detailsBox = el("section", { class: "panel", "aria-label": "Model details", hidden: true, tabindex: "-1" });

  // ---- pull ----
  const pullName = el("input", { type: "text", name: "model", required: true, "data-testid": "pull-name", placeholder: "smollm2:135m or https://…/model.gguf" });
  const pullAs = el("input", { type: "text", name: "name", "data-testid": "pull-as", placeholder: "optional name:tag" });
  const pullSubmit = el("button", { type: "submit", "data-testid": "pull-submit", text: "Pull" });
  const pullStatus = el("div", { "data-testid": "pull-status" });
  const pullForm = el(
    "form",
    { class: "inline", "aria-label": "Pull a model" },
    field("Model name or URL", pullName).node,
    field("Register as", pullAs).node,
    pullSubmit,
  );
  const pullHint = el("p", { class: "hint", text: "A catalog name (see `ondevice models list --available`) or an http(s) URL of a GGUF file; registered under the catalog name or the file name unless you name it." });

  // ---- import ----
  const importPath = el("input", { type: "text", name: "path", required: true, "data-testid": "import-path", placeholder: "/path/on/the/daemon/machine/model.gguf", pattern: "/.*" });
  const importAs = el("input", { type: "text", name: "name", "data-testid": "import-as", placeholder: "optional name:tag" });
  const importLink = el("input", { type: "checkbox", name: "link", "data-testid": "import-link" });
  const importSubmit = el("button", { type: "submit", "data-testid": "import-submit", text: "Import" });
  const importStatus = el("div", { "data-testid": "import-status" });
  const importLinkField = field("Hard-link instead of copying", importLink);
  importLinkField.node.classList.add("check");
  const importForm = el(
    "form",
    { class: "inline", "aria-label": "Import a model" },
    field("Absolute path (GGUF, safetensors directory or bundle)", importPath).node,
    field("Register as", importAs).node,
    importLinkField.node,
    importSubmit,
  );

  root.append(
    el("h1", { text: "Models" }),
    listErrors,
    listBox,
    detailsBox,
    el("h2", { text: "Pull" }),
    ...(canWrite ? [pullForm, pullHint, pullStatus] : [el("p", { class: "needs-scope", text: 'Pulling needs the "models" scope.' })]),
    el("h2", { text: "Import" }),
    ...(canWrite ? [importForm, importStatus] : [el("p", { class: "needs-scope", text: 'Importing needs the "models" scope.' })]),
  );

  let models = [];

  function renderList() {
    if (!models.length) {
      replace(listBox, el("p", { class: "muted", "data-testid": "models-empty", text: "No models yet: pull one or import a file below." }));
      return;
    }
    replace(
      listBox,
      table(
        null,
        ["Model", "Size", "Format", "Quantization", "Pinned", "Actions"],
        models.map((m) => {
          const actions = el("div", { class: "actions" });
          const show = el("button", {
            type: "button",
            class: "ghost small",
            "data-testid": `model-show-${m.model}`,
            "aria-label": `Show ${m.model}`,
            text: "Show",
            on: { click: () => showModel(m.model) },
          });
          actions.append(show);
          if (canWrite) {
            actions.append(
              el("button", {
                type: "button",
                class: "ghost small",
                "data-testid": `model-pin-${m.model}`,
                "aria-label": `${m.pinned ? "Unpin" : "Pin"} ${m.model}`,
                "aria-pressed": String(m.pinned),
                text: m.pinned ? "Unpin" : "Pin",
                on: { click: () => pin(m) },
              }),
              removeButton(m, actions),
            );
          }
          return el(
            "tr",
            { "data-testid": `model-row-${m.model}` },
            el("td", { class: "mono", text: m.model }),
            el("td", { text: formatBytes(m.size) }),
            el("td", { text: m.format }),
            el("td", { text: m.quantization ?? "—" }),
            el("td", { text: m.pinned ? "pinned" : "no" }),
            el("td", {}, actions),
          );
        }),
        { "data-testid": "models-table" },
      ),
    );
  }

  /** Remove asks once more in place (no modal dialog). */
  function removeButton(m, actions) {
    const button = el("button", { type: "button", class: "danger small", "data-testid": `model-remove-${m.model}`, "aria-label": `Remove ${m.model}`, text: "Remove" });
    button.addEventListener("click", () => {
      const confirm = el("button", {
        type: "button",
        class: "danger small",
        "data-testid": `model-remove-confirm-${m.model}`,
        text: `Remove ${m.model}?`,
        on: {
          click: async () => {
            confirm.disabled = true;
            try {
              await ctx.api("DELETE", `/api/v1/models/${seg(m.model)}`);
              ctx.notify(`Removed ${m.model} (run gc to free its blob once nothing uses it).`);
              if (detailsBox.dataset.model === m.model) detailsBox.hidden = true;
              await load();
            } catch (err) {
              listErrors.append(errorBox(err));
              confirm.disabled = false;
            }
          },
        },
      });
      const keep = el("button", { type: "button", class: "ghost small", text: "Keep", on: { click: () => renderList() } });
      button.replaceWith(confirm, keep);
      confirm.focus();
    });
    return button;
  }

  async function pin(m) {
    try {
      const list = await ctx.api("PUT", `/api/v1/models/${seg(m.model)}/pin`, { pinned: !m.pinned });
      models = Array.isArray(list) ? list : await ctx.api("GET", "/api/v1/models");
      renderList();
      ctx.notify(`${m.pinned ? "Unpinned" : "Pinned"} ${m.model}.`);
      listBox.querySelector(`[data-testid="model-pin-${CSS.escape(m.model)}"]`)?.focus();
    } catch (err) {
      listErrors.append(errorBox(err));
    }
  }

  async function showModel(name) {
    detailsBox.hidden = false;
    detailsBox.dataset.model = name;
    replace(detailsBox, el("p", { class: "muted", text: `Loading ${name}…` }));
    try {
      const m = await ctx.api("GET", `/api/v1/models/${seg(name)}`);
      replace(
        detailsBox,
        el(
          "div",
          { class: "page-head" },
          el("h2", { text: m.model }),
          el("button", { type: "button", class: "ghost small", text: "Close", "aria-label": "Close the details", on: { click: () => (detailsBox.hidden = true) } }),
        ),
        modelDetails(m),
      );
      detailsBox.focus();
    } catch (err) {
      replace(detailsBox, errorBox(err));
    }
  }

  async function load() {
    try {
      models = await ctx.api("GET", "/api/v1/models");
      clear(listErrors);
      renderList();
    } catch (err) {
      replace(listErrors, errorBox(err));
    }
  }

  /** Follows a pull job's events until it ends, updating the bar. */
  async function follow(job, bar, cancel) {
    const controller = new AbortController();
    controllers.add(controller);
    let last = job;
    try {
      for await (const { event, data } of ctx.sse(`/api/v1/jobs/${seg(job.id)}/events`, { signal: controller.signal })) {
        if (event !== "job" || typeof data !== "object") continue;
        last = data;
        bar.node.dataset.state = data.state;
        bar.set(fractionOf(data), progressText(data));
        if (["succeeded", "failed", "cancelled"].includes(data.state)) break;
      }
    } finally {
      controllers.delete(controller);
    }
    cancel.remove();
    if (last.state === "succeeded") {
      ctx.notify(`Pulled ${last.detail?.model ?? "the model"}.`);
      await load();
    } else if (last.state === "failed") {
      pullStatus.append(errorBox({ status: null, code: "pull_failed", message: last.error ?? "the pull failed" }));
    } else if (!["cancelled"].includes(last.state)) {
      pullStatus.append(errorBox({ status: null, code: "stream_ended", message: "the progress stream ended before the pull finished; see the Jobs page" }));
    }
  }

  pullForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(pullStatus);
    pullSubmit.disabled = true;
    const body = { model: pullName.value.trim() };
    if (pullAs.value.trim()) body.name = pullAs.value.trim();
    try {
      const job = await ctx.api("POST", "/api/v1/models/pull", body);
      const bar = progressBar(`Pulling ${job.detail?.model ?? body.model}`);
      bar.node.dataset.testid = "pull-progress";
      bar.node.dataset.job = job.id;
      bar.node.dataset.state = job.state;
      bar.set(fractionOf(job), progressText(job));
      const cancel = el("button", {
        type: "button",
        class: "danger small",
        "data-testid": "pull-cancel",
        text: "Cancel pull",
        on: {
          click: async () => {
            try {
              await ctx.api("DELETE", `/api/v1/jobs/${seg(job.id)}`);
            } catch (err) {
              pullStatus.append(errorBox(err));
            }
          },
        },
      });
      pullStatus.append(bar.node, cancel);
      pullSubmit.disabled = false;
      await follow(job, bar, cancel);
    } catch (err) {
      if (err?.name !== "AbortError") pullStatus.append(errorBox(err));
    } finally {
      pullSubmit.disabled = false;
    }
  });

  importForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(importStatus);
    importSubmit.disabled = true;
    const body = { path: importPath.value.trim() };
    if (importAs.value.trim()) body.name = importAs.value.trim();
    if (importLink.checked) body.link = true;
    const bar = progressBar(`Importing ${body.path}`);
    bar.set(null, "validating and hashing…");
    importStatus.append(bar.node);
    try {
      const m = await ctx.api("POST", "/api/v1/models/import", body);
      bar.set(1, `imported as ${m.model}`);
      ctx.notify(`Imported ${m.model}.`);
      importPath.value = "";
      await load();
    } catch (err) {
      bar.node.remove();
      importStatus.append(errorBox(err));
    } finally {
      importSubmit.disabled = false;
    }
  });

  await load();
  return () => {
    for (const c of controllers) c.abort();
  };
}
