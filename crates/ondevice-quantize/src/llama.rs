//! GGUF → any llama.cpp file type through llama.cpp's own `llama_model_quantize`, linked from the
//! same `llama-cpp-sys-2` build as the engine (one llama.cpp in the binary).
//!
//! llama.cpp writes its output with `std::ofstream` to the path it is given; we give it a temporary
//! name beside the destination and rename it into place after an fsync, so the destination holds
//! the whole file or nothing. Before the rename the caller may patch the file in place
//! ([`quantize_to_temp`]: the pipeline writes the source's digest when it was hashed while
//! llama.cpp worked; with [`LlamaQuantize::hash_while_writing`] nothing is patched and the output
//! is hashed as it is written, from a predicted header). (A process killed with SIGKILL leaves the temporary file; the caller
//! runs this in a scratch directory it removes.) llama.cpp's log lines `[  i/  n] name ...` are
//! turned into progress.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, c_char, c_void};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use llama_cpp_sys_2 as sys;
use ondevice_gguf::GgmlType;

use crate::error::QuantizeError;
use crate::imatrix::Imatrix;
use crate::{Progress, QuantType};

/// What to quantize to, and how.
#[derive(Debug, Clone)]
pub struct LlamaQuantize {
    /// The file type.
    pub ftype: QuantType,
    /// Threads (default: all cores).
    pub threads: Option<usize>,
    /// Quantize tensors that are already quantized (quality suffers; llama.cpp refuses otherwise).
    pub allow_requantize: bool,
    /// The type of `output.weight`.
    pub output_type: Option<GgmlType>,
    /// The type of `token_embd.weight`.
    pub token_embedding_type: Option<GgmlType>,
    /// Per-tensor types: (regular expression over tensor names, type), first match wins.
    pub overrides: Vec<(String, GgmlType)>,
    /// The importance matrix.
    pub imatrix: Option<Imatrix>,
    /// Metadata added to the output: strings (keys and values under 128 bytes), `F32`, `U32` or
    /// `Bool` values.
    pub metadata: Vec<(String, ondevice_gguf::Value)>,
    /// Hash the output while llama.cpp writes it ([`TempOutput::commit_hashed`] then finishes
    /// from there): for a caller that will not patch the file before committing it, except for
    /// the `late` value.
    pub hash_while_writing: bool,
    /// A string of `metadata` whose value the caller fills in after llama.cpp wrote the file
    /// (`metadata` holds its placeholder): with `hash_while_writing`, the hash starts when the
    /// value is known.
    pub late: Option<LateValue>,
}

pub use crate::tail_hash::LateValue;

/// The llama.cpp version string (`llama_version()`, e.g. `0.6.0-dev`).
pub fn llama_cpp_version() -> String {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    unsafe { CStr::from_ptr(sys::llama_version()) }.to_string_lossy().into_owned()
}

