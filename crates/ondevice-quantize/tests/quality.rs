//! The quality gate on real models: SmolLM2 (a safetensors directory written from the test GGUF,
//! see `support`) → F16 GGUF → Q8_0 and Q4_K_M through the whole pipeline, each measured on the
//! shipped text against the F16 source; all-MiniLM-L6-v2 (an embedding model) is skipped with
//! the reason recorded. Skipped with a note when `$ONDEVICE_TEST_MODELS_DIR` is unset.

mod support;

use std::path::Path;

use ondevice_gguf::{GgufFile, Value};
use ondevice_quantize::pipeline::{QuantizeRequest, Receipt, StageProgress, run};
use ondevice_quantize::quality::{self, Quality, QualityOptions};
use ondevice_quantize::{NoProgress, sha256_file};

struct Quiet;

impl StageProgress for Quiet {
    fn stage(&self, _: &str) {}
    fn report(&self, _: u64, _: u64) {}
}

fn request(source: &Path, output: &Path, quant_type: &str) -> QuantizeRequest {
    QuantizeRequest {
        source: source.to_owned(),
        output: output.to_owned(),
        quant_type: quant_type.into(),
        imatrix: None,
        allow_requantize: false,
        overrides: Vec::new(),
        output_tensor_type: None,
        token_embedding_type: None,
        name: Some("SmolLM2 135M Instruct".into()),
        threads: Some(2),
        scratch: None,
        no_quality: false,
        make_imatrix: false,
        known_digests: Vec::new(),
        checkpoints: false,
        resume: None,
    }
}

fn f32_meta(gguf: &GgufFile, key: &str) -> f32 {
    match gguf.get(&format!("{}{key}", quality::KEY_PREFIX)) {
        Some(Value::F32(v)) => *v,
        other => panic!("{key}: {other:?}"),
    }
}

/// The figures in the GGUF are the receipt's (as f32).
fn assert_recorded(path: &Path, receipt: &Receipt) {
    let q = receipt.quality.as_ref().unwrap();
    let gguf = GgufFile::open(path).unwrap();
    assert_eq!(f32_meta(&gguf, "perplexity"), q.perplexity.unwrap() as f32);
    assert_eq!(gguf.get_str(&format!("{}text_sha256", quality::KEY_PREFIX)), Some(q.text_sha256.as_str()));
    assert_eq!(gguf.get(&format!("{}tokens", quality::KEY_PREFIX)), Some(&Value::U32(q.tokens as u32)));
    if let Some(kl) = q.kl_mean {
        assert_eq!(f32_meta(&gguf, "kl_mean"), kl as f32);
        assert_eq!(f32_meta(&gguf, "kl_p99"), q.kl_p99.unwrap() as f32);
        assert_eq!(f32_meta(&gguf, "top1_agreement"), q.top1_agreement.unwrap() as f32);
        assert_eq!(f32_meta(&gguf, "source_perplexity"), q.source_perplexity.unwrap() as f32);
    }
    assert_eq!(sha256_file(path).unwrap(), receipt.output_sha256, "the receipt digests the file with its figures");
}

/// The figures as a GGUF stores them (f32, no note).
fn as_stored(q: Quality) -> Quality {
    let r = |v: Option<f64>| v.map(|x| f64::from(x as f32));
    Quality {
        perplexity: r(q.perplexity),
        source_perplexity: r(q.source_perplexity),
        kl_mean: r(q.kl_mean),
        kl_p99: r(q.kl_p99),
        top1_agreement: r(q.top1_agreement),
        note: None,
        ..q
    }
}

fn kl(q: &Quality) -> f64 {
    q.kl_mean.unwrap()
}

