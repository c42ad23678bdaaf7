//! MLX-LM export: a Hugging Face safetensors directory (Llama, Mistral, Qwen 2) or a GGUF F32/F16/BF16
//! file of those architectures → an MLX-LM model directory with affine group quantization, the
//! layout `mlx_lm.convert -q` writes and `mlx_lm.load` reads:
//!
//! - `model.safetensors` (or `model-0000N-of-0000M.safetensors` shards of at most 5 GiB and
//!   `model.safetensors.index.json`): every `Linear` and `Embedding` weight whose rows are whole
//!   groups becomes `NAME.weight` (uint32, packed), `NAME.scales` and `NAME.biases` (in the model's
//!   float type); norms, biases and anything else stay float. A tied `lm_head.weight` is dropped
//!   and `rotary_emb.inv_freq` too, as mlx-lm's `sanitize` does. Floats are first cast to
//!   `config.json`'s `torch_dtype` when it is `float16`, `bfloat16` or `float32` (mlx-lm does the
//!   same before quantizing).
//! - `config.json`: the source's, keys sorted, with `quantization` and `quantization_config`
//!   `{group_size, bits, mode: "affine"}`.
//! - the tokenizer files, copied (from a GGUF: `tokenizer.json` and `tokenizer_config.json` rebuilt
//!   from its byte-level BPE vocabulary).
//!
//! The quantizer is MLX's CPU kernel (`mlx/backend/cpu/quantized.cpp`, `quantize`), step for step
//! in `f32`: per group of `group_size` values, `scale = max((max - min) / (2^bits - 1), 1e-7)`
//! signed towards the edge of larger magnitude, the edge rounded to a whole step (`rint`), then
//! `q = clamp(rint((w - bias) / scale), 0, 2^bits - 1)` packed little-endian, `bits` per value (for
//! 3, 5 and 6 bits 8, 8 and 4 values per 3, 5 and 3 bytes, which is the same bit stream). Scales and
//! biases are stored rounded to the float type (round to nearest even), the values having been
//! quantized with the unrounded ones. The result equals `mlx.core.quantize` bit for bit (tested).
//!
//! Everything is checked before a byte is written (headers, names and shapes against the config,
//! dtypes, bits and group size); the directory is written under a temporary name beside the
//! destination and renamed into place, so the destination holds the whole model or nothing. The
//! output depends on the inputs and options only.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ondevice_gguf::{Dtype, GgmlType, GgufFile, HfModelDir, SafetensorsHeader, Value};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

use crate::Progress;
use crate::error::QuantizeError;
use crate::imatrix::hex;
use crate::numeric::{element_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};

/// Bits per value MLX's affine quantization offers.
pub const BITS: [u32; 6] = [2, 3, 4, 5, 6, 8];
/// Group sizes MLX's affine quantization offers.
pub const GROUP_SIZES: [usize; 3] = [32, 64, 128];

/// Largest shard written (mlx-lm's `MAX_FILE_SIZE_GB`).
const SHARD_BYTES: u64 = 5 << 30;
/// Source bytes read at once.
const CHUNK: u64 = 4 << 20;
/// Files copied from a Hugging Face directory besides the weights and `config.json`.
const TOKENIZER_FILES: [&str; 10] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
];
/// Largest tokenizer file copied.
const MAX_COPY: u64 = 64 << 20;

/// Bits and group size of an MLX affine quantization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MlxOptions {
    /// Bits per value: 2, 3, 4, 5, 6 or 8.
    pub bits: u32,
    /// Values per group sharing a scale and a bias: 32, 64 or 128.
    pub group_size: usize,
}

impl MlxOptions {
    /// Checked options.
    pub fn new(bits: u32, group_size: usize) -> Result<Self, QuantizeError> {
        if !BITS.contains(&bits) {
            return Err(QuantizeError::Unsupported {
                what: format!("--bits {bits} is not offered by mlx: use 2, 3, 4, 5, 6 or 8"),
            });
        }
        if !GROUP_SIZES.contains(&group_size) {
            return Err(QuantizeError::Unsupported {
                what: format!("--group-size {group_size} is not offered by mlx: use 32, 64 or 128"),
            });
        }
        Ok(MlxOptions { bits, group_size })
    }

    /// Packed bytes of `n` values.
    fn packed_len(self, n: u64) -> u64 {
        n * u64::from(self.bits) / 8
    }
}

/// The float type of an MLX tensor that stays float, and of scales and biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FloatType {
    /// `float16`.
    F16,
    /// `bfloat16`.
    BF16,
    /// `float32`.
    F32,
}

