//! One quantization, end to end, as the sandboxed task runs it: a GGUF file or a safetensors
//! directory → the requested type, with its provenance receipt.
//!
//! - safetensors → F32/F16/BF16/Q8_0: the converter writes the output directly.
//! - safetensors → any other type: the converter writes F16 into the scratch directory, then
//!   llama.cpp quantizes it (the intermediate file is removed).
//! - GGUF → any type: llama.cpp quantizes it.
//!
//! Resuming: with [`QuantizeRequest::checkpoints`] a run reports each finished step
//! ([`Checkpoint`]: the F16 intermediate written; the importance matrix computed for
//! [`QuantizeRequest::make_imatrix`], synced; the output quantized, its source digest written in
//! and synced, before the quality gate), each file with its SHA-256 and size. A run given that
//! checkpoint as [`QuantizeRequest::resume`] checks every file against it, skips the steps whose
//! files match (reporting [`StageProgress::resumed`]) and removes and redoes the others; the bytes
//! and the receipt are those of an uninterrupted run.
//!
//! The receipt names every input by SHA-256 (never by path), the tool and llama.cpp versions, the
//! parameters and the output's digest. Its stable part (everything but the output digest) also goes
//! into the GGUF as `ondevice.quantize.*` strings, so a file carries where it came from. Nothing in
//! it depends on time or place: the same inputs and parameters give the same bytes.
//!
//! Time: when llama.cpp quantizes, the inputs are hashed meanwhile on a thread of the lowest
//! priority, in the gaps llama.cpp's threads leave ([`crate::digest`]; the output carries a
//! placeholder of the digest's length, filled in before the file is moved into place); a
//! registry model's files are not hashed again (`known_digests`: the blob store verified them).
//! The output's pages go to the disk while llama.cpp writes them, so its fsync finds little left;
//! the work beyond llama.cpp's own is then one SHA-256 of the output, read from the page cache.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::QuantizeError;
use crate::imatrix::{hex, sha256_file};
use crate::quality::{Gate, Quality, QualityOptions};
use crate::{Conversion, ConvertOptions, Imatrix, Progress, QuantType, ggml_type_from_name};

/// What the task is asked to do (passed to `ondevice quantize-task` as JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QuantizeRequest {
    /// A GGUF file or a Hugging Face safetensors directory.
    pub source: PathBuf,
    /// Where the result goes (written atomically).
    pub output: PathBuf,
    /// The type name (`Q4_K_M`).
    pub quant_type: String,
    /// An importance matrix file.
    #[serde(default)]
    pub imatrix: Option<PathBuf>,
    /// Allow quantizing already-quantized tensors.
    #[serde(default)]
    pub allow_requantize: bool,
    /// Per-tensor types: `PATTERN=TYPE` (regular expression over tensor names).
    #[serde(default)]
    pub overrides: Vec<String>,
    /// Type of `output.weight`.
    #[serde(default)]
    pub output_tensor_type: Option<String>,
    /// Type of `token_embd.weight`.
    #[serde(default)]
    pub token_embedding_type: Option<String>,
    /// `general.name` for a conversion.
    #[serde(default)]
    pub name: Option<String>,
    /// Threads for llama.cpp (default: all).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Where intermediate files go (default: beside the output).
    #[serde(default)]
    pub scratch: Option<PathBuf>,
    /// Skip the quality gate (perplexity, KL-divergence; see [`crate::quality`]).
    #[serde(default)]
    pub no_quality: bool,
    /// Compute an importance matrix from the source with the engine over the shipped text
    /// ([`crate::quality::TEXT`]) and quantize with it (instead of `imatrix`).
    #[serde(default)]
    pub make_imatrix: bool,
    /// Digests the caller has already verified (a registry model's blobs: the store is
    /// content-addressed), named as the receipt names the files: a file whose name and size match
    /// one of these is not read again to hash it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known_digests: Vec<InputDigest>,
    /// Report each finished step through [`StageProgress::checkpoint`] (a daemon job records them
    /// so an interrupted job can resume). Costs one fsync and SHA-256 of the output before the
    /// quality gate; off for a one-shot `--output`.
    #[serde(default)]
    pub checkpoints: bool,
    /// What an interrupted run of the same request left: its last [`Checkpoint`]. Each staged file
    /// is checked against the SHA-256 and size recorded there before it is reused; a file that
    /// does not match is removed and its step done again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Checkpoint>,
}

/// The steps a run finished, with the files they left, as [`StageProgress::checkpoint`] reports
/// them and [`QuantizeRequest::resume`] takes them back. Cumulative: the last one describes
/// everything a resumed run may reuse.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    /// The input files by name and size when the run started: a resume whose inputs differ
    /// reuses nothing.
    #[serde(default)]
    pub sources: Vec<SourceFile>,
    /// The F16 intermediate converted from a safetensors directory (llama.cpp's input and the
    /// quality gate's reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted: Option<StagedFile>,
    /// The importance matrix computed for [`QuantizeRequest::make_imatrix`] (in the scratch
    /// directory), until the output is quantized with it: the quantized step's checkpoint no
    /// longer names it (its digest is in [`QuantizedStep::imatrix_sha256`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imatrix: Option<StagedFile>,
    /// The output, quantized (or converted) with its source digest written in and synced, before
    /// the quality gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantized: Option<QuantizedStep>,
}

