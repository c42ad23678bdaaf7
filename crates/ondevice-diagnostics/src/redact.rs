//! Redaction: everything that enters a bundle passes through one [`Redactor`].
//!
//! Layers, applied in this order to every text:
//! 1. literal values registered as secrets (the bootstrap token, resolved runtime keys, the
//!    values of secret-looking environment variables): replaced wherever they appear;
//! 2. patterns: ondevice keys (`odk_…`), `Bearer …`, well-known token shapes (`sk-…`, `hf_…`,
//!    `ghp_…`, JWTs), URL credentials (`scheme://user:pass@`), and `key = value` / `"key": "value"`
//!    pairs whose key looks secret (password, token, secret, api key, authorization, credential);
//! 3. paths: the ondevice home becomes `$ONDEVICE_HOME`, the user's home `~`, and any other
//!    `/home/NAME`, `/Users/NAME` or `C:\Users\NAME` loses its user name.
//!
//! Log lines that are JSON objects (the daemon's log files) also lose the values of fields that
//! carry conversation content (prompt, messages, content, input, output, completion, …) before
//! the text layers run; see [`Redactor::log_line`].
//!
//! Each replacement is counted by kind, so the manifest can say what was redacted from each file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use regex::{Captures, Regex};

/// What was redacted, by kind, with counts.
pub type Redactions = BTreeMap<&'static str, usize>;

struct Pattern {
    kind: &'static str,
    re: Regex,
    /// Replacement: group 1 (a prefix kept) followed by the marker.
    keep_prefix: bool,
}

fn pattern(kind: &'static str, re: &str, keep_prefix: bool) -> Pattern {
    Pattern { kind, re: Regex::new(re).expect("valid redaction pattern"), keep_prefix }
}

static PATTERNS: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    vec![
        pattern("api-key", r"odk_[A-Za-z0-9_\-]{6,}", false),
        pattern("token", r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=\-]{8,}", true),
        pattern(
            "token",
            r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{16,}|\bhf_[A-Za-z0-9]{16,}|\bgh[pousr]_[A-Za-z0-9]{16,}|\bgithub_pat_[A-Za-z0-9_]{16,}|\bxox[abprs]-[A-Za-z0-9\-]{10,}|\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
            false,
        ),
        pattern("url-credentials", r"(?i)(\b[a-z][a-z0-9+.\-]*://)[^/\s:@\x22']+(?::[^/\s@\x22']*)?@", true),
        // A URL's query (webhook signatures, presigned downloads): the whole query goes.
        pattern("url-query", r"(?i)(\b[a-z][a-z0-9+.\-]*://[^\s?#\x22'<>]*\?)[^\s#\x22'<>\\]+", true),
        // Command-line flags that name a secret, followed by their value as the next argument:
        // `--api-key VALUE`, or in a TOML/JSON argument list `"--token", "VALUE"`.
        pattern(
            "secret-argument",
            r#"(?i)(--?[A-Za-z0-9_\-]*(?:passw(?:or)?d|secret|token|api[_\-]?key|apikey|auth|credential|private[_\-]?key|access[_\-]?key)[A-Za-z0-9_\-]*(?:\s+|\\?"\s*,\s*\\?"))[^\s"'\\,\]\-][^\s"'\\,\]]*"#,
            true,
        ),
        // key = value / "key": "value" / key: value / ?key=value where the key looks secret.
        pattern(
            "secret-value",
            r#"(?i)((?:\\?")?[A-Za-z0-9_.\-]*(?:passw(?:or)?d|secret|token|api[_\-]?key|apikey|authorization|credential|private[_\-]?key|access[_\-]?key|cookie)[A-Za-z0-9_.\-]*(?:\\?")?\s*[:=]\s*)(?:\\?"(?:[^"\\]|\\[^"])*\\?"|'[^']*'|[^\s,;&}\]\)]+)"#,
            true,
        ),
    ]
});

/// In plain-text log lines: a content field and everything after it on the line.
static TEXT_CONTENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)(\b(?:prompts?|messages|content|completion|outputs?|response|inputs?|query)\s*[:=]\s*).+$"#)
        .expect("valid content pattern")
});

