//! The policies studios use today, each as a [`Scaler`] that sets a fleet's size, run by
//! one fleet model ([`run_fleet`]) on the same latencies as vmpool's simulated Azure.
//!
//! The fleet is modelled at the VM level, one game server per VM, as vmpool's pool is: a
//! server being created takes the create latency (150 s ±25%), is billed from the start,
//! and is then ready; a request takes a ready server at once or waits, first come first
//! served, for the next one. A server whose session ends is ready again at once (a new game
//! server process on the same VM), unless the policy deletes finished servers. Surplus
//! servers are deleted, those still being created first, and are billed until the delete
//! completes (45 s ±25%). This is generous to the baselines: a real fleet restarts a game
//! server after each session, and adds a node autoscaler's own delay on top.

use std::collections::{BTreeMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::measure::{Meter, Outcome, TAIL};
use crate::traces::{Request, Trace};
use crate::vmpool_run::azure_latencies;

/// The fleet as a scaler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FleetView {
    /// Servers hosting a session.
    pub allocated: usize,
    /// Servers ready for a session.
    pub ready: usize,
    /// Servers being created.
    pub starting: usize,
    /// Requests waiting for a server.
    pub waiting: usize,
}

impl FleetView {
    /// Servers not being deleted.
    pub fn total(&self) -> usize {
        self.allocated + self.ready + self.starting
    }
}

/// A policy that sizes a fleet.
pub trait Scaler {
    /// How often it acts, in seconds.
    fn period(&self) -> i64;
    /// How many servers the fleet should have in all (allocated, ready and starting).
    fn desired(&mut self, t: i64, fleet: &FleetView) -> usize;
    /// Whether a server whose session ended serves again (else it is deleted).
    fn reuses(&self) -> bool {
        true
    }
    /// Whether a created server is seen ready only at the next period (polling).
    fn ready_at_period(&self) -> bool {
        false
    }
}

/// Agones' Buffer policy for a FleetAutoscaler: the fleet's replicas are the allocated game
/// servers plus `bufferSize`, given as a count or as a percentage of the replicas, within
/// `minReplicas` and `maxReplicas`, applied every `syncPeriod` (30 s by default).
/// The rule follows `applyBufferPolicy` in Agones' `pkg/fleetautoscalers`: a count gives
/// `allocated + bufferSize`; a percentage gives `ceil(allocated * 100 / (100 - percent))`.
/// See agones.dev, "Fleet Autoscaler Specification" (`bufferSize`, `minReplicas`,
/// `maxReplicas`, `sync.fixedInterval.seconds`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgonesBuffer {
    /// The buffer.
    pub buffer: Buffer,
    /// `minReplicas`.
    pub min_replicas: usize,
    /// `maxReplicas`.
    pub max_replicas: usize,
    /// `syncPeriod`, in seconds.
    pub sync_period: i64,
}

/// Agones' `bufferSize`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Buffer {
    /// A number of ready servers.
    Count(usize),
    /// A percentage (below 100) of the replicas kept ready.
    Percent(u32),
}

impl Scaler for AgonesBuffer {
    fn period(&self) -> i64 {
        self.sync_period
    }

    fn desired(&mut self, _t: i64, fleet: &FleetView) -> usize {
        let replicas = match self.buffer {
            Buffer::Count(n) => fleet.allocated + n,
            Buffer::Percent(p) => {
                let p = p.min(99) as usize;
                (fleet.allocated * 100).div_ceil(100 - p)
            }
        };
        replicas.clamp(self.min_replicas, self.max_replicas)
    }
}

