//! `chart.svg`: p50 latency (64 B, one call in flight) and throughput at 64 calls in flight, by
//! system, one bar per placement.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;
use crate::systems::Result;

const COLORS: [RGBColor; 2] = [RGBColor(52, 101, 164), RGBColor(237, 125, 49)];

/// Draws the chart into `path`.
pub(crate) fn draw(report: &Report, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let systems: Vec<String> = report.systems.iter().map(|s| s.name.clone()).collect();

    let latency: Vec<Vec<Option<f64>>> = report
        .placements
        .iter()
        .map(|p| {
            systems
                .iter()
                .map(|name| {
                    p.results
                        .iter()
                        .find(|r| r.system.name() == name)
                        .and_then(|r| r.latency.as_ref())
                        .map(|l| l.percentiles.p50_us)
                })
                .collect()
        })
        .collect();
    let throughput: Vec<Vec<Option<f64>>> = report
        .placements
        .iter()
        .map(|p| {
            systems
                .iter()
                .map(|name| {
                    p.results
                        .iter()
                        .find(|r| r.system.name() == name)
                        .and_then(|r| r.throughput.iter().find(|t| t.in_flight == 64))
                        .map(|t| t.calls_per_s / 1000.0)
                })
                .collect()
        })
        .collect();
    let keys: Vec<String> = report.placements.iter().map(|p| p.key.clone()).collect();
    panel(
        &left,
        "p50 latency, 64 B, 1 in flight (µs, lower is better)",
        &systems,
        &keys,
        &latency,
    )?;
    panel(
        &right,
        "throughput, 64 in flight (k calls/s, higher is better)",
        &systems,
        &keys,
        &throughput,
    )?;
    root.present()?;
    Ok(())
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    systems: &[String],
    placements: &[String],
    values: &[Vec<Option<f64>>],
) -> Result<()> {
    let max = values
        .iter()
        .flatten()
        .flatten()
        .copied()
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.15;
    let n = systems.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..n as f64, 0f64..max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            let centred = (x - x.floor() - 0.5).abs() < 0.01;
            match systems.get(i) {
                Some(name) if centred => name.clone(),
                _ => String::new(),
            }
        })
        .draw()?;
    let groups = placements.len().max(1) as f64;
    let width = 0.8 / groups;
    for (j, (placement, series)) in placements.iter().zip(values).enumerate() {
        let color = COLORS[j % COLORS.len()];
        let bars = series
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i, v)))
            .map(|(i, v)| {
                let x0 = i as f64 + 0.1 + j as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width, v)], color.filled())
            });
        chart
            .draw_series(bars)?
            .label(placement.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}
