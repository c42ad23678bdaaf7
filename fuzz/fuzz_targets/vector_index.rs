//! Fuzz target: the embedded vector store's index file reader must accept or refuse any bytes,
//! and a graph it accepts must be walkable (every link in range) without a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ondevice_vector::Distance;
use ondevice_vector_embedded::check_index_file;

fuzz_target!(|data: &[u8]| {
    for distance in [Distance::Cosine, Distance::Dot, Distance::L2] {
        if let Ok(live) = check_index_file(data, distance) {
            assert!(live <= data.len(), "more live vectors than bytes");
        }
    }
});
