//! PNG plots: the training curves `lamina train` writes, saliency heat maps
//! and the 2-D PCA scatter of `lamina analyze --pca`.
//!
//! Everything is drawn by plotters into an in-memory RGB bitmap and encoded
//! by the `image` crate. Text uses a font compiled into the binary (DejaVu
//! Sans, from the `dejavu` crate) through plotters' ab_glyph renderer, so a
//! machine without system fonts (a fresh CI image) plots the same as any
//! other.

pub mod curves;
pub mod heatmap;
pub mod scatter;

use std::path::Path;
use std::sync::Once;

use image::RgbImage;
use plotters::coord::Shift;
use plotters::prelude::*;

pub use curves::training_curves;
pub use heatmap::{heat_color, saliency_png};
pub use scatter::labelled_scatter;

/// The font family every plot's text uses; registered once, from bytes
/// compiled into the binary.
pub const FONT: &str = "sans-serif";

/// Why a plot could not be drawn or written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("drawing the plot failed: {0}")]
    Draw(String),
    #[error("{path}: cannot write the PNG: {message}")]
    Write { path: String, message: String },
    #[error("{0}")]
    Data(String),
}

fn register_font() {
    static REGISTERED: Once = Once::new();
    REGISTERED.call_once(|| {
        // The bytes are a valid TrueType font shipped by the dejavu crate;
        // failing here would be a build defect, not bad input.
        if plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_err()
        {
            panic!("the compiled-in DejaVu Sans font does not parse");
        }
    });
}

/// The drawing area plots draw on.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Draws into a `width` x `height` white RGB bitmap.
pub fn render(
    width: u32,
    height: u32,
    draw: impl FnOnce(&Area<'_>) -> Result<(), PlotError>,
) -> Result<RgbImage, PlotError> {
    register_font();
    let len = (width as usize)
        .checked_mul(height as usize)
        .and_then(|n| n.checked_mul(3))
        .ok_or_else(|| PlotError::Data(format!("a {width}x{height} image is too large")))?;
    let mut buffer = vec![0u8; len];
    {
        let area = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        area.fill(&WHITE).map_err(draw_error)?;
        draw(&area)?;
        area.present().map_err(draw_error)?;
    }
    RgbImage::from_raw(width, height, buffer)
        .ok_or_else(|| PlotError::Draw("the bitmap has the wrong size".into()))
}

/// Any plotters error as a [`PlotError::Draw`].
pub fn draw_error(e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// Encodes `image` as PNG and writes it atomically (temporary file + rename).
pub fn write_png(path: &Path, image: &RgbImage) -> Result<(), PlotError> {
    let write_error = |message: String| PlotError::Write {
        path: path.display().to_string(),
        message,
    };
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| write_error(e.to_string()))?;
    crate::runtime::files::write_atomically(path, &bytes).map_err(|e| write_error(e.to_string()))
}

/// `lo..hi` widened so a flat or single-point series still gets an axis.
pub(crate) fn padded_range(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let (lo, hi) = if lo.is_finite() && hi.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.05
    } else {
        lo.abs().max(1.0) * 0.05
    };
    (lo - pad)..(hi + pad)
}
