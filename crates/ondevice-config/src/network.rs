//! `[network]`: the offline switch. With `offline = true` the daemon opens no connection to a
//! non-loopback address: pulls, remote runtimes, telemetry uploads and webhook hooks fail before
//! connecting with an error naming this setting. Loopback peers (a llama-server on 127.0.0.1) are
//! not egress and stay reachable. `ONDEVICE_OFFLINE=1` (or `true`) turns it on, `0` off.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Environment variable overriding `network.offline`.
pub const ENV_OFFLINE: &str = "ONDEVICE_OFFLINE";

/// `[network]`: outbound connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSettings {
    /// Refuse every outbound connection to a non-loopback address (pulls, remote runtimes,
    /// telemetry, webhooks) before it is made. Loopback runtimes keep working. Overridden by
    /// `ONDEVICE_OFFLINE`.
    pub offline: bool,
}

/// Parses a boolean environment value (`1`/`true`/`yes`/`on`, `0`/`false`/`no`/`off`).
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}
