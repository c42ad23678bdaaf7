//! Replaces secret values in a TOML tree before it is shown to a person.

/// Marker shown instead of a secret.
pub(crate) const REDACTED: &str = "<redacted>";

fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "token", "api_key", "apikey", "credential", "authorization"].iter().any(|s| k.contains(s))
}

/// Redacts values under secret-looking keys and the password part of URLs with credentials.
pub(crate) fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                // Numbers and booleans are never secrets (`max_tokens` counts tokens, it is not one).
                let plain = matches!(
                    v,
                    toml::Value::Table(_) | toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)
                );
                if is_secret_key(k) && !plain {
                    *v = toml::Value::String(REDACTED.to_owned());
                } else {
                    redact(v);
                }
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(redact),
        toml::Value::String(s) => {
            if let Some(clean) = redact_url_userinfo(s) {
                *s = clean;
            }
        }
        _ => {}
    }
}

fn redact_url_userinfo(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    Some(format!("{scheme}://{REDACTED}@{}", &rest[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let mut v: toml::Value = toml::from_str(
            "[a]\napi_key = \"k\"\nurl = \"https://u:p@host/x\"\nname = \"n\"\n[a.b]\nbearer_token = \"t\"\n",
        )
        .unwrap();
        redact(&mut v);
        let out = toml::to_string(&v).unwrap();
        assert!(!out.contains("\"k\""), "{out}");
        assert!(!out.contains("u:p"), "{out}");
        assert!(!out.contains("\"t\""), "{out}");
        assert!(out.contains("name = \"n\""), "{out}");
        assert!(out.contains("https://<redacted>@host/x"), "{out}");
    }
}
