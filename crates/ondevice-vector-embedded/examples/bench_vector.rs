//! `scripts/bench-vector`'s ondevice side: builds the embedded backend (SQLite + its HNSW graph,
//! through `VectorBackend`, as the daemon does) on clustered random vectors, writes the data so the
//! script can run faiss and usearch (PyPI) on the very same vectors and queries, then times query
//! passes when asked on stdin, so the script can interleave them with the peers' passes in rounds
//! (one busy moment of the shared machine then skews one round, not the whole comparison).
//!
//! `cargo run --release -p ondevice-vector-embedded --example bench_vector -- OUT_DIR [N] [DIM] [QUERIES] [M] [EF_CONSTRUCTION] [EF]`
//!
//! Once built it prints one JSON line (build time, kernel) and then reads commands, one a line,
//! answering each with one JSON line (queries/s and recall@10 of one pass over every query):
//!
//! - `index [R]`: the index search alone, ids and distances (what faiss and usearch measure);
//! - `query [R]`: the full query as the daemon answers it, through the async `VectorBackend`:
//!   the search, then each hit's chunk text, source and metadata from SQLite, re-scored exactly.
//!
//! `R` (default 1) repeats the pass, for profiling (`perf record -p PID` while it runs); the figure
//! is per pass. End of input ends the program.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ondevice_store::Store;
use ondevice_vector::testing::{clustered_vectors, docs_for, exact_top_k, spec};
use ondevice_vector::{Distance, Filter, IndexParams, VectorBackend, VectorQuery};
use ondevice_vector_embedded::EmbeddedBackend;

fn write_f32(path: &std::path::Path, rows: &[Vec<f32>]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    for r in rows {
        for x in r {
            f.write_all(&x.to_le_bytes()).expect("write");
        }
    }
}

/// One line of JSON on stdout, flushed (the script waits for it).
fn answer(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}").expect("stdout");
    out.flush().expect("stdout");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = PathBuf::from(args.first().expect("usage: bench OUT_DIR [N] [DIM] [QUERIES] [M] [EF_CONSTRUCTION] [EF]"));
    let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (n, dim, nq, m, efc, ef) = (num(1, 100_000), num(2, 384), num(3, 1000), num(4, 16), num(5, 128), num(6, 64));
    std::fs::create_dir_all(&out).expect("out dir");

    let mut data = clustered_vectors(n + nq, dim, (n / 100).max(10), 0.75, 42);
    let queries = data.split_off(n);
    write_f32(&out.join("base.f32"), &data);
    write_f32(&out.join("queries.f32"), &queries);
    let truth: Vec<Vec<usize>> = queries.iter().map(|q| exact_top_k(&data, q, 10, Distance::Cosine)).collect();
    let mut gt = std::io::BufWriter::new(std::fs::File::create(out.join("truth.u32")).expect("create"));
    for t in &truth {
        for i in t {
            gt.write_all(&(*i as u32).to_le_bytes()).expect("write");
        }
    }
    drop(gt);

    let home = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(&home.path().join("ondevice.db")).expect("store"));
    let backend = EmbeddedBackend::open(store, &home.path().join("vectors")).expect("backend");
    let mut s = spec("bench", dim as u32, Distance::Cosine);
    s.index = IndexParams { m: m as u32, ef_construction: efc as u32, ef_search: ef as u32 };
    backend.create_collection(&s).await.expect("create");
    let started = Instant::now();
    for (i, part) in data.chunks(10_000).enumerate() {
        backend.upsert("bench", docs_for(part, i * 10_000, 10)).await.expect("upsert");
    }
    let build_s = started.elapsed().as_secs_f64();
    drop(data);

    // Warm-up (first touch of the index pages and of SQLite's cache), not timed.
    for q in queries.iter().take(50) {
        backend.nearest_chunk_ids("bench", q, 10).expect("search");
        backend
            .query("bench", &VectorQuery { vector: q.clone(), k: 10, filter: Filter::default() })
            .await
            .expect("query");
    }
    answer(serde_json::json!({
        "n": n, "dim": dim, "queries": nq, "m": m, "ef_construction": efc, "ef": ef,
        // The graph is built on one thread (inserts go one by one under the collection's write lock).
        "build_s": build_s, "build_threads": 1,
        "kernel": EmbeddedBackend::distance_kernel(),
    }));

    let requests: Vec<VectorQuery> =
        queries.iter().map(|q| VectorQuery { vector: q.clone(), k: 10, filter: Filter::default() }).collect();
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let mut words = line.split_whitespace();
        let Some(what) = words.next() else { continue };
        let repeat: usize = words.next().and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
        let mut found = 0usize;
        let started = Instant::now();
        match what {
            // Chunk ids are SQLite row ids given in insertion order from 1: chunk id i + 1 is
            // document d{i}.
            "index" => {
                for (q, t) in std::iter::repeat_n(queries.iter().zip(&truth), repeat).flatten() {
                    let ids = backend.nearest_chunk_ids("bench", q, 10).expect("search");
                    found += ids.iter().filter(|(id, _)| t.contains(&(*id as usize - 1))).count();
                }
            }
            "query" => {
                for (q, t) in std::iter::repeat_n(requests.iter().zip(&truth), repeat).flatten() {
                    let hits = backend.query("bench", q).await.expect("query");
                    found += hits
                        .iter()
                        .filter(|h| t.contains(&h.document_id[1..].parse::<usize>().unwrap_or(usize::MAX)))
                        .count();
                }
            }
            other => panic!("unknown command {other:?}: use index [R] or query [R]"),
        }
        let secs = started.elapsed().as_secs_f64() / repeat as f64;
        answer(serde_json::json!({
            "what": what, "qps": nq as f64 / secs, "recall_at_10": (found / repeat) as f64 / (nq * 10) as f64,
        }));
    }
}
