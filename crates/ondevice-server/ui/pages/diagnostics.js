// Diagnostics page (admin): a diagnostics bundle made by a `diagnostics` job (progress over SSE),
// downloaded as a file, and opened in the browser (the `.tar.gz` is unpacked here with
// `DecompressionStream`): its manifest (files, redactions, what was left out), the egress ledger
// it carries, and any file's text. Live egress counters come from `/metrics`. The doctor's checks
// (`GET /api/v1/diagnostics/doctor`) and telemetry's status and preview (`GET /api/v1/telemetry`,
// `/api/v1/telemetry/preview`) are read-only: consent is given or withdrawn with the CLI, at the
// machine.

import { errorBox, clear, field, formatBytes, formatTime, progressBar, table } from "../lib/dom.js";
import { download, seg } from "../lib/api.js";

export const title = "Diagnostics";
export const scope = "admin";

/** Largest file text shown in the page (the rest is in the downloaded bundle). */
const SHOW_LIMIT = 256 * 1024;

/** The entries of a (ustar or GNU) tar archive: `[{name, data: Uint8Array}]`. */
export function untar(buf) {
  const bytes = new Uint8Array(buf);
  const dec = new TextDecoder();
  const str = (a, b) => {
    const s = bytes.subarray(a, b);
    const nul = s.indexOf(0);
    return dec.decode(nul < 0 ? s : s.subarray(0, nul));
  };
  const out = [];
  let off = 0;
  let longName = null;
  while (off + 512 <= bytes.length) {
    const header = bytes.subarray(off, off + 512);
    if (header.every((b) => b === 0)) break;
    const size = parseInt(str(off + 124, off + 136).trim() || "0", 8);
    if (!Number.isFinite(size) || size < 0) throw new Error("the bundle is not a valid tar archive (bad entry size)");
    const type = String.fromCharCode(header[156] || 48);
    const prefix = str(off + 345, off + 500);
    let name = str(off, off + 100);
    if (prefix && str(off + 257, off + 262) === "ustar") name = `${prefix}/${name}`;
    const start = off + 512;
    if (start + size > bytes.length) throw new Error("the bundle is truncated");
    const data = bytes.subarray(start, start + size);
    off = start + Math.ceil(size / 512) * 512;
    if (type === "L") {
      longName = dec.decode(data).replace(/\0+$/, "");
      continue;
    }
    if (type === "x") {
      const m = /\d+ path=([^\n]*)\n/.exec(dec.decode(data));
      if (m) longName = m[1];
      continue;
    }
    if (longName) {
      name = longName;
      longName = null;
    }
    if (type === "0" || type === "\0") out.push({ name, data });
  }
  return out;
}

/** A `.tar.gz` Blob → its entries. */
export async function unbundle(blob) {
  if (typeof DecompressionStream !== "function") throw new Error("this browser cannot unpack gzip (no DecompressionStream); open the downloaded file instead");
  const tar = await new Response(blob.stream().pipeThrough(new DecompressionStream("gzip"))).arrayBuffer();
  return untar(tar);
}

