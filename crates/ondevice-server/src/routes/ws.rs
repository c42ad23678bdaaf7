//! `/api/v1/ws`: the authenticated WebSocket. It streams daemon status and events, answers
//! `status` and `ping` requests, and runs generations (`generate` and `cancel`, which need the
//! `infer` scope; see `ws/generate.rs`). Several generations may run at once on one socket; they
//! are polled by the session itself, so closing the socket drops them and frees their slots.
//!
//! Browsers cannot set headers on a WebSocket, so the key may also arrive as the subprotocol
//! `ondevice.bearer.<key>`; the server then selects the `ondevice.v1` subprotocol if offered
//! (else echoes the one offered) so that browsers accept the handshake.
//!
//! Messages are JSON text. A binary message is answered with an `unsupported` error (the socket
//! stays open). A message larger than `server.body_limit` closes the socket with code 1009
//! (message too big) and a reason naming the limit.

mod generate;

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use futures_util::StreamExt;
use ondevice_auth::{Scope, WS_BEARER_PREFIX};
use serde_json::json;

use crate::middleware::authenticate;
use crate::state::AppState;

/// Frames up to this many bytes over the message limit are still read whole (then refused with
/// 1009), so the socket stays in step and the close frame reaches the client; bigger frames are
/// refused from their header.
const FRAME_SLACK: usize = 8 << 20;
/// How long a closing socket waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The subprotocol name of ondevice's WebSocket messages.
pub const WS_PROTOCOL: &str = "ondevice.v1";
const RECHECK: Duration = Duration::from_secs(5);

/// Streams daemon events over a WebSocket.
#[utoipa::path(get, path = "/api/v1/ws", tag = "daemon",
    security(("bearer" = ["read"])),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade request", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn ws(State(state): State<AppState>, headers: HeaderMap, upgrade: WebSocketUpgrade) -> Response {
    let offered: Vec<String> = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(',').map(|p| p.trim().to_owned()).collect())
        .unwrap_or_default();
    let select = if offered.iter().any(|p| p == WS_PROTOCOL) {
        Some(WS_PROTOCOL.to_owned())
    } else {
        offered.iter().find(|p| p.starts_with(WS_BEARER_PREFIX)).cloned()
    };
    let upgrade = match select {
        Some(p) => upgrade.protocols([p]),
        None => upgrade,
    };
    let limit = usize::try_from(state.inner.options.body_limit).unwrap_or(usize::MAX);
    let upgrade = upgrade.max_message_size(limit).max_frame_size(limit.saturating_add(FRAME_SLACK));
    let tasks = state.tasks().clone();
    upgrade.on_upgrade(move |socket| tasks.track_future(session(state, headers, socket)))
}

/// Whether a receive error is a message or frame over the size limits.
fn too_big(e: &axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let inner = std::error::Error::source(e);
    matches!(inner.and_then(|s| s.downcast_ref::<WsError>()), Some(WsError::Capacity(_)))
}

/// Sends a close frame and waits (briefly) for the client's, so the close is clean.
async fn close(socket: &mut WebSocket, code: u16, reason: String) {
    if socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

async fn session(state: AppState, headers: HeaderMap, mut socket: WebSocket) {
    let mut events = state.inner.events.subscribe();
    let hello = json!({"type": "hello", "protocol": WS_PROTOCOL, "status": state.status()});
    if socket.send(Message::Text(hello.to_string().into())).await.is_err() {
        return;
    }
    let shutdown = state.shutdown_token().clone();
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.tick().await;
    let mut gens = generate::Generations::default();
    loop {
        tokio::select! {
            Some(out) = gens.next(), if !gens.is_empty() => {
                if socket.send(Message::Text(out.to_string().into())).await.is_err() {
                    return;
                }
            }
            () = shutdown.cancelled() => {
                let _ = socket.send(Message::Close(Some(CloseFrame { code: 1001, reason: "daemon stopping".into() }))).await;
                return;
            }
            _ = recheck.tick() => {
                if authenticate(&state, &headers, Scope::Read, "websocket").is_err() {
                    let _ = socket.send(Message::Close(Some(CloseFrame { code: 1008, reason: "api key revoked".into() }))).await;
                    return;
                }
            }
            ev = events.recv() => {
                let msg = match ev {
                    Ok(ev) => json!({"type": "event", "event": ev}),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => json!({"type": "lagged", "missed": n}),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if socket.send(Message::Text(msg.to_string().into())).await.is_err() {
                    return;
                }
            }
            msg = socket.recv() => {
                let msg = match msg {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) if too_big(&e) => {
                        let limit = state.inner.options.body_limit;
                        let reason = format!("message too big: the limit is {limit} bytes (server.body_limit)");
                        close(&mut socket, 1009, reason).await;
                        return;
                    }
                    Some(Err(_)) | None => return,
                };
                let reply = match msg {
                    Message::Text(t) => answer(&state, &headers, t.as_str(), &mut gens),
                    Message::Binary(_) => Some(json!({"type": "error", "error": {"code": "unsupported",
                        "message": "binary messages are not supported: send JSON text messages"}})),
                    Message::Close(_) => return,
                    Message::Ping(_) | Message::Pong(_) => None,
                };
                if let Some(reply) = reply {
                    if socket.send(Message::Text(reply.to_string().into())).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// The immediate reply to a client message, if any (generation output arrives later through
/// `gens`).
fn answer(
    state: &AppState,
    headers: &HeaderMap,
    text: &str,
    gens: &mut generate::Generations,
) -> Option<serde_json::Value> {
    if let Err(e) = authenticate(state, headers, Scope::Read, "websocket") {
        return Some(json!({"type": "error", "error": {"code": e.code(), "message": e.to_string()}}));
    }
    let msg = serde_json::from_str::<serde_json::Value>(text).ok();
    let kind = msg.as_ref().and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned));
    match kind.as_deref() {
        Some("status") => Some(json!({"type": "status", "status": state.status()})),
        Some("ping") => Some(json!({"type": "pong"})),
        Some("generate") => gens.start(state, headers, msg.unwrap_or_default()),
        Some("cancel") => Some(gens.cancel(&msg.unwrap_or_default())),
        _ => Some(json!({"type": "error", "error": {"code": "invalid_request",
            "message": "unknown message: send a message of type status, ping, generate or cancel"}})),
    }
}