struct LogState {
    progress: *const (dyn Progress + 'static),
    last_error: Option<String>,
    line: String,
}

// SAFETY: the state is only touched under the mutex, and the progress pointer only while
// `quantize` (which owns the referent) runs.
unsafe impl Send for LogState {}

static LOG: Mutex<Option<LogState>> = Mutex::new(None);

/// Clears the log state and restores llama.cpp's default logger when dropped, so no path out of
/// [`quantize_to_temp`] (a panic included) leaves the callback pointing at a finished call's
/// progress.
struct LogReset;

impl Drop for LogReset {
    fn drop(&mut self) {
        if let Ok(mut g) = LOG.lock() {
            *g = None;
        }
        // SAFETY: restores llama.cpp's default logger.
        unsafe { sys::llama_log_set(None, std::ptr::null_mut()) };
    }
}

thread_local! {
    /// Set on the thread of a dry run (see [`predict_header`]): its log text is collected here
    /// instead of counting as the quantization's progress.
    static CAPTURE: RefCell<Option<String>> = const { RefCell::new(None) };
}

unsafe extern "C" fn log_callback(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let captured = CAPTURE.with(|c| c.borrow_mut().as_mut().map(|s| s.push_str(&text)).is_some());
    if captured {
        return;
    }
    let Ok(mut guard) = LOG.lock() else { return };
    let Some(state) = guard.as_mut() else { return };
    state.line.push_str(&text);
    while let Some(end) = state.line.find('\n') {
        let line: String = state.line.drain(..=end).collect();
        let line = line.trim();
        if level == sys::GGML_LOG_LEVEL_ERROR || line.contains("error") || line.contains("failed") {
            state.last_error = Some(line.to_owned());
        }
        if let Some((i, n)) = parse_progress(line) {
            // SAFETY: see LogState.
            unsafe { (*state.progress).progress(i, n) };
        }
    }
    if let Some((i, n)) = parse_progress(state.line.trim()) {
        // The line of a tensor is printed in pieces: count it when it starts.
        // SAFETY: see LogState.
        unsafe { (*state.progress).progress(i.saturating_sub(1), n) };
    }
}

/// `[  12/ 272] name ...` → (12, 272).
fn parse_progress(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix('[')?;
    let (inside, _) = rest.split_once(']')?;
    let (i, n) = inside.split_once('/')?;
    Some((i.trim().parse().ok()?, n.trim().parse().ok()?))
}

/// Quantizes `input` to `output` (written atomically). Runs for minutes on big models and uses
/// every thread it is given: call it from a dedicated process (`ondevice quantize-task`).
pub fn quantize(
    input: &Path,
    output: &Path,
    params: &LlamaQuantize,
    progress: &dyn Progress,
) -> Result<(), QuantizeError> {
    quantize_to_temp(input, output, params, progress)?.commit()
}

/// A finished quantization under its temporary name beside the destination, not yet in place:
/// it can be patched (values of the same length), then [`commit`](Self::commit)ted. Dropped
/// without a commit, the file is removed.
#[derive(Debug)]
pub struct TempOutput {
    temp: PathBuf,
    output: PathBuf,
    committed: bool,
    /// What was hashed while llama.cpp wrote the file (see [`LlamaQuantize::hash_while_writing`]).
    tail: Option<crate::tail_hash::TailState>,
}

impl TempOutput {
    /// The temporary file.
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// A file an earlier run staged for `output` (by [`quantize_to_temp`]), taken over as if just
    /// written: the caller has checked its contents. Dropped without a commit, it is removed.
    pub fn adopt(temp: &Path, output: &Path) -> TempOutput {
        TempOutput { temp: temp.to_owned(), output: output.to_owned(), committed: false, tail: None }
    }

    /// fsyncs the file where it is and returns its SHA-256 (64 hex digits) and size, for a
    /// checkpoint: the file is then durable as it is, under its temporary name. It may still be
    /// patched (the quality gate's figures): [`commit_hashed`](Self::commit_hashed) hashes it again.
    pub fn sync_hashed(&self) -> Result<(String, u64), QuantizeError> {
        let err = |source| QuantizeError::Read { path: self.temp.clone(), source };
        let file = File::open(&self.temp).map_err(err)?;
        let (synced, sha256) = std::thread::scope(|s| {
            let sync = s.spawn(|| file.sync_all());
            (sync.join(), crate::sha256_file(&self.temp))
        });
        let sha256 = sha256?;
        synced.unwrap_or_else(|_| Err(std::io::Error::other("the fsync thread panicked"))).map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        Ok((sha256, size))
    }

    /// The digest from what was hashed while llama.cpp wrote, when its predicted header is the
    /// one written (`None` otherwise, or without [`LlamaQuantize::hash_while_writing`]); for
    /// tests of the prediction. The commit then hashes the whole file.
    #[doc(hidden)]
    pub fn digest_from_tail(&mut self) -> Result<Option<String>, QuantizeError> {
        let Some(tail) = self.tail.take() else { return Ok(None) };
        crate::tail_hash::finish(&self.temp, tail)
            .map_err(|source| QuantizeError::Read { path: self.temp.clone(), source })
    }

