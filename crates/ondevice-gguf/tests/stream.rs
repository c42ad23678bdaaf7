//! The streaming GGUF writer: round trips through the defensive reader, a
//! large tensor streamed from a generator, every refusal with its typed error,
//! determinism and atomic files.

mod common;

use std::io::{self, Read, Write};

use common::pattern;
use ondevice_gguf::limits::{MAX_KEY_LEN, MAX_WRITTEN_TENSOR_NAME_LEN};
use ondevice_gguf::{
    Array, Finished, GgmlType, GgufFile, GgufHeader, GgufStreamWriter, GgufWriteError, Limit, Value, ValueType,
};
use sha2::{Digest, Sha256};

/// One metadata entry of every value type, arrays of every element type, and
/// nested arrays.
fn every_value() -> Vec<(String, Value)> {
    let scalars = [
        Value::U8(200),
        Value::I8(-7),
        Value::U16(65_000),
        Value::I16(-30_000),
        Value::U32(4_000_000_000),
        Value::I32(-1),
        Value::F32(1.5),
        Value::Bool(true),
        Value::String("ünïcode \u{1f600}".into()),
        Value::U64(u64::MAX),
        Value::I64(i64::MIN),
        Value::F64(-2.25),
    ];
    let arrays = [
        Array::U8(vec![0, 255]),
        Array::I8(vec![-128, 127]),
        Array::U16(vec![1, 2, 3]),
        Array::I16(vec![-2]),
        Array::U32(vec![]),
        Array::I32(vec![i32::MIN, i32::MAX]),
        Array::F32(vec![0.5, -1.0, f32::INFINITY]),
        Array::Bool(vec![true, false, true]),
        Array::String(vec!["a".into(), String::new(), "ünï".into()]),
        Array::U64(vec![u64::MAX]),
        Array::I64(vec![-5, 5]),
        Array::F64(vec![1e300]),
        Array::Array(vec![
            Array::I32(vec![1, 2, 3]),
            Array::String(vec!["x".into()]),
            Array::Array(vec![Array::Array(vec![Array::U8(vec![7])])]),
        ]),
    ];
    let mut out = vec![("general.architecture".to_owned(), Value::String("llama".into()))];
    out.extend(scalars.into_iter().enumerate().map(|(i, v)| (format!("t.scalar.{i}"), v)));
    out.extend(arrays.into_iter().enumerate().map(|(i, a)| (format!("t.array.{i}"), Value::Array(a))));
    out
}

/// Tensors of several types: (name, dims, type).
fn tensor_specs() -> Vec<(&'static str, Vec<u64>, GgmlType)> {
    vec![
        ("token_embd.weight", vec![8, 3], GgmlType::F32),
        ("blk.0.attn_norm.weight", vec![5], GgmlType::F16),
        ("blk.0.attn_q.weight", vec![64, 3], GgmlType::Q8_0),
        ("blk.0.ffn_up.weight", vec![32, 2, 2], GgmlType::Q4_0),
        ("blk.0.ffn_down.weight", vec![256, 1], GgmlType::Q4_K),
        ("empty", vec![0, 4], GgmlType::F32),
        ("scalar", vec![], GgmlType::I32),
    ]
}

fn header_with(metadata: &[(String, Value)], tensors: &[(&str, Vec<u64>, GgmlType)]) -> GgufHeader {
    let mut header = GgufHeader::new();
    for (k, v) in metadata {
        header.add_metadata(k.clone(), v.clone()).unwrap();
    }
    for (name, dims, ty) in tensors {
        header.add_tensor(*name, dims, *ty).unwrap();
    }
    header
}

fn byte_size(dims: &[u64], ty: GgmlType) -> usize {
    (dims.iter().product::<u64>() / ty.block_size() * ty.type_size()) as usize
}

