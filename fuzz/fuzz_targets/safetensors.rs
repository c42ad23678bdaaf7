//! Fuzz target: the safetensors header reader must return `Ok` or a typed
//! error for any input, and whatever it accepts must tile the data section.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ondevice_gguf::SafetensorsHeader;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = SafetensorsHeader::parse(data) else {
        return;
    };
    let mut covered = header.data_offset();
    for t in header.tensors() {
        let r = t.file_range();
        assert_eq!(r.start, covered, "accepted a hole or an overlap");
        covered = r.end;
    }
    assert_eq!(covered, data.len() as u64, "accepted trailing bytes");
    let _ = header.parameter_count();
});
