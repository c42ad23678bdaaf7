//! The static guard for prompt packs: refuses, before compiling, the constructs that grow memory
//! without producing output. The run-time meter ([`crate::meter`]) bounds memory whatever the
//! guard misses; the guard gives earlier, clearer errors and runs at publish time.

use minijinja::machinery::{Token, WhitespaceConfig, tokenize};
use minijinja::syntax::SyntaxConfig;

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
}
