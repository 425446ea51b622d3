//! Photos into model inputs, as an input's `= image(...)` declares: decode
//! (JPEG or PNG, with the `image` crate), centre crop, resize, normalise,
//! NCHW. See `ir::image_input` for the declaration.

use std::path::{Path, PathBuf};

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

use crate::ir::dim::checked_bytes;
use crate::ir::image_input::ImageInput;
use crate::ir::ops::resize::resize_plane;
use crate::tensor::{Tensor, TensorData};

/// The largest photo decoded, per side: far beyond any camera, small enough
/// that a hostile header cannot ask for gigabytes.
pub const MAX_IMAGE_SIDE: u32 = 1 << 15;
/// The most memory one decode may allocate.
const MAX_DECODE_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read image {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decode image {path} (JPEG and PNG are supported): {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("image {path} has no pixels ({width}x{height})")]
    Empty {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    #[error("no images given")]
    NoImages,
    #[error("{count} images of {per_image} bytes each do not fit in memory")]
    TooMany { count: usize, per_image: usize },
    #[error(
        "the model has no input declared `= image(...)`, so it cannot take photos (inputs: {inputs})"
    )]
    NoImageInput { inputs: String },
    #[error(
        "the model has {count} inputs declared `= image(...)` ({names}); photos fill one of them only"
    )]
    SeveralImageInputs { count: usize, names: String },
    #[error("{pixels} RGB bytes do not make a {width}x{height} image")]
    PixelCount {
        pixels: usize,
        width: usize,
        height: usize,
    },
}

/// Decodes `paths` and stacks them into the `[n, C, H, W]` tensor `spec` describes.
pub fn load_images(spec: &ImageInput, paths: &[PathBuf]) -> Result<Tensor, ImageError> {
    if paths.is_empty() {
        return Err(ImageError::NoImages);
    }
    let per_image = spec.channels * spec.height * spec.width;
    let total = per_image
        .checked_mul(paths.len())
        .filter(|&n| checked_bytes(&[n], 4).is_some())
        .ok_or(ImageError::TooMany {
            count: paths.len(),
            per_image: per_image * 4,
        })?;
    let mut data = Vec::with_capacity(total);
    for path in paths {
        let (width, height, rgb) = decode(path)?;
        data.extend(preprocess_rgb(spec, width, height, &rgb)?);
    }
    Ok(Tensor::new(
        vec![paths.len(), spec.channels, spec.height, spec.width],
        TensorData::F32(data),
    ))
}

/// Decodes one photo to 8-bit RGB, row-major, 3 bytes a pixel.
pub fn decode(path: &Path) -> Result<(usize, usize, Vec<u8>), ImageError> {
    let read = |source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let decode_error = |source| ImageError::Decode {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = ImageReader::open(path)
        .map_err(read)?
        .with_guessed_format()
        .map_err(read)?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    // Phones store pictures as the sensor saw them and record how to turn
    // them in the EXIF orientation tag; the model must see them upright.
    // An unreadable tag is treated as none, as image viewers do.
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    image.apply_orientation(orientation);
    let rgb = image.to_rgb8();
    let (width, height) = rgb.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::Empty {
            path: path.to_path_buf(),
            width,
            height,
        });
    }
    Ok((width as usize, height as usize, rgb.into_raw()))
}

/// One RGB photo (`width * height * 3` bytes, row-major) into `spec`'s
/// `C * H * W` values: centre crop, resize, normalise, channels first.
pub fn preprocess_rgb(
    spec: &ImageInput,
    width: usize,
    height: usize,
    rgb: &[u8],
) -> Result<Vec<f32>, ImageError> {
    if width.checked_mul(height).and_then(|p| p.checked_mul(3)) != Some(rgb.len()) || rgb.is_empty()
    {
        return Err(ImageError::PixelCount {
            pixels: rgb.len(),
            width,
            height,
        });
    }
    let (top, left, crop_h, crop_w) = centre_crop(spec, height, width);
    let mut out = Vec::with_capacity(spec.channels * spec.height * spec.width);
    for c in 0..spec.channels {
        // Grey is ITU-R BT.601 luma, computed before resizing, like a grey decode.
        let plane: Vec<f64> = (0..crop_h * crop_w)
            .map(|i| {
                let (y, x) = (top + i / crop_w, left + i % crop_w);
                let p = &rgb[(y * width + x) * 3..][..3];
                if spec.channels == 1 {
                    0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64
                } else {
                    p[c] as f64
                }
            })
            .collect();
        let resized = resize_plane(&plane, crop_h, crop_w, spec.height, spec.width, spec.filter);
        let (mean, std) = (spec.mean[c] as f64, spec.std[c] as f64);
        out.extend(resized.into_iter().map(|v| ((v - mean) / std) as f32));
    }
    Ok(out)
}

