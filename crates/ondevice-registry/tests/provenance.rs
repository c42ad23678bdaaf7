//! Provenance on a real home: a made file registered with its receipt shows it on `show`, `list`
//! and copies; a receipt that does not describe the file is refused with nothing registered; a
//! bundle carries it to a fresh home; `gc` forgets it with the blob; reservations count against
//! the quota.

use std::path::Path;
use std::sync::Arc;

use ondevice_gguf::writer::GgufWriter;
use ondevice_gguf::{GgmlType, Value};
use ondevice_registry::provenance::made_now;
use ondevice_registry::quota::{QuotaPolicy, ReserveError};
use ondevice_registry::{Digest, ModelRef, Registry, RegistryError};
use ondevice_store::Store;

fn registry(home: &Path) -> Registry {
    let store = Arc::new(Store::open(&home.join("ondevice.db")).unwrap());
    Registry::new(store, home).unwrap()
}

fn gguf(fill: u8) -> Vec<u8> {
    GgufWriter::new()
        .metadata("general.architecture", Value::String("llama".into()))
        .tensor("w", &[256], GgmlType::F32, vec![fill; 1024])
        .to_bytes()
}

fn hex(d: &Digest) -> String {
    d.to_string().trim_start_matches("sha256:").to_owned()
}

fn receipt(output: &Digest) -> serde_json::Value {
    serde_json::json!({
        "inputs": [{"name": "parent.gguf", "sha256": "ab".repeat(32), "size": 1}],
        "source_sha256": "cd".repeat(32),
        "tool": "ondevice 0.1.0",
        "llama_cpp": "b1 (llama-cpp-sys-2 0.1.161)",
        "params": {"quant_type": "Q8_0"},
        "imatrix_sha256": null,
        "output_sha256": hex(output),
        "output_size": 1,
    })
}

/// Stages a made file in `blobs/` (where a quantize job writes) and registers it.
fn register_made(
    reg: &Registry,
    data: &[u8],
    name: &str,
    parent: Option<(String, Digest)>,
) -> ondevice_registry::ModelRecord {
    let staged = reg.blobs().dir().join(".tmp-made.gguf");
    std::fs::write(&staged, data).unwrap();
    let digest = ondevice_registry::bundle::sha256_of(data).unwrap();
    let p = made_now(receipt(&digest), parent);
    reg.register_made(&staged, digest, &name.parse().unwrap(), "quantize:parent:latest", p).unwrap()
}

#[test]
fn made_models_keep_their_provenance_through_show_list_copy_bundle_and_gc() {
    let a = tempfile::tempdir().unwrap();
    let reg = registry(a.path());
    let src = a.path().join("parent.gguf");
    std::fs::write(&src, gguf(1)).unwrap();
    let parent = reg.import_gguf(&src, Some("parent:latest".parse().unwrap())).unwrap();
    assert_eq!(parent.provenance, None);

    let made = register_made(&reg, &gguf(2), "parent-q8_0:latest", Some((parent.reference(), parent.digest)));
    assert!(!reg.blobs().dir().join(".tmp-made.gguf").exists(), "the staged file was moved into the store");
    let shown = reg.show(&"parent-q8_0:latest".parse().unwrap()).unwrap();
    let p = shown.provenance.clone().expect("provenance");
    assert_eq!(p.parent.as_deref(), Some("parent:latest"));
    assert_eq!(p.parent_digest, Some(parent.digest));
    assert_eq!(p.receipt["output_sha256"], hex(&made.digest));
    assert_eq!(shown.source, "quantize:parent:latest");
    let listed = reg.list().unwrap();
    assert_eq!(listed.iter().find(|m| m.name == "parent-q8_0").unwrap().provenance, Some(p.clone()));
    assert_eq!(listed.iter().find(|m| m.name == "parent").unwrap().provenance, None);
    let copy = reg.copy(&"parent-q8_0:latest".parse().unwrap(), &"alias:x".parse().unwrap()).unwrap();
    assert_eq!(reg.show(&copy.digest.to_string().parse::<ModelRef>().unwrap()).unwrap().provenance, Some(p.clone()));

    // Export → a fresh home: same digest, same receipt and parent.
    let bundle = a.path().join("made.tar");
    reg.export_bundle(&"parent-q8_0:latest".parse().unwrap(), &mut std::fs::File::create(&bundle).unwrap()).unwrap();
    let b = tempfile::tempdir().unwrap();
    let fresh = registry(b.path());
    let got = fresh.import_path(&bundle, None).unwrap();
    assert_eq!(got.digest, made.digest);
    let q = fresh.show(&"parent-q8_0:latest".parse().unwrap()).unwrap().provenance.expect("provenance travels");
    assert_eq!((q.receipt, q.parent, q.parent_digest), (p.receipt.clone(), p.parent.clone(), p.parent_digest));

    // Removing every name, then gc: blob and provenance go.
    reg.remove(&"parent-q8_0:latest".parse().unwrap()).unwrap();
    reg.remove(&"alias:x".parse().unwrap()).unwrap();
    reg.gc().unwrap();
    assert_eq!(reg.provenance(&made.digest).unwrap(), None);
}

