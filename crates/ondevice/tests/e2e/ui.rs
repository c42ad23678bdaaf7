//! The web console (`/ui/`) in a real headless Chromium driven by Selenium (Debian `chromium` +
//! `chromium-driver`, Python `selenium`; nothing downloaded at run time) against the real daemon:
//! the scenarios are Python files beside this one (`ui/*.py`, on the harness `ui/harness.py`),
//! run with [`scenario`], which UI tests of other pages share. Each test starts one daemon and one
//! browser session; screenshots go to `target/ui-screenshots/` (or `$ONDEVICE_UI_SCREENSHOTS`).
//!
//! `llama_console_*` runs the real SmolLM2 model (nextest `llama` group): sign-in with a key,
//! status, a pull by catalog name from a loopback server whose progress bar reaches 100 %, a chat that streams
//! "Paris", a stopped answer, a chat with a prompt pack and a collection (MiniLM embeddings)
//! showing its cited sources, a slow pull cancelled on the jobs page, every page's screenshot in
//! light, dark and 360 px wide, sign-out; also the status page's workers with the sandbox
//! protection in effect and runtimes with their health, a model's provenance, import, pin and
//! removal, a session ended behind the page's back, and no control without an accessible name
//! on any page. `login_link_*` needs no model: the one-time
//! `#login=TOKEN` link, used once and removed from the URL, and a cross-site form post refused.

use std::path::{Path, PathBuf};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::common::models::MINILM;
use crate::common::{Daemon, Home, describe, models_entry, python, test_model};
use crate::pull::range_server::{RangeServer, Served};

/// The scenarios and the harness.
pub fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/ui")
}

/// Where screenshots go: `$ONDEVICE_UI_SCREENSHOTS`, else `target/ui-screenshots/`.
pub fn screenshots_dir() -> PathBuf {
    std::env::var_os("ONDEVICE_UI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots"))
}

/// Runs the scenario `ui/FILE` against `daemon`, signing in with `key`, with `env` added; returns
/// the JSON value it printed last. Fails the test (with the scenario's output, and a screenshot
/// of the failure saved) when it fails, and with what to install when the browser is missing.
pub fn scenario(daemon: &Daemon, key: &str, file: &str, env: &[(&str, &str)]) -> Value {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: the console's browser tests need Debian's chromium and chromium-driver \
             (`scripts/prereqs.sh test` installs them) and Python's selenium (scripts/test.sh)"
        );
    }
    let dir = scenarios_dir();
    let script = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let shots = screenshots_dir();
    let (dir, shots) = (dir.to_str().expect("utf-8 path"), shots.to_str().expect("utf-8 path"));
    let mut all = vec![("PYTHONPATH", dir), ("ONDEVICE_UI_SCREENSHOTS", shots), ("PYTHONDONTWRITEBYTECODE", "1")];
    all.extend_from_slice(env);
    // The scenario blocks this thread; servers of the test keep running on the runtime's others.
    tokio::task::block_in_place(|| python(daemon, key, &all, &script))
}

/// A valid GGUF of about `bytes` bytes.
fn generated_gguf(seed: u8, bytes: usize) -> Vec<u8> {
    use ondevice_gguf::writer::GgufWriter;
    use ondevice_gguf::{GgmlType, Value};
    let n = bytes / 4;
    let data: Vec<u8> = (0..n * 4).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    GgufWriter::new()
        .metadata("general.architecture", Value::String("llama".into()))
        .metadata("general.name", Value::String("console".into()))
        .metadata("general.file_type", Value::U32(0))
        .tensor("w", &[n as u64], GgmlType::F32, data)
        .to_bytes()
}

/// The documents of the chat's collection; the question's answer is in `varnholm`.
const DOCS: [(&str, &str); 3] = [
    ("otters", "Sea otters hold hands while they sleep so that they do not drift apart in the water."),
    ("bread", "To bake bread, mix flour, water, salt and yeast, knead the dough and let it rise for an hour."),
    ("varnholm", "The lighthouse on Varnholm island is kept by Orsolya Brekke, who paints it teal every spring."),
];

/// A pack whose system message the chat puts first.
const PACK: &str = "name = \"brief\"\nversion = \"1.0.0\"\ndescription = \"Short answers\"\n\
    [variables.tone]\ndefault = \"brief\"\n\
    [[messages]]\nrole = \"system\"\ntemplate = \"You answer in a {{ tone }} way, citing sources as [n].\"\n";

