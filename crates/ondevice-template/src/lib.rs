//! The one hardened minijinja environment every template renders in: prompt packs
//! (`ondevice-prompts`) and models' chat templates (`ondevice-engine-llama`).
//!
//! Templates are untrusted code (CVE-2024-34359 was a Jinja server-side template injection through
//! a GGUF chat template). minijinja has no access to Python objects, so attribute chains such as
//! `__class__.__mro__` lead nowhere; on top of that this environment:
//! - has no loader: `include`, `import`, `extends` find nothing, and no filesystem or network is
//!   reachable from a template;
//! - bounds every render by fuel (executed instructions), a recursion limit, an output cap and a
//!   template size cap;
//! - bounds memory at run time ([`meter`]): the template is rewritten ([`rewrite`]) so that every
//!   operation that builds a value (`~`, `+`, `*`, filters, calls) and everything emitted
//!   (including output captured by `{% set %}` blocks and macros) is measured against a cap per
//!   value and a cap for the whole render, before the large value is built where that is
//!   possible;
//! - for prompt packs, also refuses before compiling the constructs that grow memory without
//!   emitting output ([`guard`]), removes `namespace` and makes undefined variables errors;
//! - caps the builtins that build large values in one step (`join`, `replace`, `indent`, and the
//!   Python methods `str.join`, `str.replace`, `str.format` chat templates use) and removes
//!   `format` (printf widths), `debug()` and the `attr` filter (attribute access by computed
//!   name).
//!
//! Prompt filters: `truncate_tokens(n, side="head")`, `join_documents(sep="\n\n")`, `json`,
//! `indent`, plus `raise_exception(msg)` for chat templates.

#![warn(missing_docs)]

mod filters;
pub mod guard;
pub mod meter;
pub mod rewrite;

use std::io;
use std::sync::Arc;

use minijinja::machinery::WhitespaceConfig;
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior};
use serde::Serialize;

pub use guard::{MAX_FACTOR, MAX_GROWTH, guard};

/// Instructions one render may execute.
pub const DEFAULT_FUEL: u64 = 1_000_000;
/// Bytes one render may produce.
pub const DEFAULT_MAX_OUTPUT: usize = 1 << 20;
/// Bytes a chat template's render may produce (conversations are longer than one prompt).
pub const CHAT_MAX_OUTPUT: usize = 4 << 20;
/// Nesting depth of macros, includes and blocks.
pub const DEFAULT_RECURSION_LIMIT: usize = 32;
/// Largest template source, in bytes.
pub const DEFAULT_MAX_TEMPLATE: usize = 256 << 10;
/// Bytes one render may build in values and captured output, over the whole render.
pub const DEFAULT_MAX_BUILT: usize = 32 << 20;

/// What one render may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Instructions executed.
    pub fuel: u64,
    /// Bytes of output; also the largest value an operation may build.
    pub max_output: usize,
    /// Bytes built over the render (values built by operations, filters and calls, and
    /// everything emitted, captured or not).
    pub max_built: usize,
    /// Nesting depth.
    pub recursion_limit: usize,
    /// Bytes of template source.
    pub max_template: usize,
    /// Undefined variables are errors (prompt packs) or empty (chat templates, as transformers).
    pub strict_undefined: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: DEFAULT_FUEL,
            max_output: DEFAULT_MAX_OUTPUT,
            max_built: DEFAULT_MAX_BUILT,
            recursion_limit: DEFAULT_RECURSION_LIMIT,
            max_template: DEFAULT_MAX_TEMPLATE,
            strict_undefined: true,
        }
    }
}

impl Limits {
    /// The limits of model chat templates: lenient undefined values, a 4 MiB output.
    pub fn chat_template() -> Limits {
        Limits {
            max_output: CHAT_MAX_OUTPUT,
            max_built: 16 * CHAT_MAX_OUTPUT,
            strict_undefined: false,
            ..Limits::default()
        }
    }
}

/// Counts tokens for `truncate_tokens`: a deterministic estimate inside the template; exact
/// budgets are enforced after rendering with the model's tokenizer.
pub type TokenEstimator = Arc<dyn Fn(&str) -> usize + Send + Sync>;

/// About four characters a token: the estimate `truncate_tokens` uses by default.
pub fn approx_tokens(s: &str) -> usize {
    s.chars().count().div_ceil(4)
}

/// Why a render was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SandboxError(pub String);

/// Which templates an environment renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    /// Prompt packs: strict undefined, the static guard, no `namespace`.
    Packs,
    /// Model chat templates, as transformers renders them.
    ChatTemplates,
}

/// The hardened environment.
pub struct Sandbox {
    env: Environment<'static>,
    limits: Limits,
    profile: Profile,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("limits", &self.limits).field("profile", &self.profile).finish_non_exhaustive()
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new(Limits::default())
    }
}

