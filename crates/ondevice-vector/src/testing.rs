//! The contract test suite every backend runs against itself (feature `testing`), and the data
//! it uses: seeded, clustered random vectors and exact search to measure recall against.
//!
//! Both backends are checked against the same exact answers on the same data
//! ([`check_same_top_results`]), so they give the same top results as each other.

use serde_json::json;

use crate::{
    ChunkWrite, ChunkingSettings, CollectionSpec, Distance, DocumentWrite, Filter, IndexParams, Metadata, TokenPolicy,
    VectorBackend, VectorError, VectorQuery,
};

/// A small deterministic generator (SplitMix64), so the suite needs no random crate.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
}

/// `n` vectors of `dim` around `clusters` random centres (centre ~ N(0, 1) per axis, point = centre
/// + N(0, `spread`²) per axis): random but clustered, like embeddings of related texts.
pub fn clustered_vectors(n: usize, dim: usize, clusters: usize, spread: f32, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(seed);
    let centres: Vec<Vec<f32>> = (0..clusters).map(|_| (0..dim).map(|_| rng.normal()).collect()).collect();
    (0..n)
        .map(|_| {
            let c = &centres[(rng.next_u64() % clusters as u64) as usize];
            c.iter().map(|x| x + spread * rng.normal()).collect()
        })
        .collect()
}

/// Indices of the `k` nearest of `data` to `q` under `distance`, closest first.
pub fn exact_top_k(data: &[Vec<f32>], q: &[f32], k: usize, distance: Distance) -> Vec<usize> {
    let mut d: Vec<(usize, f32)> = data.iter().enumerate().map(|(i, v)| (i, distance.distance(q, v))).collect();
    let k = k.min(d.len());
    if k == 0 {
        return Vec::new();
    }
    d.select_nth_unstable_by(k - 1, |a, b| a.1.total_cmp(&b.1));
    d.truncate(k);
    d.sort_by(|a, b| a.1.total_cmp(&b.1));
    d.into_iter().map(|(i, _)| i).collect()
}

/// A collection spec for tests.
pub fn spec(name: &str, dimension: u32, distance: Distance) -> CollectionSpec {
    CollectionSpec {
        name: name.to_owned(),
        model: "test-embedder".into(),
        model_digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
        dimension,
        distance,
        chunking: ChunkingSettings::default(),
        max_input_tokens: 512,
        token_policy: TokenPolicy::Truncate,
        index: IndexParams::default(),
    }
}

fn meta(v: serde_json::Value) -> Metadata {
    match v {
        serde_json::Value::Object(m) => m,
        _ => Metadata::new(),
    }
}

/// One document per vector, id `d{i}`, one chunk each, metadata `{"group": i % groups, "even": i % 2 == 0, "tag": "t{i % 7}"}`.
pub fn docs_for(vectors: &[Vec<f32>], offset: usize, groups: usize) -> Vec<DocumentWrite> {
    vectors
        .iter()
        .enumerate()
        .map(|(j, v)| {
            let i = offset + j;
            DocumentWrite {
                id: format!("d{i}"),
                source: Some(format!("/data/d{i}.txt")),
                content_hash: format!("sha256:{i:064x}"),
                metadata: meta(json!({"group": i % groups, "even": i % 2 == 0, "tag": format!("t{}", i % 7)})),
                chunks: vec![ChunkWrite { text: format!("text of d{i}"), embedding: v.clone() }],
            }
        })
        .collect()
}

fn q(vector: Vec<f32>, k: usize, filter: serde_json::Value) -> VectorQuery {
    VectorQuery { vector, k, filter: Filter::from_json(&filter).expect("test filter") }
}

/// Runs the whole contract against `backend`, which must hold no collection named `contract-*`.
pub async fn run_contract(backend: &dyn VectorBackend) {
    check_collections(backend).await;
    check_documents_and_filters(backend).await;
    check_same_top_results(backend).await;
    check_replace(backend).await;
}

