//! The real models some tests import, from `$ONDEVICE_TEST_MODELS_DIR` (fetched by
//! `scripts/fetch-demo-models.sh`; CI sets the variable). Unset: the test prints a note and
//! skips. Set but the entry missing: the test fails, naming the path.

use std::path::PathBuf;

/// `$ONDEVICE_TEST_MODELS_DIR/NAME` (a file or a directory). `None`, after printing a note
/// naming `test`, when the variable is unset; panics when it is set and NAME is missing.
pub fn models_entry(test: &str, name: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("ONDEVICE_TEST_MODELS_DIR") else {
        println!("skipped: {test}: ONDEVICE_TEST_MODELS_DIR is not set (scripts/fetch-demo-models.sh fetches {name})");
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