impl Sandbox {
    /// An environment for prompt packs with `limits` and the default token estimate.
    pub fn new(limits: Limits) -> Sandbox {
        Sandbox::with_estimator(limits, Arc::new(approx_tokens))
    }

    /// An environment for model chat templates, as transformers renders them: `trim_blocks` and
    /// `lstrip_blocks`, lenient undefined values, `namespace`, Python string methods
    /// (`.strip()`, ...). The static guard does not apply (real templates must render as
    /// written); the run-time bounds do.
    pub fn for_chat_templates(mut limits: Limits) -> Sandbox {
        limits.strict_undefined = false;
        let mut s = Sandbox::build(limits, Arc::new(approx_tokens), Profile::ChatTemplates);
        s.env.set_trim_blocks(true);
        s.env.set_lstrip_blocks(true);
        s.env.set_keep_trailing_newline(false);
        s.env.set_unknown_method_callback(python_methods);
        s
    }

    /// An environment for prompt packs whose `truncate_tokens` counts with `estimator`.
    pub fn with_estimator(limits: Limits, estimator: TokenEstimator) -> Sandbox {
        Sandbox::build(limits, estimator, Profile::Packs)
    }

    fn build(limits: Limits, estimator: TokenEstimator, profile: Profile) -> Sandbox {
        let mut env = Environment::new();
        env.set_fuel(Some(limits.fuel));
        env.set_recursion_limit(limits.recursion_limit);
        env.set_undefined_behavior(if limits.strict_undefined {
            UndefinedBehavior::Strict
        } else {
            UndefinedBehavior::Lenient
        });
        env.set_keep_trailing_newline(true);
        // Prompts are not HTML.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.remove_global("debug");
        // `attr` reaches attributes by computed name, the classic way around attribute filters.
        env.remove_filter("attr");
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, format!("template raised an exception: {msg}")))
        });
        // The run-time meter's helpers, called by the rewritten template (see `rewrite`).
        env.add_function("__odm_op", |state: &State<'_, '_>, op: String, a: Value, b: Value| {
            meter::op(state, &op, a, b)
        });
        env.add_function("__odm_in", meter::input);
        env.add_function("__odm_out", meter::output);
        env.add_function("__odm_emit", meter::emit);
        let est = estimator.clone();
        env.add_filter("truncate_tokens", move |s: String, n: usize, kwargs: Kwargs| -> Result<String, Error> {
            let side: Option<String> = kwargs.get("side")?;
            kwargs.assert_all_used()?;
            filters::truncate_estimated(&s, n, side.as_deref().unwrap_or("head"), &*est)
        });
        env.add_filter("join_documents", filters::join_documents);
        // Builtins that can build large values in one step, replaced by capped versions.
        let cap = limits.max_output;
        env.add_filter("join", move |v: Value, sep: Option<String>| {
            filters::capped_join(&v, sep.as_deref().unwrap_or(""), filters::value_cap(cap))
        });
        env.add_filter("replace", move |s: String, from: String, to: String, count: Option<usize>| {
            filters::capped_replace(&s, &from, &to, count, filters::value_cap(cap))
        });
        env.add_filter("indent", filters::capped_indent);
        // `format` takes printf widths (`%1000000000s`); prompts use `~` and filters instead.
        env.remove_filter("format");
        if profile == Profile::Packs {
            // No state carried across loop iterations: prompt packs do not need it; chat
            // templates keep it (and the meter bounds what it can build).
            env.remove_global("namespace");
        }
        env.add_filter("json", |v: Value| -> Result<String, Error> {
            serde_json::to_string(&v).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
        });
        Sandbox { env, limits, profile }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn whitespace(&self) -> WhitespaceConfig {
        match self.profile {
            Profile::Packs => {
                WhitespaceConfig { keep_trailing_newline: true, lstrip_blocks: false, trim_blocks: false }
            }
            Profile::ChatTemplates => {
                WhitespaceConfig { keep_trailing_newline: false, lstrip_blocks: true, trim_blocks: true }
            }
        }
    }

    /// The template as it runs: size checked, guarded (prompt packs) and rewritten with the
    /// run-time meter's checks.
    fn prepare(&self, source: &str) -> Result<String, SandboxError> {
        if source.len() > self.limits.max_template {
            return Err(SandboxError(format!(
                "the template is {} bytes, more than the limit of {}: split it",
                source.len(),
                self.limits.max_template
            )));
        }
        if self.profile == Profile::Packs {
            guard(source).map_err(SandboxError)?;
        }
        rewrite::instrument(source, self.whitespace()).map_err(|e| SandboxError(describe(&e, &self.limits)))
    }

    /// Checks `source` without rendering it: size, refused constructs ([`guard`]), syntax.
    pub fn check(&self, source: &str) -> Result<(), SandboxError> {
        let metered = self.prepare(source)?;
        self.env.template_from_str(&metered).map(|_| ()).map_err(|e| SandboxError(describe(&e, &self.limits)))
    }

    /// Renders `source` with `ctx` (for prompt packs, a JSON object of variables).
    pub fn render<S: Serialize>(&self, source: &str, ctx: S) -> Result<String, SandboxError> {
        let metered = self.prepare(source)?;
        let tmpl = self.env.template_from_str(&metered).map_err(|e| SandboxError(describe(&e, &self.limits)))?;
        let mut out = Capped { buf: Vec::new(), cap: self.limits.max_output };
        let _meter = meter::Meter::new(self.limits.max_output, self.limits.max_built).install();
        tmpl.render_captured_to(ctx, &mut out).map(|_| ()).map_err(|e| SandboxError(describe(&e, &self.limits)))?;
        String::from_utf8(out.buf).map_err(|_| SandboxError("the template produced invalid UTF-8".into()))
    }

    /// Variables `source` reads that it does not define itself (globals such as `range` or
    /// `namespace` are not listed).
    pub fn undeclared_variables(&self, source: &str) -> Result<Vec<String>, SandboxError> {
        let tmpl = self.env.template_from_str(source).map_err(|e| SandboxError(describe(&e, &self.limits)))?;
        let mut vars: Vec<String> = tmpl
            .undeclared_variables(false)
            .into_iter()
            .filter(|v| self.env.globals().all(|(g, _)| g != v.as_str()))
            .collect();
        vars.sort();
        Ok(vars)
    }
}

