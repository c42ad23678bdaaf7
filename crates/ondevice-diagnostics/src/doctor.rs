//! Doctor checks: each gives a status, what was found and, unless it passed, the fix. The checks
//! here need only the file system and the OS; the binary adds those that need its own parts (CPU
//! builds, sandbox, models, runtimes).

use std::net::SocketAddr;
use std::path::Path;

use serde::Serialize;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Fine.
    Ok,
    /// Works, but something is worth changing.
    Warn,
    /// Broken: ondevice (or part of it) will not work until fixed.
    Fail,
    /// Not applicable here.
    Skip,
}

impl CheckStatus {
    /// `ok`, `warn`, `fail`, `skip`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Ok => "ok",
            CheckStatus::Warn => "warn",
            CheckStatus::Fail => "fail",
            CheckStatus::Skip => "skip",
        }
    }
}

/// One check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short name (`disk space`).
    pub name: String,
    /// Outcome.
    pub status: CheckStatus,
    /// What was found.
    pub detail: String,
    /// What to do about it (absent when it passed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    /// A passed check.
    pub fn ok(name: &str, detail: impl Into<String>) -> Check {
        Check { name: name.to_owned(), status: CheckStatus::Ok, detail: detail.into(), fix: None }
    }

    /// A check with a problem and its fix.
    pub fn problem(name: &str, status: CheckStatus, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { name: name.to_owned(), status, detail: detail.into(), fix: Some(fix.into()) }
    }

    /// A check that does not apply.
    pub fn skip(name: &str, detail: impl Into<String>) -> Check {
        Check { name: name.to_owned(), status: CheckStatus::Skip, detail: detail.into(), fix: None }
    }
}

/// Free space on the home's file system: below 1 GiB fails, below 10 GiB warns.
pub fn disk_space(home: &Path) -> Check {
    const NAME: &str = "disk space";
    match crate::system::disk_of(home) {
        None => Check::skip(NAME, "the file system of the home could not be determined"),
        Some(d) => {
            let gib = d.available as f64 / f64::from(1u32 << 30);
            let detail = format!("{gib:.1} GiB free of {:.1} GiB", d.total as f64 / f64::from(1u32 << 30));
            if d.available < 1 << 30 {
                Check::problem(
                    NAME,
                    CheckStatus::Fail,
                    detail,
                    "free space under the home, or remove models with `ondevice models rm` and `ondevice models gc`",
                )
            } else if d.available < 10 << 30 {
                Check::problem(
                    NAME,
                    CheckStatus::Warn,
                    detail,
                    "models need several GiB each: free space or run `ondevice models gc`",
                )
            } else {
                Check::ok(NAME, detail)
            }
        }
    }
}

/// The home is private to its owner (0700) and the bootstrap token file is 0600.
pub fn permissions(home: &Path, token: &Path) -> Vec<Check> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).ok().map(|m| m.permissions().mode() & 0o777);
        let mut out = Vec::new();
        match mode(home) {
            None => {
                out.push(Check::skip("home permissions", "the home does not exist yet (the daemon creates it 0700)"))
            }
            Some(m) if m & 0o077 == 0 => out.push(Check::ok("home permissions", format!("{m:04o}"))),
            Some(m) => out.push(Check::problem(
                "home permissions",
                CheckStatus::Fail,
                format!("{m:04o}: other users can read the home"),
                "run `chmod 700 $ONDEVICE_HOME`",
            )),
        }
        match mode(token) {
            None => out.push(Check::skip("token file permissions", "no bootstrap token yet (written at the first start)")),
            Some(m) if m & 0o077 == 0 => out.push(Check::ok("token file permissions", format!("{m:04o}"))),
            Some(m) => out.push(Check::problem(
                "token file permissions",
                CheckStatus::Fail,
                format!("{m:04o}: other users can read the admin token"),
                "run `chmod 600 $ONDEVICE_HOME/bootstrap.token`, then rotate it: delete the file and restart the daemon",
            )),
        }
        out
    }
    #[cfg(not(unix))]
    {
        let _ = (home, token);
        vec![Check::skip("permissions", "checked on Unix only (the home inherits the profile's private ACL)")]
    }
}

