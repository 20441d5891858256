//! The SVG report: latency percentile curves per client and traffic share per backend over time.

use crate::report::{Report, CURVE};
use plotters::prelude::*;
use std::path::Path;

const WIDTH: u32 = 1100;
const CURVES_HEIGHT: u32 = 380;
const SHARE_HEIGHT: u32 = 230;

/// Draws `report` to an SVG file at `path`.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), String> {
    draw(report, path).map_err(|e| format!("cannot draw {}: {e}", path.display()))
}

fn draw(report: &Report, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let rows = report.clients.len() as u32;
    let root =
        SVGBackend::new(path, (WIDTH, CURVES_HEIGHT + rows * SHARE_HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(CURVES_HEIGHT);

    let all_ms = report
        .clients
        .iter()
        .flat_map(|c| c.curve.iter())
        .map(|d| d.as_secs_f64() * 1000.0);
    let max_ms = all_ms.clone().fold(0.0f64, f64::max).max(0.01) * 1.3;
    let min_ms = all_ms
        .fold(f64::INFINITY, f64::min)
        .clamp(0.001, max_ms / 2.0)
        * 0.8;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!(
                "{}: latency by percentile (seed {})",
                report.scenario, report.seed
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .margin_right(40)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..(CURVE.len() - 1) as f64, (min_ms..max_ms).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(CURVE.len())
        .x_label_formatter(&|x| {
            let i = x.round() as usize;
            CURVE.get(i).map_or(String::new(), |q| format!("p{q}"))
        })
        .y_desc("latency (ms, log scale)")
        .draw()?;
    for (i, c) in report.clients.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points = c
            .curve
            .iter()
            .enumerate()
            .map(|(x, d)| (x as f64, (d.as_secs_f64() * 1000.0).max(min_ms)));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(c.client.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;

    let panels = bottom.split_evenly((rows.max(1) as usize, 1));
    for (panel, c) in panels.iter().zip(&report.clients) {
        let seconds = c.share.len() as f64 * c.bucket_ms as f64 / 1000.0;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{}: share of calls per backend over time", c.client),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..seconds.max(0.001), 0f64..100f64)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("% of calls")
            .draw()?;
        for (b, name) in report.backends.iter().enumerate() {
            let color = Palette99::pick(b + 3).to_rgba();
            // Buckets in which no call was made (the tail of the run) have no share to draw.
            let points = c
                .share
                .iter()
                .enumerate()
                .filter(|(_, row)| row.iter().sum::<f64>() > 0.0)
                .map(|(i, row)| {
                    (
                        (i as f64 + 0.5) * c.bucket_ms as f64 / 1000.0,
                        row.get(b).copied().unwrap_or(0.0) * 100.0,
                    )
                });
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(1)))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
