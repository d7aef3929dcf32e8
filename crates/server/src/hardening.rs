//! Process hardening for server mode: no core dumps, and key memory locked in RAM where the OS
//! allows, so that unwrapped keys reach neither a crash dump nor swap.
//!
//! This is the only module of Sovra with `unsafe`: three libc calls, each with its arguments
//! fully determined here and its result checked. Everything else is safe code.
#![allow(unsafe_code)]

use std::io;

/// What hardening achieved; logged at start so an operator sees what the OS refused.
#[derive(Debug)]
pub struct HardeningReport {
    /// Core dumps disabled (RLIMIT_CORE 0) and the process marked not dumpable, which also
    /// keeps other processes of the same user from reading its memory through ptrace or /proc.
    pub core_dumps: Result<(), io::Error>,
    /// All current and future memory locked (mlockall), or why not.
    pub memory_lock: Result<(), MemoryLockRefused>,
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryLockRefused {
    /// Locking everything under a finite RLIMIT_MEMLOCK would make later allocations fail
    /// once the process outgrows it, so it is not attempted.
    #[error(
        "RLIMIT_MEMLOCK is {limit} bytes and the process lacks CAP_IPC_LOCK; raise it (systemd: LimitMEMLOCK=infinity) to lock key memory"
    )]
    LimitTooLow { limit: u64 },
    #[error("mlockall failed: {0}")]
    Failed(io::Error),
}

/// Disables core dumps and locks memory. Call once, before any key is loaded.
pub fn harden_process() -> HardeningReport {
    HardeningReport {
        core_dumps: disable_core_dumps(),
        memory_lock: lock_all_memory(),
    }
}

fn disable_core_dumps() -> Result<(), io::Error> {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is a valid rlimit that outlives the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: PR_SET_DUMPABLE takes one integer argument; the unused ones are zero.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn lock_all_memory() -> Result<(), MemoryLockRefused> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit that outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Err(MemoryLockRefused::Failed(io::Error::last_os_error()));
    }
    if limit.rlim_cur != libc::RLIM_INFINITY && !has_cap_ipc_lock() {
        return Err(MemoryLockRefused::LimitTooLow {
            limit: limit.rlim_cur,
        });
    }
    // MCL_ONFAULT: pages are locked as they are first touched, so address space the allocator
    // reserves but never uses does not become resident (docs/hardening.md).
    // SAFETY: mlockall takes flags only.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) } != 0 {
        return Err(MemoryLockRefused::Failed(io::Error::last_os_error()));
    }
    Ok(())
}

/// CAP_IPC_LOCK (bit 14) in the effective set, read from /proc/self/status.
fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

impl HardeningReport {
    /// One log line per measure: info when in place, warn when the OS refused.
    pub fn log(&self) {
        match &self.core_dumps {
            Ok(()) => tracing::info!("core dumps disabled"),
            Err(e) => tracing::warn!(error = %e, "could not disable core dumps"),
        }
        match &self.memory_lock {
            Ok(()) => tracing::info!("memory locked (no key material can be swapped out)"),
            Err(e) => tracing::warn!(reason = %e, "memory NOT locked; key material may reach swap"),
        }
    }
}
