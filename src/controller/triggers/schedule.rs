//! The arithmetic of polling: what makes two watches one target, how often
//! a target is polled, how far errors and rate limits push it back, and
//! the jitter that spreads polls. Pure: no clock, no I/O.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// `spec.triggers.interval` when the spec gives none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// No target is polled more often than this (the spec's `at least 1m`).
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);
/// Errors and rate limits never push a target back further than this
/// (unless its interval is longer), nor does a registry's `Retry-After`.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60 * 60);
/// The first poll of a new target comes within this (or half its
/// interval, if shorter), so that many builds appearing at once (an
/// operator start) do not poll in one burst.
pub const FIRST_POLL_SPREAD: Duration = Duration::from_secs(30);

/// SHA-256 of credentials: what tells two watchers' access apart without
/// keeping the secret in a key or a log.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Of `parts`, each length-prefixed (so `("ab", "c")` ≠ `("a", "bc")`).
    /// No parts (anonymous) is a fingerprint of its own.
    pub fn of(parts: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update((parts.len() as u64).to_be_bytes());
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        Fingerprint(hasher.finalize().into())
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({})", hex::encode(&self.0[..6]))
    }
}

/// One thing polled, however many builds watch it: builds share a target
/// only when everything that could change the answer (or whether they may
/// see it) is equal.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum TargetKey {
    Image {
        /// Normalised (`busybox` is `docker.io/library/busybox:latest`).
        reference: String,
        /// Normalised (`linux/amd64`).
        platform: String,
        insecure: bool,
        credentials: Fingerprint,
    },
    Git {
        url: String,
        /// As given; empty for the remote's HEAD.
        revision: String,
        credentials: Fingerprint,
    },
}

/// The interval a watcher asks for, raised to the floor.
pub fn effective_interval(requested: Duration, floor: Duration) -> Duration {
    requested.max(floor)
}

/// A target's interval: the smallest its watchers ask for (each already
/// floored); `None` without watchers.
pub fn target_interval(watchers: impl IntoIterator<Item = Duration>) -> Option<Duration> {
    watchers.into_iter().min()
}

/// How long after its `failures`-th failure in a row (from 1) a target is
/// polled again: its interval, doubled per further failure, at most
/// [`MAX_BACKOFF`] (or the interval, if longer).
pub fn backoff(interval: Duration, failures: u32) -> Duration {
    let cap = MAX_BACKOFF.max(interval);
    let doublings = failures.saturating_sub(1).min(20);
    interval.saturating_mul(1 << doublings).min(cap)
}

/// How long a registry that answered 429 is left alone: its `Retry-After`
/// when it gave one (at most [`MAX_BACKOFF`]), else [`backoff`] by the
/// number of 429s in a row (`strikes`, from 1).
pub fn rate_limit_pause(
    retry_after: Option<Duration>,
    interval: Duration,
    strikes: u32,
) -> Duration {
    match retry_after {
        Some(after) => after.min(MAX_BACKOFF),
        None => backoff(interval, strikes),
    }
}

/// The delay to the next poll: the interval plus up to a tenth of it,
/// `unit` in `[0, 1)`. Never shorter than the interval: a target is
/// polled at most once per interval.
pub fn jittered(interval: Duration, unit: f64) -> Duration {
    interval + interval.mul_f64(unit.clamp(0.0, 1.0) / 10.0)
}

/// The delay to a new target's first poll, `unit` in `[0, 1)`.
pub fn first_delay(interval: Duration, unit: f64) -> Duration {
    (interval / 2)
        .min(FIRST_POLL_SPREAD)
        .mul_f64(unit.clamp(0.0, 1.0))
}

/// A number in `[0, 1)`, different each call (std's randomly seeded
/// hasher; jitter needs no better).
pub fn random_unit() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn credentials_tell_targets_apart_and_equal_ones_do_not() {
        let anonymous = Fingerprint::of(&[]);
        let alice = Fingerprint::of(&[b"{\"auths\":{\"r\":{\"auth\":\"YTpi\"}}}"]);
        let bob = Fingerprint::of(&[b"{\"auths\":{\"r\":{\"auth\":\"Yjpj\"}}}"]);
        assert_ne!(alice, bob);
        assert_ne!(alice, anonymous);
        assert_eq!(
            alice,
            Fingerprint::of(&[b"{\"auths\":{\"r\":{\"auth\":\"YTpi\"}}}"])
        );
        // The parts are delimited: a user and password cannot be shifted.
        assert_ne!(
            Fingerprint::of(&[b"ab", b"c"]),
            Fingerprint::of(&[b"a", b"bc"])
        );
        assert_ne!(Fingerprint::of(&[b""]), anonymous);
        let key = |credentials| TargetKey::Image {
            reference: "r/app:v1".into(),
            platform: "linux/amd64".into(),
            insecure: false,
            credentials,
        };
        assert_eq!(key(alice), key(alice));
        assert_ne!(key(alice), key(bob));
        // The fingerprint shows a prefix of the hash, never the secret.
        assert!(!format!("{alice:?}").contains("YTpi"));
    }

    #[test]
    fn a_target_is_polled_as_often_as_its_most_eager_watcher_and_no_more_than_the_floor() {
        assert_eq!(effective_interval(Duration::from_secs(10), MIN), MIN);
        assert_eq!(
            effective_interval(Duration::from_secs(300), MIN),
            Duration::from_secs(300)
        );
        let watchers = [300, 120, 600].map(Duration::from_secs);
        assert_eq!(target_interval(watchers), Some(Duration::from_secs(120)));
        assert_eq!(target_interval([]), None);
    }

    #[test]
    fn errors_back_off_exponentially_up_to_an_hour() {
        let five = Duration::from_secs(300);
        assert_eq!(backoff(five, 1), five);
        assert_eq!(backoff(five, 2), five * 2);
        assert_eq!(backoff(five, 4), five * 8);
        assert_eq!(backoff(five, 5), MAX_BACKOFF);
        assert_eq!(backoff(five, 1000), MAX_BACKOFF);
        // An interval longer than the cap is not shortened by an error.
        let day = Duration::from_secs(86_400);
        assert_eq!(backoff(day, 3), day);
    }

    #[test]
    fn a_rate_limit_honours_retry_after_else_backs_off() {
        let five = Duration::from_secs(300);
        assert_eq!(
            rate_limit_pause(Some(Duration::from_secs(2)), five, 1),
            Duration::from_secs(2)
        );
        assert_eq!(
            rate_limit_pause(Some(Duration::from_secs(86_400)), five, 1),
            MAX_BACKOFF
        );
        assert_eq!(rate_limit_pause(None, five, 1), five);
        assert_eq!(rate_limit_pause(None, five, 3), five * 4);
    }

    #[test]
    fn jitter_only_delays_and_by_at_most_a_tenth() {
        let five = Duration::from_secs(300);
        assert_eq!(jittered(five, 0.0), five);
        assert_eq!(jittered(five, 0.5), Duration::from_secs(315));
        assert!(jittered(five, 0.999_999) < Duration::from_secs(330));
        assert_eq!(first_delay(five, 0.0), Duration::ZERO);
        assert_eq!(first_delay(five, 0.5), Duration::from_secs(15));
        assert_eq!(
            first_delay(Duration::from_secs(1), 1.0),
            Duration::from_millis(500)
        );
        for _ in 0..1000 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
        assert_ne!(random_unit(), random_unit());
    }
}
