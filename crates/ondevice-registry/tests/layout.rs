//! Multi-file (Hugging Face safetensors directory) models on a real temp home and SQLite store:
//! import, dedup, verify, gc, export/import bundles, hostile directories and layouts, eviction
//! with pins and shared blobs, and (with `ONDEVICE_TEST_MODELS_DIR`) the real all-MiniLM-L6-v2.
//! Unix only: it makes a Unix socket file and checks hard links by inode.
#![cfg(unix)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[path = "support/models.rs"]
mod models;
#[path = "support/tar.rs"]
mod tar;

use ondevice_registry::{ImportMode, ModelRef, Registry, RegistryError, SAFETENSORS_FORMAT, VerifyStatus};
use ondevice_store::Store;

fn registry(home: &Path) -> Registry {
    let store = Arc::new(Store::open(&home.join("ondevice.db")).unwrap());
    Registry::new(store, home).unwrap()
}

/// A safetensors file with F32 tensors of the given shapes (data filled with `seed`).
fn safetensors(tensors: &[(&str, &[u64])], seed: u8) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, shape) in tensors {
        let len = shape.iter().product::<u64>() * 4;
        header.insert(
            (*name).to_owned(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let json = serde_json::to_vec(&header).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend(std::iter::repeat_n(seed, offset as usize));
    out
}

/// A small HF directory: config, two shards with an index, a tokenizer, a nested file, a model
/// card with a license, and hidden entries that must be skipped.
fn hf_dir(root: &Path, name: &str, seed: u8) -> PathBuf {
    let dir = root.join(name);
    fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    fs::create_dir_all(dir.join(".git")).unwrap();
    fs::write(
        dir.join("config.json"),
        r#"{"architectures": ["TinyForCausalLM"], "model_type": "tiny", "max_position_embeddings": 1024}"#,
    )
    .unwrap();
    fs::write(dir.join("model-00001-of-00002.safetensors"), safetensors(&[("a.weight", &[4, 4])], seed)).unwrap();
    fs::write(dir.join("model-00002-of-00002.safetensors"), safetensors(&[("b.weight", &[2, 3])], seed)).unwrap();
    fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"metadata": {}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    fs::write(dir.join("tokenizer.json"), r#"{"model": {"type": "BPE"}}"#).unwrap();
    fs::write(dir.join("1_Pooling/config.json"), r#"{"pooling_mode_mean_tokens": true}"#).unwrap();
    fs::write(dir.join("README.md"), "---\nlanguage: en\nlicense: apache-2.0\n---\n# Tiny\n").unwrap();
    fs::write(dir.join(".gitattributes"), "*.safetensors filter=lfs\n").unwrap();
    fs::write(dir.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    dir
}

fn blob_count(home: &Path) -> usize {
    fs::read_dir(home.join("blobs")).unwrap().filter(|e| e.as_ref().unwrap().path().is_file()).count()
}

fn named(s: &str) -> ModelRef {
    s.parse().unwrap()
}

#[test]
fn a_directory_imports_as_a_layout_of_blobs_and_dedups() {
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let dir = hf_dir(home.path(), "Tiny-Model", 7);

    let m = reg.import_path(&dir, None).unwrap();
    assert_eq!(m.reference(), "tiny-model:latest");
    assert_eq!(m.format, SAFETENSORS_FORMAT);
    assert_eq!(m.architecture.as_deref(), Some("TinyForCausalLM"));
    assert_eq!(m.parameter_count, Some(16 + 6));
    assert_eq!(m.quantization.as_deref(), Some("F32"));
    assert_eq!(m.context_length, Some(1024));
    assert_eq!(m.license.as_deref(), Some("apache-2.0"));
    assert_eq!(m.source, "import:Tiny-Model/");

    let layout = reg.layout(&m).unwrap().expect("a directory model has a layout");
    let paths: Vec<&str> = layout.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "1_Pooling/config.json",
            "README.md",
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.json"
        ],
        "every regular file, sorted; hidden entries skipped"
    );
    let layout_len = fs::metadata(reg.blobs().path(&m.digest)).unwrap().len();
    assert_eq!(m.size, layout.size() + layout_len);
    assert_eq!(blob_count(home.path()), 8, "seven files and the layout");

    // The same content again, under another name: same digest, no new blobs.
    let again = reg.import_path(&dir, Some(named("tiny:copy"))).unwrap();
    assert_eq!(again.digest, m.digest);
    assert_eq!(blob_count(home.path()), 8);

    // The directory round-trips: materialized files are identical to the originals.
    let out = home.path().join("restored");
    reg.materialize(&m, &out).unwrap();
    for f in &layout.files {
        assert_eq!(fs::read(out.join(&f.path)).unwrap(), fs::read(dir.join(&f.path)).unwrap(), "{}", f.path);
    }
    assert!(!out.join(".git").exists());

    // gc keeps every file of a live layout; removing both names frees all of it.
    assert!(reg.gc().unwrap().removed_blobs.is_empty());
    reg.remove(&named("tiny-model")).unwrap();
    assert!(reg.gc().unwrap().removed_blobs.is_empty(), "tiny:copy still uses every blob");
    reg.remove(&named("tiny:copy")).unwrap();
    let gc = reg.gc().unwrap();
    assert_eq!(gc.removed_blobs.len(), 8);
    assert_eq!(blob_count(home.path()), 0);
}

#[test]
fn verify_names_the_corrupt_file_of_a_directory_model() {
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let dir = hf_dir(home.path(), "tiny", 3);
    // The default import copies (or clones): overwriting the originals in place changes nothing.
    let copied = reg.import_path(&dir, Some(named("copied"))).unwrap();
    for shard in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] {
        let path = dir.join(shard);
        let mut bytes = fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 0x55;
        fs::write(&path, &bytes).unwrap(); // truncates and rewrites the same inode
    }
    let r = &reg.verify(Some(&named("copied"))).unwrap()[0];
    assert_eq!(r.status, VerifyStatus::Ok, "{r:?}");
    reg.remove(&named("copied")).unwrap();
    drop(copied);

    let m = reg.import_path_with(&dir, None, ImportMode::Link).unwrap();
    assert!(reg.verify(None).unwrap().iter().all(|r| r.status == VerifyStatus::Ok));

    // Hard-linked import (asked for): modifying the original in place corrupts the blob, and
    // verify says which.
    let shard = dir.join("model-00002-of-00002.safetensors");
    let layout = reg.layout(&m).unwrap().unwrap();
    let entry = layout.files.iter().find(|f| f.path == "model-00002-of-00002.safetensors").unwrap();
    let blob = reg.blobs().path(&entry.digest.parse().unwrap());
    use std::os::unix::fs::MetadataExt;
    let linked = fs::metadata(&blob).unwrap().ino() == fs::metadata(&shard).unwrap().ino();
    assert!(linked, "same filesystem: the import hard-links");
    let mut bytes = fs::read(&shard).unwrap();
    *bytes.last_mut().unwrap() ^= 0xff;
    fs::write(&shard, &bytes).unwrap(); // truncates and rewrites the same inode
    let reports = reg.verify(Some(&named("tiny"))).unwrap();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.file.as_deref(), Some("model-00002-of-00002.safetensors"));
    assert!(matches!(r.status, VerifyStatus::Corrupt { .. }), "{:?}", r.status);
    assert_eq!(r.digest.to_string(), entry.digest, "the failing file's digest, not the layout's");

    // A missing file blob is reported with its path, whatever the filesystem.
    let tok = layout.files.iter().find(|f| f.path == "tokenizer.json").unwrap();
    fs::remove_file(reg.blobs().path(&tok.digest.parse().unwrap())).unwrap();
    let r = &reg.verify(Some(&named("tiny"))).unwrap()[0];
    assert_ne!(r.status, VerifyStatus::Ok);
    assert!(r.file.is_some());
}

#[test]
fn hostile_or_invalid_directories_write_nothing() {
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let src = tempfile::tempdir().unwrap();

    // No config.json.
    let d = src.path().join("noconfig");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("model.safetensors"), safetensors(&[("w", &[2])], 1)).unwrap();
    let e = reg.import_path(&d, None).unwrap_err();
    assert!(matches!(e, RegistryError::InvalidModelDir { .. }), "{e}");

    // No weights.
    let d = src.path().join("noweights");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("config.json"), "{}").unwrap();
    assert!(matches!(reg.import_path(&d, None).unwrap_err(), RegistryError::InvalidModelDir { .. }));

    // A safetensors header claiming far more data than the file holds.
    let d = src.path().join("liar");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("config.json"), "{}").unwrap();
    let mut bad = safetensors(&[("w", &[2])], 1);
    bad.truncate(bad.len() - 4);
    fs::write(d.join("model.safetensors"), bad).unwrap();
    let e = reg.import_path(&d, None).unwrap_err();
    assert!(e.to_string().contains("model.safetensors"), "{e}");

    // A special file (a Unix socket) inside an otherwise valid directory.
    let d = hf_dir(src.path(), "withsocket", 2);
    let _socket = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
    let e = reg.import_path(&d, None).unwrap_err();
    assert!(matches!(e, RegistryError::InvalidLayout { .. }), "{e}");
    assert!(e.to_string().contains("not a regular file"), "{e}");

    assert_eq!(blob_count(home.path()), 0, "nothing was written");
    assert!(reg.list().unwrap().is_empty());
}

