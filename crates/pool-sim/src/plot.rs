//! PNG plots with `plotters`: each policy's points and Pareto front of p95 wait against cost
//! on one trace, and one day over time (demand, ready VMs and billed VMs per policy). Text is
//! drawn with an embedded DejaVu Sans, so no system font library is needed.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::measure::Sample;
use crate::sweep::{Measure, Point, front};

/// The colour each policy is drawn in.
fn colour(policy: &str) -> RGBColor {
    match policy {
        "vmpool" => RGBColor(214, 39, 40),
        "agones-buffer" => RGBColor(31, 119, 180),
        "playfab-standby" => RGBColor(44, 160, 44),
        "target-tracking" => RGBColor(148, 103, 189),
        "fixed-buffer" => RGBColor(140, 86, 75),
        _ => RGBColor(0, 0, 0),
    }
}

fn font() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| "the embedded font did not load".to_owned())
    })
    .clone()
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Draws every policy's points (small) and front (a line) of `points`, the oracle as a
/// cross, p95 wait against VM-hours, to `path`; vmpool's front counting its disks too is
/// dashed. Waits beyond `max_wait` seconds are left out.
pub fn fronts(path: &Path, title: &str, points: &[Point], max_wait: f64) -> Result<(), String> {
    font()?;
    let shown: Vec<&Point> = points.iter().filter(|p| p.p95_wait_s <= max_wait).collect();
    let x_max = shown.iter().map(|p| p.p95_wait_s).fold(10.0f64, f64::max) * 1.05;
    let y_min = shown
        .iter()
        .map(|p| p.cost_hours)
        .fold(f64::INFINITY, f64::min);
    let y_max = shown.iter().map(|p| p.cost_hours).fold(0.0f64, f64::max);
    let (y_min, y_max) = if y_min.is_finite() && y_max > y_min {
        let pad = (y_max - y_min) * 0.05;
        ((y_min - pad).max(0.0), y_max + pad)
    } else {
        (0.0, 1.0)
    };
    let root = BitMapBackend::new(path, (1000, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(-x_max * 0.02..x_max, y_min..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("p95 wait (s)")
        .y_desc("VM-hours")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    let mut names: Vec<&'static str> = Vec::new();
    for p in points {
        if !names.contains(&p.policy) {
            names.push(p.policy);
        }
    }
    for name in names {
        let c = colour(name);
        let mine: Vec<(f64, f64)> = shown
            .iter()
            .filter(|p| p.policy == name)
            .map(|p| (p.p95_wait_s, p.vm_hours))
            .collect();
        if name == "oracle" {
            chart
                .draw_series(mine.iter().map(|&xy| Cross::new(xy, 8, c.stroke_width(3))))
                .map_err(err)?
                .label("oracle")
                .legend(move |(x, y)| Cross::new((x + 10, y), 5, c.stroke_width(2)));
            continue;
        }
        chart
            .draw_series(
                mine.iter()
                    .map(|&xy| Circle::new(xy, 3, c.mix(0.5).filled())),
            )
            .map_err(err)?;
        let line = |measure: Measure| -> Vec<(f64, f64)> {
            front(points, name, measure)
                .into_iter()
                .filter(|p| p.p95_wait_s <= max_wait)
                .map(|p| (p.p95_wait_s, measure.of(p)))
                .collect()
        };
        if name == "vmpool" {
            chart
                .draw_series(DashedLineSeries::new(
                    line(Measure::Cost),
                    8,
                    5,
                    c.stroke_width(2),
                ))
                .map_err(err)?
                .label("vmpool with its disks (at the disk ratio)")
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 8, y)], c.stroke_width(2))
                });
        }
        let line = line(Measure::VmHours);
        chart
            .draw_series(LineSeries::new(line, c.stroke_width(3)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Draws a run over time to `path`: `demand` (sessions a zero-wait pool would host) and, for
/// each policy, its billed VMs (thick) and ready VMs (thin).
pub fn timeline(
    path: &Path,
    title: &str,
    demand: &[(f64, f64)],
    runs: &[(&'static str, &[Sample])],
) -> Result<(), String> {
    font()?;
    let hours = |s: &Sample| s.t as f64 / 3600.0;
    let x_max = runs
        .iter()
        .flat_map(|(_, s)| s.iter().map(hours))
        .chain(demand.iter().map(|d| d.0))
        .fold(1.0f64, f64::max);
    let y_max = runs
        .iter()
        .flat_map(|(_, s)| s.iter().map(|s| s.billed as f64))
        .chain(demand.iter().map(|d| d.1))
        .fold(1.0f64, f64::max)
        * 1.05;
    let root = BitMapBackend::new(path, (1200, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("hours")
        .y_desc("VMs")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            demand.iter().copied(),
            BLACK.stroke_width(2),
        ))
        .map_err(err)?
        .label("demand (sessions at zero wait)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    for &(name, samples) in runs {
        let c = colour(name);
        chart
            .draw_series(LineSeries::new(
                samples.iter().map(|s| (hours(s), s.billed as f64)),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("{name}: billed"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(
                samples.iter().map(|s| (hours(s), s.ready as f64)),
                c.mix(0.6).stroke_width(1),
            ))
            .map_err(err)?
            .label(format!("{name}: ready"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.mix(0.6)));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}
