//! The quality gate: how much a quantization changed the model, measured with llama.cpp (through
//! `llama-cpp-2`, the engine's own build) on a fixed text shipped in this crate
//! (`data/quality.txt`, original prose in the public domain).
//!
//! - **Perplexity** of the output on the text, computed the way llama.cpp's `llama-perplexity`
//!   does: the text is tokenized once (with BOS where the model adds one), cut into chunks of
//!   [`CTX`] tokens whose first token is BOS, and only the second half of each chunk is scored
//!   (every scored token has at least `CTX / 2` tokens of context). At most [`MAX_CHUNKS`] chunks
//!   are evaluated, so a 135M model takes seconds and a 7B model minutes.
//! - Against a **reference** (the F32/F16/BF16 source or a higher-precision GGUF): the reference's
//!   perplexity on the same positions, the mean and 99th percentile of KL(reference ‖ output)
//!   over the scored positions (full vocabulary, in f64) and the share of positions whose most
//!   likely token is the same (llama.cpp's "same top p").
//!
//! Everything is fixed (text, context size, chunking, no sampling), so the figures are the same on
//! every run; llama.cpp's CPU kernels give every output element to one thread, so the thread
//! count does not change them either (tested). Embedding models (no causal language-model head,
//! e.g. BERT) are skipped with the reason recorded.
//!
//! The figures go into the receipt and into the GGUF itself: the file is written with
//! placeholder values under `ondevice.quantize.quality.*` ([`placeholders`]) and [`record`]
//! overwrites them in place once measured (same size, so nothing else in the file moves).

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::QuantizeError;
use crate::imatrix::hex;

/// The text every model is measured on.
pub const TEXT: &str = include_str!("../data/quality.txt");
/// Tokens per chunk (llama-perplexity's `-c`).
pub const CTX: u32 = 512;
/// Most chunks evaluated (caps the time: at most `CTX * MAX_CHUNKS` tokens per model).
pub const MAX_CHUNKS: usize = 4;

/// GGUF metadata key prefix of the figures.
pub const KEY_PREFIX: &str = "ondevice.quantize.quality.";

/// The quality figures of one quantization.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Quality {
    /// Perplexity of the output on the text (absent when skipped).
    pub perplexity: Option<f64>,
    /// Perplexity of the reference on the same positions.
    pub source_perplexity: Option<f64>,
    /// Mean KL-divergence of the output's next-token distributions from the reference's (nats).
    pub kl_mean: Option<f64>,
    /// 99th percentile of the per-position KL-divergence (nats).
    pub kl_p99: Option<f64>,
    /// Share of positions where the output's most likely token is the reference's (0 to 1).
    pub top1_agreement: Option<f64>,
    /// Positions scored.
    pub tokens: u64,
    /// SHA-256 of the text.
    pub text_sha256: String,
    /// Tokens per chunk.
    #[serde(default)]
    pub ctx: u32,
    /// Why figures are missing (skipped, or no reference to compare with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Quality {
    /// A skipped measurement: no figures, the reason in `note`.
    pub fn skipped(reason: impl Into<String>) -> Quality {
        Quality {
            perplexity: None,
            source_perplexity: None,
            kl_mean: None,
            kl_p99: None,
            top1_agreement: None,
            tokens: 0,
            text_sha256: text_sha256(),
            ctx: CTX,
            note: Some(reason.into()),
        }
    }

    /// One line for people: `perplexity 17.92 (source 17.71), KL mean 0.0123 p99 0.0951, top-1 96.1% over 510 tokens`.
    pub fn summary(&self) -> String {
        let Some(ppl) = self.perplexity else {
            return format!("quality not measured: {}", self.note.as_deref().unwrap_or("skipped"));
        };
        let mut s = format!("perplexity {ppl:.4}");
        if let Some(src) = self.source_perplexity {
            s.push_str(&format!(" (source {src:.4})"));
        }
        if let (Some(mean), Some(p99)) = (self.kl_mean, self.kl_p99) {
            s.push_str(&format!(", KL mean {mean:.6} p99 {p99:.6}"));
        }
        if let Some(top1) = self.top1_agreement {
            s.push_str(&format!(", top-1 agreement {:.2}%", top1 * 100.0));
        }
        s.push_str(&format!(" over {} tokens", self.tokens));
        if let Some(note) = &self.note {
            s.push_str(&format!(" ({note})"));
        }
        s
    }
}

