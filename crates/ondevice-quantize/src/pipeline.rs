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
    let imatrix = request.imatrix.as_deref().map(Imatrix::open).transpose()?;
    let imatrix_sha256 = imatrix.as_ref().map(|m| m.sha256().to_owned());
    let output_type = request.output_tensor_type.as_deref().map(ggml_type_from_name).transpose()?;
    let token_type = request.token_embedding_type.as_deref().map(ggml_type_from_name).transpose()?;
    let mut overrides = Vec::new();
    for o in &request.overrides {
        let (pattern, ty) = o.rsplit_once('=').ok_or_else(|| QuantizeError::Unsupported {
            what: format!("tensor type override {o:?} is not PATTERN=TYPE (for example attn_v=Q8_0)"),
        })?;
        overrides.push((pattern.to_owned(), ggml_type_from_name(ty)?));
    }
    if quant_type.needs_imatrix() && imatrix.is_none() {
        return Err(QuantizeError::NeedsImatrix { ftype: quant_type.name().into() });
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
    };

    progress.stage("hashing inputs");
    let gate;
    let mut inherited = Vec::new();
    let (inputs, conversion) = if is_dir {
        let out_type =
            if direct { quant_type.converter_type().unwrap_or(crate::OutType::F16) } else { crate::OutType::F16 };
        let conversion = Conversion::plan(&request.source, &ConvertOptions { out_type, name: request.name.clone() })?;
        gate = Gate::for_directory(conversion.architecture(), direct, quant_type);
        (digest_inputs(&request.source, conversion.inputs())?, Some(conversion))
    } else {
        let source = ondevice_gguf::GgufFile::open(&request.source)?;
        gate = Gate::for_gguf(&source, quant_type);
        inherited = crate::quality::inherited_provenance(&source);
        (digest_inputs(request.source.parent().unwrap_or(Path::new("")), std::slice::from_ref(&request.source))?, None)
    };
    let gate = if request.no_quality { Gate::Off } else { gate };
    // Measures the written output (against `reference`) and writes the figures into it.
    let measure_output = |reference: Option<&Path>| -> Result<Option<Quality>, QuantizeError> {
        let Gate::Measure { reference: with_reference, note } = &gate else {
            return Ok(match &gate {
                Gate::Skip(reason) => Some(Quality::skipped(reason.clone())),
                _ => None,
            });
        };
        progress.stage("measuring quality");
        let options = QualityOptions { threads: request.threads };
        let reference = reference.filter(|_| *with_reference);
        let mut q = crate::quality::measure(&request.output, reference, &options, &Adapter(progress))?;
        q.note = note.clone();
        crate::quality::record(&request.output, &q)?;
        Ok(Some(q))
    };
    let quality;
    let source_sha256 = source_digest(&inputs);
    let llama_cpp = if direct { None } else { llama_cpp_version() };
    if !direct {
        params.intermediate = is_dir.then(|| "F16".to_owned());
    }
    let params_sha256 = hex(&Sha256::digest(serde_json::to_vec(&params).unwrap_or_default()));
    let tool = format!("ondevice {}", env!("CARGO_PKG_VERSION"));
    let mut metadata = vec![
        ("ondevice.quantize.source_sha256".to_owned(), source_sha256.clone()),
        ("ondevice.quantize.params_sha256".to_owned(), params_sha256),
        ("ondevice.quantize.type".to_owned(), quant_type.name().to_owned()),
        ("ondevice.quantize.tool".to_owned(), tool.clone()),
    ];
    if let Some(v) = &llama_cpp {
        metadata.push(("ondevice.quantize.llama_cpp".to_owned(), v.chars().take(120).collect()));
    }
    if let Some(s) = &imatrix_sha256 {
        metadata.push(("ondevice.quantize.imatrix_sha256".to_owned(), s.clone()));
    }

    let (output_sha256, output_size) = match conversion {
        Some(mut conversion) if direct => {
            for (k, v) in &metadata {
                conversion.add_metadata(k.clone(), ondevice_gguf::Value::String(v.clone()))?;
            }
            for (k, v) in gate.metadata() {
                conversion.add_metadata(k, v)?;
            }
            progress.stage("converting");
            let written = conversion.write(&request.output, &Adapter(progress))?;
            quality = measure_output(None)?;
            (written.sha256, written.len)
        }
        conversion => {
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
            progress.stage("quantizing");
            quantize_llama(
                &input,
                request,
                quant_type,
                output_type,
                token_type,
                overrides,
                imatrix,
                crate::quality::without_stale(
                    metadata
                        .into_iter()
                        .map(|(k, v)| (k, ondevice_gguf::Value::String(v)))
                        .chain(gate.metadata())
                        .collect(),
                    inherited,
                ),
                progress,
            )?;
            quality = measure_output(Some(intermediate.as_ref().map_or(request.source.as_path(), |g| g.0.as_path())))?;
            drop(intermediate);
            let size = std::fs::metadata(&request.output)
                .map_err(|source| QuantizeError::Read { path: request.output.clone(), source })?
                .len();
            (sha256_file(&request.output)?, size)
        }
    };
    // Recording the figures rewrote a few bytes of the output.
    let output_sha256 = if quality.as_ref().is_some_and(|q| q.perplexity.is_some()) {
        sha256_file(&request.output)?
    } else {
        output_sha256
    };
    Ok(Receipt { inputs, source_sha256, tool, llama_cpp, params, imatrix_sha256, output_sha256, output_size, quality })
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
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
) -> Result<(), QuantizeError> {
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
    crate::llama::quantize(input, &request.output, &params, &Adapter(progress))
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
) -> Result<(), QuantizeError> {
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
