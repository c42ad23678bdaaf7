// Status page: the daemon (version, uptime, listener, readiness), the host's sandbox, each
// supervised worker (state, restarts, last exit, sandbox protection in effect) and each runtime
// with its health and loaded models. Reads `GET /api/v1/status` and `GET /api/v1/runtimes`,
// refreshed every five seconds while the page is open.

import { el, errorBox, formatBytes, formatDuration, formatTime, jsonView, replace, table } from "../lib/dom.js";

export const title = "Status";
export const scope = "read";

const REFRESH_MS = 5000;

/** `code 0`, `signal 9 (killed for memory)`, or `—`. */
function exitText(exit) {
  if (!exit) return "—";
  const parts = [];
  if (exit.code !== null && exit.code !== undefined) parts.push(`code ${exit.code}`);
  if (exit.signal !== null && exit.signal !== undefined) parts.push(`signal ${exit.signal}`);
  if (exit.oom) parts.push("killed for memory");
  return parts.join(", ") || "—";
}

/** A worker's protection report: what is enforced (and by what), what is missing (and why). */
function protectionView(p) {
  if (!p || typeof p !== "object" || !Array.isArray(p.enforced)) return jsonView(p);
  const enforced = p.enforced.map((e) =>
    el("li", {}, el("strong", { text: String(e.limit) }), ` by ${e.mechanism}`, e.detail ? ` (${e.detail})` : ""),
  );
  const missing = (p.missing ?? []).map((m) => el("li", { class: "no" }, el("strong", { text: String(m.limit) }), ` missing: ${m.reason}`));
  return el(
    "div",
    { class: "protection" },
    el("span", { class: "muted", text: `mode ${p.mode ?? "?"}` }),
    enforced.length || missing.length ? el("ul", { class: "json-list" }, enforced, missing) : el("div", { class: "no", text: "nothing enforced" }),
  );
}

/** `landlock, seccomp, net namespace, cgroups, bwrap` — what the host offers, in a line. */
function sandboxSummary(sb) {
  if (!sb || typeof sb !== "object") return "unknown";
  const have = [];
  if (sb.cgroup_v2?.controllers?.length || sb.cgroup_v1) have.push("cgroups");
  if (sb.rlimits) have.push("rlimits");
  if (sb.landlock_abi) have.push(`landlock (ABI ${sb.landlock_abi})`);
  if (sb.seccomp) have.push("seccomp");
  if (sb.net_namespace) have.push("network namespace");
  if (sb.bwrap) have.push("bubblewrap");
  if (sb.firejail) have.push("firejail");
  if (sb.job_objects) have.push("job objects");
  if (sb.sandbox_exec) have.push("sandbox-exec");
  return `${sb.os ?? "host"}: ${have.join(", ") || "no isolation mechanism found"}`;
}

function stateCell(state) {
  return el("span", { class: `state-${String(state).replace(/[^a-z-]/g, "")}`, text: String(state) });
}

function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.map(([k, v, testid]) => [el("dt", { text: k }), el("dd", { "data-testid": testid ?? null }, v)]));
}

export async function render(root, ctx) {
  const errors = el("div");
  const refreshed = el("span", { class: "muted", "aria-live": "polite" });
  const refresh = el("button", { type: "button", class: "ghost small", "data-testid": "status-refresh", text: "Refresh" });
  const daemonBox = el("section", { class: "panel", "aria-label": "Daemon" });
  const workersBox = el("div");
  const runtimesBox = el("div");
  root.append(
    el("div", { class: "page-head" }, el("h1", { text: "Status" }), refresh, refreshed),
    errors,
    daemonBox,
    el("h2", { text: "Workers" }),
    workersBox,
    el("h2", { text: "Runtimes" }),
    runtimesBox,
  );

  let timer = null;
  let stopped = false;

  async function load() {
    const [status, runtimes] = await Promise.allSettled([ctx.api("GET", "/api/v1/status"), ctx.api("GET", "/api/v1/runtimes")]);
    if (stopped) return;
    replace(errors);
    for (const r of [status, runtimes]) if (r.status === "rejected") errors.append(errorBox(r.reason));

    if (status.status === "fulfilled") {
      const s = status.value;
      replace(
        daemonBox,
        facts([
          ["Version", s.version, "status-version"],
          ["Uptime", formatDuration(s.uptime_seconds), "status-uptime"],
          ["Ready", el("span", { class: s.ready ? "yes" : "no", text: s.ready ? "ready" : "not ready" }), "status-ready"],
          ["Listening on", s.listen_address],
          ["TLS", s.tls ? "on" : "off"],
          ["Auth", s.auth_enabled ? "keys required" : "off"],
          ["Process id", String(s.pid)],
          ["Host sandbox", el("details", {}, el("summary", { text: sandboxSummary(s.sandbox) }), jsonView(s.sandbox)), "status-sandbox"],
        ]),
      );
      const workers = s.workers ?? [];
      replace(
        workersBox,
        workers.length
          ? table(
              null,
              ["Worker", "State", "Ready", "Restarts", "Last exit", "OOM kills", "Protection in effect"],
              workers.map((w) =>
                el(
                  "tr",
                  { "data-testid": `worker-${w.name}` },
                  el("td", { class: "mono", text: w.name }),
                  el("td", { "data-testid": `worker-state-${w.name}` }, stateCell(w.state), w.next_restart_at ? el("div", { class: "muted", text: `next restart ${formatTime(w.next_restart_at)}` }) : null),
                  el("td", { text: w.ready ? "yes" : "no" }),
                  el("td", { "data-testid": `worker-restarts-${w.name}`, text: String(w.restarts) }),
                  el("td", { "data-testid": `worker-exit-${w.name}`, text: exitText(w.last_exit) }),
                  el("td", { text: String(w.oom_kills) }),
                  el("td", { "data-testid": `worker-protection-${w.name}` }, protectionView(w.protection)),
                ),
              ),
              { "data-testid": "workers-table" },
            )
          : el("p", { class: "muted", "data-testid": "workers-empty", text: "No supervised workers are running (engine workers start when a model is first used)." }),
      );
    }

    if (runtimes.status === "fulfilled") {
      const r = runtimes.value;
      replace(
        runtimesBox,
        table(
          null,
          ["Runtime", "Kind", "Health", "Circuit", "Failures", "Loaded"],
          (r.runtimes ?? []).map((rt) =>
            el(
              "tr",
              { "data-testid": `runtime-${rt.name}` },
              el("td", { class: "mono", text: rt.name }),
              el("td", { text: rt.kind }),
              el("td", { "data-testid": `runtime-health-${rt.name}` }, stateCell(rt.health), rt.reason ? el("div", { class: "muted", text: rt.reason }) : null),
              el("td", { text: rt.circuit }),
              el("td", { text: String(rt.failures) }),
              el("td", { text: (rt.loaded ?? []).join(", ") || "—" }),
            ),
          ),
          { "data-testid": "runtimes-table" },
        ),
        (r.loaded ?? []).length
          ? table(
              "Loaded models",
              ["Model", "Runtime", "Memory", "Last used", "Unloads at"],
              r.loaded.map((m) => [
                el("span", { class: "mono", text: m.model }),
                m.runtime,
                formatBytes(m.size),
                formatTime(m.last_used),
                m.expires_at ? formatTime(m.expires_at) : "never",
              ]),
            )
          : el("p", { class: "muted", text: "No model is loaded now." }),
      );
    }
    refreshed.textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      await load().catch(ctx.showError);
      if (!stopped) schedule();
    }, REFRESH_MS);
  }

  refresh.addEventListener("click", () => load().catch(ctx.showError));
  await load();
  schedule();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
