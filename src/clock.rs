//! Time as a parameter: the service reads the time through [`Clock`], so tests and the pool
//! simulation move a [`ManualClock`] instead of sleeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use time::{Duration, OffsetDateTime};

/// A wait on a clock, as [`Clock::sleep`] returns it.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where the current time comes from.
pub trait Clock: Send + Sync {
    /// The current time, in UTC.
    fn now(&self) -> OffsetDateTime;

    /// A reading that never goes back (unlike the wall clock), for deadlines this process
    /// judges by itself, such as how long its reconcile lease still holds: the time since an
    /// arbitrary fixed point.
    fn monotonic(&self) -> std::time::Duration;

    /// Waits until [`Clock::monotonic`] has moved on by `by`.
    fn sleep(&self, by: std::time::Duration) -> Sleep;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn monotonic(&self) -> std::time::Duration {
        static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
        ORIGIN.get_or_init(std::time::Instant::now).elapsed()
    }

    fn sleep(&self, by: std::time::Duration) -> Sleep {
        Box::pin(tokio::time::sleep(by))
    }
}

#[derive(Debug)]
struct Hands {
    now: OffsetDateTime,
    /// How far the clock has moved forward since it was made (never back).
    moved: std::time::Duration,
}

/// A clock that moves only when told to; [`Clock::sleep`] on it ends when it is moved far
/// enough.
#[derive(Debug, Clone)]
pub struct ManualClock {
    hands: Arc<Mutex<Hands>>,
    moved: Arc<tokio::sync::Notify>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: OffsetDateTime) -> Self {
        ManualClock {
            hands: Arc::new(Mutex::new(Hands {
                now: start,
                moved: std::time::Duration::ZERO,
            })),
            moved: Arc::new(tokio::sync::Notify::new()),
        }
    }

    fn hands(&self) -> std::sync::MutexGuard<'_, Hands> {
        self.hands.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        {
            let mut hands = self.hands();
            hands.now += by;
            if let Ok(forward) = std::time::Duration::try_from(by) {
                hands.moved += forward;
            }
        }
        self.moved.notify_waiters();
    }

    /// Sets the clock to `to` (its monotonic reading only moves forward).
    pub fn set(&self, to: OffsetDateTime) {
        {
            let mut hands = self.hands();
            if let Ok(forward) = std::time::Duration::try_from(to - hands.now) {
                hands.moved += forward;
            }
            hands.now = to;
        }
        self.moved.notify_waiters();
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new(time::macros::datetime!(2026-01-01 00:00 UTC))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        self.hands().now
    }

    fn monotonic(&self) -> std::time::Duration {
        self.hands().moved
    }

    fn sleep(&self, by: std::time::Duration) -> Sleep {
        let clock = self.clone();
        let until = self.monotonic() + by;
        Box::pin(async move {
            loop {
                let moved = clock.moved.notified();
                if clock.monotonic() >= until {
                    return;
                }
                moved.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_sleep_ends_when_the_clock_is_moved_far_enough() {
        let clock = ManualClock::default();
        let mut sleep = tokio::spawn(clock.sleep(std::time::Duration::from_secs(10)));
        clock.advance(Duration::seconds(9));
        tokio::task::yield_now().await;
        assert!(!sleep.is_finished());
        clock.set(clock.now() - Duration::seconds(100));
        assert_eq!(
            clock.monotonic(),
            std::time::Duration::from_secs(9),
            "never back"
        );
        clock.advance(Duration::seconds(1));
        tokio::time::timeout(std::time::Duration::from_secs(5), &mut sleep)
            .await
            .expect("woken by the clock")
            .unwrap();
    }
}
