//! The Windows sandbox: one Job Object per worker start, with a job memory limit, an active
//! process limit, a hard CPU rate cap, and kill-on-close so the whole tree dies with the job.
//!
//! Compiled only for Windows targets: type-checked with `cargo clippy --target
//! x86_64-pc-windows-msvc`, never run on the machine it was written on; it follows the documented
//! Win32 API.
//!
//! When the daemon dies, however it dies, Windows closes its handles: the job's only handle is the
//! daemon's, so kill-on-close ends every process of the worker. In mode `off` no job is made.
//!
//! The child is assigned to the job right after it is created ([`Prepared::after_spawn`]), so a
//! process it forks in its very first instructions could escape; filesystem, network and syscall
//! restrictions are reported as missing.

use std::ffi::c_void;

use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, WAIT_TIMEOUT};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_CPU_RATE_CONTROL_ENABLE,
    JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP, JOB_OBJECT_LIMIT_ACTIVE_PROCESS, JOB_OBJECT_LIMIT_JOB_MEMORY,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE, JOBOBJECT_CPU_RATE_CONTROL_INFORMATION, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
    JobObjectCpuRateControlInformation, JobObjectExtendedLimitInformation, SetInformationJobObject, TerminateJobObject,
};
use windows_sys::Win32::System::Threading::{
    OpenProcess, PROCESS_SET_QUOTA, PROCESS_SYNCHRONIZE, PROCESS_TERMINATE, WaitForSingleObject,
};

use crate::null::requested;
use crate::{
    Capabilities, Control, Limit, Mechanism, Prepared, Protection, Sandbox, SandboxError, SandboxMode, SandboxPolicy,
    finish,
};

/// Detect what this Windows host can enforce.
pub fn detect() -> Capabilities {
    let mut caps = Capabilities::none("windows: Job Objects for memory, process count, CPU rate and tree kill");
    caps.os = "windows";
    caps.job_objects = true;
    caps
}

/// Whether process `pid` is still running. A process this user may not open (another user's)
/// counts as running.
pub fn process_alive(pid: u32) -> bool {
    const ERROR_ACCESS_DENIED: i32 = 5;
    // SAFETY: plain Win32 calls; the handle is closed before returning.
    unsafe {
        let h = OpenProcess(PROCESS_SYNCHRONIZE, 0, pid);
        if h.is_null() {
            return std::io::Error::last_os_error().raw_os_error() == Some(ERROR_ACCESS_DENIED);
        }
        let running = WaitForSingleObject(h, 0) == WAIT_TIMEOUT;
        CloseHandle(h);
        running
    }
}

/// The Windows sandbox.
#[derive(Debug)]
pub struct WindowsSandbox {
    caps: Capabilities,
}

impl WindowsSandbox {
    /// Detect and build.
    pub fn new() -> WindowsSandbox {
        WindowsSandbox { caps: detect() }
    }
}

impl Default for WindowsSandbox {
    fn default() -> Self {
        WindowsSandbox::new()
    }
}

#[derive(Debug)]
struct Job(HANDLE);
// SAFETY: a job handle may be used from any thread.
unsafe impl Send for Job {}
// SAFETY: the Win32 job functions are thread-safe.
unsafe impl Sync for Job {}

fn last_error(call: &'static str) -> SandboxError {
    SandboxError::Sys { call, source: std::io::Error::last_os_error() }
}

impl Control for Job {
    fn after_spawn(&mut self, pid: u32) -> Result<(), SandboxError> {
        // SAFETY: plain Win32 calls; the handle is closed before returning.
        unsafe {
            let h = OpenProcess(PROCESS_SET_QUOTA | PROCESS_TERMINATE, 0, pid);
            if h.is_null() {
                return Err(last_error("OpenProcess"));
            }
            let ok = AssignProcessToJobObject(self.0, h);
            CloseHandle(h);
            if ok == 0 {
                return Err(last_error("AssignProcessToJobObject"));
            }
        }
        Ok(())
    }

    fn kill_all(&self) -> Result<bool, SandboxError> {
        // SAFETY: valid job handle.
        if unsafe { TerminateJobObject(self.0, 1) } == 0 {
            return Err(last_error("TerminateJobObject"));
        }
        Ok(true)
    }

