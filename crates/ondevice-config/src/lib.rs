//! Configuration of ondevice as a typed pipeline: the TOML file, then `ONDEVICE_*` environment
//! variables, then command-line flags, merged and validated into [`Settings`].
//!
//! Parsing is strict (unknown keys are errors) and every error names the file, line and column.
//! The JSON schema and the reference page are generated from these types ([`schema`]).

#![warn(missing_docs)]

mod error;
pub mod inference;
pub mod jobs;
mod locate;
pub mod network;
mod redact;
pub mod registry;
pub mod runtimes;
pub mod schema;
pub mod secret;
mod settings;
pub mod telemetry;
pub mod ui;
mod units;
pub mod vector;
pub mod workers;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use error::ConfigError;
pub use secret::{Secret, SecretError, SecretRef};
pub use settings::{AuthSettings, LogFormat, LogSettings, ServerSettings, Settings, TlsSettings};
pub use units::{ByteSize, ByteSizeError, ListenAddr, ListenAddrError};

/// The largest `server.body_limit` (1 GiB): the daemon's engine workers accept bodies this large
/// (plus room for their own fields), so every request the daemon takes reaches the engine.
pub const MAX_BODY_LIMIT: u64 = 1 << 30;
/// Environment variable naming the data directory.
pub const ENV_HOME: &str = "ONDEVICE_HOME";
/// Environment variable naming the config file.
pub const ENV_CONFIG: &str = "ONDEVICE_CONFIG";
/// Environment variable overriding `server.listen`.
pub const ENV_LISTEN: &str = "ONDEVICE_LISTEN";
/// Environment variable overriding `log.format`.
pub const ENV_LOG_FORMAT: &str = "ONDEVICE_LOG_FORMAT";
/// Environment variable overriding `log.level`.
pub const ENV_LOG_LEVEL: &str = "ONDEVICE_LOG";
/// Environment variable holding the API key CLI client commands send.
pub const ENV_API_KEY: &str = "ONDEVICE_API_KEY";
/// Environment variable: CPU threads of each embedded engine worker (`[engine] threads`).
pub const ENV_ENGINE_THREADS: &str = "ONDEVICE_ENGINE_THREADS";

/// The `ONDEVICE_*` variables of a process, captured once so loading is deterministic and testable.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    vars: BTreeMap<String, String>,
}

impl Environment {
    /// Captures the `ONDEVICE_*` variables of this process.
    pub fn from_process() -> Self {
        Environment { vars: std::env::vars().filter(|(k, _)| k.starts_with("ONDEVICE_")).collect() }
    }

    /// An environment with exactly these variables (tests, embedding).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Environment { vars: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }

    /// A non-empty variable's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }
}

/// Values given as command-line flags; they win over the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<ListenAddr>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `--config`: the config file, instead of `ONDEVICE_CONFIG` or the platform default.
    pub config_file: Option<PathBuf>,
}

/// Where ondevice keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// `ONDEVICE_HOME`: registry DB, blobs, keys, logs, jobs.
    pub home: PathBuf,
}

impl Paths {
    /// The SQLite database.
    pub fn database(&self) -> PathBuf {
        self.home.join("ondevice.db")
    }
    /// The admin credential written on first start (mode 0600).
    pub fn bootstrap_token(&self) -> PathBuf {
        self.home.join("bootstrap.token")
    }
    /// The pid file of the running daemon (locked while it runs).
    pub fn pid_file(&self) -> PathBuf {
        self.home.join("ondevice.pid")
    }
    /// The local control socket (mode 0600) used by `ondevice daemon`; on Windows a named pipe
    /// ([`pipe_for_home`]).
    pub fn control_socket(&self) -> PathBuf {
        if cfg!(windows) {
            return pipe_for_home(&std::path::absolute(&self.home).unwrap_or_else(|_| self.home.clone()));
        }
        self.home.join("ondevice.sock")
    }
    /// The directory of rotating log files.
    pub fn logs(&self) -> PathBuf {
        self.home.join("logs")
    }
    /// Where the daemon records its actual listen address once bound (for clients).
    pub fn listen_file(&self) -> PathBuf {
        self.home.join("listen.addr")
    }
}

/// The control pipe of the daemon whose home is `home` (absolute) on Windows:
/// `\\.\pipe\ondevice-<16 hex digits>`. Pipe names are machine-wide, so the home (which is per
/// user) keeps daemons of different users and homes apart; the hash (64-bit FNV-1a of the lowercased
/// path, as Windows paths ignore case) does not change between builds, so a newer CLI still finds an
/// older daemon.
pub fn pipe_for_home(home: &Path) -> PathBuf {
    let key = home.to_string_lossy().to_lowercase();
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    PathBuf::from(format!(r"\\.\pipe\ondevice-{hash:016x}"))
}

/// The result of loading: validated settings plus where they came from.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The merged, validated settings.
    pub settings: Settings,
    /// State directories.
    pub paths: Paths,
    /// The config file that was read, if one existed.
    pub config_file: Option<PathBuf>,
}