/// MiniLM's safetensors imported as `minilm-src` and converted to GGUF by a quantize job as
/// `minilm` (so it has provenance to show), a collection `notes` of [`DOCS`] embedded with it,
/// and the pack `brief` published.
async fn retrieval_setup(daemon: &Daemon, minilm: &Path) {
    let home = daemon.home();
    let src = minilm.to_str().expect("utf-8 path");
    let out = home.run(&["models", "import", src, "--name", "minilm-src"]);
    assert!(out.status.success(), "import MiniLM: {}", describe(&out));
    let out = home.run(&["quantize", "minilm-src", "--type", "F16", "--name", "minilm"]);
    assert!(out.status.success(), "convert MiniLM: {}", describe(&out));
    let admin = daemon.admin_key();
    let post = |path: &str, body: Value| {
        let req = daemon.request(Method::POST, path, Some(admin)).json(&body);
        async move {
            let resp = req.send().await.expect("POST");
            let status = resp.status();
            (status, resp.text().await.unwrap_or_default())
        }
    };
    let (s, v) = post("/api/v1/collections", json!({"name": "notes", "model": "minilm"})).await;
    assert!(s.is_success(), "create collection: {s} {v}");
    let docs: Vec<Value> =
        DOCS.iter().map(|(id, text)| json!({"id": id, "text": text, "source": format!("notes/{id}.txt")})).collect();
    let (s, v) = post("/api/v1/collections/notes/documents", json!({"documents": docs})).await;
    assert!(s.is_success(), "upsert: {s} {v}");
    let (s, v) = post("/api/v1/prompts", json!({"files": {"pack.toml": PACK}})).await;
    assert_eq!(s, StatusCode::CREATED, "publish: {v}");
}

/// The screenshots the console scenario saves (`-empty`: pages shown without data of their own).
const SCREENSHOTS: [&str; 11] = [
    "login",
    "status",
    "models",
    "chat",
    "chat-sources",
    "jobs",
    "status-dark",
    "collections-empty",
    "packs-empty",
    "diagnostics-empty",
    "keys-empty",
];

/// Pulls from loopback, in 1 MiB chunks over two connections, with a catalog of its own (`CATALOG`,
/// replaced by the path of a TOML file); two supervised workers for the
/// status page: one sandboxed and running, one that exits with code 3, is restarted once and
/// then given up.
const CONSOLE_CONFIG: &str = r#"
[registry]
allow_hosts = ["127.0.0.1"]
chunk_size = "1MiB"
connections = 2
retries = 1
catalogs = [CATALOG]

[workers.console-sleeper]
command = ["sleep", "600"]
sandbox = { mode = "auto", memory_max = "64MiB", pids_max = 32, network = "none" }