    /// fsyncs the file and renames it to the destination (then fsyncs the directory).
    pub fn commit(mut self) -> Result<(), QuantizeError> {
        commit(&self.temp, &self.output)?;
        self.committed = true;
        Ok(())
    }

    /// As [`commit`](Self::commit), and returns the file's SHA-256 (64 hex digits), read while
    /// the fsync runs on another thread (both read the same page cache; neither waits for the
    /// other). What was hashed while llama.cpp wrote is not read again.
    pub fn commit_hashed(mut self) -> Result<String, QuantizeError> {
        let err = |source| QuantizeError::Read { path: self.output.clone(), source };
        let file = File::open(&self.temp).map_err(err)?;
        let start = std::time::Instant::now();
        let tail = self.tail.take();
        let (synced, sha256) = std::thread::scope(|s| {
            let sync = s.spawn(|| {
                let r = file.sync_all();
                tracing::debug!(ms = format!("{:.1}", start.elapsed().as_secs_f64() * 1e3), "quantize: output synced");
                r
            });
            // Hashed again even after a `sync_hashed`: the quality gate writes its figures into
            // the file between the two.
            let sha256 = hash(&self.temp, tail);
            tracing::debug!(ms = format!("{:.1}", start.elapsed().as_secs_f64() * 1e3), "quantize: output hashed");
            (sync.join(), sha256)
        });
        let sha256 = sha256?;
        synced.unwrap_or_else(|_| Err(std::io::Error::other("the fsync thread panicked"))).map_err(err)?;
        rename_synced(&self.temp, &self.output)?;
        self.committed = true;
        Ok(sha256)
    }
}

/// The SHA-256 of `path`: from `tail` on when the file starts with the header it predicted,
/// else the whole file.
fn hash(path: &Path, tail: Option<crate::tail_hash::TailState>) -> Result<String, QuantizeError> {
    if let Some(tail) = tail {
        let err = |source| QuantizeError::Read { path: path.to_owned(), source };
        match crate::tail_hash::finish(path, tail).map_err(err)? {
            Some(sha256) => return Ok(sha256),
            None => {
                tracing::debug!("quantize: llama.cpp's header differs from the predicted one: hashing the whole output")
            }
        }
    }
    crate::sha256_file(path)
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Quantizes `input` into a temporary file beside `output` (see [`TempOutput`]).
pub fn quantize_to_temp(
    input: &Path,
    output: &Path,
    params: &LlamaQuantize,
    progress: &dyn Progress,
) -> Result<TempOutput, QuantizeError> {
    if params.ftype.needs_imatrix() && params.imatrix.is_none() {
        return Err(QuantizeError::NeedsImatrix { ftype: params.ftype.name().into() });
    }
    let cstr = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| QuantizeError::Unsupported { what: format!("path {} contains a NUL byte", p.display()) })
    };
    let temp = temp_path(output);
    let c_in = cstr(input)?;
    let c_out = cstr(&temp)?;

    // Keep every pointed-to buffer alive until the call returns.
    let patterns: Vec<CString> = params
        .overrides
        .iter()
        .map(|(p, _)| {
            CString::new(p.as_str())
                .map_err(|_| QuantizeError::Unsupported { what: format!("override pattern {p:?} contains a NUL byte") })
        })
        .collect::<Result<_, _>>()?;
    let mut tt: Vec<sys::llama_model_tensor_override> = patterns
        .iter()
        .zip(&params.overrides)
        .map(|(p, (_, ty))| sys::llama_model_tensor_override { pattern: p.as_ptr(), type_: ty.id() })
        .collect();
    tt.push(sys::llama_model_tensor_override { pattern: std::ptr::null(), type_: sys::GGML_TYPE_COUNT });

