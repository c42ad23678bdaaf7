//! Input formats and chunking. A file's format comes from its extension: text, Markdown, source
//! code or HTML (stripped to text here); anything else is refused with a clear error. Chunks are
//! cut by `text-splitter` at semantic boundaries (Markdown structure for Markdown; blank lines,
//! lines and sentences for text and code), sized in the embedding model's tokens: the ratio of
//! characters to tokens is measured on the document with the model's tokenizer
//! ([`TokenEstimate`]), and neighbouring chunks share `overlap_tokens`.

use text_splitter::{ChunkConfig, ChunkSizer, MarkdownSplitter, TextSplitter};

use crate::{ChunkingSettings, VectorError};

/// What a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Plain text.
    Text,
    /// Markdown.
    Markdown,
    /// Source code (split at blank lines and lines).
    Code,
    /// HTML (tags, scripts and styles removed).
    Html,
}

const CODE_EXTENSIONS: &[&str] = &[
    "rs",
    "py",
    "js",
    "mjs",
    "cjs",
    "ts",
    "tsx",
    "jsx",
    "go",
    "c",
    "h",
    "cc",
    "cpp",
    "cxx",
    "hpp",
    "hh",
    "java",
    "kt",
    "kts",
    "swift",
    "rb",
    "php",
    "cs",
    "scala",
    "sh",
    "bash",
    "zsh",
    "fish",
    "ps1",
    "toml",
    "yaml",
    "yml",
    "json",
    "sql",
    "lua",
    "r",
    "zig",
    "hs",
    "ex",
    "exs",
    "erl",
    "ml",
    "mli",
    "css",
    "scss",
    "proto",
    "dart",
    "jl",
    "pl",
    "vue",
    "svelte",
    "ini",
    "cfg",
    "gradle",
    "cmake",
    "mk",
    "dockerfile",
    "tf",
];

impl Format {
    /// `text`, `markdown`, `code` or `html`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Markdown => "markdown",
            Format::Code => "code",
            Format::Html => "html",
        }
    }

    /// Parses a format name.
    pub fn parse(s: &str) -> Result<Format, VectorError> {
        match s {
            "text" | "txt" => Ok(Format::Text),
            "markdown" | "md" => Ok(Format::Markdown),
            "code" => Ok(Format::Code),
            "html" => Ok(Format::Html),
            other => {
                Err(VectorError::InvalidRequest(format!("unknown format {other:?}: use text, markdown, code or html")))
            }
        }
    }

    /// The format of a file, from its name; `None` when the extension is not one we index.
    pub fn from_path(path: &std::path::Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if matches!(name.as_str(), "makefile" | "dockerfile" | "justfile") {
            return Some(Format::Code);
        }
        let Some((_, ext)) = name.rsplit_once('.') else {
            return matches!(name.as_str(), "readme" | "license" | "changelog" | "notice" | "authors")
                .then_some(Format::Text);
        };
        match ext {
            "txt" | "text" | "log" | "rst" | "adoc" | "org" | "csv" | "tsv" => Some(Format::Text),
            "md" | "markdown" | "mdx" | "mdown" => Some(Format::Markdown),
            "html" | "htm" | "xhtml" => Some(Format::Html),
            e if CODE_EXTENSIONS.contains(&e) => Some(Format::Code),
            _ => None,
        }
    }

    /// The error for a file whose format is not supported.
    pub fn unsupported(path: &std::path::Path) -> VectorError {
        VectorError::UnsupportedFormat {
            path: path.display().to_string(),
            detail: "unsupported file type: index text, Markdown, source code or HTML files (convert PDFs and office documents to text first)".into(),
        }
    }
}

