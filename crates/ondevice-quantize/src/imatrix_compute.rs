//! Computing an importance matrix with the engine's llama.cpp, as `llama-imatrix` does: the model
//! reads a text in chunks of [`CTX`] tokens (the first token of each chunk BOS where the model adds
//! one), and for every matrix multiplication by a weight of a block (`blk.*`) the squares of its
//! input activations are summed per input column. The result is the mean squared activation per
//! column and weight, the `in_sum2 / counts` llama.cpp's quantizer weighs rounding errors with.
//!
//! The values are summed in f64 in token order and llama.cpp's CPU kernels give each output to
//! one thread, so the same model and text give the same matrix on every run (tested).
//! Mixture-of-experts weights (`MUL_MAT_ID`) and `output.weight` are left out, as
//! `llama-imatrix` does by default for the latter; a tensor without an entry is quantized without
//! weights.
//!
//! llama-cpp-2 does not expose the graph callback this needs, so the model and context are made
//! through `llama-cpp-sys-2` directly (the same llama.cpp build as the engine).

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_void};
use std::path::Path;

use llama_cpp_sys_2 as sys;

use crate::Progress;
use crate::error::QuantizeError;

/// Tokens per chunk (`llama-imatrix -c`).
pub const CTX: u32 = 512;
/// Fewest tokens in a matrix multiplication for it to count (`llama-imatrix` skips smaller ones,
/// which are single-token generation steps).
const MIN_ROWS: i64 = 16;

/// Sums of squared activations per weight, filled by the graph callback.
#[derive(Default)]
struct Collector {
    sums: BTreeMap<String, (Vec<f64>, u64)>,
    scratch: Vec<u8>,
    /// A weight whose inputs changed width between calls (never with a sane model).
    bad: Option<String>,
}

impl Collector {
    /// `t` is `MUL_MAT(weight, activations)`; adds the activations' squares per column.
    ///
    /// # Safety
    /// `t` and its sources are live tensors of the graph being computed.
    unsafe fn add(&mut self, t: &sys::ggml_tensor) {
        // SAFETY: sources of a MUL_MAT node are set (checked by `wanted`).
        let (w, x) = unsafe { (&*t.src[0], &*t.src[1]) };
        let name = tensor_name(w);
        let cols = usize::try_from(x.ne[0]).unwrap_or(0);
        // SAFETY: a live tensor.
        let nbytes = unsafe { sys::ggml_nbytes(x) };
        self.scratch.resize(nbytes, 0);
        // SAFETY: copies the tensor's bytes (host or not) into a buffer of its size.
        unsafe { sys::ggml_backend_tensor_get(x, self.scratch.as_mut_ptr().cast::<c_void>(), 0, nbytes) };
        let entry = self.sums.entry(name.clone()).or_insert_with(|| (vec![0.0; cols], 0));
        if entry.0.len() != cols {
            self.bad = Some(name);
            return;
        }
        let [_, n1, n2, n3] = x.ne.map(|n| usize::try_from(n).unwrap_or(0));
        let [_, s1, s2, s3] = x.nb;
        for i3 in 0..n3 {
            for i2 in 0..n2 {
                for i1 in 0..n1 {
                    let at = i1 * s1 + i2 * s2 + i3 * s3;
                    let Some(row) = self.scratch.get(at..at + cols * 4) else { continue };
                    for (sum, b) in entry.0.iter_mut().zip(row.chunks_exact(4)) {
                        let v = f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                        *sum += v * v;
                    }
                    entry.1 += 1;
                }
            }
        }
    }
}

fn tensor_name(t: &sys::ggml_tensor) -> String {
    // SAFETY: ggml keeps `name` NUL-terminated within its 64 bytes.
    let raw = unsafe { CStr::from_ptr(t.name.as_ptr()) }.to_string_lossy();
    // llama.cpp names copies of a weight `NAME#...` (as `llama-imatrix` strips).
    raw.split('#').next().unwrap_or_default().to_owned()
}

/// Whether the node is a product by a block weight over enough F32 activations.
///
/// # Safety
/// `t` is a live tensor of the graph.
unsafe fn wanted(t: &sys::ggml_tensor) -> bool {
    if t.op != sys::GGML_OP_MUL_MAT || t.src[0].is_null() || t.src[1].is_null() {
        return false;
    }
    // SAFETY: non-null sources of a live node.
    let (w, x) = unsafe { (&*t.src[0], &*t.src[1]) };
    x.type_ == sys::GGML_TYPE_F32
        && x.ne[1] * x.ne[2] * x.ne[3] >= MIN_ROWS
        && x.ne[0] == w.ne[0]
        && tensor_name(w).starts_with("blk.")
}

unsafe extern "C" fn collect(t: *mut sys::ggml_tensor, ask: bool, user_data: *mut c_void) -> bool {
    if t.is_null() || user_data.is_null() {
        return !ask;
    }
    // SAFETY: llama.cpp passes a live node of the graph; `user_data` is the `Collector` that
    // `compute` owns for the duration of the decode.
    let (t, collector) = unsafe { (&*t, &mut *user_data.cast::<Collector>()) };
    // SAFETY: as above.
    let want = unsafe { wanted(t) };
    if ask {
        return want;
    }
    if want {
        // SAFETY: as above.
        unsafe { collector.add(t) };
    }
    true
}

/// Frees the model and context however `compute` ends.
struct Handles {
    model: *mut sys::llama_model,
    ctx: *mut sys::llama_context,
}

impl Drop for Handles {
    fn drop(&mut self) {
        // SAFETY: each pointer was returned by llama.cpp and is freed once.
        unsafe {
            if !self.ctx.is_null() {
                sys::llama_free(self.ctx);
            }
            if !self.model.is_null() {
                sys::llama_model_free(self.model);
            }
        }
    }
}

