//! How long appends wait for their outcome: a fixed-bucket histogram the group-commit writer
//! fills without a lock (one atomic add per bucket, sum and count), read by whoever reports it
//! (the service's `/metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The buckets' upper bounds in seconds: 250 µs doubling to about 8 s (and +Inf beyond).
pub const APPEND_BUCKETS: [f64; 16] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    2.048, 4.096, 8.192,
];

/// Append latencies: one count per bucket (not cumulative), the sum and the count.
#[derive(Debug, Default)]
pub(crate) struct Latency {
    buckets: [AtomicU64; APPEND_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

/// A reading of the append latencies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppendLatency {
    /// `(upper bound in seconds, appends at or under it)`, cumulative, in [`APPEND_BUCKETS`]
    /// order; appends over the last bound are in `count` only.
    pub buckets: Vec<(f64, u64)>,
    /// The appends' total time in seconds.
    pub sum_seconds: f64,
    /// Appends timed (each call of [`crate::Store::append_all`] with at least one valid
    /// append counts once).
    pub count: u64,
}

impl Latency {
    pub(crate) fn observe(&self, took: Duration) {
        let s = took.as_secs_f64();
        let i = APPEND_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(APPEND_BUCKETS.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> AppendLatency {
        let mut running = 0u64;
        let buckets = APPEND_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| {
                running += n.load(Ordering::Relaxed);
                (*bound, running)
            })
            .collect();
        // The count is read last: it is never below the buckets' sum.
        let sum_nanos = self.sum_nanos.load(Ordering::Relaxed);
        let count = self.count.load(Ordering::Relaxed).max(running);
        #[allow(clippy::cast_precision_loss)]
        let sum_seconds = sum_nanos as f64 / 1e9;
        AppendLatency {
            buckets,
            sum_seconds,
            count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_append_lands_in_its_bucket_and_the_reading_is_cumulative() {
        let l = Latency::default();
        l.observe(Duration::from_micros(100));
        l.observe(Duration::from_micros(250));
        l.observe(Duration::from_millis(3));
        l.observe(Duration::from_secs(20));
        let r = l.read();
        assert_eq!(r.count, 4);
        assert_eq!(r.buckets[0], (0.000_25, 2));
        assert_eq!(r.buckets[2], (0.001, 2));
        assert_eq!(r.buckets[3], (0.002, 2));
        assert_eq!(r.buckets[4], (0.004, 3));
        assert_eq!(r.buckets.last(), Some(&(8.192, 3)));
        assert!((r.sum_seconds - 20.003_35).abs() < 1e-9);
    }
}
