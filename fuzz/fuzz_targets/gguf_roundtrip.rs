//! Fuzz target: the streaming GGUF writer. The input bytes describe metadata,
//! tensors and how their data is supplied; whatever the writer accepts must
//! read back through the defensive reader exactly as declared (metadata,
//! shapes, types, offsets, sizes, data, file length), the same description
//! must give the same bytes again, and a refused declaration or a wrong
//! supply must be a typed error, never a panic.

#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use ondevice_gguf::{Array, GgmlType, GgufFile, GgufHeader, GgufWriteError, Value};

/// Declarations whose data would exceed this are checked but not written.
const MAX_FILE: u64 = 1 << 20;

/// Reads the description; 0 once the input is used up.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    fn text(&mut self, max: u8) -> String {
        let len = usize::from(self.byte() % (max + 1));
        let bytes: Vec<u8> = (0..len).map(|_| self.byte()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn key(&mut self) -> String {
        match self.byte() % 6 {
            0 => "general.alignment".to_owned(),
            1 => "general.architecture".to_owned(),
            2 => "a".to_owned(),
            3 => "b.c".to_owned(),
            _ => self.text(12),
        }
    }

    fn f32(&mut self) -> f32 {
        let v = f32::from_bits(self.u32());
        if v.is_nan() { 0.0 } else { v }
    }

    fn f64(&mut self) -> f64 {
        let v = f64::from_bits(self.u64());
        if v.is_nan() { 0.0 } else { v }
    }

    fn value(&mut self, key: &str) -> Value {
        if key == "general.alignment" && self.byte() % 4 != 0 {
            return Value::U32(match self.byte() % 10 {
                9 => self.u32(),
                shift => 1 << shift,
            });
        }
        match self.byte() % 13 {
            0 => Value::U8(self.byte()),
            1 => Value::I8(self.byte() as i8),
            2 => Value::U16(self.u32() as u16),
            3 => Value::I16(self.u32() as i16),
            4 => Value::U32(self.u32()),
            5 => Value::I32(self.u32() as i32),
            6 => Value::F32(self.f32()),
            7 => Value::Bool(self.byte() % 2 == 1),
            8 => Value::String(self.text(24)),
            9 => Value::Array(self.array(1)),
            10 => Value::U64(self.u64()),
            11 => Value::I64(self.u64() as i64),
            _ => Value::F64(self.f64()),
        }
    }

    /// An array at nesting `depth`; may nest one level past the reader's cap.
    fn array(&mut self, depth: u32) -> Array {
        let len = usize::from(self.byte() % 5);
        let kind = self.byte() % 13;
        macro_rules! items {
            ($e:expr) => {
                (0..len).map(|_| $e).collect()
            };
        }
        match kind {
            0 => Array::U8(items!(self.byte())),
            1 => Array::I8(items!(self.byte() as i8)),
            2 => Array::U16(items!(self.u32() as u16)),
            3 => Array::I16(items!(self.u32() as i16)),
            4 => Array::U32(items!(self.u32())),
            5 => Array::I32(items!(self.u32() as i32)),
            6 => Array::F32(items!(self.f32())),
            7 => Array::Bool(items!(self.byte() % 2 == 1)),
            8 => Array::String(items!(self.text(8))),
            9 if depth <= 4 => Array::Array(items!(self.array(depth + 1))),
            9 => Array::U8(Vec::new()),
            10 => Array::U64(items!(self.u64())),
            11 => Array::I64(items!(self.u64() as i64)),
            _ => Array::F64(items!(self.f64())),
        }
    }

    fn dim(&mut self) -> u64 {
        const DIMS: [u64; 12] = [0, 1, 2, 3, 7, 31, 32, 64, 256, 512, 1 << 40, u64::MAX];
        match self.byte() % 16 {
            i @ 0..12 => DIMS[usize::from(i)],
            _ => u64::from(self.byte()),
        }
    }
}

/// The data of tensor `index`: a function of the seed and the position.
fn tensor_data(seed: u8, index: usize, len: u64) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed).wrapping_add(index as u8)).collect()
}

/// How the description says to supply each tensor's data.
#[derive(Clone, Copy)]
enum Supply {
    /// Each tensor by a method picked from the input, in declaration order.
    Mixed,
    /// Every tensor as one slice.
    Slices,
}

