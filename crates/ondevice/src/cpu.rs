//! CPU dispatch for engine workers, at the process level.
//!
//! llama.cpp's CPU kernels are compiled for one x86-64 level per binary (`build.rs` records which
//! as `ONDEVICE_ENGINE_CPU`): `ondevice` itself for x86-64-v3 (AVX2, FMA, F16C). Since each model
//! runs in its own `ondevice worker` process, packages may ship more builds of the same release
//! beside it, named `ondevice-worker-x86-64-v2` (SSE4.2 only, for older CPUs) and
//! `ondevice-worker-x86-64-v4` (AVX-512). The daemon starts workers from the highest-level build
//! the host supports; `ondevice` itself is one of the candidates. Builds are looked for in the
//! binary's directory and in `../lib/ondevice` (where the .deb and .rpm put them).

use std::path::{Path, PathBuf};

/// An x86-64 micro-architecture level (as defined by the x86-64 psABI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// SSE4.2, SSSE3, POPCNT.
    V2,
    /// v2 plus AVX, AVX2, FMA, F16C, BMI2.
    V3,
    /// v3 plus AVX-512 F, BW, CD, DQ, VL.
    V4,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 3] = [Level::V2, Level::V3, Level::V4];

    /// `x86-64-v2` …
    pub fn name(self) -> &'static str {
        match self {
            Level::V2 => "x86-64-v2",
            Level::V3 => "x86-64-v3",
            Level::V4 => "x86-64-v4",
        }
    }

    fn parse(name: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.name() == name)
    }

    /// The CPU features this level needs that the host lacks (empty: it can run here).
    pub fn missing_on_host(self) -> Vec<&'static str> {
        host_features()
            .into_iter()
            .filter(|(level, _, present)| *level <= self && !present)
            .map(|(_, n, _)| n)
            .collect()
    }
}

/// (level that needs it, feature, whether the host has it).
fn host_features() -> Vec<(Level, &'static str, bool)> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        vec![
            (Level::V2, "sse4.2", has!("sse4.2")),
            (Level::V2, "ssse3", has!("ssse3")),
            (Level::V2, "popcnt", has!("popcnt")),
            (Level::V3, "avx", has!("avx")),
            (Level::V3, "avx2", has!("avx2")),
            (Level::V3, "fma", has!("fma")),
            (Level::V3, "f16c", has!("f16c")),
            (Level::V3, "bmi2", has!("bmi2")),
            (Level::V4, "avx512f", has!("avx512f")),
            (Level::V4, "avx512bw", has!("avx512bw")),
            (Level::V4, "avx512cd", has!("avx512cd")),
            (Level::V4, "avx512dq", has!("avx512dq")),
            (Level::V4, "avx512vl", has!("avx512vl")),
        ]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// On x86-64 Linux (glibc) the C code linked into this binary (SQLite, ring, llama.cpp's ggml C
/// files) uses SSE4.2, SSSE3 and POPCNT (`.cargo/config.toml`): on an older CPU it would stop
/// with an illegal instruction somewhere. `main` checks first, before any of it runs, and says
/// why instead (no C code runs before `main`: the load-time initializers are C++ and Rust).
pub fn check_baseline() -> Result<(), String> {
    if !cfg!(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu")) {
        return Ok(());
    }
    let missing = Level::V2.missing_on_host();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "this CPU lacks {}: ondevice needs an x86-64-v2 CPU (SSE4.2, SSSE3 and POPCNT; Intel since \
         Nehalem, 2008, and Atom since Silvermont; AMD since Bulldozer and Jaguar): run ondevice on \
         a newer machine (other machines can reach it over the network)",
        missing.join(", ")
    ))
}

/// The exit status when [`check_baseline`] refuses the CPU (`EX_CONFIG`): `ondevice.service` does
/// not restart on it.
pub const BASELINE_EXIT: u8 = 78;

/// The highest level the host runs (`None` off x86-64 or below v2).
pub fn host_level() -> Option<Level> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    Level::ALL.into_iter().rev().find(|l| l.missing_on_host().is_empty())
}

/// The level of this binary's engine kernels; `None` when they are not levelled (another
/// architecture, or a `GGML_NATIVE` build for the build machine).
pub fn own_level() -> Option<Level> {
    Level::parse(env!("ONDEVICE_ENGINE_CPU"))
}