/// An input file by name and size (no digest: it may not be hashed yet).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceFile {
    /// The name the receipt gives it.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// A file a finished step left.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StagedFile {
    /// Where it is.
    pub path: PathBuf,
    /// SHA-256 of its bytes, 64 hex digits.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// The quantized output before the quality gate, with what its receipt needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QuantizedStep {
    /// The file (llama.cpp's temporary name beside the output, or the output a conversion wrote).
    pub file: StagedFile,
    /// The inputs' digests.
    pub inputs: Vec<InputDigest>,
    /// Their combined digest (written into the file).
    pub source_sha256: String,
    /// The importance matrix's digest.
    pub imatrix_sha256: Option<String>,
}

/// The step names [`StageProgress::resumed`] reports.
pub mod step {
    /// The F16 intermediate was reused.
    pub const CONVERTED: &str = "converted";
    /// The computed importance matrix was reused.
    pub const IMATRIX: &str = "imatrix";
    /// The quantized output was reused: only the quality gate and the commit ran.
    pub const QUANTIZED: &str = "quantized";
}

/// The input files' names and sizes.
fn source_files(base: &Path, files: &[PathBuf]) -> Result<Vec<SourceFile>, QuantizeError> {
    let mut out = files
        .iter()
        .map(|f| crate::digest::input_name_and_size(base, f).map(|(name, size)| SourceFile { name, size }))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Whether `file`, left by an earlier run, is a regular file with its recorded size and SHA-256.
/// One that is not is removed: a partial or altered file is never reused.
pub(crate) fn reusable(file: &StagedFile) -> bool {
    let ok = std::fs::symlink_metadata(&file.path).is_ok_and(|m| m.is_file() && m.len() == file.size)
        && sha256_file(&file.path).is_ok_and(|s| s == file.sha256);
    if !ok {
        tracing::info!(path = %file.path.display(), "a staged file does not match its checkpoint; redoing its step");
        let _ = std::fs::remove_file(&file.path);
    }
    ok
}

/// What of `request.resume` can be reused, given the inputs now: the files that match are kept,
/// the others removed. `quantized_at` says whether a path is where this request's quantized
/// output is staged, `converted_at` the intermediate's, `imatrix_at` the computed importance
/// matrix's (only wanted while the output is still to be quantized).
fn resumable(
    request: &QuantizeRequest,
    sources: &[SourceFile],
    quantized_at: impl Fn(&Path) -> bool,
    converted_at: Option<&Path>,
    imatrix_at: Option<&Path>,
    progress: &dyn StageProgress,
) -> Resumable {
    let Some(resume) = &request.resume else { return Resumable::default() };
    let discard = |f: &StagedFile, ours: bool| {
        if ours {
            let _ = std::fs::remove_file(&f.path);
        }
    };
    let quantized_ours = resume.quantized.as_ref().is_some_and(|q| quantized_at(&q.file.path));
    let converted_ours = resume.converted.as_ref().is_some_and(|c| Some(c.path.as_path()) == converted_at);
    let imatrix_ours = resume.imatrix.as_ref().is_some_and(|m| Some(m.path.as_path()) == imatrix_at);
    if resume.sources != sources {
        tracing::info!("the inputs changed since the checkpoint; starting over");
        if let Some(q) = &resume.quantized {
            discard(&q.file, quantized_ours);
        }
        if let Some(c) = &resume.converted {
            discard(c, converted_ours);
        }
        if let Some(m) = &resume.imatrix {
            discard(m, imatrix_ours);
        }
        return Resumable::default();
    }
    if resume.quantized.is_some() || resume.converted.is_some() || resume.imatrix.is_some() {
        progress.stage("verifying staged files");
    }
    let quantized = resume.quantized.clone().filter(|q| quantized_ours && reusable(&q.file));
    let converted = resume.converted.clone().filter(|c| converted_ours && reusable(c));
    // A quantized output needs no matrix any more.
    let imatrix = match &resume.imatrix {
        Some(m) if quantized.is_some() => {
            discard(m, imatrix_ours);
            None
        }
        m => m.clone().filter(|m| imatrix_ours && reusable(m)),
    };
    Resumable { quantized, converted, imatrix }
}

/// The files of an earlier run that [`resumable`] found intact.
#[derive(Default)]
struct Resumable {
    quantized: Option<QuantizedStep>,
    converted: Option<StagedFile>,
    imatrix: Option<StagedFile>,
}

/// One input file of a receipt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InputDigest {
    /// The file's name within the source (the GGUF's file name, or the path inside the directory).
    pub name: String,
    /// SHA-256, 64 hex digits.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// The parameters a receipt records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReceiptParams {
    /// The type produced.
    pub quant_type: String,
    /// `gguf` or `safetensors`.
    pub source_format: String,
    /// Whether requantizing was allowed.
    pub allow_requantize: bool,
    /// Per-tensor overrides as given.
    pub overrides: Vec<String>,
    /// Type of `output.weight`, if set.
    pub output_tensor_type: Option<String>,
    /// Type of `token_embd.weight`, if set.
    pub token_embedding_type: Option<String>,
    /// The converter's intermediate type, when the source was converted before quantizing.
    pub intermediate: Option<String>,
    /// SHA-256 of the text the importance matrix was computed from, when ondevice computed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imatrix_text_sha256: Option<String>,
}

