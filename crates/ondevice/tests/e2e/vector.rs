//! The vector store through the real daemon and CLI, with the real SmolLM2 GGUF as the embedding
//! model (it embeds through the embedded llama.cpp engine): `collections create` pins the model's
//! digest and measures its dimension, `ondevice index` indexes a directory (text, Markdown, HTML;
//! unsupported files skipped) in a job and skips unchanged files the second time, `ondevice
//! search` finds a file by its own text, scores through the store equal the cosine of the
//! vectors `/v1/embeddings` gives for the same texts, and scopes hold (queries: read; writes:
//! models). In the nextest `llama` group (the engine runs).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Daemon, Home, describe, test_model};

fn metric(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
}

const FILES: [(&str, &str); 3] = [
    ("otters.md", "# Otters\n\nSea otters hold hands while they sleep so that they do not drift apart."),
    ("bread.txt", "To bake bread, mix flour, water, salt and yeast, knead the dough and let it rise."),
    ("volcano.html", "<html><body><p>Volcanoes erupt molten rock called lava.</p><script>x=1</script></body></html>"),
];

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("vector").iter().map(|x| x.as_f64().expect("number")).collect()
}

#[tokio::test]
async fn collections_index_and_search_with_a_real_embedding_model() {
    let Some(model) = test_model("vector::collections_index_and_search_with_a_real_embedding_model") else { return };
    // The daemon reads files for index jobs only inside [vector] index_roots.
    let docs = tempfile::tempdir().expect("tempdir");
    let config = format!("[vector]\nindex_roots = [{:?}]\n", docs.path().to_str().expect("utf-8"));
    let daemon = Daemon::start(Home::with_config(&config));
    let home = daemon.home();
    let out = home.run(&["models", "import", model.to_str().expect("utf-8 path"), "--name", "smollm2"]);
    assert!(out.status.success(), "import: {}", describe(&out));

    // Create: pinned by digest, dimension measured.
    let created: Value =
        serde_json::from_str(&home.run_ok(&["collections", "create", "notes", "--model", "smollm2", "--json"]))
            .expect("create --json");
    assert_eq!(created["backend"], "embedded");
    assert!(created["model_digest"].as_str().unwrap().starts_with("sha256:"), "{created}");
    let dim = created["dimension"].as_u64().unwrap();
    assert!(dim > 0, "{created}");
    let out = home.run(&["collections", "create", "notes", "--model", "smollm2"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{}",
        describe(&out)
    );

    // Index a directory: three supported files, a PDF skipped.
    for (name, text) in FILES {
        std::fs::write(docs.path().join(name), text).expect("write");
    }
    std::fs::write(docs.path().join("paper.pdf"), b"%PDF-1.4").expect("write");
    let dir = docs.path().to_str().expect("utf-8");
    let job: Value =
        serde_json::from_str(&home.run_ok(&["index", dir, "--collection", "notes", "--json"])).expect("index --json");
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["kind"], "index");
    assert_eq!(
        (job["detail"]["files_indexed"].as_u64(), job["detail"]["files_skipped"].as_u64()),
        (Some(3), Some(1)),
        "{job}"
    );
    assert!(job["detail"]["chunks"].as_u64().unwrap() >= 3, "{job}");
    // Again: nothing changed, nothing embedded.
    let again: Value =
        serde_json::from_str(&home.run_ok(&["index", dir, "--collection", "notes", "--json"])).expect("index --json");
    assert_eq!(again["detail"]["files_unchanged"], 3, "{again}");

    // Search by a file's own text: that file first, score ~1.
    let hits: Value = serde_json::from_str(&home.run_ok(&["search", "notes", FILES[1].1, "--top-k", "3", "--json"]))
        .expect("search --json");
    let top = &hits["hits"][0];
    assert!(top["source"].as_str().unwrap().ends_with("bread.txt"), "{hits}");
    assert!((top["score"].as_f64().unwrap() - 1.0).abs() < 1e-3, "{hits}");
    assert_eq!(hits["hits"].as_array().unwrap().len(), 3);
    let plain = home.run_ok(&["search", "notes", "lava", "--top-k", "3"]);
    assert!(plain.contains("1. ") && plain.contains("volcano.html"), "{plain}");
    let html_hit = hits["hits"]
        .as_array()
        .unwrap()
        .iter()
        .chain(
            serde_json::from_str::<Value>(&home.run_ok(&[
                "search",
                "notes",
                "Volcanoes erupt molten rock called lava.",
                "--json",
            ]))
            .unwrap()["hits"]
                .as_array()
                .unwrap(),
        )
        .find(|h| h["source"].as_str().unwrap().ends_with("volcano.html"))
        .cloned()
        .expect("the HTML file is indexed");
    assert!(
        !html_hit["text"].as_str().unwrap().contains("x=1") && !html_hit["text"].as_str().unwrap().contains('<'),
        "{html_hit}"
    );

    // The golden check through the store: a query's score for a chunk equals the cosine of the
    // two texts' vectors from /v1/embeddings.
    let infer = daemon.key(&["infer"]).await;
    let query = "Where do otters sleep?";
    let chunk = "# Otters\n\nSea otters hold hands while they sleep so that they do not drift apart.";
    let resp = daemon
        .request(Method::POST, "/v1/embeddings", Some(&infer.secret))
        .json(&json!({"model": "smollm2", "input": [query, chunk]}))
        .send()
        .await
        .expect("embeddings");
    assert_eq!(resp.status(), StatusCode::OK);
    let e: Value = resp.json().await.expect("json");
    let expected = cosine(&floats(&e["data"][0]["embedding"]), &floats(&e["data"][1]["embedding"]));
    let read = daemon.key(&["read"]).await;
    let resp = daemon
        .request(Method::POST, "/api/v1/collections/notes/query", Some(&read.secret))
        .json(&json!({"query": query, "top_k": 3}))
        .send()
        .await
        .expect("query");
    assert_eq!(resp.status(), StatusCode::OK, "a read key queries");
    let q: Value = resp.json().await.expect("json");
    let hit = q["hits"].as_array().unwrap().iter().find(|h| h["text"] == chunk).expect("the otters chunk");
    let got = hit["score"].as_f64().unwrap();
    println!("cosine through the store {got:.4}, from /v1/embeddings {expected:.4}");
    assert!((got - expected).abs() < 2e-3, "store score {got} vs cosine {expected}");

    // Scopes: a read key cannot write; no key is refused.
    let resp = daemon
        .request(Method::POST, "/api/v1/collections", Some(&read.secret))
        .json(&json!({"name": "x", "model": "smollm2"}))
        .send()
        .await
        .expect("create");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = daemon
        .request(Method::POST, "/api/v1/collections/notes/query", None)
        .json(&json!({"query": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (status, body) = daemon.get("/api/v1/collections/missing", Some(&read.secret)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{body}");

    // gRPC: the same query, hits streamed closest first, with a read key.
    let channel =
        tonic::transport::Endpoint::from_shared(daemon.url("")).expect("endpoint").connect().await.expect("connect");
    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {}", read.secret).parse().expect("metadata");
    let mut grpc = ondevice_proto::v1::vector_service_client::VectorServiceClient::with_interceptor(
        channel,
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", auth.clone());
            Ok(req)
        },
    );
    let mut stream = grpc
        .query(ondevice_proto::v1::QueryRequest {
            collection: "notes".into(),
            query: query.into(),
            top_k: 3,
            ..Default::default()
        })
        .await
        .expect("gRPC query")
        .into_inner();
    let mut grpc_hits = Vec::new();
    while let Some(h) = stream.message().await.expect("hit") {
        grpc_hits.push(h);
    }
    assert_eq!(grpc_hits.len(), 3);
    let g = grpc_hits.iter().find(|h| h.text == chunk).expect("the otters chunk over gRPC");
    assert!((f64::from(g.score) - got).abs() < 1e-4, "{} vs {got}", g.score);
    let denied = grpc
        .create_collection(ondevice_proto::v1::CreateCollectionRequest {
            name: "y".into(),
            model: "smollm2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    // Metrics: embeddings, chunks and index size per collection.
    let metrics = daemon
        .request(Method::GET, "/metrics", Some(&read.secret))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let line = |name: &str| metrics.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_owned();
    assert!(line("ondevice_vector_chunks{collection=\"notes\",backend=\"embedded\"}").ends_with(" 3"), "{metrics}");
    let texts: f64 = line("ondevice_vector_embedded_texts_total").rsplit(' ').next().unwrap().parse().expect("count");
    assert!(texts >= 3.0, "{metrics}");
    let bytes: f64 =
        line("ondevice_vector_index_bytes{collection=\"notes\"").rsplit(' ').next().unwrap().parse().expect("bytes");
    assert!(bytes > 0.0, "{metrics}");

    // list / show / rm.
    let list: Value = serde_json::from_str(&home.run_ok(&["collections", "list", "--json"])).expect("list --json");
    assert_eq!(list["collections"][0]["name"], "notes");
    assert_eq!(list["collections"][0]["documents"], 3);
    let shown = home.run_ok(&["collections", "show", "notes"]);
    assert!(shown.contains(&format!("dimension:     {dim}")), "{shown}");
    home.run_ok(&["collections", "rm", "notes"]);
    let out = home.run(&["collections", "show", "notes"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not found"), "{}", describe(&out));
}

/// The golden pair through the store: all-MiniLM-L6-v2's safetensors converted to GGUF by
/// `ondevice quantize`, imported, a cosine collection created with it; "A man is eating food."
/// and "A man is eating a piece of bread." upserted; querying with one returns the other with the
/// reference cosine 0.7553 (± 0.002) as its score (scores are similarities, higher is closer;
/// `distance` is 1 − cosine). Also: files outside `[vector] index_roots` are refused over HTTP
/// (403) while `ondevice index` sends their content itself, and /metrics carries the query
/// latency histogram and embedding counters.
#[tokio::test]
async fn minilm_golden_pair_through_the_store() {
    let Some(dir) = ondevice_testkit::minilm("vector::minilm_golden_pair_through_the_store") else { return };
    let daemon = Daemon::start(Home::new());
    let home = daemon.home();
    let out_dir = tempfile::tempdir().expect("tempdir");
    let gguf = out_dir.path().join("minilm-f32.gguf");
    let gguf = gguf.to_str().expect("utf-8");
    home.run_ok(&["quantize", dir.to_str().expect("utf-8"), "--type", "F32", "--output", gguf]);
    home.run_ok(&["models", "import", gguf, "--name", "minilm"]);
    let created: Value =
        serde_json::from_str(&home.run_ok(&["collections", "create", "golden", "--model", "minilm", "--json"]))
            .expect("create --json");
    assert_eq!((created["dimension"].as_u64(), created["distance"].as_str()), (Some(384), Some("cosine")), "{created}");

    let models = daemon.key(&["models"]).await;
    let (a, b) = ("A man is eating food.", "A man is eating a piece of bread.");
    let resp = daemon
        .request(Method::POST, "/api/v1/collections/golden/documents", Some(&models.secret))
        .json(&json!({"documents": [{"id": "a", "text": a}, {"id": "b", "text": b}]}))
        .send()
        .await
        .expect("upsert");
    assert_eq!(resp.status(), StatusCode::OK);
    let up: Value = resp.json().await.expect("json");
    assert_eq!((up["documents"].as_u64(), up["chunks"].as_u64()), (Some(2), Some(2)), "{up}");

    let read = daemon.key(&["read"]).await;
    for (query, own, other) in [(a, "a", "b"), (b, "b", "a")] {
        let resp = daemon
            .request(Method::POST, "/api/v1/collections/golden/query", Some(&read.secret))
            .json(&json!({"query": query, "top_k": 2}))
            .send()
            .await
            .expect("query");
        assert_eq!(resp.status(), StatusCode::OK);
        let q: Value = resp.json().await.expect("json");
        let hits = q["hits"].as_array().expect("hits");
        assert_eq!(hits.len(), 2, "{q}");
        assert_eq!(hits[0]["document_id"], own, "{q}");
        assert!((hits[0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-3, "{q}");
        assert_eq!(hits[1]["document_id"], other, "{q}");
        let score = hits[1]["score"].as_f64().unwrap();
        let distance = hits[1]["distance"].as_f64().unwrap();
        println!("golden pair through the store: score (cosine similarity) {score:.4}, distance {distance:.4}");
        assert!((score - 0.7553).abs() <= 0.002, "score {score} vs the reference cosine 0.7553: {q}");
        assert!((distance - (1.0 - score)).abs() < 1e-4, "cosine distance is 1 - similarity: {q}");
    }

    // Files: none of the daemon's business over HTTP without index_roots; the CLI sends content.
    let docs = tempfile::tempdir().expect("tempdir");
    std::fs::write(docs.path().join("meal.md"), "# Lunch\n\nA man is eating a piece of bread.").expect("write");
    std::fs::write(docs.path().join("paper.pdf"), b"%PDF-1.4").expect("write");
    let resp = daemon
        .request(Method::POST, "/api/v1/collections/golden/index", Some(&models.secret))
        .json(&json!({"paths": [docs.path()]}))
        .send()
        .await
        .expect("index");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: Value = resp.json().await.expect("json");
    assert!(body["error"]["message"].as_str().unwrap().contains("index_roots"), "{body}");
    let dir = docs.path().to_str().expect("utf-8");
    let up: Value =
        serde_json::from_str(&home.run_ok(&["index", dir, "--collection", "golden", "--json"])).expect("index --json");
    assert_eq!((up["files_indexed"].as_u64(), up["files_skipped"].as_u64()), (Some(1), Some(1)), "{up}");
    let again: Value =
        serde_json::from_str(&home.run_ok(&["index", dir, "--collection", "golden", "--json"])).expect("index --json");
    assert_eq!((again["files_unchanged"].as_u64(), again["files_indexed"].as_u64()), (Some(1), Some(0)), "{again}");

    // Metrics: the query histogram (the two text queries above) and the embedding counters.
    let metrics = daemon
        .request(Method::GET, "/metrics", Some(&read.secret))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let count = metric(&metrics, "ondevice_vector_query_seconds_count{backend=\"embedded\",input=\"text\"}");
    assert_eq!(count, 2.0, "{metrics}");
    let inf = metric(&metrics, "ondevice_vector_query_seconds_bucket{backend=\"embedded\",input=\"text\",le=\"+Inf\"}");
    assert_eq!(inf, count);
    assert!(metric(&metrics, "ondevice_vector_query_seconds_sum{backend=\"embedded\",input=\"text\"}") > 0.0);
    assert!(metric(&metrics, "ondevice_vector_embedded_texts_total") >= 3.0, "{metrics}");
    assert!(metric(&metrics, "ondevice_vector_embedded_tokens_total") > 0.0, "{metrics}");
    assert_eq!(metric(&metrics, "ondevice_vector_chunks{collection=\"golden\",backend=\"embedded\"}"), 3.0);
    assert!(metrics.contains("# TYPE ondevice_vector_index_job_files gauge"), "{metrics}");
}
