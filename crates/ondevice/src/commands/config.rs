//! `ondevice config show | check | schema | reference`.

use std::path::Path;
use std::process::ExitCode;

use ondevice_config::{Resolved, schema};

use crate::cli::ConfigCommand;

pub fn run(resolved: Resolved, cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Show(flag) => {
            let source = resolved
                .config_file
                .as_ref()
                .map_or_else(|| "defaults (no config file)".to_owned(), |p| p.display().to_string());
            if flag.json {
                let v = serde_json::json!({
                    "config_file": resolved.config_file,
                    "home": resolved.paths.home,
                    "settings": toml_to_json(&ondevice_config::to_redacted_toml(&resolved.settings))?,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("# source: {source}");
                println!("# home: {}", resolved.paths.home.display());
                print!("{}", ondevice_config::to_redacted_toml(&resolved.settings));
            }
        }
        // Normally dispatched before the config is loaded (see `commands::run`).
        ConfigCommand::Check { file } => return check(&file),
        ConfigCommand::Schema => print!("{}", schema::json_schema_text()),
        ConfigCommand::Reference => print!("{}", schema::reference_markdown()),
    }
    Ok(ExitCode::SUCCESS)
}

fn toml_to_json(text: &str) -> anyhow::Result<serde_json::Value> {
    let v: toml::Value = toml::from_str(text)?;
    Ok(serde_json::to_value(v)?)
}

pub fn check(file: &Path) -> anyhow::Result<ExitCode> {
    match ondevice_config::check_file(file) {
        Ok(_) => {
            println!("{}: ok", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
    }
}
