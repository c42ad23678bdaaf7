//! The real models the tests use, from `$ONDEVICE_TEST_MODELS_DIR` (fetched by
//! `scripts/fetch-demo-models.sh`; CI sets the variable). Unset: tests that need a model print a
//! note and skip it. Set but the file missing: the test fails, naming the path, so a broken CI
//! model cache is never a silent skip. Shared by the `e2e` and `worker` test binaries.

#![allow(dead_code)]

use std::path::PathBuf;

/// The chat model: SmolLM2 135M Instruct, Q4_1.
pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The embedding model directory (Hugging Face safetensors).
pub const MINILM: &str = "all-MiniLM-L6-v2";

/// `$ONDEVICE_TEST_MODELS_DIR/NAME` (a file or a directory). `None`, after printing a note
/// naming `test`, when the variable is unset; panics when it is set and NAME is missing.
pub fn models_entry(test: &str, name: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("ONDEVICE_TEST_MODELS_DIR") else {
        println!(
            "{test}: ONDEVICE_TEST_MODELS_DIR is not set, so what needs {name} does not run \
             (scripts/fetch-demo-models.sh fetches it)"
        );
        return None;
    };
    let path = PathBuf::from(dir).join(name);
    assert!(
        path.exists(),
        "{test}: ONDEVICE_TEST_MODELS_DIR is set but {} is missing: run scripts/fetch-demo-models.sh \
         and point the variable at the directory it prints",
        path.display()
    );
    Some(path)
}

/// The SmolLM2 GGUF, as [`models_entry`] finds it.
pub fn test_model(test: &str) -> Option<PathBuf> {
    models_entry(test, SMOLLM2)
}
