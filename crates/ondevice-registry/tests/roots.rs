//! GC roots on a real temp home and SQLite store: a rooted blob that no model names survives
//! `gc` and eviction until its last root is removed; a rooted layout keeps its files; a rooted
//! model is not evicted; roots are listed, idempotent and validated.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ondevice_gguf::writer::GgufWriter;
use ondevice_gguf::{GgmlType, Value};
use ondevice_registry::{BlobError, ModelRef, Registry, RegistryError, RootOwner, VerifyStatus};
use ondevice_store::Store;

fn registry(home: &Path) -> Registry {
    let store = Arc::new(Store::open(&home.join("ondevice.db")).unwrap());
    Registry::new(store, home).unwrap()
}

fn owner(kind: &str, id: &str) -> RootOwner {
    RootOwner::new(kind, id).unwrap()
}

fn named(s: &str) -> ModelRef {
    s.parse().unwrap()
}

/// A small GGUF file; `seed` varies its digest.
fn gguf(path: &Path, seed: u8) {
    let bytes = GgufWriter::new()
        .metadata("general.architecture", Value::String("llama".into()))
        .metadata("general.file_type", Value::U32(0))
        .tensor("token_embd.weight", &[4, 2], GgmlType::F32, vec![seed; 32])
        .to_bytes();
    fs::write(path, bytes).unwrap();
}

/// A minimal Hugging Face directory: a config and one safetensors file.
fn hf_dir(root: &Path, name: &str, seed: u8) -> PathBuf {
    let dir = root.join(name);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("config.json"), r#"{"architectures": ["TinyForCausalLM"], "model_type": "tiny"}"#).unwrap();
    let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header);
    st.extend_from_slice(&[seed; 8]);
    fs::write(dir.join("model.safetensors"), st).unwrap();
    dir
}

