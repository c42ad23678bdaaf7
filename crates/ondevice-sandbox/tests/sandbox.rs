//! Sandbox crate tests: cgroup v2 file writing against a fake root, the v2-first choice, the
//! removal of stale cgroups, mountinfo parsing, the seccomp program, the null sandbox, and
//! detection on this host.

#[cfg(target_os = "linux")]
use std::fs;
#[cfg(target_os = "linux")]
use std::path::{Path, PathBuf};

#[cfg(target_os = "linux")]
use ondevice_sandbox::{Capabilities, CgroupV2Info, CpuMax, Mechanism};
use ondevice_sandbox::{Limit, NullSandbox, Sandbox, SandboxError, SandboxMode, SandboxPolicy};

#[cfg(target_os = "linux")]
use ondevice_sandbox::linux::{self, LinuxOptions, LinuxSandbox, cgroup::Cgroup2};

#[cfg(target_os = "linux")]
#[test]
fn cgroup_v2_files_are_written_under_a_fake_root() {
    let root = tempfile::tempdir().unwrap();
    let cg =
        Cgroup2::create(root.path(), Path::new("/"), Path::new("ondevice"), "w.1", &["memory", "pids", "cpu"]).unwrap();
    assert_eq!(cg.dir(), root.path().join("ondevice/w.1"));
    for dir in [root.path().to_path_buf(), root.path().join("ondevice")] {
        assert_eq!(fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap(), "+memory +pids +cpu");
    }
    cg.set_memory_max(64 << 20).unwrap();
    cg.set_memory_high(48 << 20).unwrap();
    cg.set_cpu_max(500).unwrap();
    cg.set_pids_max(32).unwrap();
    let read = |f: &str| fs::read_to_string(cg.dir().join(f)).unwrap();
    assert_eq!(read("memory.max"), "67108864");
    assert_eq!(read("memory.high"), "50331648");
    assert_eq!(read("cpu.max"), "50000 100000");
    assert_eq!(read("pids.max"), "32");
    assert_eq!(cg.oom_kills(), 0);
    fs::write(cg.dir().join("memory.events"), "low 0\nhigh 2\nmax 5\noom 1\noom_kill 1\n").unwrap();
    assert_eq!(cg.oom_kills(), 1);
    // Already-enabled controllers are not written again.
    fs::write(root.path().join("cgroup.subtree_control"), "memory pids cpu").unwrap();
    let cg2 = Cgroup2::create(root.path(), Path::new("/"), Path::new("ondevice"), "w.2", &["memory"]).unwrap();
    assert_eq!(fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap(), "memory pids cpu");
    assert!(!cg2.has_kill());
}

#[cfg(target_os = "linux")]
fn fake_v2_caps(mount: &Path) -> Capabilities {
    let mut caps = Capabilities::none("fake");
    caps.cgroup_v2 = Some(CgroupV2Info {
        mount: mount.to_path_buf(),
        own: PathBuf::from("/"),
        controllers: vec!["cpu".into(), "memory".into(), "pids".into()],
        kill: true,
    });
    caps.cgroup_choice = ["memory", "pids", "cpu"].map(|c| (c.to_string(), Mechanism::CgroupV2)).to_vec();
    caps.cgroup_writable = true;
    caps.rlimits = true;
    caps
}

#[cfg(target_os = "linux")]
#[test]
fn full_cgroup_v2_host_is_used_first_for_every_limit() {
    let root = tempfile::tempdir().unwrap();
    let sb = LinuxSandbox::with_capabilities(fake_v2_caps(root.path()), LinuxOptions { cgroup_base: "od".into() });
    let policy = SandboxPolicy {
        mode: SandboxMode::On,
        memory_max: Some(64 << 20),
        memory_high: Some(32 << 20),
        cpu_max: Some(CpuMax { millicores: 1500 }),
        pids_max: Some(16),
        nofile: Some(256),
        core_size: Some(0),
        ..Default::default()
    };
    let prepared = sb.prepare("fake", &policy).unwrap();
    let p = &prepared.protection;
    for l in [Limit::MemoryMax, Limit::MemoryHigh, Limit::CpuMax, Limit::PidsMax] {
        assert_eq!(p.mechanism(l), Some(Mechanism::CgroupV2), "{l}: {p:#?}");
    }
    assert_eq!(p.mechanism(Limit::OpenFiles), Some(Mechanism::Rlimit));
    assert_eq!(p.mechanism(Limit::CoreSize), Some(Mechanism::Rlimit));
    assert!(p.missing.is_empty(), "{p:#?}");
    let leaf = fs::read_dir(root.path().join("od"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("the worker's cgroup directory");
    assert!(leaf.file_name().unwrap().to_string_lossy().starts_with("fake."));
    assert_eq!(fs::read_to_string(leaf.join("memory.max")).unwrap(), "67108864");
    assert_eq!(fs::read_to_string(leaf.join("cpu.max")).unwrap(), "150000 100000");
    assert_eq!(fs::read_to_string(leaf.join("pids.max")).unwrap(), "16");
    assert!(!prepared.child_hook().is_empty());
    // Clean-up removes the directory; in a fake root the files must go first.
    for e in fs::read_dir(&leaf).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
    prepared.release();
    assert!(!leaf.exists());
}

/// Leaves of dead daemons go; leaves of a live process, and directories that are not leaves, stay.
#[cfg(target_os = "linux")]
#[test]
fn stale_cgroups_of_dead_daemons_are_removed() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("ondevice");
    // Above any pid_max (at most 2^22), so no such process exists.
    let dead = 4_999_999;
    let me = std::process::id();
    for name in [format!("w.{dead}.0"), format!("w.{me}.1"), "daemon".into(), format!("w.x.{dead}")] {
        fs::create_dir_all(base.join(name)).unwrap();
    }
    let removed = linux::remove_stale_cgroups(std::slice::from_ref(&base));
    assert_eq!(removed, [base.join(format!("w.{dead}.0"))]);
    let mut left: Vec<String> =
        fs::read_dir(&base).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["daemon".to_string(), format!("w.{me}.1"), format!("w.x.{dead}")]);
    assert!(linux::remove_stale_cgroups(&[root.path().join("missing")]).is_empty());
}

