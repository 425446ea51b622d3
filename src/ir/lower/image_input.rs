//! `input x: f32[batch, 3, 224, 224] = image(...)`: the declaration checked
//! against the input's type, into an `ImageInput`.

use super::args::Args;
use super::{Lowered, Lowerer, Poisoned};
use crate::ir::image_input::{ImageInput, ResizeFilter};
use crate::ir::lower_error::LowerError;
use crate::ir::{DType, TensorType};
use crate::span::Span;
use crate::syntax::ast::{self, Expr};

const FUNC: &str = "image";

pub(super) fn image_input<'a>(
    lw: &mut Lowerer<'a>,
    input: &str,
    ty: &TensorType,
    e: &'a Expr,
) -> Lowered<ImageInput> {
    let (span, call_args): (Span, &'a [ast::Arg]) = match e {
        Expr::Call {
            func,
            args,
            prefix: None,
            span,
        } if func.name == FUNC => (*span, args.as_slice()),
        _ => {
            return Err(lw.error(LowerError::Invalid {
                message: "an input's `= ...` declares its preprocessing; the only one is \
                          `image(crop=, resize=, mean=, std=)`"
                    .into(),
                span: e.span(),
            }))
        }
    };
    let mut args = Args::new(lw, FUNC, call_args, span)?;
    let crop = args.float(lw, "crop", 1.0);
    let filter = args.word(lw, "resize", &ResizeFilter::NAMES, "bilinear");
    let mean = args.float_list(lw, "mean");
    let std = args.float_list(lw, "std");
    let finished = args.finish(lw);
    let (crop, filter, mean, std) = (crop?, filter?, mean?, std?);
    finished?;

    let fail = |lw: &mut Lowerer<'a>, message: String| -> Poisoned {
        lw.error(LowerError::Argument {
            func: FUNC.into(),
            message,
            span,
        })
    };
    let dims = match (ty.dtype, ty.shape.as_slice()) {
        (DType::F32, [_, c, h, w]) => [c, h, w].map(|d| d.as_known()),
        _ => {
            return Err(fail(
                lw,
                format!(
                    "fills an f32[batch, channels, height, width] input (NCHW); `{input}` is {ty}"
                ),
            ))
        }
    };
    let [Some(channels), Some(height), Some(width)] = dims else {
        return Err(fail(
            lw,
            format!(
                "the channels, height and width of `{input}` must be integers (photos are \
                 resized to them); `{input}` is {ty}"
            ),
        ));
    };
    if channels != 1 && channels != 3 {
        return Err(fail(
            lw,
            format!("makes 3 channels (RGB) or 1 (grey); `{input}` has {channels}"),
        ));
    }
    if height == 0 || width == 0 {
        return Err(fail(lw, format!("`{input}` has no pixels ({ty})")));
    }
    if !(crop > 0.0 && crop <= 1.0) {
        return Err(fail(
            lw,
            format!("`crop` is a fraction in (0, 1], got {crop}"),
        ));
    }
    let per_channel = |lw: &mut Lowerer<'a>, name: &str, values: Option<Vec<f64>>, default: f64| {
        let values = values.unwrap_or_else(|| vec![default]);
        let values = match values.len() {
            1 => vec![values[0]; channels],
            n if n == channels => values,
            n => {
                return Err(fail(
                    lw,
                    format!("`{name}` has {n} values; give one, or one per channel ({channels})"),
                ))
            }
        };
        Ok(values.into_iter().map(|v| v as f32).collect::<Vec<f32>>())
    };
    let mean = per_channel(lw, "mean", mean, 0.0)?;
    let std = per_channel(lw, "std", std, 1.0)?;
    if std.iter().any(|s| !(s.is_finite() && *s != 0.0)) || mean.iter().any(|m| !m.is_finite()) {
        return Err(fail(
            lw,
            "`mean` must be finite and `std` finite and non-zero".into(),
        ));
    }
    Ok(ImageInput {
        input: input.to_string(),
        channels,
        height,
        width,
        crop,
        filter: ResizeFilter::from_name(&filter).expect("word() allows only known filters"),
        mean,
        std,
        span,
    })
}
