//! End-to-end registry tests on real files: a temp home, a real SQLite store, GGUF files built
//! with `GgufWriter`, and (when `ONDEVICE_TEST_MODELS_DIR` is set) the real SmolLM2 GGUF.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ondevice_gguf::writer::GgufWriter;
use ondevice_gguf::{GgmlType, Value};
use ondevice_registry::{ModelRef, Registry, RegistryError, VerifyStatus};
use ondevice_store::Store;

#[path = "support/models.rs"]
mod models;

fn registry(home: &Path) -> Registry {
    let store = Arc::new(Store::open(&home.join("ondevice.db")).unwrap());
    Registry::new(store, home).unwrap()
}

fn small_gguf(name: Option<&str>) -> Vec<u8> {
    let mut w = GgufWriter::new()
        .metadata("general.architecture", Value::String("llama".into()))
        .metadata("general.license", Value::String("apache-2.0".into()))
        .metadata("general.file_type", Value::U32(0))
        .metadata("llama.context_length", Value::U32(2048));
    if let Some(name) = name {
        w = w.metadata("general.name", Value::String(name.into()));
    }
    w.tensor("token_embd.weight", &[4, 2], GgmlType::F32, vec![1; 32])
        .tensor("out", &[3], GgmlType::F32, vec![2; 12])
        .to_bytes()
}