/// PlayFab's standby with Dynamic Standby: the platform keeps a target of standby servers,
/// at least the target standby floor. When the active servers exceed the target and the
/// actual standby falls below 50%, 25% or 0.5% of the floor, the target becomes 1.5, 3 or 4
/// times the floor (the highest threshold crossed wins); once no threshold holds, the target
/// ramps back down to the floor over the ramp-down period. See learn.microsoft.com,
/// "PlayFab Multiplayer Servers: Dynamic Standby" (the thresholds and multipliers above are
/// its defaults) and "Scaling Standby". The documentation gives no evaluation interval; we
/// take 30 s, and a ramp-down of 30 minutes.
#[derive(Debug, Clone, PartialEq)]
pub struct PlayFabStandby {
    /// The target standby floor.
    pub floor: usize,
    /// (share of the floor, multiplier), e.g. (0.5, 1.5).
    pub triggers: Vec<(f64, f64)>,
    /// Seconds over which a raised target returns to the floor.
    pub ramp_down: i64,
    /// Seconds between evaluations.
    pub period: i64,
    /// Most servers in all.
    pub max_servers: usize,
    raised: f64,
    raised_at: Option<i64>,
}

impl PlayFabStandby {
    /// Dynamic Standby with its default thresholds, over `floor`.
    pub fn new(floor: usize) -> Self {
        PlayFabStandby {
            floor,
            triggers: vec![(0.5, 1.5), (0.25, 3.0), (0.005, 4.0)],
            ramp_down: 1800,
            period: 30,
            max_servers: 10_000,
            raised: floor as f64,
            raised_at: None,
        }
    }

    /// The standby target at `t`.
    fn target(&mut self, t: i64, fleet: &FleetView) -> f64 {
        let floor = self.floor as f64;
        // Actual standby: servers ready or being readied ("propping").
        let actual = (fleet.ready + fleet.starting) as f64;
        let current = self.current(t);
        let multiplier = self
            .triggers
            .iter()
            .filter(|(share, _)| {
                fleet.allocated as f64 > current && actual < share * floor.max(1.0)
            })
            .map(|(_, m)| *m)
            .fold(0.0, f64::max);
        if multiplier > 0.0 && floor * multiplier >= current {
            self.raised = floor * multiplier;
            self.raised_at = Some(t);
        }
        self.current(t)
    }

    /// The target ramping down linearly from the last raise.
    fn current(&self, t: i64) -> f64 {
        let floor = self.floor as f64;
        match self.raised_at {
            None => floor,
            Some(at) => {
                let done = ((t - at) as f64 / self.ramp_down.max(1) as f64).clamp(0.0, 1.0);
                self.raised - (self.raised - floor) * done
            }
        }
    }
}

impl Scaler for PlayFabStandby {
    fn period(&self) -> i64 {
        self.period
    }

    fn desired(&mut self, t: i64, fleet: &FleetView) -> usize {
        let target = self.target(t, fleet);
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a small non-negative count"
        )]
        let standby = target.ceil() as usize;
        (fleet.allocated + standby).min(self.max_servers)
    }
}

/// GameLift-style target tracking on `PercentAvailableGameSessions`: the fleet is sized so
/// that the given percentage of its game sessions is available, one session per instance,
/// within a minimum and maximum, evaluated every minute (the metric's period). See
/// docs.aws.amazon.com, "Target-based auto scaling" for Amazon GameLift Servers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetTracking {
    /// The target percentage of available sessions (below 100).
    pub percent: u32,
    /// Fewest instances.
    pub min: usize,
    /// Most instances.
    pub max: usize,
    /// Seconds between evaluations.
    pub period: i64,
}

impl Scaler for TargetTracking {
    fn period(&self) -> i64 {
        self.period
    }

    fn desired(&mut self, _t: i64, fleet: &FleetView) -> usize {
        let p = self.percent.min(99) as usize;
        // Waiting requests are sessions the fleet owes: counted as active.
        let active = fleet.allocated + fleet.waiting;
        (active * 100).div_ceil(100 - p).clamp(self.min, self.max)
    }
}

/// The Deployment Pool's fixed buffer: `n` deployments ready or starting, polled every 10 s;
/// a started deployment is ready at the poll that sees it healthy, and a completed one is
/// deleted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixedBuffer {
    /// Deployments kept ready or starting.
    pub n: usize,
}

impl Scaler for FixedBuffer {
    fn period(&self) -> i64 {
        10
    }

