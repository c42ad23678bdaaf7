//! Architectures the converter knows: how `config.json` becomes GGUF hyperparameters and how each
//! safetensors tensor is named, shaped and transformed for llama.cpp's loader.
//!
//! - BERT (`BertModel`, sentence-transformers): `bert.*` keys with `attention.causal = false` and
//!   the pooling of the sentence-transformers `Pooling` module; the pooler and masked-LM heads and
//!   `position_ids` are dropped.
//! - Llama family: `LlamaForCausalLM` and `MistralForCausalLM` (GGUF `llama`, whose query and key
//!   rows are permuted from Hugging Face's rotary layout back to the interleaved one llama.cpp's
//!   `llama` rope expects) and `Qwen2ForCausalLM` (GGUF `qwen2`, NeoX rope: no permutation; q/k/v
//!   biases). `rotary_emb.inv_freq` is dropped; a missing `lm_head` means tied embeddings.

use std::collections::BTreeMap;
use std::path::Path;

use ondevice_gguf::Value;
use serde_json::Value as Json;

use crate::error::QuantizeError;

/// llama.cpp's `llama_pooling_type`.
const POOLING_MEAN: u32 = 1;
const POOLING_CLS: u32 = 2;
const POOLING_LAST: u32 = 3;

/// Largest dimension accepted from config.json (far above any real model).
const MAX_DIM: u64 = 1 << 24;

/// How a tensor's rows are rearranged on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transform {
    /// Copied as is.
    None,
    /// Rows in groups of `head_dim`: within each head, row `j * head_dim/2 + i` moves to
    /// `i * 2 + j` (llama.cpp's `permute` of q/k for the `llama` rope).
    PermuteHeads {
        /// Rows per head.
        head_dim: u64,
    },
}

/// One tensor the output holds.
#[derive(Debug, Clone)]
pub(crate) struct TensorMap {
    /// Name in the safetensors files.
    pub(crate) source: String,
    /// Name in the GGUF.
    pub(crate) target: String,
    /// Shape config.json implies, outermost first (safetensors order).
    pub(crate) shape: Vec<u64>,
    pub(crate) transform: Transform,
}

/// What an architecture contributes to the output.
#[derive(Debug)]
pub(crate) struct ArchPlan {
    /// `general.architecture`.
    pub(crate) name: &'static str,
    /// The `{arch}.*` keys.
    pub(crate) metadata: Vec<(String, Value)>,
    /// Tensors in output order.
    pub(crate) tensors: Vec<TensorMap>,
    /// Embedding rows (the vocabulary size).
    pub(crate) n_vocab: u64,
}

struct Cfg<'a> {
    dir: &'a Path,
    json: &'a Json,
}

impl Cfg<'_> {
    fn err(&self, key: &str, problem: impl Into<String>) -> QuantizeError {
        QuantizeError::Config { dir: self.dir.to_owned(), key: key.to_owned(), problem: problem.into() }
    }

    fn get(&self, key: &str) -> Option<&Json> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    fn dim(&self, key: &str) -> Result<u64, QuantizeError> {
        self.opt_dim(key)?.ok_or_else(|| self.err(key, "is missing"))
    }

    fn opt_dim(&self, key: &str) -> Result<Option<u64>, QuantizeError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (1..=MAX_DIM).contains(&n) => Ok(Some(n)),
                _ => Err(self.err(key, format!("must be an integer from 1 to {MAX_DIM}, found {v}"))),
            },
        }
    }

    fn float(&self, key: &str, default: f64) -> Result<f64, QuantizeError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|f| f.is_finite() && *f > 0.0)
                .ok_or_else(|| self.err(key, format!("must be a positive number, found {v}"))),
        }
    }
}

