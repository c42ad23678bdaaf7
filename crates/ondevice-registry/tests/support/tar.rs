//! The tests' own ustar writer, so hostile bundle entries can be made.

/// A ustar header for `name` of `size` bytes and entry type `kind` (`b'0'`: regular file).
pub fn header(name: &str, size: u64, kind: u8) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

/// A header and its data, padded to whole blocks.
pub fn entry(name: &str, data: &[u8], kind: u8) -> Vec<u8> {
    let mut v = header(name, data.len() as u64, kind);
    v.extend_from_slice(data);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}
