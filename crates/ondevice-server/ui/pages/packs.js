// Prompt packs page: every pack with its versions and labels; one pack's versions, files and
// label history; a diff between two versions; rollback (which version a bare name serves); a
// render preview with variables and its token count; publishing a new version from `pack.toml`.
// Everything goes through `/api/v1/prompts` (read to list/show/render; models to publish and
// roll back).

import { errorBox, clear, field, formatTime, table } from "../lib/dom.js";
import { hasScope, seg } from "../lib/api.js";

export const title = "Prompt packs";
export const scope = "read";

export async function render(root, ctx) {
  const { api, el } = ctx;
  const canWrite = hasScope(ctx.session, "models");
  const errors = el("div", { "data-testid": "packs-errors" });
  const listBox = el("div", { "data-testid": "packs-list" });
  const detail = el("section", { class: "panel", "aria-labelledby": "pack-detail-h", "data-testid": "pack-detail", hidden: true });

  async function refresh() {
    clear(errors);
    let packs;
    try {
      packs = await api("GET", "/api/v1/prompts");
    } catch (e) {
      errors.append(errorBox(e));
      return;
    }
    clear(listBox);
    if (packs.length === 0) {
      listBox.append(el("p", { "data-testid": "packs-empty", text: "No prompt packs yet. Publish one below or with `ondevice prompts publish DIR`." }));
      return;
    }
    const rows = packs.map((p) =>
      el("tr", { "data-testid": `pack-row-${p.name}` },
        el("th", { scope: "row", text: p.name }),
        el("td", { text: p.description }),
        el("td", { "data-testid": `pack-current-${p.name}`, text: p.current ?? "—" }),
        el("td", { text: p.versions.join(", ") }),
        el("td", { text: Object.entries(p.labels).map(([l, v]) => `${l} → ${v}`).join(", ") || "—" }),
        el("td", {}, el("button", { type: "button", "data-testid": `pack-open-${p.name}`, "aria-label": `Open pack ${p.name}`, on: { click: () => open(p.name) } }, "Open"))));
    listBox.append(table("Prompt packs", ["Name", "Description", "Served", "Versions", "Labels", ""], rows));
  }

  // ---- one pack ----
  async function open(name, version) {
    clear(detail);
    detail.hidden = false;
    let d;
    try {
      d = await api("GET", `/api/v1/prompts/${seg(version ? `${name}@${version}` : name)}`);
    } catch (e) {
      detail.append(errorBox(e));
      return;
    }
    const versions = d.versions.map((v) => v.version);
    const heading = el("h2", { id: "pack-detail-h", tabindex: "-1", text: `Pack ${name}` });
    const versionRows = d.versions.map((v) =>
      el("tr", { "data-testid": `pack-version-${v.version}` },
        el("th", { scope: "row", text: v.version }),
        el("td", { text: v.labels.join(", ") || "—" }),
        el("td", { text: v.description }),
        el("td", { text: formatTime(v.published_at) }),
        el("td", {}, el("code", { class: "digest", text: v.digest.slice(0, 19) })),
        el("td", {}, el("div", { class: "actions" },
          el("button", { type: "button", class: "small", "aria-label": `Show version ${v.version}`, "data-testid": `pack-show-${v.version}`, on: { click: () => open(name, v.version) } }, "Show"),
          canWrite ? deleteControl(name, v.version) : null))));
    detail.append(
      heading,
      table(`Versions of ${name}`, ["Version", "Labels", "Description", "Published", "Digest", ""], versionRows),
      filesView(d),
      renderForm(name, d, versions),
      diffForm(name, versions, d.version.version),
      canWrite ? rollbackForm(name, versions, d) : el("p", { text: "Rolling back needs a key with the models scope." }),
      historyView(d));
    heading.focus();
  }

  // Deleting a version asks once more in place; its labels go with it.
  function deleteControl(name, version) {
    const out = el("div", {});
    const confirmBox = el("div", { hidden: true, role: "group", "aria-label": `Confirm deleting ${name}@${version}` },
      el("button", { type: "button", class: "danger small", "data-testid": `pack-delete-confirm-${version}`, on: { click: remove } }, `Delete ${version} for good`),
      " ",
      el("button", { type: "button", class: "ghost small", on: { click: () => { confirmBox.hidden = true; ask.focus(); } } }, "Keep it"));
    const ask = el("button", { type: "button", class: "danger small", "aria-label": `Delete version ${version}`, "data-testid": `pack-delete-${version}`,
      on: { click: () => { confirmBox.hidden = false; confirmBox.querySelector("button").focus(); } } }, "Delete");
    async function remove() {
      clear(out);
      try {
        await api("DELETE", `/api/v1/prompts/${seg(name)}/versions/${seg(version)}`);
        ctx.notify(`Deleted ${name}@${version}`);
        await refresh();
        if (listBox.querySelector(`[data-testid="pack-row-${name}"]`)) await open(name);
        else {
          clear(detail);
          detail.hidden = true;
        }
      } catch (e) {
        out.append(errorBox(e));
      }
    }
    return [ask, confirmBox, out];
  }

  function filesView(d) {
    const v = d.version;
    const files = Object.entries(d.files).sort(([a], [b]) => (a === "pack.toml" ? -1 : b === "pack.toml" ? 1 : a.localeCompare(b)));
    return el("details", { "data-testid": "pack-files" },
      el("summary", { text: `Files of ${v.name}@${v.version} (${files.length})` }),
      files.map(([path, text]) => [el("h3", {}, el("code", { text: path })), el("pre", { class: "code", tabindex: "0", text })]));
  }

  function historyView(d) {
    if (!d.history.length) return null;
    const rows = d.history.map((m) => [m.label, m.previous ?? "—", m.version ?? "removed", formatTime(m.at)]);
    return el("details", { "data-testid": "pack-history" },
      el("summary", { text: "Label history" }),
      table("Label moves, oldest first", ["Label", "From", "To", "When"], rows));
  }

  function versionSelect(id, versions, selected, testid) {
    return el("select", { id, "data-testid": testid },
      versions.map((v) => el("option", { value: v, text: v, selected: v === selected })));
  }

  // Variables come from the manifest (`[variables.NAME]` with `required`/`default`).
  function renderForm(name, d, versions) {
    const vars = (d.manifest && d.manifest.variables) || {};
    const version = versionSelect("pack-render-version", versions, d.version.version, "pack-render-version");
    const inputs = {};
    const varFields = Object.entries(vars).map(([k, spec]) => {
      const input = el("textarea", { id: `pack-var-${k}`, rows: "2", "data-testid": `pack-var-${k}`, required: spec && spec.required === true, placeholder: spec && spec.default != null ? String(spec.default) : "" });
      inputs[k] = input;
      const hint = spec && spec.required ? "required" : spec && spec.default != null ? `default: ${spec.default}` : "optional";
      return field(k, input, hint).node;
    });
    const model = el("input", { id: "pack-render-model", type: "text", list: "pack-models", autocomplete: "off", "data-testid": "pack-render-model" });
    const models = el("datalist", { id: "pack-models" });
    const budget = el("input", { id: "pack-render-budget", type: "number", min: "0", "data-testid": "pack-render-budget" });
    const out = el("div", { "aria-live": "polite", "data-testid": "pack-render-output" });
    const btn = el("button", { type: "submit", "data-testid": "pack-render-submit" }, "Render");
    api("GET", "/api/v1/models").then((list) => {
      for (const m of list || []) if (m.model) models.append(el("option", { value: m.model }));
    }).catch(() => {});
    async function submit(ev) {
      ev.preventDefault();
      clear(out);
      const body = { variables: {} };
      for (const [k, input] of Object.entries(inputs)) if (input.value !== "") body.variables[k] = input.value;
      if (model.value.trim()) body.model = model.value.trim();
      if (budget.value !== "") body.budget = Number(budget.value);
      btn.disabled = true;
      try {
        const r = await api("POST", `/api/v1/prompts/${seg(`${name}@${version.value}`)}/render`, body);
        const counted = r.tokenizer === "estimate" ? "estimated at four characters a token" : `counted with ${r.tokenizer.replace(/^model:/, "")}`;
        out.append(
          el("p", {},
            el("strong", { "data-testid": "pack-render-tokens", text: `${r.tokens} tokens` }),
            ` (${counted}) · ${r.name}@${r.version}`),
          r.compression
            ? el("p", { "data-testid": "pack-render-compression", text: `Compressed to fit ${r.compression.budget}: ${r.compression.tokens_before} → ${r.compression.tokens_after} tokens (${r.compression.sections.map((s) => `${s.variable}: ${s.policy} ${s.tokens_before} → ${s.tokens_after}`).join("; ") || "no variable changed"})` })
            : null,
          el("ol", { class: "messages" },
            r.messages.map((m) => el("li", { "data-testid": "pack-render-message" },
              el("p", {}, el("strong", { text: m.role })),
              el("pre", { class: "message", text: m.content })))));
      } catch (e) {
        out.append(errorBox(e));
      } finally {
        btn.disabled = false;
      }
    }
    return el("form", { class: "card", "aria-labelledby": "pack-render-h", on: { submit } },
      el("h3", { id: "pack-render-h", text: "Render preview" }),
      field("Version", version).node,
      varFields.length ? el("fieldset", {}, el("legend", { text: "Variables" }), varFields) : el("p", { text: "This version takes no variables." }),
      field("Count tokens with model", model, "optional; without it, an estimate").node,
      models,
      field("Token budget", budget, "optional; compresses variables to fit").node,
      btn, out);
  }

  function diffForm(name, versions, current) {
    const from = versionSelect("pack-diff-from", versions, versions.length > 1 ? versions[versions.length - 2] : current, "pack-diff-from");
    const to = versionSelect("pack-diff-to", versions, versions[versions.length - 1], "pack-diff-to");
    const out = el("div", { "data-testid": "pack-diff-output" });
    async function submit(ev) {
      ev.preventDefault();
      clear(out);
      try {
        const r = await api("GET", `/api/v1/prompts/${seg(`${name}@${from.value}`)}/diff?to=${seg(`${name}@${to.value}`)}`);
        if (!r.diff) {
          out.append(el("p", { text: `${r.from} and ${r.to} are identical.` }));
          return;
        }
        // Added lines as <ins>, removed as <del>: marked for every reader, not by colour alone.
        const pre = el("pre", { class: "diff", tabindex: "0", "aria-label": `Diff from ${r.from} to ${r.to}` });
        for (const line of r.diff.split("\n")) {
          const added = line.startsWith("+") && !line.startsWith("+++");
          const removed = line.startsWith("-") && !line.startsWith("---");
          pre.append(added ? el("ins", { text: line }) : removed ? el("del", { text: line }) : el("span", { text: line }), "\n");
        }
        out.append(el("p", { text: `From ${r.from} to ${r.to}:` }), pre);
      } catch (e) {
        out.append(errorBox(e));
      }
    }
    return el("form", { class: "card", "aria-labelledby": "pack-diff-h", on: { submit } },
      el("h3", { id: "pack-diff-h", text: "Diff" }),
      el("div", { class: "row" }, field("From", from).node, field("To", to).node),
      el("button", { type: "submit", "data-testid": "pack-diff-submit" }, "Show diff"),
      out);
  }

  function rollbackForm(name, versions, d) {
    const served = d.versions.find((v) => v.labels.includes("production"));
    const target = versionSelect("pack-rollback-version", versions, versions.length > 1 ? versions[versions.length - 2] : versions[0], "pack-rollback-version");
    const out = el("div", { "aria-live": "polite", "data-testid": "pack-rollback-output" });
    async function submit(ev) {
      ev.preventDefault();
      clear(out);
      try {
        const r = await api("POST", `/api/v1/prompts/${seg(name)}/rollback`, { version: target.value });
        ctx.notify(`${name} now serves ${r.version.version}${r.previous ? ` (was ${r.previous})` : ""}`);
        await refresh();
        await open(name);
      } catch (e) {
        out.append(errorBox(e));
      }
    }
    return el("form", { class: "card", "aria-labelledby": "pack-rollback-h", on: { submit } },
      el("h3", { id: "pack-rollback-h", text: "Rollback" }),
      el("p", { text: `A request naming only "${name}" gets ${served ? served.version : "the highest version"} now (the production label).` }),
      field("Serve version", target).node,
      el("button", { type: "submit", "data-testid": "pack-rollback-submit" }, "Roll back"),
      out);
  }

  function publishForm() {
    const toml = el("textarea", { id: "pack-publish-toml", rows: "10", spellcheck: "false", class: "code", "data-testid": "pack-publish-toml",
      placeholder: 'name = "summarize"\nversion = "1.0.0"\ndescription = "Summarize a text"\n[variables.text]\nrequired = true\n[[messages]]\nrole = "user"\ntemplate = "{{ text }}"' });
    // A directory picker: each file keeps its path inside the pack (`tests/basic.toml`).
    const files = el("input", { id: "pack-publish-files", type: "file", multiple: true, webkitdirectory: true, "data-testid": "pack-publish-files" });
    const out = el("div", { "aria-live": "polite", "data-testid": "pack-publish-output" });
    const btn = el("button", { type: "submit", "data-testid": "pack-publish-submit" }, "Publish");
    async function submit(ev) {
      ev.preventDefault();
      clear(out);
      const body = { files: {} };
      for (const f of files.files) {
        const path = (f.webkitRelativePath || f.name).split("/").slice(f.webkitRelativePath ? 1 : 0).join("/");
        body.files[path] = await f.text();
      }
      if (toml.value.trim()) body.files["pack.toml"] = toml.value;
      if (!body.files["pack.toml"]) {
        out.append(el("p", { role: "alert", class: "error-box", text: "paste pack.toml or choose the pack's directory (with pack.toml at its top)" }));
        return;
      }
      btn.disabled = true;
      try {
        const r = await api("POST", "/api/v1/prompts", body);
        const v = r.version;
        out.append(el("p", { "data-testid": "pack-publish-result", text: r.created ? `Published ${v.name}@${v.version}.` : `${v.name}@${v.version} was already published with this content.` }));
        if (r.warnings.length) {
          out.append(el("ul", {}, r.warnings.map((w) => el("li", { text: `${w.severity} ${w.code} at ${w.location}: ${w.message}` }))));
        }
        await refresh();
        await open(v.name);
      } catch (e) {
        out.append(errorBox(e));
      } finally {
        btn.disabled = false;
      }
    }
    return el("details", { class: "card", "data-testid": "pack-publish" },
      el("summary", { text: "Publish a version" }),
      el("form", { "aria-label": "Publish a version", on: { submit } },
        field("pack.toml", toml).node,
        field("Or the pack's directory", files, "the directory holding pack.toml (templates and tests/*.toml with it)").node,
        btn, out));
  }

  clear(root);
  root.append(
    el("h1", { text: "Prompt packs" }),
    el("p", { text: "Versioned prompt templates: a request naming a pack without a version gets the one labelled production." }),
    errors,
    el("section", { class: "panel", "aria-label": "All packs" },
      el("button", { type: "button", "data-testid": "packs-refresh", on: { click: refresh } }, "Refresh"),
      listBox),
    detail,
    canWrite ? publishForm() : null);
  await refresh();
}