/// The plan for the model in `dir` whose config is `config` and whose tensors (name → shape) are
/// `tensors`.
pub(crate) fn plan(dir: &Path, config: &Json, tensors: &BTreeMap<String, Vec<u64>>) -> Result<ArchPlan, QuantizeError> {
    let architecture = config.get("architectures").and_then(|a| a.get(0)).and_then(Json::as_str).unwrap_or("");
    let model_type = config.get("model_type").and_then(Json::as_str).unwrap_or("");
    let cfg = Cfg { dir, json: config };
    match (architecture, model_type) {
        ("BertModel" | "BertForMaskedLM", _) | ("", "bert") => bert(&cfg, dir, tensors),
        ("LlamaForCausalLM" | "MistralForCausalLM", _) | ("", "llama" | "mistral") => {
            llama(&cfg, tensors, "llama", true)
        }
        ("Qwen2ForCausalLM", _) | ("", "qwen2") => llama(&cfg, tensors, "qwen2", false),
        _ => Err(QuantizeError::UnknownArchitecture {
            architecture: architecture.to_owned(),
            model_type: model_type.to_owned(),
        }),
    }
}

fn bert(cfg: &Cfg<'_>, dir: &Path, tensors: &BTreeMap<String, Vec<u64>>) -> Result<ArchPlan, QuantizeError> {
    const ARCH: &str = "bert";
    let hidden = cfg.dim("hidden_size")?;
    let layers = cfg.dim("num_hidden_layers")?;
    let heads = cfg.dim("num_attention_heads")?;
    let ff = cfg.dim("intermediate_size")?;
    let ctx = cfg.dim("max_position_embeddings")?;
    let types = cfg.opt_dim("type_vocab_size")?.unwrap_or(2);
    let eps = cfg.float("layer_norm_eps", 1e-12)?;
    if hidden % heads != 0 {
        return Err(cfg.err("num_attention_heads", format!("{heads} does not divide hidden_size {hidden}")));
    }
    match cfg.get("hidden_act").and_then(Json::as_str) {
        None | Some("gelu") => {}
        Some(other) => {
            return Err(cfg.err("hidden_act", format!("{other:?} is not supported (llama.cpp's bert uses gelu)")));
        }
    }
    match cfg.get("position_embedding_type").and_then(Json::as_str) {
        None | Some("absolute") => {}
        Some(other) => {
            return Err(cfg.err("position_embedding_type", format!("{other:?} is not supported (absolute only)")));
        }
    }
    let strip =
        |name: &str| name.strip_prefix("bert.").unwrap_or(name).replace(".gamma", ".weight").replace(".beta", ".bias");
    let vocab_name = tensors
        .keys()
        .find(|n| strip(n) == "embeddings.word_embeddings.weight")
        .ok_or_else(|| QuantizeError::MissingTensor { tensor: "embeddings.word_embeddings.weight".into() })?;
    let n_vocab = tensors[vocab_name].first().copied().unwrap_or(0);

    let mut maps = Vec::new();
    for source in tensors.keys() {
        let name = strip(source);
        if name == "embeddings.position_ids" || name.starts_with("pooler.") || name.starts_with("cls.") {
            continue;
        }
        let (target, shape) = match name.as_str() {
            "embeddings.word_embeddings.weight" => ("token_embd.weight".to_owned(), vec![n_vocab, hidden]),
            "embeddings.position_embeddings.weight" => ("position_embd.weight".to_owned(), vec![ctx, hidden]),
            "embeddings.token_type_embeddings.weight" => ("token_types.weight".to_owned(), vec![types, hidden]),
            "embeddings.LayerNorm.weight" => ("token_embd_norm.weight".to_owned(), vec![hidden]),
            "embeddings.LayerNorm.bias" => ("token_embd_norm.bias".to_owned(), vec![hidden]),
            _ => {
                let unknown = || QuantizeError::UnknownTensor { tensor: source.clone(), architecture: ARCH };
                let rest = name.strip_prefix("encoder.layer.").ok_or_else(unknown)?;
                let (block, part) = rest.split_once('.').ok_or_else(unknown)?;
                let block: u64 = block.parse().ok().filter(|b| *b < layers).ok_or_else(unknown)?;
                let (part, kind) = part.rsplit_once('.').ok_or_else(unknown)?;
                let (stem, out_dim, in_dim) = match part {
                    "attention.self.query" => ("attn_q", hidden, Some(hidden)),
                    "attention.self.key" => ("attn_k", hidden, Some(hidden)),
                    "attention.self.value" => ("attn_v", hidden, Some(hidden)),
                    "attention.output.dense" => ("attn_output", hidden, Some(hidden)),
                    "attention.output.LayerNorm" => ("attn_output_norm", hidden, None),
                    "intermediate.dense" => ("ffn_up", ff, Some(hidden)),
                    "output.dense" => ("ffn_down", hidden, Some(ff)),
                    "output.LayerNorm" => ("layer_output_norm", hidden, None),
                    _ => return Err(unknown()),
                };
                let shape = match (kind, in_dim) {
                    ("weight", Some(i)) => vec![out_dim, i],
                    ("weight", None) | ("bias", _) => vec![out_dim],
                    _ => return Err(unknown()),
                };
                (format!("blk.{block}.{stem}.{kind}"), shape)
            }
        };
        maps.push(TensorMap { source: source.clone(), target, shape, transform: Transform::None });
    }
    let required: Vec<String> =
        ["token_embd.weight", "position_embd.weight", "token_embd_norm.weight", "token_embd_norm.bias"]
            .iter()
            .map(|s| (*s).to_owned())
            .chain((0..layers).flat_map(|b| {
                [
                    "attn_q",
                    "attn_k",
                    "attn_v",
                    "attn_output",
                    "attn_output_norm",
                    "ffn_up",
                    "ffn_down",
                    "layer_output_norm",
                ]
                .iter()
                .flat_map(move |s| [format!("blk.{b}.{s}.weight"), format!("blk.{b}.{s}.bias")])
                .collect::<Vec<_>>()
            }))
            .collect();
    check_required(&maps, &required)?;
    sort_maps(&mut maps);

    let mut metadata = vec![
        (format!("{ARCH}.context_length"), Value::U32(ctx as u32)),
        (format!("{ARCH}.embedding_length"), Value::U32(hidden as u32)),
        (format!("{ARCH}.feed_forward_length"), Value::U32(ff as u32)),
        (format!("{ARCH}.block_count"), Value::U32(layers as u32)),
        (format!("{ARCH}.attention.head_count"), Value::U32(heads as u32)),
        (format!("{ARCH}.attention.layer_norm_epsilon"), Value::F32(eps as f32)),
        (format!("{ARCH}.attention.causal"), Value::Bool(false)),
    ];
    if let Some(pooling) = sentence_transformers_pooling(dir)? {
        metadata.push((format!("{ARCH}.pooling_type"), Value::U32(pooling)));
    }
    metadata.push(("tokenizer.ggml.token_type_count".to_owned(), Value::U32(types as u32)));
    Ok(ArchPlan { name: ARCH, metadata, tensors: maps, n_vocab })
}