impl FloatType {
    /// The safetensors dtype name.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            FloatType::F16 => "F16",
            FloatType::BF16 => "BF16",
            FloatType::F32 => "F32",
        }
    }

    /// The `torch_dtype` name.
    pub fn torch_name(self) -> &'static str {
        match self {
            FloatType::F16 => "float16",
            FloatType::BF16 => "bfloat16",
            FloatType::F32 => "float32",
        }
    }

    fn from_torch(name: &str) -> Option<Self> {
        [FloatType::F16, FloatType::BF16, FloatType::F32].into_iter().find(|t| t.torch_name() == name)
    }

    fn size(self) -> u64 {
        match self {
            FloatType::F16 | FloatType::BF16 => 2,
            FloatType::F32 => 4,
        }
    }

    /// `x` stored in this type and read back (MLX rounds to nearest even).
    fn round(self, x: f32) -> f32 {
        match self {
            FloatType::F16 => f16_to_f32(f32_to_f16(x)),
            FloatType::BF16 => f32::from_bits(u32::from(f32_to_bf16(x)) << 16),
            FloatType::F32 => x,
        }
    }

    fn encode(self, x: f32, out: &mut Vec<u8>) {
        match self {
            FloatType::F16 => out.extend_from_slice(&f32_to_f16(x).to_le_bytes()),
            FloatType::BF16 => out.extend_from_slice(&f32_to_bf16(x).to_le_bytes()),
            FloatType::F32 => out.extend_from_slice(&x.to_le_bytes()),
        }
    }
}

/// One quantized tensor: the packed values and the scales and biases in the float type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quantized {
    /// Packed values (little-endian `uint32` words).
    pub weight: Vec<u8>,
    /// One scale per group.
    pub scales: Vec<u8>,
    /// One bias per group.
    pub biases: Vec<u8>,
}

/// Quantizes `values` (a whole number of groups, each value already representable in `dtype`) as
/// `mlx.core.quantize(w, group_size, bits)` does for an array of `dtype`, appending to `out`.
/// A non-finite value gives an error (MLX's result would be undefined).
pub fn quantize_into(
    values: &[f32],
    dtype: FloatType,
    options: MlxOptions,
    out: &mut Quantized,
) -> Result<(), QuantizeError> {
    let bits = options.bits;
    let n_bins = ((1u32 << bits) - 1) as f32;
    let eps = 1e-7_f64 as f32;
    for group in values.chunks(options.group_size) {
        let mut w_min = f32::INFINITY;
        let mut w_max = -w_min;
        for &x in group {
            if !x.is_finite() {
                return Err(QuantizeError::Unsupported {
                    what: format!("the weights hold a non-finite value ({x}): the model is damaged"),
                });
            }
            // std::max / std::min, argument order included.
            if w_max < x {
                w_max = x;
            }
            if x < w_min {
                w_min = x;
            }
        }
        let mask = w_min.abs() > w_max.abs();
        let mut scale = (w_max - w_min) / n_bins;
        if scale < eps {
            scale = eps;
        }
        if !mask {
            scale = -scale;
        }
        let edge = if mask { w_min } else { w_max };
        let q0 = (edge / scale).round_ties_even();
        let mut bias = 0.0f32;
        if q0 != 0.0 {
            scale = edge / q0;
            bias = edge;
        }
        let mut acc = 0u64;
        let mut held = 0u32;
        for &x in group {
            let mut q = ((x - bias) / scale).round_ties_even();
            if q < 0.0 {
                q = 0.0;
            }
            if n_bins < q {
                q = n_bins;
            }
            acc |= (q as u64) << held;
            held += bits;
            while held >= 8 {
                out.weight.push(acc as u8);
                acc >>= 8;
                held -= 8;
            }
        }
        dtype.encode(scale, &mut out.scales);
        dtype.encode(bias, &mut out.biases);
    }
    Ok(())
}

/// Quantizes one tensor's `values` (see [`quantize_into`]).
pub fn quantize(values: &[f32], dtype: FloatType, options: MlxOptions) -> Result<Quantized, QuantizeError> {
    let mut out = Quantized::default();
    quantize_into(values, dtype, options, &mut out)?;
    Ok(out)
}

/// Where a source tensor's bytes are and how they are read.
#[derive(Debug, Clone)]
struct Source {
    file: PathBuf,
    offset: u64,
    /// Element type in the file (F32, F16, BF16 or F64).
    dtype: Dtype,
    /// GGUF llama q/k rows in llama.cpp's interleaved rope order, `head_dim` rows per head: put
    /// back into Hugging Face's order.
    unpermute_head_dim: Option<u64>,
}

/// One tensor of the output model (before quantization).
#[derive(Debug, Clone)]
struct Planned {
    /// Hugging Face name, `.weight` included.
    name: String,
    /// Shape, outermost first.
    shape: Vec<u64>,
    source: Source,
    /// Float type of the stored values (or of the scales and biases).
    store: FloatType,
    quantize: bool,
}

impl Planned {
    fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// (name, dtype, shape, bytes) of each stored tensor, in data order.
    fn outputs(&self, options: MlxOptions) -> Vec<(String, &'static str, Vec<u64>, u64)> {
        let n = self.n_elements();
        if !self.quantize {
            return vec![(self.name.clone(), self.store.safetensors_name(), self.shape.clone(), n * self.store.size())];
        }
        let stem = self.name.strip_suffix(".weight").unwrap_or(&self.name);
        let cols = *self.shape.last().unwrap_or(&1);
        let rows = n / cols.max(1);
        let groups = cols / options.group_size as u64;
        let packed_cols = cols * u64::from(options.bits) / 32;
        let side = self.store.safetensors_name();
        vec![
            (format!("{stem}.weight"), "U32", vec![rows, packed_cols], options.packed_len(n)),
            (format!("{stem}.scales"), side, vec![rows, groups], rows * groups * self.store.size()),
            (format!("{stem}.biases"), side, vec![rows, groups], rows * groups * self.store.size()),
        ]
    }
}

