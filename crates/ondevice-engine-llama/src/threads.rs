//! How many threads the engine uses by default: the number of physical cores.
//!
//! Hyper-threads share a core's vector units, so llama.cpp runs best with one thread per physical core.

use std::collections::HashSet;

/// Physical cores this process may use: on Linux, distinct `(physical id, core id)` pairs in
/// `/proc/cpuinfo`, capped by [`std::thread::available_parallelism`] (which honours the affinity mask
/// and cgroup CPU quota). Elsewhere, or when `/proc/cpuinfo` says nothing useful, the available
/// parallelism itself. Always at least 1.
pub fn physical_cores() -> usize {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let physical = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| physical_cores_in_cpuinfo(&s));
    physical.map_or(available, |p| p.min(available)).max(1)
}

/// Counts distinct `(physical id, core id)` pairs; `None` when the file does not list them (for
/// example on many ARM boards), so the caller falls back.
pub fn physical_cores_in_cpuinfo(cpuinfo: &str) -> Option<usize> {
    let mut cores = HashSet::new();
    for block in cpuinfo.split("\n\n") {
        let mut package = None;
        let mut core = None;
        for line in block.lines() {
            let Some((key, value)) = line.split_once(':') else { continue };
            match key.trim() {
                "physical id" => package = Some(value.trim().to_owned()),
                "core id" => core = Some(value.trim().to_owned()),
                _ => {}
            }
        }
        if let (Some(p), Some(c)) = (package, core) {
            cores.insert((p, c));
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyperthreads_count_once() {
        let info = "processor\t: 0\nphysical id\t: 0\ncore id\t\t: 0\n\n\
                    processor\t: 1\nphysical id\t: 0\ncore id\t\t: 1\n\n\
                    processor\t: 2\nphysical id\t: 0\ncore id\t\t: 0\n\n\
                    processor\t: 3\nphysical id\t: 0\ncore id\t\t: 1\n";
        assert_eq!(physical_cores_in_cpuinfo(info), Some(2));
        let two_sockets = "physical id : 0\ncore id : 0\n\nphysical id : 1\ncore id : 0\n";
        assert_eq!(physical_cores_in_cpuinfo(two_sockets), Some(2));
    }

    #[test]
    fn files_without_core_ids_fall_back() {
        assert_eq!(physical_cores_in_cpuinfo("processor : 0\nBogoMIPS : 50\n"), None);
        let n = physical_cores();
        assert!(n >= 1 && n <= std::thread::available_parallelism().unwrap().get());
    }
}