/// Create, list, show, duplicate and bad names, delete.
pub async fn check_collections(backend: &dyn VectorBackend) {
    let s = spec("contract-a", 4, Distance::Cosine);
    let rec = backend.create_collection(&s).await.expect("create");
    assert_eq!(rec.spec, s);
    assert_eq!((rec.documents, rec.chunks), (0, 0));
    assert_eq!(rec.backend, backend.name());
    assert!(matches!(backend.create_collection(&s).await, Err(VectorError::Exists(_))));
    let bad = spec("../etc", 4, Distance::Cosine);
    assert!(matches!(backend.create_collection(&bad).await, Err(VectorError::InvalidName { .. })));
    let names: Vec<String> = backend.collections().await.unwrap().into_iter().map(|c| c.spec.name).collect();
    assert!(names.contains(&"contract-a".to_string()), "{names:?}");
    assert!(backend.collection("contract-a").await.unwrap().is_some());
    assert!(backend.collection("contract-missing").await.unwrap().is_none());
    // A wrong dimension is refused, on write and on query.
    let wrong = DocumentWrite {
        id: "x".into(),
        source: None,
        content_hash: "sha256:x".into(),
        metadata: Metadata::new(),
        chunks: vec![ChunkWrite { text: "x".into(), embedding: vec![1.0; 3] }],
    };
    assert!(matches!(backend.upsert("contract-a", vec![wrong]).await, Err(VectorError::DimensionMismatch { .. })));
    let e = backend.query("contract-a", &q(vec![1.0; 5], 3, json!(null))).await.unwrap_err();
    assert!(matches!(e, VectorError::DimensionMismatch { expected: 4, got: 5, .. }), "{e}");
    assert!(backend.delete_collection("contract-a").await.unwrap());
    assert!(!backend.delete_collection("contract-a").await.unwrap());
    let e = backend.query("contract-a", &q(vec![1.0; 4], 3, json!(null))).await.unwrap_err();
    assert!(matches!(e, VectorError::NotFound(_)), "{e}");
}

