//! When to refresh and when to retry: pure functions of the policy, the token's lifetime, the
//! failure count and a random draw, so they are tested directly and the actor only applies them.

use std::time::Duration;

use tokio::time::Instant;

use crate::refresh::RefreshPolicy;

/// No schedule fires sooner than this after the previous request, whatever a token claims:
/// a token that lives one second must not turn tokend into a busy loop.
pub const MIN_DELAY: Duration = Duration::from_secs(1);

/// No schedule waits longer than this, whatever the provider or the config says: it keeps every
/// `Instant` and `SystemTime` sum in range, and every wake-up within the timer wheel's range
/// (about 2.2 years, beyond which `tokio_util`'s `DelayQueue` panics).
pub const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// `now + delay`, with `delay` at most [`MAX_WAIT`]: a provider's number never overflows it.
pub fn after(now: Instant, delay: Duration) -> Instant {
    now.checked_add(delay.min(MAX_WAIT)).unwrap_or(now)
}

/// The part of the endpoint's `Retry-After` that is honoured: at most `retry_after_max`.
pub fn honoured_retry_after(policy: &RefreshPolicy, asked: Option<Duration>) -> Duration {
    asked.unwrap_or_default().min(policy.retry_after_max)
}

/// Delay from receiving a token of `lifetime` until refreshing it. `draw` is uniform in [0, 1).
///
/// The refresh lands at a random point of `lifetime_fraction` (default 70-80%) of the lifetime,
/// so that tokens fetched together are not refreshed together, and never later than `margin`
/// before expiry; for tokens shorter than four margins the margin shrinks to a quarter of the
/// lifetime, so a short-lived token is still used for most of its life.
pub fn refresh_delay(policy: &RefreshPolicy, lifetime: Duration, draw: f64) -> Duration {
    let [lo, hi] = policy.lifetime_fraction;
    let fraction = lo + (hi - lo) * draw.clamp(0.0, 1.0);
    let jittered = lifetime.mul_f64(fraction);
    let margin = policy.margin.min(lifetime / 4);
    jittered.min(lifetime.saturating_sub(margin)).max(MIN_DELAY)
}

/// Delay before retry number `failures` (1 for the first failure) after a transient error:
/// exponential from `backoff_min`, capped at `backoff_max`, with full jitter: uniform between
/// `backoff_min` and the nominal delay, which spreads clients that failed together the most
/// widely (the floor keeps a failing client from retrying in a tight loop). `retry_after` from
/// the endpoint is honoured up to `retry_after_max`, never undercut.
pub fn backoff_delay(
    policy: &RefreshPolicy,
    failures: u32,
    retry_after: Option<Duration>,
    draw: f64,
) -> Duration {
    let exp = failures.saturating_sub(1).min(32);
    let nominal = policy
        .backoff_min
        .saturating_mul(1u32 << exp.min(31))
        .min(policy.backoff_max);
    let jittered =
        policy.backoff_min + (nominal - policy.backoff_min).mul_f64(draw.clamp(0.0, 1.0));
    jittered
        .max(honoured_retry_after(policy, retry_after))
        .max(MIN_DELAY)
}

