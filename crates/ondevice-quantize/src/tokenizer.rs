//! `tokenizer.json` (+ `tokenizer_config.json`, `config.json`) → GGUF `tokenizer.*` metadata, in the
//! form llama.cpp's vocabulary loader expects:
//!
//! - WordPiece (BERT) → `tokenizer.ggml.model = "bert"`: word-initial pieces get the SentencePiece
//!   phantom space (`▁word`), continuation pieces lose their `##`, bracketed specials stay; the
//!   `BertNormalizer`'s lowercase / strip-accents options are recorded (llama.cpp's default is not
//!   to lowercase, so an uncased model needs them).
//! - byte-level BPE → `"gpt2"` with merges and a `tokenizer.ggml.pre` chosen from the
//!   pre-tokenizer's structure (GPT-2, SmolLM/StarCoder digits, Llama 3, Qwen 2 regexes).
//! - SentencePiece-style BPE with byte fallback (Llama 2, Mistral) → `"llama"` with scores and
//!   byte tokens.
//!
//! Special tokens, `add_bos`/`add_eos`/`add_sep` and the chat template follow the rules of
//! llama.cpp's `gguf.SpecialVocab` (`tokenizer_config.json` first, then the post-processor template,
//! then `config.json` ids). Anything else is an error that names what was found.

use std::path::Path;

use ondevice_gguf::{Array, Value};
use serde_json::Value as Json;

use crate::error::QuantizeError;
use crate::read_json_file;

/// llama.cpp's `llama_token_type`.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// The pre-tokenizer regexes of Llama 3 and Qwen 2 as written in their tokenizer.json.
pub(crate) const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(crate) const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The special-token kinds, in `gguf.SpecialVocab`'s order, with their GGUF key stems.
const SPECIAL_KEYS: &[(&str, &str)] = &[
    ("bos", "bos"),
    ("eos", "eos"),
    ("unk", "unknown"),
    ("sep", "seperator"),
    ("pad", "padding"),
    ("cls", "cls"),
    ("mask", "mask"),
    ("eot", "eot"),
    ("eom", "eom"),
];

/// What the tokenizer conversion produced.
#[derive(Debug)]
pub(crate) struct TokenizerMetadata {
    /// Entries in the order they are written.
    pub(crate) entries: Vec<(String, Value)>,
    /// `tokenizer.ggml.model`.
    pub(crate) model: &'static str,
    /// `tokenizer.ggml.pre`.
    pub(crate) pre: String,
}

fn problem(dir: &Path, problem: impl Into<String>) -> QuantizeError {
    QuantizeError::Tokenizer { dir: dir.to_owned(), problem: problem.into() }
}