#[cfg(target_os = "linux")]
#[test]
fn mountinfo_parsing_finds_v2_and_v1_controllers() {
    let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/un\\040ified rw,relatime - cgroup2 cgroup2 rw
";
    let (v2, v1) = linux::parse_mountinfo(text);
    assert_eq!(v2, Some(PathBuf::from("/sys/fs/cgroup/un ified")));
    let names: Vec<&str> = v1.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(names, ["cpu", "memory", "pids"]);
    assert_eq!(v1[1].1, PathBuf::from("/sys/fs/cgroup/memory"));
}

#[cfg(target_os = "linux")]
#[test]
fn seccomp_program_checks_arch_then_denies_the_list() {
    let prog = linux::seccomp::program().expect("x86_64 or aarch64");
    let list = linux::seccomp::deny_list();
    // Ends with ALLOW then ERRNO(EPERM).
    assert_eq!(prog[prog.len() - 2].k, 0x7fff_0000);
    assert_eq!(prog.last().unwrap().k, 0x0005_0000 | libc::EPERM as u32);
    // Each comparison jumps exactly to the ERRNO return.
    let first = prog.len() - 2 - list.len();
    for (i, (_, nr)) in list.iter().enumerate() {
        let ins = prog[first + i];
        assert_eq!(ins.k, *nr as u32);
        assert_eq!(first + i + 1 + ins.jt as usize, prog.len() - 1);
    }
    assert!(list.iter().any(|(n, _)| *n == "ptrace") && list.iter().any(|(n, _)| *n == "kexec_load"));
}

#[test]
fn null_sandbox_reports_everything_missing_and_refuses_in_mode_on() {
    let sb = NullSandbox::new();
    let policy = SandboxPolicy { memory_max: Some(1 << 26), pids_max: Some(4), ..Default::default() };
    let p = sb.prepare("w", &policy).unwrap().protection.clone();
    assert!(p.enforced.is_empty());
    assert_eq!(p.missing.iter().map(|m| m.limit).collect::<Vec<_>>(), [Limit::MemoryMax, Limit::PidsMax]);
    let on = SandboxPolicy { mode: SandboxMode::On, ..policy };
    let err = sb.prepare("w", &on).unwrap_err();
    assert!(matches!(err, SandboxError::Unenforceable { .. }));
    let msg = err.to_string();
    assert!(msg.starts_with("worker w: sandbox mode is \"on\"") && msg.contains("memory_max"), "{msg}");
    let off = SandboxPolicy { mode: SandboxMode::Off, ..on };
    assert!(sb.prepare("w", &off).unwrap().protection.missing.is_empty());
}

/// Detection must match what the kernel shows. On the development host (cgroup v2 mounted with
/// no memory/cpu/pids controllers, v1 hierarchies for them) it reports v2 without those
/// controllers and chooses v1.
#[cfg(target_os = "linux")]
#[test]
fn detection_matches_the_kernel() {
    let caps = ondevice_sandbox::detect();
    println!("{caps:#?}");
    let (v2, v1) = linux::parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap());
    assert_eq!(caps.cgroup_v2.as_ref().map(|c| c.mount.clone()), v2);
    let v2_ctrls = v2.map(|m| fs::read_to_string(m.join("cgroup.controllers")).unwrap_or_default()).unwrap_or_default();
    for c in ["memory", "pids", "cpu"] {
        let expected = if v2_ctrls.split_whitespace().any(|x| x == c) {
            Some(Mechanism::CgroupV2)
        } else if v1.iter().any(|(n, _)| n == c) {
            Some(Mechanism::CgroupV1)
        } else {
            None
        };
        assert_eq!(caps.cgroup_for(c), expected, "controller {c}");
        if expected == Some(Mechanism::CgroupV1) {
            assert!(caps.notes.iter().any(|n| n.contains("has no") && n.contains(c)), "{:?}", caps.notes);
        }
    }
    let abi = linux::landlock::abi();
    assert_eq!(caps.landlock_abi, abi);
    assert!(caps.rlimits);
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        assert!(caps.cgroup_writable && caps.net_namespace);
    }
}
