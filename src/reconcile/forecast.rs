//! Demand that repeats (`VMPOOL_DEMAND_PERIOD_SECS`): each pool's claims over the last
//! period, counted in [`SLOTS`] slots, and the forecast they give of the claims about to
//! come. A burst that came at 20:30 yesterday, or at half past the last hour, is covered by
//! standby VMs launched before it comes again; the demand window alone sees a burst only
//! once it has come, and then only as a rate.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::plan::to_time;
use crate::store::Versioned;

/// The period is cut into this many slots (30 s each for an hour, 12 min for a day): the
/// record stays small whatever the period.
pub const SLOTS: usize = 120;

/// Claims newer than this are left to the next pass: a claim is stamped before its row is
/// written, so the newest ones may not be in this pass's listing yet.
const SETTLE: Duration = Duration::seconds(15);

/// One pool's claims per slot over the last period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimHistory {
    /// The period the slots cut (seconds); a history of another period is started afresh.
    #[serde(default)]
    pub period_secs: u64,
    /// Claims counted up to (and including) this time.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub counted_until: Option<OffsetDateTime>,
    /// Claims per slot, slot `k` (from the Unix epoch) at index `k % SLOTS`: each holds the
    /// newest occurrence of its slot, so the slots ahead of now still hold one period ago.
    #[serde(default)]
    pub counts: Vec<u32>,
}

impl ClaimHistory {
    /// Whether nothing was ever counted (the record leaves it out).
    pub fn is_empty(&self) -> bool {
        self.counted_until.is_none()
    }

    /// Counts the claims of `rows` stamped since the last count, up to a little before
    /// `now`. Idempotent: a pass whose record is dropped leaves the count where it was, and
    /// the next one counts the same claims again.
    pub fn record<'a>(
        &mut self,
        claims: impl Iterator<Item = &'a Versioned>,
        now: OffsetDateTime,
        period: std::time::Duration,
    ) {
        let period_secs = period.as_secs();
        let until = now - SETTLE;
        let length = slot_length(period);
        // Counted up to a later time already (another instance's clock runs ahead): the
        // claims up to then stay counted, and the next pass goes on from there.
        if self.period_secs == period_secs && self.counted_until.is_some_and(|from| from >= until) {
            return;
        }
        let fresh = self.period_secs != period_secs
            || self.counts.len() != SLOTS
            || self
                .counted_until
                .is_none_or(|from| until - from >= to_time(period));
        let from = if fresh {
            // Started afresh: what the rows still show of the last period (a VM claimed
            // again shows its newest claim only).
            *self = ClaimHistory {
                period_secs,
                counted_until: None,
                counts: vec![0; SLOTS],
            };
            until - to_time(period) + Duration::seconds_f64(length)
        } else {
            let from = self.counted_until.unwrap_or(until);
            // The slots entered since the last count start over: they held one period ago.
            for k in slot(from, length) + 1..=slot(until, length) {
                self.counts[index(k)] = 0;
            }
            from
        };
        for at in claims.filter_map(|r| r.vm.claimed_at) {
            if at > from && at <= until {
                let i = index(slot(at, length));
                self.counts[i] = self.counts[i].saturating_add(1);
            }
        }
        self.counted_until = Some(until);
    }

    /// The claims expected in the next `ahead` after `now`: those of one period ago, in the
    /// slots that begin within it. A slot that has begun is left out, so that a burst being
    /// served is not asked for again.
    pub fn forecast(
        &self,
        now: OffsetDateTime,
        ahead: std::time::Duration,
        period: std::time::Duration,
    ) -> u32 {
        if self.period_secs != period.as_secs() || self.counts.len() != SLOTS {
            return 0;
        }
        let Some(counted) = self.counted_until else {
            return 0;
        };
        let length = slot_length(period);
        let ahead = to_time(ahead.min(period / 2));
        // Slots after the last counted one hold one period ago; those up to it, this period.
        let first = slot(now, length).max(slot(counted, length)) + 1;
        let last = slot(now + ahead, length);
        (first..=last).fold(0u32, |sum, k| sum.saturating_add(self.counts[index(k)]))
    }
}

/// The length of one slot of `period`.
fn slot_length(period: std::time::Duration) -> f64 {
    period.as_secs_f64().max(1.0) / SLOTS as f64
}

/// The slot `t` falls in, counted from the Unix epoch.
fn slot(t: OffsetDateTime, length: f64) -> i64 {
    // Whole slots since 1970 fit an i64 many times over.
    #[expect(clippy::cast_possible_truncation, reason = "bounded")]
    let k = ((t - OffsetDateTime::UNIX_EPOCH).as_seconds_f64() / length).floor() as i64;
    k
}

