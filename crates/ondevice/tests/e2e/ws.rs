//! WebSocket surface of the real daemon (`/api/v1/ws`): handshake auth by header and by
//! subprotocol, the message protocol, revocation closing an open socket, and the close frame a
//! client gets when the daemon stops.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{Daemon, GARBAGE_KEY, Home, UNKNOWN_KEY, WsEvent, ws_connect, ws_next, ws_send};

/// Generous bound for any single message; the daemon re-checks keys every few seconds.
const WAIT: Duration = Duration::from_secs(30);

fn authorization(key: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {key}"))
}

#[tokio::test]
async fn websocket_handshake_requires_a_key() {
    let daemon = Daemon::start(Home::new());
    let refused = [
        vec![],
        vec![authorization(UNKNOWN_KEY)],
        vec![authorization(GARBAGE_KEY)],
        vec![("sec-websocket-protocol", format!("ondevice.v1, ondevice.bearer.{UNKNOWN_KEY}"))],
        vec![("sec-websocket-protocol", "ondevice.v1".to_owned())],
    ];
    for headers in refused {
        let got = ws_connect(&daemon, &headers).await.map(|_| ());
        assert_eq!(got, Err(StatusCode::UNAUTHORIZED), "handshake with {headers:?}");
    }

    // Header: the admin key works and the first message is hello.
    let (mut ws, _) = ws_connect(&daemon, &[authorization(daemon.admin_key())]).await.expect("admin handshake");
    let hello = ws_next(&mut ws, WAIT).await.json();
    assert_eq!(hello["type"], "hello", "{hello}");
    assert_eq!(hello["status"]["listen_address"], daemon.addr().to_string(), "{hello}");

    // Subprotocol: a read key, and the server selects ondevice.v1.
    let read = daemon.key(&["read"]).await;
    let offer = format!("ondevice.v1, ondevice.bearer.{}", read.secret);
    let (mut ws, resp) =
        ws_connect(&daemon, &[("sec-websocket-protocol", offer)]).await.expect("subprotocol handshake");
    let selected = resp.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok());
    assert_eq!(selected, Some("ondevice.v1"));
    assert_eq!(ws_next(&mut ws, WAIT).await.json()["type"], "hello");
    ws_send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(ws_next(&mut ws, WAIT).await.json()["type"], "pong");
    ws_send(&mut ws, json!({"type": "status"})).await;
    let status = ws_next(&mut ws, WAIT).await.json();
    assert_eq!(
        (status["type"].as_str(), status["status"]["version"].as_str()),
        (Some("status"), Some(env!("CARGO_PKG_VERSION")))
    );
    ws_send(&mut ws, json!({"type": "bogus"})).await;
    assert_eq!(ws_next(&mut ws, WAIT).await.json()["error"]["code"], "invalid_request");

    // x-api-key works too.
    let (mut ws, _) = ws_connect(&daemon, &[("x-api-key", read.secret.clone())]).await.expect("x-api-key handshake");
    assert_eq!(ws_next(&mut ws, WAIT).await.json()["type"], "hello");
}

#[tokio::test]
async fn revoking_a_key_closes_its_open_websocket() {
    let daemon = Daemon::start(Home::new());
    let read = daemon.key(&["read"]).await;
    let (mut ws, _) = ws_connect(&daemon, &[authorization(&read.secret)]).await.expect("handshake");
    assert_eq!(ws_next(&mut ws, WAIT).await.json()["type"], "hello");

    daemon.revoke(&read.id).await;
    // Requests on the open socket are refused at once...
    ws_send(&mut ws, json!({"type": "status"})).await;
    let reply = ws_next(&mut ws, WAIT).await.json();
    assert_eq!(
        (reply["type"].as_str(), reply["error"]["code"].as_str()),
        (Some("error"), Some("unauthenticated")),
        "{reply}"
    );
    // ...and the socket is closed with 1008 (policy violation) at the next periodic check.
    loop {
        match ws_next(&mut ws, WAIT).await {
            WsEvent::Json(v) => assert_eq!(v["type"], "event", "only events may come before the close: {v}"),
            WsEvent::Closed(code) => {
                assert_eq!(code, Some(1008));
                break;
            }
            WsEvent::Failed(e) => panic!("socket broke without a close frame: {e}"),
        }
    }
    // A new handshake with the revoked key is refused.
    let again = ws_connect(&daemon, &[authorization(&read.secret)]).await.map(|_| ());
    assert_eq!(again, Err(StatusCode::UNAUTHORIZED));
}

#[tokio::test]
async fn sigterm_closes_websockets_with_1001_and_exits_zero() {
    let mut daemon = Daemon::start(Home::new());
    let (mut ws, _) = ws_connect(&daemon, &[authorization(daemon.admin_key())]).await.expect("handshake");
    assert_eq!(ws_next(&mut ws, WAIT).await.json()["type"], "hello");

    daemon.terminate();
    loop {
        match ws_next(&mut ws, WAIT).await {
            // `daemon.stopping` is published to watchers before the sockets close.
            WsEvent::Json(v) => assert_eq!(v["type"], "event", "{v}"),
            WsEvent::Closed(code) => {
                assert_eq!(code, Some(1001), "going away");
                break;
            }
            WsEvent::Failed(e) => {
                let exit = daemon.wait_exit();
                panic!("socket broke without a close frame ({e}); daemon {exit}, stderr:\n{}", daemon.stderr())
            }
        }
    }
    drop(ws);
    let status = daemon.wait_exit();
    assert!(status.success(), "exit status {status}; stderr:\n{}", daemon.stderr());
    assert!(!daemon.home().file("listen.addr").exists(), "listen.addr is removed on a clean stop");
    assert!(!daemon.home().file("ondevice.sock").exists(), "the control socket is removed on a clean stop");
}