#[test]
fn a_rooted_blob_without_a_model_survives_gc_until_its_last_root_goes() {
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let receipt = home.path().join("receipt.json");
    fs::write(&receipt, br#"{"input": "x", "quant": "Q4_1"}"#).unwrap();

    let pack = owner("prompt-pack", "support-bot");
    let quant = owner("quantize-receipt", "job-0001");
    let root = reg.put_rooted_file(&receipt, &pack).unwrap();
    let d = root.digest;
    assert_eq!(root.owner, pack);
    assert!(reg.blobs().contains(&d));
    // A second owner of the same blob, and a repeated registration that changes nothing.
    let again = reg.add_root(&d, &quant).unwrap();
    assert_eq!(again.owner, quant);
    assert_eq!(reg.add_root(&d, &pack).unwrap().created_at, root.created_at);
    let owners: Vec<RootOwner> = reg.roots_of(&d).unwrap().into_iter().map(|r| r.owner).collect();
    assert_eq!(owners, vec![pack.clone(), quant.clone()]);
    assert_eq!(reg.list_roots().unwrap().len(), 2);

    // No model names it; gc keeps it (file and row), also after the daemon restarts.
    assert!(reg.list().unwrap().is_empty());
    assert!(reg.gc().unwrap().removed_blobs.is_empty());
    assert!(reg.blobs().contains(&d));
    drop(reg);
    let reg = registry(home.path());
    assert!(reg.gc().unwrap().removed_blobs.is_empty());
    assert!(reg.blobs().contains(&d));

    // One root gone: still kept. The last gone: collected.
    assert!(reg.remove_root(&d, &pack).unwrap());
    assert!(!reg.remove_root(&d, &pack).unwrap(), "removing twice says it was not there");
    assert!(reg.gc().unwrap().removed_blobs.is_empty());
    assert!(reg.remove_root(&d, &quant).unwrap());
    let report = reg.gc().unwrap();
    assert_eq!(report.removed_blobs, vec![d]);
    assert!(!reg.blobs().contains(&d));
    assert!(reg.store().list_blobs().unwrap().is_empty());
    assert!(receipt.exists(), "the source file is the caller's");
}

#[test]
fn a_rooted_model_blob_outlives_its_model_and_is_never_evicted() {
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let (a_src, b_src) = (home.path().join("a.gguf"), home.path().join("b.gguf"));
    gguf(&a_src, 1);
    gguf(&b_src, 2);
    let a = reg.import_gguf(&a_src, Some(named("a"))).unwrap();
    let input = owner("quantize-input", "job-7");
    reg.add_root(&a.digest, &input).unwrap();

    // Evicting `a` would free nothing (its blob is rooted): it is skipped, even as the least
    // recently used model.
    assert_eq!(reg.evict_lru().unwrap(), None, "the only model is rooted");
    let b = reg.import_gguf(&b_src, Some(named("b"))).unwrap();
    assert_eq!(reg.evict_lru().unwrap().map(|m| m.reference()), Some(b.reference()));
    assert!(!reg.blobs().contains(&b.digest));
    assert_eq!(reg.evict_lru().unwrap(), None);
    assert!(reg.blobs().contains(&a.digest));

    // `models show` and verify are unaffected by the root.
    assert_eq!(reg.show(&named("a")).unwrap(), a);
    assert_eq!(reg.verify(None).unwrap()[0].status, VerifyStatus::Ok);

    // Removing the model keeps the rooted blob through gc; removing the root frees it.
    reg.remove(&named("a")).unwrap();
    assert!(reg.gc().unwrap().removed_blobs.is_empty());
    assert!(reg.blobs().contains(&a.digest));
    // The blob can be named again while it is rooted (an import of the same content).
    let again = reg.import_gguf(&a_src, Some(named("a2"))).unwrap();
    assert_eq!(again.digest, a.digest);
    reg.remove(&named("a2")).unwrap();
    reg.remove_root(&a.digest, &input).unwrap();
    assert_eq!(reg.gc().unwrap().removed_blobs, vec![a.digest]);
    assert!(!reg.blobs().contains(&a.digest));
}

#[test]
fn a_rooted_layout_keeps_every_file_it_lists() {
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let dir = hf_dir(home.path(), "tiny", 3);
    let m = reg.import_path(&dir, Some(named("tiny"))).unwrap();
    let files = reg.layout(&m).unwrap().unwrap().digests();
    assert_eq!(files.len(), 2);
    let collection = owner("collection", "docs");
    reg.add_root(&m.digest, &collection).unwrap();

    reg.remove(&named("tiny")).unwrap();
    assert!(reg.gc().unwrap().removed_blobs.is_empty(), "the layout and its files are kept");
    for d in files.iter().chain([&m.digest]) {
        assert!(reg.blobs().contains(d), "{d}");
    }
    // Still a complete model: it can be materialized from the kept blobs.
    reg.materialize(&m, &home.path().join("out")).unwrap();
    assert!(home.path().join("out/model.safetensors").is_file());

    reg.remove_root(&m.digest, &collection).unwrap();
    let mut removed = reg.gc().unwrap().removed_blobs;
    removed.sort();
    let mut expected: Vec<_> = files.iter().copied().chain([m.digest]).collect();
    expected.sort();
    assert_eq!(removed, expected);
}

#[test]
fn roots_need_a_stored_blob_and_a_valid_owner() {
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let absent = "sha256:1111111111111111111111111111111111111111111111111111111111111111".parse().unwrap();
    let err = reg.add_root(&absent, &owner("prompt-pack", "p")).unwrap_err();
    assert!(matches!(err, RegistryError::Blob(BlobError::Missing { .. })), "{err}");
    assert!(reg.list_roots().unwrap().is_empty());

    for (kind, id) in [("", "x"), ("Prompt", "x"), ("a/b", "x"), ("k", ""), ("k", "a\nb")] {
        let err = RootOwner::new(kind, id).unwrap_err();
        assert!(err.to_string().contains("invalid gc root owner"), "{kind:?}/{id:?}: {err}");
    }
    assert!(RootOwner::new(&"k".repeat(65), "x").is_err());
    assert!(RootOwner::new("k", &"x".repeat(513)).is_err());
    let ok = owner("quantize-input", "models/a b:latest");
    assert_eq!(ok.to_string(), "quantize-input/models/a b:latest");
}
