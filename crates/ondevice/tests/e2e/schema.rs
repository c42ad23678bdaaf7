//! The daemon against its own OpenAPI document: schemathesis (PyPI, pinned in `scripts/test.sh`)
//! reads the served `/openapi.json`, generates requests for every operation (valid ones, invalid
//! ones, and stateful sequences), sends them to the real daemon with the real SmolLM2 model
//! loaded, and checks each answer: no 5xx, status codes, content types and bodies as documented,
//! schema-valid requests accepted, schema-invalid ones refused, auth never ignored. Exceptions the
//! schema cannot express are in `scripts/schemathesis.toml`, each with its reason. So any drift
//! between the spec and the server fails the build.

use std::process::Stdio;

use crate::common::models::test_model;
use crate::common::{Daemon, Home, describe};

/// A bounded run: a few examples per operation, one worker, a fixed seed (reproducible in CI).
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_drift_between_the_spec_and_the_daemon() {
    let Some(file) = test_model("schemathesis_finds_no_drift_between_the_spec_and_the_daemon") else { return };
    // Short generations and small embedding batches keep the run bounded.
    let daemon = Daemon::start(Home::with_config(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[inference]\nmax_tokens = 16\nmax_embed_inputs = 16\n",
    ));
    let out = daemon.home().run(&["models", "import", file.to_str().expect("utf-8 path"), "--name", "smollm2"]);
    assert!(out.status.success(), "import: {}", describe(&out));

    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/schemathesis.toml");
    // Revoking keys could revoke the run's own key; the WebSocket is not plain HTTP. Every other
    // operation and every check runs, including "schema-valid requests are accepted"; the
    // exceptions the schema cannot express are per operation in the config file.
    let options = [
        "--checks",
        "all",
        "--exclude-path-regex",
        r"^/api/v1/keys/\{id\}$",
        "--exclude-path",
        "/api/v1/ws",
        "--max-examples",
        "8",
        "--workers",
        "1",
        "--seed",
        "20261206",
        "--max-failures",
        "20",
    ];
    let auth = format!("Authorization: Bearer {}", daemon.admin_key());
    #[allow(clippy::disallowed_methods)] // the test's own checker process, not a daemon spawn
    let run = tokio::task::block_in_place(|| {
        std::process::Command::new("st")
            .args(["--no-color", "--config-file", config, "run", &daemon.url("/openapi.json"), "--header", &auth])
            .args(options)
            // Schemathesis keeps a cache of examples in its working directory: a temporary one.
            .current_dir(daemon.home().root())
            .env("NO_PROXY", "*")
            .env("no_proxy", "*")
            .stdin(Stdio::null())
            .output()
    })
    .unwrap_or_else(|e| panic!("run schemathesis (`st`; scripts/test.sh installs it with pip): {e}"));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "schemathesis found drift between /openapi.json and the daemon (rerun against a daemon: st --config-file \
         {config} run http://ADDR/openapi.json --header 'Authorization: Bearer KEY' {}):\n{}\n{}",
        options.join(" "),
        stdout,
        String::from_utf8_lossy(&run.stderr)
    );
    // The run must have exercised the API, not skipped it.
    assert!(stdout.contains("Tested:"), "{stdout}");
    assert!(!stdout.contains("Tested: 0"), "{stdout}");
}
