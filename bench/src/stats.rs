//! Latency samples and their summary.

/// Durations in milliseconds, plus failures.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    pub ms: Vec<f64>,
    pub errors: usize,
    /// The first few error messages, for the report.
    pub error_examples: Vec<String>,
}

impl Samples {
    pub fn push(&mut self, ms: f64) {
        self.ms.push(ms);
    }

    pub fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.error_examples.len() < 3 {
            let mut s = e.to_string().replace('\n', " ");
            s.truncate(300);
            self.error_examples.push(s);
        }
    }

    pub fn n(&self) -> usize {
        self.ms.len()
    }

    /// Nearest-rank percentile; NaN when empty.
    pub fn pct(&self, p: f64) -> f64 {
        let mut v = self.ms.clone();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }

    pub fn p50(&self) -> f64 {
        self.pct(50.0)
    }

    pub fn p99(&self) -> f64 {
        self.pct(99.0)
    }

    pub fn mean(&self) -> f64 {
        if self.ms.is_empty() {
            return f64::NAN;
        }
        self.ms.iter().sum::<f64>() / self.ms.len() as f64
    }

    pub fn min(&self) -> f64 {
        self.ms.iter().copied().fold(f64::NAN, f64::min)
    }

    pub fn max(&self) -> f64 {
        self.ms.iter().copied().fold(f64::NAN, f64::max)
    }
}

/// How many of `n` runs go into round `r` of `rounds` (spread evenly).
pub fn share(n: usize, rounds: usize, r: usize) -> usize {
    n * (r + 1) / rounds - n * r / rounds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s = Samples {
            ms: (1..=100).map(f64::from).collect(),
            ..Default::default()
        };
        assert_eq!(s.p50(), 50.0);
        assert_eq!(s.p99(), 99.0);
        assert_eq!(s.pct(100.0), 100.0);
        assert_eq!(s.mean(), 50.5);
        assert_eq!((0..7).map(|r| share(100, 7, r)).sum::<usize>(), 100);
    }
}
