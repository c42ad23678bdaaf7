//! The hardened minijinja environment every template renders in: prompt packs and, once the
//! engine adopts it, models' chat templates (`ondevice-engine-llama/src/template.rs` today builds
//! its own with the same limits).
//!
//! Templates are untrusted code (CVE-2024-34359 was a Jinja server-side template injection through
//! a GGUF chat template). minijinja has no access to Python objects, so attribute chains such as
//! `__class__.__mro__` lead nowhere; on top of that this environment:
//! - has no loader: `include`, `import`, `extends` find nothing, and no filesystem or network is
//!   reachable from a template;
//! - bounds every render by fuel (executed instructions), a recursion limit, an output cap and a
//!   template size cap; minijinja itself caps `range()` at 100,000 items and one string
//!   repetition at 100 MB;
//! - refuses before compiling the constructs that grow memory without emitting output (see
//!   [`guard`]): the power operator, `*` without a small literal factor, doubling, assignments
//!   that grow their inputs more than 64 times, recursive macros, names starting with `__`;
//! - caps the builtins that build large values in one step (`join`, `replace`, `indent`) and
//!   removes `format` (printf widths) and, for prompt packs, `namespace` (state carried across
//!   loop iterations);
//! - makes undefined variables errors (strict mode) for prompt packs;
//! - removes `debug()` (it would print the whole context) and the `attr` filter (attribute access
//!   by computed name).
//!
//! Prompt filters: `truncate_tokens(n, side="head")`, `join_documents(sep="\n\n")`, `json`,
//! `indent` (minijinja's), plus `raise_exception(msg)` for chat templates.

use std::io;
use std::sync::Arc;

use minijinja::machinery::{Token, WhitespaceConfig, tokenize};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior};

/// Instructions one render may execute.
pub const DEFAULT_FUEL: u64 = 1_000_000;
/// Bytes one render may produce.
pub const DEFAULT_MAX_OUTPUT: usize = 1 << 20;
/// Nesting depth of macros, includes and blocks.
pub const DEFAULT_RECURSION_LIMIT: usize = 32;
/// Largest template source, in bytes.
pub const DEFAULT_MAX_TEMPLATE: usize = 256 << 10;

/// What one render may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Instructions executed.
    pub fuel: u64,
    /// Bytes of output.
    pub max_output: usize,
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
            recursion_limit: DEFAULT_RECURSION_LIMIT,
            max_template: DEFAULT_MAX_TEMPLATE,
            strict_undefined: true,
        }
    }
}

/// Counts tokens for `truncate_tokens`: a deterministic estimate inside the template; exact
/// budgets are enforced after rendering with the model's tokenizer ([`crate::compress`]).
pub type TokenEstimator = Arc<dyn Fn(&str) -> usize + Send + Sync>;

/// About four characters a token: the estimate `truncate_tokens` uses by default.
pub fn approx_tokens(s: &str) -> usize {
    s.chars().count().div_ceil(4)
}

/// Why a render was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SandboxError(pub String);

/// The hardened environment.
pub struct Sandbox {
    env: Environment<'static>,
    limits: Limits,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("limits", &self.limits).finish_non_exhaustive()
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
    /// `lstrip_blocks`, lenient undefined values, Python string methods (`.strip()`, ...).
    pub fn for_chat_templates(mut limits: Limits) -> Sandbox {
        limits.strict_undefined = false;
        let mut s = Sandbox::new(limits);
        s.env.set_trim_blocks(true);
        s.env.set_lstrip_blocks(true);
        s.env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        s
    }