/// Writes every tensor with `pattern` data, through the three ways of
/// supplying it in turn (a reader, a slice, a sink fed in 7-byte pieces).
fn write_all(header: GgufHeader) -> (Finished<Vec<u8>>, Vec<Vec<u8>>) {
    let specs: Vec<_> = header.tensors().iter().map(|t| (t.name().to_owned(), t.n_bytes() as usize)).collect();
    let mut writer = header.write_to(Vec::new()).unwrap();
    let mut datas = Vec::new();
    for (i, (name, len)) in specs.iter().enumerate() {
        let data = pattern(*len, i as u8);
        match i % 3 {
            0 => writer.write_tensor(name, data.as_slice()).unwrap(),
            1 => writer.write_tensor_bytes(name, &data).unwrap(),
            _ => {
                let mut sink = writer.tensor_writer(name).unwrap();
                for piece in data.chunks(7) {
                    sink.write_all(piece).unwrap();
                }
                assert_eq!(sink.remaining(), 0);
                sink.finish().unwrap();
            }
        }
        datas.push(data);
    }
    (writer.finish().unwrap(), datas)
}

/// Reads `bytes` back and checks metadata, tensor infos, offsets and data
/// against what was declared and written.
fn check_round_trip(
    metadata: &[(String, Value)],
    tensors: &[(&str, Vec<u64>, GgmlType)],
    alignment: u64,
) -> Finished<Vec<u8>> {
    let header = header_with(metadata, tensors);
    let expected_len = header.file_len();
    let expected_data_offset = header.data_offset();
    let layout = header.tensors().to_vec();
    let (finished, datas) = write_all(header);
    let bytes = finished.output();

    assert_eq!(finished.len(), bytes.len() as u64);
    assert_eq!(finished.len(), expected_len);
    assert_eq!(finished.sha256(), <[u8; 32]>::from(Sha256::digest(bytes)));
    assert_eq!(finished.sha256_hex().len(), 64);
    assert_eq!(bytes.len() as u64 % alignment, 0, "the file ends padded, as llama.cpp writes it");

    let file = GgufFile::parse(bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), alignment);
    assert_eq!(file.data_offset(), expected_data_offset);
    assert_eq!(file.metadata(), metadata);
    assert_eq!(file.tensors().len(), tensors.len());
    for (((t, (name, dims, ty)), layout), data) in file.tensors().iter().zip(tensors).zip(&layout).zip(&datas) {
        assert_eq!((t.name(), t.dims(), t.ggml_type()), (*name, dims.as_slice(), *ty));
        assert_eq!(t.n_bytes() as usize, byte_size(dims, *ty), "{name}");
        assert_eq!((t.offset(), t.n_bytes()), (layout.offset(), layout.n_bytes()), "{name}");
        assert_eq!(t.offset() % alignment, 0, "{name}");
        let range = t.file_range();
        assert_eq!(&bytes[range.start as usize..range.end as usize], data.as_slice(), "{name}");
    }
    finished
}

#[test]
fn every_metadata_type_and_several_tensor_types_round_trip() {
    check_round_trip(&every_value(), &tensor_specs(), 32);
}

#[test]
fn custom_alignments_round_trip() {
    for alignment in [1u32, 8, 64, 4096] {
        let mut metadata = every_value();
        metadata.insert(1, ("general.alignment".to_owned(), Value::U32(alignment)));
        check_round_trip(&metadata, &tensor_specs(), alignment.into());
    }
}

#[test]
fn alignment_declared_after_the_tensors_moves_their_offsets() {
    let mut header = GgufHeader::new();
    header.add_tensor("a", &[3], GgmlType::F32).unwrap();
    header.add_tensor("b", &[3], GgmlType::F32).unwrap();
    assert_eq!(header.tensors()[1].offset(), 32);
    header.add_metadata("general.alignment", Value::U32(128)).unwrap();
    assert_eq!(header.alignment(), 128);
    assert_eq!(header.tensors()[1].offset(), 128);
    let (finished, _) = write_all(header);
    let file = GgufFile::parse(finished.output()).unwrap();
    assert_eq!(file.tensor("b").unwrap().offset(), 128);
}

#[test]
fn no_tensors_and_no_metadata() {
    let finished = check_round_trip(&[], &[], 32);
    assert_eq!(finished.len(), 32, "24 header bytes padded to 32");
}