[workers.console-crashy]
command = ["sh", "-c", "exit 3"]
restart = "on-failure"
backoff = { initial_ms = 100, max_ms = 200, factor = 2.0 }
max_restarts = { count = 1, within_s = 60 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_console_signs_in_pulls_chats_cancels_and_signs_out() {
    let test = "ui::llama_console_signs_in_pulls_chats_cancels_and_signs_out";
    let Some(model) = test_model(test) else { return };
    let Some(minilm) = models_entry(test, MINILM) else { return };
    let server = RangeServer::start().await;
    // About two seconds for 8 MiB over two connections: the bar has time to move.
    let pulled = generated_gguf(1, 8 << 20);
    server.put("/console.gguf", Served { throttle: 2 << 20, ..Served::bytes(pulled.clone()) });
    // Far too slow to finish: cancelled from the jobs page.
    server.put("/slow.gguf", Served { throttle: 32 << 10, ..Served::bytes(generated_gguf(2, 8 << 20)) });

    // The pulled model is pulled by its catalog name; the slow one by its URL.
    let home = Home::new();
    let catalog = home.root().join("catalog.toml");
    let digest = sha2::Sha256::digest(&pulled).iter().map(|b| format!("{b:02x}")).collect::<String>();
    let entry = format!(
        "[[model]]\nname = \"console:pulled\"\ndescription = \"the console's pull\"\nlicense = \"mit\"\n\
         [[model.files]]\nname = \"console.gguf\"\nsize = {}\nsha256 = \"sha256:{digest}\"\nurls = [{:?}]\n",
        pulled.len(),
        server.url("/console.gguf"),
    );
    std::fs::write(&catalog, entry).expect("write the catalog");
    let config = CONSOLE_CONFIG.replace("CATALOG", &format!("{:?}", catalog.to_str().expect("utf-8 path")));
    std::fs::write(home.config(), config).expect("write the config");
    let daemon = Daemon::start(home);
    let out = daemon.home().run(&["models", "import", model.to_str().expect("utf-8 path"), "--name", "smollm2"]);
    assert!(out.status.success(), "import: {}", describe(&out));
    retrieval_setup(&daemon, &minilm).await;
    let key = daemon.key(&["admin"]).await;
    // A file on the daemon's machine for the import form.
    let import = daemon.home().root().join("console-import.gguf");
    std::fs::write(&import, generated_gguf(3, 1 << 20)).expect("write the file to import");

    let started = std::time::Instant::now();
    let slow_url = server.url("/slow.gguf");
    let result = scenario(
        &daemon,
        &key.secret,
        "console.py",
        &[
            ("MODEL", "smollm2:latest"),
            ("PULL_SOURCE", "console:pulled"),
            ("PULL_NAME", "console:pulled"),
            ("SLOW_URL", &slow_url),
            ("SLOW_NAME", "console:slow"),
            ("PAGES", "collections,packs,diagnostics,keys"),
            ("COLLECTION", "notes"),
            ("PACK", "brief"),
            ("RAG_QUESTION", "Who keeps the lighthouse on Varnholm island?"),
            ("RAG_DOCUMENT", "varnholm"),
            ("WORKERS", "console-sleeper,console-crashy"),
            ("PROVENANCE_MODEL", "minilm:latest"),
            ("PROVENANCE_PARENT", "minilm-src:latest"),
            ("IMPORT_PATH", import.to_str().expect("utf-8 path")),
            ("IMPORT_NAME", "console:imported"),
        ],
    );
    println!("browser scenario: {:.1} s, {result}", started.elapsed().as_secs_f64());
    assert!(result["answer"].as_str().is_some_and(|a| a.contains("Paris")), "{result}");
    assert_eq!(result["sources"][0], "varnholm", "the fact's document is cited first: {result}");

    // What the browser did, checked through the API.
    let admin = daemon.admin_key();
    let (status, models) = daemon.get("/api/v1/models", Some(admin)).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = models.as_array().expect("models").iter().filter_map(|m| m["model"].as_str()).collect();
    assert!(names.contains(&"console:pulled"), "the pull registered nothing: {names:?}");
    assert!(!names.contains(&"console:slow"), "a cancelled pull registered a model: {names:?}");
    assert!(!names.contains(&"console:imported"), "the model removed in the page is still there: {names:?}");
    let crashy = &result["workers"]["console-crashy"];
    assert!(crashy["restarts"].as_u64().is_some_and(|r| r >= 1), "{result}");
    let job = result["cancelled"].as_str().expect("cancelled job id");
    let (_, job) = daemon.get(&format!("/api/v1/jobs/{job}"), Some(admin)).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    // A picture of every page, for review.
    let shots = screenshots_dir();
    for page in SCREENSHOTS {
        let png = shots.join(format!("{page}.png"));
        let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("screenshot {}: {e}", png.display()));
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 2000, "{} is not a picture", png.display());
    }
}

/// The ids of every key, revoked ones included.
async fn key_ids(daemon: &Daemon) -> Vec<String> {
    let (status, keys) = daemon.get("/api/v1/keys", Some(daemon.admin_key())).await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    keys.as_array().expect("keys").iter().map(|k| k["id"].as_str().expect("id").to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_link_works_once_leaves_the_url_and_cross_site_posts_are_refused() {
    let daemon = Daemon::start(Home::new());
    let key = daemon.key(&["read"]).await;
    // `ondevice ui` makes a link for the key the CLI holds.
    let out = daemon.home().run_with(&["ui", "--json"], &[("ONDEVICE_API_KEY", key.secret.as_str())]);
    assert!(out.status.success(), "ondevice ui --json: {}", describe(&out));
    let link: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
    let url = link["url"].as_str().expect("url");
    assert!(url.ends_with(&format!("/ui/#login={}", link["token"].as_str().expect("token"))), "{link}");
    let keys_before = key_ids(&daemon).await;

    // The link signs in with the read key; then the admin key is pasted, so that the cross-site
    // post is refused for being cross-site, not for lacking a scope.
    let result = scenario(&daemon, daemon.admin_key(), "login_link.py", &[("LOGIN_URL", url)]);
    assert_eq!(result["link_scopes"], json!(["read"]), "the link's session has the key's scopes: {result}");
    assert_eq!(result["cross_site"], json!([403, "csrf_failed"]), "{result}");

    // The cross-site form post created no key.
    assert_eq!(key_ids(&daemon).await, keys_before, "a cross-site post created a key");
    // The link's token is spent.
    let resp = daemon
        .request(Method::POST, "/api/v1/ui/session", None)
        .json(&json!({"login_token": link["token"]}))
        .send()
        .await
        .expect("POST session");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "a used login token worked again");
}