fn write(header: GgufHeader, seed: u8, input: &mut Input<'_>, supply: Supply) -> Vec<u8> {
    let layout = header.tensors().to_vec();
    let mut writer = header.write_to(Vec::new()).expect("writing to a Vec cannot fail");
    for (i, t) in layout.iter().enumerate() {
        let data = tensor_data(seed, i, t.n_bytes());
        let method = match supply {
            Supply::Mixed => input.byte() % 3,
            Supply::Slices => 0,
        };
        match method {
            0 => writer.write_tensor_bytes(t.name(), &data).unwrap(),
            1 => writer.write_tensor(t.name(), data.as_slice()).unwrap(),
            _ => {
                let chunk = usize::from(input.byte()) + 1;
                let mut sink = writer.tensor_writer(t.name()).unwrap();
                for piece in data.chunks(chunk) {
                    sink.write_all(piece).unwrap();
                }
                sink.finish().unwrap();
            }
        }
    }
    writer.finish().unwrap().into_output()
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input { data, pos: 0 };
    let mut header = GgufHeader::new();

    for _ in 0..input.byte() % 8 {
        let key = input.key();
        let value = input.value(&key);
        let before = header.metadata().len();
        if let Err(e) = header.add_metadata(key, value) {
            assert!(
                matches!(
                    e,
                    GgufWriteError::DuplicateKey { .. }
                        | GgufWriteError::WrongMetadataType { .. }
                        | GgufWriteError::InvalidAlignment { .. }
                        | GgufWriteError::LimitExceeded { .. }
                        | GgufWriteError::TensorSizeOverflow { .. }
                ),
                "{e}"
            );
            assert_eq!(header.metadata().len(), before, "a refused entry was kept");
        }
    }
    for _ in 0..input.byte() % 6 {
        let name = match input.byte() % 4 {
            0 => "t".to_owned(),
            _ => input.text(70),
        };
        let dims: Vec<u64> = (0..input.byte() % 6).map(|_| input.dim()).collect();
        let ty = GgmlType::ALL[usize::from(input.byte()) % GgmlType::ALL.len()];
        let before = header.tensors().len();
        if let Err(e) = header.add_tensor(name, &dims, ty) {
            assert!(
                matches!(
                    e,
                    GgufWriteError::DuplicateTensor { .. }
                        | GgufWriteError::RowNotBlockAligned { .. }
                        | GgufWriteError::TensorSizeOverflow { .. }
                        | GgufWriteError::LimitExceeded { .. }
                ),
                "{e}"
            );
            assert_eq!(header.tensors().len(), before, "a refused tensor was kept");
        }
    }

    let alignment = header.alignment();
    for t in header.tensors() {
        assert_eq!(t.offset() % alignment, 0);
    }
    let file_len = header.file_len();
    if file_len > MAX_FILE {
        return;
    }
    let seed = input.byte();

    // A wrong supply is refused with its typed error.
    let misuse = input.byte() % 8;
    if misuse < 2 && !header.tensors().is_empty() {
        let victim = usize::from(input.byte()) % header.tensors().len();
        let layout = header.tensors().to_vec();
        let mut writer = header.write_to(Vec::new()).unwrap();
        for (i, t) in layout.iter().enumerate() {
            let n = t.n_bytes();
            if i == victim {
                if misuse == 0 {
                    let err = writer.write_tensor(t.name(), tensor_data(seed, i, n + 1).as_slice()).unwrap_err();
                    assert!(matches!(err, GgufWriteError::TensorTooLong { .. }), "{err}");
                } else if n > 0 {
                    let err = writer.write_tensor(t.name(), tensor_data(seed, i, n - 1).as_slice()).unwrap_err();
                    assert!(matches!(err, GgufWriteError::TensorTooShort { .. }), "{err}");
                } else if let Some(next) = layout.get(i + 1) {
                    let err = writer.write_tensor_bytes(next.name(), &[]).unwrap_err();
                    assert!(
                        matches!(
                            err,
                            GgufWriteError::OutOfOrder { .. }
                                | GgufWriteError::TensorTooShort { .. }
                                | GgufWriteError::TensorTooLong { .. }
                        ),
                        "{err}"
                    );
                    return;
                } else {
                    let err = writer.finish().unwrap_err();
                    assert!(matches!(err, GgufWriteError::MissingTensors { .. }), "{err}");
                    return;
                }
                assert!(matches!(writer.finish(), Err(GgufWriteError::Poisoned)));
                return;
            }
            writer.write_tensor_bytes(t.name(), &tensor_data(seed, i, n)).unwrap();
        }
        unreachable!("the victim is one of the tensors");
    }

    let expected = header.clone();
    let bytes = write(header.clone(), seed, &mut input, Supply::Mixed);
    assert_eq!(bytes.len() as u64, file_len);

    let file = GgufFile::parse(&bytes).unwrap_or_else(|e| panic!("the writer wrote a file the reader refuses: {e}"));
    assert_eq!(file.alignment(), alignment);
    assert_eq!(file.data_offset(), expected.data_offset());
    assert_eq!(file.metadata(), expected.metadata());
    assert_eq!(file.tensors().len(), expected.tensors().len());
    for (i, (read, declared)) in file.tensors().iter().zip(expected.tensors()).enumerate() {
        assert_eq!(read.name(), declared.name());
        assert_eq!(read.dims(), declared.dims());
        assert_eq!(read.ggml_type(), declared.ggml_type());
        assert_eq!(read.offset(), declared.offset());
        assert_eq!(read.n_bytes(), declared.n_bytes());
        let range = read.file_range();
        assert_eq!(&bytes[range.start as usize..range.end as usize], tensor_data(seed, i, read.n_bytes()).as_slice());
    }

    // Deterministic, however the data was supplied.
    assert_eq!(write(header, seed, &mut input, Supply::Slices), bytes);
});
