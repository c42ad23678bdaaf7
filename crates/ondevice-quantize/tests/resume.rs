//! Resuming an interrupted quantization from its checkpoints (`QuantizeRequest::resume`), on the
//! real SmolLM2 model (a safetensors directory written from the test GGUF, see `support`) →
//! Q4_K_M through the F16 intermediate, with the quality gate. One uninterrupted run records
//! both checkpoints (the F16 intermediate converted; the output quantized, before the gate) and
//! keeps a copy of each checkpoint's files as they were at that moment: what a process killed
//! right after the checkpoint leaves. A run resumed from each skips the finished steps (seen in
//! its progress events, not in its timing) and writes the same bytes and receipt; a staged file
//! changed or cut short is detected by its digest, removed and made again. With `make_imatrix`
//! the computed importance matrix is a checkpoint too: a resumed run reuses it (the same bytes and
//! receipt) and computes a changed one again. Skipped with a note
//! when `$ONDEVICE_TEST_MODELS_DIR` is unset (nextest `llama` group).

mod support;

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use ondevice_quantize::pipeline::{Checkpoint, QuantizeRequest, StageProgress, run, step};
use ondevice_quantize::sha256_file;

/// Files saved at a checkpoint: (where the file was, its copy).
type Copies = Vec<(PathBuf, PathBuf)>;

/// Records the events of a run; with `snapshots`, copies each checkpoint's files there.
struct Recorder {
    events: RefCell<Vec<String>>,
    snapshots: Option<PathBuf>,
    /// Each checkpoint with the copies of its files: (where the file was, the copy).
    checkpoints: RefCell<Vec<(Checkpoint, Copies)>>,
}

impl Recorder {
    fn new(snapshots: Option<PathBuf>) -> Recorder {
        Recorder { events: RefCell::default(), snapshots, checkpoints: RefCell::default() }
    }

    fn events(&self) -> Vec<String> {
        self.events.borrow().clone()
    }

    fn has(&self, event: &str) -> bool {
        self.events.borrow().iter().any(|e| e == event)
    }

    fn position(&self, event: &str) -> usize {
        self.events
            .borrow()
            .iter()
            .position(|e| e == event)
            .unwrap_or_else(|| panic!("no {event:?} in {:?}", self.events()))
    }
}

impl StageProgress for Recorder {
    fn stage(&self, name: &str) {
        self.events.borrow_mut().push(format!("stage {name}"));
    }

    fn report(&self, _: u64, _: u64) {}

    fn checkpoint(&self, checkpoint: &Checkpoint) {
        let mut files = Vec::new();
        let staged = checkpoint
            .converted
            .iter()
            .chain(checkpoint.imatrix.iter())
            .chain(checkpoint.quantized.iter().map(|q| &q.file));
        let name = match (&checkpoint.converted, &checkpoint.imatrix, &checkpoint.quantized) {
            (_, _, Some(_)) => "checkpoint quantized",
            (_, Some(_), None) => "checkpoint imatrix",
            (Some(_), None, None) => "checkpoint converted",
            (None, None, None) => "checkpoint empty",
        };
        self.events.borrow_mut().push(name.to_owned());
        if let Some(dir) = &self.snapshots {
            let n = self.checkpoints.borrow().len();
            for f in staged {
                let copy = dir.join(format!("{n}-{}", f.path.file_name().unwrap().to_string_lossy()));
                std::fs::copy(&f.path, &copy).unwrap();
                files.push((f.path.clone(), copy));
            }
        }
        self.checkpoints.borrow_mut().push((checkpoint.clone(), files));
    }

    fn resumed(&self, step: &str) {
        self.events.borrow_mut().push(format!("resumed {step}"));
    }
}

fn request(source: &Path, output: &Path, resume: Option<Checkpoint>) -> QuantizeRequest {
    QuantizeRequest {
        source: source.to_owned(),
        output: output.to_owned(),
        quant_type: "Q4_K_M".into(),
        imatrix: None,
        allow_requantize: false,
        overrides: Vec::new(),
        output_tensor_type: None,
        token_embedding_type: None,
        name: Some("SmolLM2 135M Instruct".into()),
        threads: Some(2),
        scratch: output.parent().map(Path::to_owned),
        no_quality: false,
        make_imatrix: false,
        known_digests: Vec::new(),
        checkpoints: true,
        resume,
    }
}

