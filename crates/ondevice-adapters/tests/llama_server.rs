//! Kinds `llama-server` and `openai` against a real llama.cpp server: PyPI `xllamacpp` (llama.cpp's
//! server compiled as a Python extension) serving SmolLM2-135M on 127.0.0.1 with a free port.
//!
//! Needs `ONDEVICE_TEST_MODELS_DIR` (with `SmolLM2-135M-Instruct.Q4_1.gguf`) and `python3 -c "import
//! xllamacpp"`. Without the variable the tests print `skipped:` and pass; with it they must run (CI sets
//! it and installs xllamacpp), so a missing peer fails them.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use ondevice_adapters::HttpOptions;
use ondevice_adapters::openai::OpenAiAdapter;
use ondevice_config::Secret;
use ondevice_runtime::{
    ChatMessage, EmbedRequest, Event, FinishReason, GenerateRequest, Health, ModelSpec, Prompt, Role, Runtime,
    RuntimeError, Sampling,
};

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

fn model_file() -> Option<PathBuf> {
    ondevice_testkit::smollm2("llama_server")
}

fn start(model: &std::path::Path) -> LlamaServer {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/llama_server.py");
    // A test peer, not a daemon worker: the supervisor is not involved, so spawn directly.
    #[allow(clippy::disallowed_methods)]
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .arg(model)
        .args(["--ctx", "2048", "--parallel", "2", "--embedding"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 must be installed to run the llama.cpp server (pip install xllamacpp)");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let server = LlamaServer { url: line.trim().strip_prefix("ADDR ").unwrap_or("").to_owned(), child };
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "xllamacpp did not start (is it installed? pip install xllamacpp); got {line:?}"
    );
    server
}

fn options(url: &str) -> HttpOptions {
    HttpOptions { timeout: Duration::from_secs(120), ..HttpOptions::new(url) }
}

fn capital_question() -> GenerateRequest {
    GenerateRequest {
        model: "smollm2".into(),
        prompt: Prompt::Chat(vec![
            ChatMessage::new(Role::System, "You are a helpful assistant."),
            ChatMessage::new(Role::User, "What is the capital of France?"),
        ]),
        sampling: Sampling { temperature: Some(0.0), max_tokens: Some(40), ..Default::default() },
        keep_alive: None,
    }
}

async fn collect(rt: &dyn Runtime, request: GenerateRequest) -> (String, Event, usize) {
    let mut stream = rt.generate(&ModelSpec::named("smollm2"), request).await.unwrap();
    let (mut text, mut chunks) = (String::new(), 0);
    while let Some(item) = stream.next().await {
        match item.unwrap() {
            Event::Token(t) => {
                text.push_str(&t);
                chunks += 1;
            }
            done @ Event::Done { .. } => {
                assert!(stream.next().await.is_none(), "nothing may follow Done");
                return (text, done, chunks);
            }
        }
    }
    panic!("stream ended without Done: {text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_server_chat_stream_embed_tokenize_and_errors() {
    let Some(model) = model_file() else { return };
    let server = start(&model);
    let rt = OpenAiAdapter::llama_server("local-llama", options(&server.url)).unwrap();
    assert_eq!(rt.kind(), "llama-server");
    assert_eq!(rt.health().await, Health::Ready);
    rt.load(&ModelSpec::named("smollm2")).await.unwrap();

    let (text, done, chunks) = collect(&rt, capital_question()).await;
    assert!(text.contains("Paris"), "greedy answer lacks Paris: {text:?}");
    assert!(chunks > 1, "the answer must arrive as several streamed chunks, got {chunks}");
    let Event::Done { finish, usage, timings } = done else { unreachable!() };
    assert_eq!(finish, FinishReason::Stop);
    assert!(usage.prompt_tokens > 5 && usage.completion_tokens > 0, "{usage:?}");
    assert!(timings.is_some(), "llama-server reports timings");

    // Raw completion with a length stop.
    let raw = GenerateRequest {
        prompt: Prompt::Text { prompt: "The capital of France is".into(), raw: true },
        sampling: Sampling { temperature: Some(0.0), max_tokens: Some(3), ..Default::default() },
        ..capital_question()
    };
    let (_, done, _) = collect(&rt, raw).await;
    assert!(matches!(done, Event::Done { finish: FinishReason::Length, usage, .. } if usage.completion_tokens == 3));

    let tokens = rt.tokenize(&ModelSpec::named("smollm2"), "hello world").await.unwrap();
    assert!(!tokens.is_empty() && tokens.len() < 5, "{tokens:?}");

    let e = rt
        .embed(
            &ModelSpec::named("smollm2"),
            EmbedRequest {
                model: "smollm2".into(),
                input: vec!["Paris is in France".into(), "Bananas are yellow".into()],
                normalize: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(e.vectors.len(), 2);
    assert!(e.vectors[0].len() >= 64, "dimension {}", e.vectors[0].len());
    let norm: f32 = e.vectors[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "normalized vector has norm {norm}");
    assert_ne!(e.vectors[0], e.vectors[1]);

    // The same server as plain kind `openai`, with a key it ignores: models listed, chat works.
    let openai = OpenAiAdapter::new(
        "lan",
        HttpOptions { api_key: Some(Secret::new("sk-test-123")), ..options(&format!("{}/v1/", server.url)) },
    )
    .unwrap();
    assert_eq!(openai.health().await, Health::Ready);
    let models = openai.list_models().await.unwrap();
    assert!(models.iter().any(|m| m.contains("SmolLM2")), "{models:?}");
    let (text, _, _) = collect(&openai, capital_question()).await;
    assert!(text.contains("Paris"), "{text:?}");
    assert!(matches!(openai.tokenize(&ModelSpec::named("smollm2"), "x").await, Err(RuntimeError::Unsupported { .. })));

    // A malformed request is the client's fault, not a reason to fall back.
    let bad = GenerateRequest {
        sampling: Sampling {
            max_tokens: Some(5),
            constraint: Some(ondevice_runtime::Constraint::Grammar("root ::= ((".into())),
            ..Default::default()
        },
        ..capital_question()
    };
    let err = match rt.generate(&ModelSpec::named("smollm2"), bad).await {
        Err(e) => e,
        Ok(mut s) => s.next().await.unwrap().unwrap_err(),
    };
    assert!(matches!(err, RuntimeError::InvalidRequest { .. }), "{err:?}");
    assert!(!err.to_string().contains("sk-test-123"), "{err}");

    // Server gone: unavailable (fallback-worthy), health unhealthy, key never shown.
    let url = server.url.clone();
    drop(server);
    let rt =
        OpenAiAdapter::new("lan", HttpOptions { api_key: Some(Secret::new("sk-test-123")), ..options(&url) }).unwrap();
    let err = rt.generate(&ModelSpec::named("smollm2"), capital_question()).await.err().expect("server is down");
    assert!(matches!(err, RuntimeError::Unavailable { .. }) && err.is_fallback(), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("sk-test-123"));
    assert!(matches!(rt.health().await, Health::Unhealthy(_)));
    assert!(matches!(rt.load(&ModelSpec::named("smollm2")).await, Err(RuntimeError::Unavailable { .. })));
}

#[tokio::test]
async fn dropping_the_stream_frees_the_slot() {
    let Some(model) = model_file() else { return };
    let server = start(&model);
    let rt = OpenAiAdapter::llama_server("local-llama", options(&server.url)).unwrap();
    let long = GenerateRequest {
        prompt: Prompt::Text { prompt: "Count from one to one thousand:".into(), raw: true },
        sampling: Sampling { temperature: Some(0.0), max_tokens: Some(1000), ..Default::default() },
        ..capital_question()
    };
    // Two slots: start and drop more generations than slots; if dropping did not cancel, the last
    // request would wait for 1000-token generations.
    for _ in 0..3 {
        let mut s = rt.generate(&ModelSpec::named("smollm2"), long.clone()).await.unwrap();
        assert!(matches!(s.next().await, Some(Ok(Event::Token(_)))));
        drop(s);
    }
    let (text, _, _) = tokio::time::timeout(Duration::from_secs(60), collect(&rt, capital_question())).await.unwrap();
    assert!(text.contains("Paris"), "{text:?}");
}