/// Where a quantized file came from and what it is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Receipt {
    /// Every input file with its digest, in name order.
    pub inputs: Vec<InputDigest>,
    /// SHA-256 over the inputs' `sha256  name` lines: one digest for a whole source.
    pub source_sha256: String,
    /// `ondevice X.Y.Z`.
    pub tool: String,
    /// llama.cpp's version and the `llama-cpp-sys-2` build it came from (when llama.cpp ran).
    pub llama_cpp: Option<String>,
    /// The parameters.
    pub params: ReceiptParams,
    /// SHA-256 of the importance matrix file.
    pub imatrix_sha256: Option<String>,
    /// SHA-256 of the output.
    pub output_sha256: String,
    /// Size of the output in bytes.
    pub output_size: u64,
    /// Quality figures (perplexity, KL-divergence), when measured.
    #[serde(default)]
    pub quality: Option<crate::quality::Quality>,
}

/// The version string of the llama.cpp this binary links (with the `llama` feature).
pub fn llama_cpp_version() -> Option<String> {
    #[cfg(feature = "llama")]
    {
        Some(format!("{} (llama-cpp-sys-2 {})", crate::llama::llama_cpp_version(), LLAMA_SYS_VERSION))
    }
    #[cfg(not(feature = "llama"))]
    {
        None
    }
}

/// The `llama-cpp-sys-2` version this crate is built against (kept equal to Cargo.lock's).
pub const LLAMA_SYS_VERSION: &str = "0.1.161";

