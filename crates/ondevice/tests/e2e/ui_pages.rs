//! The console's collections, prompt packs, diagnostics and keys pages in a real headless Chromium
//! (Selenium, the harness in `ui/harness.py`) against the real daemon, with the real MiniLM
//! embedding model (safetensors converted to GGUF by the repo's converter, then imported): one
//! daemon and one browser session for every scenario (`ui/pages_all.py`). What the browser did is
//! checked again through the API here: the collection's documents, the pack version served, the
//! downloaded bundle (a gzip tar whose first entry is `manifest.json`), the key revoked. Screenshots
//! of each page go to `target/ui-screenshots/`. In the nextest `llama` group (the engine embeds).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::models::{MINILM, models_entry};
use crate::common::{Daemon, Home, describe, python};

const UPLOADS: [(&str, &str); 2] = [
    ("otters.md", "# Otters\n\nSea otters hold hands while they sleep so that they do not drift apart.\n"),
    ("bread.txt", "To bake bread, mix flour, water, salt and yeast, knead the dough and let it rise.\n"),
];

fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots")
}

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The entry names of a `.tar.gz`, in order.
fn tar_gz_entries(path: &Path) -> Vec<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path).expect("open the bundle").read_to_end(&mut bytes).expect("read the bundle");
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "the download is not gzip: {}", path.display());
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    archive
        .entries()
        .expect("tar entries")
        .map(|e| e.expect("tar entry").path().expect("entry path").to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn collections_packs_diagnostics_and_keys_pages_in_a_browser() {
    let test = "ui_pages::collections_packs_diagnostics_and_keys_pages_in_a_browser";
    let Some(minilm) = models_entry(test, MINILM) else { return };
    let files = tempfile::tempdir().expect("tempdir");
    let (uploads, docs, downloads) = (files.path().join("up"), files.path().join("docs"), files.path().join("dl"));
    for d in [&uploads, &docs, &downloads] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    for (name, text) in UPLOADS {
        std::fs::write(uploads.join(name), text).expect("write upload");
    }
    std::fs::write(
        docs.join("volcano.html"),
        "<html><body><p>Volcanoes erupt molten rock called lava.</p></body></html>",
    )
    .expect("write doc");

    // The daemon reads files for index jobs only inside [vector] index_roots.
    let daemon = Daemon::start(Home::with_config(&format!("[vector]\nindex_roots = [{:?}]\n", utf8(&docs))));
    let home = daemon.home();
    let gguf = home.root().join("minilm-f16.gguf");
    let out = home.run(&["quantize", utf8(&minilm), "--type", "F16", "--output", utf8(&gguf)]);
    assert!(out.status.success(), "convert MiniLM: {}", describe(&out));
    let out = home.run(&["models", "import", utf8(&gguf), "--name", "minilm"]);
    assert!(out.status.success(), "import MiniLM: {}", describe(&out));
    let reader = daemon.key(&["read"]).await;

    let shots = screenshots();
    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/ui");
    let started = std::time::Instant::now();
    // The scenario blocks this thread (the daemon is a process of its own).
    let result = tokio::task::block_in_place(|| {
        python(
            &daemon,
            daemon.admin_key(),
            &[
                ("PYTHONPATH", utf8(&scenarios)),
                ("PYTHONDONTWRITEBYTECODE", "1"),
                ("ONDEVICE_UI_SCREENSHOTS", utf8(&shots)),
                ("READ_KEY", &reader.secret),
                ("EMBED_MODEL", "minilm"),
                ("UPLOAD_DIR", utf8(&uploads)),
                ("DOCS_DIR", utf8(&docs)),
                ("DOWNLOAD_DIR", utf8(&downloads)),
            ],
            include_str!("ui/pages_all.py"),
        )
    });
    println!("browser scenarios took {:.1} s: {result}", started.elapsed().as_secs_f64());

    // Collections: the one kept holds an upload and the indexed file (the other upload removed); the
    // scratch one is gone.
    let admin = daemon.admin_key();
    let (status, notes) = daemon.get("/api/v1/collections/notes", Some(admin)).await;
    assert!(status.is_success(), "{status} {notes}");
    assert_eq!((notes["documents"].as_u64(), notes["chunk_tokens"].as_u64()), (Some(2), Some(128)), "{notes}");
    assert_eq!(notes["dimension"], 384, "{notes}");
    assert_eq!(daemon.get("/api/v1/collections/scratch", Some(admin)).await.0, reqwest::StatusCode::NOT_FOUND);
    let scores = result["collections"]["scores"].as_array().expect("scores");
    assert!(scores[0].as_f64().expect("score") > scores[1].as_f64().expect("score"), "{result}");

    // Packs: rolled back to 1.0.0, then 1.1.0 deleted.
    let (_, packs) = daemon.get("/api/v1/prompts", Some(admin)).await;
    let pack = packs.as_array().expect("packs").iter().find(|p| p["name"] == "summarize").expect("summarize published");
    assert_eq!(pack["versions"], serde_json::json!(["1.0.0"]), "{pack}");
    assert_eq!(pack["current"], "1.0.0", "{pack}");
    assert!(result["packs"]["tokens"].as_u64().expect("tokens") > 10, "{result}");

    // Diagnostics: the file the browser saved is the bundle.
    let bundle = PathBuf::from(result["diagnostics"]["bundle"].as_str().expect("bundle path"));
    assert!(bundle.starts_with(&downloads), "{}", bundle.display());
    let entries = tar_gz_entries(&bundle);
    assert_eq!(entries.first().map(String::as_str), Some("manifest.json"), "{entries:?}");
    assert!(entries.iter().any(|e| e == "egress.json"), "{entries:?}");

    // Keys: the key made in the page is revoked; the read key was refused the keys API.
    let key_id = result["keys"]["key_id"].as_str().expect("key id");
    let (_, keys) = daemon.get("/api/v1/keys", Some(admin)).await;
    let made: &Value =
        keys.as_array().expect("keys").iter().find(|k| k["id"] == key_id).expect("the key made in the page");
    assert_eq!(made["name"], "console-made", "{made}");
    assert!(made["revoked_at"].is_string(), "{made}");
    assert_eq!(result["keys"]["api"], serde_json::json!([403, "permission_denied"]), "{result}");
    for page in ["collections", "packs", "diagnostics", "keys", "keys-denied"] {
        assert!(shots.join(format!("{page}.png")).is_file(), "no screenshot of {page}");
    }
}
