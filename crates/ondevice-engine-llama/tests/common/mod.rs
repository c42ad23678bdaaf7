//! Shared helpers: the test model from `$ONDEVICE_TEST_MODELS_DIR` and collecting event streams.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use ondevice_engine_llama::{Engine, EngineConfig, GenerationEvents};
use ondevice_runtime::{ChatMessage, Event, FinishReason, Prompt, Role, RuntimeError, Usage};

pub const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The test model, or `None` (after printing why) when the models directory is not configured; a
/// panic naming the path when it is configured and the model is missing.
pub fn model_path(test: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("ONDEVICE_TEST_MODELS_DIR") else {
        println!("skipped: {test}: ONDEVICE_TEST_MODELS_DIR is not set");
        return None;
    };
    let path = PathBuf::from(dir).join(MODEL);
    assert!(
        path.is_file(),
        "ONDEVICE_TEST_MODELS_DIR is set but {} is missing: run scripts/fetch-demo-models.sh and point the \
         variable at the directory it prints",
        path.display()
    );
    Some(path)
}

pub fn engine(path: PathBuf, parallel: u32, queue: usize) -> Engine {
    let mut config = EngineConfig::new(path);
    config.parallel = parallel;
    config.queue = queue;
    config.ctx_per_slot = Some(512);
    Engine::load(config).expect("the test model loads")
}

pub fn paris() -> Prompt {
    Prompt::Chat(vec![
        ChatMessage::new(Role::System, "You are a helpful assistant."),
        ChatMessage::new(Role::User, "What is the capital of France?"),
    ])
}

/// The whole text of a generation and how it ended.
#[derive(Debug)]
pub struct Outcome {
    pub text: String,
    pub finish: FinishReason,
    pub usage: Usage,
}

pub async fn collect(mut events: GenerationEvents) -> Result<Outcome, RuntimeError> {
    let mut text = String::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(120), events.recv()).await.expect("the engine answers");
        match next.expect("the stream ends with Done or an error")? {
            Event::Token(t) => text.push_str(&t),
            Event::Done { finish, usage, timings } => {
                assert!(timings.is_some(), "the engine reports timings");
                assert!(events.recv().await.is_none(), "nothing follows Done");
                return Ok(Outcome { text, finish, usage });
            }
        }
    }
}

/// Polls until `cond` holds (engines free slots asynchronously), failing after a generous limit.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..600 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}