/// Reads the tokenizer files of `dir` for a model with `n_vocab` embedding rows.
pub(crate) fn convert(dir: &Path, n_vocab: usize, config: &Json) -> Result<TokenizerMetadata, QuantizeError> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Err(problem(
            dir,
            "tokenizer.json is missing: ondevice reads tokenizers from tokenizer.json (a tokenizer.model alone is not supported)",
        ));
    }
    let tok = read_json_file(&path)?;
    let tc_path = dir.join("tokenizer_config.json");
    let mut tc = if tc_path.is_file() { Some(read_json_file(&tc_path)?) } else { None };
    if let Some(t) = &tc {
        if !t.is_object() {
            return Err(problem(dir, "tokenizer_config.json must hold a json object"));
        }
    }

    let model = tok.get("model").ok_or_else(|| problem(dir, "tokenizer.json has no \"model\""))?;
    let model_type = model.get("type").and_then(Json::as_str).unwrap_or("");
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| problem(dir, format!("tokenizer.json model of type {model_type:?} has no vocab object")))?;

    // id → (text, type)
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; n_vocab];
    let place = |id: u64, text: &str, ty: i32, tokens: &mut Vec<Option<(String, i32)>>| {
        let Some(slot) = usize::try_from(id).ok().and_then(|i| tokens.get_mut(i)) else {
            return Err(problem(
                dir,
                format!("token {text:?} has id {id}, beyond the model's {n_vocab} embedding rows"),
            ));
        };
        *slot = Some((text.to_owned(), ty));
        Ok(())
    };
    for (text, id) in vocab {
        let id = id.as_u64().ok_or_else(|| problem(dir, format!("token {text:?} has a non-integer id")))?;
        place(id, text, NORMAL, &mut tokens)?;
    }
    let added = tok.get("added_tokens").and_then(Json::as_array).cloned().unwrap_or_default();
    let mut added_ids = Vec::new();
    for a in &added {
        let (Some(id), Some(text)) = (a.get("id").and_then(Json::as_u64), a.get("content").and_then(Json::as_str))
        else {
            return Err(problem(dir, "an added_tokens entry has no integer id or no content"));
        };
        let special = a.get("special").and_then(Json::as_bool).unwrap_or(false);
        place(id, text, if special { CONTROL } else { USER_DEFINED }, &mut tokens)?;
        added_ids.push(id as usize);
    }

    let pre_tok = tok.get("pre_tokenizer").unwrap_or(&Json::Null);
    let normalizer = tok.get("normalizer").unwrap_or(&Json::Null);
    let decoder = tok.get("decoder").unwrap_or(&Json::Null);
    let mut entries: Vec<(String, Value)> = Vec::new();
    let (ggml_model, pre): (&'static str, String);
    let mut scores: Option<Vec<f32>> = None;
    let mut merges_out: Option<Vec<String>> = None;
    let mut add_space_prefix: Option<bool> = None;
    let mut normalizer_entries = Vec::new();

    match model_type {
        "WordPiece" => {
            ggml_model = "bert";
            pre = "default".into();
            let prefix = model.get("continuing_subword_prefix").and_then(Json::as_str).unwrap_or("##");
            for t in tokens.iter_mut().flatten() {
                if t.1 == NORMAL {
                    t.0 = phantom(&t.0, prefix);
                }
            }
            let bert_norm = find_typed(normalizer, "BertNormalizer");
            if let Some(n) = bert_norm {
                let lowercase = n.get("lowercase").and_then(Json::as_bool).unwrap_or(true);
                normalizer_entries.push(("tokenizer.ggml.normalizer.lowercase".to_owned(), Value::Bool(lowercase)));
                if let Some(strip) = n.get("strip_accents").and_then(Json::as_bool) {
                    normalizer_entries.push(("tokenizer.ggml.normalizer.strip_accents".to_owned(), Value::Bool(strip)));
                }
            } else if !normalizer.is_null() {
                return Err(problem(
                    dir,
                    format!("WordPiece with normalizer {} is not supported", describe(normalizer)),
                ));
            }
        }
        "BPE" => {
            let byte_level = find_typed(pre_tok, "ByteLevel").is_some() || find_typed(decoder, "ByteLevel").is_some();
            let byte_fallback = model.get("byte_fallback").and_then(Json::as_bool).unwrap_or(false);
            let merges = model.get("merges").and_then(Json::as_array);
            if byte_level {
                ggml_model = "gpt2";
                pre = byte_level_pre(pre_tok).ok_or_else(|| {
                    problem(
                        dir,
                        format!(
                            "unknown pre-tokenizer {}: ondevice knows the GPT-2, SmolLM/StarCoder, Llama 3 and Qwen 2 byte-level pre-tokenizers",
                            describe(pre_tok)
                        ),
                    )
                })?;
                let merges = merges.ok_or_else(|| problem(dir, "byte-level BPE without merges"))?;
                merges_out = Some(
                    convert_merges(merges)
                        .ok_or_else(|| problem(dir, "merges are neither strings nor pairs of strings"))?,
                );
            } else if byte_fallback {
                ggml_model = "llama";
                pre = "default".into();
                let mut s = vec![0.0f32; n_vocab];
                for (i, t) in tokens.iter_mut().enumerate() {
                    if let Some((text, ty)) = t {
                        if *ty == NORMAL {
                            if is_byte_token(text) {
                                *ty = BYTE;
                            } else {
                                // SentencePiece BPE orders pieces by merge: earlier merges score higher.
                                s[i] = -(i as f32);
                            }
                        }
                    }
                }
                scores = Some(s);
                let prepends = find_typed(normalizer, "Prepend").is_some()
                    || find_typed(pre_tok, "Metaspace")
                        .is_some_and(|m| m.get("prepend_scheme").and_then(Json::as_str) != Some("never"));
                add_space_prefix = Some(prepends);
            } else {
                return Err(problem(
                    dir,
                    format!(
                        "BPE tokenizer with pre-tokenizer {} is neither byte-level nor SentencePiece with byte fallback: not supported",
                        describe(pre_tok)
                    ),
                ));
            }
        }
        other => {
            return Err(problem(
                dir,
                format!("unknown tokenizer model {other:?}: ondevice converts WordPiece and BPE tokenizers"),
            ));
        }
    }

    let mut texts = Vec::with_capacity(n_vocab);
    let mut types = Vec::with_capacity(n_vocab);
    for (i, t) in tokens.into_iter().enumerate() {
        match t {
            Some((text, ty)) => {
                texts.push(text);
                types.push(ty);
            }
            None => {
                texts.push(format!("[PAD{i}]"));
                types.push(UNUSED);
            }
        }
    }

    entries.push(("tokenizer.ggml.model".into(), Value::String(ggml_model.into())));
    entries.push(("tokenizer.ggml.pre".into(), Value::String(pre.clone())));
    entries.push(("tokenizer.ggml.tokens".into(), Value::Array(Array::String(texts))));
    if let Some(s) = scores {
        entries.push(("tokenizer.ggml.scores".into(), Value::Array(Array::F32(s))));
    }
    entries.push(("tokenizer.ggml.token_type".into(), Value::Array(Array::I32(types))));
    if let Some(m) = merges_out {
        entries.push(("tokenizer.ggml.merges".into(), Value::Array(Array::String(m))));
    }
    entries.extend(normalizer_entries);
    if let Some(p) = add_space_prefix {
        entries.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(p)));
    }

    let special = SpecialTokens::read(dir, &tok, tc.as_mut(), config, &added, n_vocab)?;
    for (typ, id) in &special.ids {
        let stem = SPECIAL_KEYS.iter().find(|(t, _)| t == typ).map_or(*typ, |(_, s)| *s);
        entries.push((format!("tokenizer.ggml.{stem}_token_id"), Value::U32(*id)));
    }
    for (typ, add) in &special.add {
        if matches!(*typ, "bos" | "eos" | "sep") {
            entries.push((format!("tokenizer.ggml.add_{typ}_token"), Value::Bool(*add)));
        }
    }
    if ggml_model == "gpt2" && !special.add.iter().any(|(t, _)| *t == "bos") {
        // No template adds a BOS, and nothing says to: llama.cpp's default for BPE would add one.
        entries.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)));
    }
    entries.extend(chat_templates(dir, tc.as_ref())?);
    Ok(TokenizerMetadata { entries, model: ggml_model, pre })
}

