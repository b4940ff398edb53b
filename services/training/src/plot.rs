//! Charts as SVG and PNG (plotters): line charts (the training's loss curves,
//! the benchmark suite's charts), and the evaluation's labelled scatter plots
//! and box plots (`inferenceguard eval`).
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
    both(chart, svg, png, (800, 500))
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

/// A labelled point of a [`ScatterChart`].
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledPoint {
    /// Written beside the dot (and its colour's key).
    pub label: String,
    /// Horizontal position.
    pub x: f64,
    /// Vertical position.
    pub y: f64,
}

/// Labelled dots, one colour each (evaluation: one dot per method).
#[derive(Debug, Clone, PartialEq)]
pub struct ScatterChart {
    /// Caption.
    pub title: String,
    /// What the x axis shows.
    pub x_desc: String,
    /// What the y axis shows.
    pub y_desc: String,
    /// The dots (colours in order).
    pub points: Vec<LabelledPoint>,
    /// A fixed x range (else the points' with a margin).
    pub x_range: Option<(f64, f64)>,
}

/// A row of a [`BoxChart`]: the values of one group.
#[derive(Debug, Clone, PartialEq)]
pub struct BoxRow {
    /// Written left of the row.
    pub label: String,
    /// Its values (non-finite ones are ignored).
    pub values: Vec<f64>,
}

/// Horizontal box plots, one row per group: the box spans the quartiles, the
/// bar is the median, the whiskers reach the most extreme values within 1.5
/// IQR of the box, and values beyond them are dots.
#[derive(Debug, Clone, PartialEq)]
pub struct BoxChart {
    /// Caption.
    pub title: String,
    /// What the x axis shows.
    pub x_desc: String,
    /// The rows, top to bottom.
    pub rows: Vec<BoxRow>,
    /// A dashed vertical line at this x (a threshold such as the budget).
    pub marker: Option<(f64, String)>,
}

/// The five numbers a box shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxStats {
    /// The smallest value within 1.5 IQR below the box.
    pub whisker_low: f64,
    /// First quartile.
    pub q1: f64,
    /// Median.
    pub median: f64,
    /// Third quartile.
    pub q3: f64,
    /// The largest value within 1.5 IQR above the box.
    pub whisker_high: f64,
}

impl BoxStats {
    /// Quartiles by linear interpolation; whiskers clamped to the data
    /// within 1.5 IQR. `None` for no finite value.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            let rank = p * (v.len() - 1) as f64;
            let (lo, frac) = (rank.floor() as usize, rank.fract());
            v[lo] + (v[(lo + 1).min(v.len() - 1)] - v[lo]) * frac
        };
        let (q1, median, q3) = (pct(0.25), pct(0.5), pct(0.75));
        let (fence_low, fence_high) = (q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1));
        // The quartiles are interpolated: the nearest value inside a fence may lie inside the box.
        let whisker_low = v.iter().copied().find(|&x| x >= fence_low).unwrap_or(q1).min(q1);
        let whisker_high = v.iter().rev().copied().find(|&x| x <= fence_high).unwrap_or(q3).max(q3);
        Some(Self { whisker_low, q1, median, q3, whisker_high })
    }
}

/// Draws `chart` into `svg` and `png`; whether text could be drawn.
pub fn scatter_chart(chart: &ScatterChart, svg: &Path, png: &Path) -> Result<bool> {
    both(chart, svg, png, (800, 560))
}

/// Draws `chart` into `svg` and `png`; whether text could be drawn.
pub fn box_chart(chart: &BoxChart, svg: &Path, png: &Path) -> Result<bool> {
    let height = 120 + 34 * chart.rows.len() as u32;
    both(chart, svg, png, (860, height))
}

/// A chart that draws itself on any plotters backend.
trait Chart {
    fn draw_on<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, text: bool) -> Result<()>
    where
        DB::ErrorType: 'static;
}

impl Chart for LineChart {
    fn draw_on<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, text: bool) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        draw(root, self, text)
    }
}

impl Chart for ScatterChart {
    fn draw_on<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, text: bool) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        draw_scatter(root, self, text)
    }
}

