//! Test support: a Hugging Face safetensors directory of a llama-family model, written from the
//! SmolLM2 GGUF in `$ONDEVICE_TEST_MODELS_DIR` (there is no safetensors SmolLM2 in the test
//! models): every tensor dequantized (Q4_1, Q8_0, F32) to BF16 under its Hugging Face name, q/k
//! rows permuted back to Hugging Face's rotary layout, `config.json` from the GGUF's
//! hyperparameters, and `tokenizer.json` / `tokenizer_config.json` with SmolLM2's byte-level BPE
//! (vocabulary, merges, digits + byte-level pre-tokenizer, special tokens, chat template).

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use ondevice_gguf::{GgmlType, GgufFile, TensorInfo, Value};
use serde_json::json;

pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            let shift = man.leading_zeros() - 21;
            sign | ((127 - 15 + 1 - shift) << 23) | (((man << shift) & 0x3ff) << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

fn to_bf16(x: f32) -> u16 {
    let n = x.to_bits();
    (n.wrapping_add(0x7fff + ((n >> 16) & 1)) >> 16) as u16
}

pub fn dequantize(t: &TensorInfo, raw: &[u8]) -> Vec<f32> {
    let half = |b: &[u8]| f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    match t.ggml_type() {
        GgmlType::F16 => raw.chunks_exact(2).map(half).collect(),
        GgmlType::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        GgmlType::Q8_0 => raw
            .chunks_exact(34)
            .flat_map(|b| {
                let d = half(&b[0..2]);
                b[2..].iter().map(move |&q| f32::from(q as i8) * d)
            })
            .collect(),
        GgmlType::Q4_1 => raw
            .chunks_exact(20)
            .flat_map(|b| {
                let (d, m) = (half(&b[0..2]), half(&b[2..4]));
                let qs = &b[4..20];
                let lo = qs.iter().map(move |&q| f32::from(q & 0x0f) * d + m);
                let hi = qs.iter().map(move |&q| f32::from(q >> 4) * d + m);
                lo.chain(hi).collect::<Vec<_>>()
            })
            .collect(),
        other => panic!("the test model has a {other} tensor"),
    }
}

/// Hugging Face name and whether the rows are a permuted q/k (with its head count).
fn hf_name(gguf: &str, heads: u64, kv_heads: u64) -> (String, Option<u64>) {
    match gguf {
        "token_embd.weight" => ("model.embed_tokens.weight".into(), None),
        "output_norm.weight" => ("model.norm.weight".into(), None),
        "output.weight" => ("lm_head.weight".into(), None),
        _ => {
            let rest = gguf.strip_prefix("blk.").unwrap();
            let (block, part) = rest.split_once('.').unwrap();
            let (stem, kind) = part.rsplit_once('.').unwrap();
            let (hf, permute) = match stem {
                "attn_norm" => ("input_layernorm", None),
                "ffn_norm" => ("post_attention_layernorm", None),
                "attn_q" => ("self_attn.q_proj", Some(heads)),
                "attn_k" => ("self_attn.k_proj", Some(kv_heads)),
                "attn_v" => ("self_attn.v_proj", None),
                "attn_output" => ("self_attn.o_proj", None),
                "ffn_gate" => ("mlp.gate_proj", None),
                "ffn_up" => ("mlp.up_proj", None),
                "ffn_down" => ("mlp.down_proj", None),
                other => panic!("unexpected tensor {other}"),
            };
            (format!("model.layers.{block}.{hf}.{kind}"), permute)
        }
    }
}

/// Undoes llama.cpp's q/k permutation: in each head, row `i * 2 + j` goes back to `j * half + i`.
fn unpermute(values: &[f32], rows: usize, row_len: usize, heads: usize) -> Vec<f32> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = (h * head_dim + i * 2 + j) * row_len;
                let dst = (h * head_dim + j * half + i) * row_len;
                out[dst..dst + row_len].copy_from_slice(&values[src..src + row_len]);
            }
        }
    }
    out
}

