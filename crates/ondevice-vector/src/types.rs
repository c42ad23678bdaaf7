//! The domain types of the vector store: a collection's settings, documents as backends store
//! them, metadata filters and query hits. `CollectionSpec` is `Serialize` because backends store it
//! as JSON (a file format); the HTTP/gRPC wire types live in the server.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::VectorError;

/// How two vectors are compared. Scores are "higher is closer" for every distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    /// Cosine similarity (score = cosine, distance = 1 − cosine).
    #[default]
    Cosine,
    /// Inner product (score = dot product, distance = 1 − dot).
    Dot,
    /// Squared Euclidean distance (score = −distance).
    L2,
}

impl Distance {
    /// `cosine`, `dot` or `l2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Distance::Cosine => "cosine",
            Distance::Dot => "dot",
            Distance::L2 => "l2",
        }
    }

    /// Parses `cosine`, `dot` or `l2`.
    pub fn parse(s: &str) -> Result<Distance, VectorError> {
        match s {
            "cosine" => Ok(Distance::Cosine),
            "dot" | "ip" => Ok(Distance::Dot),
            "l2" | "euclidean" => Ok(Distance::L2),
            other => Err(VectorError::InvalidRequest(format!("unknown distance {other:?}: use cosine, dot or l2"))),
        }
    }

    /// The distance between `a` and `b` as the backends define it (smaller is closer).
    pub fn distance(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Distance::Cosine => {
                let [dot, na, nb] = lanes(a, b, |x, y| [x * y, x * x, y * y]);
                let denom = (na * nb).sqrt();
                if denom == 0.0 { 1.0 } else { 1.0 - dot / denom }
            }
            Distance::Dot => 1.0 - lanes(a, b, |x, y| [x * y])[0],
            Distance::L2 => lanes(a, b, |x, y| [(x - y) * (x - y)])[0],
        }
    }

    /// The score shown for a distance (higher is closer).
    pub fn score(self, distance: f32) -> f32 {
        match self {
            Distance::Cosine | Distance::Dot => 1.0 - distance,
            Distance::L2 => -distance,
        }
    }
}

/// Sums of `f(a[i], b[i])` over `i` (up to the shorter slice), in 8 independent lanes so the
/// compiler keeps them in SIMD registers (a single running sum is a serial chain it may not
/// reorder); exact searches over 100k vectors spend their time here.
#[inline]
fn lanes<const N: usize>(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> [f32; N]) -> [f32; N] {
    const W: usize = 8;
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let mut acc = [[0f32; W]; N];
    let (ca, cb) = (a.chunks_exact(W), b.chunks_exact(W));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (xa, xb) in ca.zip(cb) {
        for l in 0..W {
            let v = f(xa[l], xb[l]);
            for (n, acc) in acc.iter_mut().enumerate() {
                acc[l] += v[n];
            }
        }
    }
    let mut out = [0f32; N];
    for (n, o) in out.iter_mut().enumerate() {
        *o = acc[n].iter().sum();
    }
    for (x, y) in ra.iter().zip(rb) {
        let v = f(*x, *y);
        for (n, o) in out.iter_mut().enumerate() {
            *o += v[n];
        }
    }
    out
}

/// What happens to a chunk longer than the collection's `max_input_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TokenPolicy {
    /// Cut it to the limit.
    #[default]
    Truncate,
    /// Refuse the document.
    Error,
}

/// How documents are cut into chunks, stored with the collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkingSettings {
    /// Largest chunk, in the embedding model's tokens.
    pub max_tokens: u32,
    /// Tokens shared by neighbouring chunks.
    pub overlap_tokens: u32,
}

impl Default for ChunkingSettings {
    fn default() -> Self {
        ChunkingSettings { max_tokens: 256, overlap_tokens: 32 }
    }
}

/// HNSW parameters (both backends build an HNSW graph).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexParams {
    /// Links per node (`M`).
    pub m: u32,
    /// Candidate list size while building (`efConstruction`).
    pub ef_construction: u32,
    /// Candidate list size while searching (`ef`), at least `k`.
    pub ef_search: u32,
}

impl Default for IndexParams {
    fn default() -> Self {
        IndexParams { m: 16, ef_construction: 128, ef_search: 96 }
    }
}

/// Everything fixed when a collection is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionSpec {
    /// The collection's name (`[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`).
    pub name: String,
    /// The embedding model as the user named it.
    pub model: String,
    /// The model pinned: its registry digest (`sha256:…`), or `runtime:NAME` for a model a
    /// configured runtime serves.
    pub model_digest: String,
    /// Vector length.
    pub dimension: u32,
    /// How vectors are compared.
    pub distance: Distance,
    /// How documents are cut.
    pub chunking: ChunkingSettings,
    /// Longest text sent to the embedding model, in tokens.
    pub max_input_tokens: u32,
    /// What happens to longer texts.
    pub token_policy: TokenPolicy,
    /// HNSW parameters.
    #[serde(default)]
    pub index: IndexParams,
}

/// A collection as a backend reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionRecord {
    /// Its settings.
    pub spec: CollectionSpec,
    /// `embedded` or `pgvector`.
    pub backend: &'static str,
    /// Documents stored.
    pub documents: u64,
    /// Chunks (vectors) stored.
    pub chunks: u64,
    /// Bytes of the ANN index (file or relation), when known.
    pub index_bytes: Option<u64>,
    /// Unix seconds.
    pub created_at: i64,
}