/// SHA-256 of [`TEXT`], 64 hex digits.
pub fn text_sha256() -> String {
    hex(&Sha256::digest(TEXT.as_bytes()))
}

/// Why a GGUF is not measured (an embedding model), or `None` when it is a language model.
pub fn not_applicable(gguf: &ondevice_gguf::GgufFile) -> Option<String> {
    let arch = gguf.architecture().unwrap_or_default();
    let causal = gguf.get(&format!("{arch}.attention.causal"));
    let embedding = matches!(causal, Some(ondevice_gguf::Value::Bool(false)))
        || gguf.get(&format!("{arch}.pooling_type")).is_some()
        || arch.contains("bert");
    embedding.then(|| format!("{arch} is an embedding model: perplexity and KL-divergence apply to language models"))
}

/// Nominal bits per weight of a file type (llama.cpp's figures for a 7B llama), to tell whether
/// a source is of higher precision than the output.
pub fn nominal_bits(t: crate::QuantType) -> f64 {
    use crate::QuantType as Q;
    match t {
        Q::F32 => 32.0,
        Q::F16 | Q::BF16 => 16.0,
        Q::Q8_0 => 8.5,
        Q::Q6_K => 6.56,
        Q::Q5_1 => 6.0,
        Q::Q5_K_M => 5.69,
        Q::Q5_K_S => 5.54,
        Q::Q5_0 => 5.5,
        Q::Q4_1 => 5.0,
        Q::Q4_K_M => 4.89,
        Q::Q4_K_S => 4.58,
        Q::Q4_0 | Q::IQ4_NL => 4.5,
        Q::Q3_K_L => 4.27,
        Q::IQ4_XS => 4.25,
        Q::Q3_K_M => 3.91,
        Q::IQ3_M => 3.66,
        Q::Q3_K_S => 3.5,
        Q::IQ3_S => 3.44,
        Q::IQ3_XS => 3.3,
        Q::IQ3_XXS => 3.06,
        Q::Q2_K => 2.96,
        Q::IQ2_M => 2.7,
        Q::Q2_K_S => 2.6,
        Q::IQ2_S => 2.5,
        Q::IQ2_XS => 2.31,
        Q::IQ2_XXS | Q::TQ2_0 => 2.06,
        Q::IQ1_M => 1.75,
        Q::TQ1_0 => 1.69,
        Q::IQ1_S => 1.56,
    }
}

/// The metadata a file to be measured is written with: the text's digest, and placeholder values
/// (NaN, 0) under the keys [`record`] fills in. `reference`: whether KL figures will be measured.
pub fn placeholders(reference: bool) -> Vec<(String, ondevice_gguf::Value)> {
    use ondevice_gguf::Value;
    let mut out = vec![
        (format!("{KEY_PREFIX}text_sha256"), Value::String(text_sha256())),
        (format!("{KEY_PREFIX}tokens"), Value::U32(0)),
        (format!("{KEY_PREFIX}perplexity"), Value::F32(f32::NAN)),
    ];
    if reference {
        for k in ["source_perplexity", "kl_mean", "kl_p99", "top1_agreement"] {
            out.push((format!("{KEY_PREFIX}{k}"), Value::F32(f32::NAN)));
        }
    }
    out
}

/// The metadata of a skipped measurement (written with the file, nothing to fill in later).
pub fn skipped_metadata(reason: &str) -> Vec<(String, ondevice_gguf::Value)> {
    // llama.cpp's metadata overrides hold at most 127 bytes.
    let reason: String = reason.chars().take(100).collect();
    vec![(format!("{KEY_PREFIX}skipped"), ondevice_gguf::Value::String(reason))]
}

/// Blank values for every `ondevice.quantize.*` key of a source GGUF: llama.cpp's quantizer copies
/// the source's metadata, so a source this pipeline made would otherwise hand its own provenance
/// and quality figures to the output ([`without_stale`] keeps the ones not written anew).
pub fn inherited_provenance(source: &ondevice_gguf::GgufFile) -> Vec<(String, ondevice_gguf::Value)> {
    use ondevice_gguf::Value;
    source
        .metadata()
        .iter()
        .filter(|(k, _)| k.starts_with("ondevice.quantize."))
        .filter_map(|(k, v)| {
            let blank = match v {
                Value::String(_) => Value::String(String::new()),
                Value::F32(_) => Value::F32(f32::NAN),
                Value::U32(_) => Value::U32(0),
                Value::Bool(_) => Value::Bool(false),
                _ => return None,
            };
            Some((k.clone(), blank))
        })
        .collect()
}

