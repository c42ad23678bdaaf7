//! Facts about the machine for bundles and doctor: OS and kernel, CPU, memory and the disk under
//! the home from `sysinfo`; GPUs from the DRM class in sysfs (Linux) and the vendor device nodes,
//! which `sysinfo` does not report. No host name, user name or serial number is collected.

use std::path::Path;

use serde::Serialize;

/// The machine, as a bundle and doctor see it.
#[derive(Debug, Clone, Serialize)]
pub struct SystemInfo {
    /// `linux`, `macos`, `windows`.
    pub os: &'static str,
    /// Distribution or product name and version (`Ubuntu 24.04`).
    pub os_version: Option<String>,
    /// Kernel release.
    pub kernel: Option<String>,
    /// CPU architecture (`x86_64`).
    pub arch: String,
    /// CPU model string.
    pub cpu_model: Option<String>,
    /// CPU vendor id.
    pub cpu_vendor: Option<String>,
    /// Logical CPUs.
    pub logical_cpus: usize,
    /// Physical cores, when known.
    pub physical_cores: Option<usize>,
    /// CPU features relevant to the engine's kernels (x86-64 only).
    pub cpu_features: Vec<&'static str>,
    /// Memory, bytes.
    pub memory_total: u64,
    /// Memory available, bytes.
    pub memory_available: u64,
    /// Swap, bytes.
    pub swap_total: u64,
    /// The file system holding the home.
    pub home_disk: Option<DiskInfo>,
    /// GPUs seen.
    pub gpus: Vec<GpuInfo>,
    /// Seconds since boot.
    pub uptime_s: u64,
}

/// A file system.
#[derive(Debug, Clone, Serialize)]
pub struct DiskInfo {
    /// Type (`ext4`).
    pub file_system: String,
    /// Bytes in all.
    pub total: u64,
    /// Bytes available to the user.
    pub available: u64,
}

/// A GPU seen on the machine.
#[derive(Debug, Clone, Serialize)]
pub struct GpuInfo {
    /// `nvidia`, `amd`, `intel`, or the PCI vendor id.
    pub vendor: String,
    /// PCI device id, when known.
    pub device: Option<String>,
    /// Kernel driver, when known.
    pub driver: Option<String>,
}

/// Collects the facts; `home` selects the disk reported.
pub fn collect(home: &Path) -> SystemInfo {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    sys.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing().with_frequency());
    let cpu = sys.cpus().first();
    SystemInfo {
        os: std::env::consts::OS,
        os_version: sysinfo::System::long_os_version(),
        kernel: sysinfo::System::kernel_version(),
        arch: sysinfo::System::cpu_arch(),
        cpu_model: cpu.map(|c| c.brand().trim().to_owned()).filter(|s| !s.is_empty()),
        cpu_vendor: cpu.map(|c| c.vendor_id().to_owned()).filter(|s| !s.is_empty()),
        logical_cpus: sys.cpus().len(),
        physical_cores: sysinfo::System::physical_core_count(),
        cpu_features: cpu_features(),
        memory_total: sys.total_memory(),
        memory_available: sys.available_memory(),
        swap_total: sys.total_swap(),
        home_disk: disk_of(home),
        gpus: gpus(),
        uptime_s: sysinfo::System::uptime(),
    }
}

/// The file system holding `path` (the mount point that is its longest prefix).
pub fn disk_of(path: &Path) -> Option<DiskInfo> {
    let path = std::fs::canonicalize(path)
        .or_else(|_| path.parent().map_or(Err(std::io::ErrorKind::NotFound.into()), std::fs::canonicalize))
        .unwrap_or_else(|_| path.to_path_buf());
    let disks = sysinfo::Disks::new_with_refreshed_list();
    disks
        .list()
        .iter()
        .filter(|d| path.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| DiskInfo {
            file_system: d.file_system().to_string_lossy().into_owned(),
            total: d.total_space(),
            available: d.available_space(),
        })
}

/// x86-64 features the engine's kernel levels depend on, as detected at run time.
pub fn cpu_features() -> Vec<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let all = [
            ("sse4.2", has!("sse4.2")),
            ("ssse3", has!("ssse3")),
            ("popcnt", has!("popcnt")),
            ("avx", has!("avx")),
            ("avx2", has!("avx2")),
            ("fma", has!("fma")),
            ("f16c", has!("f16c")),
            ("bmi2", has!("bmi2")),
            ("avx512f", has!("avx512f")),
            ("avx512bw", has!("avx512bw")),
            ("avx512cd", has!("avx512cd")),
            ("avx512dq", has!("avx512dq")),
            ("avx512vl", has!("avx512vl")),
        ];
        all.into_iter().filter(|(_, on)| *on).map(|(n, _)| n).collect()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// GPUs: on Linux the DRM cards' PCI vendor and driver; elsewhere none are reported.
pub fn gpus() -> Vec<GpuInfo> {
    let mut out = Vec::new();
    if cfg!(target_os = "linux") {
        let Ok(rd) = std::fs::read_dir("/sys/class/drm") else { return out };
        let mut names: Vec<String> = rd
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("card") && n[4..].chars().all(|c| c.is_ascii_digit()))
            .collect();
        names.sort();
        for n in names {
            let dev = Path::new("/sys/class/drm").join(&n).join("device");
            let read = |f: &str| std::fs::read_to_string(dev.join(f)).ok().map(|s| s.trim().to_owned());
            let Some(vendor) = read("vendor") else { continue };
            let driver = std::fs::read_link(dev.join("driver"))
                .ok()
                .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()));
            let vendor = match vendor.as_str() {
                "0x10de" => "nvidia".to_owned(),
                "0x1002" => "amd".to_owned(),
                "0x8086" => "intel".to_owned(),
                other => other.to_owned(),
            };
            out.push(GpuInfo { vendor, device: read("device"), driver });
        }
        if out.is_empty() && Path::new("/dev/nvidia0").exists() {
            out.push(GpuInfo { vendor: "nvidia".into(), device: None, driver: Some("nvidia".into()) });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_of_this_machine_are_plausible() {
        let dir = tempfile::tempdir().unwrap();
        let s = collect(dir.path());
        assert!(s.logical_cpus >= 1);
        assert!(s.memory_total > 0 && s.memory_available <= s.memory_total);
        let disk = s.home_disk.expect("the temp dir's file system");
        assert!(disk.total > 0 && disk.available <= disk.total);
        if cfg!(target_arch = "x86_64") {
            assert!(s.cpu_features.contains(&"sse4.2"), "{:?}", s.cpu_features);
        }
        assert_eq!(s.os, std::env::consts::OS);
    }
}
