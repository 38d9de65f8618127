//! A new server build shipped part way through a trace, against the same trace without it:
//! the waits and VM-hours in the hour before the switch, the hour after, and the rest of the
//! run, the hand-outs of the old build after the switch (0 by vmpool's rules), and how long
//! the old build's VMs outlive it.

use crate::measure::{TAIL, Window};
use crate::sweep::vmpool_policy;
use crate::traces::Trace;
use crate::vmpool_run::{Rollout, RolloutReport, Run, run_vmpool_with, server_image, with_build};

/// The build the pool runs before the switch.
pub const OLD_BUILD: &str = "1.5.0";
/// The build shipped at the switch.
pub const NEW_BUILD: &str = "1.6.0";

const HOUR: i64 = 3600;

/// When the rollout happens on `trace`: at hour 12, or half-way through a shorter trace.
pub fn switch_time(trace: &Trace) -> i64 {
    (12 * HOUR).min(trace.last_arrival() / 2)
}

/// The windows compared around a switch at `at` on `trace`: the hour before, the hour after,
/// and the rest of the run.
pub fn windows(trace: &Trace, at: i64) -> [(i64, i64); 3] {
    let end = trace.last_arrival() + TAIL + 1;
    [
        ((at - HOUR).max(0), at),
        (at, (at + HOUR).min(end)),
        ((at + HOUR).min(end), end),
    ]
}

/// One vmpool setting on a trace with and without a rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The trace's name.
    pub trace: String,
    /// `VMPOOL_MIN_STANDBY`.
    pub floor: u32,
    /// `VMPOOL_READY_ESTIMATE_SECS`.
    pub ready_secs: u64,
    /// The switch, in seconds from the start.
    pub at: i64,
    /// The run without a rollout.
    pub without: Run,
    /// The run with one.
    pub with: Run,
}

impl Comparison {
    /// The rollout's report.
    pub fn report(&self) -> Option<&RolloutReport> {
        self.with.rollout.as_ref()
    }
}

/// vmpool with `floor` and `ready_secs` on `trace`, on build [`OLD_BUILD`] throughout and
/// with [`NEW_BUILD`] shipped at [`switch_time`], on the same seed.
pub async fn compare(trace: &Trace, floor: u32, ready_secs: u64, seed: u64) -> Comparison {
    let policy = with_build(
        &vmpool_policy(floor, ready_secs, 0),
        OLD_BUILD,
        server_image(OLD_BUILD),
    );
    let at = switch_time(trace);
    let windows = windows(trace, at);
    let rollout = Rollout {
        at,
        build: NEW_BUILD.into(),
        image: server_image(NEW_BUILD),
    };
    let without = run_vmpool_with(trace, policy.clone(), seed, None, &windows).await;
    let with = run_vmpool_with(trace, policy, seed, Some(&rollout), &windows).await;
    Comparison {
        trace: trace.name.clone(),
        floor,
        ready_secs,
        at,
        without,
        with,
    }
}

fn hours(s: i64) -> String {
    format!("{:.0}", s as f64 / HOUR as f64)
}

fn window_name(w: &Window, at: i64) -> String {
    let span = format!("{}-{} h", hours(w.from), hours(w.to));
    if w.to == at {
        format!("hour before ({span})")
    } else if w.from == at {
        format!("hour after ({span})")
    } else if w.from > at {
        format!("rest of the run ({span})")
    } else {
        span
    }
}

/// The comparison as a Markdown table and a few lines on the old build.
pub fn render(c: &Comparison) -> String {
    let mut out = format!(
        "{} trace, vmpool floor={} ready={}s, build {OLD_BUILD} -> {NEW_BUILD} at hour {}:\n\n\
         | window | p95 wait (s) without -> with | mean wait (s) | VM-hours | deallocated hours |\n\
         |---|---|---|---|---|",
        c.trace,
        c.floor,
        c.ready_secs,
        hours(c.at)
    );
    for (a, b) in c.without.windows.iter().zip(&c.with.windows) {
        out.push_str(&format!(
            "\n| {} | {} -> {} | {:.1} -> {:.1} | {:.1} -> {:.1} | {:.1} -> {:.1} |",
            window_name(a, c.at),
            a.p95_wait,
            b.p95_wait,
            a.mean_wait,
            b.mean_wait,
            a.vm_hours,
            b.vm_hours,
            a.deallocated_hours,
            b.deallocated_hours
        ));
    }
    let (a, b) = (&c.without.outcome, &c.with.outcome);
    out.push_str(&format!(
        "\n| whole run | {} -> {} | {:.1} -> {:.1} | {:.1} -> {:.1} | {:.1} -> {:.1} |",
        a.p95_wait,
        b.p95_wait,
        a.mean_wait(),
        b.mean_wait(),
        a.vm_hours,
        b.vm_hours,
        a.deallocated_hours,
        b.deallocated_hours
    ));
    if let Some(r) = c.report() {
        let ready = r
            .buffer_ready_after
            .map_or("never".to_owned(), |s| format!("{s} s after the switch"));
        let gone = match r.last_old_gone_after {
            Some(last) => format!(
                "the last of them left the cloud {last} s after the switch. An idle one waited at most {} reconcile passes with the new buffer ready before its delete began; a delete took at most {} s",
                r.most_ready_passes_waited, r.longest_delete
            ),
            None => format!(
                "{} of them are still in the cloud at the end of the run",
                r.old_left
            ),
        };
        out.push_str(&format!(
            "\n\nOld-build hand-outs after the switch: {} of {}. Sessions cut: {}. \
             The new build's buffer was first ready {ready}, and not ready again at {} later passes while old-build VMs were left. \
             Old-build VMs at the switch: {}; {gone}.",
            r.old_build_handouts,
            r.handouts_after,
            r.sessions_cut,
            r.unready_passes,
            r.old_at_switch
        ));
    }
    out
}
