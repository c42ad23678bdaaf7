//! Maps byte offsets and dotted keys back to line numbers of the config text, so that errors
//! found after parsing (cross-field checks) still point at a line.

/// 1-based (line, column) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
    (line, column)
}

/// 1-based line where the dotted `key` (such as `auth.enabled`) is set, found by tracking
/// `[table]` headers and `key =` / `a.b =` assignments. Returns the table header's line when the
/// key itself is absent but its table is present.
pub(crate) fn key_line(text: &str, key: &str) -> Option<usize> {
    let mut table = String::new();
    let mut table_line = None;
    let (parent, _) = key.rsplit_once('.').unwrap_or(("", key));
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.trim_start_matches('[');
            let name = name.split(']').next().unwrap_or("").trim();
            table = name.split('.').map(|p| p.trim().trim_matches('"')).collect::<Vec<_>>().join(".");
            if table == key {
                return Some(i + 1);
            }
            if table == parent {
                table_line = Some(i + 1);
            }
            continue;
        }
        let Some((lhs, _)) = line.split_once('=') else {
            continue;
        };
        let lhs: String = lhs.split('.').map(|p| p.trim().trim_matches('"')).collect::<Vec<_>>().join(".");
        let full = if table.is_empty() { lhs.clone() } else { format!("{table}.{lhs}") };
        if full == key || key.starts_with(&format!("{full}.")) {
            return Some(i + 1);
        }
    }
    table_line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_in_tables_and_dotted_form() {
        let text = "# c\n[server]\nlisten = \"0.0.0.0:1\"\n\n[auth]\nenabled = false\n";
        assert_eq!(key_line(text, "auth.enabled"), Some(6));
        assert_eq!(key_line(text, "server.listen"), Some(3));
        assert_eq!(key_line(text, "server.tls.cert"), None);
        let dotted = "auth.enabled = false\nserver = { listen = \"x\" }\n";
        assert_eq!(key_line(dotted, "auth.enabled"), Some(1));
        assert_eq!(key_line(dotted, "server.listen"), Some(2));
        let header_only = "[server.tls]\ncert = \"a\"\n";
        assert_eq!(key_line(header_only, "server.tls.key"), Some(1));
    }

    #[test]
    fn line_and_column_of_offsets() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 9), (2, 3));
        assert_eq!(line_col(text, 1000), (3, 1));
    }
}
