//! The pack library on a real registry (temp home, real SQLite, real blob store): publish, lint
//! and test gates, immutability, semver resolution and labels, rollback, diff, delete with GC
//! roots, and archives with ed25519 signatures.

use std::collections::BTreeMap;
use std::sync::Arc;

use ondevice_prompts::archive::{self, SigningKey};
use ondevice_prompts::library::Library;
use ondevice_prompts::{Pack, PackRef, PromptError};
use ondevice_registry::Registry;
use ondevice_store::Store;

fn pack(version: &str, system: &str) -> Pack {
    let mut files = BTreeMap::new();
    files.insert(
        "pack.toml".to_owned(),
        format!(
            "name = \"summarize\"\nversion = \"{version}\"\ndescription = \"Summarize a text\"\n\
             [variables.text]\nrequired = true\n[variables.style]\ndefault = \"brief\"\n\
             [[messages]]\nrole = \"system\"\ntemplate = \"{system}\"\n\
             [[messages]]\nrole = \"user\"\ntemplate = \"{{{{ text }}}}\"\n"
        ),
    );
    Pack::from_files(files).unwrap()
}

fn library() -> (tempfile::TempDir, Arc<Registry>, Library) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("ondevice.db")).unwrap());
    let registry = Arc::new(Registry::new(store, dir.path()).unwrap());
    let lib = Library::new(registry.clone());
    (dir, registry, lib)
}

fn r(s: &str) -> PackRef {
    s.parse().unwrap()
}

#[test]
fn versions_labels_rollback_and_diff() {
    let (_dir, _reg, lib) = library();
    let p1 = pack("1.0.0", "You summarize in a {{ style }} style.");
    let p2 = pack("1.1.0", "You summarize texts in a {{ style }} style.");
    let p3 = pack("2.0.0", "Summarize in a {{ style }} style, in English.");
    let first = lib.publish(&p1, &[], None).unwrap();
    assert!(first.created);
    assert_eq!(first.version.labels, vec!["latest", "production"]);
    lib.publish(&p2, &[], None).unwrap();
    lib.publish(&p3, &["staging".to_owned()], None).unwrap();

    assert_eq!(lib.resolve(&r("summarize")).unwrap().version, "1.1.0", "production stays on 1.1.0");
    assert_eq!(lib.resolve(&r("summarize@latest")).unwrap().version, "2.0.0");
    assert_eq!(lib.resolve(&r("summarize@staging")).unwrap().version, "2.0.0");
    assert_eq!(lib.resolve(&r("summarize@^1")).unwrap().version, "1.1.0");
    assert_eq!(lib.resolve(&r("summarize@~1.0")).unwrap().version, "1.0.0");
    assert_eq!(lib.resolve(&r("summarize@1.0.0")).unwrap().version, "1.0.0");
    assert!(matches!(lib.resolve(&r("summarize@3")), Err(PromptError::NotFound { .. })));
    assert!(matches!(lib.resolve(&r("other")), Err(PromptError::NotFound { .. })));

    // Republishing the same content is a no-op; other content under a published version is refused.
    assert!(!lib.publish(&p1, &[], None).unwrap().created);
    let changed = pack("1.0.0", "Something else {{ style }}.");
    let e = lib.publish(&changed, &[], None).unwrap_err();
    assert!(matches!(e, PromptError::VersionExists { .. }), "{e}");
    assert!(e.to_string().contains("bump the version"));
    // The republish of 1.0.0 moved production back to it; move it forward, then roll back.
    lib.rollback("summarize", "1.1.0").unwrap();
    assert_eq!(lib.resolve(&r("summarize")).unwrap().version, "1.1.0");
    let before = lib.rollback("summarize", "1.0.0").unwrap();
    assert_eq!(before.as_deref(), Some("1.1.0"));
    assert_eq!(lib.resolve(&r("summarize")).unwrap().version, "1.0.0");
    assert!(lib.rollback("summarize", "9.9.9").is_err());
    let history = lib.history("summarize").unwrap();
    assert!(history.iter().any(|m| m.label == "production" && m.version.as_deref() == Some("1.0.0")));

    let (a, _) = lib.load(&r("summarize@1.0.0")).unwrap();
    let (b, _) = lib.load(&r("summarize@1.1.0")).unwrap();
    let d = ondevice_prompts::diff::diff(&a, &b);
    expect_test::expect![[r#"
        --- summarize@1.0.0/pack.toml
        +++ summarize@1.1.0/pack.toml
        @@ -1,5 +1,5 @@
         name = "summarize"
        -version = "1.0.0"
        +version = "1.1.0"
         description = "Summarize a text"
         [variables.text]
         required = true
        @@ -7,7 +7,7 @@
         default = "brief"
         [[messages]]
         role = "system"
        -template = "You summarize in a {{ style }} style."
        +template = "You summarize texts in a {{ style }} style."
         [[messages]]
         role = "user"
         template = "{{ text }}"
    "#]]
    .assert_eq(&d);
    assert_eq!(ondevice_prompts::diff::diff(&a, &a), "");

    let list = lib.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].current.as_deref(), Some("1.0.0"));
    assert_eq!(list[0].versions, vec!["1.0.0", "1.1.0", "2.0.0"]);
}

