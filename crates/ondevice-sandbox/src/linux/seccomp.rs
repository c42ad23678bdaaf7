//! A seccomp deny-list compiled to classic BPF by hand (no library): denied system calls fail
//! with `EPERM`, everything else is allowed. System calls of a foreign architecture (e.g. 32-bit
//! calls on x86_64) kill the process, so the list cannot be bypassed through them.

/// System calls a model worker has no business making.
pub fn deny_list() -> Vec<(&'static str, libc::c_long)> {
    vec![
        ("ptrace", libc::SYS_ptrace),
        ("process_vm_readv", libc::SYS_process_vm_readv),
        ("process_vm_writev", libc::SYS_process_vm_writev),
        ("mount", libc::SYS_mount),
        ("umount2", libc::SYS_umount2),
        ("pivot_root", libc::SYS_pivot_root),
        ("fsopen", libc::SYS_fsopen),
        ("fsmount", libc::SYS_fsmount),
        ("move_mount", libc::SYS_move_mount),
        ("open_tree", libc::SYS_open_tree),
        ("kexec_load", libc::SYS_kexec_load),
        ("kexec_file_load", libc::SYS_kexec_file_load),
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("delete_module", libc::SYS_delete_module),
        ("bpf", libc::SYS_bpf),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("keyctl", libc::SYS_keyctl),
        ("add_key", libc::SYS_add_key),
        ("request_key", libc::SYS_request_key),
        ("reboot", libc::SYS_reboot),
        ("swapon", libc::SYS_swapon),
        ("swapoff", libc::SYS_swapoff),
        ("acct", libc::SYS_acct),
        ("settimeofday", libc::SYS_settimeofday),
        ("clock_settime", libc::SYS_clock_settime),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("userfaultfd", libc::SYS_userfaultfd),
        ("setns", libc::SYS_setns),
        ("unshare", libc::SYS_unshare),
    ]
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Compile the deny-list into a BPF program; `None` on architectures we do not know.
pub fn program() -> Option<Vec<libc::sock_filter>> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
        let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
        let ret = (libc::BPF_RET | libc::BPF_K) as u16;
        let list = deny_list();
        let mut p = vec![
            // struct seccomp_data { int nr; u32 arch; u64 ip; u64 args[6]; }
            stmt(ld, 4),
            jump(jeq, AUDIT_ARCH, 1, 0),
            stmt(ret, RET_KILL_PROCESS),
            stmt(ld, 0),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            // x32 ABI system calls have bit 30 set: refuse them outright.
            let jge = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
            p.push(jump(jge, 0x4000_0000, 0, 1));
            p.push(stmt(ret, RET_KILL_PROCESS));
        }
        let n = list.len();
        for (i, (_, nr)) in list.iter().enumerate() {
            // On a match, jump over the remaining comparisons and the ALLOW to the ERRNO return.
            let jt = (n - i) as u8;
            p.push(jump(jeq, *nr as u32, jt, 0));
        }
        p.push(stmt(ret, RET_ALLOW));
        p.push(stmt(ret, RET_ERRNO | libc::EPERM as u32));
        Some(p)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        None
    }
}

/// Whether seccomp filters are available in this kernel.
pub fn available() -> bool {
    // SAFETY: PR_GET_SECCOMP takes no pointers.
    let r = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    r >= 0 && program().is_some()
}