/// Upserts replace, deletes remove, hashes report, and selective filters still return `k`.
pub async fn check_documents_and_filters(backend: &dyn VectorBackend) {
    let dim = 16;
    let s = spec("contract-docs", dim as u32, Distance::Cosine);
    backend.create_collection(&s).await.unwrap();
    let vectors = clustered_vectors(2000, dim, 20, 0.4, 7);
    for part in docs_for(&vectors, 0, 100).chunks(500) {
        backend.upsert("contract-docs", part.to_vec()).await.unwrap();
    }
    let rec = backend.collection("contract-docs").await.unwrap().unwrap();
    assert_eq!((rec.documents, rec.chunks), (2000, 2000));

    // The nearest neighbour of a stored vector is itself, with score ~1, and the hit carries text,
    // source and metadata.
    let hits = backend.query("contract-docs", &q(vectors[42].clone(), 5, json!(null))).await.unwrap();
    assert_eq!(hits.len(), 5);
    assert_eq!(hits[0].document_id, "d42");
    assert_eq!(hits[0].text, "text of d42");
    assert_eq!(hits[0].source.as_deref(), Some("/data/d42.txt"));
    assert_eq!(hits[0].metadata.get("tag"), Some(&json!("t0")));
    assert!((hits[0].score - 1.0).abs() < 1e-3, "{}", hits[0].score);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));

    // Selective filters: group 3 has 20 documents, far from the query's cluster; still k of them.
    for (filter, expect) in [
        (json!({"group": 3}), 20usize),
        (json!({"group": [3, 4]}), 40),
        (json!({"group": 3, "even": false}), 10),
        (json!({"tag": "t2", "group": 9}), 3),
    ] {
        let hits = backend.query("contract-docs", &q(vectors[42].clone(), 10, filter.clone())).await.unwrap();
        assert_eq!(hits.len(), 10.min(expect), "filter {filter}");
        let f = Filter::from_json(&filter).unwrap();
        assert!(hits.iter().all(|h| f.matches(&h.metadata)), "filter {filter}");
        // Exactly the nearest ones among those passing.
        let passing: Vec<usize> =
            (0..vectors.len()).filter(|i| f.matches(&docs_for(&vectors[*i..*i + 1], *i, 100)[0].metadata)).collect();
        let sub: Vec<Vec<f32>> = passing.iter().map(|i| vectors[*i].clone()).collect();
        let want: Vec<String> = exact_top_k(&sub, &vectors[42], 10, Distance::Cosine)
            .into_iter()
            .map(|j| format!("d{}", passing[j]))
            .collect();
        let got: Vec<String> = hits.iter().map(|h| h.document_id.clone()).collect();
        assert_eq!(got, want, "filter {filter}");
    }
    // A filter nothing passes gives no hits; a wrong type matches nothing.
    assert!(
        backend.query("contract-docs", &q(vectors[0].clone(), 10, json!({"group": 1000}))).await.unwrap().is_empty()
    );
    assert!(
        backend.query("contract-docs", &q(vectors[0].clone(), 10, json!({"group": "3"}))).await.unwrap().is_empty()
    );

    // Upsert replaces a document's chunks: no duplicates, new text found.
    let mut d = docs_for(&vectors[42..43], 42, 100).remove(0);
    d.chunks = vec![
        ChunkWrite { text: "first".into(), embedding: vectors[42].clone() },
        ChunkWrite { text: "second".into(), embedding: vectors[43].clone() },
    ];
    d.content_hash = "sha256:new".into();
    backend.upsert("contract-docs", vec![d]).await.unwrap();
    let hits = backend.query("contract-docs", &q(vectors[42].clone(), 3, json!(null))).await.unwrap();
    assert_eq!(hits[0].text, "first");
    assert!(hits.iter().all(|h| h.text != "text of d42"), "{hits:?}");
    let hits = backend.query("contract-docs", &q(vectors[43].clone(), 2, json!(null))).await.unwrap();
    let texts: Vec<&str> = hits.iter().map(|h| h.text.as_str()).collect();
    assert!(texts.contains(&"second") && texts.contains(&"text of d43"), "{hits:?}");
    assert!(hits.iter().any(|h| h.document_id == "d42" && h.chunk == 1));
    let rec = backend.collection("contract-docs").await.unwrap().unwrap();
    assert_eq!((rec.documents, rec.chunks), (2000, 2001));
    let hashes = backend.content_hashes("contract-docs", &["d42".into(), "d1".into(), "nope".into()]).await.unwrap();
    assert_eq!(hashes.get("d42").map(String::as_str), Some("sha256:new"));
    assert_eq!(hashes.len(), 2);

    // Deletes.
    assert_eq!(backend.delete_documents("contract-docs", &["d42".into(), "nope".into()]).await.unwrap(), 1);
    let hits = backend.query("contract-docs", &q(vectors[42].clone(), 5, json!(null))).await.unwrap();
    assert!(hits.iter().all(|h| h.document_id != "d42"));
    let page = backend.documents_page("contract-docs", None, 3).await.unwrap();
    assert_eq!(page.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["d0", "d1", "d10"]);
    assert_eq!(page[0].chunks, ["text of d0"]);
    let next = backend.documents_page("contract-docs", Some("d10"), 1).await.unwrap();
    assert_eq!(next[0].id, "d100");
    assert!(backend.delete_collection("contract-docs").await.unwrap());
}

/// The same data and queries give the exact top results (so every backend gives the same).
pub async fn check_same_top_results(backend: &dyn VectorBackend) {
    let dim = 32;
    for distance in [Distance::Cosine, Distance::Dot, Distance::L2] {
        let name = format!("contract-same-{}", distance.as_str());
        backend.create_collection(&spec(&name, dim as u32, distance)).await.unwrap();
        let mut vectors = clustered_vectors(3020, dim, 30, 0.5, 11);
        let queries = vectors.split_off(3000);
        backend.upsert(&name, docs_for(&vectors, 0, 10)).await.unwrap();
        for qv in &queries {
            let hits = backend.query(&name, &q(qv.clone(), 5, json!(null))).await.unwrap();
            let want: Vec<String> =
                exact_top_k(&vectors, qv, 5, distance).into_iter().map(|i| format!("d{i}")).collect();
            let got: Vec<String> = hits.iter().map(|h| h.document_id.clone()).collect();
            assert_eq!(got, want, "{distance:?}");
            let d0 = distance.distance(qv, &vectors[want[0][1..].parse::<usize>().unwrap()]);
            assert!((hits[0].distance - d0).abs() < 1e-3 * d0.abs().max(1.0), "{} vs {d0}", hits[0].distance);
        }
        backend.delete_collection(&name).await.unwrap();
    }
}

