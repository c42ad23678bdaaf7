//! `ondevice stop MODEL`: unloads a model now, like `ollama stop`, through
//! `POST /api/v1/runtimes/unload` (models scope). A model that is not loaded is an error.

use std::process::ExitCode;

use anyhow::bail;
use ondevice_config::Resolved;
use ondevice_server::routes::runtimes::UnloadView;
use reqwest::Method;

use super::client::Client;

pub async fn run(resolved: Resolved, model: String) -> anyhow::Result<ExitCode> {
    let client = Client::new(&resolved)?;
    let body = serde_json::json!({ "model": model });
    let view: UnloadView = client.call(Method::POST, "/api/v1/runtimes/unload", Some(&body)).await?;
    if !view.unloaded {
        bail!("model {} is not loaded: see `ondevice ps`", view.model);
    }
    println!("stopped {}", view.model);
    Ok(ExitCode::SUCCESS)
}
