//! safetensors header and Hugging Face directory tests: a valid round trip and
//! hostile headers that must each give the right typed error.

mod common;

use std::path::Path;

use common::{Rng, safetensors};
use ondevice_gguf::{Dtype, HfDirError, HfModelDir, SafetensorsError, SafetensorsHeader, limits};

const VALID: &str = r#"{"__metadata__":{"format":"pt"},
    "b.weight":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]},
    "a.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},
    "empty":{"dtype":"I64","shape":[0,5],"data_offsets":[32,32]},
    "mask":{"dtype":"BOOL","shape":[2],"data_offsets":[32,34]}}"#;

#[test]
fn valid_header_round_trips() {
    let bytes = safetensors(VALID, 34);
    let header = SafetensorsHeader::parse(&bytes).unwrap();
    assert_eq!(header.metadata().get("format").map(String::as_str), Some("pt"));
    assert_eq!(header.header_len(), VALID.len() as u64);
    assert_eq!(header.data_offset(), 8 + VALID.len() as u64);
    assert_eq!(header.file_len(), bytes.len() as u64);
    let names: Vec<_> = header.tensors().iter().map(|t| t.name()).collect();
    assert_eq!(names, ["a.weight", "b.weight", "empty", "mask"]);
    let a = &header.tensors()[0];
    assert_eq!((a.dtype(), a.shape(), a.n_elements()), (Dtype::F32, &[2, 3][..], 6));
    assert_eq!(a.data_offsets(), 0..24);
    let start = header.data_offset();
    assert_eq!(a.file_range(), start..start + 24);
    assert_eq!(header.parameter_count(), 6 + 4 + 2);
    assert_eq!(header.tensors()[2].n_elements(), 0);
}

#[test]
fn empty_header_without_data_is_valid() {
    let header = SafetensorsHeader::parse(&safetensors("{}", 0)).unwrap();
    assert!(header.tensors().is_empty());
    assert!(header.metadata().is_empty());
}

#[test]
fn every_dtype_name_round_trips() {
    for name in [
        "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16", "F16", "BF16",
        "I32", "U32", "F32", "C64", "F64", "I64", "U64",
    ] {
        let dtype = Dtype::from_name(name).unwrap();
        assert_eq!(dtype.name(), name);
        // 8 elements fill whole bytes for every dtype.
        let bytes = (8 * dtype.bits() / 8) as usize;
        let json = format!(r#"{{"t":{{"dtype":"{name}","shape":[8],"data_offsets":[0,{bytes}]}}}}"#);
        let header = SafetensorsHeader::parse(&safetensors(&json, bytes)).unwrap();
        assert_eq!(header.tensors()[0].dtype(), dtype);
    }
    assert_eq!(Dtype::from_name("f32"), None);
}

#[test]
fn truncation_at_every_byte_is_an_error() {
    let bytes = safetensors(VALID, 34);
    for len in 0..bytes.len() {
        assert!(SafetensorsHeader::parse(&bytes[..len]).is_err(), "truncated to {len} bytes");
    }
}

#[test]
fn random_corruption_never_panics() {
    let bytes = safetensors(VALID, 34);
    let mut rng = Rng(42);
    let mut errors = 0;
    for _ in 0..3000 {
        let mut b = bytes.clone();
        let i = rng.below(8 + VALID.len());
        b[i] = rng.next() as u8;
        if let Ok(header) = SafetensorsHeader::parse(&b) {
            for t in header.tensors() {
                assert!(t.file_range().end <= b.len() as u64);
            }
        } else {
            errors += 1;
        }
    }
    assert!(errors > 1000, "{errors}");
}

fn tensor(name: &str, dtype: &str, shape: &str, begin: u64, end: u64) -> String {
    format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{begin},{end}]}}"#)
}

