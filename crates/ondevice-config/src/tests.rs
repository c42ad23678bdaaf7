//! Tests of the loading pipeline: strict parsing with positions, precedence, validation, and the
//! freshness of the committed schema and reference page.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Environment {
    Environment::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// One helper for every "this text must fail at this line with this message" case.
fn assert_error(text: &str, line: usize, needle: &str) {
    let (_dir, path) = write_config(text);
    let err = check_file(&path).expect_err(text);
    let shown = err.to_string();
    assert_eq!(err.line(), Some(line), "wrong line for {text:?}: {shown}");
    assert!(shown.contains(needle), "{shown:?} lacks {needle:?}");
    assert!(shown.contains(&format!("config.toml:{line}")), "{shown:?} lacks the file and line");
}

#[test]
fn errors_name_the_line() {
    assert_error("[server]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n", 3, "unknown field `bogus`");
    assert_error("[nope]\n", 1, "unknown field `nope`");
    assert_error("[server]\n\nlisten = \"nowhere\"\n", 3, "invalid listen address");
    assert_error("[server]\nbody_limit = \"12 parsecs\"\n", 2, "invalid size");
    assert_error("[server]\nlisten = \"127.0.0.1:1\"\nbody_limit = \"2GiB\"\n", 3, "must be at most 1GiB");
    assert_error("[log]\nformat = \"xml\"\n", 2, "unknown variant `xml`");
    assert_error("[auth]\nenabled = \"yes\"\n", 2, "invalid type");
    assert_error("[server\n", 1, "");
    assert_error(
        "[server]\nlisten = \"0.0.0.0:7733\"\n[auth]\nenabled = false\n",
        4,
        "auth.enabled: auth cannot be disabled",
    );
    assert_error("[server]\ncors_origins = [\"http://a/b\"]\n", 2, "is not an origin");
    assert_error("[server]\nallowed_hosts = [\"http://x\"]\n", 2, "is not a host name");
    assert_error(
        "[server.tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
        2,
        "not a readable file",
    );
    assert_error("[log]\nmax_files = 0\n", 2, "at least 1");
}

#[test]
fn valid_file_parses_and_defaults_fill_the_rest() {
    let (_dir, path) = write_config(
        "[server]\nlisten = \"127.0.0.1:9000\"\nbody_limit = \"1MiB\"\ncors_origins = [\"http://localhost:3000\"]\n[log]\nformat = \"json\"\n",
    );
    let s = check_file(&path).unwrap();
    assert_eq!(s.server.listen.to_string(), "127.0.0.1:9000");
    assert_eq!(s.server.body_limit, ByteSize::mib(1));
    assert_eq!(s.log.format, LogFormat::Json);
    assert!(s.auth.enabled, "auth defaults to on");
    assert_eq!(s.server.max_concurrent_requests, 512);
}

#[test]
fn precedence_is_file_then_env_then_flags() {
    let (dir, path) = write_config("[server]\nlisten = \"127.0.0.1:9000\"\n[log]\nlevel = \"warn\"\n");
    let home = dir.path().join("home");
    let cfg = path.to_str().unwrap();
    let home_s = home.to_str().unwrap();

    let r = load(&env(&[(ENV_CONFIG, cfg), (ENV_HOME, home_s)]), &Overrides::default()).unwrap();
    assert_eq!(r.settings.server.listen.to_string(), "127.0.0.1:9000");
    assert_eq!(r.settings.log.level, "warn");
    assert_eq!(r.paths.home, home);
    assert_eq!(r.config_file.as_deref(), Some(path.as_path()));

    let e = env(&[(ENV_CONFIG, cfg), (ENV_HOME, home_s), (ENV_LISTEN, "127.0.0.1:9001"), (ENV_LOG_LEVEL, "debug")]);
    let r = load(&e, &Overrides::default()).unwrap();
    assert_eq!(r.settings.server.listen.to_string(), "127.0.0.1:9001");
    assert_eq!(r.settings.log.level, "debug");

    let flags = Overrides {
        listen: Some("127.0.0.1:9002".parse().unwrap()),
        log_level: Some("trace".into()),
        ..Default::default()
    };
    let r = load(&e, &flags).unwrap();
    assert_eq!(r.settings.server.listen.to_string(), "127.0.0.1:9002");
    assert_eq!(r.settings.log.level, "trace");
}

