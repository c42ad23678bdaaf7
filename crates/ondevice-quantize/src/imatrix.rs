//! Importance matrices for llama.cpp's quantizer, read defensively from either format
//! `llama-imatrix` writes: the GGUF one (`NAME.in_sum2` and `NAME.counts` tensors) and the legacy
//! `.dat` one (count, then per entry: name, calls, values). The file is identified by its SHA-256,
//! never by its path.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ondevice_gguf::{GgmlType, GgufFile};
use sha2::{Digest, Sha256};

use crate::error::QuantizeError;

/// Most values in one importance matrix file (far above any real model: one per input column).
const MAX_VALUES: u64 = 1 << 30;
/// Most entries in a legacy file.
const MAX_ENTRIES: u32 = 1 << 20;

/// A parsed importance matrix: per tensor name, one weight per input column (per expert).
#[derive(Debug, Clone)]
pub struct Imatrix {
    entries: Vec<(String, Vec<f32>)>,
    sha256: String,
}

impl Imatrix {
    /// Reads `path` (GGUF or legacy format).
    pub fn open(path: &Path) -> Result<Self, QuantizeError> {
        let bad = |problem: String| QuantizeError::Imatrix { path: path.to_owned(), problem };
        let bytes_len =
            std::fs::metadata(path).map_err(|source| QuantizeError::Read { path: path.to_owned(), source })?.len();
        if bytes_len > MAX_VALUES * 4 + (64 << 20) {
            return Err(bad(format!("{bytes_len} bytes is too large for an importance matrix")));
        }
        let sha256 = sha256_file(path)?;
        let mut magic = [0u8; 4];
        File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .map_err(|_| bad("the file is shorter than 4 bytes".into()))?;
        let entries = if &magic == b"GGUF" { read_gguf(path)? } else { read_legacy(path, bytes_len)? };
        if entries.is_empty() {
            return Err(bad("it holds no entries".into()));
        }
        for (name, v) in &entries {
            if v.iter().any(|x| !x.is_finite()) {
                return Err(bad(format!("entry {name:?} holds a value that is not finite")));
            }
        }
        Ok(Imatrix { entries, sha256 })
    }

    /// Entries: tensor name → weights.
    pub fn entries(&self) -> &[(String, Vec<f32>)] {
        &self.entries
    }