#[test]
fn same_inputs_give_identical_bytes() {
    let a = check_round_trip(&every_value(), &tensor_specs(), 32);
    let b = check_round_trip(&every_value(), &tensor_specs(), 32);
    assert_eq!(a.output(), b.output());
    assert_eq!(a.sha256(), b.sha256());
    // The way the data is supplied does not matter either.
    let header = header_with(&every_value(), &tensor_specs());
    let names: Vec<_> = header.tensors().iter().map(|t| (t.name().to_owned(), t.n_bytes() as usize)).collect();
    let mut writer = header.write_to(Vec::new()).unwrap();
    for (i, (name, len)) in names.iter().enumerate() {
        let mut sink = writer.tensor_writer(name).unwrap();
        for byte in pattern(*len, i as u8) {
            sink.write_all(&[byte]).unwrap();
        }
    }
    assert_eq!(writer.finish().unwrap().output(), a.output());
}

/// Deterministic bytes computed from their position: a 64 MiB "tensor" that
/// never exists in memory.
struct Generator {
    pos: u64,
    len: u64,
}

fn generated(pos: u64) -> u8 {
    (pos.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

impl Read for Generator {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len - self.pos).min(buf.len() as u64) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = generated(self.pos + i as u64);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// An output that keeps only the header and a hash of everything.
struct HashSink {
    head: Vec<u8>,
    hasher: Sha256,
    len: u64,
    largest_write: usize,
}

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.head.len() < 4096 {
            let take = buf.len().min(4096 - self.head.len());
            self.head.extend_from_slice(&buf[..take]);
        }
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        self.largest_write = self.largest_write.max(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const BIG: u64 = 64 << 20;

#[test]
fn a_64_mib_tensor_streams_from_a_generator_without_being_held() {
    let mut header = GgufHeader::new();
    header.add_metadata("general.architecture", Value::String("llama".into())).unwrap();
    // 64 MiB of F32, then 64 MiB of Q8_0 produced one block row at a time.
    header.add_tensor("big.f32", &[4096, 4096], GgmlType::F32).unwrap();
    let q8_rows = BIG / 34 / 128;
    header.add_tensor("big.q8_0", &[32 * 128, q8_rows], GgmlType::Q8_0).unwrap();
    let expected_len = header.file_len();

    let sink = HashSink { head: Vec::new(), hasher: Sha256::new(), len: 0, largest_write: 0 };
    let mut writer = header.write_to(sink).unwrap();
    writer.write_tensor("big.f32", Generator { pos: 0, len: BIG }).unwrap();
    let mut tensor = writer.tensor_writer("big.q8_0").unwrap();
    let row_bytes = 34 * 128;
    let mut row = vec![0u8; row_bytes];
    for r in 0..q8_rows {
        for (i, b) in row.iter_mut().enumerate() {
            *b = generated(r * row_bytes as u64 + i as u64);
        }
        tensor.write_all(&row).unwrap();
    }
    tensor.finish().unwrap();
    let finished = writer.finish().unwrap();

    let sink = finished.output();
    assert_eq!(sink.len, expected_len);
    assert_eq!(finished.len(), expected_len);
    assert_eq!(finished.sha256(), <[u8; 32]>::from(sink.hasher.clone().finalize()));
    assert!(sink.largest_write <= 256 * 1024, "the writer copies through a bounded buffer");
    let file = GgufFile::read_from(sink.head.as_slice(), expected_len).unwrap();
    assert_eq!(file.tensor("big.f32").unwrap().n_bytes(), BIG);
    assert_eq!(file.tensor("big.q8_0").unwrap().n_bytes(), q8_rows * row_bytes as u64);
}

#[test]
fn a_large_tensor_written_atomically_reads_back_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    let mut header = GgufHeader::new();
    header.add_metadata("general.alignment", Value::U32(64)).unwrap();
    header.add_tensor("small", &[3], GgmlType::F16).unwrap();
    header.add_tensor("big", &[4096, 4096], GgmlType::F32).unwrap();
    let expected_len = header.file_len();
    let finished = header
        .write_atomic(&path, |w| {
            w.write_tensor_bytes("small", &[1, 2, 3, 4, 5, 6])?;
            w.write_tensor("big", Generator { pos: 0, len: BIG })
        })
        .unwrap();
    assert_eq!(finished.output(), &path);
    assert_eq!(finished.len(), expected_len);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");

    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.file_len(), expected_len);
    let big = file.tensor("big").unwrap();
    assert_eq!(big.file_range().start % 64, 0);
    let mut f = std::fs::File::open(&path).unwrap();
    io::Seek::seek(&mut f, io::SeekFrom::Start(big.file_range().start)).unwrap();
    let mut reader = io::BufReader::new(f).take(BIG);
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for (i, &b) in buf[..n].iter().enumerate() {
            assert_eq!(b, generated(pos + i as u64), "byte {}", pos + i as u64);
        }
        pos += n as u64;
    }
    assert_eq!(pos, BIG);
    let mut hasher = Sha256::new();
    io::copy(&mut std::fs::File::open(&path).unwrap(), &mut hasher).unwrap();
    assert_eq!(finished.sha256(), <[u8; 32]>::from(hasher.finalize()));
}

