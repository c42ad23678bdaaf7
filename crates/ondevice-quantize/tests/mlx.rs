//! MLX export of a real model, checked against mlx-lm itself: a SmolLM2 safetensors directory
//! (written from the SmolLM2 GGUF, see `support`) → MLX 4-bit and 8-bit (group 64) by ondevice:
//!
//! - twice, byte-identical;
//! - every tensor (names, dtypes, shapes and bytes) and the `quantization` block equal what
//!   `mlx_lm.convert -q` writes for the same directory;
//! - `mlx_lm` loads both and both answer "What is the capital of France?" greedily with Paris
//!   (computing in float32, see `tests/mlx/generate.py`; in BF16 on the CPU the 4-bit one drifted
//!   into French, and the three answers took four minutes);
//! - the same model as an F16 GGUF (by our converter) → MLX 8-bit also answers Paris;
//! - a quantized GGUF, a truncated safetensors file and an existing output are refused, nothing
//!   written.
//!
//! mlx-lm runs once, in one Python process (`tests/mlx/generate.py`): its two conversions and the
//! three models' answers (importing mlx-lm takes seconds; five processes paid it five times).
//!
//! Needs `python3` with `mlx` and `mlx-lm`, and `$ONDEVICE_TEST_MODELS_DIR`; skipped with a note
//! without them (a failure under `CI`).

// The reference is MLX itself, a Python peer the test runs (as other tests run their peers).
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use ondevice_gguf::SafetensorsHeader;
use ondevice_quantize::mlx::{MlxExport, MlxOptions};
use ondevice_quantize::{Conversion, ConvertOptions, NoProgress, OutType};

fn python_has(test: &str, modules: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: python3 cannot import {modules} (scripts/test.sh installs it)"
        );
        eprintln!("{test}: skipped: python3 cannot import {modules} (pip install \"mlx[cpu]\" mlx-lm)");
    }
    ok
}

/// name → (dtype, shape, bytes) of every tensor of an MLX directory.
fn tensors(dir: &Path) -> BTreeMap<String, (String, Vec<u64>, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            continue;
        }
        let header = SafetensorsHeader::open(&path).unwrap();
        let data = std::fs::read(&path).unwrap();
        for t in header.tensors() {
            let r = t.file_range();
            out.insert(
                t.name().to_owned(),
                (t.dtype().name().to_owned(), t.shape().to_vec(), data[r.start as usize..r.end as usize].to_vec()),
            );
        }
    }
    out
}

fn config(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap()
}

/// Runs mlx-lm once: `convert` (source, output, bits, group) with mlx-lm's own converter, then a
/// greedy answer from each of `answer`; returns the answers in that order.
fn mlx_lm(convert: &[(&Path, &Path, u32, u32)], answer: &[&Path]) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mlx/generate.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script);
    for (hf, out, bits, group) in convert {
        cmd.arg("--convert").arg(hf).arg(out).arg(bits.to_string()).arg(group.to_string());
    }
    cmd.args(answer);
    let run = cmd.output().unwrap();
    assert!(run.status.success(), "mlx_lm: {}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    answer
        .iter()
        .map(|dir| {
            let prefix = format!("answer {}: ", dir.display());
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("mlx_lm gave no answer for {}: {stdout}", dir.display()))
                .to_owned()
        })
        .collect()
}

