//! The clock seam. The scheduler reads the wall clock and sleeps until wall-clock instants only
//! through [`Clock`], so the schedule math and the scheduler loop are tested with [`FakeClock`]
//! (no real time passes) and the daemon uses [`SystemClock`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock instant.
    fn now(&self) -> DateTime<Utc>;
    /// Completes once the wall clock has reached `t` (at once if it has).
    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'static, ()>;
}

/// The system's real-time clock, slept on with tokio's timer.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

/// Longest single nap of [`SystemClock::sleep_until`]: tokio's timer runs on the monotonic clock,
/// so a step of the wall clock (NTP, an operator) is noticed within this time, not after the
/// whole sleep.
const MAX_NAP: Duration = Duration::from_secs(1);

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            loop {
                let left = match (t - Utc::now()).to_std() {
                    Ok(d) if !d.is_zero() => d,
                    _ => return,
                };
                tokio::time::sleep(left.min(MAX_NAP)).await;
            }
        })
    }
}

/// A clock that only moves when told to: for tests.
#[derive(Debug)]
pub struct FakeClock {
    now: watch::Sender<DateTime<Utc>>,
}

impl FakeClock {
    pub fn new(start: DateTime<Utc>) -> Arc<Self> {
        Arc::new(Self {
            now: watch::Sender::new(start),
        })
    }

    /// Moves the clock to `t` (never backwards) and wakes the sleepers whose time has come.
    pub fn set(&self, t: DateTime<Utc>) {
        self.now.send_if_modified(|now| {
            let moved = t > *now;
            if moved {
                *now = t;
            }
            moved
        });
    }

    pub fn advance(&self, d: Duration) {
        let now = *self.now.borrow();
        self.set(now + d);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'static, ()> {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; should it go, the sleep ends.
            let _ = rx.wait_for(|now| *now >= t).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[tokio::test]
    async fn fake_sleepers_wake_when_their_time_comes() {
        let t0 = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        let clock = FakeClock::new(t0);
        let sleep = clock.sleep_until(t0 + chrono::Duration::seconds(2));
        let task = tokio::spawn(sleep);
        clock.advance(Duration::from_secs(1));
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        clock.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("woken")
            .unwrap();
        // Never backwards; a past instant is no sleep at all.
        clock.set(t0);
        assert_eq!(clock.now(), t0 + chrono::Duration::seconds(2));
        clock.sleep_until(t0).await;
    }

    #[tokio::test]
    async fn system_sleep_ends_at_the_instant() {
        let target = Utc::now() + chrono::Duration::milliseconds(30);
        SystemClock.sleep_until(target).await;
        let now = Utc::now();
        assert!(now >= target, "{now} < {target}");
        SystemClock
            .sleep_until(now - chrono::Duration::seconds(1))
            .await;
    }
}