/// The default config file: `<platform config dir>/ondevice/config.toml`.
pub fn default_config_file() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "ondevice").map(|d| d.config_dir().join("config.toml"))
}

/// The default data dir: the platform data dir (`~/.local/share/ondevice` on Linux).
pub fn default_home() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "ondevice").map(|d| d.data_dir().to_path_buf())
}

/// Loads the config file (a missing default file means defaults), applies the environment and
/// the flags, and validates the result.
pub fn load(env: &Environment, overrides: &Overrides) -> Result<Resolved, ConfigError> {
    let explicit = overrides.config_file.clone().or_else(|| env.get(ENV_CONFIG).map(PathBuf::from));
    let (mut settings, text, config_file) = match explicit {
        Some(path) => {
            let text = read(&path)?;
            (parse(&text, Some(&path))?, Some(text), Some(path))
        }
        None => match default_config_file() {
            Some(path) if path.exists() => {
                let text = read(&path)?;
                (parse(&text, Some(&path))?, Some(text), Some(path))
            }
            _ => (Settings::default(), None, None),
        },
    };

    let mut listen_from = None;
    if let Some(v) = env.get(ENV_LISTEN) {
        settings.server.listen = v
            .parse()
            .map_err(|e: ListenAddrError| ConfigError::Env { var: ENV_LISTEN.to_owned(), message: e.to_string() })?;
        listen_from = Some(ENV_LISTEN);
    }
    if let Some(v) = env.get(ENV_LOG_FORMAT) {
        settings.log.format =
            v.parse().map_err(|message| ConfigError::Env { var: ENV_LOG_FORMAT.to_owned(), message })?;
    }
    if let Some(v) = env.get(ENV_LOG_LEVEL) {
        v.clone_into(&mut settings.log.level);
    }
    if let Some(v) = env.get(ENV_ENGINE_THREADS) {
        settings.engine.threads = v.trim().parse().map_err(|_| ConfigError::Env {
            var: ENV_ENGINE_THREADS.to_owned(),
            message: format!("{v:?} is not a thread count: write a whole number (0 = physical cores)"),
        })?;
    }
    if let Some(v) = env.get(registry::ENV_REGISTRY_ALLOW_HOSTS) {
        settings.registry.apply_env_allow_hosts(v);
    }
    if let Some(v) = env.get(network::ENV_OFFLINE) {
        settings.network.offline = network::parse_bool(v).ok_or_else(|| ConfigError::Env {
            var: network::ENV_OFFLINE.to_owned(),
            message: format!("{v:?} is not a switch: write 1 or 0"),
        })?;
    }
    if let Some(v) = env.get(telemetry::ENV_TELEMETRY_ENDPOINT) {
        v.trim().clone_into(&mut settings.telemetry.endpoint);
    }
    if let Some(listen) = overrides.listen {
        settings.server.listen = listen;
        listen_from = Some("--listen");
    }
    if let Some(f) = overrides.log_format {
        settings.log.format = f;
    }
    if let Some(l) = &overrides.log_level {
        settings.log.level.clone_from(l);
    }

    validate(&settings, text.as_deref(), config_file.as_deref(), listen_from)?;

    let home = match env.get(ENV_HOME) {
        Some(h) => PathBuf::from(h),
        None => default_home().ok_or(ConfigError::NoHome)?,
    };
    Ok(Resolved { settings, paths: Paths { home }, config_file })
}

/// Parses and validates one config file on its own (`ondevice config check FILE`).
pub fn check_file(path: &Path) -> Result<Settings, ConfigError> {
    let text = read(path)?;
    let settings = parse(&text, Some(path))?;
    validate(&settings, Some(&text), Some(path), None)?;
    Ok(settings)
}

/// Parses config text strictly. Errors carry the line and column of the offending key or value.
pub fn parse(text: &str, path: Option<&Path>) -> Result<Settings, ConfigError> {
    toml::from_str::<Settings>(text).map_err(|e| {
        let (line, column) = e.span().map(|s| locate::line_col(text, s.start)).unwrap_or((1, 1));
        ConfigError::Parse { path: path.map(Path::to_path_buf), line, column, message: e.message().trim().to_owned() }
    })
}

/// The resolved settings as TOML with secrets replaced by `"<redacted>"` (`ondevice config show`).
pub fn to_redacted_toml(settings: &Settings) -> String {
    let mut value = toml::Value::try_from(settings).unwrap_or_else(|_| toml::Value::Table(Default::default()));
    redact::redact(&mut value);
    toml::to_string_pretty(&value).unwrap_or_default()
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })
}