/// Computes the importance matrix of the GGUF `model` (any type llama.cpp loads; the source of a
/// quantization, normally F16/F32) over `text`: entries named as the weights, one value per
/// input column. Progress counts decoded chunks. At least one chunk of [`CTX`] tokens is needed.
pub fn compute(
    model: &Path,
    text: &str,
    threads: Option<usize>,
    progress: &dyn Progress,
) -> Result<Vec<(String, Vec<f32>)>, QuantizeError> {
    let fail = |reason: String| QuantizeError::Llama { input: model.to_owned(), reason };
    ondevice_engine_llama::backend().map_err(|e| fail(e.to_string()))?;
    let c_path = CString::new(model.as_os_str().as_encoded_bytes())
        .map_err(|_| QuantizeError::Unsupported { what: format!("path {} contains a NUL byte", model.display()) })?;
    let threads =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).clamp(1, 512) as i32;

    // Declared before the handles, so it outlives the context whose callback writes to it.
    let mut collector = Box::new(Collector::default());
    let mut handles = Handles { model: std::ptr::null_mut(), ctx: std::ptr::null_mut() };
    // SAFETY: plain values from llama.cpp; the path outlives the call.
    handles.model = unsafe { sys::llama_model_load_from_file(c_path.as_ptr(), sys::llama_model_default_params()) };
    if handles.model.is_null() {
        return Err(fail("llama.cpp cannot load it to compute an importance matrix".into()));
    }
    // SAFETY: a loaded model.
    let vocab = unsafe { sys::llama_model_get_vocab(handles.model) };
    let mut tokens = vec![0 as sys::llama_token; text.len() + 16];
    let len = i32::try_from(text.len()).map_err(|_| fail("the text is too long".into()))?;
    // SAFETY: the buffers are as long as declared.
    let n = unsafe {
        sys::llama_tokenize(vocab, text.as_ptr().cast(), len, tokens.as_mut_ptr(), tokens.len() as i32, true, false)
    };
    let n = usize::try_from(n).map_err(|_| fail(format!("tokenizing the text failed ({n})")))?;
    tokens.truncate(n);
    let ctx_len = CTX as usize;
    let chunks = tokens.len() / ctx_len;
    if chunks == 0 {
        return Err(fail(format!("the text is {n} tokens, less than one chunk of {CTX}")));
    }
    // SAFETY: a vocabulary of a loaded model.
    let bos = unsafe { sys::llama_vocab_get_add_bos(vocab).then(|| sys::llama_vocab_bos(vocab)) };

    // SAFETY: plain value. The callback's user data is the boxed collector, which outlives the
    // context (freed with `handles`, declared after it).
    let mut params = unsafe { sys::llama_context_default_params() };
    params.n_ctx = CTX;
    params.n_batch = CTX;
    params.n_ubatch = CTX;
    params.n_seq_max = 1;
    params.n_threads = threads;
    params.n_threads_batch = threads;
    params.no_perf = true;
    params.cb_eval = Some(collect);
    params.cb_eval_user_data = (&mut *collector as *mut Collector).cast::<c_void>();
    // SAFETY: a loaded model and valid parameters.
    handles.ctx = unsafe { sys::llama_init_from_model(handles.model, params) };
    if handles.ctx.is_null() {
        return Err(fail("cannot create a context to compute an importance matrix".into()));
    }
    progress.progress(0, chunks as u64);
    for c in 0..chunks {
        if progress.cancelled() {
            return Err(QuantizeError::Cancelled);
        }
        let mut chunk = tokens[c * ctx_len..(c + 1) * ctx_len].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        // Every position is an output (as `llama-imatrix`, which scores them): otherwise llama.cpp
        // computes the last layer's feed-forward for the last token only and it goes unweighed.
        let mut positions: Vec<sys::llama_pos> = (0..ctx_len as i32).collect();
        let mut n_seq = vec![1i32; ctx_len];
        let mut seq0: sys::llama_seq_id = 0;
        let mut seq_ids = vec![&raw mut seq0; ctx_len];
        let mut outputs = vec![1i8; ctx_len];
        let batch = sys::llama_batch {
            n_tokens: ctx_len as i32,
            token: chunk.as_mut_ptr(),
            embd: std::ptr::null_mut(),
            pos: positions.as_mut_ptr(),
            n_seq_id: n_seq.as_mut_ptr(),
            seq_id: seq_ids.as_mut_ptr(),
            logits: outputs.as_mut_ptr(),
        };
        // SAFETY: a live context; every array of the batch holds `ctx_len` entries and lives
        // through the call.
        let rc = unsafe {
            sys::llama_memory_clear(sys::llama_get_memory(handles.ctx), true);
            sys::llama_decode(handles.ctx, batch)
        };
        if rc != 0 {
            return Err(fail(format!("decoding chunk {c} failed ({rc})")));
        }
        progress.progress(c as u64 + 1, chunks as u64);
    }
    drop(handles);
    if let Some(name) = collector.bad.take() {
        return Err(fail(format!("the inputs of {name} changed width between chunks")));
    }
    let out: Vec<(String, Vec<f32>)> = std::mem::take(&mut collector.sums)
        .into_iter()
        .filter(|(_, (_, count))| *count > 0)
        .map(|(name, (sums, count))| (name, sums.iter().map(|s| (s / count as f64) as f32).collect()))
        .collect();
    if out.is_empty() {
        return Err(fail("no matrix multiplication by a block weight was seen".into()));
    }
    Ok(out)
}