#[test]
fn a_receipt_for_other_content_registers_nothing() {
    let a = tempfile::tempdir().unwrap();
    let reg = registry(a.path());
    let data = gguf(3);
    let staged = reg.blobs().dir().join(".tmp-made.gguf");
    std::fs::write(&staged, &data).unwrap();
    let digest = ondevice_registry::bundle::sha256_of(data.as_slice()).unwrap();
    let other = ondevice_registry::bundle::sha256_of(&b"other"[..]).unwrap();
    let err = reg
        .register_made(&staged, digest, &"m:latest".parse().unwrap(), "quantize:x", made_now(receipt(&other), None))
        .unwrap_err();
    assert!(matches!(err, RegistryError::InvalidProvenance { .. }), "{err}");
    assert!(reg.list().unwrap().is_empty());
    assert!(!reg.blobs().contains(&digest));
    assert_eq!(reg.provenance(&digest).unwrap(), None);
}

#[test]
fn a_bundle_whose_receipt_names_other_content_is_refused() {
    let a = tempfile::tempdir().unwrap();
    let reg = registry(a.path());
    register_made(&reg, &gguf(4), "made:latest", None);
    let bundle = a.path().join("made.tar");
    reg.export_bundle(&"made:latest".parse().unwrap(), &mut std::fs::File::create(&bundle).unwrap()).unwrap();
    // Rewrite the receipt's output digest inside the archive (same length, so offsets hold; a tar
    // header's checksum covers the header only).
    let mut bytes = std::fs::read(&bundle).unwrap();
    let text = String::from_utf8_lossy(&bytes[512..]).into_owned();
    let at = text.find("\"output_sha256\": \"").unwrap() + 512 + "\"output_sha256\": \"".len();
    for b in &mut bytes[at..at + 64] {
        *b = b'0';
    }
    let b = tempfile::tempdir().unwrap();
    let fresh = registry(b.path());
    let tampered = b.path().join("tampered.tar");
    std::fs::write(&tampered, &bytes).unwrap();
    let err = fresh.import_path(&tampered, None).unwrap_err();
    assert!(matches!(err, RegistryError::Bundle(_)), "{err}");
    assert!(err.to_string().contains("provenance receipt describes"), "{err}");
    assert!(fresh.list().unwrap().is_empty());
}

#[test]
fn reservations_of_all_jobs_count_against_the_quota() {
    let a = tempfile::tempdir().unwrap();
    let reg = registry(a.path());
    let policy = QuotaPolicy { quota: Some(1000), evict: false, min_free: 0 };
    let dir = reg.blobs().dir().to_path_buf();
    reg.reserve("job-a", "a:latest", 600, 0, &dir, &policy).unwrap();
    let err = reg.reserve("job-b", "b:latest", 600, 0, &dir, &policy).unwrap_err();
    assert!(matches!(err, ReserveError::Quota(_)), "{err}");
    assert!(err.to_string().contains("b:latest"), "{err}");
    reg.reserve("job-a", "a:latest", 300, 0, &dir, &policy).unwrap();
    reg.reserve("job-b", "b:latest", 600, 0, &dir, &policy).unwrap();
    assert_eq!(reg.reserved_bytes(), 900);
    reg.release("job-a");
    reg.release("job-b");
    assert_eq!(reg.reserved_bytes(), 0);
}
