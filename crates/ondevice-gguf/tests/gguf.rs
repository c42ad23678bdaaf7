//! GGUF reader tests: a valid round trip, and a corpus of hostile files that
//! must each give the right typed error (never a panic or a huge allocation).

mod common;

use common::{Rng, header, pattern, put_str, put_u32, put_u64, valid_gguf};
use ondevice_gguf::writer::{GgufWriter, encode_value};
use ondevice_gguf::{Array, GgmlType, GgufError, GgufFile, Limit, Value, limits};

#[test]
fn valid_file_round_trips() {
    let writer = valid_gguf();
    let bytes = writer.to_bytes();
    let file = GgufFile::parse(&bytes).expect("valid file parses");

    assert_eq!(file.version(), 3);
    assert_eq!(file.architecture(), Some("llama"));
    assert_eq!(file.name(), Some("tiny"));
    assert_eq!(file.license(), Some("apache-2.0"));
    assert_eq!(file.context_length(), Some(2048));
    assert_eq!(file.file_type(), Some(3));
    assert_eq!(file.quantization(), Some("Q4_1"));
    assert!(file.chat_template().unwrap().contains("m.content"));
    assert_eq!(file.alignment(), 32);
    assert_eq!(file.file_len(), bytes.len() as u64);
    assert_eq!(file.data_offset() % 32, 0);

    // Every value comes back with its type, in file order.
    let keys: Vec<&str> = file.metadata().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys.len(), 20);
    assert_eq!(keys[0], "general.architecture");
    assert_eq!(keys[19], "t.nested");
    assert_eq!(file.get("t.u8"), Some(&Value::U8(200)));
    assert_eq!(file.get("t.i8"), Some(&Value::I8(-7)));
    assert_eq!(file.get("t.u16"), Some(&Value::U16(65_000)));
    assert_eq!(file.get("t.i16"), Some(&Value::I16(-30_000)));
    assert_eq!(file.get("t.i32"), Some(&Value::I32(-1)));
    assert_eq!(file.get("t.f32"), Some(&Value::F32(1.5)));
    assert_eq!(file.get("t.bool"), Some(&Value::Bool(true)));
    assert_eq!(file.get_u64("t.u64"), Some(u64::MAX));
    assert_eq!(file.get("t.i64").and_then(Value::as_i64), Some(i64::MIN));
    assert_eq!(file.get("t.f64").and_then(Value::as_f64), Some(-2.25));
    assert_eq!(file.get("t.i32").and_then(Value::as_u64), None);
    let strings = file.get("t.strings").and_then(Value::as_array).unwrap();
    assert_eq!(strings.as_strings().unwrap(), ["a", "", "ünï"]);
    assert_eq!(
        file.get("t.nested"),
        Some(&Value::Array(Array::Array(vec![
            Array::I32(vec![1, 2, 3]),
            Array::String(vec!["x".into()]),
            Array::U8(vec![]),
        ])))
    );
    assert_eq!(file.get("missing"), None);

    // Tensors: sizes from the block layout, aligned offsets, data where written.
    let t: Vec<_> = file.tensors().iter().collect();
    assert_eq!(t.len(), 3);
    assert_eq!(t[0].name(), "token_embd.weight");
    assert_eq!(t[0].dims(), [4, 2]);
    assert_eq!((t[0].n_elements(), t[0].n_bytes()), (8, 32));
    assert_eq!(t[1].ggml_type(), GgmlType::Q4_1);
    assert_eq!((t[1].n_elements(), t[1].n_bytes()), (64, 40));
    assert_eq!((t[2].n_elements(), t[2].n_bytes()), (3, 6));
    assert_eq!(file.parameter_count(), 8 + 64 + 3);
    assert_eq!(file.tensor_data_len(), 32 + 40 + 6);
    for (info, seed) in t.iter().zip(1u8..) {
        assert_eq!(info.offset() % 32, 0);
        let range = info.file_range();
        assert_eq!(range.start, file.data_offset() + info.offset());
        let data = &bytes[range.start as usize..range.end as usize];
        assert_eq!(data, pattern(info.n_bytes() as usize, seed), "{}", info.name());
    }
    assert_eq!(file.tensor("output_norm.weight"), Some(t[2]));
}