    /// An environment whose `truncate_tokens` counts with `estimator`.
    pub fn with_estimator(limits: Limits, estimator: TokenEstimator) -> Sandbox {
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
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        let est = estimator.clone();
        env.add_filter("truncate_tokens", move |s: String, n: usize, kwargs: Kwargs| -> Result<String, Error> {
            let side: Option<String> = kwargs.get("side")?;
            kwargs.assert_all_used()?;
            truncate_estimated(&s, n, side.as_deref().unwrap_or("head"), &*est)
        });
        env.add_filter("join_documents", join_documents);
        // Builtins that can build large values in one step, replaced by capped versions.
        let cap = limits.max_output;
        env.add_filter("join", move |v: Value, sep: Option<String>| capped_join(&v, sep.as_deref().unwrap_or(""), cap));
        env.add_filter("replace", move |s: String, from: String, to: String, count: Option<usize>| {
            capped_replace(&s, &from, &to, count, cap)
        });
        env.add_filter("indent", capped_indent);
        // `format` takes printf widths (`%1000000000s`); prompts use `~` and filters instead.
        env.remove_filter("format");
        if limits.strict_undefined {
            // No state carried across loop iterations (accumulating strings in a namespace grows
            // memory without output); chat templates keep it (`for_chat_templates`).
            env.remove_global("namespace");
        }
        env.add_filter("json", |v: Value| -> Result<String, Error> {
            serde_json::to_string(&v).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
        });
        Sandbox { env, limits }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Checks `source` without rendering it: size, refused constructs ([`guard`]), syntax.
    pub fn check(&self, source: &str) -> Result<(), SandboxError> {
        if source.len() > self.limits.max_template {
            return Err(SandboxError(format!(
                "the template is {} bytes, more than the limit of {}: split it",
                source.len(),
                self.limits.max_template
            )));
        }
        guard(source).map_err(SandboxError)?;
        self.env.template_from_str(source).map(|_| ()).map_err(|e| SandboxError(describe(&e, &self.limits)))
    }

    /// Renders `source` with `ctx` (a JSON object of variables).
    pub fn render(&self, source: &str, ctx: &serde_json::Value) -> Result<String, SandboxError> {
        self.check(source)?;
        let tmpl = self.env.template_from_str(source).map_err(|e| SandboxError(describe(&e, &self.limits)))?;
        let mut out = Capped { buf: Vec::new(), cap: self.limits.max_output };
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
fn describe(e: &Error, limits: &Limits) -> String {
    let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
    match e.kind() {
        ErrorKind::OutOfFuel => {
            format!("the template ran more than {} steps{line}: it loops too much, simplify it", limits.fuel)
        }
        ErrorKind::WriteFailure => {
            format!("the template produced more than {} bytes{line}: shorten it or its inputs", limits.max_output)
        }
        ErrorKind::UndefinedError => {
            format!("{}{line}: declare the variable in pack.toml or pass it with --var", detail(e))
        }
        _ if e.to_string().contains("recursion limit") => {
            format!("the template nests deeper than {} levels{line}: remove the recursion", limits.recursion_limit)
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

/// Largest literal factor `*` may use.
pub const MAX_FACTOR: u64 = 16;
/// Largest growth of its inputs one assignment may reach (see [`guard`]).
pub const MAX_GROWTH: u64 = 64;

/// Refuses, before compiling, the constructs that can grow memory without producing output:
/// - the power operator `**` (builds numbers such as `10**9` for bombs);
/// - `*` unless one side is an integer literal of at most [`MAX_FACTOR`] and the other side is
///   not a string or list literal (`"a" * 100000000`, `[1] * 1000000000 | list`);
/// - one expression using the same variable (or dotted path) twice with `~`, `+` or `*`
///   (`x ~ x`: doubling);
/// - assignments whose value grows the template's inputs more than [`MAX_GROWTH`] times, counted
///   through earlier assignments (`{% set b = a ~ c %}{% set c = b ~ a %}...`), set blocks and
///   macro calls (a call counts what the macro's body emits);
/// - a macro that calls itself (recursion);
/// - names starting with `__` (Python internals, the usual SSTI gadget).
pub fn guard(source: &str) -> Result<(), String> {
    let ws = WhitespaceConfig::default();
    let tokens: Vec<(Token<'_>, u32)> = tokenize(source, false, SyntaxConfig, ws)
        .map(|item| item.map(|(t, span)| (t, u32::from(span.start_line))).map_err(|e| format!("syntax error: {e}")))
        .collect::<Result<_, _>>()?;
    let is_str = |t: &Token<'_>| matches!(t, Token::Str(_) | Token::String(_));
    let small_int = |t: &Token<'_>| matches!(t, Token::Int(n) if *n <= MAX_FACTOR);
    for (i, (tok, line)) in tokens.iter().enumerate() {
        let at = format!("line {line}");
        match tok {
            Token::Pow => return Err(format!("the power operator `**` is not allowed ({at})")),
            Token::Ident(name) if name.starts_with("__") => {
                return Err(format!("names starting with `__` are not allowed: {name} ({at})"));
            }
            Token::Mul => {
                let prev = i.checked_sub(1).map(|j| &tokens[j].0);
                let next = tokens.get(i + 1).map(|t| &t.0);
                if prev.is_some_and(is_str) || next.is_some_and(is_str) {
                    return Err(format!("repeating a string with `*` is not allowed ({at})"));
                }
                let list_literal =
                    matches!(prev, Some(Token::BracketClose)) || matches!(next, Some(Token::BracketOpen));
                if list_literal || !(prev.is_some_and(small_int) || next.is_some_and(small_int)) {
                    return Err(format!(
                        "`*` needs an integer literal of at most {MAX_FACTOR} on one side and no list literal ({at})"
                    ));
                }
            }
            _ => {}
        }
    }
    check_blocks(&tokens)
}

/// The per-block checks of [`guard`]: doubling, growth through assignments, macro recursion.
fn check_blocks(tokens: &[(Token<'_>, u32)]) -> Result<(), String> {
    use std::collections::HashMap;
    let mut growth: HashMap<String, u64> = HashMap::new();
    // Macro name -> how many times a call may repeat its arguments (what its body emits).
    let mut macros: HashMap<String, u64> = HashMap::new();
    let mut open_macros: Vec<String> = Vec::new();
    // Open `{% set NAME %}...{% endset %}` and macro bodies, with what they emitted so far.
    let mut captures: Vec<(String, u64)> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let start = matches!(tokens[i].0, Token::VariableStart | Token::BlockStart);
        if !start {
            i += 1;
            continue;
        }
        let end = tokens[i..]
            .iter()
            .position(|(t, _)| matches!(t, Token::VariableEnd | Token::BlockEnd))
            .map_or(tokens.len(), |p| i + p);
        let block = &tokens[i + 1..end];
        let line = tokens[i].1;
        let at = format!("line {line}");
        // `{% macro NAME(...) %}` / `{% endmacro %}`.
        match block {
            [(Token::Ident("macro"), _), (Token::Ident(name), _), ..] => {
                open_macros.push((*name).to_owned());
                captures.push((format!("macro {name}"), 0));
            }
            [(Token::Ident("endmacro"), _), ..] => {
                if let (Some(name), Some((_, w))) = (open_macros.pop(), captures.pop()) {
                    if w > MAX_GROWTH {
                        return Err(format!("macro {name} repeats its inputs more than {MAX_GROWTH} times ({at})"));
                    }
                    macros.insert(name, w.max(1));
                }
            }
            [(Token::Ident("set"), _), (Token::Ident(target), _)] => captures.push(((*target).to_owned(), 0)),
            [(Token::Ident("endset"), _), ..] => {
                if let Some((target, w)) = captures.pop() {
                    if w > MAX_GROWTH {
                        return Err(format!(
                            "the value of `{target}` may grow the template's inputs more than {MAX_GROWTH} times: simplify it ({at})"
                        ));
                    }
                    growth.insert(target, w.max(1));
                }
            }
            _ => {}
        }
        // Bare paths, calls and whether an amplifying operator appears.
        let mut paths: Vec<String> = Vec::new();
        let mut amplifying = false;
        let mut weight: u64 = 0;
        let mut calls = 0u64;
        let is_definition = matches!(block.first(), Some((Token::Ident("macro"), _)));
        // An assignment's target is not part of its value.
        let mut j = match block.first() {
            Some((Token::Ident("set"), _)) => {
                block.iter().position(|(t, _)| matches!(t, Token::Assign)).map_or(0, |p| p + 1)
            }
            _ => 0,
        };
        while j < block.len() {
            match &block[j].0 {
                Token::Ident(name) if !is_keyword(name) => {
                    let mut path = (*name).to_owned();
                    let mut k = j + 1;
                    while let (Some((Token::Dot, _)), Some((Token::Ident(n), _))) = (block.get(k), block.get(k + 1)) {
                        path.push('.');
                        path.push_str(n);
                        k += 2;
                    }
                    let after_dot = j > 0 && matches!(block[j - 1].0, Token::Dot | Token::Pipe);
                    let called = matches!(block.get(k), Some((Token::ParenOpen, _)));
                    if called && !is_definition && open_macros.iter().any(|m| m == name) {
                        return Err(format!("macro {name} calls itself: recursion is not allowed ({at})"));
                    }
                    if called {
                        if let Some(m) = macros.get(*name) {
                            calls = calls.saturating_mul(*m).max(*m);
                        }
                    }
                    if !after_dot && !called {
                        weight = weight.saturating_add(*growth.get(*name).unwrap_or(&1));
                        if !matches!(block.get(k), Some((Token::BracketOpen, _))) {
                            paths.push(path);
                        }
                    }
                    j = k;
                    continue;
                }
                Token::Tilde | Token::Plus | Token::Mul => amplifying = true,
                _ => {}
            }
            j += 1;
        }
        if amplifying {
            paths.sort();
            if let Some(w) = paths.windows(2).find(|w| w[0] == w[1]) {
                return Err(format!(
                    "an expression combines `{}` with itself (doubling grows memory without bound) ({at})",
                    w[0]
                ));
            }
        }
        if calls > 0 {
            weight = weight.saturating_mul(calls);
        }
        // What `{{ ... }}` emits counts for the set block or macro body it is in.
        if matches!(tokens[i].0, Token::VariableStart) {
            if let Some((_, w)) = captures.last_mut() {
                *w = w.saturating_add(weight);
            }
        }
        // `{% set NAME = ... %}` records how much the value may have grown its inputs.
        if let [(Token::Ident("set"), _), (Token::Ident(target), _), (Token::Assign, _), ..] = block {
            if weight > MAX_GROWTH {
                return Err(format!(
                    "the value of `{target}` may grow the template's inputs more than {MAX_GROWTH} times: simplify it ({at})"
                ));
            }
            growth.insert((*target).to_owned(), weight.max(1));
        }
        i = end + 1;
    }
    Ok(())
}

fn is_keyword(s: &str) -> bool {
    matches!(
        s,
        "if" | "else"
            | "elif"
            | "endif"
            | "for"
            | "in"
            | "endfor"
            | "set"
            | "endset"
            | "and"
            | "or"
            | "not"
            | "is"
            | "true"
            | "false"
            | "none"
            | "True"
            | "False"
            | "None"
            | "loop"
            | "macro"
            | "endmacro"
            | "call"
            | "filter"
            | "with"
            | "endwith"
            | "recursive"
    )
}

/// Cuts `s` to about `n` tokens by the estimate: `head` keeps the start, `tail` the end,
/// `middle` both ends with ` … ` between.
fn truncate_estimated(s: &str, n: usize, side: &str, est: &dyn Fn(&str) -> usize) -> Result<String, Error> {
    if est(s) <= n {
        return Ok(s.to_owned());
    }
    let chars: Vec<char> = s.chars().collect();
    // Longest prefix (or suffix) whose estimate fits, by bisection on characters.
    let fit = |take: &dyn Fn(usize) -> String, budget: usize| {
        let (mut lo, mut hi) = (0usize, chars.len());
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if est(&take(mid)) <= budget { lo = mid } else { hi = mid - 1 }
        }
        take(lo)
    };
    let head = |k: usize| chars[..k].iter().collect::<String>();
    let tail = |k: usize| chars[chars.len() - k..].iter().collect::<String>();
    match side {
        "head" => Ok(fit(&head, n)),
        "tail" => Ok(fit(&tail, n)),
        "middle" => {
            let a = fit(&head, n.div_ceil(2));
            let b = fit(&tail, n / 2);
            Ok(format!("{a} … {b}"))
        }
        other => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("truncate_tokens: side must be \"head\", \"tail\" or \"middle\", not {other:?}"),
        )),
    }
}

fn too_large(what: &str, cap: usize) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("{what} would be larger than {cap} bytes"))
}

/// `join` with its result capped.
fn capped_join(v: &Value, sep: &str, cap: usize) -> Result<String, Error> {
    let mut out = String::new();
    for (i, item) in v.try_iter()?.enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        let s = item.to_string();
        out.push_str(&s);
        if out.len() > cap {
            return Err(too_large("join", cap));
        }
    }
    Ok(out)
}

/// `replace` with its result capped (checked before it is built).
fn capped_replace(s: &str, from: &str, to: &str, count: Option<usize>, cap: usize) -> Result<String, Error> {
    let n = if from.is_empty() { s.chars().count() + 1 } else { s.matches(from).count() };
    let n = count.map_or(n, |c| c.min(n));
    let size = s.len().saturating_add(n.saturating_mul(to.len()));
    if size > cap {
        return Err(too_large("replace", cap));
    }
    Ok(match count {
        Some(c) => s.replacen(from, to, c),
        None => s.replace(from, to),
    })
}

/// `indent(width=4, first=false, blank=false)` with the width capped at 64.
fn capped_indent(
    s: String,
    width: Option<usize>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: Kwargs,
) -> Result<String, Error> {
    let width = match width {
        Some(w) => w,
        None => kwargs.get::<Option<usize>>("width")?.unwrap_or(4),
    };
    let first = match first {
        Some(f) => f,
        None => kwargs.get::<Option<bool>>("first")?.unwrap_or(false),
    };
    let blank = match blank {
        Some(b) => b,
        None => kwargs.get::<Option<bool>>("blank")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    if width > 64 {
        return Err(Error::new(ErrorKind::InvalidOperation, "indent: the width is at most 64"));
    }
    let pad = " ".repeat(width);
    let text = s.strip_suffix('\n').unwrap_or(&s);
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if (i > 0 || first) && (blank || !line.trim().is_empty()) {
            out.push_str(&pad);
        }
        out.push_str(line);
    }
    Ok(out)
}

/// `docs | join_documents(sep="\n\n")`: numbered documents `[1] title\ntext`; a document is a
/// string or a map with `text` (or `content`) and an optional `title` (or `source`).
fn join_documents(docs: Value, kwargs: Kwargs) -> Result<String, Error> {
    let sep: Option<String> = kwargs.get("sep")?;
    kwargs.assert_all_used()?;
    let sep = sep.unwrap_or_else(|| "\n\n".to_owned());
    if docs.kind() != ValueKind::Seq && docs.kind() != ValueKind::Iterable {
        return Err(Error::new(ErrorKind::InvalidOperation, "join_documents expects a list of documents"));
    }
    let mut parts = Vec::new();
    for (i, d) in docs.try_iter()?.enumerate() {
        let text = match d.kind() {
            ValueKind::String => d.to_string(),
            ValueKind::Map => {
                let get = |k: &str| d.get_attr(k).ok().filter(|v| !v.is_undefined() && !v.is_none());
                let body = get("text").or_else(|| get("content")).map(|v| v.to_string()).unwrap_or_default();
                match get("title").or_else(|| get("source")) {
                    Some(t) => format!("{t}\n{body}"),
                    None => body,
                }
            }
            _ => d.to_string(),
        };
        parts.push(format!("[{}] {}", i + 1, text));
    }
    Ok(parts.join(&sep))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_refuses_amplifiers_and_keeps_ordinary_templates() {
        for ok in [
            "{{ a ~ b }}",
            "{% for m in messages %}{{ m['role'] + m['content'] }}{% endfor %}",
            "{{ loop_var }}{% if x and x %}y{% endif %}",
            "{{ '<|im_start|>' + message['role'] }}",
            "{{ loop.index * 2 }}",
            "{% set a = b ~ c %}{% set d = a ~ e %}{{ d }}",
            "{% macro f(x) %}[{{ x }}]{% endmacro %}{{ f(a) }}{{ f(b) }}",
        ] {
            assert_eq!(guard(ok), Ok(()), "{ok}");
        }
        for bad in [
            "{{ 10**9 }}",
            "{{ 'a' * 1000 }}",
            "{{ 1000 * 'a' }}",
            "{{ x * y }}",
            "{{ x * 17 }}",
            "{{ [1] * 2 }}",
            "{% set x = x ~ x %}",
            "{% set ns.s = ns.s + ns.s %}",
            "{{ x.__class__ }}",
            "{% set b = a ~ c %}{% set c = b ~ a %}{% set b = a ~ c %}{% set c = b ~ a %}{% set b = c ~ b %}{% set c = b ~ c %}{% set b = c ~ b %}{% set c = b ~ c %}{% set b = c ~ b %}{% set c = b ~ c %}",
            "{% set b %}{{ a }}{{ a }}{% endset %}{% set c %}{{ b }}{{ b }}{% endset %}{% set d %}{{ c }}{{ c }}{{ c }}{{ c }}{% endset %}{% set e %}{{ d }}{{ d }}{{ d }}{{ d }}{{ d }}{% endset %}",
            "{% macro f(x) %}{{ x }}{{ x }}{% endmacro %}{% set y = f(f(f(f(f(f(f(a))))))) %}",
            "{% macro f(n) %}{{ f(n) }}{% endmacro %}",
        ] {
            assert!(guard(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn truncate_tokens_sides() {
        let s = Sandbox::default();
        let ctx = serde_json::json!({"t": "abcdefghijklmnopqrstuvwxyz"});
        assert_eq!(s.render("{{ t | truncate_tokens(2) }}", &ctx).unwrap(), "abcdefgh");
        assert_eq!(s.render("{{ t | truncate_tokens(2, side='tail') }}", &ctx).unwrap(), "stuvwxyz");
        assert_eq!(s.render("{{ t | truncate_tokens(2, side='middle') }}", &ctx).unwrap(), "abcd … wxyz");
    }
}