/// `metadata` plus the blanks of `inherited` keys it does not set.
pub fn without_stale(
    mut metadata: Vec<(String, ondevice_gguf::Value)>,
    inherited: Vec<(String, ondevice_gguf::Value)>,
) -> Vec<(String, ondevice_gguf::Value)> {
    for (k, v) in inherited {
        if !metadata.iter().any(|(m, _)| *m == k) {
            metadata.push((k, v));
        }
    }
    metadata
}

/// The figures a GGUF carries (`None` when it was not measured; blanked figures count as absent).
pub fn read(gguf: &ondevice_gguf::GgufFile) -> Option<Quality> {
    use ondevice_gguf::Value;
    let f = |k: &str| match gguf.get(&format!("{KEY_PREFIX}{k}")) {
        Some(Value::F32(v)) if v.is_finite() => Some(f64::from(*v)),
        _ => None,
    };
    let text_sha256 = gguf.get_str(&format!("{KEY_PREFIX}text_sha256")).filter(|s| !s.is_empty());
    let skipped = gguf.get_str(&format!("{KEY_PREFIX}skipped")).filter(|s| !s.is_empty());
    if let Some(reason) = skipped {
        return Some(Quality::skipped(reason));
    }
    let perplexity = f("perplexity")?;
    Some(Quality {
        perplexity: Some(perplexity),
        source_perplexity: f("source_perplexity"),
        kl_mean: f("kl_mean"),
        kl_p99: f("kl_p99"),
        top1_agreement: f("top1_agreement"),
        tokens: gguf.get_u64(&format!("{KEY_PREFIX}tokens")).unwrap_or(0),
        text_sha256: text_sha256?.to_owned(),
        ctx: CTX,
        note: None,
    })
}

/// Writes measured figures over the [`placeholders`] of `path`, in place, and fsyncs. Keys the file
/// was not written with are an error (the file would not carry what the receipt says).
pub fn record(path: &Path, quality: &Quality) -> Result<(), QuantizeError> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let gguf = ondevice_gguf::GgufFile::open_without_arrays(path)?;
    let header_len = gguf.data_offset();
    let err = |source| QuantizeError::Read { path: path.to_owned(), source };
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(err)?;
    let mut header = Vec::new();
    (&mut file).take(header_len).read_to_end(&mut header).map_err(err)?;
    let f32s = [
        ("perplexity", quality.perplexity),
        ("source_perplexity", quality.source_perplexity),
        ("kl_mean", quality.kl_mean),
        ("kl_p99", quality.kl_p99),
        ("top1_agreement", quality.top1_agreement),
    ];
    let mut patches: Vec<(u64, Vec<u8>)> = Vec::new();
    let tokens = u32::try_from(quality.tokens).unwrap_or(u32::MAX);
    patches.push((value_offset(&header, "tokens", 4, path)?, tokens.to_le_bytes().to_vec()));
    for (key, value) in f32s {
        let Some(v) = value else { continue };
        patches.push((value_offset(&header, key, 6, path)?, (v as f32).to_le_bytes().to_vec()));
    }
    for (at, bytes) in patches {
        file.seek(SeekFrom::Start(at)).map_err(err)?;
        file.write_all(&bytes).map_err(err)?;
    }
    file.sync_all().map_err(err)
}

/// Offset of the value of `ondevice.quantize.quality.KEY` (stored with GGUF type id `ty`) in the
/// metadata: the length-prefixed key followed by the type, found exactly once.
fn value_offset(header: &[u8], key: &str, ty: u32, path: &Path) -> Result<u64, QuantizeError> {
    let key = format!("{KEY_PREFIX}{key}");
    let mut needle = (key.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(key.as_bytes());
    needle.extend_from_slice(&ty.to_le_bytes());
    let mut found = header.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle.as_slice());
    match (found.next(), found.next()) {
        (Some((at, _)), None) => Ok((at + needle.len()) as u64),
        _ => Err(QuantizeError::Unsupported {
            what: format!("{} has no single placeholder for {key}: it was not written to be measured", path.display()),
        }),
    }
}