/// Decodes file bytes as UTF-8 text, refusing binary content.
pub fn decode(path: &str, bytes: &[u8]) -> Result<String, VectorError> {
    if bytes[..bytes.len().min(8192)].contains(&0) {
        return Err(VectorError::UnsupportedFormat {
            path: path.into(),
            detail: "binary file (contains NUL bytes)".into(),
        });
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.strip_prefix('\u{feff}').unwrap_or(s).to_owned()),
        Err(e) => Err(VectorError::UnsupportedFormat {
            path: path.into(),
            detail: format!("not UTF-8 text (invalid byte at offset {}): convert it to UTF-8", e.valid_up_to()),
        }),
    }
}

/// The text of a document in `format` (HTML stripped, others as they are).
pub fn extract_text(format: Format, raw: &str) -> String {
    match format {
        Format::Html => html_to_text(raw),
        Format::Text | Format::Markdown | Format::Code => raw.to_owned(),
    }
}

/// How many characters one of the embedding model's tokens covers in a document.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenEstimate {
    /// Characters per token (≥ 0.5).
    pub chars_per_token: f32,
}

impl TokenEstimate {
    /// From a sample's character and token counts.
    pub fn measured(chars: usize, tokens: usize) -> TokenEstimate {
        if chars == 0 || tokens == 0 {
            return TokenEstimate::default();
        }
        TokenEstimate { chars_per_token: (chars as f32 / tokens as f32).clamp(0.5, 16.0) }
    }

    /// Estimated tokens of `text`.
    pub fn tokens(&self, text: &str) -> usize {
        (text.chars().count() as f32 / self.chars_per_token).ceil() as usize
    }

    /// The longest prefix of `text` within `tokens` (cut at a character boundary).
    pub fn truncate<'a>(&self, text: &'a str, tokens: usize) -> &'a str {
        let chars = (tokens as f32 * self.chars_per_token).floor() as usize;
        match text.char_indices().nth(chars) {
            Some((i, _)) => &text[..i],
            None => text,
        }
    }
}

impl Default for TokenEstimate {
    /// About four characters per token: English text with a BPE vocabulary.
    fn default() -> Self {
        TokenEstimate { chars_per_token: 4.0 }
    }
}

impl ChunkSizer for TokenEstimate {
    fn size(&self, chunk: &str) -> usize {
        self.tokens(chunk)
    }
}

/// Cuts `text` into chunks of at most `settings.max_tokens` (estimated) with the overlap.
pub fn split(format: Format, text: &str, settings: ChunkingSettings, estimate: TokenEstimate) -> Vec<String> {
    let max = settings.max_tokens.max(1) as usize;
    let overlap = (settings.overlap_tokens as usize).min(max.saturating_sub(1));
    let config = ChunkConfig::new(max)
        .with_sizer(estimate)
        .with_overlap(overlap)
        .unwrap_or_else(|_| ChunkConfig::new(max).with_sizer(estimate));
    let chunks: Vec<String> = match format {
        Format::Markdown => MarkdownSplitter::new(config).chunks(text).map(str::to_owned).collect(),
        Format::Text | Format::Code | Format::Html => {
            TextSplitter::new(config).chunks(text).map(str::to_owned).collect()
        }
    };
    chunks.into_iter().filter(|c| !c.trim().is_empty()).collect()
}

/// Checks chunking settings.
pub fn validate_chunking(settings: &ChunkingSettings, max_input_tokens: u32) -> Result<(), VectorError> {
    if settings.max_tokens == 0 || settings.max_tokens > max_input_tokens {
        return Err(VectorError::InvalidRequest(format!(
            "chunk size {} tokens must be between 1 and the collection's max_input_tokens {max_input_tokens}",
            settings.max_tokens
        )));
    }
    if settings.overlap_tokens >= settings.max_tokens {
        return Err(VectorError::InvalidRequest(format!(
            "chunk overlap {} must be smaller than the chunk size {}",
            settings.overlap_tokens, settings.max_tokens
        )));
    }
    Ok(())
}