#[test]
fn published_blobs_are_rooted_until_deleted() {
    let (_dir, reg, lib) = library();
    let p = pack("1.0.0", "You summarize in a {{ style }} style.");
    let info = lib.publish(&p, &[], None).unwrap().version;
    let digest = info.digest.parse().unwrap();
    reg.gc().unwrap();
    assert!(reg.blobs().contains(&digest), "a published version survives gc");
    assert_eq!(lib.load(&r("summarize")).unwrap().0, p);
    lib.delete("summarize", "1.0.0").unwrap();
    assert!(matches!(lib.resolve(&r("summarize")), Err(PromptError::NotFound { .. })));
    reg.gc().unwrap();
    assert!(!reg.blobs().contains(&digest), "gc frees a deleted version's blob");
}

#[test]
fn corrupt_blobs_are_detected() {
    let (_dir, reg, lib) = library();
    let p = pack("1.0.0", "You summarize in a {{ style }} style.");
    let info = lib.publish(&p, &[], None).unwrap().version;
    let path = reg.blobs().path(&info.digest.parse().unwrap());
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).unwrap();
    std::fs::write(&path, b"{}").unwrap();
    let e = lib.load(&r("summarize")).unwrap_err();
    assert!(e.to_string().contains("corrupt"), "{e}");
}

#[test]
fn lint_and_tests_gate_publishing() {
    let (_dir, _reg, lib) = library();
    let mut files = pack("1.0.0", "x").files().clone();
    files.insert(
        "pack.toml".into(),
        files["pack.toml"].replace("template = \"x\"", "template = \"<|im_start|>system {{ nope }} {{ cycler }}\""),
    );
    let bad = Pack::from_files(files).unwrap();
    let e = lib.publish(&bad, &[], None).unwrap_err();
    let PromptError::Lint { findings } = &e else { panic!("{e}") };
    let codes: Vec<&str> = findings.iter().map(|f| f.code).collect();
    assert!(codes.contains(&"special-token"), "{codes:?}");
    assert!(codes.contains(&"unknown-variable"), "{codes:?}");
    assert!(codes.contains(&"ssti-gadget"), "{codes:?}");

    let mut files = pack("1.0.0", "You summarize in a {{ style }} style.").files().clone();
    files.insert(
        "tests/wrong.toml".into(),
        "[variables]\ntext = \"t\"\n[[messages]]\nrole = \"system\"\ncontent = \"nope\"\n[[messages]]\nrole = \"user\"\ncontent = \"t\"\n".into(),
    );
    let e = lib.publish(&Pack::from_files(files).unwrap(), &[], None).unwrap_err();
    assert!(matches!(e, PromptError::TestFailed { .. }), "{e}");
}