/// Cross-field checks that single values cannot express.
fn validate(
    s: &Settings,
    text: Option<&str>,
    path: Option<&Path>,
    listen_from: Option<&'static str>,
) -> Result<(), ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: path.map(Path::to_path_buf),
        line: text.and_then(|t| locate::key_line(t, key)),
        key: key.to_owned(),
        message,
    };
    if !s.auth.enabled && !s.server.listen.is_loopback() {
        let from = listen_from.map(|f| format!(" (set by {f})")).unwrap_or_default();
        return Err(invalid(
            "auth.enabled",
            format!(
                "auth cannot be disabled while listening on the non-loopback address {}{from}: enable auth or listen on 127.0.0.1",
                s.server.listen
            ),
        ));
    }
    for (i, host) in s.server.allowed_hosts.iter().enumerate() {
        let ok = !host.is_empty()
            && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'));
        if !ok {
            return Err(invalid(
                "server.allowed_hosts",
                format!(
                    "entry {i} {host:?} is not a host name: write names like \"ondevice.lan\", without scheme or path"
                ),
            ));
        }
    }
    for origin in &s.server.cors_origins {
        if !valid_origin(origin) {
            return Err(invalid(
                "server.cors_origins",
                format!(
                    "{origin:?} is not an origin: write scheme://host[:port] such as \"http://localhost:3000\", without a path"
                ),
            ));
        }
    }
    if s.server.body_limit.bytes() < 1024 {
        return Err(invalid("server.body_limit", "must be at least 1KiB".to_owned()));
    }
    if s.server.body_limit.bytes() > MAX_BODY_LIMIT {
        return Err(invalid("server.body_limit", "must be at most 1GiB".to_owned()));
    }
    if s.server.max_concurrent_requests == 0 {
        return Err(invalid("server.max_concurrent_requests", "must be at least 1".to_owned()));
    }
    validate_inference(s, &invalid)?;
    validate_runtimes(s, &invalid)?;
    s.registry.validate().map_err(|(key, message)| invalid(key, message))?;
    s.jobs.validate().map_err(|(key, message)| invalid(key, message))?;
    s.vector.validate().map_err(|(key, message)| invalid(key, message))?;
    s.telemetry.validate().map_err(|(key, message)| invalid(key, message))?;
    s.ui.validate().map_err(|(key, message)| invalid(key, message))?;
    if s.log.max_files == 0 {
        return Err(invalid("log.max_files", "must be at least 1".to_owned()));
    }
    if let Some(tls) = &s.server.tls {
        for (key, p) in [("server.tls.cert", &tls.cert), ("server.tls.key", &tls.key)] {
            if !p.is_file() {
                return Err(invalid(key, format!("{} is not a readable file", p.display())));
            }
        }
    }
    Ok(())
}

fn validate_inference(s: &Settings, invalid: &dyn Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
    let e = &s.engine;
    if e.parallel == 0 || e.parallel > 64 {
        return Err(invalid("engine.parallel", "must be between 1 and 64".to_owned()));
    }
    if e.context_length < 128 {
        return Err(invalid("engine.context_length", "must be at least 128 tokens".to_owned()));
    }
    if e.threads > 1024 {
        return Err(invalid("engine.threads", "must be at most 1024 (0 = physical cores)".to_owned()));
    }
    let i = &s.inference;
    inference::KeepAlive::parse(&i.keep_alive).map_err(|m| invalid("inference.keep_alive", m))?;
    if i.max_loaded_models == 0 {
        return Err(invalid("inference.max_loaded_models", "must be at least 1".to_owned()));
    }
    if i.max_concurrent == 0 {
        return Err(invalid("inference.max_concurrent", "must be at least 1".to_owned()));
    }
    for (key, value) in [
        ("inference.max_tokens", i.max_tokens),
        ("inference.max_embed_inputs", i.max_embed_inputs),
        ("inference.max_embed_input_tokens", i.max_embed_input_tokens),
    ] {
        if value == 0 {
            return Err(invalid(key, "must be at least 1".to_owned()));
        }
    }
    if i.breaker.failures == 0 {
        return Err(invalid("inference.breaker.failures", "must be at least 1".to_owned()));
    }
    let known = |name: &str| name == "embedded" || s.runtimes.contains_key(name);
    let check_chain = |key: &str, chain: &[String]| -> Result<(), ConfigError> {
        if chain.is_empty() {
            return Err(invalid(key, "name at least one runtime, such as \"embedded\"".to_owned()));
        }
        for r in chain {
            if !known(r) {
                return Err(invalid(key, format!("unknown runtime {r:?}: use \"embedded\" or declare [runtimes.{r}]")));
            }
        }
        Ok(())
    };
    check_chain("inference.default_runtimes", &i.default_runtimes)?;
    for (model, route) in &i.models {
        if model.is_empty() || model.len() > 200 || model.chars().any(|c| c.is_control() || c == '/') {
            return Err(invalid("inference.models", format!("{model:?} is not a model name")));
        }
        check_chain("runtimes", &route.runtimes)?;
    }
    Ok(())
}

fn validate_runtimes(s: &Settings, invalid: &dyn Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
    for (name, rt) in &s.runtimes {
        let ok = !name.is_empty()
            && name != "embedded"
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(invalid(
                &format!("runtimes.{name}"),
                format!("{name:?} is not a runtime name: use letters, digits, -, _ and . (\"embedded\" is reserved)"),
            ));
        }
        runtimes::validate(rt).map_err(|(key, message)| invalid(&format!("runtimes.{name}.{key}"), message))?;
    }
    Ok(())
}

fn valid_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains('/')
        && rest.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

#[cfg(test)]
mod tests;
