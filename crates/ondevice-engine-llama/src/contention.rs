//! CPU contention: the engine watches its own per-step decode latency and uses fewer threads while
//! another process competes for the cores, then goes back to all of them when it is quiet again.
//!
//! Why: ggml's threads meet at a barrier after every operation of the graph. When one of N cores is
//! taken by another process, one engine thread waits for a time slice at every barrier and all the
//! others wait for it: on 2 cores with one busy, 2 threads decoded SmolLM2-135M at 13–29 tokens/s
//! where 1 thread alone on the free core makes about 53.
//!
//! How ([`ThreadController`]): every decode-only step (each running sequence adds one token) is
//! timed and kept, per thread count and per number of tokens in the step, as a moving average and
//! as the best average seen (the quiet baseline). The controller keeps the thread count whose
//! average is lowest. It re-checks the other counts now and then (a probe of a few steps: after a
//! change every second, then less and less often while the choice holds, up to every 16 s), and at
//! once when the current count's average rises well above its own baseline (contention began).
//! Prompt steps are not timed (their size varies) and use the current choice.
//!
//! Latency alone is slow to act at the start of a request and costly to re-check while contention
//! lasts (a probe of the larger count pays slow steps). So the controller also takes a direct
//! signal when the platform gives one ([`CpuLoad`]: on Linux, the CPU time other processes used
//! over the last window, from `/proc/stat` minus this process's own time in `/proc/self/stat`;
//! hypervisor steal time counts as other load). When the cores left free by others cannot hold the
//! current thread count, it drops to what they hold at once, before any timed step (also for
//! prompt and embedding steps, so an embedding-only worker makes room for a generating one); while
//! they cannot hold one more thread it does not probe upwards at all (the last figure holds until a
//! newer one, also across idle gaps between requests), and when they can again it probes upwards
//! right away. Latency still decides everything the signal leaves open. The decision
//! carries across requests: the engine keeps the controller for its life.
//!
//! The controller is pure logic over timings and load figures, tested with synthetic values;
//! [`set_threads`] applies a choice to a llama.cpp context.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use llama_cpp_2::context::LlamaContext;

/// Weight of the newest sample in a moving average.
const ALPHA: f64 = 0.3;
/// Steps of a probe; the first, which pays for waking threads, is not counted.
const PROBE_STEPS: u32 = 5;
/// First and longest time between probes.
const PROBE_MIN: Duration = Duration::from_secs(1);
const PROBE_MAX: Duration = Duration::from_secs(16);
/// A count must beat the current one by this factor to replace it.
const HYSTERESIS: f64 = 0.9;
/// The current count's average over its baseline that starts a probe at once.
const CONTENDED: f64 = 1.8;
/// Averages older than this are not trusted for a decision.
const STALE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
struct Stat {
    /// Moving average of the step latency, seconds.
    avg: f64,
    /// Lowest moving average seen: the quiet baseline.
    best: f64,
    samples: u32,
    at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    threads: usize,
    steps: u32,
    /// A sample already showed the probed count much slower than the current one: end it now
    /// (a probe of the slow count under contention would otherwise cost several slow steps).
    lost: bool,
}

/// A probe sample this many times slower than the current count's average ends the probe.
const LOSING: f64 = 2.0;
/// A thread needs this much of a free core to be worth running (free cores below `threads - SLACK`
/// mean one of them waits for a time slice at every barrier).
const SLACK: f64 = 0.5;
/// A load figure older than this is not used.
const LOAD_STALE: Duration = Duration::from_secs(2);

/// Chooses the thread count of each decode step (see the module docs).
#[derive(Debug)]
pub struct ThreadController {
    max: usize,
    current: usize,
    stats: HashMap<(usize, u32), Stat>,
    probe: Option<Probe>,
    next_probe: Instant,
    interval: Duration,
    /// Skip the next sample (the first step after a change pays for waking threads).
    warming: bool,
    /// The next probe goes up (towards `max`) rather than down.
    probe_up: bool,
    /// When the last probe ended.
    last_probe: Instant,
    /// Cores other processes left free, and when that was measured ([`ThreadController::note_load`]).
    free: Option<(f64, Instant)>,
}