impl Chart for BoxChart {
    fn draw_on<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, text: bool) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        draw_boxes(root, self, text)
    }
}

/// Renders `chart` into an SVG and a PNG file; whether text could be drawn.
fn both(chart: &impl Chart, svg: &Path, png: &Path, size: (u32, u32)) -> Result<bool> {
    let text = font_available();
    {
        let root = SVGBackend::new(svg, size).into_drawing_area();
        chart.draw_on(&root, text)?;
        root.present().map_err(|e| anyhow!("{}: {e}", svg.display()))?;
    }
    {
        let root = BitMapBackend::new(png, size).into_drawing_area();
        chart.draw_on(&root, text)?;
        root.present().map_err(|e| anyhow!("{}: {e}", png.display()))?;
    }
    Ok(text)
}

/// An axis range around `values` with a margin (a unit wide when they are all equal).
fn padded(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        return (lo - 0.5, hi + 0.5);
    }
    let m = (hi - lo) * pad;
    (lo - m, hi + m)
}

fn draw_scatter<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, chart: &ScatterChart, text: bool) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plot: {e}");
    root.fill(&WHITE).map_err(err)?;
    let (x_lo, x_hi) = chart.x_range.unwrap_or_else(|| padded(chart.points.iter().map(|p| p.x), 0.08));
    // Room on the right of the dots for their labels.
    let x_hi = x_hi + (x_hi - x_lo) * 0.2;
    let (y_lo, y_hi) = padded(chart.points.iter().map(|p| p.y), 0.1);
    let mut builder = ChartBuilder::on(root);
    builder.margin(20);
    if text {
        builder.caption(&chart.title, ("sans-serif", 22)).x_label_area_size(45).y_label_area_size(65);
    }
    let mut ctx = builder.build_cartesian_2d(x_lo..x_hi, y_lo..y_hi).map_err(err)?;
    let mut mesh = ctx.configure_mesh();
    if text {
        mesh.x_desc(chart.x_desc.as_str()).y_desc(chart.y_desc.as_str());
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(err)?;
    for (i, p) in chart.points.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let dot = EmptyElement::at((p.x, p.y)) + Circle::new((0, 0), 6, colour.filled());
        if text {
            let label = Text::new(p.label.clone(), (9, -7), ("sans-serif", 14).into_font().color(&colour));
            ctx.draw_series(std::iter::once(dot + label)).map_err(err)?;
        } else {
            ctx.draw_series(std::iter::once(dot)).map_err(err)?;
        }
    }
    Ok(())
}

