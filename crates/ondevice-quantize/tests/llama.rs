//! The whole pipeline on a llama-family model: a safetensors directory (written from the SmolLM2
//! GGUF, see `support`) → F16 GGUF by the converter (checked tensor by tensor against the
//! original) → Q4_K_M (with and without an importance matrix computed by the engine) and Q5_K_M
//! by llama.cpp's quantizer → greedy chat answers from the real engine. Conversion and quantization are each run
//! twice and must give identical bytes. Skipped with a note when `$ONDEVICE_TEST_MODELS_DIR` is
//! unset.

mod support;

use ondevice_engine_llama::{Engine, EngineConfig};
use ondevice_gguf::GgufFile;
use ondevice_quantize::llama::{LateValue, LlamaQuantize, quantize, quantize_to_temp};
use ondevice_quantize::{
    Conversion, ConvertOptions, Imatrix, NoProgress, OutType, QuantType, imatrix_compute, quality, sha256_file,
};
use ondevice_runtime::{ChatMessage, Event, Prompt, Role, Sampling};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_safetensors_to_f16_and_k_quants_is_faithful_reproducible_and_answers_paris() {
    let Some(gguf) = ondevice_testkit::smollm2("smollm2_safetensors_to_f16_and_k_quants") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("SmolLM2-135M-Instruct");
    std::fs::create_dir(&hf).unwrap();
    support::write_llama_dir(&gguf, &hf);

    let options = ConvertOptions { out_type: OutType::F16, name: Some("SmolLM2 135M Instruct".into()) };
    let f16 = tmp.path().join("f16.gguf");
    let conversion = Conversion::plan(&hf, &options).unwrap();
    assert_eq!(conversion.architecture(), "llama");
    assert_eq!(conversion.tokenizer(), ("gpt2", "smollm"));
    let first = conversion.write(&f16, &NoProgress).unwrap();
    let again = Conversion::plan(&hf, &options).unwrap().write(tmp.path().join("f16-again.gguf"), &NoProgress).unwrap();
    assert_eq!(first.sha256, again.sha256, "two conversions give the same bytes");

    // The converted tokenizer matches the one llama.cpp's own converter wrote.
    let original = GgufFile::open(&gguf).unwrap();
    let converted = GgufFile::open(&f16).unwrap();
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
        "llama.rope.dimension_count",
        "llama.attention.head_count_kv",
    ] {
        assert_eq!(original.get(key), converted.get(key), "{key}");
    }

    // Every tensor holds what the original held (up to BF16 and F16 rounding), where the original
    // held it: names, shapes and the q/k row order llama.cpp's rope expects.
    let expected = support::tensors(&gguf);
    let got = support::tensors(&f16);
    assert_eq!(expected.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>());
    for (name, (dims, want)) in &expected {
        let (got_dims, have) = &got[name];
        assert_eq!(dims, got_dims, "{name}");
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = want.iter().zip(have).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst <= scale * 1e-2, "{name}: differs by {worst} (largest value {scale})");
    }

    // Q4_K_M: reproducible, marked with its provenance, loads and generates. (This source is
    // SmolLM2 after a first 4-bit quantization (Q4_1): quantized to 4 bits a second time without
    // an importance matrix, the 135M model's greedy answer drifts into French; with one computed
    // over the shipped text (below), and as Q5_K_M, it answers "The capital of France is Paris.".)
    let params = |ftype| LlamaQuantize {
        ftype,
        threads: Some(2),
        allow_requantize: false,
        output_type: None,
        token_embedding_type: None,
        overrides: Vec::new(),
        imatrix: None,
        metadata: vec![("ondevice.quantize.source_sha256".into(), ondevice_gguf::Value::String(first.sha256.clone()))],
        hash_while_writing: false,
        late: None,
    };
    let q4 = tmp.path().join("q4_k_m.gguf");
    quantize(&f16, &q4, &params(QuantType::Q4_K_M), &NoProgress).unwrap();
    let q4_again = tmp.path().join("q4_k_m-again.gguf");
    quantize(&f16, &q4_again, &params(QuantType::Q4_K_M), &NoProgress).unwrap();
    assert_eq!(sha256_file(&q4).unwrap(), sha256_file(&q4_again).unwrap(), "two quantizations give the same bytes");
    let quantized = GgufFile::open(&q4).unwrap();
    assert_eq!(quantized.quantization(), Some("Q4_K_M"));
    assert_eq!(quantized.get_str("ondevice.quantize.source_sha256"), Some(first.sha256.as_str()));
    let answer = greedy_answer(&q4).await;
    println!("Q4_K_M answer: {answer:?}");
    assert!(!answer.trim().is_empty());

    // An importance matrix computed with the engine over the shipped text: one entry per block
    // weight, the same on 1 and 2 threads; Q4_K_M quantized with it answers "Paris".
    let matrix = imatrix_compute::compute(&f16, quality::TEXT, Some(2), &NoProgress).unwrap();
    let again = imatrix_compute::compute(&f16, quality::TEXT, Some(1), &NoProgress).unwrap();
    assert!(matrix == again, "the importance matrix depends on nothing but the model and the text");
    let mut weights: Vec<(String, u64)> = converted
        .tensors()
        .iter()
        .filter(|t| t.name().starts_with("blk.") && t.dims().len() == 2)
        .map(|t| (t.name().to_owned(), t.dims()[0]))
        .collect();
    weights.sort();
    assert_eq!(matrix.len(), weights.len(), "every block weight has an entry");
    for ((name, values), (weight, cols)) in matrix.iter().zip(&weights) {
        assert_eq!((name, values.len() as u64), (weight, *cols));
        assert!(values.iter().all(|v| v.is_finite() && *v >= 0.0), "{name}");
    }
    let imatrix_file = ondevice_quantize::write_legacy(&tmp.path().join("imatrix.dat"), &matrix).unwrap();
    let with_imatrix =
        LlamaQuantize { imatrix: Some(Imatrix::open(&imatrix_file).unwrap()), ..params(QuantType::Q4_K_M) };
    let q4i = tmp.path().join("q4_k_m-imatrix.gguf");
    quantize(&f16, &q4i, &with_imatrix, &NoProgress).unwrap();
    assert_eq!(GgufFile::open(&q4i).unwrap().quantization(), Some("Q4_K_M"));
    let answer = greedy_answer(&q4i).await;
    println!("Q4_K_M with an importance matrix answers: {answer:?}");
    assert!(answer.contains("Paris"), "{answer:?}");

    let q5 = tmp.path().join("q5_k_m.gguf");
    quantize(&f16, &q5, &params(QuantType::Q5_K_M), &NoProgress).unwrap();
    assert_eq!(GgufFile::open(&q5).unwrap().quantization(), Some("Q5_K_M"));
    assert!(
        std::fs::read_dir(tmp.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".partial"))
    );
    let answer = greedy_answer(&q5).await;
    println!("Q5_K_M answer: {answer:?}");
    assert!(answer.contains("Paris"), "{answer:?}");
}

