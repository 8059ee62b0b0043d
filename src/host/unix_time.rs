//! Wall-clock times as Unix time, for what is written out (metrics, token files, JWT claims,
//! markers) or compared with a peer's Unix times.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long after 1970-01-01 UTC `t` is; zero for an earlier time (a clock set back that far
/// is read as the epoch rather than failing).
pub fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_the_epoch_is_the_epoch() {
        let t = UNIX_EPOCH + Duration::from_millis(1500);
        assert_eq!(since_epoch(t), Duration::from_millis(1500));
        assert_eq!(
            since_epoch(UNIX_EPOCH - Duration::from_secs(1)),
            Duration::ZERO
        );
    }
}