/// Python string methods as minijinja-contrib's pycompat offers them, with the ones that build
/// large strings in one step (`join`, `replace`, `format`, `center`-like widths) capped.
fn python_methods(state: &State<'_, '_>, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        let cap = filters::value_cap(DEFAULT_MAX_OUTPUT);
        match method {
            "join" => {
                let [items] = args else {
                    return Err(Error::new(ErrorKind::InvalidOperation, "str.join takes one argument"));
                };
                let items = meter::input(items.clone())?;
                let out = filters::capped_join(&items, s, cap)?;
                meter::admit("str.join", out.len())?;
                return Ok(Value::from(out));
            }
            "replace" => {
                let (from, to, count) = match args {
                    [a, b] => (a, b, None),
                    [a, b, c] => (a, b, c.as_i64()),
                    _ => {
                        return Err(Error::new(
                            ErrorKind::InvalidOperation,
                            "str.replace takes two or three arguments",
                        ));
                    }
                };
                let (Some(from), Some(to)) = (from.as_str(), to.as_str()) else {
                    return Err(Error::new(ErrorKind::InvalidOperation, "str.replace takes strings"));
                };
                let count = count.and_then(|c| usize::try_from(c).ok());
                return filters::capped_replace(s, from, to, count, cap).map(Value::from);
            }
            "format" => {
                // Widths and precisions in `{:>N}` specs allocate N bytes.
                let digits = s.split(|c: char| !c.is_ascii_digit()).filter_map(|d| d.parse::<u64>().ok());
                if s.contains('{') && digits.clone().any(|n| n > 4096) {
                    return Err(Error::new(ErrorKind::InvalidOperation, "str.format: widths are at most 4096"));
                }
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// An output that refuses to grow past its cap.
struct Capped {
    buf: Vec<u8>,
    cap: usize,
}

impl io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "output cap"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A clear message for a minijinja error, naming the limit that stopped it.
pub fn describe(e: &Error, limits: &Limits) -> String {
    let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
    match e.kind() {
        ErrorKind::OutOfFuel => {
            format!(
                "the template ran more than {} steps (out of fuel){line}: it loops too much, simplify it",
                limits.fuel
            )
        }
        ErrorKind::WriteFailure => {
            format!(
                "the template produced more than {} bytes (the output exceeds the cap){line}: shorten it or its inputs",
                limits.max_output
            )
        }
        ErrorKind::UndefinedError => {
            format!("{}{line}: declare the variable in pack.toml or pass it with --var", detail(e))
        }
        _ if e.to_string().contains("recursion limit") => {
            format!(
                "the template nests deeper than {} levels (recursion limit){line}: remove the recursion",
                limits.recursion_limit
            )
        }
        _ => format!("{}{line}", detail(e)),
    }
}

fn detail(e: &Error) -> String {
    let mut s = e.kind().to_string();
    if let Some(d) = e.detail() {
        s.push_str(": ");
        s.push_str(d);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_tokens_sides() {
        let s = Sandbox::default();
        let ctx = serde_json::json!({"t": "abcdefghijklmnopqrstuvwxyz"});
        assert_eq!(s.render("{{ t | truncate_tokens(2) }}", &ctx).unwrap(), "abcdefgh");
        assert_eq!(s.render("{{ t | truncate_tokens(2, side='tail') }}", &ctx).unwrap(), "stuvwxyz");
        assert_eq!(s.render("{{ t | truncate_tokens(2, side='middle') }}", &ctx).unwrap(), "abcd … wxyz");
    }
}