/// Where slot `k` is kept.
fn index(k: i64) -> usize {
    // SLOTS fits an i64, and rem_euclid is never negative.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "bounded"
    )]
    let i = k.rem_euclid(SLOTS as i64) as usize;
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Purpose, VmId, VmRecord};

    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);
    const AHEAD: std::time::Duration = std::time::Duration::from_secs(240);

    fn t0() -> OffsetDateTime {
        time::macros::datetime!(2026-01-01 00:00 UTC)
    }

    /// Rows claimed at these seconds from `t0`.
    fn claims(at: impl IntoIterator<Item = i64>) -> Vec<Versioned> {
        at.into_iter()
            .enumerate()
            .map(|(i, secs)| {
                let mut vm = VmRecord::new_creating(
                    VmId::parse(&format!("vm-{i}")).unwrap(),
                    format!("/x/vm-{i}"),
                    Purpose::Matchmaker,
                    t0(),
                );
                vm.claimed_at = Some(t0() + Duration::seconds(secs));
                Versioned {
                    vm,
                    etag: crate::store::Etag("e".into()),
                }
            })
            .collect()
    }

    /// Passes every 30 s from `from` to `to` (seconds from `t0`), each seeing `rows`.
    fn passes(history: &mut ClaimHistory, rows: &[Versioned], from: i64, to: i64) {
        for s in (from..=to).step_by(30) {
            history.record(rows.iter(), t0() + Duration::seconds(s), HOUR);
        }
    }

    #[test]
    fn a_burst_is_forecast_one_period_later_until_its_slot_begins() {
        // 50 claims at 30:00-30:04 and one at 10:00, seen by passes every 30 s.
        let burst = 1800;
        let rows = claims((0..50).map(|i| burst + i % 5).chain([600]));
        let mut h = ClaimHistory::default();
        passes(&mut h, &rows, 0, 3000);
        let at = |secs: i64| h.forecast(t0() + Duration::seconds(HOUR_SECS + secs), AHEAD, HOUR);
        // Nothing ahead an hour later at 00:00; the claim of 10:00 when 10:00 is near.
        assert_eq!(at(0), 0);
        assert_eq!(at(600 - 100), 1);
        // The burst from 240 s before it (the slot it falls in begins at 30:00) until
        // that slot begins; then it is being served and asked for no more.
        assert_eq!(at(burst - 250), 0);
        assert_eq!(at(burst - 240), 50);
        assert_eq!(at(burst - 1), 50);
        assert_eq!(at(burst), 0);
        assert_eq!(at(burst + 10), 0);
    }

    const HOUR_SECS: i64 = 3600;

    #[test]
    fn counting_again_what_was_counted_changes_nothing() {
        let rows = claims([100, 101, 700]);
        let mut once = ClaimHistory::default();
        passes(&mut once, &rows, 0, 900);
        let mut twice = ClaimHistory::default();
        passes(&mut twice, &rows, 0, 900);
        // A pass whose record was dropped: the next one starts from the same count.
        let kept = twice.clone();
        passes(&mut twice, &rows, 930, 930);
        twice = kept;
        passes(&mut twice, &rows, 930, 930);
        passes(&mut once, &rows, 930, 930);
        assert_eq!(once, twice);
        assert_eq!(once.counts.iter().sum::<u32>(), 3);
    }

    #[test]
    fn each_period_replaces_the_one_before() {
        // Claims at 05:00 in the first hour only.
        let rows = claims([300, 301]);
        let mut h = ClaimHistory::default();
        passes(&mut h, &rows, 0, 3600 + 200);
        let near =
            |h: &ClaimHistory, secs: i64| h.forecast(t0() + Duration::seconds(secs), AHEAD, HOUR);
        assert_eq!(near(&h, 3600 + 200), 2);
        // An hour on without those claims (the rows moved on): nothing is forecast.
        let later: Vec<Versioned> = Vec::new();
        passes(&mut h, &later, 3600 + 230, 2 * 3600 + 200);
        assert_eq!(near(&h, 2 * 3600 + 200), 0);
    }

    #[test]
    fn a_pass_on_a_clock_behind_the_count_keeps_it() {
        let rows = claims([100, 400]);
        let mut h = ClaimHistory::default();
        passes(&mut h, &rows, 0, 600);
        let counted = h.clone();
        // Another instance, 20 s behind.
        h.record(rows.iter(), t0() + Duration::seconds(580), HOUR);
        assert_eq!(h, counted);
        passes(&mut h, &rows, 630, 630);
        assert_eq!(h.counts.iter().sum::<u32>(), 2);
    }

    #[test]
    fn a_history_started_afresh_takes_what_the_rows_show_of_the_last_period() {
        // No record (lost, or the period just set): one pass an hour after a burst.
        let rows = claims((0..20).map(|i| 1800 + i % 3));
        let mut h = ClaimHistory::default();
        let now = t0() + Duration::seconds(3600 + 1800 - 200);
        h.record(rows.iter(), now, HOUR);
        assert_eq!(h.forecast(now, AHEAD, HOUR), 20);
        // Another period: the history of the first is not read as the second's.
        assert_eq!(
            h.forecast(now, AHEAD, std::time::Duration::from_secs(7200)),
            0
        );
        // A gap of a period or more without a pass starts it afresh too.
        let mut gap = h.clone();
        gap.record(std::iter::empty(), now + Duration::hours(2), HOUR);
        assert_eq!(gap.counts.iter().sum::<u32>(), 0);
    }
}
