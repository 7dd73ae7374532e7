//! The report's plots (SVG): median latency, daemon CPU and total CPU (daemon and clients)
//! per message against the number of subscribers, and delivery rate against the payload
//! size.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::{Results, Scenario};

/// One line of a plot: a column of the results and its points.
type Line = (String, Vec<(f64, f64)>);

pub fn all(r: &Results, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let fan = |subs: Option<usize>, payload: Option<usize>| {
        move |s: &Scenario| match s {
            Scenario::FanOut(f) if f.matching == f.subscribers && f.window > 1 => {
                let x = match (subs, payload) {
                    (None, Some(p)) if f.payload == p => f.subscribers,
                    (Some(n), None) if f.subscribers == n => f.payload,
                    _ => return None,
                };
                Some(x as f64)
            }
            _ => None,
        }
    };
    chart(
        &dir.join("latency.svg"),
        "Signal fan-out, 64 B: median latency",
        ("subscribers", "p50 latency (us)"),
        SeriesLabelPosition::UpperLeft,
        &lines(r, fan(None, Some(64)), |m| m.p50_us, true),
    )?;
    chart(
        &dir.join("cpu.svg"),
        "Signal fan-out, 64 B: daemon CPU per delivered message",
        ("subscribers", "daemon CPU per message (us)"),
        SeriesLabelPosition::UpperRight,
        &lines(r, fan(None, Some(64)), |m| m.cpu_ns_per_op / 1000.0, false),
    )?;
    chart(
        &dir.join("throughput.svg"),
        "Signal fan-out to 10 subscribers: messages delivered per second",
        ("payload (bytes)", "delivered per second"),
        SeriesLabelPosition::LowerLeft,
        &lines(r, fan(Some(10), None), |m| m.rate, true),
    )?;
    let total = |m: &super::Measure| m.total_cpu_ns_per_op / 1000.0;
    chart(
        &dir.join("total-cpu.svg"),
        "Signal fan-out, 64 B, one process: total CPU (daemon + clients) per delivery",
        ("subscribers", "total CPU per delivery (us)"),
        SeriesLabelPosition::UpperRight,
        &lines(r, fan(None, Some(64)), total, false),
    )?;
    chart(
        &dir.join("total-cpu-processes.svg"),
        "Signal fan-out, 64 B, subscribers in processes: total CPU per delivery",
        ("subscribers", "total CPU per delivery (us)"),
        SeriesLabelPosition::UpperLeft,
        &lines(
            r,
            |s| match s {
                Scenario::FanOutProcesses(f) if f.payload == 64 => Some(f.subscribers as f64),
                _ => None,
            },
            total,
            false,
        ),
    )?;
    scale(r, dir)
}

/// The scale scenarios' plots (when the run had them): daemon CPU per method call against
/// idle connections, and per signal against unrelated rules (the worst shape at each
/// point).
fn scale(r: &Results, dir: &Path) -> Result<()> {
    let cpu = |m: &super::Measure| m.cpu_ns_per_op / 1000.0;
    let idle = lines(
        r,
        |s| match s {
            Scenario::Idle(n) => Some(*n as f64),
            _ => None,
        },
        cpu,
        false,
    );
    chart(
        &dir.join("scale-idle.svg"),
        "Method calls beside idle connections: daemon CPU per call",
        ("idle connections", "daemon CPU per call (us)"),
        SeriesLabelPosition::UpperLeft,
        &idle,
    )?;
    let rules: Vec<Line> = lines(
        r,
        |s| match s {
            Scenario::Unrelated(n, _) => Some(*n as f64),
            _ => None,
        },
        cpu,
        false,
    )
    .into_iter()
    .map(|(name, points)| {
        let mut worst: Vec<(f64, f64)> = Vec::new();
        for (x, y) in points {
            match worst.last_mut() {
                Some(last) if last.0 == x => last.1 = last.1.max(y),
                _ => worst.push((x, y)),
            }
        }
        (name, worst)
    })
    .collect();
    chart(
        &dir.join("scale-rules.svg"),
        "Signals beside unrelated rules: daemon CPU per signal (worst shape)",
        ("unrelated rules", "daemon CPU per signal (us)"),
        SeriesLabelPosition::UpperLeft,
        &rules,
    )
}

/// For each column with results, the median of `value` at every scenario `x` selects.
fn lines(
    r: &Results,
    x: impl Fn(&Scenario) -> Option<f64>,
    value: fn(&super::Measure) -> f64,
    with_floors: bool,
) -> Vec<Line> {
    let mut out = Vec::new();
    for (c, column) in r.columns.iter().enumerate() {
        if !with_floors && column.starts_with("floor") {
            continue;
        }
        let mut points: Vec<(f64, f64)> = r
            .scenarios
            .iter()
            .enumerate()
            .filter_map(|(s, sc)| Some((x(sc)?, r.median(s, c, value)?)))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !points.is_empty() {
            out.push((column.clone(), points));
        }
    }
    out
}

fn chart(
    path: &Path,
    title: &str,
    (xd, yd): (&str, &str),
    legend: SeriesLabelPosition,
    lines: &[Line],
) -> Result<()> {
    if lines.is_empty() {
        // Nothing measured for it in this run (a --scale run has no fan-out).
        return Ok(());
    }
    let pts = || lines.iter().flat_map(|l| l.1.iter());
    let (x0, x1) = bounds(pts().map(|p| p.0));
    let (y0, y1) = bounds(pts().map(|p| p.1));
    let root = SVGBackend::new(path, (760, 440)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("plotting {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(xd)
        .y_desc(yd)
        .x_labels(6)
        .y_labels(8)
        .x_label_formatter(&|v| human(*v))
        .y_label_formatter(&|v| human(*v))
        .light_line_style(WHITE)
        .draw()
        .map_err(e)?;
    for (i, (name, points)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(e)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// A log axis's range around the values (positive, a little margin).
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.1, 1.0);
    }
    (lo / 1.5, hi * 1.5)
}

/// 1500 -> "1.5k", 65536 -> "66k", 0.25 -> "0.25".
fn human(v: f64) -> String {
    let (v, unit) = match v {
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "k"),
        v => (v, ""),
    };
    let digits = if v >= 10.0 {
        0
    } else if v >= 1.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$}{unit}")
}
