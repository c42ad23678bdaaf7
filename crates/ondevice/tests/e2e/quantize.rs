//! Quantizing into the registry through the real daemon (`quantize` jobs), with the real SmolLM2
//! model imported as `smollm2:latest`: `ondevice quantize smollm2 --type Q8_0` registers
//! `smollm2-q8_0:latest` with its provenance and the result answers "Paris"; a daemon killed
//! with SIGKILL mid-quantize leaves no registered model, its task dies with it, and the restarted
//! daemon's cleanup leaves no staging file; a cancel does the same; a daemon killed during the
//! quality gate resumes the job without quantizing again; a `make_imatrix` job computes the
//! importance matrix itself (over HTTP and gRPC, resumed after SIGKILL, cancelled mid-matrix
//! leaving nothing); bad requests are refused before a job exists; all-MiniLM-L6-v2's
//! safetensors directory → F16 serves `/v1/embeddings` within cosine 0.999 of an independent
//! NumPy reference. Tests named `llama_*` run the engine (nextest `llama` group).

use std::path::Path;
use std::time::{Duration, Instant};

use ondevice_proto::v1 as pb;
use ondevice_proto::v1::models_service_client::ModelsServiceClient;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::common::{Daemon, Home, describe, test_model};

/// Writes a Hugging Face llama directory from a GGUF (shared with ondevice-quantize's tests).
#[path = "../../../ondevice-quantize/tests/support/mod.rs"]
mod llama_dir;

const WAIT: Duration = Duration::from_secs(600);

/// A daemon with the test model imported as `smollm2:latest`; its digest.
async fn setup(test: &str) -> Option<(Daemon, String)> {
    let file = test_model(test)?;
    let daemon = Daemon::start(Home::new());
    let out =
        daemon.home().run(&["models", "import", file.to_str().expect("utf-8 path"), "--name", "smollm2", "--json"]);
    assert!(out.status.success(), "import: {}", describe(&out));
    let m: Value = serde_json::from_slice(&out.stdout).expect("import json");
    Some((daemon, m["digest"].as_str().expect("digest").to_owned()))
}

/// `blobs/` entries that are not finished blobs (staging directories, temporary files).
fn staging_entries(home: &Path) -> Vec<String> {
    std::fs::read_dir(home.join("blobs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with("sha256-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Processes running `quantize-task` for this home's jobs (the task's cwd is in the home).
fn task_processes(home: &Path) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("quantize-task") && cmd.contains(&*home.to_string_lossy()) {
            found.push(pid);
        }
    }
    found
}

/// Sends `authorization: Bearer KEY` with every gRPC call.
#[derive(Clone)]
struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A gRPC `ModelsService` client with the daemon's admin key.
async fn models_client(daemon: &Daemon) -> ModelsServiceClient<InterceptedService<Channel, Bearer>> {
    let channel = tonic::transport::Endpoint::from_shared(daemon.url(""))
        .expect("endpoint")
        .connect()
        .await
        .expect("gRPC connect");
    let auth = format!("Bearer {}", daemon.admin_key()).parse().expect("metadata");
    ModelsServiceClient::with_interceptor(channel, Bearer(auth))
}

async fn job(daemon: &Daemon, id: &str) -> Value {
    let (status, v) = daemon.get(&format!("/api/v1/jobs/{id}"), Some(daemon.admin_key())).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v
}

/// Greedy chat through the daemon with the demo question: the answer names Paris.
async fn assert_answers_paris(daemon: &Daemon, model: &str) {
    let infer = daemon.key(&["infer"]).await;
    let body = json!({"model": model, "temperature": 0, "max_tokens": 40, "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"}]});
    let resp = daemon
        .request(Method::POST, "/v1/chat/completions", Some(&infer.secret))
        .timeout(WAIT)
        .json(&body)
        .send()
        .await
        .expect("chat");
    let v: Value = resp.json().await.expect("chat json");
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    println!("{model} answers: {answer:?}");
    assert!(answer.contains("Paris"), "{model}: {v}");
}