/** `name{a="x",b="y"} 3` lines of a Prometheus text → `[{labels, value}]` for one metric. */
function samples(text, metric) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${metric}{`) && !line.startsWith(`${metric} `)) continue;
    const labels = {};
    const m = /\{([^}]*)\}/.exec(line);
    if (m) for (const [, k, v] of m[1].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v;
    out.push({ labels, value: Number(line.slice(line.lastIndexOf(" ") + 1)) });
  }
  return out;
}

export async function render(root, ctx) {
  const { api, sse, el } = ctx;
  const controller = new AbortController();
  const urls = [];

  // ---- bundle ----
  const bundleOut = el("div", { "data-testid": "diag-bundle-output" });
  const bar = progressBar("Bundle");
  bar.node.setAttribute("data-testid", "diag-bundle-progress");
  bar.node.hidden = true;
  const status = el("p", { "aria-live": "polite", "data-testid": "diag-bundle-status" });
  const makeBtn = el("button", { type: "button", "data-testid": "diag-bundle-create", on: { click: makeBundle } }, "Make a diagnostics bundle");
  const contents = el("div", { "data-testid": "diag-bundle-contents" });
  const earlier = el("div", { "data-testid": "diag-bundles" });

  async function makeBundle() {
    clear(bundleOut);
    clear(contents);
    makeBtn.disabled = true;
    try {
      let job = await api("POST", "/api/v1/diagnostics/bundle");
      bar.node.hidden = false;
      show(job);
      if (!finished(job.state)) {
        for await (const ev of sse(`/api/v1/jobs/${seg(job.id)}/events`, { signal: controller.signal })) {
          if (ev.data && typeof ev.data === "object" && ev.data.id) {
            job = ev.data;
            show(job);
            if (finished(job.state)) break;
          }
        }
      }
      if (job.state !== "succeeded") {
        bundleOut.append(el("div", { class: "error-box", role: "alert", text: `the bundle job ${job.state}: ${job.error || "no reason given"}` }));
        return;
      }
      await offer(job, bundleOut);
      await listBundles();
    } catch (e) {
      if (e.name !== "AbortError") bundleOut.append(errorBox(e));
    } finally {
      makeBtn.disabled = false;
    }
  }

  function show(job) {
    const p = job.progress || {};
    const done = finished(job.state);
    bar.set(job.state === "succeeded" ? 1 : p.total ? p.done / p.total : done ? 0 : null, `${job.state}${!done && p.message ? `: ${p.message}` : ""}`);
    status.textContent = `Job ${job.id}: ${job.state}`;
  }

  // Fetches the bundle as a Blob (errors shown), offers it as a file, opens it below.
  async function offer(job, where) {
    const d = job.detail || {};
    const path = d.download || `/api/v1/diagnostics/bundles/${seg(job.id)}`;
    const { blob, name } = await download(path, { signal: controller.signal });
    const url = URL.createObjectURL(blob);
    urls.push(url);
    const file = name || d.file || `ondevice-diagnostics-${job.id}.tar.gz`;
    where.append(
      el("p", {},
        el("a", { href: url, download: file, "data-testid": "diag-download", class: "download" }, `Download ${file}`),
        ` (${formatBytes(blob.size)}${d.files != null ? `, ${d.files} files` : ""}${d.redactions != null ? `, ${d.redactions} redactions` : ""})`),
      d.sha256 ? el("p", { class: "hint" }, "SHA-256 ", el("code", { text: d.sha256 })) : null);
    await inspect(blob);
  }

  async function inspect(blob) {
    clear(contents);
    let entries;
    try {
      entries = await unbundle(blob);
    } catch (e) {
      contents.append(errorBox(e));
      return;
    }
    const byName = new Map(entries.map((e) => [e.name, e]));
    const text = (e) => new TextDecoder().decode(e.data);
    const json = (n) => {
      const e = byName.get(n);
      if (!e) return null;
      try {
        return JSON.parse(text(e));
      } catch {
        return null;
      }
    };
    const manifest = json("manifest.json");
    contents.append(el("h2", { id: "diag-contents-h", text: "What the bundle holds" }));
    if (!manifest) {
      contents.append(el("p", { role: "alert", class: "error-box", text: "the bundle has no readable manifest.json" }));
      return;
    }
    contents.append(el("p", { text: `Made ${formatTime(manifest.created_at)} by ${manifest.generator}. Keys, tokens, passwords, URL credentials, prompts and model outputs are never included; what was redacted is counted per file.` }));
    const viewer = el("div", { "data-testid": "diag-file-view" });
    const rows = manifest.files.map((f) => {
      const redactions = Object.entries(f.redacted || {}).filter(([, n]) => typeof n === "number" && n > 0);
      const entry = byName.get(f.name);
      return [
        el("code", { text: f.name }),
        formatBytes(f.size),
        redactions.length ? redactions.map(([k, n]) => `${k} ×${n}`).join(", ") : "none",
        f.note || "",
        entry ? el("button", { type: "button", class: "ghost small", "aria-label": `View ${f.name}`, "data-testid": `diag-view-${f.name}`, on: { click: () => view(f.name, entry) } }, "View") : "",
      ];
    });
    function view(name, entry) {
      clear(viewer);
      const t = text(entry);
      viewer.append(
        el("h3", { id: "diag-file-h", tabindex: "-1" }, el("code", { text: name })),
        el("pre", { tabindex: "0", "aria-labelledby": "diag-file-h", text: t.length > SHOW_LIMIT ? `${t.slice(0, SHOW_LIMIT)}\n… (${formatBytes(t.length - SHOW_LIMIT)} more in the downloaded file)` : t }));
      viewer.querySelector("h3").focus();
    }
    contents.append(table("Files", ["File", "Size", "Redacted", "Note", ""], rows, { "data-testid": "diag-manifest" }));
    if (manifest.omitted && manifest.omitted.length) {
      contents.append(table("Left out", ["What", "Why"], manifest.omitted.map((o) => [o.name, o.reason]), { "data-testid": "diag-omitted" }));
    }
    const egress = json("egress.json");
    if (egress) contents.append(ledger(egress));
    contents.append(viewer);
  }

  function ledger(egress) {
    const conns = egress.connections || [];
    const box = el("section", { "aria-labelledby": "diag-ledger-h", "data-testid": "diag-egress-ledger" },
      el("h3", { id: "diag-ledger-h", text: "Egress ledger (from the bundle)" }),
      el("p", { text: `Offline mode: ${egress.offline ? "on (no outbound connection allowed)" : "off"}. ${conns.length} outbound connections recorded (newest first, at most 1000).` }));
    if (conns.length) {
      box.append(table(null, ["When", "Purpose", "Host", "Outcome", "Sent", "Received", "Error"], conns.map((c) => [
        formatTime(c.at),
        c.purpose,
        `${c.host}:${c.port}${c.loopback ? " (loopback)" : ""}`,
        c.outcome,
        formatBytes(c.sent_bytes),
        formatBytes(c.received_bytes),
        c.error || "",
      ])));
    }
    return box;
  }

  async function listBundles() {
    clear(earlier);
    let jobs;
    try {
      jobs = await api("GET", "/api/v1/jobs?kind=diagnostics");
    } catch (e) {
      earlier.append(errorBox(e));
      return;
    }
    const list = (Array.isArray(jobs) ? jobs : jobs.jobs || []).filter((j) => j.kind === "diagnostics").reverse();
    if (!list.length) {
      earlier.append(el("p", { class: "muted", text: "No bundles made yet." }));
      return;
    }
    const rows = list.map((j) => {
      const open = el("button", { type: "button", class: "ghost small", "aria-label": `Open bundle ${j.id}`, on: { click: async () => {
        clear(bundleOut);
        try {
          await offer(j, bundleOut);
        } catch (e) {
          bundleOut.append(errorBox(e));
        }
      } } }, "Open");
      return [el("code", { text: j.id }), el("span", { class: `state-${j.state}`, text: j.state }), formatTime(j.finished_at || j.created_at),
        j.detail && j.detail.size != null ? formatBytes(j.detail.size) : "—", j.state === "succeeded" ? open : j.error || ""];
    });
    earlier.append(table("Bundles (the newest are kept)", ["Job", "State", "When", "Size", ""], rows));
  }

  // ---- live egress ----
  const egressBox = el("div", { "data-testid": "diag-egress" });
  async function liveEgress() {
    clear(egressBox);
    let text;
    try {
      text = await api("GET", "/metrics");
    } catch (e) {
      egressBox.append(errorBox(e));
      return;
    }
    if (typeof text !== "string") text = "";
    const offline = samples(text, "ondevice_offline")[0];
    const conns = samples(text, "ondevice_egress_connections_total").filter((c) => c.value > 0);
    const bytes = samples(text, "ondevice_egress_bytes_total");
    egressBox.append(el("p", { "data-testid": "diag-offline", text: `Offline mode: ${offline && offline.value === 1 ? "on" : "off"}.` }));
    if (!conns.length) {
      egressBox.append(el("p", { "data-testid": "diag-egress-none", text: "No outbound connection since the daemon started." }));
      return;
    }
    const sentBy = (p, dir) => bytes.find((b) => b.labels.purpose === p && b.labels.direction === dir)?.value;
    egressBox.append(table("Since the daemon started", ["Purpose", "Outcome", "Connections", "Sent", "Received"], conns.map((c) => [
      c.labels.purpose, c.labels.outcome, String(c.value), formatBytes(sentBy(c.labels.purpose, "sent")), formatBytes(sentBy(c.labels.purpose, "received")),
    ])));
  }

  // ---- doctor ----
  const doctorBox = el("div", { "data-testid": "doctor" });
  const doctorBtn = el("button", { type: "button", class: "ghost", "data-testid": "doctor-run", on: { click: runDoctor } }, "Run the checks again");
  async function runDoctor() {
    clear(doctorBox);
    doctorBtn.disabled = true;
    doctorBox.append(el("p", { class: "muted", "aria-live": "polite", text: "Running the checks (models are re-hashed) …" }));
    let res;
    try {
      res = await api("GET", "/api/v1/diagnostics/doctor");
    } catch (e) {
      clear(doctorBox);
      doctorBox.append(errorBox(e));
      return;
    } finally {
      doctorBtn.disabled = false;
    }
    clear(doctorBox);
    const checks = res.checks || [];
    const failed = checks.filter((c) => c.status === "fail").length;
    const warned = checks.filter((c) => c.status === "warn").length;
    doctorBox.append(
      el("p", { "data-testid": "doctor-summary", text: `${checks.length} checks: ${failed} failed, ${warned} with a warning.` }),
      table("Doctor checks", ["Check", "Status", "Detail", "Fix"], checks.map((c) => [
        c.name,
        el("span", { class: `check-${c.status}`, text: c.status }),
        c.detail,
        c.fix || "",
      ]), { "data-testid": "doctor-table" }));
  }

  // ---- telemetry ----
  const telemetryBox = el("div", { "data-testid": "telemetry" });
  async function showTelemetry() {
    clear(telemetryBox);
    let st;
    let preview;
    try {
      [st, preview] = await Promise.all([api("GET", "/api/v1/telemetry"), api("GET", "/api/v1/telemetry/preview")]);
    } catch (e) {
      telemetryBox.append(errorBox(e));
      return;
    }
    const words = {
      on: "on: a usage report is sent",
      off: "off (the default): nothing is sent",
      stale: `off: consent was given for report version ${st.consented_version}, the report is now version ${st.report_version}`,
      disabled_by_environment: `off: ${st.disabled_by || "the environment"} is set, which wins over consent`,
    };
    telemetryBox.append(
      el("p", { "data-testid": "telemetry-status", text: `Telemetry: ${words[st.state] || st.state}.` }),
      el("dl", { class: "json" },
        el("dt", { text: "Endpoint" }), el("dd", { text: `${st.endpoint} (every ${st.interval_s} s${st.offline ? "; offline mode blocks sending" : ""})` }),
        el("dt", { text: "Report version" }), el("dd", { text: String(st.report_version) }),
        el("dt", { text: "Install id" }), el("dd", { text: st.install_id || "none (made when telemetry is enabled)" }),
        el("dt", { text: "Queued events" }), el("dd", { text: String(st.pending) })),
      el("p", { class: "hint" },
        "Turning telemetry on or off is a consent given at the machine, not over the API: ",
        el("code", { text: "ondevice telemetry enable" }), " / ", el("code", { text: "ondevice telemetry disable" }),
        ". DO_NOT_TRACK=1 or ONDEVICE_TELEMETRY=0 turn it off whatever was consented."),
      el("h3", { id: "telemetry-preview-h", text: "What would be sent" }),
      el("p", { class: "hint", text: `${(preview.queued || []).length} queued events, then the next report (its event id is drawn when it is made; request counts are the daemon's since its previous report).` }),
      el("pre", { tabindex: "0", "aria-labelledby": "telemetry-preview-h", "data-testid": "telemetry-preview", text: JSON.stringify(preview, null, 2) }));
  }

  clear(root);
  root.append(
    el("h1", { text: "Diagnostics" }),
    el("section", { class: "panel", "aria-labelledby": "diag-doctor-h" },
      el("h2", { id: "diag-doctor-h", text: "Doctor" }),
      el("p", { text: "The checks of ondevice diag doctor, run by the daemon about itself: CPU build, sandbox, disk space, listen address, permissions, models, runtimes, clock; each problem with its fix." }),
      doctorBtn, doctorBox),
    el("section", { class: "panel", "aria-labelledby": "diag-telemetry-h" },
      el("h2", { id: "diag-telemetry-h", text: "Telemetry" }),
      telemetryBox),
    el("section", { class: "panel", "aria-labelledby": "diag-bundle-h" },
      el("h2", { id: "diag-bundle-h", text: "Diagnostics bundle" }),
      el("p", { text: "A .tar.gz with a manifest.json: build, system, redacted config, daemon status and metrics, jobs, registry, crash reports, log tails and the egress ledger; secrets are redacted." }),
      makeBtn, bar.node, status, bundleOut, earlier, contents),
    el("section", { class: "panel", "aria-labelledby": "diag-egress-h" },
      el("h2", { id: "diag-egress-h", text: "Outbound connections" }),
      el("button", { type: "button", class: "ghost", "data-testid": "diag-egress-refresh", on: { click: liveEgress } }, "Refresh"),
      egressBox));
  await Promise.all([listBundles(), liveEgress(), showTelemetry(), runDoctor()]);
  return () => {
    controller.abort();
    for (const u of urls) URL.revokeObjectURL(u);
  };
}

function finished(state) {
  return state === "succeeded" || state === "failed" || state === "cancelled";
}