fn digest_inputs(source: &Path, files: &[PathBuf], known: &[InputDigest]) -> Result<Vec<InputDigest>, QuantizeError> {
    let mut out = Vec::new();
    for f in files {
        let (name, size) = crate::digest::input_name_and_size(source, f)?;
        let sha256 = match known.iter().find(|k| k.name == name && k.size == size) {
            Some(k) => k.sha256.clone(),
            None => sha256_file(f)?,
        };
        out.push(InputDigest { name, sha256, size });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn source_digest(inputs: &[InputDigest]) -> String {
    let mut h = Sha256::new();
    for i in inputs {
        h.update(format!("{}  {}\n", i.sha256, i.name).as_bytes());
    }
    hex(&h.finalize())
}

/// Logs at debug level how long after the start each step ended (`--log-level debug`).
struct Clock(std::time::Instant);

impl Clock {
    fn mark(&self, step: &str) {
        tracing::debug!(ms = format!("{:.1}", self.0.elapsed().as_secs_f64() * 1e3), "quantize: {step}");
    }
}

/// Runs the request. Progress is reported in bytes of the current stage (`stage` says which).
pub fn run(request: &QuantizeRequest, progress: &dyn StageProgress) -> Result<Receipt, QuantizeError> {
    let clock = Clock(std::time::Instant::now());
    let quant_type = QuantType::from_name(&request.quant_type)?;
    if request.make_imatrix && request.imatrix.is_some() {
        return Err(QuantizeError::Unsupported {
            what: "--make-imatrix computes an importance matrix and --imatrix gives one: choose one".into(),
        });
    }
    let imatrix = request.imatrix.as_deref().map(Imatrix::open).transpose()?;
    let output_type = request.output_tensor_type.as_deref().map(ggml_type_from_name).transpose()?;
    let token_type = request.token_embedding_type.as_deref().map(ggml_type_from_name).transpose()?;
    let mut overrides = Vec::new();
    for o in &request.overrides {
        let (pattern, ty) = o.rsplit_once('=').ok_or_else(|| QuantizeError::Unsupported {
            what: format!("tensor type override {o:?} is not PATTERN=TYPE (for example attn_v=Q8_0)"),
        })?;
        overrides.push((pattern.to_owned(), ggml_type_from_name(ty)?));
    }
    if quant_type.needs_imatrix() && imatrix.is_none() && !request.make_imatrix {
        return Err(QuantizeError::NeedsImatrix { ftype: quant_type.name().into() });
    }
    if request.make_imatrix && quant_type.converter_type().is_some() {
        return Err(QuantizeError::Unsupported {
            what: format!(
                "{quant_type} does not use an importance matrix: --make-imatrix applies to llama.cpp's quantized types (Q4_K_M, IQ2_XS, ...)"
            ),
        });
    }
    let is_dir = request.source.is_dir();
    let direct = is_dir
        && quant_type.converter_type().is_some()
        && overrides.is_empty()
        && output_type.is_none()
        && token_type.is_none()
        && imatrix.is_none();
    let mut params = ReceiptParams {
        quant_type: quant_type.name().into(),
        source_format: if is_dir { "safetensors" } else { "gguf" }.into(),
        allow_requantize: request.allow_requantize,
        overrides: request.overrides.clone(),
        output_tensor_type: output_type.map(|t| t.name().to_owned()),
        token_embedding_type: token_type.map(|t| t.name().to_owned()),
        intermediate: None,
        imatrix_text_sha256: request.make_imatrix.then(crate::quality::text_sha256),
    };

    let gate;
    let mut inherited = Vec::new();
    // The files whose digests the receipt lists, named relative to `base`.
    let (base, files, conversion) = if is_dir {
        let out_type =
            if direct { quant_type.converter_type().unwrap_or(crate::OutType::F16) } else { crate::OutType::F16 };
        let conversion = Conversion::plan(&request.source, &ConvertOptions { out_type, name: request.name.clone() })?;
        gate = Gate::for_directory(conversion.architecture(), direct, quant_type);
        (request.source.clone(), conversion.inputs().to_vec(), Some(conversion))
    } else {
        let source = ondevice_gguf::GgufFile::open_without_arrays(&request.source)?;
        gate = Gate::for_gguf(&source, quant_type);
        inherited = crate::quality::inherited_provenance(&source);
        (request.source.parent().unwrap_or(Path::new("")).to_owned(), vec![request.source.clone()], None)
    };
    let gate = if request.no_quality { Gate::Off } else { gate };
    clock.mark("source header read");
    // Measures the written output at `path` (against `reference`) and writes the figures into it.
    let measure_output = |path: &Path, reference: Option<&Path>| -> Result<Option<Quality>, QuantizeError> {
        let Gate::Measure { reference: with_reference, note } = &gate else {
            return Ok(match &gate {
                Gate::Skip(reason) => Some(Quality::skipped(reason.clone())),
                _ => None,
            });
        };
        progress.stage("measuring quality");
        let options = QualityOptions { threads: request.threads };
        let reference = reference.filter(|_| *with_reference);
        let mut q = crate::quality::measure(path, reference, &options, &Adapter(progress))?;
        q.note = note.clone();
        crate::quality::record(path, &q)?;
        Ok(Some(q))
    };
    let llama_cpp = if direct { None } else { llama_cpp_version() };
    if !direct {
        params.intermediate = is_dir.then(|| "F16".to_owned());
    }
    let params_sha256 = hex(&Sha256::digest(serde_json::to_vec(&params).unwrap_or_default()));
    let tool = format!("ondevice {}", env!("CARGO_PKG_VERSION"));
    // The GGUF's provenance strings; `source_sha256` is the digest of the inputs.
    let metadata = |source_sha256: &str, imatrix_sha256: Option<&str>| {
        let mut metadata = vec![
            (SOURCE_KEY.to_owned(), source_sha256.to_owned()),
            ("ondevice.quantize.params_sha256".to_owned(), params_sha256.clone()),
            ("ondevice.quantize.type".to_owned(), quant_type.name().to_owned()),
            ("ondevice.quantize.tool".to_owned(), tool.clone()),
        ];
        if let Some(v) = &llama_cpp {
            metadata.push(("ondevice.quantize.llama_cpp".to_owned(), v.chars().take(120).collect()));
        }
        if let Some(s) = imatrix_sha256 {
            metadata.push(("ondevice.quantize.imatrix_sha256".to_owned(), s.to_owned()));
        }
        metadata
    };

    let sources = source_files(&base, &files)?;
    let measured = matches!(gate, Gate::Measure { .. });
    let (inputs, source_sha256, output_sha256, output_size, quality, imatrix_sha256) = match conversion {
        Some(mut conversion) if direct => {
            let resumed = resumable(request, &sources, |p| p == request.output, None, None, progress).quantized;
            let (inputs, source_sha256, written_sha256, written_len) = match resumed {
                Some(q) => {
                    progress.resumed(step::QUANTIZED);
                    (q.inputs, q.source_sha256, q.file.sha256, q.file.size)
                }
                None => {
                    // The converter hashes its output while writing it, so the inputs are hashed
                    // first and their digest written with the header.
                    progress.stage("hashing inputs");
                    let inputs = digest_inputs(&base, &files, &request.known_digests)?;
                    let source_sha256 = source_digest(&inputs);
                    clock.mark("inputs hashed");
                    for (k, v) in metadata(&source_sha256, None) {
                        conversion.add_metadata(k, ondevice_gguf::Value::String(v))?;
                    }
                    for (k, v) in gate.metadata() {
                        conversion.add_metadata(k, v)?;
                    }
                    progress.stage("converting");
                    let written = conversion.write(&request.output, &Adapter(progress))?;
                    if request.checkpoints && measured {
                        let file = StagedFile {
                            path: request.output.clone(),
                            sha256: written.sha256.clone(),
                            size: written.len,
                        };
                        let q = QuantizedStep {
                            file,
                            inputs: inputs.clone(),
                            source_sha256: source_sha256.clone(),
                            imatrix_sha256: None,
                        };
                        progress.checkpoint(&Checkpoint {
                            sources,
                            converted: None,
                            imatrix: None,
                            quantized: Some(q),
                        });
                    }
                    (inputs, source_sha256, written.sha256, written.len)
                }
            };
            let quality = measure_output(&request.output, None)?;
            // Recording the figures rewrote a few bytes of the output.
            let output_sha256 = if quality.as_ref().is_some_and(|q| q.perplexity.is_some()) {
                sha256_file(&request.output)?
            } else {
                written_sha256
            };
            (inputs, source_sha256, output_sha256, written_len, quality, None)
        }
        conversion => (|| {
            // The inputs are hashed while llama.cpp works (and the converter before it); the
            // output is written with a placeholder digest of the same length, patched in before
            // the file is moved into place.
            let scratch = request
                .scratch
                .clone()
                .or_else(|| request.output.parent().map(Path::to_owned))
                .unwrap_or_else(|| PathBuf::from("."));
            let converted_path = scratch.join(".ondevice-convert-f16.gguf");
            let imatrix_path = scratch.join(IMATRIX_NAME);
            let Resumable { quantized: resumed, converted, imatrix: computed } = resumable(
                request,
                &sources,
                |p| is_staged_name(p, &request.output),
                conversion.is_some().then_some(converted_path.as_path()),
                request.make_imatrix.then_some(imatrix_path.as_path()),
                progress,
            );
            // The intermediate is llama.cpp's input, and the quality gate's reference.
            let needs_intermediate =
                conversion.is_some() && (resumed.is_none() || matches!(gate, Gate::Measure { reference: true, .. }));
            if !needs_intermediate {
                if let Some(c) = &converted {
                    let _ = std::fs::remove_file(&c.path);
                }
            }
            let mut checkpoint = Checkpoint { sources, converted: None, imatrix: None, quantized: None };
            // The source digest, as soon as the inputs are hashed (for hashing the output while
            // llama.cpp writes it, with the digest in place of its placeholder).
            let late_digest = std::sync::Arc::new(std::sync::OnceLock::new());
            // The inputs' digests, when hashed before llama.cpp starts (after a conversion or an
            // importance matrix, say): then nothing needs a placeholder.
            let hashed_early = std::sync::Arc::new(std::sync::OnceLock::new());
            let hashing = match resumed {
                None => {
                    let (digest, inputs) = (late_digest.clone(), hashed_early.clone());
                    let on_done = Box::new(move |done: &[InputDigest]| {
                        let _ = inputs.set(done.to_vec());
                        let _ = digest.set(source_digest(done));
                    });
                    Some(crate::digest::Background::start(&base, &files, &request.known_digests, Some(on_done))?)
                }
                Some(_) => None,
            };
            let mut intermediate = None;
            let input = match conversion {
                Some(conversion) if needs_intermediate => {
                    let guard = RemoveOnDrop(converted_path.clone());
                    match converted {
                        Some(c) => {
                            progress.resumed(step::CONVERTED);
                            checkpoint.converted = Some(c);
                        }
                        None => {
                            progress.stage("converting to F16");
                            let written = conversion.write(&converted_path, &Adapter(progress))?;
                            if request.checkpoints {
                                checkpoint.converted = Some(StagedFile {
                                    path: converted_path.clone(),
                                    sha256: written.sha256,
                                    size: written.len,
                                });
                                progress.checkpoint(&checkpoint);
                            }
                        }
                    }
                    intermediate = Some(guard);
                    converted_path.clone()
                }
                _ => request.source.clone(),
            };
            let (staged, inputs, source_sha256, imatrix_sha256) = match (resumed, hashing) {
                (Some(q), _) => {
                    progress.resumed(step::QUANTIZED);
                    (adopt_staged(&q.file.path, &request.output)?, q.inputs, q.source_sha256, q.imatrix_sha256)
                }
                (None, hashing) => {
                    let mut imatrix = imatrix;
                    let mut _made_imatrix = None;
                    if request.make_imatrix {
                        let path = imatrix_path.clone();
                        let guard = RemoveOnDrop(path.clone());
                        match computed {
                            Some(m) => {
                                progress.resumed(step::IMATRIX);
                                imatrix = Some(Imatrix::open(&path)?);
                                checkpoint.imatrix = Some(m);
                            }
                            None => {
                                progress.stage("computing importance matrix");
                                let entries = compute_imatrix(&input, request.threads, progress)?;
                                let err = |source| QuantizeError::Read { path: path.clone(), source };
                                crate::write_legacy(&path, &entries).map_err(err)?;
                                let made = Imatrix::open(&path)?;
                                if request.checkpoints {
                                    let file = std::fs::File::open(&path).map_err(err)?;
                                    file.sync_all().map_err(err)?;
                                    let size = file.metadata().map_err(err)?.len();
                                    let sha256 = made.sha256().to_owned();
                                    checkpoint.imatrix = Some(StagedFile { path: path.clone(), sha256, size });
                                    progress.checkpoint(&checkpoint);
                                }
                                imatrix = Some(made);
                            }
                        }
                        _made_imatrix = Some(guard);
                    }
                    let imatrix_sha256 = imatrix.as_ref().map(|m| m.sha256().to_owned());
                    progress.stage("quantizing");
                    // With every input's digest known (a registry model's blobs, or files the
                    // caller hashed before), the source digest goes in with the header and
                    // nothing is patched afterwards. Otherwise a placeholder goes in, and the
                    // output is hashed with the digest in its place once the inputs are hashed
                    // (if that happens before llama.cpp is done). Either way llama.cpp's output is
                    // hashed while it is written, unless the quality gate writes its figures into
                    // it later.
                    let known = hashing
                        .as_ref()
                        .and_then(crate::digest::Background::known)
                        .or_else(|| hashed_early.get().cloned())
                        .map(|inputs| {
                            let source_sha256 = source_digest(&inputs);
                            (inputs, source_sha256)
                        });
                    let placeholder = "0".repeat(64);
                    let staged = quantize_llama(
                        &input,
                        request,
                        quant_type,
                        output_type,
                        token_type,
                        overrides,
                        imatrix,
                        crate::quality::without_stale(
                            metadata(known.as_ref().map_or(&placeholder, |(_, s)| s), imatrix_sha256.as_deref())
                                .into_iter()
                                .map(|(k, v)| (k, ondevice_gguf::Value::String(v)))
                                .chain(gate.metadata())
                                .collect(),
                            inherited,
                        ),
                        !measured,
                        known.is_none().then(|| crate::tail_hash::LateValue {
                            key: SOURCE_KEY.into(),
                            placeholder: placeholder.clone(),
                            value: late_digest.clone(),
                        }),
                        progress,
                    )?;
                    clock.mark("llama.cpp done");
                    let (inputs, source_sha256) = match known {
                        Some(known) => known,
                        None => {
                            let inputs = match hashing {
                                Some(h) => h.finish()?,
                                None => digest_inputs(&base, &files, &request.known_digests)?,
                            };
                            clock.mark("inputs hashed");
                            let source_sha256 = source_digest(&inputs);
                            let path = staged_path(&staged).to_owned();
                            patch_string(&path, SOURCE_KEY, &placeholder, &source_sha256)?;
                            clock.mark("source digest written");
                            (inputs, source_sha256)
                        }
                    };
                    let path = staged_path(&staged).to_owned();
                    // The quality gate may take long: what is quantized is kept for a resume
                    // (the matrix it was quantized with is no longer needed).
                    if request.checkpoints && measured {
                        checkpoint.imatrix = None;
                        let (sha256, size) = sync_hashed(&staged)?;
                        checkpoint.quantized = Some(QuantizedStep {
                            file: StagedFile { path, sha256, size },
                            inputs: inputs.clone(),
                            source_sha256: source_sha256.clone(),
                            imatrix_sha256: imatrix_sha256.clone(),
                        });
                        progress.checkpoint(&checkpoint);
                        clock.mark("checkpoint: output synced and hashed");
                    }
                    (staged, inputs, source_sha256, imatrix_sha256)
                }
            };
            let path = staged_path(&staged).to_owned();
            let reference = intermediate.as_ref().map_or(request.source.as_path(), |g: &RemoveOnDrop| g.0.as_path());
            let quality = measure_output(&path, Some(reference))?;
            drop(intermediate);
            let size =
                std::fs::metadata(&path).map_err(|source| QuantizeError::Read { path: path.clone(), source })?.len();
            let output_sha256 = commit_hashed(staged)?;
            clock.mark("output hashed, synced and renamed");
            Ok::<_, QuantizeError>((inputs, source_sha256, output_sha256, size, quality, imatrix_sha256))
        })()?,
    };
    Ok(Receipt { inputs, source_sha256, tool, llama_cpp, params, imatrix_sha256, output_sha256, output_size, quality })
}

/// The computed importance matrix's name in the scratch directory.
pub const IMATRIX_NAME: &str = ".ondevice-imatrix.dat";

/// The metadata key of the source digest in the output.
const SOURCE_KEY: &str = "ondevice.quantize.source_sha256";

/// Overwrites the string value `old` of metadata `key` in the GGUF at `path` with `new` (same
/// length), in place. The key must be in the key-value section exactly once with that value.
/// Reads only that section (no parse of the whole header: a tokenizer's vocabulary is most of it).
fn patch_string(path: &Path, key: &str, old: &str, new: &str) -> Result<(), QuantizeError> {
    use std::io::{Read, Seek, SeekFrom, Write};
    debug_assert_eq!(old.len(), new.len());
    let err = |source| QuantizeError::Read { path: path.to_owned(), source };
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(err)?;
    let file_len = file.metadata().map_err(err)?.len();
    // Read more of the file until the section fits.
    let mut header = Vec::new();
    let mut want = file_len.min(4 << 20);
    let section = loop {
        let have = header.len() as u64;
        (&mut file).take(want - have).read_to_end(&mut header).map_err(err)?;
        match crate::tail_hash::kv_section(&header, Some(key)) {
            Ok(Some(section)) => break section,
            Ok(None) if want < file_len => want = file_len.min(want * 2),
            Ok(None) => {
                return Err(QuantizeError::Unsupported {
                    what: format!("{}: the file ends inside its metadata", path.display()),
                });
            }
            Err(e) => return Err(QuantizeError::Unsupported { what: format!("{}: {e}", path.display()) }),
        }
    };
    let header = &header[..section.len as usize];
    let at = match section.strings.as_slice() {
        [value] if header.get(value.clone()) == Some(old.as_bytes()) => value.start as u64,
        _ => {
            return Err(QuantizeError::Unsupported {
                what: format!("{} has no single {key} placeholder to fill in", path.display()),
            });
        }
    };
    file.seek(SeekFrom::Start(at)).map_err(err)?;
    file.write_all(new.as_bytes()).map_err(err)
}

/// The length of a GGUF's key-value section (magic, counts, every key and value) at the start of
/// `bytes`, or `None` when `bytes` ends before the section does.
#[cfg(test)]
fn metadata_len(bytes: &[u8]) -> Result<Option<u64>, String> {
    Ok(crate::tail_hash::kv_section(bytes, None)?.map(|s| s.len))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The importance matrix of `input` over the shipped text.
#[cfg(feature = "llama")]
fn compute_imatrix(
    input: &Path,
    threads: Option<usize>,
    progress: &dyn StageProgress,
) -> Result<Vec<(String, Vec<f32>)>, QuantizeError> {
    crate::imatrix_compute::compute(input, crate::quality::TEXT, threads, &Adapter(progress))
}

#[cfg(not(feature = "llama"))]
fn compute_imatrix(
    _: &Path,
    _: Option<usize>,
    _: &dyn StageProgress,
) -> Result<Vec<(String, Vec<f32>)>, QuantizeError> {
    Err(QuantizeError::Unsupported {
        what: "computing an importance matrix needs llama.cpp, which this build lacks (built without the engine)"
            .into(),
    })
}

#[cfg(feature = "llama")]
#[allow(clippy::too_many_arguments)]
fn quantize_llama(
    input: &Path,
    request: &QuantizeRequest,
    ftype: QuantType,
    output_type: Option<ondevice_gguf::GgmlType>,
    token_embedding_type: Option<ondevice_gguf::GgmlType>,
    overrides: Vec<(String, ondevice_gguf::GgmlType)>,
    imatrix: Option<Imatrix>,
    metadata: Vec<(String, ondevice_gguf::Value)>,
    hash_while_writing: bool,
    late: Option<crate::tail_hash::LateValue>,
    progress: &dyn StageProgress,
) -> Result<Staged, QuantizeError> {
    let params = crate::llama::LlamaQuantize {
        hash_while_writing,
        late,
        ftype,
        threads: request.threads,
        allow_requantize: request.allow_requantize,
        output_type,
        token_embedding_type,
        overrides,
        imatrix,
        metadata,
    };
    crate::llama::quantize_to_temp(input, &request.output, &params, &Adapter(progress))
}

/// llama.cpp's output under its temporary name, until committed.
#[cfg(feature = "llama")]
type Staged = crate::llama::TempOutput;

/// Without llama.cpp nothing is ever staged.
#[cfg(not(feature = "llama"))]
enum Staged {}

#[cfg(feature = "llama")]
fn staged_path(staged: &Staged) -> &Path {
    staged.path()
}

#[cfg(feature = "llama")]
fn commit_hashed(staged: Staged) -> Result<String, QuantizeError> {
    staged.commit_hashed()
}

/// Whether `path` is a name [`quantize_llama`] stages the output of `output` under.
fn is_staged_name(path: &Path, output: &Path) -> bool {
    let (Some(name), Some(out)) =
        (path.file_name().and_then(|n| n.to_str()), output.file_name().and_then(|n| n.to_str()))
    else {
        return false;
    };
    path.parent() == output.parent() && name.starts_with(&format!(".{out}.")) && name.ends_with(".partial")
}

#[cfg(feature = "llama")]
fn adopt_staged(path: &Path, output: &Path) -> Result<Staged, QuantizeError> {
    Ok(crate::llama::TempOutput::adopt(path, output))
}

#[cfg(feature = "llama")]
fn sync_hashed(staged: &Staged) -> Result<(String, u64), QuantizeError> {
    staged.sync_hashed()
}

#[cfg(not(feature = "llama"))]
fn adopt_staged(_: &Path, _: &Path) -> Result<Staged, QuantizeError> {
    Err(QuantizeError::Unsupported {
        what: "resuming a quantization needs llama.cpp's quantizer, which this build lacks (built without the engine)"
            .into(),
    })
}

#[cfg(not(feature = "llama"))]
fn sync_hashed(staged: &Staged) -> Result<(String, u64), QuantizeError> {
    match *staged {}
}

#[cfg(not(feature = "llama"))]
fn staged_path(staged: &Staged) -> &Path {
    match *staged {}
}

#[cfg(not(feature = "llama"))]
fn commit_hashed(staged: Staged) -> Result<String, QuantizeError> {
    match staged {}
}

#[cfg(not(feature = "llama"))]
#[allow(clippy::too_many_arguments)]
fn quantize_llama(
    _: &Path,
    _: &QuantizeRequest,
    ftype: QuantType,
    _: Option<ondevice_gguf::GgmlType>,
    _: Option<ondevice_gguf::GgmlType>,
    _: Vec<(String, ondevice_gguf::GgmlType)>,
    _: Option<Imatrix>,
    _: Vec<(String, ondevice_gguf::Value)>,
    _: bool,
    _: Option<crate::tail_hash::LateValue>,
    _: &dyn StageProgress,
) -> Result<Staged, QuantizeError> {
    Err(QuantizeError::Unsupported {
        what: format!("{ftype} needs llama.cpp's quantizer, which this build lacks (built without the engine)"),
    })
}

/// Progress of a run with several stages.
pub trait StageProgress {
    /// A new stage starts.
    fn stage(&self, name: &str);
    /// `done` of `total` in the current stage (bytes for a conversion, tensors for llama.cpp).
    fn report(&self, done: u64, total: u64);
    /// Whether to stop.
    fn cancelled(&self) -> bool {
        false
    }
    /// A step finished and its files are synced: a run given `checkpoint` as
    /// [`QuantizeRequest::resume`] continues after it. Only with [`QuantizeRequest::checkpoints`].
    fn checkpoint(&self, _checkpoint: &Checkpoint) {}
    /// A step is skipped because its file from an earlier run matched its checkpoint (a
    /// [`step`] name).
    fn resumed(&self, _step: &str) {}
}

struct Adapter<'a>(&'a dyn StageProgress);

impl Progress for Adapter<'_> {
    fn progress(&self, done: u64, total: u64) {
        self.0.report(done, total);
    }
    fn cancelled(&self) -> bool {
        self.0.cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// A GGUF key-value section: a string, an array of strings, a u32 array; then a tensor info.
    fn gguf() -> (Vec<u8>, usize) {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&3u64.to_le_bytes());
        string(&mut b, "general.name");
        b.extend_from_slice(&8u32.to_le_bytes());
        string(&mut b, "tiny");
        string(&mut b, "tokenizer.ggml.tokens");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        string(&mut b, "a");
        string(&mut b, "bc");
        string(&mut b, "tokenizer.ggml.token_type");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&[1, 0, 0, 0, 3, 0, 0, 0]);
        let section = b.len();
        string(&mut b, "output.weight");
        b.extend_from_slice(&[1, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        (b, section)
    }

    #[test]
    fn the_metadata_section_is_measured_without_parsing_it() {
        let (bytes, section) = gguf();
        assert_eq!(metadata_len(&bytes), Ok(Some(section as u64)));
        for cut in [3, 20, section - 1] {
            assert_eq!(metadata_len(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[44] = 13; // the first value's type
        assert!(metadata_len(&bad).is_err());
        assert!(metadata_len(b"GGML\x03\0\0\0").is_err());
        let mut huge = bytes;
        // An array claiming 2^63 u32 elements needs more bytes than any file has.
        let at = section - 16;
        huge[at..at + 8].copy_from_slice(&(1u64 << 63).to_le_bytes());
        assert_eq!(metadata_len(&huge), Ok(None));
    }

    #[test]
    fn the_placeholder_is_patched_once_in_the_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let (mut bytes, _) = gguf();
        // A second metadata entry with the placeholder, after the first three.
        bytes[16..24].copy_from_slice(&4u64.to_le_bytes());
        let (_, section) = gguf();
        let mut entry = Vec::new();
        string(&mut entry, SOURCE_KEY);
        entry.extend_from_slice(&8u32.to_le_bytes());
        string(&mut entry, &"0".repeat(64));
        bytes.splice(section..section, entry.iter().copied());
        std::fs::write(&path, &bytes).unwrap();
        patch_string(&path, SOURCE_KEY, &"0".repeat(64), &"a".repeat(64)).unwrap();
        let patched = std::fs::read(&path).unwrap();
        assert_eq!(patched.len(), bytes.len());
        assert_eq!(&patched[section + entry.len() - 64..section + entry.len()], "a".repeat(64).as_bytes());
        // It is gone now: a second patch finds nothing to fill in.
        assert!(patch_string(&path, SOURCE_KEY, &"0".repeat(64), &"b".repeat(64)).is_err());

        // The entry's very bytes inside another entry's string (a crafted vocabulary, say) are not
        // the entry: the key-value section is walked, not searched.
        let (mut bytes, section) = gguf();
        bytes[16..24].copy_from_slice(&5u64.to_le_bytes());
        let mut decoy = Vec::new();
        string(&mut decoy, "tokenizer.decoy");
        decoy.extend_from_slice(&8u32.to_le_bytes());
        decoy.extend_from_slice(&(entry.len() as u64).to_le_bytes());
        decoy.extend_from_slice(&entry);
        let both: Vec<u8> = decoy.iter().chain(&entry).copied().collect();
        bytes.splice(section..section, both.iter().copied());
        std::fs::write(&path, &bytes).unwrap();
        patch_string(&path, SOURCE_KEY, &"0".repeat(64), &"c".repeat(64)).unwrap();
        let patched = std::fs::read(&path).unwrap();
        let end = section + both.len();
        assert_eq!(&patched[end - 64..end], "c".repeat(64).as_bytes(), "the entry is patched");
        assert_eq!(&patched[..end - 64], &bytes[..end - 64], "the decoy is not");
    }
}
