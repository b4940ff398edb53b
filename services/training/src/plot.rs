//! Loss curves as SVG and PNG (plotters).
//!
//! Text needs a font: plotters is built with its `ab_glyph` rasteriser (pure Rust, no
//! fontconfig, no system library) and the first TrueType font found among
//! [`FONT_CANDIDATES`] (or `$IG_PLOT_FONT`) is registered. Without one the curves, axes and
//! grid are still drawn, with no text; the caller is told.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
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

/// Draws the train (and held-out) loss per epoch into `svg` and `png`. Returns whether the
/// text (title, axis labels, legend) could be drawn.
pub fn loss_curve(curve: &[CurvePoint], title: &str, svg: &Path, png: &Path) -> Result<bool> {
    let text = font_available();
    {
        let root = SVGBackend::new(svg, (800, 500)).into_drawing_area();
        draw(&root, curve, title, text)?;
        root.present().map_err(|e| anyhow!("{}: {e}", svg.display()))?;
    }
    {
        let root = BitMapBackend::new(png, (800, 500)).into_drawing_area();
        draw(&root, curve, title, text)?;
        root.present().map_err(|e| anyhow!("{}: {e}", png.display()))?;
    }
    Ok(text)
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, curve: &[CurvePoint], title: &str, text: bool) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plot: {e}");
    root.fill(&WHITE).map_err(err)?;
    let n = curve.len().max(2) as f64;
    let max = curve
        .iter()
        .flat_map(|p| std::iter::once(p.train).chain(p.held_out))
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.05;
    let mut builder = ChartBuilder::on(root);
    builder.margin(20);
    if text {
        builder.caption(title, ("sans-serif", 22)).x_label_area_size(45).y_label_area_size(60);
    } else {
        builder.x_label_area_size(5).y_label_area_size(5);
    }
    let mut chart = builder.build_cartesian_2d(1f64..n, 0f64..max).map_err(err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("epoch").y_desc("mean loss");
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(err)?;
    let train: Vec<(f64, f64)> = curve.iter().map(|p| (p.epoch as f64, p.train)).collect();
    let s = chart.draw_series(LineSeries::new(train, BLUE.stroke_width(2))).map_err(err)?;
    if text {
        s.label("train").legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    }
    let held: Vec<(f64, f64)> = curve.iter().filter_map(|p| p.held_out.map(|h| (p.epoch as f64, h))).collect();
    if !held.is_empty() {
        let s = chart.draw_series(LineSeries::new(held, RED.stroke_width(2))).map_err(err)?;
        if text {
            s.label("held out").legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
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