static OTHER_HOMES: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(/home/|/Users/|(?i:[A-Z]:\\Users\\))[^/\\\s\x22':]+").expect("valid home pattern"));

/// Fields of JSON log lines whose values are conversation content or user data, never kept.
const CONTENT_FIELDS: &[&str] = &[
    "prompt",
    "prompts",
    "messages",
    "message_content",
    "content",
    "input",
    "inputs",
    "output",
    "outputs",
    "completion",
    "response",
    "text",
    "query",
    "system",
    "body",
    "document",
    "documents",
    "vars",
    "variables",
];

/// Fields holding a process's captured output: redacted line by line as log lines.
const TAIL_FIELDS: &[&str] = &["stderr_tail", "stdout_tail", "stderr", "stdout"];

/// The redaction rules of one bundle.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// (value, kind), longest first.
    literals: Vec<(String, &'static str)>,
    /// (path, replacement), longest first.
    paths: Vec<(String, &'static str)>,
}

impl Redactor {
    /// No literals and no paths yet; patterns always apply.
    pub fn new() -> Redactor {
        Redactor::default()
    }

    /// A value that must never appear (a token, a key, a password). Values shorter than 6
    /// characters are ignored: they would match ordinary words.
    pub fn secret(&mut self, value: &str, kind: &'static str) {
        let v = value.trim();
        if v.chars().count() >= 6 && !self.literals.iter().any(|(l, _)| l == v) {
            self.literals.push((v.to_owned(), kind));
            self.literals.sort_by_key(|(l, _)| std::cmp::Reverse(l.len()));
        }
    }

    /// A path to be replaced by `replacement` (such as `$ONDEVICE_HOME` or `~`) wherever it
    /// appears. Paths of one or two characters (`/`, `C:`) are ignored.
    pub fn path(&mut self, path: &Path, replacement: &'static str) {
        let p = path.to_string_lossy().trim_end_matches(['/', '\\']).to_owned();
        if p.len() > 2 && !self.paths.iter().any(|(l, _)| *l == p) {
            self.paths.push((p, replacement));
            self.paths.sort_by_key(|(l, _)| std::cmp::Reverse(l.len()));
        }
    }

    /// The secret-looking values of an environment: variables whose name mentions a key, token,
    /// secret, password or credential. Register them with [`Redactor::secret`].
    pub fn secrets_of_env<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<&'a str> {
        vars.into_iter().filter(|(k, _)| is_secret_name(k)).map(|(_, v)| v).collect()
    }

    /// Redacts one text; adds what it replaced to `counts`.
    pub fn text(&self, input: &str, counts: &mut Redactions) -> String {
        let mut s = input.to_owned();
        for (lit, kind) in &self.literals {
            let n = s.matches(lit.as_str()).count();
            if n > 0 {
                s = s.replace(lit.as_str(), &format!("[REDACTED:{kind}]"));
                *counts.entry(kind).or_default() += n;
            }
        }
        for p in PATTERNS.iter() {
            let mut n = 0;
            let out = p.re.replace_all(&s, |c: &Captures<'_>| {
                let whole = &c[0];
                let prefix = if p.keep_prefix { c.get(1).map_or("", |m| m.as_str()) } else { "" };
                // A value that is already a redaction marker stays as it is.
                let value = whole[prefix.len()..].trim_matches(['"', '\\', '\'']);
                if value.starts_with("[REDACTED") {
                    return whole.to_owned();
                }
                // `tokens=42`, `max_tokens: 128`: counts are not secrets.
                if matches!(p.kind, "secret-value" | "secret-argument")
                    && !value.is_empty()
                    && value.len() <= 12
                    && value.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                {
                    return whole.to_owned();
                }
                n += 1;
                let quoted = whole[prefix.len()..].starts_with('"');
                let esc = whole[prefix.len()..].starts_with("\\\"");
                let marker = format!("[REDACTED:{}]", p.kind);
                if esc {
                    format!("{prefix}\\\"{marker}\\\"")
                } else if quoted {
                    format!("{prefix}\"{marker}\"")
                } else if p.kind == "url-credentials" {
                    format!("{prefix}{marker}@")
                } else {
                    format!("{prefix}{marker}")
                }
            });
            if n > 0 {
                s = out.into_owned();
                *counts.entry(p.kind).or_default() += n;
            }
        }
        for (path, replacement) in &self.paths {
            let n = s.matches(path.as_str()).count();
            if n > 0 {
                s = s.replace(path.as_str(), replacement);
                *counts.entry("path").or_default() += n;
            }
        }
        let mut n = 0;
        let out = OTHER_HOMES.replace_all(&s, |c: &Captures<'_>| {
            n += 1;
            format!("{}[user]", &c[1])
        });
        if n > 0 {
            s = out.into_owned();
            *counts.entry("path").or_default() += n;
        }
        s
    }

    /// Redacts one log line. A JSON object loses the values of content fields (at any depth)
    /// first; then the text rules apply to the whole line.
    pub fn log_line(&self, line: &str, counts: &mut Redactions) -> String {
        let trimmed = line.trim_start();
        if trimmed.starts_with('{') {
            if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(trimmed) {
                let n = strip_content(&mut v);
                if n > 0 {
                    *counts.entry("content").or_default() += n;
                }
                self.tails_in_place(&mut v, counts);
                return self.text(&v.to_string(), counts);
            }
        }
        // Plain text (a worker's stderr, tracing's text format): a content field takes the rest of
        // the line with it.
        let mut n = 0;
        let out = TEXT_CONTENT.replace(line, |c: &Captures<'_>| {
            n += 1;
            format!("{}[REDACTED:content]", &c[1])
        });
        if n > 0 {
            *counts.entry("content").or_default() += n;
        }
        self.text(&out, counts)
    }

    /// Redacts a crash report (or any JSON document holding captured output): content fields are
    /// dropped, the captured output of a process (`stderr_tail`, `stderr`, `stdout`) is redacted
    /// line by line as log lines (so a worker's plain-text `prompt: ...` line loses its content),
    /// then every string goes through the text rules.
    pub fn report(&self, value: &serde_json::Value, counts: &mut Redactions) -> serde_json::Value {
        let mut v = value.clone();
        let n = strip_content(&mut v);
        if n > 0 {
            *counts.entry("content").or_default() += n;
        }
        self.tails_in_place(&mut v, counts);
        self.json_in_place(&mut v, counts);
        v
    }

    fn tails_in_place(&self, v: &mut serde_json::Value, counts: &mut Redactions) {
        match v {
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| self.tails_in_place(x, counts)),
            serde_json::Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if TAIL_FIELDS.contains(&k.to_ascii_lowercase().as_str()) {
                        if let serde_json::Value::String(s) = x {
                            *s = s.lines().map(|l| self.log_line(l, counts)).collect::<Vec<_>>().join("\n");
                            continue;
                        }
                    }
                    self.tails_in_place(x, counts);
                }
            }
            _ => {}
        }
    }

    /// Redacts a JSON value: content fields are dropped, secret-named fields replaced, every
    /// string goes through the text rules.
    pub fn json(&self, value: &serde_json::Value, counts: &mut Redactions) -> serde_json::Value {
        let mut v = value.clone();
        self.json_in_place(&mut v, counts);
        v
    }

    fn json_in_place(&self, v: &mut serde_json::Value, counts: &mut Redactions) {
        match v {
            serde_json::Value::String(s) => *s = self.text(s, counts),
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| self.json_in_place(x, counts)),
            serde_json::Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    let secret = is_secret_name(k) && (x.is_string() || x.is_number());
                    if secret && !x.as_str().is_some_and(|s| s.starts_with("[REDACTED")) {
                        *x = serde_json::Value::String("[REDACTED:secret-value]".into());
                        *counts.entry("secret-value").or_default() += 1;
                    } else {
                        self.json_in_place(x, counts);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Whether a variable or field name looks like it holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "passwd", "secret", "token", "api_key", "apikey", "api-key", "credential", "private_key", "auth"]
        .iter()
        .any(|w| n.contains(w))
        && !n.ends_with("_count")
        && n != "auth_enabled"
}