fn u(file: &GgufFile, key: &str) -> u64 {
    file.get_u64(key).unwrap_or_else(|| panic!("{key}"))
}

fn f(file: &GgufFile, key: &str) -> f64 {
    file.get(key).and_then(Value::as_f64).unwrap_or_else(|| panic!("{key}"))
}

/// Writes the directory for `gguf` into `dir`.
pub fn write_llama_dir(gguf: &Path, dir: &Path) {
    let file = GgufFile::open(gguf).unwrap();
    let heads = u(&file, "llama.attention.head_count");
    let kv_heads = u(&file, "llama.attention.head_count_kv");
    let mut data = File::open(gguf).unwrap();

    // Tensors, sorted by name (as safetensors files are), laid end to end.
    let mut tensors: Vec<(String, Vec<u64>, Vec<u8>)> = Vec::new();
    for t in file.tensors() {
        let mut raw = vec![0u8; t.n_bytes() as usize];
        data.seek(SeekFrom::Start(t.file_range().start)).unwrap();
        data.read_exact(&mut raw).unwrap();
        let mut values = dequantize(t, &raw);
        let shape: Vec<u64> = t.dims().iter().rev().copied().collect();
        let (name, permute) = hf_name(t.name(), heads, kv_heads);
        if let Some(h) = permute {
            values = unpermute(&values, shape[0] as usize, shape[1] as usize, h as usize);
        }
        let bytes = values.iter().flat_map(|&x| to_bf16(x).to_le_bytes()).collect();
        tensors.push((name, shape, bytes));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, shape, bytes) in &tensors {
        header.insert(
            name.clone(),
            json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    let mut header = serde_json::to_vec(&header).unwrap();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut out = std::io::BufWriter::new(File::create(dir.join("model.safetensors")).unwrap());
    use std::io::Write;
    out.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    out.write_all(&header).unwrap();
    for (_, _, bytes) in &tensors {
        out.write_all(bytes).unwrap();
    }
    out.flush().unwrap();

    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": u(&file, "llama.embedding_length"),
        "intermediate_size": u(&file, "llama.feed_forward_length"),
        "num_hidden_layers": u(&file, "llama.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": u(&file, "llama.context_length"),
        "rms_norm_eps": f(&file, "llama.attention.layer_norm_rms_epsilon"),
        "rope_theta": f(&file, "llama.rope.freq_base"),
        "vocab_size": u(&file, "llama.vocab_size"),
        "tie_word_embeddings": true,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();

    let strings = |key: &str| {
        file.get(key)
            .and_then(|v| match v {
                Value::Array(a) => a.as_strings().map(<[String]>::to_vec),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{key}"))
    };
    let tokens = strings("tokenizer.ggml.tokens");
    let merges = strings("tokenizer.ggml.merges");
    let types = match file.get("tokenizer.ggml.token_type") {
        Some(Value::Array(ondevice_gguf::Array::I32(t))) => t.clone(),
        other => panic!("token types: {other:?}"),
    };
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let added: Vec<serde_json::Value> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == 3)
        .map(|(i, _)| json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": merges}
    });
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_vec(&tokenizer).unwrap()).unwrap();
    let tokenizer_config = json!({
        "add_prefix_space": false,
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "chat_template": file.chat_template().unwrap(),
        "model_max_length": 8192,
        "tokenizer_class": "GPT2Tokenizer",
    });
    std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_vec_pretty(&tokenizer_config).unwrap()).unwrap();
}

/// Every tensor of a GGUF, dequantized, by name.
pub fn tensors(path: &Path) -> std::collections::BTreeMap<String, (Vec<u64>, Vec<f32>)> {
    let file = GgufFile::open(path).unwrap();
    let mut data = File::open(path).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for t in file.tensors() {
        let mut raw = vec![0u8; t.n_bytes() as usize];
        data.seek(SeekFrom::Start(t.file_range().start)).unwrap();
        data.read_exact(&mut raw).unwrap();
        out.insert(t.name().to_owned(), (t.dims().to_vec(), dequantize(t, &raw)));
    }
    out
}
