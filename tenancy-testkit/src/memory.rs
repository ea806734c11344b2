//! How much memory a piece of work needs: the rise of the process's peak
//! resident set (Linux `VmHWM`, reset through `/proc/self/clear_refs`)
//! above its resident set before the work. For tests that show memory is
//! bounded by a constant, not by the data (streaming backups and restores).
//!
//! The peak is per process: give such a test a binary of its own, so no
//! other test runs beside it.
//!
//! ```no_run
//! # async fn f() -> Result<(), tenancy_testkit::TestkitError> {
//! let (rows, kib) = tenancy_testkit::memory::peak_growth_kib(async || {
//!     (0..1_000u32).map(|i| i.to_string()).collect::<Vec<_>>().len()
//! })
//! .await?;
//! assert_eq!(rows, 1_000);
//! assert!(kib < 16 * 1024);
//! # Ok(()) }
//! ```

use crate::TestkitError;

fn status_kib(field: &str) -> Result<u64, TestkitError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| TestkitError::Memory(format!("/proc/self/status: {e}")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| TestkitError::Memory(format!("no {field} in /proc/self/status")))
}

/// Runs `work` and returns its output and how far the peak resident set
/// rose above the resident set before it, in KiB.
pub async fn peak_growth_kib<T>(work: impl AsyncFnOnce() -> T) -> Result<(T, u64), TestkitError> {
    // Writing 5 resets the peak to the current resident set (Linux ≥ 4.0).
    std::fs::write("/proc/self/clear_refs", "5")
        .map_err(|e| TestkitError::Memory(format!("/proc/self/clear_refs: {e}")))?;
    let before = status_kib("VmRSS:")?;
    let out = work().await;
    let peak = status_kib("VmHWM:")?;
    Ok((out, peak.saturating_sub(before)))
}