/// What the engine should do before a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Threads for this step.
    pub threads: usize,
    /// The thread count differs from the previous step's: apply it.
    pub changed: bool,
}

impl ThreadController {
    /// A controller that starts with, and never exceeds, `max` threads. With `max == 1` it never
    /// changes anything.
    pub fn new(max: usize, now: Instant) -> Self {
        let max = max.max(1);
        ThreadController {
            max,
            current: max,
            stats: HashMap::new(),
            probe: None,
            next_probe: now + PROBE_MIN,
            interval: PROBE_MIN,
            warming: false,
            probe_up: false,
            last_probe: now,
            free: None,
        }
    }

    /// Records that other processes kept `other` of `cpus` cores busy over the last window (see
    /// [`CpuLoad`]). Drops the thread count at the next step when the free cores cannot hold it,
    /// and probes upwards at once when they can hold one more thread again.
    pub fn note_load(&mut self, now: Instant, other: f64, cpus: usize) {
        let free = (cpus as f64 - other.max(0.0)).max(0.0);
        let could_not_grow = self.free.is_some_and(|(f, _)| !room_for(f, self.current + 1));
        if could_not_grow && room_for(free, self.current + 1) && self.current < self.max && self.probe.is_none() {
            // The other load went away: check the larger count now rather than at the next probe.
            self.next_probe = now;
            self.probe_up = true;
        }
        self.free = Some((free, now));
    }

    /// The free cores from a recent load figure.
    fn free_cores(&self, now: Instant) -> Option<f64> {
        self.free.filter(|(_, at)| now.saturating_duration_since(*at) < LOAD_STALE).map(|(f, _)| f)
    }

    /// Fewer threads at once when the free cores cannot hold the current count (no probe: the
    /// load figure is direct evidence, and a probe of the smaller count would only confirm it).
    fn follow_load(&mut self, now: Instant) {
        let Some(free) = self.free_cores(now) else { return };
        let fits = ((free + SLACK).floor() as usize).clamp(1, self.max);
        if fits >= self.current() {
            return;
        }
        tracing::info!(
            from = self.current(),
            to = fits,
            free_cores = free,
            "decode threads changed: other processes keep the CPU busy"
        );
        if self.probe.take().is_some() {
            self.last_probe = now;
        }
        self.current = fits;
        self.interval = PROBE_MIN;
        self.next_probe = now + PROBE_MIN;
    }

    /// Threads the last choice used.
    pub fn current(&self) -> usize {
        self.probe.map_or(self.current, |p| p.threads)
    }

    /// The most threads it will use.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether it runs below `max` now because of contention.
    pub fn contended(&self) -> bool {
        self.current < self.max
    }

    /// The thread count for the next step. `decode_tokens` is `Some(n)` for a decode-only step of
    /// `n` tokens (timed afterwards with [`ThreadController::observe`]), `None` for a step with
    /// prompt tokens (it keeps the current count and is not timed).
    pub fn choose(&mut self, now: Instant, decode_tokens: Option<u32>) -> Choice {
        let before = self.current();
        if self.max > 1 {
            self.follow_load(now);
            if let Some(n) = decode_tokens {
                self.decide(now, n);
            } else if self.probe.take().is_some() {
                // A prompt step interrupts a probe: its result would mix workloads.
                self.next_probe = now + PROBE_MIN;
            }
        }
        let threads = self.current();
        if threads != before {
            self.warming = true;
        }
        Choice { threads, changed: threads != before }
    }

    /// The thread count for work between decode steps (an embedding chunk): it follows the load
    /// figure, keeps the current count (or a running probe's) otherwise, and is not timed.
    pub fn between(&mut self, now: Instant) -> Choice {
        let before = self.current();
        if self.max > 1 {
            self.follow_load(now);
        }
        let threads = self.current();
        if threads != before {
            self.warming = true;
        }
        Choice { threads, changed: threads != before }
    }