/// Delay before retrying credentials or a grant the endpoint rejected: `operator_retry`, or
/// longer if the endpoint asked for it with `Retry-After` (up to `retry_after_max`).
pub fn operator_delay(policy: &RefreshPolicy, retry_after: Option<Duration>) -> Duration {
    policy
        .operator_retry
        .max(honoured_retry_after(policy, retry_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn five_minute_token_refreshes_between_70_and_80_percent() {
        let p = RefreshPolicy::default();
        assert_eq!(refresh_delay(&p, secs(300), 0.0), secs(210));
        assert_eq!(refresh_delay(&p, secs(300), 0.999_999).as_secs(), 239);
        // The seed asks for at least 30 s before expiry: 60-90 s it is.
        for i in 0..=10 {
            let d = refresh_delay(&p, secs(300), i as f64 / 10.0);
            assert!(secs(300) - d >= secs(30), "{d:?}");
        }
    }

    #[test]
    fn margin_caps_late_fractions_and_shrinks_for_short_tokens() {
        let p = RefreshPolicy {
            lifetime_fraction: [0.9, 0.95],
            margin: secs(120),
            ..RefreshPolicy::default()
        };
        // 0.9 * 1000 = 900 > 1000 - 120: the margin wins.
        assert_eq!(refresh_delay(&p, secs(1000), 0.0), secs(880));
        // A 20 s token: margin is 5 s, so refresh at 15 s, not at -10 s.
        assert_eq!(refresh_delay(&p, secs(20), 0.5), secs(15));
        let d = refresh_delay(&RefreshPolicy::default(), secs(4), 0.5);
        assert_eq!(d, Duration::from_millis(3000));
    }

    #[test]
    fn tiny_lifetimes_never_spin() {
        let p = RefreshPolicy::default();
        assert_eq!(refresh_delay(&p, Duration::ZERO, 0.5), MIN_DELAY);
        assert_eq!(
            refresh_delay(&p, Duration::from_millis(300), 0.5),
            MIN_DELAY
        );
    }

    #[test]
    fn backoff_doubles_within_bounds_with_jitter() {
        let p = RefreshPolicy {
            backoff_min: secs(1),
            backoff_max: secs(60),
            ..RefreshPolicy::default()
        };
        // Uniform between backoff_min and the nominal delay, which doubles per failure.
        assert_eq!(backoff_delay(&p, 1, None, 0.9), secs(1));
        assert_eq!(backoff_delay(&p, 2, None, 0.0), secs(1));
        assert_eq!(backoff_delay(&p, 2, None, 1.0), secs(2));
        assert_eq!(backoff_delay(&p, 4, None, 0.0), secs(1)); // 8 s nominal
        assert_eq!(backoff_delay(&p, 4, None, 0.5), Duration::from_millis(4500));
        assert_eq!(backoff_delay(&p, 30, None, 1.0), secs(60));
        assert_eq!(
            backoff_delay(&p, u32::MAX, None, 0.5),
            Duration::from_millis(30500)
        );
    }

    #[test]
    fn retry_after_is_never_undercut() {
        let p = RefreshPolicy::default();
        assert_eq!(backoff_delay(&p, 1, Some(secs(120)), 0.3), secs(120));
        assert_eq!(backoff_delay(&p, 10, Some(secs(2)), 1.0), secs(60));
    }

    #[test]
    fn retry_after_is_capped_by_the_policy() {
        let p = RefreshPolicy::default();
        let years = Some(secs(3 * 365 * 86_400));
        assert_eq!(backoff_delay(&p, 1, years, 0.3), secs(600));
        assert_eq!(backoff_delay(&p, 1, Some(Duration::MAX), 0.3), secs(600));
        assert_eq!(operator_delay(&p, Some(Duration::MAX)), secs(600));
        assert_eq!(operator_delay(&p, Some(secs(2))), secs(300));
        assert_eq!(operator_delay(&p, None), secs(300));
    }

    #[test]
    fn time_sums_saturate_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::MAX), now + MAX_WAIT);
        assert_eq!(after(now, secs(5)), now + secs(5));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn policy() -> impl Strategy<Value = RefreshPolicy> {
            (
                0.1f64..=0.95,
                0.0f64..=1.0,
                0u64..=600,
                1u64..=60,
                1u64..=3600,
            )
                .prop_map(|(lo, span, margin, min, extra)| RefreshPolicy {
                    lifetime_fraction: [lo, lo + (0.95 - lo) * span],
                    margin: Duration::from_secs(margin),
                    backoff_min: Duration::from_secs(min),
                    backoff_max: Duration::from_secs(min + extra),
                    ..RefreshPolicy::default()
                })
        }

        proptest! {
            #[test]
            fn refresh_comes_before_expiry_when_the_lifetime_allows(
                p in policy(),
                lifetime_ms in 0u64..=100_000_000,
                draw in 0.0f64..1.0,
            ) {
                let lifetime = Duration::from_millis(lifetime_ms);
                let d = refresh_delay(&p, lifetime, draw);
                prop_assert!(d >= MIN_DELAY);
                if lifetime > MIN_DELAY {
                    prop_assert!(d < lifetime, "{d:?} !< {lifetime:?}");
                    // ...and not needlessly early: at least the lower fraction, or 3/4 of the
                    // lifetime when the margin pulls it forward.
                    let floor = lifetime.mul_f64(p.lifetime_fraction[0].min(0.75));
                    prop_assert!(d + Duration::from_millis(1) >= floor.min(lifetime - MIN_DELAY));
                }
            }

            #[test]
            fn backoff_stays_within_bounds_and_honours_retry_after(
                p in policy(),
                failures in 1u32..=u32::MAX,
                retry_after in proptest::option::of(0u64..=100_000),
                draw in 0.0f64..1.0,
            ) {
                let retry_after = retry_after.map(Duration::from_secs);
                let d = backoff_delay(&p, failures, retry_after, draw);
                prop_assert!(d >= p.backoff_min);
                let honoured = retry_after.unwrap_or_default().min(p.retry_after_max);
                prop_assert!(d >= honoured);
                prop_assert!(d <= p.backoff_max.max(honoured));
            }
        }
    }
}
