//! One quantization, end to end, as the sandboxed task runs it: a GGUF file or a safetensors
//! directory → the requested type, with its provenance receipt.
//!
//! - safetensors → F32/F16/BF16/Q8_0: the converter writes the output directly.
//! - safetensors → any other type: the converter writes F16 into the scratch directory, then
//!   llama.cpp quantizes it (the intermediate file is removed).
//! - GGUF → any type: llama.cpp quantizes it.
//!
//! The receipt names every input by SHA-256 (never by path), the tool and llama.cpp versions, the
//! parameters and the output's digest. Its stable part (everything but the output digest) also goes
//! into the GGUF as `ondevice.quantize.*` strings, so a file carries where it came from. Nothing in
//! it depends on time or place: the same inputs and parameters give the same bytes.
//!
//! Time: when llama.cpp quantizes, the inputs are hashed on another thread meanwhile (the output
//! carries a placeholder of the digest's length, filled in before the file is moved into place),
//! and the output is hashed while its fsync runs, so the work beyond llama.cpp's own is one read
//! of the output from the page cache.

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

fn digest_inputs(source: &Path, files: &[PathBuf]) -> Result<Vec<InputDigest>, QuantizeError> {
    let mut out = Vec::new();
    for f in files {
        let name = f
            .strip_prefix(source)
            .ok()
            .filter(|p| !p.as_os_str().is_empty())
            .or_else(|| f.file_name().map(Path::new))
            .map(|p| p.to_string_lossy().replace('\\', "/"))
            .unwrap_or_default();
        let size = std::fs::metadata(f).map_err(|source| QuantizeError::Read { path: f.clone(), source })?.len();
        out.push(InputDigest { name, sha256: sha256_file(f)?, size });
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

/// Runs the request. Progress is reported in bytes of the current stage (`stage` says which).
pub fn run(request: &QuantizeRequest, progress: &dyn StageProgress) -> Result<Receipt, QuantizeError> {
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
        let source = ondevice_gguf::GgufFile::open(&request.source)?;
        gate = Gate::for_gguf(&source, quant_type);
        inherited = crate::quality::inherited_provenance(&source);
        (request.source.parent().unwrap_or(Path::new("")).to_owned(), vec![request.source.clone()], None)
    };
    let gate = if request.no_quality { Gate::Off } else { gate };
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

    let (inputs, source_sha256, output_sha256, output_size, quality, imatrix_sha256) = match conversion {
        Some(mut conversion) if direct => {
            // The converter hashes its output while writing it, so the inputs are hashed first
            // and their digest written with the header.
            progress.stage("hashing inputs");
            let inputs = digest_inputs(&base, &files)?;
            let source_sha256 = source_digest(&inputs);
            for (k, v) in metadata(&source_sha256, None) {
                conversion.add_metadata(k, ondevice_gguf::Value::String(v))?;
            }
            for (k, v) in gate.metadata() {
                conversion.add_metadata(k, v)?;
            }
            progress.stage("converting");
            let written = conversion.write(&request.output, &Adapter(progress))?;
            let quality = measure_output(&request.output, None)?;
            // Recording the figures rewrote a few bytes of the output.
            let output_sha256 = if quality.as_ref().is_some_and(|q| q.perplexity.is_some()) {
                sha256_file(&request.output)?
            } else {
                written.sha256
            };
            (inputs, source_sha256, output_sha256, written.len, quality, None)
        }
        conversion => std::thread::scope(|s| {
            // The inputs are hashed while llama.cpp works (and the converter before it); the
            // output is written with a placeholder digest of the same length, patched in before
            // the file is moved into place.
            let hashing = s.spawn(|| digest_inputs(&base, &files));
            let scratch = request
                .scratch
                .clone()
                .or_else(|| request.output.parent().map(Path::to_owned))
                .unwrap_or_else(|| PathBuf::from("."));
            let mut intermediate = None;
            let input = match conversion {
                Some(conversion) => {
                    progress.stage("converting to F16");
                    let path = scratch.join(".ondevice-convert-f16.gguf");
                    let guard = RemoveOnDrop(path.clone());
                    conversion.write(&path, &Adapter(progress))?;
                    intermediate = Some(guard);
                    path
                }
                None => request.source.clone(),
            };
            let mut imatrix = imatrix;
            let mut made_imatrix = None;
            if request.make_imatrix {
                progress.stage("computing importance matrix");
                let path = scratch.join(".ondevice-imatrix.dat");
                let guard = RemoveOnDrop(path.clone());
                let entries = compute_imatrix(&input, request.threads, progress)?;
                crate::write_legacy(&path, &entries)
                    .map_err(|source| QuantizeError::Read { path: path.clone(), source })?;
                imatrix = Some(Imatrix::open(&path)?);
                made_imatrix = Some(guard);
            }
            let imatrix_sha256 = imatrix.as_ref().map(|m| m.sha256().to_owned());
            progress.stage("quantizing");
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
                    metadata(&placeholder, imatrix_sha256.as_deref())
                        .into_iter()
                        .map(|(k, v)| (k, ondevice_gguf::Value::String(v)))
                        .chain(gate.metadata())
                        .collect(),
                    inherited,
                ),
                progress,
            )?;
            let inputs = hashing.join().map_err(|_| QuantizeError::Unsupported {
                what: "hashing the inputs failed unexpectedly (a thread panicked)".into(),
            })??;
            let source_sha256 = source_digest(&inputs);
            let path = staged_path(&staged).to_owned();
            patch_string(&path, SOURCE_KEY, &placeholder, &source_sha256)?;
            let quality =
                measure_output(&path, Some(intermediate.as_ref().map_or(request.source.as_path(), |g| g.0.as_path())))?;
            drop(intermediate);
            drop(made_imatrix);
            let size =
                std::fs::metadata(&path).map_err(|source| QuantizeError::Read { path: path.clone(), source })?.len();
            let output_sha256 = commit_hashed(staged)?;
            Ok::<_, QuantizeError>((inputs, source_sha256, output_sha256, size, quality, imatrix_sha256))
        })?,
    };
    Ok(Receipt { inputs, source_sha256, tool, llama_cpp, params, imatrix_sha256, output_sha256, output_size, quality })
}