#[test]
fn env_values_are_validated() {
    let err =
        load(&env(&[(ENV_HOME, "/tmp/x"), (ENV_CONFIG, "/nonexistent/c.toml")]), &Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("cannot read config file /nonexistent/c.toml"), "{err}");
    let (_d, path) = write_config("");
    let cfg = path.to_str().unwrap();
    let err =
        load(&env(&[(ENV_HOME, "/tmp/x"), (ENV_CONFIG, cfg), (ENV_LISTEN, "bad")]), &Overrides::default()).unwrap_err();
    assert!(err.to_string().starts_with("environment variable ONDEVICE_LISTEN: invalid listen address"), "{err}");
    let err = load(&env(&[(ENV_HOME, "/tmp/x"), (ENV_CONFIG, cfg), (ENV_LOG_FORMAT, "xml")]), &Overrides::default())
        .unwrap_err();
    assert!(err.to_string().contains("ONDEVICE_LOG_FORMAT"), "{err}");
}

#[test]
fn non_loopback_without_auth_is_refused_whatever_sets_the_address() {
    let (_d, path) = write_config("[auth]\nenabled = false\n");
    let cfg = path.to_str().unwrap();
    let ok = load(&env(&[(ENV_HOME, "/tmp/x"), (ENV_CONFIG, cfg)]), &Overrides::default()).unwrap();
    assert!(!ok.settings.auth.enabled, "loopback without auth is allowed");
    let err =
        load(&env(&[(ENV_HOME, "/tmp/x"), (ENV_CONFIG, cfg), (ENV_LISTEN, "0.0.0.0:7733")]), &Overrides::default())
            .unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("set by ONDEVICE_LISTEN"), "{shown}");
    assert_eq!(err.line(), Some(2));
}

#[test]
fn show_redacts_and_round_trips() {
    let s = Settings::default();
    let shown = to_redacted_toml(&s);
    let back: Settings = toml::from_str(&shown).unwrap();
    assert_eq!(back, s);
}

/// The committed `docs/config.schema.json` and `docs/config.md` match the types.
/// Regenerate with `ONDEVICE_BLESS=1 cargo test -p ondevice-config`.
#[test]
fn committed_schema_and_reference_are_fresh() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    for (name, want) in
        [("config.schema.json", schema::json_schema_text()), ("config.md", schema::reference_markdown())]
    {
        let path = docs.join(name);
        if std::env::var_os("ONDEVICE_BLESS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "docs/{name} is stale: run `ONDEVICE_BLESS=1 cargo test -p ondevice-config` and commit it"
        );
    }
}

#[test]
fn runtimes_parse_with_secret_refs_and_model_mappings() {
    let (_dir, path) = write_config(
        r#"
[runtimes.lan-vllm]
kind = "openai"
base_url = "http://192.168.1.20:8000/v1"
api_key = "env:VLLM_API_KEY"
models = ["qwen2.5:7b", { name = "llama3:8b", upstream = "meta-llama/Meta-Llama-3-8B-Instruct" }]

[runtimes.my-rest]
kind = "rest"
base_url = "http://127.0.0.1:9000"
[runtimes.my-rest.generate]
path = "/v2/infer"
headers = { X-Key = "file:/run/keys/rest" }
body = { input = "{{prompt}}", opts = { n = "{{max_tokens}}" } }
response = "ndjson"
text = "/delta/text"
done = "/finished"
"#,
    );
    let s = check_file(&path).unwrap();
    let vllm = &s.runtimes["lan-vllm"];
    assert_eq!(vllm.kind, runtimes::RuntimeKind::Openai);
    assert_eq!(vllm.api_key, Some(SecretRef::Env("VLLM_API_KEY".into())));
    assert_eq!(vllm.models[1].upstream(), "meta-llama/Meta-Llama-3-8B-Instruct");
    assert_eq!((vllm.timeout_s, vllm.health.period_s), (300, 10));
    let rest = s.runtimes["my-rest"].generate.as_ref().unwrap();
    assert_eq!(rest.response, runtimes::ResponseMode::Ndjson);
    let shown = to_redacted_toml(&s);
    assert!(!shown.contains("VLLM_API_KEY"), "api_key is redacted in config show: {shown}");
}

