//! Text diff between two versions of a pack: every file (the manifest, templates, tests) as a
//! unified diff, files only on one side shown whole.

use std::collections::BTreeSet;

use similar::TextDiff;

use crate::pack::Pack;

/// A unified diff of `a` → `b`, file by file in path order; empty when they are identical.
pub fn diff(a: &Pack, b: &Pack) -> String {
    let la = format!("{}@{}", a.name(), a.version());
    let lb = format!("{}@{}", b.name(), b.version());
    let paths: BTreeSet<&String> = a.files().keys().chain(b.files().keys()).collect();
    let mut out = String::new();
    for p in paths {
        let old = a.files().get(p).map(String::as_str).unwrap_or("");
        let new = b.files().get(p).map(String::as_str).unwrap_or("");
        if old == new {
            continue;
        }
        let text = TextDiff::from_lines(old, new)
            .unified_diff()
            .context_radius(3)
            .header(&format!("{la}/{p}"), &format!("{lb}/{p}"))
            .to_string();
        out.push_str(&text);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}