/// The metadata key of the source digest in the output.
const SOURCE_KEY: &str = "ondevice.quantize.source_sha256";

/// Overwrites the string value `old` of metadata `key` in the GGUF at `path` with `new` (same
/// length), in place. The key must be there exactly once with that value.
fn patch_string(path: &Path, key: &str, old: &str, new: &str) -> Result<(), QuantizeError> {
    use std::io::{Read, Seek, SeekFrom, Write};
    debug_assert_eq!(old.len(), new.len());
    let header_len = ondevice_gguf::GgufFile::open(path)?.data_offset();
    let err = |source| QuantizeError::Read { path: path.to_owned(), source };
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(err)?;
    let mut header = Vec::new();
    (&mut file).take(header_len).read_to_end(&mut header).map_err(err)?;
    let mut needle = (key.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(key.as_bytes());
    needle.extend_from_slice(&8u32.to_le_bytes());
    needle.extend_from_slice(&(old.len() as u64).to_le_bytes());
    needle.extend_from_slice(old.as_bytes());
    let mut found = header.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle.as_slice());
    let at = match (found.next(), found.next()) {
        (Some((at, _)), None) => (at + needle.len() - old.len()) as u64,
        _ => {
            return Err(QuantizeError::Unsupported {
                what: format!("{} has no single {key} placeholder to fill in", path.display()),
            });
        }
    };
    file.seek(SeekFrom::Start(at)).map_err(err)?;
    file.write_all(new.as_bytes()).map_err(err)
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
    progress: &dyn StageProgress,
) -> Result<Staged, QuantizeError> {
    let params = crate::llama::LlamaQuantize {
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
