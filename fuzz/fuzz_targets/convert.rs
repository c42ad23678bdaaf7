//! Fuzz target: the safetensors → GGUF converter's planning over a hostile model directory
//! (config.json, tokenizer.json and one safetensors file taken from the input) must return `Ok` or a
//! typed error, never panic; what it accepts must write a GGUF that the reader accepts.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ondevice_quantize::{ConvertOptions, Conversion, NoProgress, OutType};

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
    let mut data = data;
    let config = part(&mut data);
    let tokenizer = part(&mut data);
    let out_type = OutType::ALL[data.first().copied().unwrap_or(0) as usize % 4];
    let weights = data.get(1..).unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("config.json"), config).unwrap();
    std::fs::write(model.join("tokenizer.json"), tokenizer).unwrap();
    std::fs::write(model.join("model.safetensors"), weights).unwrap();
    let Ok(conversion) = Conversion::plan(&model, &ConvertOptions { out_type, name: None }) else { return };
    let out = dir.path().join("out.gguf");
    if let Ok(written) = conversion.write(&out, &NoProgress) {
        let gguf = ondevice_gguf::GgufFile::open(&out).expect("the converter wrote a gguf the reader refuses");
        assert_eq!(gguf.file_len(), written.len);
    }
});