/// The pooling of a sentence-transformers model (`modules.json` → the `Pooling` module's
/// `config.json`), if it has one.
fn sentence_transformers_pooling(dir: &Path) -> Result<Option<u32>, QuantizeError> {
    let modules = dir.join("modules.json");
    if !modules.is_file() {
        return Ok(None);
    }
    let modules = crate::read_json_file(&modules)?;
    let Some(list) = modules.as_array() else { return Ok(None) };
    for m in list {
        if m.get("type").and_then(Json::as_str) != Some("sentence_transformers.models.Pooling") {
            continue;
        }
        let sub = m.get("path").and_then(Json::as_str).unwrap_or("");
        if sub.is_empty() || sub.contains(['/', '\\']) || sub == ".." || sub == "." {
            return Err(QuantizeError::Config {
                dir: dir.to_owned(),
                key: "modules.json path".into(),
                problem: format!("{sub:?} is not a plain directory name"),
            });
        }
        let config = crate::read_json_file(&dir.join(sub).join("config.json"))?;
        let on = |k: &str| config.get(k).and_then(Json::as_bool).unwrap_or(false);
        let pooling = if on("pooling_mode_mean_tokens") {
            POOLING_MEAN
        } else if on("pooling_mode_cls_token") {
            POOLING_CLS
        } else if on("pooling_mode_lasttoken") {
            POOLING_LAST
        } else {
            return Err(QuantizeError::Config {
                dir: dir.to_owned(),
                key: format!("{sub}/config.json pooling_mode"),
                problem: "names no pooling llama.cpp offers (mean, cls or last token)".into(),
            });
        };
        return Ok(Some(pooling));
    }
    Ok(None)
}

