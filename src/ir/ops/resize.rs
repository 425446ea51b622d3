//! `resize(x, size=[h, w], mode="bilinear")`: resamples the height and width
//! of an NCHW tensor to `size`, with half-pixel centres (a source coordinate
//! `(dst + 0.5) * in / out - 0.5`, ONNX Resize's default and PyTorch's
//! `align_corners=False`), edges clamped, no antialiasing. `"nearest"` takes
//! the source pixel `floor((dst + 0.5) * in / out)`. The input's height and
//! width may be symbols: the output size is given.
//!
//! `resize_plane` is also how `runtime::image` resizes photos, so a model's
//! declared preprocessing and this op resample alike.

use super::shape::{err, expect_dtype, ShapeError};
use super::values::elements;
use super::{Builtin, CallArgs, EvalError, MatMul, NodeId, Op, OpKind, Poisoned};
use crate::ir::image_input::ResizeFilter;
use crate::ir::vjp::{GradError, Vjp};
use crate::ir::{DType, Dim, TensorType};
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Resize {
    pub size: [usize; 2],
    pub mode: ResizeFilter,
}

impl OpKind for Resize {
    fn name(&self) -> &'static str {
        "resize"
    }

    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let x = inputs[0];
        expect_dtype("resize", "input", x, DType::F32)?;
        if x.rank() != 4 {
            return err(format!(
                "resize: takes an input [batch, channels, height, width], got {x}"
            ));
        }
        for (axis, d) in x.shape[2..].iter().enumerate() {
            if d.as_known() == Some(0) {
                return err(format!(
                    "resize: the input's {} is 0: there is nothing to resample in {x}",
                    ["height", "width"][axis]
                ));
            }
        }
        Ok(TensorType::new(
            DType::F32,
            vec![
                x.shape[0].clone(),
                x.shape[1].clone(),
                Dim::known(self.size[0]),
                Dim::known(self.size[1]),
            ],
        ))
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        let x = elements::<f32>("resize", inputs[0])?;
        let shape = inputs[0].shape();
        let (h, w) = (shape[2], shape[3]);
        if h == 0 || w == 0 {
            // A symbolic height or width bound to 0 at run time.
            return Err(EvalError::Invalid {
                op: "resize",
                message: format!("the input {shape:?} has no pixels to resample"),
            });
        }
        let [out_h, out_w] = self.size;
        let mut out = Vec::with_capacity(out_shape.iter().product());
        for plane in x.chunks_exact(h * w).take(shape[0] * shape[1]) {
            let plane: Vec<f64> = plane.iter().map(|&v| f64::from(v)).collect();
            out.extend(
                resize_plane(&plane, h, w, out_h, out_w, self.mode)
                    .into_iter()
                    .map(|v| v as f32),
            );
        }
        Ok(Tensor::f32(out_shape.to_vec(), out))
    }

    /// Resampling is linear and separable, `out = Rh x Rw^T` per plane
    /// with the interpolation matrices `Rh` [out_h, in_h] and `Rw`
    /// [out_w, in_w]: the gradient is `Rh^T g Rw`, two matrix products
    /// with constants (so the input's height and width must be known).
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        _node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        _wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        let x_ty = cx.ty(inputs[0]).clone();
        let (Some(in_h), Some(in_w)) = (x_ty.shape[2].as_known(), x_ty.shape[3].as_known()) else {
            return cx.no_rule(format!(
                "its gradient needs the input's height and width as integers, got {x_ty}"
            ));
        };
        let matrix = |cx: &mut Vjp<'_>, n_in: usize, n_out: usize| {
            let mut m = vec![0.0f32; n_out * n_in];
            for (o, (lo, hi, f)) in taps(n_in, n_out, self.mode).into_iter().enumerate() {
                m[o * n_in + lo] += (1.0 - f) as f32;
                m[o * n_in + hi] += f as f32;
            }
            cx.tensor(Tensor::f32(vec![n_out, n_in], m))
        };
        let rw = matrix(cx, in_w, self.size[1]);
        let rh = matrix(cx, in_h, self.size[0]);
        let plain = MatMul {
            transpose_a: false,
            transpose_b: false,
        };
        // [N, C, out_h, out_w] @ Rw -> [N, C, out_h, in_w]
        let across = cx.add(Op::MatMul(plain.clone()), &[g, rw])?;
        let turned = cx.permute(across, vec![0, 1, 3, 2])?;
        // [N, C, in_w, out_h] @ Rh -> [N, C, in_w, in_h]
        let down = cx.add(Op::MatMul(plain), &[turned, rh])?;
        Ok(vec![Some(cx.permute(down, vec![0, 1, 3, 2])?)])
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        let mode = match self.mode {
            ResizeFilter::Bilinear => "\"bilinear\"",
            ResizeFilter::Nearest => "\"nearest\"",
        };
        vec![
            ("size", format!("[{}, {}]", self.size[0], self.size[1])),
            ("mode", mode.to_string()),
        ]
    }
}

pub const BUILTIN: Builtin = Builtin {
    names: &["resize"],
    lower,
};

/// `resize(x, size=[h, w], mode="bilinear")`.
fn lower(_name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let x = args.tensor()?;
    let size = args.int_list("size", true)?;
    let mode = args.word("mode", &ResizeFilter::NAMES, "bilinear")?;
    let size = match size.as_deref() {
        Some([h, w]) if *h > 0 && *w > 0 => [*h as usize, *w as usize],
        Some(other) => {
            return Err(args.error(format!(
                "size is [height, width], two positive integers, got {other:?}"
            )))
        }
        None => return Err(args.error("needs `size=[height, width]`".into())),
    };
    Ok((
        Op::Resize(Resize {
            size,
            mode: ResizeFilter::from_name(&mode).expect("word() allows only known modes"),
        }),
        vec![x],
    ))
}

/// Resamples one row-major `in_h x in_w` plane to `out_h x out_w`, in f64.
/// Both sizes must be at least 1.
pub fn resize_plane(
    src: &[f64],
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
    filter: ResizeFilter,
) -> Vec<f64> {
    let ys = taps(in_h, out_h, filter);
    let xs = taps(in_w, out_w, filter);
    let mut out = Vec::with_capacity(out_h * out_w);
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            let at = |y: usize, x: usize| src[y * in_w + x];
            let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
            let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

/// For each output index: the two source indices and the weight of the second.
fn taps(n_in: usize, n_out: usize, filter: ResizeFilter) -> Vec<(usize, usize, f64)> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| match filter {
            ResizeFilter::Nearest => {
                let i = (((o as f64 + 0.5) * scale) as usize).min(n_in - 1);
                (i, i, 0.0)
            }
            ResizeFilter::Bilinear => {
                let s = ((o as f64 + 0.5) * scale - 0.5).clamp(0.0, (n_in - 1) as f64);
                let lo = s.floor() as usize;
                (lo, (lo + 1).min(n_in - 1), s - lo as f64)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_upsample_and_nearest() {
        let plane: Vec<f64> = (0..12).map(f64::from).collect();
        assert_eq!(
            resize_plane(&plane, 3, 4, 3, 4, ResizeFilter::Bilinear),
            plane
        );
        // 1x2 -> 1x4 bilinear, half-pixel: sources -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
        assert_eq!(
            resize_plane(&[0.0, 4.0], 1, 2, 1, 4, ResizeFilter::Bilinear),
            [0.0, 1.0, 3.0, 4.0]
        );
        assert_eq!(
            resize_plane(&[0.0, 4.0], 1, 2, 1, 4, ResizeFilter::Nearest),
            [0.0, 0.0, 4.0, 4.0]
        );
    }
}