#[test]
fn hostile_headers_give_typed_errors() {
    type Check = Box<dyn Fn(&SafetensorsError) -> bool>;
    let mut cases: Vec<(&str, Vec<u8>, Check)> = Vec::new();
    let mut case = |name, bytes, check: Check| cases.push((name, bytes, check));
    let json = |name, bytes: Vec<u8>| {
        (name, bytes, Box::new(|e: &SafetensorsError| matches!(e, SafetensorsError::InvalidJson { .. })) as Check)
    };

    case("empty file", vec![], Box::new(|e| matches!(e, SafetensorsError::Truncated { needed: 8, .. })));
    case("seven bytes", vec![0; 7], Box::new(|e| matches!(e, SafetensorsError::Truncated { .. })));
    case(
        "absurd header length",
        u64::MAX.to_le_bytes().to_vec(),
        Box::new(|e| matches!(e, SafetensorsError::HeaderTooLarge { len: u64::MAX, .. })),
    );
    case(
        "header length just over the cap",
        (limits::MAX_SAFETENSORS_HEADER_LEN + 1).to_le_bytes().to_vec(),
        Box::new(|e| matches!(e, SafetensorsError::HeaderTooLarge { .. })),
    );
    let mut b = 1000u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    case(
        "header length beyond the file",
        b,
        Box::new(|e| matches!(e, SafetensorsError::HeaderExceedsFile { len: 1000, file_len: 10 })),
    );
    for (name, text) in [
        ("unterminated json", "{"),
        ("json array", "[]"),
        ("not json", "hello"),
        ("trailing garbage", "{} x"),
        ("tensor with unknown field", r#"{"t":{"dtype":"F32","shape":[],"data_offsets":[0,4],"x":1}}"#),
        ("tensor missing offsets", r#"{"t":{"dtype":"F32","shape":[]}}"#),
        ("negative dimension", r#"{"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#),
        ("three offsets", r#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}"#),
        ("metadata with a number", r#"{"__metadata__":{"a":1}}"#),
    ] {
        let (n, b, c) = json(name, safetensors(text, 4));
        case(n, b, c);
    }
    let mut b = 4u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{\"\xff\"");
    let (n, b, c) = json("invalid utf-8", b);
    case(n, b, c);
    let deep = format!(r#"{{"__metadata__":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
    let (n, b, c) = json("deeply nested json", safetensors(&deep, 0));
    case(n, b, c);

    case(
        "unknown dtype",
        safetensors(&format!("{{{}}}", tensor("t", "F33", "[1]", 0, 4)), 4),
        Box::new(|e| matches!(e, SafetensorsError::UnknownDtype { dtype, .. } if dtype == "F33")),
    );
    case(
        "shape overflow",
        safetensors(&format!("{{{}}}", tensor("t", "F32", "[4294967296,4294967296]", 0, 4)), 4),
        Box::new(|e| matches!(e, SafetensorsError::ShapeOverflow { .. })),
    );
    case(
        "bit size overflow",
        safetensors(&format!("{{{}}}", tensor("t", "F64", "[2305843009213693952]", 0, 4)), 4),
        Box::new(|e| matches!(e, SafetensorsError::ShapeOverflow { .. })),
    );
    case(
        "sub-byte tensor ending mid-byte",
        safetensors(&format!("{{{}}}", tensor("t", "F4", "[3]", 0, 2)), 2),
        Box::new(|e| matches!(e, SafetensorsError::PartialByte { n_elements: 3, .. })),
    );
    case(
        "offsets that end before they begin",
        safetensors(&format!("{{{}}}", tensor("t", "F32", "[0]", 4, 0)), 4),
        Box::new(|e| matches!(e, SafetensorsError::InvalidOffsets { begin: 4, end: 0, .. })),
    );
    case(
        "offsets that do not match the shape",
        safetensors(&format!("{{{}}}", tensor("t", "F32", "[2]", 0, 4)), 4),
        Box::new(|e| matches!(e, SafetensorsError::SizeMismatch { expected: 8, actual: 4, .. })),
    );
    case(
        "tensor past the end of the data",
        safetensors(&format!("{{{}}}", tensor("t", "F32", "[2]", 0, 8)), 4),
        Box::new(|e| matches!(e, SafetensorsError::OutOfBounds { end: 8, data_len: 4, .. })),
    );
    case(
        "tensor at an absurd offset",
        safetensors(&format!("{{{}}}", tensor("t", "U8", "[1]", u64::MAX - 1, u64::MAX)), 4),
        Box::new(|e| matches!(e, SafetensorsError::OutOfBounds { .. })),
    );
    case(
        "overlapping tensors",
        safetensors(&format!("{{{},{}}}", tensor("a", "F32", "[2]", 0, 8), tensor("b", "F32", "[1]", 4, 8)), 8),
        Box::new(|e| matches!(e, SafetensorsError::Overlap { tensor, previous } if tensor == "b" && previous == "a")),
    );
    case(
        "hole between tensors",
        safetensors(&format!("{{{},{}}}", tensor("a", "F32", "[1]", 0, 4), tensor("b", "F32", "[1]", 8, 12)), 12),
        Box::new(|e| matches!(e, SafetensorsError::Hole { start: 4, end: 8 })),
    );
    case(
        "hole at the start",
        safetensors(&format!("{{{}}}", tensor("a", "F32", "[1]", 4, 8)), 8),
        Box::new(|e| matches!(e, SafetensorsError::Hole { start: 0, end: 4 })),
    );
    case(
        "bytes after the last tensor",
        safetensors(&format!("{{{}}}", tensor("a", "F32", "[1]", 0, 4)), 6),
        Box::new(|e| matches!(e, SafetensorsError::Hole { start: 4, end: 6 })),
    );
    case(
        "duplicate tensor name",
        safetensors(&format!("{{{},{}}}", tensor("a", "F32", "[1]", 0, 4), tensor("a", "F32", "[1]", 4, 8)), 8),
        Box::new(|e| matches!(e, SafetensorsError::DuplicateTensor { name } if name == "a")),
    );

    for (name, bytes, check) in &cases {
        match SafetensorsHeader::parse(bytes) {
            Ok(_) => panic!("{name}: parsed a hostile header"),
            Err(e) => assert!(check(&e), "{name}: unexpected error {e:?}"),
        }
    }
    assert!(cases.len() > 25);
}

fn write_dir(dir: &Path, files: &[(&str, Vec<u8>)]) {
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

const CONFIG: &str = r#"{"architectures":["BertModel"],"model_type":"bert","max_position_embeddings":512}"#;

#[test]
fn hf_directory_with_one_weight_file() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(
        dir.path(),
        &[
            ("config.json", CONFIG.into()),
            ("model.safetensors", safetensors(VALID, 34)),
            ("tokenizer.json", b"{}".to_vec()),
        ],
    );
    let model = HfModelDir::open(dir.path()).unwrap();
    assert_eq!(model.architecture(), Some("BertModel"));
    assert_eq!(model.model_type(), Some("bert"));
    assert_eq!(model.context_length(), Some(512));
    assert_eq!(model.parameter_count(), 12);
    assert_eq!(model.tensor_count(), 4);
    assert_eq!(model.dtypes(), [Dtype::BOOL, Dtype::BF16, Dtype::F32, Dtype::I64]);
    assert_eq!(model.parameters_by_dtype()[&Dtype::F32], 6);
    assert_eq!(model.weight_files(), [dir.path().join("model.safetensors")]);
    assert_eq!(model.config()["model_type"], "bert");
}

#[test]
fn hf_directory_with_sharded_weights() {
    let dir = tempfile::tempdir().unwrap();
    let shard = |name: &str, n: u64| {
        safetensors(&format!("{{{}}}", tensor(name, "F16", &format!("[{n}]"), 0, 2 * n)), 2 * n as usize)
    };
    let index = r#"{"metadata":{"total_size":30},"weight_map":{
        "a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#;
    write_dir(
        dir.path(),
        &[
            (
                "config.json",
                r#"{"architectures":["LlamaForCausalLM"],"text_config":{"max_position_embeddings":4096}}"#.into(),
            ),
            ("model.safetensors.index.json", index.into()),
            ("model-00001-of-00002.safetensors", shard("a", 10)),
            ("model-00002-of-00002.safetensors", shard("b", 5)),
            // Not in the index, so not read.
            ("stray.safetensors", b"garbage".to_vec()),
        ],
    );
    let model = HfModelDir::open(dir.path()).unwrap();
    assert_eq!(model.parameter_count(), 15);
    assert_eq!(model.weight_files().len(), 2);
    assert_eq!(model.context_length(), Some(4096));
    assert_eq!(model.architecture(), Some("LlamaForCausalLM"));
}

#[test]
fn hostile_hf_directories_give_typed_errors() {
    let weights = || safetensors(VALID, 34);
    type Files = Vec<(&'static str, Vec<u8>)>;
    type Check = fn(&HfDirError) -> bool;
    let cases: Vec<(&str, Files, Check)> = vec![
        ("no config", vec![("model.safetensors", weights())], |e| matches!(e, HfDirError::Io { .. })),
        ("config not json", vec![("config.json", b"{".to_vec())], |e| matches!(e, HfDirError::Json { .. })),
        ("config not an object", vec![("config.json", b"[1]".to_vec())], |e| {
            matches!(e, HfDirError::ConfigNotObject { .. })
        }),
        ("no weights", vec![("config.json", CONFIG.into())], |e| matches!(e, HfDirError::NoWeights { .. })),
        (
            "broken weights",
            vec![("config.json", CONFIG.into()), ("model.safetensors", b"\x02\0\0\0\0\0\0\0{]".to_vec())],
            |e| matches!(e, HfDirError::Safetensors(SafetensorsError::WithPath { .. })),
        ),
        (
            "same tensor in two files",
            vec![("config.json", CONFIG.into()), ("a.safetensors", weights()), ("b.safetensors", weights())],
            |e| matches!(e, HfDirError::DuplicateTensor { .. }),
        ),
        (
            "shard path escapes the directory",
            vec![
                ("config.json", CONFIG.into()),
                ("model.safetensors.index.json", br#"{"weight_map":{"a":"../model.safetensors"}}"#.to_vec()),
            ],
            |e| matches!(e, HfDirError::InvalidShardName { shard, .. } if shard == "../model.safetensors"),
        ),
        (
            "index names a tensor its shard lacks",
            vec![
                ("config.json", CONFIG.into()),
                ("model.safetensors", weights()),
                ("model.safetensors.index.json", br#"{"weight_map":{"zzz":"model.safetensors"}}"#.to_vec()),
            ],
            |e| matches!(e, HfDirError::IndexMismatch { tensor, .. } if tensor == "zzz"),
        ),
        (
            "index without weight_map",
            vec![("config.json", CONFIG.into()), ("model.safetensors.index.json", b"{}".to_vec())],
            |e| matches!(e, HfDirError::Json { .. }),
        ),
    ];
    for (name, files, check) in cases {
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), &files);
        match HfModelDir::open(dir.path()) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => {
                assert!(check(&e), "{name}: unexpected error {e:?}");
                assert!(e.to_string().contains(&*dir.path().to_string_lossy()), "{name}: no path in {e}");
            }
        }
    }
}
