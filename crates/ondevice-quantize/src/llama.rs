//! GGUF → any llama.cpp file type through llama.cpp's own `llama_model_quantize`, linked from the
//! same `llama-cpp-sys-2` build as the engine (one llama.cpp in the binary).
//!
//! llama.cpp writes its output with `std::ofstream` to the path it is given; we give it a temporary
//! name beside the destination and rename it into place after an fsync, so the destination holds
//! the whole file or nothing. Before the rename the caller may patch the file in place
//! ([`quantize_to_temp`]: the pipeline writes the source's digest, hashed while llama.cpp works). (A process killed with SIGKILL leaves the temporary file; the caller
//! runs this in a scratch directory it removes.) llama.cpp's log lines `[  i/  n] name ...` are
//! turned into progress.

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
}

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

unsafe extern "C" fn log_callback(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
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
}

impl TempOutput {
    /// The temporary file.
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// A file an earlier run staged for `output` (by [`quantize_to_temp`]), taken over as if just
    /// written: the caller has checked its contents. Dropped without a commit, it is removed.
    pub fn adopt(temp: &Path, output: &Path) -> TempOutput {
        TempOutput { temp: temp.to_owned(), output: output.to_owned(), committed: false }
    }

    /// fsyncs the file where it is and returns its SHA-256 (64 hex digits) and size, for a
    /// checkpoint: the file is then durable as it is, under its temporary name.
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

    /// fsyncs the file and renames it to the destination (then fsyncs the directory).
    pub fn commit(mut self) -> Result<(), QuantizeError> {
        commit(&self.temp, &self.output)?;
        self.committed = true;
        Ok(())
    }

    /// As [`commit`](Self::commit), and returns the file's SHA-256 (64 hex digits), read while
    /// the fsync runs on another thread (both read the same page cache; neither waits for the
    /// other).
    pub fn commit_hashed(mut self) -> Result<String, QuantizeError> {
        let err = |source| QuantizeError::Read { path: self.output.clone(), source };
        let file = File::open(&self.temp).map_err(err)?;
        let start = std::time::Instant::now();
        let (synced, sha256) = std::thread::scope(|s| {
            let sync = s.spawn(|| {
                let r = file.sync_all();
                tracing::debug!(ms = format!("{:.1}", start.elapsed().as_secs_f64() * 1e3), "quantize: output synced");
                r
            });
            let sha256 = crate::sha256_file(&self.temp);
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
    // state is cleared before returning.
    let progress_static: *const (dyn Progress + 'static) =
        unsafe { std::mem::transmute(progress as *const dyn Progress) };
    {
        let mut guard = LOG.lock().map_err(|_| QuantizeError::Unsupported { what: "log state poisoned".into() })?;
        *guard = Some(LogState { progress: progress_static, last_error: None, line: String::new() });
    }
    // SAFETY: the callback only reads the state above.
    unsafe {
        sys::llama_backend_init();
        sys::llama_log_set(Some(log_callback), std::ptr::null_mut());
    }
    // While llama.cpp writes, the pages it has written are sent to the disk in the background, so
    // the fsync before the rename finds little left to write.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let rc = std::thread::scope(|s| {
        let writeback = s.spawn(|| write_back_while(&temp, &stop));
        // SAFETY: every pointer in `p` points into a live buffer above, each list is terminated.
        let rc = unsafe { sys::llama_model_quantize(c_in.as_ptr(), c_out.as_ptr(), &p) };
        stop.store(true, std::sync::atomic::Ordering::Release);
        writeback.thread().unpark();
        rc
    });
    let last_error = LOG.lock().ok().and_then(|mut g| g.take()).and_then(|s| s.last_error);
    // SAFETY: restores llama.cpp's default logger.
    unsafe { sys::llama_log_set(None, std::ptr::null_mut()) };

    let temp = TempOutput { temp, output: output.to_owned(), committed: false };
    if rc != 0 {
        return Err(QuantizeError::Llama {
            input: input.to_owned(),
            reason: last_error.unwrap_or_else(|| format!("llama_model_quantize returned {rc}")),
        });
    }
    Ok(temp)
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
    fn progress_lines_parse() {
        assert_eq!(parse_progress("[  12/ 272] blk.0.attn_q.weight - [576, 576]"), Some((12, 272)));
        assert_eq!(parse_progress("llama_model_quantize: done"), None);
    }
}
