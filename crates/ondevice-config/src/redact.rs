//! Replaces secret values in a TOML tree before it is shown to a person.

/// Marker shown instead of a secret.
pub(crate) const REDACTED: &str = "<redacted>";

fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "token", "api_key", "apikey", "credential", "authorization"].iter().any(|s| k.contains(s))
}

/// Whether a secret-looking key clearly names a count or a limit (`max_tokens`,
/// `max_embed_input_tokens`, `retry_count`): its number is shown as it is.
fn is_count_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.starts_with("max_") || k.starts_with("min_") || ["_tokens", "_count", "_inputs"].iter().any(|s| k.ends_with(s))
}

/// Redacts values under secret-looking keys and the password part of URLs with credentials.
///
/// Numbers are secrets too (`password = 12345678`), except under keys that name a count or a
/// limit ([`is_count_key`]); tables are searched, booleans are shown.
pub(crate) fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                let shown = match v {
                    toml::Value::Table(_) | toml::Value::Boolean(_) => true,
                    toml::Value::Integer(_) | toml::Value::Float(_) => is_count_key(k),
                    _ => false,
                };
                if is_secret_key(k) && !shown {
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

    #[test]
    fn secret_numbers_are_redacted_but_counts_are_not() {
        let mut v: toml::Value = toml::from_str(
            "password = 12345678\nmax_tokens = 4096\n[e]\nmax_embed_input_tokens = 512\napi_key = 1.5\nsecret_count = 3\n",
        )
        .unwrap();
        redact(&mut v);
        let out = toml::to_string(&v).unwrap();
        assert!(!out.contains("12345678"), "{out}");
        assert!(out.contains("password = \"<redacted>\""), "{out}");
        assert!(!out.contains("1.5"), "{out}");
        assert!(out.contains("max_tokens = 4096"), "{out}");
        assert!(out.contains("max_embed_input_tokens = 512"), "{out}");
        assert!(out.contains("secret_count = 3"), "{out}");
    }
}
