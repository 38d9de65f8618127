//! Replays matchmaker demand traces on virtual time through vmpool (the real pool rules and
//! reconcile plan) and through the policies studios use today, and compares them.
//!
//! ```text
//! pool_sim                              one setting per policy on every built-in trace
//! pool_sim --sweep [--out DIR]          every policy's parameter swept: tables, plots
//! pool_sim --trace-csv FILE [--json]    a studio's CSV through every policy and sweep
//! pool_sim --rollout                    a new build at hour 12 of the daily trace, against none
//! options: --trace NAME (repeatable), --reduced (fewer parameter values),
//!          --disk-ratio R (a deallocated VM's disk-hour in VM-hours, default 0.03),
//!          --demand-period SECS (the CSV's demand repeats: vmpool is swept with it too)
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use vmpool_sim::fleet::Buffer;
use vmpool_sim::measure::{DEFAULT_DISK_RATIO, SAMPLE_EVERY};
use vmpool_sim::sweep::{self, Goal, Measure, ORACLE_RATIO_GOAL, Point, Policy, Size, front, goal};
use vmpool_sim::traces::{self, Trace};
use vmpool_sim::{Outcome, plot, rollout};

#[derive(Debug)]
struct Args {
    sweep: bool,
    rollout: bool,
    csv: Option<PathBuf>,
    json: bool,
    reduced: bool,
    traces: Vec<String>,
    out: PathBuf,
    disk_ratio: f64,
    demand_period: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        sweep: false,
        rollout: false,
        csv: None,
        json: false,
        reduced: false,
        traces: Vec::new(),
        out: PathBuf::from("docs/economics"),
        disk_ratio: DEFAULT_DISK_RATIO,
        demand_period: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--sweep" => args.sweep = true,
            "--rollout" => args.rollout = true,
            "--json" => args.json = true,
            "--reduced" => args.reduced = true,
            "--trace-csv" => args.csv = Some(PathBuf::from(value("--trace-csv")?)),
            "--trace" => args.traces.push(value("--trace")?),
            "--out" => args.out = PathBuf::from(value("--out")?),
            "--disk-ratio" => {
                let raw = value("--disk-ratio")?;
                args.disk_ratio = raw
                    .parse::<f64>()
                    .ok()
                    .filter(|r| r.is_finite() && *r >= 0.0)
                    .ok_or(format!("--disk-ratio {raw:?} is not a non-negative number"))?;
            }
            "--demand-period" => {
                let raw = value("--demand-period")?;
                args.demand_period = raw
                    .parse::<u64>()
                    .ok()
                    .filter(|p| *p == 0 || (600..=604_800).contains(p))
                    .ok_or(format!(
                        "--demand-period {raw:?} is neither 0 nor whole seconds within 600..=604800"
                    ))?;
            }
            other => return Err(format!("unknown argument {other:?} (see the README)")),
        }
    }
    Ok(args)
}

fn fmt_row(p: &Point) -> String {
    format!(
        "| {} | {} | {:.0} | {:.1} | {:.1}% | {:.1} | {:.1} | {:.1} | {} |",
        p.policy,
        p.parameter,
        p.p95_wait_s,
        p.mean_wait_s,
        p.served_at_once * 100.0,
        p.vm_hours,
        p.deallocated_hours,
        p.cost_hours,
        p.peak_vms
    )
}

const HEADER: &str = "| policy | parameter | p95 wait (s) | mean wait (s) | served at once | VM-hours | deallocated hours | cost (VM-hours) | peak VMs |\n|---|---|---|---|---|---|---|---|---|";

fn goal_line(trace: &str, measure: Measure, g: &Goal) -> String {
    let ratio = g
        .oracle_ratio()
        .map_or("never at the oracle's wait".to_owned(), |r| {
            format!(
                "{r:.2}x the oracle's cost at its p95 wait (goal: at most {ORACLE_RATIO_GOAL}x)"
            )
        });
    let fronts = if g.beaten_by.is_empty() {
        "on or below every other front".to_owned()
    } else {
        let who: Vec<String> = g
            .beaten_by
            .iter()
            .map(|p| format!("{} {}", p.policy, p.parameter))
            .collect();
        format!("beaten by {}", who.join(", "))
    };
    format!(
        "{trace}, in {}: vmpool is {fronts}; {ratio}: goal {}",
        measure.label(),
        if g.met() { "met" } else { "missed" }
    )
}