/// The listen address: taken by our daemon is fine; free is fine; taken by another program fails.
pub fn listen_port(addr: SocketAddr, daemon_running: bool) -> Check {
    const NAME: &str = "listen address";
    if daemon_running {
        return Check::ok(NAME, format!("{addr}: the daemon is listening"));
    }
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Check::ok(NAME, format!("{addr} is free")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Check::problem(
            NAME,
            CheckStatus::Fail,
            format!("{addr} is taken by another program"),
            "stop that program, or choose another address with ONDEVICE_LISTEN or [server] listen",
        ),
        Err(e) => Check::problem(
            NAME,
            CheckStatus::Fail,
            format!("cannot listen on {addr}: {e}"),
            "choose an address of this machine with ONDEVICE_LISTEN or [server] listen",
        ),
    }
}

/// The clock: not before 2025, and agreeing (within 5 minutes) with the time the home's file
/// system stamps on a new file (a skewed clock breaks TLS to model hosts and job ordering).
pub fn clock(home: &Path) -> Check {
    const NAME: &str = "clock";
    let now = crate::now_unix();
    if now < 1_735_689_600 {
        return Check::problem(
            NAME,
            CheckStatus::Fail,
            format!("the system clock says {now} (before 2025)"),
            "set the clock (enable NTP: `timedatectl set-ntp true`)",
        );
    }
    let probe = home.join(format!(".clock-check-{}", std::process::id()));
    let stamped = std::fs::write(&probe, b"").and_then(|()| std::fs::metadata(&probe)?.modified());
    let _ = std::fs::remove_file(&probe);
    match stamped {
        Ok(t) => {
            let fs = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            let skew = (fs - now).abs();
            if skew > 300 {
                Check::problem(
                    NAME,
                    CheckStatus::Warn,
                    format!("the home's file system clock differs by {skew} s"),
                    "synchronise the clocks of this machine and the file server (NTP)",
                )
            } else {
                Check::ok(NAME, "system clock plausible and in step with the home's file system")
            }
        }
        Err(_) => Check::ok(NAME, "system clock plausible"),
    }
}

/// Human-readable lines for a list of checks.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let mark = match c.status {
            CheckStatus::Ok => "[ok]  ",
            CheckStatus::Warn => "[warn]",
            CheckStatus::Fail => "[FAIL]",
            CheckStatus::Skip => "[skip]",
        };
        out.push_str(&format!("{mark} {}: {}\n", c.name, c.detail));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("       fix: {fix}\n"));
        }
    }
    let fails = checks.iter().filter(|c| c.status == CheckStatus::Fail).count();
    let warns = checks.iter().filter(|c| c.status == CheckStatus::Warn).count();
    out.push_str(&format!("{} checks: {fails} failed, {warns} warnings\n", checks.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_and_port_checks_find_problems() {
        let home = tempfile::tempdir().unwrap();
        let token = home.path().join("bootstrap.token");
        std::fs::write(&token, "t").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
            let checks = permissions(home.path(), &token);
            assert!(checks.iter().all(|c| c.status == CheckStatus::Fail && c.fix.is_some()), "{checks:?}");
            std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(permissions(home.path(), &token).iter().all(|c| c.status == CheckStatus::Ok));
        }
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        assert_eq!(listen_port(addr, false).status, CheckStatus::Fail);
        assert_eq!(listen_port(addr, true).status, CheckStatus::Ok);
        drop(taken);
        assert_eq!(listen_port(addr, false).status, CheckStatus::Ok);
        assert_eq!(clock(home.path()).status, CheckStatus::Ok);
        assert_ne!(disk_space(home.path()).status, CheckStatus::Skip);
        assert!(render(&[Check::problem("x", CheckStatus::Fail, "d", "f")]).contains("fix: f"));
    }
}