#[test]
fn smollm2_to_mlx_matches_mlx_lm_convert_and_answers_paris() {
    let test = "smollm2_to_mlx";
    let Some(gguf) = ondevice_testkit::smollm2(test) else {
        return;
    };
    if !python_has(test, "mlx.core, mlx_lm") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("SmolLM2-135M-Instruct");
    std::fs::create_dir(&hf).unwrap();
    support::write_llama_dir(&gguf, &hf);

    let started = std::time::Instant::now();
    let stage = |what: &str| eprintln!("{test}: {what} at {:.1} s", started.elapsed().as_secs_f64());
    stage("safetensors directory written");

    // Ours: 4 and 8 bits, each twice (byte-identical), and 8 bits from an F16 GGUF source (our
    // converter's).
    let ours = |bits: u32| tmp.path().join(format!("ours-{bits}"));
    for bits in [4u32, 8] {
        let options = MlxOptions::new(bits, 64).unwrap();
        let first = MlxExport::plan(&hf, options).unwrap().write(ours(bits), &NoProgress).unwrap();
        let again = MlxExport::plan(&hf, options)
            .unwrap()
            .write(tmp.path().join(format!("again-{bits}")), &NoProgress)
            .unwrap();
        assert_eq!(first.sha256, again.sha256, "two exports give the same bytes");
        assert_eq!(first.files, again.files);
    }
    let f16 = tmp.path().join("f16.gguf");
    Conversion::plan(&hf, &ConvertOptions { out_type: OutType::F16, name: None })
        .unwrap()
        .write(&f16, &NoProgress)
        .unwrap();
    let from_gguf = tmp.path().join("from-gguf-8");
    MlxExport::plan(&f16, MlxOptions::new(8, 64).unwrap()).unwrap().write(&from_gguf, &NoProgress).unwrap();
    assert_eq!(config(&from_gguf)["torch_dtype"], "float16");
    stage("our exports written");

    // mlx-lm's own conversions of the same directory, and mlx-lm loading and running ours.
    let reference = |bits: u32| tmp.path().join(format!("mlx-lm-{bits}"));
    let (ref4, ref8, ours4, ours8) = (reference(4), reference(8), ours(4), ours(8));
    let answers = mlx_lm(&[(&hf, &ref4, 4, 64), (&hf, &ref8, 8, 64)], &[&ours4, &ours8, &from_gguf]);
    stage("mlx-lm converted and answered");

    for (bits, text) in [(4u32, &answers[0]), (8, &answers[1])] {
        let want = tensors(&reference(bits));
        let got = tensors(&ours(bits));
        assert_eq!(want.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>(), "the same tensors");
        let mut quantized = 0;
        for (name, (dtype, shape, bytes)) in &want {
            let (d, s, b) = &got[name];
            assert_eq!((dtype, shape), (d, s), "{name}");
            assert!(bytes == b, "{name}: bytes differ from mlx_lm convert's");
            quantized += usize::from(name.ends_with(".scales"));
        }
        assert_eq!(quantized, 1 + 30 * 7, "embeddings and every projection are quantized");
        assert_eq!(config(&ours(bits))["quantization"], config(&reference(bits))["quantization"]);
        assert_eq!(config(&ours(bits))["quantization_config"], config(&reference(bits))["quantization_config"]);

        println!("MLX {bits}-bit answer: {text:?}");
        assert!(text.contains("Paris"), "{bits}-bit: {text:?}");
    }

    // A GGUF F16 source (our converter's) gives a directory mlx-lm runs too.
    let text = &answers[2];
    println!("MLX 8-bit from the F16 GGUF answer: {text:?}");
    assert!(text.contains("Paris"), "{text:?}");

    // Refusals leave nothing behind.
    let before: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    let err = MlxExport::plan(&gguf, MlxOptions::new(4, 64).unwrap()).unwrap_err().to_string();
    assert!(err.contains("F32, F16 or BF16"), "{err}");
    let err = MlxExport::plan(&hf, MlxOptions::new(4, 64).unwrap())
        .unwrap()
        .write(tmp.path().join("ours-4"), &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(err.contains("already exists"), "{err}");
    let broken = tmp.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(hf.join(f), broken.join(f)).unwrap();
    }
    let weights = std::fs::read(hf.join("model.safetensors")).unwrap();
    std::fs::write(broken.join("model.safetensors"), &weights[..weights.len() / 2]).unwrap();
    assert!(MlxExport::plan(&broken, MlxOptions::new(4, 64).unwrap()).is_err(), "a truncated safetensors is refused");
    let after: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before.len() + 1, after.len(), "only the broken source was added");
}
