//! The oracle: a policy that knows every arrival and session length in advance, so every
//! request is served at once, and that pays as little as it can for it under the same mean
//! latencies (create 150 s, start 60 s, deallocate 60 s, delete 45 s) with no jitter.
//!
//! Requests are taken in arrival order. Each goes to the VM that became free last before it
//! (the shortest idle gap). That VM waits for it either running (billed for the gap) or,
//! when the gap is long enough, deallocated (billed for the start, its disk from the
//! deallocate on: a deallocating VM is not billed for compute); if even that costs more
//! than a new VM (create, and the old one's delete), a new VM is created to be up just in
//! time and every idle VM is deleted, since any later request would find them idle even
//! longer. It is a greedy schedule, not a proof of optimality,
//! but no real policy gets near it: it wastes nothing on uncertainty.

use std::collections::BTreeSet;

use crate::measure::{Meter, Outcome, TAIL};
use crate::traces::Trace;
use crate::vmpool_run::azure_latencies;

/// Per-second counts built from intervals.
struct Counts {
    billed: Vec<i64>,
    deallocated: Vec<i64>,
    ready: Vec<i64>,
    in_use: Vec<i64>,
}

impl Counts {
    fn new(len: usize) -> Self {
        Counts {
            billed: vec![0; len + 1],
            deallocated: vec![0; len + 1],
            ready: vec![0; len + 1],
            in_use: vec![0; len + 1],
        }
    }

    fn add(series: &mut [i64], from: i64, to: i64) {
        let len = series.len() as i64 - 1;
        let (from, to) = (from.clamp(0, len), to.clamp(0, len));
        if from < to {
            #[expect(clippy::cast_sign_loss, reason = "clamped to the series")]
            {
                series[from as usize] += 1;
                series[to as usize] -= 1;
            }
        }
    }
}

/// Replays `trace` through the oracle; `disk_ratio` prices a deallocated VM's disk-hour
/// against a VM-hour when it chooses between idling, deallocating and deleting.
pub fn run_oracle(trace: &Trace, disk_ratio: f64) -> Outcome {
    let lat = azure_latencies();
    let secs = |d: time::Duration| d.whole_seconds();
    let (create, start, dealloc, delete) = (
        secs(lat.create),
        secs(lat.start),
        secs(lat.deallocate),
        secs(lat.delete),
    );
    let end = trace.last_arrival() + TAIL;
    // Creates begin before the first arrival: time is shifted so they stay in the series.
    let shift = create;
    #[expect(clippy::cast_sign_loss, reason = "non-negative")]
    let mut c = Counts::new((end + shift + 1) as usize);
    let s = |t: i64| t + shift;
    // Idle VMs as (free since, id).
    let mut idle: BTreeSet<(i64, usize)> = BTreeSet::new();
    let mut next_id = 0usize;
    let mut meter = Meter::default();
    let new_vm_cost = (create + delete) as f64;

    let retire = |c: &mut Counts, free_at: i64| {
        Counts::add(&mut c.billed, s(free_at), s(free_at + delete));
    };

    for r in &trace.requests {
        let best = idle.range(..=(r.at, usize::MAX)).next_back().copied();
        let reuse = best.and_then(|(free_at, id)| {
            let gap = r.at - free_at;
            let running = gap as f64;
            let parked =
                (gap >= dealloc + start).then(|| start as f64 + disk_ratio * (gap - start) as f64);
            let cost = parked.map_or(running, |p| p.min(running));
            (cost <= new_vm_cost).then_some((free_at, id, parked.is_some_and(|p| p < running)))
        });
        match reuse {
            Some((free_at, id, parked)) => {
                idle.remove(&(free_at, id));
                if parked {
                    Counts::add(&mut c.deallocated, s(free_at), s(r.at - start));
                    Counts::add(&mut c.billed, s(r.at - start), s(r.at));
                } else {
                    Counts::add(&mut c.billed, s(free_at), s(r.at));
                    Counts::add(&mut c.ready, s(free_at), s(r.at));
                }
            }
            None => {
                // Every idle VM is past use: deleted.
                for (free_at, _) in std::mem::take(&mut idle) {
                    retire(&mut c, free_at);
                }
                Counts::add(&mut c.billed, s(r.at - create), s(r.at));
                next_id += 1;
            }
        }
        let id = reuse.map_or(next_id, |(_, id, _)| id);
        Counts::add(&mut c.billed, s(r.at), s(r.at + r.session));
        Counts::add(&mut c.in_use, s(r.at), s(r.at + r.session));
        idle.insert((r.at + r.session, id));
        meter.served(0);
    }
    for (free_at, _) in idle {
        retire(&mut c, free_at);
    }
    let (mut billed, mut off, mut ready, mut in_use) = (0i64, 0i64, 0i64, 0i64);
    for t in -shift..=end {
        #[expect(clippy::cast_sign_loss, reason = "shifted to non-negative")]
        let i = s(t) as usize;
        billed += c.billed[i];
        off += c.deallocated[i];
        ready += c.ready[i];
        in_use += c.in_use[i];
        #[expect(clippy::cast_sign_loss, reason = "counts of intervals")]
        let (b, o, rd, u) = (
            billed as usize,
            off as usize,
            ready as usize,
            in_use as usize,
        );
        if t < 0 {
            // Creates before the trace starts are billed, outside the timeline.
            meter.tick(1, b, o, || (u, rd));
        } else {
            meter.tick(t, b, o, || (u, rd));
        }
    }
    meter.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traces::Request;

    fn req(at: i64, session: i64) -> Request {
        Request { at, session }
    }

    #[test]
    fn the_oracle_reuses_idles_parks_and_creates_as_each_is_cheapest() {
        let hours = |o: &Outcome| (o.vm_hours * 3600.0).round() as i64;
        // One request: create (150) + session (600) + delete (45).
        let one = Trace {
            name: "one".into(),
            period_secs: 0,
            requests: vec![req(1000, 600)],
        };
        let o = run_oracle(&one, 0.03);
        assert_eq!((o.served, o.p95_wait, o.served_at_once), (1, 0, 1.0));
        assert_eq!(hours(&o), 150 + 600 + 45);
        // A second request 100 s after the first ends: kept running for the gap.
        let near = Trace {
            name: "near".into(),
            period_secs: 0,
            requests: vec![req(1000, 600), req(1700, 600)],
        };
        assert_eq!(hours(&run_oracle(&near, 0.03)), 150 + 600 + 100 + 600 + 45);
        // 1000 s later: deallocated in between (the 60 s start billed, the disk from the
        // deallocate on).
        let far = Trace {
            name: "far".into(),
            period_secs: 0,
            requests: vec![req(1000, 600), req(2600, 600)],
        };
        let o = run_oracle(&far, 0.03);
        assert_eq!(hours(&o), 150 + 600 + 60 + 600 + 45);
        assert_eq!((o.deallocated_hours * 3600.0).round() as i64, 1000 - 60);
        // Hours later: a new VM; the first is deleted.
        let apart = Trace {
            name: "apart".into(),
            period_secs: 0,
            requests: vec![req(1000, 600), req(20_000, 600)],
        };
        assert_eq!(hours(&run_oracle(&apart, 0.03)), 2 * (150 + 600 + 45));
        // Two at once: two VMs.
        let pair = Trace {
            name: "pair".into(),
            period_secs: 0,
            requests: vec![req(1000, 600), req(1000, 600)],
        };
        assert_eq!(run_oracle(&pair, 0.03).peak_vms, 2);
    }
}
