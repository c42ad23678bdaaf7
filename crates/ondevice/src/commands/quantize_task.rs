//! `ondevice quantize-task` (hidden): one quantization, run by the daemon's supervisor as a
//! sandboxed one-shot task (`Supervisor::run_task`). The request comes as JSON on the command line
//! (`ondevice_quantize::pipeline::QuantizeRequest`); stdout carries `progress STAGE DONE TOTAL`
//! lines, a `checkpoint {json}` line after each step a resumed job may skip (when the request asks
//! for checkpoints), a `resumed STEP` line for each step skipped and, on success, one
//! `receipt {json}` line; errors go to stderr with exit code 1. Needs no config file and no home
//! directory.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use ondevice_quantize::pipeline::{self, Checkpoint, QuantizeRequest, StageProgress};

/// Prints progress as lines the job reads, at most one per percent of each stage.
struct Lines {
    stage: std::cell::RefCell<(String, u64)>,
}

impl StageProgress for Lines {
    fn stage(&self, name: &str) {
        *self.stage.borrow_mut() = (name.replace(' ', "_"), u64::MAX);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "progress {} 0 0", name.replace(' ', "_"));
        let _ = out.flush();
    }

    fn report(&self, done: u64, total: u64) {
        let mut stage = self.stage.borrow_mut();
        let pct = (done * 100).checked_div(total).unwrap_or(0);
        if pct == stage.1 {
            return;
        }
        stage.1 = pct;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "progress {} {done} {total}", stage.0);
        let _ = out.flush();
    }

    fn checkpoint(&self, checkpoint: &Checkpoint) {
        let Ok(json) = serde_json::to_string(checkpoint) else { return };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "checkpoint {json}");
        let _ = out.flush();
    }

    fn resumed(&self, step: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "resumed {step}");
        let _ = out.flush();
    }
}

/// Runs the request given as JSON.
pub fn run(request: &str) -> anyhow::Result<ExitCode> {
    let request: QuantizeRequest = serde_json::from_str(request).context("the quantize request is not valid json")?;
    let progress = Lines { stage: std::cell::RefCell::new((String::new(), u64::MAX)) };
    match pipeline::run(&request, &progress) {
        Ok(receipt) => {
            println!("receipt {}", serde_json::to_string(&receipt)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