#[test]
fn bundles_restore_directory_models_and_refuse_hostile_layouts() {
    let a = tempfile::tempdir().unwrap();
    let reg = registry(a.path());
    let dir = hf_dir(a.path(), "tiny", 5);
    let m = reg.import_path(&dir, None).unwrap();
    let bundle = a.path().join("tiny.tar");
    reg.export_bundle(&named("tiny"), &mut fs::File::create(&bundle).unwrap()).unwrap();

    let b = tempfile::tempdir().unwrap();
    let reg_b = registry(b.path());
    let restored = reg_b.import_path(&bundle, None).unwrap();
    assert_eq!(restored.digest, m.digest, "same layout digest on the other home");
    assert_eq!(restored.format, SAFETENSORS_FORMAT);
    assert_eq!(restored.parameter_count, m.parameter_count);
    assert_eq!(restored.size, m.size);
    assert!(reg_b.verify(None).unwrap().iter().all(|r| r.status == VerifyStatus::Ok));
    let out = b.path().join("out");
    reg_b.materialize(&restored, &out).unwrap();
    assert_eq!(
        fs::read(out.join("1_Pooling/config.json")).unwrap(),
        fs::read(dir.join("1_Pooling/config.json")).unwrap()
    );

    // A bundle whose layout escapes the directory is refused; nothing is registered or kept.
    let layout = format!(
        "{{\"schema\": 1, \"files\": [{{\"path\": \"../evil\", \"digest\": \"{}\", \"size\": 2}}]}}",
        ondevice_registry::bundle::sha256_of(&b"{}"[..]).unwrap()
    );
    let evil = a.path().join("evil.tar");
    write_bundle(&evil, layout.as_bytes(), b"{}");
    let c = tempfile::tempdir().unwrap();
    let reg_c = registry(c.path());
    let e = reg_c.import_path(&evil, None).unwrap_err();
    assert!(e.to_string().contains("not a plain relative path"), "{e}");
    assert!(reg_c.list().unwrap().is_empty());
    assert!(!c.path().join("evil").exists());
    reg_c.gc_older_than(Duration::ZERO).unwrap();
    assert_eq!(blob_count(c.path()), 0);
}

