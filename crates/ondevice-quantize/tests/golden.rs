//! The converter against an independent reference: all-MiniLM-L6-v2's safetensors directory →
//! GGUF (F32 and F16) → sentence embeddings from the real llama.cpp engine, compared with
//! `tests/golden/minilm.json` (a NumPy forward pass over the same safetensors, made by
//! `scripts/golden-minilm.py`). Skipped with a note when `$ONDEVICE_TEST_MODELS_DIR` is unset.

use std::path::Path;

use ondevice_engine_llama::{Engine, EngineConfig};
use ondevice_quantize::{Conversion, ConvertOptions, NoProgress, OutType};

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * y).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

struct Golden {
    texts: Vec<String>,
    tokens: Vec<Vec<u32>>,
    vectors: Vec<Vec<f64>>,
}

fn golden() -> Golden {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/minilm.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let sentences = json["sentences"].as_array().unwrap();
    Golden {
        texts: sentences.iter().map(|s| s["text"].as_str().unwrap().to_owned()).collect(),
        tokens: sentences
            .iter()
            .map(|s| s["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect())
            .collect(),
        vectors: sentences
            .iter()
            .map(|s| s["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
            .collect(),
    }
}

async fn check(dir: &Path, out_type: OutType, min_cosine: f64) {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("minilm.gguf");
    let conversion = Conversion::plan(dir, &ConvertOptions { out_type, name: None }).unwrap();
    assert_eq!(conversion.architecture(), "bert");
    assert_eq!(conversion.tokenizer(), ("bert", "default"));
    let written = conversion.write(&path, &NoProgress).unwrap();
    assert_eq!(written.len, std::fs::metadata(&path).unwrap().len());

    let golden = golden();
    let mut config = EngineConfig::new(&path);
    config.parallel = 1;
    config.threads = Some(2);
    let engine = Engine::load(config).expect("llama.cpp loads the converted BERT");
    for (text, tokens) in golden.texts.iter().zip(&golden.tokens) {
        assert_eq!(
            &engine.tokenize(text).await.unwrap(),
            tokens,
            "llama.cpp's WordPiece agrees with tokenizers on {text:?}"
        );
    }
    let (vectors, _) = engine.embed(golden.texts.clone(), true).await.unwrap();
    for ((v, r), text) in vectors.iter().zip(&golden.vectors).zip(&golden.texts) {
        let c = cosine(v, r);
        println!("{} {text:?}: cosine to the reference {c:.6}", out_type.name());
        assert!(c >= min_cosine, "{}: {text:?} is {c} from the reference", out_type.name());
    }
    let r01: Vec<f64> = vectors[1].iter().map(|x| f64::from(*x)).collect();
    let pair = cosine(&vectors[0], &r01);
    println!("{}: cosine(sentence 0, sentence 1) = {pair:.6}", out_type.name());
    assert!((pair - 0.7553).abs() <= 0.002, "{}: cosine {pair}", out_type.name());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_f32_and_f16_match_the_numpy_reference() {
    let Some(dir) = ondevice_testkit::minilm("minilm_f32_and_f16_match_the_numpy_reference") else { return };
    check(&dir, OutType::F32, 0.999).await;
    check(&dir, OutType::F16, 0.999).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_q8_0_stays_close_to_the_reference() {
    let Some(dir) = ondevice_testkit::minilm("minilm_q8_0_stays_close_to_the_reference") else { return };
    check(&dir, OutType::Q8_0, 0.99).await;
}