/// A fully built collection takes another's place atomically.
pub async fn check_replace(backend: &dyn VectorBackend) {
    let dim = 8;
    backend.create_collection(&spec("contract-live", dim as u32, Distance::Cosine)).await.unwrap();
    let mut next = spec("contract-live.next", dim as u32 * 2, Distance::Cosine);
    next.model = "other-model".into();
    backend.create_collection(&next).await.unwrap();
    let old = clustered_vectors(10, dim, 2, 0.3, 1);
    backend.upsert("contract-live", docs_for(&old, 0, 2)).await.unwrap();
    let new = clustered_vectors(10, dim * 2, 2, 0.3, 2);
    backend.upsert("contract-live.next", docs_for(&new, 0, 2)).await.unwrap();
    backend.replace_collection("contract-live.next", "contract-live").await.unwrap();
    let rec = backend.collection("contract-live").await.unwrap().unwrap();
    assert_eq!(rec.spec.model, "other-model");
    assert_eq!(rec.spec.name, "contract-live");
    assert_eq!(rec.spec.dimension, 16);
    assert!(backend.collection("contract-live.next").await.unwrap().is_none());
    let hits = backend.query("contract-live", &q(new[3].clone(), 1, json!(null))).await.unwrap();
    assert_eq!(hits[0].document_id, "d3");
    assert!(backend.delete_collection("contract-live").await.unwrap());
}

/// For each of `queries`, [`exact_top_k`] over `data`, the queries shared out over every core.
pub fn exact_top_k_all(data: &[Vec<f32>], queries: &[Vec<f32>], k: usize, distance: Distance) -> Vec<Vec<usize>> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(queries.len()).max(1);
    let per = queries.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = queries
            .chunks(per)
            .map(|part| s.spawn(move || part.iter().map(|q| exact_top_k(data, q, k, distance)).collect::<Vec<_>>()))
            .collect();
        parts.into_iter().flat_map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}

/// Recall@10 of `backend` against exact search on `n` × `dim` clustered vectors, with
/// `queries` queries drawn like the data but not stored: `n / 100` cluster centres ~ N(0, 1) per
/// axis, points = centre + N(0, 0.75²) per axis. Returns the recall.
///
/// The data goes in as a first load of 99% (one write into the empty collection, the way a
/// collection is first filled in bulk) and then the last 1% in writes of at most 1,000 (updates
/// landing in a built index), so the index searched has seen both. Stage times go to stderr.
pub async fn recall_at_10(backend: &dyn VectorBackend, name: &str, n: usize, dim: usize, queries: usize) -> f64 {
    let s = spec(name, dim as u32, Distance::Cosine);
    backend.create_collection(&s).await.unwrap();
    let t = std::time::Instant::now();
    let mut vectors = clustered_vectors(n + queries, dim, (n / 100).max(10), 0.75, 42);
    let qs = vectors.split_off(n);
    let truth = exact_top_k_all(&vectors, &qs, 10, Distance::Cosine);
    eprintln!("recall: data and exact search {:.1} s", t.elapsed().as_secs_f64());
    let t = std::time::Instant::now();
    let first = n - n / 100;
    backend.upsert(name, docs_for(&vectors[..first], 0, 10)).await.unwrap();
    let bulk = t.elapsed().as_secs_f64();
    for (i, part) in vectors[first..].chunks(1000).enumerate() {
        backend.upsert(name, docs_for(part, first + i * 1000, 10)).await.unwrap();
    }
    eprintln!(
        "recall: first load of {first} {bulk:.1} s, then {} more {:.1} s",
        n - first,
        t.elapsed().as_secs_f64() - bulk
    );
    let t = std::time::Instant::now();
    let mut found = 0usize;
    for (qv, want) in qs.iter().zip(&truth) {
        let want: std::collections::HashSet<String> = want.iter().map(|i| format!("d{i}")).collect();
        let hits = backend.query(name, &q(qv.clone(), 10, json!(null))).await.unwrap();
        found += hits.iter().filter(|h| want.contains(&h.document_id)).count();
    }
    eprintln!("recall: {queries} queries {:.1} s", t.elapsed().as_secs_f64());
    found as f64 / (queries * 10) as f64
}
