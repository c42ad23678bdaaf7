//! Hugging Face model directories: `config.json` plus safetensors weights,
//! either every `*.safetensors` file in the directory or the shards named by
//! `model.safetensors.index.json`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::limits::MAX_JSON_FILE_LEN;
use crate::safetensors::{Dtype, SafetensorsError, SafetensorsHeader};

const CONFIG: &str = "config.json";
const INDEX: &str = "model.safetensors.index.json";

/// What went wrong while reading a Hugging Face model directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HfDirError {
    /// A file or the directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A JSON file is over [`MAX_JSON_FILE_LEN`].
    #[error("{} is {len} bytes, over the limit of {max}", path.display())]
    JsonTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// A JSON file does not parse, or is not of the expected shape.
    #[error("invalid json in {}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// `config.json` is not a JSON object.
    #[error("{} must hold a json object", path.display())]
    ConfigNotObject {
        /// The file.
        path: PathBuf,
    },
    /// The index names a shard that is not a plain file name in the directory.
    #[error("{} names shard {shard:?}, which is not a plain file name", path.display())]
    InvalidShardName {
        /// The index file.
        path: PathBuf,
        /// The shard name.
        shard: String,
    },
    /// The index maps a tensor to a shard that does not hold it.
    #[error("{} maps tensor {tensor:?} to {shard:?}, which does not hold it", path.display())]
    IndexMismatch {
        /// The index file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The shard.
        shard: String,
    },
    /// The directory holds no safetensors weights.
    #[error("{} holds no *.safetensors files: download the model's safetensors weights", dir.display())]
    NoWeights {
        /// The directory.
        dir: PathBuf,
    },
    /// Two weight files hold a tensor of the same name.
    #[error("tensor {tensor:?} appears in both {} and {}", first.display(), second.display())]
    DuplicateTensor {
        /// The tensor.
        tensor: String,
        /// The first file holding it.
        first: PathBuf,
        /// The second file holding it.
        second: PathBuf,
    },
    /// A weight file is not a valid safetensors file.
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
}

/// A summary of a Hugging Face model directory.
#[derive(Debug, Clone)]
pub struct HfModelDir {
    dir: PathBuf,
    config: serde_json::Value,
    weight_files: Vec<PathBuf>,
    tensor_count: usize,
    parameters_by_dtype: BTreeMap<Dtype, u64>,
}

impl HfModelDir {
    /// Reads `config.json` and every weight file's header in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, HfDirError> {
        let dir = dir.as_ref().to_owned();
        let config_path = dir.join(CONFIG);
        let config = read_json(&config_path)?;
        if !config.is_object() {
            return Err(HfDirError::ConfigNotObject { path: config_path });
        }

        let index_path = dir.join(INDEX);
        let (weight_files, index) = if index_path.is_file() {
            let index = read_index(&index_path)?;
            let files: BTreeSet<&str> = index.values().map(String::as_str).collect();
            (files.iter().map(|f| dir.join(f)).collect(), Some(index))
        } else {
            (list_safetensors(&dir)?, None)
        };
        if weight_files.is_empty() {
            return Err(HfDirError::NoWeights { dir });
        }

        let mut owner: HashMap<String, PathBuf> = HashMap::new();
        let mut parameters_by_dtype = BTreeMap::new();
        for path in &weight_files {
            let header = SafetensorsHeader::open(path)?;
            for t in header.tensors() {
                if let Some(first) = owner.insert(t.name().to_owned(), path.clone()) {
                    return Err(HfDirError::DuplicateTensor {
                        tensor: t.name().to_owned(),
                        first,
                        second: path.clone(),
                    });
                }
                let n: &mut u64 = parameters_by_dtype.entry(t.dtype()).or_default();
                *n = n.saturating_add(t.n_elements());
            }
        }
        if let Some(index) = index {
            for (tensor, shard) in index {
                if owner.get(&tensor) != Some(&dir.join(&shard)) {
                    return Err(HfDirError::IndexMismatch { path: index_path, tensor, shard });
                }
            }
        }

        Ok(HfModelDir { dir, config, tensor_count: owner.len(), weight_files, parameters_by_dtype })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `config.json`, as loose JSON.
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// The first entry of `architectures`, e.g. `BertModel`.
    pub fn architecture(&self) -> Option<&str> {
        self.config.get("architectures")?.get(0)?.as_str()
    }

    /// `model_type`, e.g. `bert`.
    pub fn model_type(&self) -> Option<&str> {
        self.config.get("model_type")?.as_str()
    }

    /// The context length: `max_position_embeddings` (or `n_positions`,
    /// `max_sequence_length`, `seq_length`), at the top level or in
    /// `text_config`.
    pub fn context_length(&self) -> Option<u64> {
        const KEYS: [&str; 4] = ["max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"];
        let from = |v: &serde_json::Value| KEYS.iter().find_map(|k| v.get(k)?.as_u64());
        from(&self.config).or_else(|| from(self.config.get("text_config")?))
    }

    /// The weight files read, in name order.
    pub fn weight_files(&self) -> &[PathBuf] {
        &self.weight_files
    }

    /// Number of tensors across all weight files.
    pub fn tensor_count(&self) -> usize {
        self.tensor_count
    }

    /// Total number of parameters (elements) across all weight files.
    pub fn parameter_count(&self) -> u64 {
        self.parameters_by_dtype.values().fold(0u64, |acc, &n| acc.saturating_add(n))
    }

    /// Parameters per dtype.
    pub fn parameters_by_dtype(&self) -> &BTreeMap<Dtype, u64> {
        &self.parameters_by_dtype
    }

    /// The dtypes present, in a fixed order.
    pub fn dtypes(&self) -> Vec<Dtype> {
        self.parameters_by_dtype.keys().copied().collect()
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> HfDirError + '_ {
    move |source| HfDirError::Io { path: path.to_owned(), source }
}

fn read_json(path: &Path) -> Result<serde_json::Value, HfDirError> {
    let file = File::open(path).map_err(io_error(path))?;
    let len = file.metadata().map_err(io_error(path))?.len();
    if len > MAX_JSON_FILE_LEN {
        return Err(HfDirError::JsonTooLarge { path: path.to_owned(), len, max: MAX_JSON_FILE_LEN });
    }
    let mut bytes = Vec::new();
    file.take(MAX_JSON_FILE_LEN).read_to_end(&mut bytes).map_err(io_error(path))?;
    serde_json::from_slice(&bytes).map_err(|source| HfDirError::Json { path: path.to_owned(), source })
}

/// The index's `weight_map`, tensor name to shard file name.
fn read_index(path: &Path) -> Result<BTreeMap<String, String>, HfDirError> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let json = read_json(path)?;
    let index: Index =
        serde_json::from_value(json).map_err(|source| HfDirError::Json { path: path.to_owned(), source })?;
    for shard in index.weight_map.values() {
        let plain = !shard.is_empty()
            && shard != "."
            && shard != ".."
            && !shard.contains(['/', '\\', '\0'])
            && !shard.contains(':');
        if !plain {
            return Err(HfDirError::InvalidShardName { path: path.to_owned(), shard: shard.clone() });
        }
    }
    Ok(index.weight_map)
}

fn list_safetensors(dir: &Path) -> Result<Vec<PathBuf>, HfDirError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        let is_weights = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".safetensors"));
        if is_weights && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