fn llama(
    cfg: &Cfg<'_>,
    tensors: &BTreeMap<String, Vec<u64>>,
    arch: &'static str,
    permute: bool,
) -> Result<ArchPlan, QuantizeError> {
    let hidden = cfg.dim("hidden_size")?;
    let layers = cfg.dim("num_hidden_layers")?;
    let heads = cfg.dim("num_attention_heads")?;
    let kv_heads = cfg.opt_dim("num_key_value_heads")?.unwrap_or(heads);
    let ff = cfg.dim("intermediate_size")?;
    let ctx = cfg.dim("max_position_embeddings")?;
    let eps = cfg.float("rms_norm_eps", 1e-6)?;
    let theta = cfg.float("rope_theta", 10_000.0)?;
    let head_dim = match cfg.opt_dim("head_dim")? {
        Some(d) => d,
        None if hidden % heads == 0 => hidden / heads,
        None => return Err(cfg.err("num_attention_heads", format!("{heads} does not divide hidden_size {hidden}"))),
    };
    if heads % kv_heads != 0 {
        return Err(cfg.err("num_key_value_heads", format!("{kv_heads} does not divide num_attention_heads {heads}")));
    }
    if permute && head_dim % 2 != 0 {
        return Err(cfg.err("head_dim", format!("{head_dim} is odd: rotary embeddings need an even head size")));
    }
    let mut rope_scaling = None;
    if let Some(rs) = cfg.get("rope_scaling") {
        let kind = rs.get("rope_type").or_else(|| rs.get("type")).and_then(Json::as_str).unwrap_or("");
        let factor = rs.get("factor").and_then(Json::as_f64);
        match (kind, factor) {
            ("linear", Some(f)) if f.is_finite() && f > 0.0 => rope_scaling = Some(f),
            ("default", _) => {}
            _ => return Err(cfg.err("rope_scaling", format!("type {kind:?} is not supported (linear only)"))),
        }
    }
    let n_vocab = tensors
        .get("model.embed_tokens.weight")
        .and_then(|s| s.first().copied())
        .ok_or_else(|| QuantizeError::MissingTensor { tensor: "model.embed_tokens.weight".into() })?;
    let q_rows = heads * head_dim;
    let kv_rows = kv_heads * head_dim;

    let mut maps = Vec::new();
    for source in tensors.keys() {
        let unknown = || QuantizeError::UnknownTensor { tensor: source.clone(), architecture: arch };
        if source.ends_with(".rotary_emb.inv_freq") {
            continue;
        }
        let (target, shape, transform) = match source.as_str() {
            "model.embed_tokens.weight" => ("token_embd.weight".to_owned(), vec![n_vocab, hidden], Transform::None),
            "model.norm.weight" => ("output_norm.weight".to_owned(), vec![hidden], Transform::None),
            "lm_head.weight" => ("output.weight".to_owned(), vec![n_vocab, hidden], Transform::None),
            _ => {
                let rest = source.strip_prefix("model.layers.").ok_or_else(unknown)?;
                let (block, part) = rest.split_once('.').ok_or_else(unknown)?;
                let block: u64 = block.parse().ok().filter(|b| *b < layers).ok_or_else(unknown)?;
                let (part, kind) = part.rsplit_once('.').ok_or_else(unknown)?;
                let rope = if permute { Transform::PermuteHeads { head_dim } } else { Transform::None };
                let (stem, out_dim, in_dim, transform) = match part {
                    "input_layernorm" => ("attn_norm", hidden, None, Transform::None),
                    "post_attention_layernorm" => ("ffn_norm", hidden, None, Transform::None),
                    "self_attn.q_proj" => ("attn_q", q_rows, Some(hidden), rope),
                    "self_attn.k_proj" => ("attn_k", kv_rows, Some(hidden), rope),
                    "self_attn.v_proj" => ("attn_v", kv_rows, Some(hidden), Transform::None),
                    "self_attn.o_proj" => ("attn_output", hidden, Some(q_rows), Transform::None),
                    "mlp.gate_proj" => ("ffn_gate", ff, Some(hidden), Transform::None),
                    "mlp.up_proj" => ("ffn_up", ff, Some(hidden), Transform::None),
                    "mlp.down_proj" => ("ffn_down", hidden, Some(ff), Transform::None),
                    _ => return Err(unknown()),
                };
                let shape = match (kind, in_dim) {
                    ("weight", Some(i)) => vec![out_dim, i],
                    ("weight", None) => vec![out_dim],
                    ("bias", Some(_)) => vec![out_dim],
                    _ => return Err(unknown()),
                };
                (format!("blk.{block}.{stem}.{kind}"), shape, transform)
            }
        };
        maps.push(TensorMap { source: source.clone(), target, shape, transform });
    }
    let required: Vec<String> = ["token_embd.weight", "output_norm.weight"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain((0..layers).flat_map(|b| {
            ["attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
                .iter()
                .map(move |s| format!("blk.{b}.{s}.weight"))
                .collect::<Vec<_>>()
        }))
        .collect();
    check_required(&maps, &required)?;
    sort_maps(&mut maps);

    let mut metadata = vec![
        (format!("{arch}.context_length"), Value::U32(ctx as u32)),
        (format!("{arch}.embedding_length"), Value::U32(hidden as u32)),
        (format!("{arch}.block_count"), Value::U32(layers as u32)),
        (format!("{arch}.feed_forward_length"), Value::U32(ff as u32)),
        (format!("{arch}.rope.dimension_count"), Value::U32(head_dim as u32)),
        (format!("{arch}.attention.head_count"), Value::U32(heads as u32)),
        (format!("{arch}.attention.head_count_kv"), Value::U32(kv_heads as u32)),
        (format!("{arch}.rope.freq_base"), Value::F32(theta as f32)),
        (format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(eps as f32)),
        (format!("{arch}.vocab_size"), Value::U32(n_vocab as u32)),
    ];
    if head_dim * heads != hidden {
        metadata.push((format!("{arch}.attention.key_length"), Value::U32(head_dim as u32)));
        metadata.push((format!("{arch}.attention.value_length"), Value::U32(head_dim as u32)));
    }
    if let Some(factor) = rope_scaling {
        metadata.push((format!("{arch}.rope.scaling.type"), Value::String("linear".into())));
        metadata.push((format!("{arch}.rope.scaling.factor"), Value::F32(factor as f32)));
    }
    Ok(ArchPlan { name: arch, metadata, tensors: maps, n_vocab })
}

fn check_required(maps: &[TensorMap], required: &[String]) -> Result<(), QuantizeError> {
    for r in required {
        if !maps.iter().any(|m| &m.target == r) {
            return Err(QuantizeError::MissingTensor { tensor: r.clone() });
        }
    }
    Ok(())
}

/// Output order: embeddings, then blocks in order, then the output layers; names sorted within.
fn sort_maps(maps: &mut [TensorMap]) {
    fn key(m: &TensorMap) -> (u8, u64, String) {
        match m.target.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
            Some((b, rest)) => (1, b.parse().unwrap_or(u64::MAX), rest.to_owned()),
            None if m.target.starts_with("output") => (2, 0, m.target.clone()),
            None => (0, 0, m.target.clone()),
        }
    }
    maps.sort_by_key(key);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_architectures_are_named() {
        let err = plan(
            Path::new("/m"),
            &json!({"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox"}),
            &BTreeMap::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("GPTNeoXForCausalLM") && err.contains("gpt_neox"), "{err}");
    }

    #[test]
    fn config_values_are_range_checked() {
        let config = json!({"architectures": ["LlamaForCausalLM"], "hidden_size": u64::MAX, "num_hidden_layers": 1});
        let err = plan(Path::new("/m"), &config, &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("hidden_size"), "{err}");
    }
}