    fn desired(&mut self, _t: i64, fleet: &FleetView) -> usize {
        fleet.allocated + self.n
    }

    fn reuses(&self) -> bool {
        false
    }

    fn ready_at_period(&self) -> bool {
        true
    }
}

/// A latency drawn as vmpool's simulated Azure draws it: uniform within ±jitter.
fn draw(rng: &mut StdRng, base: time::Duration, jitter: f64) -> i64 {
    let factor = rng.random_range((1.0 - jitter)..=(1.0 + jitter));
    #[expect(
        clippy::cast_possible_truncation,
        reason = "seconds of a short operation"
    )]
    let secs = (base.as_seconds_f64() * factor).ceil() as i64;
    secs.max(1)
}

/// Replays `trace` through a fleet sized by `scaler`.
pub fn run_fleet(trace: &Trace, scaler: &mut dyn Scaler, seed: u64) -> Outcome {
    let lat = azure_latencies();
    let mut rng = StdRng::seed_from_u64(seed);
    let end = trace.last_arrival() + TAIL;
    let mut arrivals: VecDeque<Request> = trace.requests.iter().copied().collect();
    let mut queue: VecDeque<Request> = VecDeque::new();
    // Servers being created, by the second they are up; up but not yet seen (polling).
    let mut starting: BTreeMap<i64, usize> = BTreeMap::new();
    let mut up_unseen = 0usize;
    // Servers being deleted, by the second they are gone.
    let mut deleting: BTreeMap<i64, usize> = BTreeMap::new();
    let mut sessions: BTreeMap<i64, usize> = BTreeMap::new();
    let (mut ready, mut allocated, mut n_starting, mut n_deleting) = (0usize, 0usize, 0, 0);
    let mut meter = Meter::default();
    let period = scaler.period().max(1);
    let at_period = scaler.ready_at_period();

    for t in 0..=end {
        if let Some(n) = starting.remove(&t) {
            n_starting -= n;
            if at_period {
                up_unseen += n;
            } else {
                ready += n;
            }
        }
        if let Some(n) = deleting.remove(&t) {
            n_deleting -= n;
        }
        if let Some(n) = sessions.remove(&t) {
            allocated -= n;
            if scaler.reuses() {
                ready += n;
            } else {
                n_deleting += n;
                *deleting
                    .entry(t + draw(&mut rng, lat.delete, lat.jitter))
                    .or_default() += n;
            }
        }
        while arrivals.front().is_some_and(|r| r.at <= t) {
            if let Some(r) = arrivals.pop_front() {
                queue.push_back(r);
            }
        }
        if t % period == 0 {
            ready += std::mem::take(&mut up_unseen);
            let view = FleetView {
                allocated,
                ready,
                starting: n_starting + up_unseen,
                waiting: queue.len(),
            };
            let want = scaler.desired(t, &view);
            let have = view.total();
            if want > have {
                for _ in have..want {
                    *starting
                        .entry(t + draw(&mut rng, lat.create, lat.jitter))
                        .or_default() += 1;
                }
                n_starting += want - have;
            } else {
                let mut surplus = have - want;
                // Servers still being created go first (the latest first), then ready ones.
                while surplus > 0 {
                    let Some(mut last) = starting.last_entry() else {
                        break;
                    };
                    *last.get_mut() -= 1;
                    if *last.get() == 0 {
                        last.remove();
                    }
                    n_starting -= 1;
                    surplus -= 1;
                    n_deleting += 1;
                    *deleting
                        .entry(t + draw(&mut rng, lat.delete, lat.jitter))
                        .or_default() += 1;
                }
                let gone = surplus.min(ready);
                ready -= gone;
                n_deleting += gone;
                for _ in 0..gone {
                    *deleting
                        .entry(t + draw(&mut rng, lat.delete, lat.jitter))
                        .or_default() += 1;
                }
            }
        }
        while ready > 0 {
            let Some(r) = queue.pop_front() else { break };
            ready -= 1;
            allocated += 1;
            meter.served(t - r.at);
            *sessions.entry(t + r.session).or_default() += 1;
        }
        let billed = ready + allocated + n_starting + up_unseen + n_deleting;
        meter.tick(t, billed, 0, || (allocated, ready));
    }
    meter.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(allocated: usize, ready: usize, starting: usize) -> FleetView {
        FleetView {
            allocated,
            ready,
            starting,
            waiting: 0,
        }
    }

    #[test]
    fn agones_buffer_counts_and_percentages_follow_its_rule() {
        let mut count = AgonesBuffer {
            buffer: Buffer::Count(5),
            min_replicas: 5,
            max_replicas: 100,
            sync_period: 30,
        };
        assert_eq!(count.desired(0, &view(15, 0, 0)), 20);
        assert_eq!(count.desired(0, &view(0, 0, 0)), 5);
        assert_eq!(count.desired(0, &view(99, 0, 0)), 100);
        let mut pct = AgonesBuffer {
            buffer: Buffer::Percent(20),
            min_replicas: 1,
            max_replicas: 100,
            sync_period: 30,
        };
        // 10 allocated at 20% buffer: 12.5 -> 13 replicas.
        assert_eq!(pct.desired(0, &view(10, 3, 0)), 13);
        assert_eq!(pct.desired(0, &view(0, 3, 0)), 1);
    }

    #[test]
    fn playfab_multiplies_the_floor_when_standby_runs_low_and_ramps_down() {
        let mut p = PlayFabStandby::new(10);
        // Plenty of standby: the floor.
        assert_eq!(p.desired(0, &view(40, 10, 0)), 50);
        // Standby at 40% of the floor with more active than the target: 1.5x.
        assert_eq!(p.desired(30, &view(30, 4, 0)), 30 + 15);
        // Standby at 10%: 3x. At 0: 4x.
        assert_eq!(p.desired(60, &view(50, 1, 0)), 50 + 30);
        assert_eq!(p.desired(90, &view(70, 0, 0)), 70 + 40);
        // Recovered: ramps down, back at the floor after the ramp-down period.
        let half = p.desired(90 + 900, &view(70, 40, 0));
        assert_eq!(half, 70 + 25);
        assert_eq!(p.desired(90 + 1800, &view(50, 40, 0)), 50 + 10);
        // Active below the target: no trigger however low standby is.
        let mut q = PlayFabStandby::new(10);
        assert_eq!(q.desired(0, &view(5, 0, 0)), 15);
    }

    #[test]
    fn target_tracking_keeps_its_share_available() {
        let mut tt = TargetTracking {
            percent: 20,
            min: 1,
            max: 1000,
            period: 60,
        };
        assert_eq!(tt.desired(0, &view(40, 0, 0)), 50);
        assert_eq!(tt.desired(0, &view(0, 0, 0)), 1);
    }

    #[test]
    fn a_fleet_serves_from_ready_servers_and_waits_for_new_ones() {
        // Two requests at once on an Agones fleet with a buffer of 1: one served at once,
        // the other waits for a server to be created.
        let trace = Trace {
            name: "two".into(),
            period_secs: 0,
            requests: vec![
                Request {
                    at: 600,
                    session: 600,
                },
                Request {
                    at: 600,
                    session: 600,
                },
            ],
        };
        let mut agones = AgonesBuffer {
            buffer: Buffer::Count(1),
            min_replicas: 1,
            max_replicas: 10,
            sync_period: 30,
        };
        let o = run_fleet(&trace, &mut agones, 1);
        assert_eq!(o.served, 2);
        assert_eq!(o.served_at_once, 0.5);
        // The second waits for the next sync (at most 30 s) and a create (112-188 s).
        assert!((112..=30 + 188).contains(&o.max_wait), "{o:?}");
        // The fixed buffer deletes finished servers; Agones keeps them.
        let fixed = run_fleet(&trace, &mut FixedBuffer { n: 1 }, 1);
        assert_eq!(fixed.served, 2);
        assert!(o.peak_vms <= 3 && fixed.peak_vms <= 4, "{o:?} {fixed:?}");
    }
}
