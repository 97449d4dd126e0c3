//! Giving freed memory back to the kernel after a flood of sessions.
//!
//! glibc's malloc keeps freed memory on its free lists and returns it only from the top of each
//! arena: after 2,000 sessions closed, the gateway still held all of the 156 MiB they had
//! grown it by, and a second flood grew it further (docs/benchmarks.md, *Flood*), while
//! `malloc_trim(0)` gave nearly all of it back. So when the live sessions have fallen well below
//! their recent peak, the gateway trims. Not on every close: a trim walks every arena's free
//! chunks under that arena's lock, so it runs at most once per check interval and only after a
//! real fall.

use std::{sync::Arc, time::Duration};

use super::Sessions;

/// How often the live session count is looked at.
const CHECK: Duration = Duration::from_secs(5);
/// A fall of at least this many sessions since the peak counts (or to none at all).
const MIN_FALL: usize = 64;

/// Whether `now` live sessions, after a peak of `peak` since the last trim, call for one: all
/// gone, or at least `MIN_FALL` fewer and a quarter below the peak. A rise never does.
fn worth_trimming(peak: usize, now: usize) -> bool {
    let fall = peak.saturating_sub(now);
    (now == 0 && peak > 0) || (fall >= MIN_FALL && now * 4 <= peak * 3)
}

/// Runs for the gateway's life.
pub async fn return_freed_memory(sessions: Arc<Sessions>) {
    let mut peak = sessions.count();
    let mut tick = tokio::time::interval(CHECK);
    loop {
        tick.tick().await;
        let now = sessions.count();
        peak = peak.max(now);
        if worth_trimming(peak, now) {
            let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            tracing::debug!(peak, now, released, "returned freed memory to the kernel");
            peak = now;
        }
    }
}

#[cfg(target_env = "gnu")]
fn trim() -> bool {
    // SAFETY: malloc_trim only walks and releases glibc's own free lists; no pointer is passed.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other C libraries (musl) return freed memory themselves, or have no such call.
#[cfg(not(target_env = "gnu"))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::worth_trimming;

    #[test]
    fn trims_after_a_real_fall_only() {
        assert!(worth_trimming(2000, 0));
        assert!(worth_trimming(1, 0));
        assert!(!worth_trimming(0, 0));
        assert!(worth_trimming(2000, 1000));
        assert!(!worth_trimming(2000, 1990), "a few closes are churn");
        assert!(!worth_trimming(100, 90));
        assert!(!worth_trimming(100, 80), "20 % is not a quarter");
        assert!(worth_trimming(400, 300));
        assert!(!worth_trimming(300, 400), "a rise never trims");
    }
}