    let mut kv: Vec<sys::llama_model_kv_override> = Vec::new();
    for (key, value) in &params.metadata {
        let bad = |why: &str| QuantizeError::Unsupported { what: format!("metadata {key:?} = {value:?}: {why}") };
        if key.len() >= 128 || key.contains('\0') || key.is_empty() {
            return Err(bad("keys must be 1 to 127 bytes without NUL"));
        }
        // SAFETY: an all-zero override is a valid (empty) C struct.
        let mut o: sys::llama_model_kv_override = unsafe { std::mem::zeroed() };
        for (d, s) in o.key.iter_mut().zip(key.bytes()) {
            *d = s as c_char;
        }
        // Each arm writes the member of the union that `tag` names; llama.cpp stores FLOAT as f32
        // and INT as u32.
        match value {
            ondevice_gguf::Value::String(value) => {
                if value.len() >= 128 || value.contains('\0') {
                    return Err(bad("string values must be under 128 bytes without NUL"));
                }
                o.tag = sys::LLAMA_KV_OVERRIDE_TYPE_STR;
                // SAFETY: the string member of the zeroed union, the one `tag` names.
                let val = unsafe { &mut o.__bindgen_anon_1.val_str };
                for (d, s) in val.iter_mut().zip(value.bytes()) {
                    *d = s as c_char;
                }
            }
            ondevice_gguf::Value::F32(v) => {
                o.tag = sys::LLAMA_KV_OVERRIDE_TYPE_FLOAT;
                o.__bindgen_anon_1.val_f64 = f64::from(*v);
            }
            ondevice_gguf::Value::U32(v) => {
                o.tag = sys::LLAMA_KV_OVERRIDE_TYPE_INT;
                o.__bindgen_anon_1.val_i64 = i64::from(*v);
            }
            ondevice_gguf::Value::Bool(v) => {
                o.tag = sys::LLAMA_KV_OVERRIDE_TYPE_BOOL;
                o.__bindgen_anon_1.val_bool = *v;
            }
            _ => return Err(bad("only strings, F32, U32 and booleans can be added")),
        }
        kv.push(o);
    }
    // SAFETY: as above; the terminator has key[0] == 0.
    kv.push(unsafe { std::mem::zeroed() });

    let names: Vec<CString>;
    let mut imatrix: Vec<sys::llama_model_imatrix_data> = Vec::new();
    if let Some(im) = &params.imatrix {
        names = im.entries().iter().map(|(n, _)| CString::new(n.as_str()).unwrap_or_default()).collect();
        for (name, (_, values)) in names.iter().zip(im.entries()) {
            imatrix.push(sys::llama_model_imatrix_data {
                name: name.as_ptr(),
                data: values.as_ptr(),
                size: values.len(),
            });
        }
        imatrix.push(sys::llama_model_imatrix_data { name: std::ptr::null(), data: std::ptr::null(), size: 0 });
    } else {
        names = Vec::new();
    }
    let _ = &names;

    // SAFETY: plain value returned by llama.cpp.
    let mut p = unsafe { sys::llama_model_quantize_default_params() };
    p.nthread = params.threads.map_or(0, |t| i32::try_from(t).unwrap_or(i32::MAX));
    p.ftype = params.ftype.ftype();
    p.allow_requantize = params.allow_requantize;
    if let Some(t) = params.output_type {
        p.output_tensor_type = t.id();
    }
    if let Some(t) = params.token_embedding_type {
        p.token_embedding_type = t.id();
    }
    if !params.overrides.is_empty() {
        p.tt_overrides = tt.as_ptr();
    }
    p.kv_overrides = kv.as_ptr();
    if !imatrix.is_empty() {
        p.imatrix = imatrix.as_ptr();
    }

