//! Time as the core and the server read it: one [`Clock`], the system's in production and a
//! [`ManualClock`] in tests, so that expiries (deletion dates, token windows, and later TOTP
//! steps and challenge lifetimes) are tested by moving time rather than by sleeping.

use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

const MS_PER_DAY: i64 = 86_400_000;

/// A point in time: milliseconds since the Unix epoch, the unit the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_millis(ms: i64) -> Timestamp {
        Timestamp(ms)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Whole seconds since the epoch (negative times count as 0).
    pub fn as_secs(self) -> u64 {
        u64::try_from(self.0 / 1000).unwrap_or(0)
    }

    pub fn plus_days(self, days: u32) -> Timestamp {
        Timestamp(self.0.saturating_add(i64::from(days) * MS_PER_DAY))
    }

    pub fn plus_millis(self, ms: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }

    /// RFC 3339 in UTC with millisecond precision where there is any (`2026-12-02T12:00:00Z`,
    /// `…:00.250Z`); empty for a time RFC 3339 cannot express.
    pub fn to_rfc3339(self) -> String {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default()
    }
}

/// Where the current time comes from.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        Timestamp(i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX))
    }
}

/// The system clock, shared.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(at: Timestamp) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicI64::new(at.0)))
    }

    pub fn set(&self, at: Timestamp) {
        self.0.store(at.0, Ordering::SeqCst);
    }

    pub fn advance_millis(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_rfc3339_utc() {
        assert_eq!(
            Timestamp::from_millis(0).to_rfc3339(),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            Timestamp::from_millis(1_764_676_800_250).to_rfc3339(),
            "2025-12-02T12:00:00.25Z"
        );
        assert_eq!(
            Timestamp::from_millis(1_000).plus_days(1).as_millis(),
            86_401_000
        );
    }

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(Timestamp::from_millis(5_000));
        assert_eq!(clock.now().as_secs(), 5);
        clock.advance_millis(2_500);
        assert_eq!(clock.now().as_millis(), 7_500);
        clock.set(Timestamp::from_millis(1));
        assert_eq!(clock.now().as_millis(), 1);
        let system = system().now().as_millis();
        assert!(
            system > 1_700_000_000_000,
            "the system clock reads real time"
        );
    }
}
