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

/// What a policy achieved within one window of a run: the requests that arrived in it and
/// the VM time billed in it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    /// Its first second, from the start of the run.
    pub from: i64,
    /// The second after its last.
    pub to: i64,
    /// Requests that arrived in it and were served.
    pub served: usize,
    /// 95th percentile of their wait, in seconds.
    pub p95_wait: i64,
    /// Their mean wait, in seconds.
    pub mean_wait: f64,
    /// Billed VM time within it, in hours.
    pub vm_hours: f64,
    /// Time VMs spent deallocated within it, in hours.
    pub deallocated_hours: f64,
}

#[derive(Debug, Default)]
struct WindowMeter {
    from: i64,
    to: i64,
    waits: Vec<i64>,
    billed_seconds: u64,
    deallocated_seconds: u64,
}

/// Counts waits and billed time as a run goes.
#[derive(Debug, Default)]
pub struct Meter {
    waits: Vec<i64>,
    billed_seconds: u64,
    deallocated_seconds: u64,
    peak: usize,
    timeline: Vec<Sample>,
    windows: Vec<WindowMeter>,
}

/// The 95th percentile of sorted waits (0 with none).
fn p95(sorted: &[i64]) -> i64 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "an index within the list"
    )]
    let at = ((sorted.len() as f64 * 0.95).ceil() as usize).saturating_sub(1);
    sorted.get(at).copied().unwrap_or(0)
}

impl Meter {
    /// A meter that also measures each window `[from, to)` on its own.
    pub fn with_windows(windows: &[(i64, i64)]) -> Meter {
        Meter {
            windows: windows
                .iter()
                .map(|&(from, to)| WindowMeter {
                    from,
                    to,
                    ..WindowMeter::default()
                })
                .collect(),
            ..Meter::default()
        }
    }

    /// A request got a VM after `wait` seconds.
    pub fn served(&mut self, wait: i64) {
        self.waits.push(wait);
    }

    /// A request that arrived at `at` got a VM after `wait` seconds: counted in the whole run
    /// and in the windows it arrived in.
    pub fn served_from(&mut self, at: i64, wait: i64) {
        self.waits.push(wait);
        for w in &mut self.windows {
            if (w.from..w.to).contains(&at) {
                w.waits.push(wait);
            }
        }
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
        for w in &mut self.windows {
            if (w.from..w.to).contains(&t) {
                w.billed_seconds += billed as u64;
                w.deallocated_seconds += deallocated as u64;
            }
        }
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

    /// The outcome, and each window's.
    pub fn finish_with_windows(mut self) -> (Outcome, Vec<Window>) {
        let windows = std::mem::take(&mut self.windows)
            .into_iter()
            .map(|mut w| {
                w.waits.sort_unstable();
                Window {
                    from: w.from,
                    to: w.to,
                    served: w.waits.len(),
                    p95_wait: p95(&w.waits),
                    mean_wait: w.waits.iter().sum::<i64>() as f64 / w.waits.len().max(1) as f64,
                    vm_hours: w.billed_seconds as f64 / 3600.0,
                    deallocated_hours: w.deallocated_seconds as f64 / 3600.0,
                }
            })
            .collect();
        (self.finish(), windows)
    }

    /// The outcome.
    pub fn finish(self) -> Outcome {
        let mut waits = self.waits;
        waits.sort_unstable();
        let p95 = p95(&waits);
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

    #[test]
    fn windows_count_the_requests_that_arrived_and_the_time_billed_in_them() {
        let mut m = Meter::with_windows(&[(0, 60), (60, 120)]);
        m.served_from(10, 0);
        m.served_from(59, 30);
        m.served_from(60, 100);
        for t in 0..120 {
            m.tick(t, if t < 60 { 1 } else { 3 }, 0, || (0, 0));
        }
        let (o, w) = m.finish_with_windows();
        assert_eq!((o.served, o.p95_wait), (3, 100));
        assert_eq!(
            w.iter()
                .map(|w| (w.served, w.p95_wait, w.mean_wait))
                .collect::<Vec<_>>(),
            [(2, 30, 15.0), (1, 100, 100.0)]
        );
        assert!((w[0].vm_hours - 60.0 / 3600.0).abs() < 1e-9);
        assert!((w[1].vm_hours - 180.0 / 3600.0).abs() < 1e-9);
    }
}
