//! Diagnostics through the real daemon and CLI: `ondevice diag bundle` on a home full of planted
//! secrets (config, environment, logs, keys) whose archive, decompressed, contains none of them;
//! the bundle's size bound on a home with several models and a week of logs; the `diagnostics`
//! job over HTTP (admin only) with its download; a crashing worker that yields a crash report
//! while the daemon keeps serving; and `ondevice diag doctor` finding a problem with its fix.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::common::{Daemon, Home, describe, write_small_gguf};

/// Every file of a `.tar.gz`, decompressed.
fn unpack(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    ar.entries()
        .expect("tar entries")
        .map(|e| {
            let mut e = e.expect("tar entry");
            let name = e.path().expect("entry path").to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("entry data");
            (name, data)
        })
        .collect()
}

/// Asserts none of `secrets` occurs in any file of the archive (names included).
fn assert_clean(files: &[(String, Vec<u8>)], secrets: &[&str]) {
    for (name, data) in files {
        let text = String::from_utf8_lossy(data);
        for s in secrets {
            assert!(!name.contains(s), "{s:?} in the name {name}");
            if let Some(i) = text.find(s) {
                let start = i.saturating_sub(80);
                panic!("{s:?} found in {name}: ...{}...", &text[start..(i + s.len() + 40).min(text.len())]);
            }
        }
    }
}

fn manifest(files: &[(String, Vec<u8>)]) -> Value {
    assert_eq!(files[0].0, "manifest.json", "the manifest comes first");
    serde_json::from_slice(&files[0].1).expect("manifest JSON")
}

const RUNTIME_KEY: &str = "sk-plantedRuntimeKey0123456789abcd";
const REGISTRY_TOKEN: &str = "hf_plantedRegistryToken0123456789";
const ENV_PASSWORD: &str = "planted-env-password-0123";
const URL_PASSWORD: &str = "plantedUrlPass0123";
const LOG_BEARER: &str = "plantedBearerToken0123456789";
const LOG_PROMPT: &str = "PLANTED PROMPT about my diary";
const LOG_OUTPUT: &str = "PLANTED OUTPUT of the model";
const ARG_SECRET: &str = "plantedArgSecret0123";
const WEBHOOK_SIG: &str = "plantedWebhookSig0123";
const CRASH_PROMPT: &str = "PLANTED CRASH PROMPT about my diary";

fn planted_config() -> String {
    format!(
        r#"
[runtimes.remote]
kind = "openai"
base_url = "http://planted-user:{URL_PASSWORD}@127.0.0.1:9/v1"
api_key = "env:PLANTED_RUNTIME_KEY"

[registry.credentials."models.example"]
token = "env:PLANTED_REGISTRY_TOKEN"

[workers.planted]
command = ["/bin/sh", "-c", "exit 3", "--api-key", "{ARG_SECRET}"]
restart = "never"

[workers.planted.hooks]
on_exit = [{{ webhook = "http://127.0.0.1:9/hook?sig={WEBHOOK_SIG}&exp=1" }}]
"#
    )
}

