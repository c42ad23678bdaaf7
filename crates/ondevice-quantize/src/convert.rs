//! The converter: a Hugging Face safetensors directory → a GGUF file of type F32, F16, BF16 or
//! Q8_0, streamed tensor by tensor through [`ondevice_gguf::GgufStreamWriter`].
//!
//! [`Conversion::plan`] reads and checks everything first (config, every safetensors header, every
//! tensor's name, dtype and shape against the config, the tokenizer) and declares the whole GGUF
//! header; only then does [`Conversion::write`] create a file, so hostile or inconsistent input is
//! refused before anything is written. Memory: one chunk of rows (at most a few MiB) at a time, never
//! a whole tensor. The output is written atomically (temporary file, fsync, rename) and is a function
//! of the input and the options only.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ondevice_gguf::{Dtype, GgmlType, GgufHeader, HfModelDir, SafetensorsHeader, Value};

use crate::Progress;
use crate::arch::{self, Transform};
use crate::error::QuantizeError;
use crate::numeric::{QK8_0, element_to_f32, encode_row, readable};
use crate::tokenizer;

/// Source bytes read at once (rounded to whole rows, or whole heads for permuted tensors).
const CHUNK: u64 = 4 << 20;

/// The element type of a conversion's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutType {
    /// 32-bit float everywhere.
    F32,
    /// 16-bit float for matrices; norms, biases and position/type embeddings stay F32.
    F16,
    /// bfloat16 for matrices; the rest as for F16.
    BF16,
    /// 8-bit blocks for matrices (F16 for a matrix whose rows are not a multiple of 32).
    Q8_0,
}

impl OutType {
    /// Every output type, in order.
    pub const ALL: [OutType; 4] = [OutType::F32, OutType::F16, OutType::BF16, OutType::Q8_0];

    /// The name, as on the command line (`F16`).
    pub fn name(self) -> &'static str {
        match self {
            OutType::F32 => "F32",
            OutType::F16 => "F16",
            OutType::BF16 => "BF16",
            OutType::Q8_0 => "Q8_0",
        }
    }

    /// The type with this name (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// `general.file_type` (`enum llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            OutType::F32 => 0,
            OutType::F16 => 1,
            OutType::Q8_0 => 7,
            OutType::BF16 => 32,
        }
    }

    fn matrix_type(self) -> GgmlType {
        match self {
            OutType::F32 => GgmlType::F32,
            OutType::F16 => GgmlType::F16,
            OutType::BF16 => GgmlType::BF16,
            OutType::Q8_0 => GgmlType::Q8_0,
        }
    }
}

/// What to convert to.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// The output type.
    pub out_type: OutType,
    /// `general.name`; by default the directory's name.
    pub name: Option<String>,
}

/// One tensor to write: where its data is and what becomes of it.
#[derive(Debug, Clone)]
struct Job {
    target: String,
    file: PathBuf,
    offset: u64,
    dtype: Dtype,
    /// Safetensors shape, outermost first.
    shape: Vec<u64>,
    out: GgmlType,
    transform: Transform,
}

/// A checked conversion, ready to write.
#[derive(Debug)]
pub struct Conversion {
    dir: PathBuf,
    header: GgufHeader,
    jobs: Vec<Job>,
    inputs: Vec<PathBuf>,
    source_bytes: u64,
    architecture: &'static str,
    tokenizer: (&'static str, String),
    metadata_tail: Vec<(String, Value)>,
    finalised: bool,
}

/// A written conversion.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The output file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub len: u64,
    /// SHA-256 of its bytes, as 64 lowercase hex digits.
    pub sha256: String,
}