/// `(top, left, height, width)` of the centred crop: `spec.crop` of the
/// largest centred region with the output's aspect ratio (at least 1 pixel).
/// An odd leftover pixel goes to the top and left, as TensorFlow's
/// `(size - crop + 1) // 2`.
fn centre_crop(spec: &ImageInput, height: usize, width: usize) -> (usize, usize, usize, usize) {
    let (h, w) = (height as f64, width as f64);
    let aspect = spec.width as f64 / spec.height as f64;
    let (region_h, region_w) = if w >= h * aspect {
        (h, h * aspect)
    } else {
        (w / aspect, w)
    };
    let crop_h = ((spec.crop * region_h) as usize).clamp(1, height);
    let crop_w = ((spec.crop * region_w) as usize).clamp(1, width);
    (
        (height - crop_h).div_ceil(2),
        (width - crop_w).div_ceil(2),
        crop_h,
        crop_w,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::image_input::ResizeFilter;
    use crate::span::Span;

    fn spec(channels: usize, height: usize, width: usize, crop: f64) -> ImageInput {
        ImageInput {
            input: "x".into(),
            channels,
            height,
            width,
            crop,
            filter: ResizeFilter::Bilinear,
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
            span: Span::new(0, 0),
        }
    }

    #[test]
    fn crop_is_centred_with_the_odd_pixel_top_left_as_tensorflow() {
        // TensorFlow's eval crop of a 300x451 photo for 224: int(0.875 * 300) = 262,
        // offsets (300 - 262 + 1) // 2 = 19 and (451 - 262 + 1) // 2 = 95.
        assert_eq!(
            centre_crop(&spec(3, 224, 224, 224.0 / 256.0), 300, 451),
            (19, 95, 262, 262)
        );
        // A wide output keeps its aspect ratio: 100x100 photo, 50x100 output.
        assert_eq!(
            centre_crop(&spec(3, 50, 100, 1.0), 100, 100),
            (25, 0, 50, 100)
        );
    }

    #[test]
    fn normalises_per_channel_in_nchw_order() {
        let mut s = spec(3, 1, 2, 1.0);
        s.mean = vec![1.0, 2.0, 3.0];
        s.std = vec![2.0, 2.0, 2.0];
        let rgb = [10, 20, 30, 40, 50, 60];
        let out = preprocess_rgb(&s, 2, 1, &rgb).unwrap();
        assert_eq!(out, [4.5, 19.5, 9.0, 24.0, 13.5, 28.5]);
        assert!(matches!(
            preprocess_rgb(&s, 3, 1, &rgb),
            Err(ImageError::PixelCount { .. })
        ));
    }

    /// A JPEG whose left half is red and right half blue, with an EXIF
    /// block whose orientation tag says `orientation` (1..=8).
    fn jpeg_with_orientation(orientation: u16) -> Vec<u8> {
        let (w, h) = (32u32, 16u32);
        let pixels = image::RgbImage::from_fn(w, h, |x, _| {
            if x < w / 2 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(&pixels)
            .unwrap();
        // "Exif\0\0", a big-endian TIFF header, one IFD entry: tag 0x0112
        // (orientation), type SHORT, count 1, the value; no next IFD.
        let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
        exif.extend_from_slice(&orientation.to_be_bytes());
        exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let length = u16::try_from(exif.len() + 2).unwrap().to_be_bytes();
        // APP1 right after the start-of-image marker.
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xff, 0xe1, length[0], length[1]]);
        out.extend_from_slice(&exif);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn photos_are_turned_upright_by_their_exif_orientation() {
        let dir = tempfile::tempdir().unwrap();
        let redness = |rgb: &[u8], i: usize| i32::from(rgb[3 * i]) - i32::from(rgb[3 * i + 2]);
        // 1: as stored. 6: the stored picture is turned 90 degrees clockwise
        // to view it, so the left (red) half ends up on top.
        for (orientation, want_w, want_h) in [(1, 32, 16), (6, 16, 32)] {
            let path = dir.path().join(format!("o{orientation}.jpg"));
            std::fs::write(&path, jpeg_with_orientation(orientation)).unwrap();
            let (w, h, rgb) = decode(&path).unwrap();
            assert_eq!((w, h), (want_w, want_h), "orientation {orientation}");
            let (first, last) = (0, w * h - 1);
            assert!(
                redness(&rgb, first) > 200,
                "orientation {orientation}: first pixel red"
            );
            assert!(
                redness(&rgb, last) < -200,
                "orientation {orientation}: last pixel blue"
            );
            if orientation == 6 {
                // Top row red, bottom row blue.
                assert!(redness(&rgb, w - 1) > 200);
                assert!(redness(&rgb, (h - 1) * w) < -200);
            }
        }
    }
}