/// The files left in `dir`.
fn left(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Puts a checkpoint's files back as they were when it was recorded.
fn restore(files: &[(PathBuf, PathBuf)]) {
    for (path, copy) in files {
        std::fs::copy(copy, path).unwrap();
    }
}

/// Takes the output out of the staging directory, checks nothing else is left there.
fn take_output(staging: &Path, output: &Path) -> Vec<u8> {
    let bytes = std::fs::read(output).unwrap();
    std::fs::remove_file(output).unwrap();
    assert_eq!(left(staging), Vec::<String>::new(), "a finished run leaves only its output");
    bytes
}

#[test]
fn a_resumed_quantization_skips_its_finished_steps_and_writes_the_same_bytes() {
    let Some(gguf) = ondevice_testkit::smollm2("quantize_resume") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("SmolLM2-135M-Instruct");
    std::fs::create_dir(&hf).unwrap();
    support::write_llama_dir(&gguf, &hf);
    let staging = tmp.path().join("staging");
    let snapshots = tmp.path().join("snapshots");
    std::fs::create_dir(&staging).unwrap();
    std::fs::create_dir(&snapshots).unwrap();
    let output = staging.join("output.gguf");

    // Uninterrupted: two checkpoints, in the order of the steps.
    let full = Recorder::new(Some(snapshots.clone()));
    let reference = run(&request(&hf, &output, None), &full).unwrap();
    println!("uninterrupted: {:?}", full.events());
    assert!(full.position("stage converting to F16") < full.position("checkpoint converted"));
    assert!(full.position("checkpoint converted") < full.position("stage quantizing"));
    assert!(full.position("stage quantizing") < full.position("checkpoint quantized"));
    assert!(full.position("checkpoint quantized") < full.position("stage measuring quality"));
    assert!(!full.events().iter().any(|e| e.starts_with("resumed")));
    let expected = take_output(&staging, &output);
    assert_eq!(sha256_file_bytes(&expected), reference.output_sha256);
    assert!(reference.quality.as_ref().is_some_and(|q| q.kl_mean.is_some()), "measured against the F16");
    let checkpoints = full.checkpoints.borrow().clone();
    assert_eq!(checkpoints.len(), 2);
    let (after_convert, convert_files) = &checkpoints[0];
    let (after_quantize, quantize_files) = &checkpoints[1];
    assert!(after_convert.quantized.is_none());
    assert_eq!(after_quantize.converted, after_convert.converted, "cumulative");
    for (cp, files) in [&checkpoints[0], &checkpoints[1]] {
        for (f, (_, copy)) in cp.converted.iter().chain(cp.quantized.iter().map(|q| &q.file)).zip(files) {
            assert_eq!(sha256_file(copy).unwrap(), f.sha256, "the checkpoint describes the file as it was");
            assert_eq!(std::fs::metadata(copy).unwrap().len(), f.size);
        }
    }
    let q = after_quantize.quantized.as_ref().unwrap();
    assert_eq!((&q.inputs, &q.source_sha256), (&reference.inputs, &reference.source_sha256));

    // Interrupted after the quantized output: only the quality gate and the commit run again.
    restore(quantize_files);
    let resumed = Recorder::new(None);
    let receipt = run(&request(&hf, &output, Some(after_quantize.clone())), &resumed).unwrap();
    println!("resumed after quantizing: {:?}", resumed.events());
    assert!(resumed.has(&format!("resumed {}", step::QUANTIZED)));
    assert!(!resumed.has("stage converting to F16") && !resumed.has("stage quantizing"), "{:?}", resumed.events());
    assert!(resumed.has("stage measuring quality"));
    assert_eq!(receipt, reference, "the same receipt, quality figures included");
    assert!(take_output(&staging, &output) == expected, "the same bytes");

    // Interrupted after the conversion: quantized again from the kept F16, not converted again.
    restore(convert_files);
    let resumed = Recorder::new(None);
    let receipt = run(&request(&hf, &output, Some(after_convert.clone())), &resumed).unwrap();
    println!("resumed after converting: {:?}", resumed.events());
    assert!(resumed.has(&format!("resumed {}", step::CONVERTED)));
    assert!(!resumed.has(&format!("resumed {}", step::QUANTIZED)));
    assert!(!resumed.has("stage converting to F16") && resumed.has("stage quantizing"), "{:?}", resumed.events());
    assert!(resumed.has("checkpoint quantized"), "the next step is recorded");
    assert_eq!(receipt, reference);
    assert!(take_output(&staging, &output) == expected, "the same bytes");

    // The quantized file changed after its checkpoint (one byte, same size): detected by its
    // digest, removed and quantized again from the intact F16.
    restore(quantize_files);
    let quantized = &after_quantize.quantized.as_ref().unwrap().file.path;
    let mut bytes = std::fs::read(quantized).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(quantized, &bytes).unwrap();
    let resumed = Recorder::new(None);
    let receipt = run(&request(&hf, &output, Some(after_quantize.clone())), &resumed).unwrap();
    println!("resumed with a changed quantized file: {:?}", resumed.events());
    assert!(!resumed.has(&format!("resumed {}", step::QUANTIZED)), "{:?}", resumed.events());
    assert!(resumed.has(&format!("resumed {}", step::CONVERTED)) && resumed.has("stage quantizing"));
    assert_eq!(receipt, reference);
    assert!(take_output(&staging, &output) == expected, "the same bytes");

    // A cut-short intermediate (what a write interrupted before its checkpoint would be, had it
    // been in place): converted again. Without the quality gate, so the output differs by its
    // figures; the steps are what this checks.
    restore(convert_files);
    let converted = &after_convert.converted.as_ref().unwrap().path;
    let len = std::fs::metadata(converted).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(converted).unwrap().set_len(len / 2).unwrap();
    let resumed = Recorder::new(None);
    let mut req = request(&hf, &output, Some(after_convert.clone()));
    req.no_quality = true;
    let receipt = run(&req, &resumed).unwrap();
    println!("resumed with a cut-short F16: {:?}", resumed.events());
    assert!(!resumed.events().iter().any(|e| e.starts_with("resumed")), "{:?}", resumed.events());
    assert!(resumed.has("stage converting to F16") && resumed.has("stage quantizing"));
    assert_eq!((receipt.inputs, receipt.source_sha256), (reference.inputs, reference.source_sha256));
    take_output(&staging, &output);
}

fn sha256_file_bytes(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `make_imatrix` on the SmolLM2 GGUF → Q4_K_M with checkpoints: the computed matrix is
/// checkpointed (synced, with its SHA-256, the receipt's `imatrix_sha256`); a run resumed from
/// that checkpoint does not compute it again and writes the same bytes and receipt; a matrix
/// changed after its checkpoint is detected, removed and computed again.
#[test]
fn a_computed_importance_matrix_is_reused_by_a_resumed_run() {
    let Some(gguf) = ondevice_testkit::smollm2("quantize_resume_imatrix") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let staging = tmp.path().join("staging");
    let snapshots = tmp.path().join("snapshots");
    std::fs::create_dir(&staging).unwrap();
    std::fs::create_dir(&snapshots).unwrap();
    let output = staging.join("output.gguf");
    let req = |resume: Option<Checkpoint>| QuantizeRequest {
        allow_requantize: true,
        make_imatrix: true,
        no_quality: true,
        ..request(&gguf, &output, resume)
    };

    let full = Recorder::new(Some(snapshots));
    let reference = run(&req(None), &full).unwrap();
    println!("uninterrupted: {:?}", full.events());
    assert!(full.position("stage computing importance matrix") < full.position("checkpoint imatrix"));
    assert!(full.position("checkpoint imatrix") < full.position("stage quantizing"));
    let expected = take_output(&staging, &output);
    let checkpoints = full.checkpoints.borrow().clone();
    assert_eq!(checkpoints.len(), 1, "{:?}", full.events());
    let (after_imatrix, files) = &checkpoints[0];
    let m = after_imatrix.imatrix.as_ref().expect("the matrix is checkpointed");
    assert_eq!(Some(&m.sha256), reference.imatrix_sha256.as_ref(), "the receipt's matrix");
    assert_eq!(sha256_file(&files[0].1).unwrap(), m.sha256, "the checkpoint describes the file as it was");

    // Interrupted after the matrix: quantized with it, not computed again.
    restore(files);
    let resumed = Recorder::new(None);
    let receipt = run(&req(Some(after_imatrix.clone())), &resumed).unwrap();
    println!("resumed after the matrix: {:?}", resumed.events());
    assert!(resumed.has(&format!("resumed {}", step::IMATRIX)), "{:?}", resumed.events());
    assert!(!resumed.has("stage computing importance matrix") && resumed.has("stage quantizing"));
    assert_eq!(receipt, reference);
    assert!(take_output(&staging, &output) == expected, "the same bytes");

    // The matrix changed after its checkpoint (one byte, same size): computed again.
    restore(files);
    let mut bytes = std::fs::read(&m.path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x5a;
    std::fs::write(&m.path, &bytes).unwrap();
    let resumed = Recorder::new(None);
    let receipt = run(&req(Some(after_imatrix.clone())), &resumed).unwrap();
    println!("resumed with a changed matrix: {:?}", resumed.events());
    assert!(!resumed.has(&format!("resumed {}", step::IMATRIX)), "{:?}", resumed.events());
    assert!(resumed.has("stage computing importance matrix"));
    assert_eq!(receipt, reference);
    assert!(take_output(&staging, &output) == expected, "the same bytes");
}
