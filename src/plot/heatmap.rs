//! Saliency heat maps: the input as a picture, the map, and the map laid
//! over the picture, side by side, upscaled (nearest neighbour) so an 8x8
//! digit is as visible as a 224x224 photo.

use image::{Rgb, RgbImage};
use plotters::prelude::*;

use super::{draw_error, render, PlotError, FONT};
use crate::engine::saliency::SaliencyMap;

/// Pixels above the panels, for the title, and between panels.
const TITLE: u32 = 56;
const GAP: u32 = 16;
const CAPTION: u32 = 26;
/// Panels are upscaled to at least this many pixels on their longer side.
const MIN_SIDE: usize = 256;

/// The colour of a heat value in [0, 1]: black, red, yellow, white.
pub fn heat_color(v: f32) -> [u8; 3] {
    let v = if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let ramp = |x: f32| (x.clamp(0.0, 1.0) * 255.0).round() as u8;
    [ramp(3.0 * v), ramp(3.0 * v - 1.0), ramp(3.0 * v - 2.0)]
}

/// The nearest-neighbour upscale factor of a panel.
pub fn scale(height: usize, width: usize) -> usize {
    MIN_SIDE.div_ceil(height.max(width).max(1)).max(1)
}

/// Three panels: the example's input as a picture (3 channels as RGB,
/// others as grey, stretched from its minimum to its maximum), the heat
/// map (relative to its maximum: [`heat_color`]) and the map over a grey
/// version of the picture, under `title`.
pub fn saliency_png(picture: &SaliencyMap, title: &str) -> Result<RgbImage, PlotError> {
    let map = &picture.map[..];
    let (h, w) = (picture.height, picture.width);
    let pixels = h
        .checked_mul(w)
        .filter(|&n| n > 0)
        .ok_or_else(|| PlotError::Data(format!("a {h}x{w} picture has no pixels")))?;
    if map.len() != pixels || picture.picture.len() != pixels * picture.channels {
        return Err(PlotError::Data(format!(
            "a {h}x{w} map needs {pixels} values and a picture of {pixels} x {} values (got {} and {})",
            picture.channels,
            map.len(),
            picture.picture.len()
        )));
    }
    let s = scale(h, w);
    let too_large = || PlotError::Data(format!("a {h}x{w} map is too large to draw"));
    let (pw, ph) = (
        u32::try_from(w * s).map_err(|_| too_large())?,
        u32::try_from(h * s).map_err(|_| too_large())?,
    );
    let width = pw
        .checked_mul(3)
        .and_then(|x| x.checked_add(4 * GAP))
        .ok_or_else(too_large)?;
    let height = ph
        .checked_add(TITLE + CAPTION + GAP)
        .ok_or_else(too_large)?;
    let captions = ["input", "|d score / d input|", "overlay"];
    let mut image = render(width, height, |area| {
        area.draw_text(
            title,
            &(FONT, 18).into_font().color(&BLACK),
            (GAP as i32, 16),
        )
        .map_err(draw_error)?;
        for (k, caption) in captions.iter().enumerate() {
            let x = (GAP + k as u32 * (pw + GAP)) as i32;
            area.draw_text(
                caption,
                &(FONT, 15).into_font().color(&BLACK),
                (x, (TITLE + ph + 6) as i32),
            )
            .map_err(draw_error)?;
        }
        Ok(())
    })?;

    let grey = |i: usize| -> f32 {
        let px = &picture.picture[i * picture.channels..(i + 1) * picture.channels];
        px.iter().sum::<f32>() / picture.channels as f32
    };
    let (lo, hi) = finite_range(&picture.picture);
    let stretch = |v: f32| {
        if hi > lo {
            ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
        } else {
            0.5
        }
    };
    let max = map
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f32, f32::max);
    let heat = |i: usize| if max > 0.0 { map[i] / max } else { 0.0 };
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let shown: [u8; 3] = if picture.channels == 3 {
                let px = &picture.picture[i * 3..i * 3 + 3];
                [0, 1, 2].map(|c| (stretch(px[c]) * 255.0).round() as u8)
            } else {
                [(stretch(picture.picture[i]) * 255.0).round() as u8; 3]
            };
            let hot = heat_color(heat(i));
            let g = stretch(grey(i));
            let a = heat(i).clamp(0.0, 1.0);
            let overlay = [0, 1, 2].map(|c| {
                ((1.0 - a) * g * 255.0 * 0.6 + a * f32::from(hot[c]))
                    .round()
                    .clamp(0.0, 255.0) as u8
            });
            for (k, color) in [shown, hot, overlay].into_iter().enumerate() {
                let (x0, y0) = panel_pixel(k, y, x, h, w);
                for dy in 0..s as u32 {
                    for dx in 0..s as u32 {
                        image.put_pixel(x0 + dx, y0 + dy, Rgb(color));
                    }
                }
            }
        }
    }
    Ok(image)
}

fn finite_range(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// Where panel `k` (0: input, 1: heat map, 2: overlay) puts the top-left
/// corner of input pixel (`y`, `x`) of a `height` x `width` picture.
pub fn panel_pixel(k: usize, y: usize, x: usize, height: usize, width: usize) -> (u32, u32) {
    let s = scale(height, width);
    let pw = (width * s) as u32;
    (
        GAP + k as u32 * (pw + GAP) + (x * s) as u32,
        TITLE + (y * s) as u32,
    )
}