/// A bundle (as `export` writes it) of a layout blob and one file blob.
fn write_bundle(path: &Path, layout: &[u8], file: &[u8]) {
    let d = |b: &[u8]| ondevice_registry::bundle::sha256_of(b).unwrap();
    let (ld, fd) = (d(layout), d(file));
    let manifest = serde_json::json!({
        "schema": 1, "model": "evil:latest", "format": "safetensors", "architecture": null,
        "parameter_count": null, "quantization": null, "context_length": null, "license": null,
        "source": "x",
        "files": [
            {"path": format!("blobs/{}", ld.file_name()), "digest": ld.to_string(), "size": layout.len()},
            {"path": format!("blobs/{}", fd.file_name()), "digest": fd.to_string(), "size": file.len()},
        ]
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let mut out = tar::entry("manifest.json", &manifest, b'0');
    out.extend(tar::entry(&format!("blobs/{}", ld.file_name()), layout, b'0'));
    out.extend(tar::entry(&format!("blobs/{}", fd.file_name()), file, b'0'));
    out.extend([0u8; 1024]);
    fs::write(path, out).unwrap();
}

#[test]
fn eviction_skips_pinned_and_loaded_models_prefers_the_least_recently_used_and_keeps_shared_blobs() {
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let dir = hf_dir(home.path(), "tiny", 9);
    let old = reg.import_path(&dir, Some(named("old"))).unwrap();
    let used = reg.import_path(&dir, Some(named("used"))).unwrap();
    let other = hf_dir(home.path(), "other", 4);
    let pinned = reg.import_path(&other, Some(named("pinned"))).unwrap();
    reg.set_pinned(&named("pinned"), true).unwrap();
    assert!(reg.show(&named("pinned")).unwrap().pinned);
    reg.touch(&used).unwrap();
    assert!(reg.show(&named("used")).unwrap().last_used_at.is_some());
    // A touch within the interval does not write again.
    let before = reg.show(&named("used")).unwrap();
    reg.touch(&before).unwrap();
    assert_eq!(reg.show(&named("used")).unwrap().last_used_at, before.last_used_at);

    // `old` was never used, so it goes first, unless it is loaded right now.
    let loaded = std::sync::Arc::new(std::sync::Mutex::new(vec![old.reference(), used.reference()]));
    let seen = loaded.clone();
    reg.set_in_use(std::sync::Arc::new(move || seen.lock().unwrap().clone()));
    assert_eq!(reg.evict_lru().unwrap(), None, "loaded models are not evicted");
    loaded.lock().unwrap().clear();
    // Evicted, but its blobs are `used`'s too and stay.
    assert_eq!(reg.evict_lru().unwrap().map(|m| m.reference()), Some(old.reference()));
    assert!(reg.verify(None).unwrap().iter().all(|r| r.status == VerifyStatus::Ok));
    assert!(reg.blobs().contains(&used.digest));
    // Then `used`; the pinned model never.
    assert_eq!(reg.evict_lru().unwrap().map(|m| m.reference()), Some(used.reference()));
    assert!(!reg.blobs().contains(&used.digest));
    assert_eq!(reg.evict_lru().unwrap(), None);
    assert!(reg.blobs().contains(&pinned.digest));
    assert!(reg.verify(None).unwrap().iter().all(|r| r.status == VerifyStatus::Ok));

    // A re-import keeps the pin.
    let again = reg.import_path(&other, Some(named("pinned"))).unwrap();
    assert!(again.pinned);
}

#[test]
fn real_minilm_directory_imports() {
    let Some(minilm) = models::models_entry("real_minilm_directory_imports", "all-MiniLM-L6-v2") else { return };
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let m = reg.import_path(&minilm, None).unwrap();
    assert_eq!(m.reference(), "all-minilm-l6-v2:latest");
    assert_eq!(m.architecture.as_deref(), Some("BertModel"));
    assert_eq!(m.context_length, Some(512));
    assert!((22_600_000..=22_800_000).contains(&m.parameter_count.unwrap()));
    let layout = reg.layout(&m).unwrap().unwrap();
    assert!(layout.files.iter().any(|f| f.path == "model.safetensors"));
    assert!(layout.files.iter().any(|f| f.path == "1_Pooling/config.json"));
    assert!(!layout.files.iter().any(|f| f.path.starts_with('.')));
    assert!(reg.verify(None).unwrap().iter().all(|r| r.status == VerifyStatus::Ok));
}
