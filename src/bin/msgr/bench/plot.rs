//! `--svg FILE`: two charts side by side in one SVG, drawn with plotters (SVG backend only, text left to
//! the viewer's fonts):
//! - latency by percentile: one line per message size, x the percentile on the usual
//!   HdrHistogram scale (`1 / (1 - q)`, logarithmic: 50%, 90%, 99%, 99.9%, …), y latency in µs (log);
//! - throughput by message size: Gbit/s (payload, as in the table) against size, log scale, with the
//!   msgs/s of each point in its label.
//!
//! Invariant: the plot shows the report's own figures (its `percentiles`, `gbit_per_sec`), never
//! anything recomputed.

use std::path::Path;

use plotters::prelude::*;

use super::report::Report;
use super::size::format_size;

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 480;

/// Draws `report` into `path`.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), String> {
    draw(report, path).map_err(|e| format!("plot {}: {e}", path.display()))
}

fn series_color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    COLORS[i % COLORS.len()]
}

/// The percentile axis position of quantile `q`: `1 / (1 - q)`.
fn percentile_x(q: f64) -> f64 {
    1.0 / (1.0 - q).max(1e-7)
}

fn percentile_label(x: f64) -> String {
    let q = 100.0 * (1.0 - 1.0 / x);
    let s = format!("{q:.5}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

/// Both charts' legend: a framed, lightly shaded box in the upper left.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
}

fn draw(report: &Report, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let h = &report.header;
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "msgr bench: {} {}, {} connection(s), window {}, msgr {} ({})",
        h.stack,
        h.mode,
        h.connections,
        h.window,
        h.msgr_version,
        h.git_commit
            .as_deref()
            .map_or("unknown commit", |c| &c[..c.len().min(10)])
    );
    let root = root.titled(&title, ("sans-serif", 16))?;
    let (left, right) = root.split_horizontally(WIDTH / 2);

    // Latency by percentile.
    let us = |ns: u64| (ns.max(1) as f64) / 1000.0;
    let points: Vec<Vec<(f64, f64)>> = report
        .results
        .iter()
        .map(|r| {
            r.percentiles
                .iter()
                .filter(|p| p.q < 1.0)
                .map(|p| (percentile_x(p.q), us(p.ns)))
                .collect()
        })
        .collect();
    let max_x = points.iter().flatten().map(|p| p.0).fold(10.0f64, f64::max);
    let (lo, hi) = points
        .iter()
        .flatten()
        .map(|p| p.1)
        .fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (lo, hi) = if lo <= hi {
        (lo / 1.5, hi * 1.5)
    } else {
        (1.0, 10.0)
    };
    let mut chart = ChartBuilder::on(&left)
        .caption("latency by percentile", ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1.5f64..max_x * 1.5).log_scale(), (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .y_labels(6)
        .light_line_style(WHITE)
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (i, (r, pts)) in report.results.iter().zip(&points).enumerate() {
        let color = series_color(i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(format!(
                "{} (p50 {:.1} µs)",
                format_size(r.msg_size),
                us(r.p50_ns)
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    draw_legend(&mut chart)?;

    // Throughput by size: x is log2 of the size, so the ticks fall on 64, 4k, 1m.
    let tp: Vec<(f64, f64, f64)> = report
        .results
        .iter()
        .map(|r| {
            (
                (r.msg_size.max(1) as f64).log2(),
                r.gbit_per_sec.max(1e-6),
                r.msgs_per_sec,
            )
        })
        .collect();
    let (xlo, xhi) = tp.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    let (xlo, xhi) = if xlo <= xhi {
        (xlo.floor() - 1.0, xhi.ceil() + 3.0)
    } else {
        (0.0, 10.0)
    };
    let (ylo, yhi) = tp.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let (ylo, yhi) = if ylo <= yhi {
        (ylo / 2.0, yhi * 3.0)
    } else {
        (0.001, 1.0)
    };
    let mut chart = ChartBuilder::on(&right)
        .caption(
            format!(
                "throughput by message size (payload, {})",
                if report.results.first().is_some_and(|r| r.directions == 1) {
                    "one direction"
                } else {
                    "both directions"
                }
            ),
            ("sans-serif", 15),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(xlo..xhi, (ylo..yhi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("message size (bytes, log scale)")
        .y_desc("Gbit/s")
        .x_labels(((xhi - xlo) as usize).max(2) + 1)
        .y_labels(6)
        .light_line_style(WHITE)
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-9 && (0.0..40.0).contains(x) {
                format_size(1usize << (x.round() as u32))
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.3}"))
        .draw()?;
    let color = series_color(0);
    chart
        .draw_series(LineSeries::new(
            tp.iter().map(|p| (p.0, p.1)),
            color.stroke_width(2),
        ))?
        .label(format!("{} {}", h.stack, h.mode))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    let right_end = tp.iter().map(|p| p.0).fold(f64::MIN, f64::max);
    chart.draw_series(tp.iter().map(|&(x, y, rate)| {
        // The rightmost label goes left of its point, so it stays inside the chart.
        let offset = if x >= right_end {
            (-150, -18)
        } else {
            (6, -14)
        };
        EmptyElement::at((x, y))
            + Circle::new((0, 0), 4, color.filled())
            + Text::new(
                format!("{y:.3} Gbit/s, {rate:.0}/s"),
                offset,
                ("sans-serif", 11),
            )
    }))?;
    draw_legend(&mut chart)?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis_labels() {
        assert_eq!(percentile_label(percentile_x(0.5)), "50%");
        assert_eq!(percentile_label(percentile_x(0.99)), "99%");
        assert_eq!(percentile_label(percentile_x(0.999)), "99.9%");
    }
}