async fn start(daemon: &Daemon, body: Value) -> Value {
    let resp = daemon
        .request(Method::POST, "/api/v1/quantize", Some(daemon.admin_key()))
        .json(&body)
        .send()
        .await
        .expect("POST /api/v1/quantize");
    let status = resp.status();
    let v: Value = resp.json().await.expect("json");
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["kind"], "quantize", "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_smollm2_to_q8_0_is_registered_with_provenance_and_answers_paris() {
    let Some((daemon, parent_digest)) = setup("quantize::llama_smollm2_to_q8_0").await else { return };
    // The CLI submits the job, follows it and prints the finished job as JSON.
    let started = Instant::now();
    let out = daemon.home().run(&["quantize", "smollm2", "--type", "Q8_0", "--allow-requantize", "--json"]);
    let took = started.elapsed();
    assert!(out.status.success(), "quantize: {}", describe(&out));
    let done: Value = serde_json::from_slice(&out.stdout).expect("job json");
    assert_eq!((done["kind"].as_str(), done["state"].as_str()), (Some("quantize"), Some("succeeded")), "{done}");
    assert_eq!(done["detail"]["model"], "smollm2-q8_0:latest", "{done}");
    println!("quantize SmolLM2 Q4_1 → Q8_0 through the daemon: {:.1} s (job {})", took.as_secs_f64(), done["id"]);

    let out = daemon.home().run(&["models", "show", "smollm2-q8_0", "--json"]);
    assert!(out.status.success(), "show: {}", describe(&out));
    let m: Value = serde_json::from_slice(&out.stdout).expect("show json");
    assert_eq!((m["quantization"].as_str(), m["source"].as_str()), (Some("Q8_0"), Some("quantize:smollm2:latest")));
    assert_eq!(m["digest"], done["detail"]["digest"]);
    let p = &m["provenance"];
    assert_eq!(p["parent"], "smollm2:latest", "{m}");
    assert_eq!(p["parent_digest"], parent_digest.as_str());
    let r = &p["receipt"];
    let digest_hex = m["digest"].as_str().unwrap().trim_start_matches("sha256:");
    assert_eq!(r["output_sha256"], digest_hex, "{r}");
    assert_eq!(r["output_size"], m["size"]);
    assert_eq!(r["params"]["quant_type"], "Q8_0");
    assert_eq!(r["params"]["allow_requantize"], true);
    assert_eq!(r["inputs"][0]["sha256"], parent_digest.trim_start_matches("sha256:"), "inputs by content: {r}");
    assert!(r["tool"].as_str().is_some_and(|t| t.starts_with("ondevice ")), "{r}");
    assert!(r["llama_cpp"].as_str().is_some_and(|v| v.contains("llama-cpp-sys-2")), "{r}");
    assert!(r["source_sha256"].as_str().is_some_and(|s| s.len() == 64), "{r}");
    // People see it too.
    let text = daemon.home().run_ok(&["models", "show", "smollm2-q8_0"]);
    assert!(text.contains("provenance:") && text.contains("parent:       smollm2:latest"), "{text}");
    // The result runs: greedy chat names Paris.
    assert_answers_paris(&daemon, "smollm2-q8_0").await;
    // Nothing staged is left, and the same request again joins nothing (the job finished): it
    // runs again and registers the same bytes.
    assert!(staging_entries(&daemon.home().dir()).is_empty(), "{:?}", staging_entries(&daemon.home().dir()));
    let again = start(&daemon, json!({"source": "smollm2", "type": "Q8_0", "allow_requantize": true})).await;
    assert_ne!(again["id"], done["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_kill_9_mid_quantize_leaves_no_model_and_a_restart_cleans_up() {
    let Some((daemon, _)) = setup("quantize::llama_kill_9_mid_quantize").await else { return };
    let blobs_before: Vec<String> = std::fs::read_dir(daemon.home().dir().join("blobs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let body = json!({"source": "smollm2", "type": "Q8_0", "allow_requantize": true, "name": "killed:q8"});
    let job0 = start(&daemon, body.clone()).await;
    let id = job0["id"].as_str().unwrap().to_owned();
    // The same request while it runs joins it.
    let joined = start(&daemon, body).await;
    assert_eq!(joined["id"], id.as_str(), "the same source, parameters and name dedup");

    // Wait until the task is running (its process exists), then kill the daemon outright.
    let home_dir = daemon.home().dir();
    let deadline = Instant::now() + WAIT;
    loop {
        let j = job(&daemon, &id).await;
        assert!(j["state"] != "succeeded" && j["state"] != "failed", "finished before it could be killed: {j}");
        if !task_processes(&home_dir).is_empty() && j["state"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "the task never started: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let home = daemon.kill9();
    // The task dies with its daemon (parent-death signal); what it wrote stays in staging only.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !task_processes(&home_dir).is_empty() {
        assert!(Instant::now() < deadline, "the quantize task outlived its daemon: {:?}", task_processes(&home_dir));
        std::thread::sleep(Duration::from_millis(50));
    }
    let staged = staging_entries(&home_dir);
    assert!(staged.iter().all(|n| n.starts_with(".tmp-quantize-")), "only the staging directory: {staged:?}");
    let blobs_now: Vec<String> = std::fs::read_dir(home_dir.join("blobs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sha256-"))
        .collect();
    let mut before: Vec<String> = blobs_before.into_iter().filter(|n| n.starts_with("sha256-")).collect();
    before.sort();
    let mut now = blobs_now;
    now.sort();
    assert_eq!(now, before, "no new blob after SIGKILL");

    // Restarted: the job resumes from scratch; no model is registered meanwhile; cancel it.
    let daemon = Daemon::start(home);
    let (status, m) = daemon.get("/api/v1/models/killed%3Aq8", Some(daemon.admin_key())).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no registry row after SIGKILL: {m}");
    let resp = daemon
        .request(Method::DELETE, &format!("/api/v1/jobs/{id}"), Some(daemon.admin_key()))
        .send()
        .await
        .expect("cancel");
    let cancelled: Value = resp.json().await.expect("json");
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !staging_entries(&home_dir).is_empty() || !task_processes(&home_dir).is_empty() {
        assert!(Instant::now() < deadline, "left behind after cancel: {:?}", staging_entries(&home_dir));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = daemon.get("/api/v1/models/killed%3Aq8", Some(daemon.admin_key())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, roots_free) = daemon.get("/api/v1/models", Some(daemon.admin_key())).await;
    assert_eq!(roots_free.as_array().map(Vec::len), Some(1), "only the source model: {roots_free}");
}

/// A daemon killed with SIGKILL while the quality gate runs (after the quantized output's
/// checkpoint): the restarted daemon resumes the job from that checkpoint: the task checks the
/// staged file against its digest and measures it without quantizing again, and the model is
/// registered once, with the bytes of an uninterrupted job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_kill_9_during_the_quality_gate_resumes_without_quantizing_again() {
    interrupted_during_the_quality_gate("quantize::llama_kill_9_during_the_quality_gate", Stop::Kill9).await;
}

/// The same with a normal shutdown (SIGTERM): the daemon stops the task and keeps the job's
/// staged files and roots for the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_a_shutdown_during_the_quality_gate_resumes_at_the_next_start() {
    interrupted_during_the_quality_gate("quantize::llama_a_shutdown_during_the_quality_gate", Stop::Term).await;
}

/// How the daemon is stopped.
enum Stop {
    Kill9,
    Term,
}

async fn interrupted_during_the_quality_gate(test: &str, how: Stop) {
    let Some((daemon, _)) = setup(test).await else { return };
    let body = json!({"source": "smollm2", "type": "Q8_0", "allow_requantize": true, "name": "resumed:q8"});
    let id = start(&daemon, body).await["id"].as_str().unwrap().to_owned();
    // The stage after the checkpoint: the job stores a checkpoint before it reads the next line.
    let home_dir = daemon.home().dir();
    let deadline = Instant::now() + WAIT;
    loop {
        let j = job(&daemon, &id).await;
        assert!(j["state"] != "succeeded" && j["state"] != "failed", "ended before the quality gate: {j}");
        if j["detail"]["stage"] == "measuring quality" {
            break;
        }
        assert!(Instant::now() < deadline, "the quality gate never started: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let home = match how {
        Stop::Kill9 => daemon.kill9(),
        Stop::Term => {
            let (status, home) = daemon.stop();
            assert!(status.success(), "the daemon's exit: {status}");
            home
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !task_processes(&home_dir).is_empty() {
        assert!(Instant::now() < deadline, "the quantize task outlived its daemon");
        std::thread::sleep(Duration::from_millis(50));
    }
    let staging = home_dir.join("blobs").join(format!(".tmp-quantize-{id}"));
    let staged: Vec<String> = std::fs::read_dir(&staging)
        .expect("the staging directory stays for the resume")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(staged.iter().any(|n| n.ends_with(".partial")), "the quantized output is staged: {staged:?}");

    // Restarted: the job resumes from the quantized output and succeeds.
    let daemon = Daemon::start(home);
    let deadline = Instant::now() + WAIT;
    let done = loop {
        let j = job(&daemon, &id).await;
        if j["state"] != "running" && j["state"] != "queued" {
            break j;
        }
        assert!(Instant::now() < deadline, "the resumed job never ended: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("resumed after a stop during the quality gate: {done}");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["detail"]["resumed_from"], "quantized", "the task skipped quantizing: {done}");
    let (status, m) = daemon.get("/api/v1/models/resumed%3Aq8", Some(daemon.admin_key())).await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(m["digest"], done["detail"]["digest"]);
    let receipt = &m["provenance"]["receipt"];
    assert_eq!(receipt["output_sha256"], m["digest"].as_str().unwrap().trim_start_matches("sha256:"), "{receipt}");
    assert!(
        receipt["quality"]["perplexity"].as_f64().is_some_and(f64::is_finite),
        "measured after the resume: {receipt}"
    );
    let (_, models) = daemon.get("/api/v1/models", Some(daemon.admin_key())).await;
    let names: Vec<&str> = models.as_array().expect("models").iter().filter_map(|m| m["model"].as_str()).collect();
    assert_eq!(names.iter().filter(|n| **n == "resumed:q8").count(), 1, "registered once: {models}");
    assert_eq!(names.len(), 2, "the source and the result: {models}");
    assert!(staging_entries(&home_dir).is_empty(), "{:?}", staging_entries(&home_dir));
    // The same bytes as an uninterrupted job.
    let out = daemon.home().run(&[
        "quantize",
        "smollm2",
        "--type",
        "Q8_0",
        "--allow-requantize",
        "--name",
        "straight:q8",
        "--json",
    ]);
    assert!(out.status.success(), "quantize: {}", describe(&out));
    let straight: Value = serde_json::from_slice(&out.stdout).expect("job json");
    assert_eq!(straight["detail"]["resumed_from"], Value::Null, "{straight}");
    assert_eq!(straight["detail"]["digest"], done["detail"]["digest"], "{straight}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_quantize_requests_are_refused_before_a_job_exists() {
    let daemon = Daemon::start(Home::new());
    let gguf = daemon.home().root().join("small.gguf");
    crate::common::write_small_gguf(&gguf, 7);
    let cases = [
        (json!({"source": "nosuch:latest", "type": "Q8_0"}), StatusCode::NOT_FOUND, "neither a registered model"),
        (json!({"source": gguf, "type": "Q9_9"}), StatusCode::BAD_REQUEST, "Q9_9"),
        (json!({"source": gguf, "type": "IQ2_XS"}), StatusCode::BAD_REQUEST, "importance matrix"),
        (json!({"source": gguf, "type": "Q8_0", "tensor_types": ["attn_v"]}), StatusCode::BAD_REQUEST, "PATTERN=TYPE"),
        (json!({"source": gguf, "type": "Q8_0", "name": "../evil"}), StatusCode::BAD_REQUEST, ""),
        (json!({"source": gguf, "type": "Q8_0", "imatrix": "relative.dat"}), StatusCode::BAD_REQUEST, "absolute"),
        (
            json!({"source": gguf, "type": "Q4_K_M", "imatrix": gguf, "make_imatrix": true}),
            StatusCode::BAD_REQUEST,
            "make_imatrix (--make-imatrix) computes an importance matrix and imatrix (--imatrix) gives one: choose one",
        ),
        (json!({"source": gguf, "type": "F16", "make_imatrix": true}), StatusCode::BAD_REQUEST, "does not use"),
        (json!({"source": gguf, "type": "Q4_K_M", "make_imatrix": "yes"}), StatusCode::BAD_REQUEST, ""),
        (json!({"source": "", "type": "Q8_0"}), StatusCode::BAD_REQUEST, ""),
    ];
    for (body, want, needle) in cases {
        let resp = daemon
            .request(Method::POST, "/api/v1/quantize", Some(daemon.admin_key()))
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, want, "{body}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{body}: {message}");
    }
    // gRPC says the same for make_imatrix with an importance matrix file.
    let mut models = models_client(&daemon).await;
    let request = pb::QuantizeModelRequest {
        source: gguf.display().to_string(),
        r#type: "Q4_K_M".into(),
        imatrix: gguf.display().to_string(),
        make_imatrix: true,
        ..Default::default()
    };
    let refused = models.quantize_model(request).await.expect_err("make_imatrix with imatrix over gRPC");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("choose one"), "{refused:?}");
    // A read-only key may not start one.
    let read = daemon.key(&["read"]).await;
    let resp = daemon
        .request(Method::POST, "/api/v1/quantize", Some(&read.secret))
        .json(&json!({"source": gguf, "type": "Q8_0"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let (_, jobs) = daemon.get("/api/v1/jobs?kind=quantize", Some(daemon.admin_key())).await;
    assert_eq!(jobs.as_array().map(Vec::len), Some(0), "{jobs}");
    // The CLI says the same.
    let out = daemon.home().run(&["quantize", "nosuch", "--type", "Q8_0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a registered model"), "{}", describe(&out));
    // The CLI sends --make-imatrix to the daemon (which refuses it for F16) instead of refusing
    // it without --output.
    let out = daemon.home().run(&["quantize", gguf.to_str().expect("utf-8 path"), "--type", "F16", "--make-imatrix"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not use an importance matrix"), "{}", describe(&out));
}

/// The reference sentence vectors of all-MiniLM-L6-v2 (`crates/ondevice-quantize/tests/golden/minilm.json`,
/// a NumPy forward pass over the safetensors made by `scripts/golden-minilm.py`, independent of
/// llama.cpp): (text, unit vector) per sentence.
fn minilm_golden() -> Vec<(String, Vec<f64>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ondevice-quantize/tests/golden/minilm.json");
    let golden: Value = serde_json::from_slice(&std::fs::read(&path).expect("golden file")).expect("golden json");
    golden["sentences"]
        .as_array()
        .expect("sentences")
        .iter()
        .map(|s| (s["text"].as_str().expect("text").to_owned(), floats(&s["embedding"])))
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("vector").iter().map(|x| x.as_f64().expect("number")).collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// MiniLM's safetensors directory imported as a registry model → a `quantize` job to F16 → the
/// registered GGUF serves `/v1/embeddings` through the daemon: cosine("A man is eating food.",
/// "A man is eating a piece of bread.") = 0.7553 ± 0.002, and every sentence's vector is within
/// cosine 0.999 of the NumPy reference. Then the same directory as a path, provenance by digest,
/// and the source's blobs collectable once the jobs are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_minilm_directory_to_f16_through_the_daemon_embeds_like_the_numpy_reference() {
    let Some(dir) = ondevice_testkit::minilm("quantize::llama_minilm_directory_to_f16") else { return };
    let daemon = Daemon::start(Home::new());
    let out = daemon.home().run(&["models", "import", dir.to_str().expect("utf-8 path"), "--name", "minilm", "--json"]);
    assert!(out.status.success(), "import: {}", describe(&out));
    let parent: Value = serde_json::from_slice(&out.stdout).expect("import json");
    assert_eq!(parent["format"], "safetensors");

    // A safetensors registry model: the job recreates its directory from the blobs and converts it.
    let out = daemon.home().run(&["quantize", "minilm", "--type", "F16", "--json"]);
    assert!(out.status.success(), "quantize: {}", describe(&out));
    let done: Value = serde_json::from_slice(&out.stdout).expect("job json");
    assert_eq!(
        (done["state"].as_str(), done["detail"]["model"].as_str()),
        (Some("succeeded"), Some("minilm-f16:latest"))
    );
    let (status, m) = daemon.get("/api/v1/models/minilm-f16%3Alatest", Some(daemon.admin_key())).await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!((m["format"].as_str(), m["architecture"].as_str()), (Some("gguf"), Some("bert")), "{m}");
    let p = &m["provenance"];
    assert_eq!((&p["parent"], &p["parent_digest"]), (&json!("minilm:latest"), &parent["digest"]), "{m}");
    let inputs: Vec<&str> =
        p["receipt"]["inputs"].as_array().expect("inputs").iter().filter_map(|i| i["name"].as_str()).collect();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(inputs.contains(&f), "{f} is an input by digest: {inputs:?}");
    }
    assert_eq!(p["receipt"]["params"]["source_format"], "safetensors");

    // The registered GGUF embeds through the daemon like the independent reference.
    let golden = minilm_golden();
    let texts: Vec<&str> = golden.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(&texts[..2], ["A man is eating food.", "A man is eating a piece of bread."]);
    let infer = daemon.key(&["infer"]).await;
    let resp = daemon
        .request(Method::POST, "/v1/embeddings", Some(&infer.secret))
        .timeout(WAIT)
        .json(&json!({"model": "minilm-f16", "input": texts}))
        .send()
        .await
        .expect("embeddings");
    assert_eq!(resp.status(), StatusCode::OK);
    let e: Value = resp.json().await.expect("embeddings json");
    let vectors: Vec<Vec<f64>> = e["data"].as_array().expect("data").iter().map(|d| floats(&d["embedding"])).collect();
    assert_eq!(vectors.len(), golden.len(), "{e}");
    for (v, (text, reference)) in vectors.iter().zip(&golden) {
        assert_eq!(v.len(), 384, "{text:?}");
        let c = cosine(v, reference);
        println!("minilm-f16 through /v1/embeddings: {text:?} is at cosine {c:.6} from the NumPy reference");
        assert!(c >= 0.999, "{text:?}: cosine {c} to the reference");
    }
    let pair = cosine(&vectors[0], &vectors[1]);
    println!("minilm-f16 through /v1/embeddings: cosine(sentence 0, sentence 1) = {pair:.6} (reference 0.755337)");
    assert!((pair - 0.7553).abs() <= 0.002, "cosine {pair}");

    // The same directory given as a path (what the CLI sends for a local directory): registered
    // with its provenance, without a parent.
    let out =
        daemon.home().run(&["quantize", dir.to_str().unwrap(), "--type", "F16", "--name", "minilm-path:f16", "--json"]);
    assert!(out.status.success(), "quantize: {}", describe(&out));
    let (_, by_path) = daemon.get("/api/v1/models/minilm-path%3Af16", Some(daemon.admin_key())).await;
    assert_eq!(by_path["provenance"]["receipt"]["source_sha256"], p["receipt"]["source_sha256"], "same inputs");
    assert_eq!(by_path["provenance"]["parent"], Value::Null);
    assert_eq!(by_path["source"], format!("quantize:{}", std::fs::canonicalize(&dir).unwrap().display()));
    // The source's blobs were roots only while the jobs ran.
    assert!(staging_entries(&daemon.home().dir()).is_empty(), "{:?}", staging_entries(&daemon.home().dir()));
    let out = daemon.home().run(&["models", "rm", "minilm"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = daemon.home().run(&["models", "gc", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let gc: Value = serde_json::from_slice(&out.stdout).expect("gc json");
    assert!(gc["removed_blobs"].as_array().is_some_and(|b| b.len() >= 3), "the source's files are collectable: {gc}");
}

/// The local CLI path to MLX, no daemon: the Q4_1 test model widened to an F16 GGUF, then
/// `--format mlx --bits 4` writes an MLX-LM directory (weights, config with its quantization
/// block, tokenizer) with a progress line per stage and a receipt; a second run into the same
/// directory is refused and leaves it as it was. (The tensors themselves are checked against
/// mlx and mlx-lm in ondevice-quantize's `mlx` and `mlx_exact` tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_mlx_export_from_the_cli_writes_an_mlx_lm_directory() {
    let Some(file) = test_model("llama_mlx_export_from_the_cli_writes_an_mlx_lm_directory") else { return };
    let home = Home::new();
    let f16 = home.root().join("f16.gguf");
    let out = home.run(&[
        "quantize",
        file.to_str().expect("utf-8 path"),
        "--type",
        "F16",
        "--allow-requantize",
        "--no-quality",
        "--output",
        f16.to_str().expect("utf-8 path"),
    ]);
    assert!(out.status.success(), "F16: {}", describe(&out));
    let dir = home.root().join("mlx4");
    let dir_arg = dir.to_str().expect("utf-8 path");
    let args = ["quantize", f16.to_str().expect("utf-8 path"), "--format", "mlx", "--bits", "4", "--output", dir_arg];
    let out = home.run(&[&args[..], &["--json"]].concat());
    assert!(out.status.success(), "mlx: {}", describe(&out));
    let receipt: Value = serde_json::from_slice(&out.stdout).expect("receipt json");
    assert_eq!((receipt["bits"].as_u64(), receipt["group_size"].as_u64()), (Some(4), Some(64)), "{receipt}");
    // Progress goes to stderr (plain lines: not a terminal), ending at 100%.
    assert!(String::from_utf8_lossy(&out.stderr).contains("100%"), "{}", describe(&out));
    let config: Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization"], json!({"group_size": 64, "bits": 4, "mode": "affine"}), "{config}");
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(dir.join(f).is_file(), "{f} missing in {}", dir.display());
    }
    let before = std::fs::read(dir.join("model.safetensors")).unwrap();
    let again = home.run(&args);
    assert!(!again.status.success(), "a second export into the same directory must be refused");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"), "{}", describe(&again));
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), before, "the refused run changed the output");
}

/// A llama-family safetensors directory, written here from the SmolLM2 GGUF (every tensor
/// dequantized to BF16 under its Hugging Face name, q/k rows back in Hugging Face's order, its
/// tokenizer and chat template) → `ondevice quantize --type F16` → `ondevice quantize --type Q4_K_M
/// --make-imatrix` (an importance matrix computed with the engine over the shipped text) → imported
/// into the daemon → greedy chat through `/v1/chat/completions` answers with "Paris". (This source
/// was 4-bit (Q4_1) before: quantized to Q4_K_M a second time without an importance matrix the
/// 135M model's greedy answer drifts into French.) The daemon's job computes the same matrix:
/// a `quantize` job of the F16 file to IQ2_XS with `make_imatrix` (IQ2_XS without a matrix is
/// refused), its daemon killed with SIGKILL once the matrix is computed, resumes at the next start
/// with the checkpointed matrix (`resumed_from = "imatrix"`) and registers a model whose receipt
/// has the `--output` run's `imatrix_sha256` (the matrix depends on the source and the text, not
/// on the type, and is deterministic). Then gRPC's `QuantizeModel` with `make_imatrix` to Q4_K_M,
/// followed on its job stream through the matrix step to success, registers the `--output` run's
/// bytes with the same `imatrix_sha256`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_safetensors_directory_to_f16_then_q4_k_m_with_an_imatrix_answers_paris() {
    let Some(gguf) = test_model("quantize::llama_safetensors_directory_to_f16_then_q4_k_m") else { return };
    let home = Home::new();
    let dir = home.root().join("SmolLM2-135M-Instruct");
    std::fs::create_dir(&dir).expect("mkdir");
    llama_dir::write_llama_dir(&gguf, &dir);
    let f16 = home.root().join("smollm2-f16.gguf");
    let (dir_arg, f16_arg) = (dir.to_str().expect("utf-8 path"), f16.to_str().expect("utf-8 path"));
    let out = home.run(&["quantize", dir_arg, "--type", "F16", "--no-quality", "--output", f16_arg]);
    assert!(out.status.success(), "F16: {}", describe(&out));

    let q4 = home.root().join("smollm2-q4_k_m.gguf");
    let q4_arg = q4.to_str().expect("utf-8 path");
    // Longer than `Home::run` allows: the importance matrix is two 512-token passes of the F16
    // model with a callback on every product, tens of seconds on a busy 2-core machine.
    let started = Instant::now();
    let args =
        ["quantize", f16_arg, "--type", "Q4_K_M", "--make-imatrix", "--no-quality", "--output", q4_arg, "--json"];
    let out = home.command(&args).output().expect("ondevice quantize");
    assert!(out.status.success(), "Q4_K_M: {}", describe(&out));
    let receipt: Value = serde_json::from_slice(&out.stdout).expect("receipt json");
    println!("F16 → Q4_K_M with a computed importance matrix: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(receipt["params"]["quant_type"], "Q4_K_M", "{receipt}");
    assert!(receipt["imatrix_sha256"].as_str().is_some_and(|s| s.len() == 64), "{receipt}");
    assert!(receipt["params"]["imatrix_text_sha256"].as_str().is_some_and(|s| s.len() == 64), "{receipt}");

    let daemon = Daemon::start(home);
    // A type that needs an importance matrix is refused without one, and accepted with the
    // daemon's job computing it.
    let refused = daemon.home().run(&["quantize", f16_arg, "--type", "IQ2_XS", "--no-quality"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("needs an importance matrix"), "{}", describe(&refused));
    let started = Instant::now();
    let body = json!({"source": f16_arg, "type": "IQ2_XS", "make_imatrix": true, "no_quality": true});
    let id = start(&daemon, body).await["id"].as_str().expect("job id").to_owned();
    // Killed once the matrix is computed (the job stores the task's checkpoint before it reads
    // the next stage's line): the restarted daemon resumes with the matrix, not computing it again.
    let home_dir = daemon.home().dir();
    let mut seen: Vec<String> = Vec::new();
    loop {
        let j = job(&daemon, &id).await;
        assert!(j["state"] == "running" || j["state"] == "queued", "the job ended before it could be killed: {j}");
        if let Some(stage) = j["detail"]["stage"].as_str() {
            if seen.last().is_none_or(|l| l != stage) {
                seen.push(stage.to_owned());
            }
        }
        if j["detail"]["stage"] == "quantizing" {
            break;
        }
        assert!(started.elapsed() < WAIT, "the job never reached quantizing: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("stages before the kill: {seen:?}");
    assert!(seen.iter().any(|s| s == "computing importance matrix"), "the matrix is a step of the job: {seen:?}");
    let home = daemon.kill9();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !task_processes(&home_dir).is_empty() {
        assert!(Instant::now() < deadline, "the quantize task outlived its daemon");
        std::thread::sleep(Duration::from_millis(50));
    }
    let staged = staging_entries(&home_dir);
    assert!(staged.iter().all(|n| n.starts_with(".tmp-quantize-")), "only the staging directory: {staged:?}");
    let daemon = Daemon::start(home);
    let done = loop {
        let j = job(&daemon, &id).await;
        if matches!(j["state"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
            break j;
        }
        assert!(started.elapsed() < WAIT, "the resumed job never ended: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "F16 → IQ2_XS with a matrix computed by the job, killed and resumed: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["detail"]["resumed_from"], "imatrix", "resumed with the computed matrix: {done}");
    let model = done["detail"]["model"].as_str().expect("model").to_owned();
    assert_eq!(model, "smollm2-iq2_xs:latest", "{done}");
    let out = daemon.home().run(&["models", "show", &model, "--json"]);
    assert!(out.status.success(), "show: {}", describe(&out));
    let m: Value = serde_json::from_slice(&out.stdout).expect("show json");
    assert_eq!(m["quantization"], "IQ2_XS", "{m}");
    let job_receipt = &m["provenance"]["receipt"];
    assert_eq!(job_receipt["imatrix_sha256"], receipt["imatrix_sha256"], "the job's matrix is the CLI's: {m}");
    assert_eq!(job_receipt["params"]["imatrix_text_sha256"], receipt["params"]["imatrix_text_sha256"], "{m}");
    assert_eq!(job_receipt["source_sha256"], receipt["source_sha256"], "the same source: {m}");
    assert!(staging_entries(&daemon.home().dir()).is_empty(), "{:?}", staging_entries(&daemon.home().dir()));

    // The same over gRPC: QuantizeModel with make_imatrix streams the job to its end; the job
    // computes the matrix itself (uninterrupted this time) and registers a Q4_K_M whose matrix is
    // the CLI's and whose bytes are the `--output` run's (same source, type, matrix and text).
    let started = Instant::now();
    let request = pb::QuantizeModelRequest {
        source: f16_arg.to_owned(),
        r#type: "Q4_K_M".into(),
        name: "smollm2-grpc:q4_k_m".into(),
        make_imatrix: true,
        no_quality: true,
        ..Default::default()
    };
    let mut models = models_client(&daemon).await;
    let mut stream = models.quantize_model(request).await.expect("QuantizeModel").into_inner();
    let deadline = tokio::time::Instant::now() + WAIT;
    let (mut stages, mut last) = (Vec::<String>::new(), None::<pb::Job>);
    while let Some(j) = tokio::time::timeout_at(deadline, stream.message())
        .await
        .unwrap_or_else(|_| panic!("the gRPC job did not end within {WAIT:?}: {last:?}"))
        .expect("QuantizeModel stream")
    {
        let detail: Value = serde_json::from_str(&j.detail_json).expect("detail json");
        if let Some(stage) = detail["stage"].as_str() {
            if stages.last().is_none_or(|l| l != stage) {
                stages.push(stage.to_owned());
            }
        }
        last = Some(j);
    }
    let done = last.expect("at least one job message");
    println!(
        "F16 → Q4_K_M with a matrix computed by a job submitted over gRPC: {:.1} s, stages {stages:?}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!((done.kind.as_str(), done.state.as_str()), ("quantize", "succeeded"), "{done:?}");
    assert!(stages.iter().any(|s| s == "computing importance matrix"), "the stream shows the matrix step: {stages:?}");
    let detail: Value = serde_json::from_str(&done.detail_json).expect("detail json");
    assert_eq!(detail["model"], "smollm2-grpc:q4_k_m", "{detail}");
    assert_eq!(detail["resumed_from"], Value::Null, "a fresh job computes its matrix: {detail}");
    let m = models
        .get_model(pb::GetModelRequest { name: "smollm2-grpc:q4_k_m".into() })
        .await
        .expect("GetModel")
        .into_inner();
    assert_eq!((m.format.as_str(), m.quantization.as_str()), ("gguf", "Q4_K_M"), "{m:?}");
    assert_eq!(Some(m.digest.as_str()), detail["digest"].as_str(), "{m:?}");
    let provenance: Value = serde_json::from_str(&m.provenance_json).expect("provenance json");
    let grpc_receipt = &provenance["receipt"];
    assert_eq!(
        grpc_receipt["imatrix_sha256"], receipt["imatrix_sha256"],
        "the gRPC job's matrix is the CLI's: {provenance}"
    );
    assert_eq!(grpc_receipt["params"]["quant_type"], "Q4_K_M", "{provenance}");
    assert_eq!(grpc_receipt["params"]["imatrix_text_sha256"], receipt["params"]["imatrix_text_sha256"], "{provenance}");
    assert_eq!(
        grpc_receipt["output_sha256"], receipt["output_sha256"],
        "the bytes of the `--output` run: {provenance}"
    );
    assert_eq!(provenance["parent"], Value::Null, "a path source has no parent: {provenance}");
    assert!(staging_entries(&daemon.home().dir()).is_empty(), "{:?}", staging_entries(&daemon.home().dir()));

    let out = daemon.home().run(&["models", "import", q4_arg, "--name", "smollm2-q4km", "--json"]);
    assert!(out.status.success(), "import: {}", describe(&out));
    let (status, m) = daemon.get("/api/v1/models/smollm2-q4km%3Alatest", Some(daemon.admin_key())).await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(m["quantization"], "Q4_K_M", "the file type is Q4_K_M: {m}");
    assert_answers_paris(&daemon, "smollm2-q4km").await;
}

/// A `make_imatrix` job cancelled while the engine computes the importance matrix (`ondevice jobs
/// cancel`, after the first chunk is decoded): the job ends `cancelled`, its task process is gone,
/// its staging directory (with the half-computed matrix) is removed, no blob was added and no model
/// registered. The source is the Q4_1 test model as imported (requantized to Q4_K_M), so no
/// conversion runs first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_cancel_while_computing_the_importance_matrix_leaves_nothing_behind() {
    let Some((daemon, _)) = setup("quantize::llama_cancel_while_computing_the_importance_matrix").await else {
        return;
    };
    let home_dir = daemon.home().dir();
    let sha_blobs = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(home_dir.join("blobs"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("sha256-"))
            .collect();
        names.sort();
        names
    };
    let blobs_before = sha_blobs();
    let body = json!({"source": "smollm2", "type": "Q4_K_M", "allow_requantize": true, "make_imatrix": true,
        "no_quality": true, "name": "cancelled:q4"});
    let started = Instant::now();
    let id = start(&daemon, body).await["id"].as_str().expect("job id").to_owned();
    // Inside the matrix step, with the engine decoding: at least one chunk done, not all.
    let mut in_stage = None;
    let j = loop {
        let j = job(&daemon, &id).await;
        assert!(j["state"] == "running" || j["state"] == "queued", "the job ended before it could be cancelled: {j}");
        let stage = j["detail"]["stage"].as_str().unwrap_or_default();
        assert!(
            stage != "quantizing" && stage != "measuring quality",
            "past the matrix step before a chunk was seen with another to go (the text needs two chunks): {j}"
        );
        if stage == "computing importance matrix" {
            in_stage.get_or_insert_with(Instant::now);
            let (done, total) = (j["progress"]["done"].as_u64(), j["progress"]["total"].as_u64());
            if done.is_some_and(|d| d >= 1 && total.is_some_and(|t| d < t)) {
                break j;
            }
        }
        assert!(started.elapsed() < WAIT, "the matrix step never decoded a chunk: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "cancelling {:.1} s after the job started, {:.1} s into the matrix step (chunk {} of {})",
        started.elapsed().as_secs_f64(),
        in_stage.map_or(0.0, |t| t.elapsed().as_secs_f64()),
        j["progress"]["done"],
        j["progress"]["total"]
    );
    assert!(!task_processes(&home_dir).is_empty(), "the quantize task runs the engine");
    let staging = home_dir.join("blobs").join(format!(".tmp-quantize-{id}"));
    assert!(staging.is_dir(), "the job stages its files: {:?}", staging_entries(&home_dir));

    // `jobs cancel` returns once the job stopped; the job cleans up before it ends.
    let cancel_started = Instant::now();
    let out = daemon.home().run(&["jobs", "cancel", &id, "--json"]);
    assert!(out.status.success(), "cancel: {}", describe(&out));
    let cancelled: Value = serde_json::from_slice(&out.stdout).expect("cancel json");
    println!(
        "`ondevice jobs cancel` returned after {:.2} s: {}",
        cancel_started.elapsed().as_secs_f64(),
        cancelled["state"]
    );
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert!(
        !staging.exists() && staging_entries(&home_dir).is_empty(),
        "left behind: {:?}",
        staging_entries(&home_dir)
    );
    println!("quantize task processes when the cancel returned: {:?}", task_processes(&home_dir));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !task_processes(&home_dir).is_empty() {
        assert!(Instant::now() < deadline, "the task outlived its cancel: {:?}", task_processes(&home_dir));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let j = job(&daemon, &id).await;
    assert_eq!(j["state"], "cancelled", "{j}");
    assert_eq!(j["detail"]["digest"], Value::Null, "nothing was made: {j}");
    let (status, m) = daemon.get("/api/v1/models/cancelled%3Aq4", Some(daemon.admin_key())).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no model registered: {m}");
    let (_, models) = daemon.get("/api/v1/models", Some(daemon.admin_key())).await;
    assert_eq!(models.as_array().map(Vec::len), Some(1), "only the source model: {models}");
    assert_eq!(sha_blobs(), blobs_before, "no new blob after the cancel");
}