/// Sessions a zero-wait pool would host at each sample.
fn demand(trace: &Trace) -> Vec<(f64, f64)> {
    let end = trace.last_arrival() + vmpool_sim::measure::TAIL;
    let steps = (end / SAMPLE_EVERY + 1) as usize;
    let mut diff = vec![0i64; steps + 1];
    for r in &trace.requests {
        let from = (r.at / SAMPLE_EVERY) as usize;
        let to = ((r.at + r.session) / SAMPLE_EVERY) as usize;
        diff[from.min(steps)] += 1;
        diff[to.min(steps)] -= 1;
    }
    let mut level = 0i64;
    (0..steps)
        .map(|i| {
            level += diff[i];
            ((i as i64 * SAMPLE_EVERY) as f64 / 3600.0, level as f64)
        })
        .collect()
}

/// Each policy's cheapest run with a p95 wait of a minute or less (else its lowest wait).
fn representatives<'a>(
    runs: &'a [(Policy, Outcome)],
    points: &[Point],
) -> Vec<&'a (Policy, Outcome)> {
    let mut names: Vec<&'static str> = Vec::new();
    for (p, _) in runs {
        if !names.contains(&p.name()) && p.name() != "fixed-buffer" {
            names.push(p.name());
        }
    }
    names
        .into_iter()
        .filter_map(|name| {
            let mine: Vec<(usize, &Point)> = points
                .iter()
                .enumerate()
                .filter(|(_, p)| p.policy == name)
                .collect();
            let pick = mine
                .iter()
                .filter(|(_, p)| p.p95_wait_s <= 60.0)
                .min_by(|a, b| a.1.vm_hours.total_cmp(&b.1.vm_hours))
                .or_else(|| {
                    mine.iter()
                        .min_by(|a, b| a.1.p95_wait_s.total_cmp(&b.1.p95_wait_s))
                })?;
            runs.get(pick.0)
        })
        .collect()
}

async fn sweep_trace(
    trace: &Trace,
    seed: u64,
    size: Size,
    disk_ratio: f64,
) -> (Vec<(Policy, Outcome)>, Vec<Point>) {
    let policies = sweep::policies(size, trace.period_secs);
    let runs = sweep::run_all(trace, &policies, seed, disk_ratio).await;
    let points = runs
        .iter()
        .map(|(p, o)| Point::of(p, o, disk_ratio))
        .collect();
    (runs, points)
}

fn table(points: &[Point]) -> String {
    let mut names: Vec<&'static str> = Vec::new();
    for p in points {
        if !names.contains(&p.policy) {
            names.push(p.policy);
        }
    }
    let mut out = String::from(HEADER);
    for name in names {
        let mut shown: Vec<&Point> = front(points, name, Measure::VmHours);
        for p in front(points, name, Measure::Cost) {
            if !shown.contains(&p) {
                shown.push(p);
            }
        }
        shown.sort_by(|a, b| a.p95_wait_s.total_cmp(&b.p95_wait_s));
        for p in shown {
            out.push('\n');
            out.push_str(&fmt_row(p));
        }
    }
    out
}

