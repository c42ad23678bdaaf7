//! The prompt filters (`truncate_tokens`, `join_documents`) and capped versions of the builtins
//! that build large values in one step (`join`, `replace`, `indent`), checked against the
//! render's meter before they allocate.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// Cuts `s` to about `n` tokens by the estimate: `head` keeps the start, `tail` the end,
/// `middle` both ends with ` … ` between.
pub(crate) fn truncate_estimated(s: &str, n: usize, side: &str, est: &dyn Fn(&str) -> usize) -> Result<String, Error> {
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

/// The largest value the current render may build (the output cap outside a render).
pub(crate) fn value_cap(fallback: usize) -> usize {
    crate::meter::current_max_value().unwrap_or(fallback)
}

/// `join` with its result capped.
pub(crate) fn capped_join(v: &Value, sep: &str, cap: usize) -> Result<String, Error> {
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
pub(crate) fn capped_replace(s: &str, from: &str, to: &str, count: Option<usize>, cap: usize) -> Result<String, Error> {
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
pub(crate) fn capped_indent(
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
    let lines = s.bytes().filter(|b| *b == b'\n').count() + 1;
    let cap = value_cap(crate::DEFAULT_MAX_OUTPUT);
    if s.len().saturating_add(lines.saturating_mul(width)) > cap {
        return Err(too_large("indent", cap));
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
pub(crate) fn join_documents(docs: Value, kwargs: Kwargs) -> Result<String, Error> {
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
