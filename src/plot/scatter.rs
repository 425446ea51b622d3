//! A 2-D scatter plot with a text label beside every point (the PCA view of
//! `lamina analyze --pca`).

use image::RgbImage;
use plotters::prelude::*;

use super::{draw_error, padded_range, render, PlotError, FONT};

/// The points' colour.
pub const POINT_COLOR: RGBColor = RGBColor(31, 119, 180);
pub const WIDTH: u32 = 1000;
pub const HEIGHT: u32 = 800;
/// Longer labels are cut to this many characters (and an ellipsis).
const LABEL_CHARS: usize = 40;

/// `points` as dots, each with its label, under `caption`, axes named
/// `x_desc` and `y_desc`; a [`WIDTH`] x [`HEIGHT`] image.
pub fn labelled_scatter(
    points: &[(f64, f64)],
    labels: &[String],
    caption: &str,
    x_desc: &str,
    y_desc: &str,
) -> Result<RgbImage, PlotError> {
    if points.is_empty() || points.len() != labels.len() {
        return Err(PlotError::Data(format!(
            "a scatter plot needs points and one label each ({} points, {} labels)",
            points.len(),
            labels.len()
        )));
    }
    let bounds = |f: fn(&(f64, f64)) -> f64| {
        points
            .iter()
            .map(f)
            .filter(|v| v.is_finite())
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)))
    };
    let (x_lo, x_hi) = bounds(|p| p.0);
    let (y_lo, y_hi) = bounds(|p| p.1);
    // Room on the right for the labels of the rightmost points.
    let x_range = padded_range(x_lo, x_hi);
    let x_range = x_range.start..x_range.end + 0.25 * (x_range.end - x_range.start);
    render(WIDTH, HEIGHT, |area| {
        let mut chart = ChartBuilder::on(area)
            .caption(caption, (FONT, 22))
            .margin(16)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(x_range, padded_range(y_lo, y_hi))
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .draw()
            .map_err(draw_error)?;
        let font = (FONT, 13).into_font().color(&BLACK);
        chart
            .draw_series(
                points
                    .iter()
                    .zip(labels)
                    .filter(|(p, _)| p.0.is_finite() && p.1.is_finite())
                    .map(|(&p, label)| {
                        let text = short(label);
                        EmptyElement::at(p)
                            + Circle::new((0, 0), 4, POINT_COLOR.filled())
                            + Text::new(text, (7, -7), font.clone())
                    }),
            )
            .map_err(draw_error)?;
        Ok(())
    })
}

fn short(label: &str) -> String {
    if label.chars().count() <= LABEL_CHARS {
        label.to_string()
    } else {
        let cut: String = label.chars().take(LABEL_CHARS - 1).collect();
        format!("{cut}…")
    }
}