fn draw_boxes<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, chart: &BoxChart, text: bool) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plot: {e}");
    root.fill(&WHITE).map_err(err)?;
    let all = || chart.rows.iter().flat_map(|r| r.values.iter().copied()).chain(chart.marker.iter().map(|m| m.0));
    let (x_lo, x_hi) = padded(all(), 0.05);
    let n = chart.rows.len().max(1);
    // Row i sits at y = n - 1 - i, so the first row is on top.
    let mut builder = ChartBuilder::on(root);
    builder.margin(20);
    if text {
        builder.caption(&chart.title, ("sans-serif", 22)).x_label_area_size(45).y_label_area_size(200);
    }
    let mut ctx = builder.build_cartesian_2d(x_lo..x_hi, -0.5..n as f64 - 0.5).map_err(err)?;
    let labels: Vec<&str> = chart.rows.iter().map(|r| r.label.as_str()).collect();
    let row_label = |y: &f64| {
        let k = y.round();
        if (y - k).abs() > 1e-6 || k < 0.0 || k as usize >= n {
            return String::new();
        }
        labels.get(n - 1 - k as usize).map_or(String::new(), |s| s.to_string())
    };
    let mut mesh = ctx.configure_mesh();
    mesh.y_labels(n + 1).y_label_formatter(&row_label).disable_y_mesh();
    if text {
        mesh.x_desc(chart.x_desc.as_str());
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(err)?;
    if let Some((x, label)) = &chart.marker {
        let dashes = (0..40).map(|k| {
            let y0 = -0.5 + k as f64 * n as f64 / 40.0;
            PathElement::new(vec![(*x, y0), (*x, y0 + n as f64 / 80.0)], BLACK.stroke_width(1))
        });
        ctx.draw_series(dashes).map_err(err)?;
        if text {
            ctx.draw_series(std::iter::once(Text::new(label.clone(), (*x, n as f64 - 0.5), ("sans-serif", 13)))).map_err(err)?;
        }
    }
    for (i, row) in chart.rows.iter().enumerate() {
        let Some(b) = BoxStats::of(&row.values) else { continue };
        let y = (n - 1 - i) as f64;
        let colour = Palette99::pick(i).to_rgba();
        let line = colour.stroke_width(2);
        ctx.draw_series([
            Rectangle::new([(b.q1, y - 0.3), (b.q3, y + 0.3)], colour.mix(0.25).filled()),
            Rectangle::new([(b.q1, y - 0.3), (b.q3, y + 0.3)], line),
        ])
        .map_err(err)?;
        ctx.draw_series([
            PathElement::new(vec![(b.median, y - 0.3), (b.median, y + 0.3)], BLACK.stroke_width(3)),
            PathElement::new(vec![(b.whisker_low, y), (b.q1, y)], line),
            PathElement::new(vec![(b.q3, y), (b.whisker_high, y)], line),
            PathElement::new(vec![(b.whisker_low, y - 0.15), (b.whisker_low, y + 0.15)], line),
            PathElement::new(vec![(b.whisker_high, y - 0.15), (b.whisker_high, y + 0.15)], line),
        ])
        .map_err(err)?;
        let outliers = row.values.iter().filter(|&&v| v.is_finite() && (v < b.whisker_low || v > b.whisker_high));
        ctx.draw_series(outliers.map(|&v| Circle::new((v, y), 3, colour.filled()))).map_err(err)?;
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

    #[test]
    fn box_stats_clamp_whiskers_to_the_data() {
        let b = BoxStats::of(&[1.0, 2.0, 3.0, 4.0, 100.0]).unwrap();
        assert_eq!((b.q1, b.median, b.q3), (2.0, 3.0, 4.0));
        // 100 lies beyond q3 + 1.5 IQR = 7: an outlier; the whisker stops at 4, the last value inside.
        assert_eq!((b.whisker_low, b.whisker_high), (1.0, 4.0));
        // The last value inside the fence (0.1) is below the interpolated q3 (0.4): the whisker stays at the box.
        let b = BoxStats::of(&[-0.6, 0.0, 0.1, 1.3]).unwrap();
        assert!((b.q3 - 0.4).abs() < 1e-12 && b.whisker_high == b.q3);
        assert_eq!(BoxStats::of(&[f64::NAN]), None);
        let one = BoxStats::of(&[2.5]).unwrap();
        assert_eq!((one.whisker_low, one.median, one.whisker_high), (2.5, 2.5, 2.5));
    }

    #[test]
    fn scatter_and_box_charts_write_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let scatter = ScatterChart {
            title: "t".into(),
            x_desc: "x".into(),
            y_desc: "y".into(),
            points: vec![LabelledPoint { label: "a".into(), x: 0.5, y: 1.0 }, LabelledPoint { label: "b".into(), x: 0.9, y: -1.0 }],
            x_range: Some((0.0, 1.0)),
        };
        let (svg, png) = (dir.path().join("s.svg"), dir.path().join("s.png"));
        scatter_chart(&scatter, &svg, &png).unwrap();
        assert!(std::fs::read_to_string(&svg).unwrap().contains("<circle"));
        let boxes = BoxChart {
            title: "t".into(),
            x_desc: "x".into(),
            rows: vec![BoxRow { label: "a".into(), values: vec![1.0, 2.0, 3.0] }, BoxRow { label: "b".into(), values: vec![] }],
            marker: Some((0.0, "B".into())),
        };
        let (svg, png) = (dir.path().join("b.svg"), dir.path().join("b.png"));
        box_chart(&boxes, &svg, &png).unwrap();
        assert!(std::fs::read_to_string(&svg).unwrap().contains("<rect"));
        assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
    }
}