#[test]
fn arrays_can_be_checked_and_dropped() {
    let bytes = valid_gguf().to_bytes();
    let file = GgufFile::parse_without_arrays(&bytes).expect("valid file parses");
    let keys: Vec<&str> = file.metadata().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys.len(), 16, "{keys:?}");
    assert!(!keys.contains(&"t.strings") && !keys.contains(&"t.nested"), "{keys:?}");
    assert_eq!(file.get("t.strings"), None);
    assert_eq!(file.get("t.u8"), Some(&Value::U8(200)));
    assert_eq!(file.quantization(), Some("Q4_1"));
    assert_eq!(file.tensors().len(), 3);
    assert_same_without_arrays(&bytes);

    // Every array type, nested to the limit: checked and dropped, the scalars around them kept.
    let mut w = GgufWriter::new().metadata("before", Value::U32(1));
    for (i, array) in [
        Array::U8(vec![1, 2]),
        Array::I8(vec![-1]),
        Array::U16(vec![7]),
        Array::I16(vec![-7]),
        Array::U32(vec![1, 2, 3]),
        Array::I32(vec![-3]),
        Array::F32(vec![0.5]),
        Array::Bool(vec![true, false]),
        Array::String(vec!["ünï".into(), String::new()]),
        Array::U64(vec![u64::MAX]),
        Array::I64(vec![i64::MIN]),
        Array::F64(vec![0.25]),
    ]
    .into_iter()
    .enumerate()
    {
        w = w.metadata(format!("a.{i}"), Value::Array(array));
    }
    let bytes = w
        .metadata("deep", nested(limits::MAX_ARRAY_DEPTH as usize))
        .metadata("after", Value::String("x".into()))
        .to_bytes();
    let file = GgufFile::parse_without_arrays(&bytes).unwrap();
    let keys: Vec<&str> = file.metadata().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["before", "after"]);
    assert_same_without_arrays(&bytes);

    // A long string in an array (read in pieces as it arrives), cut and corrupted anywhere: the
    // same verdicts as the full reader.
    let long = GgufWriter::new()
        .metadata("before", Value::U32(1))
        .metadata("a", Value::Array(Array::String(vec!["x".repeat(100_000), "ü".into()])))
        .to_bytes();
    assert_same_without_arrays(&long);
    for cut in (0..long.len()).step_by(997) {
        assert_same_without_arrays(&long[..cut]);
    }
    let mut bad = long.clone();
    let at = long.windows(3).position(|w| w == b"xxx").unwrap() + 50_000;
    bad[at] = 0xff;
    assert!(matches!(GgufFile::parse_without_arrays(&bad), Err(GgufError::InvalidUtf8 { .. })));
    assert_same_without_arrays(&bad);

    // A repeated key is refused even when both entries are skipped arrays.
    let twice = GgufWriter::new()
        .metadata("k", Value::Array(Array::U8(vec![1])))
        .metadata("k", Value::Array(Array::U8(vec![2])))
        .to_bytes();
    assert!(matches!(GgufFile::parse_without_arrays(&twice), Err(GgufError::DuplicateKey { .. })));
    assert_same_without_arrays(&twice);
    // `general.alignment` is kept even as an array, so that it is refused as by `parse`.
    let alignment = GgufWriter::new().metadata("general.alignment", Value::Array(Array::U32(vec![32]))).to_bytes();
    assert!(matches!(GgufFile::parse_without_arrays(&alignment), Err(GgufError::WrongMetadataType { .. })));
    assert_same_without_arrays(&alignment);
}

#[test]
fn version_2_and_custom_alignment_are_read() {
    let bytes = valid_gguf().version(2).metadata("general.alignment", Value::U32(64)).to_bytes();
    let file = GgufFile::parse(&bytes).unwrap();
    assert_eq!(file.version(), 2);
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_offset() % 64, 0);
    assert!(file.tensors().iter().all(|t| t.offset() % 64 == 0));
}