/// A week of daemon logs (JSON lines as the daemon writes them, with prompts, outputs, keys and
/// paths planted among them) and several worker logs, `mib` MiB each.
fn plant_logs(home: &Path, admin_key: &str, mib: usize) {
    let logs = home.join("logs");
    std::fs::create_dir_all(logs.join("workers")).unwrap();
    let home_path = home.display().to_string();
    let planted = [
        format!(
            r#"{{"timestamp":"2026-12-01T10:00:00Z","level":"DEBUG","fields":{{"message":"generate","prompt":"{LOG_PROMPT}"}},"target":"ondevice_server"}}"#
        ),
        format!(
            r#"{{"timestamp":"2026-12-01T10:00:01Z","level":"DEBUG","fields":{{"message":"done","messages":[{{"role":"assistant","content":"{LOG_OUTPUT}"}}]}},"target":"ondevice_server"}}"#
        ),
        format!(
            r#"{{"timestamp":"2026-12-01T10:00:02Z","level":"WARN","fields":{{"message":"upstream refused Authorization: Bearer {LOG_BEARER} for key {admin_key}"}},"target":"x"}}"#
        ),
        format!(
            r#"{{"timestamp":"2026-12-01T10:00:03Z","level":"INFO","fields":{{"message":"pull from https://bob:{URL_PASSWORD}@models.example/m.gguf into {home_path}/blobs"}},"target":"x"}}"#
        ),
    ];
    let filler = r#"{"timestamp":"2026-12-01T10:00:04Z","level":"INFO","fields":{"message":"request","status":200,"latency_ms":12},"target":"ondevice_server::metrics"}"#;
    let mut body = String::new();
    while body.len() < mib << 20 {
        body.push_str(filler);
        body.push('\n');
    }
    for day in 0..7 {
        let mut text = planted.join("\n");
        text.push('\n');
        text.push_str(&body);
        // The planted lines both at the start (cut by the tail) and at the end (kept).
        text.push_str(&planted.join("\n"));
        text.push('\n');
        std::fs::write(logs.join(format!("ondevice.2026-12-0{}.log", day + 1)), text).unwrap();
    }
    // A worker's crash report whose stderr tail holds a prompt and a token in plain text.
    std::fs::create_dir_all(home.join("crashes")).unwrap();
    let crash = serde_json::json!({
        "id": "planted", "at": 1_796_000_000, "process": "worker", "worker": "engine-m0", "kind": "signal",
        "signal": 11, "signal_name": "SIGSEGV", "message": "worker killed by SIGSEGV",
        "stderr_tail": format!("loading model\nprompt: {CRASH_PROMPT}\nauthorization: Bearer {LOG_BEARER}\nggml_abort"),
        "build": {"version": "0.1.0"}, "truncated": false,
    });
    std::fs::write(home.join("crashes").join("crash-planted.json"), serde_json::to_vec_pretty(&crash).unwrap())
        .unwrap();
    for w in 0..3 {
        let mut text = body.clone();
        text.push_str(&format!(
            "[stderr] token={LOG_BEARER} prompt: {LOG_PROMPT}\n[stderr] loaded {home_path}/blobs/x\n"
        ));
        std::fs::write(logs.join("workers").join(format!("engine-m{w}.log")), text).unwrap();
    }
}