const SKIPPED_ELEMENTS: &[&str] = &["script", "style", "noscript", "template", "svg", "head", "iframe", "object"];
const BLOCK_ELEMENTS: &[&str] = &[
    "p",
    "div",
    "br",
    "li",
    "ul",
    "ol",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "tr",
    "table",
    "section",
    "article",
    "header",
    "footer",
    "nav",
    "aside",
    "main",
    "pre",
    "blockquote",
    "hr",
    "dd",
    "dt",
    "dl",
    "figure",
    "figcaption",
    "title",
    "form",
    "details",
    "summary",
];

/// HTML → text: drops tags, comments, doctype, and the content of scripts, styles and similar;
/// decodes entities; breaks lines at block elements and collapses whitespace. Never fails: any
/// byte sequence gives some text (a lone `<` that opens no tag is kept as text).
pub fn html_to_text(html: &str) -> String {
    let bytes = html.as_bytes();
    let mut out = String::with_capacity(html.len() / 2);
    let mut i = 0;
    let mut skip_until: Option<&'static str> = None;
    while i < bytes.len() {
        if bytes[i] == b'<' {
            // Comments and declarations.
            if html[i..].starts_with("<!--") {
                i = html[i + 4..].find("-->").map_or(bytes.len(), |e| i + 4 + e + 3);
                continue;
            }
            let rest = &html[i + 1..];
            let closing = rest.starts_with('/');
            let name_start = if closing { 1 } else { 0 };
            let name: String = rest[name_start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .take(16)
                .collect::<String>()
                .to_ascii_lowercase();
            let is_decl = rest.starts_with('!') || rest.starts_with('?');
            if name.is_empty() && !is_decl {
                if skip_until.is_none() {
                    out.push('<');
                }
                i += 1;
                continue;
            }
            let end = tag_end(bytes, i + 1);
            if let Some(skipped) = skip_until {
                if closing && name == skipped {
                    skip_until = None;
                }
                i = end;
                continue;
            }
            if !closing && let Some(s) = SKIPPED_ELEMENTS.iter().find(|s| **s == name) {
                let self_closing = end >= 2 && bytes[end - 2] == b'/';
                if !self_closing {
                    skip_until = Some(s);
                }
            } else if BLOCK_ELEMENTS.contains(&name.as_str()) {
                out.push('\n');
            } else if name == "td" || name == "th" {
                out.push(' ');
            }
            i = end;
            continue;
        }
        let next = html[i..].find('<').map_or(bytes.len(), |n| i + n);
        if skip_until.is_none() {
            decode_entities(&html[i..next], &mut out);
        }
        i = next;
    }
    collapse_whitespace(&out)
}

/// The index after the `>` closing the tag that starts before `from`, honouring quoted attributes.
fn tag_end(bytes: &[u8], from: usize) -> usize {
    let mut quote: Option<u8> = None;
    let mut j = from;
    while j < bytes.len() {
        match (quote, bytes[j]) {
            (Some(q), b) if b == q => quote = None,
            (None, b'"' | b'\'') => quote = Some(bytes[j]),
            (None, b'>') => return j + 1,
            _ => {}
        }
        j += 1;
    }
    bytes.len()
}

fn decode_entities(s: &str, out: &mut String) {
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let end = after.find(';').filter(|e| *e <= 10);
        let decoded = end.and_then(|e| {
            let ent = &after[..e];
            let c = match ent {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some(' '),
                "mdash" => Some('—'),
                "ndash" => Some('–'),
                "hellip" => Some('…'),
                "copy" => Some('©'),
                _ => {
                    if let Some(hex) = ent.strip_prefix("#x").or_else(|| ent.strip_prefix("#X")) {
                        u32::from_str_radix(hex, 16).ok().and_then(char::from_u32)
                    } else if let Some(dec) = ent.strip_prefix('#') {
                        dec.parse::<u32>().ok().and_then(char::from_u32)
                    } else {
                        None
                    }
                }
            };
            c.map(|c| (c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(if c == '\0' { '\u{fffd}' } else { c });
                rest = &after[e + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
}

fn collapse_whitespace(s: &str) -> String {
    let lines: Vec<String> =
        s.split('\n').map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).filter(|l| !l.is_empty()).collect();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn formats_come_from_extensions_and_others_are_refused() {
        assert_eq!(Format::from_path(Path::new("a/README.md")), Some(Format::Markdown));
        assert_eq!(Format::from_path(Path::new("x.RS")), Some(Format::Code));
        assert_eq!(Format::from_path(Path::new("index.htm")), Some(Format::Html));
        assert_eq!(Format::from_path(Path::new("notes.txt")), Some(Format::Text));
        assert_eq!(Format::from_path(Path::new("Makefile")), Some(Format::Code));
        assert_eq!(Format::from_path(Path::new("paper.pdf")), None);
        assert_eq!(Format::from_path(Path::new("photo.jpeg")), None);
        let e = Format::unsupported(Path::new("paper.pdf")).to_string();
        assert!(e.contains("paper.pdf") && e.contains("text, Markdown, source code or HTML"), "{e}");
        assert!(decode("b.txt", b"ab\0cd").unwrap_err().to_string().contains("binary"));
        assert!(decode("b.txt", b"ab\xffcd").unwrap_err().to_string().contains("UTF-8"));
        assert_eq!(decode("b.txt", "\u{feff}hi".as_bytes()).unwrap(), "hi");
    }

    #[test]
    fn html_is_stripped_to_text() {
        let html = r#"<!DOCTYPE html><html><head><title>T</title><style>p{color:red}</style></head>
            <body><h1>Title &amp; more</h1><script>var x = "<p>no</p>";</script>
            <p class="a>b">First&nbsp;para &lt;3 &#x41;&#66;</p><!-- hidden --><ul><li>one</li><li>two</li></ul>
            a < b and c&d; <img src="x.png"/> <table><tr><td>c1</td><td>c2</td></tr></table></body></html>"#;
        let text = html_to_text(html);
        assert_eq!(text, "Title & more\nFirst para <3 AB\none\ntwo\na < b and c&d;\nc1 c2", "{text}");
        // Unterminated constructs do not panic or loop.
        for s in ["<", "<a", "<!--", "<script>", "&#xffffffff;", "&", "<p class='", "\u{e9}<\u{e9}"] {
            let _ = html_to_text(s);
        }
    }

    #[test]
    fn chunks_respect_size_and_overlap() {
        let para = "Rust is a language empowering everyone to build reliable and efficient software. ";
        let text = para.repeat(60);
        let est = TokenEstimate::measured(para.len(), 16);
        let settings = ChunkingSettings { max_tokens: 64, overlap_tokens: 16 };
        let chunks = split(Format::Text, &text, settings, est);
        assert!(chunks.len() > 10, "{}", chunks.len());
        assert!(chunks.iter().all(|c| est.tokens(c) <= 64), "chunk over budget");
        // Neighbours overlap.
        let tail: String = chunks[0].chars().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
        assert!(chunks[1].contains(tail.trim()), "{:?} / {:?}", chunks[0], chunks[1]);

        let md = "# Intro\n\nShort intro.\n\n## Part A\n\nText of part A.\n\n## Part B\n\nText of part B.\n";
        let chunks = split(
            Format::Markdown,
            md,
            ChunkingSettings { max_tokens: 8, overlap_tokens: 0 },
            TokenEstimate::default(),
        );
        assert!(chunks.iter().any(|c| c.starts_with("## Part B")), "{chunks:?}");
        assert!(validate_chunking(&ChunkingSettings { max_tokens: 600, overlap_tokens: 0 }, 512).is_err());
        assert!(validate_chunking(&ChunkingSettings { max_tokens: 64, overlap_tokens: 64 }, 512).is_err());
        assert_eq!(est.truncate("abcdef", 1).chars().count(), (est.chars_per_token as usize).min(6));
    }
}