#[test]
fn every_ggml_type_has_the_right_size() {
    for &ty in GgmlType::ALL {
        let block = ty.block_size();
        let size = 2 * 3 * ty.type_size();
        let bytes = GgufWriter::new().tensor("t", &[2 * block, 3], ty, vec![0; size as usize]).to_bytes();
        let file = GgufFile::parse(&bytes).unwrap_or_else(|e| panic!("{ty}: {e}"));
        let t = &file.tensors()[0];
        assert_eq!(t.ggml_type(), ty);
        assert_eq!(t.n_elements(), 6 * block, "{ty}");
        assert_eq!(t.n_bytes(), size, "{ty}");
        assert_eq!(file.quantization(), Some(ty.name()), "fallback for {ty}");
    }
}

#[test]
fn zero_tensor_file_with_no_padding_is_valid() {
    let bytes = GgufWriter::new().metadata("general.architecture", Value::String("x".into())).to_bytes();
    let file = GgufFile::parse(&bytes).unwrap();
    assert_eq!(file.parameter_count(), 0);
    assert_eq!(file.quantization(), None);
    assert_eq!(file.context_length(), None);
}

#[test]
fn truncation_at_every_byte_is_an_error() {
    let bytes = valid_gguf().to_bytes();
    GgufFile::parse(&bytes).expect("the untruncated file is valid");
    for len in 0..bytes.len() {
        assert_same_without_arrays(&bytes[..len]);
        let result = GgufFile::parse(&bytes[..len]);
        assert!(
            matches!(result, Err(GgufError::Truncated { .. } | GgufError::TensorOutOfBounds { .. })),
            "truncated to {len} bytes: {result:?}"
        );
    }
}

#[test]
fn random_corruption_never_panics() {
    let bytes = valid_gguf().to_bytes();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut err) = (0, 0);
    for _ in 0..3000 {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(b.len());
            b[i] = match rng.below(3) {
                0 => rng.next() as u8,
                1 => 0xff,
                _ => b[i] ^ (1 << rng.below(8)),
            };
        }
        assert_same_without_arrays(&b);
        match GgufFile::parse(&b) {
            Ok(file) => {
                ok += 1;
                for t in file.tensors() {
                    assert!(t.file_range().end <= b.len() as u64);
                }
            }
            Err(_) => err += 1,
        }
    }
    assert!(err > 1000, "most corruptions are caught: ok={ok} err={err}");
}

/// `parse_without_arrays` accepts what `parse` accepts, keeping all but the arrays, and refuses
/// what it refuses with the same error.
fn assert_same_without_arrays(bytes: &[u8]) {
    let full = GgufFile::parse(bytes);
    let lean = GgufFile::parse_without_arrays(bytes);
    match (&full, &lean) {
        (Ok(full), Ok(lean)) => {
            let scalars: Vec<_> = full.metadata().iter().filter(|(_, v)| !matches!(v, Value::Array(_))).collect();
            // Debug, not `==`: a corrupted f32 may be NaN.
            assert_eq!(format!("{:?}", lean.metadata().iter().collect::<Vec<_>>()), format!("{scalars:?}"));
            for (key, value) in full.metadata() {
                let kept = lean.get(key).map(|v| format!("{v:?}"));
                let expected = (!matches!(value, Value::Array(_))).then(|| format!("{value:?}"));
                assert_eq!(kept, expected, "{key}");
            }
            assert_eq!(lean.tensors(), full.tensors());
            assert_eq!(
                (lean.version(), lean.alignment(), lean.data_offset(), lean.file_len()),
                (full.version(), full.alignment(), full.data_offset(), full.file_len())
            );
        }
        (Err(full), Err(lean)) => assert_eq!(format!("{lean:?}"), format!("{full:?}")),
        _ => panic!("parse gave {full:?}, parse_without_arrays {lean:?}"),
    }
}

/// A file with a single metadata entry whose encoded value is `value`.
fn with_kv(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = header(0, 1);
    put_str(&mut out, key);
    out.extend_from_slice(value);
    out
}

fn value_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_value(&mut out, value);
    out
}

fn nested(depth: usize) -> Value {
    let mut a = Array::U8(vec![1]);
    for _ in 1..depth {
        a = Array::Array(vec![a]);
    }
    Value::Array(a)
}

/// One tensor info (name, dims, type id, offset) after an empty metadata
/// section, followed by `data_len` bytes of data.
fn one_tensor(dims: &[u64], type_id: u32, offset: u64, data_len: usize) -> Vec<u8> {
    GgufWriter::new().raw_tensor("t", dims, type_id, offset).trailing_data(vec![0; data_len]).to_bytes()
}

