//! Latency statistics: nearest-rank percentiles over recorded samples.

use std::time::Duration;

use serde::Serialize;

/// A pass's latencies summarised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Operations.
    pub count: usize,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Largest latency, ms.
    pub max_ms: f64,
    /// Operations per second over the pass's wall time.
    pub ops_per_s: f64,
}

/// The nearest-rank `p`th percentile (0 < p ≤ 100) of sorted samples; zero for none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Summarises `samples` taken over `wall`.
pub fn summarize(mut samples: Vec<Duration>, wall: Duration) -> Summary {
    samples.sort_unstable();
    let secs = wall.as_secs_f64();
    Summary {
        count: samples.len(),
        p50_ms: ms(percentile(&samples, 50.0)),
        p99_ms: ms(percentile(&samples, 99.0)),
        max_ms: ms(samples.last().copied().unwrap_or_default()),
        ops_per_s: if secs > 0.0 {
            (samples.len() as f64 / secs * 10.0).round() / 10.0
        } else {
            0.0
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_vec(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn nearest_rank() {
        let s = ms_vec(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&s, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&s, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&s, 100.0), Duration::from_millis(100));
        let s = ms_vec(&[7]);
        assert_eq!(percentile(&s, 50.0), Duration::from_millis(7));
        assert_eq!(percentile(&s, 99.0), Duration::from_millis(7));
        let s = ms_vec(&[1, 2, 3]);
        assert_eq!(percentile(&s, 50.0), Duration::from_millis(2));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn summaries_sort_and_rate() {
        let s = summarize(ms_vec(&[5, 1, 3, 2, 4]), Duration::from_secs(2));
        assert_eq!(s.count, 5);
        assert_eq!(s.p50_ms, 3.0);
        assert_eq!(s.p99_ms, 5.0);
        assert_eq!(s.max_ms, 5.0);
        assert_eq!(s.ops_per_s, 2.5);
        assert_eq!(summarize(Vec::new(), Duration::ZERO).ops_per_s, 0.0);
    }
}
