//! Model pulls through the real daemon and CLI against a real HTTP server with Range support
//! inside the test (`ondevice-registry/tests/support/range_server.rs`), serving the real SmolLM2
//! GGUF (when `ONDEVICE_TEST_MODELS_DIR` is set) or generated GGUFs: a pull killed with SIGKILL
//! resumes on the next start and fetches at most one chunk per connection again; a corrupt mirror
//! falls back to a good one or fails with nothing registered; the SSRF guard; a quota too small;
//! traversal names; two concurrent pulls sharing one download; progress over SSE; per-host
//! credentials (and a catalog served by URL) with the secret never shown.

#[path = "../../../ondevice-registry/tests/support/range_server.rs"]
pub(crate) mod range_server;

use std::time::{Duration, Instant};

use range_server::{RangeServer, Served, Transfer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::common::{Daemon, Home, describe, test_model};

const CHUNK: u64 = 1 << 20;
const CONNECTIONS: u64 = 2;

fn allow_config(extra: &str) -> String {
    format!(
        "[registry]\nallow_hosts = [\"127.0.0.1\"]\nchunk_size = \"1MiB\"\nconnections = {CONNECTIONS}\nretries = 1\n{extra}"
    )
}

/// A valid GGUF of about `bytes` bytes.
fn generated_gguf(seed: u8, bytes: usize) -> Vec<u8> {
    use ondevice_gguf::writer::GgufWriter;
    use ondevice_gguf::{GgmlType, Value};
    let n = bytes / 4;
    let data: Vec<u8> = (0..n * 4).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)).collect();
    GgufWriter::new()
        .metadata("general.architecture", Value::String("llama".into()))
        .metadata("general.name", Value::String("generated".into()))
        .metadata("general.file_type", Value::U32(0))
        .tensor("w", &[n as u64], GgmlType::F32, data)
        .to_bytes()
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Waits (up to 60 s) until job `id` has `at_least` units done.
async fn wait_for_progress(daemon: &Daemon, id: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, j) = daemon.get(&format!("/api/v1/jobs/{id}"), Some(daemon.admin_key())).await;
        if j["progress"]["done"].as_u64().unwrap_or(0) >= at_least {
            return;
        }
        assert!(Instant::now() < deadline && j["state"] != "failed", "no progress: {j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_pull(daemon: &Daemon, body: Value) -> Value {
    let resp =
        daemon.request(Method::POST, "/api/v1/models/pull", Some(daemon.admin_key())).json(&body).send().await.unwrap();
    let status = resp.status();
    let job: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    job
}

/// Follows `/api/v1/jobs/{id}/events` until the job finishes; returns every event.
async fn follow_events(daemon: &Daemon, id: &str) -> Vec<Value> {
    let mut resp = daemon
        .request(Method::GET, &format!("/api/v1/jobs/{id}/events"), Some(daemon.admin_key()))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut buf = String::new();
    let mut events = Vec::new();
    while let Some(chunk) = resp.chunk().await.expect("event stream") {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) {
                assert!(block.contains("event: job"), "{block}");
                events.push(serde_json::from_str(data.trim()).unwrap());
            }
        }
    }
    events
}