impl Conversion {
    /// Reads and checks the model directory `dir` and plans its conversion; writes nothing.
    pub fn plan(dir: impl AsRef<Path>, options: &ConvertOptions) -> Result<Self, QuantizeError> {
        let dir = dir.as_ref().to_owned();
        let hf = HfModelDir::open(&dir)?;
        let config = hf.config().clone();

        // Every tensor of every weight file, name → (file, header entry).
        let mut sources = BTreeMap::new();
        let mut shapes = BTreeMap::new();
        for file in hf.weight_files() {
            let header = SafetensorsHeader::open(file).map_err(ondevice_gguf::HfDirError::from)?;
            for t in header.tensors() {
                shapes.insert(t.name().to_owned(), t.shape().to_vec());
                sources.insert(t.name().to_owned(), (file.clone(), t.clone()));
            }
        }
        let plan = arch::plan(&dir, &config, &shapes)?;
        let n_vocab = usize::try_from(plan.n_vocab).unwrap_or(usize::MAX);
        if n_vocab == 0 || n_vocab > 1 << 24 {
            return Err(QuantizeError::Config {
                dir: dir.clone(),
                key: "vocab_size".into(),
                problem: format!("the token embeddings have {n_vocab} rows"),
            });
        }
        let tok = tokenizer::convert(&dir, n_vocab, &config)?;

        let mut jobs = Vec::with_capacity(plan.tensors.len());
        let mut source_bytes = 0u64;
        for m in &plan.tensors {
            let (file, t) = &sources[&m.source];
            if t.shape() != m.shape.as_slice() {
                return Err(QuantizeError::TensorShape {
                    tensor: m.source.clone(),
                    expected: m.shape.clone(),
                    found: t.shape().to_vec(),
                });
            }
            if !readable(t.dtype()) {
                return Err(QuantizeError::UnsupportedDtype { tensor: m.source.clone(), dtype: t.dtype() });
            }
            let row = m.shape.last().copied().unwrap_or(1);
            let out = out_type(options.out_type, &m.target, m.shape.len(), row);
            source_bytes += t.file_range().end - t.file_range().start;
            jobs.push(Job {
                target: m.target.clone(),
                file: file.clone(),
                offset: t.file_range().start,
                dtype: t.dtype(),
                shape: m.shape.clone(),
                out,
                transform: m.transform,
            });
        }

        let name = options.name.clone().unwrap_or_else(|| {
            dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
        });
        let mut header = GgufHeader::new();
        header.add_metadata("general.architecture", Value::String(plan.name.into()))?;
        header.add_metadata("general.type", Value::String("model".into()))?;
        header.add_metadata("general.name", Value::String(name))?;
        for (k, v) in plan.metadata {
            header.add_metadata(k, v)?;
        }
        header.add_metadata("general.file_type", Value::U32(options.out_type.file_type()))?;
        header.add_metadata("general.quantization_version", Value::U32(2))?;
        let model = tok.model;
        let pre = tok.pre.clone();
        let metadata_tail = tok.entries;

        let mut inputs: Vec<PathBuf> = ["config.json", "tokenizer.json", "tokenizer_config.json", "modules.json"]
            .iter()
            .map(|f| dir.join(f))
            .filter(|p| p.is_file())
            .collect();
        inputs.extend(hf.weight_files().iter().cloned());
        Ok(Conversion {
            dir,
            header,
            jobs,
            inputs,
            source_bytes,
            architecture: plan.name,
            tokenizer: (model, pre),
            metadata_tail,
            finalised: false,
        })
    }

    /// `general.architecture` of the output.
    pub fn architecture(&self) -> &'static str {
        self.architecture
    }

    /// `tokenizer.ggml.model` and `tokenizer.ggml.pre` of the output.
    pub fn tokenizer(&self) -> (&'static str, &str) {
        (self.tokenizer.0, &self.tokenizer.1)
    }

    /// The files the output depends on (config, tokenizer, weights): what a provenance record
    /// hashes.
    pub fn inputs(&self) -> &[PathBuf] {
        &self.inputs
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of tensor data read from the source.
    pub fn source_bytes(&self) -> u64 {
        self.source_bytes
    }

    /// Output tensors: GGUF name and type, in order.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, GgmlType)> {
        self.jobs.iter().map(|j| (j.target.as_str(), j.out))
    }

    /// Adds a metadata entry (written after the tokenizer's).
    pub fn add_metadata(&mut self, key: impl Into<String>, value: Value) -> Result<(), QuantizeError> {
        self.metadata_tail.push((key.into(), value));
        Ok(())
    }

    fn finalise(&mut self) -> Result<(), QuantizeError> {
        if self.finalised {
            return Ok(());
        }
        for (k, v) in std::mem::take(&mut self.metadata_tail) {
            self.header.add_metadata(k, v)?;
        }
        for j in &self.jobs {
            let dims: Vec<u64> = j.shape.iter().rev().copied().collect();
            self.header.add_tensor(j.target.clone(), &dims, j.out)?;
        }
        self.finalised = true;
        Ok(())
    }

    /// Size of the output file in bytes.
    pub fn file_len(&mut self) -> Result<u64, QuantizeError> {
        self.finalise()?;
        Ok(self.header.file_len())
    }

    /// Writes the GGUF to `out` atomically. `progress` hears about source bytes converted and is
    /// asked between chunks whether to stop; on cancel or any error no file is left.
    pub fn write(mut self, out: impl AsRef<Path>, progress: &dyn Progress) -> Result<Converted, QuantizeError> {
        self.finalise()?;
        let total = self.source_bytes;
        let jobs = std::mem::take(&mut self.jobs);
        let header = self.header;
        let mut files: HashMap<PathBuf, File> = HashMap::new();
        let mut done = 0u64;
        let finished = header.write_atomic(out.as_ref(), |w| -> Result<(), QuantizeError> {
            let mut raw = Vec::new();
            let mut values = Vec::new();
            let mut encoded = Vec::new();
            for job in &jobs {
                let file = match files.get_mut(&job.file) {
                    Some(f) => f,
                    None => {
                        let f = File::open(&job.file)
                            .map_err(|source| QuantizeError::Read { path: job.file.clone(), source })?;
                        files.entry(job.file.clone()).or_insert(f)
                    }
                };
                let read_err = |source| QuantizeError::Read { path: job.file.clone(), source };
                file.seek(SeekFrom::Start(job.offset)).map_err(read_err)?;
                let esize = job.dtype.bits() / 8;
                let (row_len, n_rows) = rows(job);
                let group = match job.transform {
                    Transform::PermuteHeads { head_dim } => head_dim,
                    Transform::None => 1,
                };
                let row_bytes = row_len * esize;
                let per_chunk = ((CHUNK / (row_bytes * group).max(1)).max(1)) * group;
                let mut sink = w.tensor_writer(&job.target)?;
                let mut row = 0u64;
                while row < n_rows {
                    if progress.cancelled() {
                        return Err(QuantizeError::Cancelled);
                    }
                    let n = per_chunk.min(n_rows - row);
                    raw.resize((n * row_bytes) as usize, 0);
                    file.read_exact(&mut raw).map_err(read_err)?;
                    values.clear();
                    values.extend(raw.chunks_exact(esize as usize).map(|b| element_to_f32(job.dtype, b)));
                    if let Transform::PermuteHeads { head_dim } = job.transform {
                        permute_heads(&mut values, head_dim as usize, row_len as usize);
                    }
                    encoded.clear();
                    for r in values.chunks_exact(row_len as usize) {
                        encode_row(job.out, r, &mut encoded);
                    }
                    sink.write_all(&encoded).map_err(|e| match e.downcast::<ondevice_gguf::GgufWriteError>() {
                        Ok(w) => QuantizeError::Write(w),
                        Err(e) => QuantizeError::Write(ondevice_gguf::GgufWriteError::Io { offset: 0, source: e }),
                    })?;
                    row += n;
                    done += n * row_bytes;
                    progress.progress(done, total);
                }
                sink.finish()?;
            }
            Ok(())
        })?;
        Ok(Converted { path: finished.output().clone(), len: finished.len(), sha256: finished.sha256_hex() })
    }
}

