//! The model registry through the real daemon and CLI: import (hardlinked, deduplicated),
//! list/show with `--json`, hostile files and names refused with nothing written, verify
//! catching a corrupted blob, remove + gc freeing the blob; a Hugging Face safetensors directory
//! imported, pinned, exported to another home and refused by the GGUF engine with a clear error.

use crate::common::models::MINILM;
use crate::common::{Daemon, Home, describe, models_entry, test_model, write_small_gguf};

fn json(home: &Home, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&home.run_ok(args)).unwrap_or_else(|e| panic!("{args:?}: not JSON: {e}"))
}

fn blobs(home: &Home) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(home.file("blobs"))
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn import_list_show_verify_remove_gc_through_the_cli() {
    let daemon = Daemon::start(Home::new());
    let home = daemon.home();
    let file = home.root().join("tiny.gguf");
    write_small_gguf(&file, 7);

    let m = json(home, &["models", "import", file.to_str().unwrap(), "--name", "tiny:v1", "--json"]);
    assert_eq!(m["model"], "tiny:v1");
    assert_eq!(m["architecture"], "llama");
    assert_eq!(m["context_length"], 2048);
    let digest = m["digest"].as_str().unwrap().to_owned();
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "{digest}");
    // A second name for the same bytes shares the blob; the default tag is `latest`.
    json(home, &["models", "import", file.to_str().unwrap(), "--name", "tiny", "--json"]);
    assert_eq!(blobs(home), vec![format!("sha256-{}", &digest[7..])]);
    let list = json(home, &["models", "list", "--json"]);
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|m| m["model"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 2, "{list}");
    assert!(names.contains(&"tiny:latest") && names.contains(&"tiny:v1"), "{names:?}");
    assert_eq!(json(home, &["models", "show", &digest, "--json"])["digest"], digest.as_str());

    // Hostile input is refused and writes nothing.
    let junk = home.root().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff").unwrap();
    let out = home.run(&["models", "import", junk.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot import"), "{}", describe(&out));
    for bad in ["../../etc/passwd", "sha256:../../x", "UPPER:case", "a//b"] {
        let out = home.run(&["models", "show", bad]);
        assert!(!out.status.success(), "{bad} accepted: {}", describe(&out));
    }
    assert_eq!(blobs(home).len(), 1, "refusals wrote nothing");

    // Verify catches a flipped byte in the blob.
    assert!(home.run(&["models", "verify"]).status.success());
    let blob = home.file("blobs").join(format!("sha256-{}", &digest[7..]));
    // The import may have hardlinked the source; corrupt a private copy, not the source file.
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::remove_file(&blob).unwrap();
    std::fs::write(&blob, &bytes).unwrap();
    let out = home.run(&["models", "verify", "--json"]);
    assert!(!out.status.success(), "verify must fail on corruption: {}", describe(&out));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(reports.as_array().unwrap().iter().all(|r| r["status"] == "corrupt"), "{reports}");

    // Remove both names, then gc frees the blob.
    home.run_ok(&["models", "rm", "tiny:v1"]);
    let gc = json(home, &["models", "gc", "--json"]);
    assert!(gc["removed_blobs"].as_array().unwrap().is_empty(), "still referenced by tiny:latest: {gc}");
    home.run_ok(&["models", "rm", "tiny"]);
    let gc = json(home, &["models", "gc", "--json"]);
    assert_eq!(gc["removed_blobs"][0], digest.as_str());
    assert!(blobs(home).iter().all(|b| !b.starts_with("sha256-")), "{:?}", blobs(home));
    assert!(json(home, &["models", "list", "--json"]).as_array().unwrap().is_empty());
}

#[tokio::test]
async fn the_real_demo_model_imports_with_its_published_digest() {
    let Some(file) = test_model("the_real_demo_model_imports_with_its_published_digest") else { return };
    let daemon = Daemon::start(Home::new());
    let m = json(daemon.home(), &["models", "import", file.to_str().unwrap(), "--name", "smollm2:135m", "--json"]);
    assert_eq!(m["digest"], "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53");
    assert_eq!(m["quantization"], "Q4_1");
    assert_eq!(m["parameter_count"], 134_515_008);
}

#[tokio::test]
async fn a_safetensors_directory_imports_pins_moves_between_homes_and_is_refused_by_the_engine() {
    let Some(dir) = models_entry("a_safetensors_directory_imports_pins_moves_between_homes", MINILM) else {
        return;
    };
    let daemon = Daemon::start(Home::new());
    let home = daemon.home();
    let m = json(home, &["models", "import", dir.to_str().unwrap(), "--json"]);
    assert_eq!(m["model"], "all-minilm-l6-v2:latest", "{m}");
    assert_eq!(m["format"], "safetensors");
    assert_eq!(m["architecture"], "BertModel");
    assert_eq!(m["context_length"], 512);
    assert_eq!(m["pinned"], false);
    let digest = m["digest"].as_str().unwrap().to_owned();
    // Every file is a blob, plus the layout naming them.
    fn visible_files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .map(|p| if p.is_dir() { visible_files(&p) } else { 1 })
            .sum()
    }
    assert_eq!(blobs(home).len(), visible_files(&dir) + 1, "{:?}", blobs(home));

    // Pin and unpin, through the CLI (PUT /api/v1/models/{name}/pin).
    let out = home.run_ok(&["models", "pin", "all-minilm-l6-v2"]);
    assert!(out.contains("pinned all-minilm-l6-v2:latest"), "{out}");
    assert_eq!(json(home, &["models", "show", "all-minilm-l6-v2", "--json"])["pinned"], true);
    let show = home.run_ok(&["models", "show", "all-minilm-l6-v2"]);
    assert!(show.contains("pinned:         yes"), "{show}");
    json(home, &["models", "unpin", "all-minilm-l6-v2", "--json"]);
    assert_eq!(json(home, &["models", "show", "all-minilm-l6-v2", "--json"])["pinned"], false);
    let out = home.run(&["models", "pin", "nope"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not found"), "{}", describe(&out));

    // The engine runs GGUF: a clear 400, not a crash or a worker start.
    let infer = daemon.key(&["infer"]).await;
    let resp = daemon
        .request(reqwest::Method::POST, "/v1/embeddings", Some(&infer.secret))
        .json(&serde_json::json!({"model": "all-minilm-l6-v2", "input": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::BAD_REQUEST);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("convert it to GGUF"), "{body}");

    // Export, then import on another home: same digest, verified.
    let bundle = home.root().join("minilm.tar");
    home.run_ok(&["models", "export", "all-minilm-l6-v2", "--output", bundle.to_str().unwrap()]);
    let other = Daemon::start(Home::new());
    let restored = json(other.home(), &["models", "import", bundle.to_str().unwrap(), "--json"]);
    assert_eq!(restored["digest"], digest.as_str());
    assert_eq!(restored["format"], "safetensors");
    let verify = json(other.home(), &["models", "verify", "--json"]);
    assert_eq!(verify[0]["status"], "ok", "{verify}");
}