/// Nearest-rank percentile of sorted values.
#[cfg_attr(not(feature = "llama"), allow(dead_code))] // used by the measurement, behind `llama`
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// What a quantization does about quality, decided before the output is written (the file
/// carries the placeholders or the reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Not asked for (`--no-quality`): nothing measured, nothing recorded.
    Off,
    /// Does not apply; the reason is recorded.
    Skip(String),
    /// Measure the output; with `reference`, against the higher-precision input. `note` says why
    /// there is no reference when there is none.
    Measure {
        /// Whether the input (the source GGUF or the F16 intermediate) is the reference.
        reference: bool,
        /// Why there is no reference.
        note: Option<String>,
    },
}

impl Gate {
    /// The gate for a safetensors directory of architecture `arch` converted to `out`; `direct`:
    /// the converter writes the output itself (no F16 intermediate to compare with).
    pub fn for_directory(arch: &str, direct: bool, out: crate::QuantType) -> Gate {
        if arch.contains("bert") {
            return Gate::Skip(format!(
                "{arch} is an embedding model: perplexity and KL-divergence apply to language models"
            ));
        }
        if !cfg!(feature = "llama") {
            return Gate::Skip("this build has no llama.cpp to measure with".into());
        }
        if direct {
            let note = (nominal_bits(out) < 16.0)
                .then(|| "converted directly from safetensors: no higher-precision GGUF to compare with".to_owned());
            Gate::Measure { reference: false, note }
        } else {
            Gate::Measure { reference: true, note: None }
        }
    }

    /// The gate for a GGUF source quantized to `out`: a reference when the source's file type is
    /// of higher precision.
    pub fn for_gguf(source: &ondevice_gguf::GgufFile, out: crate::QuantType) -> Gate {
        if let Some(reason) = not_applicable(source) {
            return Gate::Skip(reason);
        }
        if !cfg!(feature = "llama") {
            return Gate::Skip("this build has no llama.cpp to measure with".into());
        }
        let source_type = source.quantization().and_then(|n| crate::QuantType::from_name(n).ok());
        match source_type {
            Some(t) if nominal_bits(t) > nominal_bits(out) => Gate::Measure { reference: true, note: None },
            Some(t) => Gate::Measure {
                reference: false,
                note: Some(format!("the source ({t}) is not of higher precision than {out}: no KL-divergence")),
            },
            None => Gate::Measure {
                reference: false,
                note: Some("the source's file type is unknown: no KL-divergence".into()),
            },
        }
    }

    /// The metadata the output is written with.
    pub fn metadata(&self) -> Vec<(String, ondevice_gguf::Value)> {
        match self {
            Gate::Off => Vec::new(),
            Gate::Skip(reason) => skipped_metadata(reason),
            Gate::Measure { reference, .. } => placeholders(*reference),
        }
    }
}

/// How a measurement runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct QualityOptions {
    /// Threads for llama.cpp (default: all cores).
    pub threads: Option<usize>,
}

#[cfg(feature = "llama")]
pub use measure_impl::measure;

/// Without llama.cpp nothing can be measured ([`Gate`] skips before this is reached).
#[cfg(not(feature = "llama"))]
pub fn measure(
    _: &Path,
    _: Option<&Path>,
    _: &QualityOptions,
    _: &dyn crate::Progress,
) -> Result<Quality, QuantizeError> {
    Err(QuantizeError::Unsupported { what: "this build has no llama.cpp to measure quality with".into() })
}

#[cfg(feature = "llama")]
mod measure_impl {
    use std::num::NonZeroU32;
    use std::path::Path;

    use llama_cpp_2::context::LlamaContext;
    use llama_cpp_2::context::params::LlamaContextParams;
    use llama_cpp_2::llama_batch::LlamaBatch;
    use llama_cpp_2::model::LlamaModel;
    use llama_cpp_2::model::params::LlamaModelParams;
    use llama_cpp_2::token::LlamaToken;

    use super::{CTX, MAX_CHUNKS, Quality, QualityOptions, TEXT, percentile, text_sha256};
    use crate::Progress;
    use crate::error::QuantizeError;

    fn fail(path: &Path, reason: String) -> QuantizeError {
        QuantizeError::Llama { input: path.to_owned(), reason }
    }