#[test]
fn archives_round_trip_with_signatures() {
    let (_dir, _reg, lib) = library();
    let p = pack("1.2.0", "You summarize in a {{ style }} style.");
    let key = SigningKey::generate().unwrap();
    let other = SigningKey::generate().unwrap();

    let unsigned = archive::export(&p, None);
    let a = archive::import(&unsigned, &[]).unwrap();
    assert_eq!((a.pack.clone(), a.signer), (p.clone(), None));
    assert!(archive::import(&unsigned, &[key.public()]).unwrap_err().to_string().contains("not signed"));

    let signed = archive::export(&p, Some(&key));
    let a = archive::import(&signed, &[key.public()]).unwrap();
    assert_eq!(a.signer, Some(key.public()));
    let e = archive::import(&signed, &[other.public()]).unwrap_err();
    assert!(e.to_string().contains("not among the trusted keys"), "{e}");

    // Any change to the content breaks the digest, and a re-computed digest breaks the signature.
    let text = String::from_utf8(signed.clone()).unwrap();
    let tampered = text.replace("You summarize", "You obey");
    let e = archive::import(tampered.as_bytes(), &[]).unwrap_err();
    assert!(e.to_string().contains("altered"), "{e}");
    let forged_pack = pack("1.2.0", "You obey in a {{ style }} style.");
    let v: serde_json::Value = serde_json::from_str(&tampered).unwrap();
    let mut v = v;
    v["digest"] = serde_json::Value::String(forged_pack.digest());
    let e = archive::import(&serde_json::to_vec(&v).unwrap(), &[]).unwrap_err();
    assert!(matches!(e, PromptError::Signature { .. }), "{e}");

    // Round trip of keys through their hex form.
    let k2 = SigningKey::from_hex(&key.to_hex()).unwrap();
    assert_eq!(k2.public(), key.public());
    assert!(archive::import(b"not json", &[]).is_err());

    let a = archive::import(&signed, &[]).unwrap();
    let published = lib.publish_imported(&a.pack, &[], a.signer.as_ref()).unwrap();
    assert_eq!(published.version.signer, Some(key.public().to_string()));
    assert_eq!(published.version.labels, vec!["latest"], "an import does not take over production");
}

#[test]
fn concurrent_publishes_of_one_version_have_one_winner() {
    let (_dir, reg, lib) = library();
    let lib = Arc::new(lib);
    for round in 0..16 {
        let version = format!("1.{round}.0");
        let packs = [
            pack(&version, "You summarize in a {{ style }} style."),
            pack(&version, "You condense in a {{ style }} style."),
        ];
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let handles: Vec<_> = packs
            .iter()
            .cloned()
            .map(|p| {
                let (lib, barrier) = (lib.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    lib.publish(&p, &[], None)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<usize> = (0..2).filter(|&i| results[i].is_ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one publish wins: {results:?}");
        let (w, l) = (winners[0], 1 - winners[0]);
        assert!(results[w].as_ref().unwrap().created);
        let e = results[l].as_ref().unwrap_err();
        assert!(matches!(e, PromptError::VersionExists { .. }), "round {round}: {e}");
        assert!(e.to_string().contains("bump the version"), "{e}");
        // The version holds the winner's content, and only the winner's blob is rooted.
        let (stored, info) = lib.load(&r(&format!("summarize@{version}"))).unwrap();
        assert_eq!(stored, packs[w], "round {round}");
        assert_eq!(info.digest, packs[w].digest());
        let loser: ondevice_registry::Digest = packs[l].digest().parse().unwrap();
        assert!(reg.roots_of(&loser).unwrap().is_empty(), "round {round}: the refused content is not rooted");
    }
    // Concurrent publishes of the same content both succeed, one of them as a no-op.
    let p = pack("2.0.0", "You summarize in a {{ style }} style.");
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (lib, barrier, p) = (lib.clone(), barrier.clone(), p.clone());
            std::thread::spawn(move || {
                barrier.wait();
                lib.publish(&p, &[], None).unwrap().created
            })
        })
        .collect();
    let created: Vec<bool> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(created.iter().filter(|c| **c).count(), 1, "{created:?}");
}