    /// Records the latency of a decode-only step of `tokens` tokens run with `threads` threads.
    pub fn observe(&mut self, now: Instant, threads: usize, tokens: u32, latency: Duration) {
        if std::mem::take(&mut self.warming) {
            return;
        }
        let secs = latency.as_secs_f64();
        let stat =
            self.stats.entry((threads, tokens)).or_insert(Stat { avg: secs, best: f64::INFINITY, samples: 0, at: now });
        if stat.samples == 0 {
            stat.avg = secs;
        } else {
            stat.avg = ALPHA * secs + (1.0 - ALPHA) * stat.avg;
        }
        stat.samples += 1;
        stat.at = now;
        if stat.samples >= 3 {
            stat.best = stat.best.min(stat.avg);
        }
        let current = self.stats.get(&(self.current, tokens)).filter(|s| s.samples >= 2).map(|s| s.avg);
        if let Some(p) = self.probe.as_mut().filter(|p| p.threads == threads) {
            p.steps += 1;
            if current.is_some_and(|c| secs > c * LOSING) {
                p.lost = true;
            }
        }
    }

    fn fresh(&self, threads: usize, tokens: u32, now: Instant) -> Option<Stat> {
        self.stats
            .get(&(threads, tokens))
            .copied()
            .filter(|s| s.samples >= 2 && now.saturating_duration_since(s.at) < STALE)
    }

    fn decide(&mut self, now: Instant, tokens: u32) {
        if let Some(p) = self.probe {
            if p.steps < PROBE_STEPS - 1 && !p.lost {
                return;
            }
            self.probe = None;
            self.last_probe = now;
            // The probe's samples are fresh; compare its average with the current count's.
            let probed = self.fresh(p.threads, tokens, now).map(|s| s.avg);
            let current = self.fresh(self.current, tokens, now).map(|s| s.avg);
            let switch = !p.lost
                && match (probed, current) {
                    (Some(a), Some(b)) => a < b * HYSTERESIS,
                    (Some(_), None) => true,
                    _ => false,
                };
            if switch {
                tracing::info!(
                    from = self.current,
                    to = p.threads,
                    probed_ms = probed.unwrap_or(0.0) * 1e3,
                    current_ms = current.unwrap_or(0.0) * 1e3,
                    "decode threads changed: {}",
                    if p.threads < self.max { "the CPU is contended" } else { "the CPU is quiet again" }
                );
                self.current = p.threads;
                self.interval = PROBE_MIN;
            } else {
                self.interval = (self.interval * 2).min(PROBE_MAX);
            }
            self.next_probe = now + self.interval;
            return;
        }
        let contended_now = self
            .fresh(self.current, tokens, now)
            .is_some_and(|s| s.samples >= 3 && s.avg > s.best * CONTENDED && self.current > 1);
        let contended_now = contended_now && now >= self.last_probe + PROBE_MIN;
        if now < self.next_probe && !contended_now {
            return;
        }
        let up = self.current < self.max;
        let down = self.current > 1;
        let go_up = if contended_now { false } else { (up && self.probe_up) || !down };
        if go_up && self.free.is_some_and(|(f, _)| !room_for(f, self.current + 1)) {
            // Other processes left no core for one more thread at the last figure: such a probe
            // could only lose. That holds until a newer figure says otherwise, even when the last
            // one is old (the first steps after an idle gap have none yet: probing then cost every
            // request a few slow steps). `note_load` brings the probe forward when the load goes
            // away.
            self.next_probe = now + PROBE_MIN;
            return;
        }
        self.probe_up = !go_up;
        let threads = if go_up { self.current + 1 } else { self.current - 1 };
        if threads == self.current || threads == 0 || threads > self.max {
            return;
        }
        // The probe measures the present: forget the probed count's old average (not its baseline).
        if let Some(s) = self.stats.get_mut(&(threads, tokens)) {
            s.samples = 0;
        }
        self.probe = Some(Probe { threads, steps: 0, lost: false });
    }
}