/// Extra files of the output: name → bytes (config.json, tokenizer files) or a file to copy.
#[derive(Debug, Clone)]
enum Extra {
    Bytes(Vec<u8>),
    Copy(PathBuf),
}

/// A checked MLX export, ready to write.
#[derive(Debug)]
pub struct MlxExport {
    options: MlxOptions,
    tensors: Vec<Planned>,
    extras: BTreeMap<String, Extra>,
    inputs: Vec<PathBuf>,
    source_root: PathBuf,
    source_bytes: u64,
    architecture: &'static str,
    metadata: BTreeMap<String, String>,
}

/// One file of a written MLX directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutputFile {
    /// The file name in the directory.
    pub name: String,
    /// SHA-256, 64 hex digits.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// A written MLX directory.
#[derive(Debug, Clone)]
pub struct MlxWritten {
    /// The directory.
    pub dir: PathBuf,
    /// Every file with its digest, in name order.
    pub files: Vec<OutputFile>,
    /// SHA-256 over the files' `sha256  name` lines: one digest for the whole directory.
    pub sha256: String,
    /// Total size in bytes.
    pub size: u64,
}

impl MlxExport {
    /// Reads and checks `source` (a Hugging Face directory or a GGUF file) and plans the export;
    /// writes nothing.
    pub fn plan(source: impl AsRef<Path>, options: MlxOptions) -> Result<Self, QuantizeError> {
        let source = source.as_ref();
        let options = MlxOptions::new(options.bits, options.group_size)?;
        if source.is_dir() { plan_hf(source, options) } else { plan_gguf(source, options) }
    }

    /// The files the output depends on: what a provenance record hashes.
    pub fn inputs(&self) -> &[PathBuf] {
        &self.inputs
    }

    /// The directory the inputs are named relative to.
    pub fn source_root(&self) -> &Path {
        &self.source_root
    }

    /// `llama` or `qwen2`.
    pub fn architecture(&self) -> &'static str {
        self.architecture
    }

    /// Adds a string to every safetensors file's `__metadata__` (beside `"format": "mlx"`).
    pub fn add_metadata(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.metadata.insert(key.into(), value.into());
    }

    /// Bytes of tensor data read from the source.
    pub fn source_bytes(&self) -> u64 {
        self.source_bytes
    }

    /// Output tensors: name, whether quantized, float type.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, bool, FloatType)> {
        self.tensors.iter().map(|t| (t.name.as_str(), t.quantize, t.store))
    }

    /// Writes the directory `out` (which must not exist) atomically: under a temporary name beside
    /// it, then renamed. `progress` hears about source bytes done and may cancel; on cancel or any
    /// error nothing is left.
    pub fn write(self, out: impl AsRef<Path>, progress: &dyn Progress) -> Result<MlxWritten, QuantizeError> {
        let out = out.as_ref();
        let werr = |path: &Path, source: std::io::Error| QuantizeError::Read { path: path.to_owned(), source };
        if out.exists() {
            return Err(QuantizeError::Unsupported {
                what: format!("{} already exists: choose another --output or remove it", out.display()),
            });
        }
        let name = out.file_name().ok_or_else(|| QuantizeError::Unsupported {
            what: format!("{} has no directory name: give --output a directory path", out.display()),
        })?;
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}.partial", std::process::id()));
        let temp = parent.join(temp_name);
        if temp.exists() {
            std::fs::remove_dir_all(&temp).map_err(|e| werr(&temp, e))?;
        }
        std::fs::create_dir(&temp).map_err(|e| werr(&temp, e))?;
        let guard = RemoveDirOnDrop(Some(temp.clone()));

        // Shards: tensors in data order, a new shard when the next tensor would pass the limit.
        let mut shards: Vec<Vec<usize>> = Vec::new();
        let mut shard_size = 0u64;
        for (i, t) in self.tensors.iter().enumerate() {
            let bytes: u64 = t.outputs(self.options).iter().map(|o| o.3).sum();
            if shards.is_empty() || shard_size + bytes > SHARD_BYTES {
                shards.push(Vec::new());
                shard_size = 0;
            }
            if let Some(s) = shards.last_mut() {
                s.push(i);
            }
            shard_size += bytes;
        }
        let n_shards = shards.len();
        let shard_name = |i: usize| {
            if n_shards > 1 {
                format!("model-{:05}-of-{n_shards:05}.safetensors", i + 1)
            } else {
                "model.safetensors".into()
            }
        };

        let mut done = 0u64;
        let mut weight_map = BTreeMap::new();
        let mut total_size = 0u64;
        let mut reader = Reader::default();
        for (i, shard) in shards.iter().enumerate() {
            let file_name = shard_name(i);
            let mut header = BTreeMap::new();
            let mut metadata = serde_json::Map::new();
            metadata.insert("format".into(), json!("mlx"));
            for (k, v) in &self.metadata {
                metadata.insert(k.clone(), json!(v));
            }
            header.insert("__metadata__".to_owned(), Json::Object(metadata));
            let mut offset = 0u64;
            for &t in shard {
                for (name, dtype, shape, bytes) in self.tensors[t].outputs(self.options) {
                    header.insert(
                        name.clone(),
                        json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}),
                    );
                    weight_map.insert(name, file_name.clone());
                    offset += bytes;
                    total_size += bytes;
                }
            }
            let mut header = serde_json::to_vec(&header).map_err(|e| werr(out, std::io::Error::other(e)))?;
            while header.len() % 8 != 0 {
                header.push(b' ');
            }
            let path = temp.join(&file_name);
            let file = File::create(&path).map_err(|e| werr(&path, e))?;
            let mut w = BufWriter::with_capacity(1 << 20, file);
            let io = |e| werr(&path, e);
            w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
            w.write_all(&header).map_err(io)?;
            for &t in shard {
                write_tensor(
                    &self.tensors[t],
                    self.options,
                    &mut reader,
                    &mut w,
                    &path,
                    &mut done,
                    self.source_bytes,
                    progress,
                )?;
            }
            let file = w.into_inner().map_err(|e| werr(&path, e.into_error()))?;
            file.sync_all().map_err(|e| werr(&path, e))?;
        }
        if n_shards > 1 {
            let total_parameters: u64 = self.tensors.iter().map(Planned::n_elements).sum();
            let index = json!({
                "metadata": {"total_size": total_size, "total_parameters": total_parameters},
                "weight_map": weight_map,
            });
            write_file(&temp.join("model.safetensors.index.json"), &pretty(&index))?;
        }
        for (name, extra) in &self.extras {
            let path = temp.join(name);
            match extra {
                Extra::Bytes(b) => write_file(&path, b)?,
                Extra::Copy(from) => {
                    let bytes = read_capped(from, MAX_COPY)?;
                    write_file(&path, &bytes)?;
                }
            }
        }

        // Digests, then the rename.
        let mut files = Vec::new();
        let mut names: Vec<String> = std::fs::read_dir(&temp)
            .map_err(|e| werr(&temp, e))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        let mut size = 0u64;
        for name in names {
            let path = temp.join(&name);
            let len = std::fs::metadata(&path).map_err(|e| werr(&path, e))?.len();
            size += len;
            files.push(OutputFile { sha256: crate::sha256_file(&path)?, name, size: len });
        }
        let sha256 = files_digest(&files);
        if progress.cancelled() {
            return Err(QuantizeError::Cancelled);
        }
        File::open(&temp).and_then(|d| d.sync_all()).map_err(|e| werr(&temp, e))?;
        std::fs::rename(&temp, out).map_err(|e| werr(out, e))?;
        std::mem::forget(guard);
        File::open(parent).and_then(|d| d.sync_all()).map_err(|e| werr(parent, e))?;
        Ok(MlxWritten { dir: out.to_owned(), files, sha256, size })
    }
}

