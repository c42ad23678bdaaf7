//! The real models the tests use, found by `ondevice-testkit` (`$ONDEVICE_TEST_MODELS_DIR`; unset
//! skips with a note, set but missing fails). Shared by the `e2e` and `worker` test binaries.

#![allow(dead_code, unused_imports)]

use std::path::PathBuf;

pub use ondevice_testkit::{MINILM, SMOLLM2, models_entry};

/// The SmolLM2 GGUF, as [`models_entry`] finds it.
pub fn test_model(test: &str) -> Option<PathBuf> {
    ondevice_testkit::smollm2(test)
}