/// Whether `free` cores can hold `threads` threads.
pub(crate) fn room_for(free: f64, threads: usize) -> bool {
    free + SLACK >= threads as f64
}

/// Shortest window [`CpuLoad`] measures over (`/proc/stat` counts in 10 ms ticks).
const LOAD_WINDOW: Duration = Duration::from_millis(150);
/// A previous reading older than this only starts a new window: the time since then (the engine
/// was idle, say) says little about the load now.
const LOAD_RESTART: Duration = Duration::from_secs(1);
/// Clock ticks per second of `/proc/stat` and `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// CPU time used by other processes, for [`ThreadController::note_load`]. On Linux it reads the
/// machine's busy time from `/proc/stat` (user, nice, system, irq, softirq and steal) and this
/// process's own from `/proc/self/stat`; elsewhere it reports nothing and the controller decides
/// by latency alone.
#[derive(Debug, Default)]
pub struct CpuLoad {
    last: Option<(Instant, Ticks)>,
}

/// One reading: busy ticks of the machine and of this process, and the number of CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticks {
    /// Busy ticks of all CPUs together.
    pub busy: u64,
    /// Ticks this process used (user + system).
    pub own: u64,
    /// CPUs the machine counts.
    pub cpus: usize,
}

impl CpuLoad {
    /// Reads the counters when the last reading is at least [`LOAD_WINDOW`] old; returns the cores
    /// other processes kept busy since then, and the CPU count. `None` between windows, after an
    /// idle gap (the first reading after it starts a new window), or when the platform has no
    /// such counters.
    pub fn sample(&mut self, now: Instant) -> Option<(f64, usize)> {
        if self.last.is_some_and(|(at, _)| now.saturating_duration_since(at) < LOAD_WINDOW) {
            return None;
        }
        let ticks = read_ticks()?;
        self.update(now, ticks)
    }

    /// The arithmetic of [`CpuLoad::sample`] over a reading taken at `now`.
    pub fn update(&mut self, now: Instant, ticks: Ticks) -> Option<(f64, usize)> {
        let last = self.last.replace((now, ticks));
        let (at, before) = last?;
        let secs = now.saturating_duration_since(at).as_secs_f64();
        if !(LOAD_WINDOW.as_secs_f64()..LOAD_RESTART.as_secs_f64()).contains(&secs) {
            return None;
        }
        let busy = ticks.busy.saturating_sub(before.busy);
        let own = ticks.own.saturating_sub(before.own);
        Some((busy.saturating_sub(own) as f64 / USER_HZ / secs, ticks.cpus))
    }
}

#[cfg(target_os = "linux")]
fn read_ticks() -> Option<Ticks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_ticks(&stat, &own)
}

#[cfg(not(target_os = "linux"))]
fn read_ticks() -> Option<Ticks> {
    None
}