    /// `log Σ exp(x)` in f64.
    fn log_sum_exp(logits: &[f32]) -> f64 {
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
        max + logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln()
    }

    fn argmax(logits: &[f32]) -> usize {
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        best
    }

    /// KL(p ‖ q) from logits, in f64 over the whole vocabulary.
    fn kl(p_logits: &[f32], p_lse: f64, q_logits: &[f32], q_lse: f64) -> f64 {
        let mut sum = 0.0;
        for (&p, &q) in p_logits.iter().zip(q_logits) {
            let lp = p as f64 - p_lse;
            let lq = q as f64 - q_lse;
            sum += lp.exp() * (lp - lq);
        }
        sum.max(0.0)
    }

    struct Loaded {
        model: LlamaModel,
        path: std::path::PathBuf,
    }

    fn load(path: &Path) -> Result<Loaded, QuantizeError> {
        let backend = ondevice_engine_llama::backend().map_err(|e| fail(path, e.to_string()))?;
        let params = LlamaModelParams::default().with_use_mmap(true).with_use_mlock(false);
        let model = LlamaModel::load_from_file(backend, path, &params)
            .map_err(|e| fail(path, format!("llama.cpp cannot load it to measure quality: {e}")))?;
        Ok(Loaded { model, path: path.to_owned() })
    }