/// Replaces the values of content fields (any depth); returns how many.
fn strip_content(v: &mut serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => a.iter_mut().map(strip_content).sum(),
        serde_json::Value::Object(m) => {
            let mut n = 0;
            for (k, x) in m.iter_mut() {
                if CONTENT_FIELDS.contains(&k.to_ascii_lowercase().as_str()) && !x.is_null() {
                    *x = serde_json::Value::String("[REDACTED:content]".into());
                    n += 1;
                } else {
                    n += strip_content(x);
                }
            }
            n
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn red(r: &Redactor, s: &str) -> (String, Redactions) {
        let mut c = Redactions::new();
        (r.text(s, &mut c), c)
    }

    #[test]
    fn patterns_catch_keys_tokens_and_url_credentials() {
        let r = Redactor::new();
        let cases = [
            "Authorization: Bearer abcdefghijklmnop1234",
            "key odk_0123456789abcdef_SECRETSECRETSECRET",
            "using sk-proj-ABCDEFGHIJKLMNOPQRSTUV and hf_ABCDEFGHIJKLMNOPQRSTU",
            "url https://alice:hunter2hunter2@mirror.example/models",
            "password = \"hunter2hunter2\"",
            "{\"api_key\":\"s3cr3tvalue\"}",
            "GET /x?token=abcdef123456&x=1",
            "MY_SECRET: topsecretvalue",
        ];
        for case in cases {
            let (out, counts) = red(&r, case);
            for bad in [
                "abcdefghijklmnop1234",
                "SECRETSECRET",
                "ABCDEFGHIJKLMNOP",
                "hunter2",
                "s3cr3t",
                "abcdef123456",
                "topsecret",
            ] {
                assert!(!out.contains(bad), "{bad:?} left in {out:?} (from {case:?})");
            }
            assert!(!counts.is_empty(), "nothing counted for {case:?}");
        }
        // Ordinary text is left alone.
        let (out, counts) = red(&r, "loaded model smollm2:latest in 120 ms, tokens=42");
        assert_eq!(out, "loaded model smollm2:latest in 120 ms, tokens=42");
        assert!(counts.is_empty());
    }

    #[test]
    fn literals_and_paths_are_replaced_and_counted() {
        let mut r = Redactor::new();
        r.secret("plantedvalue123", "env");
        r.secret("abc", "env"); // too short: ignored
        r.path(Path::new("/home/alice/.local/share/ondevice"), "$ONDEVICE_HOME");
        r.path(Path::new("/home/alice"), "~");
        let (out, counts) = red(
            &r,
            "x=plantedvalue123 at /home/alice/.local/share/ondevice/logs and /home/alice/x and /home/bob/y abc",
        );
        assert_eq!(out, "x=[REDACTED:env] at $ONDEVICE_HOME/logs and ~/x and /home/[user]/y abc");
        assert_eq!(counts["env"], 1);
        assert_eq!(counts["path"], 3);
    }

    #[test]
    fn json_log_lines_lose_content_fields() {
        let r = Redactor::new();
        let mut c = Redactions::new();
        let line = r#"{"timestamp":"t","level":"INFO","fields":{"message":"generate","prompt":"tell me my diary","messages":[{"role":"user","content":"x"}]},"target":"a"}"#;
        let out = r.log_line(line, &mut c);
        assert!(!out.contains("diary"), "{out}");
        assert!(out.contains("\"message\":\"generate\""), "{out}");
        assert_eq!(c["content"], 2);
        // A plain line is redacted as text.
        assert_eq!(r.log_line("plain Bearer abcdefghijkl", &mut c), "plain Bearer [REDACTED:token]");
        assert_eq!(
            r.log_line("[stderr] 2026 DEBUG generate prompt=\"my diary\" n=3", &mut c),
            "[stderr] 2026 DEBUG generate prompt=[REDACTED:content]"
        );
    }

    #[test]
    fn worker_arguments_webhook_queries_and_crash_tails_are_redacted() {
        let r = Redactor::new();
        // Worker command lines, as the config shows them and as plain text.
        let (out, c) = red(&r, r#"command = ["llama-server", "--api-key", "argsecret123", "--port", "8080"]"#);
        assert!(!out.contains("argsecret123"), "{out}");
        assert!(out.contains("\"--port\", \"8080\""), "{out}");
        assert_eq!(c["secret-argument"], 1);
        let (out, _) = red(&r, "spawned llama-server --hf-token hfsecretvalue --ctx 4096 --max-tokens 128");
        assert!(!out.contains("hfsecretvalue") && out.contains("--max-tokens 128"), "{out}");
        // Webhook URLs: the query goes, with or without credentials.
        let (out, c) = red(&r, r#"{ webhook = "https://hooks.example/T0/B0?sig=plantedsig123&exp=1" }"#);
        assert!(!out.contains("plantedsig123") && out.contains("https://hooks.example/T0/B0?"), "{out}");
        assert!(c.contains_key("url-query"), "{c:?}");
        // A crash report's stderr tail: each line is a log line (plain-text content fields go).
        let report = serde_json::json!({
            "kind": "signal",
            "stderr_tail": "loading\nprompt: my secret diary\n{\"fields\":{\"content\":\"json diary\"}}\nBearer abcdefghijklmnop",
        });
        let mut c = Redactions::new();
        let text = r.report(&report, &mut c).to_string();
        for bad in ["my secret diary", "json diary", "abcdefghijklmnop"] {
            assert!(!text.contains(bad), "{bad} in {text}");
        }
        assert!(text.contains("loading"), "{text}");
    }

    #[test]
    fn json_values_lose_secret_fields() {
        let r = Redactor::new();
        let mut c = Redactions::new();
        let v = serde_json::json!({"runtimes": {"x": {"api_key": "zzzzzzzz", "url": "http://u:p@h/"}}, "auth": {"enabled": true}});
        let out = r.json(&v, &mut c);
        let text = out.to_string();
        assert!(!text.contains("zzzzzzzz") && !text.contains("u:p@"), "{text}");
        assert_eq!(out["auth"]["enabled"], serde_json::json!(true));
    }
}
