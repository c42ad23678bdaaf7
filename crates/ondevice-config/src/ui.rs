//! `[ui]`: the web console served by the daemon at `/ui/`, and its browser sessions (an API key
//! exchanged for an HttpOnly cookie; see docs/ui.md). Sessions live in the daemon's memory: a
//! restart ends them all.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `[ui]`: the web console and its sessions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UiSettings {
    /// Serve the web console at `/ui/` and its session routes under `/api/v1/ui/`; with `false`
    /// they answer 404 (the API is unaffected).
    pub enabled: bool,
    /// How long a console session lasts from sign-in at most (`"12h"`, `"30m"`; 1 minute to 30
    /// days). It ends sooner on logout, when its API key is revoked, or after `session_idle`.
    pub session_ttl: String,
    /// A console session unused for this long ends (`"2h"`; 1 minute up to `session_ttl`).
    pub session_idle: String,
    /// Console sessions kept at once (1 to 10000); signing in beyond it ends the oldest.
    pub max_sessions: u32,
}

impl Default for UiSettings {
    fn default() -> Self {
        UiSettings { enabled: true, session_ttl: "12h".to_owned(), session_idle: "2h".to_owned(), max_sessions: 64 }
    }
}

const MIN: Duration = Duration::from_secs(60);
const MAX: Duration = Duration::from_secs(30 * 24 * 3600);

fn duration(key: &'static str, value: &str) -> Result<Duration, (&'static str, String)> {
    let d = humantime::parse_duration(value.trim())
        .map_err(|e| (key, format!("{value:?} is not a duration ({e}): write \"12h\", \"30m\" or \"7days\"")))?;
    if !(MIN..=MAX).contains(&d) {
        return Err((key, format!("{value:?} is out of range: write 1m to 30days")));
    }
    Ok(d)
}

impl UiSettings {
    /// The absolute lifetime of a session (the default when the value does not parse; `load`
    /// has validated it).
    pub fn session_ttl(&self) -> Duration {
        duration("ui.session_ttl", &self.session_ttl).unwrap_or(Duration::from_secs(12 * 3600))
    }

    /// The idle timeout of a session, never longer than its lifetime.
    pub fn session_idle(&self) -> Duration {
        duration("ui.session_idle", &self.session_idle).unwrap_or(Duration::from_secs(2 * 3600)).min(self.session_ttl())
    }

    /// Checks values that single fields cannot express; errors are `(key, message)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let ttl = duration("ui.session_ttl", &self.session_ttl)?;
        let idle = duration("ui.session_idle", &self.session_idle)?;
        if idle > ttl {
            return Err(("ui.session_idle", format!("must not be longer than ui.session_ttl ({})", self.session_ttl)));
        }
        if !(1..=10_000).contains(&self.max_sessions) {
            return Err(("ui.max_sessions", "write a number from 1 to 10000".to_owned()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_limits() {
        let d = UiSettings::default();
        d.validate().unwrap();
        assert_eq!(d.session_ttl(), Duration::from_secs(12 * 3600));
        assert_eq!(d.session_idle(), Duration::from_secs(2 * 3600));
        let bad = UiSettings { session_ttl: "soon".into(), ..UiSettings::default() };
        assert_eq!(bad.validate().unwrap_err().0, "ui.session_ttl");
        let short = UiSettings { session_ttl: "10s".into(), ..UiSettings::default() };
        assert!(short.validate().unwrap_err().1.contains("out of range"));
        let idle = UiSettings { session_ttl: "1h".into(), session_idle: "2h".into(), ..UiSettings::default() };
        assert_eq!(idle.validate().unwrap_err().0, "ui.session_idle");
        let none = UiSettings { max_sessions: 0, ..UiSettings::default() };
        assert_eq!(none.validate().unwrap_err().0, "ui.max_sessions");
    }
}