    fn context<'m>(m: &'m Loaded, threads: i32) -> Result<LlamaContext<'m>, QuantizeError> {
        let backend = ondevice_engine_llama::backend().map_err(|e| fail(&m.path, e.to_string()))?;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(CTX))
            .with_n_batch(CTX)
            .with_n_ubatch(CTX)
            .with_n_seq_max(1)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        m.model.new_context(backend, params).map_err(|e| fail(&m.path, format!("cannot create a context: {e}")))
    }

    /// Decodes one chunk, asking for the logits of the scored positions `first..CTX-1`.
    fn decode(
        ctx: &mut LlamaContext<'_>,
        batch: &mut LlamaBatch<'_>,
        chunk: &[LlamaToken],
        first: usize,
        path: &Path,
    ) -> Result<(), QuantizeError> {
        ctx.clear_kv_cache();
        batch.clear();
        for (pos, &t) in chunk.iter().enumerate() {
            let wanted = pos >= first && pos + 1 < chunk.len();
            batch.add(t, pos as i32, &[0], wanted).map_err(|e| fail(path, format!("batch: {e}")))?;
        }
        ctx.decode(batch).map_err(|e| fail(path, format!("decode failed: {e}")))
    }

    /// Measures `model` on [`TEXT`], against `reference` when given (same vocabulary required).
    /// Progress counts decoded chunks.
    pub fn measure(
        model: &Path,
        reference: Option<&Path>,
        options: &QualityOptions,
        progress: &dyn Progress,
    ) -> Result<Quality, QuantizeError> {
        let threads = options
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(1, 512) as i32;
        // llama.cpp's log lines go to tracing, as in the engine (the quantizer left them on stderr).
        llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
        let out = load(model)?;
        let reference = reference.map(load).transpose()?;
        let vocab = out.model.vocab();
        let mut tokens = vocab.tokenize(TEXT.as_bytes(), true, false);
        let bos = vocab.should_add_bos().then(|| vocab.bos());
        let n_vocab = usize::try_from(out.model.n_vocab()).unwrap_or(0);
        if let Some(r) = &reference {
            let theirs = r.model.vocab().tokenize(TEXT.as_bytes(), true, false);
            if usize::try_from(r.model.n_vocab()).unwrap_or(0) != n_vocab || theirs != tokens {
                return Err(fail(
                    &r.path,
                    "the reference tokenizes the text differently from the output: KL-divergence needs the same vocabulary"
                        .into(),
                ));
            }
        }
        let ctx_len = CTX as usize;
        let chunks = (tokens.len() / ctx_len).min(MAX_CHUNKS);
        if chunks == 0 || n_vocab == 0 {
            return Err(fail(
                model,
                format!("the quality text is {} tokens, less than one chunk of {CTX}", tokens.len()),
            ));
        }
        tokens.truncate(chunks * ctx_len);
        let first = ctx_len / 2;

        let mut out_ctx = context(&out, threads)?;
        let mut ref_ctx = reference.as_ref().map(|r| context(r, threads)).transpose()?;
        let mut batch = LlamaBatch::new(ctx_len, 1);
        let total = (chunks * if ref_ctx.is_some() { 2 } else { 1 }) as u64;
        let mut done = 0;
        progress.progress(0, total);

        let (mut nll, mut ref_nll) = (0.0f64, 0.0f64);
        let mut kls = Vec::new();
        let mut same_top = 0u64;
        let mut scored = 0u64;
        for c in 0..chunks {
            if progress.cancelled() {
                return Err(QuantizeError::Cancelled);
            }
            let mut chunk = tokens[c * ctx_len..(c + 1) * ctx_len].to_vec();
            if let Some(b) = bos {
                chunk[0] = b;
            }
            decode(&mut out_ctx, &mut batch, &chunk, first, model)?;
            done += 1;
            progress.progress(done, total);
            if let (Some(ctx), Some(r)) = (ref_ctx.as_mut(), reference.as_ref()) {
                decode(ctx, &mut batch, &chunk, first, &r.path)?;
                done += 1;
                progress.progress(done, total);
            }
            for j in first..ctx_len - 1 {
                let target = chunk[j + 1].0 as usize;
                let q = out_ctx.get_logits_ith(j as i32);
                let q = &q[..n_vocab.min(q.len())];
                let q_lse = log_sum_exp(q);
                nll += q_lse - q[target] as f64;
                if let Some(ctx) = ref_ctx.as_ref() {
                    let p = ctx.get_logits_ith(j as i32);
                    let p = &p[..n_vocab.min(p.len())];
                    let p_lse = log_sum_exp(p);
                    ref_nll += p_lse - p[target] as f64;
                    kls.push(kl(p, p_lse, q, q_lse));
                    same_top += u64::from(argmax(p) == argmax(q));
                }
                scored += 1;
            }
        }
        let n = scored as f64;
        let with_ref = ref_ctx.is_some();
        kls.sort_by(f64::total_cmp);
        Ok(Quality {
            perplexity: Some((nll / n).exp()),
            source_perplexity: with_ref.then(|| (ref_nll / n).exp()),
            kl_mean: with_ref.then(|| kls.iter().sum::<f64>() / n),
            kl_p99: with_ref.then(|| percentile(&kls, 0.99)),
            top1_agreement: with_ref.then(|| same_top as f64 / n),
            tokens: scored,
            text_sha256: text_sha256(),
            ctx: CTX,
            note: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.99), 198.0);
        assert_eq!(percentile(&v, 0.5), 100.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert!(percentile(&[], 0.99).is_nan());
    }

    #[test]
    fn the_text_is_a_few_kilobytes_of_english() {
        assert!((4_000..16_000).contains(&TEXT.len()), "{}", TEXT.len());
        assert_eq!(text_sha256().len(), 64);
    }

    #[test]
    fn placeholders_are_found_once_and_refused_when_absent() {
        let mut header = Vec::new();
        for (k, v) in placeholders(true) {
            header.extend_from_slice(&(k.len() as u64).to_le_bytes());
            header.extend_from_slice(k.as_bytes());
            let ty: u32 = match v {
                ondevice_gguf::Value::U32(_) => 4,
                ondevice_gguf::Value::F32(_) => 6,
                _ => 8,
            };
            header.extend_from_slice(&ty.to_le_bytes());
            header.extend_from_slice(&[0; 4]);
        }
        let p = Path::new("x.gguf");
        assert!(value_offset(&header, "kl_mean", 6, p).is_ok());
        assert!(value_offset(&header, "tokens", 4, p).is_ok());
        assert!(value_offset(&header, "kl_mean", 4, p).is_err(), "wrong type");
        assert!(value_offset(&header, "absent", 6, p).is_err());
    }

    #[test]
    fn every_type_has_nominal_bits_and_floats_rank_highest() {
        for &t in crate::QuantType::ALL {
            assert!(nominal_bits(t) > 1.0 && nominal_bits(t) <= 32.0);
        }
        assert!(nominal_bits(crate::QuantType::F16) > nominal_bits(crate::QuantType::Q8_0));
        assert!(nominal_bits(crate::QuantType::Q8_0) > nominal_bits(crate::QuantType::Q4_K_M));
    }
}
