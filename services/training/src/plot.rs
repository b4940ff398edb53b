//! Line charts as SVG and PNG (plotters): the training's loss curves, and
//! the benchmark suite's charts (`inferenceguard bench plot`).
//!
//! Text needs a font: plotters is built with its `ab_glyph` rasteriser (pure Rust, no
//! fontconfig, no system library) and the first TrueType font found among
//! [`FONT_CANDIDATES`] (or `$IG_PLOT_FONT`) is registered. Without one the curves, axes and
//! grid are still drawn, with no text; the caller is told.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::train::CurvePoint;

/// Fonts tried in order (DejaVu ships with most Debian images, Liberation with many others).
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

/// Registers a font once; whether one is available.
fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let env = std::env::var("IG_PLOT_FONT").ok();
        for path in env.iter().map(String::as_str).chain(FONT_CANDIDATES.iter().copied()) {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// One line of a [`LineChart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its legend entry.
    pub label: String,
    /// `(x, y)` points, in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// Lines over a shared x axis, the y axis from 0.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    /// Caption.
    pub title: String,
    /// What the x axis shows.
    pub x_desc: String,
    /// What the y axis shows.
    pub y_desc: String,
    /// The lines (colours in order: blue, red, green, magenta, cyan, black, then again).
    pub series: Vec<Series>,
    /// A logarithmic x axis (x values must be > 0), for batch sizes and the like.
    pub log_x: bool,
    /// A dot on every point (for lines of a few measured points).
    pub markers: bool,
}

const PALETTE: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];

/// Draws `chart` into `svg` and `png`. Returns whether the text (title, axis
/// labels, legend) could be drawn.
pub fn line_chart(chart: &LineChart, svg: &Path, png: &Path) -> Result<bool> {
    let text = font_available();
    {
        let root = SVGBackend::new(svg, (800, 500)).into_drawing_area();
        draw(&root, chart, text)?;
        root.present().map_err(|e| anyhow!("{}: {e}", svg.display()))?;
    }
    {
        let root = BitMapBackend::new(png, (800, 500)).into_drawing_area();
        draw(&root, chart, text)?;
        root.present().map_err(|e| anyhow!("{}: {e}", png.display()))?;
    }
    Ok(text)
}

/// Draws the train (and held-out) loss per epoch into `svg` and `png`. Returns whether the
/// text (title, axis labels, legend) could be drawn.
pub fn loss_curve(curve: &[CurvePoint], title: &str, svg: &Path, png: &Path) -> Result<bool> {
    let mut series = vec![Series { label: "train".into(), points: curve.iter().map(|p| (p.epoch as f64, p.train)).collect() }];
    let held: Vec<(f64, f64)> = curve.iter().filter_map(|p| p.held_out.map(|h| (p.epoch as f64, h))).collect();
    if !held.is_empty() {
        series.push(Series { label: "held out".into(), points: held });
    }
    let chart = LineChart { title: title.into(), x_desc: "epoch".into(), y_desc: "mean loss".into(), series, log_x: false, markers: false };
    line_chart(&chart, svg, png)
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, chart: &LineChart, text: bool) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plot: {e}");
    root.fill(&WHITE).map_err(err)?;
    let points = || chart.series.iter().flat_map(|s| s.points.iter().copied());
    let (mut x_min, mut x_max) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (x, _)| (lo.min(x), hi.max(x)));
    if !x_min.is_finite() {
        (x_min, x_max) = (1.0, 2.0);
    }
    if x_max <= x_min {
        // One x value: widen the axis around it.
        (x_min, x_max) = if chart.log_x { (x_min / 2.0, x_max * 2.0) } else { (x_min - 1.0, x_max + 1.0) };
    } else if chart.markers {
        // Room for the dots at both ends.
        let pad = (x_max - x_min) * 0.04;
        (x_min, x_max) = if chart.log_x { (x_min / 1.15, x_max * 1.15) } else { (x_min - pad, x_max + pad) };
    }
    let y_max = points().map(|(_, y)| y).fold(0.0f64, f64::max).max(1e-3) * 1.05;
    let mut builder = ChartBuilder::on(root);
    builder.margin(20);
    if text {
        builder.caption(&chart.title, ("sans-serif", 22)).x_label_area_size(45).y_label_area_size(60);
    } else {
        builder.x_label_area_size(5).y_label_area_size(5);
    }
    if chart.log_x {
        let mut ctx = builder.build_cartesian_2d((x_min..x_max).log_scale(), 0f64..y_max).map_err(err)?;
        draw_lines(&mut ctx, chart, text).map_err(err)
    } else {
        let mut ctx = builder.build_cartesian_2d(x_min..x_max, 0f64..y_max).map_err(err)?;
        draw_lines(&mut ctx, chart, text).map_err(err)
    }
}

/// The mesh, the lines and the legend on built axes (linear or logarithmic x).
fn draw_lines<'a, DB: DrawingBackend + 'a, X: Ranged<ValueType = f64> + ValueFormatter<f64>>(
    ctx: &mut ChartContext<'a, DB, Cartesian2d<X, RangedCoordf64>>,
    chart: &LineChart,
    text: bool,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let mut mesh = ctx.configure_mesh();
    if text {
        mesh.x_desc(chart.x_desc.as_str()).y_desc(chart.y_desc.as_str());
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw()?;
    for (i, s) in chart.series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let drawn = ctx.draw_series(LineSeries::new(s.points.iter().copied(), colour.stroke_width(2)))?;
        if text {
            drawn.label(s.label.as_str()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        if chart.markers {
            ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
        }
    }
    if text {
        ctx.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let curve: Vec<CurvePoint> = (1..=10)
            .map(|e| CurvePoint { epoch: e, train: 1.0 / e as f64, held_out: Some(1.2 / e as f64) })
            .collect();
        let (svg, png) = (dir.path().join("l.svg"), dir.path().join("l.png"));
        loss_curve(&curve, "test", &svg, &png).unwrap();
        let svg_text = std::fs::read_to_string(&svg).unwrap();
        assert!(svg_text.contains("<svg") && svg_text.contains("polyline"));
        let png_bytes = std::fs::read(&png).unwrap();
        assert_eq!(&png_bytes[1..4], b"PNG");
    }
}