/// Row length and row count of a job's source (a 1-D tensor that is permuted is a column of rows
/// of one element).
fn rows(job: &Job) -> (u64, u64) {
    let n: u64 = job.shape.iter().product();
    match (job.shape.len(), job.transform) {
        (0, _) => (1, 1),
        (1, Transform::PermuteHeads { .. }) => (1, n),
        _ => {
            let row = *job.shape.last().unwrap_or(&1);
            (row, n.checked_div(row).unwrap_or(0))
        }
    }
}

/// llama.cpp's q/k `permute`: in each head of `head_dim` rows, row `j * head_dim/2 + i` moves to
/// `i * 2 + j`.
fn permute_heads(values: &mut [f32], head_dim: usize, row_len: usize) {
    let half = head_dim / 2;
    let mut head = vec![0f32; head_dim * row_len];
    for block in values.chunks_exact_mut(head_dim * row_len) {
        for i in 0..half {
            for j in 0..2 {
                let src = (j * half + i) * row_len;
                let dst = (i * 2 + j) * row_len;
                head[dst..dst + row_len].copy_from_slice(&block[src..src + row_len]);
            }
        }
        block.copy_from_slice(&head);
    }
}

/// The type a tensor is stored as, by llama.cpp's converter's rules: vectors and norms stay F32,
/// as do position and token-type embeddings; Q8_0 falls back to F16 for rows that are not whole
/// blocks.
fn out_type(out: OutType, target: &str, n_dims: usize, row: u64) -> GgmlType {
    if n_dims <= 1
        || target.ends_with("_norm.weight")
        || target == "position_embd.weight"
        || target == "token_types.weight"
    {
        return GgmlType::F32;
    }
    let t = out.matrix_type();
    if t == GgmlType::Q8_0 && row % QK8_0 as u64 != 0 {
        return GgmlType::F16;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_interleaves_the_two_halves_of_each_head() {
        // Two heads of 4 rows of 1: [a0 a1 b0 b1] → [a0 b0 a1 b1].
        let mut v = vec![0.0, 1.0, 10.0, 11.0, 20.0, 21.0, 30.0, 31.0];
        permute_heads(&mut v, 4, 1);
        assert_eq!(v, vec![0.0, 10.0, 1.0, 11.0, 20.0, 30.0, 21.0, 31.0]);
        // Rows of 2 move whole.
        let mut v = vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5];
        permute_heads(&mut v, 4, 2);
        assert_eq!(v, vec![0.0, 0.5, 2.0, 2.5, 1.0, 1.5, 3.0, 3.5]);
    }

    #[test]
    fn storage_types_follow_the_reference_converter() {
        assert_eq!(out_type(OutType::F16, "blk.0.attn_q.weight", 2, 64), GgmlType::F16);
        assert_eq!(out_type(OutType::F16, "blk.0.attn_q.bias", 1, 64), GgmlType::F32);
        assert_eq!(out_type(OutType::Q8_0, "position_embd.weight", 2, 64), GgmlType::F32);
        assert_eq!(out_type(OutType::Q8_0, "token_embd.weight", 2, 64), GgmlType::Q8_0);
        assert_eq!(out_type(OutType::Q8_0, "token_embd.weight", 2, 48), GgmlType::F16);
        assert_eq!(out_type(OutType::BF16, "output_norm.weight", 2, 64), GgmlType::F32);
    }
}
