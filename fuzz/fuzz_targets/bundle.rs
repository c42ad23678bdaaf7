//! Fuzz target: importing untrusted bytes as a model file (a bundle tar with its manifest and
//! layout, else a GGUF file) into a real registry (SQLite store and blob directory in a temp
//! home) must return `Ok` or a typed error, never panic, and a refused import must leave nothing
//! registered. The layout parser gets the raw bytes too.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ondevice_registry::{Layout, Registry};
use ondevice_store::Store;

struct Home {
    dir: tempfile::TempDir,
    registry: Registry,
}

fn home() -> &'static Home {
    static HOME: OnceLock<Home> = OnceLock::new();
    HOME.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp home");
        let store = Arc::new(Store::open(&dir.path().join("ondevice.db")).expect("store"));
        let registry = Registry::new(store, dir.path()).expect("registry");
        Home { dir, registry }
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(layout) = Layout::parse(data) {
        // Whatever parses re-serializes to something that parses the same.
        assert_eq!(Layout::parse(&layout.to_bytes()).as_ref(), Ok(&layout));
    }
    let h = home();
    let input = h.dir.path().join("input.tar");
    std::fs::write(&input, data).expect("write input");
    match h.registry.import_path(&input, None) {
        Ok(m) => {
            h.registry.remove(&m.reference().parse().expect("a registered name parses")).expect("remove");
        }
        Err(_) => assert!(h.registry.list().expect("list").is_empty(), "a refused import registered a model"),
    }
    h.registry.gc_older_than(Duration::ZERO).expect("gc");
});