#[tokio::test]
async fn bundle_holds_no_planted_secret_and_stays_bounded() {
    let home = Home::with_config(&planted_config());
    let root = home.root().to_path_buf();
    let env = [("PLANTED_RUNTIME_KEY", RUNTIME_KEY), ("PLANTED_REGISTRY_TOKEN", REGISTRY_TOKEN)];
    let daemon = Daemon::start_with_env(home, &env);
    let admin = daemon.key(&["admin"]).await;
    // Several models.
    for seed in 0..3u8 {
        let f = root.join(format!("m{seed}.gguf"));
        write_small_gguf(&f, seed);
        crate::common::import_model_api(&daemon, &f, &format!("planted-model-{seed}:latest")).await;
    }
    plant_logs(&daemon.home().dir(), &admin.secret, 3);
    let bootstrap = daemon.admin_key().to_owned();

    let out = root.join("bundle.tar.gz");
    let started = Instant::now();
    let run = daemon.home().run_with(
        &["diag", "bundle", "--output", out.to_str().unwrap(), "--json"],
        &[
            ("ONDEVICE_API_KEY", admin.secret.as_str()),
            ("ONDEVICE_PLANTED_PASSWORD", ENV_PASSWORD),
            ("PLANTED_RUNTIME_KEY", RUNTIME_KEY),
            ("PLANTED_REGISTRY_TOKEN", REGISTRY_TOKEN),
            ("HOME", root.to_str().unwrap()),
        ],
    );
    let elapsed = started.elapsed();
    assert!(run.status.success(), "diag bundle: {}", describe(&run));
    let summary: Value = serde_json::from_slice(&run.stdout).expect("summary JSON");
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(summary["size"], bytes.len());
    let files = unpack(&bytes);
    let m = manifest(&files);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "build.json",
        "system.json",
        "config.toml",
        "environment.json",
        "daemon/status.json",
        "daemon/metrics.txt",
        "jobs.json",
        "registry.json",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(
        names.iter().any(|n| n.starts_with("logs/daemon/")) && names.iter().any(|n| n.starts_with("logs/workers/"))
    );
    assert!(names.contains(&"crashes/crash-planted.json"), "{names:?}");
    assert!(names.contains(&"egress.json"), "{names:?}");
    // Every listed file is there with its size and hash; redactions are recorded.
    for (i, entry) in m["files"].as_array().unwrap().iter().enumerate() {
        let (name, data) = &files[i + 1];
        assert_eq!(entry["name"], name.as_str());
        assert_eq!(entry["size"], data.len());
    }
    let redacted: u64 = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["redacted"].as_object().unwrap().values())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(redacted > 0);
    let registry: Value = serde_json::from_slice(&files.iter().find(|(n, _)| n == "registry.json").unwrap().1).unwrap();
    assert_eq!(registry["models"].as_array().unwrap().len(), 3, "{registry}");

    let root_path = root.display().to_string();
    assert_clean(
        &files,
        &[
            RUNTIME_KEY,
            REGISTRY_TOKEN,
            ENV_PASSWORD,
            URL_PASSWORD,
            LOG_BEARER,
            LOG_PROMPT,
            LOG_OUTPUT,
            &admin.secret,
            &bootstrap,
            &root_path,
            "planted-user",
            ARG_SECRET,
            WEBHOOK_SIG,
            CRASH_PROMPT,
        ],
    );

    // Bounded: 7 daily logs and 3 worker logs of 3 MiB each (30 MiB) give at most the caps.
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    assert!(total <= 16 << 20, "uncompressed {total} bytes, above the 16 MiB cap");
    let logs: u64 = files.iter().filter(|(n, _)| n.starts_with("logs/")).map(|(_, d)| d.len() as u64).sum();
    assert!(logs <= 8 << 20, "logs {logs} bytes, above the 8 MiB cap");
    println!(
        "bundle of a home with 3 models and 30 MiB of logs: {} bytes compressed, {total} uncompressed, {} files, made in {:.2} s",
        bytes.len(),
        files.len(),
        elapsed.as_secs_f64()
    );
}

