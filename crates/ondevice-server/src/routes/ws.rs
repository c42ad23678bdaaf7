//! `/api/v1/ws`: the authenticated WebSocket. It streams daemon status and events, answers
//! `status` and `ping` requests, and runs generations (`generate` and `cancel`, which need the
//! `infer` scope; see `ws/generate.rs`). Several generations may run at once on one socket; they
//! are polled by the session itself, so closing the socket drops them and frees their slots.
//!
//! Browsers cannot set headers on a WebSocket, so the key may also arrive as the subprotocol
//! `ondevice.bearer.<key>`; the server then selects the `ondevice.v1` subprotocol if offered
//! (else echoes the one offered) so that browsers accept the handshake.

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
    let tasks = state.tasks().clone();
    upgrade.on_upgrade(move |socket| tasks.track_future(session(state, headers, socket)))
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
                let Some(Ok(msg)) = msg else { return };
                let reply = match msg {
                    Message::Text(t) => answer(&state, &headers, t.as_str(), &mut gens),
                    Message::Close(_) => return,
                    _ => None,
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