    // SAFETY: the lifetime of `progress` is erased only for the duration of this call; the log
    // state is cleared before returning, on every path (`LogReset`).
    let progress_static: *const (dyn Progress + 'static) =
        unsafe { std::mem::transmute(progress as *const dyn Progress) };
    {
        let mut guard = LOG.lock().map_err(|_| QuantizeError::Unsupported { what: "log state poisoned".into() })?;
        *guard = Some(LogState { progress: progress_static, last_error: None, line: String::new() });
    }
    let log_reset = LogReset;
    // SAFETY: the callback only reads the state above.
    unsafe {
        sys::llama_backend_init();
        sys::llama_log_set(Some(log_callback), std::ptr::null_mut());
    }
    // A stale file of an earlier process with this id would be read by the tail below before
    // llama.cpp truncates it: no tail unless it is gone.
    let fresh = match std::fs::remove_file(&temp) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    let (header_tx, header_rx) = std::sync::mpsc::channel();
    let tail = if params.hash_while_writing && fresh {
        crate::tail_hash::Tail::start(temp.clone(), header_rx, params.late.clone()).ok()
    } else {
        drop(header_rx);
        None
    };
    let mut dry = p;
    dry.dry_run = true;
    let dry = DryRunParams(dry);
    // While llama.cpp writes, the pages it has written are sent to the disk in the background, so
    // the fsync before the rename finds little left to write.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let rc = std::thread::scope(|s| {
        // Helpers only: without a thread, the run goes on without them.
        let writeback = std::thread::Builder::new()
            .name("quantize-writeback".into())
            .spawn_scoped(s, || write_back_while(&temp, &stop));
        if tail.is_some() {
            // The header llama.cpp will write, worked out beside it while it loads the source.
            let c_in = &c_in;
            let _ = std::thread::Builder::new().name("quantize-predict".into()).spawn_scoped(s, move || {
                let dry = dry;
                // SAFETY: `dry` is `p` with `dry_run` set: every pointer points into a buffer that
                // outlives this scope.
                let header = unsafe { predict_header(c_in, &dry.0) };
                let _ = header_tx.send(header);
            });
        }
        // SAFETY: every pointer in `p` points into a live buffer above, each list is terminated.
        let rc = unsafe { sys::llama_model_quantize(c_in.as_ptr(), c_out.as_ptr(), &p) };
        stop.store(true, std::sync::atomic::Ordering::Release);
        if let Ok(w) = &writeback {
            w.thread().unpark();
        }
        rc
    });
    let tail = tail.and_then(crate::tail_hash::Tail::stop);
    let last_error = LOG.lock().ok().and_then(|mut g| g.take()).and_then(|s| s.last_error);
    drop(log_reset);

    let temp = TempOutput { temp, output: output.to_owned(), committed: false, tail };
    if rc != 0 {
        return Err(QuantizeError::Llama {
            input: input.to_owned(),
            reason: last_error.unwrap_or_else(|| format!("llama_model_quantize returned {rc}")),
        });
    }
    Ok(temp)
}

/// Quantize parameters for a dry run on another thread.
struct DryRunParams(sys::llama_model_quantize_params);

// SAFETY: the pointers inside point into buffers that outlive the scoped thread using them, and
// llama.cpp only reads through them.
unsafe impl Send for DryRunParams {}

/// `GGML_QNT_VERSION` of ggml.h (a macro the bindings do not carry), which llama.cpp writes as
/// `general.quantization_version`. Were it bumped, predictions would miss (the test
/// `the_output_header_is_predicted` says so) and outputs be hashed after writing, as before.
const GGML_QNT_VERSION: u32 = 2;

