//! The converter on small synthetic model directories (no model files needed): a tiny llama
//! converts to every output type with the q/k permutation in place and identical bytes twice;
//! hostile or inconsistent inputs (offsets past the file, dtype/shape mismatch, overflowing shapes,
//! shapes that contradict config.json, unknown architectures, tensors and tokenizers) are refused
//! before any output file exists.

use std::path::Path;

use ondevice_gguf::{GgmlType, GgufFile};
use ondevice_quantize::{Conversion, ConvertOptions, NoProgress, OutType, QuantizeError};
use serde_json::json;

const HIDDEN: u64 = 64;
const HEADS: u64 = 2;
const KV_HEADS: u64 = 1;
const FF: u64 = 128;
const VOCAB: u64 = 8;

/// A safetensors file from (name, dtype, shape, data); `header_patch` may rewrite the header.
fn safetensors(tensors: &[(String, &str, Vec<u64>, Vec<u8>)], patch: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dtype, shape, data) in tensors {
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + data.len()]}),
        );
        offset += data.len();
    }
    let mut header = serde_json::Value::Object(header);
    patch(&mut header);
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    for (_, _, _, data) in tensors {
        out.extend_from_slice(data);
    }
    out
}

fn f32s(n: u64, f: impl Fn(u64) -> f32) -> Vec<u8> {
    (0..n).flat_map(|i| f(i).to_le_bytes()).collect()
}

fn llama_tensors() -> Vec<(String, &'static str, Vec<u64>, Vec<u8>)> {
    let head_dim = HIDDEN / HEADS;
    let mut t = vec![
        ("model.embed_tokens.weight".to_owned(), "F32", vec![VOCAB, HIDDEN], f32s(VOCAB * HIDDEN, |i| i as f32 * 1e-3)),
        ("model.norm.weight".to_owned(), "F32", vec![HIDDEN], f32s(HIDDEN, |_| 1.0)),
    ];
    let l = "model.layers.0";
    // q rows carry their row index, so the permutation is visible.
    t.push((
        format!("{l}.self_attn.q_proj.weight"),
        "F32",
        vec![HEADS * head_dim, HIDDEN],
        f32s(HEADS * head_dim * HIDDEN, |i| (i / HIDDEN) as f32),
    ));
    t.push((
        format!("{l}.self_attn.k_proj.weight"),
        "F32",
        vec![KV_HEADS * head_dim, HIDDEN],
        f32s(KV_HEADS * head_dim * HIDDEN, |i| (i / HIDDEN) as f32),
    ));
    t.push((
        format!("{l}.self_attn.v_proj.weight"),
        "F32",
        vec![KV_HEADS * head_dim, HIDDEN],
        f32s(KV_HEADS * head_dim * HIDDEN, |_| 0.5),
    ));
    t.push((
        format!("{l}.self_attn.o_proj.weight"),
        "F32",
        vec![HIDDEN, HIDDEN],
        f32s(HIDDEN * HIDDEN, |i| (i % 7) as f32),
    ));
    t.push((format!("{l}.mlp.gate_proj.weight"), "F32", vec![FF, HIDDEN], f32s(FF * HIDDEN, |i| (i % 5) as f32 - 2.0)));
    t.push((format!("{l}.mlp.up_proj.weight"), "F32", vec![FF, HIDDEN], f32s(FF * HIDDEN, |i| (i % 3) as f32)));
    t.push((format!("{l}.mlp.down_proj.weight"), "F32", vec![HIDDEN, FF], f32s(FF * HIDDEN, |i| (i % 11) as f32)));
    t.push((format!("{l}.input_layernorm.weight"), "F32", vec![HIDDEN], f32s(HIDDEN, |_| 1.0)));
    t.push((format!("{l}.post_attention_layernorm.weight"), "F32", vec![HIDDEN], f32s(HIDDEN, |_| 1.0)));
    t.push((format!("{l}.self_attn.rotary_emb.inv_freq"), "F32", vec![head_dim / 2], f32s(head_dim / 2, |_| 1.0)));
    t
}

fn write_dir(dir: &Path, config: serde_json::Value, weights: &[u8], tokenizer_model: &str) {
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("model.safetensors"), weights).unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> = ["<s>", "</s>", "a", "b", "ab", "Ġ", "Ġa", "c"]
        .iter()
        .enumerate()
        .map(|(i, t)| ((*t).to_owned(), json!(i)))
        .collect();
    let tokenizer = json!({
        "added_tokens": [{"id": 0, "content": "<s>", "special": true}, {"id": 1, "content": "</s>", "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel"},
        "model": {"type": tokenizer_model, "vocab": vocab, "merges": ["a b", "Ġ a"]},
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({"bos_token": "<s>", "eos_token": "</s>", "chat_template": "{{ messages }}"}).to_string(),
    )
    .unwrap();
}

fn config() -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN, "intermediate_size": FF,
        "num_hidden_layers": 1, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": VOCAB,
        "tie_word_embeddings": true
    })
}

fn plan(dir: &Path) -> Result<Conversion, QuantizeError> {
    Conversion::plan(dir, &ConvertOptions { out_type: OutType::F16, name: None })
}

