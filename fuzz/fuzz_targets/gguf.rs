//! Fuzz target: the GGUF header reader must return `Ok` or a typed error for
//! any input, and whatever it accepts must describe tensors inside the input.
//! `parse_without_arrays` must accept exactly the same inputs (with the same tensors and every
//! entry but the arrays) and refuse the others with the same error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ondevice_gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    // Dropping arrays changes what is kept, never what is accepted.
    let lean = GgufFile::parse_without_arrays(data);
    let file = match GgufFile::parse(data) {
        Ok(file) => file,
        Err(e) => {
            let lean = lean.expect_err("parse_without_arrays accepted what parse refuses");
            assert_eq!(format!("{lean:?}"), format!("{e:?}"), "the same error");
            return;
        }
    };
    let lean = lean.expect("parse_without_arrays refused what parse accepts");
    assert_eq!(lean.tensors(), file.tensors());
    assert_eq!(lean.data_offset(), file.data_offset());
    // Every entry but the arrays, in order (Debug: an f32 may be NaN).
    let scalars: Vec<_> =
        file.metadata().iter().filter(|(_, v)| !matches!(v, ondevice_gguf::Value::Array(_))).collect();
    assert_eq!(format!("{:?}", lean.metadata().iter().collect::<Vec<_>>()), format!("{scalars:?}"));
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
