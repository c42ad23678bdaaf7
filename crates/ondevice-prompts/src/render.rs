//! Rendering a pack: variables checked against the manifest (unknown, missing, wrong type),
//! defaults applied, each message template rendered in the [`Sandbox`] to plain content.
//!
//! The result is a list of `{role, content}` messages, never one string with role markers: the
//! model's chat template adds those, and variable content cannot open a new role.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::PromptError;
use crate::pack::{Pack, Role, VarType};
use crate::sandbox::Sandbox;

/// Largest variable value (in JSON bytes) a request may pass.
pub const MAX_VARIABLE_BYTES: usize = 1 << 20;

/// One rendered message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// Plain content.
    pub content: String,
}

/// A rendered pack.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rendered {
    /// The pack.
    pub name: String,
    /// The version rendered.
    pub version: String,
    /// Its messages.
    pub messages: Vec<Message>,
}

/// Checks `vars` against the manifest and fills in defaults.
pub fn resolve_variables(
    pack: &Pack,
    vars: &BTreeMap<String, serde_json::Value>,
) -> Result<serde_json::Map<String, serde_json::Value>, PromptError> {
    let m = pack.manifest();
    let mut ctx = serde_json::Map::new();
    for (name, value) in vars {
        let Some(decl) = m.variables.get(name) else {
            let known: Vec<&str> = m.variables.keys().map(String::as_str).collect();
            return Err(PromptError::Variable {
                name: name.clone(),
                reason: format!("not declared by {}@{} (declared: {})", m.name, m.version, known.join(", ")),
            });
        };
        let size = serde_json::to_vec(value).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > MAX_VARIABLE_BYTES {
            return Err(PromptError::Variable {
                name: name.clone(),
                reason: format!("larger than {MAX_VARIABLE_BYTES} bytes"),
            });
        }
        let ok = match decl.ty {
            VarType::String => value.is_string(),
            VarType::Number => value.is_number(),
            VarType::Boolean => value.is_boolean(),
            VarType::List => value.is_array(),
            VarType::Object => value.is_object(),
            VarType::Any => true,
        };
        if !ok {
            return Err(PromptError::Variable {
                name: name.clone(),
                reason: format!("expected a {:?} value", decl.ty).to_lowercase(),
            });
        }
        ctx.insert(name.clone(), value.clone());
    }
    for (name, decl) in &m.variables {
        if ctx.contains_key(name) {
            continue;
        }
        match (&decl.default, decl.required) {
            (Some(d), _) => {
                ctx.insert(name.clone(), d.clone());
            }
            (None, true) => {
                return Err(PromptError::Variable {
                    name: name.clone(),
                    reason: format!("required: pass it with --var {name}=VALUE"),
                });
            }
            (None, false) => {
                ctx.insert(name.clone(), serde_json::Value::String(String::new()));
            }
        }
    }
    Ok(ctx)
}

/// Renders every message with already resolved variables.
pub fn render_with(
    sandbox: &Sandbox,
    pack: &Pack,
    ctx: &serde_json::Map<String, serde_json::Value>,
) -> Result<Rendered, PromptError> {
    let m = pack.manifest();
    let value = serde_json::Value::Object(ctx.clone());
    let mut messages = Vec::with_capacity(m.messages.len());
    for (i, spec) in m.messages.iter().enumerate() {
        let source = pack.template(i).unwrap_or_default();
        let content = sandbox.render(source, &value).map_err(|e| PromptError::Template {
            template: format!("{}@{} messages[{i}] ({})", m.name, m.version, spec.role.as_str()),
            reason: e.0,
        })?;
        messages.push(Message { role: spec.role, content });
    }
    Ok(Rendered { name: m.name.clone(), version: m.version.to_string(), messages })
}

/// Checks variables and renders.
pub fn render(
    sandbox: &Sandbox,
    pack: &Pack,
    vars: &BTreeMap<String, serde_json::Value>,
) -> Result<Rendered, PromptError> {
    let ctx = resolve_variables(pack, vars)?;
    render_with(sandbox, pack, &ctx)
}

/// The outcome of one pack test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestOutcome {
    /// The test (file stem under `tests/`).
    pub name: String,
    /// `None` when it passed; otherwise what differs.
    pub failure: Option<String>,
}

/// Runs the pack's tests.
pub fn run_tests(sandbox: &Sandbox, pack: &Pack) -> Vec<TestOutcome> {
    pack.tests()
        .into_iter()
        .map(|(name, test)| {
            let result = render(sandbox, pack, &test.variables);
            let failure = match (result, &test.error) {
                (Ok(_), Some(want)) => Some(format!("expected an error containing {want:?}, the render succeeded")),
                (Err(e), Some(want)) => {
                    let msg = e.to_string();
                    (!msg.contains(want.as_str())).then(|| format!("expected an error containing {want:?}, got: {msg}"))
                }
                (Err(e), None) => Some(e.to_string()),
                (Ok(r), None) => compare(&r.messages, &test.messages),
            };
            TestOutcome { name, failure }
        })
        .collect()
}

fn compare(got: &[Message], want: &[crate::pack::ExpectedMessage]) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("expected {} messages, rendered {}", want.len(), got.len()));
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g.role != w.role {
            return Some(format!("message {i}: expected role {}, rendered {}", w.role.as_str(), g.role.as_str()));
        }
        if g.content != w.content {
            return Some(format!(
                "message {i} ({}): expected {:?}, rendered {:?}",
                g.role.as_str(),
                w.content,
                g.content
            ));
        }
    }
    None
}
