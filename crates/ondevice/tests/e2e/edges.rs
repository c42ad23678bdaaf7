//! Edges of the real daemon that need no model engine: the last admin key cannot be revoked
//! (HTTP and CLI), CORS answers preflights only for listed origins on real routes, WebSocket
//! binary and oversized messages, imports that never share the user's file (and `--link`, which
//! does), a full disk answered 507 with content already stored needing no space, and the 501
//! answers of compatible-API endpoints ondevice does not offer.

use std::io::{Seek, SeekFrom, Write};
use std::time::Duration;

use futures_util::SinkExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

use crate::common::{Daemon, Home, WsEvent, describe, write_small_gguf, ws_connect, ws_next};

const WAIT: Duration = Duration::from_secs(30);

async fn error_of(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    (status, v)
}

#[tokio::test]
async fn the_last_admin_key_cannot_be_revoked() {
    let daemon = Daemon::start(Home::new());
    let keys = daemon.get("/api/v1/keys", Some(daemon.admin_key())).await.1;
    let bootstrap = keys.as_array().unwrap().iter().find(|k| k["name"] == "bootstrap").expect("bootstrap key");
    let id = bootstrap["id"].as_str().unwrap().to_owned();

    // HTTP: the only admin key revoking itself gets 409 and stays valid.
    let path = format!("/api/v1/keys/{id}");
    let resp = daemon.request(Method::DELETE, &path, Some(daemon.admin_key())).send().await.unwrap();
    let (status, body) = error_of(resp).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "conflict", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("last active admin key"), "{body}");
    assert_eq!(daemon.get("/api/v1/keys", Some(daemon.admin_key())).await.0, StatusCode::OK);

    // CLI: same refusal, exit code 1, the message on stderr.
    let out = daemon.home().run(&["keys", "revoke", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("last active admin key"), "{}", describe(&out));

    // A non-admin key does not count; a second admin key does.
    let reader = daemon.key(&["read"]).await;
    let resp = daemon.request(Method::DELETE, &path, Some(daemon.admin_key())).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let second = daemon.key(&["admin"]).await;
    let out = daemon.home().run(&["keys", "revoke", &id]);
    assert!(out.status.success(), "{}", describe(&out));
    // Now the second is the last one.
    let resp = daemon
        .request(Method::DELETE, &format!("/api/v1/keys/{}", second.id), Some(&second.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let resp = daemon
        .request(Method::DELETE, &format!("/api/v1/keys/{}", reader.id), Some(&second.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "non-admin keys are revoked freely");
}

#[tokio::test]
async fn cors_preflights_only_for_listed_origins_on_real_routes() {
    const ORIGIN: &str = "http://app.example:3000";
    let daemon = Daemon::with_config(&format!("[server]\ncors_origins = [\"{ORIGIN}\"]\n"));
    let options = |path: &str, headers: &[(&str, &str)]| {
        let mut req = daemon.request(Method::OPTIONS, path, None);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    let preflight = [("origin", ORIGIN), ("access-control-request-method", "POST")];

    // A real preflight: listed origin, real route and method.
    let resp = options(
        "/v1/chat/completions",
        &[preflight[0], preflight[1], ("access-control-request-headers", "authorization, content-type")],
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], ORIGIN);
    assert_eq!(h["access-control-allow-methods"], "POST");
    assert_eq!(h["access-control-allow-headers"], "authorization, content-type");
    // Path parameters match any segment.
    let resp = options("/api/v1/keys/0123456789ab", &[preflight[0], ("access-control-request-method", "DELETE")])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    // Everything else needs a key like any request.
    let refused: [(&str, Vec<(&str, &str)>); 5] = [
        ("/v1/chat/completions", vec![]),
        ("/v1/chat/completions", vec![preflight[1]]),
        ("/v1/chat/completions", vec![("origin", "http://evil.example"), preflight[1]]),
        ("/no/such/route", preflight.to_vec()),
        ("/v1/chat/completions", vec![preflight[0], ("access-control-request-method", "DELETE")]),
    ];
    for (path, headers) in refused {
        let resp = options(path, &headers).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "OPTIONS {path} {headers:?}");
        assert!(resp.headers().get("access-control-allow-methods").is_none());
    }
    // With a key, a non-preflight OPTIONS is an ordinary request: not a served method.
    let resp = daemon.request(Method::OPTIONS, "/api/v1/status", Some(daemon.admin_key())).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);

    // Actual requests: the listed origin is allowed to read the answer, others are not told.
    let resp =
        daemon.request(Method::GET, "/api/v1/status", Some(daemon.admin_key())).header("origin", ORIGIN).send().await;
    let resp = resp.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["access-control-allow-origin"], ORIGIN);
    let resp = daemon
        .request(Method::GET, "/api/v1/status", Some(daemon.admin_key()))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn websocket_binary_and_oversized_messages() {
    let daemon = Daemon::start(Home::new());
    let auth = [("authorization", format!("Bearer {}", daemon.admin_key()))];
    let (mut ws, _) = ws_connect(&daemon, &auth).await.expect("handshake");
    assert_eq!(ws_next(&mut ws, WAIT).await.json()["type"], "hello");

    // Binary: an error message, and the socket stays usable.
    ws.send(tungstenite::Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let err = ws_next(&mut ws, WAIT).await.json();
    assert_eq!((err["type"].as_str(), err["error"]["code"].as_str()), (Some("error"), Some("unsupported")), "{err}");
    ws.send(tungstenite::Message::text(json!({"type": "ping"}).to_string())).await.unwrap();
    assert_eq!(ws_next(&mut ws, WAIT).await.json()["type"], "pong");

    // 20 MB, over the 16 MiB default limit: close 1009 with a reason naming the limit.
    let big = format!("{{\"type\": \"ping\", \"pad\": \"{}\"}}", "x".repeat(20_000_000));
    let _ = ws.send(tungstenite::Message::text(big)).await;
    match ws_next(&mut ws, WAIT).await {
        WsEvent::Closed(code) => assert_eq!(code, Some(1009)),
        other => panic!("expected close 1009, got {other:?}"),
    }
    // The daemon is fine.
    assert_eq!(daemon.get("/api/v1/status", Some(daemon.admin_key())).await.0, StatusCode::OK);
}

#[tokio::test]
async fn imports_never_share_the_users_file_unless_linked() {
    let daemon = Daemon::start(Home::new());
    let home = daemon.home();
    let (file, other) = (home.root().join("m.gguf"), home.root().join("other.gguf"));
    write_small_gguf(&file, 3);
    write_small_gguf(&other, 4);
    home.run_ok(&["models", "import", file.to_str().unwrap(), "--name", "copied"]);
    home.run_ok(&["models", "import", other.to_str().unwrap(), "--name", "linked", "--link"]);

    // Overwrite both sources in place (same inode): the last tensor byte changes.
    for path in [&file, &other] {
        let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.seek(SeekFrom::End(-1)).unwrap();
        f.write_all(&[0xee]).unwrap();
    }

    let out = home.run(&["models", "verify", "copied"]);
    assert!(out.status.success(), "a copied import is unaffected: {}", describe(&out));
    let out = home.run(&["models", "verify", "linked", "--json"]);
    assert!(!out.status.success(), "a linked import shares the change: {}", describe(&out));
    let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reports[0]["status"], "corrupt", "{reports}");

    // The help says what --link risks.
    let help = home.run_ok(&["models", "import", "--help"]);
    assert!(help.contains("--link") && help.contains("verify"), "{help}");
}

/// Unmounts a test mount when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test]
async fn a_full_disk_answers_507_and_stored_content_needs_no_space() {
    use nix::mount::{MsFlags, mount};
    let home = Home::new();
    let blobs = home.dir().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    if let Err(e) = mount(Some("tmpfs"), &blobs, Some("tmpfs"), MsFlags::empty(), Some("size=1m")) {
        println!(
            "skipped: a_full_disk_answers_507...: mounting a tmpfs needs root ({e}); the registry's unit tests cover it"
        );
        return;
    }
    let mount = Mount(blobs.clone());
    let daemon = Daemon::start(home);
    // A 600 KiB model fits once in the 1 MiB blob store, not twice.
    let gguf = |seed: u8| {
        use ondevice_gguf::writer::GgufWriter;
        use ondevice_gguf::{GgmlType, Value as G};
        GgufWriter::new()
            .metadata("general.architecture", G::String("llama".into()))
            .tensor("w", &[150 * 1024], GgmlType::F32, vec![seed; 600 * 1024])
            .to_bytes()
    };
    let a = daemon.home().root().join("a.gguf");
    std::fs::write(&a, gguf(1)).unwrap();
    let import = |path: &std::path::Path, name: &str| {
        daemon
            .request(Method::POST, "/api/v1/models/import", Some(daemon.admin_key()))
            .json(&json!({"path": path, "name": name}))
            .send()
    };
    assert_eq!(import(&a, "a").await.unwrap().status(), StatusCode::CREATED);
    let resp = import(&a, "a-again").await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "the same content needs no second copy");

    let b = daemon.home().root().join("b.gguf");
    std::fs::write(&b, gguf(2)).unwrap();
    let (status, body) = error_of(import(&b, "b").await.unwrap()).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("no space left to store b.gguf") && msg.contains("ondevice models gc"), "{msg}");
    // Nothing half-written is left, and the CLI says the same.
    let leftovers: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !n.to_string_lossy().starts_with("sha256-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let out = daemon.home().run(&["models", "import", b.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no space left"), "{}", describe(&out));
    let (_, models) = daemon.get("/api/v1/models", Some(daemon.admin_key())).await;
    assert_eq!(models.as_array().map(Vec::len), Some(2), "{models}");
    // Unmount before the home is removed.
    let (_, home) = daemon.stop();
    drop(mount);
    drop(home);
}

#[tokio::test]
async fn compatible_api_endpoints_ondevice_does_not_offer_answer_501() {
    let daemon = Daemon::start(Home::new());
    let key = daemon.admin_key();
    for (method, path) in [
        (Method::POST, "/v1/responses"),
        (Method::POST, "/v1/images/generations"),
        (Method::POST, "/v1/audio/transcriptions"),
        (Method::GET, "/v1/files"),
        (Method::POST, "/api/create"),
        (Method::POST, "/api/push"),
        (Method::POST, "/api/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000"),
    ] {
        let resp = daemon.request(method.clone(), path, None).json(&json!({})).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path} without a key");
        let (status, body) =
            error_of(daemon.request(method.clone(), path, Some(key)).json(&json!({})).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "not_implemented", "{body}");
    }
    let resp = daemon.request(Method::GET, "/v1/nothing-like-this", Some(key)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}