#[test]
fn a_failed_atomic_write_leaves_no_file_and_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, b"old").unwrap();
    let mut header = GgufHeader::new();
    header.add_tensor("a", &[4], GgmlType::F32).unwrap();
    header.add_tensor("b", &[4], GgmlType::F32).unwrap();
    let err = header.clone().write_atomic(&path, |w| w.write_tensor_bytes("a", &[0; 16])).unwrap_err();
    assert!(matches!(&err, GgufWriteError::MissingTensors { next, remaining: 1 } if next == "b"), "{err}");
    let err = header.write_atomic(&path, |w| w.write_tensor("a", &[0u8; 15][..])).unwrap_err();
    assert!(matches!(&err, GgufWriteError::TensorTooShort { supplied: 15, declared: 16, .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");

    let missing_dir = dir.path().join("missing").join("model.gguf");
    let err = GgufHeader::new().write_atomic(&missing_dir, |_| Ok::<_, GgufWriteError>(())).unwrap_err();
    assert!(matches!(&err, GgufWriteError::CreateTemp { path, .. } if *path == missing_dir), "{err}");
}

// ---- refusals ----

fn limit(err: &GgufWriteError) -> Option<(Limit, u64, u64)> {
    match err {
        GgufWriteError::LimitExceeded { what, count, max, .. } => Some((*what, *count, *max)),
        _ => None,
    }
}

#[test]
fn bad_tensor_declarations_are_refused_with_typed_errors() {
    let mut h = GgufHeader::new();
    h.add_tensor("a", &[32], GgmlType::Q8_0).unwrap();

    let err = h.add_tensor("a", &[32], GgmlType::F32).unwrap_err();
    assert!(matches!(&err, GgufWriteError::DuplicateTensor { name } if name == "a"), "{err}");

    let err = h.add_tensor("odd", &[33, 2], GgmlType::Q8_0).unwrap_err();
    assert!(
        matches!(&err, GgufWriteError::RowNotBlockAligned { tensor, ggml_type: GgmlType::Q8_0, row: 33, block_size: 32 } if tensor == "odd"),
        "{err}"
    );
    // The row is the first dimension: 32 elements spread over rows of 16 are still refused.
    let err = h.add_tensor("rows", &[16, 2], GgmlType::Q4_0).unwrap_err();
    assert!(matches!(err, GgufWriteError::RowNotBlockAligned { row: 16, .. }), "{err}");
    let err = h.add_tensor("k", &[128], GgmlType::Q4_K).unwrap_err();
    assert!(matches!(err, GgufWriteError::RowNotBlockAligned { block_size: 256, .. }), "{err}");
    let err = h.add_tensor("scalar", &[], GgmlType::Q4_0).unwrap_err();
    assert!(matches!(err, GgufWriteError::RowNotBlockAligned { row: 1, .. }), "{err}");

    let err = h.add_tensor("dims", &[1, 1, 1, 1, 1], GgmlType::F32).unwrap_err();
    assert_eq!(limit(&err), Some((Limit::Dimensions, 5, 4)), "{err}");

    for dims in [&[u64::MAX][..], &[1 << 32, 1 << 32], &[0, 1 << 63], &[1 << 62], &[1 << 31, 1 << 31, 2]] {
        let err = h.add_tensor("huge", dims, GgmlType::F32).unwrap_err();
        assert!(matches!(&err, GgufWriteError::TensorSizeOverflow { tensor } if tensor == "huge"), "{dims:?}: {err}");
    }
    // Each fits; the data section does not.
    h.add_tensor("half.0", &[1 << 60], GgmlType::F32).unwrap();
    let err = h.add_tensor("half.1", &[1 << 60], GgmlType::F32).unwrap_err();
    assert!(matches!(&err, GgufWriteError::TensorSizeOverflow { tensor } if tensor == "half.1"), "{err}");

    let long = "n".repeat(MAX_WRITTEN_TENSOR_NAME_LEN as usize + 1);
    let err = h.add_tensor(long, &[1], GgmlType::F32).unwrap_err();
    assert_eq!(limit(&err), Some((Limit::TensorNameLength, 64, 63)), "{err}");
    h.add_tensor("n".repeat(MAX_WRITTEN_TENSOR_NAME_LEN as usize), &[1], GgmlType::F32).unwrap();

    // Refusals left the header as it was.
    let names: Vec<_> = h.tensors().iter().map(|t| t.name().len()).collect();
    assert_eq!(names, [1, 6, 63]);
}

#[test]
fn bad_metadata_is_refused_with_typed_errors() {
    let mut h = GgufHeader::new();
    h.add_metadata("k", Value::U8(1)).unwrap();
    let err = h.add_metadata("k", Value::U8(2)).unwrap_err();
    assert!(matches!(&err, GgufWriteError::DuplicateKey { key } if key == "k"), "{err}");

    let err = h.add_metadata("k".repeat(MAX_KEY_LEN as usize + 1), Value::U8(1)).unwrap_err();
    assert_eq!(limit(&err), Some((Limit::KeyLength, MAX_KEY_LEN + 1, MAX_KEY_LEN)), "{err}");
    assert!(matches!(&err, GgufWriteError::LimitExceeded { item, .. } if item.len() == 64), "{err}");

    let err = h.add_metadata("general.alignment", Value::U64(32)).unwrap_err();
    assert!(
        matches!(&err, GgufWriteError::WrongMetadataType { expected: "a u32", found: ValueType::U64, .. }),
        "{err}"
    );
    for bad in [0, 3, 48] {
        let err = h.add_metadata("general.alignment", Value::U32(bad)).unwrap_err();
        assert!(matches!(err, GgufWriteError::InvalidAlignment { alignment } if alignment == u64::from(bad)), "{err}");
    }
    assert_eq!(h.alignment(), 32);

    let mut deep = Array::U8(vec![1]);
    for _ in 0..4 {
        deep = Array::Array(vec![deep]);
    }
    let err = h.add_metadata("deep", Value::Array(deep)).unwrap_err();
    assert_eq!(limit(&err), Some((Limit::ArrayDepth, 5, 4)), "{err}");
    let err = h.add_metadata("long", Value::Array(Array::U8(vec![0; (1 << 24) + 1]))).unwrap_err();
    assert_eq!(limit(&err), Some((Limit::ArrayLength, (1 << 24) + 1, 1 << 24)), "{err}");

    assert_eq!(h.metadata().len(), 1);
}

fn two_tensor_writer() -> GgufStreamWriter<Vec<u8>> {
    let mut h = GgufHeader::new();
    h.add_tensor("a", &[4], GgmlType::F32).unwrap();
    h.add_tensor("b", &[32], GgmlType::Q8_0).unwrap();
    h.write_to(Vec::new()).unwrap()
}

#[test]
fn data_supplied_out_of_order_or_twice_is_refused_without_poisoning() {
    let mut w = two_tensor_writer();
    let err = w.write_tensor_bytes("b", &[0; 34]).unwrap_err();
    assert!(matches!(&err, GgufWriteError::OutOfOrder { expected, found } if expected == "a" && found == "b"), "{err}");
    let err = w.tensor_writer("zzz").unwrap_err();
    assert!(matches!(&err, GgufWriteError::UnknownTensor { name } if name == "zzz"), "{err}");
    w.write_tensor_bytes("a", &[0; 16]).unwrap();
    let err = w.write_tensor_bytes("a", &[0; 16]).unwrap_err();
    assert!(matches!(&err, GgufWriteError::AlreadyWritten { tensor } if tensor == "a"), "{err}");
    assert_eq!(w.next_tensor(), Some("b"));
    w.write_tensor("b", &[0u8; 34][..]).unwrap();
    let err = w.write_tensor_bytes("b", &[0; 34]).unwrap_err();
    assert!(matches!(err, GgufWriteError::AlreadyWritten { .. }), "{err}");
    assert_eq!(w.next_tensor(), None);
    GgufFile::parse(w.finish().unwrap().output()).unwrap();
}

#[test]
fn wrong_byte_counts_are_refused() {
    // A slice of the wrong size is refused before anything is written.
    let mut w = two_tensor_writer();
    let err = w.write_tensor_bytes("a", &[0; 15]).unwrap_err();
    assert!(matches!(err, GgufWriteError::TensorTooShort { declared: 16, supplied: 15, .. }), "{err}");
    let err = w.write_tensor_bytes("a", &[0; 17]).unwrap_err();
    assert!(matches!(err, GgufWriteError::TensorTooLong { declared: 16, .. }), "{err}");
    w.write_tensor_bytes("a", &[0; 16]).unwrap();

    // A reader that ends early or goes on poisons the writer.
    let mut w = two_tensor_writer();
    let data_offset = w.data_offset();
    let err = w.write_tensor("a", &[0u8; 10][..]).unwrap_err();
    assert!(
        matches!(err, GgufWriteError::TensorTooShort { declared: 16, supplied: 10, offset, .. } if offset == data_offset + 10),
        "{err}"
    );
    assert!(matches!(w.write_tensor_bytes("b", &[0; 34]), Err(GgufWriteError::Poisoned)));
    assert!(matches!(w.finish(), Err(GgufWriteError::Poisoned)));

    let mut w = two_tensor_writer();
    let err = w.write_tensor("a", &[0u8; 17][..]).unwrap_err();
    assert!(matches!(err, GgufWriteError::TensorTooLong { declared: 16, .. }), "{err}");
    assert!(matches!(w.tensor_writer("b"), Err(GgufWriteError::Poisoned)));

    // A sink refuses bytes past the end with the typed error inside an io::Error.
    let mut w = two_tensor_writer();
    let mut sink = w.tensor_writer("a").unwrap();
    sink.write_all(&[0; 12]).unwrap();
    let err = sink.write_all(&[0; 5]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let inner = err.into_inner().unwrap().downcast::<GgufWriteError>().unwrap();
    assert!(matches!(*inner, GgufWriteError::TensorTooLong { ref tensor, declared: 16, .. } if tensor == "a"));
    assert!(matches!(sink.finish(), Err(GgufWriteError::Poisoned)));

    // A sink that got too little: refused by its finish, by the next tensor, or by finish.
    let mut w = two_tensor_writer();
    let mut sink = w.tensor_writer("a").unwrap();
    sink.write_all(&[0; 12]).unwrap();
    let err = sink.finish().unwrap_err();
    assert!(matches!(err, GgufWriteError::TensorTooShort { supplied: 12, .. }), "{err}");

    let mut w = two_tensor_writer();
    w.tensor_writer("a").unwrap().write_all(&[0; 12]).unwrap();
    let err = w.tensor_writer("b").unwrap_err();
    assert!(matches!(&err, GgufWriteError::TensorTooShort { tensor, supplied: 12, .. } if tensor == "a"), "{err}");

    let mut w = two_tensor_writer();
    w.write_tensor_bytes("a", &[0; 16]).unwrap();
    w.tensor_writer("b").unwrap().write_all(&[0; 33]).unwrap();
    let err = w.finish().unwrap_err();
    assert!(matches!(&err, GgufWriteError::TensorTooShort { tensor, supplied: 33, .. } if tensor == "b"), "{err}");

    // Stopping early is refused by finish.
    let mut w = two_tensor_writer();
    w.write_tensor_bytes("a", &[0; 16]).unwrap();
    let err = w.finish().unwrap_err();
    assert!(matches!(&err, GgufWriteError::MissingTensors { next, remaining: 1 } if next == "b"), "{err}");
}

/// Accepts `budget` bytes, then fails.
struct FailingOutput {
    budget: usize,
}

impl Write for FailingOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.budget == 0 {
            return Err(io::Error::other("disk full"));
        }
        let n = buf.len().min(self.budget);
        self.budget -= n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct FailingSource;

impl Read for FailingSource {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other("read failed"))
    }
}

#[test]
fn output_and_source_errors_name_where_they_happened() {
    let mut h = GgufHeader::new();
    h.add_tensor("a", &[4], GgmlType::F32).unwrap();
    let err = h.clone().write_to(FailingOutput { budget: 10 }).unwrap_err();
    assert!(matches!(err, GgufWriteError::Io { offset: 10, .. }), "{err}");

    let mut w = h.clone().write_to(FailingOutput { budget: 64 + 5 }).unwrap();
    assert_eq!(w.data_offset(), 64);
    let err = w.write_tensor_bytes("a", &[0; 16]).unwrap_err();
    assert!(matches!(err, GgufWriteError::Io { offset: 69, .. }), "{err}");
    assert!(matches!(w.finish(), Err(GgufWriteError::Poisoned)));

    let mut w = h.write_to(Vec::new()).unwrap();
    let err = w.write_tensor("a", FailingSource).unwrap_err();
    assert!(matches!(&err, GgufWriteError::Source { tensor, read: 0, .. } if tensor == "a"), "{err}");
    assert!(err.to_string().contains("read failed"));
}

// ---- a real model ----

/// Re-declares the SmolLM2 demo model's metadata and tensors and streams its
/// tensor data back out of the file: the streaming writer lays a file out as
/// the writer that made the model did (llama.cpp's layout), byte for byte.
/// Runs when `ONDEVICE_TEST_MODELS_DIR` is set (CI sets it); fails if it is set
/// and the model is missing.
#[test]
fn a_real_model_rewritten_by_the_streaming_writer_is_byte_identical() {
    let Some(path) = ondevice_testkit::smollm2("a_real_model_rewritten_by_the_streaming_writer_is_byte_identical")
    else {
        return;
    };
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e} (run scripts/fetch-demo-models.sh)"));
    let mut header = GgufHeader::new();
    for (key, value) in file.metadata() {
        header.add_metadata(key.clone(), value.clone()).unwrap();
    }
    for t in file.tensors() {
        header.add_tensor(t.name(), t.dims(), t.ggml_type()).unwrap();
    }
    assert_eq!(header.file_len(), file.file_len());
    assert_eq!(header.data_offset(), file.data_offset());

    let mut source = io::BufReader::new(std::fs::File::open(&path).unwrap());
    let mut writer = header.write_to(io::sink()).unwrap();
    for t in file.tensors() {
        io::Seek::seek(&mut source, io::SeekFrom::Start(t.file_range().start)).unwrap();
        writer.write_tensor(t.name(), (&mut source).take(t.n_bytes())).unwrap();
    }
    let finished = writer.finish().unwrap();
    assert_eq!(finished.len(), file.file_len());
    // The sha256 scripts/fetch-demo-models.sh pins for the file.
    assert_eq!(finished.sha256_hex(), "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53");
}