/// The header llama.cpp's `llama_model_quantize` will write for `p`, or `None` when it cannot
/// be worked out. A dry run of the same parameters (on this thread, its log collected) names
/// every tensor in output order with the type it will be written in; the header is then built
/// with ggml's own GGUF functions, in the order llama.cpp calls them. Nothing here is trusted:
/// the caller compares the result with the header llama.cpp writes.
///
/// # Safety
/// `p` must be valid for `llama_model_quantize` (every pointer into a live, terminated buffer)
/// with `dry_run` set.
unsafe fn predict_header(input: &CStr, p: &sys::llama_model_quantize_params) -> Option<Vec<u8>> {
    CAPTURE.with(|c| *c.borrow_mut() = Some(String::new()));
    // Stops capturing on every path out, after ggml's own messages of the header's rebuild.
    struct StopCapture;
    impl Drop for StopCapture {
        fn drop(&mut self) {
            CAPTURE.with(|c| *c.borrow_mut() = None);
        }
    }
    let _stop = StopCapture;
    // SAFETY: the caller's contract; a dry run writes no file.
    let rc = unsafe { sys::llama_model_quantize(input.as_ptr(), c"".as_ptr(), p) };
    let log = CAPTURE.with(|c| c.borrow_mut().as_mut().map(std::mem::take)).unwrap_or_default();
    if rc != 0 {
        return None;
    }
    let tensors = parse_dry_run(&log, &type_names())?;
    // SAFETY: the caller's contract.
    unsafe { build_header(input, p, &tensors) }
}

/// ggml's type names (`q4_K`, `f16`, ...) → types, for the types ggml has (names that occur
/// twice are left out).
fn type_names() -> HashMap<String, sys::ggml_type> {
    let mut names: HashMap<String, Option<sys::ggml_type>> = HashMap::new();
    for t in 0..sys::GGML_TYPE_COUNT {
        // SAFETY: any id below GGML_TYPE_COUNT; ggml returns a static string or NULL.
        let (name, block) = unsafe { (sys::ggml_type_name(t), sys::ggml_blck_size(t)) };
        if name.is_null() || block <= 0 {
            continue;
        }
        // SAFETY: a NUL-terminated static string.
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
        names.entry(name).and_modify(|e| *e = None).or_insert(Some(t));
    }
    names.into_iter().filter_map(|(n, t)| Some((n, t?))).collect()
}

/// A dry run's lines `[   i/   n] NAME - [shape], type = SRC, size = a MiB -> b MiB (NEW)` (or
/// `size = a MiB` when the tensor keeps its type) → (NAME, type written) in order, when every
/// tensor from 1 to n is there once and every type is known.
fn parse_dry_run(log: &str, types: &HashMap<String, sys::ggml_type>) -> Option<Vec<(CString, sys::ggml_type)>> {
    let mut out: Vec<(CString, sys::ggml_type)> = Vec::new();
    let mut total = None;
    for line in log.lines().map(str::trim) {
        let Some((i, n)) = parse_progress(line) else { continue };
        if i != out.len() as u64 + 1 || total.is_some_and(|t| t != n) {
            return None;
        }
        total = Some(n);
        let (_, rest) = line.split_once("] ")?;
        let (name, rest) = rest.split_once(" - [")?;
        let (_, rest) = rest.split_once("type = ")?;
        let (source, rest) = rest.split_once(',')?;
        let written = match rest.trim_end().strip_suffix(')') {
            Some(r) => r.rsplit_once('(')?.1,
            None => source,
        };
        out.push((CString::new(name.trim()).ok()?, *types.get(written.trim())?));
    }
    (total? == out.len() as u64 && !out.is_empty()).then_some(out)
}

/// Frees ggml and GGUF contexts on every path out of [`build_header`].
struct Contexts {
    input: *mut sys::gguf_context,
    tensors: *mut sys::ggml_context,
    output: *mut sys::gguf_context,
}

impl Drop for Contexts {
    fn drop(&mut self) {
        // SAFETY: each pointer is NULL or owned here and freed once.
        unsafe {
            if !self.output.is_null() {
                sys::gguf_free(self.output);
            }
            if !self.input.is_null() {
                sys::gguf_free(self.input);
            }
            if !self.tensors.is_null() {
                sys::ggml_free(self.tensors);
            }
        }
    }
}

