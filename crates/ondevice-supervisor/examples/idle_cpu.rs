//! Measures the supervisor's CPU use while idle-supervising 10 `sleep` workers, each with a TCP
//! liveness probe.
//!
//! `cargo run --release -p ondevice-supervisor --example idle_cpu [-- SECONDS PERIOD_MS]`
//!
//! Reads utime+stime of this process from /proc/self/stat before and after SECONDS (default 20)
//! and prints the CPU time used and the percentage of one core. The probe target is a listener
//! in this process (its accept loop is counted too). PERIOD_MS is the probe period (default 1000;
//! Kubernetes' default is 10000).

// Reads /proc/self/stat and runs `sleep` workers: Linux only; elsewhere `main` just says so.
#[cfg(target_os = "linux")]
#[tokio::main]
async fn main() {
    linux::main().await
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("the idle_cpu example measures through /proc and runs only on Linux");
}

#[cfg(target_os = "linux")]
mod linux {
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    use ondevice_supervisor::{ProbeCheck, ProbeSpec, Supervisor, SupervisorOptions, WorkerSpec};

    fn cpu_ticks() -> u64 {
        let s = std::fs::read_to_string("/proc/self/stat").unwrap();
        let rest = s.rsplit_once(") ").unwrap().1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 (utime, stime) are at 11 and 12 after the state field.
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    pub async fn main() {
        let mut args = std::env::args().skip(1);
        let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
        let period: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                drop(s)
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let sup = Supervisor::new(dir.path(), SupervisorOptions::default()).unwrap();
        for i in 0..10 {
            let mut spec = WorkerSpec::new(format!("sleeper{i}"), ["sleep", "100000"]);
            let mut p = ProbeSpec::new(ProbeCheck::Tcp(addr.to_string()));
            p.period = Duration::from_millis(period);
            spec.liveness = Some(p);
            sup.add(spec).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let (t0, c0) = (Instant::now(), cpu_ticks());
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let (dt, dc) = (t0.elapsed().as_secs_f64(), cpu_ticks() - c0);
        let restarts: u64 = sup.status().iter().map(|s| s.restarts).sum();
        let fails: u64 = sup.status().iter().map(|s| s.probe_failures.liveness).sum();
        println!(
            "10 workers, liveness tcp every {period} ms, {dt:.1} s: cpu {:.3} s = {:.3}% of one core (restarts {restarts}, probe failures {fails})",
            dc as f64 / hz,
            dc as f64 / hz / dt * 100.0
        );
        sup.shutdown(Duration::from_secs(2)).await;
    }
}
