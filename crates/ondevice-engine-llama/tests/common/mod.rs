//! Shared helpers: the test model from `$ONDEVICE_TEST_MODELS_DIR` and collecting event streams.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use ondevice_engine_llama::{Engine, EngineConfig, GenerationEvents};
use ondevice_runtime::{ChatMessage, Event, FinishReason, Prompt, Role, RuntimeError, Usage};

pub const MODEL: &str = ondevice_testkit::SMOLLM2;

/// The test model, as `ondevice-testkit` finds it (unset: `None` after a note; set but missing:
/// a panic naming the path).
pub fn model_path(test: &str) -> Option<PathBuf> {
    ondevice_testkit::smollm2(test)
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