/// Where an MLX directory came from and what it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MlxReceipt {
    /// Every input file with its digest, in name order.
    pub inputs: Vec<crate::pipeline::InputDigest>,
    /// SHA-256 over the inputs' `sha256  name` lines.
    pub source_sha256: String,
    /// `ondevice X.Y.Z`.
    pub tool: String,
    /// `mlx`.
    pub format: String,
    /// `affine`.
    pub mode: String,
    /// Bits per value.
    pub bits: u32,
    /// Values per group.
    pub group_size: usize,
    /// `safetensors` or `gguf`.
    pub source_format: String,
    /// Every output file with its digest.
    pub files: Vec<OutputFile>,
    /// SHA-256 over the output files' `sha256  name` lines.
    pub output_sha256: String,
    /// Total size of the output in bytes.
    pub output_size: u64,
}

/// Plans, hashes the inputs and writes `source` → the MLX directory `output`; the source digest,
/// tool, bits and group size also go into each safetensors file's metadata
/// (`ondevice.quantize.*`).
pub fn export(
    source: &Path,
    output: &Path,
    options: MlxOptions,
    progress: &dyn crate::pipeline::StageProgress,
) -> Result<MlxReceipt, QuantizeError> {
    let mut plan = MlxExport::plan(source, options)?;
    progress.stage("hashing inputs");
    let mut inputs = Vec::new();
    for f in plan.inputs() {
        let (name, size) = crate::digest::input_name_and_size(plan.source_root(), f)?;
        inputs.push(crate::pipeline::InputDigest { name, sha256: crate::sha256_file(f)?, size });
    }
    inputs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = Sha256::new();
    for i in &inputs {
        h.update(format!("{}  {}\n", i.sha256, i.name).as_bytes());
    }
    let source_sha256 = hex(&h.finalize());
    let tool = format!("ondevice {}", env!("CARGO_PKG_VERSION"));
    plan.add_metadata("ondevice.quantize.source_sha256", source_sha256.clone());
    plan.add_metadata("ondevice.quantize.tool", tool.clone());
    plan.add_metadata(
        "ondevice.quantize.type",
        format!("mlx affine {}-bit group {}", options.bits, options.group_size),
    );
    progress.stage("quantizing (mlx)");
    struct Adapter<'a>(&'a dyn crate::pipeline::StageProgress);
    impl Progress for Adapter<'_> {
        fn progress(&self, done: u64, total: u64) {
            self.0.report(done, total);
        }
        fn cancelled(&self) -> bool {
            self.0.cancelled()
        }
    }
    let written = plan.write(output, &Adapter(progress))?;
    Ok(MlxReceipt {
        inputs,
        source_sha256,
        tool,
        format: "mlx".into(),
        mode: "affine".into(),
        bits: options.bits,
        group_size: options.group_size,
        source_format: if source.is_dir() { "safetensors" } else { "gguf" }.into(),
        files: written.files,
        output_sha256: written.sha256,
        output_size: written.size,
    })
}