#[test]
fn a_tiny_llama_converts_to_every_type_with_q_and_k_permuted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    std::fs::create_dir(&dir).unwrap();
    write_dir(&dir, config(), &safetensors(&llama_tensors(), |_| {}), "BPE");
    for out_type in OutType::ALL {
        let out = tmp.path().join(format!("{}.gguf", out_type.name()));
        let written = Conversion::plan(&dir, &ConvertOptions { out_type, name: Some("tiny".into()) })
            .unwrap()
            .write(&out, &NoProgress)
            .unwrap();
        let again = Conversion::plan(&dir, &ConvertOptions { out_type, name: Some("tiny".into()) })
            .unwrap()
            .write(tmp.path().join("again.gguf"), &NoProgress)
            .unwrap();
        assert_eq!(written.sha256, again.sha256, "{}", out_type.name());
        let gguf = GgufFile::open(&out).unwrap();
        assert_eq!(gguf.architecture(), Some("llama"));
        assert_eq!(gguf.get_str("tokenizer.ggml.pre"), Some("gpt-2"));
        assert_eq!(gguf.get_u64("llama.attention.head_count_kv"), Some(KV_HEADS));
        assert_eq!(gguf.file_type(), Some(out_type.file_type()));
        assert!(gguf.tensor("blk.0.rotary_emb.inv_freq").is_none() && gguf.tensors().len() == 11);
        assert_eq!(gguf.tensor("blk.0.attn_norm.weight").unwrap().ggml_type(), GgmlType::F32);
        let q = gguf.tensor("blk.0.attn_q.weight").unwrap();
        assert_eq!(q.dims(), &[HIDDEN, HIDDEN]);
        if out_type == OutType::F32 {
            // Row r of the output is source row j * 16 + i where r = i * 2 + j (head_dim 32).
            let bytes = std::fs::read(&out).unwrap();
            let row = |r: u64| {
                let at = (q.file_range().start + r * HIDDEN * 4) as usize;
                f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
            };
            assert_eq!([row(0), row(1), row(2), row(3)], [0.0, 16.0, 1.0, 17.0]);
            assert_eq!(row(32 + 1), 32.0 + 16.0, "the second head is permuted on its own");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Writes the tiny llama with `patch` applied to its safetensors header (or `weights` instead of
/// it), and checks the plan fails with a message containing `expect` and nothing is written.
fn refused(
    weights: Option<Vec<u8>>,
    patch: impl FnOnce(&mut serde_json::Value),
    config: serde_json::Value,
    tokenizer: &str,
    expect: &str,
) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    std::fs::create_dir(&dir).unwrap();
    let weights = weights.unwrap_or_else(|| safetensors(&llama_tensors(), patch));
    write_dir(&dir, config, &weights, tokenizer);
    let err = plan(&dir).expect_err(expect).to_string();
    assert!(err.contains(expect), "{err:?} should mention {expect:?}");
    let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("m")], "nothing but the source");
}

#[test]
fn hostile_safetensors_are_refused_before_anything_is_written() {
    refused(
        None,
        |h| h["model.norm.weight"]["data_offsets"] = json!([0u64, 1u64 << 40]),
        config(),
        "BPE",
        "model.norm.weight",
    );
    refused(None, |h| h["model.norm.weight"]["dtype"] = json!("F16"), config(), "BPE", "need");
    refused(None, |h| h["model.norm.weight"]["shape"] = json!([u64::MAX, 2]), config(), "BPE", "too large");
    refused(None, |h| h["model.norm.weight"]["dtype"] = json!("I64"), config(), "BPE", "model.norm.weight");
    let mut truncated = safetensors(&llama_tensors(), |_| {});
    truncated.truncate(truncated.len() - 10);
    refused(Some(truncated), |_| {}, config(), "BPE", "safetensors");
    refused(Some(b"\xff\xff\xff\xff\xff\xff\xff\x7f{}".to_vec()), |_| {}, config(), "BPE", "header length");
}

#[test]
fn inconsistent_or_unknown_models_are_refused_by_name() {
    let mut c = config();
    c["hidden_size"] = json!(32);
    refused(None, |_| {}, c, "BPE", "config.json implies");
    let mut c = config();
    c["architectures"] = json!(["GPTNeoXForCausalLM"]);
    c["model_type"] = json!("gpt_neox");
    refused(None, |_| {}, c, "BPE", "GPTNeoXForCausalLM");
    refused(None, |_| {}, config(), "Unigram", "unknown tokenizer model \"Unigram\"");
    let mut tensors = llama_tensors();
    tensors.push(("model.layers.0.mystery.weight".into(), "F32", vec![4], f32s(4, |_| 0.0)));
    let weights = safetensors(&tensors, |_| {});
    refused(Some(weights), |_| {}, config(), "BPE", "model.layers.0.mystery.weight");
    let tensors: Vec<_> = llama_tensors().into_iter().filter(|t| !t.0.contains("down_proj")).collect();
    refused(Some(safetensors(&tensors, |_| {})), |_| {}, config(), "BPE", "blk.0.ffn_down.weight");
}