    /// SHA-256 of the file, 64 lowercase hex digits.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, QuantizeError> {
    let err = |source| QuantizeError::Read { path: path.to_owned(), source };
    let mut f = File::open(path).map_err(err)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn read_gguf(path: &Path) -> Result<Vec<(String, Vec<f32>)>, QuantizeError> {
    let bad = |problem: String| QuantizeError::Imatrix { path: path.to_owned(), problem };
    let file = GgufFile::open(path)?;
    let mut f = File::open(path).map_err(|source| QuantizeError::Read { path: path.to_owned(), source })?;
    let mut read_f32 = |t: &ondevice_gguf::TensorInfo| -> Result<Vec<f32>, QuantizeError> {
        if t.ggml_type() != GgmlType::F32 {
            return Err(bad(format!("tensor {:?} is {}, not F32", t.name(), t.ggml_type())));
        }
        let range = t.file_range();
        let mut raw = vec![0u8; (range.end - range.start) as usize];
        f.seek(SeekFrom::Start(range.start))
            .and_then(|_| f.read_exact(&mut raw))
            .map_err(|source| QuantizeError::Read { path: path.to_owned(), source })?;
        Ok(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    };
    let mut out = Vec::new();
    let mut total = 0u64;
    for t in file.tensors() {
        let Some(name) = t.name().strip_suffix(".in_sum2") else { continue };
        let counts_name = format!("{name}.counts");
        let counts = file.tensor(&counts_name).ok_or_else(|| bad(format!("{counts_name:?} is missing")))?;
        let dims = t.dims();
        let (n_per_row, n_mat) = (dims.first().copied().unwrap_or(0), dims.get(1).copied().unwrap_or(1));
        if counts.n_elements() != n_mat || n_per_row == 0 {
            return Err(bad(format!("{name:?}: {} counts for {n_mat} matrices", counts.n_elements())));
        }
        total += t.n_elements();
        if total > MAX_VALUES {
            return Err(bad("too many values".into()));
        }
        let sums = read_f32(t)?;
        let counts = read_f32(counts)?;
        let mut values = Vec::with_capacity(sums.len());
        for (m, row) in sums.chunks_exact(n_per_row as usize).enumerate() {
            let c = counts[m];
            // llama-quantize: the mean squared activation; no data → equal weights.
            values.extend(row.iter().map(|s| if c > 0.0 { s / c } else { 1.0 }));
        }
        out.push((name.to_owned(), values));
    }
    Ok(out)
}

fn read_legacy(path: &Path, len: u64) -> Result<Vec<(String, Vec<f32>)>, QuantizeError> {
    let bad = |problem: String| QuantizeError::Imatrix { path: path.to_owned(), problem };
    let mut f = std::io::BufReader::new(
        File::open(path).map_err(|source| QuantizeError::Read { path: path.to_owned(), source })?,
    );
    let mut pos = 0u64;
    let read_i32 = |f: &mut std::io::BufReader<File>, pos: &mut u64| -> Result<i32, QuantizeError> {
        let mut b = [0u8; 4];
        f.read_exact(&mut b).map_err(|_| bad(format!("truncated at byte {pos}")))?;
        *pos += 4;
        Ok(i32::from_le_bytes(b))
    };
    let n = read_i32(&mut f, &mut pos)?;
    let n = u32::try_from(n).ok().filter(|n| *n > 0 && *n <= MAX_ENTRIES).ok_or_else(|| {
        bad(format!("declares {n} entries: not an importance matrix (GGUF or llama-imatrix .dat format)"))
    })?;
    let mut out = Vec::new();
    for _ in 0..n {
        let name_len = read_i32(&mut f, &mut pos)?;
        let name_len = u64::try_from(name_len)
            .ok()
            .filter(|l| *l > 0 && *l < 4096 && pos + l <= len)
            .ok_or_else(|| bad(format!("invalid name length at byte {pos}")))?;
        let mut name = vec![0u8; name_len as usize];
        f.read_exact(&mut name).map_err(|_| bad(format!("truncated at byte {pos}")))?;
        pos += name_len;
        let name = String::from_utf8(name).map_err(|_| bad(format!("entry name at byte {pos} is not utf-8")))?;
        let ncall = read_i32(&mut f, &mut pos)?;
        let nval = read_i32(&mut f, &mut pos)?;
        let nval = u64::try_from(nval)
            .ok()
            .filter(|v| *v > 0 && pos + v * 4 <= len)
            .ok_or_else(|| bad(format!("entry {name:?} declares {nval} values, more than the file holds")))?;
        let mut raw = vec![0u8; (nval * 4) as usize];
        f.read_exact(&mut raw).map_err(|_| bad(format!("truncated at byte {pos}")))?;
        pos += nval * 4;
        let mut values: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if ncall > 0 {
            values.iter_mut().for_each(|v| *v /= ncall as f32);
        }
        out.push((name, values));
    }
    Ok(out)
}

/// A legacy-format importance matrix file, for tests and for `--make-imatrix` output.
pub fn write_legacy(path: &Path, entries: &[(String, Vec<f32>)]) -> std::io::Result<PathBuf> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&(entries.len() as i32).to_le_bytes());
    for (name, values) in entries {
        bytes.extend_from_slice(&(name.len() as i32).to_le_bytes());
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(&1i32.to_le_bytes());
        bytes.extend_from_slice(&(values.len() as i32).to_le_bytes());
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(path, bytes)?;
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_files_round_trip_and_hostile_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.dat");
        write_legacy(&p, &[("blk.0.attn_q.weight".into(), vec![1.0, 2.0])]).unwrap();
        let m = Imatrix::open(&p).unwrap();
        assert_eq!(m.entries()[0].1, vec![1.0, 2.0]);
        assert_eq!(m.sha256().len(), 64);

        let mut bytes = std::fs::read(&p).unwrap();
        bytes[0..4].copy_from_slice(&i32::MAX.to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        assert!(Imatrix::open(&p).unwrap_err().to_string().contains("entries"));
        bytes[0..4].copy_from_slice(&1i32.to_le_bytes());
        let nval_at = 4 + 4 + "blk.0.attn_q.weight".len() + 4;
        bytes[nval_at..nval_at + 4].copy_from_slice(&(1i32 << 30).to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        assert!(Imatrix::open(&p).unwrap_err().to_string().contains("values"));
    }
}