#[test]
fn runtime_errors_name_the_line() {
    let head = "[runtimes.r]\nkind = \"openai\"\nbase_url = \"http://h:1\"\n";
    assert_error(&format!("{head}api_key = \"sk-live-abc\"\n"), 4, "write \"env:VARIABLE\" or \"file:/path/to/key\"");
    assert_error("[runtimes.r]\nkind = \"openai\"\nbase_url = \"ftp://h\"\n", 3, "base_url must be an http://");
    assert_error("[runtimes.r]\nkind = \"vllm\"\nbase_url = \"http://h:1\"\n", 2, "unknown variant `vllm`");
    assert_error(&format!("{head}models = [\"a\", \"a\"]\n"), 4, "listed twice");
    assert_error(&format!("{head}timeout_s = 0\n"), 4, "runtimes.r.timeout_s: must be at least 1");
    assert_error(&format!("{head}health = {{ period_s = 0 }}\n"), 4, "runtimes.r.health.period_s: must be at least 1");
    assert_error(
        &format!("{head}[runtimes.r.health]\ntimeout_s = 2\nfailure_threshold = 0\n"),
        6,
        "runtimes.r.health.failure_threshold: must be at least 1",
    );
    assert_error(&format!("{head}models = [{{ name = \"a\" }}]\n"), 4, "missing field `upstream`");
    assert_error(&format!("{head}[runtimes.r.generate]\npath = \"/x\"\ntext = \"/t\"\n"), 4, "only kind = \"rest\"");
    let rest = "[runtimes.r]\nkind = \"rest\"\nbase_url = \"http://h:1\"\n";
    assert_error(rest, 1, "needs a [runtimes.NAME.generate] table");
    assert_error(
        &format!("{rest}[runtimes.r.generate]\npath = \"/x\"\nbody = {{ q = \"{{{{promt}}}}\" }}\ntext = \"/t\"\n"),
        6,
        "unknown placeholder {{promt}}",
    );
    assert_error(&format!("{rest}[runtimes.r.generate]\npath = \"/x\"\ntext = \"t\"\n"), 6, "is not a JSON pointer");
    assert_error(&format!("{rest}[runtimes.r.generate]\npath = \"x\"\ntext = \"/t\"\n"), 5, "must start with /");
    assert_error("[runtimes.embedded]\nkind = \"openai\"\nbase_url = \"http://h:1\"\n", 1, "is reserved");
}

#[test]
fn windows_control_pipe_is_per_home_and_stable() {
    let pipe = |home: &str| pipe_for_home(Path::new(home)).to_string_lossy().into_owned();
    let ada = pipe(r"C:\Users\ada\AppData\Roaming\ondevice\data");
    // A fixed value: a CLI built later must find the pipe of a daemon built earlier.
    assert_eq!(ada, r"\\.\pipe\ondevice-19c440aab89310bd");
    assert_eq!(pipe(r"c:\users\ADA\AppData\Roaming\ondevice\data"), ada, "Windows paths ignore case");
    assert_ne!(pipe(r"C:\Users\bob\AppData\Roaming\ondevice\data"), ada);
}

#[test]
fn network_and_telemetry_sections_with_their_env_overrides() {
    let (_d, path) = write_config(
        "[network]\noffline = true\n[telemetry]\nendpoint = \"https://t.example/v1\"\ninterval_s = 3600\n",
    );
    let cfg = path.to_str().unwrap();
    let r = load(&env(&[(ENV_HOME, "/tmp/x"), (ENV_CONFIG, cfg)]), &Overrides::default()).unwrap();
    assert!(r.settings.network.offline);
    assert_eq!(r.settings.telemetry.endpoint, "https://t.example/v1");
    let e = env(&[
        (ENV_HOME, "/tmp/x"),
        (ENV_CONFIG, cfg),
        (crate::network::ENV_OFFLINE, "0"),
        (crate::telemetry::ENV_TELEMETRY_ENDPOINT, "file"),
    ]);
    let r = load(&e, &Overrides::default()).unwrap();
    assert!(!r.settings.network.offline, "the environment wins over the file");
    assert_eq!(r.settings.telemetry.endpoint, "file");
    let err = load(
        &env(&[(ENV_HOME, "/tmp/x"), (ENV_CONFIG, cfg), (crate::network::ENV_OFFLINE, "maybe")]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("ONDEVICE_OFFLINE"), "{err}");
    let (_d2, bad) = write_config("[telemetry]\nendpoint = \"ftp://x\"\n");
    let err = check_file(&bad).unwrap_err();
    assert!(err.to_string().contains("telemetry.endpoint"), "{err}");
    assert_eq!(Settings::default().telemetry.endpoint, "file");
    assert!(!Settings::default().network.offline, "online by default");
}
