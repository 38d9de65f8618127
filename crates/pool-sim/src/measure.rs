//! What a policy achieved on a trace: the waits, the billed VM time and the disk time of
//! deallocated VMs, the peak, and a timeline for plots. Every policy is measured by the same
//! [`Meter`], one tick per simulated second.

use serde::Serialize;

/// How long after the last request a run keeps going, so every session ends and the pools
/// settle.
pub const TAIL: i64 = 2 * 3600;

/// How often the timeline is sampled, in seconds.
pub const SAMPLE_EVERY: i64 = 60;

/// The disk-hours charged per hour of a deallocated VM, as a share of a VM-hour: a standard
/// SSD OS disk against a B2s VM is about 3%.
pub const DEFAULT_DISK_RATIO: f64 = 0.03;

/// The pool at one moment of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Seconds from the start.
    pub t: i64,
    /// VMs hosting a session.
    pub in_use: usize,
    /// VMs that would serve a request at once (warm and idle).
    pub ready: usize,
    /// VMs billed (not deallocated).
    pub billed: usize,
}

/// What a policy achieved on a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Requests served.
    pub served: usize,
    /// Total time players waited for capacity, in seconds.
    pub total_wait: i64,
    /// 95th percentile of the wait per request, in seconds.
    pub p95_wait: i64,
    /// Longest wait, in seconds.
    pub max_wait: i64,
    /// Share of requests served at once (wait 0).
    pub served_at_once: f64,
    /// Billed VM time (VMs not deallocated), in hours.
    pub vm_hours: f64,
    /// Time VMs spent deallocated (paying only for their disk), in hours.
    pub deallocated_hours: f64,
    /// Most VMs billed at once.
    pub peak_vms: usize,
    /// The pool every [`SAMPLE_EVERY`] seconds.
    pub timeline: Vec<Sample>,
}

impl Outcome {
    /// Mean wait per request, in seconds.
    pub fn mean_wait(&self) -> f64 {
        self.total_wait as f64 / self.served.max(1) as f64
    }

    /// The cost in VM-hours: billed VM-hours plus deallocated disk-hours at `disk_ratio`.
    pub fn cost_hours(&self, disk_ratio: f64) -> f64 {
        self.vm_hours + disk_ratio * self.deallocated_hours
    }
}

/// Counts waits and billed time as a run goes.
#[derive(Debug, Default)]
pub struct Meter {
    waits: Vec<i64>,
    billed_seconds: u64,
    deallocated_seconds: u64,
    peak: usize,
    timeline: Vec<Sample>,
}

impl Meter {
    /// A request got a VM after `wait` seconds.
    pub fn served(&mut self, wait: i64) {
        self.waits.push(wait);
    }

    /// One second at `t` with `billed` VMs billed and `deallocated` VMs deallocated; the
    /// timeline takes a sample from `sample` when one is due.
    pub fn tick(
        &mut self,
        t: i64,
        billed: usize,
        deallocated: usize,
        sample: impl FnOnce() -> (usize, usize),
    ) {
        self.billed_seconds += billed as u64;
        self.deallocated_seconds += deallocated as u64;
        self.peak = self.peak.max(billed);
        if t % SAMPLE_EVERY == 0 {
            let (in_use, ready) = sample();
            self.timeline.push(Sample {
                t,
                in_use,
                ready,
                billed,
            });
        }
    }

    /// The outcome.
    pub fn finish(self) -> Outcome {
        let mut waits = self.waits;
        waits.sort_unstable();
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "an index within the list"
        )]
        let p95 = if waits.is_empty() {
            0
        } else {
            waits[((waits.len() as f64 * 0.95).ceil() as usize).saturating_sub(1)]
        };
        let at_once = waits.iter().filter(|w| **w == 0).count();
        Outcome {
            served: waits.len(),
            total_wait: waits.iter().sum(),
            p95_wait: p95,
            max_wait: waits.last().copied().unwrap_or(0),
            served_at_once: at_once as f64 / waits.len().max(1) as f64,
            vm_hours: self.billed_seconds as f64 / 3600.0,
            deallocated_hours: self.deallocated_seconds as f64 / 3600.0,
            peak_vms: self.peak,
            timeline: self.timeline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meter_counts_waits_time_and_samples() {
        let mut m = Meter::default();
        for w in [0, 0, 10, 0, 100] {
            m.served(w);
        }
        for t in 0..120 {
            m.tick(t, 2, 1, || (1, 1));
        }
        let o = m.finish();
        assert_eq!(
            (o.served, o.total_wait, o.p95_wait, o.max_wait),
            (5, 110, 100, 100)
        );
        assert!((o.served_at_once - 0.6).abs() < 1e-9);
        assert!((o.vm_hours - 240.0 / 3600.0).abs() < 1e-9);
        assert!((o.cost_hours(0.5) - 300.0 / 3600.0).abs() < 1e-9);
        assert_eq!(o.timeline.len(), 2);
        assert_eq!(o.peak_vms, 2);
    }
}
