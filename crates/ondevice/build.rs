//! Records which x86-64 level llama.cpp's CPU kernels are built for in this binary, from the
//! `GGML_*` variables `llama-cpp-sys-2` passes to CMake (`.cargo/config.toml` sets x86-64-v3;
//! packaging builds other levels as extra worker binaries). `src/cpu.rs` reads it as
//! `ONDEVICE_ENGINE_CPU` to check the host and to choose among worker builds.

fn main() {
    for var in ["GGML_NATIVE", "GGML_AVX", "GGML_AVX2", "GGML_AVX512", "CARGO_CFG_TARGET_ARCH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let on = |var: &str| std::env::var(var).is_ok_and(|v| v.eq_ignore_ascii_case("on"));
    let off = |var: &str| std::env::var(var).is_ok_and(|v| v.eq_ignore_ascii_case("off"));
    let level = if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("x86_64") {
        "other"
    } else if on("GGML_NATIVE") {
        "native"
    } else if on("GGML_AVX512") {
        "x86-64-v4"
    } else if off("GGML_AVX2") || off("GGML_AVX") {
        // ggml's default with GGML_NATIVE off is the x86-64-v3 set; only turning it off lowers it.
        "x86-64-v2"
    } else {
        "x86-64-v3"
    };
    println!("cargo:rustc-env=ONDEVICE_ENGINE_CPU={level}");
    build_facts();
}

/// Build facts for `ondevice diag bundle` and crash reports: the llama.cpp bindings' version (from
/// Cargo.lock) and the git commit (from `.git`, read as files: no process is spawned; `ONDEVICE_BUILD_COMMIT` overrides).
fn build_facts() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let llama = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"llama-cpp-sys-2\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")?.strip_suffix('"').map(str::to_owned)))
        .map_or_else(|| "unknown".to_owned(), |v| format!("llama-cpp-sys-2 {v}"));
    println!("cargo:rustc-env=ONDEVICE_LLAMA_CPP={llama}");
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());
    let git = root.join(".git");
    let head = std::fs::read_to_string(git.join("HEAD")).unwrap_or_default();
    let commit = match head.trim().strip_prefix("ref: ") {
        Some(r) => std::fs::read_to_string(git.join(r)).ok().map(|s| s.trim().to_owned()).or_else(|| {
            let packed = std::fs::read_to_string(git.join("packed-refs")).unwrap_or_default();
            packed.lines().find(|l| l.ends_with(r)).and_then(|l| l.split(' ').next()).map(str::to_owned)
        }),
        None => Some(head.trim().to_owned()).filter(|s| !s.is_empty()),
    };
    // No rerun on new commits (that would rebuild the binary crate on every commit): the commit is
    // the one of the last run of this script, exact in clean (release, CI, package) builds.
    println!("cargo:rerun-if-env-changed=ONDEVICE_BUILD_COMMIT");
    let commit = std::env::var("ONDEVICE_BUILD_COMMIT").ok().or(commit).unwrap_or_default();
    println!("cargo:rustc-env=ONDEVICE_COMMIT={}", commit.chars().take(40).collect::<String>());
}