    fn release(&mut self) {
        if !self.0.is_null() {
            // SAFETY: closing our own handle; KILL_ON_JOB_CLOSE ends what is left.
            unsafe { CloseHandle(self.0) };
            self.0 = std::ptr::null_mut();
        }
    }
}

impl Sandbox for WindowsSandbox {
    fn name(&self) -> &'static str {
        "windows"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn prepare(&self, worker: &str, policy: &SandboxPolicy) -> Result<Prepared, SandboxError> {
        let mut p = Protection::new(policy.mode);
        if policy.mode == SandboxMode::Off {
            return Ok(Prepared::unprotected(p));
        }
        // SAFETY: null attributes and name create an anonymous job.
        let job = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
        if job.is_null() {
            return Err(last_error("CreateJobObjectW"));
        }
        let mut job = Job(job);
        // SAFETY: zero is a valid bit pattern for this plain C struct.
        let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
        info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        p.enforce(Limit::TreeKill, Mechanism::JobObject, "TerminateJobObject, kill on close");
        for limit in requested(policy) {
            match limit {
                Limit::MemoryMax => {
                    let v = policy.memory_max.unwrap_or(0);
                    info.BasicLimitInformation.LimitFlags |= JOB_OBJECT_LIMIT_JOB_MEMORY;
                    info.JobMemoryLimit = v as usize;
                    p.enforce(
                        limit,
                        Mechanism::JobObject,
                        format!("JobMemoryLimit = {v} (allocations fail beyond it)"),
                    );
                }
                Limit::PidsMax => {
                    let v = policy.pids_max.unwrap_or(0);
                    info.BasicLimitInformation.LimitFlags |= JOB_OBJECT_LIMIT_ACTIVE_PROCESS;
                    info.BasicLimitInformation.ActiveProcessLimit = v as u32;
                    p.enforce(
                        limit,
                        Mechanism::JobObject,
                        format!("ActiveProcessLimit = {v} (processes, not threads)"),
                    );
                }
                Limit::CpuMax => {
                    let millicores = policy.cpu_max.map_or(1000, |c| c.millicores);
                    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
                    // CpuRate is in 1/100 of a percent of all processors: 10000 = the whole machine.
                    let rate = (millicores.saturating_mul(10) / cpus.max(1)).clamp(1, 10_000);
                    // SAFETY: zero is valid for this struct.
                    let mut cpu: JOBOBJECT_CPU_RATE_CONTROL_INFORMATION = unsafe { std::mem::zeroed() };
                    cpu.ControlFlags = JOB_OBJECT_CPU_RATE_CONTROL_ENABLE | JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP;
                    cpu.Anonymous.CpuRate = rate;
                    // SAFETY: valid job handle and a struct of the size given.
                    let ok = unsafe {
                        SetInformationJobObject(
                            job.0,
                            JobObjectCpuRateControlInformation,
                            &cpu as *const _ as *const c_void,
                            std::mem::size_of_val(&cpu) as u32,
                        )
                    };
                    if ok == 0 {
                        p.miss(
                            limit,
                            format!("SetInformationJobObject(cpu rate): {}", std::io::Error::last_os_error()),
                        );
                    } else {
                        p.enforce(limit, Mechanism::JobObject, format!("hard CPU rate cap {rate}/10000"));
                    }
                }
                other => p.miss(other, "not available on windows"),
            }
        }
        // SAFETY: valid job handle and a struct of the size given.
        let ok = unsafe {
            SetInformationJobObject(
                job.0,
                JobObjectExtendedLimitInformation,
                &info as *const _ as *const c_void,
                std::mem::size_of_val(&info) as u32,
            )
        };
        if ok == 0 {
            let e = last_error("SetInformationJobObject");
            job.release();
            return Err(e);
        }
        if let Err(e) = finish(worker, &p) {
            job.release();
            return Err(e);
        }
        let mut prepared = Prepared::unprotected(p);
        prepared.control = Box::new(job);
        Ok(prepared)
    }
}
