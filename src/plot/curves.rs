//! The training curves: loss (left) and accuracy (right) per epoch, for the
//! training set and, where there is one, the validation set.

use image::RgbImage;
use plotters::prelude::*;

use super::{draw_error, padded_range, render, Area, PlotError, FONT};
use crate::engine::train::EpochReport;

/// The training series' colour (lines and markers).
pub const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
/// The validation series' colour.
pub const VAL_COLOR: RGBColor = RGBColor(255, 127, 14);
/// The size `lamina train` writes: two panels side by side.
pub const WIDTH: u32 = 1200;
pub const HEIGHT: u32 = 450;

/// The loss and accuracy curves of `epochs` as a [`WIDTH`] x [`HEIGHT`]
/// image: loss on the left, accuracy (percent) on the right, the training
/// series in [`TRAIN_COLOR`], validation in [`VAL_COLOR`]. Runs without
/// accuracy (not a classifier) say so in the right panel.
pub fn training_curves(epochs: &[EpochReport]) -> Result<RgbImage, PlotError> {
    if epochs.is_empty() {
        return Err(PlotError::Data("no epochs to plot".into()));
    }
    render(WIDTH, HEIGHT, |area| {
        let (left, right) = area.split_horizontally(WIDTH / 2);
        let loss = [
            (
                "train loss",
                TRAIN_COLOR,
                series(epochs, |r| Some(r.train_loss)),
            ),
            ("validation loss", VAL_COLOR, series(epochs, |r| r.val_loss)),
        ];
        panel(
            &left,
            "loss",
            "loss",
            &loss,
            SeriesLabelPosition::UpperRight,
        )?;
        let percent = |a: Option<f64>| a.map(|a| 100.0 * a);
        let accuracy = [
            (
                "train accuracy",
                TRAIN_COLOR,
                series(epochs, |r| percent(r.train_accuracy)),
            ),
            (
                "validation accuracy",
                VAL_COLOR,
                series(epochs, |r| percent(r.val_accuracy)),
            ),
        ];
        if accuracy.iter().all(|(_, _, s)| s.is_empty()) {
            right
                .draw_text(
                    "no accuracy: the model is not trained as a classifier",
                    &(FONT, 18).into_font().color(&BLACK),
                    (40, (HEIGHT / 2) as i32),
                )
                .map_err(draw_error)?;
            return Ok(());
        }
        panel(
            &right,
            "accuracy",
            "accuracy (%)",
            &accuracy,
            SeriesLabelPosition::LowerRight,
        )
    })
}

/// (epoch, value) for the epochs that have the value (finite ones only).
fn series(epochs: &[EpochReport], value: impl Fn(&EpochReport) -> Option<f64>) -> Vec<(f64, f64)> {
    epochs
        .iter()
        .filter_map(|r| Some((r.epoch as f64, value(r).filter(|v| v.is_finite())?)))
        .collect()
}

fn panel(
    area: &Area<'_>,
    caption: &str,
    y_label: &str,
    lines: &[(&str, RGBColor, Vec<(f64, f64)>)],
    legend: SeriesLabelPosition,
) -> Result<(), PlotError> {
    let points = lines.iter().flat_map(|(_, _, s)| s.iter());
    let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x_lo = x_lo.min(x);
        x_hi = x_hi.max(x);
        y_lo = y_lo.min(y);
        y_hi = y_hi.max(y);
    }
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(padded_range(x_lo, x_hi), padded_range(y_lo, y_hi))
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_label_formatter(&|x| {
            if x.fract() == 0.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.1}")
            }
        })
        .y_desc(y_label)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()
        .map_err(draw_error)?;
    for (name, color, points) in lines.iter().filter(|(_, _, s)| !s.is_empty()) {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(draw_error)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(draw_error)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .position(legend)
        .draw()
        .map_err(draw_error)
}
