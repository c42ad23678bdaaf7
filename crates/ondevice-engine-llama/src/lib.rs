//! The embedded llama.cpp engine (through `llama-cpp-2`) and the `ondevice worker` server that
//! exposes it to the daemon on a Unix socket ([`ondevice_runtime::wire`]).
//!
//! - [`Engine`]: one loaded GGUF model on a dedicated OS thread. Generations are continuously
//!   batched: every step decodes one `llama_batch` that carries the next token of each running
//!   sequence plus prompt chunks of newly admitted ones; each sequence has its own seq id, position
//!   and sampler chain. Requests beyond the slots wait in a bounded queue, beyond it they get
//!   [`ondevice_runtime::RuntimeError::Overloaded`]. Dropping a generation's receiver cancels it.
//! - [`template`]: faithful chat-template rendering (the GGUF's `tokenizer.chat_template`) with
//!   minijinja, bounded by fuel and an output cap, without filesystem access.
//! - [`server`]: the worker protocol over HTTP/1.1 on a Unix socket (axum).
//! - [`threads::physical_cores`]: the default thread count; [`contention`]: fewer threads while
//!   another process competes for the cores (per-step latency against the engine's own baseline).
//! - Embeddings run on the same thread, one chunk per loop turn between generation steps (a
//!   generative model's input is split into chunks of about 100 ms of work while a generation
//!   runs), and stop when their caller goes away or their deadline passes.
//!
//! # CPU features of the llama.cpp build (a deliberate choice)
//!
//! `llama-cpp-sys-2`'s build script decides how ggml is compiled for the CPU:
//! with `RUSTFLAGS=-C target-cpu=native` it sets `GGML_NATIVE=ON` (`-march=native`: fastest, but the
//! binary only runs on CPUs like the build machine); otherwise it sets `GGML_NATIVE=OFF` and turns on
//! exactly the ggml SIMD options (`GGML_AVX`, `GGML_AVX2`, `GGML_FMA`, `GGML_F16C`, …) that match the
//! Rust target features (`CARGO_CFG_TARGET_FEATURE`). Runtime dispatch over all CPU variants
//! (`GGML_CPU_ALL_VARIANTS` + `GGML_BACKEND_DL`) only comes with its `dynamic-backends` feature, which
//! needs shared libraries installed beside the binary.
//!
//! We build with **no `target-cpu`** (nothing in the repository sets `target-cpu=native`), so the
//! build script sets `GGML_NATIVE=OFF`. ggml's CMake then enables its x86-64-v3 kernel set by default
//! (`GGML_AVX`, `GGML_AVX2`, `GGML_FMA`, `GGML_F16C`, `GGML_BMI2`; checked in the generated
//! `CMakeCache.txt`); `.cargo/config.toml` states these `GGML_*` options explicitly so the choice is
//! visible and cannot drift with an ggml default. Only the C/C++ kernels get them; the Rust code stays
//! at the target baseline. The price: the worker needs an AVX2 CPU (every x86-64 CPU since about
//! 2013-2015); `ondevice worker` checks at start and exits with a clear message on older CPUs, and the
//! daemon, which has no such requirement, reports the worker's failure. True runtime dispatch
//! (`GGML_CPU_ALL_VARIANTS` + `GGML_BACKEND_DL`) needs the `dynamic-backends` feature and shared
//! libraries shipped beside the binary; that is the packaging issue's next step. On aarch64 ggml
//! ignores the x86 options and uses NEON (armv8-a).
//!
//! Threads: the `openmp` feature is **on** (ggml's threads synchronise through OpenMP, as in
//! llama.cpp's own builds; needs `libgomp1` at run time). ggml's built-in thread pool spins at its
//! barriers; on a 2-core machine with any other load, 2 engine threads then generated at 6 tokens/s
//! where 1 thread made 92 (SmolLM2-135M). Off: GPU backends, `mtmd`. On: `common` (llama.cpp's
//! exception-safe grammar sampler and the JSON-schema-to-GBNF converter; `llama-cpp-sys-2` builds the
//! common library in any case).
//!
//! # Model file
//!
//! The model is opened read-only by llama.cpp and mapped with `mmap` (`use_mmap` stays on, `mlock`
//! off); nothing in this crate writes to it.
#![warn(missing_docs)]

mod batch;
pub mod contention;
mod embed;
mod engine;
mod error;
mod sampling;
pub mod server;
pub mod template;
pub mod threads;

pub use engine::{EmbedLimits, EmbedStats, Engine, EngineConfig, GenerationEvents, ModelInfo, backend};
pub use error::EngineError;
