//! A GGUF's byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`) written back as the
//! Hugging Face `tokenizer.json` and `tokenizer_config.json` that mlx-lm loads with `transformers`:
//! vocabulary and merges as they are, the pre-tokenizer `tokenizer.ggml.pre` names (GPT-2, SmolLM
//! digits + byte level, the Llama 3 and Qwen 2 regexes), control tokens as special added tokens,
//! bos/eos/pad/unk and the chat template. Other tokenizers (SentencePiece `llama`, WordPiece) are
//! refused with an error that says to export from the Hugging Face directory instead.

use std::path::Path;

use ondevice_gguf::{Array, GgufFile, Value};
use serde_json::{Value as Json, json};

use crate::error::QuantizeError;
use crate::tokenizer::{LLAMA3_REGEX, QWEN2_REGEX};

/// llama.cpp's token types.
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// The rebuilt files.
#[derive(Debug)]
pub(crate) struct HfTokenizer {
    pub(crate) tokenizer_json: Vec<u8>,
    pub(crate) tokenizer_config: Vec<u8>,
    pub(crate) bos_id: Option<u64>,
    pub(crate) eos_id: Option<u64>,
}

fn problem(path: &Path, what: impl std::fmt::Display) -> QuantizeError {
    QuantizeError::Tokenizer { dir: path.to_owned(), problem: what.to_string() }
}

fn strings<'a>(file: &'a GgufFile, key: &str) -> Option<&'a [String]> {
    match file.get(key)? {
        Value::Array(a) => a.as_strings(),
        _ => None,
    }
}

/// Rebuilds the tokenizer files of the GGUF `file` at `path`.
pub(crate) fn from_gguf(path: &Path, file: &GgufFile) -> Result<HfTokenizer, QuantizeError> {
    let model = file.get_str("tokenizer.ggml.model").unwrap_or("");
    if model != "gpt2" {
        return Err(problem(
            path,
            format!(
                "tokenizer.ggml.model {model:?}: mlx export from a GGUF rebuilds byte-level BPE (gpt2) tokenizers only; export from the model's Hugging Face directory instead"
            ),
        ));
    }
    let tokens =
        strings(file, "tokenizer.ggml.tokens").ok_or_else(|| problem(path, "tokenizer.ggml.tokens is missing"))?;
    let merges =
        strings(file, "tokenizer.ggml.merges").ok_or_else(|| problem(path, "tokenizer.ggml.merges is missing"))?;
    let types = match file.get("tokenizer.ggml.token_type") {
        Some(Value::Array(Array::I32(t))) if t.len() == tokens.len() => t.clone(),
        None => vec![1; tokens.len()],
        Some(_) => return Err(problem(path, "tokenizer.ggml.token_type is not one i32 per token")),
    };
    let pre = file.get_str("tokenizer.ggml.pre").unwrap_or("default");
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split =
        |regex: &str| json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
    let pre_tokenizer = match pre {
        "gpt-2" | "default" => byte_level(true),
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "llama-bpe" | "llama3" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]})
        }
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}),
        other => {
            return Err(problem(
                path,
                format!(
                    "tokenizer.ggml.pre {other:?} is not one mlx export can rebuild (gpt-2, smollm, llama-bpe, qwen2): export from the model's Hugging Face directory instead"
                ),
            ));
        }
    };
    let id = |key: &str| file.get_u64(key).filter(|&i| (i as usize) < tokens.len());
    let bos_id = id("tokenizer.ggml.bos_token_id");
    let eos_id = id("tokenizer.ggml.eos_token_id");
    let pad_id = id("tokenizer.ggml.padding_token_id");
    let unk_id = id("tokenizer.ggml.unknown_token_id");
    let add_bos = file.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(false);

    let vocab: serde_json::Map<String, Json> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    if vocab.len() != tokens.len() {
        return Err(problem(path, "tokenizer.ggml.tokens holds the same token twice"));
    }
    let added: Vec<Json> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == CONTROL || **t == USER_DEFINED)
        .map(|(i, t)| {
            json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": *t == CONTROL})
        })
        .collect();
    let post_processor = match bos_id.filter(|_| add_bos) {
        Some(b) => {
            let bos = &tokens[b as usize];
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos.clone(): {"id": bos, "ids": [b], "tokens": [bos]}}})
        }
        None => json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}),
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    });
    let mut config = serde_json::Map::new();
    config.insert("add_bos_token".into(), json!(add_bos));
    config.insert("add_eos_token".into(), json!(false));
    for (key, id) in [("bos_token", bos_id), ("eos_token", eos_id), ("pad_token", pad_id), ("unk_token", unk_id)] {
        if let Some(i) = id {
            config.insert(key.into(), json!(tokens[i as usize]));
        }
    }
    if let Some(t) = file.chat_template() {
        config.insert("chat_template".into(), json!(t));
    }
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    if let Some(ctx) = file.context_length() {
        config.insert("model_max_length".into(), json!(ctx));
    }
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    let to_vec = |v: &Json| serde_json::to_vec(v).map_err(|e| problem(path, e));
    Ok(HfTokenizer {
        tokenizer_json: to_vec(&tokenizer)?,
        tokenizer_config: to_vec(&Json::Object(config))?,
        bos_id,
        eos_id,
    })
}
