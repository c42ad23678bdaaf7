//! Fallback chains through the real daemon: the first runtime of a model's chain fails, the next
//! answers, the answer names it, the breaker opens and `/readyz` reports the degraded state; a
//! runtime nobody uses is found dead by its periodic health checks.
//!
//! The answering runtime is a real llama.cpp server (PyPI `xllamacpp`, as in the adapter tests)
//! serving the real SmolLM2 GGUF; the failing one is an OpenAI-compatible runtime whose address has
//! nothing listening (a crashed remote). Without `$ONDEVICE_TEST_MODELS_DIR` the test prints a
//! note and returns; with it, a missing model or a missing xllamacpp fails the test.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Daemon, test_model};

/// A llama.cpp server process, killed on drop.
struct LlamaServer {
    child: Child,
    url: String,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn llama_server(model: &std::path::Path) -> LlamaServer {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/llama_server.py");
    // A test peer, not a daemon worker: spawned directly.
    #[allow(clippy::disallowed_methods)]
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .arg(model)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 must be installed to run the llama.cpp server (pip install xllamacpp)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("ADDR ").unwrap_or("").to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "xllamacpp did not start (pip install xllamacpp); got {line:?}");
    LlamaServer { child, url }
}

/// A loopback port with nothing listening.
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_next_runtime_answers_when_the_first_fails_and_the_breaker_opens() {
    let Some(model) = test_model("the_next_runtime_answers_when_the_first_fails") else { return };
    let server = llama_server(&model);
    let daemon = Daemon::with_config(&format!(
        r#"
[runtimes.crashed]
kind = "openai"
base_url = "http://127.0.0.1:{dead}"
timeout_s = 10

[runtimes.llama]
kind = "llama-server"
base_url = "{url}"
timeout_s = 120

[runtimes.watched]
kind = "openai"
base_url = "http://127.0.0.1:{dead}"
health = {{ period_s = 1, timeout_s = 1, failure_threshold = 2 }}

[inference.breaker]
failures = 2
open_s = 600

[inference.models."smollm2:latest"]
runtimes = ["crashed", "llama"]
"#,
        dead = dead_port(),
        url = server.url,
    ));
    let infer = daemon.key(&["infer"]).await;
    let ask = || async {
        let body = json!({"model": "smollm2", "temperature": 0, "max_tokens": 40, "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]});
        let resp = daemon
            .request(Method::POST, "/v1/chat/completions", Some(&infer.secret))
            .timeout(Duration::from_secs(120))
            .json(&body)
            .send()
            .await
            .expect("POST /v1/chat/completions");
        let adapter = resp.headers().get("x-ondevice-adapter").map(|v| v.to_str().unwrap().to_owned());
        let status = resp.status();
        let v: Value = resp.json().await.expect("JSON");
        assert_eq!(status, StatusCode::OK, "{v}");
        (adapter, v["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned())
    };

    for _ in 0..2 {
        let (adapter, text) = ask().await;
        assert_eq!(adapter.as_deref(), Some("llama"), "the fallback runtime answered and says so");
        assert!(text.contains("Paris"), "{text:?}");
    }

    // Two failures opened the first runtime's circuit; it is skipped from now on.
    let (status, runtimes) = daemon.get("/api/v1/runtimes", Some(&infer.secret)).await;
    assert_eq!(status, StatusCode::OK, "{runtimes}");
    let list = runtimes["runtimes"].as_array().expect("runtime list");
    let crashed = list.iter().find(|r| r["name"] == "crashed").expect("crashed runtime listed");
    assert_eq!(crashed["circuit"], "open", "{crashed}");
    let llama = list.iter().find(|r| r["name"] == "llama").expect("llama runtime listed");
    assert_eq!(llama["circuit"], "closed", "{llama}");
    assert_eq!(llama["health"], "ready", "{llama}");

    // /readyz: still serving (200) but degraded; the reason only with a key.
    let (status, body) = daemon.get("/readyz", None).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("degraded")), "{body}");
    assert!(body.get("details").is_none(), "no details without a key: {body}");
    let (_, body) = daemon.get("/readyz", Some(&infer.secret)).await;
    let why = body["details"]["degraded"].as_str().expect("degraded reason");
    assert!(why.contains("crashed") && why.contains("open"), "{why}");

    let (adapter, text) = ask().await;
    assert_eq!(adapter.as_deref(), Some("llama"));
    assert!(text.contains("Paris"), "{text:?}");

    // A runtime no request ever used is found dead by its periodic health checks.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = daemon.get("/readyz", Some(&infer.secret)).await;
        let why = body["details"]["degraded"].as_str().unwrap_or_default().to_owned();
        // At least the threshold (2) of failed checks; on a slow machine more may have run by
        // the time this looks.
        let failed = why
            .split_once("\"watched\" unhealthy (")
            .and_then(|(_, rest)| rest.split_once(' '))
            .and_then(|(n, rest)| rest.starts_with("failed health checks").then(|| n.parse::<u32>().ok()).flatten());
        if failed.is_some_and(|n| n >= 2) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the dead runtime was never reported: {why}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, runtimes) = daemon.get("/api/v1/runtimes", Some(&infer.secret)).await;
    let watched = runtimes["runtimes"].as_array().unwrap().iter().find(|r| r["name"] == "watched").cloned();
    assert_eq!(watched.as_ref().map(|w| w["health"].clone()), Some(json!("unhealthy")), "{runtimes}");
    drop(server);
}
