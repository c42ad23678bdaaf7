//! Fuzz target: the GGUF header reader must return `Ok` or a typed error for
//! any input, and whatever it accepts must describe tensors inside the input.
//! `parse_without_arrays` must accept exactly the same inputs, with the same tensors.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ondevice_gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    // Dropping arrays changes what is kept, never what is accepted.
    let lean = GgufFile::parse_without_arrays(data);
    let Ok(file) = GgufFile::parse(data) else {
        assert!(lean.is_err(), "parse_without_arrays accepted what parse refuses");
        return;
    };
    let lean = lean.expect("parse_without_arrays refused what parse accepts");
    assert_eq!(lean.tensors(), file.tensors());
    assert_eq!(lean.data_offset(), file.data_offset());
    let len = data.len() as u64;
    assert!(file.data_offset() % file.alignment() == 0);
    let mut ranges: Vec<_> = file.tensors().iter().filter(|t| t.n_bytes() > 0).map(|t| t.file_range()).collect();
    for r in &ranges {
        assert!(r.start >= file.data_offset() && r.end <= len);
    }
    ranges.sort_by_key(|r| r.start);
    for pair in ranges.windows(2) {
        assert!(pair[0].end <= pair[1].start, "accepted overlapping tensors");
    }
    let _ = (file.parameter_count(), file.quantization(), file.context_length(), file.chat_template());
});