/// Parses `/proc/stat` (its aggregate `cpu` line and the `cpuN` lines) and `/proc/self/stat`
/// (`utime` and `stime`, the 14th and 15th fields, counted after the command name's closing
/// parenthesis, which may itself contain spaces and parentheses).
pub fn parse_ticks(stat: &str, own: &str) -> Option<Ticks> {
    let mut lines = stat.lines();
    let total: Vec<u64> =
        lines.next()?.strip_prefix("cpu ")?.split_whitespace().map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already in user.
    let field = |i: usize| total.get(i).copied().unwrap_or(0);
    if total.len() < 4 {
        return None;
    }
    let busy = [0, 1, 2, 5, 6, 7].iter().map(|&i| field(i)).fold(0u64, u64::saturating_add);
    let cpus = lines
        .take_while(|l| l.starts_with("cpu"))
        .filter(|l| l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    let after = own.get(own.rfind(')')? + 1..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    (cpus > 0).then_some(Ticks { busy, own: utime.saturating_add(stime), cpus })
}

/// Sets the threads `ctx` uses for decoding and prompt processing (`llama_set_n_threads`).
///
/// `llama-cpp-2` does not wrap that call and keeps the context pointer private; its `Debug`
/// output shows the pointer. That output is accepted only when it has exactly the shape
/// llama-cpp-2 =0.1.160 prints (see [`parse_context_debug`]); anything else is refused before
/// any foreign call, and the pointer is then checked (`llama_n_ctx` through it must give the
/// context's size). Returns `false`, changing nothing, when either fails: the engine then keeps
/// its thread count.
pub(crate) fn set_threads(ctx: &mut LlamaContext<'_>, threads: usize) -> bool {
    let Some(raw) = raw_context(ctx) else { return false };
    let n = i32::try_from(threads).unwrap_or(i32::MAX);
    // SAFETY: `raw` is the live context `ctx` wraps (checked by `raw_context`), and `&mut ctx`
    // guarantees no other call uses it now.
    unsafe { llama_cpp_sys_2::llama_set_n_threads(raw, n, n) };
    true
}

/// Whether `ctx` attends causally (`llama_get_causal_attn`: true for generative models, false
/// for BERT-like encoders); `None` when its pointer cannot be read (see [`set_threads`]).
pub(crate) fn causal_attention(ctx: &LlamaContext<'_>) -> Option<bool> {
    let raw = raw_context(ctx)?;
    // SAFETY: `raw` is the live context `ctx` wraps (checked by `raw_context`); the call only
    // reads its parameters.
    Some(unsafe { llama_cpp_sys_2::llama_get_causal_attn(raw) })
}

/// The `Debug` output of a `LlamaContext` in llama-cpp-2 =0.1.160 (`src/context.rs`): a
/// `debug_struct` with the single field `context`, a `Ptr` that forwards to `NonNull`'s `Debug`
/// (`0x` and lowercase hex digits).
const DEBUG_PREFIX: &str = "LlamaContext { context: 0x";
/// The end of that output.
const DEBUG_SUFFIX: &str = " }";

/// The address in `shown` when it is exactly `LlamaContext { context: 0x<hex> }`, non-null and
/// pointer-aligned; `None` for any other text.
fn parse_context_debug(shown: &str) -> Option<usize> {
    let digits = shown.strip_prefix(DEBUG_PREFIX)?.strip_suffix(DEBUG_SUFFIX)?;
    if digits.is_empty()
        || digits.len() > 2 * std::mem::size_of::<usize>()
        || !digits.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let addr = usize::from_str_radix(digits, 16).ok()?;
    (addr != 0 && addr % std::mem::align_of::<usize>() == 0).then_some(addr)
}

/// The `llama_context` pointer of `ctx`, from its `Debug` output, checked against `llama_n_ctx`.
fn raw_context(ctx: &LlamaContext<'_>) -> Option<*mut llama_cpp_sys_2::llama_context> {
    let shown = format!("{ctx:?}");
    let Some(addr) = parse_context_debug(&shown) else {
        tracing::warn!(
            debug = %shown,
            "the llama context does not print as llama-cpp-2 0.1.160 does; adaptive decode threads are off"
        );
        return None;
    };
    let raw = addr as *mut llama_cpp_sys_2::llama_context;
    // SAFETY: `shown` has exactly the shape of llama-cpp-2 0.1.160's `Debug` for a live
    // `LlamaContext`, whose only printed field is its non-null `llama_context` pointer;
    // `llama_n_ctx` only reads it.
    let n_ctx = unsafe { llama_cpp_sys_2::llama_n_ctx(raw) };
    (n_ctx == ctx.n_ctx()).then_some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_debug_is_accepted_only_in_its_exact_shape() {
        let good = "LlamaContext { context: 0x55d1c0a0b4f0 }";
        assert_eq!(parse_context_debug(good), Some(0x55d1_c0a0_b4f0));
        for bad in [
            "",
            "LlamaContext { context: 0x }",
            "LlamaContext { context: 0x0 }",
            "LlamaContext { context: 0x55d1c0a0b4f1 }",
            "LlamaContext { context: 0x55D1C0A0B4F0 }",
            "LlamaContext { context: 0x55d1c0a0b4f0, n_ctx: 512 }",
            "LlamaContext { context: 0x55d1c0a0b4f0, .. }",
            "LlamaContext { context: Ptr(0x55d1c0a0b4f0) }",
            "LlamaContext { model: 0x55d1c0a0b4f0 }",
            "LlamaContext {\n    context: 0x55d1c0a0b4f0,\n}",
            "LlamaContext { context: 0x55d1c0a0b4f0 } ",
            "LlamaContext { context: 0x1234567812345678a0 }",
            "Other { context: 0x55d1c0a0b4f0 }",
        ] {
            assert_eq!(parse_context_debug(bad), None, "{bad:?}");
        }
    }

    /// The pointer part of the pinned shape is `NonNull`'s `Debug`, which llama-cpp-2 forwards to.
    #[test]
    fn non_null_debug_matches_the_pinned_shape() {
        let x = 0_usize;
        let p = std::ptr::NonNull::from(&x);
        let shown = format!("LlamaContext {{ context: {p:?} }}");
        assert_eq!(parse_context_debug(&shown), Some(p.as_ptr() as usize));
    }

    /// The shape above was read from llama-cpp-2 0.1.160; a bump must re-read `src/context.rs`.
    #[test]
    fn llama_cpp_2_is_the_version_whose_debug_shape_is_pinned() {
        let lock = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock");
        let lock = std::fs::read_to_string(lock).expect("read the workspace Cargo.lock");
        let version = lock
            .split("[[package]]")
            .find(|p| p.contains("name = \"llama-cpp-2\"\n"))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
            .map(|v| v.trim_end_matches('"'));
        assert_eq!(
            version,
            Some("0.1.160"),
            "llama-cpp-2 changed: check LlamaContext's Debug in its src/context.rs, then update parse_context_debug"
        );
    }

    /// Runs `steps` decode steps of one token each, with a step latency given by `latency(threads)`.
    fn run(c: &mut ThreadController, now: &mut Instant, steps: u32, latency: impl Fn(usize) -> f64) -> Vec<usize> {
        let mut used = Vec::new();
        for _ in 0..steps {
            let choice = c.choose(*now, Some(1));
            let l = Duration::from_secs_f64(latency(choice.threads));
            *now += l;
            c.observe(*now, choice.threads, 1, l);
            used.push(choice.threads);
        }
        used
    }

    #[test]
    fn quiet_cpu_keeps_all_threads() {
        let start = Instant::now();
        let mut now = start;
        let mut c = ThreadController::new(2, start);
        // 2 threads: 10 ms per token; 1 thread: 18 ms.
        let used = run(&mut c, &mut now, 3000, |t| if t == 2 { 0.010 } else { 0.018 });
        assert_eq!(c.current(), 2);
        assert!(!c.contended());
        let one = used.iter().filter(|&&t| t == 1).count();
        assert!(one * 20 < used.len(), "probes are rare when the choice holds: {one} of {}", used.len());
    }

    #[test]
    fn contention_drops_a_thread_and_quiet_restores_it() {
        let start = Instant::now();
        let mut now = start;
        let mut c = ThreadController::new(2, start);
        run(&mut c, &mut now, 500, |t| if t == 2 { 0.010 } else { 0.018 });
        assert_eq!(c.current(), 2);
        // Another process takes a core: 2 threads now take 60 ms a step, 1 thread still 19 ms.
        let used = run(&mut c, &mut now, 300, |t| if t == 2 { 0.060 } else { 0.019 });
        assert_eq!(c.current(), 1, "contention noticed");
        assert!(c.contended());
        let first_one = used.iter().position(|&t| t == 1).unwrap();
        assert!(first_one < 10, "reacts within a few steps of the slowdown, not at the next scheduled probe");
        // Mostly on one thread while contended: a probe of 2 threads ends after its first slow step.
        let tail = &used[100..];
        let slow = tail.iter().filter(|&&t| t == 2).count();
        assert!(slow * 40 < tail.len(), "{slow} slow steps of {}: {tail:?}", tail.len());
        // Quiet again: back to 2 threads.
        run(&mut c, &mut now, 2000, |t| if t == 2 { 0.010 } else { 0.018 });
        assert_eq!(c.current(), 2, "restored when quiet");
    }

    #[test]
    fn prompt_steps_are_not_timed_and_keep_the_count() {
        let start = Instant::now();
        let mut c = ThreadController::new(4, start);
        let choice = c.choose(start + Duration::from_secs(5), None);
        assert_eq!(choice, Choice { threads: 4, changed: false });
        let mut one = ThreadController::new(1, start);
        let mut now = start;
        assert!(run(&mut one, &mut now, 200, |_| 0.01).iter().all(|&t| t == 1));
    }

    /// A controller at 2 threads that has seen quiet steps (2 threads: 10 ms, 1 thread: 18 ms).
    fn settled(now: &mut Instant) -> ThreadController {
        let mut c = ThreadController::new(2, *now);
        run(&mut c, now, 500, |t| if t == 2 { 0.010 } else { 0.018 });
        assert_eq!(c.current(), 2);
        c
    }

    /// Like `run`, telling the controller before every step that other processes keep `other` of
    /// 2 cores busy.
    fn run_loaded(
        c: &mut ThreadController,
        now: &mut Instant,
        steps: u32,
        other: f64,
        latency: impl Fn(usize) -> f64,
    ) -> Vec<usize> {
        let mut used = Vec::new();
        for _ in 0..steps {
            c.note_load(*now, other, 2);
            used.extend(run(c, now, 1, &latency));
        }
        used
    }

    #[test]
    fn other_load_drops_a_thread_before_any_slow_step() {
        let mut now = Instant::now();
        let mut c = settled(&mut now);
        // A busy process takes a core between two requests: the very first step uses 1 thread.
        c.note_load(now, 1.0, 2);
        assert_eq!(c.choose(now, Some(1)), Choice { threads: 1, changed: true });
        assert!(c.contended());
        // Prompt and embedding steps (untimed) follow the load figure as well.
        let mut d = settled(&mut now);
        d.note_load(now, 0.9, 2);
        assert_eq!(d.choose(now, None), Choice { threads: 1, changed: true });
    }

    #[test]
    fn while_others_keep_a_core_busy_no_probe_goes_up() {
        let mut now = Instant::now();
        let mut c = settled(&mut now);
        // Contended for a minute of steps: 2 threads would take 60 ms, 1 thread 19 ms.
        let used = run_loaded(&mut c, &mut now, 3000, 1.0, |t| if t == 2 { 0.060 } else { 0.019 });
        assert_eq!(used.iter().filter(|&&t| t == 2).count(), 0, "not one slow step: {:?}", &used[..20]);
        assert_eq!(c.current(), 1);
        // The decision carries across requests: a prompt step after an idle gap keeps it.
        now += Duration::from_secs(5);
        c.note_load(now, 1.0, 2);
        assert_eq!(c.choose(now, None), Choice { threads: 1, changed: false });
        // After another idle gap the load figure is old and the next one takes a window to come:
        // the steps before it do not probe 2 threads on the strength of no figure.
        now += Duration::from_secs(20);
        let used = run(&mut c, &mut now, 30, |t| if t == 2 { 0.060 } else { 0.019 });
        assert!(used.iter().all(|&t| t == 1), "no probe before a fresh load figure: {used:?}");
        // A fresh figure showing a free core again starts the upward probe at once.
        let used = run_loaded(&mut c, &mut now, 40, 0.1, |t| if t == 2 { 0.010 } else { 0.018 });
        assert!(used.iter().position(|&t| t == 2).is_some_and(|i| i < 3), "{used:?}");
        assert_eq!(c.current(), 2);
    }

    #[test]
    fn when_the_other_load_goes_away_it_probes_up_at_once() {
        let mut now = Instant::now();
        let mut c = settled(&mut now);
        run_loaded(&mut c, &mut now, 1000, 1.0, |t| if t == 2 { 0.060 } else { 0.019 });
        assert_eq!(c.current(), 1);
        // Quiet again (the backoff had grown meanwhile): back to 2 threads within a few steps.
        let used = run_loaded(&mut c, &mut now, 40, 0.1, |t| if t == 2 { 0.010 } else { 0.018 });
        let first_two = used.iter().position(|&t| t == 2).expect("probes 2 threads");
        assert!(first_two < 3, "probes at once, not at the next scheduled probe: {used:?}");
        assert_eq!(c.current(), 2, "{used:?}");
    }

    #[test]
    fn light_other_load_leaves_the_decision_to_latency() {
        let mut now = Instant::now();
        let mut c = settled(&mut now);
        // The daemon and a client use a little CPU: 2 threads stay, probes still happen.
        let used = run_loaded(&mut c, &mut now, 3000, 0.3, |t| if t == 2 { 0.010 } else { 0.018 });
        assert_eq!(c.current(), 2);
        assert!(used.contains(&1), "latency probes go on");
        // Four cores with one taken: three threads fit, so a 4-thread controller drops to 3.
        let mut four = ThreadController::new(4, now);
        four.note_load(now, 1.0, 4);
        assert_eq!(four.choose(now, Some(1)).threads, 3);
    }

    #[test]
    fn proc_stat_and_own_times_are_parsed() {
        let stat = "cpu  100 5 50 1000 7 3 2 40 9 0\ncpu0 50 2 25 500 3 1 1 20 4 0\ncpu1 50 3 25 500 4 2 1 20 5 0\nintr 1 2\nctxt 9\n";
        // A command name with spaces and parentheses; utime 31, stime 9.
        let own = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 31 9 0 0 20 0 3 0 5 1000 50";
        assert_eq!(parse_ticks(stat, own), Some(Ticks { busy: 100 + 5 + 50 + 3 + 2 + 40, own: 40, cpus: 2 }));
        for bad in ["", "cpu0 1 2 3 4\n", "cpu  1 2\ncpu0 1 2\n", "cpu  a b c d\ncpu0 1 1 1 1\n"] {
            assert_eq!(parse_ticks(bad, own), None, "{bad:?}");
        }
        assert_eq!(parse_ticks(stat, "1234 (name S 1"), None);
        assert_eq!(parse_ticks(stat, "1234 (name) S 1 2"), None);
    }

    #[test]
    fn load_windows_count_other_processes_only() {
        let start = Instant::now();
        let mut load = CpuLoad::default();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(load.update(at(0), Ticks { busy: 1000, own: 300, cpus: 2 }), None, "the first reading starts");
        // 200 ms later: 30 ticks busy in all, 10 of them ours: 20 ticks = 0.2 s over 0.2 s = 1 core.
        let (other, cpus) = load.update(at(200), Ticks { busy: 1030, own: 310, cpus: 2 }).unwrap();
        assert!((other - 1.0).abs() < 1e-9, "{other}");
        assert_eq!(cpus, 2);
        // Too short a window says nothing; after an idle gap the reading only restarts the window.
        assert_eq!(load.update(at(250), Ticks { busy: 1031, own: 310, cpus: 2 }), None);
        assert_eq!(load.update(at(5000), Ticks { busy: 9000, own: 320, cpus: 2 }), None);
        let (other, _) = load.update(at(5300), Ticks { busy: 9006, own: 323, cpus: 2 }).unwrap();
        assert!((other - 0.1).abs() < 1e-9, "{other}");
    }
}
