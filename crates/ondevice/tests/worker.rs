//! `ondevice worker` as the supervisor runs it: a real process with no config and no home.
//! A corrupt model makes it exit non-zero (never hang); with the real model
//! (`$ONDEVICE_TEST_MODELS_DIR`: skipped when unset, failed when set but missing) it serves its socket and stops on SIGTERM
//! (Unix only).

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[path = "common/models.rs"]
mod models;

/// `ondevice worker ARGS` with no `ONDEVICE_*` variable and a home and config that do not exist.
#[allow(clippy::disallowed_methods)] // the test starts the worker binary the way the supervisor does
fn worker(args: &[&str], dir: &Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ondevice"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ONDEVICE_") {
            cmd.env_remove(name);
        }
    }
    cmd.arg("worker")
        .args(args)
        .env("ONDEVICE_HOME", dir.join("no-home"))
        .env("ONDEVICE_CONFIG", dir.join("no-config.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the worker did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr(child: &mut Child) -> String {
    let mut s = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut s).unwrap();
    s
}

#[test]
fn a_corrupt_model_makes_the_worker_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("broken.gguf");
    // A GGUF v3 header that promises tensors and metadata the file does not hold.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&5u64.to_le_bytes());
    bytes.extend_from_slice(&9u64.to_le_bytes());
    std::fs::write(&model, &bytes).unwrap();
    let socket = dir.path().join("w.sock");
    let mut child = worker(&["--model", model.to_str().unwrap(), "--socket", socket.to_str().unwrap()], dir.path());
    let status = wait(&mut child, Duration::from_secs(60));
    let err = stderr(&mut child);
    assert!(!status.success(), "{err}");
    assert!(err.contains("cannot load model"), "{err}");
    assert!(!socket.exists(), "no socket without a model");
}

// A Unix socket and SIGTERM.
#[cfg(unix)]
#[test]
fn the_worker_serves_its_socket_and_stops_on_sigterm() {
    let Some(model) = models::test_model("the_worker_serves_its_socket_and_stops_on_sigterm") else { return };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("w.sock");
    let mut child = worker(
        &["--model", model.to_str().unwrap(), "--socket", socket.to_str().unwrap(), "--ctx", "256", "--parallel", "1"],
        dir.path(),
    );
    let start = Instant::now();
    while !socket.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the worker exited early: {}", stderr(&mut child));
        assert!(start.elapsed() < Duration::from_secs(60), "no socket after 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    std::io::Write::write_all(&mut stream, b"GET /health HTTP/1.1\r\nhost: w\r\nconnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut stream, &mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains(r#""n_ctx":256"#) && reply.contains(r#""slots":1"#), "{reply}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait(&mut child, Duration::from_secs(30));
    let err = stderr(&mut child);
    assert!(status.success(), "{err}");
    assert!(err.contains("SIGTERM") && !socket.exists(), "{err}");
}
