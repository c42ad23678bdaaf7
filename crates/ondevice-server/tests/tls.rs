//! TLS on the real listener: a self-signed certificate from rcgen, HTTPS with ALPN `h2` and
//! `http/1.1`, auth unchanged, graceful stop. Servers bind 127.0.0.1:0 and stop themselves.

use std::sync::Arc;
use std::time::Duration;

use ondevice_auth::{Scopes, Verifier};
use ondevice_server::{AppState, EdgeOptions, NoWorkers, listener};
use ondevice_store::Store;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn https_serves_h2_and_http1_with_auth() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let acceptor = listener::tls_acceptor(&cert_path, &key_path).unwrap();

    let store = Arc::new(Store::open(&dir.path().join("ondevice.db")).unwrap());
    let verifier = Arc::new(Verifier::new(store.clone(), true).unwrap());
    let (_, key) = verifier.create_key(Some("r"), Scopes::from_list("read").unwrap()).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let opts = EdgeOptions {
        listen: addr,
        allowed_hosts: vec![],
        cors_origins: vec![],
        body_limit: 1 << 20,
        max_concurrent_requests: 16,
        tls: true,
        ui: Default::default(),
    };
    let registry = Arc::new(ondevice_registry::Registry::new(store.clone(), dir.path()).unwrap());
    let models = Arc::new(ondevice_registry::RegistryModels::new(registry));
    let services = ondevice_server::Services::new(verifier, models, Arc::new(NoWorkers));
    let state = AppState::new(services, opts, shutdown.clone());
    let (app, _health) = ondevice_server::router(state).await;
    let server = tokio::spawn(listener::serve(tcp, Some(acceptor), app, shutdown.clone(), Duration::from_secs(5)));

    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let url = |p: &str| format!("https://localhost:{}{p}", addr.port());
    for http1 in [false, true] {
        let mut b = reqwest::Client::builder().add_root_certificate(root.clone()).resolve("localhost", addr);
        if http1 {
            b = b.http1_only();
        }
        let client = b.build().unwrap();
        let r = client.get(url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let want = if http1 { reqwest::Version::HTTP_11 } else { reqwest::Version::HTTP_2 };
        assert_eq!(r.version(), want, "ALPN negotiation");
        let r = client.get(url("/api/v1/status")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let r = client.get(url("/api/v1/status")).bearer_auth(&key).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["tls"], true);
    }
    // A client that does not trust the certificate cannot connect.
    let untrusting = reqwest::Client::builder().resolve("localhost", addr).build().unwrap();
    assert!(untrusting.get(url("/healthz")).send().await.is_err());

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("server stops").unwrap();
}

#[test]
fn bad_tls_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a pem").unwrap();
    let missing = dir.path().join("missing.pem");
    let err = listener::tls_acceptor(&missing, &junk).err().unwrap().to_string();
    assert!(err.starts_with("tls certificate") && err.contains("missing.pem"), "{err}");
    let err = listener::tls_acceptor(&junk, &junk).err().unwrap().to_string();
    assert!(err.contains("no certificate"), "{err}");
}