async fn greedy_answer(model: &std::path::Path) -> String {
    let mut config = EngineConfig::new(model);
    config.parallel = 1;
    config.ctx_per_slot = Some(512);
    let engine = Engine::load(config).unwrap();
    let prompt = Prompt::Chat(vec![
        ChatMessage::new(Role::System, "You are a helpful assistant."),
        ChatMessage::new(Role::User, "What is the capital of France?"),
    ]);
    let sampling = Sampling { temperature: Some(0.0), max_tokens: Some(32), ..Default::default() };
    let mut events = engine.generate(&prompt, &sampling).unwrap();
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event.unwrap() {
            Event::Token(t) => text.push_str(&t),
            Event::Done { .. } => break,
        }
    }
    text
}

#[test]
fn i_quants_without_an_importance_matrix_are_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let params = LlamaQuantize {
        ftype: QuantType::IQ2_XS,
        threads: None,
        allow_requantize: false,
        output_type: None,
        token_embedding_type: None,
        overrides: Vec::new(),
        imatrix: None,
        metadata: Vec::new(),
        hash_while_writing: false,
        late: None,
    };
    let err = quantize(&tmp.path().join("in.gguf"), &tmp.path().join("out.gguf"), &params, &NoProgress).unwrap_err();
    assert!(err.to_string().contains("--imatrix"), "{err}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

/// llama.cpp writes its header last; the header it will write is predicted (a dry run names each
/// tensor's type, ggml's GGUF functions build the header), so the output is hashed while it is
/// written. The prediction must hit for the plain types and with every kind of option that
/// changes the header (added metadata of each kind, output, token-embedding and per-tensor
/// types), and the digest finished from it must be the file's.
#[test]
fn the_output_header_is_predicted_so_the_output_is_hashed_while_written() {
    let Some(gguf) = ondevice_testkit::smollm2("the_output_header_is_predicted") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let base = |ftype| LlamaQuantize {
        ftype,
        threads: Some(2),
        // The demo model is Q4_1 already.
        allow_requantize: true,
        output_type: None,
        token_embedding_type: None,
        overrides: Vec::new(),
        imatrix: None,
        metadata: vec![("ondevice.quantize.source_sha256".into(), ondevice_gguf::Value::String("ab".repeat(32)))],
        hash_while_writing: true,
        late: None,
    };
    let options = LlamaQuantize {
        output_type: Some(ondevice_gguf::GgmlType::Q6_K),
        token_embedding_type: Some(ondevice_gguf::GgmlType::Q8_0),
        overrides: vec![
            ("attn_v".into(), ondevice_gguf::GgmlType::Q8_0),
            ("ffn_down".into(), ondevice_gguf::GgmlType::Q5_0),
        ],
        metadata: vec![
            ("ondevice.test.text".into(), ondevice_gguf::Value::String("café".into())),
            ("ondevice.test.float".into(), ondevice_gguf::Value::F32(0.25)),
            ("ondevice.test.count".into(), ondevice_gguf::Value::U32(7)),
            ("ondevice.test.flag".into(), ondevice_gguf::Value::Bool(true)),
            // A key the source has: replaced, and moved to the end as llama.cpp does.
            ("general.name".into(), ondevice_gguf::Value::String("renamed".into())),
        ],
        ..base(QuantType::Q4_K_M)
    };
    for (what, params) in
        [("Q8_0", base(QuantType::Q8_0)), ("Q4_K_M", base(QuantType::Q4_K_M)), ("Q4_K_M with options", options)]
    {
        let out = tmp.path().join(format!("{}.gguf", what.replace(' ', "-")));
        let mut staged = quantize_to_temp(&gguf, &out, &params, &NoProgress).unwrap();
        let whole = sha256_file(staged.path()).unwrap();
        let tail = staged.digest_from_tail().unwrap();
        assert_eq!(tail.as_deref(), Some(whole.as_str()), "{what}: the predicted header missed or the digest differs");
        // Without the option nothing is hashed while writing.
        let plain = LlamaQuantize { hash_while_writing: false, ..params };
        let mut staged = quantize_to_temp(&gguf, &out, &plain, &NoProgress).unwrap();
        assert_eq!(staged.digest_from_tail().unwrap(), None);
        assert_eq!(staged.commit_hashed().unwrap(), whole, "{what}: the output is reproducible");
        assert_eq!(sha256_file(&out).unwrap(), whole);
    }

    // A source digest not yet known when llama.cpp starts (the inputs are still being hashed):
    // llama.cpp writes a placeholder, the hash waits for the digest and uses it in the
    // placeholder's place, and the caller fills it into the file before the commit.
    let key = "ondevice.quantize.source_sha256";
    let (placeholder, digest) = ("0".repeat(64), "cd".repeat(32));
    let value = std::sync::Arc::new(std::sync::OnceLock::new());
    let late = LlamaQuantize {
        metadata: vec![(key.into(), ondevice_gguf::Value::String(placeholder.clone()))],
        late: Some(LateValue { key: key.into(), placeholder: placeholder.clone(), value: value.clone() }),
        ..base(QuantType::Q8_0)
    };
    // Set at llama.cpp's first progress report: known while it is still writing.
    struct SetOnProgress(std::sync::Arc<std::sync::OnceLock<String>>, String);
    impl ondevice_quantize::Progress for SetOnProgress {
        fn progress(&self, _: u64, _: u64) {
            let _ = self.0.set(self.1.clone());
        }
    }
    let out = tmp.path().join("late.gguf");
    let mut staged = quantize_to_temp(&gguf, &out, &late, &SetOnProgress(value.clone(), digest)).unwrap();
    assert!(value.get().is_some(), "llama.cpp reported progress");
    let bytes = std::fs::read(staged.path()).unwrap();
    let mut needle = (key.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(key.as_bytes());
    needle.extend_from_slice(&8u32.to_le_bytes());
    needle.extend_from_slice(&64u64.to_le_bytes());
    needle.extend_from_slice(placeholder.as_bytes());
    let at =
        bytes.windows(needle.len()).position(|w| w == needle.as_slice()).expect("the placeholder") + needle.len() - 64;
    let mut filled = bytes.clone();
    filled[at..at + 64].copy_from_slice("cd".repeat(32).as_bytes());
    std::fs::write(staged.path(), &filled).unwrap();
    let whole = sha256_file(staged.path()).unwrap();
    assert_eq!(staged.digest_from_tail().unwrap().as_deref(), Some(whole.as_str()), "the late value's hash missed");
    // Not filled in: a miss, never a wrong digest.
    let mut staged = quantize_to_temp(&gguf, &out, &late, &NoProgress).unwrap();
    assert_eq!(staged.digest_from_tail().unwrap(), None);
}
