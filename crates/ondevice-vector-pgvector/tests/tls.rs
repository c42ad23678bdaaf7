//! The pgvector backend's TLS (`sslmode` in `[vector] url`) against a TLS listener on loopback
//! with a self-signed certificate, speaking PostgreSQL's `SSLRequest` opening: trusted through
//! `sslrootcert`, the handshake completes and the startup message arrives over TLS; without
//! `sslrootcert`, or for another host name, the connection is refused before any byte of the
//! startup message (user, database) leaves. (A full PostgreSQL with TLS is not started here:
//! pgserver runs on a Unix socket only; `pgvector.rs` checks that `sslmode=require` against it
//! fails instead of falling back to plain text.)

use std::sync::Arc;

use ondevice_vector_pgvector::PgVectorBackend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the listener saw of one connection.
#[derive(Debug)]
enum Seen {
    /// TLS established and this many bytes of a startup message naming the user arrived.
    Startup(String),
    /// The handshake failed.
    HandshakeFailed(String),
}

async fn listener() -> (u16, String, tokio::task::JoinHandle<Seen>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let pem = certified.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut s, _) = tcp.accept().await.unwrap();
        let mut req = [0u8; 8];
        s.read_exact(&mut req).await.unwrap();
        assert_eq!(req, [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f], "an SSLRequest comes first");
        s.write_all(b"S").await.unwrap();
        match acceptor.accept(s).await {
            Ok(mut tls) => {
                let mut len = [0u8; 4];
                tls.read_exact(&mut len).await.unwrap();
                let mut body = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                tls.read_exact(&mut body).await.unwrap();
                Seen::Startup(String::from_utf8_lossy(&body).into_owned())
            }
            Err(e) => Seen::HandshakeFailed(e.to_string()),
        }
    });
    (port, pem, task)
}

#[tokio::test]
async fn verify_full_with_the_servers_ca_reaches_the_startup_over_tls() {
    let (port, pem, seen) = listener().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let url =
        format!("host=localhost port={port} user=vectors dbname=kb sslmode=verify-full sslrootcert='{}'", ca.display());
    // The listener hangs up after the startup message, so the connection itself fails.
    let e = PgVectorBackend::connect(&url, 1).await.unwrap_err();
    match seen.await.unwrap() {
        Seen::Startup(body) => assert!(body.contains("vectors") && body.contains("kb"), "{body:?}"),
        other => panic!("{other:?} ({e})"),
    }
}

#[tokio::test]
async fn require_without_a_trusted_certificate_is_refused() {
    let (port, _pem, seen) = listener().await;
    let url = format!("postgresql://vectors@localhost:{port}/kb?sslmode=require");
    let e = PgVectorBackend::connect(&url, 1).await.unwrap_err().to_string();
    assert!(e.contains("certificate") && e.contains("UnknownIssuer"), "{e}");
    let seen = seen.await.unwrap();
    assert!(matches!(&seen, Seen::HandshakeFailed(why) if !why.is_empty()), "{seen:?}");
}

#[tokio::test]
async fn a_certificate_for_another_host_name_is_refused() {
    let (port, pem, seen) = listener().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    // The certificate names localhost; connecting to 127.0.0.1 must not accept it.
    let url = format!("host=127.0.0.1 port={port} user=vectors sslmode=verify-full sslrootcert={}", ca.display());
    let e = PgVectorBackend::connect(&url, 1).await.unwrap_err().to_string();
    assert!(e.contains("certificate not valid for name"), "{e}");
    let seen = seen.await.unwrap();
    assert!(matches!(&seen, Seen::HandshakeFailed(why) if !why.is_empty()), "{seen:?}");
}
