//! `[telemetry]`: where the opt-in usage report goes and how often one is made. Telemetry is off
//! until a user runs `ondevice telemetry enable` (consent is kept in `$ONDEVICE_HOME` with the
//! report's version); nothing here turns it on. `DO_NOT_TRACK=1` and `ONDEVICE_TELEMETRY=0`
//! turn it off whatever was consented.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Environment variable: `0` (or `false`, `off`) turns telemetry off whatever the consent says.
pub const ENV_TELEMETRY: &str = "ONDEVICE_TELEMETRY";
/// Environment variable overriding `telemetry.endpoint`.
pub const ENV_TELEMETRY_ENDPOINT: &str = "ONDEVICE_TELEMETRY_ENDPOINT";

/// `[telemetry]`: the opt-in usage report.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// Where reports go: `"file"` (the default: appended to `$ONDEVICE_HOME/telemetry/sent.jsonl`,
    /// nothing leaves the machine) or an `http://` / `https://` URL that receives each report as
    /// a JSON `POST`. Overridden by `ONDEVICE_TELEMETRY_ENDPOINT`.
    pub endpoint: String,
    /// Seconds between two reports (1 to 2592000; default one day).
    pub interval_s: u64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings { endpoint: "file".to_owned(), interval_s: 86_400 }
    }
}

impl TelemetrySettings {
    /// Checks values that single fields cannot express; errors are `(key, message)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let e = self.endpoint.trim();
        if e != "file" && !e.starts_with("http://") && !e.starts_with("https://") {
            return Err((
                "telemetry.endpoint",
                format!("{e:?} is not an endpoint: write \"file\" or an http:// or https:// URL"),
            ));
        }
        if !(1..=2_592_000).contains(&self.interval_s) {
            return Err(("telemetry.interval_s", "write a number of seconds from 1 to 2592000".to_owned()));
        }
        Ok(())
    }
}