/// SHA-256 over `sha256  name` lines.
pub fn files_digest(files: &[OutputFile]) -> String {
    let mut h = Sha256::new();
    for f in files {
        h.update(format!("{}  {}\n", f.sha256, f.name).as_bytes());
    }
    hex(&h.finalize())
}

struct RemoveDirOnDrop(Option<PathBuf>);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), QuantizeError> {
    let err = |source| QuantizeError::Read { path: path.to_owned(), source };
    let mut f = File::create(path).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, QuantizeError> {
    let err = |source| QuantizeError::Read { path: path.to_owned(), source };
    let f = File::open(path).map_err(err)?;
    let len = f.metadata().map_err(err)?.len();
    if len > cap {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{len} bytes is over the limit of {cap} for a tokenizer file"),
        )));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    f.take(cap).read_to_end(&mut bytes).map_err(err)?;
    Ok(bytes)
}

/// JSON with 4-space indents, as mlx-lm writes it.
fn pretty(value: &Json) -> Vec<u8> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    // Serializing a Value to a Vec cannot fail.
    let _ = serde::Serialize::serialize(value, &mut ser);
    out
}

/// Open source files, reused across tensors.
#[derive(Default)]
struct Reader {
    files: BTreeMap<PathBuf, File>,
}

impl Reader {
    fn file(&mut self, path: &Path) -> Result<&mut File, QuantizeError> {
        if !self.files.contains_key(path) {
            let f = File::open(path).map_err(|source| QuantizeError::Read { path: path.to_owned(), source })?;
            self.files.insert(path.to_owned(), f);
        }
        self.files
            .get_mut(path)
            .ok_or_else(|| QuantizeError::Read { path: path.to_owned(), source: std::io::ErrorKind::NotFound.into() })
    }
}

#[allow(clippy::too_many_arguments)]
fn write_tensor(
    t: &Planned,
    options: MlxOptions,
    reader: &mut Reader,
    w: &mut impl Write,
    path: &Path,
    done: &mut u64,
    total: u64,
    progress: &dyn Progress,
) -> Result<(), QuantizeError> {
    let src = &t.source;
    let file = reader.file(&src.file)?;
    let read_err = |source| QuantizeError::Read { path: src.file.clone(), source };
    file.seek(SeekFrom::Start(src.offset)).map_err(read_err)?;
    let esize = src.dtype.bits() / 8;
    let n = t.n_elements();
    let cols = match (t.shape.len(), src.unpermute_head_dim) {
        (0 | 1, Some(_)) => 1,
        (0 | 1, None) => n.max(1),
        _ => *t.shape.last().unwrap_or(&1),
    };
    let rows = n.checked_div(cols).unwrap_or(0);
    let group = src.unpermute_head_dim.unwrap_or(1);
    let row_bytes = cols * esize;
    let per_chunk = ((CHUNK / (row_bytes * group).max(1)).max(1)) * group;
    let mut raw = Vec::new();
    let mut values: Vec<f32> = Vec::new();
    let mut encoded = Vec::new();
    let mut q = Quantized::default();
    let write_err = |source| QuantizeError::Read { path: path.to_owned(), source };
    let mut row = 0u64;
    while row < rows {
        if progress.cancelled() {
            return Err(QuantizeError::Cancelled);
        }
        let k = per_chunk.min(rows - row);
        raw.resize((k * row_bytes) as usize, 0);
        file.read_exact(&mut raw).map_err(read_err)?;
        values.clear();
        values.extend(raw.chunks_exact(esize as usize).map(|b| t.store.round(element_to_f32(src.dtype, b))));
        if let Some(head_dim) = src.unpermute_head_dim {
            unpermute_heads(&mut values, head_dim as usize, cols as usize);
        }
        if t.quantize {
            q.weight.clear();
            quantize_into(&values, t.store, options, &mut q)?;
            w.write_all(&q.weight).map_err(write_err)?;
        } else {
            encoded.clear();
            for &x in &values {
                t.store.encode(x, &mut encoded);
            }
            w.write_all(&encoded).map_err(write_err)?;
        }
        row += k;
        *done += k * row_bytes;
        progress.progress(*done, total);
    }
    if t.quantize {
        w.write_all(&q.scales).map_err(write_err)?;
        w.write_all(&q.biases).map_err(write_err)?;
    }
    Ok(())
}

/// Undoes llama.cpp's q/k permutation: in each head, row `i * 2 + j` goes back to `j * half + i`.
fn unpermute_heads(values: &mut [f32], head_dim: usize, row_len: usize) {
    let half = head_dim / 2;
    let mut head = vec![0f32; head_dim * row_len];
    for block in values.chunks_exact_mut(head_dim * row_len) {
        for i in 0..half {
            for j in 0..2 {
                let src = (i * 2 + j) * row_len;
                let dst = (j * half + i) * row_len;
                head[dst..dst + row_len].copy_from_slice(&block[src..src + row_len]);
            }
        }
        block.copy_from_slice(&head);
    }
}

