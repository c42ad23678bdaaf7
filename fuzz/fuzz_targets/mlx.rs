//! Fuzz target: the MLX export's planning and writing over hostile input, either a model directory
//! (config.json, tokenizer.json and one safetensors file taken from the input) or a GGUF file (the
//! input itself; its tokenizer is rebuilt as tokenizer.json): `Ok` or a typed error, never a panic;
//! what is accepted writes a directory whose safetensors files the reader accepts.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ondevice_quantize::NoProgress;
use ondevice_quantize::mlx::{MlxExport, MlxOptions};

/// Splits `n`-byte-length-prefixed parts off the front.
fn part<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    if data.len() < 2 {
        return &[];
    }
    let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (p, rest) = data[2..].split_at(n);
    *data = rest;
    p
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut data)) = data.split_first() else { return };
    let bits = ondevice_quantize::mlx::BITS[usize::from(selector & 7) % 6];
    let group = ondevice_quantize::mlx::GROUP_SIZES[usize::from(selector >> 3) % 3];
    let options = MlxOptions::new(bits, group).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source = if selector & 0x80 != 0 {
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, data).unwrap();
        path
    } else {
        let model = dir.path().join("m");
        std::fs::create_dir(&model).unwrap();
        let config = part(&mut data);
        let tokenizer = part(&mut data);
        std::fs::write(model.join("config.json"), config).unwrap();
        std::fs::write(model.join("tokenizer.json"), tokenizer).unwrap();
        std::fs::write(model.join("model.safetensors"), data).unwrap();
        model
    };
    let Ok(export) = MlxExport::plan(&source, options) else { return };
    let out = dir.path().join("out");
    if let Ok(written) = export.write(&out, &NoProgress) {
        for f in &written.files {
            if f.name.ends_with(".safetensors") {
                ondevice_gguf::SafetensorsHeader::open(out.join(&f.name))
                    .expect("the mlx export wrote a safetensors file the reader refuses");
            }
        }
    }
});
