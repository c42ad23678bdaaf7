//! Compiles `proto/ondevice/v1/*.proto` with protox (pure Rust, no system `protoc`) and
//! generates the tonic server and client code plus the descriptor set used by reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "ondevice/v1/status.proto",
        "ondevice/v1/inference.proto",
        "ondevice/v1/models.proto",
        "ondevice/v1/jobs.proto",
        "ondevice/v1/prompts.proto",
        "ondevice/v1/vector.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ondevice_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