/// Whether mlx-lm quantizes this tensor: a `Linear` or `Embedding` weight (every 2-D `.weight` of
/// the llama family) whose rows are whole groups.
fn quantized(name: &str, shape: &[u64], options: MlxOptions) -> bool {
    shape.len() == 2 && name.ends_with(".weight") && shape[1] % options.group_size as u64 == 0
}

/// The architecture mlx-lm would load for `config` (llama, mistral → llama; qwen2), if supported.
fn mlx_architecture(config: &Json) -> Option<&'static str> {
    let architecture = config.get("architectures").and_then(|a| a.get(0)).and_then(Json::as_str).unwrap_or("");
    let model_type = config.get("model_type").and_then(Json::as_str).unwrap_or("");
    match (architecture, model_type) {
        ("LlamaForCausalLM" | "MistralForCausalLM", "llama" | "mistral") => Some("llama"),
        ("Qwen2ForCausalLM", "qwen2") => Some("qwen2"),
        _ => None,
    }
}

fn unknown_architecture(config: &Json) -> QuantizeError {
    QuantizeError::Unsupported {
        what: format!(
            "mlx export supports llama, mistral and qwen2 models (config.json architectures {} model_type {}): this one is not",
            config.get("architectures").cloned().unwrap_or(Json::Null),
            config.get("model_type").cloned().unwrap_or(Json::Null),
        ),
    }
}

/// The float type everything is cast to (`torch_dtype`), as mlx-lm's convert picks it.
fn target_dtype(config: &Json) -> Option<FloatType> {
    config.get("torch_dtype").and_then(Json::as_str).and_then(FloatType::from_torch)
}

fn float_type_of(dtype: Dtype) -> FloatType {
    match dtype {
        Dtype::F16 => FloatType::F16,
        Dtype::BF16 => FloatType::BF16,
        _ => FloatType::F32,
    }
}

/// `config.json` of the output: the source's with the quantization block, keys sorted.
fn output_config(config: &Json, options: MlxOptions) -> Vec<u8> {
    let mut map: BTreeMap<String, Json> = match config {
        Json::Object(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => BTreeMap::new(),
    };
    map.remove("_name_or_path");
    let q = json!({"group_size": options.group_size, "bits": options.bits, "mode": "affine"});
    map.insert("quantization".into(), q.clone());
    map.insert("quantization_config".into(), q);
    let mut object = serde_json::Map::new();
    for (k, v) in map {
        object.insert(k, v);
    }
    pretty(&Json::Object(object))
}

fn plan_hf(dir: &Path, options: MlxOptions) -> Result<MlxExport, QuantizeError> {
    let hf = HfModelDir::open(dir)?;
    let config = hf.config().clone();
    let architecture = mlx_architecture(&config).ok_or_else(|| unknown_architecture(&config))?;
    if config.get("quantization").is_some() || config.get("quantization_config").is_some() {
        return Err(QuantizeError::Unsupported {
            what: "the source is already quantized (config.json has a quantization block): start from the float model"
                .into(),
        });
    }
    let mut sources = BTreeMap::new();
    let mut shapes = BTreeMap::new();
    for file in hf.weight_files() {
        let header = SafetensorsHeader::open(file).map_err(ondevice_gguf::HfDirError::from)?;
        for t in header.tensors() {
            shapes.insert(t.name().to_owned(), t.shape().to_vec());
            sources.insert(t.name().to_owned(), (file.clone(), t.clone()));
        }
    }
    // Names and shapes checked against the config by the GGUF converter's own rules.
    let plan = crate::arch::plan(dir, &config, &shapes)?;
    let tied = config.get("tie_word_embeddings").and_then(Json::as_bool).unwrap_or(true);
    let cast = target_dtype(&config);
    let mut tensors = Vec::new();
    let mut source_bytes = 0u64;
    for m in &plan.tensors {
        if tied && m.source == "lm_head.weight" {
            continue;
        }
        let (file, t) = &sources[&m.source];
        if !crate::numeric::readable(t.dtype()) {
            return Err(QuantizeError::UnsupportedDtype { tensor: m.source.clone(), dtype: t.dtype() });
        }
        source_bytes += t.file_range().end - t.file_range().start;
        let store = cast.unwrap_or_else(|| float_type_of(t.dtype()));
        tensors.push(Planned {
            name: m.source.clone(),
            shape: t.shape().to_vec(),
            quantize: quantized(&m.source, t.shape(), options),
            store,
            source: Source {
                file: file.clone(),
                offset: t.file_range().start,
                dtype: t.dtype(),
                unpermute_head_dim: None,
            },
        });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));

    let mut extras = BTreeMap::new();
    extras.insert("config.json".to_owned(), Extra::Bytes(output_config(&config, options)));
    let mut inputs = vec![dir.join("config.json")];
    let mut tokenizer = false;
    for name in TOKENIZER_FILES {
        let path = dir.join(name);
        if path.is_file() {
            let len =
                std::fs::metadata(&path).map_err(|source| QuantizeError::Read { path: path.clone(), source })?.len();
            if len > MAX_COPY {
                return Err(QuantizeError::Read {
                    path,
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{len} bytes is over the limit of {MAX_COPY}"),
                    ),
                });
            }
            tokenizer |= matches!(name, "tokenizer.json" | "tokenizer.model" | "vocab.json");
            inputs.push(path.clone());
            extras.insert(name.to_owned(), Extra::Copy(path));
        }
    }
    if !tokenizer {
        return Err(QuantizeError::Tokenizer {
            dir: dir.to_owned(),
            problem:
                "no tokenizer.json, tokenizer.model or vocab.json: mlx-lm needs the tokenizer files beside the weights"
                    .into(),
        });
    }
    inputs.extend(hf.weight_files().iter().cloned());
    Ok(MlxExport {
        options,
        tensors,
        extras,
        inputs,
        source_root: dir.to_owned(),
        source_bytes,
        architecture,
        metadata: BTreeMap::new(),
    })
}

