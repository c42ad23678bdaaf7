//! Compatibility routes and statuses through the real daemon with the real SmolLM2 model: the
//! real `openai`, `ollama`, `langchain-openai` and `langchain-ollama` Python clients (pinned in
//! `scripts/test.sh`) call `models.retrieve`, `show`, `pull` (progress from a pull job, the file
//! served by Python's own HTTP server), `copy`, `delete` and the chat and embedding paths; a 3 MB prompt is
//! refused with a status naming the limit (not a 500 from the worker socket), over HTTP and
//! WebSocket. Without `$ONDEVICE_TEST_MODELS_DIR` each test prints a note and returns.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Daemon, Home, Key, describe, python, test_model, ws_connect, ws_next, ws_send};

const WAIT: Duration = Duration::from_secs(120);

struct Setup {
    daemon: Daemon,
    key: Key,
}

/// A daemon (pulls from 127.0.0.1 allowed) with the model imported as `smollm2:latest` and a key
/// holding `scopes`.
async fn setup(test: &str, scopes: &[&str]) -> Option<Setup> {
    let file = test_model(test)?;
    let daemon = Daemon::start(Home::with_config("[registry]\nallow_hosts = [\"127.0.0.1\"]\n"));
    let out = daemon.home().run(&["models", "import", file.to_str().expect("utf-8 path"), "--name", "smollm2"]);
    assert!(out.status.success(), "import: {}", describe(&out));
    let key = daemon.key(scopes).await;
    Some(Setup { daemon, key })
}

const CLIENTS_SCRIPT: &str = r#"
import functools, http.server, json, os, threading, openai, ollama
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from langchain_ollama import ChatOllama, OllamaEmbeddings

base, key = os.environ["BASE"], os.environ["ONDEVICE_TEST_KEY"]
out = {}
files = http.server.ThreadingHTTPServer(
    ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=os.environ["PULL_DIR"]))
threading.Thread(target=files.serve_forever, daemon=True).start()
pull_url = "http://127.0.0.1:%d/tiny.gguf" % files.server_port
o = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
m = o.models.retrieve("smollm2")
out["retrieve"] = [m.id, m.object, m.owned_by]
try:
    o.models.retrieve("no-such-model")
    out["retrieve_missing"] = None
except openai.NotFoundError as e:
    out["retrieve_missing"] = e.status_code
try:
    o.responses.create(model="smollm2", input="hi")
    out["responses"] = None
except openai.APIStatusError as e:
    out["responses"] = e.status_code

c = ollama.Client(host=base, headers={"Authorization": "Bearer " + key})
s = c.show("smollm2")
out["show"] = {"family": s.details.family, "quant": s.details.quantization_level, "format": s.details.format,
               "arch": (s.modelinfo or {}).get("general.architecture"), "caps": list(s.capabilities or [])}
try:
    c.show("no-such-model")
    out["show_missing"] = None
except ollama.ResponseError as e:
    out["show_missing"] = e.status_code
progress = [p.status for p in c.pull(pull_url, stream=True)]
out["pull"] = progress
out["pull_again"] = c.pull(pull_url, stream=False).status
c.copy("smollm2", "smollm2:copy")
out["after_copy"] = sorted(x.model for x in c.list().models)
c.delete("smollm2:copy")
out["after_delete"] = sorted(x.model for x in c.list().models)
try:
    c.delete("smollm2:copy")
    out["delete_missing"] = None
except ollama.ResponseError as e:
    out["delete_missing"] = e.status_code
try:
    c.create(model="x", from_="smollm2")
    out["create"] = None
except ollama.ResponseError as e:
    out["create"] = e.status_code

msgs = [("system", "You are a helpful assistant."), ("human", "What is the capital of France?")]
lo = ChatOpenAI(model="smollm2", base_url=base + "/v1", api_key=key, temperature=0, max_tokens=40, max_retries=0)
out["lc_openai"] = lo.invoke(msgs).content
out["lc_openai_stream"] = "".join(ch.content for ch in lo.stream(msgs))
le = OpenAIEmbeddings(model="smollm2", base_url=base + "/v1", api_key=key, check_embedding_ctx_length=False,
                      max_retries=0)
out["lc_openai_embed"] = [len(v) for v in le.embed_documents(["hello", "world"])]
headers = {"headers": {"Authorization": "Bearer " + key}}
lc = ChatOllama(model="smollm2", base_url=base, temperature=0, num_predict=40, client_kwargs=headers,
                validate_model_on_init=True)