fn limit(what: Limit) -> impl Fn(&GgufError) -> bool {
    move |e| matches!(e, GgufError::LimitExceeded { what: w, .. } if *w == what)
}

#[test]
fn hostile_files_give_typed_errors() {
    type Check = Box<dyn Fn(&GgufError) -> bool>;
    let truncated: fn(&GgufError) -> bool = |e| matches!(e, GgufError::Truncated { .. });
    let mut cases: Vec<(&str, Vec<u8>, Check)> = Vec::new();
    let mut case = |name, bytes, check: Check| cases.push((name, bytes, check));

    case("empty file", vec![], Box::new(truncated));
    case(
        "wrong magic",
        b"GGML\x03\0\0\0".to_vec(),
        Box::new(|e| matches!(e, GgufError::BadMagic { found } if found == b"GGML")),
    );
    for version in [0, 1, 4, u32::MAX] {
        case(
            "unsupported version",
            GgufWriter::new().version(version).to_bytes(),
            Box::new(move |e| matches!(e, GgufError::UnsupportedVersion { version: v } if *v == version)),
        );
    }
    case(
        "big-endian file",
        GgufWriter::new().version(3u32.swap_bytes()).to_bytes(),
        Box::new(|e| matches!(e, GgufError::BigEndian { version: 3 })),
    );
    case("absurd tensor count", header(u64::MAX, 0), Box::new(limit(Limit::Tensors)));
    case("absurd metadata count", header(0, u64::MAX), Box::new(limit(Limit::MetadataEntries)));
    case("metadata count beyond file", header(0, 1000), Box::new(truncated));
    case("tensor count beyond file", header(1000, 0), Box::new(truncated));

    let mut b = header(0, 1);
    put_u64(&mut b, u64::MAX);
    b.extend_from_slice(&[0; 16]);
    case("absurd key length", b, Box::new(limit(Limit::KeyLength)));
    let mut b = header(0, 1);
    put_u64(&mut b, 60_000);
    b.extend_from_slice(b"key");
    case("key length beyond file", b, Box::new(truncated));

    let mut v = Vec::new();
    put_u32(&mut v, 8);
    put_u64(&mut v, u64::MAX);
    case("absurd string length", with_kv(b"k", &v), Box::new(limit(Limit::StringLength)));
    let mut v = Vec::new();
    put_u32(&mut v, 8);
    put_u64(&mut v, 1 << 20);
    v.extend_from_slice(b"short");
    case("string length beyond file", with_kv(b"k", &v), Box::new(truncated));

    for elem in [0u32, 8, 9, 10] {
        let mut v = Vec::new();
        put_u32(&mut v, 9);
        put_u32(&mut v, elem);
        put_u64(&mut v, u64::MAX);
        case("absurd array count", with_kv(b"k", &v), Box::new(limit(Limit::ArrayLength)));
        let mut v = Vec::new();
        put_u32(&mut v, 9);
        put_u32(&mut v, elem);
        put_u64(&mut v, limits::MAX_ARRAY_LEN);
        v.extend_from_slice(&[0; 64]);
        case("array count beyond file", with_kv(b"k", &v), Box::new(truncated));
    }

    let depth = limits::MAX_ARRAY_DEPTH as usize + 1;
    case(
        "arrays nested one level too deep",
        with_kv(b"k", &value_bytes(&nested(depth))),
        Box::new(limit(Limit::ArrayDepth)),
    );
    let mut v = Vec::new();
    put_u32(&mut v, 9);
    for _ in 0..100_000 {
        put_u32(&mut v, 9);
        put_u64(&mut v, 1);
    }
    case("arrays nested 100000 deep", with_kv(b"k", &v), Box::new(limit(Limit::ArrayDepth)));

    let mut v = Vec::new();
    put_u32(&mut v, 13);
    v.push(0);
    case(
        "unknown value type",
        with_kv(b"k", &v),
        Box::new(|e| matches!(e, GgufError::UnknownValueType { value_type: 13, .. })),
    );
    let mut v = Vec::new();
    put_u32(&mut v, 9);
    put_u32(&mut v, 0xdead);
    put_u64(&mut v, 1);
    case(
        "unknown array element type",
        with_kv(b"k", &v),
        Box::new(|e| matches!(e, GgufError::UnknownValueType { value_type: 0xdead, .. })),
    );
    let mut v = Vec::new();
    put_u32(&mut v, 7);
    v.push(2);
    case(
        "boolean that is neither 0 nor 1",
        with_kv(b"k", &v),
        Box::new(|e| matches!(e, GgufError::InvalidBool { value: 2, .. })),
    );
    let mut v = Vec::new();
    put_u32(&mut v, 9);
    put_u32(&mut v, 7);
    put_u64(&mut v, 3);
    v.extend_from_slice(&[1, 0, 7]);
    case(
        "boolean array element that is neither 0 nor 1",
        with_kv(b"k", &v),
        Box::new(|e| matches!(e, GgufError::InvalidBool { value: 7, .. })),
    );
    case(
        "invalid utf-8 key",
        with_kv(b"k\xff", &value_bytes(&Value::U8(0))),
        Box::new(|e| matches!(e, GgufError::InvalidUtf8 { offset: 32 })),
    );
    let mut v = Vec::new();
    put_u32(&mut v, 8);
    put_str(&mut v, b"\xc3\x28");
    case("invalid utf-8 string value", with_kv(b"k", &v), Box::new(|e| matches!(e, GgufError::InvalidUtf8 { .. })));
    case(
        "duplicate key",
        GgufWriter::new().metadata("a", Value::U8(1)).metadata("a", Value::U8(2)).to_bytes(),
        Box::new(|e| matches!(e, GgufError::DuplicateKey { key, .. } if key == "a")),
    );

    for bad in [0u64, 3, 48, 1 << 40] {
        case(
            "invalid alignment",
            GgufWriter::new().metadata("general.alignment", Value::U64(bad)).to_bytes(),
            Box::new(move |e| matches!(e, GgufError::InvalidAlignment { alignment } if *alignment == bad)),
        );
    }
    case(
        "alignment of the wrong type",
        GgufWriter::new().metadata("general.alignment", Value::String("32".into())).to_bytes(),
        Box::new(|e| matches!(e, GgufError::WrongMetadataType { .. })),
    );

    case(
        "tensor name too long",
        GgufWriter::new().raw_tensor("n".repeat(65), &[1], 0, 0).trailing_data(vec![0; 4]).to_bytes(),
        Box::new(limit(Limit::TensorNameLength)),
    );
    case("too many dimensions", one_tensor(&[1, 1, 1, 1, 1], 0, 0, 4), Box::new(limit(Limit::Dimensions)));
    let mut b = header(1, 0);
    put_str(&mut b, b"t");
    put_u32(&mut b, u32::MAX);
    b.extend_from_slice(&[0; 32]);
    case("absurd dimension count", b, Box::new(limit(Limit::Dimensions)));
    case(
        "element count overflow",
        one_tensor(&[u64::MAX, 2], 0, 0, 64),
        Box::new(|e| matches!(e, GgufError::TensorSizeOverflow { .. })),
    );
    case(
        "element count over i64::MAX",
        one_tensor(&[1 << 32, 1 << 31], 0, 0, 64),
        Box::new(|e| matches!(e, GgufError::TensorSizeOverflow { .. })),
    );
    case(
        "byte size overflow",
        one_tensor(&[1 << 61], 0, 0, 64),
        Box::new(|e| matches!(e, GgufError::TensorSizeOverflow { .. })),
    );
    for id in [4, 5, 31, 1000, u32::MAX] {
        case(
            "unknown ggml type",
            one_tensor(&[32], id, 0, 256),
            Box::new(move |e| matches!(e, GgufError::UnknownGgmlType { ggml_type, .. } if *ggml_type == id)),
        );
    }
    case(
        "row not a multiple of the block size",
        one_tensor(&[33], GgmlType::Q4_0.id(), 0, 64),
        Box::new(|e| matches!(e, GgufError::RowNotBlockAligned { row: 33, block_size: 32, .. })),
    );
    case(
        "misaligned tensor offset",
        one_tensor(&[1], 0, 4, 64),
        Box::new(|e| matches!(e, GgufError::MisalignedTensor { offset: 4, alignment: 32, .. })),
    );
    case(
        "tensor offset far outside the file",
        one_tensor(&[1], 0, 1 << 40, 64),
        Box::new(|e| matches!(e, GgufError::TensorOutOfBounds { .. })),
    );
    case(
        "tensor offset that overflows",
        one_tensor(&[1], 0, u64::MAX - 31, 64),
        Box::new(|e| matches!(e, GgufError::TensorOutOfBounds { .. })),
    );
    case(
        "tensor data running past the end",
        one_tensor(&[16], 0, 0, 63),
        Box::new(|e| matches!(e, GgufError::TensorOutOfBounds { .. })),
    );
    case(
        "overlapping tensors",
        GgufWriter::new()
            .raw_tensor("a", &[16], 0, 0)
            .raw_tensor("b", &[8], 0, 32)
            .trailing_data(vec![0; 64])
            .to_bytes(),
        Box::new(|e| matches!(e, GgufError::OverlappingTensors { first, second } if first == "a" && second == "b")),
    );
    case(
        "identical tensor ranges",
        GgufWriter::new().raw_tensor("a", &[8], 0, 0).raw_tensor("b", &[8], 0, 0).trailing_data(vec![0; 32]).to_bytes(),
        Box::new(|e| matches!(e, GgufError::OverlappingTensors { .. })),
    );
    case(
        "duplicate tensor name",
        GgufWriter::new()
            .tensor("w", &[1], GgmlType::F32, vec![0; 4])
            .tensor("w", &[1], GgmlType::F32, vec![0; 4])
            .to_bytes(),
        Box::new(|e| matches!(e, GgufError::DuplicateTensor { name, .. } if name == "w")),
    );

    let count = cases.len();
    for (name, bytes, check) in &cases {
        assert_same_without_arrays(bytes);
        match GgufFile::parse(bytes) {
            Ok(_) => panic!("{name}: parsed a hostile file"),
            Err(e) => {
                assert!(check(&e), "{name}: unexpected error {e:?}");
                let message = e.to_string();
                assert!(
                    message.starts_with(|c: char| !c.is_uppercase()) && !message.ends_with('.'),
                    "{name}: message style: {message}"
                );
            }
        }
    }
    assert!(count > 50, "{count} cases");
}

