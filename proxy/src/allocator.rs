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

/// Hands the pages freed inside the heap back to the system. glibc returns only
/// the free memory at an arena's top; after a flood the freed small allocations
/// (decoded wants, their tables' entries) sit below live ones and stay resident
/// until this. It walks every arena, so it is called once per ebb, not per tick.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// When to [`trim`]: after the wants held fell to an eighth of their high-water
/// mark, if that mark was a flood (at least 8,192 wants).
#[derive(Debug, Default)]
pub struct Ebb {
    high: usize,
}

impl Ebb {
    /// Sees the wants held now; true when memory should be trimmed.
    pub fn ebbed(&mut self, held: usize) -> bool {
        self.high = self.high.max(held);
        if self.high >= 8192 && held * 8 < self.high {
            self.high = held;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::Ebb;

    #[test]
    fn trims_once_after_a_flood_ebbs_and_never_for_small_loads() {
        let mut e = Ebb::default();
        assert!(![100, 5000, 10, 0].into_iter().any(|n| e.ebbed(n)));
        let seen: Vec<bool> = [65_536, 40_000, 9_000, 8_000, 100, 0]
            .into_iter()
            .map(|n| e.ebbed(n))
            .collect();
        assert_eq!(seen, [false, false, false, true, false, false]);
    }
}
