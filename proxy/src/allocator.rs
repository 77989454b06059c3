//! Keeps the proxy's resident memory level under sustained traffic.
//!
//! glibc's malloc raises its mmap threshold each time a large buffer is freed (up to
//! 32 MiB) and its trim threshold to twice that, after which frame buffers (up to
//! 4 MiB) come from arenas that each keep tens of MiB of freed memory. Under churn the
//! resident set then creeps up while the live heap stays flat (heaptrack over a soak:
//! live heap 3 to 7 MiB throughout). Fixed thresholds bound that: 256 KiB blocks still
//! reuse arena memory (cheap), buffers of 1 MiB and more are mapped and returned on
//! free, and an arena gives back free memory above 2 MiB at its top. Measured on the
//! throughput benchmark: the same proxy CPU per GiB as glibc's defaults (a 128 KiB
//! threshold cost 15 % more in page faults).

/// Buffers at least this large are mapped on their own and unmapped on free.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 1024 * 1024;
/// Free memory an arena keeps at its top before giving it back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 2 * 1024 * 1024;

/// Applies the tuning; call before any thread starts. Malloc settings given in
/// `GLIBC_TUNABLES` win: then nothing is changed here.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.")) {
        tune_glibc();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_glibc() {
    // SAFETY: mallopt only sets allocator parameters; no thread has started yet.
    unsafe {
        // A refusal (0) leaves glibc's default behaviour: nothing to undo.
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
