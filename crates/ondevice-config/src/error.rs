//! The one error type of config loading; every variant says where and what to do.

use std::fmt;
use std::path::PathBuf;

/// A config file, variable or flag that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for the schema (syntax, unknown key, wrong type or value).
    #[error("{}: {message}", Location { path, line: Some(*line), column: Some(*column) })]
    Parse {
        /// The file, if the text came from one.
        path: Option<PathBuf>,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// Values that are each valid but not together, or refer to missing files.
    #[error("{}: {key}: {message}", Location { path, line: *line, column: None })]
    Invalid {
        /// The file, if the settings came from one.
        path: Option<PathBuf>,
        /// 1-based line of the key, when it is in the file.
        line: Option<usize>,
        /// Dotted key such as `auth.enabled`.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// An `ONDEVICE_*` variable has an unusable value.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// No data directory could be determined.
    #[error("cannot determine the data directory: set ONDEVICE_HOME")]
    NoHome,
}

impl ConfigError {
    /// The 1-based line the error points at, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Parse { line, .. } => Some(*line),
            ConfigError::Invalid { line, .. } => *line,
            _ => None,
        }
    }
}

struct Location<'a> {
    path: &'a Option<PathBuf>,
    line: Option<usize>,
    column: Option<usize>,
}

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path {
            Some(p) => write!(f, "{}", p.display())?,
            None => f.write_str("config")?,
        }
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        Ok(())
    }
}
