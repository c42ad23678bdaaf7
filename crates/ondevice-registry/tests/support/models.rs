//! The real models some tests import, found by `ondevice-testkit` (`$ONDEVICE_TEST_MODELS_DIR`;
//! unset skips with a note, set but missing fails).

pub use ondevice_testkit::models_entry;
