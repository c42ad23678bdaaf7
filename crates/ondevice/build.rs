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
}
