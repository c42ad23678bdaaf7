//! Reads the real demo models fetched by `scripts/fetch-demo-models.sh`.
//!
//! Runs only when `ONDEVICE_TEST_MODELS_DIR` names the models directory (CI
//! sets it); otherwise each test says how to enable it and returns. Set but the
//! model missing: the test fails, naming the path.

use ondevice_gguf::{Dtype, GgufFile, HfModelDir};
use ondevice_testkit::models_entry;

#[test]
fn smollm2_gguf_header() {
    let Some(path) = models_entry("smollm2_gguf_header", "SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"));

    let params = file.parameter_count();
    println!(
        "{}: version {}, architecture {:?}, name {:?}, quantization {:?} (file_type {:?}), \
         context length {:?}, {} tensors, {} parameters, data at byte {}, license {:?}",
        path.display(),
        file.version(),
        file.architecture(),
        file.name(),
        file.quantization(),
        file.file_type(),
        file.context_length(),
        file.tensors().len(),
        params,
        file.data_offset(),
        file.license(),
    );

    assert_eq!(file.architecture(), Some("llama"));
    assert!(file.chat_template().is_some_and(|t| t.contains("im_start")));
    assert!(file.context_length().is_some_and(|n| n > 0));
    assert!(!file.tensors().is_empty());
    assert!((134_000_000..=136_000_000).contains(&params), "{params}");
    assert_eq!(file.quantization(), Some("Q4_1"));
    // The tensor data is the rest of the file: the computed sizes add up.
    let end = file.tensors().iter().map(|t| t.file_range().end).max();
    assert!(end.is_some_and(|e| file.file_len() - e < file.alignment()));
    assert!(file.tensor_data_len() < file.file_len());

    // Without its arrays (the tokenizer's vocabulary, scores, types and merges) the header
    // keeps every other entry and every tensor.
    let lean = GgufFile::open_without_arrays(&path).unwrap_or_else(|e| panic!("{e}"));
    let arrays: Vec<&str> = file
        .metadata()
        .iter()
        .filter(|(_, v)| matches!(v, ondevice_gguf::Value::Array(_)))
        .map(|(k, _)| k.as_str())
        .collect();
    assert!(arrays.contains(&"tokenizer.ggml.tokens") && arrays.contains(&"tokenizer.ggml.merges"), "{arrays:?}");
    assert_eq!(lean.metadata().len() + arrays.len(), file.metadata().len());
    assert!(arrays.iter().all(|k| lean.get(k).is_none()));
    assert_eq!(lean.tensors(), file.tensors());
    assert_eq!((lean.data_offset(), lean.chat_template()), (file.data_offset(), file.chat_template()));
}

#[test]
fn minilm_safetensors_directory() {
    let Some(dir) = models_entry("minilm_safetensors_directory", "all-MiniLM-L6-v2") else {
        return;
    };
    let model = HfModelDir::open(&dir).unwrap_or_else(|e| panic!("{e}"));
    let params = model.parameter_count();
    println!(
        "{}: architecture {:?}, model type {:?}, context length {:?}, {} tensors, {} parameters, \
         dtypes {:?}",
        model.dir().display(),
        model.architecture(),
        model.model_type(),
        model.context_length(),
        model.tensor_count(),
        params,
        model.dtypes(),
    );
    assert_eq!(model.architecture(), Some("BertModel"));
    assert_eq!(model.model_type(), Some("bert"));
    assert_eq!(model.context_length(), Some(512));
    assert!((22_600_000..=22_800_000).contains(&params), "{params}");
    assert!(model.dtypes().contains(&Dtype::F32));
}
