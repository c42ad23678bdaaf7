//! Connection handling shared by the HTTP adapters, against a real HTTP/1.1 server on 127.0.0.1
//! written here so it can misbehave on purpose: a connection closed under a request (what a server
//! does to an idle keep-alive connection) is retried once on a fresh one; a server that never
//! answers is reported unavailable after that one retry.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ondevice_adapters::HttpOptions;
use ondevice_adapters::openai::OpenAiAdapter;
use ondevice_runtime::{Runtime, RuntimeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const MODELS: &str = r#"{"object":"list","data":[{"id":"tiny","object":"model"}]}"#;

/// Serves `/v1/models`, closing the first `drop_first` connections right after reading their
/// request. Returns the base URL and the count of connections accepted.
async fn server(drop_first: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => request.extend_from_slice(&buf[..k]),
                    }
                }
                if n < drop_first {
                    return; // closed without a word
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{MODELS}",
                    MODELS.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn a_connection_closed_under_a_request_is_retried_once() {
    let (url, accepted) = server(1).await;
    let rt = OpenAiAdapter::new("lan", HttpOptions::new(&url)).unwrap();
    assert_eq!(rt.list_models().await.unwrap(), ["tiny"]);
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "one closed connection, one retry");
}

#[tokio::test]
async fn a_server_that_never_answers_is_unavailable_after_one_retry() {
    let (url, accepted) = server(usize::MAX).await;
    let rt = OpenAiAdapter::new("lan", HttpOptions::new(&url)).unwrap();
    let err = rt.list_models().await.unwrap_err();
    assert!(matches!(&err, RuntimeError::Unavailable { reason, .. } if reason.contains("closed")), "{err:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "the request and one retry");
}