#[test]
fn nesting_up_to_the_limit_is_accepted() {
    let value = nested(limits::MAX_ARRAY_DEPTH as usize);
    let bytes = GgufWriter::new().metadata("k", value.clone()).to_bytes();
    assert_eq!(GgufFile::parse(&bytes).unwrap().get("k"), Some(&value));
}

#[test]
fn a_reader_shorter_than_its_declared_length_is_truncated() {
    // The caller claims a huge file; the declared array must not be
    // preallocated from that claim, and the short read must be an error.
    let mut v = Vec::new();
    put_u32(&mut v, 9);
    put_u32(&mut v, 10);
    put_u64(&mut v, limits::MAX_ARRAY_LEN);
    let bytes = with_kv(b"k", &v);
    let result = GgufFile::read_from(&bytes[..], u64::MAX / 2);
    assert!(matches!(result, Err(GgufError::Truncated { .. })), "{result:?}");
}

#[test]
fn open_reads_a_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.gguf");
    std::fs::write(&good, valid_gguf().to_bytes()).unwrap();
    let file = GgufFile::open(&good).unwrap();
    assert_eq!(file.tensors().len(), 3);
    assert_eq!(file.architecture(), Some("llama"));
    let lean = GgufFile::open_without_arrays(&good).unwrap();
    assert_eq!(lean.tensors(), file.tensors());
    assert_eq!(lean.metadata().len(), file.metadata().len() - 4);

    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x09\0\0\0").unwrap();
    let err = GgufFile::open(&bad).unwrap_err();
    assert!(
        matches!(&err, GgufError::WithPath { source, .. } if matches!(**source, GgufError::UnsupportedVersion { version: 9 }))
    );
    assert!(err.to_string().contains("bad.gguf"), "{err}");
    let err = GgufFile::open_without_arrays(&bad).unwrap_err();
    assert!(err.to_string().contains("bad.gguf"), "{err}");

    let missing = GgufFile::open(dir.path().join("missing.gguf")).unwrap_err();
    assert!(matches!(missing, GgufError::Open { .. }), "{missing:?}");
}