/// WordPiece → llama.cpp's phantom-space form.
fn phantom(token: &str, prefix: &str) -> String {
    if token.starts_with('[') && token.ends_with(']') {
        return token.to_owned();
    }
    match token.strip_prefix(prefix) {
        Some(rest) if !prefix.is_empty() => rest.to_owned(),
        _ => format!("\u{2581}{token}"),
    }
}

fn is_byte_token(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 6
        && text.starts_with("<0x")
        && text.ends_with('>')
        && b[3].is_ascii_hexdigit()
        && b[4].is_ascii_hexdigit()
}

/// The first component of `v` (itself or inside a `Sequence`) of type `ty`.
fn find_typed<'a>(v: &'a Json, ty: &str) -> Option<&'a Json> {
    if v.get("type").and_then(Json::as_str) == Some(ty) {
        return Some(v);
    }
    for key in ["pretokenizers", "normalizers", "decoders", "processors"] {
        if let Some(list) = v.get(key).and_then(Json::as_array) {
            if let Some(found) = list.iter().find_map(|c| find_typed(c, ty)) {
                return Some(found);
            }
        }
    }
    None
}

/// A short description of a tokenizer component for an error: its type and those inside it.
fn describe(v: &Json) -> String {
    if v.is_null() {
        return "none".into();
    }
    let ty = v.get("type").and_then(Json::as_str).unwrap_or("?");
    let inner: Vec<String> = ["pretokenizers", "normalizers"]
        .iter()
        .filter_map(|k| v.get(*k).and_then(Json::as_array))
        .flatten()
        .map(describe)
        .collect();
    if inner.is_empty() { format!("{ty:?}") } else { format!("{ty:?} [{}]", inner.join(", ")) }
}

