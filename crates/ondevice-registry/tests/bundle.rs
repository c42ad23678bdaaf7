//! Export/import bundles on real homes: a model exported from one home and imported into a
//! fresh one keeps its digest and bytes; hostile archives (links, traversal names, unlisted or
//! corrupted entries) are refused with nothing registered or left in the blob store.

#[path = "support/tar.rs"]
mod tar;
use std::path::Path;
use std::sync::Arc;
use tar::entry;

use ondevice_gguf::writer::GgufWriter;
use ondevice_gguf::{GgmlType, Value};
use ondevice_registry::{ModelRef, Registry, RegistryError};
use ondevice_store::Store;

fn registry(home: &Path) -> Registry {
    let store = Arc::new(Store::open(&home.join("ondevice.db")).unwrap());
    Registry::new(store, home).unwrap()
}

fn gguf() -> Vec<u8> {
    GgufWriter::new()
        .metadata("general.architecture", Value::String("llama".into()))
        .metadata("general.license", Value::String("mit".into()))
        .tensor("w", &[256], GgmlType::F32, (0..1024).map(|i| i as u8).collect())
        .to_bytes()
}

fn blob_files(home: &Path) -> usize {
    std::fs::read_dir(home.join("blobs")).unwrap().count()
}

#[test]
fn export_then_import_into_a_fresh_home_is_bit_identical() {
    let a = tempfile::tempdir().unwrap();
    let reg = registry(a.path());
    let src = a.path().join("m.gguf");
    std::fs::write(&src, gguf()).unwrap();
    let m = reg.import_gguf(&src, Some("team/m:v1".parse().unwrap())).unwrap();
    let bundle = a.path().join("m.tar");
    reg.export_bundle(&"team/m:v1".parse().unwrap(), &mut std::fs::File::create(&bundle).unwrap()).unwrap();
    assert!(ondevice_registry::bundle::is_bundle(&bundle));
    assert!(!ondevice_registry::bundle::is_bundle(&src));

    let b = tempfile::tempdir().unwrap();
    let fresh = registry(b.path());
    let got = fresh.import_path(&bundle, None).unwrap();
    assert_eq!((got.reference(), got.digest, got.size), ("team/m:v1".to_owned(), m.digest, m.size));
    assert_eq!(got.license.as_deref(), Some("mit"));
    assert_eq!(std::fs::read(fresh.blobs().path(&got.digest)).unwrap(), gguf());
    let renamed = fresh.import_path(&bundle, Some("other:x".parse().unwrap())).unwrap();
    assert_eq!(renamed.digest, m.digest);
    assert_eq!(blob_files(b.path()), 1);
}

#[test]
fn hostile_bundles_are_refused_and_leave_nothing() {
    let data = gguf();
    let digest = ondevice_registry::bundle::sha256_of(data.as_slice()).unwrap();
    let blob = format!("blobs/{}", digest.file_name());
    let manifest = |path: &str| {
        serde_json::json!({"schema": 1, "model": "evil:1", "format": "gguf", "architecture": null, "parameter_count": null,
            "quantization": null, "context_length": null, "license": null, "source": "x",
            "files": [{"path": path, "digest": digest.to_string(), "size": data.len()}]})
        .to_string()
    };
    let mut corrupt = data.clone();
    corrupt[100] ^= 1;
    let end = vec![0u8; 1024];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "traversal",
            [
                entry("manifest.json", manifest("../../evil").as_bytes(), b'0'),
                entry("../../evil", &data, b'0'),
                end.clone(),
            ]
            .concat(),
        ),
        (
            "absolute",
            [entry("manifest.json", manifest(&blob).as_bytes(), b'0'), entry("/tmp/evil", &data, b'0'), end.clone()]
                .concat(),
        ),
        (
            "symlink",
            [entry("manifest.json", manifest(&blob).as_bytes(), b'0'), entry(&blob, b"", b'2'), end.clone()].concat(),
        ),
        (
            "hardlink",
            [entry("manifest.json", manifest(&blob).as_bytes(), b'0'), entry(&blob, b"", b'1'), end.clone()].concat(),
        ),
        (
            "directory",
            [entry("manifest.json", manifest(&blob).as_bytes(), b'0'), entry("blobs/", b"", b'5'), end.clone()]
                .concat(),
        ),
        (
            "corrupt",
            [entry("manifest.json", manifest(&blob).as_bytes(), b'0'), entry(&blob, &corrupt, b'0'), end.clone()]
                .concat(),
        ),
        ("no manifest", [entry(&blob, &data, b'0'), end.clone()].concat()),
        (
            "truncated",
            [entry("manifest.json", manifest(&blob).as_bytes(), b'0'), entry(&blob, &data, b'0')[..700].to_vec()]
                .concat(),
        ),
    ];
    for (what, bytes) in cases {
        let home = tempfile::tempdir().unwrap();
        let reg = registry(home.path());
        let path = home.path().join("evil.tar");
        std::fs::write(&path, bytes).unwrap();
        let err = reg.import_bundle(&path, None).unwrap_err();
        assert!(matches!(err, RegistryError::Bundle(_)), "{what}: {err}");
        assert!(reg.list().unwrap().is_empty(), "{what}");
        assert_eq!(blob_files(home.path()), 0, "{what}: blob store");
        assert!(!home.path().parent().unwrap().join("evil").exists());
    }
    let _: ModelRef = "x".parse().unwrap();
}
