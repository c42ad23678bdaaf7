// Jobs page: every background job (pull, quantize, index, re-embed, diagnostics bundle) with its
// state and progress, kept live by polling `GET /api/v1/jobs` once a second while the page is
// open, filters by kind and state, one job's details, and cancel (`DELETE /api/v1/jobs/{id}`,
// scope `models`) for queued and running jobs.

import { seg } from "../lib/api.js";
import { clear, el, errorBox, field, formatBytes, formatTime, jsonView, replace, table } from "../lib/dom.js";

export const title = "Jobs";
export const scope = "read";

const POLL_MS = 1000;
const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];
const KINDS = ["pull", "quantize", "index", "reembed", "diagnostics"];

function progressCell(job) {
  const p = job.progress ?? {};
  const fraction = job.state === "succeeded" ? 1 : p.total ? p.done / p.total : null;
  const bar = el("progress", { max: "1", "aria-label": `Progress of job ${job.id}` });
  if (fraction !== null) bar.value = Math.min(1, fraction);
  const amount = p.unit === "bytes" ? `${formatBytes(p.done)}${p.total ? ` / ${formatBytes(p.total)}` : ""}` : `${p.done}${p.total ? ` / ${p.total}` : ""} ${p.unit ?? ""}`;
  return el(
    "div",
    { class: "progress" },
    bar,
    el("span", { class: "progress-text", text: fraction !== null ? `${Math.floor(fraction * 100)} %` : "" }),
    el("span", { class: "muted", text: amount }),
    p.message ? el("div", { class: "hint", text: p.message }) : null,
  );
}

/** What a job is about, in a few words. */
function about(job) {
  const d = job.detail ?? {};
  if (job.kind === "pull") return `${d.model ?? "?"} from ${d.source ?? "?"}`;
  for (const key of ["model", "collection", "name", "output", "source"]) if (typeof d[key] === "string") return `${key} ${d[key]}`;
  return "";
}

export async function render(root, ctx) {
  const canCancel = ctx.hasScope("models");
  const errors = el("div");
  const kind = el("select", { name: "kind", "data-testid": "jobs-kind" }, el("option", { value: "", text: "any" }), KINDS.map((k) => el("option", { value: k, text: k })));
  const state = el("select", { name: "state", "data-testid": "jobs-state" }, el("option", { value: "", text: "any" }), STATES.map((s) => el("option", { value: s, text: s })));
  const listBox = el("div", { "data-testid": "jobs-list" });
  const detailsBox = el("section", { class: "panel", "aria-label": "Job details", hidden: true, tabindex: "-1" });
  const updated = el("span", { class: "muted" });
  const kindField = field("Kind", kind);
  const stateField = field("State", state);
  kindField.node.classList.add("narrow");
  stateField.node.classList.add("narrow");
  root.append(el("h1", { text: "Jobs" }), el("form", { class: "inline", "aria-label": "Filter jobs" }, kindField.node, stateField.node, updated), errors, listBox, detailsBox);

  let timer = null;
  let stopped = false;
  let lastJson = "";
  let shownId = null;

  function renderList(jobs) {
    const focused = document.activeElement?.dataset?.testid;
    if (!jobs.length) {
      replace(listBox, el("p", { class: "muted", "data-testid": "jobs-empty", text: "No jobs match." }));
      return;
    }
    replace(
      listBox,
      table(
        null,
        ["Job", "Kind", "State", "Progress", "About", "Created", "Actions"],
        [...jobs].reverse().map((j) => {
          const running = j.state === "queued" || j.state === "running";
          const actions = el(
            "div",
            { class: "actions" },
            el("button", { type: "button", class: "ghost small", "data-testid": `job-show-${j.id}`, "aria-label": `Details of job ${j.id}`, text: "Details", on: { click: () => show(j.id) } }),
            running && canCancel
              ? el("button", { type: "button", class: "danger small", "data-testid": `job-cancel-${j.id}`, "aria-label": `Cancel job ${j.id}`, text: "Cancel", on: { click: (e) => cancel(j.id, e.currentTarget) } })
              : null,
          );
          return el(
            "tr",
            { "data-testid": `job-row-${j.id}`, "data-state": j.state, "data-kind": j.kind },
            el("td", { class: "mono", text: j.id }),
            el("td", { text: j.kind }),
            el("td", {}, el("span", { class: `state-${j.state}`, "data-testid": `job-state-${j.id}`, text: j.state }), j.error ? el("div", { class: "hint", text: j.error }) : null),
            el("td", {}, progressCell(j)),
            el("td", { text: about(j) }),
            el("td", { text: formatTime(j.created_at) }),
            el("td", {}, actions),
          );
        }),
        { "data-testid": "jobs-table" },
      ),
    );
    if (focused) listBox.querySelector(`[data-testid="${CSS.escape(focused)}"]`)?.focus();
  }

  async function load() {
    const q = new URLSearchParams();
    if (kind.value) q.set("kind", kind.value);
    if (state.value) q.set("state", state.value);
    try {
      const jobs = await ctx.api("GET", `/api/v1/jobs${q.size ? `?${q}` : ""}`);
      if (stopped) return;
      clear(errors);
      const json = JSON.stringify(jobs);
      if (json !== lastJson) {
        lastJson = json;
        renderList(jobs);
        if (shownId) {
          const j = jobs.find((x) => x.id === shownId);
          if (j) showJob(j);
        }
      }
      updated.textContent = `live · updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      if (!stopped) replace(errors, errorBox(err));
    }
  }

  async function cancel(id, button) {
    button.disabled = true;
    try {
      const j = await ctx.api("DELETE", `/api/v1/jobs/${seg(id)}`);
      ctx.notify(`Job ${id} is ${j?.state ?? "cancelled"}.`);
      lastJson = "";
      await load();
    } catch (err) {
      errors.append(errorBox(err));
      button.disabled = false;
    }
  }

  function showJob(j) {
    replace(
      detailsBox,
      el("div", { class: "page-head" }, el("h2", { text: `Job ${j.id}` }), el("button", { type: "button", class: "ghost small", text: "Close", on: { click: () => ((detailsBox.hidden = true), (shownId = null)) } })),
      el(
        "dl",
        { class: "facts", "data-testid": "job-details" },
        [
          ["Kind", j.kind],
          ["State", j.state],
          ["Error", j.error ?? "—"],
          ["Created", formatTime(j.created_at)],
          ["Updated", formatTime(j.updated_at)],
          ["Finished", formatTime(j.finished_at)],
        ].map(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]),
        el("dt", { text: "Progress" }),
        el("dd", {}, jsonView(j.progress)),
        el("dt", { text: "Detail" }),
        el("dd", {}, jsonView(j.detail)),
      ),
    );
  }

  async function show(id) {
    shownId = id;
    detailsBox.hidden = false;
    try {
      showJob(await ctx.api("GET", `/api/v1/jobs/${seg(id)}`));
      detailsBox.focus();
    } catch (err) {
      replace(detailsBox, errorBox(err));
    }
  }

  for (const s of [kind, state]) {
    s.addEventListener("change", () => {
      lastJson = "";
      load();
    });
  }

  function schedule() {
    timer = setTimeout(async () => {
      await load();
      if (!stopped) schedule();
    }, POLL_MS);
  }

  await load();
  schedule();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