out["lc_ollama"] = lc.invoke(msgs).content
out["lc_ollama_stream"] = "".join(ch.content for ch in lc.stream(msgs))
lq = OllamaEmbeddings(model="smollm2", base_url=base, client_kwargs=headers)
out["lc_ollama_embed"] = len(lq.embed_query("hello"))
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn python_client_libraries_reach_the_compatibility_routes() {
    let test = "python_client_libraries_reach_the_compatibility_routes";
    let Some(Setup { daemon, key }) = setup(test, &["infer", "models"]).await else { return };
    // A small model for the pull, served over HTTP by the script.
    let dir = daemon.home().root().join("served");
    std::fs::create_dir_all(&dir).unwrap();
    crate::common::write_small_gguf(&dir.join("tiny.gguf"), 9);
    let dir = dir.to_str().expect("utf-8 path");
    let v = tokio::task::block_in_place(|| python(&daemon, &key.secret, &[("PULL_DIR", dir)], CLIENTS_SCRIPT));
    assert_eq!(v["retrieve"], json!(["smollm2:latest", "model", "ondevice"]), "{v}");
    assert_eq!(v["retrieve_missing"], 404, "{v}");
    assert_eq!(v["responses"], 501, "{v}");
    assert_eq!(v["show"]["family"], "llama", "{v}");
    assert_eq!(v["show"]["arch"], "llama", "{v}");
    assert_eq!(v["show"]["format"], "gguf", "{v}");
    assert!(v["show"]["quant"].as_str().is_some_and(|q| q.starts_with("Q4")), "{v}");
    assert!(v["show"]["caps"].as_array().unwrap().iter().any(|c| c == "completion"), "{v}");
    assert_eq!(v["show_missing"], 404, "{v}");
    let pull: Vec<&str> = v["pull"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(pull.first(), Some(&"pulling manifest"), "{v}");
    assert_eq!(pull.last(), Some(&"success"), "{v}");
    assert_eq!(v["pull_again"], "success", "{v}");
    assert!(v["after_copy"].as_array().unwrap().iter().any(|m| m == "smollm2:copy"), "{v}");
    assert!(v["after_copy"].as_array().unwrap().iter().any(|m| m == "tiny:latest"), "pulled: {v}");
    assert!(!v["after_delete"].as_array().unwrap().iter().any(|m| m == "smollm2:copy"), "{v}");
    assert_eq!(v["delete_missing"], 404, "{v}");
    assert_eq!(v["create"], 501, "{v}");
    for k in ["lc_openai", "lc_openai_stream", "lc_ollama", "lc_ollama_stream"] {
        assert!(v[k].as_str().is_some_and(|t| t.contains("Paris")), "{k}: {v}");
    }
    assert_eq!(v["lc_openai"], v["lc_openai_stream"], "{v}");
    assert_eq!(v["lc_ollama"], v["lc_ollama_stream"], "{v}");
    let dims = v["lc_openai_embed"].as_array().unwrap();
    assert!(dims.len() == 2 && dims[0].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["lc_ollama_embed"], dims[0], "{v}");

    // GET /api/version and the scopes of the management routes.
    let (status, version) = daemon.get("/api/version", Some(&key.secret)).await;
    assert_eq!((status, version["version"].as_str()), (StatusCode::OK, Some(env!("CARGO_PKG_VERSION"))));
    let read = daemon.key(&["read"]).await;
    let resp = daemon
        .request(Method::DELETE, "/api/delete", Some(&read.secret))
        .json(&json!({"model": "smollm2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = daemon.request(Method::POST, "/api/show", None).json(&json!({"model": "smollm2"})).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_3mb_prompt_is_refused_with_a_status_naming_the_limit() {
    let test = "a_3mb_prompt_is_refused_with_a_status_naming_the_limit";
    let Some(Setup { daemon, key }) = setup(test, &["infer"]).await else { return };
    let prompt = "hello world ".repeat(3 * 1024 * 1024 / 12);
    let check = |status: StatusCode, body: &Value, surface: &str| {
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE,
            "{surface}: {status} {body}"
        );
        let msg = body["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("context") || msg.contains("limit"), "{surface}: the message names the limit: {msg}");
        assert!(!msg.contains("worker answered"), "{surface}: {msg}");
    };
    for (path, body) in [
        ("/v1/chat/completions", json!({"model": "smollm2", "messages": [{"role": "user", "content": prompt}]})),
        ("/v1/completions", json!({"model": "smollm2", "prompt": prompt, "max_tokens": 4})),
        ("/api/generate", json!({"model": "smollm2", "prompt": prompt, "stream": false})),
    ] {
        let resp =
            daemon.request(Method::POST, path, Some(&key.secret)).timeout(WAIT).json(&body).send().await.unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        check(status, &body, path);
    }
    let (mut ws, _) = ws_connect(&daemon, &[("authorization", format!("Bearer {}", key.secret))]).await.expect("ws");
    ws_send(&mut ws, json!({"type": "generate", "id": "big", "model": "smollm2", "prompt": prompt})).await;
    loop {
        let msg = ws_next(&mut ws, WAIT).await.json();
        if msg["type"] == "error" {
            assert_eq!(msg["id"], "big");
            let code = msg["error"]["code"].as_str().unwrap_or_default();
            assert!(code == "invalid_request" || code == "too_large", "{msg}");
            check(StatusCode::BAD_REQUEST, &msg, "websocket");
            break;
        }
        assert!(msg["type"] == "hello" || msg["type"] == "event", "unexpected {msg}");
    }
    // The model still answers.
    let resp = daemon
        .request(Method::POST, "/v1/chat/completions", Some(&key.secret))
        .timeout(WAIT)
        .json(&json!({"model": "smollm2", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}
