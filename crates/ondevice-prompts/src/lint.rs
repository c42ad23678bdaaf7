//! The static lint run at publish time (and by `ondevice prompts test`): unknown variables,
//! SSTI-style gadgets, special-token strings in literal template text, refused constructs and
//! syntax errors. Errors block a publish; warnings are printed.
//!
//! Special tokens belong to the chat template, never to a pack: a literal `<|im_start|>` in a
//! pack's text would open a role boundary the model's template did not write. Variable content is
//! a different matter: it is rendered as plain message content and the engine tokenizes message
//! content as text, so a user's `<|im_start|>` stays text.

use std::collections::BTreeSet;

use minijinja::machinery::{Token, WhitespaceConfig, tokenize};
use minijinja::syntax::SyntaxConfig;
use serde::Serialize;

use crate::pack::Pack;
use crate::sandbox::Sandbox;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Printed; the publish goes on.
    Warning,
    /// Blocks the publish.
    Error,
}

/// One lint finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// A short code: `unknown-variable`, `unused-variable`, `special-token`, `ssti-gadget`,
    /// `refused-construct`, `syntax`.
    pub code: &'static str,
    /// Where: `messages[1] (user)`.
    pub location: String,
    /// What, and what to do.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{sev}[{}] {}: {}", self.code, self.location, self.message)
    }
}

/// Special-token spellings of common chat formats (ChatML, Llama 2/3, Mistral, Gemma, Phi).
const SPECIAL_LITERALS: &[&str] = &[
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "<<SYS>>",
    "<</SYS>>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<bos>",
    "<eos>",
    "<unk>",
    "<pad>",
    "<|endoftext|>",
];

/// Names that are SSTI gadgets in Jinja2/Flask payloads (CVE-2024-34359 used
/// `cycler.__init__.__globals__.os.popen`).
const GADGET_NAMES: &[&str] = &[
    "cycler",
    "joiner",
    "lipsum",
    "self",
    "config",
    "request",
    "url_for",
    "get_flashed_messages",
    "os",
    "popen",
    "subprocess",
    "eval",
    "exec",
    "getattr",
    "mro",
    "globals",
    "builtins",
    "import",
    "attr",
    "application",
];

/// Finds special-token strings in `text`: `<|...|>` forms and the literal spellings above.
pub fn special_tokens_in(text: &str) -> Vec<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("<|") {
        let after = &rest[i + 2..];
        match after.find("|>") {
            Some(j) if j <= 64 && !after[..j].contains(char::is_whitespace) => {
                found.insert(format!("<|{}|>", &after[..j]));
                rest = &after[j + 2..];
            }
            _ => rest = after,
        }
    }
    for lit in SPECIAL_LITERALS {
        if text.contains(lit) {
            found.insert((*lit).to_owned());
        }
    }
    found.into_iter().collect()
}

/// Lints one template source; `declared` are the pack's variables.
pub fn lint_template(sandbox: &Sandbox, location: &str, source: &str, declared: &BTreeSet<String>) -> Vec<Finding> {
    let mut out = Vec::new();
    let f = |severity, code, message: String| Finding { severity, code, location: location.to_owned(), message };
    if let Err(e) = sandbox.check(source) {
        let code = if e.0.starts_with("syntax error") { "syntax" } else { "refused-construct" };
        out.push(f(Severity::Error, code, e.0));
        return out;
    }
    let mut gadgets = BTreeSet::new();
    for item in tokenize(source, false, SyntaxConfig, WhitespaceConfig::default()) {
        let Ok((tok, _)) = item else { break };
        match tok {
            Token::TemplateData(text) => {
                for t in special_tokens_in(text) {
                    out.push(f(
                        Severity::Error,
                        "special-token",
                        format!(
                            "literal text contains the special token {t:?}: role markers belong to the model's chat template; write plain text or use separate [[messages]]"
                        ),
                    ));
                }
            }
            Token::Str(_) | Token::String(_) => {
                let s: &str = match &tok {
                    Token::Str(s) => s,
                    Token::String(s) => s,
                    _ => "",
                };
                for t in special_tokens_in(s) {
                    out.push(f(
                        Severity::Error,
                        "special-token",
                        format!("a string literal contains the special token {t:?}: remove it"),
                    ));
                }
                if s.contains("__") {
                    gadgets.insert(s.to_owned());
                }
            }
            Token::Ident(name) if GADGET_NAMES.contains(&name) && !declared.contains(name) => {
                gadgets.insert(name.to_owned());
            }
            _ => {}
        }
    }
    for g in gadgets {
        out.push(f(
            Severity::Error,
            "ssti-gadget",
            format!("{g:?} is a template-injection gadget, not prompt text: remove it"),
        ));
    }
    match sandbox.undeclared_variables(source) {
        Ok(vars) => {
            for v in vars {
                if !declared.contains(&v) {
                    out.push(f(
                        Severity::Error,
                        "unknown-variable",
                        format!("variable {v:?} is not declared: add [variables.{v}] to pack.toml"),
                    ));
                }
            }
        }
        Err(e) => out.push(f(Severity::Error, "syntax", e.0)),
    }
    out
}

/// Lints every template of a pack, and reports declared variables no template uses.
pub fn lint_pack(sandbox: &Sandbox, pack: &Pack) -> Vec<Finding> {
    let m = pack.manifest();
    let declared: BTreeSet<String> = m.variables.keys().cloned().collect();
    let mut out = Vec::new();
    let mut used = BTreeSet::new();
    for (i, msg) in m.messages.iter().enumerate() {
        let location = format!("messages[{i}] ({})", msg.role.as_str());
        let Some(source) = pack.template(i) else { continue };
        out.extend(lint_template(sandbox, &location, source, &declared));
        if let Ok(vars) = sandbox.undeclared_variables(source) {
            used.extend(vars);
        }
    }
    for (name, v) in &m.variables {
        let referenced_as_query = m.variables.values().any(|o| o.query.as_deref() == Some(name));
        if !used.contains(name) && !referenced_as_query {
            out.push(Finding {
                severity: Severity::Warning,
                code: "unused-variable",
                location: "pack.toml".into(),
                message: format!("variable {name:?} is declared but no template uses it"),
            });
        }
        if let Some(d) = &v.default {
            if let Some(s) = d.as_str() {
                for t in special_tokens_in(s) {
                    out.push(Finding {
                        severity: Severity::Error,
                        code: "special-token",
                        location: format!("pack.toml variables.{name}.default"),
                        message: format!("the default contains the special token {t:?}: remove it"),
                    });
                }
            }
        }
    }
    out
}