/// How this binary's kernels were built, for logs and status (`x86-64-v3`, `native`, `other`).
pub fn own_build() -> &'static str {
    env!("ONDEVICE_ENGINE_CPU")
}

/// The file name of the worker build for `level`.
pub fn variant_file(level: Level) -> String {
    format!("ondevice-worker-{}{}", level.name(), std::env::consts::EXE_SUFFIX)
}

/// The engine worker program chosen for this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerBuild {
    /// The program (this binary or a worker build beside it).
    pub program: PathBuf,
    /// Its kernel level (`None`: not levelled; see [`own_level`]).
    pub level: Option<Level>,
}

/// Chooses the worker program: the highest-level build the host supports among `exe` (at its own
/// level) and the worker builds found in `dirs`. Without a level to compare (not x86-64, a native
/// build), `exe` is used.
pub fn choose_worker(exe: &Path, own: Option<Level>, host: Option<Level>, dirs: &[PathBuf]) -> WorkerBuild {
    let mine = WorkerBuild { program: exe.to_path_buf(), level: own };
    let (Some(own), Some(host)) = (own, host) else { return mine };
    for level in Level::ALL.into_iter().rev().filter(|l| *l <= host) {
        if level == own {
            return mine;
        }
        if let Some(program) = dirs.iter().map(|d| d.join(variant_file(level))).find(|p| p.is_file()) {
            return WorkerBuild { program, level: Some(level) };
        }
    }
    // Nothing the host can run: keep this binary, whose worker says what the CPU lacks.
    mine
}

/// Where worker builds are looked for, given this binary's path.
pub fn search_dirs(exe: &Path) -> Vec<PathBuf> {
    let Some(dir) = exe.parent() else { return Vec::new() };
    vec![dir.to_path_buf(), dir.join("../lib/ondevice")]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(levels: &[Level]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for l in levels {
            std::fs::write(dir.path().join(variant_file(*l)), b"").unwrap();
        }
        dir
    }

    #[test]
    fn the_highest_build_the_host_runs_is_chosen() {
        let exe = Path::new("/opt/ondevice/bin/ondevice");
        let both = dir_with(&[Level::V2, Level::V4]);
        let dirs = [both.path().to_path_buf()];
        let pick = |host| choose_worker(exe, Some(Level::V3), host, &dirs);
        // An AVX-512 host gets the v4 build; an AVX2 host this binary; an older one the v2 build.
        assert_eq!(pick(Some(Level::V4)).program, both.path().join(variant_file(Level::V4)));
        assert_eq!(pick(Some(Level::V3)), WorkerBuild { program: exe.into(), level: Some(Level::V3) });
        assert_eq!(pick(Some(Level::V2)).level, Some(Level::V2));
        // Below v2, or without any build it can run, this binary (its worker explains the CPU).
        assert_eq!(pick(None).program, exe);
        let none = dir_with(&[]);
        let only_mine = choose_worker(exe, Some(Level::V3), Some(Level::V2), &[none.path().to_path_buf()]);
        assert_eq!(only_mine.program, exe);
        // A native build is never swapped for a levelled one.
        assert_eq!(choose_worker(exe, None, Some(Level::V4), &dirs).program, exe);
        // The first directory holding a build wins.
        let other = dir_with(&[Level::V4]);
        let two = [other.path().to_path_buf(), both.path().to_path_buf()];
        assert_eq!(
            choose_worker(exe, Some(Level::V3), Some(Level::V4), &two).program,
            other.path().join(variant_file(Level::V4))
        );
    }

    #[test]
    fn this_host_and_this_build_are_consistent() {
        // This test runs: the host passes the baseline check the binary makes first.
        assert_eq!(check_baseline(), Ok(()));
        let host = host_level();
        if cfg!(target_arch = "x86_64") {
            // Every x86-64 machine this is tested on is at least v2.
            let host = host.expect("an x86-64 host level");
            assert!(Level::ALL.into_iter().filter(|l| *l <= host).all(|l| l.missing_on_host().is_empty()));
            assert!(Level::ALL.into_iter().filter(|l| *l > host).all(|l| !l.missing_on_host().is_empty()));
        } else {
            assert_eq!(host, None);
        }
        assert!(["x86-64-v2", "x86-64-v3", "x86-64-v4", "native", "other"].contains(&own_build()));
    }
}