#[tokio::test]
async fn bundle_job_over_http_is_admin_only_and_downloadable() {
    let daemon = Daemon::with_config("");
    let read = daemon.key(&["read"]).await;
    let denied = daemon.request(Method::POST, "/api/v1/diagnostics/bundle", Some(&read.secret)).send().await.unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let resp =
        daemon.request(Method::POST, "/api/v1/diagnostics/bundle", Some(daemon.admin_key())).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let job: Value = resp.json().await.unwrap();
    assert_eq!(job["kind"], "diagnostics");
    let id = job["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let (code, j) = daemon.get(&format!("/api/v1/jobs/{id}"), Some(daemon.admin_key())).await;
        assert_eq!(code, StatusCode::OK, "{j}");
        if j["state"] == "succeeded" {
            break j;
        }
        assert!(!matches!(j["state"].as_str(), Some("failed" | "cancelled")), "bundle job ended: {j}");
        assert!(Instant::now() < deadline, "bundle job still {j}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let download = done["detail"]["download"].as_str().expect("download path").to_owned();
    let denied = daemon.request(Method::GET, &download, Some(&read.secret)).send().await.unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let resp = daemon.request(Method::GET, &download, Some(daemon.admin_key())).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/gzip");
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(done["detail"]["size"], bytes.len());
    let files = unpack(&bytes);
    manifest(&files);
    let status =
        files.iter().find(|(n, _)| n == "daemon/status.json").expect("the daemon's status is in its own bundle");
    let status: Value = serde_json::from_slice(&status.1).unwrap();
    assert!(status["workers"].is_array(), "{status}");
    assert_clean(&files, &[daemon.admin_key(), &read.secret, &daemon.home().root().display().to_string()]);
    let (code, _) = daemon.get("/api/v1/diagnostics/bundles/0123456789abcdef", Some(daemon.admin_key())).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_crashing_worker_yields_a_report_and_the_daemon_keeps_serving() {
    let config = r#"
[workers.crashy]
command = ["sh", "-c", "echo planted-crash-context >&2; sleep 1; kill -SEGV $$"]
restart = "never"
"#;
    let daemon = Daemon::with_config(config);
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let out = daemon.home().run(&["diag", "crashes", "--json"]);
        assert!(out.status.success(), "{}", describe(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(r) = v["crashes"].as_array().and_then(|a| a.first()).cloned() {
            break r;
        }
        assert!(Instant::now() < deadline, "no crash report after 30 s; daemon stderr:\n{}", daemon.stderr());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(report["worker"], "crashy");
    assert_eq!(report["signal_name"], "SIGSEGV");
    assert_eq!(report["kind"], "signal");
    assert_eq!(report["build"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(report["stderr_tail"].as_str().unwrap().contains("planted-crash-context"), "{report}");
    // The daemon still serves, and shows the worker's last exit.
    let (code, _) = daemon.get("/healthz", None).await;
    assert_eq!(code, StatusCode::OK);
    let (code, status) = daemon.get("/api/v1/status", Some(daemon.admin_key())).await;
    assert_eq!(code, StatusCode::OK);
    let w = status["workers"].as_array().unwrap().iter().find(|w| w["name"] == "crashy").unwrap().clone();
    assert_eq!(w["last_exit"]["signal"], 11, "{w}");
    // The human listing names it.
    let text = daemon.home().run_ok(&["diag", "crashes"]);
    assert!(text.contains("worker crashy: SIGSEGV"), "{text}");
}

#[tokio::test]
async fn doctor_reports_problems_with_their_fixes() {
    use std::os::unix::fs::PermissionsExt;
    let daemon = Daemon::with_config("");
    let out = daemon.home().run(&["diag", "doctor", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("doctor JSON: {}", describe(&out)));
    let checks = v["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for want in [
        "cpu features",
        "sandbox",
        "disk space",
        "listen address",
        "home permissions",
        "token file permissions",
        "models",
        "runtimes",
        "clock",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for c in checks {
        assert!(["ok", "warn", "fail", "skip"].contains(&c["status"].as_str().unwrap()), "{c}");
        if c["status"] == "warn" || c["status"] == "fail" {
            assert!(c["fix"].as_str().is_some_and(|f| !f.is_empty()), "a problem without a fix: {c}");
        }
    }
    let status = |name: &str| checks.iter().find(|c| c["name"] == name).unwrap()["status"].as_str().unwrap().to_owned();
    assert_eq!(status("home permissions"), "ok");
    assert_eq!(status("listen address"), "ok");
    // A token file others can read fails, with the fix, and the exit code says so.
    let token = daemon.home().file("bootstrap.token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = daemon.home().run(&["diag", "doctor"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[FAIL] token file permissions") && text.contains("fix: run `chmod 600"), "{text}");
}

/// The daemon's doctor and telemetry views over HTTP: admin only, the checks the CLI prints
/// (listen address "ok" from inside the daemon), telemetry off by default, the preview carrying
/// the report version and agreeing with `ondevice telemetry preview --json`.
#[tokio::test]
async fn doctor_and_telemetry_over_http_are_admin_only_and_match_the_cli() {
    let daemon = Daemon::with_config("");
    let read = daemon.key(&["read"]).await;
    for path in ["/api/v1/diagnostics/doctor", "/api/v1/telemetry", "/api/v1/telemetry/preview"] {
        let (code, _) = daemon.get(path, Some(&read.secret)).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{path} with a read key");
        let denied = daemon.request(Method::POST, path, Some(daemon.admin_key())).send().await.unwrap();
        assert_eq!(denied.status(), StatusCode::METHOD_NOT_ALLOWED, "{path} has no write method");
    }
    let (code, v) = daemon.get("/api/v1/diagnostics/doctor", Some(daemon.admin_key())).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let checks = v["checks"].as_array().expect("checks");
    let find = |name: &str| checks.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{name} in {v}"));
    let disk = find("disk space");
    assert!(["ok", "warn", "fail"].contains(&disk["status"].as_str().unwrap()), "{disk}");
    assert!(disk["detail"].as_str().is_some_and(|d| !d.is_empty()), "{disk}");
    let listen = find("listen address");
    assert_eq!(listen["status"], "ok", "{listen}");
    assert!(listen["detail"].as_str().unwrap().contains("the daemon is listening"), "{listen}");
    assert_eq!(find("home permissions")["status"], "ok");
    assert_eq!(find("models")["detail"], "0 models verified", "{v}");
    // The same checks, by name and order, as the CLI prints.
    let out = daemon.home().run(&["diag", "doctor", "--json"]);
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("doctor JSON: {}", describe(&out)));
    let names = |v: &Value| v["checks"].as_array().unwrap().iter().map(|c| c["name"].clone()).collect::<Vec<_>>();
    assert_eq!(names(&v), names(&cli));

    let (code, t) = daemon.get("/api/v1/telemetry", Some(daemon.admin_key())).await;
    assert_eq!(code, StatusCode::OK, "{t}");
    assert!(t["state"] == "off" || t["state"] == "disabled_by_environment", "off by default: {t}");
    assert_eq!(t["sending"], false);
    assert_eq!(t["pending"], 0);
    let cli: Value = serde_json::from_str(&daemon.home().run_ok(&["telemetry", "status", "--json"])).unwrap();
    assert_eq!(t, cli, "the API and the CLI agree");
    let (code, p) = daemon.get("/api/v1/telemetry/preview", Some(daemon.admin_key())).await;
    assert_eq!(code, StatusCode::OK, "{p}");
    assert_eq!(p["next"]["report_version"], t["report_version"], "{p}");
    assert_eq!(p["queued"], serde_json::json!([]));
    let cli: Value = serde_json::from_str(&daemon.home().run_ok(&["telemetry", "preview", "--json"])).unwrap();
    for field in ["report_version", "install_id", "os", "arch", "cpu_class", "cores", "memory", "models", "seq"] {
        assert_eq!(p["next"][field], cli["next"][field], "{field}");
    }
}

/// The embedded engine's worker aborting after it loaded the model (as a crash inside llama.cpp
/// would) gives a report tagged with the model's digest; the daemon keeps serving. Runs llama.cpp
/// (the `llama` test group).
#[tokio::test]
async fn engine_worker_abort_is_reported_with_the_model_digest() {
    let Some(file) = crate::common::test_model("diag::engine_worker_abort_is_reported_with_the_model_digest") else {
        return;
    };
    let daemon = Daemon::start_with_env(Home::new(), &[("ONDEVICE_TEST_WORKER_CRASH", "abort")]);
    let out = daemon.home().run(&["models", "import", file.to_str().unwrap(), "--name", "smollm2"]);
    assert!(out.status.success(), "import: {}", describe(&out));
    let (_, model) = daemon.get("/api/v1/models/smollm2%3Alatest", Some(daemon.admin_key())).await;
    let digest = model["digest"].as_str().expect("digest").to_owned();
    let infer = daemon.key(&["infer"]).await;
    // The request waits for a worker that keeps crashing; it is dropped at the end.
    let request = daemon
        .request(Method::POST, "/v1/chat/completions", Some(&infer.secret))
        .json(
            &serde_json::json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
        )
        .send();
    let request = tokio::spawn(request);
    let deadline = Instant::now() + Duration::from_secs(120);
    let report = loop {
        let out = daemon.home().run(&["diag", "crashes", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", describe(&out)));
        if let Some(r) = v["crashes"].as_array().and_then(|a| a.first()).cloned() {
            break r;
        }
        assert!(Instant::now() < deadline, "no crash report; daemon stderr:\n{}", daemon.stderr());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(report["signal_name"], "SIGABRT", "{report}");
    assert_eq!(report["model_digest"], digest.as_str(), "{report}");
    assert!(report["worker"].as_str().unwrap().starts_with("engine-"), "{report}");
    assert!(report["stderr_tail"].as_str().unwrap().contains("ONDEVICE_TEST_WORKER_CRASH=abort"), "{report}");
    let (code, _) = daemon.get("/healthz", None).await;
    assert_eq!(code, StatusCode::OK);
    request.abort();
}