/// The output header for `tensors` (in order, with their new types): the input's metadata,
/// then what `llama_model_quantize` sets and removes, then the overrides of `p`, then the
/// tensors. Checks what ggml would abort on (an unknown or repeated tensor, a row that does not
/// divide into the type's blocks) and gives `None` instead.
///
/// # Safety
/// `p.kv_overrides` is NULL or points to a list ended by an empty key.
unsafe fn build_header(
    input: &CStr,
    p: &sys::llama_model_quantize_params,
    tensors: &[(CString, sys::ggml_type)],
) -> Option<Vec<u8>> {
    let mut ctx = Contexts { input: std::ptr::null_mut(), tensors: std::ptr::null_mut(), output: std::ptr::null_mut() };
    // SAFETY: plain ggml calls on contexts owned by `ctx`; strings are NUL-terminated and live.
    unsafe {
        ctx.input =
            sys::gguf_init_from_file(input.as_ptr(), sys::gguf_init_params { no_alloc: true, ctx: &mut ctx.tensors });
        if ctx.input.is_null() || ctx.tensors.is_null() {
            return None;
        }
        let n = usize::try_from(sys::gguf_get_n_tensors(ctx.input)).ok()?;
        let unique: HashSet<&CStr> = tensors.iter().map(|(n, _)| n.as_c_str()).collect();
        if n != tensors.len() || unique.len() != n {
            return None;
        }
        ctx.output = sys::gguf_init_empty();
        if ctx.output.is_null() {
            return None;
        }
        sys::gguf_set_kv(ctx.output, ctx.input);
        sys::gguf_set_val_u32(ctx.output, c"general.quantization_version".as_ptr(), GGML_QNT_VERSION);
        sys::gguf_set_val_u32(ctx.output, c"general.file_type".as_ptr(), p.ftype);
        for key in [c"split.no", c"split.count", c"split.tensors.count"] {
            sys::gguf_remove_key(ctx.output, key.as_ptr());
        }
        let mut o = p.kv_overrides;
        while !o.is_null() && (*o).key[0] != 0 {
            let key = (*o).key.as_ptr();
            let v = &(*o).__bindgen_anon_1;
            match (*o).tag {
                sys::LLAMA_KV_OVERRIDE_TYPE_FLOAT => sys::gguf_set_val_f32(ctx.output, key, v.val_f64 as f32),
                sys::LLAMA_KV_OVERRIDE_TYPE_INT => {
                    sys::gguf_set_val_u32(ctx.output, key, v.val_i64.unsigned_abs() as u32)
                }
                sys::LLAMA_KV_OVERRIDE_TYPE_BOOL => sys::gguf_set_val_bool(ctx.output, key, v.val_bool),
                sys::LLAMA_KV_OVERRIDE_TYPE_STR => sys::gguf_set_val_str(ctx.output, key, v.val_str.as_ptr()),
                _ => {}
            }
            o = o.add(1);
        }
        for (name, ty) in tensors {
            let t = sys::ggml_get_tensor(ctx.tensors, name.as_ptr());
            let block = sys::ggml_blck_size(*ty);
            if t.is_null() || block <= 0 || (*t).ne[0] % block != 0 {
                return None;
            }
            sys::gguf_add_tensor(ctx.output, t);
        }
        for (name, ty) in tensors {
            sys::gguf_set_tensor_type(ctx.output, name.as_ptr(), *ty);
        }
        let mut header = vec![0u8; sys::gguf_get_meta_size(ctx.output)];
        sys::gguf_get_meta_data(ctx.output, header.as_mut_ptr().cast());
        Some(header)
    }
}