/// Metadata of a document: a JSON object.
pub type Metadata = Map<String, Value>;

/// One chunk to store, with its vector.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkWrite {
    /// The chunk's text.
    pub text: String,
    /// Its embedding.
    pub embedding: Vec<f32>,
}

/// A document to store: replaces every chunk of a document with the same id, atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentWrite {
    /// The document id, unique in its collection.
    pub id: String,
    /// Where it came from (a path or URL), shown with hits.
    pub source: Option<String>,
    /// `sha256:` of its content, to skip unchanged documents.
    pub content_hash: String,
    /// Its metadata, which filters match.
    pub metadata: Metadata,
    /// Its chunks in order.
    pub chunks: Vec<ChunkWrite>,
}

/// A stored chunk, as the re-embed job reads it back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDocument {
    /// The document id.
    pub id: String,
    /// Its source.
    pub source: Option<String>,
    /// Its content hash.
    pub content_hash: String,
    /// Its metadata.
    pub metadata: Metadata,
    /// Chunk texts in order.
    pub chunks: Vec<String>,
}

/// A scalar metadata value a filter compares with.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// A string.
    String(String),
    /// A number.
    Number(f64),
    /// A boolean.
    Bool(bool),
}

impl Scalar {
    fn from_json(v: &Value, key: &str) -> Result<Scalar, VectorError> {
        match v {
            Value::String(s) => Ok(Scalar::String(s.clone())),
            Value::Number(n) => Ok(Scalar::Number(n.as_f64().unwrap_or(f64::NAN))),
            Value::Bool(b) => Ok(Scalar::Bool(*b)),
            _ => Err(VectorError::InvalidRequest(format!(
                "filter on {key:?}: values are strings, numbers, booleans or a list of them"
            ))),
        }
    }

    /// The value as JSON.
    pub fn to_json(&self) -> Value {
        match self {
            Scalar::String(s) => Value::String(s.clone()),
            Scalar::Number(n) => serde_json::Number::from_f64(*n).map(Value::Number).unwrap_or(Value::Null),
            Scalar::Bool(b) => Value::Bool(*b),
        }
    }

    fn matches(&self, v: &Value) -> bool {
        match (self, v) {
            (Scalar::String(a), Value::String(b)) => a == b,
            (Scalar::Number(a), Value::Number(b)) => b.as_f64() == Some(*a),
            (Scalar::Bool(a), Value::Bool(b)) => a == b,
            _ => false,
        }
    }
}

/// A metadata filter: every key must match (equal to the value, or to one of the listed values).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    /// Key → accepted values (one value: equality; several: any of them).
    pub conditions: BTreeMap<String, Vec<Scalar>>,
}

/// At most this many keys in a filter.
pub const MAX_FILTER_KEYS: usize = 16;

impl Filter {
    /// No condition.
    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    /// Parses `{"key": value, "key2": [v1, v2]}`.
    pub fn from_json(v: &Value) -> Result<Filter, VectorError> {
        let obj = match v {
            Value::Null => return Ok(Filter::default()),
            Value::Object(o) => o,
            _ => {
                return Err(VectorError::InvalidRequest(
                    "filter must be a JSON object such as {\"lang\": \"rust\"}".into(),
                ));
            }
        };
        if obj.len() > MAX_FILTER_KEYS {
            return Err(VectorError::InvalidRequest(format!("filter has more than {MAX_FILTER_KEYS} keys")));
        }
        let mut conditions = BTreeMap::new();
        for (k, v) in obj {
            crate::validate_metadata_key(k)?;
            let values = match v {
                Value::Array(items) if !items.is_empty() && items.len() <= 256 => {
                    items.iter().map(|i| Scalar::from_json(i, k)).collect::<Result<Vec<_>, _>>()?
                }
                Value::Array(_) => {
                    return Err(VectorError::InvalidRequest(format!("filter on {k:?}: a list needs 1 to 256 values")));
                }
                other => vec![Scalar::from_json(other, k)?],
            };
            conditions.insert(k.clone(), values);
        }
        Ok(Filter { conditions })
    }

    /// Whether a document's metadata passes the filter.
    pub fn matches(&self, metadata: &Metadata) -> bool {
        self.conditions.iter().all(|(k, values)| metadata.get(k).is_some_and(|v| values.iter().any(|s| s.matches(v))))
    }
}

/// A nearest-neighbour query on stored vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorQuery {
    /// The query vector.
    pub vector: Vec<f32>,
    /// How many hits.
    pub k: usize,
    /// Only chunks of documents whose metadata passes.
    pub filter: Filter,
}

/// One query result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The document id.
    pub document_id: String,
    /// The chunk's position in its document.
    pub chunk: u32,
    /// The chunk's text.
    pub text: String,
    /// The document's source.
    pub source: Option<String>,
    /// The document's metadata.
    pub metadata: Metadata,
    /// Higher is closer (cosine similarity for cosine collections).
    pub score: f32,
    /// The backend's distance (smaller is closer).
    pub distance: f32,
}
