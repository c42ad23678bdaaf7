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
//! Prompt steps are not timed (their size varies) and use the current choice. The controller is
//! pure logic over timings, tested with synthetic latencies; [`set_threads`] applies a choice to a
//! llama.cpp context.

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
        }
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
}