async fn run_sweep(args: &Args, traces: Vec<(Trace, u64)>) -> Result<(), String> {
    let size = if args.reduced {
        Size::Reduced
    } else {
        Size::Full
    };
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let mut report = String::new();
    let mut all_points = serde_json::Map::new();
    for (trace, seed) in traces {
        let (runs, points) = sweep_trace(&trace, seed, size, args.disk_ratio).await;
        let goals: Vec<String> = [Measure::VmHours, Measure::Cost]
            .into_iter()
            .map(|m| goal_line(&trace.name, m, &goal(&points, m)))
            .collect();
        let png = args.out.join(format!("{}.png", trace.name));
        plot::fronts(
            &png,
            &format!(
                "{}: p95 wait against VM-hours, each policy's front",
                trace.name
            ),
            &points,
            900.0,
        )?;
        let section = format!(
            "#### {}\n\n![{}]({})\n\n{}\n\n{}\n",
            trace.name,
            trace.name,
            png.display(),
            table(&points),
            goals.join("\n\n")
        );
        println!("{section}");
        report.push_str(&section);
        report.push('\n');
        if trace.name == "launch" {
            let reps = representatives(&runs, &points);
            let series: Vec<(&'static str, &[vmpool_sim::Sample])> = reps
                .iter()
                .map(|(p, o)| (p.name(), o.timeline.as_slice()))
                .collect();
            let timeline_png = args.out.join("launch-timeline.png");
            plot::timeline(
                &timeline_png,
                "launch day: demand, billed and ready VMs per policy",
                &demand(&trace),
                &series,
            )?;
            let each: Vec<String> = reps
                .iter()
                .map(|(p, o)| {
                    format!(
                        "{} {} (p95 {} s, {:.1} VM-hours)",
                        p.name(),
                        p.parameter(),
                        o.p95_wait,
                        o.vm_hours
                    )
                })
                .collect();
            let which = format!(
                "#### launch day over time\n\n![launch day: demand, billed and ready VMs per policy]({})\n\nOne launch day over time, each policy at its cheapest setting with a p95 wait of a minute or less (else its lowest wait): {}.\n",
                timeline_png.display(),
                each.join("; ")
            );
            println!("{which}\n");
            report.push_str(&which);
            report.push('\n');
        }
        all_points.insert(
            trace.name.clone(),
            serde_json::to_value(&points).map_err(|e| e.to_string())?,
        );
    }
    let json = serde_json::to_string_pretty(&all_points).map_err(|e| e.to_string())?;
    std::fs::write(args.out.join("points.json"), json).map_err(|e| e.to_string())?;
    std::fs::write(args.out.join("results.md"), report).map_err(|e| e.to_string())?;
    Ok(())
}

async fn run_default(args: &Args, traces: Vec<(Trace, u64)>) {
    let policies = [
        Policy::Vmpool {
            floor: 0,
            ready_secs: 180,
            period_secs: 0,
        },
        Policy::Vmpool {
            floor: 2,
            ready_secs: 180,
            period_secs: 0,
        },
        Policy::Agones(Buffer::Count(5)),
        Policy::Agones(Buffer::Percent(20)),
        Policy::PlayFab { floor: 5 },
        Policy::TargetTracking { percent: 20 },
        Policy::Fixed { n: 5 },
        Policy::Oracle,
    ];
    let (head, rule) = HEADER.split_once('\n').unwrap_or((HEADER, ""));
    println!("| trace {head}\n|---{rule}");
    for (trace, seed) in traces {
        let mut policies = policies.to_vec();
        if trace.period_secs != 0 {
            policies.insert(
                2,
                Policy::Vmpool {
                    floor: 2,
                    ready_secs: 180,
                    period_secs: trace.period_secs,
                },
            );
        }
        for (p, o) in sweep::run_all(&trace, &policies, seed, args.disk_ratio).await {
            println!(
                "| {} {}",
                trace.name,
                fmt_row(&Point::of(&p, &o, args.disk_ratio))
            );
        }
    }
}

/// vmpool with no floor and with a floor of 2 on each trace (the daily one unless others are
/// named), with a new build shipped at hour 12 (half-way through a shorter trace) and
/// without.
async fn run_rollout(args: &Args, traces: Vec<(Trace, u64)>) {
    let traces: Vec<(Trace, u64)> = if args.traces.is_empty() && args.csv.is_none() {
        traces
            .into_iter()
            .filter(|(t, _)| t.name == "daily")
            .collect()
    } else {
        traces
    };
    for (trace, seed) in traces {
        for floor in [0, 2] {
            let c = rollout::compare(&trace, floor, 180, seed).await;
            println!("{}\n", rollout::render(&c));
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pool_sim: {e}");
            return ExitCode::from(2);
        }
    };
    let traces: Vec<(Trace, u64)> = if let Some(path) = &args.csv {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("pool_sim: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        };
        match traces::parse_csv("csv", &text) {
            Ok(t) => vec![(
                Trace {
                    period_secs: args.demand_period,
                    ..t
                },
                100,
            )],
            Err(e) => {
                eprintln!("pool_sim: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    } else {
        let all = traces::all_traces();
        let unknown: Vec<&String> = args
            .traces
            .iter()
            .filter(|n| !all.iter().any(|t| &t.name == *n))
            .collect();
        if let Some(n) = unknown.first() {
            eprintln!("pool_sim: no trace called {n:?}");
            return ExitCode::from(2);
        }
        all.into_iter()
            .enumerate()
            .filter(|(_, t)| args.traces.is_empty() || args.traces.contains(&t.name))
            .map(|(i, t)| (t, 100 + i as u64))
            .collect()
    };
    if args.csv.is_some() && args.json {
        let size = if args.reduced {
            Size::Reduced
        } else {
            Size::Full
        };
        let (trace, seed) = &traces[0];
        let (_, points) = sweep_trace(trace, *seed, size, args.disk_ratio).await;
        match serde_json::to_string(&points) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("pool_sim: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    if args.rollout {
        run_rollout(&args, traces).await;
        return ExitCode::SUCCESS;
    }
    if args.sweep || args.csv.is_some() {
        if let Err(e) = run_sweep(&args, traces).await {
            eprintln!("pool_sim: {e}");
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
    run_default(&args, traces).await;
    ExitCode::SUCCESS
}
