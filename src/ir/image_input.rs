//! How a photo becomes a model input: the preprocessing an input declares
//! with `= image(...)`.
//!
//! ```text
//! input x: f32[batch, 3, 224, 224] = image(crop=0.875, mean=[127.0], std=[128.0])
//! ```
//!
//! The declaration belongs to the model (a checkpoint is only right with the
//! preprocessing it was trained with), so `lamina run MODEL --image a.jpg`
//! needs nothing else. `runtime::image` carries it out.

use crate::span::Span;

/// How the crop is brought to the input's height and width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResizeFilter {
    /// Each output pixel takes the nearest source pixel (half-pixel centres).
    Nearest,
    /// Bilinear interpolation between the four nearest source pixels
    /// (half-pixel centres, edges clamped, no antialiasing).
    Bilinear,
}

impl ResizeFilter {
    pub const NAMES: [&'static str; 2] = ["bilinear", "nearest"];

    pub fn from_name(name: &str) -> Option<ResizeFilter> {
        match name {
            "bilinear" => Some(ResizeFilter::Bilinear),
            "nearest" => Some(ResizeFilter::Nearest),
            _ => None,
        }
    }
}

/// One input's `= image(...)`: decode, centre crop, resize, normalise, NCHW.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageInput {
    /// The input it fills.
    pub input: String,
    /// 3 (RGB) or 1 (grey, the mean of R, G and B).
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// The centred crop: this fraction (in (0, 1]) of the largest centred
    /// region with the input's aspect ratio, so no photo is stretched.
    pub crop: f64,
    pub filter: ResizeFilter,
    /// Per channel, subtracted from pixel values on the 0..255 scale.
    pub mean: Vec<f32>,
    /// Per channel, what `pixel - mean` is divided by.
    pub std: Vec<f32>,
    /// The `image(...)` call, for messages.
    pub span: Span,
}
