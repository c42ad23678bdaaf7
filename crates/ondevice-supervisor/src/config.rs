//! Conversion from the TOML-facing `[workers.NAME]` types (`ondevice_config::workers`) to the
//! supervisor's [`WorkerSpec`] and the sandbox's [`SandboxPolicy`].

use std::time::Duration;

use ondevice_config::workers as cfg;
use ondevice_sandbox::{CpuMax, Network, SandboxMode, SandboxPolicy, Wrapper};

use crate::spec::{Backoff, Hook, Hooks, MaxRestarts, ProbeCheck, ProbeSpec, RestartPolicy, WorkerSpec};

/// A `[workers.NAME]` table that cannot be turned into a worker spec.
#[derive(Debug, thiserror::Error)]
#[error("workers.{worker}: {reason}")]
pub struct ConfigError {
    /// Worker name.
    pub worker: String,
    /// What is wrong.
    pub reason: String,
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}

fn probe(p: &cfg::Probe) -> ProbeSpec {
    let check = match p.check() {
        cfg::ProbeCheck::Http(u) => ProbeCheck::Http(u),
        cfg::ProbeCheck::Tcp(a) => ProbeCheck::Tcp(a),
        cfg::ProbeCheck::Unix(p) => ProbeCheck::Unix(p),
        cfg::ProbeCheck::Exec(c) => ProbeCheck::Exec(c.into_iter().map(Into::into).collect()),
        cfg::ProbeCheck::Grpc(a) => ProbeCheck::Grpc(a),
    };
    ProbeSpec {
        check,
        initial_delay: secs(p.initial_delay_s),
        period: secs(p.period_s),
        timeout: secs(p.timeout_s),
        failure_threshold: p.failure_threshold,
        success_threshold: p.success_threshold,
    }
}

fn hooks(list: &[cfg::HookAction]) -> Vec<Hook> {
    list.iter()
        .map(|h| match h {
            cfg::HookAction::Exec(c) => Hook::Exec(c.iter().map(Into::into).collect()),
            cfg::HookAction::Webhook(u) => Hook::Webhook(u.clone()),
        })
        .collect()
}

/// The sandbox policy of a `[workers.NAME.sandbox]` table.
pub fn sandbox_policy(s: &cfg::SandboxConfig) -> SandboxPolicy {
    SandboxPolicy {
        mode: match s.mode {
            cfg::SandboxMode::Auto => SandboxMode::Auto,
            cfg::SandboxMode::On => SandboxMode::On,
            cfg::SandboxMode::Off => SandboxMode::Off,
        },
        memory_max: s.memory_max.map(|b| b.0),
        memory_high: s.memory_high.map(|b| b.0),
        cpu_max: s.cpu_max.map(|c| CpuMax { millicores: c.millicores }),
        pids_max: s.pids_max,
        nofile: s.nofile,
        address_space: s.address_space.map(|b| b.0),
        cpu_time_s: s.cpu_time_s,
        core_size: s.core_size.map(|b| b.0),
        file_size: s.file_size.map(|b| b.0),
        network: match s.network {
            cfg::NetworkMode::Host => Network::Host,
            cfg::NetworkMode::None => Network::None,
        },
        fs_read: s.fs_read.clone(),
        fs_write: s.fs_write.clone(),
        seccomp: s.seccomp,
        wrapper: match s.wrapper {
            cfg::WrapperKind::None => Wrapper::None,
            cfg::WrapperKind::Bwrap => Wrapper::Bwrap,
            cfg::WrapperKind::Firejail => Wrapper::Firejail,
        },
    }
}

impl WorkerSpec {
    /// Build the spec of worker `name` from its `[workers.NAME]` table.
    pub fn from_config(name: &str, c: &cfg::WorkerConfig) -> Result<WorkerSpec, ConfigError> {
        if c.command.is_empty() {
            return Err(ConfigError { worker: name.to_string(), reason: "command is empty".into() });
        }
        let mut spec = WorkerSpec::new(name, c.command.iter());
        spec.env = c.env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        spec.cwd = c.cwd.clone();
        spec.user = c.user.clone();
        spec.restart = match c.restart {
            cfg::RestartPolicy::Never => RestartPolicy::Never,
            cfg::RestartPolicy::OnFailure => RestartPolicy::OnFailure,
            cfg::RestartPolicy::Always => RestartPolicy::Always,
        };
        spec.backoff = Backoff {
            initial: Duration::from_millis(c.backoff.initial_ms),
            max: Duration::from_millis(c.backoff.max_ms),
            factor: c.backoff.factor,
            ..Backoff::default()
        };
        spec.max_restarts =
            MaxRestarts { count: c.max_restarts.count, within: Duration::from_secs(c.max_restarts.within_s) };
        spec.stable_after = Duration::from_secs(c.stable_after_s);
        spec.stop_grace = Duration::from_secs(c.stop_grace_s);
        spec.startup = c.startup.as_ref().map(probe);
        spec.liveness = c.liveness.as_ref().map(probe);
        spec.readiness = c.readiness.as_ref().map(probe);
        spec.hooks = Hooks {
            on_start: hooks(&c.hooks.on_start),
            on_exit: hooks(&c.hooks.on_exit),
            on_restart: hooks(&c.hooks.on_restart),
            on_give_up: hooks(&c.hooks.on_give_up),
        };
        spec.sandbox = sandbox_policy(&c.sandbox);
        spec.required = c.required;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_example_converts() {
        let c: cfg::WorkerConfig = toml::from_str(
            r#"
command = ["program", "arg"]
restart = "on-failure"
backoff = { initial_ms = 200, max_ms = 30000, factor = 2.0 }
max_restarts = { count = 5, within_s = 60 }
liveness = { http = "http://127.0.0.1:9/health", period_s = 5, failure_threshold = 3 }
sandbox = { mode = "auto", memory_max = "64MiB", pids_max = 32, network = "none", cpu_max = "50%" }
hooks = { on_exit = [{ webhook = "http://127.0.0.1:9/hook" }] }
"#,
        )
        .unwrap();
        let s = WorkerSpec::from_config("NAME", &c).unwrap();
        assert_eq!(s.command, ["program", "arg"].map(std::ffi::OsString::from));
        assert_eq!(s.backoff.base_delay(2), Duration::from_millis(800));
        assert_eq!(s.max_restarts.within, Duration::from_secs(60));
        let l = s.liveness.unwrap();
        assert_eq!(l.check, ProbeCheck::Http("http://127.0.0.1:9/health".into()));
        assert_eq!((l.period, l.failure_threshold), (Duration::from_secs(5), 3));
        assert_eq!(s.sandbox.memory_max, Some(64 << 20));
        assert_eq!(s.sandbox.cpu_max, Some(CpuMax { millicores: 500 }));
        assert_eq!(s.sandbox.network, Network::None);
        assert!(s.sandbox.seccomp);
        assert_eq!(s.sandbox.core_size, Some(0));
        assert_eq!(s.hooks.on_exit, [Hook::Webhook("http://127.0.0.1:9/hook".into())]);
    }
}
