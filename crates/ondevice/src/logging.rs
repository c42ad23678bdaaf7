//! Logging setup: stderr in text or JSON, plus (for the daemon) daily-rotated JSON files under
//! `$ONDEVICE_HOME/logs`.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;
use ondevice_config::{LogFormat, LogSettings};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the file writer flushing until dropped at exit.
pub struct LogGuard(#[allow(dead_code)] Option<WorkerGuard>);

/// Initialises logging. `file_dir` enables the rotating file log.
pub fn init(settings: &LogSettings, file_dir: Option<&Path>) -> anyhow::Result<LogGuard> {
    let filter = EnvFilter::try_new(&settings.level).with_context(|| {
        format!("invalid log level {:?}: use e.g. info, debug or info,ondevice_server=debug", settings.level)
    })?;
    // Colours only for a person at a terminal: not in files, journald or pipes, nor with NO_COLOR.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let stderr = match settings.format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(colour).with_writer(std::io::stderr).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    let (file, guard) = match file_dir {
        Some(dir) if settings.file => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create log directory {}", dir.display()))?;
            let appender = tracing_appender::rolling::Builder::new()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .filename_prefix("ondevice")
                .filename_suffix("log")
                .max_log_files(settings.max_files as usize)
                .build(dir)
                .with_context(|| format!("cannot open log files in {}", dir.display()))?;
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let layer = tracing_subscriber::fmt::layer().json().with_ansi(false).with_writer(writer);
            (Some(layer), Some(guard))
        }
        _ => (None, None),
    };
    tracing_subscriber::registry().with(filter).with(stderr).with(file).try_init().ok();
    Ok(LogGuard(guard))
}

use tracing_subscriber::Layer as _;