fn blob_files(home: &Path) -> Vec<String> {
    let mut v: Vec<_> = fs::read_dir(home.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn import_list_show_and_dedup() {
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let src = home.path().join("Tiny-Model.gguf");
    fs::write(&src, small_gguf(Some("Tiny Llama 8"))).unwrap();

    let m = reg.import_gguf(&src, None).unwrap();
    assert_eq!(m.reference(), "tiny-llama-8:latest");
    assert_eq!(m.format, "gguf");
    assert_eq!(m.architecture.as_deref(), Some("llama"));
    assert_eq!(m.parameter_count, Some(11));
    assert_eq!(m.quantization.as_deref(), Some("F32"));
    assert_eq!(m.context_length, Some(2048));
    assert_eq!(m.license.as_deref(), Some("apache-2.0"));
    assert_eq!(m.source, "import:Tiny-Model.gguf");
    assert_eq!(m.size, fs::metadata(&src).unwrap().len());
    assert!(!m.pinned);

    // Same file under another name: one blob.
    let other: ModelRef = "team/tiny:v2".parse().unwrap();
    let m2 = reg.import_gguf(&src, Some(other.clone())).unwrap();
    assert_eq!(m2.digest, m.digest);
    assert_eq!(blob_files(home.path()), vec![m.digest.file_name()]);

    let names: Vec<_> = reg.list().unwrap().iter().map(|m| m.reference()).collect();
    assert_eq!(names, ["team/tiny:v2", "tiny-llama-8:latest"]);
    assert_eq!(reg.show(&"tiny-llama-8".parse().unwrap()).unwrap(), m);
    assert_eq!(reg.show(&ModelRef::Digest(m.digest)).unwrap().digest, m.digest);
    assert!(matches!(reg.show(&"absent".parse().unwrap()), Err(RegistryError::NotFound { .. })));

    // Survives a reopen.
    drop(reg);
    let reg = registry(home.path());
    assert_eq!(reg.show(&other).unwrap(), m2);

    // Without general.name, the file stem names it.
    let plain = home.path().join("Plain_Model.v1.gguf");
    fs::write(&plain, small_gguf(None)).unwrap();
    assert_eq!(reg.import_gguf(&plain, None).unwrap().reference(), "plain_model.v1:latest");
    assert_eq!(blob_files(home.path()).len(), 2);
}

#[test]
fn hostile_files_write_nothing() {
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let good = small_gguf(Some("x"));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated.gguf", good[..good.len() - 7].to_vec()),
        ("magic.gguf", [b"GGUX".as_slice(), &good[4..]].concat()),
        ("empty.gguf", Vec::new()),
        (
            "offsets.gguf",
            GgufWriter::new()
                .metadata("general.architecture", Value::String("llama".into()))
                .raw_tensor("w", &[1 << 20], GgmlType::F32.id(), 1 << 40)
                .to_bytes(),
        ),
    ];
    for (file, bytes) in cases {
        let path = home.path().join(file);
        fs::write(&path, bytes).unwrap();
        let err = reg.import_gguf(&path, None).unwrap_err();
        assert!(matches!(err, RegistryError::InvalidModelFile { .. }), "{file}: {err}");
        assert!(err.to_string().contains(file), "{err}");
    }
    let missing = reg.import_gguf(&home.path().join("absent.gguf"), None).unwrap_err();
    assert!(matches!(missing, RegistryError::InvalidModelFile { .. }), "{missing}");
    // A digest is not a name to import under.
    let src = home.path().join("ok.gguf");
    fs::write(&src, &good).unwrap();
    let digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
    assert!(matches!(reg.import_gguf(&src, Some(digest)), Err(RegistryError::Ref(_))));

    assert!(blob_files(home.path()).is_empty(), "{:?}", blob_files(home.path()));
    assert!(reg.list().unwrap().is_empty());
    let store = Store::open(&home.path().join("ondevice.db")).unwrap();
    assert!(store.list_blobs().unwrap().is_empty());
}

#[test]
fn verify_finds_corruption_and_gc_collects_orphans() {
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let a = home.path().join("a.gguf");
    let b = home.path().join("b.gguf");
    fs::write(&a, small_gguf(Some("a"))).unwrap();
    fs::write(&b, small_gguf(Some("b"))).unwrap();
    let ma = reg.import_gguf(&a, None).unwrap();
    let mb = reg.import_gguf(&b, None).unwrap();
    assert!(reg.verify(None).unwrap().iter().all(|r| r.status == VerifyStatus::Ok));

    // Flip one byte of b's blob (as a failing disk, or an in-place edit of a file imported with
    // `--link`, would).
    let blob = reg.blobs().path(&mb.digest);
    let mut bytes = fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&blob, bytes).unwrap();
    let reports = reg.verify(None).unwrap();
    assert_eq!(reports.len(), 2);
    let rb = reports.iter().find(|r| r.model == "b:latest").unwrap();
    assert!(matches!(rb.status, VerifyStatus::Corrupt { actual } if actual != mb.digest), "{rb:?}");
    let only_a = reg.verify(Some(&"a".parse().unwrap())).unwrap();
    assert_eq!(only_a.len(), 1);
    assert_eq!(only_a[0].status, VerifyStatus::Ok);

    // A stale temporary file and a fresh one.
    let stale = reg.blobs().dir().join(".tmp-1-2-3.partial");
    let fresh = reg.blobs().dir().join("sha256-abc.partial");
    fs::write(&stale, b"junk").unwrap();
    fs::write(&fresh, b"junk").unwrap();
    fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(7200))
        .unwrap();

    // Removing a model keeps its blob until gc.
    let removed = reg.remove(&"b".parse().unwrap()).unwrap();
    assert_eq!(removed[0].digest, mb.digest);
    assert!(blob.exists());
    assert!(matches!(reg.remove(&"b".parse().unwrap()), Err(RegistryError::NotFound { .. })));

    let report = reg.gc().unwrap();
    assert_eq!(report.removed_blobs, vec![mb.digest]);
    assert_eq!(report.removed_partials, vec![stale.clone()]);
    assert!(!blob.exists() && !stale.exists() && fresh.exists());
    assert!(b.exists(), "gc must not touch the imported source file");
    assert_eq!(blob_files(home.path()), vec![ma.digest.file_name(), "sha256-abc.partial".to_owned()]);
    let store = Store::open(&home.path().join("ondevice.db")).unwrap();
    assert_eq!(store.list_blobs().unwrap().len(), 1);

    // Nothing left to collect; a's blob stays.
    let again = reg.gc().unwrap();
    assert!(again.removed_blobs.is_empty() && again.removed_partials.is_empty());
    reg.verify(Some(&ModelRef::Digest(ma.digest))).unwrap();
}

#[test]
fn missing_blob_is_reported() {
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let a = home.path().join("a.gguf");
    fs::write(&a, small_gguf(Some("a"))).unwrap();
    let m = reg.import_gguf(&a, None).unwrap();
    fs::remove_file(reg.blobs().path(&m.digest)).unwrap();
    assert_eq!(reg.verify(None).unwrap()[0].status, VerifyStatus::Missing);
}

