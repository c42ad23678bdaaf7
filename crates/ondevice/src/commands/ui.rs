//! `ondevice ui [--json]`: a one-time login link to the web console at `/ui/`, made by the
//! running daemon with the CLI's key (`$ONDEVICE_API_KEY` or the bootstrap token) through
//! `POST /api/v1/ui/login-links`. Opening it signs the browser in with that key's scopes; the
//! link works once, for two minutes.

use std::process::ExitCode;

use ondevice_config::Resolved;
use ondevice_server::ui::session::LoginLink;
use reqwest::Method;

use super::client::Client;
use crate::cli::JsonFlag;

pub async fn run(resolved: Resolved, flag: JsonFlag) -> anyhow::Result<ExitCode> {
    let client = Client::new(&resolved)?;
    let link: LoginLink = client.call(Method::POST, "/api/v1/ui/login-links", None).await?;
    if flag.json {
        println!("{}", serde_json::to_string_pretty(&link)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", link.url);
    eprintln!("open it in a browser on this machine: it signs in once, until {}", link.expires_at);
    Ok(ExitCode::SUCCESS)
}
