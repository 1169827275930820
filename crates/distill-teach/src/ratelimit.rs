//! Requests-per-minute and tokens-per-minute limits as token buckets, so a job stays under
//! the provider account's limits instead of collecting 429s.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bucket refilled continuously at `per_minute / 60` per second, holding at most one
/// second's worth (at least one request's worth), so bursts stay small.
#[derive(Debug)]
struct Bucket {
    per_second: f64,
    capacity: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(per_minute: u32) -> Option<Self> {
        if per_minute == 0 {
            return None;
        }
        let per_second = per_minute as f64 / 60.0;
        let capacity = per_second.max(1.0);
        Some(Bucket {
            per_second,
            capacity,
            state: Mutex::new((capacity, Instant::now())),
        })
    }

    /// Takes `n` now (going into debt) and returns how long the caller must wait to be
    /// within the limit; taking first keeps waiters in arrival order.
    fn reserve(&self, n: f64) -> Duration {
        let n = n.min(self.capacity);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(st.1).as_secs_f64() * self.per_second;
        st.0 = (st.0 + refill).min(self.capacity) - n;
        st.1 = now;
        if st.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-st.0 / self.per_second)
        }
    }
}

#[derive(Debug)]
pub struct RateLimiter {
    rpm: Option<Bucket>,
    tpm: Option<Bucket>,
    /// Tokens all requests so far were counted as, so tests can check the estimate.
    tokens_reserved: std::sync::atomic::AtomicU64,
}

impl RateLimiter {
    /// 0 means unlimited.
    pub fn new(rpm: u32, tpm: u32) -> Self {
        RateLimiter {
            rpm: Bucket::new(rpm),
            tpm: Bucket::new(tpm),
            tokens_reserved: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How long to wait before sending a request estimated at `tokens` tokens.
    pub fn reserve(&self, tokens: u64) -> Duration {
        self.tokens_reserved
            .fetch_add(tokens, std::sync::atomic::Ordering::Relaxed);
        let a = self
            .rpm
            .as_ref()
            .map(|b| b.reserve(1.0))
            .unwrap_or_default();
        let b = self
            .tpm
            .as_ref()
            .map(|b| b.reserve(tokens as f64))
            .unwrap_or_default();
        a.max(b)
    }

    /// Total tokens counted against the token limit so far.
    pub fn tokens_reserved(&self) -> u64 {
        self.tokens_reserved
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn acquire(&self, tokens: u64) {
        let wait = self.reserve(tokens);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_requests_at_the_rpm() {
        let l = RateLimiter::new(60, 0); // 1 per second, burst 1
        assert_eq!(l.reserve(0), Duration::ZERO);
        let w1 = l.reserve(0);
        let w2 = l.reserve(0);
        assert!(
            w1 > Duration::from_millis(900) && w1 <= Duration::from_secs(1),
            "{w1:?}"
        );
        assert!(w2 > Duration::from_millis(1900), "{w2:?}");
        assert_eq!(RateLimiter::new(0, 0).reserve(1_000_000), Duration::ZERO);
    }

    #[test]
    fn tpm_limits_by_tokens() {
        let l = RateLimiter::new(0, 6000); // 100 tokens/s
        assert_eq!(l.reserve(100), Duration::ZERO);
        let w = l.reserve(50);
        assert!(
            w >= Duration::from_millis(400) && w <= Duration::from_millis(500),
            "{w:?}"
        );
    }
}