/// GGUF tensor name → Hugging Face name, for the llama family.
fn hf_name(gguf: &str) -> Option<String> {
    Some(match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        _ => {
            let rest = gguf.strip_prefix("blk.")?;
            let (block, part) = rest.split_once('.')?;
            let block: u64 = block.parse().ok()?;
            let (stem, kind) = part.rsplit_once('.')?;
            if kind != "weight" && kind != "bias" {
                return None;
            }
            let hf = match stem {
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{block}.{hf}.{kind}")
        }
    })
}

fn gguf_problem(path: &Path, what: impl std::fmt::Display) -> QuantizeError {
    QuantizeError::Unsupported { what: format!("{}: {what}", path.display()) }
}

fn plan_gguf(path: &Path, options: MlxOptions) -> Result<MlxExport, QuantizeError> {
    let file = GgufFile::open(path)?;
    let arch = file.architecture().unwrap_or("");
    let (architecture, hf_arch, model_type, permute) = match arch {
        "llama" => ("llama", "LlamaForCausalLM", "llama", true),
        "qwen2" => ("qwen2", "Qwen2ForCausalLM", "qwen2", false),
        other => {
            return Err(gguf_problem(
                path,
                format!("mlx export supports llama and qwen2 GGUF files, this one is {other:?}"),
            ));
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let need = |k: &str| {
        file.get_u64(&key(k))
            .filter(|v| (1..=1 << 24).contains(v))
            .ok_or_else(|| gguf_problem(path, format!("{} is missing or out of range", key(k))))
    };
    let hidden = need("embedding_length")?;
    let layers = need("block_count")?;
    let heads = need("attention.head_count")?;
    let kv_heads = file.get_u64(&key("attention.head_count_kv")).unwrap_or(heads);
    let ff = need("feed_forward_length")?;
    let ctx = need("context_length")?;
    let eps = file.get(&key("attention.layer_norm_rms_epsilon")).and_then(Value::as_f64).unwrap_or(1e-6);
    let theta = file.get(&key("rope.freq_base")).and_then(Value::as_f64).unwrap_or(10_000.0);
    let head_dim = file.get_u64(&key("attention.key_length")).unwrap_or(hidden / heads.max(1));

    let mut shapes = BTreeMap::new();
    let mut by_name = BTreeMap::new();
    let mut n_vocab = 0;
    for t in file.tensors() {
        let name = hf_name(t.name()).ok_or_else(|| {
            gguf_problem(path, format!("tensor {:?} is not part of the {arch} architecture", t.name()))
        })?;
        let dtype = match t.ggml_type() {
            GgmlType::F32 => Dtype::F32,
            GgmlType::F16 => Dtype::F16,
            GgmlType::BF16 => Dtype::BF16,
            other => {
                return Err(gguf_problem(
                    path,
                    format!(
                        "tensor {:?} is {other}: mlx export reads F32, F16 or BF16 GGUF files (quantize from the float model)",
                        t.name()
                    ),
                ));
            }
        };
        let shape: Vec<u64> = t.dims().iter().rev().copied().collect();
        if name == "model.embed_tokens.weight" {
            n_vocab = shape.first().copied().unwrap_or(0);
        }
        shapes.insert(name.clone(), shape);
        by_name.insert(name, (t.clone(), dtype));
    }
    let store = match by_name.get("model.embed_tokens.weight").map(|(_, d)| *d) {
        Some(Dtype::F16) => FloatType::F16,
        Some(Dtype::BF16) => FloatType::BF16,
        _ => FloatType::F32,
    };
    let tied = !by_name.contains_key("lm_head.weight");
    let mut config = serde_json::Map::new();
    config.insert("architectures".into(), json!([hf_arch]));
    config.insert("model_type".into(), json!(model_type));
    config.insert("hidden_size".into(), json!(hidden));
    config.insert("intermediate_size".into(), json!(ff));
    config.insert("num_hidden_layers".into(), json!(layers));
    config.insert("num_attention_heads".into(), json!(heads));
    config.insert("num_key_value_heads".into(), json!(kv_heads));
    config.insert("head_dim".into(), json!(head_dim));
    config.insert("max_position_embeddings".into(), json!(ctx));
    config.insert("rms_norm_eps".into(), json!(eps as f32 as f64));
    config.insert("rope_theta".into(), json!(theta as f32 as f64));
    config.insert("vocab_size".into(), json!(n_vocab));
    config.insert("tie_word_embeddings".into(), json!(tied));
    config.insert("torch_dtype".into(), json!(store.torch_name()));
    let tokenizer = crate::mlx_tokenizer::from_gguf(path, &file)?;
    if let Some(id) = tokenizer.bos_id {
        config.insert("bos_token_id".into(), json!(id));
    }
    if let Some(id) = tokenizer.eos_id {
        config.insert("eos_token_id".into(), json!(id));
    }
    let config = Json::Object(config);
    let dir = path.parent().unwrap_or(Path::new("."));
    let plan = crate::arch::plan(dir, &config, &shapes)?;

    let mut tensors = Vec::new();
    let mut source_bytes = 0u64;
    for m in &plan.tensors {
        let (t, dtype) = &by_name[&m.source];
        source_bytes += t.n_bytes();
        let rope = m.source.ends_with("self_attn.q_proj.weight")
            || m.source.ends_with("self_attn.k_proj.weight")
            || m.source.ends_with("self_attn.q_proj.bias")
            || m.source.ends_with("self_attn.k_proj.bias");
        tensors.push(Planned {
            name: m.source.clone(),
            shape: m.shape.clone(),
            quantize: quantized(&m.source, &m.shape, options),
            store,
            source: Source {
                file: path.to_owned(),
                offset: t.file_range().start,
                dtype: *dtype,
                unpermute_head_dim: (permute && rope).then_some(head_dim),
            },
        });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut extras = BTreeMap::new();
    extras.insert("config.json".to_owned(), Extra::Bytes(output_config(&config, options)));
    extras.insert("tokenizer.json".to_owned(), Extra::Bytes(tokenizer.tokenizer_json));
    extras.insert("tokenizer_config.json".to_owned(), Extra::Bytes(tokenizer.tokenizer_config));
    Ok(MlxExport {
        options,
        tensors,
        extras,
        inputs: vec![path.to_owned()],
        source_root: dir.to_owned(),
        source_bytes,
        architecture,
        metadata: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(bits: u32, group_size: usize) -> MlxOptions {
        MlxOptions::new(bits, group_size).unwrap()
    }

    #[test]
    fn options_are_checked() {
        assert!(MlxOptions::new(7, 64).unwrap_err().to_string().contains("2, 3, 4, 5, 6 or 8"));
        assert!(MlxOptions::new(4, 16).unwrap_err().to_string().contains("32, 64 or 128"));
    }

    #[test]
    fn four_bit_group_packs_low_nibble_first() {
        // 0..31 in one group of 32: min 0, max 31, scale 31/15; q = round(x / scale).
        let values: Vec<f32> = (0..32).map(|i| i as f32).collect();
        let q = quantize(&values, FloatType::F32, opts(4, 32)).unwrap();
        assert_eq!(q.weight.len(), 16);
        assert_eq!(q.scales.len(), 4);
        // max (31) is the edge: scale negative, q0 = rint(31 / -(31/15)) = -15, scale = 31 / -15, bias 31.
        let scale = f32::from_le_bytes(q.scales[..4].try_into().unwrap());
        let bias = f32::from_le_bytes(q.biases[..4].try_into().unwrap());
        assert_eq!(bias, 31.0);
        assert_eq!(scale, 31.0 / -15.0);
        // x = 0 → (0 - 31) / (-31/15) = 15; x = 31 → 0.
        assert_eq!(q.weight[0] & 0x0f, 15);
        assert_eq!(q.weight[15] >> 4, 0);
    }

    #[test]
    fn a_zero_group_has_zero_bias_and_the_smallest_scale() {
        let q = quantize(&[0.0; 64], FloatType::F16, opts(3, 64)).unwrap();
        assert_eq!(q.weight, vec![0; 24]);
        assert_eq!(q.biases, vec![0, 0]);
        // -1e-7 as a half: a subnormal.
        assert_eq!(u16::from_le_bytes([q.scales[0], q.scales[1]]), f32_to_f16(-1e-7));
    }

    #[test]
    fn non_finite_weights_are_refused() {
        let mut v = vec![0.5f32; 32];
        v[3] = f32::NAN;
        assert!(quantize(&v, FloatType::BF16, opts(8, 32)).is_err());
    }

    #[test]
    fn unpermute_inverts_the_converters_permutation() {
        // [a0 b0 a1 b1] (interleaved) → [a0 a1 b0 b1].
        let mut v = vec![0.0, 10.0, 1.0, 11.0];
        unpermute_heads(&mut v, 4, 1);
        assert_eq!(v, vec![0.0, 1.0, 10.0, 11.0]);
    }

    #[test]
    fn linear_and_embedding_weights_are_quantized_when_rows_are_whole_groups() {
        let o = opts(4, 64);
        assert!(quantized("model.layers.0.self_attn.q_proj.weight", &[576, 576], o));
        assert!(quantized("model.embed_tokens.weight", &[49152, 576], o));
        assert!(!quantized("model.layers.0.input_layernorm.weight", &[576], o));
        assert!(!quantized("model.layers.0.self_attn.q_proj.bias", &[576], o));
        assert!(!quantized("model.layers.0.mlp.down_proj.weight", &[576, 1530], o));
    }
}