/// The `tokenizer.ggml.pre` name of a byte-level pre-tokenizer, if it is one llama.cpp knows.
fn byte_level_pre(pre: &Json) -> Option<String> {
    let parts: Vec<&Json> = match pre.get("type").and_then(Json::as_str) {
        Some("Sequence") => pre.get("pretokenizers")?.as_array()?.iter().collect(),
        Some(_) => vec![pre],
        None => return None,
    };
    let ty = |j: &Json| j.get("type").and_then(Json::as_str).unwrap_or("").to_owned();
    let use_regex = |j: &Json| j.get("use_regex").and_then(Json::as_bool).unwrap_or(true);
    let prefix_space = |j: &Json| j.get("add_prefix_space").and_then(Json::as_bool).unwrap_or(false);
    match parts.as_slice() {
        [b] if ty(b) == "ByteLevel" && use_regex(b) && !prefix_space(b) => Some("gpt-2".into()),
        [d, b]
            if ty(d) == "Digits"
                && d.get("individual_digits").and_then(Json::as_bool) == Some(true)
                && ty(b) == "ByteLevel"
                && use_regex(b)
                && !prefix_space(b) =>
        {
            Some("smollm".into())
        }
        [s, b] if ty(s) == "Split" && ty(b) == "ByteLevel" && !use_regex(b) => {
            let regex = s.get("pattern")?.get("Regex")?.as_str()?;
            match regex {
                LLAMA3_REGEX => Some("llama-bpe".into()),
                QWEN2_REGEX => Some("qwen2".into()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Merges as `"a b"` strings; pairs with spaces inside get the GPT-2 byte for space (`Ġ`).
fn convert_merges(merges: &[Json]) -> Option<Vec<String>> {
    merges
        .iter()
        .map(|m| match m {
            Json::String(s) => Some(s.clone()),
            Json::Array(pair) if pair.len() == 2 => {
                let enc = |p: &Json| p.as_str().map(|s| s.replace(' ', "\u{0120}"));
                Some(format!("{} {}", enc(&pair[0])?, enc(&pair[1])?))
            }
            _ => None,
        })
        .collect()
}

/// Special token ids and add-flags, in the order `gguf.SpecialVocab` sets them.
struct SpecialTokens {
    ids: Vec<(&'static str, u32)>,
    add: Vec<(&'static str, bool)>,
}

impl SpecialTokens {
    fn set_id(&mut self, typ: &'static str, id: Option<u64>, n_vocab: usize) {
        let Some(id) = id else { return };
        if (id as usize) < n_vocab && !self.ids.iter().any(|(t, _)| *t == typ) {
            self.ids.push((typ, id as u32));
        }
    }

    fn set_add(&mut self, typ: &'static str, value: bool) {
        match self.add.iter_mut().find(|(t, _)| *t == typ) {
            Some(e) => e.1 = value,
            None => self.add.push((typ, value)),
        }
    }

    fn read(
        dir: &Path,
        tok: &Json,
        mut tc: Option<&mut Json>,
        config: &Json,
        added: &[Json],
        n_vocab: usize,
    ) -> Result<Self, QuantizeError> {
        let mut s = SpecialTokens { ids: Vec::new(), add: Vec::new() };
        let mut types: Vec<&'static str> = vec!["bos", "eos", "unk", "sep", "pad", "cls", "mask"];
        let content = |v: Option<&Json>| -> Option<String> {
            match v? {
                Json::String(s) => Some(s.clone()),
                Json::Object(o) => o.get("content")?.as_str().map(str::to_owned),
                _ => None,
            }
        };
        let get = |tc: &Option<&mut Json>, key: &str| content(tc.as_deref().and_then(|t| t.get(key)));
        let mut bos = get(&tc, "bos_token");
        let cls = get(&tc, "cls_token");
        let mut eos = get(&tc, "eos_token");
        let sep = get(&tc, "sep_token");
        let has_tc = tc.is_some();
        let set_tc = |tc: &mut Option<&mut Json>, key: &str, v: &str| {
            if let Some(Json::Object(o)) = tc.as_deref_mut() {
                o.insert(key.to_owned(), Json::String(v.to_owned()));
            }
        };
        if bos.is_none() && has_tc {
            if let Some(c) = &cls {
                set_tc(&mut tc, "bos_token", c);
                bos = Some(c.clone());
            }
        }
        if eos.is_none() && has_tc {
            if let Some(c) = &sep {
                set_tc(&mut tc, "eos_token", c);
                eos = Some(c.clone());
            }
        }
        let post = tok.get("post_processor").unwrap_or(&Json::Null);
        let processors: Vec<&Json> = match post.get("processors").and_then(Json::as_array) {
            Some(list) => list.iter().collect(),
            None if post.is_object() => vec![post],
            None => Vec::new(),
        };
        let special_id = |j: &Json| j.get("SpecialToken")?.get("id")?.as_str().map(str::to_owned);
        for p in processors {
            match p.get("type").and_then(Json::as_str) {
                Some("RobertaProcessing") => {
                    s.set_add("bos", true);
                    s.set_add("eos", true);
                    s.set_add("sep", true);
                }
                Some("TemplateProcessing") => {
                    let single: &[Json] = p.get("single").and_then(Json::as_array).map_or(&[], Vec::as_slice);
                    if single.len() > 1 {
                        if let Some(first) = special_id(&single[0]) {
                            if !has_tc {
                                bos = Some(first.clone());
                            }
                            s.set_add("bos", Some(&first) == bos.as_ref() || Some(&first) == cls.as_ref());
                        }
                        if let Some(last) = special_id(&single[single.len() - 1]) {
                            if !has_tc {
                                eos = Some(last.clone());
                            } else if Some(&last) != eos.as_ref() {
                                let old = eos.clone().unwrap_or_default();
                                if !types.contains(&"eot") {
                                    types.push("eot");
                                    set_tc(&mut tc, "eot_token", &old);
                                } else if !types.contains(&"eom") {
                                    types.push("eom");
                                    set_tc(&mut tc, "eom_token", &old);
                                }
                                set_tc(&mut tc, "eos_token", &last);
                                eos = Some(last.clone());
                            }
                            s.set_add("eos", Some(&last) == eos.as_ref());
                        }
                        let pair: &[Json] = p.get("pair").and_then(Json::as_array).map_or(&[], Vec::as_slice);
                        s.set_add("sep", pair_adds_sep(pair, single, sep.as_deref(), eos.as_deref()));
                    }
                }
                _ => {}
            }
        }
        if let Some(tc) = tc.as_deref() {
            for &typ in &types {
                if let Some(add) = tc.get(format!("add_{typ}_token")).and_then(Json::as_bool) {
                    s.set_add(typ, add);
                }
                let Some(text) = content(tc.get(format!("{typ}_token"))) else { continue };
                let id = added
                    .iter()
                    .find(|a| a.get("content").and_then(Json::as_str) == Some(text.as_str()))
                    .and_then(|a| a.get("id").and_then(Json::as_u64));
                s.set_id(typ, id, n_vocab);
            }
        }
        for &typ in &types {
            let id = config
                .get(format!("{typ}_token_id"))
                .or_else(|| config.get("text_config")?.get(format!("{typ}_token_id")));
            if let Some(id) = id {
                if let Some(i) = id.as_i64() {
                    if i < 0 {
                        return Err(problem(dir, format!("config.json {typ}_token_id is negative")));
                    }
                }
                s.set_id(typ, id.as_u64(), n_vocab);
            }
        }
        Ok(s)
    }
}

/// Whether the pair template puts a separator between A and B (`gguf.SpecialVocab`'s crude parse).
fn pair_adds_sep(pair: &[Json], single: &[Json], sep: Option<&str>, eos: Option<&str>) -> bool {
    let special_id = |j: &Json| j.get("SpecialToken")?.get("id")?.as_str().map(str::to_owned);
    let first = single.first().and_then(special_id);
    let last = if single.len() > 1 { single.last().and_then(special_id) } else { None };
    let mut p = pair;
    if first.is_some() && p.first().and_then(special_id) == first {
        p = &p[1..];
    }
    if last.is_some() && p.last().and_then(special_id) == last {
        p = &p[..p.len() - 1];
    }
    let seq = |j: &Json| j.get("Sequence")?.get("id")?.as_str().map(str::to_owned);
    if p.len() < 3 || p.first().and_then(seq).as_deref() != Some("A") || p.last().and_then(seq).as_deref() != Some("B")
    {
        return false;
    }
    let middle = &p[1..p.len() - 1];
    let is_sep = |id: &Option<String>| id.as_deref().is_some_and(|i| Some(i) == sep || Some(i) == eos);
    let mut add = false;
    if let Some(entry) = middle.first().map(special_id) {
        if is_sep(&entry) && last.is_none() {
            add = true;
        }
    }
    if middle.len() == 2 && is_sep(&special_id(&middle[1])) {
        add = true;
    }
    add
}

/// `tokenizer.chat_template` (and named templates) from tokenizer_config.json, else
/// chat_template.jinja, else chat_template.json.
fn chat_templates(dir: &Path, tc: Option<&Json>) -> Result<Vec<(String, Value)>, QuantizeError> {
    let Some(tc) = tc else { return Ok(Vec::new()) };
    let mut template = tc.get("chat_template").cloned();
    if template.is_none() {
        let jinja = dir.join("chat_template.jinja");
        let json = dir.join("chat_template.json");
        if jinja.is_file() {
            let text = std::fs::read_to_string(&jinja)
                .map_err(|source| QuantizeError::Read { path: jinja.clone(), source })?;
            template = Some(Json::String(text));
        } else if json.is_file() {
            template = read_json_file(&json)?.get("chat_template").cloned();
        }
    }
    let mut out = Vec::new();
    match template {
        Some(Json::String(t)) => out.push(("tokenizer.chat_template".to_owned(), Value::String(t))),
        Some(Json::Array(list)) => {
            let mut names = Vec::new();
            for entry in list {
                let (Some(name), Some(t)) =
                    (entry.get("name").and_then(Json::as_str), entry.get("template").and_then(Json::as_str))
                else {
                    continue;
                };
                if name == "default" {
                    out.push(("tokenizer.chat_template".to_owned(), Value::String(t.to_owned())));
                } else if name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                    out.push((format!("tokenizer.chat_template.{name}"), Value::String(t.to_owned())));
                    names.push(name.to_owned());
                }
            }
            if !names.is_empty() {
                out.push(("tokenizer.chat_templates".to_owned(), Value::Array(Array::String(names))));
            }
        }
        _ => {}
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wordpiece_pieces_take_the_phantom_space_form() {
        assert_eq!(phantom("[CLS]", "##"), "[CLS]");
        assert_eq!(phantom("##ing", "##"), "ing");
        assert_eq!(phantom("man", "##"), "\u{2581}man");
        assert_eq!(phantom("#", "##"), "\u{2581}#");
    }

    #[test]
    fn byte_level_pre_tokenizers_are_named() {
        assert_eq!(byte_level_pre(&json!({"type": "ByteLevel", "add_prefix_space": false})).as_deref(), Some("gpt-2"));
        let smol = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]});
        assert_eq!(byte_level_pre(&smol).as_deref(), Some("smollm"));
        let llama3 = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
        assert_eq!(byte_level_pre(&llama3).as_deref(), Some("llama-bpe"));
        let other = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "\\d+"}},
            {"type": "ByteLevel", "use_regex": false}]});
        assert_eq!(byte_level_pre(&other), None);
    }

    #[test]
    fn merges_in_pair_form_encode_spaces() {
        let m = convert_merges(&[json!("a b"), json!(["c d", "e"])]).unwrap();
        assert_eq!(m, vec!["a b".to_owned(), "c\u{0120}d e".to_owned()]);
        assert!(convert_merges(&[json!(1)]).is_none());
    }

    #[test]
    fn bert_template_adds_bos_and_eos_but_no_sep() {
        let single =
            json!([{"SpecialToken": {"id": "[CLS]"}}, {"Sequence": {"id": "A"}}, {"SpecialToken": {"id": "[SEP]"}}]);
        let pair = json!([{"SpecialToken": {"id": "[CLS]"}}, {"Sequence": {"id": "A"}}, {"SpecialToken": {"id": "[SEP]"}},
            {"Sequence": {"id": "B"}}, {"SpecialToken": {"id": "[SEP]"}}]);
        assert!(!pair_adds_sep(pair.as_array().unwrap(), single.as_array().unwrap(), Some("[SEP]"), Some("[SEP]")));
    }
}