/// Body bytes the server sent per chunk of a `len`-byte file, over every request (both daemons);
/// probes (`bytes=0-0`) left out.
fn sent_per_chunk(transfers: &[Transfer], len: u64) -> Vec<u64> {
    let mut sent = vec![0u64; len.div_ceil(CHUNK) as usize];
    for t in transfers.iter().filter(|t| !(t.start == 0 && t.end == 1)) {
        assert_eq!(t.start / CHUNK, (t.end.max(1) - 1) / CHUNK, "a range across chunks: {t:?}");
        sent[(t.start / CHUNK) as usize] += t.sent;
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_killed_with_sigkill_resumes_and_verifies() {
    let data = match test_model("a_pull_killed_with_sigkill_resumes_and_verifies") {
        Some(f) => std::fs::read(f).unwrap(),
        None => {
            println!("resuming a generated 12 MiB GGUF instead of SmolLM2");
            generated_gguf(1, 12 << 20)
        }
    };
    let len = data.len() as u64;
    let expected = sha256(&data);
    let server = RangeServer::start().await;
    // About six seconds for the whole file over two connections.
    server.put("/model.gguf", Served { throttle: len / 12, ..Served::bytes(data) });
    let daemon = Daemon::with_config(&allow_config(""));
    let job = start_pull(&daemon, json!({"model": server.url("/model.gguf"), "name": "smol:resume"})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!((job["kind"].as_str(), job["detail"]["model"].as_str()), (Some("pull"), Some("smol:resume")));

    wait_for_progress(&daemon, &id, len / 3).await;
    let home = daemon.kill9();
    let partial = home.file("partials").join(format!("{id}.partial"));
    assert!(partial.is_file(), "the partial download survives SIGKILL");
    let before = server.bytes_sent();
    assert!(before < len, "killed midway ({before} of {len})");
    let daemon = Daemon::start(home);
    let events = follow_events(&daemon, &id).await;
    let last = events.last().expect("events");
    assert_eq!(last["state"], "succeeded", "{events:?}");
    assert_eq!(last["detail"]["digest"], expected.as_str());
    assert_eq!((&last["progress"]["done"], &last["progress"]["unit"]), (&json!(len), &json!("bytes")));
    assert_eq!(last["detail"]["done_bytes"], len, "the pull detail keeps the old fields");
    // At most one chunk per connection is sent twice. Why the design guarantees it: a
    // connection takes its next chunk only after the current one is written and recorded in the
    // job table (download.rs, `ranged`), and a retry continues a chunk where it stopped. So when
    // the daemon is killed each connection has at most one unrecorded chunk (received partly, or
    // wholly but not recorded yet), and the restarted daemon fetches exactly the unrecorded
    // chunks, each whole (bookkeeping is per chunk). Counted per chunk over both daemons'
    // requests, so a request of the first daemon that the server handles late changes nothing.
    let sent = sent_per_chunk(&server.transfers(), len);
    let mut twice = Vec::new();
    for (i, &n) in sent.iter().enumerate() {
        let size = CHUNK.min(len - i as u64 * CHUNK);
        assert!(n >= size, "chunk {i}: {n} of {size} bytes sent");
        assert!(n <= 2 * size, "chunk {i}: {n} bytes sent for {size}: fetched again more than once");
        if n > size {
            twice.push((i, n - size));
        }
    }
    println!("{before} of {len} bytes sent before the kill; chunks sent again (index, bytes): {twice:?}");
    assert!(
        twice.len() as u64 <= CONNECTIONS,
        "chunks (index, bytes sent again) after the restart: {twice:?}; more than one per connection \
         ({CONNECTIONS}); {before} of {len} bytes were sent before the kill"
    );
    let m = daemon.get("/api/v1/models/smol%3Aresume", Some(daemon.admin_key())).await.1;
    assert_eq!(m["digest"], expected.as_str());
    let out = daemon.home().run(&["models", "verify", "smol:resume", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(entries(&daemon.home().file("partials")).is_empty());
}

#[test]
fn cli_pulls_from_the_catalog_with_mirror_fallback_and_progress() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server = rt.block_on(RangeServer::start());
    let data = generated_gguf(2, 3 << 20);
    server.put("/corrupt.gguf", Served { corrupt: true, ..Served::bytes(data.clone()) });
    server.put("/good.gguf", Served { throttle: 2 << 20, ..Served::bytes(data.clone()) });
    let home = Home::new();
    let catalog = home.root().join("catalog.toml");
    let entry = |name: &str, data: &[u8], urls: &[String]| {
        format!(
            "[[model]]\nname = {name:?}\ndescription = \"test model\"\nlicense = \"mit\"\n[[model.files]]\nname = \"m.gguf\"\nsize = {}\nsha256 = {:?}\nurls = {urls:?}\n",
            data.len(),
            sha256(data)
        )
    };
    let other = generated_gguf(5, 1 << 20);
    server.put("/corrupt-other.gguf", Served { corrupt: true, ..Served::bytes(other.clone()) });
    std::fs::write(
        &catalog,
        entry("demo:1", &data, &[server.url("/corrupt.gguf"), server.url("/good.gguf")])
            + &entry("bad:1", &other, &[server.url("/corrupt-other.gguf")]),
    )
    .unwrap();
    std::fs::write(home.config(), allow_config(&format!("catalogs = [{:?}]\n", catalog.display().to_string())))
        .unwrap();
    let daemon = Daemon::start(home);
    let home = daemon.home();

    let available: Value = serde_json::from_str(&home.run_ok(&["models", "list", "--available", "--json"])).unwrap();
    let names: Vec<&str> =
        available["models"].as_array().unwrap().iter().map(|m| m["model"].as_str().unwrap()).collect();
    assert!(names.contains(&"demo:1") && names.contains(&"smollm2:135m"), "bundled and configured: {names:?}");

    let out = home.run(&["models", "pull", "demo:1", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (job["state"].as_str(), job["detail"]["digest"].as_str()),
        (Some("succeeded"), Some(sha256(&data).as_str()))
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().any(|l| l.starts_with("demo:1 ") && l.contains('%')), "plain progress lines: {stderr}");
    let shown: Value = serde_json::from_str(&home.run_ok(&["models", "show", "demo:1", "--json"])).unwrap();
    assert_eq!((shown["license"].as_str(), shown["source"].as_str()), (Some("mit"), Some("catalog:demo:1")));
    let available: Value = serde_json::from_str(&home.run_ok(&["models", "list", "--available", "--json"])).unwrap();
    let demo = available["models"].as_array().unwrap().iter().find(|m| m["model"] == "demo:1").unwrap().clone();
    assert_eq!(demo["present"], true);

    // Only a corrupt mirror: the pull fails and registers nothing.
    let out = home.run(&["models", "pull", "bad:1"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hashes to"), "{}", describe(&out));
    let list = home.run_ok(&["models", "list", "--json"]);
    assert!(!list.contains("bad:1"), "{list}");
    assert!(entries(&home.file("partials")).is_empty());
    drop(daemon);
    drop(rt);
}

#[test]
fn refusals_ssrf_traversal_and_quota_write_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server = rt.block_on(RangeServer::start());
    server.put("/m.gguf", Served::bytes(generated_gguf(3, 256 << 10)));
    let url = server.url("/m.gguf");

    let closed = Daemon::start(Home::new());
    let out = closed.home().run(&["models", "pull", &url]);
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("allow_hosts") && stderr.contains("127.0.0.1"), "{stderr}");
    for args in [
        vec!["models", "pull", "../../etc/passwd"],
        vec!["models", "pull", "sha256:../../x"],
        vec!["models", "pull", &url, "--name", "../evil"],
        vec!["models", "pull", "file:///etc/passwd"],
    ] {
        let out = closed.home().run(&args);
        assert!(!out.status.success(), "{args:?}: {}", describe(&out));
    }
    assert_eq!(server.bytes_sent(), 0, "nothing was fetched");

    let small = Daemon::with_config(&allow_config("quota = \"128KiB\"\n"));
    let out = small.home().run(&["models", "pull", &url]);
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("quota") && stderr.contains("ondevice models rm"), "{stderr}");
    assert!(entries(&small.home().file("partials")).is_empty());
    assert!(entries(&small.home().file("blobs")).is_empty(), "{:?}", entries(&small.home().file("blobs")));
    drop((closed, small));
    drop(rt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_pulls_share_one_download_and_gc_keeps_live_partials() {
    let data = generated_gguf(4, 4 << 20);
    let server = RangeServer::start().await;
    server.put("/shared.gguf", Served { throttle: 2 << 20, ..Served::bytes(data.clone()) });
    let daemon = Daemon::with_config(&allow_config(""));
    let body = json!({"model": server.url("/shared.gguf")});
    let (a, b) = tokio::join!(start_pull(&daemon, body.clone()), start_pull(&daemon, body));
    assert_eq!(a["id"], b["id"], "one job for both");
    // gc while the download runs keeps its partial, and removes a stale one.
    let stale = daemon.home().file("partials").join("0000000000000000.partial");
    std::fs::write(&stale, b"old").unwrap();
    let gc: Value = serde_json::from_str(&daemon.home().run_ok(&["models", "gc", "--json"])).unwrap();
    let removed: Vec<&str> = gc["removed_partials"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(removed.len(), 1, "{gc}");
    assert!(removed[0].ends_with("0000000000000000.partial"), "{gc}");
    let events = follow_events(&daemon, a["id"].as_str().unwrap()).await;
    assert!(events.len() >= 2, "progress events before the end: {events:?}");
    assert_eq!(events.last().unwrap()["state"], "succeeded", "{events:?}");
    assert!(server.bytes_sent() <= data.len() as u64 + 8, "one download: {} bytes sent", server.bytes_sent());
    let list: Value = daemon.get("/api/v1/jobs", Some(daemon.admin_key())).await.1;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_pull_streams_the_job_and_lists_models() {
    use ondevice_proto::v1::jobs_service_client::JobsServiceClient;
    use ondevice_proto::v1::models_service_client::ModelsServiceClient;
    use ondevice_proto::v1::{
        GetJobRequest, ListJobsRequest, ListModelsRequest, PinModelRequest, PullModelRequest, job,
    };
    let data = generated_gguf(6, 2 << 20);
    let server = RangeServer::start().await;
    server.put("/g.gguf", Served { throttle: 4 << 20, ..Served::bytes(data.clone()) });
    let daemon = Daemon::with_config(&allow_config(""));
    let key = daemon.key(&["models"]).await;
    let channel = tonic::transport::Endpoint::from_shared(daemon.url("")).unwrap().connect().await.unwrap();
    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {}", key.secret).parse().unwrap();
    let with_key = move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", auth.clone());
        Ok(req)
    };
    let mut jobs = JobsServiceClient::with_interceptor(channel.clone(), with_key.clone());
    let mut client = ModelsServiceClient::with_interceptor(channel, with_key);
    let mut stream = client
        .pull_model(PullModelRequest { model: server.url("/g.gguf"), name: "grpc:pulled".into() })
        .await
        .expect("PullModel")
        .into_inner();
    let mut last = None;
    while let Some(job) = tokio::time::timeout(Duration::from_secs(60), stream.message()).await.unwrap().unwrap() {
        last = Some(job);
    }
    let last = last.expect("job messages");
    let Some(job::Detail::Pull(pull)) = &last.detail else { panic!("a pull detail: {last:?}") };
    assert_eq!((last.state.as_str(), pull.digest.as_str()), ("succeeded", sha256(&data).as_str()), "{last:?}");
    assert_eq!((pull.model.as_str(), pull.done_bytes), ("grpc:pulled", data.len() as u64));
    let progress = last.progress.clone().unwrap();
    assert_eq!(
        (progress.done, progress.total, progress.unit.as_str()),
        (data.len() as u64, Some(data.len() as u64), "bytes")
    );
    let models = client.list_models(ListModelsRequest {}).await.unwrap().into_inner().models;
    assert_eq!(models.iter().map(|m| m.model.as_str()).collect::<Vec<_>>(), ["grpc:pulled"]);
    assert!(!models[0].pinned && models[0].last_used_at == 0, "{:?}", models[0]);
    let listed = jobs.list(ListJobsRequest { kind: "pull".into(), state: "succeeded".into() }).await.unwrap();
    assert_eq!(listed.into_inner().jobs.len(), 1);
    let none = jobs.list(ListJobsRequest { kind: "quantize".into(), state: String::new() }).await.unwrap();
    assert!(none.into_inner().jobs.is_empty());
    let bad = jobs.list(ListJobsRequest { kind: String::new(), state: "nope".into() }).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let got = jobs.get(GetJobRequest { id: last.id.clone() }).await.unwrap().into_inner();
    assert_eq!((got.id, got.kind.as_str()), (last.id.clone(), "pull"));
    let finished = jobs.cancel(ondevice_proto::v1::CancelJobRequest { id: last.id.clone() }).await.unwrap_err();
    assert_eq!(finished.code(), tonic::Code::FailedPrecondition, "cancelling a finished job: {finished:?}");

    // Pinning over gRPC is what the HTTP API and the CLI see.
    let pinned = client
        .pin_model(PinModelRequest { name: "grpc:pulled".into(), pinned: true })
        .await
        .expect("PinModel")
        .into_inner()
        .models;
    assert_eq!(pinned.iter().map(|m| (m.model.as_str(), m.pinned)).collect::<Vec<_>>(), [("grpc:pulled", true)]);
    let (_, shown) = daemon.get("/api/v1/models/grpc:pulled", Some(daemon.admin_key())).await;
    assert_eq!(shown["pinned"], true, "{shown}");
    client.pin_model(PinModelRequest { name: "grpc:pulled".into(), pinned: false }).await.expect("unpin");
    let (_, shown) = daemon.get("/api/v1/models/grpc:pulled", Some(daemon.admin_key())).await;
    assert_eq!(shown["pinned"], false, "{shown}");
    let missing = client.pin_model(PinModelRequest { name: "no:such".into(), pinned: true }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
}

#[tokio::test]
async fn export_then_import_on_another_home_gives_the_same_digest() {
    let first = Daemon::start(Home::new());
    let file = match test_model("export_then_import_on_another_home_gives_the_same_digest") {
        Some(f) => f,
        None => {
            let f = first.home().root().join("tiny.gguf");
            crate::common::write_small_gguf(&f, 9);
            f
        }
    };
    let shown: Value = serde_json::from_str(&first.home().run_ok(&[
        "models",
        "import",
        file.to_str().unwrap(),
        "--name",
        "move:me",
        "--json",
    ]))
    .unwrap();
    let bundle = first.home().root().join("move.tar");
    first.home().run_ok(&["models", "export", "move:me", "--output", bundle.to_str().unwrap()]);

    let second = Daemon::start(Home::new());
    let imported: Value =
        serde_json::from_str(&second.home().run_ok(&["models", "import", bundle.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(imported["model"], "move:me");
    assert_eq!(imported["digest"], shown["digest"], "bit-identical");
    assert_eq!(imported["size"], shown["size"]);
    second.home().run_ok(&["models", "verify", "move:me"]);

    // A tampered bundle is refused and registers nothing.
    let mut bytes = std::fs::read(&bundle).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let bad = second.home().root().join("bad.tar");
    std::fs::write(&bad, bytes).unwrap();
    let out = second.home().run(&["models", "import", bad.to_str().unwrap(), "--name", "tampered:1"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(!second.home().run_ok(&["models", "list"]).contains("tampered"));
}

/// Every file under `dir`, recursively, as text (lossy).
fn read_tree(dir: &std::path::Path) -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().map(Result::unwrap) {
        let path = entry.path();
        if path.is_dir() {
            out.extend(read_tree(&path));
        } else {
            out.push((path.clone(), String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned()));
        }
    }
    out
}

/// `[registry.credentials."127.0.0.1"] token = "env:…"` against an in-test server that answers
/// 401 without `Authorization: Bearer <secret>`, for the model file and for the catalog, which is
/// configured by URL. With the right token the catalog loads and the pull verifies; with a wrong
/// one, or after a redirect to another host name (the token is for `127.0.0.1` only), the pull
/// fails and says which setting to look at. The secret never appears in the daemons' log files
/// (at trace level), their stderr, the jobs' errors or any CLI output.
#[test]
fn credentials_go_to_their_host_only_and_never_show() {
    const TOKEN_VAR: &str = "E2E_PULL_REGISTRY_TOKEN";
    const SECRET: &str = "e2e-secret-3f9d2c71b8a4";
    const WRONG: &str = "e2e-wrong-6a1e0b5d77";
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server = rt.block_on(RangeServer::start());
    let private = |served: Served| Served { bearer: Some(SECRET.to_owned()), ..served };
    let data = generated_gguf(8, 3 << 20);
    server.put("/private.gguf", private(Served::bytes(data.clone())));
    let port = server.addr.port();
    let to_localhost = format!("http://localhost:{port}/private.gguf");
    server.put("/elsewhere.gguf", private(Served { redirect_to: Some(to_localhost), ..Served::bytes(Vec::new()) }));
    let catalog = format!(
        "[[model]]\nname = \"private:1\"\n[[model.files]]\nname = \"p.gguf\"\nsize = {}\nsha256 = {:?}\nurls = [{:?}]\n",
        data.len(),
        sha256(&data),
        server.url("/private.gguf")
    );
    server.put("/catalog.toml", private(Served::bytes(catalog.into_bytes())));
    let config = format!(
        "[registry]\nallow_hosts = [\"127.0.0.1\", \"localhost\"]\nchunk_size = \"1MiB\"\nconnections = {CONNECTIONS}\nretries = 1\ncatalogs = [{:?}]\n\n[registry.credentials.\"127.0.0.1\"]\ntoken = \"env:{TOKEN_VAR}\"\n\n[log]\nlevel = \"trace\"\n",
        server.url("/catalog.toml")
    );
    let mut shown = Vec::new();

    let good = Daemon::start_with_env(Home::with_config(&config), &[(TOKEN_VAR, SECRET)]);
    let home = good.home();
    let out = home.run(&["models", "list", "--available", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let available: Value = serde_json::from_slice(&out.stdout).unwrap();
    shown.push(describe(&out));
    assert!(
        available["models"].as_array().unwrap().iter().any(|m| m["model"] == "private:1"),
        "the catalog URL was read with the token: {available}"
    );
    assert_eq!(available["problems"], json!([]), "{available}");
    let out = home.run(&["models", "pull", "private:1", "--json"]);
    shown.push(describe(&out));
    assert!(out.status.success(), "{}", describe(&out));
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (job["state"].as_str(), job["detail"]["digest"].as_str()),
        (Some("succeeded"), Some(sha256(&data).as_str()))
    );
    shown.push(home.run_ok(&["models", "verify", "private:1"]));
    let refused = |t: &Transfer| t.status == 401;
    assert!(!server.transfers().iter().any(refused), "every request carried the token: {:?}", server.transfers());

    // The redirect leaves 127.0.0.1 for `localhost`: that hop goes without the token.
    let out = home.run(&["models", "pull", &server.url("/elsewhere.gguf"), "--name", "elsewhere:1"]);
    shown.push(describe(&out));
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("[registry.credentials.\"localhost\"]"),
        "names the host that wanted a token: {stderr}"
    );
    assert_eq!(server.transfers().iter().filter(|t| refused(t)).count(), 1, "{:?}", server.transfers());

    let wrong = Daemon::start_with_env(Home::with_config(&config), &[(TOKEN_VAR, WRONG)]);
    let out = wrong.home().run(&["models", "pull", &server.url("/private.gguf"), "--name", "private:2"]);
    shown.push(describe(&out));
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("token of [registry.credentials.\"127.0.0.1\"] was refused"),
        "a wrong token is named as the cause: {stderr}"
    );
    let out = wrong.home().run(&["models", "list", "--available", "--json"]);
    shown.push(describe(&out));
    let available: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(available["problems"].to_string().contains("401"), "the catalog URL was refused: {available}");
    assert!(!wrong.home().run_ok(&["models", "list"]).contains("private"));
    assert!(entries(&wrong.home().file("partials")).is_empty());

    for daemon in [&good, &wrong] {
        let (_, jobs) = rt.block_on(daemon.get("/api/v1/jobs", Some(daemon.admin_key())));
        assert!(jobs.as_array().is_some_and(|j| !j.is_empty()), "{jobs}");
        shown.push(jobs.to_string());
        shown.push(daemon.stderr());
        let logs = read_tree(&daemon.home().file("logs"));
        assert!(logs.iter().any(|(_, text)| text.contains("pull")), "the daemon logged the pulls: {logs:?}");
        shown.extend(logs.into_iter().map(|(path, text)| format!("{}:\n{text}", path.display())));
    }
    for text in &shown {
        assert!(!text.contains(SECRET) && !text.contains(WRONG), "a token is shown:\n{text}");
    }
    drop((good, wrong));
    drop(rt);
}

/// Issue measurement: with the default chunking (16 MiB chunks, 4 connections) a pull killed
/// with SIGKILL before any chunk finished used to fetch the whole file again. Progress inside a
/// chunk is now recorded, so the restarted daemon re-fetches about 1-2 MiB per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_killed_inside_its_chunks_refetches_little() {
    const MIB: u64 = 1 << 20;
    let data = generated_gguf(9, 64 << 20);
    let len = data.len() as u64;
    let expected = sha256(&data);
    let server = RangeServer::start().await;
    // Each connection at 2 MiB/s: the kill at a third comes before any 16 MiB chunk finishes.
    server.put("/big.gguf", Served { throttle: 2 * MIB, ..Served::bytes(data) });
    let config = "[registry]\nallow_hosts = [\"127.0.0.1\"]\nchunk_size = \"16MiB\"\nconnections = 4\n";
    let daemon = Daemon::with_config(config);
    let job = start_pull(&daemon, json!({"model": server.url("/big.gguf"), "name": "big:resume"})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    wait_for_progress(&daemon, &id, len / 3).await;
    let home = daemon.kill9();
    let before = server.bytes_sent();
    let daemon = Daemon::start(home);
    let events = follow_events(&daemon, &id).await;
    let last = events.last().expect("events");
    assert_eq!(
        (last["state"].as_str(), last["detail"]["digest"].as_str()),
        (Some("succeeded"), Some(expected.as_str()))
    );
    let sent: u64 = server.transfers().iter().filter(|t| !(t.start == 0 && t.end == 1)).map(|t| t.sent).sum();
    let again = sent.saturating_sub(len);
    println!(
        "killed after {before} of {len} bytes were sent; fetched again: {again} bytes ({:.2} MiB per connection)",
        again as f64 / 4.0 / MIB as f64
    );
    assert!(before < len / 2, "killed midway ({before} of {len})");
    assert!(again <= 4 * (2 * MIB + MIB / 4), "fetched {again} bytes again: more than ~2 MiB per connection");
    let out = daemon.home().run(&["models", "verify", "big:resume", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_cli_lists_filters_shows_watches_and_cancels() {
    let fast = generated_gguf(3, 1 << 20);
    let server = RangeServer::start().await;
    server.put("/fast.gguf", Served::bytes(fast.clone()));
    server.put("/slow.gguf", Served { throttle: 64 << 10, ..Served::bytes(generated_gguf(4, 8 << 20)) });
    let daemon = Daemon::with_config(&allow_config(""));
    let home = daemon.home();
    let json_of = |args: &[&str]| -> Value {
        let out = home.run(args);
        assert!(out.status.success(), "{}", describe(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)))
    };

    let started = json_of(&["models", "pull", &server.url("/fast.gguf"), "--name", "fast:1", "--detach", "--json"]);
    let fast_id = started["id"].as_str().unwrap().to_owned();
    let watched = json_of(&["jobs", "watch", &fast_id, "--json"]);
    assert_eq!((watched["state"].as_str(), watched["kind"].as_str()), (Some("succeeded"), Some("pull")), "{watched}");
    assert_eq!(watched["detail"]["digest"], sha256(&fast).as_str());
    assert_eq!(watched["progress"]["unit"], "bytes");

    let slow = json_of(&["models", "pull", &server.url("/slow.gguf"), "--name", "slow:1", "--detach", "--json"]);
    let slow_id = slow["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while json_of(&["jobs", "show", &slow_id, "--json"])["state"] != "running" {
        assert!(Instant::now() < deadline, "the slow pull never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids = |v: &Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(ids(&json_of(&["jobs", "list", "--json"])), [fast_id.clone(), slow_id.clone()]);
    assert_eq!(ids(&json_of(&["jobs", "list", "--state", "running", "--json"])), std::slice::from_ref(&slow_id));
    assert_eq!(
        ids(&json_of(&["jobs", "list", "--kind", "pull", "--state", "succeeded", "--json"])),
        std::slice::from_ref(&fast_id)
    );
    assert!(ids(&json_of(&["jobs", "list", "--kind", "quantize", "--json"])).is_empty());
    let table = home.run_ok(&["jobs", "list"]);
    assert!(table.contains(&slow_id) && table.contains("slow:1") && table.contains("running"), "{table}");
    let bad = home.run(&["jobs", "list", "--state", "done"]);
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("unknown job state"),
        "{}",
        describe(&bad)
    );
    let shown = json_of(&["jobs", "show", &slow_id, "--json"]);
    assert_eq!((shown["detail"]["model"].as_str(), shown["kind"].as_str()), (Some("slow:1"), Some("pull")), "{shown}");

    let cancelled = json_of(&["jobs", "cancel", &slow_id, "--json"]);
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let again = home.run(&["jobs", "cancel", &slow_id]);
    assert!(
        !again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already cancelled"),
        "{}",
        describe(&again)
    );
    let watch = home.run(&["jobs", "watch", &slow_id]);
    assert_eq!(watch.status.code(), Some(1), "watching a cancelled job exits 1: {}", describe(&watch));
    let missing = home.run(&["jobs", "show", "0000000000000000"]);
    assert!(
        !missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("no job"),
        "{}",
        describe(&missing)
    );
    assert!(!home.run_ok(&["models", "list"]).contains("slow:1"), "a cancelled pull registers nothing");
}