/// How often written pages are handed to the disk while llama.cpp writes.
const WRITEBACK_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Until `stop`: starts the disk write of the pages of `path` written so far, every
/// [`WRITEBACK_EVERY`] (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`: it starts the write and
/// returns; it makes nothing durable, the fsync before the rename still does). Elsewhere it does
/// nothing. Errors are ignored: this only moves work earlier.
fn write_back_while(path: &Path, stop: &std::sync::atomic::AtomicBool) {
    let stopped = || stop.load(std::sync::atomic::Ordering::Acquire);
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let mut file = None;
        while !stopped() {
            std::thread::park_timeout(WRITEBACK_EVERY);
            if file.is_none() {
                // llama.cpp creates the file once it has read the source's header.
                file = File::open(path).ok();
            }
            if let Some(f) = &file {
                // SAFETY: a valid descriptor, whole-file range, a flag that only starts writes.
                unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        while !stopped() {
            std::thread::park_timeout(WRITEBACK_EVERY);
        }
    }
}

/// `.NAME.PID.partial` beside `output`.
fn temp_path(output: &Path) -> PathBuf {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    output.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

fn commit(temp: &Path, output: &Path) -> Result<(), QuantizeError> {
    let err = |source| QuantizeError::Read { path: output.to_owned(), source };
    File::open(temp).and_then(|f| f.sync_all()).map_err(err)?;
    rename_synced(temp, output)
}

/// Renames a synced `temp` to `output` and fsyncs the directory.
fn rename_synced(temp: &Path, output: &Path) -> Result<(), QuantizeError> {
    let err = |source| QuantizeError::Read { path: output.to_owned(), source };
    std::fs::rename(temp, output).map_err(err)?;
    #[cfg(unix)]
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_run_log_gives_each_tensor_and_its_output_type_in_order() {
        let types = type_names();
        let (f32, q8_0, q5_0) = (types["f32"], types["q8_0"], types["q5_0"]);
        let log = "llama_model_quantize_impl: prelude\n\
            warning: blk.0.attn_q.weight - ncols 576 not divisible by 256 (required for type q4_K) -> falling back to q5_0\n\
            [   1/   3]                   output_norm.weight - [  576,     1,     1,     1], type =    f32, size =    0.002 MiB\n\
            [   2/   3]                    token_embd.weight - [  576, 49152,     1,     1], type =    f16, size =   54.00 MiB ->    28.69 MiB (q8_0)\n\
            [   3/   3]                 blk.0.attn_q.weight - [  576,   576,     1,     1], type =    f16, size =    0.63 MiB ->     0.22 MiB (q5_0)\n\
            llama_model_quantize_impl: model size = 1 MiB\n";
        let parsed = parse_dry_run(log, &types).expect("parsed");
        let names: Vec<&str> = parsed.iter().map(|(n, _)| n.to_str().unwrap()).collect();
        assert_eq!(names, ["output_norm.weight", "token_embd.weight", "blk.0.attn_q.weight"]);
        assert_eq!(parsed.iter().map(|(_, t)| *t).collect::<Vec<_>>(), [f32, q8_0, q5_0]);
        // A missing tensor, a count that changes, an unknown type or no tensors at all: no prediction.
        let lines: Vec<&str> = log.lines().collect();
        let without = |i: usize| {
            lines.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, l)| *l).collect::<Vec<_>>().join("\n")
        };
        assert!(parse_dry_run(&without(3), &types).is_none(), "tensor 2 of 3 missing");
        assert!(parse_dry_run(&without(4), &types).is_none(), "tensor 3 of 3 missing");
        assert!(parse_dry_run(&log.replace("(q5_0)", "(q9_9)"), &types).is_none());
        assert!(parse_dry_run(&log.replace("[   3/   3]", "[   3/   4]"), &types).is_none());
        assert!(parse_dry_run("llama_model_quantize_impl: nothing\n", &types).is_none());
    }

    #[test]
    fn progress_lines_parse() {
        assert_eq!(parse_progress("[  12/ 272] blk.0.attn_q.weight - [576, 576]"), Some((12, 272)));
        assert_eq!(parse_progress("llama_model_quantize: done"), None);
    }
}
