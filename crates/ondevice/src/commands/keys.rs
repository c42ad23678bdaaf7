//! `ondevice keys create | list | revoke`: API key management through the daemon's API.

use std::process::ExitCode;

use ondevice_config::Resolved;
use ondevice_server::routes::keys::{CreatedKey, KeyView};
use reqwest::Method;

use super::client::Client;
use crate::cli::KeysCommand;

pub async fn run(resolved: Resolved, cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    let client = Client::new(&resolved)?;
    match cmd {
        KeysCommand::Create(args) => {
            let scopes: Vec<&str> = args.scopes.iter().map(|s| s.as_str()).collect();
            let body = serde_json::json!({"name": args.name, "scopes": scopes});
            let created: CreatedKey = client.call(Method::POST, "/api/v1/keys", Some(&body)).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                println!("{}", created.key);
                eprintln!(
                    "created key {} ({}) with scopes {}; it is shown only now: store it safely",
                    created.info.id,
                    created.info.name,
                    created.info.scopes.join(",")
                );
            }
        }
        KeysCommand::List(flag) => {
            let keys: Vec<KeyView> = client.call(Method::GET, "/api/v1/keys", None).await?;
            if flag.json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                println!("{:<14} {:<20} {:<22} {:<22} {:<22} STATE", "ID", "NAME", "SCOPES", "CREATED", "LAST USED");
                for k in keys {
                    println!(
                        "{:<14} {:<20} {:<22} {:<22} {:<22} {}",
                        k.id,
                        k.name,
                        k.scopes.join(","),
                        k.created_at,
                        k.last_used_at.as_deref().unwrap_or("never"),
                        if k.revoked_at.is_some() { "revoked" } else { "active" }
                    );
                }
            }
        }
        KeysCommand::Revoke { id } => {
            let id: ondevice_auth::KeyId = id.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "invalid key id {id:?}: expected the 12 hex digits after odk_ (see `ondevice keys list`)"
                )
            })?;
            let k: KeyView = client.call(Method::DELETE, &format!("/api/v1/keys/{id}"), None).await?;
            println!("revoked key {} ({})", k.id, k.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}
