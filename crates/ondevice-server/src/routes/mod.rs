//! HTTP handlers, one module per resource. Each handler carries its OpenAPI description; the
//! router in `lib.rs` groups them by the scope they require.

pub mod collections;
pub mod diagnostics;
pub mod health;
pub mod jobs;
pub mod keys;
pub(crate) mod lenient;
pub mod models;
pub mod ollama;
pub mod openai;
pub mod prompts;
pub mod quantize;
pub mod runtimes;
pub mod status;
pub mod workers;
pub mod ws;