#[test]
fn real_smollm2_import() {
    let Some(src) = models::models_entry("real_smollm2_import", "SmolLM2-135M-Instruct.Q4_1.gguf") else { return };
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let m = reg.import_gguf(&src, None).unwrap();
    assert_eq!(m.architecture.as_deref(), Some("llama"));
    assert_eq!(m.quantization.as_deref(), Some("Q4_1"));
    assert_eq!(m.digest.hex(), "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53");
    assert!(m.parameter_count.unwrap() > 100_000_000, "{m:?}");
    assert!(m.context_length.is_some());
    assert_eq!(m.size, fs::metadata(&src).unwrap().len());
    reg.verify(Some(&ModelRef::Digest(m.digest))).unwrap();
    println!("imported {} ({} bytes) as {}", src.display(), m.size, m.reference());
}

#[test]
fn copy_registers_a_second_name_for_the_same_blob() {
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let src = home.path().join("m.gguf");
    fs::write(&src, small_gguf(Some("m"))).unwrap();
    let m = reg.import_gguf(&src, None).unwrap();
    let to: ModelRef = "team/m:copy".parse().unwrap();
    let c = reg.copy(&"m".parse().unwrap(), &to).unwrap();
    assert_eq!((c.reference().as_str(), c.digest, c.size), ("team/m:copy", m.digest, m.size));
    assert_eq!(c.source, "copy:m:latest");
    assert_eq!(blob_files(home.path()), vec![m.digest.file_name()], "nothing copied");
    // Removing the original leaves the copy whole.
    reg.remove(&"m".parse().unwrap()).unwrap();
    reg.gc().unwrap();
    assert!(reg.verify(Some(&to)).unwrap().iter().all(|r| r.status == VerifyStatus::Ok));
    let missing = reg.copy(&"nope".parse().unwrap(), &"x".parse().unwrap()).unwrap_err();
    assert!(matches!(missing, RegistryError::NotFound { .. }), "{missing}");
    let digest: ModelRef = m.digest.to_string().parse().unwrap();
    assert!(matches!(reg.copy(&to, &digest), Err(RegistryError::Ref(_))));
}

/// An import into a store whose disk has no room for a copy: content the store already holds is
/// registered without space; new content is refused with `NoSpace`, leaving nothing behind. Needs
/// root (a 1 MiB tmpfs mounted over `blobs/`); elsewhere the unit tests in `blobs.rs` cover it.
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_is_reported_and_stored_content_needs_no_space() {
    use nix::mount::{MsFlags, mount, umount};
    let home = tempfile::tempdir().unwrap();
    let blobs = home.path().join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    if let Err(e) = mount(Some("tmpfs"), &blobs, Some("tmpfs"), MsFlags::empty(), Some("size=1m")) {
        println!("skipped: mounting a tmpfs needs root ({e}); blobs.rs unit tests cover the logic");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = umount(self.0);
        }
    }
    let _unmount = Unmount(&blobs);
    let reg = registry(home.path());
    // 600 KiB of tensor data: fits once in 1 MiB, not twice.
    let big = |seed: u8| {
        GgufWriter::new()
            .metadata("general.architecture", Value::String("llama".into()))
            .tensor("w", &[150 * 1024], GgmlType::F32, vec![seed; 600 * 1024])
            .to_bytes()
    };
    let a = home.path().join("a.gguf");
    fs::write(&a, big(1)).unwrap();
    let first = reg.import_gguf(&a, Some("a".parse().unwrap())).unwrap();
    // Same content again, under another name, with no room for a second copy.
    let again = reg.import_gguf(&a, Some("a2".parse().unwrap())).unwrap();
    assert_eq!(again.digest, first.digest);
    // Asked to link across filesystems: the copy it falls back to needs no space either.
    let linked = reg.import_gguf_with(&a, Some("a3".parse().unwrap()), ondevice_registry::ImportMode::Link).unwrap();
    assert_eq!(linked.digest, first.digest);
    let b = home.path().join("b.gguf");
    fs::write(&b, big(2)).unwrap();
    let err = reg.import_gguf(&b, None).unwrap_err();
    assert!(matches!(&err, RegistryError::Blob(ondevice_registry::BlobError::NoSpace { .. })), "{err}");
    assert!(err.to_string().contains("no space left to store b.gguf"), "{err}");
    assert!(reg.blobs().scan().unwrap().partials.is_empty(), "nothing left behind");
    assert_eq!(reg.list().unwrap().len(), 3);
}