#[test]
fn smollm2_q8_0_and_q4_k_m_are_measured_against_the_f16_source_deterministically() {
    let Some(gguf) = ondevice_testkit::smollm2("smollm2_quality_gate") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("SmolLM2-135M-Instruct");
    std::fs::create_dir(&hf).unwrap();
    support::write_llama_dir(&gguf, &hf);

    // safetensors → F16: measured, no reference (the F16 is the highest precision in play).
    let f16 = tmp.path().join("f16.gguf");
    let started = std::time::Instant::now();
    let r16 = run(&request(&hf, &f16, "F16"), &Quiet).unwrap();
    println!("safetensors → F16 with quality: {:.1} s", started.elapsed().as_secs_f64());
    let q16 = r16.quality.clone().unwrap();
    println!("F16: {}", q16.summary());
    assert!(q16.perplexity.unwrap().is_finite() && q16.perplexity.unwrap() > 1.0);
    assert_eq!(q16.kl_mean, None);
    assert_eq!(q16.tokens, 510, "two chunks of 512, the second half of each scored");
    assert_recorded(&f16, &r16);

    // F16 GGUF → Q8_0 and Q4_K_M: KL against the F16 source.
    let q8 = tmp.path().join("q8_0.gguf");
    let started = std::time::Instant::now();
    let r8 = run(&request(&f16, &q8, "Q8_0"), &Quiet).unwrap();
    println!("F16 → Q8_0 with quality on 2 threads: {:.1} s", started.elapsed().as_secs_f64());
    let q4 = tmp.path().join("q4_k_m.gguf");
    let r4 = run(&request(&f16, &q4, "Q4_K_M"), &Quiet).unwrap();
    let (g8, g4) = (r8.quality.clone().unwrap(), r4.quality.clone().unwrap());
    println!("Q8_0: {}", g8.summary());
    println!("Q4_K_M: {}", g4.summary());
    for g in [&g8, &g4] {
        assert!(g.perplexity.unwrap().is_finite());
        assert_eq!(g.source_perplexity, q16.perplexity, "the reference is the F16 measured above");
        assert!(kl(g) > 0.0 && kl(g).is_finite());
        assert!(g.kl_p99.unwrap() >= kl(g));
        assert!((0.0..=1.0).contains(&g.top1_agreement.unwrap()));
    }
    assert!(kl(&g8) < kl(&g4), "Q8_0 stays closer to F16 than Q4_K_M: {} vs {}", kl(&g8), kl(&g4));
    assert!(g8.top1_agreement.unwrap() >= g4.top1_agreement.unwrap());
    assert!(kl(&g8) < 0.01, "Q8_0 is nearly lossless: {}", kl(&g8));
    assert_recorded(&q8, &r8);
    assert_recorded(&q4, &r4);
    // The source's digest (hashed while llama.cpp quantized) is in the file and the receipt.
    assert_eq!(r8.inputs.len(), 1);
    assert_eq!(r8.inputs[0].sha256, sha256_file(&f16).unwrap());
    for (path, r) in [(&q8, &r8), (&q4, &r4)] {
        let gguf = GgufFile::open(path).unwrap();
        assert_eq!(gguf.get_str("ondevice.quantize.source_sha256"), Some(r.source_sha256.as_str()), "{path:?}");
    }

    // Deterministic: a second run gives the same figures and the same bytes.
    let q8_again = tmp.path().join("q8_0-again.gguf");
    let again = run(&request(&f16, &q8_again, "Q8_0"), &Quiet).unwrap();
    assert_eq!(again.quality, r8.quality);
    assert_eq!(again.output_sha256, r8.output_sha256);

    // The thread count does not change the figures.
    let started = std::time::Instant::now();
    let one = quality::measure(&q4, Some(&f16), &QualityOptions { threads: Some(1) }, &NoProgress).unwrap();
    println!("measuring Q4_K_M against F16 on 1 thread: {:.1} s", started.elapsed().as_secs_f64());
    println!("Q4_K_M on 1 thread: {}", one.summary());
    assert_eq!(one.tokens, g4.tokens);
    let close = |a: Option<f64>, b: Option<f64>| (a.unwrap() - b.unwrap()).abs() <= 1e-6 * b.unwrap().abs().max(1e-3);
    assert!(close(one.perplexity, g4.perplexity), "{one:?} vs {g4:?}");
    assert!(close(one.kl_mean, g4.kl_mean), "{one:?} vs {g4:?}");
    assert_eq!(one.top1_agreement, g4.top1_agreement);

    // The source against itself: no divergence, every top token agrees.
    let same = quality::measure(&f16, Some(&f16), &QualityOptions { threads: Some(2) }, &NoProgress).unwrap();
    assert!(kl(&same).abs() < 1e-9, "{same:?}");
    assert_eq!(same.top1_agreement, Some(1.0));
    assert_eq!(same.perplexity, same.source_perplexity);

    // --no-quality: nothing measured, nothing recorded.
    let fast = tmp.path().join("q4-fast.gguf");
    let mut req = request(&f16, &fast, "Q4_K_M");
    req.no_quality = true;
    let rf = run(&req, &Quiet).unwrap();
    assert_eq!(rf.quality, None);
    // The source's own figures (its F16 perplexity) are not handed down to the output.
    let fast_gguf = GgufFile::open(&fast).unwrap();
    assert_eq!(quality::read(&GgufFile::open(&f16).unwrap()), r16.quality.map(as_stored));
    assert_eq!(quality::read(&fast_gguf), None, "{:?}", fast_gguf.metadata());
    assert_eq!(quality::read(&GgufFile::open(&q4).unwrap()), r4.quality.map(as_stored));
}

#[test]
fn an_embedding_model_is_skipped_with_the_reason_recorded() {
    let Some(dir) = ondevice_testkit::minilm("minilm_quality_skipped") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("minilm-f16.gguf");
    let receipt = run(&request(&dir, &out, "F16"), &Quiet).unwrap();
    let q = receipt.quality.unwrap();
    assert_eq!(q.perplexity, None);
    assert!(q.note.as_deref().unwrap().contains("embedding model"), "{q:?}");
    let gguf = GgufFile::open(&out).unwrap();
    let skipped = gguf.get_str(&format!("{}skipped", quality::KEY_PREFIX)).unwrap();
    assert!(skipped.contains("embedding model"), "{skipped}");
    assert_eq!(sha256_file(&out).unwrap(), receipt.output_sha256);
}
